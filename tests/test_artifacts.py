from __future__ import annotations

import hashlib

import pytest

from moderation.artifacts import read_verified, resolve_local
from moderation.config import ArtifactRef, load_model_registry
from moderation.errors import ArtifactError


def test_shipped_artifacts_verify():
    spec = load_model_registry()["text-minilm-heads-v1"]
    for name, ref in spec.artifacts.items():
        data = read_verified(spec.model_id, name, ref)
        assert hashlib.sha256(data).hexdigest() == ref.sha256


def test_tampered_artifact_is_refused(tmp_path):
    f = tmp_path / "heads.safetensors"
    f.write_bytes(b"original")
    ref = ArtifactRef(uri=str(f), sha256=hashlib.sha256(b"original").hexdigest())
    assert read_verified("m", "heads", ref) == b"original"
    f.write_bytes(b"tampered")
    with pytest.raises(ArtifactError, match=r"model m: artifact heads .* has SHA-256"):
        read_verified("m", "heads", ref)


def test_missing_artifact_and_missing_package(tmp_path):
    ref = ArtifactRef(uri=str(tmp_path / "gone.safetensors"), sha256="a" * 64)
    with pytest.raises(ArtifactError, match="not found"):
        read_verified("m", "heads", ref)
    with pytest.raises(ArtifactError, match="not installed"):
        resolve_local("package://no_such_package_xyz/model.safetensors")
