"""The data dictionary's source: every column of every lake table schema carries a description,
and the column comments reach the Delta tables without breaking tables written before them."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest
from deltalake import DeltaTable, write_deltalake

from moderation import schemas
from moderation.reporting import report as reporting
from moderation.runs import RunRecord, write_run
from moderation.schemas import COMMENT, LAKE_SCHEMAS, RUNS_SCHEMA, SCORES_SCHEMA, TABLE_SCHEMAS, description
from moderation.storage.lake import Lake, conform

#: Every pa.Schema the project defines for a table, a report or a summary.
ALL_SCHEMAS = {
    **{f"schemas.{k}": v for k, v in vars(schemas).items() if isinstance(v, pa.Schema)},
    "reporting.DIFF_TOTALS_SCHEMA": reporting.DIFF_TOTALS_SCHEMA,
}


def test_every_column_of_every_schema_has_a_description():
    missing = [f"{name}.{f.name}" for name, schema in ALL_SCHEMAS.items() for f in schema
               if not (description(f) or "").strip()]
    assert not missing, f"columns without a description (pass one to schemas.col): {missing}"
    assert set(TABLE_SCHEMAS) <= set(LAKE_SCHEMAS) and "hash_bank" in LAKE_SCHEMAS


def test_columns_unioned_by_datafusion_share_one_description():
    """The run accounting and the re-scan plan UNION scores, quarantine and removals columns in
    DataFusion, which refuses differing field metadata where nullability differs too."""
    tables = [TABLE_SCHEMAS[t] for t in ("scores", "quarantine", "removals")]
    shared = set(TABLE_SCHEMAS["scores"].names) & set(TABLE_SCHEMAS["quarantine"].names)
    assert shared == {"run_id", "item_id", "modality", "model_id", "content_hash"}
    for name in shared:
        texts = {description(s.field(name)) for s in tables if name in s.names}
        assert len(texts) == 1, (name, texts)


def test_run_accounting_over_commented_tables_of_different_nullability(tmp_path: Path):
    from moderation.scoring.run import run_accounting

    lake = Lake(str(tmp_path / "lake"))
    row = {"run_id": "r", "modality": "text", "model_id": "m", "scored_at": 0, "quarantined_at": 0,
           "model_digest": "d", "content_hash": "h", "stage": "score", "reason": "score_error"}
    for i in range(2):  # two files per table
        lake.append_chunk("scores", pa.Table.from_pylist([{**row, "item_id": f"s{i}"}]), app_id="a", version=i)
        lake.append_chunk("quarantine", pa.Table.from_pylist([{**row, "item_id": f"q{i}"}]), app_id="a", version=i)
    assert run_accounting(lake, "r") == (2, 2, 0)


def test_conform_keeps_the_descriptions():
    rows = pa.table({"run_id": ["r"], "kind": ["decide"], "status": ["running"]})
    out = conform(rows, RUNS_SCHEMA)
    assert out.schema.field("kind").metadata == RUNS_SCHEMA.field("kind").metadata
    assert description(out.schema.field("kind")).startswith("`backfill`")


def _stripped(schema: pa.Schema) -> pa.Schema:
    return pa.schema([pa.field(f.name, f.type, f.nullable) for f in schema])


def _comments(uri: str) -> dict[str, str | None]:
    return {f.name: (f.metadata or {}).get(COMMENT) for f in DeltaTable(uri).schema().fields}


def test_a_new_table_carries_the_descriptions_as_column_comments(tmp_path: Path):
    lake = Lake(str(tmp_path / "lake"))
    write_run(lake, RunRecord(run_id="r1", kind="decide", status="running"))
    comments = _comments(lake.uri("runs"))
    assert comments["kind"] == description(RUNS_SCHEMA.field("kind"))
    assert all(comments[f.name] for f in RUNS_SCHEMA)
    # Our commits record who wrote them (what `moderation tables` shows as the last writer).
    assert DeltaTable(lake.uri("runs")).history(1)[0]["moderation.run_id"] == "r1"


def test_a_table_written_before_the_descriptions_still_takes_appends(tmp_path: Path):
    """An old scores table without comments (and without the issue-13 columns): appends work, the
    added columns get their comments, the old ones keep none until --write-comments."""
    lake = Lake(str(tmp_path / "lake"))
    old = _stripped(pa.schema([f for f in SCORES_SCHEMA if f.name not in ("coverage", "coverage_reason")]))
    row = {"run_id": "r0", "item_id": "a", "modality": "text", "model_id": "m", "model_digest": "d",
           "content_hash": "h", "scored_at": pa.scalar(0, schemas.TS).as_py()}
    write_deltalake(lake.uri("scores"), pa.Table.from_pylist([row], schema=old))
    assert lake.append_chunk("scores", pa.Table.from_pylist([{**row, "run_id": "r1"}]), app_id="app/r1", version=0)
    assert lake.read("scores").num_rows == 2
    comments = _comments(lake.uri("scores"))
    assert comments["coverage"] == description(SCORES_SCHEMA.field("coverage"))  # added by schema evolution
    assert comments["item_id"] is None
    assert DeltaTable(lake.uri("scores")).history(1)[0]["moderation.app_id"] == "app/r1"

    changed = lake.write_comments("scores", SCORES_SCHEMA)
    assert "item_id" in changed and "coverage" not in changed
    assert all(_comments(lake.uri("scores"))[f.name] == description(f) for f in SCORES_SCHEMA)
    assert lake.write_comments("scores", SCORES_SCHEMA) == []
    # ... and still takes appends and replaces afterwards.
    assert lake.append_chunk("scores", pa.Table.from_pylist([{**row, "run_id": "r2"}]), app_id="app/r2", version=0)
    lake.replace_where("scores", pa.Table.from_pylist([{**row, "run_id": "r2", "item_id": "b"}]),
                       predicate="run_id = 'r2'")
    assert sorted(lake.read("scores").column("item_id").to_pylist()) == ["a", "a", "b"]


def test_write_comments_of_a_missing_table_is_an_error(tmp_path: Path):
    from moderation.errors import LakeError

    with pytest.raises(LakeError, match="does not exist"):
        Lake(str(tmp_path)).write_comments("scores", SCORES_SCHEMA)
