"""Security checks: the job refuses an environment that re-enables pickle loading in torch,
media URIs are confined to the run's roots, secret values are masked in recorded errors, and
tampered model artifacts are refused before anything loads."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from moderation.redact import mask
from moderation.security import UnsafeEnvironment, check_environment
from moderation.storage.media import MediaError, check_root, read_media


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

    from moderation.classifiers.base import RunContext, build_classifier
    from moderation.config import load_model_registry
    from moderation.errors import ArtifactError
    from moderation.storage.artifacts import resolve_local
    from moderation.storage.catalog import to_work_rows

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


# S3 reads bounded by max_bytes (issue 15, point 5d).

class _EndlessBody:
    """A response body that never ends (an object far larger than it said), counting what is read."""

    def __init__(self) -> None:
        self.read_bytes = 0
        self.closed = False

    def read(self, amt=None):
        n = 64 << 20 if amt is None else amt  # read() without a size: the whole (huge) object
        self.read_bytes += n
        return b"x" * n

    def close(self) -> None:
        self.closed = True


class _GrowingObjectClient:
    """An S3 client whose object was 10 bytes at HEAD and is endless at GET."""

    def __init__(self) -> None:
        self.body = _EndlessBody()
        self.ranges: list[str | None] = []

    def head_object(self, **kwargs):
        return {"ContentLength": 10}

    def get_object(self, **kwargs):
        self.ranges.append(kwargs.get("Range"))
        return {"Body": self.body}


def test_an_s3_object_that_grew_after_its_head_is_read_at_most_max_bytes_plus_one(monkeypatch):
    import boto3

    client = _GrowingObjectClient()
    monkeypatch.setattr(boto3, "client", lambda *a, **k: client)
    with pytest.raises(MediaError) as e:
        read_media("s3://media/covers/a.jpg", max_bytes=1000, kind="image", roots=("s3://media/covers",))
    assert e.value.reason == "image_too_large" and "limit 1000" in e.value.detail
    assert client.ranges == ["bytes=0-1000"]
    assert client.body.read_bytes == 1001 and client.body.closed


def test_an_s3_artifact_is_read_at_most_its_cap_plus_one(monkeypatch):
    import boto3

    from moderation.errors import ArtifactError
    from moderation.storage import artifacts

    client = _GrowingObjectClient()
    monkeypatch.setattr(boto3, "client", lambda *a, **k: client)
    monkeypatch.setattr(artifacts, "MAX_ARTIFACT_BYTES", 5000)
    ref = artifacts.ArtifactRef(uri="s3://models/m/heads.safetensors", sha256="0" * 64)
    with pytest.raises(ArtifactError, match="larger than 5000 bytes") as e:
        artifacts.read_verified("m", "heads", ref)
    assert e.value.problem == "refused"
    assert client.ranges == ["bytes=0-5000"] and client.body.read_bytes == 5001


def test_a_local_file_that_grew_after_its_size_check_is_refused(tmp_path, monkeypatch):
    path = tmp_path / "a.jpg"
    path.write_bytes(b"x" * 2000)
    real_stat = os.stat
    monkeypatch.setattr(os, "stat", lambda p, *a, **k: os.stat_result((0,) * 6 + (10,) + (0,) * 3)
                        if str(p) == str(path) else real_stat(p, *a, **k))
    with pytest.raises(MediaError) as e:
        read_media(str(path), max_bytes=1000, kind="image", roots=(str(tmp_path),))
    assert e.value.reason == "image_too_large"


@pytest.mark.integration
def test_bounded_s3_reads_on_a_real_server(tmp_path, monkeypatch):
    """SeaweedFS honours the ranged GET: an object over the limit is refused having sent at most
    max_bytes + 1 bytes (its HEAD faked small, as if it grew in between); exact and empty objects."""
    from tests.s3_server import SeaweedS3

    with SeaweedS3(tmp_path / "s3") as s3:
        for key, value in s3.env.items():
            monkeypatch.setenv(key, value)
        client = s3.client()
        client.put_object(Bucket=s3.bucket, Key="m/big.jpg", Body=b"b" * 5000)
        client.put_object(Bucket=s3.bucket, Key="m/exact.jpg", Body=b"e" * 1000)
        client.put_object(Bucket=s3.bucket, Key="m/empty.jpg", Body=b"")
        roots = (f"s3://{s3.bucket}/m",)
        assert read_media(f"s3://{s3.bucket}/m/exact.jpg", max_bytes=1000, kind="image", roots=roots) == b"e" * 1000
        with pytest.raises(MediaError) as e:
            read_media(f"s3://{s3.bucket}/m/empty.jpg", max_bytes=1000, kind="image", roots=roots)
        assert e.value.reason == "image_empty"

        import boto3
        from botocore.client import BaseClient

        from moderation.storage.media import get_bounded

        assert get_bounded(client, s3.bucket, "m/empty.jpg", max_bytes=10) == b""
        got = []
        real_get = BaseClient._make_api_call

        def small_head(self, operation, params):
            answer = real_get(self, operation, params)
            if operation == "HeadObject":
                answer["ContentLength"] = 10
            if operation == "GetObject":
                got.append(answer["ContentLength"])
            return answer

        monkeypatch.setattr(BaseClient, "_make_api_call", small_head)
        with pytest.raises(MediaError) as e:
            read_media(f"s3://{s3.bucket}/m/big.jpg", max_bytes=1000, kind="image", roots=roots)
        assert e.value.reason == "image_too_large" and got == [1001]
        assert boto3  # the client read_media builds is a botocore BaseClient, patched above
