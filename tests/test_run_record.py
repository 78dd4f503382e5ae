"""moderation.runs.record: the typed runs row, its shared parts, reading and writing one run.

No Ray: records are written to a lake in tmp_path.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import typing
from pathlib import Path

import pyarrow as pa
import pytest
from deltalake import DeltaTable, write_deltalake

from moderation.config import load_model_registry, load_policy
from moderation.runs import (
    RUN_COLUMNS,
    PolicyProvenance,
    RunRecord,
    RunTiming,
    code_version,
    new_run_id,
    read_row,
    read_run,
    write_run,
)
from moderation.schemas import RUNS_SCHEMA
from moderation.storage.lake import Lake

from .conftest import POLICY_V1

T0 = dt.datetime(2024, 5, 1, 12, 0, tzinfo=dt.UTC)


def _python_type(arrow: pa.DataType) -> object:
    if pa.types.is_string(arrow):
        return str
    if pa.types.is_integer(arrow):
        return int
    if pa.types.is_floating(arrow):
        return float
    if pa.types.is_boolean(arrow):
        return bool
    if pa.types.is_timestamp(arrow):
        return dt.datetime
    if pa.types.is_list(arrow) and pa.types.is_string(arrow.value_type):
        return tuple[str, ...]
    raise AssertionError(f"no Python type for {arrow}")


def full_record() -> RunRecord:
    """A record with every column set (a value of its type)."""
    values: dict[str, object] = {}
    for i, f in enumerate(RUNS_SCHEMA):
        py = _python_type(f.type)
        values[f.name] = {str: f"v{i}", int: i, float: i + 0.5, bool: True, dt.datetime: T0 + dt.timedelta(i)}.get(
            py, (f"a{i}", f"b{i}"))  # type: ignore[call-overload]
    return RunRecord(**values)  # type: ignore[arg-type]


def test_fields_are_the_runs_columns_in_order_with_matching_types():
    hints = typing.get_type_hints(RunRecord)
    names = [f.name for f in dataclasses.fields(RunRecord)]
    assert names == RUNS_SCHEMA.names == list(RUN_COLUMNS)
    for f in RUNS_SCHEMA:
        want = _python_type(f.type)
        assert hints[f.name] == (want if not f.nullable else want | None), f.name
    params = RunRecord.__dataclass_params__  # type: ignore[attr-defined]
    assert params.frozen and RunRecord.__dataclass_fields__["run_id"].kw_only


def test_to_row_and_from_row_round_trip():
    record = full_record()
    row = record.to_row()
    assert list(row) == RUNS_SCHEMA.names
    assert row["model_ids"] == list(record.model_ids or ())  # list columns as lists, as Arrow reads them
    assert RunRecord.from_row(row) == record
    # Through Arrow too: what the table stores reads back as the same record.
    table = pa.Table.from_pylist([row], schema=RUNS_SCHEMA)
    assert RunRecord.from_row(table.to_pylist()[0]) == record
    with pytest.raises(dataclasses.FrozenInstanceError):
        record.status = "failed"  # type: ignore[misc]
    assert record.replace(status="failed").status == "failed" and record.status != "failed"


def test_lists_given_become_tuples():
    record = RunRecord(run_id="r", kind="decide", status="succeeded", model_ids=["m1", "m2"])  # type: ignore[arg-type]
    assert record.model_ids == ("m1", "m2") and record.categories is None


def test_from_row_of_an_older_or_newer_table():
    older = {"run_id": "old", "kind": "backfill", "status": "succeeded", "catalog_version": 3}
    record = RunRecord.from_row(older)
    assert (record.run_id, record.catalog_version) == ("old", 3)
    assert record.policy_path is None and record.score_error_pairs is None and record.cascade is None
    newer = {**full_record().to_row(), "a_column_from_the_future": 1}
    assert RunRecord.from_row(newer) == full_record()


def test_policy_provenance_of_a_real_policy():
    registry = load_model_registry()
    loaded = load_policy(POLICY_V1, registry)
    models = [registry[m] for m in loaded.policy.models]
    prov = PolicyProvenance.of(loaded, models, path=POLICY_V1, scope=True)
    assert (prov.policy_id, prov.policy_version) == (loaded.policy.policy_id, loaded.policy.version)
    assert prov.policy_hash == loaded.content_hash and len(prov.policy_hash) == 64
    assert prov.policy_path == str(POLICY_V1)
    assert prov.model_ids == tuple(loaded.policy.models)
    assert prov.model_digests == tuple(registry[m].digest for m in loaded.policy.models)
    assert prov.modalities == tuple(sorted({m.modality for m in models}))
    assert prov.categories == tuple(sorted(loaded.policy.categories))
    # Without scope: no modalities / categories; without models: no model columns.
    plain = PolicyProvenance.of(loaded, models, path=str(POLICY_V1))
    assert set(plain.columns()) == {"policy_id", "policy_version", "policy_hash", "policy_path", "model_ids",
                                    "model_digests"}
    bare = PolicyProvenance.of(loaded, path=POLICY_V1)
    assert set(bare.columns()) == {"policy_id", "policy_version", "policy_hash", "policy_path"}
    record = RunRecord(run_id="d", kind="decide", status="succeeded", **prov.columns())
    assert record.model_digests == prov.model_digests and record.categories == prov.categories


def test_run_timing():
    timing = RunTiming.start(at=T0)
    assert timing.columns() == {"code_version": code_version(), "started_at": T0}
    ended = timing.ended(at=T0 + dt.timedelta(seconds=5))
    assert ended["ended_at"] - ended["started_at"] == dt.timedelta(seconds=5)
    assert RunTiming.start().ended()["ended_at"] >= RunTiming.start().started_at - dt.timedelta(seconds=1)


def test_new_run_id():
    run_id = new_run_id("decide")
    kind, stamp, rand = run_id.split("-")
    assert kind == "decide" and stamp.endswith("Z") and len(rand) == 6 and run_id != new_run_id("decide")


def test_write_run_then_read_run(tmp_path: Path):
    lake = Lake(str(tmp_path / "lake"))
    assert read_run(lake, "r1") is None  # no table yet
    running = RunRecord(run_id="r1", kind="backfill", status="running", model_ids=("m",), started_at=T0)
    write_run(lake, running)
    write_run(lake, RunRecord(run_id="r2", kind="decide", status="succeeded"))
    done = running.replace(status="succeeded", scored_pairs=3, ended_at=T0 + dt.timedelta(seconds=1))
    write_run(lake, done)  # merged on run_id: one row per run
    assert read_run(lake, "r1") == done and read_run(lake, "nope") is None
    assert lake.read("runs").num_rows == 2
    # The table holds exactly the row the record gives, and each commit names its run.
    got = lake.read("runs").to_pylist()
    assert {r["run_id"]: r for r in got}["r1"] == done.to_row()
    history = DeltaTable(lake.uri("runs")).history()
    assert [h["moderation.run_id"] for h in history[:3]] == ["r1", "r2", "r1"]


def test_read_row_keeps_columns_a_newer_table_has(tmp_path: Path):
    lake = Lake(str(tmp_path / "lake"))
    newer = pa.schema([*RUNS_SCHEMA, pa.field("exported_rows", pa.int64())])
    row = {**RunRecord(run_id="r", kind="export", status="succeeded").to_row(), "exported_rows": 4}
    write_deltalake(lake.uri("runs"), pa.Table.from_pylist([row], schema=newer))
    assert (read_row(lake, "r") or {})["exported_rows"] == 4
    record = read_run(lake, "r")
    assert record is not None and record.kind == "export"
    # Writing the record again keeps the table's extra column (merge on run_id updates known ones).
    write_run(lake, record.replace(status="failed"))
    assert read_row(lake, "r") == {**row, "status": "failed"}
