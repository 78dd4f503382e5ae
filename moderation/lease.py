"""One worker per run: a lease object in the lake (``<lake>/_leases/<run_id>.json``).

A backfill holds its run's lease while it commits; a second process resuming the same run id
while the first is alive is refused with a clear error, so two workers of one run never race
(the per-chunk app transaction check in ``Lake.append_chunk`` fences off any process that
loses its lease anyway). The lease is created atomically (``O_EXCL`` on a local disk,
``If-None-Match: *`` on S3), renewed by a heartbeat thread, and released at the end.

A lease left by a killed process is taken over when it is provably stale: its holder ran on
this host and that pid is gone, or its heartbeat is older than ``ttl_s`` (any host). Takeover
is a compare-and-swap (a claim file created with ``O_EXCL`` naming the stale holder, or
``If-Match`` on the stale object's ETag on S3), so two resumers cannot both take it over.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass

from moderation.errors import LakeError
from moderation.lake import join_uri

log = logging.getLogger(__name__)


class LeaseHeld(LakeError):
    """Another live process holds the run's lease."""


@dataclass
class _Holder:
    owner: str
    host: str
    pid: int
    heartbeat: float

    @classmethod
    def parse(cls, raw: bytes) -> "_Holder":
        d = json.loads(raw)
        return cls(owner=d["owner"], host=d["host"], pid=int(d["pid"]), heartbeat=float(d["heartbeat"]))

    def dump(self) -> bytes:
        return json.dumps({"owner": self.owner, "host": self.host, "pid": self.pid, "heartbeat": self.heartbeat}).encode()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RunLease:
    """Context manager holding ``run_id``'s lease under ``lake_root``."""

    def __init__(self, lake_root: str, run_id: str, *, ttl_s: float = 600.0) -> None:
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in run_id)
        self.uri = join_uri(lake_root, "_leases", f"{safe}.json")
        self.ttl_s = ttl_s
        self.me = _Holder(owner=uuid.uuid4().hex, host=socket.gethostname(), pid=os.getpid(), heartbeat=time.time())
        self._store = _S3Store(self.uri) if self.uri.startswith("s3://") else _LocalStore(self.uri)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.lost = False

    # -- acquire / release -------------------------------------------------------------
    def acquire(self) -> None:
        for _ in range(3):
            self.me.heartbeat = time.time()
            if self._store.create(self.me.dump()):
                break
            current, tag = self._store.read()
            if current is None:
                continue  # released between our create and read
            if not self._stale(current):
                age = time.time() - current.heartbeat
                raise LeaseHeld(
                    f"run lease {self.uri} is held by pid {current.pid} on host {current.host} (heartbeat "
                    f"{age:.0f} s ago): another process is working on this run. Wait for it to finish; if it "
                    f"died on another host, the lease expires {self.ttl_s:.0f} s after its last heartbeat"
                )
            if self._store.take_over(current, tag, self.me.dump()):
                log.warning("took over stale run lease %s from pid %d on %s", self.uri, current.pid, current.host)
                break
        else:
            raise LeaseHeld(f"run lease {self.uri}: could not be acquired (contended); retry")
        self._thread = threading.Thread(target=self._beat, name="run-lease-heartbeat", daemon=True)
        self._thread.start()

    def _stale(self, holder: _Holder) -> bool:
        if holder.host == self.me.host and not _pid_alive(holder.pid):
            return True
        return time.time() - holder.heartbeat > self.ttl_s

    def _beat(self) -> None:
        while not self._stop.wait(max(1.0, self.ttl_s / 4)):
            try:
                current, tag = self._store.read()
                if current is None or current.owner != self.me.owner:
                    self.lost = True
                    log.error("run lease %s was taken by another process", self.uri)
                    return
                self.me.heartbeat = time.time()
                self._store.replace(self.me.dump(), tag)
            except Exception as e:  # noqa: BLE001 - a missed heartbeat is retried next period
                log.warning("run lease heartbeat failed: %s", type(e).__name__)

    def check(self) -> None:
        """Raise LeaseHeld if this process no longer holds the lease."""
        if self.lost:
            raise LeaseHeld(f"run lease {self.uri} was taken over by another process; stopping")

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        try:
            current, _ = self._store.read()
            if current is not None and current.owner == self.me.owner:
                self._store.delete()
        except Exception as e:  # noqa: BLE001 - a stale lease is taken over by the next run
            log.warning("could not release run lease %s: %s", self.uri, type(e).__name__)

    def __enter__(self) -> "RunLease":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


class _LocalStore:
    def __init__(self, path: str) -> None:
        self.path = path

    def create(self, data: bytes) -> bool:
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        return True

    def read(self) -> tuple[_Holder | None, None]:
        try:
            with open(self.path, "rb") as f:
                raw = f.read()
        except FileNotFoundError:
            return None, None
        try:
            return _Holder.parse(raw), None
        except (ValueError, KeyError):  # a torn write by a killed process: treat as long stale
            return _Holder(owner="?", host="?", pid=-1, heartbeat=0.0), None

    def take_over(self, stale: _Holder, _tag, data: bytes) -> bool:
        claim = f"{self.path}.claim-{stale.owner}-{int(stale.heartbeat)}"
        try:
            fd = os.open(claim, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False  # another process is taking over this same stale lease
        os.close(fd)
        self.replace(data, None)
        return True

    def replace(self, data: bytes, _tag) -> None:
        tmp = f"{self.path}.{uuid.uuid4().hex}.tmp"
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, self.path)

    def delete(self) -> None:
        base = os.path.basename(self.path)
        folder = os.path.dirname(self.path)
        for name in os.listdir(folder):
            if name.startswith(base + ".claim-"):
                os.unlink(os.path.join(folder, name))
        os.unlink(self.path)


class _S3Store:
    def __init__(self, uri: str) -> None:
        import boto3
        from botocore.config import Config

        from moderation.lake import storage_options

        self.bucket, _, self.key = uri[len("s3://"):].partition("/")
        self.client = boto3.client(
            "s3", endpoint_url=(storage_options(uri) or {}).get("AWS_ENDPOINT_URL"),
            config=Config(retries={"max_attempts": 3, "mode": "standard"}, connect_timeout=5, read_timeout=30),
        )

    def _code(self, e) -> str:
        return e.response.get("Error", {}).get("Code", "")

    def create(self, data: bytes) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.client.put_object(Bucket=self.bucket, Key=self.key, Body=data, IfNoneMatch="*")
            return True
        except ClientError as e:
            if self._code(e) in ("PreconditionFailed", "412", "ConditionalRequestConflict"):
                return False
            raise

    def read(self):
        from botocore.exceptions import ClientError

        try:
            obj = self.client.get_object(Bucket=self.bucket, Key=self.key)
        except ClientError as e:
            if self._code(e) in ("NoSuchKey", "404", "NotFound"):
                return None, None
            raise
        raw = obj["Body"].read()
        try:
            return _Holder.parse(raw), obj["ETag"]
        except (ValueError, KeyError):
            return _Holder(owner="?", host="?", pid=-1, heartbeat=0.0), obj["ETag"]

    def take_over(self, _stale, tag, data: bytes) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.client.put_object(Bucket=self.bucket, Key=self.key, Body=data, IfMatch=tag)
            return True
        except ClientError as e:
            if self._code(e) in ("PreconditionFailed", "412", "ConditionalRequestConflict", "NoSuchKey"):
                return False
            raise

    def replace(self, data: bytes, tag) -> None:
        self.client.put_object(Bucket=self.bucket, Key=self.key, Body=data, **({"IfMatch": tag} if tag else {}))

    def delete(self) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self.key)
