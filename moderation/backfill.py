"""The backfill job: score a catalog snapshot with a policy's models into ``scores`` and
``quarantine``, committed in idempotent chunks, with one ``runs`` row per run.

Re-running a finished run id writes nothing. Re-running an unfinished one resumes it: the
same catalog version is read, pairs already committed for the run are skipped, and chunk
numbering continues after the last committed chunk.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from moderation.catalog import open_catalog, select_ids
from moderation.classifiers.base import RunContext
from moderation.classifiers.windows import WINDOWINGS, Windowing, with_windowing
from moderation.config import (
    ModelSpec,
    config_hash,
    load_model_registry,
    load_policy,
    load_run_profile,
)
from moderation.errors import (
    LakeError,
    ModerationError,
    ScoringFailed,
    StorageError,
    is_storage_failure,  # noqa: F401 - also imported from here by older callers
    one_line,
    storage_boundary,
)
from moderation.faults import fault_point
from moderation.lake import Lake
from moderation.results import ChunkWriter, utcnow
from moderation.runinfo import code_version, new_run_id, run_row

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BackfillResult:
    run_id: str
    status: str
    catalog_version: int | None
    selected_pairs: int
    scored_pairs: int
    quarantined_pairs: int
    chunks_committed: int
    modalities: tuple[str, ...]
    already_done: bool = False
    kind: str = "backfill"
    #: Re-scans: pairs skipped as unchanged, pairs recorded as removed, how changes were found.
    unchanged_pairs: int | None = None
    removed_pairs: int | None = None
    change_source: str | None = None
    baseline_run_id: str | None = None
    #: A re-scan that found nothing to score or remove (and wrote nothing).
    nothing_changed: bool = False
    notes: tuple[str, ...] = ()
    #: Pairs quarantined as ``score_error`` (the model failed on them after the in-run retries).
    score_error_pairs: int | None = None

    def summary(self) -> str:
        if self.nothing_changed:
            return (f"rescan: nothing changed since run {self.baseline_run_id or '(none)'} (catalog version "
                    f"{self.catalog_version}, {self.unchanged_pairs} pairs unchanged, found by "
                    f"{self.change_source}); nothing written")
        head = f"run {self.run_id}: {self.status}" + (" (already finished; nothing written)" if self.already_done else "")
        lines = [
            head,
            f"  catalog version {self.catalog_version}, modalities {', '.join(self.modalities)}",
            f"  selected pairs {self.selected_pairs} = scored {self.scored_pairs} + quarantined "
            f"{self.quarantined_pairs}  [{'OK' if self.balanced else 'MISMATCH'}]",
        ]
        if self.kind == "rescan":
            lines.append(f"  unchanged pairs {self.unchanged_pairs} (skipped), removed pairs {self.removed_pairs} "
                         f"(retired at the next decide); changes found by {self.change_source}"
                         + (f" since run {self.baseline_run_id}" if self.baseline_run_id else ""))
        if self.score_error_pairs:
            lines.append(f"  score errors {self.score_error_pairs} (the model failed after retries; quarantined as "
                         f"score_error, retried by the next rescan)")
        lines.append(f"  chunks committed this invocation: {self.chunks_committed}")
        lines.extend(f"  note: {n}" for n in self.notes)
        return "\n".join(lines)

    @property
    def balanced(self) -> bool:
        return self.selected_pairs == self.scored_pairs + self.quarantined_pairs


def run_accounting(lake: Lake, run_id: str) -> tuple[int, int, int]:
    """(scores rows, quarantine rows, duplicated (item, modality, model) keys) of ``run_id``.

    Counted by DataFusion inside delta-rs, so the driver never holds the run's keys."""
    from deltalake import QueryBuilder

    rid = run_id.replace("'", "''")
    qb = QueryBuilder()
    parts, counts = [], {}
    for table in ("scores", "quarantine"):
        dt = lake.open(table)
        if dt is None:
            counts[table] = 0
            continue
        qb.register(table, dt)
        counts[table] = pa.table(qb.execute(f"SELECT count(*) AS n FROM {table} WHERE run_id = '{rid}'").read_all()
                                 ).column("n")[0].as_py()
        # Id-less rows are quarantined, never keyed.
        parts.append(f"SELECT item_id, modality, model_id FROM {table} WHERE run_id = '{rid}' AND item_id IS NOT NULL")
    dupes = 0
    if parts:
        sql = (f"SELECT coalesce(sum(n - 1), 0) AS d FROM (SELECT count(*) AS n FROM ({' UNION ALL '.join(parts)}) "
               f"GROUP BY item_id, modality, model_id HAVING count(*) > 1)")
        dupes = pa.table(qb.execute(sql).read_all()).column("d")[0].as_py() or 0
    return counts["scores"], counts["quarantine"], int(dupes)


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
            f"SELECT count(*) AS n, coalesce(sum(CASE WHEN map_extract(evidence, '{CASCADE_EVIDENCE_KEY}')[1] = 'strong' "
            f"THEN 1 ELSE 0 END), 0) AS s FROM scores WHERE run_id = '{rid}' AND model_id = '{mid}'").read_all()).to_pylist()[0]
        _, high = bands(m)  # validates the band
        n, sent = int(counts["n"]), int(counts["s"])
        out.append(json.dumps({
            "model_id": m.model_id, "cheap": m.preprocessing.get("cheap"), "strong": m.preprocessing.get("strong"),
            "band_low": {c: float(m.preprocessing[f"band_low.{c}"]) for c in m.categories}, "band_high": high,
            "pairs": n, "strong_pairs": sent, "strong_share": round(sent / n, 4) if n else None,
        }, sort_keys=True))
    return out


def _done_ids(lake: Lake, run_id: str, model_id: str) -> pa.Array:
    flt = (pc.field("run_id") == run_id) & (pc.field("model_id") == model_id)
    s = lake.read("scores", filter=flt, columns=["item_id"])
    q = lake.read("quarantine", filter=flt, columns=["item_id"])
    ids = pa.concat_arrays([s.column("item_id").combine_chunks(), q.column("item_id").combine_chunks()])
    return pc.unique(ids.drop_null())


def default_media_roots(catalog_uri: str) -> list[str]:
    """The catalog's own folder and the data directory's ``media`` (when it exists)."""
    from moderation.datasets import default_data_dir

    roots = [catalog_uri.rstrip("/").rsplit("/", 1)[0] if "/" in catalog_uri.rstrip("/") else "."]
    media = default_data_dir() / "media"
    if media.is_dir():
        roots.append(str(media.resolve()))
    return roots


def run_backfill(
    *,
    catalog_uri: str,
    lake_root: str,
    policy_path: str | Path,
    run_id: str | None = None,
    where: str | None = None,
    limit: int | None = None,
    catalog_version: int | None = None,
    ray_address: str | None = None,
    profile_path: str | Path | None = None,
    models_dir: Path | None = None,
    column_map: dict[str, str] | None = None,
    media_roots: list[str] | None = None,
    progress: bool = True,
    force: bool = False,
) -> BackfillResult:
    """Score the catalog for the policy's models. See module docstring for resume semantics.

    Args:
        catalog_version: the catalog's Delta version to read (time travel; default the latest),
            e.g. to reproduce a past run from its ``runs`` row.
        column_map: catalog field -> catalog column, on top of the run profile's
            ``catalog_columns``.
        media_roots: extra roots media URIs may lie under, on top of the profile's.
        force: go on when the evaluation gate blocks the policy version (the override is
            recorded in ``runs``: ``gate_status = overridden``, ``forced = true``).

    Raises:
        ModerationError: bad policy, catalog, column mapping, environment, run id reuse, or
            another live process working on the same run id: before anything is written.
        GateBlocked: the candidate policy version or model is worse than the live one beyond
            the gate's tolerance, or was not evaluated (a ``runs`` row of status ``blocked``).
    """
    return run_scoring(
        kind="backfill", catalog_uri=catalog_uri, lake_root=lake_root, policy_path=policy_path, run_id=run_id,
        where=where, limit=limit, catalog_version=catalog_version, ray_address=ray_address,
        profile_path=profile_path, models_dir=models_dir, column_map=column_map, media_roots=media_roots,
        progress=progress, force=force,
    )


def _gate(lake: Lake, loaded, registry, *, run_id: str, kind: str, catalog_uri: str, policy_path, force: bool) -> dict:
    """Run the evaluation gate (moderation/evaluation/gate.py) for a new run: the runs columns
    recording its outcome, or ``GateBlocked`` after a ``blocked`` runs row was written."""
    from moderation.evaluation.gate import GateBlocked, check_gate, gate_run_fields

    gate = check_gate(lake, loaded, registry)
    if gate.status not in ("not_required",):
        (log.warning if gate.status in ("blocked", "not_configured") else log.info)("%s", gate.message())
    if gate.status == "blocked" and not force:
        now = utcnow()
        policy = loaded.policy
        lake.upsert_run(run_row(
            run_id=run_id, kind=kind, status="blocked", catalog_uri=catalog_uri, policy_id=policy.policy_id,
            policy_version=policy.version, policy_hash=loaded.content_hash, policy_path=str(policy_path),
            model_ids=list(policy.models), model_digests=[registry[m].digest for m in policy.models],
            code_version=code_version(), started_at=now, ended_at=now, gate_status="blocked",
            gate_detail=gate.detail(), error=gate.message(),
        ))
        raise GateBlocked(f"{gate.message()}\nrun {run_id} recorded as blocked in {lake.uri('runs')}; after "
                          "evaluating, run again, or pass --force to override (recorded in runs)")
    return gate_run_fields(gate, force=force)


def run_models(registry: dict[str, ModelSpec], model_ids: tuple[str, ...], *, windowing: Windowing,
               existing: dict | None = None) -> list[ModelSpec]:
    """The registry entries a run scores with: under the run profile's text ``windowing``, which is
    part of each text model's digest (``windows.with_windowing``). A resume (``existing``: its
    ``runs`` row) keeps the windowing it started with, the one giving the digests it recorded."""
    models = [with_windowing(registry[m], windowing) for m in model_ids]
    if existing is not None and [m.digest for m in models] != list(existing.get("model_digests") or []):
        for other in WINDOWINGS:
            again = [with_windowing(registry[m], other) for m in model_ids]
            if [m.digest for m in again] == list(existing.get("model_digests") or []):
                return again
    return models


def run_scoring(*, kind: str, run_id: str | None = None, **options) -> BackfillResult:
    """A backfill (every selected pair) or a re-scan (only changed pairs; rescan.py): select,
    then score model by model in idempotent chunks, then check the accounting and the error share.
    Takes ``_run_scoring``'s options.

    Raises:
        StorageError: the store failed anywhere (reading the catalog or the lake, the lease,
            a commit, the accounting), classified by ``errors.is_storage_failure``.
        ScoringFailed: the run finished, but its ``score_error`` share is above the profile's
            ``max_error_share`` (recorded as failed in ``runs``; its rows stay committed).
    """
    what = f"run {run_id}" if run_id else kind
    with storage_boundary(what, hint="nothing committed is lost; run the same command again"
                                     + (" (same --run-id) to resume" if run_id else "")):
        return _run_scoring(kind=kind, run_id=run_id, **options)


def _run_scoring(
    *,
    kind: str,
    catalog_uri: str,
    lake_root: str,
    policy_path: str | Path,
    run_id: str | None = None,
    where: str | None = None,
    limit: int | None = None,
    catalog_version: int | None = None,
    ray_address: str | None = None,
    profile_path: str | Path | None = None,
    models_dir: Path | None = None,
    column_map: dict[str, str] | None = None,
    media_roots: list[str] | None = None,
    progress: bool = True,
    change_source: str = "auto",
    force: bool = False,
) -> BackfillResult:
    """The body of ``run_scoring``."""
    from tqdm import tqdm

    from moderation.lease import RunLease
    from moderation.lifecycle import check_immutable
    from moderation.pipeline import ensure_ray, score_stream
    from moderation.rescan import (
        decode_versions,
        encode_versions,
        pinned_versions,
        plan_rescan,
    )
    from moderation.security import check_environment
    from moderation.selection import plan_selection

    check_environment()
    registry = load_model_registry(models_dir)
    loaded = load_policy(policy_path, registry)
    policy = loaded.policy
    profile = load_run_profile(profile_path)
    models = run_models(registry, policy.models, windowing=profile.text_windowing)
    modalities = tuple(sorted({m.modality for m in models}))
    lake = Lake(lake_root)
    check_immutable(lake, loaded)
    run_id = run_id or new_run_id(kind)
    columns = {**profile.catalog_columns, **(column_map or {})}
    roots = [*profile.media_roots, *(media_roots or [])] or default_media_roots(catalog_uri)

    existing = lake.get_run(run_id)
    if existing is not None and existing["status"] == "blocked":
        existing = None  # the gate blocked it before it wrote anything: start afresh
    if existing is not None:
        if existing["kind"] != kind or existing["catalog_uri"] != catalog_uri or existing["policy_hash"] != loaded.content_hash:
            raise ModerationError(
                f"run id {run_id!r} already exists in {lake.uri('runs')} for another job "
                f"(kind {existing['kind']}, catalog {existing['catalog_uri']}, policy "
                f"{existing['policy_id']} v{existing['policy_version']}); choose a new --run-id"
            )
        if existing["status"] == "succeeded":
            return BackfillResult(
                run_id=run_id, status="succeeded", catalog_version=existing["catalog_version"],
                selected_pairs=existing["selected_pairs"], scored_pairs=existing["scored_pairs"],
                quarantined_pairs=existing["quarantined_pairs"], chunks_committed=0,
                modalities=tuple(existing["modalities"]), already_done=True, kind=kind,
                unchanged_pairs=existing.get("unchanged_pairs"), removed_pairs=existing.get("removed_pairs"),
                change_source=existing.get("change_source"), baseline_run_id=existing.get("baseline_run_id"),
            )
        # A resume reads exactly what the run started with.
        where, limit = existing["where_expr"], existing["item_limit"]
        columns = dict(c.split("=", 1) for c in existing.get("catalog_columns") or [])
        roots = list(existing.get("media_roots") or roots)
        models = run_models(registry, policy.models, windowing=profile.text_windowing, existing=existing)
    # A resume scores with the limit the run started with (a run from before the setting: the profile's).
    max_words = (existing.get("max_item_words") if existing else None) or profile.max_item_words
    max_seconds = (existing.get("max_item_seconds") if existing else None) or profile.max_item_seconds
    max_share = existing.get("max_error_share") if existing else None
    max_share = profile.max_error_share if max_share is None else max_share
    if existing is None:
        gate_fields = _gate(lake, loaded, registry, run_id=run_id, kind=kind, catalog_uri=catalog_uri,
                            policy_path=policy_path, force=force)
    else:  # a resume passed (or overrode) the gate when it started
        gate_fields = {k: existing.get(k) for k in ("gate_status", "gate_detail", "forced")}
    snapshot = open_catalog(catalog_uri, version=existing["catalog_version"] if existing else catalog_version,
                            column_map=columns)
    # Reference data in the lake is pinned once for the run (a resume keeps its pin).
    bank_version = (existing["hash_bank_version"] if existing else lake.version("hash_bank")) \
        if any(m.kind == "pdq_bank" for m in models) else None
    context = RunContext(lake_root=lake.root, hash_bank_version=bank_version, media_roots=tuple(roots),
                         max_item_words=max_words, max_item_seconds=max_seconds)

    extra: dict = {}
    plan = None
    if kind == "rescan":
        versions = decode_versions(existing.get("baseline_versions")) if existing else pinned_versions(lake)
        plan = plan_rescan(snapshot, models, lake, context=context, versions=versions, exclude_run=run_id,
                           change_source=(existing.get("change_source") if existing else None) or change_source)
        selections = plan.selections
        extra = dict(change_source=plan.change_source, baseline_run_id=plan.baseline_run_id,
                     baseline_versions=encode_versions(versions), unchanged_pairs=plan.unchanged_pairs,
                     removed_pairs=plan.removed_pairs)
        for note in plan.notes:
            log.warning("rescan: %s", note)
        if existing is None and plan.selected(models) == 0 and plan.removed_pairs == 0:
            return BackfillResult(
                run_id=run_id, status="nothing_changed", catalog_version=snapshot.version, selected_pairs=0,
                scored_pairs=0, quarantined_pairs=0, chunks_committed=0, modalities=modalities, kind=kind,
                unchanged_pairs=plan.unchanged_pairs, removed_pairs=0, change_source=plan.change_source,
                baseline_run_id=plan.baseline_run_id, nothing_changed=True, notes=tuple(plan.notes),
            )
    else:
        keep_ids = select_ids(snapshot, where) if where else None
        selection = plan_selection(snapshot, list(modalities), keep_ids=keep_ids, limit=limit)
        selections = {m.model_id: selection for m in models}
    fault_point("after_selection")

    with RunLease(lake.root, run_id, ttl_s=profile.lease_ttl_s) as lease:
        started = existing["started_at"] if existing else utcnow()
        base = dict(
            run_id=run_id, kind=kind, catalog_uri=catalog_uri, catalog_version=snapshot.version,
            where_expr=where, item_limit=limit, policy_id=policy.policy_id, policy_version=policy.version,
            policy_hash=loaded.content_hash, policy_path=str(policy_path), model_ids=[m.model_id for m in models],
            model_digests=[m.digest for m in models], modalities=list(modalities),
            config_hash=config_hash(policy, profile, *models), code_version=code_version(), started_at=started,
            hash_bank_version=bank_version, catalog_columns=[f"{k}={v}" for k, v in sorted(columns.items())],
            media_roots=roots, max_item_words=max_words, max_item_seconds=max_seconds, max_error_share=max_share,
            **extra, **gate_fields,
        )
        lake.upsert_run(run_row(**base, status="running"))

        chunks = 0
        selected = sum(selections[m.model_id].selected(m.modality) for m in models)
        try:
            if plan is not None and plan.removed_pairs:
                removals = plan.removals.set_column(0, "run_id", pa.array([run_id] * plan.removed_pairs, pa.string()))
                lake.append_chunk("removals", removals, app_id=f"moderation/rescan/{run_id}/removals", version=0)
            if any(selections[m.model_id].stream_pairs.get(m.modality, 0) for m in models):
                ensure_ray(ray_address, object_store_mb=profile.object_store_mb)
            # disable=None: no bar unless stderr is a terminal (a job's log gets no \r or escapes).
            with tqdm(total=selected, unit="pair", desc=f"{kind} {run_id}", disable=None if progress else True) as bar:
                for model in models:
                    selection = selections[model.model_id]
                    if not selection.selected(model.modality):
                        continue
                    # The writer reads the chunks committed so far before the done ids, so
                    # anything committed after this point by another process fences it off.
                    writer = ChunkWriter(lake, run_id=run_id, model=model, chunk_pairs=profile.chunk_pairs)
                    writer.commit_prelude(selection.prelude.get(model.modality, []), modality=model.modality)
                    done = _done_ids(lake, run_id, model.model_id)
                    bar.update(len(done) + sum(r.item_id is None for r in selection.prelude.get(model.modality, [])))
                    if selection.stream_pairs.get(model.modality, 0):
                        for batch in score_stream(snapshot, model, profile, selection=selection, skip_ids=done,
                                                  context=context):
                            fault_point("after_batch")
                            lease.check()
                            writer.add(batch)
                            bar.update(batch.num_rows)
                    lease.check()
                    writer.flush()
                    chunks += writer.chunks_committed
            scored, quarantined, dupes = run_accounting(lake, run_id)
            score_errors = run_score_errors(lake, run_id)
            ok = dupes == 0 and scored + quarantined == selected
            error = None if ok else (
                f"accounting mismatch: selected {selected} pairs, scores {scored} + quarantine {quarantined}, "
                f"duplicated {dupes}"
            )
            too_many = error_share_failure(score_errors=score_errors, selected=selected, max_share=max_share)
            status = "succeeded" if ok and too_many is None else "failed"
            lake.upsert_run(run_row(
                **base, status=status, selected_pairs=selected, scored_pairs=scored, quarantined_pairs=quarantined,
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
    return BackfillResult(
        run_id=run_id, status=status, catalog_version=snapshot.version, selected_pairs=selected,
        scored_pairs=scored, quarantined_pairs=quarantined, chunks_committed=chunks, modalities=modalities,
        kind=kind, unchanged_pairs=extra.get("unchanged_pairs"), removed_pairs=extra.get("removed_pairs"),
        change_source=extra.get("change_source"), baseline_run_id=extra.get("baseline_run_id"),
        notes=tuple(plan.notes) if plan else (), score_error_pairs=score_errors,
    )


_ANSI = re.compile(r"\x1b\[[0-9;]*m")
#: The last "SomeError: message" line of a traceback Ray wraps in its own error.
_CAUSE = re.compile(r"^(?:[\w.]+\.)?(\w+(?:Error|Exception)): (.+)$", re.M)


def error_text(error: BaseException, limit: int = 2000) -> str:
    """``runs.error`` for a failed run: the exception's class and message, led by the root cause
    when Ray wrapped it (an actor's traceback can run past the limit before it names its error),
    without terminal colour codes."""
    text = _ANSI.sub("", f"{type(error).__name__}: {error}")
    causes = _CAUSE.findall(text)
    if causes and causes[-1][0] != type(error).__name__:
        text = f"{causes[-1][0]}: {causes[-1][1]} (raised inside {type(error).__name__}) | {text}"
    return text[:limit]


def _record_failure(lake: Lake, base: dict, chunks: int, error: BaseException) -> None:
    """Mark the run failed (best effort: the store itself may be what failed)."""
    from moderation.redact import mask

    try:
        lake.upsert_run(run_row(**base, status="failed", chunks_committed=chunks, ended_at=utcnow(),
                                error=mask(error_text(error))))
    except Exception as e:  # noqa: BLE001 - the original error is what the user must see
        log.error("could not record the failure of run %s: %s", base["run_id"], type(e).__name__)
