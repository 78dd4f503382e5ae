"""The driver-side selection: ids that cannot key a scores row are quarantined once, the
streamed pairs are counted, --limit is deterministic. No Ray: plain pyarrow over real files."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from deltalake import write_deltalake

from moderation.errors import CatalogError
from moderation.scoring.selection import plan_selection
from moderation.storage.catalog import open_catalog


def bad_utf8(values: list[bytes | None]) -> pa.Array:
    """A string array holding raw bytes as given (pyarrow does not validate on construction)."""
    data = b"".join(v or b"" for v in values)
    offsets = np.cumsum([0] + [len(v or b"") for v in values]).astype(np.int32)
    validity = pa.array([v is not None for v in values]).buffers()[1]
    return pa.Array.from_buffers(pa.string(), len(values), [validity, pa.py_buffer(offsets.tobytes()),
                                                            pa.py_buffer(data)])


def _streamed(snapshot, selection, modality):
    return [r["item_id"] for f in snapshot.files for t in snapshot.read(f, snapshot.columns)
            for r in selection.filter(t, modality).to_pylist()]


def test_bad_ids_are_quarantined_once_and_never_streamed(tmp_path):
    folder = tmp_path / "cat"
    folder.mkdir()
    # Two files: the duplicate spans them; one id is not valid UTF-8; two rows have no id.
    pq.write_table(pa.table({
        "item_id": bad_utf8([b"a", b"dup", None, b"b\xff", b"c"]),
        "title": ["t"] * 5,
        "cover_image": ["x.jpg", None, "y.jpg", "z.jpg", ""],
    }), folder / "part-0.parquet")
    pq.write_table(pa.table({
        "item_id": ["dup", "  ", "d"], "title": ["t"] * 3, "cover_image": ["w.jpg", None, None],
    }), folder / "part-1.parquet")
    snap = open_catalog(str(folder))
    sel = plan_selection(snap, ["text", "image"])
    assert sel.rows_scanned == 8
    assert sorted(_streamed(snap, sel, "text")) == ["a", "c", "d"]
    assert sorted(_streamed(snap, sel, "image")) == ["a"]
    assert sel.stream_pairs == {"text": 3, "image": 1}
    text = sorted((r.reason, r.item_id) for r in sel.prelude["text"])
    assert text == sorted([("duplicate_item_id", "dup"), ("invalid_item_id", "b\\xff"),
                           ("missing_item_id", None), ("missing_item_id", None)])
    image = sorted((r.reason, r.item_id) for r in sel.prelude["image"])
    # dup has a cover on one of its rows, the null-id row with y.jpg, b\xff has z.jpg
    assert image == sorted([("duplicate_item_id", "dup"), ("invalid_item_id", "b\\xff"), ("missing_item_id", None)])
    assert sel.selected("text") == 3 + 4 and sel.selected("image") == 1 + 3
    assert "2 rows" in next(r.detail for r in sel.prelude["text"] if r.reason == "duplicate_item_id")


def test_limit_takes_the_smallest_ids_and_where_intersects(tmp_path):
    uri = str(tmp_path / "cat")
    ids = [f"i{n:03d}" for n in range(50)]
    write_deltalake(uri, pa.table({"item_id": ids[25:], "title": ["t"] * 25}))
    write_deltalake(uri, pa.table({"item_id": ids[:25], "title": ["t"] * 25}), mode="append")
    snap = open_catalog(uri)
    sel = plan_selection(snap, ["text"], limit=7)
    assert sorted(_streamed(snap, sel, "text")) == ids[:7] and sel.selected("text") == 7
    keep = pa.array(ids[10:20], pa.string())
    sel = plan_selection(snap, ["text"], keep_ids=keep, limit=3)
    assert sorted(_streamed(snap, sel, "text")) == ids[10:13]


def test_skip_ids_drop_committed_items(tmp_path):
    uri = str(tmp_path / "cat")
    write_deltalake(uri, pa.table({"item_id": ["a", "b", "c"], "title": ["t"] * 3}))
    snap = open_catalog(uri)
    sel = plan_selection(snap, ["text"])
    t = next(snap.read(snap.files[0], snap.columns))
    assert sel.filter(t, "text", pa.array(["b"])).column("item_id").to_pylist() == ["a", "c"]


def test_catalog_without_any_usable_id_is_refused(tmp_path):
    uri = str(tmp_path / "cat")
    write_deltalake(uri, pa.table({"item_id": pa.array([None, None], pa.string()), "title": ["t", "u"]}))
    with pytest.raises(CatalogError, match="no row has a usable item_id"):
        plan_selection(open_catalog(uri), ["text"])
