from __future__ import annotations

import pyarrow as pa
import pytest
from deltalake import write_deltalake

from moderation.errors import CatalogError
from moderation.storage.catalog import INVALID_UTF8, WORK_COLUMNS, open_catalog, select_ids, to_work_rows


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


# Id types other than string (issue 15, point 8): exported numeric ids as decimal(38,0),
# binary ids, large strings. Each reads as the string id the rest of the pipeline keys on.


def _ids(snap) -> list:
    return [i for f in snap.files for t in snap.read(f, ["item_id"]) for i in t.column("item_id").to_pylist()]


def test_decimal_ids_read_as_their_integer_digits(tmp_path):
    from decimal import Decimal

    big = Decimal("12345678901234567890123456789012345678")  # 38 digits: past int64
    uri = _catalog(tmp_path, item_id=pa.array([big, Decimal(7), Decimal(-5), None], pa.decimal128(38, 0)),
                   title=["a", "b", "c", "d"])
    snap = open_catalog(uri)
    assert _ids(snap) == [str(big), "7", "-5", None]  # no ".0", no exponent
    assert sorted(select_ids(snap, "title IN ('a', 'b')").to_pylist()) == [str(big), "7"]
    assert to_work_rows(next(snap.read(snap.files[0], snap.columns)), "text").column("item_id").type == pa.string()


def test_parquet_catalog_with_decimal_ids(tmp_path):
    from decimal import Decimal

    import pyarrow.parquet as pq

    pq.write_table(pa.table({"item_id": pa.array([Decimal(10), Decimal(2)], pa.decimal128(20, 0)),
                             "title": ["a", "b"]}), tmp_path / "c.parquet")
    assert _ids(open_catalog(str(tmp_path / "c.parquet"))) == ["10", "2"]


def test_decimal_ids_with_a_scale_are_refused_naming_the_column(tmp_path):
    from decimal import Decimal

    uri = _catalog(tmp_path, track_no=pa.array([Decimal("12.50")], pa.decimal128(38, 2)), title=["a"])
    with pytest.raises(CatalogError, match=r"column 'item_id' \(catalog column 'track_no'\) has type "
                                           r"decimal128\(38, 2\).*needs scale 0") as e:
        open_catalog(uri, column_map={"item_id": "track_no"})
    assert uri in str(e.value)


def test_binary_ids_read_as_utf8_and_invalid_ones_are_quarantined(tmp_path):
    from moderation.scoring.selection import plan_selection

    uri = _catalog(tmp_path, item_id=pa.array([b"track:1", "caf\u00e9".encode(), b"bad\xc3(id", None], pa.binary()),
                   title=["a", "b", "c", "d"])
    snap = open_catalog(uri)
    ids = next(snap.read(snap.files[0], ["item_id"])).column("item_id")
    assert ids.type == pa.string()  # the invalid value keeps its bytes, for the quarantine to name
    assert ids.cast(pa.binary()).to_pylist() == [b"track:1", "caf\u00e9".encode(), b"bad\xc3(id", None]
    sel = plan_selection(snap, ["text"])
    # Not UTF-8: the same quarantine reason as a string id with invalid bytes; null: missing.
    assert sorted((r.reason, r.item_id or "") for r in sel.prelude["text"]) == [
        ("invalid_item_id", "bad\\xc3(id"), ("missing_item_id", "")]
    assert sel.stream_pairs == {"text": 2} and sel.selected("text") == 4
    assert sorted(select_ids(snap, "title IN ('a', 'b', 'c')").to_pylist()) == ["caf\u00e9", "track:1"]
    batch = next(snap.read(snap.files[0], snap.columns))
    assert sel.filter(batch, "text").column("item_id").to_pylist() == ["track:1", "caf\u00e9"]


@pytest.mark.parametrize("typ", [pa.large_string(), pa.large_binary(), pa.string_view()])
def test_large_and_view_string_ids(tmp_path, typ):
    import pyarrow.parquet as pq

    from moderation.scoring.selection import plan_selection

    pq.write_table(pa.table({"item_id": pa.array(["b", "a", "c"]).cast(typ), "title": ["x", "y", "z"]}),
                   tmp_path / "c.parquet")
    snap = open_catalog(str(tmp_path / "c.parquet"))
    assert snap.schema.field("item_id").type == typ  # the catalog's own type, read as string
    assert _ids(snap) == ["b", "a", "c"]
    sel = plan_selection(snap, ["text"], limit=2)  # --limit: the 2 smallest ids, compared as strings
    assert sel.keep_ids.to_pylist() == ["a", "b"] and sel.selected("text") == 2


def test_creator_show_and_album_ids_map_like_the_other_fields(tmp_path):
    """show_id and album_id are optional catalog fields: mapped from the catalog's own columns
    (``--map``), integer ids read as strings, null where the catalog lacks one (album_id here)."""
    uri = _catalog(tmp_path, item_id=["a", "b"], title=["x", "y"], artist=["c1", "c2"],
                   podcast=pa.array([7, None], pa.int64()))
    snap = open_catalog(uri, column_map={"creator_id": "artist", "show_id": "podcast"})
    assert snap.columns == ["item_id", "title", "creator_id", "show_id"]
    batch = next(snap.read(snap.files[0], snap.columns))
    rows = to_work_rows(batch, "text")
    assert rows.column("creator_id").to_pylist() == ["c1", "c2"]
    assert rows.column("show_id").to_pylist() == ["7", None]
    assert rows.column("album_id").to_pylist() == [None, None]
