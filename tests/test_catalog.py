from __future__ import annotations

import pyarrow as pa
import pytest
from deltalake import write_deltalake

from moderation.catalog import INVALID_UTF8, WORK_COLUMNS, open_catalog, select_ids, to_work_rows
from moderation.errors import CatalogError


def _catalog(tmp_path, **cols) -> str:
    uri = str(tmp_path / "catalog")
    write_deltalake(uri, pa.table(cols))
    return uri


def test_open_catalog_pins_version_and_reads_columns(tmp_path):
    uri = _catalog(tmp_path, item_id=["a", "b"], item_type=["track", "show"], title=["x", "y"])
    snap = open_catalog(uri)
    assert snap.is_delta and snap.version == 0
    assert snap.columns == ["item_id", "item_type", "title"]


@pytest.mark.parametrize(
    ("cols", "match"),
    [
        ({"item_type": ["track"], "title": ["x"]}, r"missing required column\(s\) \['item_id'\]"),
        ({"item_id": ["a"], "item_type": ["track"]}, "none of the text columns"),
        ({"item_id": [1.5], "item_type": ["track"], "title": ["x"]}, "column 'item_id' has type double"),
        ({"item_id": ["a"], "item_type": ["track"], "title": ["x"], "markets": ["US"]}, "column 'markets'"),
    ],
)
def test_unusable_catalog_is_a_clear_error(tmp_path, cols, match):
    uri = _catalog(tmp_path, **cols)
    with pytest.raises(CatalogError, match=match) as e:
        open_catalog(uri)
    assert uri in str(e.value)


def test_missing_catalog(tmp_path):
    with pytest.raises(CatalogError, match="neither a Delta table nor readable Parquet"):
        open_catalog(str(tmp_path / "nothing"))


def test_where_selects_slice_and_rejects_bad_sql(tmp_path):
    uri = _catalog(tmp_path, item_id=["a", "b", "c"], item_type=["track", "show", "track"], title=["x", "y", "z"])
    snap = open_catalog(uri)
    assert sorted(select_ids(snap, "item_type = 'track'").to_pylist()) == ["a", "c"]
    with pytest.raises(CatalogError, match="not a valid SQL predicate"):
        select_ids(snap, "item_type = = 'track'")
    with pytest.raises(CatalogError, match="not a valid SQL predicate"):
        select_ids(snap, "no_such_column = 1")


def test_work_rows_fill_optional_columns():
    rows = to_work_rows(pa.table({"item_id": ["a"], "item_type": ["track"], "title": ["hi"]}), "text")
    assert rows.column_names == [*WORK_COLUMNS, "modality", INVALID_UTF8]
    assert rows.column(INVALID_UTF8).to_pylist() == [[]]
    assert rows.column("markets").to_pylist() == [None]
    assert rows.column("modality").to_pylist() == ["text"]
