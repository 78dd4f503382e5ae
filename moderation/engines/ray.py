"""Ray Data adapter: one job per modality of a run (a ``ModalityPass``), catalog snapshot ->
read -> prepare (CPU tasks) -> score (actor pool) -> write (CPU tasks).

A thin layer over the pure stages: ``Selection.mask`` in the read tasks; ``to_work_rows`` and
``Classifier.prepare`` of every model of the modality in the prepare tasks (each cover or clip
read and decoded once, ``media.shared_reads``); ``Classifier.process_batch`` in an actor pool
whose actors load all the modality's models once; ``results.written_files`` in the write tasks,
which put the ``scores`` / ``quarantine`` Parquet files straight into the lake. The driver gets
only the files' metadata and commits them (scoring/run.py): scored rows never pass through it.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass

import pyarrow as pa

from moderation.classifiers.base import RunContext
from moderation.config import ModelSpec, RunProfile
from moderation.errors import ClusterError, one_line
from moderation.scoring.chunks import MODEL_COLUMN, by_model
from moderation.scoring.selection import Selection
from moderation.storage.catalog import CatalogSnapshot, to_work_rows

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


#: Prefix of the read stage's per-model boolean columns: whether that model scores the row.
WANT_PREFIX = "__want__"
#: Rows of a media batch prepared under one ``media.shared_reads`` block (their bytes and
#: decoded covers are kept until the block ends).
SHARED_DECODE_ROWS = 8


@dataclass(frozen=True)
class ModalityPass:
    """One Ray Data job of a run: every model of one modality over the catalog rows any of them
    scores, each row read and decoded once (issue 16). Picklable; travels to every stage.

    Attributes:
        selections: model id -> the model's ``Selection``.
        skip_ids: model id -> the item ids already committed for the model (a resume), or None.
    """

    run_id: str
    lake_root: str
    modality: str
    models: tuple[ModelSpec, ...]
    selections: dict[str, Selection]
    skip_ids: dict[str, pa.Array | None]

    def wanted(self, batch: pa.Table) -> dict[str, pa.Array]:
        """Model id -> the mask of ``batch``'s rows that model scores. Models sharing one
        selection and skip set (a backfill's) share one mask computation."""
        out: dict[str, pa.Array] = {}
        seen: dict[tuple[int, int], pa.Array] = {}
        for m in self.models:
            sel, skip = self.selections[m.model_id], self.skip_ids.get(m.model_id)
            key = (id(sel), id(skip))
            if key not in seen:
                seen[key] = sel.mask(batch, self.modality, skip)
            out[m.model_id] = seen[key]
        return out


def want_column(model_id: str) -> str:
    return WANT_PREFIX + model_id


def read_files(batch: dict, *, snapshot: CatalogSnapshot, pass_: ModalityPass, batch_rows: int) -> Iterator[pa.Table]:
    """Ray read task body: data files of the snapshot (by index) -> the catalog rows some model
    of the pass scores, with a ``__want__<model id>`` mask column per model, in bounded batches."""
    import pyarrow.compute as pc

    for index in batch["index"]:
        for table in snapshot.read(snapshot.files[int(index)], snapshot.columns, batch_rows=batch_rows):
            wanted = pass_.wanted(table)
            masks = list(wanted.values())
            any_ = masks[0]
            for m in masks[1:]:
                any_ = pc.or_(any_, m)
            for model_id, mask in wanted.items():
                table = table.append_column(want_column(model_id), mask)
            table = table.filter(any_)
            if table.num_rows:
                yield table


def prepare_batch(batch: pa.Table, *, pass_: ModalityPass, context: RunContext) -> pa.Table:
    """Ray task body: catalog rows (with the read stage's masks) -> preprocessed work rows, one
    per (row, model that scores it), with a ``model_id`` column (no model loaded).

    Media rows are prepared a few at a time under ``media.shared_reads``: each cover or clip is
    read, and each cover decoded, once for all of the pass's models."""
    from moderation.classifiers.registry import build_classifier
    from moderation.storage.media import shared_reads

    classifiers = [build_classifier(spec, context=context) for spec in pass_.models]
    wants = [batch.column(want_column(spec.model_id)) for spec in pass_.models]
    work = to_work_rows(batch.drop_columns([want_column(s.model_id) for s in pass_.models]), pass_.modality)
    step = batch.num_rows if pass_.modality == "text" else SHARED_DECODE_ROWS
    parts = []
    for start in range(0, batch.num_rows, max(1, step)):
        rows = work.slice(start, step)
        with shared_reads():
            for clf, want in zip(classifiers, wants, strict=True):
                mine = rows.filter(want.slice(start, step))
                if mine.num_rows:
                    out = clf.prepare(mine)
                    parts.append(out.append_column(MODEL_COLUMN, pa.array([clf.spec.model_id] * out.num_rows,
                                                                          pa.string())))
    return pa.concat_tables(parts, promote_options="permissive") if parts else _empty_prepared()


def _empty_prepared() -> pa.Table:
    return pa.table({"item_id": pa.array([], pa.string()), MODEL_COLUMN: pa.array([], pa.string())})


def score_rows(classifiers: dict, batch: pa.Table) -> pa.Table:
    """Prepared rows of several models -> scored work rows (``Classifier.process_batch``, each
    model's rows by its own classifier), with the ``model_id`` column kept."""
    parts = []
    for model_id, rows in by_model(batch):
        out = classifiers[model_id].process_batch(rows)
        parts.append(out.append_column(MODEL_COLUMN, pa.array([model_id] * out.num_rows, pa.string())))
    return pa.concat_tables(parts, promote_options="permissive") if parts else batch.slice(0, 0)


def write_results(batch: pa.Table, *, pass_: ModalityPass) -> pa.Table:
    """Ray task body: scored work rows -> ``scores`` / ``quarantine`` Parquet files written into
    the lake's table folders (one per model and table), and their metadata as rows
    (``results.FILES_SCHEMA``): what the driver commits. Nothing is committed here, so a file
    whose commit never comes (the run was killed) is an orphan no reader sees, rescored on resume."""
    from moderation.scoring.chunks import written_files
    from moderation.storage.lake import Lake

    return written_files(batch, lake=Lake(pass_.lake_root), run_id=pass_.run_id,
                         models={m.model_id: m for m in pass_.models})


class ScoreActor:
    """Ray actor body: loads every model of a pass once (digest-checked), scores each batch."""

    def __init__(
        self, specs: tuple[ModelSpec, ...], device: str, batch_size: int, torch_threads: int, context: RunContext,
        half: bool,
    ) -> None:
        import torch

        from moderation.classifiers.registry import build_classifier
        from moderation.security import check_environment

        check_environment()  # a worker's environment can differ from the driver's
        _bound_malloc()
        self.batches = 0
        if torch_threads:
            torch.set_num_threads(torch_threads)
        self.classifiers = {}
        for spec in specs:
            clf = build_classifier(spec, batch_size=batch_size, context=context)
            clf.setup(device if clf.uses_gpu else "cpu")
            if half and device.startswith("cuda") and clf.uses_gpu:
                clf.to_half()
            self.classifiers[spec.model_id] = clf

    def __call__(self, batch: pa.Table) -> pa.Table:
        out = score_rows(self.classifiers, batch)
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
    pass_: ModalityPass,
    profile: RunProfile,
    *,
    context: RunContext = RunContext(),
    file_pairs: int | None = None,
) -> Iterator[pa.Table]:
    """Run one pass (every model of one modality) as one Ray Data job: read -> prepare (CPU
    tasks; media read and decoded once per row) -> score (one actor pool holding all the
    pass's models) -> write (CPU tasks writing Parquet files into the lake). Yields only the
    written files' metadata (``results.FILES_SCHEMA``); scored rows never reach the driver.
    ``file_pairs``: rows of each model per write task, so per data file (default the profile's
    ``chunk_pairs``; see ``config.file_pairs``)."""
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
    from moderation.classifiers.registry import build_classifier

    uses_gpu = any(build_classifier(m).uses_gpu for m in pass_.models)
    placement = plan_placement(profile, ray.cluster_resources(), uses_gpu=uses_gpu)
    log.info("scoring %s (%s) on %s: %d actor(s), %.2f CPU, %.0f GPU each", pass_.modality,
             ", ".join(m.model_id for m in pass_.models), placement.device, placement.actors, placement.num_cpus,
             placement.num_gpus)

    if not snapshot.has_modality(pass_.modality) or not snapshot.files:
        return
    _quiet_ray_data()
    n = len(pass_.models)
    # Text rows are small; a decoded image is 600 KB and an audio row's speech windows up
    # to ~19 MB, so their blocks stay small.
    rows = {"text": profile.batch_size * 4, "image": profile.batch_size}.get(pass_.modality, 8)
    ds: ray.data.Dataset = ray.data.from_items([{"index": i} for i in range(len(snapshot.files))],
                                               override_num_blocks=min(len(snapshot.files), 1000))
    # ray's UserDefinedFunction type cannot say that fn_kwargs fills the keyword-only parameters.
    ds = ds.map_batches(
        read_files,  # type: ignore[arg-type]
        fn_kwargs={"snapshot": snapshot, "pass_": pass_, "batch_rows": max(rows, 256)},
        batch_size=1,
        batch_format="numpy",
        num_cpus=0.5,
    )
    ds = ds.map_batches(
        prepare_batch,  # type: ignore[arg-type]  # fn_kwargs, as above
        fn_kwargs={"pass_": pass_, "context": context},
        batch_format="pyarrow",
        batch_size=rows,
        num_cpus=0.5,
    )
    ds = ds.map_batches(
        ScoreActor,
        fn_constructor_kwargs={
            "specs": pass_.models,
            "device": placement.device,
            "batch_size": profile.batch_size,
            "torch_threads": profile.torch_threads,
            "context": context,
            "half": profile.half_precision,
        },
        batch_format="pyarrow",
        # Each model of the pass sees about batch_size rows of a batch.
        batch_size=profile.batch_size * n,
        compute=ray.data.ActorPoolStrategy(size=placement.actors),
        num_cpus=placement.num_cpus,
        num_gpus=placement.num_gpus,
    )
    # About file_pairs pairs of each model per write task: one file per model and table (a
    # committed chunk is one or more files).
    ds = ds.map_batches(
        write_results,  # type: ignore[arg-type]  # fn_kwargs, as above
        fn_kwargs={"pass_": pass_},
        batch_format="pyarrow",
        batch_size=(file_pairs or profile.chunk_pairs) * n,
        num_cpus=0.5,
    )
    yield from ds.iter_batches(batch_format="pyarrow", batch_size=None)
