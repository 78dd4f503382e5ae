"""Turning scored work rows into ``scores`` and ``quarantine`` rows, writing them as data files
(in the Ray write tasks) and committing them in idempotent chunks (in the driver). Pure Arrow;
no Ray, so it is tested on its own."""

from __future__ import annotations

import datetime as dt
import logging
import uuid

import pyarrow as pa
import pyarrow.compute as pc

from moderation.classifiers.base import CONTENT_HASH, COVERAGE_COLUMNS, QDETAIL, QREASON, QSTAGE
from moderation.clock import utcnow
from moderation.config import ModelSpec
from moderation.faults import fault_point
from moderation.schemas import QUARANTINE_SCHEMA, SCORES_SCHEMA
from moderation.storage.lake import ChunkFenced, Lake, TableName

log = logging.getLogger(__name__)


#: Column of scored work rows naming the model they are for (a modality's pass holds several).
MODEL_COLUMN = "model_id"

#: One row per data file a write task put into the lake, uncommitted (``written_files``): all
#: the driver receives of a run's scored rows.
FILES_SCHEMA = pa.schema([
    pa.field("model_id", pa.string(), nullable=False),
    pa.field("table", pa.string(), nullable=False),  # "scores" or "quarantine"
    pa.field("path", pa.string(), nullable=False),  # relative to the table folder
    pa.field("size", pa.int64(), nullable=False),
    pa.field("rows", pa.int64(), nullable=False),
    pa.field("modification_time", pa.int64(), nullable=False),
    pa.field("stats", pa.string(), nullable=False),  # Delta stats JSON (lake.file_stats)
])


def by_model(batch: pa.Table):
    """(model id, its rows) for each model of rows carrying ``MODEL_COLUMN``."""
    ids = batch.column(MODEL_COLUMN)
    for model_id in pc.unique(ids).to_pylist():
        yield model_id, batch.filter(pc.equal(ids, model_id))


def written_files(batch: pa.Table, *, lake: Lake, run_id: str, models: dict[str, ModelSpec]) -> pa.Table:
    """Scored work rows of one or more models (``MODEL_COLUMN``) -> one ``scores`` and one
    ``quarantine`` data file per model written into the lake (nothing committed), as
    ``FILES_SCHEMA`` rows. Every input row lands in exactly one file."""
    now = utcnow()
    out = []
    for model_id, rows in by_model(batch):
        scores, quarantine = split_results(rows, run_id=run_id, model=models[model_id], now=now)
        parts: tuple[tuple[TableName, pa.Table], ...] = (("quarantine", quarantine), ("scores", scores))
        for table, data in parts:
            if data.num_rows:
                add = lake.write_data_file(table, data)
                out.append({"model_id": model_id, "table": table, "path": add.path, "size": add.size,
                            "rows": data.num_rows, "modification_time": add.modification_time, "stats": add.stats})
    return pa.Table.from_pylist(out, schema=FILES_SCHEMA)


def add_action(row: dict):
    """The Delta add action of a ``FILES_SCHEMA`` row."""
    from deltalake.transaction import AddAction

    return AddAction(path=row["path"], size=row["size"], partition_values={},
                     modification_time=row["modification_time"], data_change=True, stats=row["stats"])


def split_results(batch: pa.Table, *, run_id: str, model: ModelSpec, now: dt.datetime) -> tuple[pa.Table, pa.Table]:
    """Scored work rows -> (scores rows, quarantine rows). Every input row lands in exactly one."""
    bad = pc.is_valid(batch.column(QREASON))
    ok_rows = batch.filter(pc.invert(bad))
    q_rows = batch.filter(bad)
    n_ok = ok_rows.num_rows
    scores = pa.table(
        {
            "run_id": pa.array([run_id] * n_ok, pa.string()),
            "item_id": ok_rows.column("item_id"),
            "item_type": ok_rows.column("item_type"),
            "modality": ok_rows.column("modality"),
            "model_id": pa.array([model.model_id] * n_ok, pa.string()),
            "model_digest": pa.array([model.digest] * n_ok, pa.string()),
            "content_hash": ok_rows.column(CONTENT_HASH),
            "category_scores": ok_rows.column("category_scores"),
            "evidence": ok_rows.column("evidence"),
            "language": ok_rows.column("language"),
            "markets": ok_rows.column("markets"),
            "explicit": ok_rows.column("explicit"),
            "scored_at": pa.array([now] * n_ok, SCORES_SCHEMA.field("scored_at").type),
            **coverage(ok_rows),
            **{c: _column_or_null(ok_rows, c) for c in ("creator_id", "show_id", "album_id")},
        },
        schema=SCORES_SCHEMA,
    )
    quarantine = quarantine_table(
        run_id=run_id, model_id=model.model_id, item_ids=q_rows.column("item_id"), modalities=q_rows.column("modality"),
        stages=q_rows.column(QSTAGE).cast(pa.string()).fill_null("preprocess"),
        reasons=q_rows.column(QREASON).cast(pa.string()), details=q_rows.column(QDETAIL).cast(pa.string()), now=now,
        content_hashes=q_rows.column(CONTENT_HASH) if CONTENT_HASH in q_rows.column_names else None,
    )
    return scores, quarantine


def _column_or_null(rows: pa.Table, name: str) -> pa.ChunkedArray | pa.Array:
    """A ``scores`` column copied from the work rows, or nulls where they lack it (work rows built
    before the column was carried, e.g. by a classifier's own ``prepare``)."""
    if name in rows.column_names:
        return rows.column(name)
    return pa.nulls(rows.num_rows, SCORES_SCHEMA.field(name).type)


def coverage(rows: pa.Table) -> dict[str, pa.Array]:
    """The ``scores`` coverage columns of scored work rows (null where the classifier does not
    record coverage): what ``preprocess`` counted, and the share scored."""
    n = rows.num_rows
    cols = {c: rows.column(c) if c in rows.column_names else pa.nulls(n, SCORES_SCHEMA.field(c).type)
            for c in COVERAGE_COLUMNS}
    total = pc.cast(cols["units_total"], pa.float64())
    share = pc.if_else(pc.greater(total, 0), pc.divide(pc.cast(cols["units_scored"], pa.float64()), total), 1.0)
    cols["coverage"] = pc.if_else(pc.is_valid(total), share, pa.scalar(None, pa.float64())).cast(pa.float32())
    return cols


def quarantine_table(*, run_id: str, model_id: str, item_ids, modalities, stages, reasons, details,
                     now: dt.datetime, content_hashes=None) -> pa.Table:
    """``quarantine`` rows from per-row columns (arrays or lists) of equal length."""
    n = len(item_ids)
    if content_hashes is None:
        content_hashes = [None] * n
    return pa.table(
        {
            "run_id": pa.array([run_id] * n, pa.string()),
            "item_id": pa.array(item_ids, pa.string()) if isinstance(item_ids, list) else item_ids,
            "modality": pa.array(modalities, pa.string()) if isinstance(modalities, list) else modalities,
            "model_id": pa.array([model_id] * n, pa.string()),
            "stage": pa.array(stages, pa.string()) if isinstance(stages, list) else stages,
            "reason": pa.array(reasons, pa.string()) if isinstance(reasons, list) else reasons,
            "detail": pa.array(details, pa.string()) if isinstance(details, list) else details,
            "quarantined_at": pa.array([now] * n, QUARANTINE_SCHEMA.field("quarantined_at").type),
            "content_hash": pa.array(content_hashes, pa.string()) if isinstance(content_hashes, list)
            else content_hashes.cast(pa.string()),
        },
        schema=QUARANTINE_SCHEMA,
    )


class ChunkWriter:
    """Commits one model's scored rows of a run in idempotent chunks: quarantine files first,
    then scores files, each commit tagged with the app transaction ``(app_id, chunk)``. Chunks
    are numbered monotonically; on resume numbering continues after the highest chunk either
    table recorded, so a re-run never re-commits a chunk.

    Two ways in: ``add_files`` takes data files the Ray write tasks wrote (``written_files``;
    the run's path, the driver never holds the rows) and commits them once at least
    ``chunk_pairs`` pairs are buffered (a chunk is whole files, so it may hold a little more);
    ``add`` takes rows, writes them here and commits exactly ``chunk_pairs`` per chunk.

    Every commit is fenced (``expect_previous``: the writer's own last chunk in that table), so
    when two processes of one run race (a worker that lost its lease and the run's resumer),
    whichever commits a chunk number second to a table raises ``ChunkFenced`` at that chunk
    instead of skipping its rows as already there. (When the other process had not written the
    other table's part of that chunk yet, this writer's part there may have landed first; then
    that process is fenced at its next commit to that table. A pair is then committed twice
    only if the two processes gave it different outcomes, scored by one and quarantined by the
    other: the two tables cannot be fenced in one atomic step, and the run's accounting check
    reports such a duplicate. What is not committed is scored by whoever resumes the run.)

    Raises:
        ChunkFenced: from ``add``/``add_files``/``flush``, when another process committed
            chunks of this run and model since this writer last did.
    """

    def __init__(self, lake: Lake, *, run_id: str, model: ModelSpec, chunk_pairs: int) -> None:
        self.lake = lake
        self.run_id = run_id
        self.model = model
        self.chunk_pairs = chunk_pairs
        self.app_id = f"moderation/backfill/{run_id}/{model.model_id}"
        # The app transaction version each table holds now; a commit expects exactly this (its
        # own last chunk), so chunks committed by another process fence this writer off.
        self.last = {t: lake.transaction_version(t, self.app_id) for t in ("scores", "quarantine")}
        # Marks this writer's own commits (see Lake.append_chunk), so a retry whose commit landed
        # is told apart from another process's commit of the same chunk number.
        self.writer = uuid.uuid4().hex
        self.next_chunk = max([v for v in self.last.values() if v is not None], default=-1) + 1
        self.chunks_committed = 0
        self.pending: list[pa.Table] = []
        self.pending_rows = 0
        self.pending_files: list[dict] = []
        self.pending_file_rows = 0
        self.rows_written = {"scores": 0, "quarantine": 0}

    def add(self, batch: pa.Table) -> None:
        """Buffer scored rows; commit a chunk each time ``chunk_pairs`` rows are buffered."""
        self.pending.append(batch)
        self.pending_rows += batch.num_rows
        while self.pending_rows >= self.chunk_pairs:
            buffered = pa.concat_tables(self.pending, promote_options="permissive")
            self._commit_rows(buffered.slice(0, self.chunk_pairs))
            rest = buffered.slice(self.chunk_pairs)
            self.pending, self.pending_rows = [rest], rest.num_rows

    def add_files(self, files: list[dict]) -> None:
        """Buffer written data files of this model (``FILES_SCHEMA`` rows); commit them as one
        chunk once they hold ``chunk_pairs`` pairs or more."""
        for f in files:
            if f["model_id"] != self.model.model_id:
                raise ValueError(f"internal: file of {f['model_id']} given to the writer of {self.model.model_id}")
            self.pending_files.append(f)
            self.pending_file_rows += f["rows"]
            if self.pending_file_rows >= self.chunk_pairs:
                self._commit_files()

    def flush(self) -> None:
        """Commit whatever is buffered as a final (possibly short) chunk."""
        if self.pending_rows:
            self._commit_rows(pa.concat_tables(self.pending, promote_options="permissive"))
        self.pending, self.pending_rows = [], 0
        if self.pending_files:
            self._commit_files()

    def _commit_rows(self, batch: pa.Table) -> None:
        scores, quarantine = split_results(batch, run_id=self.run_id, model=self.model, now=utcnow())
        parts: tuple[tuple[TableName, pa.Table], ...] = (("quarantine", quarantine), ("scores", scores))
        adds: dict[str, list] = {t: [self.lake.write_data_file(t, rows)] if rows.num_rows else [] for t, rows in parts}
        self._commit(adds, {"quarantine": quarantine.num_rows, "scores": scores.num_rows})

    def _commit_files(self) -> None:
        adds: dict[str, list] = {"quarantine": [], "scores": []}
        rows = {"quarantine": 0, "scores": 0}
        for f in self.pending_files:
            adds[f["table"]].append(add_action(f))
            rows[f["table"]] += f["rows"]
        self._commit(adds, rows)
        self.pending_files, self.pending_file_rows = [], 0

    def _commit(self, adds: dict[str, list], rows: dict[str, int]) -> None:
        for table in ("quarantine", "scores"):
            if not adds[table]:
                continue
            # Fenced: another process's commit of this chunk number (or a later one) raises
            # ChunkFenced here, so this writer stops at its first contested chunk with nothing
            # dropped; it never advances past a chunk it did not commit itself.
            if not self.lake.append_files(table, adds[table], app_id=self.app_id, version=self.next_chunk,
                                          expect_previous=self.last[table], writer=self.writer):
                raise ChunkFenced(f"internal: chunk {self.next_chunk} of {self.app_id} was skipped by a fenced commit")
            self.rows_written[table] += rows[table]
            self.last[table] = self.next_chunk
        log.info("committed chunk %d of %s: %d scores, %d quarantine", self.next_chunk, self.model.model_id,
                 rows["scores"], rows["quarantine"])
        self.next_chunk += 1
        self.chunks_committed += 1
        fault_point("between_chunks")

    def commit_prelude(self, rows: list, *, modality: str) -> int:
        """Commit the driver's quarantine rows for this model (rows without a usable or unique
        item id; see selection.py) once per run: app ``<app_id>/prelude``, version 0."""
        if not rows:
            return 0
        n = len(rows)
        table = quarantine_table(
            run_id=self.run_id, model_id=self.model.model_id, item_ids=[r.item_id for r in rows],
            modalities=[modality] * n, stages=["catalog"] * n, reasons=[r.reason for r in rows],
            details=[r.detail for r in rows], now=utcnow(),
        )
        if self.lake.append_chunk("quarantine", table, app_id=f"{self.app_id}/prelude", version=0):
            self.rows_written["quarantine"] += n
        return n
