"""Turning scored work rows into ``scores`` and ``quarantine`` rows, and committing them in
idempotent chunks. Pure Arrow; no Ray, so it is tested on its own."""

from __future__ import annotations

import datetime as dt
import logging
import uuid

import pyarrow as pa
import pyarrow.compute as pc

from moderation.classifiers.base import CONTENT_HASH, COVERAGE_COLUMNS, QDETAIL, QREASON, QSTAGE
from moderation.config import ModelSpec
from moderation.faults import fault_point
from moderation.lake import ChunkFenced, Lake
from moderation.schemas import QUARANTINE_SCHEMA, SCORES_SCHEMA

log = logging.getLogger(__name__)


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def split_results(batch: pa.Table, *, run_id: str, model: ModelSpec, now: dt.datetime) -> tuple[pa.Table, pa.Table]:
    """Scored work rows -> (scores rows, quarantine rows). Every input row lands in exactly one."""
    bad = pc.is_valid(batch.column(QREASON))
    ok_rows = batch.filter(pc.invert(bad))
    q_rows = batch.filter(bad)
    n_ok, n_q = ok_rows.num_rows, q_rows.num_rows
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
    """Accumulates scored rows and commits every ``chunk_pairs`` of them as one idempotent
    chunk: quarantine rows first, then scores rows, each tagged with the app transaction
    ``(app_id, chunk)``. Chunks are numbered monotonically; on resume numbering continues
    after the highest chunk either table recorded, so a re-run never re-commits a chunk.

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
        ChunkFenced: from ``add``/``flush``, when another process committed chunks of this run
            and model since this writer last did.
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
        self.rows_written = {"scores": 0, "quarantine": 0}

    def add(self, batch: pa.Table) -> None:
        """Buffer scored rows; commit a chunk each time ``chunk_pairs`` rows are buffered."""
        self.pending.append(batch)
        self.pending_rows += batch.num_rows
        while self.pending_rows >= self.chunk_pairs:
            buffered = pa.concat_tables(self.pending, promote_options="permissive")
            self._commit(buffered.slice(0, self.chunk_pairs))
            rest = buffered.slice(self.chunk_pairs)
            self.pending, self.pending_rows = [rest], rest.num_rows

    def flush(self) -> None:
        """Commit whatever is buffered as a final (possibly short) chunk."""
        if self.pending_rows:
            self._commit(pa.concat_tables(self.pending, promote_options="permissive"))
        self.pending, self.pending_rows = [], 0

    def _commit(self, batch: pa.Table) -> None:
        scores, quarantine = split_results(batch, run_id=self.run_id, model=self.model, now=utcnow())
        for table, rows in (("quarantine", quarantine), ("scores", scores)):
            if not rows.num_rows:
                continue
            # Fenced: another process's commit of this chunk number (or a later one) raises
            # ChunkFenced here, so this writer stops at its first contested chunk with nothing
            # dropped; it never advances past a chunk it did not commit itself.
            if not self.lake.append_chunk(table, rows, app_id=self.app_id, version=self.next_chunk,
                                          expect_previous=self.last[table], writer=self.writer):
                raise ChunkFenced(f"internal: chunk {self.next_chunk} of {self.app_id} was skipped by a fenced commit")
            self.rows_written[table] += rows.num_rows
            self.last[table] = self.next_chunk
        log.info("committed chunk %d: %d scores, %d quarantine", self.next_chunk, scores.num_rows, quarantine.num_rows)
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
