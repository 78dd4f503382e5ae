"""The Spark report: violation counts and rates per policy version over the items it covered, and
what share of those items the models read.

Two layers over the Spark adapter (``moderation.engines.spark``, whose :func:`read_snapshot`
turns one exact Delta snapshot into a Spark DataFrame): :func:`latest_decides`,
:func:`live_scores`, :func:`population`, :func:`violation_rates`,
:func:`category_totals`, :func:`violations_by_category`, :func:`scoring_coverage`,
:func:`diff_summary`, :func:`diff_totals` and the analysts' reports of issue 17
(:func:`violation_trend`, :func:`rollups`, :func:`blast_radius`, :func:`detection_methods`,
:func:`transparency_summary`) are pure DataFrame -> DataFrame functions; :func:`run_report` wires
them and writes the small aggregates back to the lake with delta-rs (the analysts' reports with
a PNG chart each, ``moderation.reporting.charts``).

pyspark is imported inside the functions, so importing this module stays cheap.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.compute as pc

from moderation.engines.spark import can_write, read_snapshot, spark_schema, spark_session, write_parquet
from moderation.errors import ConfigError, LakeError
from moderation.schemas import (
    ANALYST_SCHEMAS,
    BLAST_RADIUS_SCHEMA,
    CATEGORY_TOTALS_SCHEMA,
    COVERAGE_SCHEMA,
    DETECTION_SCHEMA,
    DIFF_SUMMARY_SCHEMA,
    DIFF_TOTALS_SCHEMA,
    NO_LANGUAGE,
    NO_MARKET,
    REPORT_SNAPSHOT_SCHEMA,
    ROLLUPS_SCHEMA,
    TABLE_SCHEMAS,
    TRANSPARENCY_SCHEMA,
    VIOLATION_RATES_SCHEMA,
    VIOLATION_TREND_SCHEMA,
    VIOLATIONS_BY_CATEGORY_SCHEMA,
)
from moderation.storage.lake import Lake, join_uri

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame, SparkSession

log = logging.getLogger(__name__)

POLICY_KEYS = ["policy_id", "policy_version"]
CELL_KEYS = ["item_type", "market", "language"]
#: The catalog ids scores rows carry for the roll-ups (issue 17; null in older rows).
ROLLUP_ID_COLUMNS = ["creator_id", "show_id", "album_id"]
# The scores columns population() needs; the rest (maps of scores, evidence) are never read.
POPULATION_SCORE_COLUMNS = [
    "item_id", "item_type", "language", "markets", "model_id", "modality", "run_id", "scored_at",
    *ROLLUP_ID_COLUMNS,
]
#: The scores columns scoring_coverage() needs besides those (null in snapshots from before issue 13).
COVERAGE_SCORE_COLUMNS = ["coverage", "coverage_reason"]
COVERAGE_KEYS = ["item_type", "modality", "model_id"]
DIFF_KEYS = ["policy_id", "from_version", "to_version"]
#: The lake tables a report reads, in the order their versions are pinned: ``runs`` first, since
#: a decide commits its violations before its runs row (see :func:`pin_snapshot`).
PINNED_TABLES = ("runs", "violations", "scores", "removals", "diffs", "labels")
#: Pinning attempts before a report gives up on a lake whose decides keep moving under it.
PIN_ATTEMPTS = 5
#: Severities from least to most severe (``config.Severity``): ``worst_severity`` is the last present.
SEVERITY_ORDER = ("low", "medium", "high", "critical")
#: Roll-up level -> (the scores column holding its id, the item type it rolls up; None: every item).
ROLLUP_LEVELS = {"creator": ("creator_id", None), "show": ("show_id", "episode"), "album": ("album_id", "track")}
#: ``entity_id`` of a level's items that lack the id.
UNKNOWN_ENTITY = "unknown"
#: ``review`` / ``detection_method`` values (see ``schemas._DETECTION``).
HUMAN_REVIEW = "human_review"
AUTOMATED = "automated"
UNKNOWN_MODEL = "unknown"
#: Transparency cells counting fewer items than this are suppressed (``--min-cell-count``).
DEFAULT_MIN_CELL_COUNT = 10
#: ``suppression`` of a transparency cell withheld for its own count, and of one withheld so that
#: a line total cannot give a small cell back (see :func:`suppression_pattern`).
SMALL_CELL = "small_cell"
COMPLEMENTARY = "complementary"
#: The transparency table's lines whose totals a reader may know: per action (over detection
#: methods), per detection method (over actions), and the whole market x category.
TRANSPARENCY_LINES = (("action",), ("detection_method",), ())
#: Creators ranked in ``reports/blast_radius`` per policy version.
BLAST_RADIUS_TOP = 20
#: The column every issue-17 report table ends with (the lake versions read), added by ``_report``.
LAKE_VERSIONS = "lake_versions"
#: Report tables with a row per entity, which grow with the catalog: Spark writes their files
#: into the lake itself where it can reach it (``engines.spark.can_write``), so their rows never
#: reach the driver; the others are aggregates over bounded keys, collected and written by the lake.
WIDE_TABLES = ("rollups",)


def latest_decides(runs_df: DataFrame) -> DataFrame:
    """The newest succeeded decide run per policy version.

    Args:
        runs_df: rows of the ``runs`` table.

    Returns:
        One ``runs`` row per (policy_id, policy_version): the succeeded ``decide`` run with the
        latest ``ended_at`` (ties broken by the larger run_id). Columns as ``runs_df``.
    """
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    newest = Window.partitionBy(*POLICY_KEYS).orderBy(F.col("ended_at").desc_nulls_last(), F.col("run_id").desc())
    return (
        runs_df.where((F.col("kind") == "decide") & (F.col("status") == "succeeded"))
        .withColumn("_rank", F.row_number().over(newest))
        .where(F.col("_rank") == 1)
        .drop("_rank")
    )


def live_scores(scores_df: DataFrame, removals_df: DataFrame) -> DataFrame:
    """``scores`` rows without those a re-scan retired: a ``removals`` row of the same (item_id,
    modality) with ``removed_at`` at or after the row's ``scored_at`` retires it (a pair scored
    again after its removal is live again).

    Args:
        scores_df: rows with at least item_id, modality and scored_at.
        removals_df: ``removals`` rows (item_id, modality, removed_at).

    Returns:
        The rows of ``scores_df`` no removal retires, with its columns.
    """
    from pyspark.sql import functions as F

    removed = removals_df.select(
        F.col("item_id").alias("_removed_item"), F.col("modality").alias("_removed_modality"), "removed_at"
    )
    retired = (
        (F.col("item_id") == F.col("_removed_item"))
        & (F.col("modality") == F.col("_removed_modality"))
        & (F.col("scored_at") <= F.col("removed_at"))
    )
    return scores_df.join(removed, on=retired, how="left_anti")


def population(scores_df: DataFrame, decides_df: DataFrame, removals_df: DataFrame | None = None) -> DataFrame:
    """The items each decide run covered: every item with a score from one of its models in the
    ``scores`` snapshot it read, less the (item, modality) pairs removed from the catalog.

    Args:
        scores_df: ``scores`` rows tagged with a ``scores_version`` column, the Delta version they
            were read at; holding every version a decide row names (see :func:`run_report`).
        decides_df: decide ``runs`` rows (policy_id, policy_version, model_ids, scores_version).
        removals_df: ``removals`` rows, or None (no removals table): scores rows they retire
            (see :func:`live_scores`) do not count.

    Returns:
        Distinct (policy_id, policy_version, item_id) with item_type, language, markets,
        creator_id, show_id and album_id taken from the item's newest live scores row (by
        scored_at, then run_id, modality, model_id; ids null where ``scores_df`` lacks them).
    """
    from pyspark.sql import functions as F

    if removals_df is not None:
        scores_df = live_scores(scores_df, removals_df)
    decide_models = decides_df.select(
        *POLICY_KEYS, "scores_version", F.explode("model_ids").alias("model_id")
    ).distinct()
    covered = scores_df.join(decide_models, on=["scores_version", "model_id"], how="inner")
    ids = [c for c in ROLLUP_ID_COLUMNS if c in scores_df.columns]
    newest = F.max_by(
        F.struct("item_type", "language", "markets", *ids),
        F.struct("scored_at", "run_id", "modality", "model_id"),
    )
    return (
        covered.groupBy(*POLICY_KEYS, "item_id")
        .agg(newest.alias("_item"))
        .select(*POLICY_KEYS, "item_id", "_item.item_type", "_item.language", "_item.markets",
                *(F.col(f"_item.{c}") if c in ids else F.lit(None).cast("string").alias(c) for c in ROLLUP_ID_COLUMNS))
    )


def _item_markets() -> Column:
    """A population item's markets: its ``markets``, else ``[NO_MARKET]``."""
    from pyspark.sql import functions as F

    return F.when(F.size("markets") > 0, F.col("markets")).otherwise(F.array(F.lit(NO_MARKET)))


def _row_markets() -> Column:
    """The markets a ``violations`` row applies to: its ``scope_markets``; for a row decided
    before that column existed (null there), its scope's market, or for a ``"*"`` row the item's
    markets (``[NO_MARKET]`` when it lists none), as reports counted such rows then."""
    from pyspark.sql import functions as F

    return (
        F.when(F.col("scope_markets").isNotNull(), F.col("scope_markets"))
        .when(F.col("market_scope") != "*", F.array(F.col("market_scope")))
        .otherwise(_item_markets())
    )


def _flagged(violations_df: DataFrame, population_df: DataFrame, decides_df: DataFrame) -> DataFrame:
    """Population items x their policy version's categories x the item's markets (``market``;
    ``NO_MARKET`` when it lists none), with the item's decision flags in that market: a
    ``violations`` row counts in exactly the markets it applies to (:func:`_row_markets`)."""
    from pyspark.sql import functions as F

    categories = decides_df.select(*POLICY_KEYS, F.explode("categories").alias("category")).distinct()
    flags = (
        _decided(violations_df, decides_df)
        .select(*POLICY_KEYS, "item_id", "category", F.explode(_row_markets()).alias("market"), "decision")
        .groupBy(*POLICY_KEYS, "item_id", "category", "market")
        .agg(
            F.max((F.col("decision") == "violation").cast("int")).alias("_violation"),
            F.max((F.col("decision") == "review").cast("int")).alias("_review"),
        )
    )
    cells = population_df.select(
        *POLICY_KEYS, "item_id", "item_type", "language", F.explode(_item_markets()).alias("market")
    ).distinct()
    return (
        cells.join(categories, on=POLICY_KEYS, how="inner")
        .join(flags, on=[*POLICY_KEYS, "item_id", "category", "market"], how="left")
    )


def _decided(violations_df: DataFrame, decides_df: DataFrame) -> DataFrame:
    """The ``violations`` rows the reported decide runs wrote: joined on the decide's run id, not
    only its policy version, so rows of another decide of the same version never count."""
    return violations_df.join(decides_df.select(*POLICY_KEYS, "run_id"), on=[*POLICY_KEYS, "run_id"],
                              how="left_semi")


def _distinct_items(flag: str | None = None) -> Column:
    from pyspark.sql import functions as F

    item = F.col("item_id") if flag is None else F.when(F.col(flag) == 1, F.col("item_id"))
    return F.count_distinct(item)


def _typed(df: DataFrame, schema: pa.Schema) -> DataFrame:
    """``df`` with exactly ``schema``'s columns, in order, cast to its Spark types."""
    struct = spark_schema(schema)
    return df.select(*(df[f.name].cast(f.dataType).alias(f.name) for f in struct.fields))


def violation_rates(violations_df: DataFrame, population_df: DataFrame, decides_df: DataFrame) -> DataFrame:
    """Violation and review counts and rates per policy version x category x item_type x
    market x language among the covered items.

    Every category in a decide row's ``categories`` gets a row for every cell of its
    population, zero violations included. An item counts once in each of its markets
    (null or empty markets: ``"none"``); a null language counts as ``"unknown"``. A violations
    row counts only in the markets it applies to (``scope_markets``; see :func:`_row_markets`):
    an item flagged only in DE is a violation in DE only. Only violations rows written by the
    decide runs in ``decides_df`` (same policy version and ``run_id``) are counted.

    Args:
        violations_df: ``violations`` rows.
        population_df: the output of :func:`population`.
        decides_df: the decide runs reported on (policy_id, policy_version, categories),
            one row per policy version (see :func:`latest_decides`).

    Returns:
        Columns of ``VIOLATION_RATES_SCHEMA``: items (distinct items in the cell), violations and
        reviews (distinct items with that decision for the category), violation_rate =
        violations / items.
    """
    from pyspark.sql import functions as F

    cells = _flagged(violations_df, population_df, decides_df).select(
        *POLICY_KEYS,
        "category",
        "item_id",
        "item_type",
        "market",
        F.coalesce(F.col("language"), F.lit(NO_LANGUAGE)).alias("language"),
        "_violation",
        "_review",
    )
    rates = (
        cells.groupBy(*POLICY_KEYS, "category", *CELL_KEYS)
        .agg(
            _distinct_items().alias("items"),
            _distinct_items("_violation").alias("violations"),
            _distinct_items("_review").alias("reviews"),
        )
        .withColumn("violation_rate", F.col("violations").cast("double") / F.col("items"))
    )
    return _typed(rates, VIOLATION_RATES_SCHEMA)


def category_totals(violations_df: DataFrame, population_df: DataFrame, decides_df: DataFrame) -> DataFrame:
    """Per policy version x category over the whole population, each item counted once.

    Args: as :func:`violation_rates`.

    Returns:
        Columns of ``CATEGORY_TOTALS_SCHEMA``: items (distinct covered items of the policy
        version), violations and reviews (distinct items with that decision in at least one of
        their markets, as :func:`violation_rates` counts them).
    """
    totals = (
        _flagged(violations_df, population_df, decides_df)
        .groupBy(*POLICY_KEYS, "category")
        .agg(
            _distinct_items().alias("items"),
            _distinct_items("_violation").alias("violations"),
            _distinct_items("_review").alias("reviews"),
        )
    )
    return _typed(totals, CATEGORY_TOTALS_SCHEMA)


def violations_by_category(violations_df: DataFrame, decides_df: DataFrame) -> DataFrame:
    """Distinct items per policy version x category x decision x action.

    Args:
        violations_df: ``violations`` rows.
        decides_df: the decide runs reported on; rows of other runs are left out.

    Returns:
        Columns of ``VIOLATIONS_BY_CATEGORY_SCHEMA``.
    """
    counts = (
        _decided(violations_df, decides_df)
        .groupBy(*POLICY_KEYS, "category", "decision", "action")
        .agg(_distinct_items().alias("items"))
    )
    return _typed(counts, VIOLATIONS_BY_CATEGORY_SCHEMA)


def scoring_coverage(scores_df: DataFrame, decides_df: DataFrame, removals_df: DataFrame | None = None) -> DataFrame:
    """What share of the items each decide covered its models read, per policy version x item
    type x modality x model.

    Each (item, modality, model) of a decide's models counts once, by its newest live row in the
    ``scores`` snapshot the decide read (by scored_at, then run_id: the row decide used), so a
    pair re-scored whole after a raised limit counts as whole. A row with no ``coverage`` (a model
    that does not record it, or a row scored before coverage existed) is ``unknown``, never
    ``whole``.

    Args:
        scores_df: ``scores`` rows (item_id, item_type, modality, model_id, run_id, scored_at,
            coverage, coverage_reason) tagged with ``scores_version``, as for :func:`population`.
        decides_df: decide ``runs`` rows (policy_id, policy_version, model_ids, scores_version).
        removals_df: ``removals`` rows, or None: scores rows they retire do not count.

    Returns:
        Columns of ``COVERAGE_SCHEMA``; ``partial_reasons`` is empty where nothing was partial.
    """
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    if removals_df is not None:
        scores_df = live_scores(scores_df, removals_df)
    decide_models = decides_df.select(
        *POLICY_KEYS, "scores_version", F.explode("model_ids").alias("model_id")
    ).distinct()
    newest = Window.partitionBy(*POLICY_KEYS, "item_id", "modality", "model_id").orderBy(
        F.col("scored_at").desc(), F.col("run_id").desc())
    latest = (
        scores_df.join(decide_models, on=["scores_version", "model_id"], how="inner")
        .withColumn("_rank", F.row_number().over(newest))
        .where(F.col("_rank") == 1)
        .withColumn("_status", F.when(F.col("coverage").isNull(), F.lit("unknown"))
                    .when((F.col("coverage") >= 1.0) & F.col("coverage_reason").isNull(), F.lit("whole"))
                    .otherwise(F.lit("partial")))
    )
    group = [*POLICY_KEYS, *COVERAGE_KEYS]

    def counted(status: str) -> Column:
        return F.count(F.when(F.col("_status") == status, 1))

    totals = latest.groupBy(*group).agg(
        F.count(F.lit(1)).alias("items"),
        counted("whole").alias("whole"),
        counted("partial").alias("partial"),
        counted("unknown").alias("unknown"),
        F.avg("coverage").alias("mean_coverage"),
    )
    reasons = (
        latest.where((F.col("_status") == "partial") & F.col("coverage_reason").isNotNull())
        .select(*group, F.explode(F.split("coverage_reason", ",")).alias("_reason"))
        .groupBy(*group, "_reason").agg(F.count(F.lit(1)).alias("_n"))
        .groupBy(*group)
        .agg(F.map_from_entries(F.array_sort(F.collect_list(F.struct("_reason", "_n")))).alias("partial_reasons"))
    )
    empty = F.create_map().cast("map<string,bigint>")
    out = (
        # null-safe: an item_type the catalog lacks is null, and its group is still one group.
        totals.join(reasons, on=[totals[k].eqNullSafe(reasons[k]) for k in group], how="left")
        .select(*(totals[k] for k in group), "items", "whole", "partial", "unknown", "mean_coverage",
                F.coalesce(reasons["partial_reasons"], empty).alias("partial_reasons"))
        .withColumn("whole_share", F.col("whole").cast("double") / F.col("items"))
    )
    return _typed(out, COVERAGE_SCHEMA)


def _body(schema: pa.Schema) -> pa.Schema:
    """An issue-17 report schema without its ``lake_versions`` column (added when written)."""
    return pa.schema([f for f in schema if f.name != LAKE_VERSIONS])


def _severity_rank(column: str = "severity") -> Column:
    """1 (``low``) .. 4 (``critical``); 0 for a severity outside ``SEVERITY_ORDER``."""
    from pyspark.sql import functions as F

    rank = F.lit(0)
    for i, name in enumerate(SEVERITY_ORDER, start=1):
        rank = F.when(F.col(column) == name, F.lit(i)).otherwise(rank)
    return rank


def _severity_name(rank: Column) -> Column:
    """The severity of a :func:`_severity_rank` value (null for 0 or null: nothing flagged)."""
    from pyspark.sql import functions as F

    name = F.lit(None).cast("string")
    for i, severity in enumerate(SEVERITY_ORDER, start=1):
        name = F.when(rank == i, F.lit(severity)).otherwise(name)
    return name


def violation_trend(violations_df: DataFrame, population_df: DataFrame, decides_df: DataFrame) -> DataFrame:
    """Violations per policy version x category, dated by the version's reported decide.

    The ``violations`` table holds one decide per policy version (each decide replaces its
    version's rows), so the trend runs across versions, each at the date its newest succeeded
    decide ended: a policy's v1, v2, v3 decided on successive dates make three points.

    Args: as :func:`violation_rates` (``decides_df`` also needs ``run_id`` and ``ended_at``).

    Returns:
        Columns of ``VIOLATION_TREND_SCHEMA`` but ``lake_versions``: the counts of
        :func:`category_totals` (every category of the decide, zero included) with
        ``decide_date`` (UTC date of ``ended_at``), ``decide_run_id`` and violation_rate =
        violations / items.
    """
    from pyspark.sql import functions as F

    # to_date renders in the session time zone; shifting by it first gives the UTC date.
    zone = decides_df.sparkSession.conf.get("spark.sql.session.timeZone") or "UTC"
    dates = decides_df.select(
        *POLICY_KEYS, F.col("run_id").alias("decide_run_id"),
        F.to_date(F.to_utc_timestamp("ended_at", zone)).alias("decide_date"),
    )
    trend = (
        category_totals(violations_df, population_df, decides_df)
        .join(dates, on=POLICY_KEYS, how="inner")
        .withColumn("violation_rate", F.col("violations").cast("double") / F.col("items"))
    )
    return _typed(trend, _body(VIOLATION_TREND_SCHEMA))


def _item_flags(violations_df: DataFrame, population_df: DataFrame, decides_df: DataFrame) -> DataFrame:
    """One row per population item (policy_id, policy_version, item_id, item_type and the roll-up
    ids) with ``_flagged`` / ``_reviewed`` (1: the reported decide flagged it ``violation`` /
    ``review`` in some category and market, else 0) and ``_severity`` (rank of its worst
    violation, 0 when none)."""
    from pyspark.sql import functions as F

    violation = F.col("decision") == "violation"
    flags = (
        _decided(violations_df, decides_df)
        .groupBy(*POLICY_KEYS, "item_id")
        .agg(
            F.max(violation.cast("int")).alias("_flagged"),
            F.max((F.col("decision") == "review").cast("int")).alias("_reviewed"),
            F.max(F.when(violation, _severity_rank())).alias("_severity"),
        )
    )
    return (
        population_df.select(*POLICY_KEYS, "item_id", "item_type", *ROLLUP_ID_COLUMNS)
        .join(flags, on=[*POLICY_KEYS, "item_id"], how="left")
        .fillna(0, subset=["_flagged", "_reviewed", "_severity"])
    )


def _entity_counts(df: DataFrame, keys: list[str]) -> DataFrame:
    """items, flagged_items, review_items, flagged_share and worst_severity per ``keys`` of
    :func:`_item_flags` rows."""
    from pyspark.sql import functions as F

    return (
        df.groupBy(*keys)
        .agg(
            _distinct_items().alias("items"),
            F.count_distinct(F.when(F.col("_flagged") == 1, F.col("item_id"))).alias("flagged_items"),
            F.count_distinct(F.when(F.col("_reviewed") == 1, F.col("item_id"))).alias("review_items"),
            F.max("_severity").alias("_worst"),
        )
        .withColumn("flagged_share", F.col("flagged_items").cast("double") / F.col("items"))
        .withColumn("worst_severity", _severity_name(F.col("_worst")))
    )


def rollups(violations_df: DataFrame, population_df: DataFrame, decides_df: DataFrame) -> DataFrame:
    """Covered items rolled up to their creator, show and album, per policy version.

    Levels (``ROLLUP_LEVELS``): ``creator`` takes every item by ``creator_id``; ``show`` takes
    episodes and any item with a ``show_id``; ``album`` tracks and any item with an
    ``album_id``. A level is reported for a policy version only when one of its covered items
    carries that id; within it, the items without one roll up under ``UNKNOWN_ENTITY``. The
    ids are the item's newest live scores row's (:func:`population`). Only the reported decides'
    rows count, and only for covered items (as in :func:`violation_rates`).

    Args: as :func:`violation_rates` (``population_df`` with the roll-up id columns).

    Returns:
        Columns of ``ROLLUPS_SCHEMA`` but ``lake_versions``: a row per entity, so, unlike the
        other report tables, it grows with the catalog (``WIDE_TABLES``: ``run_report`` has Spark
        write it into the lake rather than collecting it).
    """
    from pyspark.sql import functions as F

    items = _item_flags(violations_df, population_df, decides_df)
    levels: DataFrame | None = None
    for level, (column, item_type) in ROLLUP_LEVELS.items():
        members = items if item_type is None else items.where(
            (F.col("item_type") == item_type) | F.col(column).isNotNull())
        frame = members.select(
            *POLICY_KEYS, F.lit(level).alias("level"),
            F.coalesce(F.col(column), F.lit(UNKNOWN_ENTITY)).alias("entity_id"),
            F.col(column).isNotNull().alias("_has_id"), "item_id", "_flagged", "_reviewed", "_severity",
        )
        levels = frame if levels is None else levels.unionByName(frame)
    assert levels is not None  # ROLLUP_LEVELS is a non-empty constant
    carried = levels.where("_has_id").select(*POLICY_KEYS, "level").distinct()
    counts = _entity_counts(levels.join(carried, on=[*POLICY_KEYS, "level"], how="left_semi"),
                            [*POLICY_KEYS, "level", "entity_id"])
    return _typed(counts, _body(ROLLUPS_SCHEMA))


def rollups_top(rollups_df: DataFrame, *, top: int) -> DataFrame:
    """The rows of :func:`rollups` its chart draws (``charts.rollups_chart``): per level, the
    ``top`` entities with the most flagged items (``unknown`` and unflagged entities left out;
    ties by policy id, version and entity id, as the chart orders them)."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    order = Window.partitionBy("level").orderBy(F.desc("flagged_items"), "policy_id", "policy_version", "entity_id")
    return (rollups_df.where((F.col("entity_id") != UNKNOWN_ENTITY) & (F.col("flagged_items") > 0))
            .withColumn("_rank", F.row_number().over(order)).where(F.col("_rank") <= top).drop("_rank"))


def blast_radius(violations_df: DataFrame, population_df: DataFrame, decides_df: DataFrame, *,
                 top: int = BLAST_RADIUS_TOP) -> DataFrame:
    """The ``top`` creators with the most flagged items per policy version ("blast radius": how
    far one creator's violations reach across the catalog).

    Ranked by flagged items, then flagged share (higher first), then creator id; creators with
    no flagged item and items without a ``creator_id`` are not ranked.

    Args: as :func:`rollups`; ``top``: creators kept per policy version.

    Returns:
        Columns of ``BLAST_RADIUS_SCHEMA`` but ``lake_versions``; ``categories``: the sorted
        categories of the creator's ``violation`` rows.
    """
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    items = _item_flags(violations_df, population_df, decides_df).where(F.col("creator_id").isNotNull())
    counts = _entity_counts(items, [*POLICY_KEYS, "creator_id"]).where(F.col("flagged_items") > 0)
    categories = (
        _decided(violations_df, decides_df).where(F.col("decision") == "violation")
        .join(items.select(*POLICY_KEYS, "item_id", "creator_id"), on=[*POLICY_KEYS, "item_id"], how="inner")
        .groupBy(*POLICY_KEYS, "creator_id")
        .agg(F.array_sort(F.collect_set("category")).alias("categories"))
    )
    order = Window.partitionBy(*POLICY_KEYS).orderBy(
        F.col("flagged_items").desc(), F.col("flagged_share").desc(), F.col("creator_id"))
    ranked = (
        counts.join(categories, on=[*POLICY_KEYS, "creator_id"], how="left")
        .withColumn("rank", F.row_number().over(order))
        .where(F.col("rank") <= top)
    )
    return _typed(ranked, _body(BLAST_RADIUS_SCHEMA))


def _with_detection_method(rows: DataFrame, labels_df: DataFrame, name: str) -> DataFrame:
    """``rows`` (violations rows) with column ``name``: ``HUMAN_REVIEW`` where ``labels_df``
    holds a label of the row's item and category (any source, decision, market or policy),
    else ``AUTOMATED``."""
    from pyspark.sql import functions as F

    reviewed = labels_df.select("item_id", "category").distinct().withColumn("_labelled", F.lit(True))
    return (
        rows.join(reviewed, on=["item_id", "category"], how="left")
        .withColumn(name, F.when(F.col("_labelled"), F.lit(HUMAN_REVIEW)).otherwise(F.lit(AUTOMATED)))
        .drop("_labelled")
    )


def detection_methods(violations_df: DataFrame, decides_df: DataFrame, labels_df: DataFrame,
                      models_df: DataFrame) -> DataFrame:
    """How violations were found: distinct flagged items per policy version x category x
    modality x model x review (``automated`` or ``human_review``, see
    :func:`_with_detection_method`).

    A ``violation`` row counts under each model of its ``model_refs`` (``model_id@digest12``),
    with that model's modality from ``models_df``, where that modality is one of the row's
    ``evidence_modalities`` (a model of unknown modality counts as ``unknown``; a row without
    refs under model ``unknown``). Only the reported decides' rows count.

    Args:
        violations_df: ``violations`` rows.
        decides_df: the decide runs reported on.
        labels_df: ``labels`` rows (item_id, category).
        models_df: (model_id, modality) of the models that wrote ``scores`` rows.

    Returns:
        Columns of ``DETECTION_SCHEMA`` but ``lake_versions``.
    """
    from pyspark.sql import functions as F

    rows = _with_detection_method(
        _decided(violations_df, decides_df).where(F.col("decision") == "violation"), labels_df, "review")
    refs = rows.select(
        *POLICY_KEYS, "category", "item_id", "review", "evidence_modalities",
        F.explode_outer("model_refs").alias("_ref"),
    ).withColumn("model_id", F.coalesce(F.split("_ref", "@").getItem(0), F.lit(UNKNOWN_MODEL)))
    modalities = models_df.select("model_id", "modality").distinct()
    found = (
        refs.join(modalities, on="model_id", how="left")
        .withColumn("modality", F.coalesce("modality", F.lit(UNKNOWN_MODEL)))
        .where((F.col("modality") == UNKNOWN_MODEL) | F.col("evidence_modalities").isNull()
               | F.array_contains("evidence_modalities", F.col("modality")))
    )
    counts = found.groupBy(*POLICY_KEYS, "category", "modality", "model_id", "review").agg(
        _distinct_items().alias("violations"))
    return _typed(counts, _body(DETECTION_SCHEMA))


def suppression_pattern(cells: Sequence[dict], *, min_cell_count: int,
                        lines: Sequence[Sequence[str]] = TRANSPARENCY_LINES) -> list[str | None]:
    """Which cells of one table to withhold, and why: ``small_cell`` (1 to k-1 items),
    ``complementary`` or None (published), one per cell of ``cells`` (dicts with ``_n``, the
    count, and the columns ``lines`` name).

    A small cell alone in a line whose total is known (a sum over the other cells of the line,
    cells absent counting 0) is its line total minus the published cells. So wherever a line
    holds exactly one withheld cell and another cell, the smallest published cell of that line is
    withheld too (ties: the first in ``cells``' order), until no line holds exactly one: the usual
    complementary suppression of published frequency tables. A line of one cell cannot be
    protected inside the table: its total is the cell (withhold that total where it is published).

    Args:
        cells: the cells of one table (for ``transparency``: one policy version x market x
            category), each counted once in every line.
        min_cell_count: k; a count below it is a small cell.
        lines: each a tuple of columns whose cells share a line total (``()``: the whole table).
    """
    reason: list[str | None] = [SMALL_CELL if c["_n"] < min_cell_count else None for c in cells]
    members: list[list[int]] = []
    for key in lines:
        by: dict[tuple, list[int]] = {}
        for i, c in enumerate(cells):
            by.setdefault(tuple(c[k] for k in key), []).append(i)
        members.extend(by.values())
    changed = True
    while changed:  # each pass withholds at least one more cell, so it ends
        changed = False
        for line in members:
            withheld = [i for i in line if reason[i] is not None]
            if len(withheld) == 1 and len(line) > 1:
                i = min((i for i in line if reason[i] is None), key=lambda i: (cells[i]["_n"], i))
                reason[i] = COMPLEMENTARY
                changed = True
    return reason


def transparency_summary(violations_df: DataFrame, decides_df: DataFrame, labels_df: DataFrame, *,
                         min_cell_count: int = DEFAULT_MIN_CELL_COUNT) -> DataFrame:
    """Flagged items per policy version x market x category x action x detection method, the
    shape transparency reports publish, with small cells suppressed.

    A ``violation`` row of a reported decide counts in the markets it applies to (as in
    :func:`violation_rates`); detection method as :func:`_with_detection_method`. A cell with
    fewer than ``min_cell_count`` distinct items keeps its row with ``items`` null, ``suppressed``
    true and ``suppression`` ``small_cell``; a cell of exactly ``min_cell_count`` is published.
    Within each policy version x market x category, more cells are withheld (``complementary``)
    so that no total per action, per detection method or of the whole market x category gives a
    small cell back by subtraction (:func:`suppression_pattern`).

    Args:
        violations_df: ``violations`` rows.
        decides_df: the decide runs reported on.
        labels_df: ``labels`` rows (item_id, category).
        min_cell_count: k, at least 1 (1 suppresses nothing).

    Returns:
        Columns of ``TRANSPARENCY_SCHEMA`` but ``lake_versions``.

    Raises:
        ValueError: ``min_cell_count`` is below 1.
    """
    from pyspark.sql import functions as F

    if min_cell_count < 1:
        raise ValueError(f"min_cell_count must be at least 1, got {min_cell_count}")
    rows = _with_detection_method(
        _decided(violations_df, decides_df).where(F.col("decision") == "violation"), labels_df, "detection_method")
    cells = rows.select(*POLICY_KEYS, F.explode(_row_markets()).alias("market"), "category", "action",
                        "detection_method", "item_id")
    counts = (
        cells.groupBy(*POLICY_KEYS, "market", "category", "action", "detection_method")
        .agg(_distinct_items().alias("_n"))
    )
    body = _body(TRANSPARENCY_SCHEMA)
    # The cells are an aggregate (policy versions x markets x categories x actions x methods):
    # the pattern is set in the driver, as the report collects every aggregate, and the job needs
    # no Python on the executors.
    groups: dict[tuple, list[dict]] = {}
    for cell in counts.toArrow().to_pylist():
        key = tuple(cell[k] for k in (*POLICY_KEYS, "market", "category"))
        groups.setdefault(key, []).append(cell)
    out = []
    for group in groups.values():  # the report sorts the rows when it collects them
        cells_of = sorted(group, key=lambda c: (c["action"] or "", c["detection_method"] or ""))
        for cell, why in zip(cells_of, suppression_pattern(cells_of, min_cell_count=min_cell_count), strict=True):
            out.append({**cell, "items": None if why else cell["_n"], "suppressed": why is not None,
                        "suppression": why, "min_cell_count": min_cell_count})
    table = pa.Table.from_pylist(out, schema=body)
    return counts.sparkSession.createDataFrame(table, schema=spark_schema(body))


def _diff_markets(has_scope: bool = True) -> Column:
    """A diff row's markets: its ``scope_markets``; without one, its scope's market, else the
    item's markets, else ``"none"``. ``has_scope``: the diffs table has the column (older
    tables do not)."""
    from pyspark.sql import functions as F

    rule = F.when(F.col("scope_markets").isNotNull() & (F.size("scope_markets") > 0), F.col("scope_markets")) \
        if has_scope else F
    return (
        rule.when(F.col("market_scope") != "*", F.array(F.col("market_scope")))
        .when(F.size("markets") > 0, F.col("markets"))
        .otherwise(F.array(F.lit(NO_MARKET)))
    )


def diff_summary(diffs_df: DataFrame) -> DataFrame:
    """Changed items per diff x category x item type x market x language x change.

    A row scoped to one market (``market_scope`` not ``*``) counts in that market; a ``*`` row
    counts in each of the item's markets (none listed: ``"none"``); a null language counts as
    ``"unknown"``.

    Args:
        diffs_df: ``diffs`` rows (every diff the table holds: the latest run of each
            (policy_id, from_version, to_version)).

    Returns:
        Columns of ``DIFF_SUMMARY_SCHEMA``: items = distinct items with that change in the cell.
    """
    from pyspark.sql import functions as F

    cells = diffs_df.select(
        *DIFF_KEYS,
        "category",
        "item_type",
        F.explode(_diff_markets("scope_markets" in diffs_df.columns)).alias("market"),
        F.coalesce(F.col("language"), F.lit(NO_LANGUAGE)).alias("language"),
        "change",
        "item_id",
    )
    counts = cells.groupBy(*DIFF_KEYS, "category", *CELL_KEYS, "change").agg(_distinct_items().alias("items"))
    return _typed(counts, DIFF_SUMMARY_SCHEMA)


def diff_totals(diffs_df: DataFrame) -> DataFrame:
    """Distinct changed items per diff x change (over all categories and markets).

    Args:
        diffs_df: ``diffs`` rows.

    Returns:
        Columns of ``DIFF_TOTALS_SCHEMA``.
    """
    totals = diffs_df.groupBy(*DIFF_KEYS, "change").agg(_distinct_items().alias("items"))
    return _typed(totals, DIFF_TOTALS_SCHEMA)


@dataclass(frozen=True)
class ReportResult:
    """What :func:`run_report` wrote, and the numbers behind its summary."""

    violation_rates_uri: str
    violations_by_category_uri: str
    rates: pa.Table  # VIOLATION_RATES_SCHEMA
    totals: pa.Table  # CATEGORY_TOTALS_SCHEMA
    diff_summary_uri: str | None = None  # None: the lake has no diffs table
    diff_totals: pa.Table | None = None  # DIFF_TOTALS_SCHEMA
    coverage_uri: str | None = None
    coverage: pa.Table | None = None  # COVERAGE_SCHEMA
    snapshot_uri: str | None = None  # reports/snapshot: the Delta version of each table read
    versions: dict[str, int | None] | None = None  # the same, table -> version (None: no table)
    # issue 17: report name -> its table (ANALYST_SCHEMAS); a table Spark wrote into the lake
    # itself (WIDE_TABLES) holds only the rows its chart draws
    analyst: dict[str, pa.Table] | None = None
    analyst_rows: dict[str, int] | None = None  # report name -> rows written
    analyst_uris: dict[str, str] | None = None  # report name -> its Delta table's URI
    chart_uris: dict[str, str] | None = None  # report name -> its PNG's URI
    run_id: str | None = None  # the report's runs row (kind ``report``)

    def summary(self) -> str:
        """A text table: one line per policy version x category, over all item types, markets
        and languages (items = distinct covered items of the policy version); then the coverage
        table and the diff totals."""
        header = ("policy", "version", "category", "items", "violations", "reviews", "rate %")
        lines = [
            (
                r["policy_id"], str(r["policy_version"]), r["category"], str(r["items"]),
                str(r["violations"]), str(r["reviews"]),
                f"{100.0 * r['violations'] / r['items']:.2f}",
            )
            for r in self.totals.to_pylist()
        ]
        pins = ", ".join(f"{t} v{v}" for t, v in (self.versions or {}).items() if v is not None)
        snapshot = [f"snapshot read: {pins}"] if pins else []
        run = [f"report run: {self.run_id}"] if self.run_id else []
        return "\n".join([f"report: {self.violation_rates_uri}", *run, *snapshot,
                          *_text_table(header, lines, left=range(3)),
                          *self._coverage_lines(), *self._diff_lines(), *self._analyst_lines()])

    def _analyst_lines(self) -> list[str]:
        """One line per issue-17 report: its table, rows and chart."""
        if not self.analyst_uris or self.analyst is None:
            return []
        lines = ["", "analyst reports (table, rows, chart):"]
        for name, uri in self.analyst_uris.items():
            suppressed = ""
            if name == "transparency":
                n = sum(self.analyst[name].column("suppressed").to_pylist())
                suppressed = f", {n} suppressed"
            rows = (self.analyst_rows or {}).get(name, self.analyst[name].num_rows)
            lines.append(f"  {uri}: {rows} rows{suppressed}, "
                         f"{(self.chart_uris or {}).get(name, '-')}")
        return lines

    def _coverage_lines(self) -> list[str]:
        """One line per policy version x item type x modality x model of the coverage table."""
        if self.coverage_uri is None or self.coverage is None:
            return []
        header = ("policy", "version", "item type", "modality", "model", "items", "whole %", "mean", "partial",
                  "unknown", "partial reasons")
        lines = [
            (
                r["policy_id"], str(r["policy_version"]), r["item_type"] or "-", r["modality"], r["model_id"],
                str(r["items"]), f"{100.0 * r['whole_share']:.2f}",
                "-" if r["mean_coverage"] is None else f"{r['mean_coverage']:.3f}", str(r["partial"]),
                str(r["unknown"]), ", ".join(f"{k} {n}" for k, n in sorted(r["partial_reasons"] or [])) or "-",
            )
            for r in self.coverage.to_pylist()
        ]
        return ["", f"coverage: {self.coverage_uri}", *_text_table(header, lines, left={0, 1, 2, 3, 4, 10})]

    def _diff_lines(self) -> list[str]:
        """One line per diff: distinct changed items per change."""
        if self.diff_summary_uri is None or self.diff_totals is None:
            return []
        per_diff: dict[tuple, list[str]] = {}
        for r in self.diff_totals.to_pylist():
            key = (r["policy_id"], r["from_version"], r["to_version"])
            per_diff.setdefault(key, []).append(f"{r['change']} {r['items']}")
        lines = ["", f"diff summary: {self.diff_summary_uri}"]
        if not per_diff:
            lines.append("  no diffs")
        lines += [f"  {p} v{f} -> v{t} (items): {', '.join(changes)}"
                  for (p, f, t), changes in sorted(per_diff.items())]
        return lines


def _text_table(header: tuple[str, ...], lines: Sequence[tuple[str, ...]], *, left: range | set[int]) -> list[str]:
    """Rows of cells padded to their column's width: the columns in ``left`` left-justified
    (text), the others right-justified (numbers)."""
    widths = [max(len(row[i]) for row in [header, *lines]) for i in range(len(header))]
    return ["  ".join(cell.ljust(w) if i in left else cell.rjust(w)
                      for i, (cell, w) in enumerate(zip(row, widths, strict=True))).rstrip()
            for row in [header, *lines]]


def run_report(lake_root: str, *, master: str | None = "local[*]", spark: SparkSession | None = None,
               min_cell_count: int = DEFAULT_MIN_CELL_COUNT) -> ReportResult:
    """Compute the violation reports of the newest succeeded decide of every policy version and
    write them under ``<lake>/reports/``.

    The Delta version of every table read (``runs``, ``violations``, ``scores``, ``removals``,
    ``diffs``, ``labels``) is pinned once, before any read, and every read is at its pinned version, so a
    decide, re-scan or diff committing while the report runs changes nothing in it; the versions
    are written to ``reports/snapshot``. A decide's violations are the rows carrying its run id,
    so two decides of one version never mix. Each decide is measured against the ``scores``
    snapshot it read (its ``scores_version``), less the (item, modality) pairs the pinned
    ``removals`` retires. The report tables are small aggregates: they are collected and
    overwritten in one Delta commit each (``reports/violation_rates``,
    ``reports/violations_by_category``, ``reports/coverage``, ``reports/snapshot``, and
    ``reports/diff_summary`` when the lake has a ``diffs`` table). The analyst reports of issue 17
    (``ANALYST_SCHEMAS``: ``violation_trend``, ``rollups``, ``blast_radius``, ``detection``,
    ``transparency``) are written the same way, each row carrying the pinned versions in
    ``lake_versions``, each with a PNG chart overwritten beside it (``reports/<name>.png``).
    Last, the report records a ``runs`` row (kind ``report``, the versions read in
    ``baseline_versions``), after the pins, so it never changes what the report read.

    Args:
        lake_root: the lake root URI.
        master: the Spark master when a session is created here (None: spark-submit's).
        spark: a session to use, left running; when None, one is created with
            :func:`spark_session` and stopped on return unless one was already active.
        min_cell_count: k of ``reports/transparency``: cells of fewer items are suppressed.

    Returns:
        The report table URIs, the rates, per-category totals, the coverage table and per-diff
        totals for ``summary()``, and the analyst tables with their URIs and charts' URIs.

    Raises:
        ConfigError: ``min_cell_count`` is below 1.
        LakeError: the lake has no succeeded decide run, a decide run names no scores version,
            a snapshot cannot be read, or the newest succeeded decide's violations were replaced
            by a decide that never recorded success.
    """
    from pyspark.sql import SparkSession

    owned = spark is None and SparkSession.getActiveSession() is None
    session = spark if spark is not None else spark_session(master)
    try:
        return _report(session, Lake(lake_root), min_cell_count=min_cell_count)
    finally:
        if owned:
            session.stop()


@dataclass(frozen=True)
class Snapshot:
    """The Delta version of each lake table one report reads (None: the table does not exist)."""

    versions: dict[str, int | None]
    pinned_at: dt.datetime

    def table(self) -> pa.Table:
        """The ``reports/snapshot`` rows (``REPORT_SNAPSHOT_SCHEMA``), one per table."""
        return pa.Table.from_pylist(
            [{"table_name": t, "version": v, "reported_at": self.pinned_at} for t, v in self.versions.items()],
            schema=REPORT_SNAPSHOT_SCHEMA,
        )


def pin_snapshot(lake: Lake) -> Snapshot:
    """Pin the current Delta version of every table the report reads, once, before any read.

    ``runs`` is pinned first: a decide commits its violations before its runs row, so every
    decide the pinned ``runs`` calls succeeded has its rows in the ``violations`` pinned after it,
    unless a newer decide of the same version replaced them in between (see
    :func:`_check_decided_rows`)."""
    pinned_at = dt.datetime.now(dt.UTC)
    return Snapshot(versions={t: lake.version(t) for t in PINNED_TABLES}, pinned_at=pinned_at)


def read_pinned(spark: SparkSession, lake: Lake, table: str, snapshot: Snapshot) -> DataFrame:
    """``table`` at its pinned version; empty (with its declared schema) when it did not exist at
    the pin, even if it was created since."""
    version = snapshot.versions[table]
    if version is None:
        return spark.createDataFrame([], spark_schema(TABLE_SCHEMAS[table]))
    return read_snapshot(spark, lake, table, version=version)


def _check_decided_rows(lake: Lake, snapshot: Snapshot, decides: list) -> list[str]:
    """Reported decides whose rows the pinned ``violations`` does not hold as they wrote them
    (the row count their runs row records; runs rows without one are not checked): a newer
    decide of the same version replaced them after ``runs`` was pinned. Returns one line each."""
    expected = {r["run_id"]: r for r in decides if r["violation_rows"] is not None}
    if not expected:
        return []
    if snapshot.versions["violations"] is None:
        run_ids = pa.chunked_array([], pa.string())
    else:
        run_ids = lake.read("violations", columns=["run_id"], filter=pc.field("run_id").isin(sorted(expected)),
                            version=snapshot.versions["violations"]).column("run_id")
    found = {k: 0 for k in expected}
    for run_id, n in zip(*pc.value_counts(run_ids).flatten(), strict=True):
        found[run_id.as_py()] = n.as_py()
    return [
        f"{r['policy_id']} v{r['policy_version']}: decide {run_id} recorded {r['violation_rows']} violations "
        f"rows, violations version {snapshot.versions['violations']} holds {found[run_id]} of them"
        for run_id, r in sorted(expected.items()) if found[run_id] != r["violation_rows"]
    ]


def _pinned_decides(spark: SparkSession, lake: Lake) -> tuple[Snapshot, DataFrame, list]:
    """A snapshot whose ``violations`` holds exactly the rows of the decides its ``runs`` reports,
    the decide rows (DataFrame and collected). Re-pinned (bounded) while a decide commits between
    the pins of ``runs`` and ``violations``."""
    for attempt in range(1, PIN_ATTEMPTS + 1):
        snapshot = pin_snapshot(lake)
        decides = latest_decides(read_pinned(spark, lake, "runs", snapshot)).cache()
        rows = decides.select(*POLICY_KEYS, "run_id", "scores_version", "violation_rows").collect()
        if not rows:
            decides.unpersist()
            raise LakeError(f"{lake.uri('runs')}: no succeeded decide run; run `moderation decide` first")
        torn = _check_decided_rows(lake, snapshot, rows)
        if not torn:
            return snapshot, decides, rows
        decides.unpersist()
        log.info("report: a decide committed while the report pinned its snapshot (%s); pinning again",
                 "; ".join(torn))
        time.sleep(0.2 * attempt)
    raise LakeError(
        f"{lake.uri('violations')}: the violations of the newest succeeded decide were replaced by a decide "
        f"that has not recorded success ({'; '.join(torn)}); wait for it to finish, or re-run `moderation decide`"
    )


def _report(spark: SparkSession, lake: Lake, *, min_cell_count: int = DEFAULT_MIN_CELL_COUNT) -> ReportResult:
    if min_cell_count < 1:
        raise ConfigError(f"--min-cell-count must be at least 1, got {min_cell_count}")
    from moderation.runs import RunRecord, RunTiming, new_run_id, write_run

    run_id = new_run_id("report")
    timing = RunTiming.start()
    snapshot, decides, keys = _pinned_decides(spark, lake)
    pinned = snapshot.versions
    try:
        unversioned = sorted(r["run_id"] for r in keys if r["scores_version"] is None)
        if unversioned:
            raise LakeError(f"{lake.uri('runs')}: decide runs {unversioned} record no scores_version")
        scores = _scores_at(spark, lake, versions=sorted({r["scores_version"] for r in keys}))
        violations = read_pinned(spark, lake, "violations", snapshot)
        removals = None if pinned["removals"] is None else read_pinned(spark, lake, "removals", snapshot)
        labels = read_pinned(spark, lake, "labels", snapshot)
        covered = population(scores, decides, removals).cache()
        try:
            rates = _collect(violation_rates(violations, covered, decides), VIOLATION_RATES_SCHEMA)
            totals = _collect(category_totals(violations, covered, decides), CATEGORY_TOTALS_SCHEMA)
            by_category = _collect(violations_by_category(violations, decides), VIOLATIONS_BY_CATEGORY_SCHEMA)
            read = _collect(scoring_coverage(scores, decides, removals), COVERAGE_SCHEMA)
            frames = {
                "violation_trend": violation_trend(violations, covered, decides),
                "rollups": rollups(violations, covered, decides),
                "blast_radius": blast_radius(violations, covered, decides),
                "detection": detection_methods(violations, decides, labels, scores),
                "transparency": transparency_summary(violations, decides, labels, min_cell_count=min_cell_count),
            }
            # Written by Spark (uncommitted files, invisible until the commit below), or collected.
            wide = {name: _stage(lake, name, frames[name], pinned) for name in WIDE_TABLES
                    if can_write(spark, lake.root)}
            if "rollups" in wide:  # the driver holds the rows its chart draws only
                from moderation.reporting.charts import MAX_BARS

                frames["rollups"] = rollups_top(frames["rollups"], top=MAX_BARS)
            analyst = {name: _with_lake_versions(_collect(df, _body(ANALYST_SCHEMAS[name])), pinned,
                                                 ANALYST_SCHEMAS[name])
                       for name, df in frames.items()}
        finally:
            covered.unpersist()
    finally:
        decides.unpersist()
    diff_summary_uri = diff_totals_table = summary = None
    if pinned["diffs"] is not None:
        diffs = read_pinned(spark, lake, "diffs", snapshot)
        summary = _collect(diff_summary(diffs), DIFF_SUMMARY_SCHEMA)
        diff_totals_table = _collect(diff_totals(diffs), DIFF_TOTALS_SCHEMA)
    rates_uri = _overwrite(lake, "violation_rates", rates)
    by_category_uri = _overwrite(lake, "violations_by_category", by_category)
    coverage_uri = _overwrite(lake, "coverage", read)
    log.info("report: %d rate rows -> %s, %d coverage rows -> %s", rates.num_rows, rates_uri, read.num_rows,
             coverage_uri)
    if summary is not None:
        diff_summary_uri = _overwrite(lake, "diff_summary", summary)
        log.info("report: %d diff summary rows -> %s", summary.num_rows, diff_summary_uri)
    from moderation.reporting.charts import write_chart

    analyst_uris, chart_uris, analyst_rows = {}, {}, {}
    for name, table in analyst.items():
        if name in wide:
            analyst_rows[name] = lake.overwrite_files(f"reports/{name}", wide[name], schema=ANALYST_SCHEMAS[name])
            analyst_uris[name] = lake.uri(f"reports/{name}")
        else:
            analyst_uris[name] = _overwrite(lake, name, table)
            analyst_rows[name] = table.num_rows
        chart_uris[name] = write_chart(lake, name, table)
        log.info("report: %d %s rows -> %s (chart %s)", analyst_rows[name], name, analyst_uris[name],
                 chart_uris[name])
    snapshot_uri = _overwrite(lake, "snapshot", snapshot.table())
    # After the pins: the report's own runs row never changes what it read.
    write_run(lake, RunRecord(
        run_id=run_id, kind="report", status="succeeded",
        baseline_versions=tuple(f"{t}={v}" for t, v in pinned.items() if v is not None), **timing.ended(),
    ))
    return ReportResult(violation_rates_uri=rates_uri, violations_by_category_uri=by_category_uri,
                        rates=rates, totals=totals, diff_summary_uri=diff_summary_uri, diff_totals=diff_totals_table,
                        coverage_uri=coverage_uri, coverage=read, snapshot_uri=snapshot_uri,
                        versions=dict(pinned), analyst=analyst, analyst_rows=analyst_rows,
                        analyst_uris=analyst_uris, chart_uris=chart_uris,
                        run_id=run_id)


def _stage(lake: Lake, name: str, df: DataFrame, versions: dict[str, int | None]) -> str:
    """Have Spark write report ``name`` (``df``: its schema but ``lake_versions``) with the
    pinned ``versions`` into a new folder of its table, sorted as :func:`_collect` sorts; nothing
    is committed (``Lake.overwrite_files`` does). Returns the folder, relative to the table."""
    import uuid

    from pyspark.sql import functions as F

    schema = ANALYST_SCHEMAS[name]
    entries = [c for table, version in versions.items() for c in (F.lit(table), F.lit(version).cast("long"))]
    rows = df.withColumn(LAKE_VERSIONS, F.create_map(*entries)).select(*schema.names)
    folder = f"spark-{uuid.uuid4().hex}"
    write_parquet(rows.orderBy(*_sort_keys(schema)), join_uri(lake.uri(f"reports/{name}"), folder))
    return folder


def _with_lake_versions(table: pa.Table, versions: dict[str, int | None], schema: pa.Schema) -> pa.Table:
    """``table`` (``schema`` without ``lake_versions``) with the pinned versions as its
    ``lake_versions`` column on every row, in ``schema``."""
    field = schema.field(LAKE_VERSIONS)
    column = pa.array([list(versions.items())] * table.num_rows, field.type)
    return table.append_column(field, column).cast(schema)


def _scores_at(spark: SparkSession, lake: Lake, *, versions: list[int]) -> DataFrame:
    """The scores snapshots at ``versions``, each row tagged with its ``scores_version``."""
    from pyspark.sql import functions as F

    frames = [
        read_snapshot(spark, lake, "scores", version=v)
        .select(*POPULATION_SCORE_COLUMNS, *COVERAGE_SCORE_COLUMNS)
        .withColumn("scores_version", F.lit(v).cast("long"))
        for v in versions
    ]
    df = frames[0]
    for frame in frames[1:]:
        df = df.unionByName(frame)
    return df


def _collect(df: DataFrame, schema: pa.Schema) -> pa.Table:
    """A small aggregate as an Arrow table of ``schema``, in a stable row order (by its columns
    other than maps and lists, which do not sort)."""
    table = df.toArrow().select(schema.names).cast(schema)
    return table.sort_by([(name, "ascending") for name in _sort_keys(schema)])


def _sort_keys(schema: pa.Schema) -> list[str]:
    """The columns a report table's rows are sorted by: all but maps and lists, which do not sort."""
    return [f.name for f in schema if not pa.types.is_nested(f.type)]


def _overwrite(lake: Lake, name: str, table: pa.Table) -> str:
    lake.overwrite(f"reports/{name}", table)
    return lake.uri(f"reports/{name}")
