"""``moderation tables`` (the data dictionary of a lake), ``--version``, and ``--json`` on the list
and show commands. A tiny lake built with the Lake API: no Ray, no Spark."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pytest
from deltalake import write_deltalake
from typer.testing import CliRunner

from moderation import __version__
from moderation.cli import EXIT_CODES, app
from moderation.reporting.dictionary import describe_lake, type_name
from moderation.runs import RunRecord, write_run
from moderation.schemas import RUNS_SCHEMA, description
from moderation.storage.lake import Lake
from tests.conftest import POLICY_V1

runner = CliRunner()


@pytest.fixture
def lake(tmp_path: Path) -> Lake:
    lake = Lake(str(tmp_path / "lake"))
    write_run(lake, RunRecord(run_id="decide-1", kind="decide", status="succeeded", policy_id="catalog-safety",
                              policy_version=1))
    write_run(lake, RunRecord(run_id="backfill-1", kind="backfill", status="failed"))
    rows = pa.Table.from_pylist([{"run_id": "backfill-1", "item_id": f"i{i}", "modality": "text", "model_id": "m",
                                  "model_digest": "d", "content_hash": "h", "scored_at": 0} for i in range(3)])
    lake.append_chunk("scores", rows, app_id="moderation/backfill/backfill-1/m", version=0)
    lake.append_chunk("scores", rows.slice(0, 2), app_id="moderation/backfill/backfill-1/m", version=1)
    # A table the schemas do not know (descriptions: none), three deep.
    write_deltalake(lake.uri("eval/datasets/tiny"), pa.table({"example_id": ["a"], "modality": ["text"],
                                                              "label_hate": pa.array([1], pa.int8()), "extra": ["x"]}))
    return lake


def test_describe_lake_counts_rows_from_the_log_and_names_the_last_writer(lake):
    found = {t.name: t for t in describe_lake(lake.root)}
    assert sorted(found) == ["eval/datasets/tiny", "runs", "scores"]
    scores = found["scores"]
    assert (scores.rows, scores.files, scores.version) == (5, 2, 1)  # two chunks: versions 0 and 1
    assert scores.last_app_id == "moderation/backfill/backfill-1/m" and scores.last_operation == "WRITE"
    runs = found["runs"]
    assert runs.rows == 2 and runs.last_run_id == "backfill-1" and runs.last_operation == "MERGE"
    kind = next(c for c in runs.columns if c.name == "kind")
    assert kind.description == description(RUNS_SCHEMA.field("kind")) and kind.commented
    tiny = {c.name: c for c in found["eval/datasets/tiny"].columns}
    assert tiny["label_hate"].description.startswith("0/1 label") and not tiny["label_hate"].commented
    assert tiny["extra"].description is None and tiny["example_id"].type == "string"
    assert found["eval/datasets/tiny"].view == "eval_datasets_tiny"


def test_row_count_falls_back_to_the_parquet_footer(lake, monkeypatch):
    """A data file whose add action has no numRecords is counted from its footer."""
    import moderation.reporting.dictionary as d

    real = pa.table

    def no_stats(obj, *a, **k):
        t = real(obj, *a, **k)
        if "num_records" in t.column_names:
            t = t.set_column(t.column_names.index("num_records"), "num_records", pa.nulls(t.num_rows, pa.int64()))
        return t

    monkeypatch.setattr(d.pa, "table", no_stats)
    assert d.describe_table(lake, "scores").rows == 5


def test_tables_command_text_and_json(lake):
    result = runner.invoke(app, ["tables", "--lake", lake.root])
    assert result.exit_code == 0, result.output
    head = result.output.splitlines()
    assert head[0].split() == ["TABLE", "VERSION", "ROWS", "FILES", "LAST", "WRITER", "LAST", "COMMIT"]
    assert any(line.split()[:5] == ["scores", "1", "5", "2", "moderation/backfill/backfill-1/m"] for line in head)
    assert "runs (v1)" in result.output and description(RUNS_SCHEMA.field("catalog_version")) in result.output

    result = runner.invoke(app, ["tables", "--lake", lake.root, "runs", "--json"])
    assert result.exit_code == 0, result.output
    (runs,) = json.loads(result.output)
    assert runs["name"] == "runs" and runs["rows"] == 2 and runs["last_commit"]["run_id"] == "backfill-1"
    assert [c["name"] for c in runs["columns"]] == RUNS_SCHEMA.names
    assert all(c["description"] for c in runs["columns"])

    result = runner.invoke(app, ["tables", "--lake", lake.root, "nope"])
    assert result.exit_code == 2 and "nope: no such table" in result.output


def test_tables_write_comments_on_an_old_table(tmp_path: Path):
    lake = Lake(str(tmp_path / "lake"))
    write_deltalake(lake.uri("runs"), pa.Table.from_pylist(
        [{"run_id": "r", "kind": "decide", "status": "succeeded"}],
        schema=pa.schema([pa.field(f.name, f.type, f.nullable) for f in RUNS_SCHEMA])))
    (before,) = describe_lake(lake.root)
    assert not any(c.commented for c in before.columns) and all(c.description for c in before.columns)
    result = runner.invoke(app, ["tables", "--lake", lake.root, "--write-comments", "--json"])
    assert result.exit_code == 0, result.output
    (after,) = describe_lake(lake.root)
    assert all(c.commented for c in after.columns)


def test_version_and_the_exit_codes_in_help():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.startswith(f"moderation {__version__}")
    result = runner.invoke(app, ["--help"])
    assert "Exit codes: 0 success" in result.output and "docs/commands.md#exit-codes" in result.output
    assert set(EXIT_CODES) == {0, 1, 2, 3, 4, 130}


def test_runs_list_and_show_json(lake):
    result = runner.invoke(app, ["runs", "list", "--lake", lake.root, "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    assert {r["run_id"] for r in rows} == {"decide-1", "backfill-1"} and set(rows[0]) >= set(RUNS_SCHEMA.names)
    result = runner.invoke(app, ["runs", "show", "decide-1", "--lake", lake.root, "--json", "--no-check"])
    assert result.exit_code == 0, result.output
    shown = json.loads(result.output)
    assert shown["run"]["kind"] == "decide" and shown["reproducible"] is None and shown["checks"] == []


def test_models_list_and_policy_status_json(lake):
    result = runner.invoke(app, ["models", "list", "--json"])
    assert result.exit_code == 0, result.output
    models = json.loads(result.output)
    assert models and all({"model_id", "modality", "categories", "digest", "artifacts"} <= set(m) for m in models)
    result = runner.invoke(app, ["policy", "status", "--lake", lake.root, "--policy", str(POLICY_V1), "--json"])
    assert result.exit_code == 0, result.output
    status = json.loads(result.output)
    assert {"policy_id", "version", "declared", "effective"} <= set(status[0])


def test_eval_datasets_json(lake):
    result = runner.invoke(app, ["eval", "datasets", "--lake", lake.root, "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)[0]["name"] == "tiny"


def test_type_names():
    assert type_name(pa.map_(pa.string(), pa.float32())) == "map<string, float>"
    assert type_name(pa.list_(pa.string())) == "list<string>" and type_name(pa.int32()) == "int"
