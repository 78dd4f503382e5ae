"""Security checks: the job refuses an environment that re-enables pickle loading in torch,
media URIs are confined to the run's roots, secret values are masked in recorded errors, and
tampered model artifacts are refused before anything loads."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from moderation.media import MediaError, check_root, read_media
from moderation.redact import mask
from moderation.security import UnsafeEnvironment, check_environment


@pytest.mark.parametrize("value", ["1", "true", "yes"])
def test_torch_weights_only_override_refuses_to_start(monkeypatch, value):
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", value)
    with pytest.raises(UnsafeEnvironment, match="TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD is set"):
        check_environment()


def test_torch_override_unset_or_off_is_fine(monkeypatch):
    monkeypatch.delenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", raising=False)
    check_environment()
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "0")
    check_environment()


def test_backfill_command_refuses_before_writing(tmp_path):
    from tests.conftest import POLICY_V1

    env = {**os.environ, "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1"}
    lake = tmp_path / "lake"
    proc = subprocess.run(
        [sys.executable, "-m", "moderation.cli", "backfill", "--catalog", str(tmp_path / "nothing"),
         "--lake", str(lake), "--policy", str(POLICY_V1)],
        env=env, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2 and "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD" in proc.stderr
    assert not lake.exists()


def test_media_roots_confine_reads(tmp_path):
    root = tmp_path / "media"
    root.mkdir()
    (root / "ok.jpg").write_bytes(b"x" * 10)
    os.symlink("/etc/passwd", root / "link.jpg")
    roots = (str(root),)
    assert read_media(str(root / "ok.jpg"), max_bytes=100, kind="image", roots=roots) == b"x" * 10
    assert read_media(f"file://{root}/ok.jpg", max_bytes=100, kind="image", roots=roots) == b"x" * 10
    refused = [
        "/etc/passwd", "file:///etc/passwd", f"{root}/../../../../etc/passwd", str(root / "link.jpg"),
        f"{root}-sibling/x.jpg", "http://example.com/a.jpg", "ftp://host/a.jpg", "s3://bucket/a.jpg",
        f"{root}/\x00.jpg",
    ]
    for uri in refused:
        with pytest.raises(MediaError) as e:
            read_media(uri, max_bytes=100, kind="image", roots=roots)
        assert e.value.reason == "image_outside_roots", uri
    s3_roots = ("s3://media/covers",)
    assert check_root("s3://media/covers/a.jpg", s3_roots, kind="image") == "s3://media/covers/a.jpg"
    for uri in ("s3://media/covers/../secrets/a", "s3://media/coversX/a.jpg", "s3://other/covers/a.jpg"):
        with pytest.raises(MediaError, match="image_outside_roots"):
            check_root(uri, s3_roots, kind="image")


def test_mask_hides_secret_environment_values(monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wJalrXUtnFEMI-fake-secret")
    monkeypatch.setenv("SOME_API_TOKEN", "tok-1234567890")
    monkeypatch.setenv("HARMLESS", "wJalrXUtnFEMI-fake-secret-not-a-secret-name")
    text = "failed: key=wJalrXUtnFEMI-fake-secret token tok-1234567890"
    assert mask(text) == "failed: key=*** token ***"


def test_every_model_refuses_a_tampered_artifact(tmp_path):
    """For each registered model and each of its artifacts: a copy with one byte changed, under
    the pinned SHA-256, is refused with ArtifactError where the artifact is first needed (the
    actor's setup, or the CPU-side preprocess for silero-vad)."""
    import pyarrow as pa

    from moderation.catalog import to_work_rows
    from moderation.artifacts import resolve_local
    from moderation.classifiers.base import RunContext, build_classifier
    from moderation.config import load_model_registry
    from moderation.errors import ArtifactError

    checked = 0
    for spec in load_model_registry().values():
        for name, ref in spec.artifacts.items():
            original = resolve_local(ref.uri).read_bytes()
            bad = tmp_path / f"{spec.model_id}-{name}"
            bad.write_bytes(original[:-1] + bytes([original[-1] ^ 0x01]))
            tampered = spec.model_copy(update={"artifacts": {**spec.artifacts,
                                                             name: ref.model_copy(update={"uri": str(bad)})}})
            clf = build_classifier(tampered, context=RunContext(lake_root=str(tmp_path)))
            with pytest.raises(ArtifactError, match="SHA-256"):
                clf.setup("cpu")
                clf.preprocess(to_work_rows(pa.table({"item_id": pa.array([], pa.string())}), spec.modality))
            checked += 1
    assert checked >= 8
