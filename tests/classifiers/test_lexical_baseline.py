"""The lexical baseline (alt-profanity-check converted to skops): loads through the registry like
any model, scores like the package's own pickled objects, and its loading path refuses
tampered artifacts, untrusted skops types and pickles that reference disallowed globals."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import pickle
import sys

import numpy as np
import pyarrow as pa
import pytest

from moderation.classifiers.base import QREASON, build_classifier
from moderation.classifiers.lexical import TRUSTED_TYPES, ProfanityCheckClassifier
from moderation.classifiers.text import MiniLMHeadsClassifier
from moderation.config import PROJECT_ROOT, ArtifactRef, load_model_registry
from moderation.errors import ArtifactError
from moderation.storage.artifacts import resolve_local
from moderation.storage.catalog import to_work_rows

MODEL_ID = "text-profanity-check-v1"
PROFANE = ["you are a fucking idiot", "shut up you stupid bitch", "fuck this shit"]
CLEAN = ["Songs about the summer rain and my grandmother's garden", "have a lovely day", "live at the opera house"]


def _converter():
    """scripts/convert_profanity_check.py as a module (its restricted unpickler and pinned digests)."""
    path = PROJECT_ROOT / "scripts" / "convert_profanity_check.py"
    spec = importlib.util.spec_from_file_location("convert_profanity_check", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def converter():
    return _converter()


@pytest.fixture(scope="module")
def spec():
    return load_model_registry()[MODEL_ID]


@pytest.fixture(scope="module")
def baseline(spec) -> ProfanityCheckClassifier:
    clf = build_classifier(spec)
    clf.setup("cpu")
    return clf


def _rows(**cols) -> pa.Table:
    n = len(cols["item_id"])
    cols.setdefault("item_type", ["track"] * n)
    return to_work_rows(pa.table(cols), "text")


def test_registry_entry(spec):
    assert spec.kind == "profanity_check" and spec.modality == "text" and spec.role == "baseline"
    assert spec.categories == ("hate", "harassment")
    assert spec.artifacts["pipeline"].uri.endswith(".skops")
    assert resolve_local(spec.artifacts["pipeline"].uri).stat().st_size < 5_000_000
    assert load_model_registry()["text-minilm-heads-v1"].role == "production"


def test_registry_model_ranks_profane_above_clean(baseline):
    assert isinstance(baseline, ProfanityCheckClassifier) and not baseline.uses_gpu
    p = baseline.predict_proba(PROFANE + CLEAN)
    assert p.shape == (6, 2)
    assert np.array_equal(p[:, 0], p[:, 1])  # one probability, reported for both categories
    assert p[:3, 0].min() > 0.5 > p[3:, 0].max()
    rows = baseline.preprocess(_rows(item_id=["clean", "profane"], title=[CLEAN[0], "Kitchen Light"],
                                     body_text=[None, " ".join(["we were dancing"] * 100) + " fuck you bitch"]))
    scores, evidence = baseline.score(rows)
    assert scores[1]["hate"] > scores[0]["hate"] and scores[1]["harassment"] > scores[0]["harassment"]
    assert evidence[1]["hate"].startswith("body_text[") and evidence[0]["hate"] == "title"


def test_skops_artifact_matches_the_package_pickles(baseline, converter, data_dir):
    """Same probabilities (1e-9) as the package's own objects, unpickled with the converter's
    allow-list (and without importing profanity_check, whose import unpickles them unchecked)."""
    vectorizer, model = converter.load_source()
    assert "profanity_check" not in sys.modules
    with open(data_dir / "text" / "hatexplain" / "test.jsonl", encoding="utf-8") as f:
        texts = [" ".join(json.loads(line)["post_tokens"]) for line, _ in zip(f, range(300))]
    texts += PROFANE + CLEAN + [""]
    original = model.predict_proba(vectorizer.transform(texts))[:, list(model.classes_).index(1)]
    np.testing.assert_allclose(baseline.predict_proba(texts)[:, 0], original, rtol=0, atol=1e-9)


def test_artifact_holds_no_types_beyond_the_reviewed_list(spec):
    import skops.io as sio

    data = resolve_local(spec.artifacts["pipeline"].uri).read_bytes()
    assert sio.get_untrusted_types(data=data) == sorted(TRUSTED_TYPES)


class _RunsCommand:
    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def test_restricted_unpickler_refuses_disallowed_globals(converter, tmp_path):
    import joblib

    marker = tmp_path / "ran"
    crafted = tmp_path / "evil.joblib"
    crafted.write_bytes(pickle.dumps(_RunsCommand(f"touch {marker}"), protocol=4))
    with pytest.raises(pickle.UnpicklingError, match=r"global (posix|os|nt)\.system is not in the allow-list"):
        converter.restricted_joblib_loads(crafted.read_bytes())
    # The same call hidden in an object array, which joblib stores as a nested pickle.
    nested = tmp_path / "nested.joblib"
    joblib.dump({"coef": np.arange(3.0), "x": np.array([_RunsCommand(f"touch {marker}")], dtype=object)}, nested)
    with pytest.raises(pickle.UnpicklingError, match="not in the allow-list"):
        converter.restricted_joblib_loads(nested.read_bytes())
    assert not marker.exists()
    # A plain joblib file of allowed globals only still loads.
    ok = tmp_path / "ok.joblib"
    joblib.dump(np.arange(4.0), ok)
    assert converter.restricted_joblib_loads(ok.read_bytes()).tolist() == [0.0, 1.0, 2.0, 3.0]


def test_converter_refuses_a_modified_package_file(converter, tmp_path):
    source = converter.package_dir()
    (tmp_path / "data").mkdir()
    for rel, _ in converter.SOURCE_SHA256.values():
        data = (source / rel).read_bytes()
        (tmp_path / rel).write_bytes(data[:-1] + bytes([data[-1] ^ 0x01]) if rel.endswith("model.joblib") else data)
    with pytest.raises(converter.SourceError, match=r"model: .* has SHA-256 .* refusing to unpickle"):
        converter.load_source(tmp_path)


def test_tampered_artifact_is_refused(spec, tmp_path):
    ref = spec.artifacts["pipeline"]
    original = resolve_local(ref.uri).read_bytes()
    bad = tmp_path / "profanity_check_v1.skops"
    bad.write_bytes(original[:-1] + bytes([original[-1] ^ 0x01]))
    tampered = spec.model_copy(update={"artifacts": {"pipeline": ref.model_copy(update={"uri": str(bad)})}})
    clf = build_classifier(tampered)
    with pytest.raises(ArtifactError, match=rf"model {MODEL_ID}: artifact pipeline .* has SHA-256 .* refusing to load"):
        clf.setup("cpu")
    with pytest.raises(RuntimeError, match="setup"):
        clf.predict_proba(["x"])


def test_artifact_with_untrusted_types_is_refused(spec, tmp_path):
    """A digest-correct skops file holding a type outside the reviewed list (here a pipeline
    step that would call os.system) is refused, not built."""
    import skops.io as sio
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import FunctionTransformer

    data = sio.dumps(Pipeline([("f", FunctionTransformer(os.system))]))
    f = tmp_path / "evil.skops"
    f.write_bytes(data)
    evil = spec.model_copy(update={"artifacts": {"pipeline": ArtifactRef(uri=str(f), sha256=hashlib.sha256(data).hexdigest())}})
    with pytest.raises(ArtifactError, match=r"skops artifact refused: Untrusted types found .*system"):
        build_classifier(evil).setup("cpu")


def test_process_batch_scores_both_categories_and_quarantines_empty_text(baseline):
    table = _rows(
        item_id=["profane", "clean", "empty"],
        title=["fuck you bitch", "Morning Coffee", "   "],
        description=[None, "a calm piano piece", None],
        body_text=[None, None, None],
    )
    rows = baseline.prepare(table)
    out = baseline.process_batch(rows)
    assert out.column("item_id").to_pylist() == ["profane", "clean", "empty"]
    assert out.column(QREASON).to_pylist() == [None, None, "no_usable_text"]
    scores = [dict(s) if s is not None else None for s in out.column("category_scores").to_pylist()]
    assert set(scores[0]) == set(scores[1]) == {"hate", "harassment"} and scores[2] is None
    assert scores[0]["hate"] > 0.5 > scores[1]["hate"]
    # Same text handling as the MiniLM classifier: equal content hashes and segments.
    minilm = MiniLMHeadsClassifier(load_model_registry()["text-minilm-heads-v1"])
    reference = minilm.prepare(table)
    assert rows.column("content_hash").to_pylist() == reference.column("content_hash").to_pylist()
    assert rows.column("segments").to_pylist() == reference.column("segments").to_pylist()
    assert baseline.content_hashes(table) == rows.column("content_hash").to_pylist()
