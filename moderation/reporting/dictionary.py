"""The data dictionary of a lake: ``moderation tables``.

Every Delta table under the lake root (found as ``moderation sql`` finds them,
:func:`moderation.reporting.query.lake_tables`) with its version, row count, last writer and columns, each
column with its description. Descriptions come from ``moderation.schemas`` (the one source, also
of the tables' column comments and of docs/tables.md); a table with no schema there shows the
comments its Delta schema holds. Nothing is scanned: row counts are the sum of the add actions'
``numRecords`` statistics (a file without them is counted from its Parquet footer).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from urllib.parse import unquote

import pyarrow as pa

from moderation.schemas import COMMENT, column_description
from moderation.storage.lake import Lake, arrow_filesystem, join_uri

#: Commit-info keys our writes record (``Lake`` and the commands' commits).
RUN_ID_KEY = "moderation.run_id"
APP_ID_KEY = "moderation.app_id"


@dataclass(frozen=True)
class Column:
    name: str
    type: str
    nullable: bool
    description: str | None
    commented: bool  # the Delta table holds the description as its column comment


@dataclass(frozen=True)
class TableInfo:
    """One table of the lake, as ``moderation tables`` shows it."""

    name: str  # path under the lake root, e.g. ``eval/results``
    view: str  # its ``moderation sql`` view name, e.g. ``eval_results``
    uri: str
    version: int
    rows: int | None
    files: int
    last_commit_at: dt.datetime | None
    last_operation: str | None
    last_run_id: str | None  # moderation.run_id of the last commit, where the write recorded it
    last_app_id: str | None  # else the app transaction id of a chunk commit
    columns: tuple[Column, ...] = field(default=())

    @property
    def last_writer(self) -> str:
        """The last commit's run (or app id), else its operation."""
        return self.last_run_id or self.last_app_id or (self.last_operation or "-").lower()

    def to_dict(self) -> dict:
        return {
            "name": self.name, "view": self.view, "uri": self.uri, "version": self.version, "rows": self.rows,
            "files": self.files,
            "last_commit": {"at": self.last_commit_at, "operation": self.last_operation,
                            "run_id": self.last_run_id, "app_id": self.last_app_id},
            "columns": [{"name": c.name, "type": c.type, "nullable": c.nullable, "description": c.description,
                         "commented": c.commented} for c in self.columns],
        }


def type_name(t: pa.DataType) -> str:
    """An Arrow type in the words the docs use: string, int, long, float, double, bool,
    timestamp, list<string>, map<string, float>."""
    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t):
        return "string"
    simple = {pa.int8(): "byte", pa.int16(): "short", pa.int32(): "int", pa.int64(): "long",
              pa.float32(): "float", pa.float64(): "double", pa.bool_(): "bool", pa.binary(): "binary",
              pa.date32(): "date"}
    if t in simple:
        return simple[t]
    if pa.types.is_timestamp(t):
        return "timestamp"
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        return f"list<{type_name(t.value_type)}>"
    if pa.types.is_map(t):
        return f"map<{type_name(t.key_type)}, {type_name(t.item_type)}>"
    if pa.types.is_struct(t):
        return "struct<" + ", ".join(f"{f.name}: {type_name(f.type)}" for f in t) + ">"
    return str(t)


def _row_count(dt_, uri: str) -> tuple[int | None, int]:
    """(rows, files) of the table's current snapshot, from the add actions' statistics."""
    actions = pa.table(dt_.get_add_actions(flatten=True))
    files = actions.num_rows
    if files == 0:
        return 0, 0
    if "num_records" not in actions.column_names:
        counts = [None] * files
    else:
        counts = actions.column("num_records").to_pylist()
    paths = actions.column("path").to_pylist()
    total = 0
    for path, n in zip(paths, counts, strict=True):
        if n is None:
            n = _footer_rows(uri, path)
            if n is None:
                return None, files
        total += n
    return total, files


def _footer_rows(table_uri: str, path: str) -> int | None:
    """A data file's row count from its Parquet footer (no data read); None when unreadable."""
    import pyarrow.parquet as pq

    full = path if "://" in path else join_uri(table_uri, unquote(path))
    if full.startswith("file://"):
        full = full[len("file://"):]
    fs, local = arrow_filesystem(full)
    try:
        return pq.ParquetFile(local if fs is None else fs.open_input_file(local)).metadata.num_rows
    except (OSError, pa.ArrowException):
        return None


def describe_table(lake: Lake, name: str, view: str | None = None) -> TableInfo:
    """The :class:`TableInfo` of the table at ``name`` under the lake root."""
    from moderation.reporting.query import view_name

    dt_ = lake.open(name)
    if dt_ is None:
        from moderation.errors import LakeError

        raise LakeError(f"{lake.uri(name)}: not a Delta table")
    rows, files = _row_count(dt_, dt_.table_uri)
    last = (dt_.history(1) or [{}])[0]
    ts = last.get("timestamp")
    columns = []
    for f in dt_.schema().to_arrow():
        stored = (f.metadata or {}).get(COMMENT.encode())
        stored = stored.decode() if stored is not None else None
        text = column_description(name, f.name) or stored
        columns.append(Column(f.name, type_name(pa.field(f).type), f.nullable, text,
                              commented=stored is not None and stored == text))
    return TableInfo(
        name=name, view=view or view_name(name), uri=lake.uri(name), version=dt_.version(), rows=rows, files=files,
        last_commit_at=None if ts is None else dt.datetime.fromtimestamp(ts / 1000, dt.UTC),
        last_operation=last.get("operation"), last_run_id=last.get(RUN_ID_KEY), last_app_id=last.get(APP_ID_KEY),
        columns=tuple(columns),
    )


def describe_lake(lake_root: str, only: list[str] | None = None) -> list[TableInfo]:
    """Every Delta table under ``lake_root`` (or the ones named in ``only``, by path or view
    name), sorted by path.

    Raises:
        LakeError: no such lake, no Delta table under it, or a name in ``only`` it lacks.
    """
    from moderation.errors import LakeError
    from moderation.reporting.query import lake_tables

    found = lake_tables(lake_root)  # view -> path
    by_path = {path: view for view, path in found.items()}
    wanted = sorted(by_path)
    if only:
        wanted = []
        for name in only:
            path = name if name in by_path else found.get(name)
            if path is None:
                raise LakeError(f"{name}: no such table in {lake_root} (tables: {', '.join(sorted(by_path))})")
            wanted.append(path)
    lake = Lake(lake_root)
    return [describe_table(lake, path, by_path[path]) for path in wanted]


def _when(value: dt.datetime | None) -> str:
    return "-" if value is None else value.strftime("%Y-%m-%d %H:%M:%SZ")


def overview_rows(tables: list[TableInfo]) -> tuple[list[str], list[list]]:
    headers = ["TABLE", "VERSION", "ROWS", "FILES", "LAST WRITER", "LAST COMMIT"]
    rows = [[t.name, t.version, "?" if t.rows is None else t.rows, t.files, t.last_writer,
             f"{(t.last_operation or '-').lower()} {_when(t.last_commit_at)}"] for t in tables]
    return headers, rows


def column_rows(table: TableInfo) -> tuple[list[str], list[list]]:
    headers = ["COLUMN", "TYPE", "DESCRIPTION"]
    rows = [[c.name, c.type + ("" if c.nullable else " not null"), c.description or "-"] for c in table.columns]
    return headers, rows


def format_tables(tables: list[TableInfo], *, columns: bool = True) -> str:
    """Plain text: the overview, then (``columns``) each table's columns with descriptions."""
    from moderation.output import plain_table

    out = [plain_table(*overview_rows(tables))]
    if columns:
        for t in tables:
            out.append(f"\n{t.name} (v{t.version})")
            out.append(plain_table(*column_rows(t)))
    return "\n".join(out)
