"""Convert the lexical baseline shipped in ``alt-profanity-check`` to a skops artifact.

The package's model is two joblib (pickle) files, ``profanity_check/data/vectorizer.joblib``
(a TfidfVectorizer) and ``model.joblib`` (CalibratedClassifierCV(LinearSVC)). This script finds
them without importing ``profanity_check`` (its import unpickles both with plain joblib), checks
each file's SHA-256 against the digests pinned below, unpickles them with an unpickler that
resolves only the globals these two files need, joins them into one scikit-learn
``Pipeline(vectorizer, model)``, and writes it with skops (no code in it can execute on load).
Before writing it checks that the skops copy gives the same probabilities as the unpickled
originals; after writing it pins the artifact's SHA-256 in the registry entry and prints it.

skops output is not byte-reproducible (zip timestamps, object ids in its schema): a re-run
writes an equivalent artifact with a new digest, and re-pins it.

    .venv/bin/python scripts/convert_profanity_check.py [--out PATH] [--registry YAML]
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import os
import pickle
import sys
import zipfile
from pathlib import Path

import numpy as np
import typer

from moderation.classifiers.lexical import POSITIVE_CLASS, TRUSTED_TYPES, load_pipeline
from moderation.config import PROJECT_ROOT
from moderation.evaluation.sources import default_data_dir
from moderation.storage.artifacts import pin_artifact, write_artifact

app = typer.Typer(add_completion=False)

PACKAGE = "profanity_check"
#: SHA-256 of the files in the alt-profanity-check 1.9.1 wheel; anything else is refused.
SOURCE_SHA256 = {
    "vectorizer": ("data/vectorizer.joblib", "19c5200dc6a41f026e0558e2f164f5fe8d8f58e502b46b37e4385037fcfa4831"),
    "model": ("data/model.joblib", "aeafc04849d4d93db4721cf30a86ebf22085595294b8a07d51918e7fa98f538b"),
}
#: Every global the two files reference, and nothing else (found by recording ``find_class``
#: while loading them; numpy 2.x names ``numpy._core``). The sklearn classes are rebuilt by
#: ``__setstate__``, which only fills their ``__dict__``; ``NumpyArrayWrapper`` is joblib's
#: placeholder for an array's raw bytes that follow in the stream.
ALLOWED_GLOBALS = frozenset({
    ("joblib.numpy_pickle", "NumpyArrayWrapper"),
    ("numpy", "dtype"),
    ("numpy", "float64"),
    ("numpy", "ndarray"),
    ("numpy._core.multiarray", "scalar"),
    ("sklearn.feature_extraction.text", "TfidfVectorizer"),
    ("sklearn.feature_extraction.text", "TfidfTransformer"),
    ("sklearn.calibration", "CalibratedClassifierCV"),
    ("sklearn.calibration", "_CalibratedClassifier"),
    ("sklearn.calibration", "_SigmoidCalibration"),
    ("sklearn.svm._classes", "LinearSVC"),
})
MAX_ARTIFACT_BYTES = 5_000_000
#: The joblib whose source was read for this: its ``NumpyArrayWrapper.read_array`` unpickles an
#: object array's nested stream with ``find_class`` routed through the outer unpickler (older
#: releases called a bare ``pickle.load`` there, bypassing any allow-list: GHSA-m62q-453p-gv66).
#: Pinned in pyproject.toml; ``check_unpickler`` also proves it on a crafted stream before use.
JOBLIB_VERSION = "1.6.0"


class SourceError(Exception):
    """A package file is missing, modified, or references a global outside the allow-list."""


def _restricted_unpickler_class():
    from joblib.numpy_pickle import NumpyUnpickler

    class RestrictedUnpickler(NumpyUnpickler):
        """joblib's unpickler (arrays stored after their wrapper) that resolves only
        ``ALLOWED_GLOBALS``. joblib routes the nested pickles of object arrays through this
        ``find_class`` too (joblib.numpy_pickle.NumpyArrayWrapper.read_array)."""

        def find_class(self, module: str, name: str):
            if (module, name) not in ALLOWED_GLOBALS:
                raise pickle.UnpicklingError(f"global {module}.{name} is not in the allow-list; refused")
            return super().find_class(module, name)

    return RestrictedUnpickler


class _Canary:
    """Reduces to a call of ``os.getpid`` (harmless), a global outside the allow-list."""

    def __reduce__(self):
        return (os.getpid, ())


def check_unpickler() -> None:
    """Refuse to unpickle anything unless joblib is the pinned version and the restricted
    unpickler refuses a disallowed global both at the top of a stream and inside an object
    array (joblib's nested pickle, which older joblib releases read with a bare ``pickle.load``).

    Raises:
        SourceError: another joblib, or a crafted stream that got past the allow-list.
    """
    import joblib
    import numpy as np

    if joblib.__version__ != JOBLIB_VERSION:
        raise SourceError(f"joblib {joblib.__version__} is installed; this script was checked against joblib "
                          f"{JOBLIB_VERSION} (pip install joblib=={JOBLIB_VERSION})")
    array = np.empty(1, dtype=object)
    array[0] = _Canary()
    for what, obj in (("a global at the top of a stream", _Canary()), ("a global inside an object array", array)):
        buffer = io.BytesIO()
        joblib.dump(obj, buffer)
        try:
            restricted_joblib_loads(buffer.getvalue())
        except pickle.UnpicklingError:
            continue
        raise SourceError(f"the restricted unpickler let {what} through; refusing to unpickle")


def restricted_joblib_loads(data: bytes):
    """Unpickle uncompressed joblib bytes, resolving only ``ALLOWED_GLOBALS``.

    Raises:
        pickle.UnpicklingError: the stream names any other global (nothing of it is called),
            or is not an uncompressed pickle.
    """
    if not data[:1] == b"\x80":  # protocol 2+ pickle; joblib's compressed formats start otherwise
        raise pickle.UnpicklingError("not an uncompressed joblib pickle; refused")
    unpickler = _restricted_unpickler_class()("", io.BytesIO(data), ensure_native_byte_order=True)
    return unpickler.load()


def package_dir() -> Path:
    """Folder of the installed ``profanity_check`` package, found without importing it:
    ``importlib.resources.files(PACKAGE)`` imports the package, and its ``__init__`` joblib-loads
    both files; the spec's resource reader (what ``files`` uses) gives the folder without that."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or spec.loader is None:
        raise SourceError(f"package {PACKAGE!r} is not installed (pip install alt-profanity-check==1.9.1)")
    reader = spec.loader.get_resource_reader(PACKAGE)
    return Path(str(reader.files()))


def load_source(directory: Path | None = None) -> tuple[object, object]:
    """(vectorizer, model) from the package files, after checking their pinned SHA-256.

    Raises:
        SourceError: a file is missing, has another digest, or references a global outside the
            allow-list; or the unpickler fails :func:`check_unpickler`.
    """
    check_unpickler()
    directory = directory or package_dir()
    objects = []
    for name, (rel, want) in SOURCE_SHA256.items():
        path = directory / rel
        if not path.is_file():
            raise SourceError(f"{name}: {path} not found")
        data = path.read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        if digest != want:
            raise SourceError(f"{name}: {path} has SHA-256 {digest}, expected {want}; refusing to unpickle")
        try:
            objects.append(restricted_joblib_loads(data))
        except pickle.UnpicklingError as e:
            raise SourceError(f"{name}: {path}: {e}") from e
    return objects[0], objects[1]


def parity_texts(path: Path, n: int) -> list[str]:
    """The first ``n`` posts of a HateXplain split (its ``post_tokens`` joined by spaces)."""
    texts = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if len(texts) >= n:
                break
            texts.append(" ".join(json.loads(line)["post_tokens"]))
    return texts


@app.command()
def main(
    out: Path = typer.Option(PROJECT_ROOT / "moderation/artifacts/profanity_check_v1.skops", help="skops file to write"),
    registry: Path = typer.Option(PROJECT_ROOT / "conf/models/text-profanity-check-v1.yaml", help="entry to pin it in"),
    texts: Path = typer.Option(None, help="JSONL with post_tokens for the parity check (default HateXplain test)"),
    n: int = typer.Option(500, help="texts in the parity check"),
) -> None:
    import skops.io as sio
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.pipeline import Pipeline

    directory = package_dir()
    vectorizer, model = load_source(directory)
    if PACKAGE in sys.modules:
        raise SourceError(f"{PACKAGE} was imported (its import unpickles without restriction)")
    for name, (rel, want) in SOURCE_SHA256.items():
        print(f"source {name} {directory / rel} sha256={want}")
    if not isinstance(vectorizer, TfidfVectorizer) or not isinstance(model, CalibratedClassifierCV):
        raise SourceError(f"unexpected objects: {type(vectorizer).__name__}, {type(model).__name__}")

    pipeline = Pipeline([("vectorizer", vectorizer), ("model", model)])
    data = sio.dumps(pipeline, compression=zipfile.ZIP_DEFLATED, compresslevel=9)
    untrusted = sio.get_untrusted_types(data=data)
    if sorted(untrusted) != sorted(TRUSTED_TYPES):
        raise SourceError(f"types outside skops' defaults {untrusted} != reviewed TRUSTED_TYPES {list(TRUSTED_TYPES)}")
    if len(data) >= MAX_ARTIFACT_BYTES:
        raise SourceError(f"artifact is {len(data)} bytes, limit {MAX_ARTIFACT_BYTES}")

    # Refuse to write an artifact that scores differently from the package's own objects.
    sample = parity_texts(texts or default_data_dir() / "text/hatexplain/test.jsonl", n)
    sample += ["you are a fucking idiot", "have a lovely day", "", "SHUT UP b!tch"]
    loaded = load_pipeline("text-profanity-check-v1", data)
    pos = list(model.classes_).index(POSITIVE_CLASS)
    original = model.predict_proba(vectorizer.transform(sample))[:, pos]
    converted = loaded.predict_proba(sample)[:, pos]
    diff = float(np.max(np.abs(original - converted)))
    print(f"parity on {len(sample)} texts: max |P_pickle - P_skops| = {diff:.3g}")
    if diff > 1e-9:
        raise SourceError(f"skops copy differs from the original by {diff}; not written")

    digest = write_artifact(out, data)
    print(f"wrote {out} ({len(data)} bytes) sha256={digest}")
    print(f"trusted types beyond skops' defaults: {list(TRUSTED_TYPES)}")

    pin_artifact(registry, "pipeline", digest)
    print(f"pinned it in {registry}")


if __name__ == "__main__":
    app()
