"""The one scoring run: resolve a request, then score and commit any ``ScoringPlan``.

``execute(request, kind=..., planner=...)`` is what ``run_backfill`` and ``run_rescan`` call:

1. ``prepare_run``: environment checks, policy, profile and models; the existing ``runs`` row
   (a finished run returns at once, an unfinished one resumes with what it recorded); the
   evaluation gate of a new run; the catalog snapshot and the reference data pinned for the run.
2. ``planner(prepared)``: what to score (``moderation.scoring.backfill.plan_backfill``,
   ``moderation.scoring.rescan.plan_rescan_run``).
3. ``run_scoring(prepared, plan)``: under the run's lease, commit the plan's removals, then model
   by model the driver's quarantine rows and the stream's chunks (each an idempotent Delta
   commit; a resume skips what the run committed), then check the accounting and error share.

Re-running a finished run id writes nothing. Re-running an unfinished one resumes it: the same
catalog version is read, pairs already committed for the run are skipped, and chunk numbering
continues after the last committed chunk.
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from moderation.classifiers.base import RunContext
from moderation.classifiers.windows import WINDOWINGS, Windowing, with_windowing
from moderation.clock import utcnow
from moderation.config import (
    LoadedPolicy,
    ModelSpec,
    RunProfile,
    commit_pairs,
    config_hash,
    file_pairs,
    load_model_registry,
    load_policy,
    load_run_profile,
)
from moderation.errors import (
    LakeError,
    ModerationError,
    ScoringFailed,
    StorageError,
    is_storage_failure,
    one_line,
    storage_boundary,
)
from moderation.faults import fault_point
from moderation.runs import PolicyProvenance, RunRecord, RunTiming, new_run_id, read_run, write_run
from moderation.scoring.chunks import ChunkWriter
from moderation.scoring.plan import RunKind, ScoringPlan, ScoringRequest, ScoringResult
from moderation.storage.catalog import CatalogSnapshot, open_catalog
from moderation.storage.lake import Lake
from moderation.storage.spill import BUCKET_ROWS, BucketSpill, item_buckets, scan_batches, table_rows

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------
# Accounting (counted in the lake by DataFusion; the driver never holds the run's keys)
# --------------------------------------------------------------------------------------


#: The key no two rows of a run may share, in ``scores`` and ``quarantine`` together.
RUN_KEY = ("item_id", "modality", "model_id")


def run_accounting(lake: Lake, run_id: str, *, bucket_rows: int = BUCKET_ROWS) -> tuple[int, int, int]:
    """(scores rows, quarantine rows, duplicated (item, modality, model) keys) of ``run_id``.

    One streaming pass over each table counts the run's rows and spills their keys by item
    bucket to local disk (:mod:`moderation.storage.spill`); then each bucket's keys are grouped alone (a
    key's rows all fall in one bucket). So the driver never holds the run's keys at once: a
    DataFusion hash aggregate over every key held about 250 MiB per million.
    """
    schema = pa.schema([pa.field(k, pa.string()) for k in RUN_KEY])
    counts = {"scores": 0, "quarantine": 0}
    dupes = 0
    with tempfile.TemporaryDirectory(prefix="moderation-accounting-") as tmp:
        tables = {t: dt for t in counts if (dt := lake.open(t)) is not None}
        rows = sum(table_rows(dt) for dt in tables.values())  # every run's: an upper bound of this one's
        spill = BucketSpill(Path(tmp), "keys", schema, item_buckets(rows, bucket_rows))
        for table, dt in tables.items():
            for batch in scan_batches(dt, columns=list(RUN_KEY), filter=pc.field("run_id") == run_id):
                counts[table] += batch.num_rows
                # Id-less rows are quarantined, never keyed.
                spill.add(batch.filter(pc.is_valid(batch.column("item_id"))).cast(schema))
        for b in range(spill.buckets):
            groups = spill.read(b).group_by(list(RUN_KEY)).aggregate([([], "count_all")])
            dupes += int(pc.sum(pc.subtract(groups.column("count_all"), 1)).as_py() or 0)
    return counts["scores"], counts["quarantine"], dupes


def run_score_errors(lake: Lake, run_id: str) -> int:
    """Pairs of ``run_id`` quarantined as ``score_error`` (counted by DataFusion in the lake)."""
    from deltalake import QueryBuilder

    from moderation.classifiers.base import SCORE_ERROR

    dt = lake.open("quarantine")
    if dt is None:
        return 0
    qb = QueryBuilder()
    qb.register("quarantine", dt)
    rid = run_id.replace("'", "''")
    sql = f"SELECT count(*) AS n FROM quarantine WHERE run_id = '{rid}' AND reason = '{SCORE_ERROR}'"
    return int(pa.table(qb.execute(sql).read_all()).column("n")[0].as_py())


def error_share_failure(*, score_errors: int, selected: int, max_share: float) -> str | None:
    """``runs.error`` of a run whose share of ``score_error`` pairs is above ``max_share`` (the
    run profile's ``max_error_share``), else None."""
    share = score_errors / selected if selected else 0.0
    if share <= max_share:
        return None
    return (f"error share {share:.2%} above max_error_share {max_share:g}: the model failed on {score_errors} of "
            f"{selected} selected pairs after retries (quarantined as score_error); the rows are committed, "
            f"`moderation rescan` retries the failed pairs")


def cascade_accounting(lake: Lake, run_id: str, models: list) -> list[str] | None:
    """Per cascade model of the run: its band and the share of its scored pairs the strong
    model re-scored (evidence ``cascade = strong``), counted in the lake by DataFusion, so a
    resumed run counts what every attempt committed. None when the run has no cascade."""
    from deltalake import QueryBuilder

    from moderation.classifiers.cascade import CASCADE_EVIDENCE_KEY, bands

    cascades = [m for m in models if m.kind == "cascade_heads"]
    if not cascades:
        return None
    dt = lake.open("scores")
    if dt is None:
        return None
    qb = QueryBuilder()
    qb.register("scores", dt)
    rid = run_id.replace("'", "''")
    out = []
    for m in cascades:
        mid = m.model_id.replace("'", "''")
        counts = pa.table(qb.execute(
            f"SELECT count(*) AS n, coalesce(sum(CASE WHEN map_extract(evidence, '{CASCADE_EVIDENCE_KEY}')[1] = "
            f"'strong' THEN 1 ELSE 0 END), 0) AS s FROM scores WHERE run_id = '{rid}' AND model_id = '{mid}'"
        ).read_all()).to_pylist()[0]
        _, high = bands(m)  # validates the band
        n, sent = int(counts["n"]), int(counts["s"])
        out.append(json.dumps({
            "model_id": m.model_id, "cheap": m.preprocessing.get("cheap"), "strong": m.preprocessing.get("strong"),
            "band_low": {c: float(m.preprocessing[f"band_low.{c}"]) for c in m.categories}, "band_high": high,
            "pairs": n, "strong_pairs": sent, "strong_share": round(sent / n, 4) if n else None,
        }, sort_keys=True))
    return out


def _done_ids(lake: Lake, run_id: str, model_id: str) -> pa.Array:
    """The item ids ``run_id`` committed for ``model_id`` (a resume skips them), read a data file
    at a time (:func:`moderation.storage.spill.scan_batches`): the tables hold every earlier run's files."""
    flt = (pc.field("run_id") == run_id) & (pc.field("model_id") == model_id)
    parts = [pa.array([], pa.string())]
    for table in ("scores", "quarantine"):
        dt = lake.open(table)
        if dt is not None:
            parts += [b.column("item_id").cast(pa.string()) for b in scan_batches(dt, columns=["item_id"], filter=flt)]
    return pc.unique(pa.concat_arrays(parts).drop_null())


# --------------------------------------------------------------------------------------
# Resolving a request
# --------------------------------------------------------------------------------------


def default_media_roots(catalog_uri: str) -> list[str]:
    """The catalog's own folder and the data directory's ``media`` (when it exists)."""
    from moderation.evaluation.sources import default_data_dir

    roots = [catalog_uri.rstrip("/").rsplit("/", 1)[0] if "/" in catalog_uri.rstrip("/") else "."]
    media = default_data_dir() / "media"
    if media.is_dir():
        roots.append(str(media.resolve()))
    return roots


def run_models(registry: dict[str, ModelSpec], model_ids: tuple[str, ...], *, windowing: Windowing,
               existing: RunRecord | None = None) -> list[ModelSpec]:
    """The registry entries a run scores with: under the run profile's text ``windowing``, which is
    part of each text model's digest (``windows.with_windowing``). A resume (``existing``: its
    ``runs`` record) keeps the windowing it started with, the one giving the digests it recorded."""
    models = [with_windowing(registry[m], windowing) for m in model_ids]
    recorded = list(existing.model_digests or []) if existing is not None else None
    if recorded is not None and [m.digest for m in models] != recorded:
        for other in WINDOWINGS:
            again = [with_windowing(registry[m], other) for m in model_ids]
            if [m.digest for m in again] == recorded:
                return again
    return models


def _gate(lake: Lake, loaded, registry, *, run_id: str, kind: str, catalog_uri: str, policy_path, force: bool) -> dict:
    """Run the evaluation gate (moderation/evaluation/gate.py) for a new run: the runs columns
    recording its outcome, or ``GateBlocked`` after a ``blocked`` runs row was written."""
    from moderation.evaluation.gate import GateBlocked, check_gate, gate_run_fields

    gate = check_gate(lake, loaded, registry)
    if gate.status not in ("not_required",):
        (log.warning if gate.status in ("blocked", "not_configured") else log.info)("%s", gate.message())
    if gate.status == "blocked" and not force:
        timing = RunTiming.start()
        write_run(lake, RunRecord(
            run_id=run_id, kind=kind, status="blocked", catalog_uri=catalog_uri,
            **PolicyProvenance.of(loaded, [registry[m] for m in loaded.policy.models], path=policy_path).columns(),
            **timing.ended(at=timing.started_at), gate_status="blocked", gate_detail=gate.detail(),
            error=gate.message(),
        ))
        raise GateBlocked(f"{gate.message()}\nrun {run_id} recorded as blocked in {lake.uri('runs')}; after "
                          "evaluating, run again, or pass --force to override (recorded in runs)")
    return gate_run_fields(gate, force=force)


@dataclass(frozen=True, kw_only=True)
class PreparedRun:
    """A request resolved for one run: what every plan kind is built from and run under.

    ``record`` is the run's ``runs`` record when it resumes (a resume keeps what it recorded:
    slice, catalog columns, media roots, windowing, item limits, error share, gate outcome,
    catalog and hash-bank versions); ``where``/``limit`` are the resolved slice.
    """

    kind: RunKind
    request: ScoringRequest
    run_id: str
    lake: Lake
    loaded: LoadedPolicy
    profile: RunProfile
    models: tuple[ModelSpec, ...]
    record: RunRecord | None
    where: str | None
    limit: int | None
    columns: dict[str, str]
    roots: list[str]
    max_words: int | None
    max_seconds: int | None
    max_share: float
    gate_fields: dict
    snapshot: CatalogSnapshot
    bank_version: int | None
    context: RunContext

    @property
    def modalities(self) -> tuple[str, ...]:
        return tuple(sorted({m.modality for m in self.models}))


def prepare_run(request: ScoringRequest, *, kind: RunKind) -> PreparedRun | ScoringResult:
    """Resolve ``request`` for a ``kind`` run: a ``PreparedRun``, or the ``ScoringResult`` of a run
    id that already succeeded (nothing is written then).

    Raises:
        ModerationError: bad policy, profile, environment or catalog; the run id belongs to
            another job (kind, catalog or policy differ); a policy version changed after use.
        GateBlocked: a new run the evaluation gate blocks (a ``blocked`` runs row is written).
    """
    from moderation.policy.lifecycle import check_immutable
    from moderation.security import check_environment

    check_environment()
    registry = load_model_registry(request.models_dir)
    loaded = load_policy(request.policy_path, registry)
    policy = loaded.policy
    profile = load_run_profile(request.profile_path)
    models = run_models(registry, policy.models, windowing=profile.text_windowing)
    lake = Lake(request.lake_root)
    check_immutable(lake, loaded)
    run_id = request.run_id or new_run_id(kind)
    catalog_uri = request.catalog_uri
    where, limit = request.where, request.limit
    columns = {**profile.catalog_columns, **(request.column_map or {})}
    roots = [*profile.media_roots, *(request.media_roots or [])] or default_media_roots(catalog_uri)

    existing = read_run(lake, run_id)
    if existing is not None and existing.status == "blocked":
        existing = None  # the gate blocked it before it wrote anything: start afresh
    if existing is not None:
        if (existing.kind != kind or existing.catalog_uri != catalog_uri
                or existing.policy_hash != loaded.content_hash):
            raise ModerationError(
                f"run id {run_id!r} already exists in {lake.uri('runs')} for another job "
                f"(kind {existing.kind}, catalog {existing.catalog_uri}, policy "
                f"{existing.policy_id} v{existing.policy_version}); choose a new --run-id"
            )
        if existing.status == "succeeded":
            return ScoringResult(
                run_id=run_id, status="succeeded", catalog_version=existing.catalog_version,
                selected_pairs=existing.selected_pairs or 0, scored_pairs=existing.scored_pairs or 0,
                quarantined_pairs=existing.quarantined_pairs or 0, chunks_committed=0,
                modalities=tuple(existing.modalities or ()), already_done=True, kind=kind,
                unchanged_pairs=existing.unchanged_pairs, removed_pairs=existing.removed_pairs,
                change_source=existing.change_source, baseline_run_id=existing.baseline_run_id,
            )
        # A resume reads exactly what the run started with.
        where, limit = existing.where_expr, existing.item_limit
        columns = dict(c.split("=", 1) for c in existing.catalog_columns or [])
        roots = list(existing.media_roots or roots)
        models = run_models(registry, policy.models, windowing=profile.text_windowing, existing=existing)
    # A resume scores with the limit the run started with (a run from before the setting: the profile's).
    max_words = (existing.max_item_words if existing else None) or profile.max_item_words
    max_seconds = (existing.max_item_seconds if existing else None) or profile.max_item_seconds
    max_share = existing.max_error_share if existing else None
    max_share = profile.max_error_share if max_share is None else max_share
    if existing is None:
        gate_fields = _gate(lake, loaded, registry, run_id=run_id, kind=kind, catalog_uri=catalog_uri,
                            policy_path=request.policy_path, force=request.force)
    else:  # a resume passed (or overrode) the gate when it started
        gate_fields = {"gate_status": existing.gate_status, "gate_detail": existing.gate_detail,
                       "forced": existing.forced}
    snapshot = open_catalog(catalog_uri, version=existing.catalog_version if existing else request.catalog_version,
                            column_map=columns)
    # Reference data in the lake is pinned once for the run (a resume keeps its pin).
    bank_version = (existing.hash_bank_version if existing else lake.version("hash_bank")) \
        if any(m.kind == "pdq_bank" for m in models) else None
    context = RunContext(lake_root=lake.root, hash_bank_version=bank_version, media_roots=tuple(roots),
                         max_item_words=max_words, max_item_seconds=max_seconds)
    return PreparedRun(
        kind=kind, request=request, run_id=run_id, lake=lake, loaded=loaded, profile=profile, models=tuple(models),
        record=existing, where=where, limit=limit, columns=columns, roots=roots, max_words=max_words,
        max_seconds=max_seconds, max_share=max_share, gate_fields=gate_fields, snapshot=snapshot,
        bank_version=bank_version, context=context,
    )


# --------------------------------------------------------------------------------------
# Running a plan
# --------------------------------------------------------------------------------------


def execute(request: ScoringRequest, *, kind: RunKind,
            planner: Callable[[PreparedRun], ScoringPlan]) -> ScoringResult:
    """Prepare a ``kind`` run for ``request``, plan it with ``planner``, run the plan.

    Raises:
        ModerationError: see ``prepare_run`` and the planner.
        StorageError: the store failed anywhere (reading the catalog or the lake, the lease,
            a commit, the accounting), classified by ``errors.is_storage_failure``.
        ScoringFailed: the run finished, but its ``score_error`` share is above the profile's
            ``max_error_share`` (recorded as failed in ``runs``; its rows stay committed).
    """
    what = f"run {request.run_id}" if request.run_id else kind
    with storage_boundary(what, hint="nothing committed is lost; run the same command again"
                                     + (" (same --run-id) to resume" if request.run_id else "")):
        prepared = prepare_run(request, kind=kind)
        if isinstance(prepared, ScoringResult):
            return prepared
        plan = planner(prepared)
        return run_scoring(prepared, plan)


def run_scoring(prepared: PreparedRun, plan: ScoringPlan) -> ScoringResult:
    """Score and commit ``plan`` for ``prepared``: the plan's removals, then model by model the
    driver's quarantine rows and the stream's chunks, each an idempotent Delta commit; then the
    accounting (selected = scores + quarantine, no key twice) and the error share. The kind of
    plan only names the run; every plan runs the same way.

    Raises:
        LakeError: the accounting does not balance (recorded as failed in ``runs``).
        ScoringFailed: the ``score_error`` share is above ``max_error_share``.
        StorageError: the store failed (``errors.is_storage_failure``); committed chunks are kept.
    """
    from tqdm import tqdm

    from moderation.engines.ray import ensure_ray
    from moderation.storage.lease import RunLease

    request, lake, run_id, profile = prepared.request, prepared.lake, prepared.run_id, prepared.profile
    models, snapshot = list(plan.models), plan.snapshot
    for note in plan.notes:
        log.warning("%s: %s", plan.kind, note)
    if plan.write_nothing:
        return ScoringResult(
            run_id=run_id, status="nothing_changed", catalog_version=snapshot.version, selected_pairs=0,
            scored_pairs=0, quarantined_pairs=0, chunks_committed=0, modalities=plan.modalities, kind=plan.kind,
            unchanged_pairs=plan.unchanged_pairs, removed_pairs=0, change_source=plan.change_source,
            baseline_run_id=plan.baseline_run_id, nothing_changed=True, notes=plan.notes,
        )
    fault_point("after_selection")

    policy, loaded = prepared.loaded.policy, prepared.loaded
    with RunLease(lake.root, run_id, ttl_s=profile.lease_ttl_s) as lease:
        # A resume keeps the start it recorded.
        timing = RunTiming.start(at=prepared.record.started_at if prepared.record else None)
        base = RunRecord(
            run_id=run_id, kind=plan.kind, status="running", catalog_uri=request.catalog_uri,
            catalog_version=snapshot.version, **PolicyProvenance.of(loaded, models, path=request.policy_path).columns(),
            modalities=tuple(plan.modalities), config_hash=config_hash(policy, profile, *models), **timing.columns(),
            hash_bank_version=prepared.bank_version,
            catalog_columns=tuple(f"{k}={v}" for k, v in sorted(prepared.columns.items())),
            media_roots=tuple(prepared.roots), max_item_words=prepared.max_words,
            max_item_seconds=prepared.max_seconds, max_error_share=prepared.max_share, **plan.runs_fields(),
            **prepared.gate_fields,
        )
        write_run(lake, base)

        chunks = 0
        selected = plan.selected_pairs
        try:
            if plan.removals is not None and plan.removed_pairs:
                removals = plan.removals.set_column(0, "run_id", pa.array([run_id] * plan.removed_pairs, pa.string()))
                lake.append_chunk("removals", removals, app_id=f"moderation/{plan.kind}/{run_id}/removals", version=0)
            if plan.streams:
                ensure_ray(request.ray_address, object_store_mb=profile.object_store_mb)
            # disable=None: no bar unless stderr is a terminal (a job's log gets no \r or escapes).
            with tqdm(total=selected, unit="pair", desc=f"{plan.kind} {run_id}",
                      disable=None if request.progress else True) as bar:
                for modality in plan.modalities:
                    chunks += _run_pass(prepared, plan, modality, lease, bar)
            scored, quarantined, dupes = run_accounting(lake, run_id)
            score_errors = run_score_errors(lake, run_id)
            ok = dupes == 0 and scored + quarantined == selected
            error = None if ok else (
                f"accounting mismatch: selected {selected} pairs, scores {scored} + quarantine {quarantined}, "
                f"duplicated {dupes}"
            )
            too_many = error_share_failure(score_errors=score_errors, selected=selected, max_share=prepared.max_share)
            status = "succeeded" if ok and too_many is None else "failed"
            write_run(lake, base.replace(
                status=status, selected_pairs=selected, scored_pairs=scored, quarantined_pairs=quarantined,
                score_error_pairs=score_errors, chunks_committed=chunks, ended_at=utcnow(), error=error or too_many,
                cascade=cascade_accounting(lake, run_id, models),
            ))
            if not ok:
                raise LakeError(f"run {run_id}: {error}")
            if too_many is not None:
                raise ScoringFailed(f"run {run_id} failed: {too_many}")
        except (LakeError, ScoringFailed):
            raise
        except Exception as e:
            _record_failure(lake, base, chunks, e)
            if not is_storage_failure(e):
                raise
            raise StorageError(
                f"run {run_id}: storage failed: {one_line(e)}. Chunks committed so far are kept; run the same "
                f"command again (same --run-id) to resume"
            ) from e
        except BaseException as e:  # KeyboardInterrupt, SystemExit: recorded, never swallowed
            _record_failure(lake, base, chunks, e)
            raise
    fields = plan.runs_fields()
    return ScoringResult(
        run_id=run_id, status=status, catalog_version=snapshot.version, selected_pairs=selected,
        scored_pairs=scored, quarantined_pairs=quarantined, chunks_committed=chunks, modalities=plan.modalities,
        kind=plan.kind, unchanged_pairs=fields.get("unchanged_pairs"), removed_pairs=fields.get("removed_pairs"),
        change_source=fields.get("change_source"), baseline_run_id=fields.get("baseline_run_id"),
        notes=plan.notes, score_error_pairs=score_errors,
    )


def _run_pass(prepared: PreparedRun, plan: ScoringPlan, modality: str, lease, bar) -> int:
    """Score and commit every model of one modality of ``plan`` in one pass (one Ray Data job):
    each model's driver quarantine rows first, then the files the write tasks report, routed to
    the model's ``ChunkWriter``. Returns the chunks committed."""
    from moderation.engines.ray import ModalityPass, score_stream

    lake, run_id = prepared.lake, prepared.run_id
    models = [m for m in plan.models if m.modality == modality and plan.selections[m.model_id].selected(modality)]
    streamed = max((plan.selections[m.model_id].stream_pairs.get(modality, 0) for m in models), default=0)
    chunk_pairs = commit_pairs(prepared.profile, streamed)
    # The writers read the chunks committed so far before the done ids, so anything committed
    # after this point by another process fences them off.
    writers, done = {}, {}
    for model in models:
        selection = plan.selections[model.model_id]
        writer = writers[model.model_id] = ChunkWriter(lake, run_id=run_id, model=model,
                                                       chunk_pairs=chunk_pairs)
        writer.commit_prelude(selection.prelude.get(modality, []), modality=modality)
        done[model.model_id] = _done_ids(lake, run_id, model.model_id)
        bar.update(len(done[model.model_id]) + sum(r.item_id is None for r in selection.prelude.get(modality, [])))
    streaming = tuple(m for m in models if plan.selections[m.model_id].stream_pairs.get(modality, 0))
    if streaming:
        pass_ = ModalityPass(run_id=run_id, lake_root=lake.root, modality=modality, models=streaming,
                             selections={m.model_id: plan.selections[m.model_id] for m in streaming},
                             # None when nothing is committed yet: models sharing a selection then share its masks.
                             skip_ids={m.model_id: done[m.model_id] if len(done[m.model_id]) else None
                                       for m in streaming})
        for files in score_stream(plan.snapshot, pass_, prepared.profile, context=prepared.context,
                                  file_pairs=file_pairs(prepared.profile, streamed)):
            fault_point("after_batch")
            lease.check()
            by_model: dict[str, list[dict]] = {}
            for f in files.to_pylist():
                by_model.setdefault(f["model_id"], []).append(f)
            for model_id, mine in by_model.items():
                writers[model_id].add_files(mine)
            bar.update(sum(files.column("rows").to_pylist()))
    lease.check()
    for writer in writers.values():
        writer.flush()
    return sum(w.chunks_committed for w in writers.values())


def error_text(error: BaseException, limit: int = 2000) -> str:
    """``runs.error`` for a failed run: the exception's class and message, led by the root cause
    when Ray wrapped it (an actor's traceback can run past the limit before it names its error),
    without terminal colour codes."""
    from moderation.errors import strip_ansi, traceback_causes

    text = strip_ansi(f"{type(error).__name__}: {error}")
    causes = traceback_causes(text)
    if causes and causes[-1][0] != type(error).__name__:
        text = f"{causes[-1][0]}: {causes[-1][1]} (raised inside {type(error).__name__}) | {text}"
    return text[:limit]


def _record_failure(lake: Lake, base: RunRecord, chunks: int, error: BaseException) -> None:
    """Mark the run failed (best effort: the store itself may be what failed)."""
    from moderation.redact import mask

    try:
        write_run(lake, base.replace(status="failed", chunks_committed=chunks, ended_at=utcnow(),
                                     error=mask(error_text(error))))
    except Exception as e:  # noqa: BLE001 - the original error is what the user must see
        log.error("could not record the failure of run %s: %s", base.run_id, type(e).__name__)
