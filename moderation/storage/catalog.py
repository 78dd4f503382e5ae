"""The catalog: a Delta table (or a Parquet file/folder) of items with their text and media.

``open_catalog`` pins the snapshot a run reads (the Delta version is recorded in ``runs``),
resolves the exact data files of that snapshot, maps the catalog's own column names onto the
catalog fields (``catalog_columns`` in the run profile or ``--map`` on the command line), and
checks the columns the pipeline needs before anything is written.

Delta tables are read from the snapshot's add actions, not through a generic Parquet reader,
so that what Spark/Databricks write is read exactly: column mapping (physical column names in
the files differ from the logical ones), partition columns (values live in the log, not the
files), checkpoints, change data feed (its ``_change_data`` files are not data files), schema
evolution (files written before a column was added read it as null) and deletion vectors (the
rows a file's vector deletes at the pinned version are dropped as the file is read, so a
resume pinned to the same version reads the same rows). Reader features that cannot be
honoured here are refused with a clear error naming them.
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING
from urllib.parse import unquote

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.types as pat

from moderation.errors import CatalogError
from moderation.modalities import INPUT_COLUMNS, MEDIA_COLUMNS, MODALITY_INPUTS, TEXT_COLUMNS
from moderation.schemas import CATALOG_SCHEMA, REQUIRED_CATALOG_COLUMNS
from moderation.storage.lake import arrow_filesystem, join_uri, storage_options

if TYPE_CHECKING:
    import numpy as np

#: The catalog ids ``scores`` carries for the report's roll-ups (issue 17; null where the catalog lacks them).
ROLLUP_ID_COLUMNS = ("creator_id", "show_id", "album_id")
#: Columns copied from the catalog into each (item, modality) work row: every modality's input
#: fields (``moderation.modalities.MODALITY_COLUMNS``: the text fields, the media URIs).
WORK_COLUMNS = ("item_id", "item_type", "language", "markets", "explicit", *INPUT_COLUMNS, *ROLLUP_ID_COLUMNS)
#: Column in work rows naming fields whose bytes were not valid UTF-8 (see ``to_work_rows``).
INVALID_UTF8 = "invalid_utf8_fields"

#: Delta reader features this reader honours. Anything else a table declares is refused.
SUPPORTED_READER_FEATURES = frozenset(
    {"columnMapping", "deletionVectors", "timestampNtz", "v2Checkpoint", "vacuumProtocolCheck"})


def _as_string_ok(t: pa.DataType) -> bool:
    """Types a string field accepts and reads as their canonical string (integer ids, dates)."""
    return pat.is_integer(t) or pat.is_date(t)


def _is_binary(t: pa.DataType) -> bool:
    return pat.is_binary(t) or pat.is_large_binary(t) or pat.is_binary_view(t)


def _id_as_string_ok(t: pa.DataType) -> bool:
    """Further types ``item_id`` accepts: whole-number decimals (exported numeric ids, read as
    their digits) and binary (read as UTF-8; a value that is not is quarantined as
    ``invalid_item_id`` like any other non-UTF-8 id)."""
    return (pat.is_decimal(t) and t.scale == 0) or _is_binary(t)


def _id_to_string(col: pa.ChunkedArray | pa.Array) -> pa.ChunkedArray | pa.Array:
    """An ``item_id`` column as ``string``. Binary is reinterpreted, not validated, so invalid
    UTF-8 reaches ``utf8_sanitize`` (and the quarantine) instead of failing the whole batch."""
    t = col.type
    if pat.is_string(t):
        return col
    if _is_binary(t):
        as_text = pa.large_string() if pat.is_large_binary(t) else pa.string()
        if pat.is_binary_view(t):
            col = col.cast(pa.binary())
        col = col.view(as_text) if isinstance(col, pa.Array) else pa.chunked_array(
            [c.view(as_text) for c in col.chunks], as_text)
    return pc.cast(col, pa.string())


@dataclass(frozen=True)
class CatalogFile:
    """One data file of the snapshot, the partition values the log gives it and the rows its
    deletion vector deletes at the snapshot's version."""

    path: str  # absolute URI
    partition: tuple[tuple[str, str | None], ...] = ()  # (catalog field, raw value)
    #: The rows the file's deletion vector deletes (see ``deleted_rows``), packed by
    #: ``pack_rows``; empty when it has none. Compressed bytes keep the snapshot small: it is
    #: pickled to every read task.
    deleted: bytes = b""

    @property
    def deleted_rows(self) -> np.ndarray:
        """Positions (0-based, in file order) of the deleted rows, sorted, as uint64."""
        import numpy as np

        if not self.deleted:
            return np.zeros(0, dtype=np.uint64)
        return np.cumsum(np.frombuffer(zlib.decompress(self.deleted), dtype="<u8"), dtype=np.uint64)


def pack_rows(rows: np.ndarray) -> bytes:
    """Sorted row positions -> ``CatalogFile.deleted`` (deflated gaps: runs and regular
    patterns of deleted rows shrink to almost nothing)."""
    import numpy as np

    if not len(rows):
        return b""
    return zlib.compress(np.diff(rows.astype(np.uint64), prepend=np.uint64(0)).astype("<u8").tobytes(), 1)


@dataclass(frozen=True)
class CatalogSnapshot:
    """A pinned, validated view of the catalog. Picklable (shipped to Ray read tasks)."""

    uri: str
    version: int | None  # Delta version; None for plain Parquet
    is_delta: bool
    #: Catalog field -> the catalog's own (logical) column name, for every field it provides.
    source: dict[str, str]
    #: Catalog field -> column name inside the data files (differs under Delta column mapping).
    physical: dict[str, str]
    #: The provided fields under their catalog names, with the catalog's own types.
    schema: pa.Schema
    files: tuple[CatalogFile, ...] = ()
    partition_fields: frozenset[str] = field(default_factory=frozenset)

    @property
    def columns(self) -> list[str]:
        return [c for c in WORK_COLUMNS if c in self.schema.names]

    def has_modality(self, modality: str) -> bool:
        """Whether the catalog can hold this modality at all (text: always)."""
        return modality not in MEDIA_COLUMNS or MEDIA_COLUMNS[modality] in self.schema.names

    def read(self, catalog_file: CatalogFile, fields: list[str], *, batch_rows: int = 4096) -> Iterator[pa.Table]:
        """Rows of one data file as catalog fields (``fields`` it provides), batch by batch.

        Columns missing from an older file (added later by schema evolution) come back as nulls;
        partition values come from the log; integer ids become strings.
        """
        import pyarrow.parquet as pq

        fields = [f for f in fields if f in self.source]
        part = dict(catalog_file.partition)
        data_fields = [f for f in fields if f not in self.partition_fields]
        fs, path = arrow_filesystem(catalog_file.path)
        try:
            pf = pq.ParquetFile(path, filesystem=fs) if fs is not None else pq.ParquetFile(path)
        except (OSError, pa.ArrowInvalid) as e:
            raise CatalogError(f"catalog {self.uri}: data file {catalog_file.path} cannot be read: {e}") from e
        in_file = set(pf.schema_arrow.names)
        read_cols = [self.physical[f] for f in data_fields if self.physical[f] in in_file]
        deleted = catalog_file.deleted_rows
        if len(deleted) and int(deleted[-1]) >= pf.metadata.num_rows:
            raise CatalogError(f"catalog {self.uri} version {self.version}: the deletion vector of data file "
                               f"{catalog_file.path} deletes row {int(deleted[-1])} but the file has "
                               f"{pf.metadata.num_rows} rows")
        start = 0  # file position of the batch's first row: a deletion vector names rows by position
        for rb in pf.iter_batches(batch_size=batch_rows, columns=read_cols):
            raw = pa.Table.from_batches([rb])
            raw, start = _drop_deleted(raw, deleted, start)
            if raw.num_rows:
                yield self._normalize(raw, fields, part)

    def _normalize(self, raw: pa.Table, fields: list[str], part: dict[str, str | None]) -> pa.Table:
        n = raw.num_rows
        cols: dict[str, pa.ChunkedArray | pa.Array] = {}
        for f in fields:
            typ = self.schema.field(f).type
            if f in self.partition_fields:
                cols[f] = pa.array([part.get(f)] * n, pa.string()).cast(typ)
            elif self.physical[f] in raw.column_names:
                col = raw.column(self.physical[f])
                cols[f] = col if col.type.equals(typ) else col.cast(typ)
            else:
                cols[f] = pa.nulls(n, typ)
            if f == "item_id":
                cols[f] = _id_to_string(cols[f])
            elif pat.is_string(CATALOG_SCHEMA.field(f).type) and _as_string_ok(typ):
                cols[f] = pc.cast(cols[f], pa.string())
        return pa.table(cols)


def _drop_deleted(batch: pa.Table, deleted: np.ndarray, start: int) -> tuple[pa.Table, int]:
    """(``batch`` without the rows ``deleted`` names, the file position after it). ``batch``
    holds the file's rows ``start`` .. ``start + num_rows - 1``."""
    import numpy as np

    n = batch.num_rows
    if len(deleted):
        lo, hi = np.searchsorted(deleted, [start, start + n])
        if hi > lo:
            keep = np.ones(n, dtype=bool)
            keep[(deleted[lo:hi] - start).astype(np.int64)] = False
            batch = batch.filter(pa.array(keep))
    return batch, start + n


def modality_mask(batch: pa.Table, modality: str) -> pa.ChunkedArray | None:
    """Rows selected for ``modality``: None means all (text); else a non-empty media URI."""
    column = MEDIA_COLUMNS.get(modality)
    if column is None:
        return None
    if column not in batch.column_names:
        return pa.chunked_array([pa.array([False] * batch.num_rows)])
    uris, bad = utf8_sanitize(batch.column(column))
    mask = pc.fill_null(pc.greater(pc.utf8_length(pc.utf8_trim_whitespace(uris)), 0), False)
    if bad:  # present but not valid UTF-8: selected, then quarantined as invalid_utf8
        import numpy as np

        flags = np.asarray(mask.to_numpy(zero_copy_only=False), dtype=bool)
        flags[bad] = True
        mask = pa.chunked_array([pa.array(flags)])
    return mask


def _type_ok(name: str, actual: pa.DataType, expected: pa.DataType) -> bool:
    if pat.is_string(expected):
        if _as_string_ok(actual) or (name == "item_id" and _id_as_string_ok(actual)):
            return True
        return pat.is_string(actual) or pat.is_large_string(actual) or pat.is_string_view(actual)
    if pat.is_list(expected):
        return ((pat.is_list(actual) or pat.is_large_list(actual))
                and _type_ok("", actual.value_type, expected.value_type))
    if pat.is_timestamp(expected):
        return pat.is_timestamp(actual)
    return actual.equals(expected)


def validate_schema(uri: str, schema: pa.Schema, source: dict[str, str] | None = None) -> None:
    """Raise CatalogError naming the catalog, the column and the type when unusable.

    ``schema`` is under catalog field names; ``source`` names the catalog's own column for
    each field (for the message) where a column mapping renamed it.
    """
    source = source or {}

    def named(f: str) -> str:
        return f"'{f}'" if source.get(f, f) == f else f"'{f}' (catalog column '{source[f]}')"

    missing = [c for c in REQUIRED_CATALOG_COLUMNS if c not in schema.names]
    if missing:
        raise CatalogError(
            f"catalog {uri}: missing required column(s) {missing}; it has {sorted(source.values()) or schema.names}"
            f" (map other names onto them with --map FIELD=COLUMN or catalog_columns in the run profile)"
        )
    if not any(c in schema.names for c in TEXT_COLUMNS):
        raise CatalogError(f"catalog {uri}: has none of the text columns {list(TEXT_COLUMNS)}; it has "
                           f"{sorted(source.values()) or schema.names}")
    for fld in CATALOG_SCHEMA:
        if fld.name in schema.names:
            actual = schema.field(fld.name).type
            if fld.name == "item_id" and pat.is_decimal(actual) and actual.scale != 0:
                raise CatalogError(
                    f"catalog {uri}: column {named(fld.name)} has type {actual}, expected {fld.type}: a decimal "
                    f"id needs scale 0 (it is read as its integer digits); scale {actual.scale} gives "
                    f"fractional values, which are not ids (cast the column to decimal(38,0) or string)")
            if not _type_ok(fld.name, actual, fld.type):
                raise CatalogError(f"catalog {uri}: column {named(fld.name)} has type {actual}, expected {fld.type}")


def resolve_column_map(column_map: dict[str, str] | None, *, fields: Sequence[str], columns: list[str], where: str,
                       kind: str, source: str, error: type[Exception]) -> dict[str, str]:
    """Field -> the source's own column, for every one of ``fields`` the source provides: a
    field's own name unless ``column_map`` maps it (``FIELD=COLUMN``, e.g. ``--map``).

    Raises:
        ``error``: ``<where>: column mapping F=C: 'F' is not a <kind> field`` or ``<source> has no
        column 'C'``, listing the fields or the columns there are.
    """
    column_map = dict(column_map or {})
    for fld, col in column_map.items():
        if fld not in fields:
            raise error(f"{where}: column mapping {fld}={col}: {fld!r} is not a {kind} field; fields: {sorted(fields)}")
        if col not in columns:
            raise error(f"{where}: column mapping {fld}={col}: {source} has no column {col!r}; it has {columns}")
    return {f: column_map.get(f, f) for f in fields if column_map.get(f, f) in columns}


def _apply_column_map(uri: str, columns: list[str], column_map: dict[str, str] | None) -> dict[str, str]:
    """Catalog field -> the catalog's own column, for every field the catalog provides."""
    return resolve_column_map(column_map, fields=CATALOG_SCHEMA.names, columns=columns, where=f"catalog {uri}",
                              kind="catalog", source="the catalog", error=CatalogError)


def _delta_snapshot(uri: str, version: int | None, column_map: dict[str, str] | None) -> CatalogSnapshot:
    from deltalake import DeltaTable

    opts = storage_options(uri)
    try:
        dt = DeltaTable(uri, version=version, storage_options=opts)
    except Exception as e:  # delta-rs raises several types (missing version, bad log, protocol)
        raise CatalogError(f"catalog {uri}: cannot be read as Delta at version {version}: {e}") from e
    features = set(dt.protocol().reader_features or ())
    unsupported = sorted(features - SUPPORTED_READER_FEATURES)
    if unsupported:
        raise CatalogError(f"catalog {uri}: version {dt.version()} uses Delta reader feature(s) {unsupported} "
                           f"that this reader does not support (it reads {sorted(SUPPORTED_READER_FEATURES)}); "
                           f"its rows cannot be read exactly")
    logical = pa.schema(dt.schema().to_arrow())
    physical_of = {}
    for f in logical:
        meta = f.metadata or {}
        physical_of[f.name] = (meta.get(b"delta.columnMapping.physicalName") or f.name.encode()).decode()
    source = _apply_column_map(uri, logical.names, column_map)
    schema = pa.schema([pa.field(f, logical.field(src).type) for f, src in source.items()])
    validate_schema(uri, schema, source)
    partitions = list(dt.metadata().partition_columns)
    actions = pa.table(dt.get_add_actions(flatten=True))
    paths = [unquote(p) for p in actions.column("path").to_pylist()] if actions.num_rows else []
    by_source = {src: f for f, src in source.items()}
    part_values = {
        by_source[p]: actions.column(f"partition.{p}").to_pylist() for p in partitions if p in by_source
    } if actions.num_rows else {}
    deleted = _deleted_rows(dt, uri, paths) if "deletionVectors" in features else {}
    files = tuple(
        CatalogFile(
            path=p if "://" in p or p.startswith("/") else join_uri(uri, p),
            partition=tuple((f, None if vals[i] is None else str(vals[i])) for f, vals in part_values.items()),
            deleted=deleted.get(p, b""),
        )
        for i, p in enumerate(paths)
    )
    return CatalogSnapshot(
        uri=uri, version=dt.version(), is_delta=True, source=source,
        physical={f: physical_of[src] for f, src in source.items()}, schema=schema, files=files,
        partition_fields=frozenset(by_source[p] for p in partitions if p in by_source),
    )


def _deleted_rows(dt, uri: str, paths: list[str]) -> dict[str, bytes]:
    """Add-action path -> the rows its deletion vector deletes at ``dt``'s version (packed,
    see ``CatalogFile.deleted``), for each file that has one.

    delta-rs (delta-kernel) decodes the vectors, inline or in ``deletion_vector_*.bin`` files,
    into keep masks over each file's rows. A vector that cannot be read, or one for a file the
    snapshot does not list, is an error: reading on would bring deleted rows back.
    """
    import numpy as np

    try:
        masks = pa.RecordBatchReader.from_stream(dt.deletion_vectors())
        batches = list(masks)
    except Exception as e:  # delta-rs: missing DV file, bad checksum, no numRecords in the stats
        raise CatalogError(f"catalog {uri}: the deletion vectors of version {dt.version()} cannot be read, so its "
                           f"rows cannot be read exactly: {e}") from e
    root = unquote(dt.table_uri).rstrip("/") + "/"
    by_uri = {p if "://" in p else root + p.lstrip("/"): p for p in paths}
    by_uri.update({"file://" + p: p for p in paths if p.startswith("/")})
    out: dict[str, bytes] = {}
    for batch in batches:
        keep = batch.column("selection_vector")
        offsets = keep.offsets.to_numpy()
        dropped = ~np.asarray(keep.values.to_numpy(zero_copy_only=False), dtype=bool)
        for i, file_uri in enumerate(batch.column("filepath").to_pylist()):
            path = by_uri.get(unquote(file_uri))
            if path is None:
                raise CatalogError(f"catalog {uri}: version {dt.version()} has a deletion vector for {file_uri}, "
                                   f"which is not one of its data files")
            rows = np.flatnonzero(dropped[offsets[i]:offsets[i + 1]])
            if len(rows):
                out[path] = pack_rows(rows)
    return out


def _parquet_snapshot(uri: str, column_map: dict[str, str] | None) -> CatalogSnapshot:
    import pyarrow.dataset as pds

    fs, path = arrow_filesystem(uri)
    try:
        ds = pds.dataset(path, format="parquet", filesystem=fs)
        schema = ds.schema
        files = ds.files
    except (FileNotFoundError, pa.ArrowInvalid, OSError) as e:
        raise CatalogError(f"catalog {uri}: neither a Delta table nor readable Parquet: {e}") from e
    source = _apply_column_map(uri, schema.names, column_map)
    mapped = pa.schema([pa.field(f, schema.field(src).type) for f, src in source.items()])
    validate_schema(uri, mapped, source)
    prefix = "s3://" if uri.startswith("s3://") else ""
    return CatalogSnapshot(
        uri=uri, version=None, is_delta=False, source=source, physical=dict(source), schema=mapped,
        files=tuple(CatalogFile(path=prefix + f) for f in sorted(files)),
    )


def open_catalog(uri: str, version: int | None = None, column_map: dict[str, str] | None = None) -> CatalogSnapshot:
    """Pin and validate the catalog at ``uri`` (latest Delta version unless given).

    Args:
        uri: a Delta table or a Parquet file/folder, local or ``s3://``.
        version: the Delta version to pin (a resume passes the one its run recorded).
        column_map: catalog field -> the catalog's own column name, for catalogs that name
            their columns differently (e.g. ``{"item_id": "track_uri", "title": "name"}``).

    Raises:
        CatalogError: naming the catalog and column, when the catalog as a whole is unusable.
    """
    from deltalake import DeltaTable

    local_file = "://" not in uri and os.path.isfile(uri)  # delta-rs fails looking for <file>/_delta_log
    try:
        is_delta = not local_file and DeltaTable.is_deltatable(uri, storage_options=storage_options(uri))
    except Exception as e:  # noqa: BLE001 - delta-rs raises generic errors for unreachable stores
        raise CatalogError(f"catalog {uri}: cannot be reached: {e}") from e
    if is_delta:
        return _delta_snapshot(uri, version, column_map)
    if version is not None:
        raise CatalogError(f"catalog {uri}: a version was requested but it is not a Delta table")
    return _parquet_snapshot(uri, column_map)


def select_ids(snapshot: CatalogSnapshot, where: str) -> pa.Array:
    """Item ids matching the SQL predicate ``where`` (DataFusion dialect, over the catalog's own
    column names), at the snapshot.

    Raises:
        CatalogError: the predicate does not parse or names unknown columns.
    """
    from deltalake import DeltaTable, QueryBuilder

    if not snapshot.is_delta:
        raise CatalogError(f"catalog {snapshot.uri}: --where needs a Delta catalog")
    id_col = snapshot.source["item_id"].replace('"', '""')
    try:
        dt = DeltaTable(snapshot.uri, version=snapshot.version, storage_options=storage_options(snapshot.uri))
        sql = f'SELECT "{id_col}" AS item_id FROM catalog WHERE {where}'
        reader = QueryBuilder().register("catalog", dt).execute(sql)
        ids = pa.table(reader.read_all()).column("item_id")
    except Exception as e:  # DataFusion reports parse and plan errors as generic exceptions
        raise CatalogError(f"catalog {snapshot.uri}: --where {where!r} is not a valid SQL predicate: {e}") from e
    ids, _ = utf8_sanitize(_id_to_string(ids.combine_chunks()))  # ids not UTF-8: never selected
    return pc.unique(ids.drop_null())


def utf8_sanitize(col: pa.ChunkedArray | pa.Array) -> tuple[pa.ChunkedArray | pa.Array, list[int]]:
    """(``col`` with invalid UTF-8 values nulled, the row positions that were invalid)."""
    if not (pat.is_string(col.type) or pat.is_large_string(col.type)):
        return col, []
    try:
        col.validate(full=True)
        return col, []
    except pa.ArrowInvalid:
        pass
    raw = col.cast(pa.large_binary() if pat.is_large_string(col.type) else pa.binary()).to_pylist()
    bad: list[int] = []
    fixed: list[str | None] = []
    for i, b in enumerate(raw):
        if b is None:
            fixed.append(None)
            continue
        try:
            fixed.append(b.decode("utf-8"))
        except UnicodeDecodeError:
            bad.append(i)
            fixed.append(None)
    return pa.array(fixed, col.type), bad


def to_work_rows(batch: pa.Table, modality: str) -> pa.Table:
    """Catalog rows -> (item, modality) work rows with every WORK_COLUMNS column present.

    String values that are not valid UTF-8 are nulled; ``INVALID_UTF8`` lists, per row, the
    fields this modality scores that were invalid (``Classifier.prepare`` quarantines those
    pairs as ``invalid_utf8``); invalid bytes elsewhere only null that field.
    """
    n = batch.num_rows
    cols = {}
    invalid: list[list[str]] = [[] for _ in range(n)]
    for name in WORK_COLUMNS:
        typ = CATALOG_SCHEMA.field(name).type
        if name in batch.column_names:
            col, bad = utf8_sanitize(batch.column(name))
            if name in MODALITY_INPUTS.get(modality, ()):
                for i in bad:
                    invalid[i].append(name)
            cols[name] = col.cast(typ) if not col.type.equals(typ) else col
        else:
            cols[name] = pa.nulls(n, typ)
    cols["modality"] = pa.array([modality] * n, pa.string())
    cols[INVALID_UTF8] = pa.array(invalid, pa.list_(pa.string()))
    return pa.table(cols)
