"""decide: apply one policy version to the stored scores, with no model loaded.

For each item and policy category, the item's score is the maximum over the latest scores of
the modalities the category counts (``categories.<c>.modalities``) from the policy's models.
A score at or above the threshold is a ``violation`` (the rule's action); one in the review
band is a ``review`` (action ``human_review``). Explicit-tagged items are exempt from the
categories in ``exemptions.explicit``. The version's rows in ``violations`` are replaced in
one atomic commit, so a second decide of the same version never duplicates them.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from moderation.config import LoadedPolicy, ModelSpec, load_model_registry, load_policy
from moderation.errors import LakeError
from moderation.lake import Lake
from moderation.results import utcnow
from moderation.runinfo import code_version, new_run_id, run_row
from moderation.schemas import VIOLATIONS_SCHEMA

SCORE_COLUMNS = ["item_id", "item_type", "modality", "model_id", "model_digest", "category_scores",
                 "language", "markets", "explicit", "scored_at", "run_id"]


def latest_scores(scores: pa.Table) -> pd.DataFrame:
    """The newest row per (item, modality, model): re-scored items count once."""
    df = scores.to_pandas(maps_as_pydicts="strict")
    if df.empty:
        return df
    df = df.sort_values(["scored_at", "run_id"], ascending=False, kind="stable")
    return df.drop_duplicates(["item_id", "modality", "model_id"], keep="first")


def apply_policy(
    latest: pd.DataFrame, loaded: LoadedPolicy, models: dict[str, ModelSpec], *, run_id: str, now: dt.datetime
) -> pa.Table:
    """Violations rows of one policy version over the latest scores (pure)."""
    policy = loaded.policy
    rows: list[dict] = []
    if latest.empty:
        return VIOLATIONS_SCHEMA.empty_table()
    for category, rule in policy.categories.items():
        usable = [m for m in policy.models if category in models[m].categories and models[m].modality in rule.modalities]
        part = latest[latest["model_id"].isin(usable)]
        if part.empty:
            continue
        part = part.assign(score=[s.get(category) if s else None for s in part["category_scores"]]).dropna(subset=["score"])
        floor = rule.review_threshold if rule.review_threshold is not None else rule.threshold
        hits = part[part["score"] >= floor]
        for item_id, group in hits.groupby("item_id", sort=True):
            first = group.iloc[0]
            if category in policy.exemptions.explicit and bool(first["explicit"]):
                continue
            score = float(group["score"].max())
            violation = score >= rule.threshold
            rows.append({
                "policy_id": policy.policy_id,
                "policy_version": policy.version,
                "policy_status": policy.status,
                "item_id": item_id,
                "item_type": first["item_type"],
                "language": first["language"],
                "markets": list(first["markets"]) if first["markets"] is not None else None,
                "market_scope": "*",
                "category": category,
                "score": score,
                "threshold": rule.threshold if violation else floor,
                "decision": "violation" if violation else "review",
                "action": rule.action if violation else "human_review",
                "severity": rule.severity,
                "evidence_modalities": sorted(set(group.loc[group["score"] >= floor, "modality"])),
                "model_refs": sorted({f"{m}@{d[:12]}" for m, d in zip(group["model_id"], group["model_digest"])}),
                "run_id": run_id,
                "decided_at": now,
            })
    return pa.Table.from_pylist(rows, schema=VIOLATIONS_SCHEMA)


@dataclass(frozen=True)
class DecideResult:
    run_id: str
    policy_id: str
    policy_version: int
    items: int
    violations: int
    reviews: int
    scores_version: int

    def summary(self) -> str:
        return (
            f"decide {self.run_id}: policy {self.policy_id} v{self.policy_version} over {self.items} scored items "
            f"(scores version {self.scores_version}): {self.violations} violation rows, {self.reviews} review rows"
        )


def run_decide(*, lake_root: str, policy_path: str | Path, run_id: str | None = None,
               models_dir: Path | None = None) -> DecideResult:
    """Decide one policy version from stored scores and replace its violations."""
    registry = load_model_registry(models_dir)
    loaded = load_policy(policy_path, registry)
    policy = loaded.policy
    lake = Lake(lake_root)
    dt_scores = lake.open("scores")
    if dt_scores is None:
        raise LakeError(f"{lake.uri('scores')}: no scores yet; run `moderation backfill` first")
    scores_version = dt_scores.version()
    run_id = run_id or new_run_id("decide")
    started = utcnow()
    scores = dt_scores.to_pyarrow_dataset().to_table(
        filter=pc.field("model_id").isin(list(policy.models)), columns=SCORE_COLUMNS
    )
    latest = latest_scores(scores)
    violations = apply_policy(latest, loaded, registry, run_id=run_id, now=utcnow())
    lake.replace_violations(violations, policy_id=policy.policy_id, policy_version=policy.version, run_id=run_id)
    decisions = violations.column("decision").to_pylist()
    result = DecideResult(
        run_id=run_id, policy_id=policy.policy_id, policy_version=policy.version,
        items=int(latest["item_id"].nunique()) if not latest.empty else 0,
        violations=decisions.count("violation"), reviews=decisions.count("review"), scores_version=scores_version,
    )
    models = [registry[m] for m in policy.models]
    lake.upsert_run(run_row(
        run_id=run_id, kind="decide", status="succeeded", policy_id=policy.policy_id,
        policy_version=policy.version, policy_hash=loaded.content_hash,
        model_ids=[m.model_id for m in models], model_digests=[m.digest for m in models],
        modalities=sorted({m.modality for m in models}), categories=sorted(policy.categories),
        scores_version=scores_version, violation_rows=violations.num_rows, code_version=code_version(),
        started_at=started, ended_at=utcnow(),
    ))
    return result
