"""Incremental re-scans: score only what changed since the last successful run.

A (item, modality, model) pair is selected when, compared with the lake's *baseline* (the
newest ``scores`` or ``quarantine`` row of the pair, not retired by a ``removals`` row):

* it is new (no baseline row, or the pair was removed and has come back),
* its content hash changed (text: the normalized text fields; media: the bytes), or
* its model version changed (the registry digest differs from the one that scored it), or
* the item attributes ``scores`` carries for decide changed (markets, explicit, language, item
  type): decisions per market and explicit exemptions follow the catalog, or
* the ids ``scores`` carries for the report's roll-ups changed (``creator_id``, ``show_id``,
  ``album_id``): an item moved to another creator, show or album counts there from the next
  decide on. Compared only with ``scores`` rows that carry them (a table written before issue 17
  has no such columns: no re-score for them), or
* it was scored partially under an item limit (``coverage_reason`` has ``limit_words`` or
  ``limit_seconds``) that the run's ``max_item_words`` / ``max_item_seconds`` now exceeds: more of
  it would be scored now (issue 13), or
* its last word is a quarantine row with a reason that may pass on its own
  (``classifiers.base.RETRIED_REASONS``: ``score_error``, an OCR timeout, an unreadable media
  read): the model or the store may work now though the content did not change (issue 15).
  Permanent reasons (too large, empty, no usable text, bad ids) wait for the content to change.

Which catalog rows are looked at:

* ``cdf``: when the catalog is a Delta table with the change data feed enabled and a successful
  full run (backfill or re-scan, no ``--where``/``--limit``) of the same catalog with the same
  model versions exists, only the item ids the feed lists between that run's catalog version and
  now are read and hashed; every other item is known to be as that run left it.
* ``anti_join``: otherwise every row is read and hashed and compared with the baseline.

Pairs present in the baseline but gone from the catalog (the item deleted, or its cover/audio
URI removed) are written to ``removals``; ``decide`` then ignores their scores, so their
violations are retired in the next decide. A re-scan that finds nothing to score or remove
writes nothing at all.

The baseline tables' versions, the change source and the baseline run are recorded in the
run's ``runs`` row, so a killed re-scan resumes with exactly the same selection.

Memory and time (issue 16): planning never holds the catalog or ``scores`` in the driver, and
reads each side once. One DataFusion query (inside delta-rs) streams the baseline events (every
``scores`` and ``quarantine`` row of the planned models) and one the ``removals`` rows out of the
pinned tables; the catalog is read and hashed one batch at a time. Each row goes to a local
Arrow file of its bucket of item ids (``moderation.storage.spill.bucket_of``; ``BUCKET_ROWS`` pairs a
bucket, ``$MODERATION_RESCAN_BUCKET_ROWS`` overrides it). Then each bucket is compared on its own:
its files become small local Delta tables in a fresh DataFusion session, where SQL finds the
newest event per pair and joins it with the catalog's pairs. So the time grows with the rows,
not with rows times buckets, and the native memory with one bucket. Only the pairs to score or
remove, duplicate and invalid ids and id-less rows come back to Python.
"""

from __future__ import annotations

import datetime as dt
import math
import os
import tempfile
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from moderation.classifiers.audio import LIMIT_SECONDS
from moderation.classifiers.base import RETRIED_REASONS, RunContext, build_classifier
from moderation.classifiers.windows import LIMIT_WORDS
from moderation.config import ModelSpec
from moderation.errors import ModerationError
from moderation.schemas import REMOVALS_SCHEMA, STR_LIST, TS
from moderation.scoring.plan import CHANGE_SOURCES, ChangeSource, ScoringPlan, ScoringRequest, ScoringResult
from moderation.scoring.run import PreparedRun, execute
from moderation.scoring.selection import SCAN_ROWS, PreludeRow, Selection, _usable_id_mask
from moderation.storage.catalog import (
    ROLLUP_ID_COLUMNS,
    CatalogSnapshot,
    modality_mask,
    to_work_rows,
    utf8_sanitize,
)
from moderation.storage.lake import Lake, arrow_filesystem, sql_literal, storage_options
from moderation.storage.spill import BUCKET_ROWS as SPILL_BUCKET_ROWS
from moderation.storage.spill import BucketSpill, table_rows

#: The lake tables a re-scan compares with (their versions are pinned in ``runs``).
BASELINE_TABLES = ("scores", "quarantine", "removals")

#: Pairs (baseline events or catalog pairs) compared in one bucket: the item ids are split into
#: as many buckets as the larger side needs (``moderation.storage.spill.bucket_of``), and DataFusion
#: compares one bucket's local files at a time, so the planner's native memory stays near this
#: many rows' worth whatever the catalog's size. 250,000 as decide's spill: at 1,000,000 items the
#: planner's peak RSS is 589 MiB unchanged / 821 MiB 1 % changed, against 937 / 1,353 MiB with
#: 1,000,000-pair buckets, for the same wall time (docs/development.md, issue 16).
BUCKET_ROWS = SPILL_BUCKET_ROWS
#: Overrides ``BUCKET_ROWS`` when set (read at plan time; benchmarks force several buckets with it).
BUCKET_ROWS_ENV = "MODERATION_RESCAN_BUCKET_ROWS"
#: At most this many buckets (a local file per side each).
MAX_BUCKETS = 256


@dataclass
class RescanPlan:
    """What a re-scan scores (one Selection per model) and removes."""

    selections: dict[str, Selection]
    removals: pa.Table  # REMOVALS_SCHEMA rows without run_id / removed_at filled in
    change_source: str
    baseline_run_id: str | None
    baseline_versions: dict[str, int | None]
    unchanged_pairs: int = 0
    rows_read: int = 0
    notes: list[str] = field(default_factory=list)

    def selected(self, models: list[ModelSpec]) -> int:
        return sum(self.selections[m.model_id].selected(m.modality) for m in models)

    @property
    def removed_pairs(self) -> int:
        return self.removals.num_rows


def pinned_versions(lake: Lake) -> dict[str, int | None]:
    return {t: lake.version(t) for t in BASELINE_TABLES}


def encode_versions(versions: dict[str, int | None]) -> list[str]:
    return [f"{t}={'' if v is None else v}" for t, v in sorted(versions.items())]


def decode_versions(values: list[str] | None) -> dict[str, int | None]:
    out: dict[str, int | None] = {t: None for t in BASELINE_TABLES}
    for item in values or []:
        name, _, v = item.partition("=")
        out[name] = int(v) if v else None
    return out


#: Item attributes copied into ``scores`` that decide and the reports read: a change re-scores
#: the item's pairs so its decisions (per market, explicit exemptions) follow the catalog.
ATTRIBUTES = ("item_type", "language", "markets", "explicit")

#: ``coverage_reason`` values that mean "cut by the run's item limit" (words of text, seconds of audio).
ITEM_LIMITS = (LIMIT_WORDS, LIMIT_SECONDS)


def item_limit(classifier) -> int | None:
    """The units of an item ``classifier`` scores at most in this run: words for text models,
    seconds for audio (None: no item limit)."""
    for name in ("max_item_words", "max_item_seconds"):
        if getattr(classifier, name, None) is not None:
            return getattr(classifier, name)
    return None


# --------------------------------------------------------------------------------------
# Baseline: the lake's last word on each pair, in SQL (DataFusion inside delta-rs)
# --------------------------------------------------------------------------------------


def _in_list(values) -> str:
    return "(" + ", ".join(sql_literal(v) for v in values) + ")" if values else "(NULL)"


def _attrs_sql(x: str) -> str:
    """One comparable string of a row's ATTRIBUTES (markets as a sorted set), the same
    expression for ``scores`` rows and catalog rows, so equal attributes give equal strings."""
    return (f"concat_ws(chr(31), coalesce({x}.item_type, 'None'), coalesce({x}.language, 'None'), "
            f"coalesce(array_to_string(array_sort(array_distinct({x}.markets)), ','), ''), "
            f"CASE WHEN {x}.explicit IS NULL THEN 'None' WHEN {x}.explicit THEN 'True' ELSE 'False' END)")


def _owners_sql(x: str) -> str:
    """One comparable string of a row's roll-up ids (``ROLLUP_ID_COLUMNS``), for ``scores`` rows
    and catalog rows alike (a missing id and a null one are the same)."""
    return "concat_ws(chr(31), " + ", ".join(f"coalesce({x}.{c}, 'None')" for c in ROLLUP_ID_COLUMNS) + ")"


def _cut_sql(columns: set[str]) -> str:
    """Per ``scores`` row, the units scored when an item limit (``max_item_words`` or
    ``max_item_seconds``) cut the item (NULL: not cut by a limit, or scored before coverage was
    recorded)."""
    if not {"units_scored", "coverage_reason"} <= columns:
        return "CAST(NULL AS DOUBLE)"
    cut = " OR ".join(f"array_has(string_to_array(coverage_reason, ','), {sql_literal(x)})" for x in ITEM_LIMITS)
    return f"CASE WHEN units_scored IS NOT NULL AND ({cut}) THEN CAST(units_scored AS DOUBLE) END"


def _buckets(rows: int, bucket_rows: int) -> int:
    return max(1, min(MAX_BUCKETS, math.ceil(rows / max(1, bucket_rows))))


def _bucket_rows(bucket_rows: int | None) -> int:
    """``bucket_rows`` when given, else ``$MODERATION_RESCAN_BUCKET_ROWS`` when set, else ``BUCKET_ROWS``."""
    if bucket_rows is not None:
        return bucket_rows
    raw = os.environ.get(BUCKET_ROWS_ENV, "").strip()
    if not raw:
        return BUCKET_ROWS
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise ModerationError(f"${BUCKET_ROWS_ENV}={raw!r}: expected a positive number of pairs per bucket")
    return value


#: The baseline events the planner splits by bucket: one row per ``scores`` or ``quarantine``
#: row of the planned models (see ``_LakeSQL.events_sql``).
EVENT_SCHEMA = pa.schema([
    pa.field("item_id", pa.string()), pa.field("modality", pa.string()), pa.field("model_id", pa.string()),
    pa.field("digest", pa.string()), pa.field("state", pa.string()), pa.field("event_at", TS),
    pa.field("attrs", pa.string()), pa.field("owners", pa.string()), pa.field("cut_at", pa.float64()),
    pa.field("retry", pa.bool_()), pa.field("src", pa.int32()),
])
#: The ``removals`` rows the planner splits by bucket.
REMOVED_SCHEMA = pa.schema([pa.field("item_id", pa.string()), pa.field("modality", pa.string()),
                            pa.field("removed_at", TS)])


class _LakeSQL:
    """The baseline tables at their pinned versions (and ``runs``, for the digests quarantine
    rows do not carry) in one DataFusion session. The planner reads them once: one query streams
    every baseline event (``events_sql``), one every ``removals`` row (``removals_sql``)."""

    def __init__(self, lake: Lake, versions: dict[str, int | None], models: list[ModelSpec]) -> None:
        from deltalake import QueryBuilder

        self.qb = QueryBuilder()
        self.model_ids = [m.model_id for m in models]
        self.columns: dict[str, set[str]] = {}
        self.tables: dict[str, object] = {}
        for table in BASELINE_TABLES:
            if versions.get(table) is not None:
                self.register(table, lake.open(table, version=versions[table]))
        if "quarantine" in self.columns and lake.exists("runs"):
            self.register("runs", lake.open("runs"))

    def register(self, name: str, table) -> None:
        self.qb.register(name, table)
        self.tables[name] = table
        self.columns[name] = set(table.schema().to_arrow().names)

    def batches(self, sql: str) -> pa.RecordBatchReader:
        """A query's result as a stream of Arrow batches: the only way the planner reads the lake."""
        return pa.RecordBatchReader.from_stream(self.qb.execute(sql))

    def events(self) -> int:
        """Rows of ``scores`` and ``quarantine`` at the pinned versions, from the Delta log's add
        actions (no data read): they size the buckets."""
        return sum(table_rows(self.tables[t]) for t in ("scores", "quarantine") if t in self.tables)

    def events_sql(self) -> str | None:
        """Every ``scores`` and ``quarantine`` row of the planned models (None: neither table
        exists) as an event: item_id, modality, model_id, digest, state (content hash, or
        ``catalog:<reason>`` for a pair the driver quarantined), event_at, attrs, cut_at, retry (a
        quarantine row with one of ``RETRIED_REASONS``) and src (1 for quarantine: it wins over a
        scores row at the same instant)."""
        ids = _in_list(self.model_ids)
        parts = []
        if "scores" in self.columns:
            owners = _owners_sql("s") if set(ROLLUP_ID_COLUMNS) <= self.columns["scores"] else "CAST(NULL AS VARCHAR)"
            parts.append(
                f"SELECT s.item_id, s.modality, s.model_id, s.model_digest AS digest, s.content_hash AS state, "
                f"s.scored_at AS event_at, {_attrs_sql('s')} AS attrs, {owners} AS owners, "
                f"{_cut_sql(self.columns['scores'])} AS cut_at, "
                f"FALSE AS retry, CAST(0 AS INT) AS src FROM scores s WHERE s.model_id IN {ids} "
                f"AND s.item_id IS NOT NULL")
        if "quarantine" in self.columns:
            have = self.columns["quarantine"]
            content = "q.content_hash" if "content_hash" in have else "CAST(NULL AS VARCHAR)"
            if "runs" in self.columns:
                digest, join = "d.digest", (
                    "LEFT JOIN (SELECT DISTINCT run_id, model_id, digest FROM (SELECT run_id, unnest(model_ids) "
                    "AS model_id, unnest(model_digests) AS digest FROM runs)) d "
                    "ON d.run_id = q.run_id AND d.model_id = q.model_id")
            else:
                digest, join = "CAST(NULL AS VARCHAR)", ""
            parts.append(
                f"SELECT q.item_id, q.modality, q.model_id, {digest} AS digest, "
                f"CASE WHEN q.stage = 'catalog' THEN 'catalog:' || coalesce(q.reason, 'None') ELSE {content} END "
                f"AS state, q.quarantined_at AS event_at, CAST(NULL AS VARCHAR) AS attrs, "
                f"CAST(NULL AS VARCHAR) AS owners, "
                f"CAST(NULL AS DOUBLE) AS cut_at, "
                f"coalesce(q.reason IN {_in_list(sorted(RETRIED_REASONS))}, FALSE) "
                f"AND coalesce(q.stage <> 'catalog', TRUE) AS retry, CAST(1 AS INT) AS src "
                f"FROM quarantine q {join} WHERE q.model_id IN {ids} AND q.item_id IS NOT NULL")
        return " UNION ALL ".join(parts) if parts else None

    def removals_sql(self) -> str | None:
        """Every ``removals`` row with an item id (None: the table does not exist)."""
        if "removals" not in self.columns:
            return None
        return "SELECT item_id, modality, removed_at FROM removals WHERE item_id IS NOT NULL"


#: Per bucket, ``WITH ... base AS (...)``: the newest event per (item_id, modality, model_id) of
#: the bucket's ``events`` (a quarantine row wins over a scores row at the same instant), with
#: columns digest, state, attrs, owners, cut_at, retry and present (False when a later row of the
#: bucket's ``removed`` retired it).
BASE_SQL = (
    "WITH ranked AS (SELECT *, row_number() OVER (PARTITION BY item_id, modality, model_id "
    "ORDER BY event_at DESC, src DESC) AS rn FROM events), "
    "gone AS (SELECT item_id, modality, max(removed_at) AS removed_at FROM removed GROUP BY item_id, modality), "
    "base AS (SELECT r.item_id, r.modality, r.model_id, r.digest, r.state, r.attrs, r.owners, r.cut_at, r.retry, "
    "(g.removed_at IS NULL OR r.event_at > g.removed_at) AS present FROM ranked r "
    "LEFT JOIN gone g ON g.item_id = r.item_id AND g.modality = r.modality WHERE r.rn = 1)"
)


def _add(spill: BucketSpill, rows: pa.Table | pa.RecordBatch) -> None:
    """Append ``rows`` (cast to the spill's schema) to their buckets."""
    batches = rows.to_batches() if isinstance(rows, pa.Table) else [rows]
    for batch in batches:
        if batch.schema != spill.schema:
            batch = pa.RecordBatch.from_arrays([batch.column(f.name).cast(f.type) for f in spill.schema],
                                               schema=spill.schema)
        spill.add(batch)


class _Split:
    """Both sides of the comparison split by bucket of item ids (``moderation.storage.spill.bucket_of``)
    into local Arrow files, each row read once: the baseline events and ``removals`` rows (one
    streaming query each over the lake) and the catalog spill (``current``: written by the
    planner batch by batch). Each bucket is then compared on its own: its files become small
    local Delta tables in a fresh DataFusion session (``query``), so a bucket's SQL reads that
    bucket's rows only."""

    def __init__(self, folder: Path, buckets: int) -> None:
        self.folder, self.buckets = folder, buckets
        self.events = BucketSpill(folder, "events", EVENT_SCHEMA, buckets)
        self.removed = BucketSpill(folder, "removed", REMOVED_SCHEMA, buckets)
        self.current = BucketSpill(folder, "current", CURRENT_SCHEMA, buckets)

    def add_baseline(self, sql: _LakeSQL) -> None:
        """One pass over the lake's baseline: every event and removal routed to its bucket."""
        for spill, query in ((self.events, sql.events_sql()), (self.removed, sql.removals_sql())):
            if query is not None:
                for batch in sql.batches(query):
                    _add(spill, batch)
            spill.close()

    def query(self, b: int, *, current: bool = False) -> _BucketSQL:
        """A DataFusion session over bucket ``b``: tables ``events`` and ``removed`` (and ``cur``,
        the catalog spill, once written)."""
        from deltalake import DeltaTable, QueryBuilder

        qb = QueryBuilder()
        names = [("events", self.events), ("removed", self.removed)] + ([("cur", self.current)] if current else [])
        for name, spill in names:
            qb.register(name, DeltaTable(self._delta(spill, b)))
        return _BucketSQL(qb)

    def _delta(self, spill: BucketSpill, b: int) -> str:
        """Bucket ``b`` of ``spill`` as a local Delta table (written once, streamed from its Arrow file)."""
        from deltalake import write_deltalake

        path = self.folder / f"bucket-{b:04d}" / spill.paths[b].stem
        if not path.exists():
            spill.close()
            if spill.paths[b].exists():
                with pa.ipc.open_stream(spill.paths[b]) as reader:
                    write_deltalake(str(path), reader)
                spill.paths[b].unlink()
            else:
                write_deltalake(str(path), spill.schema.empty_table())
        return str(path)


class _BucketSQL:
    """Queries over one bucket's local tables."""

    def __init__(self, qb) -> None:
        self.qb = qb

    def batches(self, sql: str) -> pa.RecordBatchReader:
        return pa.RecordBatchReader.from_stream(self.qb.execute(sql))

    def table(self, sql: str) -> pa.Table:
        """A query's whole result: at most one bucket's rows."""
        return self.batches(sql).read_all()


def load_baseline(lake: Lake, versions: dict[str, int | None], models: list[ModelSpec],
                  ids: list[str] | None = None):
    """The baseline (see ``BASE_SQL``) as a pandas DataFrame, for inspection and tests of small
    lakes: the planner itself never materialises it."""
    sql = _LakeSQL(lake, versions, models)
    where = f" WHERE item_id IN {_in_list(ids)}" if ids is not None else ""
    with tempfile.TemporaryDirectory(prefix="moderation-baseline-") as tmp:
        split = _Split(Path(tmp), 1)
        split.add_baseline(sql)
        return split.query(0).table(f"{BASE_SQL} SELECT * FROM base{where}").to_pandas()


def baseline_run(lake: Lake, catalog_uri: str, models: list[ModelSpec], *, exclude: str | None = None) -> dict | None:
    """The newest succeeded full run (backfill or rescan, no --where / --limit) of this catalog
    that scored every one of ``models`` at its current digest."""
    runs = lake.read("runs", filter=(pc.field("catalog_uri") == catalog_uri) & (pc.field("status") == "succeeded"))
    best = None
    for r in runs.to_pylist():
        if r["kind"] not in ("backfill", "rescan") or r["where_expr"] or r["item_limit"] or r["run_id"] == exclude:
            continue
        have = dict(zip(r["model_ids"] or [], r["model_digests"] or [], strict=True))
        if any(have.get(m.model_id) != m.digest for m in models) or r["catalog_version"] is None:
            continue
        if best is None or (r["ended_at"], r["run_id"]) > (best["ended_at"], best["run_id"]):
            best = r
    return best


# --------------------------------------------------------------------------------------
# Change data feed
# --------------------------------------------------------------------------------------


def cdf_item_ids(snapshot: CatalogSnapshot, since_version: int) -> tuple[pa.Array | None, str]:
    """Item ids the catalog's change data feed lists after ``since_version`` up to the
    snapshot's version, or (None, why not) when the feed cannot be used."""
    from deltalake import DeltaTable

    if not snapshot.is_delta or snapshot.version is None:
        return None, "the catalog is not a Delta table"
    dt_ = DeltaTable(snapshot.uri, version=snapshot.version, storage_options=storage_options(snapshot.uri))
    if (dt_.metadata().configuration or {}).get("delta.enableChangeDataFeed", "false").lower() != "true":
        return None, "the catalog does not have delta.enableChangeDataFeed = true"
    if since_version > snapshot.version:
        return None, f"the baseline run read version {since_version}, newer than the catalog's {snapshot.version}"
    if since_version == snapshot.version:
        return pa.array([], pa.string()), ""
    id_col = snapshot.source["item_id"]
    try:
        reader = dt_.load_cdf(starting_version=since_version + 1, ending_version=snapshot.version,
                              columns=[id_col, "_change_type"])
        changes = pa.table(reader.read_all())
    except Exception as e:  # noqa: BLE001 - versions vacuumed, feed enabled later, column mapping, ...
        return None, f"the change data feed from version {since_version + 1} cannot be read ({e})"
    from moderation.storage.catalog import _id_to_string, utf8_sanitize

    # As the catalog reads ids (decimal digits, binary as UTF-8); an id not UTF-8 is never selected.
    ids, _ = utf8_sanitize(_id_to_string(changes.column(id_col).combine_chunks()))
    return pc.unique(ids.drop_null()), ""


# --------------------------------------------------------------------------------------
# The plan
# --------------------------------------------------------------------------------------


#: The planner's spill of the catalog side (one row per kind): ``row`` an item id the snapshot
#: holds (usable), ``pair`` a (item, modality) pair with the content hash of its hash group
#: ``grp`` and its attributes, ``inv`` a pair whose id is not UTF-8 (shown with escapes),
#: ``cand`` an item id the change data feed lists (or that must be scored again).
CURRENT_SCHEMA = pa.schema([
    pa.field("kind", pa.string()), pa.field("grp", pa.int32()), pa.field("modality", pa.string()),
    pa.field("item_id", pa.string()), pa.field("hash", pa.string()), pa.field("item_type", pa.string()),
    pa.field("language", pa.string()), pa.field("markets", STR_LIST), pa.field("explicit", pa.bool_()),
    *(pa.field(c, pa.string()) for c in ROLLUP_ID_COLUMNS),
])


def _current(kind: str, item_ids, *, grp: int | None = None, modality: str | None = None, hashes=None,
             work: pa.Table | None = None) -> pa.Table:
    n = len(item_ids)
    ids = (item_ids.cast(pa.string()) if isinstance(item_ids, (pa.Array, pa.ChunkedArray))
           else pa.array(item_ids, pa.string()))
    cols = {"kind": pa.array([kind] * n, pa.string()), "grp": pa.array([grp] * n, pa.int32()),
            "modality": pa.array([modality] * n, pa.string()), "item_id": ids,
            "hash": pa.array(hashes if hashes is not None else [None] * n, pa.string())}
    for a in (*ATTRIBUTES, *ROLLUP_ID_COLUMNS):
        typ = CURRENT_SCHEMA.field(a).type
        cols[a] = work.column(a).cast(typ) if work is not None and a in work.column_names else pa.nulls(n, typ)
    return pa.table(cols, schema=CURRENT_SCHEMA)


def _catalog_rows(snapshot: CatalogSnapshot) -> int:
    """Rows of the snapshot's data files from their Parquet footers, deleted rows included (an
    upper bound: it only sizes the buckets). A file that cannot be opened counts 0 here; reading
    it reports the error."""
    rows = 0
    for f in snapshot.files:
        fs, path = arrow_filesystem(f.path)
        try:
            with pq.ParquetFile(path, filesystem=fs) if fs is not None else pq.ParquetFile(path) as pf:
                rows += pf.metadata.num_rows
        except (OSError, pa.ArrowInvalid):
            continue
    return rows


def _any_id_in(snapshot: CatalogSnapshot, f, ids: pa.Array) -> bool:
    """Whether data file ``f`` holds any of ``ids`` (reads its id column only)."""
    return any(pc.any(pc.is_in(t.column("item_id"), value_set=ids)).as_py()
               for t in snapshot.read(f, ["item_id"], batch_rows=SCAN_ROWS))


def plan_rescan(
    snapshot: CatalogSnapshot,
    models: list[ModelSpec],
    lake: Lake,
    *,
    context: RunContext,
    versions: dict[str, int | None],
    change_source: ChangeSource = "auto",
    exclude_run: str | None = None,
    bucket_rows: int | None = None,
) -> RescanPlan:
    """Compare the catalog snapshot with the lake's baseline at ``versions``.

    Memory: the driver never holds the catalog or the baseline. One streaming query per side
    of the lake (the ``scores`` / ``quarantine`` events, the ``removals``) and the catalog, read
    and hashed one batch at a time (``SCAN_ROWS`` rows), are split by bucket of item ids into
    local Arrow files (item id, hash group, content hash and attributes per pair: about 100
    bytes a pair), each row read once; DataFusion then compares one bucket at a time over that
    bucket's files only (``bucket_rows`` pairs a bucket; None: ``$MODERATION_RESCAN_BUCKET_ROWS``
    or ``BUCKET_ROWS``), and hands back only what must be scored or removed. What the driver
    keeps grows with the selected pairs, the removed pairs, duplicate and invalid ids and
    id-less rows.

    Raises:
        ModerationError: ``change_source='cdf'`` was asked for but cannot be used.
    """
    base_run = baseline_run(lake, snapshot.uri, models, exclude=exclude_run)
    candidates: pa.Array | None = None
    source, notes = "anti_join", []
    if change_source in ("auto", "cdf"):
        if base_run is None:
            why = "no successful full run of this catalog with these model versions to compare with"
        else:
            candidates, why = cdf_item_ids(snapshot, base_run["catalog_version"])
        if candidates is not None:
            source = "cdf"
        elif change_source == "cdf":
            raise ModerationError(f"catalog {snapshot.uri}: --change-source cdf cannot be used: {why}")
        else:
            notes.append(f"change data feed not used: {why}; comparing every row's content hash")
    baseline_files = None
    if base_run is not None and snapshot.is_delta:
        from moderation.storage.catalog import open_catalog

        try:
            old = open_catalog(snapshot.uri, version=base_run["catalog_version"], column_map=dict(snapshot.source))
            baseline_files = {f.path for f in old.files}
        except ModerationError as e:  # its log may have been cleaned up: every file counts as new
            notes.append(f"catalog version {base_run['catalog_version']} of the baseline run is unreadable: {e}")

    classifiers = {m.model_id: build_classifier(m, context=context) for m in models}
    limits = {m.model_id: item_limit(classifiers[m.model_id]) for m in models}
    groups: dict[tuple, list[ModelSpec]] = defaultdict(list)  # models sharing content hashes
    for m in models:
        groups[classifiers[m.model_id].hash_key()].append(m)
    group_of = {key: i for i, key in enumerate(groups)}
    modalities: list[str] = sorted({m.modality for m in models if snapshot.has_modality(m.modality)})
    sql = _LakeSQL(lake, versions, models)
    # Sized before either side is read: the baseline's events (from the Delta log) and the
    # catalog's pairs at most (its rows from the Parquet footers, once per hash group).
    buckets = _buckets(max(sql.events(), _catalog_rows(snapshot) * max(1, len(groups))), _bucket_rows(bucket_rows))
    cut = [f"WHEN {sql_literal(m)} THEN {float(n)}" for m, n in limits.items() if n is not None]
    lim = f"CASE model_id {' '.join(cut)} END" if cut else "CAST(NULL AS DOUBLE)"
    raised_sql = f"coalesce(cut_at < {lim}, FALSE)"
    retried = 0
    raised_by: Counter[str] = Counter()
    more: list[pa.Array] = []

    with tempfile.TemporaryDirectory(prefix="moderation-rescan-") as tmp:
        split = _Split(Path(tmp), buckets)
        split.add_baseline(sql)  # the one pass over scores, quarantine (and runs) and removals
        for b in range(buckets):
            here = split.query(b)
            for r in here.table(f"{BASE_SQL} SELECT model_id, sum(CASE WHEN retry THEN 1 ELSE 0 END) AS retry, "
                                f"sum(CASE WHEN {raised_sql} THEN 1 ELSE 0 END) AS raised FROM base WHERE present "
                                f"GROUP BY model_id").to_pylist():
                retried += r["retry"] or 0
                raised_by[r["model_id"]] += r["raised"] or 0
            if candidates is not None:  # unchanged in the catalog, but to be scored again
                more.append(here.table(f"{BASE_SQL} SELECT DISTINCT item_id FROM base WHERE present AND "
                                       f"(retry OR {raised_sql})").column("item_id").cast(pa.string()).combine_chunks())
        if retried:
            notes.append(f"{retried} pair(s) quarantined for a reason that may pass "
                         f"({', '.join(sorted(RETRIED_REASONS))}) are retried")
        raised_by = Counter({m: n for m, n in raised_by.items() if n})
        if raised_by:
            notes.append(f"{sum(raised_by.values())} pair(s) scored partially under a lower item limit are re-scored ("
                         + ", ".join(f"{m}: {n}, limit now {limits[m]}"
                                     for m, n in sorted(raised_by.items(), key=lambda kv: (-kv[1], kv[0]))) + ")")
        if candidates is not None and any(len(a) for a in more):
            candidates = pc.unique(pa.concat_arrays([candidates, *more]))
        del more

        # The catalog side: read and hashed batch by batch, each batch routed to its buckets.
        current = split.current
        missing: dict[str, list[PreludeRow]] = defaultdict(list)
        invalid: dict[bytes, set[str]] = {}
        rows_read = 0
        if candidates is not None:
            _add(current, _current("cand", candidates))
        for f in snapshot.files:
            new_file = baseline_files is None or f.path not in baseline_files
            name = os.path.basename(f.path)
            if candidates is not None and not new_file and not _any_id_in(snapshot, f, candidates):
                continue  # data files are immutable: rows of a file the baseline read changed only if listed
            for t in snapshot.read(f, snapshot.columns, batch_rows=SCAN_ROWS):
                if candidates is not None:
                    keep = pc.fill_null(pc.is_in(t.column("item_id"), value_set=candidates), False)
                    if new_file:  # rows without a usable id are not in the feed's id list
                        keep = pc.or_(keep, pc.invert(_usable_id_mask(t.column("item_id"))))
                    t = t.filter(keep)
                if not t.num_rows:
                    continue
                rows_read += t.num_rows
                ids = t.column("item_id")
                fixed, bad = utf8_sanitize(ids)
                usable = np.asarray(_usable_id_mask(ids, (fixed, bad)).to_numpy(zero_copy_only=False), dtype=bool)
                flags = {}
                for mod in modalities:
                    mask = modality_mask(t, mod)
                    flags[mod] = np.ones(t.num_rows, bool) if mask is None else np.asarray(
                        mask.to_numpy(zero_copy_only=False), dtype=bool)
                bad_set = set(bad)
                raw = ids.cast(pa.binary()).to_pylist() if bad else []  # read only for the bad rows
                for i in np.flatnonzero(~usable):
                    for mod in modalities:
                        if not flags[mod][i]:
                            continue
                        if i in bad_set:
                            invalid.setdefault(raw[i], set()).add(mod)
                        elif new_file:
                            missing[mod].append(PreludeRow(
                                None, "missing_item_id", f"a row of data file {name} has a null or blank item_id"))
                u = t.filter(pa.array(usable))
                _add(current, _current("row", u.column("item_id")))
                for mod in modalities:
                    rows = u.filter(pa.array(flags[mod][usable]))
                    if not rows.num_rows:
                        continue
                    work = to_work_rows(rows, mod)
                    for key, members in groups.items():
                        if members[0].modality != mod:
                            continue
                        hashes = classifiers[members[0].model_id].content_hashes(work)
                        _add(current, _current("pair", work.column("item_id"), grp=group_of[key],
                                               modality=mod, hashes=hashes, work=work))
        for raw_id, mods in invalid.items():
            shown = raw_id.decode("utf-8", "backslashreplace")
            for mod in sorted(mods):
                _add(current, _current("inv", [shown], modality=mod))
        current.close()
        compared = _compare(split, models, groups, group_of, limits, cdf=candidates is not None, invalid=bool(invalid))
    keep, changed_n, unchanged, dup_rows, dup_groups, marks, gone_rows = compared

    dup_ids = set(dup_rows)
    excluded = pa.array([d.encode("utf-8") for d in sorted(dup_ids)] + sorted(invalid), pa.binary())
    selections: dict[str, Selection] = {}
    for key, members in groups.items():
        for m in members:
            prelude = list(missing.get(m.modality, []))
            state_of = marks.get(m.model_id, {})

            def seen(item: str, reason: str, _m=m, _s=state_of) -> bool:
                st = _s.get(item)
                return st is not None and bool(st[2]) and st[0] == f"catalog:{reason}" and st[1] == _m.digest

            for item in sorted(dup_groups.get(group_of[key], ())):
                if not seen(item, "duplicate_item_id"):
                    prelude.append(PreludeRow(item, "duplicate_item_id",
                                              f"item_id appears on {dup_rows[item]} rows of the catalog snapshot; "
                                              f"none of them is scored"))
                else:
                    unchanged += 1
            for raw_id, mods in sorted(invalid.items()):
                if m.modality not in mods:
                    continue
                shown = raw_id.decode("utf-8", "backslashreplace")
                if not seen(shown, "invalid_item_id"):
                    prelude.append(PreludeRow(shown, "invalid_item_id",
                                              f"item_id is not valid UTF-8: {shown[:80]!r}"))
                else:
                    unchanged += 1
            selections[m.model_id] = Selection(
                keep_ids=pa.array(sorted(keep.get(m.model_id, ())), pa.string()), excluded=excluded,
                stream_pairs={m.modality: changed_n.get(m.model_id, 0)}, prelude={m.modality: prelude},
                rows_scanned=rows_read,
            )
    for m in models:  # a modality the catalog cannot hold: nothing to score
        selections.setdefault(m.model_id, Selection(keep_ids=pa.array([], pa.string()), excluded=excluded))

    removals = pa.Table.from_pylist(
        [{**r, "run_id": "", "catalog_uri": snapshot.uri, "catalog_version": snapshot.version,
          "removed_at": dt.datetime.now(dt.UTC)}
         for r in sorted(gone_rows, key=lambda r: (r["item_id"], r["modality"]))],
        schema=REMOVALS_SCHEMA,
    )
    return RescanPlan(
        selections=selections, removals=removals, change_source=source,
        baseline_run_id=base_run["run_id"] if base_run else None, baseline_versions=dict(versions),
        unchanged_pairs=unchanged, rows_read=rows_read, notes=notes,
    )


def _compare(split: _Split, models: list[ModelSpec], groups: dict[tuple, list[ModelSpec]], group_of: dict[tuple, int],
             limits: dict[str, int | None], *, cdf: bool, invalid: bool):
    """The catalog spill (``cur``) against the baseline, one bucket of item ids at a time, in
    DataFusion over that bucket's local tables only: per model the ids to score and the count of
    unchanged pairs; the duplicate ids (rows, hash groups); the baseline state of duplicate and
    invalid ids; the pairs to remove. Only those come back to Python."""
    rows = []
    for key, members in groups.items():
        for m in members:
            digest = "CAST(NULL AS VARCHAR)" if m.digest is None else f"CAST({sql_literal(m.digest)} AS VARCHAR)"
            limit = limits.get(m.model_id)
            rows.append(f"(CAST({sql_literal(m.model_id)} AS VARCHAR), CAST({group_of[key]} AS INT), {digest}, "
                        f"CAST({'NULL' if limit is None else float(limit)} AS DOUBLE))")
    mdl = f"mdl AS (SELECT * FROM (VALUES {', '.join(rows)}) AS v(model_id, grp, digest, lim))"
    changed = ("NOT coalesce(b.present, FALSE) OR coalesce(b.digest <> mdl.digest, TRUE) "
               "OR coalesce(b.state <> c.hash, TRUE) "
               # Item attributes decide reads from scores: compared where the baseline is a scores
               # row (quarantine rows carry none).
               f"OR coalesce(b.attrs <> {_attrs_sql('c')}, FALSE) "
               # The roll-up ids: compared where the baseline scores row carries them.
               f"OR coalesce(b.owners <> {_owners_sql('c')}, FALSE) "
               "OR coalesce(b.cut_at < mdl.lim, FALSE) OR coalesce(b.retry, FALSE)")
    dups = "dups AS (SELECT item_id, count(*) AS n FROM cur WHERE kind = 'row' GROUP BY item_id HAVING count(*) > 1)"
    cand = "cand AS (SELECT DISTINCT item_id FROM cur WHERE kind = 'cand')"
    base_in = ("base_in AS (SELECT * FROM base WHERE item_id IN (SELECT item_id FROM cand))" if cdf
               else "base_in AS (SELECT * FROM base)")
    head = f"{BASE_SQL}, {cand}, {base_in}, {dups}, {mdl}"
    dup_query = (f"WITH {dups} SELECT d.item_id, d.n, c.grp FROM dups d LEFT JOIN (SELECT DISTINCT item_id, "
                 f"grp FROM cur WHERE kind = 'pair') c ON c.item_id = d.item_id")
    keep: dict[str, list[str]] = defaultdict(list)
    changed_n: Counter = Counter()
    unchanged = 0
    dup_rows: dict[str, int] = {}
    dup_groups: dict[int, set[str]] = defaultdict(set)
    marks: dict[str, dict[str, tuple]] = defaultdict(dict)
    gone_rows: list[dict] = []
    for b in range(split.buckets):
        sql = split.query(b, current=True)
        here = []
        for r in sql.table(dup_query).to_pylist():
            dup_rows[r["item_id"]] = r["n"]
            here.append(r["item_id"])
            if r["grp"] is not None:
                dup_groups[r["grp"]].add(r["item_id"])
        if cdf:  # pairs the feed does not list are as the baseline run left them: unchanged
            unchanged += sql.table(f"{head} SELECT count(*) AS n FROM base WHERE present AND item_id NOT IN "
                                   f"(SELECT item_id FROM cand)").column("n")[0].as_py()
        for batch in sql.batches(
                f"{head} SELECT mdl.model_id, CASE WHEN {changed} THEN c.item_id END AS item_id, count(*) AS n "
                f"FROM cur c JOIN mdl ON mdl.grp = c.grp LEFT JOIN base_in b ON b.item_id = c.item_id "
                f"AND b.model_id = mdl.model_id WHERE c.kind = 'pair' "
                f"AND c.item_id NOT IN (SELECT item_id FROM dups) GROUP BY 1, 2"):
            for r in batch.to_pylist():
                if r["item_id"] is None:
                    unchanged += r["n"]
                else:
                    keep[r["model_id"]].append(r["item_id"])
                    changed_n[r["model_id"]] += r["n"]
        if here or invalid:
            marks_query = (f"{head} SELECT item_id, model_id, state, digest, present FROM base_in WHERE item_id IN "
                           f"(SELECT item_id FROM dups UNION SELECT item_id FROM cur WHERE kind = 'inv')")
            for r in sql.table(marks_query).to_pylist():
                marks[r["model_id"]][r["item_id"]] = (r["state"], r["digest"], r["present"])
        # Pairs the baseline has that the catalog no longer has.
        for batch in sql.batches(
                f"{head}, live AS (SELECT DISTINCT item_id, modality FROM base_in WHERE present), "
                f"now AS (SELECT DISTINCT item_id, modality FROM cur WHERE kind IN ('pair', 'inv')), "
                f"ids AS (SELECT DISTINCT item_id FROM cur WHERE kind = 'row') "
                f"SELECT l.item_id, l.modality, CASE WHEN i.item_id IS NULL THEN 'item_deleted' "
                f"ELSE 'media_removed' END AS reason FROM live l LEFT JOIN now n ON n.item_id = l.item_id "
                f"AND n.modality = l.modality LEFT JOIN ids i ON i.item_id = l.item_id WHERE n.item_id IS NULL"):
            gone_rows.extend(batch.to_pylist())
    return keep, changed_n, unchanged, dup_rows, dup_groups, marks, gone_rows


def plan_rescan_run(prepared: PreparedRun) -> ScoringPlan:
    """The ``ScoringPlan`` of a re-scan run: ``plan_rescan`` against the baseline versions the run
    pins (a resume: those its ``runs`` row recorded, with its change source), so a killed re-scan
    resumes with exactly the same selection. A new re-scan that finds nothing to score or remove
    is planned as ``write_nothing``."""
    existing, request = prepared.record, prepared.request
    versions = (decode_versions(list(existing.baseline_versions or [])) if existing
                else pinned_versions(prepared.lake))
    models = list(prepared.models)
    plan = plan_rescan(prepared.snapshot, models, prepared.lake, context=prepared.context, versions=versions,
                       exclude_run=prepared.run_id,
                       change_source=cast(ChangeSource,
                                          (existing.change_source if existing else None) or request.change_source))
    return ScoringPlan(
        kind="rescan", models=prepared.models, selections=plan.selections, snapshot=prepared.snapshot,
        removals=plan.removals, where_expr=prepared.where, item_limit=prepared.limit,
        change_source=plan.change_source, baseline_run_id=plan.baseline_run_id,
        baseline_versions=tuple(encode_versions(versions)), unchanged_pairs=plan.unchanged_pairs,
        notes=tuple(plan.notes),
        write_nothing=existing is None and plan.selected(models) == 0 and plan.removed_pairs == 0,
    )


def run_rescan(
    *,
    catalog_uri: str,
    lake_root: str,
    policy_path,
    run_id: str | None = None,
    change_source: ChangeSource = "auto",
    ray_address: str | None = None,
    profile_path=None,
    models_dir=None,
    column_map: dict[str, str] | None = None,
    media_roots: list[str] | None = None,
    progress: bool = True,
    force: bool = False,
) -> ScoringResult:
    """Score only the pairs that changed since the last successful run (see the module
    docstring); record removed pairs. Same resume and exactly-once guarantees as a backfill
    (the same ``run_scoring`` runs the plan).

    Args:
        change_source: ``auto`` (the change data feed when usable, else the content-hash
            anti-join), ``cdf`` (fail if the feed cannot be used) or ``anti_join``.
        force: go on when the evaluation gate blocks the policy version (recorded in ``runs``).

    Returns:
        A ``ScoringResult`` with ``kind='rescan'`` (``nothing_changed`` when nothing was written).
    """
    if change_source not in CHANGE_SOURCES:
        raise ModerationError(f"--change-source {change_source!r}: expected auto, cdf or anti_join")
    request = ScoringRequest(
        catalog_uri=catalog_uri, lake_root=lake_root, policy_path=policy_path, run_id=run_id,
        change_source=change_source, ray_address=ray_address, profile_path=profile_path, models_dir=models_dir,
        column_map=column_map, media_roots=media_roots, progress=progress, force=force,
    )
    return execute(request, kind="rescan", planner=plan_rescan_run)
