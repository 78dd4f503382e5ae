"""Several jobs on one lake at once: two backfills over different catalog slices (separate
processes, each with its own local Ray), decides of two policy versions racing each other,
and readers that must never see a half-written version; a second worker on a live run is
refused."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import pyarrow.compute as pc
import pytest
import yaml

from moderation.demo.catalog import write_demo_catalog
from moderation.policy.decide import run_decide
from moderation.runs import read_run
from moderation.scoring.backfill import run_accounting
from moderation.scoring.chaos import backfill_command
from moderation.storage.lake import Lake
from tests.conftest import POLICY_V1, POLICY_V2

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]


@pytest.fixture(scope="module")
def two_backfills(tmp_path_factory, data_dir):
    root = tmp_path_factory.mktemp("conc")
    catalog = write_demo_catalog(str(root / "catalog"), items=60, data_dir=data_dir)
    profile = root / "profile.yaml"
    profile.write_text(yaml.safe_dump({"batch_size": 8, "actors": 1, "actor_num_cpus": 1.0, "torch_threads": 1,
                                       "chunk_pairs": 8}))
    lake = Lake(str(root / "lake"))
    slices = {"tracks": "item_type = 'track'", "others": "item_type <> 'track'"}
    procs = {
        name: subprocess.Popen(backfill_command(catalog.uri, lake.root, POLICY_V1, name, profile, ["--where", where]),
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for name, where in slices.items()
    }
    outputs = {name: p.communicate(timeout=500)[0] for name, p in procs.items()}
    return {"root": root, "catalog": catalog, "lake": lake, "profile": profile, "procs": procs, "outputs": outputs}


def test_two_backfills_on_one_lake_both_finish_with_all_rows(two_backfills):
    lake, procs, outputs = two_backfills["lake"], two_backfills["procs"], two_backfills["outputs"]
    from deltalake import DeltaTable

    types = DeltaTable(two_backfills["catalog"].uri).to_pyarrow_table(columns=["item_type"]).column("item_type")
    tracks = pc.sum(pc.equal(types, "track")).as_py()
    expected = {"tracks": tracks, "others": len(types) - tracks}
    for name, proc in procs.items():
        assert proc.returncode == 0, outputs[name]
        run = read_run(lake, name)
        scored, quarantined, dupes = run_accounting(lake, name)
        assert run.status == "succeeded" and dupes == 0
        assert scored + quarantined == run.selected_pairs == expected[name]
    assert lake.read("runs").num_rows == 2


def test_racing_decides_and_readers_never_see_a_half_written_version(two_backfills):
    lake = two_backfills["lake"]
    first = {v: run_decide(lake_root=lake.root, policy_path=p) for v, p in ((1, POLICY_V1), (2, POLICY_V2))}
    full = {}
    for v in (1, 2):
        rows = lake.read("violations", filter=pc.field("policy_version") == v)
        full[v] = sorted(zip(rows.column("item_id").to_pylist(), rows.column("category").to_pylist()))
        assert len(full[v]) == first[v].violations + first[v].reviews > 0
    stop = threading.Event()
    errors: list[BaseException] = []
    seen: list[tuple[int, list]] = []

    def decider(policy):
        try:
            for _ in range(4):
                run_decide(lake_root=lake.root, policy_path=policy)
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    def reader():
        while not stop.is_set():
            for v in (1, 2):
                rows = lake.read("violations", filter=pc.field("policy_version") == v)
                seen.append((v, sorted(zip(rows.column("item_id").to_pylist(), rows.column("category").to_pylist()))))
            time.sleep(0.01)

    threads = [threading.Thread(target=decider, args=(p,)) for p in (POLICY_V1, POLICY_V2)]
    watcher = threading.Thread(target=reader)
    watcher.start()
    [t.start() for t in threads]
    [t.join() for t in threads]
    stop.set()
    watcher.join()
    assert not errors, errors
    assert len(seen) > 10
    assert all(rows == full[v] for v, rows in seen)  # every read saw one whole version
    decides = lake.read("runs", filter=pc.field("kind") == "decide").num_rows
    assert decides == 2 + 8  # every decide recorded its run, none lost to a conflict


def test_second_worker_on_a_live_run_is_refused(two_backfills):
    root, catalog, lake = two_backfills["root"], two_backfills["catalog"], Lake(str(two_backfills["root"] / "lake2"))
    cmd = backfill_command(catalog.uri, lake.root, POLICY_V1, "busy", two_backfills["profile"])
    first = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lease = root / "lake2" / "_leases" / "busy.json"
    deadline = time.monotonic() + 120
    while not lease.exists() and time.monotonic() < deadline and first.poll() is None:
        time.sleep(0.2)
    assert lease.exists(), "the first worker never took the lease"
    second = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    out = first.communicate(timeout=400)[0]
    assert second.returncode == 2 and "another process is working on this run" in second.stderr
    assert first.returncode == 0, out
    scored, quarantined, dupes = run_accounting(lake, "busy")
    assert dupes == 0 and scored + quarantined == 60 and not lease.exists()
