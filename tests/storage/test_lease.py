"""The run lease on both stores: a local folder and a real S3 server (SeaweedFS on loopback, see
tests/s3_server.py). A second worker is refused; a stale lease is taken over after its TTL; of
several resumers racing to take one stale lease over (real processes) exactly one wins; the
heartbeat is a compare-and-swap, so a holder whose lease was taken over (paused past the TTL)
learns it and stops without writing over the new holder; an S3 server that ignores conditional
writes is refused. And the chunk fencing of Lake.append_chunk on S3."""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import threading
import time
import uuid

import pytest

from moderation.storage.lease import LeaseHeld, LeaseUnsupported, RunLease, _Holder
from tests.s3_server import serving

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    with serving(tmp_path_factory.mktemp("seaweed-lease")) as server:
        yield server


@pytest.fixture(params=["local", pytest.param("s3", marks=pytest.mark.integration)])
def root(request, tmp_path) -> str:
    if request.param == "local":
        return str(tmp_path / "lake")
    server = request.getfixturevalue("s3")
    return f"s3://{server.bucket}/lease-{uuid.uuid4().hex[:8]}"


def _run_id() -> str:
    return f"run-{uuid.uuid4().hex[:8]}"


def _holder_now(root: str, run_id: str) -> _Holder | None:
    return RunLease(root, run_id)._store.read()[0]


def _pause_heartbeat(lease: RunLease) -> None:
    """The holder stops renewing, as a paused (SIGSTOP, GC, VM freeze) process does."""
    lease._stop.set()
    lease._thread.join()


def test_second_worker_is_refused_and_release_frees_the_lease(root):
    run_id = _run_id()
    first = RunLease(root, run_id, ttl_s=60)
    first.acquire()
    with pytest.raises(LeaseHeld, match=r"held by pid \d+ on host .*another process is working on this run"):
        RunLease(root, run_id, ttl_s=60).acquire()
    first.release()
    assert _holder_now(root, run_id) is None
    second = RunLease(root, run_id, ttl_s=60)
    second.acquire()
    assert _holder_now(root, run_id).owner == second.me.owner
    second.release()
    assert _holder_now(root, run_id) is None


def test_stale_lease_is_taken_over_after_its_ttl_and_the_old_holder_stops_at_check(root):
    """The holder pauses past the TTL; a resumer takes the lease over; when the holder wakes, its
    next ``check()`` renews first (compare-and-swap), finds the lease gone and raises, and its
    release leaves the new holder's lease in place."""
    run_id = _run_id()
    holder = RunLease(root, run_id, ttl_s=1.0)
    holder.acquire()
    _pause_heartbeat(holder)
    with pytest.raises(LeaseHeld):  # not stale yet
        RunLease(root, run_id, ttl_s=1.0).acquire()
    time.sleep(1.3)
    taker = RunLease(root, run_id, ttl_s=1.0)
    taker.acquire()
    assert _holder_now(root, run_id).owner == taker.me.owner
    with pytest.raises(LeaseHeld, match="was taken over by another process"):
        holder.check()
    holder.release()
    assert _holder_now(root, run_id).owner == taker.me.owner
    taker.check()  # the new holder goes on
    taker.release()
    assert _holder_now(root, run_id) is None


class _TakeoverDuringHeartbeat:
    """Wraps the holder's store: a takeover by ``taker`` lands in the middle of the holder's
    first heartbeat (after it read the lease, or just before it writes, whichever it does first)."""

    def __init__(self, store, taker: RunLease) -> None:
        self._store, self._taker, self.fired = store, taker, threading.Event()

    def __getattr__(self, name):
        method = getattr(self._store, name)

        def call(*args, **kwargs):
            if self.fired.is_set():
                return method(*args, **kwargs)
            if name == "read":
                result = method(*args, **kwargs)
                self._take_over()
                return result
            self._take_over()
            return method(*args, **kwargs)

        return call

    def _take_over(self) -> None:
        self.fired.set()
        self._taker.acquire()


def test_heartbeat_racing_a_takeover_does_not_overwrite_the_new_holder(root):
    """The heartbeat is a compare-and-swap on both stores: a takeover between the holder's read
    and write (local: read-then-replace wrote over the taker) leaves the taker holding the lease
    and the holder ``lost``."""
    run_id = _run_id()
    holder = RunLease(root, run_id, ttl_s=2.0)
    holder.acquire()
    time.sleep(0.1)
    taker = RunLease(root, run_id, ttl_s=0.05)  # sees the holder's heartbeat as stale
    proxy = _TakeoverDuringHeartbeat(holder._store, taker)
    holder._store = proxy
    assert proxy.fired.wait(timeout=10), "the holder never sent a heartbeat"
    deadline = time.monotonic() + 10
    while not holder.lost and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _holder_now(root, run_id).owner == taker.me.owner
    with pytest.raises(LeaseHeld, match="taken over"):
        holder.check()
    holder.release()
    assert _holder_now(root, run_id).owner == taker.me.owner
    taker.release()


def _race_takeover(root: str, run_id: str, start, finish, results) -> None:
    lease = RunLease(root, run_id, ttl_s=60)
    start.wait(timeout=60)
    try:
        lease.acquire()
    except LeaseHeld as e:
        results.put(("held", str(e)))
        return
    results.put(("won", lease.me.owner))
    finish.wait(timeout=60)  # stay alive (a dead pid on this host would make the lease stale)
    lease.release()


def test_resumers_racing_to_take_over_a_stale_lease_exactly_one_wins(root):
    """Three processes find the same stale lease (a holder on another host, heartbeat long ago)
    and take it over at the same moment: one wins, the others are refused."""
    run_id = _run_id()
    RunLease(root, run_id)._store.create(_Holder(owner="gone", host="elsewhere", pid=1, heartbeat=0.0).dump())
    ctx = multiprocessing.get_context("spawn")
    start, finish, results = ctx.Barrier(3), ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_race_takeover, args=(root, run_id, start, finish, results)) for _ in range(3)]
    [p.start() for p in procs]
    try:
        outcomes = [results.get(timeout=90) for _ in procs]
        won = [who for what, who in outcomes if what == "won"]
        assert len(won) == 1, outcomes
        assert all("another process is working on this run" in msg for what, msg in outcomes if what == "held")
        assert _holder_now(root, run_id).owner == won[0]
    finally:
        finish.set()
        [p.join(timeout=60) for p in procs]
    assert [p.exitcode for p in procs] == [0] * 3
    assert _holder_now(root, run_id) is None


_PAUSED_HOLDER = """
import sys, time
from moderation.storage.lease import LeaseHeld, RunLease
lease = RunLease(sys.argv[1], sys.argv[2], ttl_s=1.0)
lease.acquire()
print("acquired", lease.me.owner, flush=True)
deadline = time.monotonic() + 60
try:
    while time.monotonic() < deadline:
        lease.check()  # the run checks before every batch it commits
        time.sleep(0.02)
    print("never stopped", flush=True)
except LeaseHeld as e:
    print("stopped:", e, flush=True)
lease.release()
"""


def test_holder_process_paused_past_the_ttl_stops_and_leaves_the_new_lease(root):
    """A real holder process is stopped (SIGSTOP) past the TTL, a resumer takes over, the holder
    is continued (SIGCONT): it stops at its next check and the lease stays the resumer's."""
    run_id = _run_id()
    proc = subprocess.Popen([sys.executable, "-c", _PAUSED_HOLDER, root, run_id], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=os.environ.copy())
    try:
        first = proc.stdout.readline()
        assert first.startswith("acquired"), first + proc.stderr.read()
        os.kill(proc.pid, signal.SIGSTOP)
        time.sleep(1.5)
        taker = RunLease(root, run_id, ttl_s=1.0)
        taker.acquire()
        os.kill(proc.pid, signal.SIGCONT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGCONT)
            proc.kill()
    assert proc.returncode == 0, err
    assert out.startswith("stopped: run lease") and "was taken over by another process" in out, out + err
    assert _holder_now(root, run_id).owner == taker.me.owner
    taker.check()
    taker.release()


@pytest.mark.integration
def test_s3_server_that_ignores_conditional_writes_is_refused(s3, monkeypatch):
    """Simulates an S3 server that drops If-None-Match / If-Match (the client strips them): the
    lease is refused with a clear error instead of trusted, and nothing is left behind."""
    root = f"s3://{s3.bucket}/lease-{uuid.uuid4().hex[:8]}"
    run_id = _run_id()
    lease = RunLease(root, run_id)
    client = lease._store.client
    real_put = client.put_object

    def unconditional_put(**kwargs):
        kwargs.pop("IfNoneMatch", None)
        kwargs.pop("IfMatch", None)
        return real_put(**kwargs)

    monkeypatch.setattr(client, "put_object", unconditional_put)
    with pytest.raises(LeaseUnsupported, match=r"ignores If-None-Match: \* .* and If-Match"):
        lease.acquire()
    assert _holder_now(root, run_id) is None


@pytest.mark.integration
def test_two_processes_racing_for_one_chunk_number_on_s3_the_loser_stops_there(s3):
    """Fencing on S3 (delta-rs commits are If-None-Match PUTs there): a stale worker and a
    resumer commit chunk 2 at the same moment; the loser raises ChunkFenced at chunk 2 and the
    tables hold every pair exactly once (tests/storage/test_lake_commits.py runs it on a local folder)."""
    from tests.storage.test_lake_commits import race_for_one_chunk

    race_for_one_chunk(f"s3://{s3.bucket}/race-{uuid.uuid4().hex[:8]}")


@pytest.mark.integration
def test_seaweedfs_honours_conditional_puts(s3):
    """What the S3 lease relies on, checked against the server itself (SeaweedFS 4.48): a second
    If-None-Match: * PUT and an If-Match PUT on a superseded ETag are refused with 412, and of
    eight concurrent conditional PUTs exactly one lands."""
    from concurrent.futures import ThreadPoolExecutor

    from botocore.exceptions import ClientError

    client, key = s3.client(), f"probe-{uuid.uuid4().hex[:8]}"

    def put(**condition) -> str:
        try:
            return client.put_object(Bucket=s3.bucket, Key=key, Body=uuid.uuid4().bytes, **condition)["ETag"]
        except ClientError as e:
            return e.response["Error"]["Code"]

    first = put(IfNoneMatch="*")
    assert first.startswith('"') and put(IfNoneMatch="*") == "PreconditionFailed"
    second = put(IfMatch=first)
    assert second.startswith('"') and put(IfMatch=first) == "PreconditionFailed"
    with ThreadPoolExecutor(8) as pool:
        outcomes = list(pool.map(lambda _: put(IfMatch=second), range(8)))
    assert sum(o.startswith('"') for o in outcomes) == 1 and outcomes.count("PreconditionFailed") == 7, outcomes
