"""The offline query paths on one tiny real lake: pandas, Polars, DuckDB (delta extension and
Arrow dataset) and ``moderation sql`` (Spark SQL over a pinned snapshot); every example of
docs/querying.md and every query of docs/cookbook.md runs here, so the pages cannot rot.

The lake is written by the project's own code, without Ray: the demo catalog (``catalog``),
scores from two backfill runs (last week and this week) appended with ``Lake.append_chunk``,
quarantine rows, the backfills' ``runs`` rows, real decides of catalog-safety v1 and v2 and a
real diff between them.
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import io
import json
import re
import shlex
from pathlib import Path

import pyarrow as pa
import pytest
from deltalake import write_deltalake
from typer.testing import CliRunner

from moderation.cli import app
from moderation.config import load_model_registry
from moderation.demo.catalog import build_demo_table
from moderation.errors import LakeError
from moderation.policy.decide import run_decide
from moderation.policy.diff import run_diff
from moderation.reporting.query import QueryError, check_read_only, format_rows, lake_tables, pin_lake, view_name
from moderation.runs import RunRecord, write_run
from moderation.schemas import QUARANTINE_SCHEMA, SCORES_SCHEMA
from moderation.storage.lake import Lake
from tests.conftest import POLICY_V1, POLICY_V2

DOCS = Path(__file__).resolve().parents[2] / "docs"
DOC_LAKE = "demo-lake"  # the lake the pages' examples name; the tests put theirs in its place
ITEMS = 48
LANGUAGES = ("en", "es", "de", "pt")
CREATORS = tuple(f"creator_{k:02d}" for k in range(6))
MODEL = load_model_registry()["text-minilm-heads-v1"]
NOW = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
LAST_WEEK = NOW - dt.timedelta(days=7)


def _unit(item_id: str, salt: str) -> float:
    """A fixed pseudo-random number in [0, 1) per item and salt."""
    return int(hashlib.sha256(f"{salt}:{item_id}".encode()).hexdigest()[:8], 16) / 2**32


def _scores(catalog: pa.Table, *, run_id: str, when: dt.datetime, salt: str) -> pa.Table:
    """Text scores for the catalog's items: about a fifth above v1's hate threshold, some in
    the review bands of both versions, some spam; every fourth item read only in part."""
    rows = []
    for k, item in enumerate(catalog.to_pylist()):
        item_id = item["item_id"]
        hate, harassment, spam = (0.55 + 0.45 * _unit(item_id, salt + c) if _unit(item_id, c) < 0.5
                                  else 0.5 * _unit(item_id, salt + c) for c in ("hate", "harassment", "spam"))
        partial = k % 4 == 0
        rows.append({
            "run_id": run_id, "item_id": item_id, "item_type": item["item_type"], "modality": "text",
            "model_id": MODEL.model_id, "model_digest": MODEL.digest, "content_hash": f"{salt}-{item_id}",
            "category_scores": [("hate", hate), ("harassment", harassment), ("spam", spam)],
            "evidence": [("hate", "body_text[0]@0-40"), ("harassment", "title"), ("spam", "description")],
            "language": item["language"], "markets": item["markets"], "explicit": item["explicit"],
            "scored_at": when, "units_total": 1000, "units_scored": 600 if partial else 1000, "unit": "words",
            "coverage": 0.6 if partial else 1.0, "coverage_reason": "limit_words" if partial else None,
        })
    return pa.Table.from_pylist(rows, schema=SCORES_SCHEMA)


def build_query_lake(root: Path) -> Lake:
    """The lake every query path reads (see the module docstring)."""
    lake = Lake(str(root))
    catalog, _ = build_demo_table(items=ITEMS, data_dir=None, seed=11)
    ids = catalog.column("item_id").to_pylist()
    catalog = catalog.set_column(catalog.schema.get_field_index("language"), "language",
                                 pa.array([LANGUAGES[int(_unit(i, "language") * len(LANGUAGES))] for i in ids]))
    catalog = catalog.set_column(catalog.schema.get_field_index("creator_id"), "creator_id",
                                 pa.array([CREATORS[int(_unit(i, "creator") * len(CREATORS))] for i in ids]))
    write_deltalake(lake.uri("catalog"), catalog)
    # Last week's backfill scored two thirds of the items; this week's scored the new third and
    # re-scored every fourth of the old ones (changed content).
    old = catalog.slice(0, 2 * ITEMS // 3)
    this_week = pa.concat_tables([catalog.slice(2 * ITEMS // 3), old.take(list(range(0, old.num_rows, 4)))])
    quarantined = []
    for run_id, when, items, salt in (("backfill-last-week", LAST_WEEK, old, "a"),
                                      ("backfill-this-week", NOW, this_week, "b")):
        lake.append_chunk("scores", _scores(items, run_id=run_id, when=when, salt=salt), app_id=run_id, version=0)
        quarantined.append({
            "run_id": run_id, "item_id": items.column("item_id")[1].as_py(), "modality": "image", "model_id": None,
            "stage": "decode", "reason": "media_unreadable", "detail": "truncated JPEG", "quarantined_at": when,
            "content_hash": f"q-{run_id}",
        })
        write_run(lake, RunRecord(run_id=run_id, kind="backfill", status="succeeded", policy_id="catalog-safety",
                                  policy_version=1, selected_pairs=items.num_rows + 1, scored_pairs=items.num_rows,
                                  quarantined_pairs=1, started_at=when - dt.timedelta(minutes=5), ended_at=when))
    lake.append_chunk("quarantine", pa.Table.from_pylist(quarantined, schema=QUARANTINE_SCHEMA),
                      app_id="quarantine", version=0)
    run_decide(lake_root=lake.root, policy_path=POLICY_V1, run_id="decide-v1")
    run_decide(lake_root=lake.root, policy_path=POLICY_V2, run_id="decide-v2")
    run_diff(lake_root=lake.root, policy_id="catalog-safety", from_version=1, to_version=2, run_id="diff-v1-v2")
    return lake


@pytest.fixture(scope="module")
def query_lake(tmp_path_factory) -> Lake:
    return build_query_lake(tmp_path_factory.mktemp("query") / "lake")


@pytest.fixture(scope="module")
def flagged_expected(query_lake) -> set[tuple]:
    """The one question every path answers: distinct flagged items per policy version, category
    and decision, computed here with pyarrow alone."""
    v = query_lake.read("violations", columns=["policy_version", "category", "decision", "item_id"])
    counts: dict[tuple, set] = {}
    for r in v.to_pylist():
        counts.setdefault((r["policy_version"], r["category"], r["decision"]), set()).add(r["item_id"])
    return {(*k, len(items)) for k, items in counts.items()}


def code_blocks(page: Path, language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", page.read_text(), flags=re.S | re.M)


def example(path_title: str) -> str:
    """The Python example under the docs/querying.md heading that starts with ``path_title``."""
    text = (DOCS / "querying.md").read_text()
    section = re.search(rf"^## {re.escape(path_title)}.*?(?=^## |\Z)", text, flags=re.S | re.M)
    assert section, f"docs/querying.md has no section {path_title!r}"
    blocks = re.findall(r"^```python\n(.*?)^```", section.group(0), flags=re.S | re.M)
    assert len(blocks) == 1, f"{path_title}: one runnable example expected"
    return blocks[0]


def run_example(code: str, lake: Lake, capsys) -> object:
    namespace: dict = {}
    exec(compile(code.replace(DOC_LAKE, lake.root), "<docs/querying.md>", "exec"), namespace)  # noqa: S102
    assert capsys.readouterr().out.strip(), "the example prints its result"
    return namespace["result"]


def as_set(records) -> set[tuple]:
    return {(int(r["policy_version"]), r["category"], r["decision"], int(r["items"])) for r in records}


# --- the lake and the pure helpers ------------------------------------------------------------------


def test_lake_tables_are_named_as_in_the_data_dictionary(query_lake, tmp_path):
    assert set(lake_tables(query_lake.root)) == {
        "catalog", "diff_samples", "diffs", "quarantine", "runs", "scores", "violations",
    }
    write_deltalake(str(tmp_path / "eval" / "results"), pa.table({"x": [1]}))
    write_deltalake(str(tmp_path / "reports" / "violation_rates"), pa.table({"x": [1]}))
    (tmp_path / "demo-media").mkdir()
    assert lake_tables(str(tmp_path)) == {"eval_results": "eval/results", "reports_violation_rates":
                                          "reports/violation_rates"}
    assert view_name("eval/datasets/toxic-2") == "eval_datasets_toxic_2"
    with pytest.raises(LakeError, match="no such lake"):
        lake_tables(str(tmp_path / "missing"))
    with pytest.raises(LakeError, match="no Delta tables"):
        lake_tables(str(tmp_path / "demo-media"))


def test_only_read_only_statements_run():
    assert check_read_only("  -- a comment\n(SELECT 1);  ") == "-- a comment\n(SELECT 1)"
    for ok in ("with x as (select 1) select * from x", "/* c */ SHOW TABLES", "DESCRIBE violations"):
        check_read_only(ok)
    for bad in ("CREATE TABLE t AS SELECT 1", "insert into violations values (1)", "SET x=1", "", "  ;"):
        with pytest.raises(QueryError):
            check_read_only(bad)


def test_pin_lake_pins_only_the_named_tables_runs_first(query_lake, tmp_path):
    pinned = pin_lake(query_lake.root, "SELECT * FROM violations v JOIN runs r USING (run_id)")
    assert list(pinned.tables) == ["runs", "violations"]
    assert pinned.tables["violations"].version == query_lake.version("violations")
    assert pin_lake(query_lake.root, "SELECT 1", versions={"scores": 0}).tables == {}
    assert pin_lake(query_lake.root, "SELECT * FROM scores", versions={"scores": 0}).tables["scores"].version == 0
    with pytest.raises(LakeError, match="--version-of nope: no such table .*tables: catalog, diff_samples"):
        pin_lake(query_lake.root, "SELECT 1", versions={"nope": 1})
    with pytest.raises(LakeError, match="cannot open version 99"):
        pin_lake(query_lake.root, "SELECT * FROM scores", versions={"scores": 99})
    elsewhere = pin_lake(query_lake.root, "SELECT * FROM catalog", catalog_uri=query_lake.uri("catalog"))
    assert elsewhere.tables["catalog"].uri == query_lake.uri("catalog")
    with pytest.raises(LakeError, match="not a Delta table"):
        pin_lake(query_lake.root, "SELECT * FROM catalog", catalog_uri=str(tmp_path))


def test_format_rows_table_csv_json():
    rows = pa.table({
        "market": ["DE", None], "items": pa.array([3, 10], pa.int64()), "rate": [1 / 3, 0.0],
        "markets": [["DE", "US"], None], "scores": pa.array([[("hate", 0.5)], []], pa.map_(pa.string(), pa.float64())),
        "at": pa.array([dt.datetime(2026, 1, 5, tzinfo=dt.timezone.utc), None], pa.timestamp("us", tz="UTC")),
    })
    assert format_rows(rows, "table").splitlines() == [
        "market  items      rate  markets      scores        at",
        "------  -----  --------  -----------  ------------  -------------------------",
        'DE          3  0.333333  ["DE","US"]  {"hate":0.5}  2026-01-05T00:00:00+00:00',
        "NULL       10         0  NULL         []            NULL",
        "(2 rows)",
    ]
    parsed = list(csv.DictReader(io.StringIO(format_rows(rows, "csv"))))
    assert parsed[0] == {"market": "DE", "items": "3", "rate": repr(1 / 3), "markets": '["DE","US"]',
                         "scores": '{"hate":0.5}', "at": "2026-01-05T00:00:00+00:00"}
    assert parsed[1]["market"] == "" and parsed[1]["at"] == ""
    lines = [json.loads(line) for line in format_rows(rows, "json").splitlines()]
    assert lines[0] == {"market": "DE", "items": 3, "rate": 1 / 3, "markets": ["DE", "US"], "scores": {"hate": 0.5},
                        "at": "2026-01-05T00:00:00+00:00"}
    assert lines[1]["market"] is None


# --- one test per query path: each runs the docs/querying.md example --------------------------------


def test_pandas_path(query_lake, flagged_expected, capsys):
    result = run_example(example("pandas"), query_lake, capsys)
    assert as_set(result.to_dict("records")) == flagged_expected


def test_polars_path(query_lake, flagged_expected, capsys):
    result = run_example(example("Polars"), query_lake, capsys)
    assert as_set(result.to_dicts()) == flagged_expected


def test_duckdb_delta_extension_path_offline_with_a_fresh_home(query_lake, flagged_expected, capsys, tmp_path,
                                                               monkeypatch):
    """The packaged extension installs into a fresh, writable $HOME; downloads are off, so the
    example could not have fetched it."""
    monkeypatch.setenv("HOME", str(tmp_path))
    result = run_example(example("DuckDB with the delta extension"), query_lake, capsys)
    assert as_set(result.to_dict("records")) == flagged_expected
    assert list(tmp_path.glob(".duckdb/extensions/v*/*/delta.duckdb_extension"))


def test_duckdb_connect_helper_reads_a_pinned_version(query_lake, tmp_path):
    from moderation.reporting.query import duckdb_connect

    con = duckdb_connect(extension_directory=str(tmp_path / "ext"))
    uri = query_lake.uri("violations")
    assert con.execute("SELECT current_setting('autoinstall_known_extensions')").fetchone() == (False,)
    first = con.execute(f"SELECT count(*) FROM delta_scan('{uri}', version => 0)").fetchone()[0]
    assert first == query_lake.read("violations", version=0).num_rows
    assert con.execute(f"SELECT count(*) FROM delta_scan('{uri}')").fetchone()[0] == query_lake.read("violations").num_rows


def test_duckdb_over_arrow_dataset_path(query_lake, flagged_expected, capsys):
    result = run_example(example("DuckDB over a deltalake Arrow dataset"), query_lake, capsys)
    assert as_set(result.to_dict("records")) == flagged_expected


# --- moderation sql (Spark): shares the suite's session ---------------------------------------------


def sql(spark, *args: str):
    """``moderation sql ARGS`` in this process (the CLI reuses the active Spark session)."""
    return CliRunner().invoke(app, ["sql", *args])


@pytest.mark.spark
def test_spark_sql_path_as_documented(spark, query_lake, flagged_expected):
    commands = [c for c in code_blocks(DOCS / "querying.md", "bash") if c.lstrip().startswith("moderation sql")]
    assert commands, "docs/querying.md shows moderation sql"
    argv = shlex.split(commands[0].replace("\\\n", " ").replace(DOC_LAKE, query_lake.root))
    assert argv[:2] == ["moderation", "sql"] and "--csv" in argv
    result = sql(spark, *argv[2:])
    assert result.exit_code == 0, result.output
    assert as_set(csv.DictReader(io.StringIO(result.stdout))) == flagged_expected
    assert f"violations@{query_lake.version('violations')}" in result.stderr
    # The README's example (the last command of its block) and the same one in querying.md's "In short".
    readme = [c[c.index("moderation sql"):] for c in code_blocks(DOCS.parent / "README.md", "bash")
              if "moderation sql" in c]
    assert len(readme) == 1, "the README shows one moderation sql"
    assert readme[0] in commands[1:], "querying.md's In short shows the README's moderation sql"
    argv = shlex.split(readme[0].split("#")[0].replace("\\\n", " ").replace(DOC_LAKE, query_lake.root))
    assert sql(spark, *argv[2:]).exit_code == 0


@pytest.mark.spark
def test_sql_table_json_and_a_pinned_older_version(spark, query_lake):
    q = "SELECT policy_version, count(*) AS n FROM violations GROUP BY policy_version ORDER BY policy_version"
    table = sql(spark, q, "--lake", query_lake.root)
    assert table.exit_code == 0, table.output
    assert table.stdout.splitlines()[0].split() == ["policy_version", "n"] and table.stdout.endswith("(2 rows)\n")
    as_json = sql(spark, q, "--lake", query_lake.root, "--json")
    assert [json.loads(line)["policy_version"] for line in as_json.stdout.splitlines()] == [1, 2]
    # violations version 0 holds v1's decide only (v2's is the next commit)
    old = sql(spark, q, "--lake", query_lake.root, "--json", "--version-of", "violations=0")
    assert [json.loads(line)["policy_version"] for line in old.stdout.splitlines()] == [1]
    assert "violations@0" in old.stderr
    shown = sql(spark, "SHOW TABLES", "--lake", query_lake.root, "--json")
    assert {json.loads(line)["tableName"] for line in shown.stdout.splitlines()} == set(lake_tables(query_lake.root))
    cut = sql(spark, "SELECT item_id FROM scores", "--lake", query_lake.root, "--csv", "--max-rows", "3")
    assert len(cut.stdout.splitlines()) == 4 and "output cut at 3 rows" in cut.stderr


@pytest.mark.spark
@pytest.mark.parametrize("args, message", [
    (["SELECT count(* FROM violations"], "query failed: [PARSE_SYNTAX_ERROR]"),
    (["SELEC 1"], "SELEC statement refused"),
    (["SELECT * FROM violation"], "TABLE_OR_VIEW_NOT_FOUND"),
    (["SELECT no_such_column FROM violations"], "query failed: [UNRESOLVED_COLUMN"),
    (["DROP TABLE violations"], "DROP statement refused"),
    (["WITH x AS (SELECT 1) INSERT INTO violations SELECT * FROM x"], "InsertIntoStatement refused"),
    (["FROM violations INSERT OVERWRITE DIRECTORY '/tmp/never' USING parquet SELECT *"], "InsertIntoDir refused"),
    (["SELECT 1", "--version-of", "violations"], "expected TABLE=VERSION"),
    (["SELECT 1", "--csv", "--json"], "choose one output format"),
])
def test_sql_user_errors_exit_2_with_one_line(spark, query_lake, args, message):
    result = sql(spark, args[0], "--lake", query_lake.root, *args[1:])
    assert result.exit_code == 2, result.output
    assert message in result.stderr and result.stderr.startswith("error: ") and result.stdout == ""
    if "TABLE_OR_VIEW" in message:
        assert "tables in" in result.stderr and "violations" in result.stderr


def test_sql_on_a_missing_lake_exits_2_before_spark(tmp_path):
    result = CliRunner().invoke(app, ["sql", "SELECT 1", "--lake", str(tmp_path / "nope")])
    assert result.exit_code == 2 and "no such lake" in result.stderr


# --- the cookbook: every query runs on the test lake ------------------------------------------------


def cookbook() -> list[tuple[str, str]]:
    """(question, SQL) for each ``### `` question of docs/cookbook.md, in order."""
    text = (DOCS / "cookbook.md").read_text()
    found = re.findall(r"^### (.+?)\n.*?^```sql\n(.*?)^```", text, flags=re.S | re.M)
    return [(q.strip(), s) for q, s in found]


def test_cookbook_has_ten_questions():
    assert len(cookbook()) == 10


@pytest.mark.spark
@pytest.mark.parametrize("question, query", cookbook(), ids=[q for q, _ in cookbook()])
def test_cookbook_query_runs(spark, query_lake, question, query):
    result = sql(spark, query, "--lake", query_lake.root, "--json")
    assert result.exit_code == 0, f"{question}\n{result.output}"
    assert result.stdout.strip(), f"{question}: no rows on the test lake"
