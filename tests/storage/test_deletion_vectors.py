"""Delta tables with deletion vectors (Databricks turns them on for new tables): the catalog
reader yields their logical rows (deleted rows excluded) at the pinned version.

Besides the Databricks-written table in ../shared/data/delta, the tables here are built in
tmp_path: data files written by delta-rs, then commits that add deletion vectors written the
way the Delta protocol lays them out (RoaringTreemap serialised by pyroaring, on disk in
``deletion_vector_<uuid>.bin`` files with a CRC-32, or inline as Z85 text). Each test checks
the reader against what was deleted by construction and against a second reader: delta-rs's
DataFusion scan (``QueryBuilder``), which applies deletion vectors on its own.
"""

from __future__ import annotations

import json
import pickle
import shutil
import struct
import uuid
import zlib
from pathlib import Path

import pyarrow as pa
import pytest
from deltalake import DeltaTable, QueryBuilder, write_deltalake

from moderation.errors import CatalogError
from moderation.scoring.selection import plan_selection
from moderation.storage.catalog import open_catalog, select_ids

_Z85 = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.-:+=^!/*?&<>()[]{}@%$#"
_MAGIC = 1681511377  # RoaringBitmapArray "portable" format, Delta protocol


def _z85(data: bytes) -> str:
    data += b"\0" * (-len(data) % 4)
    out = []
    for i in range(0, len(data), 4):
        v = int.from_bytes(data[i:i + 4], "big")
        out.append("".join(_Z85[(v // 85 ** k) % 85] for k in range(4, -1, -1)))
    return "".join(out)


def _unz85(text: str) -> bytes:
    out = b""
    for i in range(0, len(text), 5):
        v = 0
        for c in text[i:i + 5]:
            v = v * 85 + _Z85.index(c)
        out += v.to_bytes(4, "big")
    return out


def _bitmap(rows) -> bytes:
    """Delta's serialised deletion vector: magic, then a 64-bit RoaringTreemap (count, then per
    high 32 bits its key and a portable 32-bit Roaring bitmap)."""
    from pyroaring import BitMap

    by_high: dict[int, list[int]] = {}
    for r in sorted(rows):
        by_high.setdefault(r >> 32, []).append(r & 0xFFFFFFFF)
    out = struct.pack("<iq", _MAGIC, len(by_high))
    for high, lows in sorted(by_high.items()):
        bm = BitMap(lows)
        bm.run_optimize()  # as Delta writers do: runs of deleted rows become run containers
        out += struct.pack("<I", high) + bm.serialize()
    return out


def _unbitmap(data: bytes) -> list[int]:
    """The inverse of ``_bitmap`` (the test's own decoder, independent of delta-kernel)."""
    from pyroaring import BitMap

    magic, count = struct.unpack_from("<iq", data)
    assert magic == _MAGIC
    pos, rows = 12, []
    for _ in range(count):
        (high,) = struct.unpack_from("<I", data, pos)
        bm = BitMap.deserialize(data[pos + 4:])
        rows += [(high << 32) | low for low in bm]
        pos += 4 + len(bm.serialize())
    return rows


def _dv_file(table: Path, descriptor: dict) -> Path:
    code = descriptor["pathOrInlineDv"]
    prefix, encoded = code[:-20], code[-20:]
    return table / prefix / f"deletion_vector_{uuid.UUID(bytes=_unz85(encoded))}.bin"


def _deletion_vector(table: Path, rows, *, inline: bool = False, prefix: str = "") -> dict:
    """Write one deletion vector deleting ``rows`` and return its descriptor."""
    data = _bitmap(rows)
    if inline:
        return {"storageType": "i", "pathOrInlineDv": _z85(data), "sizeInBytes": len(data),
                "cardinality": len(set(rows))}
    u = uuid.uuid4()
    descriptor = {"storageType": "u", "pathOrInlineDv": prefix + _z85(u.bytes), "offset": 1,
                  "sizeInBytes": len(data), "cardinality": len(set(rows))}
    path = _dv_file(table, descriptor)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x01" + struct.pack(">i", len(data)) + data + struct.pack(">I", zlib.crc32(data)))
    return descriptor


def _log(table: Path) -> list[Path]:
    return sorted((table / "_delta_log").glob("*.json"))


def _live_adds(table: Path) -> dict[str, dict]:
    adds: dict[str, dict] = {}
    for commit in _log(table):
        for line in commit.read_text().splitlines():
            action = json.loads(line)
            if "add" in action:
                adds[action["add"]["path"]] = action["add"]
            elif "remove" in action:
                adds.pop(action["remove"]["path"], None)
    return adds


def _commit_deletes(table: Path, deletes: dict[str, dict]) -> int:
    """Commit deletion vectors (data file path -> descriptor), as a DELETE by Databricks does:
    remove the file's add action, add it again with the new vector. Returns the new version."""
    version = int(_log(table)[-1].stem) + 1
    adds = _live_adds(table)
    protocol = DeltaTable(str(table)).protocol()
    lines = [{"commitInfo": {"timestamp": 1_700_000_000_000 + version, "operation": "DELETE"}}]
    if "deletionVectors" not in (protocol.reader_features or ()):
        readers = sorted({*(protocol.reader_features or ()), "deletionVectors",
                          *(["columnMapping"] if protocol.min_reader_version == 2 else [])})
        writers = sorted({*(protocol.writer_features or ()), *readers,
                          *(["invariants", "appendOnly"] if protocol.min_writer_version >= 2 else [])})
        lines.append({"protocol": {"minReaderVersion": 3, "minWriterVersion": 7, "readerFeatures": readers,
                                   "writerFeatures": writers}})
    for path, descriptor in deletes.items():
        old = adds[path]
        remove = {"path": path, "deletionTimestamp": 1_700_000_000_000, "dataChange": True,
                  "extendedFileMetadata": True, "partitionValues": old.get("partitionValues", {}),
                  "size": old["size"]}
        if "deletionVector" in old:
            remove["deletionVector"] = old["deletionVector"]
        lines += [{"remove": remove}, {"add": {**old, "dataChange": True, "deletionVector": descriptor}}]
    (table / "_delta_log" / f"{version:020d}.json").write_text("".join(json.dumps(a) + "\n" for a in lines))
    return version


def _rows(snapshot, fields, *, batch_rows: int = 4096) -> list[dict]:
    return [r for f in snapshot.files for t in snapshot.read(f, fields, batch_rows=batch_rows) for r in t.to_pylist()]


def _reference(uri: str, select: str, version: int | None = None) -> list[dict]:
    """The same rows through delta-rs's DataFusion engine, which applies deletion vectors."""
    reader = QueryBuilder().register("t", DeltaTable(uri, version=version)).execute(f"SELECT {select} FROM t")
    return pa.table(reader.read_all()).to_pylist()


def _key(rows):
    return sorted(rows, key=lambda r: tuple(str(v) for v in r.values()))


def _file_rows(table: Path) -> dict[str, list[str]]:
    """Data file path -> its item ids in file order (row positions are what a vector deletes)."""
    from urllib.parse import unquote

    import pyarrow.parquet as pq

    return {p: pq.read_table(table / unquote(p), columns=["item_id"]).column("item_id").to_pylist() for p in _live_adds(table)}


# --------------------------------------------------------------------------------------


def test_databricks_table_reads_logical_rows_at_each_version(data_dir):
    table = data_dir / "delta" / "table-with-dv-small"
    uri, cmap = str(table), {"item_id": "value", "title": "value"}
    snap = open_catalog(uri, column_map=cmap)
    assert snap.version == 1
    ids = sorted(int(r["item_id"]) for r in _rows(snap, ["item_id"], batch_rows=3))
    # Its commit deleted value IN (0, 9) through a vector in deletion_vector_<uuid>.bin.
    assert ids == list(range(1, 9))
    assert ids == sorted(r["value"] for r in _reference(uri, "value"))
    # The test's own decoder of the on-disk vector (pyroaring) agrees with the rows dropped.
    descriptor = _live_adds(table)[Path(snap.files[0].path).name]["deletionVector"]
    raw = _dv_file(table, descriptor).read_bytes()
    size = struct.unpack_from(">i", raw, descriptor["offset"])[0]
    assert _unbitmap(raw[descriptor["offset"] + 4:][:size]) == snap.files[0].deleted_rows.tolist() == [0, 9]
    # Version 0 (before the DELETE) still reads all ten rows.
    old = open_catalog(uri, version=0, column_map=cmap)
    assert sorted(int(r["item_id"]) for r in _rows(old, ["item_id"])) == list(range(10))


@pytest.fixture()
def three_files(tmp_path) -> Path:
    """Three data files: 'a' (70,000 rows in row groups of 10,000), 'b' (6 rows), 'c' (4 rows)."""
    from deltalake import WriterProperties

    table = tmp_path / "catalog"
    for name, n in (("a", 70_000), ("b", 6), ("c", 4)):
        write_deltalake(str(table), pa.table({"item_id": [f"{name}{i}" for i in range(n)],
                                              "title": [f"title {name}{i}" for i in range(n)]}),
                        mode="append", writer_properties=WriterProperties(max_row_group_size=10_000))
    return table


def _by_first_id(table: Path) -> dict[str, str]:
    return {ids[0][0]: path for path, ids in _file_rows(table).items()}


def test_vectors_on_some_files_inline_and_on_disk(three_files):
    table, uri = three_files, str(three_files)
    files = _by_first_id(table)
    # 'a': every other row below 10,000 (a bitmap container) and rows 66,000-67,999 (a run
    # container), across row groups and read batches; 'b': an inline vector; 'c': none.
    a_deleted = set(range(0, 10_000, 2)) | set(range(66_000, 68_000))
    b_deleted = {0, 5}
    from pyroaring import BitMap

    stats = BitMap.deserialize(_bitmap(a_deleted)[16:]).get_statistics()  # after magic, count, key
    assert (stats["n_bitset_containers"], stats["n_run_containers"]) == (1, 1)
    _commit_deletes(table, {files["a"]: _deletion_vector(table, a_deleted, prefix="ab"),
                            files["b"]: _deletion_vector(table, b_deleted, inline=True)})
    snap = open_catalog(uri)
    rows = _rows(snap, ["item_id", "title"], batch_rows=777)
    expected = ({f"a{i}" for i in range(70_000) if i not in a_deleted} | {"b1", "b2", "b3", "b4"}
                | {f"c{i}" for i in range(4)})
    assert len(rows) == len(expected) == 63_000 + 4 + 4
    assert {r["item_id"] for r in rows} == expected
    assert all(r["title"] == f"title {r['item_id']}" for r in rows)
    assert _key(rows) == _key(_reference(uri, "item_id, title"))
    assert sum(len(f.deleted_rows) for f in snap.files) == len(a_deleted) + len(b_deleted)
    # The snapshot travels to the Ray read tasks by pickle, vectors included.
    assert _key(_rows(pickle.loads(pickle.dumps(snap)), ["item_id", "title"])) == _key(rows)


def test_a_later_version_deletes_more_and_a_resume_reads_its_pinned_version(three_files):
    table, uri = three_files, str(three_files)
    files = _by_first_id(table)
    v1 = _commit_deletes(table, {files["b"]: _deletion_vector(table, {1, 2})})
    pinned = open_catalog(uri)  # what a run records: version v1 and its vectors
    v2 = _commit_deletes(table, {files["b"]: _deletion_vector(table, {1, 2, 4}),
                                 files["c"]: _deletion_vector(table, {3}, inline=True)})
    b_and_c = lambda rows: sorted(r["item_id"] for r in rows if r["item_id"][0] in "bc")  # noqa: E731
    at_v1 = ["b0", "b3", "b4", "b5", "c0", "c1", "c2", "c3"]
    at_v2 = ["b0", "b3", "b5", "c0", "c1", "c2"]
    assert pinned.version == v1 and b_and_c(_rows(pinned, ["item_id"])) == at_v1  # read after v2 landed
    resumed = open_catalog(uri, version=v1)  # a resume passes the version its run recorded
    assert resumed.files == pinned.files and b_and_c(_rows(resumed, ["item_id"])) == at_v1
    latest = open_catalog(uri)
    assert latest.version == v2 and b_and_c(_rows(latest, ["item_id"])) == at_v2
    for version, expected in ((v1, at_v1), (v2, at_v2)):
        assert b_and_c(_reference(uri, "item_id", version)) == expected
    # The run's selection counts only the logical rows (the accounting invariant's left side).
    assert plan_selection(latest, ["text"]).selected("text") == 70_000 + 6
    assert sorted(select_ids(latest, "item_id LIKE 'b%'").to_pylist()) == ["b0", "b3", "b5"]


def test_partitioned_table_with_vectors(tmp_path):
    table, uri = tmp_path / "catalog", str(tmp_path / "catalog")
    write_deltalake(uri, pa.table({"item_id": [f"i{i}" for i in range(8)], "title": ["t"] * 8,
                                   "item_type": ["track", "pod cast/ep"] * 4}), partition_by=["item_type"])
    (path,) = [p for p, a in _live_adds(table).items() if a["partitionValues"]["item_type"] == "pod cast/ep"]
    ids = _file_rows(table)[path]
    _commit_deletes(table, {path: _deletion_vector(table, {1, 2})})
    snap = open_catalog(uri)
    rows = _rows(snap, ["item_id", "item_type"])
    assert sorted(r["item_id"] for r in rows) == sorted({f"i{i}" for i in range(8)} - {ids[1], ids[2]})
    assert {r["item_type"] for r in rows if r["item_id"] == ids[0]} == {"pod cast/ep"}
    assert _key(rows) == _key(_reference(uri, "item_id, item_type"))
    # Reading only the partition column (no column from the file) still drops the deleted rows.
    assert sum(t.num_rows for f in snap.files for t in snap.read(f, ["item_type"])) == 6


def test_column_mapped_databricks_table_with_a_vector(data_dir, tmp_path):
    table = tmp_path / "cm"
    shutil.copytree(data_dir / "delta" / "table_with_column_mapping", table)
    cmap = {"item_id": "Super Name", "title": "Super Name", "item_type": "Company Very Short"}
    before = _rows(open_catalog(str(table), column_map=cmap), ["item_id", "item_type"])
    path = max(_live_adds(table), key=lambda p: _live_adds(table)[p]["size"])
    _commit_deletes(table, {path: _deletion_vector(table, {0})})
    snap = open_catalog(str(table), column_map=cmap)
    rows = _rows(snap, ["item_id", "item_type"])
    assert len(rows) == len(before) - 1 == 4
    assert _key(rows) == _key(_reference(str(table), '"Super Name" AS item_id, "Company Very Short" AS item_type'))


def test_an_unreadable_vector_is_refused_not_skipped(three_files):
    table = three_files
    descriptor = _deletion_vector(table, {0})
    _commit_deletes(table, {_by_first_id(table)["b"]: descriptor})
    _dv_file(table, descriptor).unlink()
    with pytest.raises(CatalogError, match=r"deletion vectors of version 3 cannot be read.*File not found") as e:
        open_catalog(str(table))
    assert str(table) in str(e.value)


def test_reader_features_still_unsupported_are_refused_by_name(tmp_path):
    table, uri = tmp_path / "catalog", str(tmp_path / "catalog")
    write_deltalake(uri, pa.table({"item_id": ["a"], "title": ["x"]}))
    (table / "_delta_log" / f"{1:020d}.json").write_text(json.dumps({"protocol": {
        "minReaderVersion": 3, "minWriterVersion": 7, "readerFeatures": ["deletionVectors", "typeWidening"],
        "writerFeatures": ["deletionVectors", "typeWidening"]}}) + "\n")
    with pytest.raises(CatalogError, match=r"reader feature\(s\) \['typeWidening'\] that this reader does not") as e:
        open_catalog(uri)
    assert uri in str(e.value)


def test_rescan_change_feed_lists_rows_a_vector_deleted(tmp_path):
    from moderation.scoring.rescan import cdf_item_ids

    table, uri = tmp_path / "catalog", str(tmp_path / "catalog")
    write_deltalake(uri, pa.table({"item_id": ["a", "b", "c"], "title": ["x", "y", "z"]}),
                    configuration={"delta.enableChangeDataFeed": "true"})
    (path,) = _live_adds(table)
    _commit_deletes(table, {path: _deletion_vector(table, {_file_rows(table)[path].index("b")})})
    snap = open_catalog(uri)
    assert sorted(r["item_id"] for r in _rows(snap, ["item_id"])) == ["a", "c"]
    ids, why = cdf_item_ids(snap, 0)  # a re-scan through the feed sees the vector's delete
    assert why == "" and ids.to_pylist() == ["b"]
