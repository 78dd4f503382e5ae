"""diff: what changes between two decided versions of one policy, before anyone enforces one.

Each version's rows in ``violations`` (those of its latest decide) are joined on (item,
category, market scope). A key whose outcome differs becomes one ``diffs`` row:

- ``newly_violating``: a violation in ``to``, not in ``from`` (absent there, or a review);
- ``cleared``: a violation in ``from``, not in ``to``;
- ``action_changed``: a violation in both, with different actions;
- ``newly_review``: a review in ``to``, absent in ``from``;
- ``review_cleared``: a review in ``from``, absent in ``to``.

A stratified sample of the changed rows (per category x change) goes to ``diff_samples`` for
human review. The rows of one (policy, from, to) are replaced in one atomic commit per table,
so running the same diff again never duplicates them. No model, no Ray: pandas over the two
versions' rows.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from moderation.clock import utcnow
from moderation.config import default_conf_dir
from moderation.errors import LakeError, ModerationError
from moderation.runs import RunRecord, RunTiming, new_run_id, write_run
from moderation.schemas import DIFF_SAMPLES_SCHEMA, DIFF_SUMMARY_SCHEMA, DIFFS_SCHEMA, NO_LANGUAGE, NO_MARKET
from moderation.storage.lake import Lake, TableName, sql_literal

log = logging.getLogger(__name__)

Change = Literal["newly_violating", "cleared", "action_changed", "newly_review", "review_cleared"]
#: Every change kind, in the order summaries show them.
CHANGES: tuple[Change, ...] = get_args(Change)
KEYS = ["item_id", "category", "market_scope"]
STRATUM = ["category", "change"]
#: The violations columns a diff reads.
VIOLATION_COLUMNS = ["policy_version", *KEYS, "decision", "action", "score", "item_type", "language", "markets",
                     "scope_markets", "run_id"]
#: Rows per breakdown printed by ``DiffResult.summary`` (the largest first); the DataFrames keep all.
SUMMARY_ROWS = 10


def compare_versions(from_rows: pd.DataFrame, to_rows: pd.DataFrame) -> pd.DataFrame:
    """The changed keys between two versions' violations rows (pure, vectorized).

    Args:
        from_rows, to_rows: violations rows of one version each, with at least ``KEYS``,
            decision, action, score, item_type, language and markets; a key at most once.

    Returns:
        One row per changed (item_id, category, market_scope), sorted by category, change,
        item_id, market_scope, with columns ``change``, ``from_decision``, ``to_decision``,
        ``from_action``, ``to_action``, ``from_score``, ``to_score`` and item_type, language,
        markets from the ``to`` row where there is one, else from the ``from`` row.
    """
    attrs = ["decision", "action", "score", "item_type", "language", "markets", "scope_markets"]
    from_rows, to_rows = (r if "scope_markets" in r.columns else r.assign(scope_markets=None)
                          for r in (from_rows, to_rows))
    left = from_rows[[*KEYS, *attrs]].rename(columns={c: f"from_{c}" for c in attrs})
    right = to_rows[[*KEYS, *attrs]].rename(columns={c: f"to_{c}" for c in attrs})
    m = left.merge(right, on=KEYS, how="outer", sort=False)
    fd, td = m["from_decision"], m["to_decision"]
    f_viol, t_viol = fd.eq("violation").to_numpy(), td.eq("violation").to_numpy()
    f_rev, t_rev = fd.eq("review").to_numpy(), td.eq("review").to_numpy()
    f_none, t_none = fd.isna().to_numpy(), td.isna().to_numpy()
    actions_differ = m["from_action"].ne(m["to_action"]).to_numpy()
    conditions = {
        "newly_violating": t_viol & ~f_viol,
        "cleared": f_viol & ~t_viol,
        "action_changed": f_viol & t_viol & actions_differ,
        "newly_review": t_rev & f_none,
        "review_cleared": f_rev & t_none,
    }
    m["change"] = np.select([conditions[c] for c in CHANGES], list(CHANGES), default="")
    changed = m[m["change"] != ""].copy()
    has_to = changed["to_decision"].notna()
    for c in ("item_type", "language", "markets", "scope_markets"):
        changed[c] = changed[f"to_{c}"].where(has_to, changed[f"from_{c}"])
    columns = [*KEYS, "change", "from_decision", "to_decision", "from_action", "to_action", "from_score",
               "to_score", "item_type", "language", "markets", "scope_markets"]
    return changed[columns].sort_values(["category", "change", "item_id", "market_scope"], kind="stable").reset_index(
        drop=True)


def sample_changes(changes: pd.DataFrame, *, per_stratum: int, seed: int) -> pd.DataFrame:
    """A deterministic stratified sample of changed rows (pure).

    Strata are (category, change). Within a stratum rows are ranked by
    ``sha256(f"{seed}:{item_id}:{category}:{market_scope}")`` (hex, ascending), which any SQL
    engine can reproduce, and the first ``per_stratum`` are kept: the same rows and seed always
    give the same sample, and a row's rank does not depend on the other rows.

    Args:
        changes: rows of :func:`compare_versions` (at least ``KEYS`` and ``change``).
        per_stratum: the most rows kept per stratum (0 keeps none).
        seed: changes the ranking, for a fresh sample of the same diff.

    Returns:
        The kept rows with ``stratum`` ("<category>/<change>"), ``stratum_size`` (changed rows
        in the stratum) and ``sample_rank`` (0.. within the stratum), sorted by stratum, rank.
    """
    if changes.empty:
        return changes.assign(stratum=pd.Series(dtype=object), stratum_size=pd.Series(dtype="int64"),
                              sample_rank=pd.Series(dtype="int64"))
    # hashlib per changed row: a stable, documented ranking is worth ~1 s per million rows.
    digest = [
        hashlib.sha256(f"{seed}:{i}:{c}:{s}".encode()).hexdigest()
        for i, c, s in zip(changes["item_id"], changes["category"], changes["market_scope"], strict=True)
    ]
    ranked = changes.assign(_hash=digest).sort_values([*STRATUM, "_hash"], kind="stable")
    groups = ranked.groupby(STRATUM, sort=False)
    ranked["sample_rank"] = groups.cumcount()
    ranked["stratum_size"] = groups["item_id"].transform("size")
    ranked["stratum"] = ranked["category"] + "/" + ranked["change"]
    return ranked[ranked["sample_rank"] < per_stratum].drop(columns="_hash").reset_index(drop=True)


def market_cells(changes: pd.DataFrame) -> pd.DataFrame:
    """Changed rows with a ``market`` column, one row per market the change applies to (pure).

    A row counts in the markets of its ``scope_markets``; rows without one (the item lists no
    markets, or violations written before the column existed): a row scoped to a market
    (``market_scope`` not ``*``) in that market, a ``*`` row in each of the item's markets, or in
    ``"none"`` when it lists none. A null language becomes ``"unknown"``. The same rule as the
    Spark ``diff_summary`` report.
    """
    if "scope_markets" not in changes.columns:
        changes = changes.assign(scope_markets=None)
    narrow = changes[["item_id", "category", "market_scope", "change", "item_type", "language", "markets",
                      "scope_markets"]]
    has_scope = narrow["scope_markets"].map(lambda v: v is not None and len(v) > 0).to_numpy(dtype=bool)
    star = (narrow["market_scope"] == "*").to_numpy()
    in_scope = narrow[has_scope].assign(market=lambda d: d["scope_markets"]).explode("market")
    scoped = narrow[~has_scope & ~star].assign(market=lambda d: d["market_scope"])
    starred = narrow[~has_scope & star].assign(market=lambda d: d["markets"]).explode("market")
    cells = pd.concat([in_scope, scoped, starred], ignore_index=True).drop(columns=["markets", "scope_markets"])
    cells["market"] = cells["market"].fillna(NO_MARKET)
    cells["language"] = cells["language"].fillna(NO_LANGUAGE)
    return cells


def summary_cells(cells: pd.DataFrame, *, policy_id: str, from_version: int, to_version: int) -> pd.DataFrame:
    """Distinct changed items per category x item type x market x language x change: the rows
    of ``DIFF_SUMMARY_SCHEMA`` for one diff (what the Spark report computes over all diffs).
    ``cells``: the output of :func:`market_cells`."""
    dims = ["category", "item_type", "market", "language", "change"]
    counts = cells.groupby(dims, dropna=False, sort=True)["item_id"].nunique().rename("items").reset_index()
    counts.insert(0, "to_version", to_version)
    counts.insert(0, "from_version", from_version)
    counts.insert(0, "policy_id", policy_id)
    return counts[DIFF_SUMMARY_SCHEMA.names]


def breakdown(cells: pd.DataFrame, by: str) -> pd.DataFrame:
    """Distinct changed items per value of ``by`` (index) and change (columns, every change
    kind, zeros included), largest total first. ``cells``: the output of :func:`market_cells`."""
    counts = cells.groupby([by, "change"], dropna=False)["item_id"].nunique().unstack("change", fill_value=0)
    counts = counts.reindex(columns=list(CHANGES), fill_value=0).astype("int64")
    counts.columns.name = None
    counts.index = counts.index.fillna("(null)")
    order = counts.sum(axis=1).sort_values(ascending=False, kind="stable")
    return counts.loc[order.index]


@dataclass(frozen=True, eq=False)
class DiffResult:
    """What :func:`run_diff` wrote, and the summaries it prints.

    ``counts`` are diff rows (item x category x market scope) per change. The breakdowns count
    distinct items per value and change: an item changed in two categories counts once in each
    category, and once (per change) in its item type, each of its markets and its language."""

    run_id: str
    policy_id: str
    from_version: int
    to_version: int
    from_run_id: str
    to_run_id: str
    counts: dict[str, int]  # every change kind -> diff rows
    diff_rows: int
    items: int  # distinct items with any change
    sampled_rows: int
    diffs_uri: str
    samples_uri: str
    by_category: pd.DataFrame  # index category; columns CHANGES; distinct items
    by_item_type: pd.DataFrame
    by_market: pd.DataFrame
    by_language: pd.DataFrame
    cells: pd.DataFrame  # DIFF_SUMMARY_SCHEMA columns for this diff

    def summary(self) -> str:
        """Printable text: totals, per-category items of each change, then the largest item
        type, market and language cells (at most ``SUMMARY_ROWS`` each)."""
        head = (f"diff {self.run_id}: {self.policy_id} v{self.from_version} -> v{self.to_version} "
                f"(decide runs {self.from_run_id} -> {self.to_run_id})")
        if self.diff_rows == 0:
            return "\n".join([head, "  no changes", f"  diffs: {self.diffs_uri}"])
        shown = [c for c in CHANGES if self.counts[c]]
        lines = [
            head,
            f"  {self.diff_rows} changed rows (item x category x market scope), {self.items} items: "
            + ", ".join(f"{c} {self.counts[c]}" for c in shown),
            f"  diffs: {self.diffs_uri}",
            f"  review sample: {self.sampled_rows} rows in {self.samples_uri}",
        ]
        for title, frame, limit in (("category", self.by_category, None),
                                    ("item type", self.by_item_type, SUMMARY_ROWS),
                                    ("market", self.by_market, SUMMARY_ROWS),
                                    ("language", self.by_language, SUMMARY_ROWS)):
            lines += ["", *_text_table(f"by {title} (items)", frame[shown], limit=limit)]
        return "\n".join(lines)


def _text_table(title: str, frame: pd.DataFrame, *, limit: int | None) -> list[str]:
    rows = frame if limit is None else frame.head(limit)
    header = [title, *frame.columns]
    body = [[str(label), *(str(int(v)) for v in values)]
            for label, values in zip(rows.index, rows.to_numpy(), strict=True)]
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]
    text = ["  " + "  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                             for i, (c, w) in enumerate(zip(r, widths, strict=True))).rstrip()
            for r in [header, *body]]
    if len(frame) > len(rows):
        text.append(f"  ... {len(frame) - len(rows)} more (all of them: the report's diff_summary)")
    return text


def _decide_runs(lake: Lake, policy_id: str, version: int) -> pd.DataFrame:
    runs = lake.read("runs", filter=(pc.field("kind") == "decide") & (pc.field("status") == "succeeded")
                     & (pc.field("policy_id") == policy_id) & (pc.field("policy_version") == version),
                     columns=["run_id", "ended_at"])
    return runs.to_pandas().sort_values(["ended_at", "run_id"], ascending=False, na_position="last")


def _never_decided(lake: Lake, policy_id: str, version: int) -> LakeError:
    conventional = default_conf_dir() / "policies" / policy_id / f"v{version}.yaml"
    policy_file = str(conventional) if conventional.is_file() else f"<the file of {policy_id} v{version}>"
    return LakeError(
        f"{policy_id} v{version} was never decided: {lake.uri('runs')} has no succeeded decide run of it; "
        f"run `moderation decide --lake {lake.root} --policy {policy_file}` first"
    )


def _version_run(rows: pd.DataFrame, decides: pd.DataFrame, *, lake: Lake, policy_id: str, version: int) -> str:
    """The decide run whose rows are the version's violations (checked against ``runs``)."""
    writers = set(rows["run_id"].dropna())
    succeeded = set(decides["run_id"])
    unfinished = sorted(writers - succeeded)
    if unfinished:
        raise LakeError(
            f"{lake.uri('violations')}: the rows of {policy_id} v{version} were written by decide run(s) "
            f"{unfinished}, which did not succeed (still running, or failed); wait for it or run "
            f"`moderation decide` of v{version} again"
        )
    if len(writers) > 1:
        raise LakeError(f"{lake.uri('violations')}: the rows of {policy_id} v{version} come from several decide "
                        f"runs {sorted(writers)}; run `moderation decide` of v{version} again")
    return writers.pop() if writers else str(decides["run_id"].iloc[0])


def _check_unique(rows: pd.DataFrame, *, lake: Lake, policy_id: str, version: int) -> None:
    dup = rows.duplicated(KEYS)
    if dup.any():
        first = rows.loc[dup, KEYS].iloc[0].tolist()
        raise LakeError(f"{lake.uri('violations')}: {policy_id} v{version} holds {int(dup.sum())} duplicate rows "
                        f"for (item_id, category, market_scope), e.g. {first}; run `moderation decide` of "
                        f"v{version} again")


def _replace_diff_rows(lake: Lake, table: TableName, rows: pa.Table, *, policy_id: str, from_version: int,
                       to_version: int, run_id: str) -> None:
    """Replace one (policy, from, to)'s rows of ``table`` in one atomic commit."""
    predicate = (f"policy_id = {sql_literal(policy_id)} AND from_version = {int(from_version)} "
                 f"AND to_version = {int(to_version)}")
    lake.replace_where(table, rows, predicate=predicate, metadata={"moderation.run_id": run_id})


def run_diff(*, lake_root: str, policy_id: str, from_version: int, to_version: int, run_id: str | None = None,
             sample_per_stratum: int = 20, seed: int = 0) -> DiffResult:
    """Compare two decided versions of a policy; write ``diffs``, ``diff_samples`` and a run.

    Both versions are read from one snapshot of ``violations``. The (policy, from, to) rows of
    ``diffs`` and of ``diff_samples`` are each replaced in one commit, then a ``runs`` row of
    kind ``diff`` records the run (``policy_version`` = to, ``from_version``, ``diff_rows``,
    ``baseline_versions`` = ``["violations=<Delta version read>"]``).

    Args:
        lake_root: the lake root URI.
        policy_id: the policy whose versions are compared.
        from_version: the version compared from (typically the live one).
        to_version: the version compared to (typically the candidate).
        run_id: the diff run's id; default ``diff-<utc>-<rand>``.
        sample_per_stratum: the most review-sample rows per category x change.
        seed: the review sample's seed (same seed, same sample).

    Returns:
        Counts per change, the summary breakdowns and the URIs written.

    Raises:
        ModerationError: ``from_version`` equals ``to_version`` or ``sample_per_stratum`` < 0.
        LakeError: a version has no succeeded decide run, or its violations rows were written by
            a decide run that did not succeed, or hold a key twice.
    """
    if from_version == to_version:
        raise ModerationError(f"--from and --to are both {from_version}: a diff compares two different versions")
    if sample_per_stratum < 0:
        raise ModerationError(f"sample_per_stratum must be 0 or more, got {sample_per_stratum}")
    lake = Lake(lake_root)
    timing = RunTiming.start()
    run_id = run_id or new_run_id("diff")
    decides = {v: _decide_runs(lake, policy_id, v) for v in (from_version, to_version)}
    for v in (from_version, to_version):
        if decides[v].empty:
            raise _never_decided(lake, policy_id, v)

    violations = lake.open("violations")
    violations_version = None if violations is None else violations.version()
    if violations is None:
        rows = pd.DataFrame(columns=VIOLATION_COLUMNS)
    else:
        have = set(violations.schema().to_arrow().names)
        read = violations.to_pyarrow_dataset().to_table(
            filter=(pc.field("policy_id") == policy_id) & pc.field("policy_version").isin([from_version, to_version]),
            columns=[c for c in VIOLATION_COLUMNS if c in have],  # scope_markets: absent in older tables
        )
        rows = read.to_pandas()
    side = {v: rows[rows["policy_version"] == v] for v in (from_version, to_version)}
    version_runs = {}
    for v in (from_version, to_version):
        _check_unique(side[v], lake=lake, policy_id=policy_id, version=v)
        version_runs[v] = _version_run(side[v], decides[v], lake=lake, policy_id=policy_id, version=v)

    changes = compare_versions(side[from_version], side[to_version])
    now = utcnow()
    common = {"policy_id": policy_id, "from_version": from_version, "to_version": to_version, "run_id": run_id}
    diffs = pa.Table.from_pandas(
        changes.assign(**common, from_run_id=version_runs[from_version], to_run_id=version_runs[to_version],
                       diffed_at=now),
        schema=DIFFS_SCHEMA, preserve_index=False,
    )
    sample = sample_changes(changes, per_stratum=sample_per_stratum, seed=seed)
    samples = pa.Table.from_pandas(sample.assign(**common, sampled_at=now), schema=DIFF_SAMPLES_SCHEMA,
                                   preserve_index=False)
    _replace_diff_rows(lake, "diffs", diffs, policy_id=policy_id, from_version=from_version, to_version=to_version,
                       run_id=run_id)
    _replace_diff_rows(lake, "diff_samples", samples, policy_id=policy_id, from_version=from_version,
                       to_version=to_version, run_id=run_id)

    cells = market_cells(changes)
    result = DiffResult(
        run_id=run_id, policy_id=policy_id, from_version=from_version, to_version=to_version,
        from_run_id=version_runs[from_version], to_run_id=version_runs[to_version],
        counts={c: int(n) for c, n in changes["change"].value_counts().reindex(list(CHANGES), fill_value=0).items()},
        diff_rows=len(changes), items=int(changes["item_id"].nunique()), sampled_rows=len(sample),
        diffs_uri=lake.uri("diffs"), samples_uri=lake.uri("diff_samples"),
        by_category=breakdown(cells, "category"), by_item_type=breakdown(cells, "item_type"),
        by_market=breakdown(cells, "market"), by_language=breakdown(cells, "language"),
        cells=summary_cells(cells, policy_id=policy_id, from_version=from_version, to_version=to_version),
    )
    write_run(lake, RunRecord(
        run_id=run_id, kind="diff", status="succeeded", policy_id=policy_id, policy_version=to_version,
        from_version=from_version, diff_rows=len(changes),
        baseline_versions=None if violations_version is None else (f"violations={violations_version}",),
        **timing.ended(),
    ))
    log.info("diff %s: %s v%d -> v%d: %d rows", run_id, policy_id, from_version, to_version, len(changes))
    return result
