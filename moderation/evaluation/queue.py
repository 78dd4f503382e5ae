"""The review queue: what humans should review next for one policy version.

:func:`build_review_queue` samples the items whose current score sits near a category's
threshold (``uncertain``, stratified by category x slice) plus a uniform ``audit`` sample, into
``<lake>/review_queue``; items labelled or queued since their score are skipped. The labels the
reviews produce come back through :mod:`moderation.evaluation.labels`.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from moderation.clock import utcnow
from moderation.config import LoadedPolicy, ModelSpec, load_model_registry, load_policy
from moderation.errors import ModerationError
from moderation.policy.decide import SCORE_COLUMNS, category_rows, latest_scores, score_column
from moderation.policy.decide import item_attributes as decide_item_attributes
from moderation.runs import PolicyProvenance, RunRecord, RunTiming, new_run_id, write_run
from moderation.schemas import REVIEW_QUEUE_SCHEMA
from moderation.storage.lake import Lake

log = logging.getLogger(__name__)

#: Item attributes the review queue can stratify by (``markets``: an item is in each market's stratum).
QUEUE_SLICES = ("language", "item_type", "markets", "explicit")
#: The stratum value of an item with no value for the slice column (as evaluate names null slices).
NO_VALUE = "(none)"
#: Scores are float32: the band test allows for their rounding.
_BAND_EPS = 1e-6


def _lake(lake: Lake | str) -> Lake:
    return lake if isinstance(lake, Lake) else Lake(str(lake))


def current_scores(lake: Lake, loaded: LoadedPolicy, registry: dict[str, ModelSpec]) -> tuple[pd.DataFrame, int]:
    """(:func:`moderation.policy.decide.latest_scores` frame of the policy's models at their registry
    digests, removed pairs marked ``retired``; the scores Delta version read).

    Raises:
        LakeError: the lake has no scores.
    """
    dt_scores = lake.require("scores", written_by="moderation backfill")
    models = list(loaded.policy.models)
    flt = None
    for m in models:
        one = (pc.field("model_id") == m) & (pc.field("model_digest") == registry[m].digest)
        flt = one if flt is None else flt | one
    scores = dt_scores.to_pyarrow_dataset().to_table(filter=flt, columns=SCORE_COLUMNS)
    removals = lake.read("removals", columns=["item_id", "modality", "removed_at"])
    return latest_scores(scores, removals), dt_scores.version()


def item_attributes(latest: pd.DataFrame) -> pd.DataFrame:
    """item_id -> item_type, language, markets, explicit, from the item's newest live row (as decide)."""
    return decide_item_attributes(latest[~latest["retired"]] if "retired" in latest else latest)


def category_scores(latest: pd.DataFrame, loaded: LoadedPolicy, registry: dict[str, ModelSpec]) -> pd.DataFrame:
    """The item's score per policy category, as decide computes it (pure).

    The maximum over the item's live (not retired) latest rows of the policy's models that emit
    the category and score one of the modalities the category counts; explicit items exempt
    from the category have none. Market overrides are not applied: ``threshold`` and
    ``review_threshold`` are the category's global rule.

    Returns:
        One row per (item_id, category) with a score: score (float64), model_id (the model
        giving the maximum), scored_at (the newest of the rows counted), threshold,
        review_threshold (NaN when the rule has no review band).
    """
    policy = loaded.policy
    live = latest[~latest["retired"]] if "retired" in latest else latest
    columns = ["item_id", "category", "score", "model_id", "scored_at", "threshold", "review_threshold"]
    if live.empty:
        return pd.DataFrame(columns=columns)
    explicit = item_attributes(live)["explicit"].eq(True)  # as decide: the item's newest row
    parts = []
    for category, rule in policy.categories.items():
        col = score_column(category)
        part = category_rows(live, loaded, registry, category, explicit, ["item_id", "model_id", "scored_at"])
        if part is None or part.empty:
            continue
        part = part.sort_values([col, "model_id"], ascending=[False, True], kind="stable")
        best = part.drop_duplicates("item_id")[["item_id", col, "model_id"]].rename(columns={col: "score"})
        newest = part.groupby("item_id", as_index=False)["scored_at"].max()
        out = best.merge(newest, on="item_id")
        out["category"] = category
        out["threshold"] = float(rule.threshold)
        out["review_threshold"] = float(rule.review_threshold) if rule.review_threshold is not None else float("nan")
        parts.append(out[columns])
    if not parts:
        return pd.DataFrame(columns=columns)
    return pd.concat(parts, ignore_index=True)


def in_band(scores: pd.DataFrame, band: float) -> pd.Series:
    """Rows of :func:`category_scores` whose score is within ``band`` of the threshold, or in
    the review band ``[review_threshold, threshold)``."""
    s, t, r = scores["score"], scores["threshold"], scores["review_threshold"]
    near = (s - t).abs() <= band + _BAND_EPS
    review = r.notna() & (s >= r) & (s < t)
    return near | review


def _newest_since_score(lake: Lake, table: str, column: str, pairs: pd.DataFrame, flt=None) -> pd.Series:
    """Per row of ``pairs`` (item_id, category, scored_at): the newest ``column`` of ``table``
    for that pair is at or after ``scored_at`` (False where the pair has no row)."""
    if pairs.empty or not lake.exists(table):
        return pd.Series(False, index=pairs.index)
    cats = pc.field("category").isin(sorted(pairs["category"].unique()))
    rows = lake.read(table, filter=cats if flt is None else cats & flt, columns=["item_id", "category", column])
    if rows.num_rows == 0:
        return pd.Series(False, index=pairs.index)
    last = rows.group_by(["item_id", "category"]).aggregate([(column, "max")]).to_pandas()
    merged = pairs[["item_id", "category", "scored_at"]].merge(last, on=["item_id", "category"], how="left")
    flag = merged[f"{column}_max"].notna() & (merged[f"{column}_max"] >= merged["scored_at"])
    return pd.Series(flag.to_numpy(dtype=bool), index=pairs.index)


def labelled_after_score(lake: Lake, pairs: pd.DataFrame) -> pd.Series:
    """Per row of ``pairs`` (item_id, category, scored_at): ``labels`` holds a review of the item
    for the category at or after ``scored_at``."""
    return _newest_since_score(lake, "labels", "reviewed_at", pairs)


def queued_after_score(lake: Lake, pairs: pd.DataFrame, *, queue_id: str) -> pd.Series:
    """Per row of ``pairs`` (item_id, category, scored_at): an earlier queue (another queue id)
    queued the pair at or after its current score. Such a pair not labelled since its score
    (:func:`labelled_after_score`) is still pending with the reviewers."""
    return _newest_since_score(lake, "review_queue", "queued_at", pairs, pc.field("queue_id") != queue_id)


def _rank(keys: list[str], seed: int) -> list[str]:
    # hashlib per candidate (as diff's sample): reproducible in any SQL engine, independent of the other rows.
    return [hashlib.sha256(f"{seed}:{k}".encode()).hexdigest() for k in keys]


def _missing(v) -> bool:
    """None, NaN or NA (a scalar; a list value is never missing)."""
    return v is None or (not hasattr(v, "__len__") and bool(pd.isna(v)))


def _slice_values(attrs: pd.DataFrame, column: str, items: pd.Series) -> pd.DataFrame:
    """(item_id, value) memberships of ``items`` in the strata of ``column``: one row per value
    (a list column: one per element; null / empty: ``NO_VALUE``)."""
    values = attrs[column].reindex(items.to_numpy())
    frame = pd.DataFrame({"item_id": items.to_numpy(), "value": values.to_numpy()})
    if column == "markets":
        frame["value"] = frame["value"].map(lambda v: list(v) if v is not None and len(v) else [None])
        frame = frame.explode("value")
    frame["value"] = frame["value"].map(lambda v: NO_VALUE if _missing(v) else str(v))
    return frame.drop_duplicates().reset_index(drop=True)


def sample_uncertain(band_rows: pd.DataFrame, attrs: pd.DataFrame, *, slice_columns: tuple[str, ...],
                     per_stratum: int, seed: int) -> pd.DataFrame:
    """The stratified uncertain sample (pure, deterministic).

    Per category, strata are ``<category>/<column>=<value>`` for each column of
    ``slice_columns`` (in that order) and each value (sorted). Within a stratum candidates are
    ranked by ``sha256(f"{seed}:{item_id}:{category}")`` (hex, ascending) and the first
    ``per_stratum`` not already taken by an earlier stratum of the same category are kept: an
    item is queued at most once per category, under the first stratum that took it.
    ``stratum_size`` counts the stratum's candidates (before the cap and before that
    de-duplication).
    """
    kept = []
    for category, cands in band_rows.groupby("category", sort=True):
        cands = cands.assign(_hash=_rank([f"{i}:{category}" for i in cands["item_id"]], seed))
        taken: set[str] = set()
        for column in slice_columns:
            members = _slice_values(attrs, column, cands["item_id"]).merge(cands, on="item_id")
            for value, stratum in members.sort_values(["value", "_hash"], kind="stable").groupby("value", sort=True):
                free = stratum[~stratum["item_id"].isin(taken)].head(per_stratum)
                taken.update(free["item_id"])
                kept.append(free.assign(stratum=f"{category}/{column}={value}", stratum_size=len(stratum)))
    if not kept:
        return band_rows.iloc[0:0].assign(stratum=pd.Series(dtype=object), stratum_size=pd.Series(dtype="int64"))
    return pd.concat(kept, ignore_index=True).drop(columns=["_hash", "value"])


def sample_audit(pairs: pd.DataFrame, exclude: set[str], *, audit: int, seed: int) -> tuple[pd.DataFrame, int]:
    """(rows of ``pairs`` for the audited items, candidate items): a uniform sample of ``audit``
    items among those of ``pairs`` not in ``exclude``, ranked by ``sha256(f"{seed}:{item_id}:audit")``;
    every pair of a chosen item is kept (one row per item x category)."""
    items = pd.Series(sorted(set(pairs["item_id"]) - exclude), dtype=object)
    if items.empty or audit <= 0:
        return pairs.iloc[0:0], len(items)
    ranked = pd.DataFrame({"item_id": items, "_hash": _rank([f"{i}:audit" for i in items], seed)})
    chosen = ranked.sort_values("_hash", kind="stable").head(audit)
    rows = pairs.merge(chosen, on="item_id").sort_values(["_hash", "category"], kind="stable")
    return rows.drop(columns="_hash").reset_index(drop=True), len(items)


@dataclass(frozen=True)
class QueueResult:
    """What one :func:`build_review_queue` call queued."""

    queue_id: str
    policy_id: str
    policy_version: int
    scores_version: int
    scored_items: int  # items with a current score for at least one of the policy's categories
    scored_pairs: int  # (item, category) pairs with a current score
    labelled_skipped: int  # pairs left out: labelled at or after their latest score
    pending_skipped: int  # pairs left out: queued by an earlier queue for this score, not reviewed yet
    band_pairs: int  # pairs in the uncertain band (after that)
    audit_candidates: int  # items the audit sample was drawn from
    written: bool  # False: this queue_id was committed before (rows: what it holds)
    rows: pa.Table  # the queue's rows (REVIEW_QUEUE_SCHEMA)
    params: dict = field(default_factory=dict)

    def counts(self) -> dict[tuple[str, str], int]:
        """(category, reason) -> rows."""
        return dict(Counter(zip(self.rows.column("category").to_pylist(), self.rows.column("reason").to_pylist(),
                                strict=True)))

    def summary(self) -> str:
        lines = [(
            f"review queue {self.queue_id}: policy {self.policy_id} v{self.policy_version} over {self.scored_items} "
            f"scored items / {self.scored_pairs} item x category pairs (scores version {self.scores_version}); "
            f"{self.labelled_skipped} pairs already labelled after their score; {self.pending_skipped} pairs "
            f"still pending in an earlier queue; {self.band_pairs} pairs in the "
            f"uncertain band (±{self.params.get('band')}); {self.rows.num_rows} rows queued"
            + ("" if self.written or not self.rows.num_rows else " (committed before: nothing written)")
        )]
        for (cat, reason), n in sorted(self.counts().items()):
            lines.append(f"  {cat:20} {reason:10} {n:>6}")
        strata = Counter(self.rows.column("stratum").to_pylist())
        sizes = dict(zip(self.rows.column("stratum").to_pylist(), self.rows.column("stratum_size").to_pylist(),
                         strict=True))
        for stratum, n in sorted(strata.items()):
            if stratum != "audit":
                lines.append(f"    {stratum:40} {n:>5} of {sizes[stratum]}")
        if "audit" in strata:
            audited = self.rows.filter(pc.equal(self.rows.column("reason"), "audit"))
            items = len(set(audited.column("item_id").to_pylist()))
            lines.append(f"    {'audit':40} {items:>5} items of {self.audit_candidates} ({strata['audit']} rows)")
        return "\n".join(lines)


def build_review_queue(lake: Lake | str, policy_path: str | Path, *, per_stratum: int = 20, audit: int = 50,
                       band: float = 0.1, slice_columns: tuple[str, ...] | list[str] = ("language", "item_type"),
                       seed: int = 0, queue_id: str | None = None, requeue_pending: bool = False,
                       models_dir: Path | None = None) -> QueueResult:
    """Sample the items of one policy version that humans should review next into ``review_queue``.

    Current scores are decide's (:func:`moderation.policy.decide.latest_scores`): the newest row per
    item x modality x model of the policy's models, restricted to each model's registry digest,
    removed pairs excluded; an item's category score is the maximum over the models and
    modalities the category counts (:func:`category_scores`, the global rule: market overrides
    are not applied). Pairs labelled (any source or market) at or after their latest score are
    left out.

    - ``uncertain``: per category, the items whose score is within ``band`` of the threshold or
      in ``[review_threshold, threshold)``, stratified as :func:`sample_uncertain` describes
      (at most ``per_stratum`` per stratum, an item once per category).
    - ``audit``: ``audit`` items drawn uniformly (:func:`sample_audit`) from all items with a
      current score, except those queued as uncertain (for any category); each audited item
      gets one row per policy category it has an unlabelled score for (a reviewer judges the
      whole item), stratum ``"audit"``, ``stratum_size`` = the candidate items.

    Rows carry the item's category score, the category's threshold, the model giving the score,
    and the item's attributes. All rows are one commit with the app transaction
    ``review_queue/<queue_id>``: calling again with the same ``queue_id`` writes nothing (and
    returns the rows stored). Pairs an earlier queue holds for their current score and that no
    review has answered since (:func:`queued_after_score`, not labelled since) are left out, so reviewers never get the
    same open pair twice; ``requeue_pending`` queues them again (e.g. a queue that was abandoned).
    Records a ``runs`` row (kind ``review_queue``, run_id = queue_id): the policy
    columns, model ids/digests, modalities, categories, scores_version, scored_pairs (pairs
    with a current score), unchanged_pairs (pairs skipped as labelled after their score),
    selected_pairs (rows queued), chunks_committed, config_hash (sha256 of the sampling
    parameters), code_version, started_at, ended_at.

    Raises:
        ConfigError: the policy file is invalid.
        LakeError: the lake has no scores.
        ModerationError: a slice column that is not one of ``QUEUE_SLICES``, or a negative size.
    """
    lake = _lake(lake)
    timing = RunTiming.start()
    slice_columns = tuple(slice_columns)
    unknown = [c for c in slice_columns if c not in QUEUE_SLICES]
    if unknown:
        raise ModerationError(f"review queue: slice column(s) {unknown} unknown; use {list(QUEUE_SLICES)}")
    if per_stratum < 0 or audit < 0 or band < 0:
        raise ModerationError(f"review queue: per_stratum ({per_stratum}), audit ({audit}) and band ({band}) "
                              "must not be negative")
    registry = load_model_registry(models_dir)
    loaded = load_policy(policy_path, registry)
    policy = loaded.policy
    queue_id = queue_id or new_run_id("review_queue")
    params = {"per_stratum": per_stratum, "audit": audit, "band": band, "slice_columns": list(slice_columns),
              "seed": seed, "requeue_pending": requeue_pending}

    latest, scores_version = current_scores(lake, loaded, registry)
    attrs = item_attributes(latest)
    pairs = category_scores(latest, loaded, registry)
    scored_pairs = len(pairs)
    scored_items = int(pairs["item_id"].nunique()) if scored_pairs else 0
    done = labelled_after_score(lake, pairs)
    pending = (pd.Series(False, index=pairs.index) if requeue_pending
               else queued_after_score(lake, pairs, queue_id=queue_id) & ~done)
    open_pairs = pairs[~(done | pending).to_numpy(dtype=bool)] if scored_pairs else pairs
    band_rows = open_pairs[in_band(open_pairs, band).to_numpy(dtype=bool)] if len(open_pairs) else open_pairs
    uncertain = sample_uncertain(band_rows, attrs, slice_columns=slice_columns, per_stratum=per_stratum, seed=seed)
    uncertain = uncertain.assign(reason="uncertain")
    audited, candidates = sample_audit(open_pairs, set(uncertain["item_id"]), audit=audit, seed=seed)
    audited = audited.assign(reason="audit", stratum="audit", stratum_size=candidates)
    rows = pd.concat([uncertain, audited], ignore_index=True)
    now = utcnow()
    if not rows.empty:
        a = attrs.reindex(rows["item_id"].to_numpy())
        table = pa.table({
            "queue_id": pa.array([queue_id] * len(rows), pa.string()),
            "item_id": pa.array(rows["item_id"].tolist(), pa.string()),
            "category": pa.array(rows["category"].tolist(), pa.string()),
            "reason": pa.array(rows["reason"].tolist(), pa.string()),
            "stratum": pa.array(rows["stratum"].tolist(), pa.string()),
            "stratum_size": pa.array(rows["stratum_size"].astype("int64").tolist(), pa.int64()),
            "score": pa.array(rows["score"].astype("float64").tolist(), pa.float32()),
            "threshold": pa.array(rows["threshold"].astype("float64").tolist(), pa.float32()),
            "policy_id": pa.array([policy.policy_id] * len(rows), pa.string()),
            "policy_version": pa.array([policy.version] * len(rows), pa.int32()),
            "model_id": pa.array(rows["model_id"].tolist(), pa.string()),
            "item_type": pa.array([None if pd.isna(v) else v for v in a["item_type"]], pa.string()),
            "language": pa.array([None if pd.isna(v) else v for v in a["language"]], pa.string()),
            "markets": pa.array([None if _missing(v) else list(v) for v in a["markets"]], pa.list_(pa.string())),
            "queued_at": pa.array([now] * len(rows), pa.timestamp("us", tz="UTC")),
        }).cast(REVIEW_QUEUE_SCHEMA)
    else:
        table = REVIEW_QUEUE_SCHEMA.empty_table()
    written = False
    if table.num_rows:
        written = lake.append_chunk("review_queue", table, app_id=f"review_queue/{queue_id}", version=0)
        if not written:
            table = lake.read("review_queue", filter=pc.field("queue_id") == queue_id)
    provenance = PolicyProvenance.of(loaded, [registry[m] for m in policy.models], path=policy_path, scope=True)
    write_run(lake, RunRecord(
        run_id=queue_id, kind="review_queue", status="succeeded", **provenance.columns(),
        scores_version=scores_version, scored_pairs=scored_pairs,
        unchanged_pairs=int(done.sum()) if scored_pairs else 0,
        selected_pairs=table.num_rows, chunks_committed=int(written),
        config_hash=hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest(), **timing.ended(),
    ))
    return QueueResult(queue_id=queue_id, policy_id=policy.policy_id, policy_version=policy.version,
                       scores_version=scores_version, scored_items=scored_items, scored_pairs=scored_pairs,
                       labelled_skipped=int(done.sum()) if scored_pairs else 0,
                       pending_skipped=int(pending.sum()) if scored_pairs else 0, band_pairs=len(band_rows),
                       audit_candidates=candidates, written=written, rows=table, params=params)
