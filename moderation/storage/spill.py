"""Bucketed local spills: one streaming pass splits a table's rows by a hash of ``item_id`` into
Arrow stream files on local disk, so a job can then work one bucket of items at a time.

Every per-item computation (decide's rules, duplicate keys) gives the same answer bucket by bucket
as over the whole table, and the process holds one bucket, never the table: its memory grows with
the bucket size, not with the catalog. The pass is linear (each row is read, hashed and written
once), unlike a filtered scan of the whole table per bucket.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

if TYPE_CHECKING:
    from moderation.storage.lake import Lake

#: Rows of a bucket: what a job holds at a time grows with this, not with the table.
BUCKET_ROWS = 250_000
#: At most this many buckets (a file each, open at once while a table is split).
MAX_BUCKETS = 1024
#: Scan options for the one pass over a table: modest batches, little read-ahead.
SCAN = {"batch_size": 65_536, "batch_readahead": 2, "fragment_readahead": 1}


def item_buckets(rows: int, bucket_rows: int = BUCKET_ROWS) -> int:
    """How many buckets ``rows`` rows split into."""
    return max(1, min(MAX_BUCKETS, math.ceil(rows / max(1, bucket_rows))))


def bucket_of(item_ids: pa.Array | pa.ChunkedArray, buckets: int) -> np.ndarray:
    """The bucket of each item id: the same id falls in the same bucket in every table a process
    splits (Polars' seeded hash, computed on the Arrow buffers; stable within a Polars version,
    which is all a spill needs, since one process writes and reads it)."""
    import polars as pl

    series = pl.from_arrow(item_ids)
    assert isinstance(series, pl.Series)  # an Arrow array converts to a Series, not a DataFrame
    hashes = series.hash(seed=0).to_numpy()
    return (hashes % np.uint64(buckets)).astype(np.int64)


class BucketSpill:
    """Rows split by item bucket into one Arrow stream file per bucket under ``folder``."""

    def __init__(self, folder: Path, name: str, schema: pa.Schema, buckets: int):
        self.paths = [folder / f"{name}-{b:04d}.arrows" for b in range(buckets)]
        self.schema = schema
        self.buckets = buckets
        self._writers: dict[int, pa.ipc.RecordBatchStreamWriter] = {}

    def _write(self, b: int, batch: pa.RecordBatch) -> None:
        if b not in self._writers:
            self._writers[b] = pa.ipc.new_stream(self.paths[b], self.schema)
        self._writers[b].write_batch(batch)

    def add(self, batch: pa.RecordBatch) -> None:
        """Append ``batch``'s rows (``self.schema``) to their buckets."""
        if batch.num_rows == 0:
            return
        if self.buckets == 1:
            self._write(0, batch)
            return
        which = bucket_of(batch.column("item_id"), self.buckets)
        order = np.argsort(which, kind="stable")
        grouped = batch.take(pa.array(order))
        start = 0
        for b, n in enumerate(np.bincount(which, minlength=self.buckets)):
            if n:
                self._write(b, grouped.slice(start, int(n)))
                start += int(n)

    def close(self) -> None:
        for writer in self._writers.values():
            writer.close()
        self._writers.clear()

    def read(self, b: int) -> pa.Table:
        """The rows of bucket ``b`` (closes the writers first)."""
        self.close()
        if not self.paths[b].exists():
            return self.schema.empty_table()
        with pa.ipc.open_stream(self.paths[b]) as reader:
            return reader.read_all()


def table_rows(dt_table) -> int:
    """Rows of a Delta table's snapshot from its add actions' ``numRecords`` (no data read)."""
    adds = pa.table(dt_table.get_add_actions(flatten=True))
    if "num_records" not in adds.schema.names or adds.column("num_records").null_count:
        return dt_table.to_pyarrow_dataset().count_rows()
    return int(pc.sum(adds.column("num_records")).as_py() or 0)


def scan_batches(dt_table, *, columns: list[str], filter: pc.Expression | None = None) -> Iterator[pa.RecordBatch]:
    """One streaming scan of a Delta table snapshot, a data file at a time, in memory that does
    not grow with the table.

    Not ``to_pyarrow_dataset().scanner()``: the dataset keeps every file's Parquet footer once
    read (about 80 KiB per ``scores`` file), so scanning the 6,094 files of a 3,000,000-item
    ``scores`` table that way peaked 490 MiB higher; here each file is a fresh fragment, dropped
    once read (partition values still come from the Delta log)."""
    dataset = dt_table.to_pyarrow_dataset()
    fmt, fs, schema = dataset.format, dataset.filesystem, dataset.schema
    for listed in dataset.get_fragments():
        fragment = fmt.make_fragment(listed.path, fs, partition_expression=listed.partition_expression)
        yield from fragment.to_batches(schema=schema, columns=columns, filter=filter,
                                       batch_size=SCAN["batch_size"], batch_readahead=SCAN["batch_readahead"])


def spill_scan(spill: BucketSpill, dt_table, *, columns: list[str], filter: pc.Expression | None = None) -> int:
    """Add one streaming scan of a Delta table to ``spill`` (cast to its schema); returns the rows added."""
    rows = 0
    for batch in scan_batches(dt_table, columns=columns, filter=filter):
        spill.add(batch.cast(spill.schema) if batch.schema != spill.schema else batch)
        rows += batch.num_rows
    return rows


def spill_table(lake: Lake, table: str, folder: Path, buckets: int, *, columns: list[str],
                filter: pc.Expression | None = None) -> BucketSpill | None:
    """One pass over a lake table into a :class:`BucketSpill`; None when the table does not exist."""
    dt_table = lake.open(table)
    if dt_table is None:
        return None
    schema = dt_table.to_pyarrow_dataset().scanner(columns=columns).projected_schema
    spill = BucketSpill(folder, table, schema, buckets)
    spill_scan(spill, dt_table, columns=columns, filter=filter)
    spill.close()
    return spill
