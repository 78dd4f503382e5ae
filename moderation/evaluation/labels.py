"""Human review outcomes into the lake, and labels back into evaluation.

Two steps of the review loop (the third, the review queue, is :mod:`moderation.evaluation.queue`),
each one function the CLI calls with plain arguments:

- :func:`import_labels` reads moderator decisions and appeal outcomes from a CSV/TSV or Parquet
  file into ``<lake>/labels``; re-importing the same file writes nothing.
- :func:`labels_to_dataset` turns the latest label of each (item, category), joined with the
  catalog's current text, into a versioned evaluation dataset (``<lake>/eval/datasets/<name>``),
  so each new batch of reviews becomes a new dataset version that ``moderation evaluate`` reads.

Labels file schema (one row per review outcome; extra columns are ignored; ``column_map`` maps
a field onto the file's own column name, e.g. ``{"item_id": "track_uri"}``):

=================  ============================================================================
``item_id``        required
``category``       required: a policy category (checked against ``policy_path`` when given)
``decision``       ``violating`` | ``not_violating`` (moderator) or ``upheld`` | ``overturned``
                   (appeal: the enforcement was right / wrong, so label 1 / 0)
``label``          0/1 (1 = violating), instead of or together with ``decision`` (must agree)
``source``         ``moderator`` | ``appeal``; empty: ``appeal`` for ``upheld``/``overturned``,
                   else ``moderator``. A moderator row cannot carry an appeal outcome.
``reviewed_at``    required, ISO 8601 (``2026-01-31T12:00:00Z``; no offset = UTC)
``market``,        optional
``reviewer``,
``policy_id``,
``policy_version``
=================  ============================================================================

Every bad value raises :class:`~moderation.evaluation.datasets.DatasetError` naming the file,
the row (1 = the first data row, the header not counted), the file's column and the value, before
anything is written.
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import io
import json
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from moderation.clock import utcnow
from moderation.config import load_model_registry, load_policy
from moderation.errors import LakeError, one_line
from moderation.evaluation.datasets import (
    LABEL_PREFIX,
    SLICE_PREFIX,
    DatasetError,
    write_dataset,
)
from moderation.redact import mask
from moderation.runs import PolicyProvenance, RunRecord, RunTiming, new_run_id, write_run
from moderation.schemas import LABELS_SCHEMA
from moderation.storage.catalog import resolve_column_map
from moderation.storage.lake import Lake

log = logging.getLogger(__name__)

#: decision -> label.
DECISIONS = {"violating": 1, "not_violating": 0, "upheld": 1, "overturned": 0}
APPEAL_DECISIONS = frozenset({"upheld", "overturned"})
SOURCES = ("moderator", "appeal")
#: The fields a labels file may provide (any other column is ignored).
LABEL_FIELDS = ("item_id", "category", "decision", "label", "source", "reviewed_at", "market", "reviewer",
                "policy_id", "policy_version")
_CATEGORY = re.compile(r"^[a-z][a-z0-9_]*$")
#: Source of the dataset examples built from labels.
DATASET_SOURCE = "labels"


def _lake(lake: Lake | str) -> Lake:
    return lake if isinstance(lake, Lake) else Lake(str(lake))


def _sha(*parts) -> str:
    return hashlib.sha256(json.dumps(list(parts), default=str).encode()).hexdigest()


@dataclass(frozen=True)
class ImportResult:
    """What one :func:`import_labels` call did."""

    import_id: str
    source_file: str
    source_sha256: str
    rows: int  # label rows in the file
    written: int  # rows committed to labels by this call
    already_present: int  # rows whose label_id labels already held
    duplicates: int  # rows repeating an earlier row of the same file (same label_id)
    already_imported: bool  # this exact file (by sha256) was imported before: nothing written
    labels_version: int | None  # labels' Delta version after the call
    #: category -> {"written", "violating", "appeal"} counts among the written rows.
    by_category: dict[str, dict[str, int]] = field(default_factory=dict)

    def summary(self) -> str:
        head = f"labels import {self.import_id}: {self.source_file} (sha256 {self.source_sha256[:12]}…): "
        if self.already_imported:
            return head + f"{self.rows} rows, already imported; nothing written (labels version {self.labels_version})"
        lines = [head + f"{self.rows} rows, {self.written} written, {self.already_present} already present, "
                        f"{self.duplicates} duplicate rows in the file (labels version {self.labels_version})"]
        for cat, c in sorted(self.by_category.items()):
            lines.append(f"  {cat:20} {c['written']:>6} written: {c['violating']} violating, "
                         f"{c['written'] - c['violating']} not; {c['appeal']} from appeals")
        return "\n".join(lines)


def _read_label_file(path: Path, data: bytes) -> tuple[list[str], list[dict]]:
    """(column names, rows as dicts) of a CSV/TSV (all values strings, empty = None) or Parquet file."""
    suffix = path.suffix.lower()
    if suffix in (".csv", ".tsv"):
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError as e:
            raise DatasetError(f"{path}: not UTF-8 text (byte {e.start})") from e
        try:
            reader = csv.DictReader(io.StringIO(text, newline=""), delimiter="\t" if suffix == ".tsv" else ",")
            names = [n.strip() for n in (reader.fieldnames or [])]
            reader.fieldnames = names
            rows: list[dict[str, str | None]] = []
            for r in reader:
                if None in r:  # more values than header columns
                    raise DatasetError(f"{path}: row {len(rows) + 1} (line {reader.line_num}) has "
                                       f"{len(names) + len(r[None])} values, the header names {len(names)} columns")
                rows.append({k: (v if v is not None and v.strip() != "" else None) for k, v in r.items()})
        except csv.Error as e:
            raise DatasetError(f"{path}: not readable as {suffix[1:]}: {e}") from e
        return names, rows
    if suffix in (".parquet", ".pq"):
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(pa.BufferReader(data))
        except (pa.ArrowInvalid, OSError) as e:
            raise DatasetError(f"{path}: not readable as Parquet: {e}") from e
        return table.column_names, table.to_pylist()
    raise DatasetError(f"{path}: unsupported file type {suffix!r} (use .csv, .tsv or .parquet)")


def _parse_timestamp(value) -> dt.datetime | None:
    """An aware UTC datetime, or None when ``value`` is not an ISO 8601 timestamp."""
    if isinstance(value, dt.datetime):
        when = value
    elif isinstance(value, dt.date):
        when = dt.datetime(value.year, value.month, value.day)
    elif isinstance(value, str):
        try:
            when = dt.datetime.fromisoformat(value.strip())
        except ValueError:
            return None
    else:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return when.astimezone(dt.UTC)


def _parse_label(value) -> int | None:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, (int, float)) and value in (0, 1):
        return int(value)
    if isinstance(value, str) and value.strip() in ("0", "1"):
        return int(value.strip())
    return None


def _text(value) -> str | None:
    if value is None:
        return None
    s = str(value).strip()
    return s or None


def parse_label_rows(path: Path, names: list[str], raw: list[dict], *, column_map: dict[str, str] | None = None,
                     categories: set[str] | None = None) -> list[dict]:
    """Validate and normalise the rows of a labels file (pure): LABELS_SCHEMA rows without the
    import columns (label_id included).

    Raises:
        DatasetError: naming the file, row, column and value of the first bad value.
    """
    col = resolve_column_map(column_map, fields=LABEL_FIELDS, columns=names, where=str(path), kind="labels",
                             source="the file", error=DatasetError)
    for required in ("item_id", "category", "reviewed_at"):
        if required not in col:
            raise DatasetError(f"{path}: no {required!r} column (required); columns: {names}")
    if "decision" not in col and "label" not in col:
        raise DatasetError(f"{path}: needs a 'decision' or a 'label' column; columns: {names}")

    out = []
    for i, r in enumerate(raw, start=1):
        def get(f: str, _r=r):
            return _r.get(col[f]) if f in col else None

        def bad(f: str, what: str, value, _i=i) -> DatasetError:
            return DatasetError(f"{path}: row {_i}, column {col.get(f, f)!r}: {what} (value {value!r})")

        item_id = _text(get("item_id"))
        if item_id is None:
            raise bad("item_id", "item_id is missing", get("item_id"))
        category = _text(get("category"))
        if category is None or not _CATEGORY.match(category):
            raise bad("category", "category is missing or not lowercase letters, digits and '_'", get("category"))
        if categories is not None and category not in categories:
            raise bad("category", f"unknown category; the policy's categories: {sorted(categories)}", category)
        decision = _text(get("decision"))
        if decision is not None:
            decision = decision.lower()
            if decision not in DECISIONS:
                raise bad("decision", f"unknown decision; use one of {list(DECISIONS)}", get("decision"))
        label = None
        if get("label") is not None and _text(get("label")) is not None:
            label = _parse_label(get("label"))
            if label is None:
                raise bad("label", "label is not 0 or 1", get("label"))
        if decision is None and label is None:
            raise bad("decision" if "decision" in col else "label", "no decision and no label", None)
        if decision is not None and label is not None and DECISIONS[decision] != label:
            raise bad("label", f"label {label} contradicts decision {decision!r}", get("label"))
        source = _text(get("source"))
        if source is None:
            source = "appeal" if decision in APPEAL_DECISIONS else "moderator"
        else:
            source = source.lower()
            if source not in SOURCES:
                raise bad("source", f"unknown source; use one of {list(SOURCES)}", get("source"))
            if source == "moderator" and decision in APPEAL_DECISIONS:
                raise bad("decision", "an appeal outcome on a row whose source is 'moderator'", get("decision"))
        if decision is None:
            assert label is not None  # no decision and no label was refused above
            decision = ({1: "upheld", 0: "overturned"} if source == "appeal" else
                        {1: "violating", 0: "not_violating"})[label]
        label = DECISIONS[decision]
        if get("reviewed_at") is None:
            raise bad("reviewed_at", "reviewed_at is missing", None)
        reviewed_at = _parse_timestamp(get("reviewed_at"))
        if reviewed_at is None:
            raise bad("reviewed_at", "not an ISO 8601 timestamp", get("reviewed_at"))
        policy_version = get("policy_version")
        if policy_version is not None and _text(policy_version) is not None:
            try:
                policy_version = int(str(policy_version).strip())
            except ValueError:
                raise bad("policy_version", "not an integer", policy_version) from None
            if not 1 <= policy_version <= 2**31 - 1:
                raise bad("policy_version", "not a policy version (1 .. 2147483647)", policy_version)
        else:
            policy_version = None
        market = _text(get("market"))
        out.append({
            "label_id": _sha(item_id, category, source, market, reviewed_at.isoformat(), decision),
            "item_id": item_id, "category": category, "label": label, "decision": decision, "source": source,
            "market": market, "reviewer": _text(get("reviewer")), "policy_id": _text(get("policy_id")),
            "policy_version": policy_version, "reviewed_at": reviewed_at,
        })
    return out


def import_labels(lake: Lake | str, path: str | Path, *, column_map: dict[str, str] | None = None,
                  policy_path: str | Path | None = None, import_id: str | None = None,
                  models_dir: Path | None = None) -> ImportResult:
    """Import a file of human review outcomes into ``<lake>/labels`` (schema: module docstring).

    Idempotent twice over: the commit carries the app transaction ``labels/<file sha256>`` (a
    second import of the same bytes writes nothing), and rows whose ``label_id`` (sha256 of
    item_id, category, source, market, reviewed_at, decision) ``labels`` already holds are skipped
    (the same review exported again in another file). Rows repeated within the file count once.

    Args:
        lake: the lake (or its root URI).
        path: a ``.csv``, ``.tsv`` or ``.parquet`` file.
        column_map: labels field -> the file's column name, for files that name them otherwise.
        policy_path: when given, every category must be one of this policy's.
        import_id: the run id (default: a new ``labels_import-…`` id); every written row carries it.

    Records a ``runs`` row (kind ``labels_import``) with: run_id (= import_id), kind, status,
    policy_id / policy_version / policy_hash / policy_path (when a policy was checked against),
    categories (those in the file), selected_pairs (label rows in the file), scored_pairs (rows
    written), unchanged_pairs (rows skipped: already present or repeated in the file),
    chunks_committed (0 or 1), config_hash (the file's sha256), code_version, started_at,
    ended_at, error (a failed commit). A file with a bad value records no run: the error is
    raised before anything is written.

    Raises:
        DatasetError: an unreadable file or a bad value (file, row, column and value named).
        ConfigError: ``policy_path`` is not a valid policy.
    """
    lake = _lake(lake)
    path = Path(path)
    timing = RunTiming.start()
    if not path.is_file():
        raise DatasetError(f"{path}: no such file")
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    loaded = load_policy(policy_path, load_model_registry(models_dir)) if policy_path is not None else None
    names, raw = _read_label_file(path, data)
    rows = parse_label_rows(path, names, raw, column_map=column_map,
                            categories=set(loaded.policy.categories) if loaded else None)
    unique: dict[str, dict] = {}
    for r in rows:
        unique.setdefault(r["label_id"], r)
    duplicates = len(rows) - len(unique)
    import_id = import_id or new_run_id("labels_import")
    app_id = f"labels/{digest}"
    # The policy checked against (no models: a label names none).
    policy_fields = PolicyProvenance.of(loaded, path=policy_path).columns() if loaded and policy_path else {}

    def record(status: str, written: int, skipped: int, error: str | None = None) -> None:
        write_run(lake, RunRecord(
            run_id=import_id, kind="labels_import", status=status,
            categories=tuple(sorted({r["category"] for r in rows})), selected_pairs=len(rows), scored_pairs=written,
            unchanged_pairs=skipped, chunks_committed=int(written > 0),
            config_hash=digest, **timing.ended(), error=error, **policy_fields,
        ))

    if lake.transaction_version("labels", app_id) is not None:
        log.info("%s (sha256 %s) was imported before: nothing to write", path, digest)
        record("succeeded", 0, len(rows))
        return ImportResult(import_id=import_id, source_file=path.name, source_sha256=digest, rows=len(rows),
                            written=0, already_present=len(unique), duplicates=duplicates, already_imported=True,
                            labels_version=lake.version("labels"))
    ids = list(unique)
    present: set[str] = set()
    if ids and lake.exists("labels"):
        present = set(lake.read("labels", filter=pc.field("label_id").isin(ids), columns=["label_id"])
                      .column("label_id").to_pylist())
    new = [r for i, r in unique.items() if i not in present]
    if new:
        now = utcnow()
        table = pa.Table.from_pylist(
            [{**r, "import_id": import_id, "source_file": path.name, "source_sha256": digest, "imported_at": now}
             for r in new], schema=LABELS_SCHEMA)
        try:
            committed = lake.append_chunk("labels", table, app_id=app_id, version=0)
        except Exception as e:
            record("failed", 0, 0, error=mask(one_line(e)))
            raise
        if not committed:  # another import of the same file committed first
            record("succeeded", 0, len(rows))
            return ImportResult(import_id=import_id, source_file=path.name, source_sha256=digest, rows=len(rows),
                                written=0, already_present=len(unique), duplicates=duplicates, already_imported=True,
                                labels_version=lake.version("labels"))
    record("succeeded", len(new), len(rows) - len(new))
    by_category: dict[str, dict[str, int]] = {}
    for r in new:
        c = by_category.setdefault(r["category"], {"written": 0, "violating": 0, "appeal": 0})
        c["written"] += 1
        c["violating"] += r["label"]
        c["appeal"] += r["source"] == "appeal"
    return ImportResult(import_id=import_id, source_file=path.name, source_sha256=digest, rows=len(rows),
                        written=len(new), already_present=len(present), duplicates=duplicates,
                        already_imported=False, labels_version=lake.version("labels"), by_category=by_category)


@dataclass(frozen=True)
class FromLabelsResult:
    """What :func:`labels_to_dataset` wrote; unpacks as ``(version, written, rows)``."""

    name: str
    version: int
    written: bool
    rows: int  # examples in the dataset version
    labels_version: int
    labelled_items: int  # distinct items with a label
    missing_items: int  # labelled items no longer in the catalog (skipped)
    no_text_items: int  # labelled items whose catalog row has no text (skipped)
    catalog_version: int | None
    #: category -> (positives, labelled examples) in the dataset.
    by_category: dict[str, tuple[int, int]] = field(default_factory=dict)

    def __iter__(self) -> Iterator:
        return iter((self.version, self.written, self.rows))

    def summary(self) -> str:
        state = "written" if self.written else "unchanged, nothing written"
        lines = [(
            f"dataset {self.name} v{self.version} ({state}): {self.rows} text examples from labels version "
            f"{self.labels_version} ({self.labelled_items} labelled items; {self.missing_items} no longer in the "
            f"catalog and {self.no_text_items} without text skipped)"
        )]
        for cat, (pos, n) in sorted(self.by_category.items()):
            lines.append(f"  {cat:20} {pos:>6} positive of {n} labelled")
        return "\n".join(lines)


def latest_labels(labels: pa.Table) -> pd.DataFrame:
    """The latest label per (item_id, category) (pure): the newest ``reviewed_at``; at the same
    time an appeal beats a moderator decision (then the label_id, for determinism)."""
    df = labels.select(["label_id", "item_id", "category", "label", "source", "reviewed_at"]).to_pandas()
    df["_appeal"] = df["source"].eq("appeal")
    df = df.sort_values(["reviewed_at", "_appeal", "label_id"], ascending=[False, False, True], kind="stable")
    return df.drop_duplicates(["item_id", "category"]).drop(columns="_appeal").reset_index(drop=True)


def _catalog_rows(catalog_uri: str, item_ids: list[str], *, version: int | None,
                  column_map: dict[str, str] | None) -> tuple[pa.Table, int | None]:
    """(the catalog's current rows of ``item_ids`` as work columns, the Delta version read)."""
    from moderation.storage.catalog import WORK_COLUMNS, open_catalog, to_work_rows

    snapshot = open_catalog(catalog_uri, version=version, column_map=column_map)
    wanted = pa.array(item_ids, pa.string())
    parts = []
    for f in snapshot.files:
        for batch in snapshot.read(f, snapshot.columns):
            rows = to_work_rows(batch, "text")
            hit = pc.is_in(rows.column("item_id").cast(pa.string()), value_set=wanted)
            if pc.any(hit).as_py():
                parts.append(rows.filter(hit).select(list(WORK_COLUMNS)))
    if not parts:
        return pa.table({c: pa.array([], pa.string()) for c in ("item_id", "title", "description", "body_text",
                                                                "language", "item_type")}), snapshot.version
    return pa.concat_tables(parts), snapshot.version


def labels_to_dataset(lake: Lake | str, *, catalog_uri: str, name: str = "catalog_reviews",
                      column_map: dict[str, str] | None = None, catalog_version: int | None = None,
                      description: str | None = None) -> FromLabelsResult:
    """Write the latest labels, joined with the catalog's current text, as evaluation dataset ``name``.

    One text example per labelled item (``example_id`` ``<item_id>#text``) with the catalog's
    title, description and ``text`` = body_text; ``label_<category>`` for every category in
    ``labels`` (the item's latest label, :func:`latest_labels`; null where it was not reviewed
    for that category); ``slice_language``, ``slice_item_type`` (null where the catalog has none)
    and ``slice_review_source`` (list: the sources of the item's latest labels);
    ``source`` ``labels``. Items no longer in the catalog, or whose text fields are all empty,
    are skipped and counted. A catalog listing an item twice: the first row read counts.

    The dataset is versioned by content (:func:`~moderation.evaluation.datasets.write_dataset`):
    unchanged labels and catalog text write nothing; new reviews make a new version whose
    provenance records the labels and catalog versions.

    Returns:
        :class:`FromLabelsResult` (unpacks as ``(version, written, rows)``).

    Raises:
        LakeError: the lake has no labels.
        CatalogError: the catalog cannot be read.
        DatasetError: no labelled item is in the catalog with text, or a bad dataset name.
    """
    lake = _lake(lake)
    dt_labels = lake.open("labels")
    if dt_labels is None:
        raise LakeError(f"{lake.uri('labels')}: no labels yet; import review outcomes with `moderation labels import`")
    labels_version = dt_labels.version()
    latest = latest_labels(dt_labels.to_pyarrow_table(
        columns=["label_id", "item_id", "category", "label", "source", "reviewed_at"]))
    categories = sorted(latest["category"].unique())
    item_ids = sorted(latest["item_id"].unique())
    catalog, cat_version = _catalog_rows(catalog_uri, item_ids, version=catalog_version, column_map=column_map)
    items = catalog.to_pandas().drop_duplicates("item_id", keep="first").set_index("item_id")
    present = items.index.intersection(pd.Index(item_ids))
    missing = len(item_ids) - len(present)

    def has_text(row) -> bool:
        return any(isinstance(row.get(c), str) and row.get(c).strip() for c in ("title", "description", "body_text"))

    texty = [i for i in present if has_text(items.loc[i])]
    no_text = len(present) - len(texty)
    if not texty:
        raise DatasetError(f"labels (version {labels_version}): none of the {len(item_ids)} labelled items is in "
                           f"catalog {catalog_uri} with text ({missing} missing, {no_text} without text)")
    texty = sorted(texty)
    wide = latest.pivot(index="item_id", columns="category", values="label").reindex(texty)
    sources = latest.groupby("item_id")["source"].agg(lambda s: sorted(set(s))).reindex(texty)
    rows = items.loc[texty]

    def col(c: str) -> list:
        return [None if pd.isna(v) else v for v in rows[c]] if c in rows else [None] * len(texty)

    data = {
        "example_id": pa.array([f"{i}#text" for i in texty], pa.string()),
        "modality": pa.array(["text"] * len(texty), pa.string()),
        "text": pa.array(col("body_text"), pa.string()),
        "title": pa.array(col("title"), pa.string()),
        "description": pa.array(col("description"), pa.string()),
        "source": pa.array([DATASET_SOURCE] * len(texty), pa.string()),
    }
    by_category = {}
    for cat in categories:
        values = [None if pd.isna(v) else int(v) for v in wide[cat]]
        data[LABEL_PREFIX + cat] = pa.array(values, pa.int8())
        known = [v for v in values if v is not None]
        by_category[cat] = (sum(known), len(known))
    data[SLICE_PREFIX + "language"] = pa.array(col("language"), pa.string())
    data[SLICE_PREFIX + "item_type"] = pa.array(col("item_type"), pa.string())
    data[SLICE_PREFIX + "review_source"] = pa.array(sources.tolist(), pa.list_(pa.string()))
    table = pa.table(data)
    provenance = {"builder": "labels", "labels_version": labels_version, "catalog_uri": catalog_uri,
                  "catalog_version": cat_version, "labelled_items": len(item_ids), "missing_items": missing,
                  "no_text_items": no_text}
    version, written = write_dataset(
        lake, name, table, provenance=provenance,
        description=description or ("Human review outcomes (moderator decisions, appeals: latest per item and "
                                     "category) on the catalog's current text"))
    return FromLabelsResult(name=name, version=version, written=written, rows=table.num_rows,
                            labels_version=labels_version, labelled_items=len(item_ids), missing_items=missing,
                            no_text_items=no_text, catalog_version=cat_version, by_category=by_category)
