"""``moderation models verify``: check every artifact the registry pins, on this machine or on
every alive node of a Ray cluster.

Each artifact is read exactly as a scoring actor reads it (``read_verified``: the SHA-256 of the
very bytes that load, a derived artifact built from its source and cached), so "ok on a node"
means an actor placed there finds and loads it. On a cluster one task runs on each alive node
(pinned there with a hard node-affinity strategy) and reports per artifact.
"""

from __future__ import annotations

import socket
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from moderation.config import ModelSpec, load_policy
from moderation.errors import ArtifactError, ModerationError, one_line

CheckStatus = Literal["ok", "digest mismatch", "missing", "refused", "error"]

#: Object store of a local Ray started only for a verify: its tasks return a few KB each.
_LOCAL_OBJECT_STORE_MB = 128


@dataclass(frozen=True)
class ArtifactCheck:
    """One artifact of one model: ``ok``, ``digest mismatch`` (the bytes or a derived artifact's
    source have another SHA-256 than pinned), ``missing`` (no such file, package or S3 object),
    ``refused`` (a format that could run code, or a converter that failed), ``error`` (anything
    else, e.g. the store could not be reached). ``detail``: where the bytes came from, or the error."""

    model_id: str
    artifact: str
    status: CheckStatus
    detail: str

    @property
    def ok(self) -> bool:
        return self.status == "ok"


@dataclass(frozen=True)
class NodeReport:
    """The checks one Ray node ran; ``error`` when its task did not report (node died, timed out)."""

    node_id: str
    address: str
    hostname: str
    checks: tuple[ArtifactCheck, ...]
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and all(c.ok for c in self.checks)


def select_models(registry: dict[str, ModelSpec], *, model_id: str | None = None,
                  policy: Path | None = None) -> list[ModelSpec]:
    """The models to verify: ``model_id``, the models of the ``policy`` version file, or all.

    Raises:
        ModerationError: an unknown model id; ConfigError: a bad policy file.
    """
    if model_id is not None and model_id not in registry:
        raise ModerationError(f"unknown model {model_id!r}; registered: {sorted(registry)}")
    wanted = set(registry)
    if model_id is not None:
        wanted = {model_id}
    if policy is not None:
        loaded = load_policy(policy, registry)
        wanted &= set(loaded.policy.models)
        if not wanted:
            raise ModerationError(f"model {model_id!r} is not one of policy {loaded.path}'s models: "
                                  f"{list(loaded.policy.models)}")
    return [spec for mid, spec in registry.items() if mid in wanted]


def check_artifacts(specs: Iterable[ModelSpec]) -> list[ArtifactCheck]:
    """Read and verify every artifact of ``specs`` here; one check per (model, artifact)."""
    from moderation.storage.artifacts import read_verified_from

    checks: list[ArtifactCheck] = []
    for spec in specs:
        for name, ref in sorted(spec.artifacts.items()):
            status: CheckStatus
            try:
                _, detail = read_verified_from(spec.model_id, name, ref)
                status = "ok"
            except ArtifactError as e:
                status, detail = e.problem, str(e)
            except Exception as e:  # a report, not a crash: the other artifacts and nodes still count
                status, detail = "error", f"model {spec.model_id}: artifact {name}: {type(e).__name__}: {one_line(e)}"
            checks.append(ArtifactCheck(spec.model_id, name, status, detail))
    return checks


def _check_on_this_node(specs: list[ModelSpec]) -> tuple[str, str, list[ArtifactCheck]]:
    """The Ray task: (the node it ran on, its host name, the checks)."""
    import ray

    return ray.get_runtime_context().get_node_id(), socket.gethostname(), check_artifacts(specs)


def check_on_cluster(specs: Sequence[ModelSpec], *, address: str | None = None,
                     timeout_s: float = 600.0) -> list[NodeReport]:
    """Verify ``specs``' artifacts from a task on every alive node of the Ray cluster.

    Joins ``address`` (or ``$RAY_ADDRESS``; else starts a local Ray, a cluster of one node).
    Each task asks for no CPU, so a head started with ``--num-cpus=0`` and nodes whose CPUs a
    running backfill holds are checked too; it is not retried elsewhere (``soft=False``).

    Returns:
        One report per node alive when the check started, in ``ray.nodes()`` order.
    """
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from moderation.engines.ray import ensure_ray

    ensure_ray(address, object_store_mb=_LOCAL_OBJECT_STORE_MB)
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    if not nodes:
        raise ModerationError("the Ray cluster has no alive node")
    specs_ref = ray.put(list(specs))
    task = ray.remote(_check_on_this_node)
    refs = [
        task.options(
            num_cpus=0, max_retries=0, name=f"models-verify-{n['NodeID'][:12]}",
            scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=n["NodeID"], soft=False),
        ).remote(specs_ref)
        for n in nodes
    ]
    ready, _ = ray.wait(refs, num_returns=len(refs), timeout=timeout_s)
    done = set(ready)
    reports = []
    for node, ref in zip(nodes, refs, strict=True):
        node_id, where = node["NodeID"], node.get("NodeManagerAddress", "?")
        hostname = node.get("NodeManagerHostname", "?")
        if ref not in done:
            ray.cancel(ref, force=True)
            reports.append(NodeReport(node_id, where, hostname, (), f"no answer within {timeout_s:.0f} s"))
            continue
        try:
            ran_on, hostname, checks = ray.get(ref)
        except Exception as e:  # the node died, its worker crashed, the task could not be placed
            reports.append(NodeReport(node_id, where, hostname, (), f"task failed: {type(e).__name__}: {one_line(e)}"))
            continue
        error = None if ran_on == node_id else f"the task ran on node {ran_on[:12]}, not on this one"
        reports.append(NodeReport(node_id, where, hostname, tuple(checks), error))
    return reports


def format_checks(checks: Sequence[ArtifactCheck]) -> list[str]:
    """``OK    model artifact`` or ``FAIL  <error>`` per check (the local ``models verify``)."""
    return [f"OK    {c.model_id} {c.artifact}" if c.ok else f"FAIL  {c.detail}" for c in checks]


def format_nodes(reports: Sequence[NodeReport]) -> list[str]:
    """Per node a header, then per artifact its status and model/artifact (and the error)."""
    lines = []
    for r in reports:
        lines.append(f"node {r.node_id[:12]} {r.address} ({r.hostname}): {'ok' if r.ok else 'FAILED'}")
        if r.error:
            lines.append(f"  error            {r.error}")
        for c in r.checks:
            lines.append(f"  {c.status:16} {c.model_id} {c.artifact}" + ("" if c.ok else f": {c.detail}"))
    failed = sum(not r.ok for r in reports)
    n_artifacts = max((len(r.checks) for r in reports), default=0)
    lines.append(f"{len(reports)} node(s), {n_artifacts} artifact(s) each: "
                 + (f"{failed} node(s) failed" if failed else "all ok"))
    return lines
