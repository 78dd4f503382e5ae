"""The lake: the Delta tables under one root (a local folder or an ``s3://`` prefix).

The only module that writes Delta tables (``tests/test_architecture.py`` holds every other
module to that): :class:`Lake` appends, overwrites, replaces and merges, with the retries on
conflict and the app transactions the callers need, and :func:`overwrite_table` writes a table
outside a lake (the demo catalog). Chunked writes are idempotent Delta commits: each carries an
app transaction ``(app_id, version)`` and is skipped when the table already records that
version, because delta-rs records app transactions but does not skip a duplicate by itself.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeAlias

import pyarrow as pa

from moderation.errors import LakeError
from moderation.faults import fault_point
from moderation.schemas import TABLE_SCHEMAS, VIOLATIONS_PARTITIONS

log = logging.getLogger(__name__)

#: A table the pipeline writes, by path under the lake root: a key of
#: ``moderation.schemas.TABLE_SCHEMAS`` (the one list: adding a table is one entry there).
TableName: TypeAlias = str
#: Commit attempts per chunk (reload + check + commit) before the error is raised.
COMMIT_ATTEMPTS = 8
ANY = object()


class ChunkFenced(LakeError):
    """Another process committed chunks of the same run and model: this one must stop."""


class _TableCreated(Exception):
    """The table appeared while this writer tried to create it: retry as an append."""


def _commit_retrying(*extra: type[BaseException]):
    """Bounded, jittered retries for one commit: a CommitFailedError (another writer won the
    version), a table created concurrently, and ``extra`` error types."""
    from deltalake.exceptions import CommitFailedError
    from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential_jitter

    return Retrying(retry=retry_if_exception_type((CommitFailedError, _TableCreated, *extra)),
                    stop=stop_after_attempt(COMMIT_ATTEMPTS), wait=wait_exponential_jitter(initial=0.2, max=5.0),
                    reraise=True)


#: object_store retry/timeouts for S3 (overridable through $MODERATION_S3_<NAME>, e.g.
#: MODERATION_S3_RETRY_TIMEOUT=120s). A run that still fails is resumed with the same command.
S3_RETRY_OPTIONS = {"max_retries": "3", "retry_timeout": "30s", "timeout": "30s", "connect_timeout": "5s"}


def storage_options(uri: str) -> dict[str, str] | None:
    """Options for delta-rs. Credentials are never put here: delta-rs and boto3 read them
    from the standard AWS environment and credential chain themselves."""
    if not uri.startswith("s3://"):
        return None
    # Commits are conditional PUTs (If-None-Match: *), which S3 and S3-compatible stores such as
    # SeaweedFS enforce atomically: no locking provider, no unsafe rename. Retries are bounded:
    # with the object_store defaults a hung store stalls every call for 3 minutes.
    opts: dict[str, str] = {"conditional_put": "etag", **S3_RETRY_OPTIONS}
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if endpoint:
        opts["AWS_ENDPOINT_URL"] = endpoint
        if endpoint.startswith("http://"):
            opts["AWS_ALLOW_HTTP"] = "true"
    if "AWS_REGION" not in os.environ and "AWS_DEFAULT_REGION" not in os.environ:
        opts["AWS_REGION"] = "us-east-1"
    for name in S3_RETRY_OPTIONS:
        override = os.environ.get(f"MODERATION_S3_{name.upper()}")
        if override:
            opts[name] = override
    return opts


def arrow_filesystem(uri: str):
    """(pyarrow FileSystem, path) for reading ``uri`` with pyarrow; (None, uri) for local paths.

    S3 takes the endpoint from the standard AWS environment (``AWS_ENDPOINT_URL[_S3]``) and
    credentials from the AWS credential chain; nothing is passed explicitly.
    """
    if not uri.startswith("s3://"):
        return None, uri
    from urllib.parse import urlparse

    import pyarrow.fs as pafs

    opts = storage_options(uri) or {}
    kwargs: dict[str, str] = {
        "region": os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1",
    }
    endpoint = opts.get("AWS_ENDPOINT_URL")
    if endpoint:
        parsed = urlparse(endpoint)
        kwargs["endpoint_override"] = parsed.netloc
        kwargs["scheme"] = parsed.scheme or "https"
    return pafs.S3FileSystem(**kwargs), uri[len("s3://"):]


def _evolve(dt, schema: pa.Schema) -> bool:
    """Add the columns of ``schema`` a table written by an older version lacks (schema
    evolution is additive only; older rows read them as null), each with its description as
    the column comment (the field metadata ``Field.from_arrow`` carries over). Returns whether
    it added any (the caller then reloads the table)."""
    from deltalake import Field

    have = set(dt.schema().to_arrow().names)
    missing = [f for f in schema if f.name not in have]
    if missing:
        log.info("adding columns %s to %s", [f.name for f in missing], dt.table_uri)
        dt.alter.add_columns([Field.from_arrow(f.with_nullable(True)) for f in missing])
    return bool(missing)


def as_written(schema: pa.Schema, dt) -> pa.Schema:
    """``schema`` with each column's comment as the existing table ``dt`` has it (none where it
    has none); columns it lacks keep their description.

    delta-rs refuses a merge or a replace whose rows carry a column comment that differs from the
    table's ("Cannot merge metadata with different values for key comment"), so a description
    reworded in ``moderation.schemas`` would break every lake written before. Rows are written
    with the table's own comments; ``moderation tables --write-comments`` updates them on request.
    """
    from moderation.schemas import COMMENT

    have = {f.name: (f.metadata or {}).get(COMMENT) for f in dt.schema().fields}
    fields = []
    for f in schema:
        if f.name in have:
            meta = {k: v for k, v in (f.metadata or {}).items() if k != COMMENT.encode() and k != COMMENT}
            if have[f.name] is not None:
                meta[COMMENT] = have[f.name]
            f = f.with_metadata(meta) if meta else f.remove_metadata()
        fields.append(f)
    return pa.schema(fields, metadata=schema.metadata)


def _no_views(table: pa.Table) -> pa.Table:
    """``table`` with string_view / binary_view columns cast to string / binary."""
    fields = [pa.field(f.name, pa.string() if pa.types.is_string_view(f.type) else
                       pa.binary() if pa.types.is_binary_view(f.type) else f.type, f.nullable) for f in table.schema]
    return table.cast(pa.schema(fields)) if fields != list(table.schema) else table


def _schema(table: str) -> pa.Schema:
    """The schema of a lake table (``TABLE_SCHEMAS``)."""
    schema = TABLE_SCHEMAS.get(table)
    if schema is None:
        raise LakeError(f"internal: {table!r} is not a lake table (moderation.schemas.TABLE_SCHEMAS: "
                        f"{', '.join(TABLE_SCHEMAS)})")
    return schema


def _commit_properties(metadata: dict[str, str] | None = None, transactions: list | None = None):
    """CommitProperties with ``metadata`` as the commit info's custom metadata and the app
    ``transactions``; None when there are neither."""
    from deltalake import CommitProperties

    if metadata is None and not transactions:
        return None
    return CommitProperties(custom_metadata=metadata or {}, app_transactions=transactions or None)


def overwrite_table(uri: str, rows: pa.Table, *, metadata: dict[str, str] | None = None) -> None:
    """Replace the Delta table at ``uri`` whole, rows and schema, as its next version (the first
    write creates it). For a table outside a lake (the demo catalog); :meth:`Lake.overwrite`
    writes one of the lake's."""
    from deltalake import write_deltalake

    write_deltalake(uri, rows, mode="overwrite", schema_mode="overwrite", storage_options=storage_options(uri),
                    commit_properties=_commit_properties(metadata))


def sql_literal(value: str) -> str:
    """``value`` as a SQL string literal (quotes doubled), for delta-rs and DataFusion predicates."""
    return "'" + value.replace("'", "''") + "'"


def join_uri(root: str, *parts: str) -> str:
    return "/".join([root.rstrip("/"), *parts])


def conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """Select and cast ``table`` to exactly ``schema`` (column order, types, nullability, and
    field metadata: the column descriptions, which a new Delta table takes as its column
    comments). Nullable columns the rows lack are null."""
    for f in schema:
        if f.name not in table.column_names and f.nullable:
            table = table.append_column(f.name, pa.nulls(table.num_rows, f.type))
    missing = [f.name for f in schema if f.name not in table.column_names]
    if missing:
        raise LakeError(f"internal: rows for a table lack columns {missing}")
    return table.select(schema.names).cast(schema)


def file_stats(rows: int) -> dict:
    """Delta ``stats`` of one data file of ``rows`` rows: its row count only. Min/max of some columns would let
    readers skip files, but delta-rs' ``to_pyarrow_dataset`` (1.6) reads a column missing from
    ``minValues`` as all-null and prunes the file for any filter on it: stats must cover every
    column or none."""
    return {"numRecords": rows}


@dataclass(frozen=True)
class Lake:
    """Handle on the lake root. Cheap and picklable."""

    root: str

    def uri(self, table: str) -> str:
        return join_uri(self.root, table)

    @property
    def options(self) -> dict[str, str] | None:
        return storage_options(self.root)

    def exists(self, table: str) -> bool:
        from deltalake import DeltaTable

        return DeltaTable.is_deltatable(self.uri(table), storage_options=self.options)

    def open(self, table: str, version: int | None = None):
        """The DeltaTable, or None when it was never written."""
        from deltalake import DeltaTable

        if not self.exists(table):
            return None
        return DeltaTable(self.uri(table), version=version, storage_options=self.options)

    def require(self, table: str, *, written_by: str):
        """The DeltaTable of a table a command reads; ``written_by`` names the command that writes
        it (e.g. ``moderation backfill``).

        Raises:
            LakeError: the table was never written: ``<uri>: no <table> yet; run `<command>` first``.
        """
        dt = self.open(table)
        if dt is None:
            raise LakeError(f"{self.uri(table)}: no {table} yet; run `{written_by}` first")
        return dt

    def version(self, table: str) -> int | None:
        dt = self.open(table)
        return None if dt is None else dt.version()

    def read(self, table: str, *, filter=None, columns: list[str] | None = None,
             version: int | None = None) -> pa.Table:
        """Read a table (a pyarrow compute expression filter), or an empty one of its schema."""
        dt = self.open(table, version=version)
        schema = TABLE_SCHEMAS.get(table)
        if dt is None:
            if schema is None:
                raise LakeError(f"table {self.uri(table)} does not exist")
            empty = schema.empty_table()
            return empty.select(columns) if columns else empty
        dataset = dt.to_pyarrow_dataset()
        try:
            return dataset.to_table(filter=filter, columns=columns)
        except pa.ArrowNotImplementedError:
            # delta-rs 1.6 MERGE/UPDATE write string columns as string_view (delta-rs#4579),
            # which pyarrow cannot compare with a string literal: filter after reading.
            rows = _no_views(dataset.to_table())
            rows = rows.filter(filter) if filter is not None else rows
            return rows.select(columns) if columns else rows

    def transaction_version(self, table: str, app_id: str) -> int | None:
        dt = self.open(table)
        return None if dt is None else dt.transaction_version(app_id)

    def append_chunk(
        self, table: TableName, rows: pa.Table, *, app_id: str, version: int,
        expect_previous: int | None | object = ANY, writer: str | None = None,
    ) -> bool:
        """Append ``rows`` in one commit tagged (app_id, version), unless already committed
        (``append_files`` with the rows written as one data file first; same arguments, same
        result)."""
        return self._append(table, app_id=app_id, version=version, expect_previous=expect_previous, writer=writer,
                            data=conform(rows, _schema(table)))

    def append_files(
        self, table: TableName, adds: list, *, app_id: str, version: int, expect_previous: int | None | object = ANY,
        writer: str | None = None,
    ) -> bool:
        """Commit data files already written into the table folder (``write_data_file``: by the
        Ray write tasks, see pipeline.write_results) in one commit tagged (app_id, version),
        unless already committed. A table not created yet is created empty first.

        Two phases: the data files are written into the table folder, then one Delta commit adds
        them with the app transaction. A process killed between them leaves unreferenced
        files, which no reader sees. The app transaction version is checked before every
        commit attempt (delta-rs records but does not skip duplicates); a CommitFailedError
        (another writer committed the same app id, or the store failed) is handled by
        reloading and checking again, with bounded exponential backoff.

        Args:
            expect_previous: when given, the app transaction version the caller expects the
                table to hold now (its own last chunk). Anything else means another process
                has committed chunks of this app since, the same chunk number included:
                ``ChunkFenced`` is raised and nothing is committed, so two workers of one run
                never both commit, and the loser of a race for one chunk number stops there
                instead of dropping its rows. The one exception is this call's own commit
                (its acknowledgement lost, found landed on the retry): that is success.
            writer: identifies the caller's commits (a ``ChunkWriter`` passes one per writer).
                Each fenced commit also records the app transaction ``(<app_id>#<writer>,
                version)``, which is how a retry tells its own landed commit from another
                process's commit of the same chunk number. With ``expect_previous`` and no
                ``writer`` a token for this call is made up.

        Returns True when this call committed, False when the table already held it (only
        without ``expect_previous``: a replayed chunk is skipped idempotently).

        Raises:
            ChunkFenced: ``expect_previous`` was given and the table holds another version.
        """
        return self._append(table, app_id=app_id, version=version, expect_previous=expect_previous, writer=writer,
                            adds=list(adds))

    def _append(self, table: TableName, *, app_id: str, version: int, expect_previous: int | None | object,
                writer: str | None, data: pa.Table | None = None, adds: list | None = None) -> bool:
        """``append_chunk`` (``data``) or ``append_files`` (``adds``)."""
        import uuid

        from deltalake import CommitProperties, Transaction

        fenced = expect_previous is not ANY
        # One more app transaction in the table's state per writer (a few per run), not per chunk.
        mine = f"{app_id}#{writer or uuid.uuid4().hex}" if fenced else None
        txns = [Transaction(app_id=app_id, version=version)]
        if mine is not None:
            txns.append(Transaction(app_id=mine, version=version))
        # The app id in the commit info too: `moderation tables` shows who wrote last.
        props = CommitProperties(app_transactions=txns, custom_metadata={"moderation.app_id": app_id})
        # OSError too: a commit can fail on the wire after it landed; the check above it tells.
        for attempt in _commit_retrying(OSError):
            with attempt:
                dt = self.open(table)
                if dt is None:
                    if fenced and expect_previous is not None:
                        raise ChunkFenced(self._fenced_message(table, app_id, version, None, expect_previous))
                    if data is not None:
                        self._create(table, data, commit_properties=props)
                        return True
                    dt = self._create_empty(table)
                committed = dt.transaction_version(app_id)
                if fenced:
                    # The fence comes before the "already committed" skip: a chunk number another
                    # process committed is a lost race, not a replay (issue 15).
                    if committed != expect_previous:
                        if committed == version and dt.transaction_version(mine) == version:
                            log.info("%s chunk %s/%d: this writer's commit landed (its answer was lost)",
                                     table, app_id, version)
                            return True
                        raise ChunkFenced(self._fenced_message(table, app_id, version, committed, expect_previous))
                elif committed is not None and committed >= version:
                    log.info("skip %s chunk %s/%d: already committed", table, app_id, version)
                    return False
                _evolve(dt, _schema(table))
                if adds is None:
                    adds = [self.write_data_file(table, data)]
                fault_point("before_commit")
                dt.create_write_transaction(adds, mode="append", schema=_schema(table), commit_properties=props)
                fault_point("after_commit")
                return True
        raise AssertionError("unreachable")

    def _fenced_message(self, table: str, app_id: str, version: int, committed: int | None,
                        expect_previous: object) -> str:
        held = "no chunk" if committed is None else f"chunk {committed}"
        expected = "no chunk" if expect_previous is None else f"chunk {expect_previous}"
        return (
            f"{self.uri(table)}: app {app_id} already holds {held}, this process expected {expected} before "
            f"committing chunk {version}: another process is committing this run (a resumed run took it over, "
            f"or this process had lost its lease). Stopping at chunk {version} without committing it; its rows "
            f"are not written, so the run that goes on (or the same command run again) scores them"
        )

    def write_data_file(self, table: TableName, rows: pa.Table):
        """Write ``rows`` (conformed to the table's schema) as one new Parquet file in the table
        folder, committing nothing; its Delta add action, for ``append_files``. Safe in any
        process that can reach the lake (a Ray worker): a file never committed is never read."""
        import json
        import time
        import uuid

        import pyarrow.parquet as pq
        from deltalake.transaction import AddAction

        data = conform(rows, _schema(table))
        name = f"part-00000-{uuid.uuid4()}-c000.zstd.parquet"
        fs, path = arrow_filesystem(join_uri(self.uri(table), name))
        if fs is None:  # a local table not created yet (its first chunk): the folder comes first
            os.makedirs(os.path.dirname(path), exist_ok=True)
        pq.write_table(data, path, filesystem=fs, compression="zstd")
        size = fs.get_file_info(path).size if fs is not None else os.stat(path).st_size
        return AddAction(path=name, size=size, partition_values={}, modification_time=int(time.time() * 1000),
                         data_change=True, stats=json.dumps(file_stats(data.num_rows)))

    def _create_empty(self, table: TableName):
        """Create ``table`` with no rows (its schema only), or open it when another writer just did."""
        from deltalake import DeltaTable

        try:
            return DeltaTable.create(self.uri(table), schema=_schema(table), mode="ignore",
                                     storage_options=self.options)
        except Exception as e:  # noqa: BLE001 - another writer may have created it
            if self.exists(table):
                raise _TableCreated() from e
            raise

    def _create(self, table: str, data: pa.Table, **kwargs) -> None:
        """The first write of ``table``. When another writer created it at the same moment, raise
        ``_TableCreated`` so the caller's retry loop goes on with the existing table."""
        from deltalake import write_deltalake

        try:
            write_deltalake(self.uri(table), data, mode="append", storage_options=self.options, **kwargs)
        except Exception as e:  # noqa: BLE001 - another writer may have created it
            if self.exists(table):
                raise _TableCreated() from e
            raise

    def replace_violations(self, rows: pa.Table | Callable[[], pa.RecordBatchReader], *, policy_id: str,
                           policy_version: int, run_id: str) -> None:
        """Replace one policy version's violations in a single atomic commit.

        Readers see the old rows or the new ones, never a mix. A decide of another version
        committing at the same moment is a conflict delta-rs reports; the replace is retried on
        the reloaded table (bounded, with backoff). A table written before a column of the
        schema existed gains it first (older partitions read it as null).

        Args:
            rows: the rows, or a function returning a fresh stream of them for each attempt
                (``decide`` streams its rows from a local spill, so they are never all in memory).
        """
        from deltalake import CommitProperties, write_deltalake

        def data(schema: pa.Schema) -> pa.Table | pa.RecordBatchReader:
            if isinstance(rows, pa.Table):
                return conform(rows, schema)
            reader = rows()
            return pa.RecordBatchReader.from_batches(schema, (
                out for batch in reader
                for out in conform(pa.Table.from_batches([batch], reader.schema), schema).to_batches()))

        props = CommitProperties(custom_metadata={"moderation.run_id": run_id})
        pid = policy_id.replace("'", "''")
        for attempt in _commit_retrying():
            with attempt:
                current = self.open("violations")
                if current is None:
                    self._create("violations", data(TABLE_SCHEMAS["violations"]), partition_by=VIOLATIONS_PARTITIONS,
                                 commit_properties=props)
                    return
                if _evolve(current, TABLE_SCHEMAS["violations"]):
                    current = self.open("violations")
                write_deltalake(
                    self.uri("violations"), data(as_written(TABLE_SCHEMAS["violations"], current)), mode="overwrite",
                    predicate=f"policy_id = '{pid}' AND policy_version = {int(policy_version)}",
                    storage_options=self.options, commit_properties=props,
                )

    def replace_where(self, table: str, rows: pa.Table, *, predicate: str, schema: pa.Schema | None = None,
                      metadata: dict[str, str] | None = None) -> None:
        """Replace the rows matching the SQL ``predicate`` by ``rows`` in one atomic commit.

        The table is created on first write; a table written before a column of ``schema``
        existed gains it first; a concurrent commit is retried on the reloaded table."""
        from deltalake import CommitProperties, write_deltalake

        schema = schema or _schema(table)
        data = conform(rows, schema)
        props = CommitProperties(custom_metadata=metadata or {})
        for attempt in _commit_retrying():
            with attempt:
                current = self.open(table)
                if current is None:
                    self._create(table, data, commit_properties=props)
                    return
                if _evolve(current, schema):
                    current = self.open(table)
                write_deltalake(self.uri(table), data.cast(as_written(schema, current)), mode="overwrite",
                                predicate=predicate, storage_options=self.options, commit_properties=props)

    def append(self, table: str, rows: pa.Table, *, metadata: dict[str, str] | None = None) -> None:
        """Append ``rows`` in one commit; the first write creates the table. No app transaction
        and no retry: a call repeated appends the rows again (``append_chunk`` is the
        exactly-once append). Rows of a lake table are conformed to its schema first.

        Args:
            metadata: the commit info's custom metadata (e.g. ``{"moderation.run_id": ...}``).
        """
        from deltalake import write_deltalake

        schema = TABLE_SCHEMAS.get(table)
        data = conform(rows, schema) if schema is not None else rows
        write_deltalake(self.uri(table), data, mode="append", storage_options=self.options,
                        commit_properties=_commit_properties(metadata))

    def overwrite(self, table: str, rows: pa.Table, *, metadata: dict[str, str] | None = None) -> None:
        """Replace ``table`` whole, rows and schema, in one commit (its next version; older ones
        stay readable by time travel); the first write creates it. For tables rewritten whole
        each time (``reports/*``, evaluation datasets)."""
        overwrite_table(self.uri(table), rows, metadata=metadata)

    def overwrite_files(self, table: str, folder: str, *, schema: pa.Schema,
                        metadata: dict[str, str] | None = None) -> int:
        """Replace ``table`` whole with the Parquet files another engine wrote under ``folder``
        (a folder inside the table's, named relative to it: Spark's own writer, see
        ``engines.spark.write_parquet``), in one commit (the first write creates the table;
        older versions stay readable by time travel). The rows never pass through this process:
        only the files' footers are read, for their row counts. Files whose names start with
        ``.`` or ``_`` (checksums, ``_SUCCESS``) are left out. Returns the rows committed.

        Raises:
            LakeError: a file's columns are not ``schema``'s (the engine wrote something else).
        """
        import json

        import pyarrow.fs as pafs
        import pyarrow.parquet as pq
        from deltalake import Schema
        from deltalake.transaction import AddAction, create_table_with_add_actions

        uri = self.uri(table)
        fs, base = arrow_filesystem(uri)
        fs = fs or pafs.LocalFileSystem()
        infos = fs.get_file_info(pafs.FileSelector(f"{base}/{folder}"))
        adds, rows = [], 0
        for info in sorted((i for i in infos if i.is_file), key=lambda i: i.base_name):
            if info.base_name.startswith((".", "_")) or not info.base_name.endswith(".parquet"):
                continue
            with fs.open_input_file(info.path) as f:
                footer = pq.ParquetFile(f)
                names, n = footer.schema_arrow.names, footer.metadata.num_rows
            if names != schema.names:
                raise LakeError(f"{uri}/{folder}/{info.base_name}: columns {names}, expected {schema.names}")
            mtime = int(info.mtime.timestamp() * 1000) if info.mtime is not None else 0
            adds.append(AddAction(f"{folder}/{info.base_name}", info.size, {}, mtime, True,
                                  json.dumps(file_stats(n))))
            rows += n
        props = _commit_properties(metadata)
        current = self.open(table)
        if current is None:
            create_table_with_add_actions(uri, Schema.from_arrow(schema), adds, mode="error",
                                          storage_options=storage_options(uri), commit_properties=props)
        else:  # an overwrite (operation WRITE), as Lake.overwrite commits it
            current.create_write_transaction(adds, mode="overwrite", schema=Schema.from_arrow(schema),
                                             commit_properties=props)
        return rows

    def rewrite(self, table: str, *, predicate: str, rows: Callable[[Any], pa.Table | None],
                schema: pa.Schema | None = None, metadata: dict[str, str] | None = None) -> pa.Table | None:
        """Read, change and write back the rows matching the SQL ``predicate`` in one atomic commit.

        ``rows(dt)`` computes the new rows from the table's snapshot ``dt`` (the DeltaTable,
        which gained the columns of ``schema`` it lacked). The overwrite commits against that
        snapshot, so a commit in between is a conflict and ``rows`` is called again on the
        reloaded table (bounded, with backoff). The rows are conformed to ``schema`` (default:
        the table's). Returns the rows written, or None when the table does not exist or
        ``rows`` returned None (nothing is written then)."""
        from deltalake import write_deltalake

        schema = schema or _schema(table)
        props = _commit_properties(metadata or {})
        for attempt in _commit_retrying():
            with attempt:
                current = self.open(table)
                if current is None:
                    return None
                _evolve(current, schema)  # rows are written with every column of the schema
                data = rows(current)
                if data is None:
                    return None
                write_deltalake(current, conform(data, schema), mode="overwrite", predicate=predicate,
                                storage_options=self.options, commit_properties=props)
                return data
        raise AssertionError("unreachable")

    def merge(
        self, table: str, source: pa.Table, *, predicate: str, clauses: Callable[[Any], Any],
        metadata: dict[str, str] | None = None, app_id: str | None = None, version: int | None = None,
        done: Callable[[Any], bool] | None = None, schema: pa.Schema | None = None, merge_schema: bool = False,
        configuration: dict[str, str] | None = None,
    ) -> dict | None:
        """MERGE ``source`` (alias ``s``) into ``table`` (alias ``t``) on the SQL ``predicate`` in
        one commit, retried on the reloaded table when another writer commits in between
        (bounded, with backoff). The first write creates the table with ``source`` as its rows.

        Args:
            clauses: adds the merge's clauses to delta-rs' ``TableMerger`` and returns it, e.g.
                ``lambda m: m.when_matched_update_all().when_not_matched_insert_all()``.
            metadata: the commit info's custom metadata.
            app_id, version: the app transaction the commit carries (exactly once: with ``done``).
                A merge that changes nothing commits the transaction alone (no data change),
                since delta-rs commits nothing for it and the version would go unrecorded.
            done: called with the table's snapshot before merging; True means the table already
                holds this merge (e.g. its app transaction records ``version``): nothing is
                written and None is returned.
            schema: cast ``source`` to it with the table's own column comments (``as_written``).
            merge_schema: let the merge add the source's columns the table lacks.
            configuration: the table's configuration when this write creates it (e.g. the change
                data feed).

        Returns:
            delta-rs' merge metrics (``{"num_target_rows_inserted": n}`` when this write created
            the table), or None when ``done`` said the table held it already.
        """
        from deltalake import Transaction

        if (app_id is None) != (version is None):
            raise LakeError("internal: merge takes app_id and version together")
        txns = [Transaction(app_id=app_id, version=version)] if app_id is not None and version is not None else None
        props = _commit_properties(metadata or {}, txns)
        for attempt in _commit_retrying():
            with attempt:
                target = self.open(table)
                if target is None:
                    self._create(table, source, commit_properties=props,
                                 **({"configuration": configuration} if configuration is not None else {}))
                    return {"num_target_rows_inserted": source.num_rows}
                if done is not None and done(target):
                    return None
                data = source.cast(as_written(schema, target)) if schema is not None else source
                merger = target.merge(data, predicate=predicate, source_alias="s", target_alias="t",
                                      merge_schema=merge_schema, commit_properties=props)
                metrics = clauses(merger).execute()
                if txns and not any(metrics.get(f"num_target_rows_{k}", 0) for k in ("inserted", "updated", "deleted")):
                    # delta-rs commits nothing for a merge that changes nothing, so the app
                    # transaction would go unrecorded and every rerun would merge again: commit it
                    # alone (no data change; change-feed readers see no rows).
                    target.create_write_transaction([], mode="append", schema=_schema(table), commit_properties=props)
                return metrics
        raise AssertionError("unreachable")

    def write_comments(self, table: str, schema: pa.Schema) -> list[str]:
        """Set the column comments of an existing ``table`` to the descriptions in ``schema``
        (``moderation.schemas``) where they differ; the columns changed, in order.

        New tables and added columns get their comments as they are written; a table created
        before the descriptions existed keeps no comments until this runs. delta-rs changes one
        column's metadata per commit, and a metadata commit makes concurrent writers retry, so it
        runs on request (``moderation tables --write-comments``), not inside a job."""
        from moderation.schemas import COMMENT, description

        dt = self.open(table)
        if dt is None:
            raise LakeError(f"table {self.uri(table)} does not exist")
        have = {f.name: (f.metadata or {}).get(COMMENT) for f in dt.schema().fields}
        changed = []
        for field in schema:
            text = description(field)
            if text is None or field.name not in have or have[field.name] == text:
                continue
            dt.alter.set_column_metadata(field.name, {COMMENT: text})
            changed.append(field.name)
        return changed
