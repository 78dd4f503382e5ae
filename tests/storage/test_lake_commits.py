"""Chunk commits under contention, on a real local Delta table: the app transaction is
checked before every attempt, a lost acknowledgement is not committed twice, another writer
of the same run fences this one off, and the run lease admits one worker at a time."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import pyarrow as pa
import pyarrow.compute as pc
import pytest
from deltalake import DeltaTable

from moderation.clock import utcnow
from moderation.runs import RunRecord, read_run, write_run
from moderation.schemas import QUARANTINE_SCHEMA
from moderation.storage.lake import ChunkFenced, Lake
from moderation.storage.lease import LeaseHeld, RunLease


def _rows(ids: list[str], run_id: str = "r") -> pa.Table:
    n = len(ids)
    return pa.table({
        "run_id": [run_id] * n, "item_id": ids, "modality": ["text"] * n, "model_id": ["m"] * n,
        "stage": ["preprocess"] * n, "reason": ["no_usable_text"] * n, "detail": [None] * n,
        "quarantined_at": pa.array([utcnow()] * n, QUARANTINE_SCHEMA.field("quarantined_at").type),
        "content_hash": [f"h-{i}" for i in ids],
    })


def test_replayed_chunk_is_skipped_and_lost_ack_changes_nothing(tmp_path):
    lake = Lake(str(tmp_path))
    assert lake.append_chunk("quarantine", _rows(["a"]), app_id="app", version=0)
    assert lake.append_chunk("quarantine", _rows(["b"]), app_id="app", version=1)
    v = lake.version("quarantine")
    # The same chunk again (its commit landed, the writer never learnt): nothing is written.
    assert not lake.append_chunk("quarantine", _rows(["b"]), app_id="app", version=1)
    assert lake.version("quarantine") == v
    assert sorted(lake.read("quarantine").column("item_id").to_pylist()) == ["a", "b"]


def test_commit_conflict_is_reloaded_and_checked_again(tmp_path):
    """Two handles commit the same chunk from the same snapshot: delta-rs rejects the second
    (CommitFailedError, concurrent transaction); append_chunk reloads, sees the chunk, skips."""
    from deltalake import CommitProperties, Transaction

    lake = Lake(str(tmp_path))
    lake.append_chunk("quarantine", _rows(["a"]), app_id="app", version=0)
    stale = DeltaTable(lake.uri("quarantine"))
    # Another writer commits chunk 1 after our snapshot was taken.
    assert lake.append_chunk("quarantine", _rows(["b"]), app_id="app", version=1)
    add = lake.write_data_file("quarantine", _rows(["b"]).cast(QUARANTINE_SCHEMA))
    from deltalake.exceptions import CommitFailedError

    with pytest.raises(CommitFailedError):
        stale.create_write_transaction([add], mode="append", schema=QUARANTINE_SCHEMA,
                                       commit_properties=CommitProperties(app_transactions=[Transaction("app", 1)]))
    assert sorted(lake.read("quarantine").column("item_id").to_pylist()) == ["a", "b"]


def test_other_worker_of_the_run_fences_this_one_off(tmp_path):
    lake = Lake(str(tmp_path))
    lake.append_chunk("quarantine", _rows(["a"]), app_id="app", version=0)
    # This writer last saw chunk 0; meanwhile another process of the run committed chunk 1.
    lake.append_chunk("quarantine", _rows(["b"]), app_id="app", version=1)
    with pytest.raises(ChunkFenced, match="another process is committing this run"):
        lake.append_chunk("quarantine", _rows(["b", "c"]), app_id="app", version=2, expect_previous=0)
    assert lake.read("quarantine").num_rows == 2


def test_same_chunk_number_committed_by_another_writer_fences_this_one_off(tmp_path):
    """The race the real writer makes (issue 15): both writers last saw chunk 0 and both commit
    chunk 1. The one that comes second must stop, not skip its rows as "already committed"."""
    lake = Lake(str(tmp_path))
    assert lake.append_chunk("quarantine", _rows(["a"]), app_id="app", version=0, expect_previous=None, writer="w1")
    assert lake.append_chunk("quarantine", _rows(["b"]), app_id="app", version=1, expect_previous=0, writer="w1")
    with pytest.raises(ChunkFenced, match="already holds chunk 1, this process expected chunk 0 before committing chunk 1"):
        lake.append_chunk("quarantine", _rows(["c"]), app_id="app", version=1, expect_previous=0, writer="w2")
    # The same for the first chunk of a run: another writer created the table with it.
    with pytest.raises(ChunkFenced, match="expected no chunk before committing chunk 0"):
        lake.append_chunk("quarantine", _rows(["d"]), app_id="app", version=0, expect_previous=None, writer="w2")
    assert sorted(lake.read("quarantine").column("item_id").to_pylist()) == ["a", "b"]


@pytest.mark.parametrize("writer", ["w1", None])
def test_own_commit_whose_answer_was_lost_is_success_not_fenced(tmp_path, monkeypatch, writer):
    """A fenced commit that landed but raised on the wire is found on the retry and counted as
    this writer's (its ``<app_id>#<writer>`` transaction), neither fenced nor committed twice."""
    import moderation.storage.lake as lake_module

    lake = Lake(str(tmp_path))
    lake.append_chunk("quarantine", _rows(["a"]), app_id="app", version=0, expect_previous=None, writer="w0")
    lost = []

    def fault(name: str) -> None:
        if name == "after_commit" and not lost:
            lost.append(name)
            raise OSError("connection reset after the commit landed")

    monkeypatch.setattr(lake_module, "fault_point", fault)
    assert lake.append_chunk("quarantine", _rows(["b"]), app_id="app", version=1, expect_previous=0, writer=writer)
    assert lost and lake.transaction_version("quarantine", "app") == 1
    assert sorted(lake.read("quarantine").column("item_id").to_pylist()) == ["a", "b"]


def _scored(ids: list[str]) -> pa.Table:
    """Scored work rows as the pipeline yields them; ``i01``, ``i05``, ... are quarantined."""
    from moderation.classifiers.base import EVIDENCE_TYPE, SCORE_TYPE

    n, bad = len(ids), [int(i[1:]) % 4 == 1 for i in ids]
    return pa.table({
        "item_id": ids, "item_type": ["track"] * n, "language": ["en"] * n,
        "markets": pa.array([["US"]] * n, pa.list_(pa.string())), "explicit": [False] * n, "modality": ["text"] * n,
        "content_hash": ["h" + i for i in ids],
        "category_scores": pa.array([None if b else [("hate", 0.5)] for b in bad], SCORE_TYPE),
        "evidence": pa.array([None if b else [("hate", "title")] for b in bad], EVIDENCE_TYPE),
        "qreason": [("no_usable_text" if b else None) for b in bad],
        "qdetail": [("empty" if b else None) for b in bad],
        "qstage": [("preprocess" if b else None) for b in bad],
    })


RACE_IDS = [f"i{n:02d}" for n in range(20)]  # chunk_pairs 4: chunks 0-4, each with one quarantined item


def _race_worker(root: str, role: str, first_chunks_done, barrier, results) -> None:
    """One process of the race: ``stale`` commits chunks 0 and 1 and goes on (its lease lost,
    it does not know); ``resumer`` starts after them, as a resume with the same run id does.
    Both reach the commit of chunk 2 together (the barrier sits after the fence check, before
    the Delta commit), then go on to the end of the run unless fenced."""
    import moderation.storage.lake as lake_module
    from moderation.config import load_model_registry
    from moderation.scoring.backfill import _done_ids
    from moderation.scoring.chunks import ChunkWriter

    armed = []
    real_fault_point = lake_module.fault_point

    def at_commit(name: str) -> None:
        if name == "before_commit" and armed:
            armed.clear()
            barrier.wait(timeout=60)
        real_fault_point(name)

    lake_module.fault_point = at_commit
    lake = Lake(root)
    model = load_model_registry()["text-minilm-heads-v1"]
    if role == "stale":
        writer = ChunkWriter(lake, run_id="r", model=model, chunk_pairs=4)
        writer.add(_scored(RACE_IDS[:8]))
        first_chunks_done.set()
    else:
        assert first_chunks_done.wait(timeout=60)
        writer = ChunkWriter(lake, run_id="r", model=model, chunk_pairs=4)
    done = _done_ids(lake, "r", model.model_id)
    assert set(done.to_pylist()) == set(RACE_IDS[:8]) and writer.next_chunk == 2, (done, writer.next_chunk)
    armed.append(True)
    try:
        for start in range(8, len(RACE_IDS), 4):
            writer.add(_scored(RACE_IDS[start:start + 4]))
        writer.flush()
    except ChunkFenced as e:
        results.put((role, "fenced", writer.next_chunk, writer.rows_written, str(e)))
    else:
        results.put((role, "finished", writer.next_chunk, writer.rows_written, ""))


def test_two_processes_racing_for_one_chunk_number_the_loser_stops_there(tmp_path):
    """A stale worker and a resumer of one run commit chunk 2 at the same moment (two real
    processes). Exactly one commit lands; the other process raises ChunkFenced at chunk 2,
    having committed nothing of it, and the table holds every pair exactly once. (The same on
    S3: tests/storage/test_lease.py.)"""
    race_for_one_chunk(str(tmp_path))


def race_for_one_chunk(root: str) -> None:
    """The race of the test above on the lake at ``root``, with its assertions."""
    import multiprocessing

    from moderation.scoring.backfill import run_accounting

    ctx = multiprocessing.get_context("spawn")
    first_chunks_done, barrier, results = ctx.Event(), ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_race_worker, args=(root, role, first_chunks_done, barrier, results))
             for role in ("stale", "resumer")]
    [p.start() for p in procs]
    outcomes = {}
    for _ in procs:
        role, outcome, chunk, rows_written, message = results.get(timeout=120)
        outcomes[role] = (outcome, chunk, rows_written, message)
    [p.join(timeout=60) for p in procs]
    assert [p.exitcode for p in procs] == [0, 0]
    assert sorted(o[0] for o in outcomes.values()) == ["fenced", "finished"], outcomes
    (loser, (_, chunk, _, message)), = [(r, o) for r, o in outcomes.items() if o[0] == "fenced"]
    winner = "stale" if loser == "resumer" else "resumer"
    assert chunk == 2 and "before committing chunk 2" in message and "another process is committing this run" in message
    assert outcomes[loser][2] == ({"scores": 6, "quarantine": 2} if loser == "stale" else {"scores": 0, "quarantine": 0})
    assert outcomes[winner][1] == 5  # the winner committed chunks 2, 3 and 4
    lake = Lake(root)
    scored, quarantined, dupes = run_accounting(lake, "r")
    assert (scored, quarantined, dupes) == (15, 5, 0)
    ids = lake.read("scores").column("item_id").to_pylist() + lake.read("quarantine").column("item_id").to_pylist()
    assert sorted(ids) == RACE_IDS


def test_concurrent_writers_of_different_runs_all_land(tmp_path):
    """Eight threads append chunks of their own runs at once: every chunk lands exactly once."""
    lake = Lake(str(tmp_path))
    lake.append_chunk("quarantine", _rows(["seed"], run_id="seed"), app_id="seed", version=0)
    errors = []

    def writer(w: int) -> None:
        try:
            for c in range(3):
                lake.append_chunk("quarantine", _rows([f"w{w}-c{c}"], run_id=f"w{w}"), app_id=f"w{w}", version=c,
                                  expect_previous=None if c == 0 else c - 1)
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(8)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert not errors
    ids = lake.read("quarantine", filter=pc.field("run_id") != "seed").column("item_id").to_pylist()
    assert sorted(ids) == sorted(f"w{w}-c{c}" for w in range(8) for c in range(3))


def test_lease_admits_one_worker_and_is_taken_over_from_a_dead_one(tmp_path):
    first = RunLease(str(tmp_path), "run-1")
    first.acquire()
    with pytest.raises(LeaseHeld, match=r"held by pid \d+ on host"):
        RunLease(str(tmp_path), "run-1").acquire()
    RunLease(str(tmp_path), "run-2").acquire()  # other runs are independent
    first.release()
    second = RunLease(str(tmp_path), "run-1")
    second.acquire()
    second.release()
    # A holder killed with SIGKILL leaves its lease; a dead pid on this host is stale at once.
    code = ("import os, signal; from moderation.storage.lease import RunLease; "
            f"RunLease({str(tmp_path)!r}, 'run-3').acquire(); os.kill(os.getpid(), signal.SIGKILL)")
    proc = subprocess.run([sys.executable, "-c", code], timeout=60)
    assert proc.returncode == -9 and os.path.exists(tmp_path / "_leases" / "run-3.json")
    taker = RunLease(str(tmp_path), "run-3")
    taker.acquire()
    assert taker.me.owner in (tmp_path / "_leases" / "run-3.json").read_text()
    taker.release()


def test_lease_expires_after_ttl_and_heartbeat_keeps_it(tmp_path):
    holder = RunLease(str(tmp_path), "r", ttl_s=2.0)
    holder.acquire()
    time.sleep(3.0)  # heartbeats every 1 s keep it fresh
    with pytest.raises(LeaseHeld):
        RunLease(str(tmp_path), "r", ttl_s=2.0).acquire()
    holder._stop.set()  # a hung holder: heartbeats stop, the lease ages out
    holder._thread.join()
    time.sleep(2.5)
    taker = RunLease(str(tmp_path), "r", ttl_s=2.0)
    taker.acquire()
    # The paused holder wakes up: its next heartbeat finds the lease taken and fences it off.
    holder._stop.clear()
    holder._thread = threading.Thread(target=holder._beat, daemon=True)
    holder._thread.start()
    time.sleep(1.5)
    with pytest.raises(LeaseHeld, match="taken over"):
        holder.check()
    holder.release()  # must not delete the new holder's lease
    assert taker.me.owner in (tmp_path / "_leases" / "r.json").read_text()
    taker.release()
    assert not (tmp_path / "_leases" / "r.json").exists()


def test_run_accounting_counts_duplicates_across_tables(tmp_path):
    from moderation.scoring.backfill import run_accounting

    lake = Lake(str(tmp_path))
    lake.append_chunk("quarantine", _rows(["a", "b", "b"]), app_id="q", version=0)
    lake.append_chunk("quarantine", _rows(["c"], run_id="other"), app_id="q2", version=0)
    assert run_accounting(lake, "r") == (0, 3, 1)
    assert run_accounting(lake, "o'brien") == (0, 0, 0)  # quoting is safe


def test_run_accounting_in_buckets_finds_every_duplicate(tmp_path):
    """Keys spilled by item bucket: a duplicate is found whichever bucket it falls in, across
    tables and chunks; id-less quarantine rows count but are never keyed."""
    from moderation.schemas import SCORES_SCHEMA
    from moderation.scoring.backfill import run_accounting

    lake = Lake(str(tmp_path))
    ids = [f"i{k:03d}" for k in range(200)]
    lake.append_chunk("quarantine", _rows(ids[:100] + [None, None]), app_id="q", version=0)
    lake.append_chunk("quarantine", _rows(ids[90:95] + ids[90:92]), app_id="q", version=1)  # 5 + 2 more repeats
    scores = _rows(ids[100:]).select(["run_id", "item_id", "modality", "model_id", "content_hash"])
    scores = scores.append_column("model_digest", pa.array(["d"] * 100)).append_column(
        "scored_at", pa.array([utcnow()] * 100, SCORES_SCHEMA.field("scored_at").type))
    from moderation.storage.lake import conform

    lake.append_chunk("scores", conform(scores, SCORES_SCHEMA), app_id="s", version=0)
    lake.append_chunk("scores", conform(scores.slice(0, 3), SCORES_SCHEMA), app_id="s", version=1)
    lake.append_chunk("quarantine", _rows(ids[150:151]), app_id="q", version=2)  # also in scores
    expected = (103, 102 + 7 + 1, 5 + 2 + 3 + 1)
    assert run_accounting(lake, "r") == expected
    assert run_accounting(lake, "r", bucket_rows=7) == expected  # 45 buckets of keys


def test_table_written_before_a_new_column_gains_it(tmp_path):
    """Schema evolution is additive: a quarantine table from before ``content_hash`` existed
    gets the column on the next chunk; its older rows read null."""
    from deltalake import write_deltalake

    old = _rows(["a"]).drop_columns(["content_hash"])
    write_deltalake(str(tmp_path / "quarantine"), old.cast(pa.schema([QUARANTINE_SCHEMA.field(n) for n in old.column_names])))
    lake = Lake(str(tmp_path))
    assert lake.append_chunk("quarantine", _rows(["b"]), app_id="app", version=0)
    got = {r["item_id"]: r["content_hash"] for r in lake.read("quarantine").to_pylist()}
    assert got == {"a": None, "b": "h-b"}


def test_filtered_read_of_a_merged_table(tmp_path):
    """delta-rs MERGE writes string_view columns (delta-rs#4579) that pyarrow cannot compare
    with a string literal; Lake.read still filters them."""
    from deltalake import DeltaTable, write_deltalake

    uri = str(tmp_path / "enforcement")
    write_deltalake(uri, pa.table({"item_id": ["a", "b"], "x": ["1", "2"]}))
    (DeltaTable(uri).merge(pa.table({"item_id": ["a", "c"], "x": ["9", "3"]}), "t.item_id = s.item_id",
                           source_alias="s", target_alias="t")
     .when_matched_update_all().when_not_matched_insert_all().execute())
    got = Lake(str(tmp_path)).read("enforcement", filter=pc.field("item_id").isin(["a", "c"]), columns=["x"])
    assert sorted(got.column("x").to_pylist()) == ["3", "9"]


def test_a_reworded_description_never_breaks_a_lake_written_before(tmp_path):
    """delta-rs refuses a merge or replace whose rows carry a column comment other than the
    table's; rows are written with the table's own comments, and the decide's stream too."""
    from deltalake import DeltaTable, write_deltalake

    from moderation.policy.decide import run_decide
    from moderation.schemas import COMMENT, RUNS_SCHEMA, VIOLATIONS_SCHEMA
    from tests.conftest import POLICY_V1
    from tests.policy.test_decide import T0, scores

    def older(schema: pa.Schema, name: str) -> pa.Schema:
        return pa.schema([f.with_metadata({COMMENT: "an older wording"}) if f.name == name else f for f in schema])

    lake = Lake(str(tmp_path))
    first = RunRecord(run_id="a", kind="backfill", status="running").to_row()
    write_deltalake(lake.uri("runs"), pa.Table.from_pylist([first], schema=RUNS_SCHEMA).cast(older(RUNS_SCHEMA, "kind")))
    write_run(lake, RunRecord(run_id="a", kind="backfill", status="succeeded"))
    assert read_run(lake, "a").status == "succeeded"
    write_deltalake(lake.uri("violations"), VIOLATIONS_SCHEMA.empty_table().cast(older(VIOLATIONS_SCHEMA, "score")),
                    partition_by=["policy_id", "policy_version"])
    lake.append_chunk("scores", scores([("x", {"hate": 0.95, "harassment": 0.1, "spam": 0.1}, False, T0)]),
                      app_id="t", version=0)
    assert run_decide(lake_root=lake.root, policy_path=POLICY_V1).violations == 1  # streamed replace
    assert lake.read("violations").num_rows == 1
    comments = {f.name: (f.metadata or {}).get(COMMENT) for f in DeltaTable(lake.uri("violations")).schema().fields}
    assert comments["score"] == "an older wording"  # kept until `moderation tables --write-comments`
