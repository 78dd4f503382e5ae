"""A real multi-node Ray cluster on this machine: a head that runs no task (``ray start --head
--num-cpus=0``, with the dashboard, so jobs can be submitted and the state API answers) and two
worker nodes on 127.0.0.2 and 127.0.0.3 (one CPU each, custom resource ``worker``), token
authentication as Ray 2.60 turns it on (tests/ray_start.py). Catalog, media and lake live on the
SeaweedFS S3 server the tests run (tests/s3_server.py); every node gets the S3 endpoint and keys
from its own environment, as docs/deployment.md says a cluster's nodes do (their credential chain).

A catalog-safety v3 backfill (text, cover art, audio) is submitted exactly as docs/deployment.md
tells a user: ``ray job submit --working-dir . --runtime-env
deploy/ray/runtime-env.yaml -- python -m moderation backfill …`` from the repository root (the
lake has no evaluation datasets, so the gate lets the draft v3 run: ``not_configured``). The
profile is a small one for this 2-core machine (one 0.5-CPU actor per model, so a worker node
always keeps CPU for the read and preprocess tasks, ray-project/ray#44687).

Asserted: the job succeeds; the accounting invariant; every scoring actor ran on a worker
node (Ray's state API); the scores equal a single-node run's (a private local Ray) of the same
catalog. Then a second run loses a worker node in the middle (SIGKILL to its raylet while it
hosts a live scoring actor): the job completes, or the same command with the same ``--run-id``
resumes it, with nothing lost or duplicated and the same scores.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pytest
import yaml

from moderation.config import default_conf_dir
from moderation.runs import RunRecord, read_run
from moderation.scoring.backfill import run_accounting
from moderation.storage.lake import Lake, storage_options
from tests.ray_start import RayStartCluster
from tests.s3_server import SeaweedS3

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

REPO = Path(__file__).resolve().parents[2]
POLICY_V3 = "conf/policies/catalog-safety/v3.yaml"  # relative: the job's working dir is the upload
RUNTIME_ENV = "deploy/ray/runtime-env.yaml"
WORKERS = ("127.0.0.2", "127.0.0.3")
ITEMS = 12
COVERS = ["horse.png", "text.png", "rocket.jpg", "cell.png"]
CLIPS = ["198-209-0000.ogg", "456440__inspectorj__bird-whistling-robin-single-13.ogg"]


def _catalog(bucket: str) -> pa.Table:
    """12 items: text for all, a cover for 5 (one of them undecodable bytes), audio for 3 (one clip twice)."""
    s3 = f"s3://{bucket}/media"
    covers = [f"{s3}/images/{n}" for n in COVERS] + [f"{s3}/images/junk.jpg"] + [None] * (ITEMS - 5)
    clips = [None, None] + [f"{s3}/audio/{n}" for n in CLIPS] + [f"{s3}/audio/{CLIPS[0]}"] + [None] * (ITEMS - 5)
    titles = ["A calm song about the sea", "Buy cheap followers now!!! click here", "Morning run playlist",
              "I hate you and everyone like you", "Lullaby for a rainy night", "Podcast: gardening tips",
              "   ", "Road trip anthems", "Win a free iphone, text WIN to 80082", "Jazz for studying",
              "Sleep sounds", "Episode 12: the interview"]
    return pa.table({
        "item_id": [f"it{k:02d}" for k in range(ITEMS)],
        "item_type": ["track", "track", "track", "track", "episode", "episode"] * 2,
        "title": titles,
        "description": [f"Item {k} of the multi-node test catalog." for k in range(ITEMS)],
        "cover_image": pa.array(covers, pa.string()),
        "audio_clip": pa.array(clips, pa.string()),
    })


@pytest.fixture(scope="module")
def env(tmp_path_factory, data_dir):
    """S3 with catalog and media, a head and two worker nodes; yields what the tests need."""
    from deltalake import write_deltalake

    root = tmp_path_factory.mktemp("multinode")
    media = Path(data_dir) / "media"
    with SeaweedS3(root / "s3") as s3, pytest.MonkeyPatch.context() as mp:
        for key, value in s3.env.items():
            mp.setenv(key, value)
        client = s3.client()
        for name in COVERS:
            client.upload_file(str(media / "images" / name), s3.bucket, f"media/images/{name}")
        client.put_object(Bucket=s3.bucket, Key="media/images/junk.jpg", Body=b"not an image at all")
        for name in CLIPS:
            client.upload_file(str(media / "audio" / name), s3.bucket, f"media/audio/{name}")
        catalog = f"s3://{s3.bucket}/catalog"
        write_deltalake(catalog, _catalog(s3.bucket), storage_options=storage_options(catalog))
        profile = root / "profile.yaml"
        profile.write_text(yaml.safe_dump({
            "batch_size": 4, "actors": 1, "actor_num_cpus": 0.5, "torch_threads": 1, "chunk_pairs": 3,
            "object_store_mb": 256, "media_roots": [f"s3://{s3.bucket}/media"],
        }))
        env = {"s3": s3, "catalog": catalog, "profile": profile, "lake": Lake(f"s3://{s3.bucket}/lake")}
        # The single-node reference run (see single_node) starts now, while the cluster starts.
        single_env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
        env["single"] = subprocess.Popen([sys.executable, *_backfill_args(env, "single")[1:]], cwd=REPO,
                                         env=single_env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                         text=True, start_new_session=True)
        cluster = env["cluster"] = RayStartCluster(num_cpus=0, dashboard=True)
        cluster.env.update(s3.env)  # every node's credential chain: its environment
        try:
            cluster.start()
            for ip in WORKERS:
                cluster.add_worker(ip, num_cpus=1, resources={"worker": 1})
            yield env
        finally:
            cluster.stop()
            if env["single"].poll() is None:
                os.killpg(env["single"].pid, signal.SIGKILL)
            env["single"].wait()


def _backfill_args(env, run_id: str) -> list[str]:
    return ["python", "-m", "moderation", "backfill", "--catalog", env["catalog"], "--lake", env["lake"].root,
            "--policy", POLICY_V3, "--profile", str(env["profile"]), "--run-id", run_id]


def _submit(env, run_id: str, submission_id: str, *, wait: bool = True) -> subprocess.CompletedProcess:
    cluster = env["cluster"]
    cmd = ["ray", "job", "submit", "--address", cluster.dashboard_url, "--submission-id", submission_id,
           "--working-dir", ".", "--runtime-env", RUNTIME_ENV, *([] if wait else ["--no-wait"]), "--",
           *_backfill_args(env, run_id)]
    return subprocess.run(cmd, cwd=REPO, env=cluster.env, capture_output=True, text=True, timeout=400)


def _job(env, submission_id: str) -> dict:
    """The job's status and logs, from the job-submission API (in the cluster's environment: its token)."""
    code = ("import json, sys; from ray.job_submission import JobSubmissionClient; "
            "c = JobSubmissionClient(sys.argv[1]); i = c.get_job_info(sys.argv[2]); "
            "print(json.dumps({'status': str(i.status.value), 'logs': c.get_job_logs(sys.argv[2])}))")
    r = subprocess.run([sys.executable, "-c", code, env["cluster"].dashboard_url, submission_id],
                       env=env["cluster"].env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def _state(env, what: str) -> list[dict]:
    """Ray's state API (``ray.util.state``) over the dashboard: every actor (alive and dead) or node."""
    code = (f"import json; from ray.util.state import list_{what}; "
            f"print(json.dumps([a.__dict__ if hasattr(a, '__dict__') else dict(a) for a in "
            f"list_{what}(address={env['cluster'].dashboard_url!r}, limit=10000, detail=True)], default=str))")
    r = subprocess.run([sys.executable, "-c", code], env=env["cluster"].env, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def _score_actors(env) -> list[dict]:
    return [a for a in _state(env, "actors") if "ScoreActor" in (a.get("class_name") or "")]


def _node_ips(env) -> dict[str, str]:
    return {n["node_id"]: n["node_ip"] for n in _state(env, "nodes")}


def _scores(lake: Lake, run_id: str) -> dict[tuple, tuple]:
    import pyarrow.compute as pc

    rows = lake.read("scores").filter(pc.field("run_id") == run_id).to_pylist()
    return {(r["item_id"], r["modality"], r["model_id"]): (r["model_digest"], r["content_hash"],
                                                          dict(r["category_scores"] or {})) for r in rows}


def _assert_same_scores(got: dict, want: dict) -> None:
    assert got.keys() == want.keys()
    for key, (digest, content, cats) in want.items():
        g_digest, g_content, g_cats = got[key]
        assert (g_digest, g_content) == (digest, content), key
        assert g_cats.keys() == cats.keys(), key
        for c, v in cats.items():
            assert g_cats[c] == pytest.approx(v, abs=1e-4), (key, c)


def _assert_accounted(lake: Lake, run_id: str) -> RunRecord:
    run = read_run(lake, run_id)
    scored, quarantined, dupes = run_accounting(lake, run_id)
    assert run.status == "succeeded", run
    assert dupes == 0 and scored + quarantined == run.selected_pairs, (scored, quarantined, run)
    return run


@pytest.fixture(scope="module")
def single_node(env):
    """The same backfill on one node: the CLI with a private local Ray (no address), started by ``env``."""
    _, err = env["single"].communicate(timeout=400)
    assert env["single"].returncode == 0, err[-3000:]
    _assert_accounted(env["lake"], "single")
    return _scores(env["lake"], "single")


def test_submitted_v3_backfill_runs_on_the_worker_nodes(env, single_node):
    r = _submit(env, "multi", "multinode-1")
    job = _job(env, "multinode-1")
    assert job["status"] == "SUCCEEDED", (r.stdout + r.stderr)[-3000:] + job["logs"][-3000:]
    lake = env["lake"]
    run = _assert_accounted(lake, "multi")
    # text for 12 items; 3 image models (OCR, open_nsfw, PDQ) for 5 covers; audio for 3 clips.
    assert run.selected_pairs == ITEMS + 3 * 5 + 3
    # A lake with no evaluation datasets: the gate compares nothing and lets the draft run
    # (with evaluations that block it, docs/deployment.md's command needs --force, recorded in runs).
    assert run.gate_status == "not_configured" and not run.forced, run
    ips = _node_ips(env)
    actors = _score_actors(env)
    assert actors, "no scoring actor in Ray's state API"
    where = {ips[a["node_id"]] for a in actors}
    assert where <= set(WORKERS), where
    print(f"{len(actors)} scoring actors on {sorted(where)}")
    _assert_same_scores(_scores(lake, "multi"), single_node)


def test_a_worker_node_killed_mid_run_loses_nothing(env, single_node):
    cluster, lake = env["cluster"], env["lake"]
    r = _submit(env, "killed", "multinode-2", wait=False)
    assert r.returncode == 0, r.stdout + r.stderr
    ips = _node_ips(env)
    victim = None
    deadline = time.monotonic() + 240
    while victim is None and time.monotonic() < deadline:
        if _job(env, "multinode-2")["status"] in ("SUCCEEDED", "FAILED", "STOPPED"):
            break
        for a in _score_actors(env):
            if a["state"] == "ALIVE" and ips.get(a["node_id"]) in WORKERS:
                victim = ips[a["node_id"]]
                break
        else:
            time.sleep(0.5)
    assert victim is not None, "no scoring actor came alive on a worker node before the job ended"
    cluster.kill_raylet(victim)
    deadline = time.monotonic() + 300
    while (job := _job(env, "multinode-2"))["status"] not in ("SUCCEEDED", "FAILED", "STOPPED"):
        assert time.monotonic() < deadline, "the job neither finished nor failed after the node was lost"
        time.sleep(2)
    assert victim not in cluster.alive_nodes()
    print(f"killed the raylet of {victim}; the job {job['status']}")
    if job["status"] != "SUCCEEDED":
        # Resume: the same command, the same run id (a RayJob's retry does this).
        r = _submit(env, "killed", "multinode-3")
        job = _job(env, "multinode-3")
        assert job["status"] == "SUCCEEDED", job["logs"][-3000:]
    _assert_accounted(lake, "killed")
    _assert_same_scores(_scores(lake, "killed"), single_node)
