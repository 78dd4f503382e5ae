"""Ray Data adapter: catalog snapshot -> preprocess (CPU tasks) -> score (actor pool).

A thin layer over the pure stages: ``to_work_rows`` and ``Classifier.preprocess`` run as
Ray tasks, ``Classifier.process_batch`` runs in an actor pool whose actors load the model
once. The driver consumes the scored batches as they stream out (see backfill.py).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass

import pyarrow as pa

from moderation.catalog import MEDIA_COLUMNS, CatalogSnapshot, modality_mask, to_work_rows
from moderation.classifiers.base import RunContext
from moderation.config import ModelSpec, RunProfile

log = logging.getLogger(__name__)


def ensure_ray(address: str | None = None) -> None:
    """Join ``address`` (or $RAY_ADDRESS), else start a local Ray sized to this machine."""
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, logging_level=logging.WARNING)
    else:
        ray.init(include_dashboard=False, logging_level=logging.WARNING)


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


def preprocess_batch(batch: pa.Table, *, spec: ModelSpec, skip_ids: pa.Array | None, context: RunContext) -> pa.Table:
    """Ray task body: catalog batch -> preprocessed work rows (no model loaded). Items in
    ``skip_ids`` (already committed by an earlier attempt of the run) are dropped."""
    import pyarrow.compute as pc

    from moderation.classifiers.base import build_classifier

    if skip_ids is not None and len(skip_ids):
        batch = batch.filter(pc.invert(pc.is_in(batch.column("item_id"), value_set=skip_ids)))
    classifier = build_classifier(spec, context=context)
    return classifier.prepare(to_work_rows(batch, classifier.modality))


class ScoreActor:
    """Ray actor body: loads the model once (digest-checked), scores each batch."""

    def __init__(
        self, spec: ModelSpec, device: str, batch_size: int, torch_threads: int, context: RunContext, half: bool
    ) -> None:
        import torch

        from moderation.classifiers.base import build_classifier

        if torch_threads:
            torch.set_num_threads(torch_threads)
        self.classifier = build_classifier(spec, batch_size=batch_size, context=context)
        self.classifier.setup(device)
        if half and device.startswith("cuda"):
            self.classifier.to_half()

    def __call__(self, batch: pa.Table) -> pa.Table:
        return self.classifier.process_batch(batch)


def _selection(
    snapshot: CatalogSnapshot, columns: list[str], *, keep_ids: pa.Array | None, limit: int | None, modality: str
):
    """The run's selection for one modality as a Ray dataset: the pinned snapshot, the --where
    ids, the --limit (on items), then the items that have this modality's media.

    --limit takes the first N selected rows; the counting pass, the scoring pass and any resume
    must agree on which N, so block order is preserved when a limit is set.
    """
    import pyarrow.compute as pc
    import ray.data

    from moderation.lake import storage_options

    _quiet_ray_data()
    ray.data.DataContext.get_current().execution_options.preserve_order = limit is not None
    if snapshot.is_delta:
        ds = ray.data.read_delta(
            snapshot.uri, version=snapshot.version, columns=columns, storage_options=storage_options(snapshot.uri)
        )
    else:
        ds = ray.data.read_parquet(snapshot.uri, columns=columns)
    if keep_ids is not None:
        ids = keep_ids
        ds = ds.map_batches(lambda b: b.filter(pc.is_in(b.column("item_id"), value_set=ids)), batch_format="pyarrow")
    if limit is not None:
        ds = ds.limit(limit)
    if modality in MEDIA_COLUMNS:

        def has_media(b: pa.Table) -> pa.Table:
            return b.filter(modality_mask(b, modality))

        ds = ds.map_batches(has_media, batch_format="pyarrow")
    return ds


def selected_count(snapshot: CatalogSnapshot, *, keep_ids: pa.Array | None, limit: int | None, modality: str) -> int:
    """(item, modality) pairs the run selects, counted by its own pass over the snapshot."""
    if not snapshot.has_modality(modality):
        return 0
    columns = ["item_id", *([MEDIA_COLUMNS[modality]] if modality in MEDIA_COLUMNS else [])]
    return _selection(snapshot, columns, keep_ids=keep_ids, limit=limit, modality=modality).count()


def score_stream(
    snapshot: CatalogSnapshot,
    spec: ModelSpec,
    profile: RunProfile,
    *,
    keep_ids: pa.Array | None = None,
    skip_ids: pa.Array | None = None,
    limit: int | None = None,
    context: RunContext = RunContext(),
) -> Iterator[pa.Table]:
    """Stream scored work rows (one per selected item for ``spec``'s modality)."""
    import ray
    import ray.data

    ctx = ray.data.DataContext.get_current()
    # >0 would silently drop whole blocks; bad rows are quarantined one by one instead.
    ctx.max_errored_blocks = 0
    ctx.enable_progress_bars = False
    from moderation.classifiers.base import build_classifier

    placement = plan_placement(profile, ray.cluster_resources(), uses_gpu=build_classifier(spec).uses_gpu)
    log.info("scoring %s on %s: %d actor(s), %.2f CPU, %.0f GPU each", spec.model_id, placement.device,
             placement.actors, placement.num_cpus, placement.num_gpus)

    if not snapshot.has_modality(spec.modality):
        return
    ds = _selection(snapshot, snapshot.columns, keep_ids=keep_ids, limit=limit, modality=spec.modality)
    ds = ds.map_batches(
        preprocess_batch,
        fn_kwargs={"spec": spec, "skip_ids": skip_ids, "context": context},
        batch_format="pyarrow",
        # Text rows are small; a decoded image is 600 KB and an audio row's speech windows up
        # to ~19 MB, so their blocks stay small.
        batch_size={"text": profile.batch_size * 4, "image": profile.batch_size}.get(spec.modality, 8),
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
