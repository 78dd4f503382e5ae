"""Ad-hoc queries over a lake, offline: ``moderation sql`` (Spark SQL over one pinned snapshot
of the lake's Delta tables) and DuckDB with its delta extension loaded from a PyPI package.

``moderation sql`` needs no Delta Spark connector and no Databricks workspace: each table the
query names is pinned to its current Delta version (or ``--version-of TABLE=N``) once, before
any read, then read with :func:`moderation.engines.spark.read_snapshot` (the snapshot's exact file
list, as the report reads it) and registered as a temp view in a session of its own.

Views are named as the tables in the data dictionary (docs/tables.md), with ``/`` as
``_`` for tables in sub-folders: ``scores``, ``violations``, ``runs``, ``diffs``,
``eval_results``, ``reports_violation_rates``, ...; a catalog under the lake root (the demo's)
is ``catalog``, and ``--catalog URI`` adds one from elsewhere.

pyspark and duckdb are imported inside the functions, so importing this module stays cheap.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import tempfile
from collections.abc import Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

import pyarrow as pa

from moderation.errors import LakeError, ModerationError
from moderation.output import json_value as _plain
from moderation.storage.lake import Lake, arrow_filesystem, join_uri

if TYPE_CHECKING:
    import duckdb
    from pyspark.sql import DataFrame, SparkSession

#: How deep under the lake root tables are looked for (``eval/datasets/<name>`` is three deep).
MAX_DEPTH = 3
#: Folders under the lake root that never hold tables (media the demo generates).
NOT_TABLES = frozenset({"demo-media", "_delta_log"})
#: The statements ``moderation sql`` runs: queries only, so it writes nothing anywhere (no
#: ``CREATE TABLE`` into a spark-warehouse folder, no ``INSERT``).
READ_ONLY = frozenset({"select", "with", "show", "describe", "desc", "explain", "values", "table", "from"})
#: Rows printed by default; a query meant to return more says ``--max-rows 0`` (or LIMITs itself).
DEFAULT_MAX_ROWS = 1000
OutputFormat = Literal["table", "csv", "json"]


class QueryError(ModerationError):
    """The SQL cannot run: not a read-only query, a syntax error, an unknown table or column."""


def view_name(relative: str) -> str:
    """The temp view name of the table at ``relative`` under the lake root: ``/`` and any other
    character outside ``[A-Za-z0-9_]`` become ``_`` (``eval/results`` -> ``eval_results``)."""
    return re.sub(r"[^A-Za-z0-9_]", "_", relative.strip("/"))


def lake_tables(lake_root: str) -> dict[str, str]:
    """Every Delta table under ``lake_root`` (a folder holding ``_delta_log``, up to
    ``MAX_DEPTH`` folders deep), as view name -> path relative to the root, sorted by name.

    Raises:
        LakeError: the lake root does not exist or holds no Delta table.
    """
    import pyarrow.fs as pafs

    fs, base = arrow_filesystem(lake_root)
    fs = fs or pafs.LocalFileSystem()
    base = base.rstrip("/")
    if fs.get_file_info(base).type != pafs.FileType.Directory:
        raise LakeError(f"{lake_root}: no such lake (not a folder or prefix)")
    found: dict[str, str] = {}

    def walk(folder: str, relative: str, depth: int) -> None:
        entries = fs.get_file_info(pafs.FileSelector(folder, allow_not_found=True))
        names = {e.base_name for e in entries if e.type == pafs.FileType.Directory}
        if relative and "_delta_log" in names:
            found[view_name(relative)] = relative
            return
        if depth == MAX_DEPTH:
            return
        for name in sorted(names - NOT_TABLES):
            walk(f"{folder}/{name}", f"{relative}/{name}" if relative else name, depth + 1)

    walk(base, "", 0)
    if not found:
        raise LakeError(f"{lake_root}: no Delta tables under this lake root")
    return dict(sorted(found.items()))


@dataclass(frozen=True)
class TableRef:
    """One table a query can read: where it lies and the Delta version pinned for it."""

    lake_root: str  # the folder holding it (the lake root, or the catalog's parent)
    path: str  # relative to lake_root
    version: int

    @property
    def uri(self) -> str:
        return join_uri(self.lake_root, self.path)


@dataclass(frozen=True)
class PinnedLake:
    """The tables of one lake a query reads, each at one Delta version pinned before any read."""

    root: str
    tables: dict[str, TableRef]
    available: tuple[str, ...]  # every view name the lake offers

    def describe(self) -> str:
        """One line: ``snapshot of LAKE: runs@6 violations@4`` (view@version)."""
        pins = " ".join(f"{name}@{ref.version}" for name, ref in sorted(self.tables.items()))
        return f"snapshot of {self.root}: {pins or '(no table read)'}"


def referenced(sql: str, names: list[str] | tuple[str, ...]) -> list[str]:
    """The names among ``names`` that ``sql`` mentions as a word (case-insensitive). A superset of
    the tables the query reads: a column or alias of the same name only pins one table more."""
    words = {w.lower() for w in re.findall(r"[A-Za-z0-9_]+", sql)}
    return [n for n in names if n.lower() in words]


def _first_word(sql: str) -> str:
    """The statement's first keyword, lower case, past comments and opening parentheses."""
    lead = re.sub(r"^(\s*(--[^\n]*\n|/\*.*?\*/)|[\s(])*", "", sql + "\n", flags=re.S)
    first = re.match(r"[A-Za-z]+", lead)
    return first.group(0).lower() if first else ""


def check_read_only(sql: str) -> str:
    """``sql`` without trailing semicolons, if its statement is one of ``READ_ONLY``.

    A WITH or FROM statement can still hold an INSERT: :func:`run_sql` also refuses a parsed
    plan that writes.

    Raises:
        QueryError: empty, or a statement other than a query (CREATE, INSERT, SET, ...).
    """
    text = sql.strip().rstrip(";").strip()
    first = _first_word(text)
    if not first:
        raise QueryError("empty query: pass one SQL statement, e.g. \"SELECT count(*) FROM violations\"")
    if first not in READ_ONLY:
        raise QueryError(f"{first.upper()} statement refused: moderation sql runs read-only queries "
                         f"({', '.join(sorted(s.upper() for s in READ_ONLY))})")
    return text


def _check_no_write(spark: SparkSession, sql: str) -> None:
    """Refuse a statement whose parsed plan writes: ``WITH … INSERT INTO …`` or ``FROM t INSERT
    OVERWRITE DIRECTORY …`` start like queries. A statement that does not parse passes here;
    ``spark.sql`` reports its syntax error."""
    from py4j.protocol import Py4JJavaError
    from pyspark.errors import ParseException

    try:
        plan = spark._jsparkSession.sessionState().sqlParser().parsePlan(sql)
    except (ParseException, Py4JJavaError):
        return
    stack = [plan]
    while stack:
        node = stack.pop()
        name = node.getClass().getSimpleName()
        if name.startswith("Insert"):  # InsertIntoStatement, InsertIntoDir
            raise QueryError(f"{name} refused: moderation sql runs read-only queries")
        children = node.children().iterator()
        while children.hasNext():
            stack.append(children.next())


def _check_pins(pins: Mapping[str, int] | None, available: list[str], *, lake_root: str) -> None:
    unknown = sorted(set(pins or {}) - set(available))
    if unknown:
        raise LakeError(f"--version-of {unknown[0]}: no such table in {lake_root} "
                        f"(tables: {', '.join(sorted(available))})")


def pin_lake(lake_root: str, sql: str, *, versions: Mapping[str, int] | None = None,
             catalog_uri: str | None = None) -> PinnedLake:
    """Pin the tables ``sql`` names: each at ``versions[name]`` or its current Delta version.

    ``runs`` is pinned first when the query reads it (a decide commits its violations before its
    ``runs`` row, as in :func:`moderation.reporting.report.pin_snapshot`). A ``SHOW`` statement pins
    every table. No data is read here and Spark is not needed.

    Args:
        lake_root: the lake root URI (path or s3://).
        sql: the query.
        versions: view name -> Delta version to read instead of the current one.
        catalog_uri: a catalog Delta table outside the lake, offered as the view ``catalog``.

    Raises:
        LakeError: no lake, no tables, an unknown table in ``versions``, a version that does
            not exist, or a ``catalog_uri`` that is not a Delta table.
    """
    from deltalake.exceptions import DeltaError

    roots = {name: (lake_root, path) for name, path in lake_tables(lake_root).items()}
    if catalog_uri is not None:
        parent, _, base = catalog_uri.rstrip("/").rpartition("/")
        roots["catalog"] = (parent or ".", base)
    _check_pins(versions, list(roots), lake_root=lake_root)
    names = list(roots) if _first_word(check_read_only(sql)) == "show" else referenced(sql, list(roots))
    names.sort(key=lambda n: (n != "runs", n))
    tables: dict[str, TableRef] = {}
    for name in names:
        root, path = roots[name]
        lake = Lake(root)
        want = (versions or {}).get(name)
        try:
            table = lake.open(path, version=want)
        except DeltaError as e:
            raise LakeError(f"{lake.uri(path)}: cannot open version {want}: {e}") from e
        if table is None:
            raise LakeError(f"{lake.uri(path)}: not a Delta table")
        tables[name] = TableRef(lake_root=root, path=path, version=table.version())
    return PinnedLake(root=lake_root, tables=tables, available=tuple(sorted(roots)))


def register_views(spark: SparkSession, pinned: PinnedLake) -> dict[str, str]:
    """Register each pinned table as a temp view of ``spark``. Returns the tables that could not
    be read exactly (view name -> why), which get no view."""
    from moderation.engines.spark import read_snapshot

    skipped: dict[str, str] = {}
    for name, ref in pinned.tables.items():
        try:
            df = read_snapshot(spark, Lake(ref.lake_root), ref.path, version=ref.version)
        except LakeError as e:
            skipped[name] = str(e)
            continue
        df.createOrReplaceTempView(name)
    return skipped


@dataclass(frozen=True)
class QueryResult:
    """What ``moderation sql`` prints: the rows and the snapshot they were read from."""

    rows: pa.Table
    truncated: bool  # more rows than max_rows were returned
    pinned: PinnedLake
    skipped: dict[str, str] = field(default_factory=dict)


def run_sql(lake_root: str, sql: str, *, versions: Mapping[str, int] | None = None, catalog_uri: str | None = None,
            max_rows: int = DEFAULT_MAX_ROWS, master: str | None = "local[*]",
            spark: SparkSession | None = None) -> QueryResult:
    """Run one read-only Spark SQL query over a pinned snapshot of the lake.

    Args:
        lake_root: the lake root URI.
        sql: one read-only statement (SELECT, WITH, SHOW, DESCRIBE, EXPLAIN, ...).
        versions: view name -> Delta version to read (time travel); others: the current one.
        catalog_uri: a catalog Delta table outside the lake, offered as the view ``catalog``.
        max_rows: at most this many rows are collected (0: all).
        master: the Spark master when no session is active and ``spark`` is None.
        spark: a session to run in (its context is shared; views go to a new session of it).

    Returns:
        The rows as an Arrow table, whether they were cut at ``max_rows``, the pinned snapshot.

    Raises:
        QueryError: the statement is not a read-only query, does not parse, or names an unknown table
            or column (the message lists the tables the lake has).
        LakeError: the lake, a table or a pinned version is missing.
    """
    from pyspark.sql import SparkSession

    from moderation.engines.spark import spark_session

    text = check_read_only(sql)
    pinned = pin_lake(lake_root, text, versions=versions, catalog_uri=catalog_uri)  # before Spark starts
    owned = spark is None and SparkSession.getActiveSession() is None
    base = spark if spark is not None else spark_session(master, app_name="moderation-sql")
    session = base.newSession()  # temp views of its own, dropped with it
    try:
        _check_no_write(session, text)
        skipped = register_views(session, pinned)
        rows, truncated = _collect(session, text, pinned=pinned, skipped=skipped, max_rows=max_rows)
    finally:
        if owned:
            base.stop()
    return QueryResult(rows=rows, truncated=truncated, pinned=pinned, skipped=skipped)


@contextmanager
def _quiet_query_errors():
    """Silence pyspark's query-context loggers while a query runs: they print every failed
    query's message and plan as a JSON ERROR record on stderr before the exception is raised,
    and the one ``error:`` line the CLI prints says it already."""
    from pyspark.logger import PySparkLogger

    loggers = [PySparkLogger.getLogger(n) for n in ("SQLQueryContextLogger", "DataFrameQueryContextLogger")]
    before = [lg.disabled for lg in loggers]
    for lg in loggers:
        lg.disabled = True
    try:
        yield
    finally:
        for lg, was in zip(loggers, before, strict=True):
            lg.disabled = was


def _collect(spark: SparkSession, sql: str, *, pinned: PinnedLake, skipped: dict[str, str],
             max_rows: int) -> tuple[pa.Table, bool]:
    from pyspark.errors import (
        AnalysisException,
        ArithmeticException,
        DateTimeException,
        IllegalArgumentException,
        NumberFormatException,
        SparkRuntimeException,
    )

    try:
        with _quiet_query_errors():
            df: DataFrame = spark.sql(sql)
            rows = (df.limit(max_rows + 1) if max_rows else df).toArrow()
    except (AnalysisException, ArithmeticException, DateTimeException, IllegalArgumentException,
            NumberFormatException, SparkRuntimeException) as e:
        message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if "TABLE_OR_VIEW_NOT_FOUND" in message:
            message += f" (tables in {pinned.root}: {', '.join(pinned.available)})"
            for name, why in sorted(skipped.items()):
                message += f"; {name} not readable here: {why}"
        raise QueryError(f"query failed: {message}") from e
    truncated = bool(max_rows) and rows.num_rows > max_rows
    return (rows.slice(0, max_rows) if truncated else rows), truncated


# --- printing ------------------------------------------------------------------------------------


def _cell(value, *, null: str, float_format: str | None) -> str:
    """One value as text; floats in ``float_format`` (None: shortest exact, as repr)."""
    if value is None:
        return null
    if isinstance(value, float):
        return repr(value) if float_format is None else format(value, float_format)
    if isinstance(value, bool):
        return "true" if value else "false"
    plain = _plain(value)
    return plain if isinstance(plain, str) else json.dumps(plain, separators=(",", ":"), ensure_ascii=False)


def format_rows(rows: pa.Table, output: OutputFormat) -> str:
    """The rows as text: an aligned table (numbers right-justified, NULL for nulls), CSV with a
    header (empty for nulls; lists and maps as JSON), or JSON Lines (one object per row)."""
    records = rows.to_pylist()  # map columns as lists of (key, value) pairs: _plain makes objects
    names = rows.column_names
    if output == "json":
        return "".join(json.dumps({k: _plain(r[k]) for k in names}, ensure_ascii=False) + "\n" for r in records)
    if output == "csv":
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(names)
        for r in records:
            writer.writerow([_cell(r[k], null="", float_format=None) for k in names])
        return out.getvalue()
    numeric = {i for i, f in enumerate(rows.schema) if pa.types.is_integer(f.type) or pa.types.is_floating(f.type)
               or pa.types.is_decimal(f.type)}
    cells = [[_cell(r[k], null="NULL", float_format=".6g") for k in names] for r in records]
    widths = [max([len(n)] + [len(c[i]) for c in cells]) for i, n in enumerate(names)]
    lines = ["  ".join((v.rjust(w) if i in numeric else v.ljust(w))
                       for i, (v, w) in enumerate(zip(row, widths, strict=True))).rstrip()
             for row in [names, ["-" * w for w in widths], *cells]]
    return "\n".join(lines) + f"\n({rows.num_rows} row{'s' if rows.num_rows != 1 else ''})\n"


# --- DuckDB --------------------------------------------------------------------------------------


def duckdb_extension_directory() -> str:
    """Where DuckDB installs the packaged delta extension: DuckDB's own default
    (``~/.duckdb/extensions``) when $HOME is writable, else a fresh temporary folder."""
    home = os.path.expanduser("~")
    if home != "~" and os.path.isdir(home) and os.access(home, os.W_OK):
        return os.path.join(home, ".duckdb", "extensions")
    return tempfile.mkdtemp(prefix="duckdb-extensions-")


def duckdb_connect(database: str = ":memory:", *, extension_directory: str | None = None) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection with the delta extension (``delta_scan``) loaded, offline.

    The extension comes from the ``duckdb-extension-delta`` package (``import_extension`` from
    ``duckdb-extensions`` installs its file into the extension directory, which must be
    writable); automatic extension downloads are switched off, so nothing is fetched.

    Args:
        database: the DuckDB database file, or ``:memory:``.
        extension_directory: where to install extensions; default
            :func:`duckdb_extension_directory`.
    """
    import duckdb
    from duckdb_extensions import import_extension

    con = duckdb.connect(database)
    con.execute("SET autoinstall_known_extensions = false")
    directory = extension_directory or duckdb_extension_directory()
    con.execute("SET extension_directory = '" + directory.replace("'", "''") + "'")
    try:
        import_extension("delta", con=con)
    except duckdb.Error:
        # Installed before from another origin (DuckDB's own repository): replace it with the
        # packaged file, which matches this duckdb version.
        import_extension("delta", force_install=True, con=con)
    con.execute("LOAD delta")
    return con
