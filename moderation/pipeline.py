"""Ray Data adapter: catalog snapshot -> preprocess (CPU tasks) -> score (actor pool).

A thin layer over the pure stages: ``to_work_rows`` and ``Classifier.preprocess`` run as
Ray tasks, ``Classifier.process_batch`` runs in an actor pool whose actors load the model
once. The driver consumes the scored batches as they stream out (see scoring/run.py).
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass

import pyarrow as pa

from moderation.catalog import CatalogSnapshot, to_work_rows
from moderation.classifiers.base import RunContext
from moderation.config import ModelSpec, RunProfile
from moderation.errors import ClusterError, one_line
from moderation.selection import Selection

log = logging.getLogger(__name__)


def ensure_ray(address: str | None = None, *, object_store_mb: int | None = None) -> str:
    """Connect this process to Ray by the project's one rule, and say which way it went.

    - ``address`` (``--ray-address``), else ``$RAY_ADDRESS`` (set by ``ray job submit`` and
      KubeRay for the job's driver): join that cluster. ``auto`` means the cluster the last
      ``ray start`` on this machine started (never another process's private Ray). Joining
      passes no resource or memory setting: the cluster's own ``ray start`` sized its object
      store (``object_store_mb`` is then only Ray Data's in-flight budget, see ``score_stream``).
    - neither: start a private local Ray for this process (``address="local"``), with an object
      store of ``object_store_mb`` MiB (default: Ray's, 30% of RAM). A ``ray start`` cluster
      running on the machine is ignored, never joined by accident; it stops with the process.

    Returns:
        ``"joined"``, ``"local"`` or ``"already"`` (this process was connected before the call).

    Raises:
        ClusterError: the cluster at the address cannot be joined (none running there, refused,
            another Ray version, a missing token), with the address and the rule in the message.
    """
    import ray

    if ray.is_initialized():
        return "already"
    source = "--ray-address" if address else "RAY_ADDRESS"
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address is None:
        ray.init(address="local", include_dashboard=False, logging_level=logging.WARNING,
                 object_store_memory=object_store_mb * 2**20 if object_store_mb else None)
        log.info("started a private local Ray (any `ray start` cluster on this machine is not joined; "
                 "pass --ray-address auto or set RAY_ADDRESS to join it)")
        return "local"
    cannot_join = (f"could not join the Ray cluster at {address!r} (from {source}): {{}}. Without --ray-address "
                   "and RAY_ADDRESS a private local Ray is started instead")
    target = _ray_start_address() if address == "auto" else address
    if target is None:
        raise ClusterError(cannot_join.format("no `ray start` cluster on this machine (no address file in Ray's "
                                              "temp dir)"))
    try:
        ray.init(address=target, logging_level=logging.WARNING)
    except Exception as e:  # ConnectionError, a version mismatch, an auth error: all mean "cannot join"
        raise ClusterError(cannot_join.format(f"{type(e).__name__}: {one_line(e)}")) from e
    log.info("joined the Ray cluster at %s", address if target == address else f"{address} ({target})")
    return "joined"


def _ray_start_address() -> str | None:
    """The head address the last ``ray start`` on this machine wrote to Ray's temp dir, if any.

    ``ray.init(address="auto")`` falls back to any Ray found running on the machine, which may be
    another process's private one; ``auto`` here means only the ``ray start`` cluster.
    """
    from ray._private.services import find_bootstrap_address

    return find_bootstrap_address(None)


def _quiet_ray_data() -> None:
    """Ray Data logs every operator's progress to the console at INFO; keep the driver's
    console to our own summary (its log files under /tmp/ray keep everything)."""
    import ray.data  # noqa: F401 - configures the "ray.data" logger on import

    for handler in logging.getLogger("ray.data").handlers:
        if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
            handler.setLevel(max(handler.level, logging.WARNING))


@dataclass(frozen=True)
class Placement:
    """Where and how the scoring actors run."""

    device: str
    actors: int
    num_cpus: float
    num_gpus: float


def plan_placement(profile: RunProfile, cluster: dict[str, float], *, uses_gpu: bool = True) -> Placement:
    """Pick GPU or CPU actors from the cluster's resources and the run profile.

    On CPU the actors' reservations are capped so at least one CPU stays free for the read
    and preprocess tasks: a pool that reserves every CPU hangs (ray-project/ray#44687).
    """
    gpus = int(cluster.get("GPU", 0))
    cpus = float(cluster.get("CPU", 1))
    if profile.gpu == "always" and gpus == 0 and uses_gpu:
        raise RuntimeError("run profile says gpu: always but the Ray cluster has no GPU")
    if gpus and profile.gpu != "never" and uses_gpu:
        actors = max(1, min(profile.actors, gpus))
        num_cpus = min(profile.actor_num_cpus, max(0.1, (cpus - 1) / actors))
        return Placement(device="cuda", actors=actors, num_cpus=num_cpus, num_gpus=1.0)
    actors = profile.actors
    budget = max(0.1, cpus - 1) if cpus > 1 else 0.5 * cpus
    num_cpus = min(profile.actor_num_cpus, budget / actors)
    return Placement(device="cpu", actors=actors, num_cpus=num_cpus, num_gpus=0.0)


def read_files(batch: dict, *, snapshot: CatalogSnapshot, selection: Selection, modality: str,
               skip_ids: pa.Array | None, batch_rows: int) -> Iterator[pa.Table]:
    """Ray read task body: data files of the snapshot (by index) -> the catalog rows the run
    streams for ``modality`` (see ``Selection.filter``), in bounded batches."""
    for index in batch["index"]:
        for table in snapshot.read(snapshot.files[int(index)], snapshot.columns, batch_rows=batch_rows):
            table = selection.filter(table, modality, skip_ids)
            if table.num_rows:
                yield table


def preprocess_batch(batch: pa.Table, *, spec: ModelSpec, context: RunContext) -> pa.Table:
    """Ray task body: catalog rows -> preprocessed work rows (no model loaded)."""
    from moderation.classifiers.base import build_classifier

    classifier = build_classifier(spec, context=context)
    return classifier.prepare(to_work_rows(batch, classifier.modality))


class ScoreActor:
    """Ray actor body: loads the model once (digest-checked), scores each batch."""

    def __init__(
        self, spec: ModelSpec, device: str, batch_size: int, torch_threads: int, context: RunContext, half: bool
    ) -> None:
        import torch

        from moderation.classifiers.base import build_classifier
        from moderation.security import check_environment

        check_environment()  # a worker's environment can differ from the driver's
        _bound_malloc()
        self.batches = 0
        if torch_threads:
            torch.set_num_threads(torch_threads)
        self.classifier = build_classifier(spec, batch_size=batch_size, context=context)
        self.classifier.setup(device)
        if half and device.startswith("cuda"):
            self.classifier.to_half()

    def __call__(self, batch: pa.Table) -> pa.Table:
        out = self.classifier.process_batch(batch)
        self.batches += 1
        if self.batches % TRIM_EVERY == 0:
            _trim_malloc()
        return out


#: Scored batches between two malloc_trim calls in a scoring actor.
TRIM_EVERY = 32


@functools.lru_cache(maxsize=1)
def _libc():
    import ctypes
    import ctypes.util

    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None


def _bound_malloc() -> None:
    """Cap glibc's malloc arenas at 2 in a long-lived scoring actor. With one arena per thread
    (torch's and tokenizers' pools) freed memory stays scattered over many arenas and the
    actor's RSS creeps up with every batch; measured by scripts/bench_memory.py."""
    libc = _libc()
    if libc is not None and hasattr(libc, "mallopt"):
        libc.mallopt(-8, 2)  # M_ARENA_MAX


def _trim_malloc() -> None:
    """Give freed heap pages back to the OS (glibc ``malloc_trim``); a no-op elsewhere."""
    libc = _libc()
    if libc is not None and hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)


def score_stream(
    snapshot: CatalogSnapshot,
    spec: ModelSpec,
    profile: RunProfile,
    *,
    selection: Selection,
    skip_ids: pa.Array | None = None,
    context: RunContext = RunContext(),
) -> Iterator[pa.Table]:
    """Stream scored work rows: one per pair ``selection`` streams for ``spec``'s modality,
    less the items in ``skip_ids``."""
    import ray
    import ray.data

    ctx = ray.data.DataContext.get_current()
    # >0 would silently drop whole blocks; bad rows are quarantined one by one instead.
    ctx.max_errored_blocks = 0
    ctx.enable_progress_bars = False
    # Ray Data merges a task's outputs into blocks of up to 128 MiB: text rows would then
    # travel as one block per file and every stage (the scoring actor included) would hold all
    # of them until the file is done. Small blocks keep memory flat whatever the catalog size.
    ctx.target_max_block_size = profile.block_kib * 1024
    # Bound the blocks in flight (backpressure): without it Ray Data may fill the whole store.
    ctx.execution_options.resource_limits = ctx.execution_options.resource_limits.copy(
        object_store_memory=profile.object_store_mb * 2**20 // 2
    )
    from moderation.classifiers.base import build_classifier

    placement = plan_placement(profile, ray.cluster_resources(), uses_gpu=build_classifier(spec).uses_gpu)
    log.info("scoring %s on %s: %d actor(s), %.2f CPU, %.0f GPU each", spec.model_id, placement.device,
             placement.actors, placement.num_cpus, placement.num_gpus)

    if not snapshot.has_modality(spec.modality) or not snapshot.files:
        return
    _quiet_ray_data()
    # Text rows are small; a decoded image is 600 KB and an audio row's speech windows up
    # to ~19 MB, so their blocks stay small.
    rows = {"text": profile.batch_size * 4, "image": profile.batch_size}.get(spec.modality, 8)
    ds = ray.data.from_items([{"index": i} for i in range(len(snapshot.files))],
                             override_num_blocks=min(len(snapshot.files), 1000))
    ds = ds.map_batches(
        read_files,
        fn_kwargs={"snapshot": snapshot, "selection": selection, "modality": spec.modality, "skip_ids": skip_ids,
                   "batch_rows": max(rows, 256)},
        batch_size=1,
        batch_format="numpy",
        num_cpus=0.5,
    )
    ds = ds.map_batches(
        preprocess_batch,
        fn_kwargs={"spec": spec, "context": context},
        batch_format="pyarrow",
        batch_size=rows,
        num_cpus=0.5,
    )
    ds = ds.map_batches(
        ScoreActor,
        fn_constructor_kwargs={
            "spec": spec,
            "device": placement.device,
            "batch_size": profile.batch_size,
            "torch_threads": profile.torch_threads,
            "context": context,
            "half": profile.half_precision,
        },
        batch_format="pyarrow",
        batch_size=profile.batch_size,
        compute=ray.data.ActorPoolStrategy(size=placement.actors),
        num_cpus=placement.num_cpus,
        num_gpus=placement.num_gpus,
    )
    yield from ds.iter_batches(batch_format="pyarrow", batch_size=None)
