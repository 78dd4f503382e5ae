"""Which Ray a command uses (moderation/engines/ray.py ``ensure_ray``): ``--ray-address`` or
``$RAY_ADDRESS`` joins that cluster and passes it no memory setting; neither starts a private local
Ray, also on a machine where a ``ray start`` cluster runs (which ``ray.init()`` alone would join
and then refuse ``object_store_memory`` with a ValueError)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from moderation.engines.ray import ensure_ray
from moderation.errors import ClusterError
from moderation.runs import RunRecord
from tests.conftest import POLICY_V1
from tests.ray_start import RayStartCluster


class _FakeRay:
    """Records ``ray.init`` calls; ``fail`` makes it raise like Ray does for a cluster it cannot join."""

    def __init__(self, *, initialized: bool = False, fail: Exception | None = None) -> None:
        self.calls: list[dict] = []
        self.initialized = initialized
        self.fail = fail

    def is_initialized(self) -> bool:
        return self.initialized

    def init(self, **kwargs) -> None:
        self.calls.append(kwargs)
        if self.fail is not None:
            raise self.fail
        self.initialized = True


@pytest.fixture
def fake_ray(monkeypatch):
    import ray

    fake = _FakeRay()
    monkeypatch.setattr(ray, "is_initialized", fake.is_initialized)
    monkeypatch.setattr(ray, "init", fake.init)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    return fake


def test_no_address_starts_a_private_local_ray_with_the_profiles_store(fake_ray):
    assert ensure_ray(None, object_store_mb=512) == "local"
    (call,) = fake_ray.calls
    # "local", not None: Ray would otherwise join the cluster a `ray start` wrote to its temp dir.
    assert call["address"] == "local" and call["object_store_memory"] == 512 * 2**20


@pytest.mark.parametrize("how", ["flag", "env", "flag-auto", "env-auto"])
def test_an_address_joins_and_passes_no_memory_setting(fake_ray, monkeypatch, how):
    import moderation.engines.ray

    monkeypatch.setattr(moderation.engines.ray, "_ray_start_address", lambda: "10.0.0.5:6379")
    address = "auto" if how.endswith("auto") else "10.1.2.3:6379"
    if how.startswith("flag"):
        got = ensure_ray(address, object_store_mb=8192)
    else:
        monkeypatch.setenv("RAY_ADDRESS", address)
        got = ensure_ray(None, object_store_mb=8192)
    assert got == "joined"
    (call,) = fake_ray.calls
    # auto: the address `ray start` wrote, never Ray's fallback to any Ray running here.
    assert call == {"address": "10.0.0.5:6379" if address == "auto" else address, "logging_level": call["logging_level"]}


def test_the_flag_wins_over_the_environment(fake_ray, monkeypatch):
    monkeypatch.setenv("RAY_ADDRESS", "10.9.9.9:6379")
    ensure_ray("10.1.2.3:6379")
    assert fake_ray.calls[0]["address"] == "10.1.2.3:6379"


def test_an_empty_environment_address_means_none(fake_ray, monkeypatch):
    monkeypatch.setenv("RAY_ADDRESS", "")
    assert ensure_ray(None) == "local"


def test_an_initialized_ray_is_kept(fake_ray):
    fake_ray.initialized = True
    assert ensure_ray("10.1.2.3:6379", object_store_mb=512) == "already" and fake_ray.calls == []


def test_a_cluster_that_cannot_be_joined_is_one_clear_error(fake_ray, monkeypatch):
    import moderation.engines.ray

    monkeypatch.setattr(moderation.engines.ray, "_ray_start_address", lambda: None)
    with pytest.raises(ClusterError) as e:
        ensure_ray("auto")
    msg = str(e.value)
    assert "could not join the Ray cluster at 'auto' (from --ray-address)" in msg
    assert "no `ray start` cluster on this machine" in msg and "private local Ray" in msg
    assert fake_ray.calls == []
    fake_ray.fail = ConnectionError("Could not connect to GCS.")
    monkeypatch.setenv("RAY_ADDRESS", "10.1.2.3:6379")
    with pytest.raises(ClusterError, match=r"'10.1.2.3:6379' \(from RAY_ADDRESS\): ConnectionError: Could not"):
        ensure_ray(None)


def test_cli_auto_without_a_ray_start_cluster_is_a_user_error(tmp_path, data_dir):
    """One line, exit 2 (not 3: no store failed), no traceback, and no Ray joined or started."""
    from moderation.demo.catalog import write_demo_catalog

    catalog = write_demo_catalog(str(tmp_path / "catalog"), items=10, data_dir=data_dir, cover_share=0.0,
                                 audio_share=0.0)
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["TMPDIR"] = str(tmp_path)  # Ray's temp dir: no `ray start` address file there
    r = subprocess.run(
        [sys.executable, "-m", "moderation", "backfill", "--catalog", catalog.uri, "--lake", str(tmp_path / "lake"),
         "--policy", str(POLICY_V1), "--ray-address", "auto"],
        env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )
    assert r.returncode == 2, r.stderr
    assert r.stderr.startswith("error: could not join the Ray cluster at 'auto' (from --ray-address): "
                               "no `ray start` cluster on this machine"), r.stderr
    assert "Traceback" not in r.stderr and not (tmp_path / "ray").exists()


# --------------------------------------------------------------------------------------------
# A real `ray start --head` on this machine
# --------------------------------------------------------------------------------------------


@pytest.fixture
def ray_start_cluster():
    cluster = RayStartCluster(num_cpus=2)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.mark.integration
@pytest.mark.timeout(240)
def test_a_running_ray_start_cluster_is_ignored_without_an_address_and_joined_with_one(
    ray_start_cluster, tmp_path, data_dir
):
    from moderation.demo.catalog import write_demo_catalog
    from moderation.storage.lake import Lake

    catalog = write_demo_catalog(str(tmp_path / "catalog"), items=12, data_dir=data_dir, cover_share=0.0,
                                 audio_share=0.0)
    lake = tmp_path / "lake"
    profile = tmp_path / "profile.yaml"
    profile.write_text("batch_size: 16\nactors: 1\nactor_num_cpus: 0.5\ntorch_threads: 1\nobject_store_mb: 128\n")

    # No address: a private local Ray, although ray.init() alone would join the running cluster
    # (whose address file lies in this $TMPDIR) and then refuse object_store_memory.
    r = subprocess.run(
        [sys.executable, "-m", "moderation", "backfill", "--catalog", catalog.uri, "--lake", str(lake),
         "--policy", str(POLICY_V1), "--profile", str(profile), "--run-id", "private", "--verbose"],
        env=ray_start_cluster.env, capture_output=True, text=True, timeout=180, cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert "started a private local Ray" in r.stderr and "ValueError" not in r.stderr
    (run,) = map(RunRecord.from_row, Lake(str(lake)).read("runs").to_pylist())
    assert run.status == "succeeded"
    assert run.selected_pairs == run.scored_pairs + run.quarantined_pairs == 12

    # RAY_ADDRESS=auto: the `ray start` cluster, joined without object_store_memory (the same
    # ensure_ray as a backfill's, through the cheapest command that runs a task on the cluster).
    r = subprocess.run(
        [sys.executable, "-m", "moderation", "models", "verify", "text-minilm-heads-v1", "--on-cluster"],
        env={**ray_start_cluster.env, "RAY_ADDRESS": "auto"}, capture_output=True, text=True, timeout=120,
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stdout + r.stderr[-3000:]
    assert "1 node(s), 4 artifact(s) each: all ok" in r.stdout, r.stdout

    # The cluster saw the verify's driver, not the backfill's (besides this check's own driver).
    entrypoints = ray_start_cluster.jobs()
    assert len(entrypoints) == 2 and any("models verify" in e for e in entrypoints), entrypoints
    assert not any("backfill" in e for e in entrypoints), entrypoints
