"""decide: apply one policy version to the stored scores, with no model loaded.

For each item and policy category, the item's score is the maximum over the latest scores of
the modalities the category counts (``categories.<c>.modalities``) from the policy's models.
A score at or above the threshold is a ``violation`` (the rule's action); one in the review
band is a ``review`` (action ``human_review``). Explicit-tagged items are exempt from the
categories in ``exemptions.explicit``.

Markets: one pass decides every market variant. The category's global rule gives the row with
``market_scope`` ``"*"``, standing for the item's markets that have no override for that
category (emitted when the item lists at least one such market, or none at all). Each market M
with an override that the item lists gives its own row, ``market_scope`` M, decided by the
override merged over the global rule (no row when the category is exempt there). Every row names
the markets it applies to in ``scope_markets``: ``[M]`` for a market row; for ``"*"``, the item's
markets without an override for the category, in the item's order (null: the item lists none).

Evidence: each row carries the evidence of the scores row that gave its score (the highest among
the item's rows that count; the first of them, newest first, on a tie) for its category, the
position that evidence names (:func:`evidence_position`: character offsets of a text window,
seconds of an audio window) and that row's coverage, so a violation found on an item read only in
part says so.

Removals: a scores row is retired when ``removals`` holds a row for its (item, modality) removed
at or after it was scored; retired rows do not count, so the pair's violations disappear in the
next decide (``retired_rows`` counts the previous decide's rows that went that way).

The version's rows in ``violations`` are replaced in one atomic commit, so a second decide of the
same version never duplicates them. Everything is vectorized (pandas / Arrow): no Python loop
runs per item.
"""

from __future__ import annotations

import datetime as dt
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from moderation.clock import utcnow
from moderation.config import ALL_MARKETS, CategoryRule, LoadedPolicy, ModelSpec, load_model_registry, load_policy
from moderation.policy.lifecycle import check_immutable, effective_status, restamp_status
from moderation.runs import PolicyProvenance, RunRecord, RunTiming, new_run_id, write_run
from moderation.schemas import STR_LIST, VIOLATIONS_SCHEMA
from moderation.storage.lake import Lake
from moderation.storage.spill import BUCKET_ROWS, BucketSpill, item_buckets, scan_batches, spill_table, table_rows

SCORE_COLUMNS = ["item_id", "item_type", "modality", "model_id", "model_digest", "category_scores",
                 "language", "markets", "explicit", "scored_at", "run_id"]
#: Read with ``SCORE_COLUMNS`` where the scores table has them (coverage: since issue 13).
EVIDENCE_COLUMNS = ["evidence", "coverage", "coverage_reason"]
#: Prefix of the per-category score columns of :func:`latest_scores`' frame.
SCORE_PREFIX = "score:"
#: Prefix of the per-category evidence columns of :func:`latest_scores`' frame.
EVIDENCE_PREFIX = "evidence:"
#: The positions evidence names. Text windows (``classifiers.windows.window_name``):
#: ``body_text[3]@1520-2310``, character offsets in the field's normalised text; audio windows
#: (``classifiers.audio``): ``window 30.0-57.2s…: <transcript>``, seconds into the clip.
_TEXT_POSITION = re.compile(r"^[a-z_]+\[\d+\]@(?P<start>\d+)-(?P<end>\d+)$")
_AUDIO_POSITION = re.compile(r"^window (?P<start>\d+(?:\.\d+)?)-(?P<end>\d+(?:\.\d+)?)s\b")
_ITEM_COLUMNS = ["item_type", "language", "markets", "explicit"]



def score_column(category: str) -> str:
    return SCORE_PREFIX + category


def evidence_column(category: str) -> str:
    return EVIDENCE_PREFIX + category


def evidence_position(evidence: pd.Series) -> pd.DataFrame:
    """The position each evidence string names.

    Args:
        evidence: evidence strings (``scores.evidence`` values; None allowed).

    Returns:
        Aligned with ``evidence``: ``evidence_start`` and ``evidence_end`` (float64) and
        ``evidence_unit`` (``chars`` for a text window, ``seconds`` for an audio window), all
        null where the evidence names no position.
    """
    text = evidence.astype("string")
    out = pd.DataFrame({"evidence_start": np.nan, "evidence_end": np.nan, "evidence_unit": None},
                       index=evidence.index).astype({"evidence_unit": object})
    for pattern, unit in ((_TEXT_POSITION, "chars"), (_AUDIO_POSITION, "seconds")):
        found = text.str.extract(pattern)
        hit = found["start"].notna().to_numpy(dtype=bool) & out["evidence_unit"].isna().to_numpy()
        out.loc[hit, "evidence_start"] = found.loc[hit, "start"].astype("float64")
        out.loc[hit, "evidence_end"] = found.loc[hit, "end"].astype("float64")
        out.loc[hit, "evidence_unit"] = unit
    return out


def latest_scores(scores: pa.Table, removals: pa.Table | None = None) -> pd.DataFrame:
    """The newest row per (item, modality, model): re-scored items count once.

    Args:
        scores: ``scores`` rows (at least ``SCORE_COLUMNS``).
        removals: ``removals`` rows (item_id, modality, removed_at), or None.

    Returns:
        One row per (item_id, modality, model_id), newest first, with the scores' columns except
        the maps, one float64 column ``score:<category>`` per category found in the
        ``category_scores`` maps (null where a row has no score for it), when ``scores`` has
        ``evidence`` one string column ``evidence:<category>`` per category, and ``retired``:
        the pair was removed at or after the row was scored.
    """
    maps = scores.column("category_scores")
    keys = maps.combine_chunks().keys if scores.num_rows else pa.array([], pa.string())
    categories = sorted(c for c in pc.unique(keys).to_pylist() if c is not None)
    base = scores.drop_columns([c for c in ("category_scores", "evidence") if c in scores.column_names])
    for category in categories:
        values = pc.map_lookup(maps, pa.scalar(category, pa.string()), "first")
        # float64: a float32 score compares with the policy's thresholds as it always did.
        base = base.append_column(score_column(category), values.cast(pa.float64()))
        if "evidence" in scores.column_names:
            base = base.append_column(evidence_column(category), pc.map_lookup(
                scores.column("evidence"), pa.scalar(category, pa.string()), "first"))
    df = base.to_pandas()
    if not df.empty:
        df = df.sort_values(["scored_at", "run_id"], ascending=False, kind="stable")
        df = df.drop_duplicates(["item_id", "modality", "model_id"], keep="first")
    df["retired"] = False
    if removals is not None and removals.num_rows and not df.empty:
        last = (removals.select(["item_id", "modality", "removed_at"])
                .group_by(["item_id", "modality"]).aggregate([("removed_at", "max")]).to_pandas())
        removed_at = df[["item_id", "modality"]].merge(last, on=["item_id", "modality"], how="left")["removed_at_max"]
        scored_at = df["scored_at"].reset_index(drop=True)
        df["retired"] = (removed_at.notna() & (removed_at >= scored_at)).to_numpy()
    return df


def _sets(item_ids: pd.Series, values: pd.Series) -> pd.Series:
    """item_id -> sorted list of the distinct ``values`` of its rows, computed with bit masks
    (the vocabularies are small: modalities, model refs) so no Python runs per item."""
    frame = pd.DataFrame({"item_id": item_ids.to_numpy(), "v": values.to_numpy()}).drop_duplicates()
    vocab = sorted(frame["v"].unique())
    if len(vocab) > 62:
        return frame.sort_values(["item_id", "v"]).groupby("item_id")["v"].agg(list)
    bits = frame["v"].map({v: 1 << i for i, v in enumerate(vocab)}).astype("int64")
    masks = bits.groupby(frame["item_id"].to_numpy()).sum()
    lookup = {int(m): [v for i, v in enumerate(vocab) if int(m) >> i & 1] for m in masks.unique()}
    return masks.map(lookup)


def _market_lists(items: pd.Index, pairs: pd.DataFrame) -> pa.ListArray:
    """Per item of ``items`` (in order), the distinct markets ``pairs`` (item_id, market; no
    duplicates) gives it, in their order there; null for an item with none. Built from offsets,
    with no Python per item."""
    codes = items.get_indexer(pairs["item_id"])
    order = np.argsort(codes, kind="stable")
    counts = np.bincount(codes, minlength=len(items))
    offsets = np.zeros(len(items) + 1, dtype=np.int32)
    np.cumsum(counts, out=offsets[1:])
    values = pa.array(pairs["market"].to_numpy()[order], pa.string())
    return pa.ListArray.from_arrays(pa.array(offsets), values, mask=pa.array(counts == 0))


def _single_lists(market: str, n: int) -> pa.ListArray:
    """``n`` lists ``[market]``."""
    return pa.ListArray.from_arrays(pa.array(np.arange(n + 1, dtype=np.int32)), pa.array([market] * n, pa.string()))


def _decide_variant(hits: pd.DataFrame, col: str, rule: CategoryRule, *, category: str, scope: str) -> pd.DataFrame:
    """One (category, market scope) variant: a row per item of ``hits`` (its rows at or above
    the rule's review floor)."""
    floor = rule.review_threshold if rule.review_threshold is not None else rule.threshold
    # The row that gave each item's score (the first of the highest, in ``hits``' order).
    best = hits.loc[hits.groupby("item_id", sort=True)[col].idxmax()]
    refs = hits["model_id"] + "@" + hits["model_digest"].str.slice(0, 12)
    out = pd.DataFrame({"item_id": best["item_id"].to_numpy(), "score": best[col].to_numpy()})
    name = evidence_column(category)
    evidence = best[name] if name in best else pd.Series(None, index=best.index, dtype=object)
    out["evidence"] = evidence.to_numpy()
    for name, value in evidence_position(evidence).items():
        out[name] = value.to_numpy()
    for name in ("coverage", "coverage_reason"):
        out[name] = best[name].to_numpy() if name in best else None
    violation = (out["score"] >= rule.threshold).to_numpy()
    out["market_scope"] = scope
    out["category"] = category
    out["threshold"] = np.where(violation, rule.threshold, floor)
    out["decision"] = np.where(violation, "violation", "review")
    out["action"] = np.where(violation, rule.action, "human_review")
    out["severity"] = rule.severity
    out["evidence_modalities"] = out["item_id"].map(_sets(hits["item_id"], hits["modality"])).to_numpy()
    out["model_refs"] = out["item_id"].map(_sets(hits["item_id"], refs)).to_numpy()
    return out


def item_attributes(live: pd.DataFrame) -> pd.DataFrame:
    """item_id -> item_type, language, markets, explicit, from the item's newest row."""
    return (live.sort_values("scored_at", ascending=False, kind="stable")
            .drop_duplicates("item_id").set_index("item_id")[_ITEM_COLUMNS])


def category_rows(live: pd.DataFrame, loaded: LoadedPolicy, models: dict[str, ModelSpec], category: str,
                  explicit: pd.Series, columns: list[str]) -> pd.DataFrame | None:
    """The rows of ``live`` that count as evidence for ``category`` (models of the policy that emit
    it, for a modality its rule counts; explicit items exempt from it left out), with
    ``columns`` and the score column; None when no model of the policy can score it."""
    policy = loaded.policy
    rule = policy.categories[category]
    col = score_column(category)
    usable = [m for m in policy.models if category in models[m].categories and models[m].modality in rule.modalities]
    if col not in live or not usable:
        return None
    part = live.loc[live["model_id"].isin(usable) & live[col].notna(), [*columns, col]]
    if category in policy.exemptions.explicit:
        part = part[~part["item_id"].map(explicit).fillna(False).to_numpy(dtype=bool)]
    return part


def apply_policy(
    latest: pd.DataFrame, loaded: LoadedPolicy, models: dict[str, ModelSpec], *, run_id: str, now: dt.datetime,
    status: str | None = None,
) -> pa.Table:
    """Violations rows of one policy version over the latest scores (pure).

    Args:
        latest: the output of :func:`latest_scores`; its retired rows do not count.
        status: ``policy_status`` of the rows (default: the status the file declares).
    """
    policy = loaded.policy
    live = latest[~latest["retired"]] if "retired" in latest else latest
    if live.empty:
        return VIOLATIONS_SCHEMA.empty_table()
    items = item_attributes(live)
    explicit = items["explicit"].eq(True)
    pairs = items["markets"].explode().dropna()
    pairs = pd.DataFrame({"item_id": pairs.index.to_numpy(), "market": pairs.to_numpy()}).drop_duplicates()
    no_markets = items.index.difference(pd.Index(pairs["item_id"].unique()))

    # scope_markets of a "*" row with no override for its category: all the item's markets.
    all_markets = _market_lists(items.index, pairs)

    parts: list[pd.DataFrame] = []
    scopes: list[pa.Array] = []  # scope_markets of each part, aligned with its rows
    for category, rule in policy.categories.items():
        col = score_column(category)
        extra = [c for c in (evidence_column(category), "coverage", "coverage_reason") if c in live]
        part = category_rows(live, loaded, models, category, explicit,
                             ["item_id", "modality", "model_id", "model_digest", *extra])
        if part is None:
            continue
        overrides = policy.market_overrides(category)
        star_markets = all_markets
        variants: list[tuple[str, CategoryRule | None, pd.Index | None]] = []
        if overrides:
            free_pairs = pairs[~pairs["market"].isin(list(overrides))]
            star_markets = _market_lists(items.index, free_pairs)
            # A "*" row only where it applies somewhere: an item whose every market has an
            # override gets none (its scope_markets would be empty).
            variants.append((ALL_MARKETS, rule, no_markets.union(pd.Index(free_pairs["item_id"].unique()))))
            for market, merged in overrides.items():
                variants.append((market, merged, pd.Index(pairs.loc[pairs["market"] == market, "item_id"].unique())))
        else:
            variants.append((ALL_MARKETS, rule, None))
        for scope, merged, eligible in variants:
            if merged is None:
                continue  # exempt in this market
            floor = merged.review_threshold if merged.review_threshold is not None else merged.threshold
            sel = part[col] >= floor
            if eligible is not None:
                sel &= part["item_id"].isin(eligible)
            hits = part[sel]
            if not hits.empty:
                out = _decide_variant(hits, col, merged, category=category, scope=scope)
                parts.append(out)
                scopes.append(star_markets.take(pa.array(items.index.get_indexer(out["item_id"])))
                              if scope == ALL_MARKETS else _single_lists(scope, len(out)))
    if not parts:
        return VIOLATIONS_SCHEMA.empty_table()
    rows = pd.concat(parts, ignore_index=True)
    attrs = items.loc[rows["item_id"], ["item_type", "language", "markets"]]
    rows["item_type"] = attrs["item_type"].to_numpy()
    rows["language"] = attrs["language"].to_numpy()
    rows["markets"] = attrs["markets"].to_numpy()
    rows["policy_id"] = policy.policy_id
    rows["policy_version"] = policy.version
    rows["policy_status"] = status or policy.status
    rows["run_id"] = run_id
    rows["decided_at"] = now
    rows["score"] = rows["score"].astype("float32")
    rows["threshold"] = rows["threshold"].astype("float32")
    rows["coverage"] = rows["coverage"].astype("float32")
    names = [n for n in VIOLATIONS_SCHEMA.names if n != "scope_markets"]
    table = pa.Table.from_pandas(rows[names], schema=pa.schema([VIOLATIONS_SCHEMA.field(n) for n in names]),
                                 preserve_index=False)
    table = table.append_column(VIOLATIONS_SCHEMA.field("scope_markets"), pa.chunked_array(scopes, STR_LIST))
    return table.select(VIOLATIONS_SCHEMA.names)


def stale_counts(latest: pd.DataFrame, loaded: LoadedPolicy,
                 models: dict[str, ModelSpec]) -> dict[str, tuple[int, int]]:
    """Per model of the policy: (live latest rows from a digest other than the registry's, live
    latest rows). Counts of disjoint buckets of items add up."""
    live = latest[~latest["retired"]] if "retired" in latest else latest
    out = {}
    for model_id in loaded.policy.models:
        rows = live.loc[live["model_id"] == model_id, "model_digest"]
        out[model_id] = (int((rows != models[model_id].digest).sum()), len(rows))
    return out


def coverage_warnings(digests: set[tuple[str, str]], stale: dict[str, tuple[int, int]], loaded: LoadedPolicy,
                      models: dict[str, ModelSpec], *, scores_uri: str) -> list[str]:
    """What the stored scores lack for the policy's models: a model with no scores at all, none
    at its current registry digest, or latest scores from an older digest.

    Args:
        digests: the distinct (model_id, model_digest) of the scores read.
        stale: :func:`stale_counts`, summed over the buckets decided.
    """
    rescan = "run `moderation rescan` with this policy to score what it needs"
    out = []
    for model_id in loaded.policy.models:
        digest = models[model_id].digest
        have = sorted(d for m, d in digests if m == model_id)
        if not have:
            out.append(f"model {model_id}: no scores in {scores_uri}; the categories it scores are decided "
                       f"without it; {rescan}")
        elif digest not in have:
            out.append(f"model {model_id}: no scores at its registry digest {digest[:12]}… (scores hold "
                       f"{', '.join(d[:12] + '…' for d in have)}); {rescan}")
        else:
            old, rows = stale.get(model_id, (0, 0))
            if old:
                out.append(f"model {model_id}: {old} of {rows} latest scores are from an older digest "
                           f"than the registry's {digest[:12]}…; {rescan}")
    return out


def retired_row_count(previous: pa.Table, current: pa.Table, latest: pd.DataFrame) -> int:
    """Rows of the version's previous decide gone now for an item that has a removed pair."""
    if previous.num_rows == 0 or "retired" not in latest or not latest["retired"].any():
        return 0
    keys = ["item_id", "category", "market_scope"]
    prev = previous.select(keys).to_pandas()
    now = current.select(keys).to_pandas().drop_duplicates()
    removed_items = latest.loc[latest["retired"], "item_id"].unique()
    gone = prev.merge(now, on=keys, how="left", indicator=True)["_merge"].eq("left_only").to_numpy()
    return int((gone & prev["item_id"].isin(removed_items).to_numpy()).sum())


def _count(column: pa.ChunkedArray, value: str) -> int:
    return int(pc.sum(pc.equal(column, value)).as_py() or 0)


@dataclass(frozen=True)
class DecideResult:
    run_id: str
    policy_id: str
    policy_version: int
    items: int
    violations: int
    reviews: int
    scores_version: int
    policy_status: str = ""
    retired_rows: int = 0
    warnings: tuple[str, ...] = field(default_factory=tuple)

    def summary(self) -> str:
        lines = [(
            f"decide {self.run_id}: policy {self.policy_id} v{self.policy_version} ({self.policy_status}) over "
            f"{self.items} scored items (scores version {self.scores_version}): {self.violations} violation rows, "
            f"{self.reviews} review rows, {self.retired_rows} rows of the previous decide retired by removals"
        )]
        lines += [f"warning: {w}" for w in self.warnings]
        return "\n".join(lines)


def run_decide(*, lake_root: str, policy_path: str | Path, run_id: str | None = None,
               models_dir: Path | None = None, bucket_rows: int = BUCKET_ROWS) -> DecideResult:
    """Decide one policy version from stored scores and replace its violations.

    Reads only the model registry entries (their digests), never a model artifact.

    Memory: the driver never holds the scores table. One streaming pass splits the policy's
    scores (and ``removals`` and the version's previous violations) by a hash of the item id into
    buckets of about ``bucket_rows`` rows, Arrow files in a local temporary folder; each bucket
    is decided on its own (every rule is per item, so the result is the same as deciding all at
    once) and its rows are appended to a local file that the replace commit then streams.

    Raises:
        ConfigError: the policy file is invalid.
        ModerationError: the file differs from what a run already used (versions are immutable).
        LakeError: the lake has no scores.
    """
    registry = load_model_registry(models_dir)
    loaded = load_policy(policy_path, registry)
    policy = loaded.policy
    lake = Lake(lake_root)
    check_immutable(lake, loaded)
    dt_scores = lake.require("scores", written_by="moderation backfill")
    scores_version = dt_scores.version()
    run_id = run_id or new_run_id("decide")
    timing = RunTiming.start()
    status = effective_status(lake, policy.policy_id, policy.version, policy.status)
    have = set(dt_scores.schema().to_arrow().names)
    columns = SCORE_COLUMNS + [c for c in EVIDENCE_COLUMNS if c in have]
    schema = dt_scores.to_pyarrow_dataset().scanner(columns=columns).projected_schema
    buckets = item_buckets(table_rows(dt_scores), bucket_rows)
    now = utcnow()
    items = rows_written = violation_rows = reviews = retired = 0
    digests: set[tuple[str, str]] = set()
    stale: dict[str, tuple[int, int]] = {}
    with tempfile.TemporaryDirectory(prefix="moderation-decide-") as tmp:
        # One pass over each table splits its rows by item into bucket files on local disk.
        scores = BucketSpill(Path(tmp), "scores", schema, buckets)
        for batch in scan_batches(dt_scores, columns=columns, filter=pc.field("model_id").isin(list(policy.models))):
            pairs = pa.table({"m": batch.column("model_id"), "d": batch.column("model_digest")})
            distinct = pairs.group_by(["m", "d"]).aggregate([])
            digests.update(zip(distinct.column("m").to_pylist(), distinct.column("d").to_pylist(), strict=True))
            scores.add(batch)
        scores.close()
        removals = spill_table(lake, "removals", Path(tmp), buckets, columns=["item_id", "modality", "removed_at"])
        this_version = (pc.field("policy_id") == policy.policy_id) & (pc.field("policy_version") == policy.version)
        previous = spill_table(lake, "violations", Path(tmp), buckets, filter=this_version,
                                columns=["item_id", "category", "market_scope"])
        out_path = Path(tmp) / "violations.arrows"
        with pa.ipc.new_stream(out_path, VIOLATIONS_SCHEMA) as out:
            for b in range(buckets):
                latest = latest_scores(scores.read(b), removals.read(b) if removals else None)
                part = apply_policy(latest, loaded, registry, run_id=run_id, now=now, status=status)
                out.write_table(part)
                rows_written += part.num_rows
                decisions = part.column("decision")
                violation_rows += _count(decisions, "violation")
                reviews += _count(decisions, "review")
                if previous is not None:
                    retired += retired_row_count(previous.read(b), part, latest)
                items += int(latest.loc[~latest["retired"], "item_id"].nunique())
                for model_id, (old, rows) in stale_counts(latest, loaded, registry).items():
                    have_old, have_rows = stale.get(model_id, (0, 0))
                    stale[model_id] = (have_old + old, have_rows + rows)
                del latest, part
        warnings = coverage_warnings(digests, stale, loaded, registry, scores_uri=lake.uri("scores"))
        lake.replace_violations(lambda: pa.ipc.open_stream(out_path), policy_id=policy.policy_id,
                                policy_version=policy.version, run_id=run_id)
    # A promotion recorded while this decide ran: stamp the status it made effective (the
    # promote's own restamp may have run before this replace).
    now_status = effective_status(lake, policy.policy_id, policy.version, policy.status)
    if now_status != status:
        restamp_status(lake, policy.policy_id, {policy.version: now_status}, run_id=run_id)
        status = now_status
    result = DecideResult(
        run_id=run_id, policy_id=policy.policy_id, policy_version=policy.version,
        items=items, violations=violation_rows, reviews=reviews, scores_version=scores_version,
        policy_status=status, retired_rows=retired, warnings=tuple(warnings),
    )
    provenance = PolicyProvenance.of(loaded, [registry[m] for m in policy.models], path=policy_path, scope=True)
    write_run(lake, RunRecord(
        run_id=run_id, kind="decide", status="succeeded", **provenance.columns(), scores_version=scores_version,
        violation_rows=rows_written, retired_rows=retired, **timing.ended(),
    ))
    return result
