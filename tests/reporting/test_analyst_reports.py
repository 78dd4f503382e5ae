"""The analysts' reports of issue 17 (trend, roll-ups, blast radius, detection methods, the
transparency summary): exact cells of each pure function on tiny DataFrames, and one report run
end to end on a tiny lake (tables, schemas, the versions read, the PNG charts)."""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path

import pyarrow as pa
import pytest
from deltalake import DeltaTable

from moderation.engines.spark import spark_schema
from moderation.reporting.report import (
    ANALYST_SCHEMAS,
    _body,
    blast_radius,
    detection_methods,
    population,
    rollups,
    transparency_summary,
    violation_trend,
)
from moderation.schemas import (
    BLAST_RADIUS_SCHEMA,
    DETECTION_SCHEMA,
    LABELS_SCHEMA,
    REPORT_SCHEMAS,
    ROLLUPS_SCHEMA,
    RUNS_SCHEMA,
    SCORES_SCHEMA,
    TRANSPARENCY_SCHEMA,
    VIOLATION_TREND_SCHEMA,
    VIOLATIONS_SCHEMA,
)
from moderation.storage.lake import Lake
from tests.reporting.test_reporting import HOUR, T0, append, decide_run, score, violation

pytestmark = pytest.mark.spark

POPULATION = ("policy_id string, policy_version int, item_id string, item_type string, language string, "
              "markets array<string>, creator_id string, show_id string, album_id string")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def runs(spark, rows: list[dict]):
    return spark.createDataFrame(rows, spark_schema(RUNS_SCHEMA))


def violations(spark, rows: list[dict]):
    return spark.createDataFrame(rows, spark_schema(VIOLATIONS_SCHEMA))


def flagged(item_id: str, category: str = "hate", decision: str = "violation", *, severity: str = "high",
            action: str | None = None, **kwargs) -> dict:
    row = violation("P", 1, item_id, category, decision, **kwargs)
    return {**row, "severity": severity, **({"action": action} if action else {})}


def label(item_id: str, category: str = "hate") -> dict:
    return {"label_id": f"l-{item_id}-{category}", "item_id": item_id, "category": category, "label": 1,
            "decision": "violating", "source": "moderator", "reviewed_at": T0, "import_id": "labels_import-1",
            "source_file": "f.csv", "source_sha256": "0" * 64, "imported_at": T0}


def labels(spark, rows: list[dict]):
    return spark.createDataFrame(rows, spark_schema(LABELS_SCHEMA))


def expected(spark, schema: pa.Schema, rows: list[tuple]):
    return spark.createDataFrame(rows, spark_schema(_body(schema)))


ONE_DECIDE = [decide_run("decide-1", "P", 1, categories=["hate", "spam"], model_ids=["mt"], scores_version=0,
                         ended_at=T0)]


def test_population_carries_the_ids_of_the_items_newest_row(spark):
    tagged = spark_schema(SCORES_SCHEMA.append(pa.field("scores_version", pa.int64())))
    rows = [
        {**score("a"), "creator_id": "c-old", "scores_version": 0},
        {**score("a", scored_at=T0 + HOUR, run_id="rescan-2"), "creator_id": "c1", "album_id": "al1",
         "scores_version": 0},
        {**score("b"), "scores_version": 0},  # written before the ids were carried: nulls
    ]
    decides = runs(spark, [decide_run("decide-1", "P", 1, categories=["hate"], model_ids=["m1"], scores_version=0,
                                      ended_at=T0)])
    got = {r.item_id: (r.creator_id, r.show_id, r.album_id)
           for r in population(spark.createDataFrame(rows, tagged), decides).collect()}
    assert got == {"a": ("c1", None, "al1"), "b": (None, None, None)}


def test_violation_trend_dates_each_version_by_its_decide(spark):
    from pyspark.testing import assertDataFrameEqual

    decides = runs(spark, [
        decide_run("decide-1", "P", 1, categories=["hate", "spam"], model_ids=["mt"], scores_version=0,
                   ended_at=dt.datetime(2025, 1, 1, 23, 30, tzinfo=dt.timezone.utc)),
        decide_run("decide-2", "P", 2, categories=["hate"], model_ids=["mt"], scores_version=0,
                   ended_at=dt.datetime(2025, 2, 3, 0, 15, tzinfo=dt.timezone.utc)),
    ])
    covered = spark.createDataFrame(
        [("P", 1, i, "track", "en", ["US"], None, None, None) for i in "abcd"]
        + [("P", 2, i, "track", "en", ["US"], None, None, None) for i in "abcde"], POPULATION)
    rows = violations(spark, [
        flagged("a"), flagged("b"), flagged("c", decision="review"),
        {**flagged("a"), "policy_version": 2, "run_id": "decide-2"},
        {**flagged("x"), "run_id": "decide-0"},  # another decide's row: not counted
    ])
    want = expected(spark, VIOLATION_TREND_SCHEMA, [
        ("P", 1, "hate", dt.date(2025, 1, 1), "decide-1", 4, 2, 1, 0.5),
        ("P", 1, "spam", dt.date(2025, 1, 1), "decide-1", 4, 0, 0, 0.0),
        ("P", 2, "hate", dt.date(2025, 2, 3), "decide-2", 5, 1, 0, 0.2),
    ])
    assertDataFrameEqual(violation_trend(rows, covered, decides), want)
    # The dates are UTC whatever the session's time zone (v2's decide ended on 2 Feb in Los Angeles).
    zone = spark.conf.get("spark.sql.session.timeZone")
    spark.conf.set("spark.sql.session.timeZone", "America/Los_Angeles")
    try:
        assertDataFrameEqual(violation_trend(rows, covered, decides), want)
    finally:
        spark.conf.set("spark.sql.session.timeZone", zone)


ROLLUP_ITEMS = [
    # item, type, creator, show, album
    ("a", "track", "c1", None, "al1"),
    ("b", "track", "c1", None, "al1"),
    ("c", "episode", "c2", "s1", None),
    ("d", "episode", "c2", None, None),
    ("e", "track", None, None, None),
]
ROLLUP_VIOLATIONS = [
    ("a", "hate", "violation", "high"),
    ("b", "spam", "violation", "critical"),
    ("b", "hate", "violation", "low"),
    ("c", "hate", "review", "high"),  # a review: not flagged, and not its severity
    ("e", "hate", "violation", "low"),
]


def rollup_case(spark, *, show_album: bool = True, creators: bool = True):
    covered = spark.createDataFrame(
        [("P", 1, i, t, "en", ["US"], c if creators else None, s if show_album else None,
          a if show_album else None) for i, t, c, s, a in ROLLUP_ITEMS], POPULATION)
    rows = violations(spark, [flagged(i, cat, d, severity=sev) for i, cat, d, sev in ROLLUP_VIOLATIONS])
    return rows, covered, runs(spark, ONE_DECIDE)


def test_rollups_to_creator_show_and_album(spark):
    from pyspark.testing import assertDataFrameEqual

    want = expected(spark, ROLLUPS_SCHEMA, [
        ("P", 1, "creator", "c1", 2, 2, 0, 1.0, "critical"),
        ("P", 1, "creator", "c2", 2, 0, 1, 0.0, None),
        ("P", 1, "creator", "unknown", 1, 1, 0, 1.0, "low"),  # e has no creator id
        ("P", 1, "show", "s1", 1, 0, 1, 0.0, None),
        ("P", 1, "show", "unknown", 1, 0, 0, 0.0, None),  # episode d has no show id; tracks are not shows
        ("P", 1, "album", "al1", 2, 2, 0, 1.0, "critical"),
        ("P", 1, "album", "unknown", 1, 1, 0, 1.0, "low"),
    ])
    assertDataFrameEqual(rollups(*rollup_case(spark)), want)


def test_rollups_leave_out_the_levels_no_item_carries(spark):
    """A catalog without show_id / album_id gives creator rows only; a lake whose scores carry no
    id at all (written before issue 17) gives no roll-up rows."""
    from pyspark.testing import assertDataFrameEqual

    want = expected(spark, ROLLUPS_SCHEMA, [
        ("P", 1, "creator", "c1", 2, 2, 0, 1.0, "critical"),
        ("P", 1, "creator", "c2", 2, 0, 1, 0.0, None),
        ("P", 1, "creator", "unknown", 1, 1, 0, 1.0, "low"),
    ])
    assertDataFrameEqual(rollups(*rollup_case(spark, show_album=False)), want)
    assert rollups(*rollup_case(spark, show_album=False, creators=False)).count() == 0


def test_blast_radius_ranks_creators_by_flagged_items(spark):
    from pyspark.testing import assertDataFrameEqual

    items = [("x1", "x"), ("x2", "x"), ("x3", "x"),  # x: 3 of 3 flagged
             ("y1", "y"), ("y2", "y"), ("y3", "y"), ("y4", "y"), ("y5", "y"),  # y: 3 of 5, ranked after x
             ("b1", "b"), ("a1", "a"), ("a2", "a"),  # a and b: 1 flagged each; b's share is higher
             ("w1", "w"),  # nothing flagged: not ranked
             ("n1", None)]  # no creator id: not ranked
    covered = spark.createDataFrame([("P", 1, i, "track", "en", ["US"], c, None, None) for i, c in items], POPULATION)
    rows = violations(spark, [
        flagged("x1", severity="medium"), flagged("x2", "spam", severity="critical"), flagged("x3"),
        flagged("y1"), flagged("y2"), flagged("y3", severity="low"), flagged("y4", decision="review"),
        flagged("b1", "spam", severity="low"), flagged("a1"), flagged("n1", severity="critical"),
    ])
    want = expected(spark, BLAST_RADIUS_SCHEMA, [
        ("P", 1, 1, "x", 3, 3, 1.0, "critical", ["hate", "spam"]),
        ("P", 1, 2, "y", 5, 3, 0.6, "high", ["hate"]),
        ("P", 1, 3, "b", 1, 1, 1.0, "low", ["spam"]),
        ("P", 1, 4, "a", 2, 1, 0.5, "high", ["hate"]),
    ])
    decides = runs(spark, ONE_DECIDE)
    assertDataFrameEqual(blast_radius(rows, covered, decides), want)
    assert [r.creator_id for r in blast_radius(rows, covered, decides, top=2).orderBy("rank").collect()] == ["x", "y"]


def test_detection_by_modality_model_and_review(spark):
    from pyspark.testing import assertDataFrameEqual

    both = {"evidence_modalities": ["text", "image"], "model_refs": ["mt@aaaaaaaaaaaa", "mi@bbbbbbbbbbbb"]}
    text = {"evidence_modalities": ["text"], "model_refs": ["mt@aaaaaaaaaaaa"]}
    rows = violations(spark, [
        {**flagged("a"), **both},  # found by both models
        {**flagged("b"), **text},  # human-reviewed (a label for b / hate)
        {**flagged("b", "spam"), **text},  # b's label is for hate only: automated
        {**flagged("c", decision="review"), **text},  # a review, not a violation
        {**flagged("d"), "evidence_modalities": None, "model_refs": None},  # no refs
        {**flagged("e"), "evidence_modalities": ["audio"], "model_refs": ["ma@cccccccccccc"]},  # no scores row
        {**flagged("f"), **text, "run_id": "decide-0"},  # another decide's row
    ])
    models = spark.createDataFrame([("mt", "text"), ("mi", "image"), ("mt", "text")], "model_id string, modality string")
    want = expected(spark, DETECTION_SCHEMA, [
        ("P", 1, "hate", "text", "mt", "automated", 1),
        ("P", 1, "hate", "image", "mi", "automated", 1),
        ("P", 1, "hate", "text", "mt", "human_review", 1),
        ("P", 1, "spam", "text", "mt", "automated", 1),
        ("P", 1, "hate", "unknown", "unknown", "automated", 1),
        ("P", 1, "hate", "unknown", "ma", "automated", 1),
    ])
    got = detection_methods(rows, runs(spark, ONE_DECIDE), labels(spark, [label("b"), label("c")]), models)
    assertDataFrameEqual(got, want)


def transparency_case(spark):
    """hate/remove cells: US automated 2 items, US human_review 3 items, DE automated 4 items."""
    rows = [flagged(i, scope_markets=["US"]) for i in ("a", "b")]
    rows += [flagged(i, scope_markets=["US"]) for i in ("h1", "h2", "h3")]
    rows += [flagged(i, markets=["DE"], scope="DE", scope_markets=["DE"]) for i in ("d1", "d2", "d3")]
    rows += [flagged("a", markets=["US", "DE"], scope="DE", scope_markets=["DE"])]  # a counts in DE too
    rows += [flagged("r", decision="review", scope_markets=["US"])]  # reviews are not in the summary
    reviewed = labels(spark, [label(i) for i in ("h1", "h2", "h3")] + [label("a", "spam")])
    return violations(spark, rows), runs(spark, ONE_DECIDE), reviewed


@pytest.mark.parametrize(("k", "published"), [
    (1, {"US automated": (2, None), "US human_review": (3, None), "DE automated": (4, None)}),
    # 2 < k is small; 3 == k would be published, but with the US total it gives the 2 back
    (3, {"US automated": (None, "small_cell"), "US human_review": (None, "complementary"),
         "DE automated": (4, None)}),
    (4, {"US automated": (None, "small_cell"), "US human_review": (None, "small_cell"), "DE automated": (4, None)}),
    (5, {"US automated": (None, "small_cell"), "US human_review": (None, "small_cell"),
         "DE automated": (None, "small_cell")}),
])
def test_transparency_suppresses_cells_below_k(spark, k, published):
    from pyspark.testing import assertDataFrameEqual

    cells = {"US automated": ("US", "automated"), "US human_review": ("US", "human_review"),
             "DE automated": ("DE", "automated")}
    want = expected(spark, TRANSPARENCY_SCHEMA, [
        ("P", 1, cells[name][0], "hate", "remove", cells[name][1], n, why is not None, why, k)
        for name, (n, why) in published.items()
    ])
    assertDataFrameEqual(transparency_summary(*transparency_case(spark), min_cell_count=k), want)


def test_complementary_suppression_covers_every_line_of_a_market_and_category(spark):
    """US x hate: remove/automated 2 (small at k=5), remove/human_review 7, label/automated 6,
    label/human_review 20; US x spam: one cell of 3 (small, alone: nothing else to withhold)."""
    from pyspark.testing import assertDataFrameEqual

    counts = {("hate", "remove", False): 2, ("hate", "remove", True): 7,
              ("hate", "label", False): 6, ("hate", "label", True): 20, ("spam", "remove", False): 3}
    rows, reviewed = [], []
    for (category, action, human), n in counts.items():
        for j in range(n):
            item = f"{category}-{action}-{human}-{j}"
            rows.append(flagged(item, category=category, action=action, scope_markets=["US"]))
            if human:
                reviewed.append(label(item, category))
    got = transparency_summary(violations(spark, rows), runs(spark, ONE_DECIDE), labels(spark, reviewed),
                               min_cell_count=5)
    # The remove line withholds its 7; the automated line then has one withheld cell (2) beside the
    # 6, which goes too; the human_review line then holds the 7 and the 20, so the 20 goes as well.
    want = expected(spark, TRANSPARENCY_SCHEMA, [
        ("P", 1, "US", "hate", "remove", "automated", None, True, "small_cell", 5),
        ("P", 1, "US", "hate", "remove", "human_review", None, True, "complementary", 5),
        ("P", 1, "US", "hate", "label", "automated", None, True, "complementary", 5),
        ("P", 1, "US", "hate", "label", "human_review", None, True, "complementary", 5),
        ("P", 1, "US", "spam", "remove", "automated", None, True, "small_cell", 5),
    ])
    assertDataFrameEqual(got, want)


def test_transparency_refuses_k_below_one(spark):
    with pytest.raises(ValueError, match="at least 1, got 0"):
        transparency_summary(*transparency_case(spark), min_cell_count=0)


def test_report_writes_the_analyst_tables_and_charts(spark, tmp_path):
    """moderation report on a tiny lake: every analyst table with its schema and the versions
    read, a valid PNG beside each, --min-cell-count applied, and a second run changes nothing."""
    from typer.testing import CliRunner

    from moderation.cli import app

    lake = Lake(str(tmp_path / "lake"))
    policy = "catalog-safety"  # as the documented queries name it
    ids = {"a": ("c1", None, "al1"), "b": ("c1", None, "al1"), "c": ("c2", "s1", None), "d": ("c2", "s1", None)}
    append(lake, "scores", [
        {**score(i, item_type="episode" if s else "track"), "creator_id": c, "show_id": s, "album_id": al}
        for i, (c, s, al) in ids.items()
    ] + [score("e")])  # e: written as before issue 17 (no ids)
    append(lake, "runs", [decide_run("decide-1", policy, 1, categories=["hate"], model_ids=["m1"], scores_version=0,
                                     ended_at=T0, violation_rows=4)])
    append(lake, "violations", [violation(policy, 1, i, "hate", "violation", scope_markets=["US"]) for i in "abce"])
    append(lake, "labels", [label("c")])

    result = CliRunner().invoke(app, ["report", "--lake", lake.root, "--min-cell-count", "2"])
    assert result.exit_code == 0, result.output
    assert "analyst reports" in result.output and "2 suppressed" in result.output

    versions = {"runs": 0, "violations": 0, "scores": 0, "removals": None, "diffs": None, "labels": 0}
    tables = {}
    for name, schema in ANALYST_SCHEMAS.items():
        assert REPORT_SCHEMAS[f"reports/{name}"] is schema
        table = DeltaTable(lake.uri(f"reports/{name}")).to_pyarrow_table()
        assert table.schema == schema, name
        assert table.num_rows > 0, name
        assert all(dict(v) == versions for v in table.column("lake_versions").to_pylist()), name
        tables[name] = table
        png = (tmp_path / "lake" / "reports" / f"{name}.png").read_bytes()
        assert png.startswith(PNG_MAGIC) and len(png) > 5_000, (name, len(png))
    trend = tables["violation_trend"].to_pylist()
    assert [(r["decide_date"], r["items"], r["violations"]) for r in trend] == [(T0.date(), 5, 4)]
    cells = {(r["level"], r["entity_id"]): (r["items"], r["flagged_items"]) for r in tables["rollups"].to_pylist()}
    assert cells == {("creator", "c1"): (2, 2), ("creator", "c2"): (2, 1), ("creator", "unknown"): (1, 1),
                     ("show", "s1"): (2, 1), ("album", "al1"): (2, 2), ("album", "unknown"): (1, 1)}
    assert [(r["rank"], r["creator_id"]) for r in tables["blast_radius"].to_pylist()] == [(1, "c1"), (2, "c2")]
    assert {(r["review"], r["violations"]) for r in tables["detection"].to_pylist()} == {
        ("automated", 3), ("human_review", 1)}
    transparency = {r["detection_method"]: (r["items"], r["suppression"], r["min_cell_count"])
                    for r in tables["transparency"].to_pylist()}
    # 1 human-reviewed item is below k = 2; the 3 automated would give it back from the US total.
    assert transparency == {"automated": (None, "complementary", 2), "human_review": (None, "small_cell", 2)}

    # The example query docs/tables.md gives for each table runs and answers.
    queries = documented_queries()
    assert sorted(queries) == sorted(ANALYST_SCHEMAS)
    for name, query in queries.items():
        answer = CliRunner().invoke(app, ["sql", query, "--lake", lake.root, "--json"])
        assert answer.exit_code == 0 and answer.stdout.strip(), (name, answer.output)

    # Idempotent: a second report over the same lake rewrites the same rows and charts; only the
    # runs version it read moved (the first report's own runs row).
    before = {name: (tmp_path / "lake" / "reports" / f"{name}.png").read_bytes() for name in ANALYST_SCHEMAS}
    assert CliRunner().invoke(app, ["report", "--lake", lake.root, "--min-cell-count", "2"]).exit_code == 0
    for name in ANALYST_SCHEMAS:
        again = DeltaTable(lake.uri(f"reports/{name}")).to_pyarrow_table()
        assert again.drop_columns("lake_versions").equals(tables[name].drop_columns("lake_versions")), name
        assert {tuple(sorted(dict(v).items(), key=str)) for v in again.column("lake_versions").to_pylist()} == {
            tuple(sorted({**versions, "runs": 1}.items(), key=str))}, name
        last = DeltaTable(lake.uri(f"reports/{name}")).history(1)[0]
        assert (last["operation"], last["operationParameters"]["mode"]) == ("WRITE", "Overwrite"), name
        assert (tmp_path / "lake" / "reports" / f"{name}.png").read_bytes() == before[name], name
    reports = DeltaTable(lake.uri("runs")).to_pandas().query("kind == 'report'")
    assert len(reports) == 2 and (reports["status"] == "succeeded").all()
    assert sorted(list(v) for v in reports["baseline_versions"]) == [
        ["runs=0", "violations=0", "scores=0", "labels=0"], ["runs=1", "violations=0", "scores=0", "labels=0"]]


def documented_queries() -> dict[str, str]:
    """Report name -> the SQL example docs/tables.md gives under its column list."""
    text = (Path(__file__).resolve().parents[2] / "docs" / "tables.md").read_text()
    found = re.findall(r"^<!-- columns: reports/(\w+) -->\n\n```sql\n(.*?)^```", text, flags=re.S | re.M)
    return dict(found)


def test_report_refuses_a_min_cell_count_below_one(tmp_path):
    from typer.testing import CliRunner

    from moderation.cli import app

    result = CliRunner().invoke(app, ["report", "--lake", str(tmp_path), "--min-cell-count", "0"])
    assert result.exit_code == 2 and "--min-cell-count" in result.output


@pytest.mark.integration
def test_a_chart_is_written_to_an_s3_lake(tmp_path):
    """On an s3:// lake the PNG goes through pyarrow's S3 file system (a real S3 server here),
    and writing it again replaces it."""
    from moderation.reporting.charts import write_chart
    from moderation.storage.lake import arrow_filesystem
    from tests.s3_server import serving

    with serving(tmp_path / "seaweed") as server:
        lake = Lake(f"s3://{server.bucket}/lake")
        empty = TRANSPARENCY_SCHEMA.empty_table()
        for _ in range(2):
            uri = write_chart(lake, "transparency", empty)
            assert uri == f"s3://{server.bucket}/lake/reports/transparency.png"
            fs, path = arrow_filesystem(uri)
            with fs.open_input_stream(path) as f:
                png = f.read()
            assert png.startswith(PNG_MAGIC) and len(png) > 1_000


@pytest.mark.parametrize(("counts", "k", "want"), [
    # one line of two: the published cell would give the small one back
    ([("a", "x", 4), ("a", "y", 12)], 5, ["small_cell", "complementary"]),
    # two small cells already hide each other: nothing more withheld
    ([("a", "x", 4), ("a", "y", 3), ("a", "z", 40)], 5, ["small_cell", "small_cell", None]),
    # the smallest published cell of the line goes (ties: the first)
    ([("a", "x", 1), ("a", "y", 9), ("a", "z", 9), ("a", "w", 30)], 5, ["small_cell", "complementary", None, None]),
    # a line of one cell: nothing in the table can hide it
    ([("a", "x", 2)], 5, ["small_cell"]),
    # nothing small: everything published
    ([("a", "x", 5), ("b", "x", 6)], 5, [None, None]),
])
def test_suppression_pattern(counts, k, want):
    from moderation.reporting.report import suppression_pattern

    cells = [{"action": a, "detection_method": m, "_n": n} for a, m, n in counts]
    assert suppression_pattern(cells, min_cell_count=k) == want


def test_no_line_keeps_a_single_withheld_cell():
    """Random tables: after suppression, no line (per action, per method, whole) holds exactly one
    withheld cell beside others, and no cell below k is published."""
    import random

    from moderation.reporting.report import TRANSPARENCY_LINES, suppression_pattern

    rng = random.Random(5)
    for _ in range(300):
        cells = [{"action": a, "detection_method": m, "_n": rng.choice([1, 2, 3, 8, 10, 15, 40])}
                 for a in ("remove", "restrict", "label", "demote") for m in ("automated", "human_review")
                 if rng.random() < 0.7]
        reason = suppression_pattern(cells, min_cell_count=10)
        assert all(r is not None for c, r in zip(cells, reason, strict=True) if c["_n"] < 10)
        for key in TRANSPARENCY_LINES:
            lines: dict[tuple, list[int]] = {}
            for i, c in enumerate(cells):
                lines.setdefault(tuple(c[k] for k in key), []).append(i)
            for members in lines.values():
                withheld = sum(reason[i] is not None for i in members)
                assert not (withheld == 1 and len(members) > 1), (cells, reason)


def test_wide_reports_are_written_by_spark_not_collected(spark, tmp_path, monkeypatch):
    """reports/rollups (a row per entity) goes from Spark's own writer into the lake: the same
    rows as collecting it through the driver would write, the driver holding only the chart's top
    entities; its files are the ones Spark wrote."""
    from moderation.reporting import report as report_module
    from moderation.reporting.charts import MAX_BARS
    from moderation.reporting.report import run_report

    lake = Lake(str(tmp_path / "lake"))
    creators = {f"i{n:03d}": f"c{n % 40:02d}" for n in range(200)}  # 40 creators of 5 items
    append(lake, "scores", [{**score(i), "creator_id": c, "album_id": f"al{int(i[1:]) % 7}"}
                            for i, c in creators.items()])
    append(lake, "runs", [decide_run("decide-1", "P", 1, categories=["hate"], model_ids=["m1"], scores_version=0,
                                     ended_at=T0, violation_rows=60)])
    append(lake, "violations", [violation("P", 1, f"i{n:03d}", "hate", "violation", scope_markets=["US"])
                                for n in range(0, 200, 3)][:60])

    written = run_report(lake.root, spark=spark)
    table = DeltaTable(lake.uri("reports/rollups"))
    by_spark = table.to_pyarrow_table()
    assert all("/spark-" in uri for uri in table.file_uris())
    assert written.analyst_rows["rollups"] == by_spark.num_rows == 40 + 7  # creators + albums
    held = written.analyst["rollups"]
    assert held.num_rows == MAX_BARS + 7  # the chart's rows: top 15 creators, every flagged album
    top = sorted((r for r in by_spark.to_pylist() if r["level"] == "creator"),
                 key=lambda r: (-r["flagged_items"], r["entity_id"]))[:MAX_BARS]
    assert [r["entity_id"] for r in held.to_pylist() if r["level"] == "creator"] == sorted(
        r["entity_id"] for r in top)

    monkeypatch.setattr(report_module, "can_write", lambda spark, uri: False)  # as on S3 without S3A
    collected = run_report(lake.root, spark=spark)
    assert collected.analyst["rollups"].num_rows == by_spark.num_rows
    again = DeltaTable(lake.uri("reports/rollups")).to_pyarrow_table()
    assert again.schema == by_spark.schema == ROLLUPS_SCHEMA
    assert again.drop_columns("lake_versions").equals(by_spark.drop_columns("lake_versions"))
