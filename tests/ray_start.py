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

_NODE_PORTS = ("dashboard-agent-listen-port", "dashboard-agent-grpc-port", "runtime-env-agent-port",
               "metrics-export-port", "node-manager-port", "object-manager-port")
_HEAD_PORTS = ("port", "dashboard-port", *_NODE_PORTS)


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
        self.gcs_address: str | None = None
        #: node IP -> its ``ray start --block`` process (see :meth:`add_worker`).
        self.workers: dict[str, subprocess.Popen] = {}
        self._logs: list = []

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
        self.gcs_address = self.address_file.read_text().strip()
        return self.gcs_address

    def add_worker(self, node_ip: str, *, num_cpus: int = 1, resources: dict[str, float] | None = None,
                   object_store_mb: int = 256, timeout_s: float = 90.0) -> subprocess.Popen:
        """Start a worker node (``ray start --address … --block``) on another loopback address
        (``127.0.0.2``, …: all of 127/8 is this machine), in its own process group, with this
        cluster's environment; return once the cluster lists it alive.

        The GCS address is the one the head wrote to its address file (the machine's IP even with
        ``--node-ip-address=127.0.0.1``; the GCS listens on every interface)."""
        if self.gcs_address is None:
            raise RuntimeError("start the head first")
        ports = {flag: free_port() for flag in _NODE_PORTS}
        cmd = [str(Path(sys.executable).with_name("ray")), "start", f"--address={self.gcs_address}", "--block",
               f"--node-ip-address={node_ip}", f"--num-cpus={num_cpus}", "--disable-usage-stats",
               f"--object-store-memory={object_store_mb * 2**20}", f"--resources={json.dumps(resources or {})}",
               *(f"--{flag}={port}" for flag, port in ports.items())]
        log = open(Path(self.tmp) / f"ray-start-{node_ip}.log", "w")
        self._logs.append(log)
        proc = subprocess.Popen(cmd, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.workers[node_ip] = proc
        deadline = time.monotonic() + timeout_s
        while node_ip not in self.alive_nodes():
            if proc.poll() is not None or time.monotonic() > deadline:
                log.flush()
                raise RuntimeError(f"ray start of {node_ip} failed:\n"
                                   f"{(Path(self.tmp) / f'ray-start-{node_ip}.log').read_text()[-3000:]}")
            time.sleep(0.5)
        return proc

    def alive_nodes(self) -> dict[str, str]:
        """Node IP -> node id of every node the GCS lists alive (from the state API; needs the
        dashboard)."""
        code = ("import json; from ray.util.state import list_nodes; "
                f"print(json.dumps({{n.node_ip: n.node_id for n in list_nodes(address={self.dashboard_url!r}) "
                "if n.state == 'ALIVE'}))")
        r = subprocess.run([sys.executable, "-c", code], env=self.env, capture_output=True, text=True, timeout=60)
        if r.returncode:
            return {}
        return json.loads(r.stdout.strip().splitlines()[-1])

    def raylet_pid(self, node_ip: str) -> int:
        """The pid of the raylet of the worker node at ``node_ip``."""
        import psutil

        for p in psutil.Process(self.workers[node_ip].pid).children(recursive=True):
            try:
                if p.name() == "raylet" or (p.cmdline()[:1] and p.cmdline()[0].endswith("/raylet")):
                    return p.pid
            except psutil.NoSuchProcess:
                continue
        raise RuntimeError(f"no raylet under the ray start of {node_ip}")

    def kill_raylet(self, node_ip: str) -> int:
        """SIGKILL the raylet of the worker node at ``node_ip`` (a node failure: its workers and
        actors die with it, the GCS marks it dead); return the pid killed."""
        pid = self.raylet_pid(node_ip)
        os.kill(pid, signal.SIGKILL)
        return pid

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

        for proc in self.workers.values():
            _kill_group(proc)
        self.workers.clear()
        for log in self._logs:
            log.close()
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


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL ``proc``'s process group and every process it started that left it."""
    import psutil

    try:
        descendants = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        descendants = []
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    for p in descendants:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    proc.wait(timeout=30)
    psutil.wait_procs(descendants, timeout=10)
