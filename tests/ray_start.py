"""A real ``ray start`` head on this machine, for tests: isolated and always cleaned up.

Its own temp dir (``$TMPDIR``: Ray writes the ``ray_current_cluster`` address file there, which is
where ``ray.init()`` and ``auto`` look), its own free ports (nothing collides with another Ray on
the machine, e.g. a test session's local one), token authentication as Ray 2.60 turns it on (a
random token in ``$RAY_AUTH_TOKEN``, so nothing is written to ``~/.ray``), and this virtualenv's
``bin`` first on ``PATH`` (a ``ray job submit`` entrypoint's ``python`` is the project's). Give
:attr:`RayStartCluster.env` to every process that talks to it. :meth:`RayStartCluster.stop` kills
its process group and every process it started, never with ``ray stop`` (which stops every Ray on
the machine, other people's too).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

_HEAD_PORTS = ("port", "dashboard-port", "dashboard-agent-listen-port", "dashboard-agent-grpc-port",
               "runtime-env-agent-port", "metrics-export-port", "node-manager-port", "object-manager-port")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RayStartCluster:
    """``ray start --head --block`` on 127.0.0.1 in its own process group.

    Args:
        num_cpus: logical CPUs the head offers.
        dashboard: start the dashboard (the job-submission server ``ray job submit`` talks to,
            at :attr:`dashboard_url`); needs the ``ray[default]`` packages.
        object_store_mb: the head's object store.
    """

    def __init__(self, *, num_cpus: int = 2, dashboard: bool = False, object_store_mb: int = 256) -> None:
        self.num_cpus = num_cpus
        self.dashboard = dashboard
        self.object_store_mb = object_store_mb
        # Short: Ray's Unix socket paths must fit in 107 bytes.
        self.tmp = tempfile.mkdtemp(prefix="rs-", dir="/tmp")
        bin_dir = str(Path(sys.executable).parent)
        self.env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
        self.env.update(TMPDIR=self.tmp, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(16),
                        PATH=bin_dir + os.pathsep + self.env.get("PATH", ""))
        self.address_file = Path(self.tmp) / "ray" / "ray_current_cluster"
        self.ports = {flag: free_port() for flag in _HEAD_PORTS}
        self.dashboard_url = f"http://127.0.0.1:{self.ports['dashboard-port']}"
        self.proc: subprocess.Popen | None = None
        self.log_path = Path(self.tmp) / "ray-start.log"

    def start(self, timeout_s: float = 90.0) -> str:
        """Start the head; return its GCS address once Ray wrote it."""
        cmd = [str(Path(sys.executable).with_name("ray")), "start", "--head", "--block", "--node-ip-address=127.0.0.1",
               f"--num-cpus={self.num_cpus}", f"--include-dashboard={str(self.dashboard).lower()}",
               "--dashboard-host=127.0.0.1", "--disable-usage-stats", f"--object-store-memory={self.object_store_mb * 2**20}",
               *(f"--{flag}={port}" for flag, port in self.ports.items())]
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(cmd, env=self.env, stdout=self._log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while not self.address_file.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self._log.flush()
                raise RuntimeError(f"ray start failed:\n{self.log_path.read_text()[-3000:]}")
            time.sleep(0.2)
        return self.address_file.read_text().strip()

    def jobs(self) -> list[str]:
        """The entrypoints of every driver that joined this cluster: this check's own included, and with
        the dashboard also its agent's."""
        code = ("import json, ray; ray.init(address='auto', logging_level='ERROR'); "
                "from ray._private.state import jobs; print(json.dumps([j.get('Entrypoint', '') for j in jobs()]))")
        r = subprocess.run([sys.executable, "-c", code], env=self.env, capture_output=True, text=True, timeout=120)
        if r.returncode:
            raise RuntimeError(f"listing the cluster's jobs failed:\n{r.stderr[-3000:]}")
        return json.loads(r.stdout.strip().splitlines()[-1])

    def stop(self) -> None:
        """SIGKILL to the process group and to every process it started (a throwaway cluster
        keeps nothing worth a graceful stop), then remove its temp dir."""
        import psutil

        if self.proc is not None:
            try:
                descendants = psutil.Process(self.proc.pid).children(recursive=True)
            except psutil.NoSuchProcess:
                descendants = []
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            for p in descendants:  # anything that left the process group
                try:
                    p.kill()
                except psutil.NoSuchProcess:
                    pass
            self.proc.wait(timeout=30)
            psutil.wait_procs(descendants, timeout=10)
            self._log.close()
            self.proc = None
        shutil.rmtree(self.tmp, ignore_errors=True)
