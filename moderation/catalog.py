"""The catalog: a Delta table (or a Parquet file/folder) of items with their text and media.

``open_catalog`` pins the snapshot a run reads (the Delta version is recorded in ``runs``),
checks the columns the pipeline needs before anything is written, and resolves an optional
SQL ``--where`` predicate to the selected item ids with DataFusion (through deltalake).
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.types as pat

from moderation.errors import CatalogError
from moderation.lake import storage_options
from moderation.schemas import CATALOG_SCHEMA, REQUIRED_CATALOG_COLUMNS, TEXT_COLUMNS

#: Columns copied from the catalog into each (item, modality) work row.
WORK_COLUMNS = ("item_id", "item_type", "language", "markets", "explicit", *TEXT_COLUMNS, "cover_image", "audio_clip")
#: The catalog column holding each media modality's URI. An item is selected for a media
#: modality only when it has one; every item is selected for text (no usable text is a
#: quarantine reason, not a reason to skip).
MEDIA_COLUMNS = {"image": "cover_image", "audio": "audio_clip"}


@dataclass(frozen=True)
class CatalogSnapshot:
    """A pinned, validated view of the catalog."""

    uri: str
    version: int | None  # Delta version; None for plain Parquet
    schema: pa.Schema
    is_delta: bool

    @property
    def columns(self) -> list[str]:
        return [c for c in WORK_COLUMNS if c in self.schema.names]

    def has_modality(self, modality: str) -> bool:
        """Whether the catalog can hold this modality at all (text: always)."""
        return modality not in MEDIA_COLUMNS or MEDIA_COLUMNS[modality] in self.schema.names


def modality_mask(batch: pa.Table, modality: str) -> pa.ChunkedArray | None:
    """Rows selected for ``modality``: None means all (text); else a non-empty media URI."""
    column = MEDIA_COLUMNS.get(modality)
    if column is None:
        return None
    if column not in batch.column_names:
        return pa.chunked_array([pa.array([False] * batch.num_rows)])
    uris = batch.column(column)
    return pc.fill_null(pc.greater(pc.utf8_length(pc.utf8_trim_whitespace(uris)), 0), False)


def _type_ok(actual: pa.DataType, expected: pa.DataType) -> bool:
    if pat.is_string(expected):
        return pat.is_string(actual) or pat.is_large_string(actual) or pat.is_string_view(actual)
    if pat.is_list(expected):
        return (pat.is_list(actual) or pat.is_large_list(actual)) and _type_ok(actual.value_type, expected.value_type)
    if pat.is_timestamp(expected):
        return pat.is_timestamp(actual)
    return actual.equals(expected)


def validate_schema(uri: str, schema: pa.Schema) -> None:
    """Raise CatalogError naming the catalog, the column and the type when unusable."""
    missing = [c for c in REQUIRED_CATALOG_COLUMNS if c not in schema.names]
    if missing:
        raise CatalogError(
            f"catalog {uri}: missing required column(s) {missing}; it has {schema.names}"
        )
    if not any(c in schema.names for c in TEXT_COLUMNS):
        raise CatalogError(f"catalog {uri}: has none of the text columns {list(TEXT_COLUMNS)}; it has {schema.names}")
    for field in CATALOG_SCHEMA:
        if field.name in schema.names:
            actual = schema.field(field.name).type
            if not _type_ok(actual, field.type):
                raise CatalogError(
                    f"catalog {uri}: column '{field.name}' has type {actual}, expected {field.type}"
                )


def open_catalog(uri: str, version: int | None = None) -> CatalogSnapshot:
    """Pin and validate the catalog at ``uri`` (latest Delta version unless given)."""
    from deltalake import DeltaTable

    opts = storage_options(uri)
    if DeltaTable.is_deltatable(uri, storage_options=opts):
        try:
            dt = DeltaTable(uri, version=version, storage_options=opts)
            schema = dt.schema().to_arrow()
            schema = pa.schema(schema) if not isinstance(schema, pa.Schema) else schema
        except Exception as e:  # delta-rs raises several types for unsupported features
            raise CatalogError(f"catalog {uri}: cannot be read as Delta: {e}") from e
        validate_schema(uri, schema)
        return CatalogSnapshot(uri=uri, version=dt.version(), schema=schema, is_delta=True)
    if version is not None:
        raise CatalogError(f"catalog {uri}: a version was requested but it is not a Delta table")
    import pyarrow.dataset as pds

    try:
        schema = pds.dataset(uri, format="parquet").schema
    except (FileNotFoundError, pa.ArrowInvalid, OSError) as e:
        raise CatalogError(f"catalog {uri}: neither a Delta table nor readable Parquet: {e}") from e
    validate_schema(uri, schema)
    return CatalogSnapshot(uri=uri, version=None, schema=schema, is_delta=False)


def select_ids(snapshot: CatalogSnapshot, where: str) -> pa.Array:
    """Item ids matching the SQL predicate ``where`` (DataFusion dialect), at the snapshot.

    Raises:
        CatalogError: the predicate does not parse or names unknown columns.
    """
    from deltalake import DeltaTable, QueryBuilder

    try:
        if snapshot.is_delta:
            dt = DeltaTable(snapshot.uri, version=snapshot.version, storage_options=storage_options(snapshot.uri))
            reader = QueryBuilder().register("catalog", dt).execute(f"SELECT item_id FROM catalog WHERE {where}")
            ids = pa.table(reader.read_all()).column("item_id")
        else:
            raise CatalogError(f"catalog {snapshot.uri}: --where needs a Delta catalog")
    except CatalogError:
        raise
    except Exception as e:  # DataFusion reports parse and plan errors as generic exceptions
        raise CatalogError(f"catalog {snapshot.uri}: --where {where!r} is not a valid SQL predicate: {e}") from e
    return pc.unique(ids.combine_chunks()).cast(pa.string())


def to_work_rows(batch: pa.Table, modality: str) -> pa.Table:
    """Catalog rows -> (item, modality) work rows with every WORK_COLUMNS column present."""
    n = batch.num_rows
    cols = {}
    for name in WORK_COLUMNS:
        typ = CATALOG_SCHEMA.field(name).type
        if name in batch.column_names:
            col = batch.column(name)
            cols[name] = col.cast(typ) if not col.type.equals(typ) else col
        else:
            cols[name] = pa.nulls(n, typ)
    cols["modality"] = pa.array([modality] * n, pa.string())
    return pa.table(cols)
