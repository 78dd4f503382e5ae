"""Catalog tables as other engines write them (../shared/data/delta, written by Spark,
Databricks and delta-rs), read through the catalog column mapping; schema drift between
catalog versions. The reader is exercised directly (no Ray): what it yields is what the
pipeline's read tasks stream."""

from __future__ import annotations

import pyarrow as pa
import pytest
from deltalake import DeltaTable, QueryBuilder, write_deltalake

from moderation.errors import CatalogError
from moderation.runs import read_run
from moderation.storage.catalog import open_catalog


@pytest.fixture(scope="module")
def delta_dir(data_dir):
    d = data_dir / "delta"
    assert d.is_dir(), f"{d} missing"
    return d


def _rows(snapshot, fields=None) -> list[dict]:
    fields = fields or snapshot.columns
    return [r for f in snapshot.files for t in snapshot.read(f, fields) for r in t.to_pylist()]


def _reference(uri: str, select: str) -> list[dict]:
    """The same rows through delta-rs's own query engine (DataFusion): the reference reader."""
    reader = QueryBuilder().register("t", DeltaTable(uri)).execute(f"SELECT {select} FROM t")
    return pa.table(reader.read_all()).to_pylist()


def _key(rows):
    return sorted(rows, key=lambda r: tuple(str(v) for v in r.values()))


def test_column_mapping_table_reads_logical_names_with_values(delta_dir):
    # Physical column names in the files (col-…) differ from the logical ones; the partition
    # column's values live only in the log. Ray's read_delta / to_pyarrow_dataset read the
    # data column here as all nulls, which is why the catalog reader resolves files itself.
    uri = str(delta_dir / "table_with_column_mapping")
    snap = open_catalog(uri, column_map={"item_id": "Super Name", "title": "Super Name",
                                         "item_type": "Company Very Short"})
    rows = _rows(snap, ["item_id", "item_type", "title"])
    expected = _reference(uri, '"Super Name" AS item_id, "Company Very Short" AS item_type, "Super Name" AS title')
    assert len(rows) == 5 and all(r["item_id"] for r in rows)
    assert _key(rows) == _key(expected)
    assert snap.physical["title"].startswith("col-")


def test_partitioned_table_gets_partition_values_from_the_log(delta_dir):
    uri = str(delta_dir / "delta-0.8.0-partitioned")
    snap = open_catalog(uri, column_map={"item_id": "value", "title": "value", "item_type": "year",
                                         "language": "month"})
    rows = _rows(snap, ["item_id", "item_type", "language"])
    expected = _reference(uri, "value AS item_id, year AS item_type, month AS language")
    assert len(rows) == 7 and _key(rows) == _key(expected)


def test_checkpointed_table_reads_the_latest_version_and_integer_ids(delta_dir):
    uri = str(delta_dir / "simple_table_with_checkpoint")
    snap = open_catalog(uri, column_map={"item_id": "version", "title": "version"})
    assert snap.version == 10
    ids = sorted(r["item_id"] for r in _rows(snap, ["item_id"]))
    expected = sorted(str(r["version"]) for r in _reference(uri, "version"))
    assert ids == expected and all(isinstance(i, str) for i in ids)


def test_change_data_feed_table_reads_current_rows_only(delta_dir):
    uri = str(delta_dir / "cdf-table")
    snap = open_catalog(uri, column_map={"item_id": "id", "title": "name"})
    rows = _rows(snap, ["item_id", "title"])
    expected = _reference(uri, "CAST(id AS VARCHAR) AS item_id, name AS title")
    assert len(rows) == 9 and _key(rows) == _key(expected)  # _change_data files are not data


def test_deletion_vectors_table_reads_its_logical_rows(delta_dir):
    # Deleted rows excluded (tests/storage/test_deletion_vectors.py covers more shapes).
    uri = str(delta_dir / "table-with-dv-small")
    snap = open_catalog(uri, column_map={"item_id": "value", "title": "value"})
    rows = _rows(snap, ["item_id"])
    expected = _reference(uri, "CAST(value AS VARCHAR) AS item_id")
    assert len(rows) == 8 and _key(rows) == _key(expected)


def test_column_mapping_errors_name_field_and_column(delta_dir):
    uri = str(delta_dir / "cdf-table")
    with pytest.raises(CatalogError, match=r"item_id=ident: the catalog has no column 'ident'"):
        open_catalog(uri, column_map={"item_id": "ident", "title": "name"})
    with pytest.raises(CatalogError, match=r"'headline' is not a catalog field"):
        open_catalog(uri, column_map={"item_id": "id", "headline": "name"})
    with pytest.raises(CatalogError, match=r"column 'title' \(catalog column 'birthday'\)|missing required"):
        open_catalog(uri, column_map={"title": "name"})  # no item_id at all


def test_schema_drift_between_catalog_versions(tmp_path):
    uri = str(tmp_path / "catalog")
    write_deltalake(uri, pa.table({"item_id": ["a", "b"], "title": ["x", "y"]}))
    # v1 adds a column (schema evolution): files written before it read it as null.
    write_deltalake(uri, pa.table({"item_id": ["c"], "title": ["z"], "language": ["de"]}), mode="append",
                    schema_mode="merge")
    snap = open_catalog(uri)
    rows = {r["item_id"]: r for r in _rows(snap, ["item_id", "title", "language"])}
    assert rows == {"a": {"item_id": "a", "title": "x", "language": None},
                    "b": {"item_id": "b", "title": "y", "language": None},
                    "c": {"item_id": "c", "title": "z", "language": "de"}}
    # A resume pins the version its run read, whatever the table became since.
    old = open_catalog(uri, version=0)
    assert old.version == 0 and "language" not in old.schema.names
    assert sorted(r["item_id"] for r in _rows(old, ["item_id"])) == ["a", "b"]
    # v2 changes a required column's type: unusable as a whole, refused before any write.
    write_deltalake(uri, pa.table({"item_id": [1.5], "title": ["w"]}), mode="overwrite", schema_mode="overwrite")
    with pytest.raises(CatalogError, match=r"column 'item_id' has type double"):
        open_catalog(uri)
    assert open_catalog(uri, version=1).version == 1  # the older versions stay readable


def test_parquet_folder_catalog(tmp_path):
    import pyarrow.parquet as pq

    folder = tmp_path / "pq"
    folder.mkdir()
    pq.write_table(pa.table({"item_id": ["a"], "title": ["x"]}), folder / "part-0.parquet")
    pq.write_table(pa.table({"item_id": ["b"], "title": ["y"]}), folder / "part-1.parquet")
    snap = open_catalog(str(folder))
    assert not snap.is_delta and snap.version is None and len(snap.files) == 2
    assert sorted(r["item_id"] for r in _rows(snap, ["item_id"])) == ["a", "b"]


@pytest.mark.integration
@pytest.mark.timeout(300)
def test_backfill_through_the_column_mapping(delta_dir, tmp_path):
    """The command a user runs, end to end (its own local Ray): the Spark-written,
    column-mapped, partitioned table is scored through --map. (Deletion-vector tables go
    through the same per-file reader the read tasks call: tests/storage/test_deletion_vectors.py.)"""
    import subprocess
    import sys

    from moderation.storage.lake import Lake
    from tests.conftest import POLICY_V1

    lake = tmp_path / "lake"
    base = [sys.executable, "-m", "moderation.cli", "backfill", "--lake", str(lake), "--policy", str(POLICY_V1)]
    ok = subprocess.run(base + ["--catalog", str(delta_dir / "table_with_column_mapping"), "--run-id", "cm",
                                "--map", "item_id=Super Name", "--map", "title=Super Name",
                                "--map", "item_type=Company Very Short"],
                        capture_output=True, text=True, timeout=280)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    scores = Lake(str(lake)).read("scores").to_pylist()
    assert sorted(r["item_id"] for r in scores) == sorted(
        r["item_id"] for r in _reference(str(delta_dir / "table_with_column_mapping"), '"Super Name" AS item_id'))
    assert {r["item_type"] for r in scores} == {"BMS", "BME"}
    assert read_run(Lake(str(lake)), "cm").catalog_columns == (
        "item_id=Super Name", "item_type=Company Very Short", "title=Super Name")
