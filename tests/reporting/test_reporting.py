"""The Spark report on tiny real Delta tables: exact snapshots, exact counts, end to end."""

from __future__ import annotations

import datetime as dt

import pyarrow as pa
import pytest
from deltalake import DeltaTable, write_deltalake

from moderation.engines.spark import read_snapshot, spark_schema
from moderation.errors import LakeError
from moderation.reporting.report import category_totals, population, run_report, violation_rates
from moderation.runs import RunRecord, write_run
from moderation.schemas import (
    RUNS_SCHEMA,
    SCORES_SCHEMA,
    TABLE_SCHEMAS,
    VIOLATION_RATES_SCHEMA,
    VIOLATIONS_PARTITIONS,
    VIOLATIONS_SCHEMA,
)
from moderation.storage.lake import Lake

pytestmark = pytest.mark.spark

T0 = dt.datetime(2025, 1, 1, tzinfo=dt.timezone.utc)
HOUR = dt.timedelta(hours=1)
CELL = ["policy_id", "policy_version", "category", "item_type", "market", "language"]


def score(item_id: str, *, model_id: str = "m1", item_type: str = "track", language: str | None = "en",
          markets: list[str] | None = ("US",), scored_at: dt.datetime = T0, run_id: str = "backfill-1") -> dict:
    return {
        "run_id": run_id, "item_id": item_id, "item_type": item_type, "modality": "text", "model_id": model_id,
        "model_digest": "d" * 64, "content_hash": f"h-{item_id}", "category_scores": {"hate": 0.5},
        "evidence": None, "language": language, "markets": None if markets is None else list(markets),
        "explicit": False, "scored_at": scored_at,
    }


def violation(policy_id: str, policy_version: int, item_id: str, category: str, decision: str, *,
              item_type: str = "track", language: str | None = "en", markets: list[str] | None = ("US",),
              scope: str = "*", scope_markets: list[str] | None = None, run_id: str = "decide-1") -> dict:
    """A violations row; ``scope_markets`` None: as written before that column existed."""
    return {
        "policy_id": policy_id, "policy_version": policy_version, "policy_status": "active", "item_id": item_id,
        "item_type": item_type, "language": language, "markets": None if markets is None else list(markets),
        "market_scope": scope, "scope_markets": scope_markets, "category": category, "score": 0.9, "threshold": 0.8, "decision": decision,
        "action": "remove" if decision == "violation" else "human_review", "severity": "high",
        "evidence_modalities": ["text"], "model_refs": ["m1@dddddddddddd"], "run_id": run_id, "decided_at": T0,
    }


def decide_run(run_id: str, policy_id: str, policy_version: int, *, categories: list[str], model_ids: list[str],
               scores_version: int, ended_at: dt.datetime, status: str = "succeeded",
               violation_rows: int | None = None) -> dict:
    return {
        "run_id": run_id, "kind": "decide", "status": status, "policy_id": policy_id,
        "policy_version": policy_version, "model_ids": model_ids, "categories": categories,
        "scores_version": scores_version, "started_at": ended_at - HOUR, "ended_at": ended_at,
        "violation_rows": violation_rows,
    }


def append(lake: Lake, table: str, rows: list[dict]) -> None:
    write_deltalake(
        lake.uri(table),
        pa.Table.from_pylist(rows, schema=TABLE_SCHEMAS[table]),
        mode="append",
        partition_by=VIOLATIONS_PARTITIONS if table == "violations" else None,
    )


def dtypes(schema: pa.Schema) -> list[tuple[str, str]]:
    return [(f.name, f.dataType.simpleString()) for f in spark_schema(schema).fields]


def keys(df) -> set[tuple]:
    rows = df.select("policy_id", "policy_version", "item_id").collect()
    return {(r.policy_id, r.policy_version, r.item_id) for r in rows}


def test_read_snapshot_partition_columns_and_old_version(spark, tmp_path):
    lake = Lake(str(tmp_path))
    # A space in a partition value: the data folder and the log path are both URI-encoded.
    append(lake, "violations", [violation("kids safety", 1, "a", "hate", "violation"),
                                violation("catalog-safety", 2, "b", "spam", "review")])
    append(lake, "violations", [violation("catalog-safety", 2, "c", "hate", "violation")])

    latest = read_snapshot(spark, lake, "violations")
    assert latest.dtypes == dtypes(VIOLATIONS_SCHEMA)
    assert keys(latest) == {("kids safety", 1, "a"), ("catalog-safety", 2, "b"), ("catalog-safety", 2, "c")}
    assert keys(read_snapshot(spark, lake, "violations", version=0)) == {
        ("kids safety", 1, "a"), ("catalog-safety", 2, "b")
    }
    with pytest.raises(LakeError, match="version 5"):
        read_snapshot(spark, lake, "violations", version=5)


def test_read_snapshot_of_missing_table_is_empty_with_schema(spark, tmp_path):
    df = read_snapshot(spark, Lake(str(tmp_path)), "scores")
    assert df.dtypes == dtypes(SCORES_SCHEMA)
    assert df.count() == 0


@pytest.fixture(scope="module")
def small_case(spark):
    """Policy P v1 (models [m1], scores version 3, categories hate and sexual) over tagged scores."""
    scores_schema = spark_schema(SCORES_SCHEMA.append(pa.field("scores_version", pa.int64())))
    scores = [
        score("a", markets=["US", "GB"]),
        score("b", language="de", scored_at=T0),
        score("b", language="en", scored_at=T0 + HOUR, run_id="backfill-2"),  # newest row wins
        score("c", item_type="episode", language=None, markets=None),
        score("e", model_id="m2"),  # not one of the decide's models
    ]
    tagged = [{**row, "scores_version": 3} for row in scores] + [{**score("f"), "scores_version": 2}]
    decides = spark.createDataFrame(
        [decide_run("decide-1", "P", 1, categories=["hate", "sexual"], model_ids=["m1"], scores_version=3,
                    ended_at=T0)],
        spark_schema(RUNS_SCHEMA),
    )
    violations = spark.createDataFrame(
        [
            violation("P", 1, "a", "hate", "violation", markets=["US", "GB"]),
            violation("P", 1, "b", "hate", "review"),
            violation("P", 1, "c", "hate", "violation", item_type="episode", language=None, markets=None),
            violation("P", 2, "b", "hate", "violation"),  # no decide of P v2 is reported
        ],
        spark_schema(VIOLATIONS_SCHEMA),
    )
    covered = population(spark.createDataFrame(tagged, scores_schema), decides)
    return violations, covered, decides


def test_population_uses_the_decide_snapshot_and_models(small_case):
    _, covered, _ = small_case
    rows = {r.item_id: (r.item_type, r.language, r.markets) for r in covered.collect()}
    assert rows == {
        "a": ("track", "en", ["US", "GB"]),
        "b": ("track", "en", ["US"]),
        "c": ("episode", None, None),
    }


def test_violation_rates_exact_cells(spark, small_case):
    from pyspark.testing import assertDataFrameEqual

    expected = spark.createDataFrame(
        [
            ("P", 1, "hate", "track", "US", "en", 2, 1, 1, 0.5),
            ("P", 1, "hate", "track", "GB", "en", 1, 1, 0, 1.0),
            ("P", 1, "hate", "episode", "none", "unknown", 1, 1, 0, 1.0),
            ("P", 1, "sexual", "track", "US", "en", 2, 0, 0, 0.0),
            ("P", 1, "sexual", "track", "GB", "en", 1, 0, 0, 0.0),
            ("P", 1, "sexual", "episode", "none", "unknown", 1, 0, 0, 0.0),
        ],
        spark_schema(VIOLATION_RATES_SCHEMA),
    )
    assertDataFrameEqual(violation_rates(*small_case), expected)
    totals = {(r.category, r.items, r.violations, r.reviews) for r in category_totals(*small_case).collect()}
    assert totals == {("hate", 3, 2, 1), ("sexual", 3, 0, 0)}


def test_a_row_counts_only_in_the_markets_it_applies_to(spark):
    """A DE-only violation counts in DE only; a "*" row in its scope_markets (not in DE when DE's
    override cleared it); a row written before scope_markets existed in its scope's market, or
    for "*" in all the item's markets."""
    from pyspark.testing import assertDataFrameEqual

    de = {"scope": "DE", "scope_markets": ["DE"]}
    violations = spark.createDataFrame(
        [
            violation("P", 1, "x", "hate", "review", markets=["US", "DE"], scope_markets=["US"]),
            violation("P", 1, "x", "hate", "violation", markets=["US", "DE"], **de),
            violation("P", 1, "y", "hate", "violation", markets=["US", "DE"], **de),  # nothing in "*"
            violation("P", 1, "w", "hate", "violation", markets=["US", "DE"], scope_markets=["US"]),  # DE cleared
            violation("P", 1, "z", "hate", "violation", markets=["US", "GB"]),  # old row: all its markets
            violation("P", 1, "v", "hate", "review", markets=["US", "DE"], scope="DE"),  # old market row: DE
            violation("P", 1, "n", "hate", "violation", markets=None),  # lists no market
        ],
        spark_schema(VIOLATIONS_SCHEMA),
    )
    population_rows = [("P", 1, i, "track", "en", m) for i, m in
                       [("x", ["US", "DE"]), ("y", ["US", "DE"]), ("w", ["US", "DE"]), ("z", ["US", "GB"]),
                        ("v", ["US", "DE"]), ("n", None)]]
    covered = spark.createDataFrame(
        population_rows, "policy_id string, policy_version int, item_id string, item_type string, "
                         "language string, markets array<string>")
    decides = spark.createDataFrame(
        [decide_run("decide-1", "P", 1, categories=["hate"], model_ids=["m1"], scores_version=0, ended_at=T0)],
        spark_schema(RUNS_SCHEMA),
    )
    expected = spark.createDataFrame(
        [
            ("P", 1, "hate", "track", "US", "en", 5, 2, 1, 0.4),  # w, z; review x
            ("P", 1, "hate", "track", "DE", "en", 4, 2, 1, 0.5),  # x, y; review v
            ("P", 1, "hate", "track", "GB", "en", 1, 1, 0, 1.0),
            ("P", 1, "hate", "track", "none", "en", 1, 1, 0, 1.0),
        ],
        spark_schema(VIOLATION_RATES_SCHEMA),
    )
    assertDataFrameEqual(violation_rates(violations, covered, decides), expected)
    totals = category_totals(violations, covered, decides).collect()
    assert [(r.category, r.items, r.violations, r.reviews) for r in totals] == [("hate", 6, 5, 2)]  # x, y, w, z, n violating somewhere; x and v in review


def test_run_report_end_to_end(spark, tmp_path):
    lake = Lake(str(tmp_path / "lake"))
    append(lake, "scores", [score("a", markets=["US", "GB"]), score("b"), score("c", language=None),
                            score("e", model_id="m2", item_type="book", markets=[])])  # version 0
    append(lake, "scores", [score("d"), score("g", model_id="m2")])  # version 1, after P's decide
    append(lake, "runs", [
        decide_run("decide-old", "P", 1, categories=["hate"], model_ids=["m1"], scores_version=0, ended_at=T0),
        decide_run("decide-new", "P", 1, categories=["hate", "sexual"], model_ids=["m1"], scores_version=0,
                   ended_at=T0 + HOUR),
        decide_run("decide-failed", "P", 1, categories=["hate", "violence"], model_ids=["m1"], scores_version=1,
                   ended_at=T0 + 2 * HOUR, status="failed"),
        decide_run("decide-q", "Q", 1, categories=["spam"], model_ids=["m2"], scores_version=1, ended_at=T0),
    ])
    append(lake, "violations", [
        violation("P", 1, "a", "hate", "violation", markets=["US", "GB"], run_id="decide-new"),
        violation("P", 1, "b", "hate", "violation", run_id="decide-new"),
        violation("P", 1, "c", "sexual", "review", language=None, run_id="decide-new"),
        violation("Q", 1, "e", "spam", "violation", item_type="book", markets=[], run_id="decide-q"),
        violation("P", 2, "b", "hate", "violation"),  # no decide of P v2
    ])

    result = run_report(lake.root, spark=spark)

    assert result.violation_rates_uri == lake.uri("reports/violation_rates")
    report = DeltaTable(result.violation_rates_uri).to_pyarrow_table()
    assert report.schema == VIOLATION_RATES_SCHEMA
    assert report.sort_by([(c, "ascending") for c in report.column_names]).equals(result.rates)
    assert DeltaTable.is_deltatable(result.violations_by_category_uri)

    # Independent count: distinct violating items per cell, straight from the violations table.
    v = DeltaTable(lake.uri("violations")).to_pandas()
    v = v[(v["decision"] == "violation") & v["policy_id"].str.cat(v["policy_version"].astype(str)).isin(["P1", "Q1"])]
    v = v.assign(
        market=[list(m) if m is not None and len(m) else ["none"] for m in v["markets"]],
        language=v["language"].fillna("unknown"),
    ).explode("market")
    expected = v.groupby(CELL)["item_id"].nunique().to_dict()
    got = {tuple(r[c] for c in CELL): r["violations"] for r in report.to_pylist() if r["violations"]}
    assert got == expected

    cells = {(r["policy_id"], r["category"], r["market"], r["language"]): r["items"] for r in report.to_pylist()}
    assert cells[("P", "sexual", "US", "en")] == 2  # a and b; d came after the decide's scores version
    assert cells[("P", "hate", "US", "unknown")] == 1
    assert {c for p, c, _, _ in cells if p == "P"} == {"hate", "sexual"}  # the newest succeeded decide's
    assert cells[("Q", "spam", "none", "en")] == 1  # e, empty markets
    assert cells[("Q", "spam", "US", "en")] == 1  # g: in the scores version Q's decide read
    summary = result.summary()
    assert "sexual" in summary and "66.67" in summary  # P hate: 2 of 3 items


def test_run_report_without_a_decide_fails(spark, tmp_path):
    lake = Lake(str(tmp_path))
    append(lake, "runs", [{"run_id": "backfill-1", "kind": "backfill", "status": "succeeded"}])
    with pytest.raises(LakeError, match="no succeeded decide run"):
        run_report(lake.root, spark=spark)


def diff(item_id: str, category: str, change: str, *, policy_id: str = "P", from_version: int = 1,
         to_version: int = 2, scope: str = "*", item_type: str = "track", language: str | None = "en",
         markets: list[str] | None = ("US",)) -> dict:
    return {
        "policy_id": policy_id, "from_version": from_version, "to_version": to_version, "item_id": item_id,
        "category": category, "market_scope": scope, "change": change, "from_decision": None,
        "to_decision": "violation", "from_action": None, "to_action": "remove", "from_score": None,
        "to_score": 0.9, "item_type": item_type, "language": language,
        "markets": None if markets is None else list(markets), "from_run_id": "decide-1", "to_run_id": "decide-2",
        "run_id": "diff-1", "diffed_at": T0,
    }


DIFF_ROWS = [
    diff("a", "hate", "newly_violating", markets=["US", "GB"]),
    diff("b", "hate", "newly_violating"),
    diff("b", "hate", "newly_violating", scope="US"),  # b counts once in US
    diff("c", "hate", "newly_violating", scope="DE", markets=["US", "DE"]),  # its scope's market only
    diff("d", "spam", "cleared", item_type="episode", language=None, markets=None),
    diff("e", "spam", "cleared", markets=[]),
    diff("a", "hate", "action_changed", from_version=2, to_version=3),
]


def test_diff_summary_cells(spark):
    from pyspark.testing import assertDataFrameEqual

    from moderation.reporting.report import diff_summary
    from moderation.schemas import DIFF_SUMMARY_SCHEMA, DIFFS_SCHEMA

    expected = spark.createDataFrame(
        [
            ("P", 1, 2, "hate", "track", "US", "en", "newly_violating", 2),
            ("P", 1, 2, "hate", "track", "GB", "en", "newly_violating", 1),
            ("P", 1, 2, "hate", "track", "DE", "en", "newly_violating", 1),
            ("P", 1, 2, "spam", "episode", "none", "unknown", "cleared", 1),
            ("P", 1, 2, "spam", "track", "none", "en", "cleared", 1),
            ("P", 2, 3, "hate", "track", "US", "en", "action_changed", 1),
        ],
        spark_schema(DIFF_SUMMARY_SCHEMA),
    )
    assertDataFrameEqual(diff_summary(spark.createDataFrame(DIFF_ROWS, spark_schema(DIFFS_SCHEMA))), expected)


def test_run_report_drops_removed_pairs_and_summarises_diffs(spark, tmp_path):
    from moderation.schemas import DIFF_SUMMARY_SCHEMA

    lake = Lake(str(tmp_path / "lake"))
    append(lake, "scores", [score("a"), score("b"), score("c"), score("d", scored_at=T0 + 2 * HOUR)])
    append(lake, "runs", [decide_run("decide-1", "P", 1, categories=["hate"], model_ids=["m1"], scores_version=0,
                                     ended_at=T0 + 3 * HOUR)])
    append(lake, "violations", [violation("P", 1, "a", "hate", "violation"),
                                violation("P", 1, "b", "hate", "violation")])
    removal = {"run_id": "rescan-1", "modality": "text", "reason": "item_deleted", "catalog_uri": "/c",
               "catalog_version": 4}
    append(lake, "removals", [
        {**removal, "item_id": "b", "removed_at": T0 + HOUR},  # b's score predates its removal: retired
        {**removal, "item_id": "c", "removed_at": T0 - HOUR},  # c was scored after it came back: counts
        {**removal, "item_id": "d", "removed_at": T0 + HOUR},  # d likewise
    ])
    append(lake, "diffs", DIFF_ROWS)

    result = run_report(lake.root, spark=spark)

    assert [(r["category"], r["items"], r["violations"]) for r in result.totals.to_pylist()] == [("hate", 3, 1)]
    summary = DeltaTable(lake.uri("reports/diff_summary")).to_pyarrow_table()
    assert result.diff_summary_uri == lake.uri("reports/diff_summary")
    assert summary.schema == DIFF_SUMMARY_SCHEMA and summary.num_rows == 6
    cells = {(r["to_version"], r["category"], r["market"], r["change"]): r["items"] for r in summary.to_pylist()}
    assert cells[(2, "hate", "US", "newly_violating")] == 2 and cells[(3, "hate", "US", "action_changed")] == 1
    text = result.summary()
    assert "P v1 -> v2 (items): cleared 2, newly_violating 3" in text
    assert "P v2 -> v3 (items): action_changed 1" in text


def covered(item_id: str, coverage: float | None, reason: str | None = None, **kwargs) -> dict:
    """A scores row with its coverage (None: not recorded)."""
    return {**score(item_id, **kwargs), "coverage": coverage, "coverage_reason": reason}


def test_scoring_coverage_cells(spark):
    """Per policy version x item type x modality x model, from each pair's newest live row in the
    decide's snapshot: whole, partial (with its reasons) and unknown (no coverage recorded)."""
    from moderation.reporting.report import scoring_coverage
    from moderation.schemas import COVERAGE_SCHEMA, REMOVALS_SCHEMA

    rows = [
        covered("a", 1.0),
        covered("b", 0.5, "limit_words"),
        covered("b", 1.0, scored_at=T0 + HOUR, run_id="rescan-2"),  # re-scored whole: the newest row counts
        covered("c", 0.25, "limit_chars,limit_words"),
        covered("d", None),  # scored before coverage existed: unknown, not whole
        covered("g", 0.1, "limit_words"),  # removed later: does not count
        {**covered("e", None, item_type="episode", model_id="m2"), "modality": "audio"},
        covered("f", 1.0, item_type=None),
        covered("h", 0.5, "limit_words", model_id="m3"),  # not one of the decide's models
    ]
    tagged = [{**row, "scores_version": 3} for row in rows] + [{**covered("z", 0.5, "limit_words"),
                                                                "scores_version": 2}]
    scores = spark.createDataFrame(tagged, spark_schema(SCORES_SCHEMA.append(pa.field("scores_version", pa.int64()))))
    decides = spark.createDataFrame(
        [decide_run("decide-1", "P", 1, categories=["hate"], model_ids=["m1", "m2"], scores_version=3, ended_at=T0)],
        spark_schema(RUNS_SCHEMA),
    )
    removals = spark.createDataFrame(
        [{"run_id": "rescan-1", "item_id": "g", "modality": "text", "reason": "item_deleted", "catalog_uri": "/c",
          "catalog_version": 4, "removed_at": T0 + HOUR}],
        spark_schema(REMOVALS_SCHEMA),
    )
    df = scoring_coverage(scores, decides, removals)
    assert df.dtypes == dtypes(COVERAGE_SCHEMA)
    got = {(r.item_type, r.modality, r.model_id): r.asDict() for r in df.collect()}
    assert set(got) == {("track", "text", "m1"), ("episode", "audio", "m2"), (None, "text", "m1")}
    track = got["track", "text", "m1"]
    assert (track["items"], track["whole"], track["partial"], track["unknown"]) == (4, 2, 1, 1)
    assert track["whole_share"] == 0.5 and track["mean_coverage"] == pytest.approx((1.0 + 1.0 + 0.25) / 3)
    assert track["partial_reasons"] == {"limit_chars": 1, "limit_words": 1}
    audio = got["episode", "audio", "m2"]
    assert (audio["items"], audio["whole"], audio["unknown"], audio["whole_share"]) == (1, 0, 1, 0.0)
    assert audio["mean_coverage"] is None and audio["partial_reasons"] == {}
    assert got[None, "text", "m1"]["whole"] == 1 and got[None, "text", "m1"]["partial_reasons"] == {}


def test_run_report_writes_coverage_and_reads_old_snapshots_as_unknown(spark, tmp_path):
    """A decide that read a scores snapshot from before the coverage columns counts its items as
    unknown; one that read a later snapshot counts whole and partial items."""
    from moderation.schemas import COVERAGE_SCHEMA

    lake = Lake(str(tmp_path / "lake"))
    old = pa.schema([f for f in SCORES_SCHEMA if f.name not in {"units_total", "units_scored", "unit", "coverage",
                                                                    "coverage_reason"}])
    write_deltalake(lake.uri("scores"), pa.Table.from_pylist([score("a"), score("b")], schema=old))  # version 0
    write_deltalake(lake.uri("scores"), pa.Table.from_pylist(
        [covered("b", 0.4, "limit_words", scored_at=T0 + HOUR, run_id="rescan-2"), covered("c", 1.0)],
        schema=SCORES_SCHEMA), mode="append", schema_mode="merge")  # version 1
    append(lake, "runs", [
        decide_run("decide-p", "P", 1, categories=["hate"], model_ids=["m1"], scores_version=0, ended_at=T0),
        decide_run("decide-q", "Q", 1, categories=["hate"], model_ids=["m1"], scores_version=1, ended_at=T0),
    ])
    append(lake, "violations", [violation("Q", 1, "b", "hate", "violation", run_id="decide-q")])

    result = run_report(lake.root, spark=spark)

    assert result.coverage_uri == lake.uri("reports/coverage")
    table = DeltaTable(result.coverage_uri).to_pyarrow_table()
    assert table.schema == COVERAGE_SCHEMA and table.num_rows == 2
    cells = {r["policy_id"]: r for r in result.coverage.to_pylist()}
    p, q = cells["P"], cells["Q"]
    assert (p["items"], p["whole"], p["partial"], p["unknown"], p["whole_share"], p["mean_coverage"]) == (
        2, 0, 0, 2, 0.0, None)
    assert (q["items"], q["whole"], q["partial"], q["unknown"], q["whole_share"]) == (3, 1, 1, 1, 1 / 3)
    assert q["mean_coverage"] == pytest.approx(0.7) and dict(q["partial_reasons"]) == {"limit_words": 1}
    text = result.summary()
    assert f"coverage: {lake.uri('reports/coverage')}" in text
    lines = text.splitlines()
    line = next(ln for ln in lines[lines.index(f"coverage: {lake.uri('reports/coverage')}"):] if ln.startswith("Q "))
    assert line.split()[:12] == ["Q", "1", "track", "text", "m1", "3", "33.33", "0.700", "1", "1", "limit_words", "1"]


# A decide racing the report (issue 15, point 3).

def race_lake(root) -> Lake:
    """Scores a, b, c (version 0); decide-1 of P v1 read them and flagged a."""
    lake = Lake(str(root))
    append(lake, "scores", [score("a"), score("b"), score("c")])
    append(lake, "runs", [decide_run("decide-1", "P", 1, categories=["hate"], model_ids=["m1"], scores_version=0,
                                     ended_at=T0, violation_rows=1)])
    append(lake, "violations", [violation("P", 1, "a", "hate", "violation")])
    return lake


def second_decide(lake: Lake, *, record: bool = True) -> None:
    """A newer decide of P v1 over a newer scores version (d added): flags b, c and d instead of a.
    ``record=False``: it replaces the violations but dies before its runs row."""
    append(lake, "scores", [score("d", scored_at=T0 + HOUR, run_id="backfill-2")])
    rows = pa.Table.from_pylist([violation("P", 1, i, "hate", "violation", run_id="decide-2") for i in "bcd"],
                                schema=VIOLATIONS_SCHEMA)
    lake.replace_violations(rows, policy_id="P", policy_version=1, run_id="decide-2")
    if record:
        write_run(lake, RunRecord(**decide_run("decide-2", "P", 1, categories=["hate"], model_ids=["m1"],
                                               scores_version=lake.version("scores"), ended_at=T0 + 2 * HOUR,
                                               violation_rows=3)))


def test_a_decide_committing_during_the_report_changes_nothing_in_it(spark, tmp_path, monkeypatch):
    """Every table is pinned before the first read: a decide committing after the report read
    ``runs`` leaves the report equal to the one computed before it, and its violations (another
    run of the same policy version) are not counted with the first decide's population."""
    from moderation.reporting import report as reporting

    lake = race_lake(tmp_path / "lake")
    before = run_report(lake.root, spark=spark)
    assert [(r["category"], r["items"], r["violations"]) for r in before.totals.to_pylist()] == [("hate", 3, 1)]

    original = reporting.read_snapshot
    raced = []

    def read_then_race(*args, **kwargs):
        df = original(*args, **kwargs)
        if not raced:
            raced.append(args[2])
            second_decide(lake)
        return df

    monkeypatch.setattr(reporting, "read_snapshot", read_then_race)
    runs_before = lake.version("runs")  # the first report's own runs row
    during = run_report(lake.root, spark=spark)

    assert raced == ["runs"]
    assert set(DeltaTable(lake.uri("violations")).to_pandas()["run_id"]) == {"decide-2"}  # the race happened
    assert during.rates.equals(before.rates) and during.totals.equals(before.totals)
    assert during.coverage.equals(before.coverage)
    assert before.versions == {"runs": 0, "violations": 0, "scores": 0, "removals": None, "diffs": None,
                               "labels": None}
    assert runs_before == 1 and during.versions == {**before.versions, "runs": runs_before}
    snapshot = DeltaTable(during.snapshot_uri).to_pyarrow_table()
    assert during.snapshot_uri == lake.uri("reports/snapshot")
    assert {r["table_name"]: r["version"] for r in snapshot.to_pylist()} == during.versions
    assert "snapshot read: runs v1, violations v0, scores v0" in during.summary()
    reports = DeltaTable(lake.uri("runs")).to_pandas().query("kind == 'report'").set_index("run_id")
    assert sorted(reports.index) == sorted([before.run_id, during.run_id])
    assert list(reports.loc[before.run_id, "baseline_versions"]) == ["runs=0", "violations=0", "scores=0"]
    assert (reports["status"] == "succeeded").all()


def test_a_decide_committing_between_the_pins_is_pinned_again(spark, tmp_path, monkeypatch):
    """A decide whose violations land after ``runs`` was pinned but before ``violations`` was:
    the pinned violations no longer hold the reported decide's rows, so the report pins again and
    reports the new decide whole, never one decide's population with the other's violations."""
    lake = race_lake(tmp_path / "lake")
    original = Lake.version
    raced = []

    def version_racing(self, table):
        if table == "violations" and not raced:
            raced.append(table)
            second_decide(lake)
        return original(self, table)

    monkeypatch.setattr(Lake, "version", version_racing)
    result = run_report(lake.root, spark=spark)

    assert raced
    assert [(r["category"], r["items"], r["violations"]) for r in result.totals.to_pylist()] == [("hate", 4, 3)]
    assert result.versions["runs"] == 1 and result.versions["scores"] == 1


def test_violations_replaced_by_an_unrecorded_decide_are_refused(spark, tmp_path, monkeypatch):
    from moderation.reporting import report as reporting

    lake = race_lake(tmp_path / "lake")
    second_decide(lake, record=False)
    monkeypatch.setattr(reporting, "PIN_ATTEMPTS", 2)
    with pytest.raises(LakeError, match=r"P v1: decide decide-1 recorded 1 violations rows, violations version 1 "
                                        r"holds 0 of them"):
        run_report(lake.root, spark=spark)


def test_report_of_real_decides_counts_each_versions_own_run(spark, tmp_path):
    """moderation decide writes what the report joins on: its run id on every violations row and
    the row count in runs. Two decides of v1 and one of v2: each version reports its newest
    decide's rows, and the check of the pinned violations passes."""
    from moderation.policy.decide import run_decide
    from tests.conftest import POLICY_V1, POLICY_V2
    from tests.policy.test_decide import scores as decide_scores

    lake = Lake(str(tmp_path / "lake"))
    lake.append_chunk("scores", decide_scores([
        ("a", {"hate": 0.80, "harassment": 0.1, "spam": 0.1}, False, T0),  # v1 review, v2 violation
        ("b", {"hate": 0.95, "harassment": 0.1, "spam": 0.1}, False, T0),
        ("c", {"hate": 0.1, "harassment": 0.1, "spam": 0.2}, False, T0),
    ]), app_id="t", version=0)
    run_decide(lake_root=lake.root, policy_path=POLICY_V1, run_id="v1-first")
    run_decide(lake_root=lake.root, policy_path=POLICY_V1, run_id="v1-second")
    run_decide(lake_root=lake.root, policy_path=POLICY_V2, run_id="v2-only")

    result = run_report(lake.root, spark=spark)

    totals = {(r["policy_version"], r["category"]): (r["items"], r["violations"], r["reviews"])
              for r in result.totals.to_pylist()}
    assert totals[(1, "hate")] == (3, 1, 1) and totals[(2, "hate")] == (3, 2, 0)
    assert result.versions == {"runs": 2, "violations": 2, "scores": 0, "removals": None, "diffs": None,
                               "labels": None}
