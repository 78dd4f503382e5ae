"""One worker per run: a lease object in the lake (``<lake>/_leases/<run_id>.json``).

A backfill holds its run's lease while it commits; a second process resuming the same run id
while the first is alive is refused with a clear error, so two workers of one run never race
(the per-chunk app transaction check in ``Lake.append_chunk`` fences off any process that
loses its lease anyway). The lease is created atomically (``O_EXCL``-like on a local disk,
``If-None-Match: *`` on S3), renewed by a heartbeat thread, and released at the end.

A lease left by a killed process is taken over when it is provably stale: its holder ran on
this host and that pid is gone, or its heartbeat is older than ``ttl_s`` (any host).

Every change after creation is a compare-and-swap on the version the writer last saw: on S3 a
PUT (or DELETE) with ``If-Match`` on the object's ETag; on a local disk the same check and an
atomic ``os.replace``, made under an exclusive ``flock`` on the ``_leases`` folder (the version
is the SHA-256 of the file's bytes). So two resumers cannot both take a stale lease over, and a
holder whose lease was taken over (paused past the TTL, cut off from the store) learns it at its
next heartbeat, or at ``check()`` when that heartbeat is overdue, and stops instead of writing
over the new holder; its ``release()`` leaves the new holder's lease alone.

S3 servers: leases rely on the server honouring ``If-None-Match: *`` and ``If-Match`` on PUT
(AWS S3 since 2024; SeaweedFS 4.48 does, atomically, as tests/storage/test_lease.py checks; delta-rs
commits on S3 rely on the first one too). ``acquire`` probes both on the lease it just wrote,
and a server that ignores either is refused with ``LeaseUnsupported`` rather than trusted.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass

from moderation.errors import LakeError
from moderation.storage.lake import join_uri

log = logging.getLogger(__name__)

#: How long a local lease operation waits for the ``_leases`` folder lock (each holder keeps it
#: for one read and one rename) before giving up as contended.
LOCAL_LOCK_TIMEOUT_S = 30.0


class LeaseHeld(LakeError):
    """Another live process holds the run's lease (or took it over from this one)."""


class LeaseUnsupported(LakeError):
    """The lake's store cannot make a lease safe (an S3 server ignoring conditional writes)."""


@dataclass
class _Holder:
    owner: str
    host: str
    pid: int
    heartbeat: float

    @classmethod
    def parse(cls, raw: bytes) -> _Holder:
        d = json.loads(raw)
        return cls(owner=d["owner"], host=d["host"], pid=int(d["pid"]), heartbeat=float(d["heartbeat"]))

    def dump(self) -> bytes:
        return json.dumps({"owner": self.owner, "host": self.host, "pid": self.pid,
                           "heartbeat": self.heartbeat}).encode()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RunLease:
    """Context manager holding ``run_id``'s lease under ``lake_root``.

    ``check()`` (called by the run before each batch it commits) raises ``LeaseHeld`` once the
    lease was taken over; the heartbeat thread renews it every ``ttl_s / 4`` (at least 1 s).
    """

    def __init__(self, lake_root: str, run_id: str, *, ttl_s: float = 600.0) -> None:
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in run_id)
        self.uri = join_uri(lake_root, "_leases", f"{safe}.json")
        self.ttl_s = ttl_s
        self.me = _Holder(owner=uuid.uuid4().hex, host=socket.gethostname(), pid=os.getpid(), heartbeat=time.time())
        self._store = _S3Store(self.uri) if self.uri.startswith("s3://") else _LocalStore(self.uri)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()  # one renewal at a time (the heartbeat thread, check(), release())
        self._tag: str | None = None  # the store's version of the lease as this process last wrote it
        self._renewed = 0.0  # time.monotonic() of the last write that landed
        self.lost = False

    # -- acquire / release -------------------------------------------------------------
    def acquire(self) -> None:
        """Take the lease: create it, or take it over (compare-and-swap) when it is stale.

        Raises:
            LeaseHeld: a live process holds it, or the takeover kept losing to other resumers.
            LeaseUnsupported: the S3 server ignores conditional writes.
        """
        for _ in range(3):
            self.me.heartbeat = time.time()
            tag = self._store.create(self.me.dump())
            if tag is not None:
                break
            current, tag = self._store.read()
            if current is None:
                continue  # released between our create and read
            if current.owner == self.me.owner:
                break  # our create landed, its answer was lost (and a retry of it refused)
            if not self._stale(current):
                age = time.time() - current.heartbeat
                raise LeaseHeld(
                    f"run lease {self.uri} is held by pid {current.pid} on host {current.host} (heartbeat "
                    f"{age:.0f} s ago): another process is working on this run. Wait for it to finish; if it "
                    f"died on another host, the lease expires {self.ttl_s:.0f} s after its last heartbeat"
                )
            self.me.heartbeat = time.time()
            taken = self._store.swap(tag, self.me.dump())
            if taken is not None:
                log.warning("took over stale run lease %s from pid %d on %s", self.uri, current.pid, current.host)
                tag = taken
                break
            # Changed since we read it: another resumer took it over first, or its holder renewed it.
        else:
            raise LeaseHeld(f"run lease {self.uri}: could not be acquired (contended); retry")
        self._tag, self._renewed = tag, time.monotonic()
        try:
            self._store.verify_conditional(self.me.dump())
        except LeaseUnsupported:
            self._store.delete(None)
            raise
        self._thread = threading.Thread(target=self._beat, name="run-lease-heartbeat", daemon=True)
        self._thread.start()

    def _stale(self, holder: _Holder) -> bool:
        if holder.host == self.me.host and not _pid_alive(holder.pid):
            return True
        return time.time() - holder.heartbeat > self.ttl_s

    def _renew(self) -> None:
        """One heartbeat: a compare-and-swap of the version this process last wrote. A lease
        changed by anyone else marks this process ``lost``; nothing of the new holder's is touched."""
        with self._lock:
            if self.lost or self._tag is None:
                return
            self.me.heartbeat = time.time()
            data = self.me.dump()
            tag = self._store.swap(self._tag, data)
            if tag is None:
                current, current_tag = self._store.read()
                if current is not None and current.owner == self.me.owner:
                    # Our previous write landed but its answer was lost: that version is ours.
                    tag = self._store.swap(current_tag, data)
                if tag is None:
                    self.lost = True
                    holder = f"pid {current.pid} on host {current.host}" if current is not None else "nobody (deleted)"
                    log.error("run lease %s was taken over (now held by %s); this process stops", self.uri, holder)
                    return
            self._tag, self._renewed = tag, time.monotonic()

    def _beat(self) -> None:
        while not self._stop.wait(max(1.0, self.ttl_s / 4)):
            try:
                self._renew()
            except Exception as e:  # noqa: BLE001 - a missed heartbeat is retried next period
                log.warning("run lease heartbeat failed: %s", type(e).__name__)
            if self.lost:
                return

    def check(self) -> None:
        """Raise LeaseHeld if this process no longer holds the lease.

        When the last renewal is older than the TTL (this process was paused, or its heartbeats
        failed), the lease is renewed here first, so a process that wakes up after another took
        the run over learns it before it commits anything more.
        """
        if not self.lost and self._tag is not None and time.monotonic() - self._renewed > self.ttl_s:
            self._renew()
        if self.lost:
            raise LeaseHeld(
                f"run lease {self.uri} was taken over by another process (this one was paused or cut off past "
                f"the {self.ttl_s:.0f} s lease TTL); stopping without committing more. The process that holds "
                f"the lease now goes on with the run"
            )

    def release(self) -> None:
        """Stop the heartbeat and delete the lease if it is still this process's (never another's)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        try:
            with self._lock:
                if self.lost or self._tag is None:
                    return
                if not self._store.delete(self._tag):
                    current, tag = self._store.read()
                    if current is not None and current.owner == self.me.owner:
                        self._store.delete(tag)
                self._tag = None
        except Exception as e:  # noqa: BLE001 - a stale lease is taken over by the next run
            log.warning("could not release run lease %s: %s", self.uri, type(e).__name__)

    def __enter__(self) -> RunLease:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _parse(raw: bytes) -> _Holder:
    try:
        return _Holder.parse(raw)
    except (ValueError, KeyError):  # not a lease this code wrote: treat as long stale
        return _Holder(owner="?", host="?", pid=-1, heartbeat=0.0)


class _LocalStore:
    """A lease file on a local (or POSIX network) disk. Writes are atomic (a temporary file
    renamed over it); every write is a compare-and-swap made under an exclusive ``flock`` on
    the ``_leases`` folder, the version being the SHA-256 of the file's bytes."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.folder = os.path.dirname(path)

    @staticmethod
    def _tag(raw: bytes) -> str:
        return hashlib.sha256(raw).hexdigest()

    @contextlib.contextmanager
    def _locked(self):
        import fcntl

        os.makedirs(self.folder, exist_ok=True)
        fd = os.open(self.folder, os.O_RDONLY)
        try:
            deadline = time.monotonic() + LOCAL_LOCK_TIMEOUT_S
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except OSError as e:
                    if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN) or time.monotonic() > deadline:
                        raise LeaseHeld(f"run lease {self.path}: could not lock {self.folder} ({e}); retry") from e
                    time.sleep(0.005)
            yield
        finally:
            os.close(fd)  # releases the lock

    def _raw(self) -> bytes | None:
        try:
            with open(self.path, "rb") as f:
                return f.read()
        except FileNotFoundError:
            return None

    def _write(self, data: bytes) -> str:
        tmp = f"{self.path}.{uuid.uuid4().hex}.tmp"
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, self.path)
        return self._tag(data)

    def create(self, data: bytes) -> str | None:
        with self._locked():
            return None if os.path.exists(self.path) else self._write(data)

    def read(self) -> tuple[_Holder | None, str | None]:
        raw = self._raw()
        return (None, None) if raw is None else (_parse(raw), self._tag(raw))

    def swap(self, tag: str | None, data: bytes) -> str | None:
        with self._locked():
            raw = self._raw()
            if raw is None or self._tag(raw) != tag:
                return None
            return self._write(data)

    def delete(self, tag: str | None) -> bool:
        with self._locked():
            raw = self._raw()
            if raw is None or (tag is not None and self._tag(raw) != tag):
                return False
            os.unlink(self.path)
            return True

    def verify_conditional(self, data: bytes) -> None:
        """Nothing to verify: the folder lock makes every write conditional."""


#: Error codes of a conditional request that did not apply: 412, and AWS's 409 for two
#: conditional writes of one key at the same moment.
_CONDITION_FAILED = ("PreconditionFailed", "412", "ConditionalRequestConflict", "409")
#: An ETag the lease object cannot have (well formed, but the lease's bytes never hash to it):
#: an If-Match on it must fail.
_NO_SUCH_ETAG = '"00000000000000000000000000000000"'
#: Answers of a server that does not implement conditional DELETE.
_NO_CONDITIONAL_DELETE = ("NotImplemented", "501", "InvalidArgument", "InvalidRequest", "400")


class _S3Store:
    """A lease object on S3: create with ``If-None-Match: *``, every later write and the delete
    with ``If-Match`` on the ETag last seen."""

    def __init__(self, uri: str) -> None:
        import boto3
        from botocore.config import Config

        from moderation.storage.lake import storage_options

        self.bucket, _, self.key = uri[len("s3://"):].partition("/")
        self.client = boto3.client(
            "s3", endpoint_url=(storage_options(uri) or {}).get("AWS_ENDPOINT_URL"),
            config=Config(retries={"max_attempts": 3, "mode": "standard"}, connect_timeout=5, read_timeout=30),
        )

    def _code(self, e) -> str:
        return str(e.response.get("Error", {}).get("Code", ""))

    def _put(self, data: bytes, **condition: str) -> str | None:
        """PUT the lease under ``condition``; its new ETag, or None when the condition failed."""
        from botocore.exceptions import ClientError

        try:
            return self.client.put_object(Bucket=self.bucket, Key=self.key, Body=data, **condition)["ETag"]
        except ClientError as e:
            if self._code(e) in (*_CONDITION_FAILED, "NoSuchKey", "404"):  # If-Match on a deleted lease: 404 on AWS
                return None
            raise

    def create(self, data: bytes) -> str | None:
        return self._put(data, IfNoneMatch="*")

    def read(self) -> tuple[_Holder | None, str | None]:
        from botocore.exceptions import ClientError

        try:
            obj = self.client.get_object(Bucket=self.bucket, Key=self.key)
        except ClientError as e:
            if self._code(e) in ("NoSuchKey", "404", "NotFound"):
                return None, None
            raise
        return _parse(obj["Body"].read()), obj["ETag"]

    def swap(self, tag: str | None, data: bytes) -> str | None:
        return None if tag is None else self._put(data, IfMatch=tag)

    def delete(self, tag: str | None) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.client.delete_object(Bucket=self.bucket, Key=self.key, **({"IfMatch": tag} if tag else {}))
            return True
        except ClientError as e:
            code = self._code(e)
            if code in (*_CONDITION_FAILED, "NoSuchKey", "404"):
                return False
            if tag is None or code not in _NO_CONDITIONAL_DELETE:
                raise
        # A server without conditional DELETE: compare, then delete. Only a takeover landing in
        # between is lost, and this runs only at release, after the run's last commit.
        if self.read()[1] != tag:
            return False
        self.client.delete_object(Bucket=self.bucket, Key=self.key)
        return True

    def verify_conditional(self, data: bytes) -> None:
        """Refuse a server that ignores conditional PUTs: right after this process wrote the
        lease (``data``), a create over it and a swap on an ETag it does not have must both be
        refused. Where either lands, it only rewrote the same bytes."""
        ignored = []
        if self._put(data, IfNoneMatch="*") is not None:
            ignored.append("If-None-Match: * (a PUT over the existing lease object succeeded)")
        if self._put(data, IfMatch=_NO_SUCH_ETAG) is not None:
            ignored.append("If-Match (a PUT naming an ETag the lease object does not have succeeded)")
        if ignored:
            raise LeaseUnsupported(
                f"run lease s3://{self.bucket}/{self.key}: the S3 server at {self.client.meta.endpoint_url} ignores "
                f"{' and '.join(ignored)}. A run lease there cannot keep two workers of one run apart, and "
                f"delta-rs commits (which rely on If-None-Match) are not safe either: use a store that honours "
                f"conditional writes (AWS S3; SeaweedFS 4.48 is tested)"
            )
