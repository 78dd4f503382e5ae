"""The backfill job: score a catalog snapshot (all of it, or a ``--where``/``--limit`` slice)
with a policy's models into ``scores`` and ``quarantine``, committed in idempotent chunks, with
one ``runs`` row per run.

``plan_backfill`` says what a backfill scores; ``moderation.scoring.run.run_scoring`` runs it
like any other plan (resume and exactly-once semantics are described there).
"""

from __future__ import annotations

from pathlib import Path

from moderation.errors import is_storage_failure  # noqa: F401 - also imported from here by older callers
from moderation.scoring.plan import BackfillResult, ScoringPlan, ScoringRequest, ScoringResult
from moderation.scoring.run import (  # noqa: F401 - re-exported for older callers
    PreparedRun,
    _done_ids,
    cascade_accounting,
    default_media_roots,
    error_share_failure,
    error_text,
    execute,
    run_accounting,
    run_models,
    run_score_errors,
    run_scoring,
)
from moderation.storage.catalog import select_ids

__all__ = ["BackfillResult", "ScoringResult", "plan_backfill", "run_backfill"]


def plan_backfill(prepared: PreparedRun) -> ScoringPlan:
    """Every (item, modality, model) pair of the snapshot in the run's slice (``where``,
    ``limit``; a resume's are those it recorded): one selection shared by all models."""
    from moderation.scoring.selection import plan_selection

    snapshot = prepared.snapshot
    keep_ids = select_ids(snapshot, prepared.where) if prepared.where else None
    selection = plan_selection(snapshot, list(prepared.modalities), keep_ids=keep_ids, limit=prepared.limit)
    return ScoringPlan(
        kind="backfill", models=prepared.models, selections={m.model_id: selection for m in prepared.models},
        snapshot=snapshot, where_expr=prepared.where, item_limit=prepared.limit,
    )


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
) -> ScoringResult:
    """Score the catalog for the policy's models. Re-running a finished run id writes nothing;
    re-running an unfinished one resumes it (same catalog version, committed pairs skipped).

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
        StorageError, ScoringFailed: see ``moderation.scoring.run.execute``.
    """
    request = ScoringRequest(
        catalog_uri=catalog_uri, lake_root=lake_root, policy_path=policy_path, run_id=run_id, where=where,
        limit=limit, catalog_version=catalog_version, ray_address=ray_address, profile_path=profile_path,
        models_dir=models_dir, column_map=column_map, media_roots=media_roots, progress=progress, force=force,
    )
    return execute(request, kind="backfill", planner=plan_backfill)
