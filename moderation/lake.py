"""The lake: the Delta tables under one root (a local folder or an ``s3://`` prefix).

One place commits. Chunked writes are idempotent Delta commits: each carries an app
transaction ``(app_id, version)`` and is skipped when the table already records that version,
because delta-rs records app transactions but does not skip a duplicate by itself.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Literal

import pyarrow as pa
import pyarrow.compute as pc

from moderation.errors import LakeError
from moderation.schemas import RUNS_SCHEMA, TABLE_SCHEMAS, VIOLATIONS_PARTITIONS

log = logging.getLogger(__name__)

TableName = Literal["scores", "quarantine", "violations", "runs"]


def storage_options(uri: str) -> dict[str, str] | None:
    """Options for delta-rs. Credentials are never put here: delta-rs and boto3 read them
    from the standard AWS environment and credential chain themselves."""
    if not uri.startswith("s3://"):
        return None
    opts: dict[str, str] = {}
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if endpoint:
        opts["AWS_ENDPOINT_URL"] = endpoint
        if endpoint.startswith("http://"):
            opts["AWS_ALLOW_HTTP"] = "true"
    if "AWS_REGION" not in os.environ and "AWS_DEFAULT_REGION" not in os.environ:
        opts["AWS_REGION"] = "us-east-1"
    return opts


def join_uri(root: str, *parts: str) -> str:
    return "/".join([root.rstrip("/"), *parts])


def conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """Select and cast ``table`` to exactly ``schema`` (column order, types, nullability)."""
    missing = [f.name for f in schema if f.name not in table.column_names]
    if missing:
        raise LakeError(f"internal: rows for a table lack columns {missing}")
    return table.select(schema.names).cast(schema)


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

    def version(self, table: str) -> int | None:
        dt = self.open(table)
        return None if dt is None else dt.version()

    def read(self, table: str, *, filter=None, columns: list[str] | None = None, version: int | None = None) -> pa.Table:
        """Read a table (a pyarrow compute expression filter), or an empty one of its schema."""
        dt = self.open(table, version=version)
        schema = TABLE_SCHEMAS.get(table)
        if dt is None:
            if schema is None:
                raise LakeError(f"table {self.uri(table)} does not exist")
            empty = schema.empty_table()
            return empty.select(columns) if columns else empty
        return dt.to_pyarrow_dataset().to_table(filter=filter, columns=columns)

    def transaction_version(self, table: str, app_id: str) -> int | None:
        dt = self.open(table)
        return None if dt is None else dt.transaction_version(app_id)

    def append_chunk(self, table: TableName, rows: pa.Table, *, app_id: str, version: int) -> bool:
        """Append ``rows`` in one commit tagged (app_id, version), unless already committed.

        Returns True when this call committed, False when the table already held it.
        """
        from deltalake import CommitProperties, Transaction, write_deltalake

        committed = self.transaction_version(table, app_id)
        if committed is not None and committed >= version:
            log.info("skip %s chunk %s/%d: already committed", table, app_id, version)
            return False
        data = conform(rows, TABLE_SCHEMAS[table])
        write_deltalake(
            self.uri(table),
            data,
            mode="append",
            partition_by=VIOLATIONS_PARTITIONS if table == "violations" else None,
            storage_options=self.options,
            commit_properties=CommitProperties(
                app_transactions=[Transaction(app_id=app_id, version=version)]
            ),
        )
        return True

    def replace_violations(self, rows: pa.Table, *, policy_id: str, policy_version: int, run_id: str) -> None:
        """Replace one policy version's violations in a single atomic commit."""
        from deltalake import CommitProperties, write_deltalake

        data = conform(rows, TABLE_SCHEMAS["violations"])
        if not self.exists("violations"):
            write_deltalake(
                self.uri("violations"),
                data,
                mode="append",
                partition_by=VIOLATIONS_PARTITIONS,
                storage_options=self.options,
                commit_properties=CommitProperties(custom_metadata={"moderation.run_id": run_id}),
            )
            return
        pid = policy_id.replace("'", "''")
        write_deltalake(
            self.uri("violations"),
            data,
            mode="overwrite",
            predicate=f"policy_id = '{pid}' AND policy_version = {int(policy_version)}",
            storage_options=self.options,
            commit_properties=CommitProperties(custom_metadata={"moderation.run_id": run_id}),
        )

    def get_run(self, run_id: str) -> dict | None:
        runs = self.read("runs", filter=pc.field("run_id") == run_id)
        if runs.num_rows == 0:
            return None
        return runs.to_pylist()[0]

    def upsert_run(self, row: dict) -> None:
        """Insert or update the one ``runs`` row of a run (merge on run_id)."""
        from deltalake import write_deltalake

        data = pa.Table.from_pylist([row], schema=RUNS_SCHEMA)
        dt = self.open("runs")
        if dt is None:
            write_deltalake(self.uri("runs"), data, mode="append", storage_options=self.options)
            return
        (
            dt.merge(data, predicate="t.run_id = s.run_id", source_alias="s", target_alias="t")
            .when_matched_update_all()
            .when_not_matched_insert_all()
            .execute()
        )
