"""The review loop: human review outcomes in, a review queue out, labels back into evaluation.

Three steps, each one function the CLI calls with plain arguments:

- :func:`import_labels` reads moderator decisions and appeal outcomes from a CSV/TSV or Parquet
  file into ``<lake>/labels``; re-importing the same file writes nothing.
- :func:`build_review_queue` samples what humans should review next for one policy version:
  the items whose current score sits near a category's threshold (``uncertain``, stratified by
  category x slice) plus a uniform ``audit`` sample, into ``<lake>/review_queue``.
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
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from moderation.config import LoadedPolicy, ModelSpec, load_model_registry, load_policy
from moderation.decide import SCORE_COLUMNS, category_rows, latest_scores, score_column
from moderation.decide import item_attributes as decide_item_attributes
from moderation.errors import LakeError, ModerationError, one_line
from moderation.evaluation.datasets import (
    LABEL_PREFIX,
    SLICE_PREFIX,
    DatasetError,
    write_dataset,
)
from moderation.lake import Lake
from moderation.redact import mask
from moderation.results import utcnow
from moderation.runinfo import code_version, new_run_id, run_row
from moderation.schemas import LABELS_SCHEMA, REVIEW_QUEUE_SCHEMA

log = logging.getLogger(__name__)

#: decision -> label.
DECISIONS = {"violating": 1, "not_violating": 0, "upheld": 1, "overturned": 0}
APPEAL_DECISIONS = frozenset({"upheld", "overturned"})
SOURCES = ("moderator", "appeal")
#: The fields a labels file may provide (any other column is ignored).
LABEL_FIELDS = ("item_id", "category", "decision", "label", "source", "reviewed_at", "market", "reviewer",
                "policy_id", "policy_version")
_CATEGORY = re.compile(r"^[a-z][a-z0-9_]*$")
#: Item attributes the review queue can stratify by (``markets``: an item is in each market's stratum).
QUEUE_SLICES = ("language", "item_type", "markets", "explicit")
#: The stratum value of an item with no value for the slice column (as evaluate names null slices).
NO_VALUE = "(none)"
#: Scores are float32: the band test allows for their rounding.
_BAND_EPS = 1e-6
#: Source of the dataset examples built from labels.
DATASET_SOURCE = "labels"


def _lake(lake: Lake | str) -> Lake:
    return lake if isinstance(lake, Lake) else Lake(str(lake))


def _sha(*parts) -> str:
    return hashlib.sha256(json.dumps(list(parts), default=str).encode()).hexdigest()


# ---------------------------------------------------------------------------------------
# import_labels
# ---------------------------------------------------------------------------------------
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
    column_map = dict(column_map or {})
    for fld, mapped in column_map.items():
        if fld not in LABEL_FIELDS:
            raise DatasetError(f"{path}: column mapping {fld}={mapped}: {fld!r} is not a labels field; "
                               f"fields: {list(LABEL_FIELDS)}")
        if mapped not in names:
            raise DatasetError(f"{path}: column mapping {fld}={mapped}: the file has no column {mapped!r}; "
                               f"it has {names}")
    col = {f: column_map.get(f, f) for f in LABEL_FIELDS if column_map.get(f, f) in names}
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
    started = utcnow()
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
    policy_fields = ({"policy_id": loaded.policy.policy_id, "policy_version": loaded.policy.version,
                      "policy_hash": loaded.content_hash, "policy_path": str(policy_path)} if loaded else {})

    def record(status: str, written: int, skipped: int, error: str | None = None) -> None:
        lake.upsert_run(run_row(
            run_id=import_id, kind="labels_import", status=status, categories=sorted({r["category"] for r in rows}),
            selected_pairs=len(rows), scored_pairs=written, unchanged_pairs=skipped, chunks_committed=int(written > 0),
            config_hash=digest, code_version=code_version(), started_at=started, ended_at=utcnow(), error=error,
            **policy_fields,
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


# ---------------------------------------------------------------------------------------
# build_review_queue
# ---------------------------------------------------------------------------------------
def current_scores(lake: Lake, loaded: LoadedPolicy, registry: dict[str, ModelSpec]) -> tuple[pd.DataFrame, int]:
    """(:func:`moderation.decide.latest_scores` frame of the policy's models at their registry
    digests, removed pairs marked ``retired``; the scores Delta version read).

    Raises:
        LakeError: the lake has no scores.
    """
    dt_scores = lake.open("scores")
    if dt_scores is None:
        raise LakeError(f"{lake.uri('scores')}: no scores yet; run `moderation backfill` first")
    models = list(loaded.policy.models)
    flt = None
    for m in models:
        one = (pc.field("model_id") == m) & (pc.field("model_digest") == registry[m].digest)
        flt = one if flt is None else flt | one
    scores = dt_scores.to_pyarrow_dataset().to_table(filter=flt, columns=SCORE_COLUMNS)
    removals = lake.read("removals", columns=["item_id", "modality", "removed_at"])
    return latest_scores(scores, removals), dt_scores.version()


def item_attributes(latest: pd.DataFrame) -> pd.DataFrame:
    """item_id -> item_type, language, markets, explicit, from the item's newest live row (as decide)."""
    return decide_item_attributes(latest[~latest["retired"]] if "retired" in latest else latest)


def category_scores(latest: pd.DataFrame, loaded: LoadedPolicy, registry: dict[str, ModelSpec]) -> pd.DataFrame:
    """The item's score per policy category, as decide computes it (pure).

    The maximum over the item's live (not retired) latest rows of the policy's models that emit
    the category and score one of the modalities the category counts; explicit items exempt
    from the category have none. Market overrides are not applied: ``threshold`` and
    ``review_threshold`` are the category's global rule.

    Returns:
        One row per (item_id, category) with a score: score (float64), model_id (the model
        giving the maximum), scored_at (the newest of the rows counted), threshold,
        review_threshold (NaN when the rule has no review band).
    """
    policy = loaded.policy
    live = latest[~latest["retired"]] if "retired" in latest else latest
    columns = ["item_id", "category", "score", "model_id", "scored_at", "threshold", "review_threshold"]
    if live.empty:
        return pd.DataFrame(columns=columns)
    explicit = item_attributes(live)["explicit"].eq(True)  # as decide: the item's newest row
    parts = []
    for category, rule in policy.categories.items():
        col = score_column(category)
        part = category_rows(live, loaded, registry, category, explicit, ["item_id", "model_id", "scored_at"])
        if part is None or part.empty:
            continue
        part = part.sort_values([col, "model_id"], ascending=[False, True], kind="stable")
        best = part.drop_duplicates("item_id")[["item_id", col, "model_id"]].rename(columns={col: "score"})
        newest = part.groupby("item_id", as_index=False)["scored_at"].max()
        out = best.merge(newest, on="item_id")
        out["category"] = category
        out["threshold"] = float(rule.threshold)
        out["review_threshold"] = float(rule.review_threshold) if rule.review_threshold is not None else float("nan")
        parts.append(out[columns])
    if not parts:
        return pd.DataFrame(columns=columns)
    return pd.concat(parts, ignore_index=True)


def in_band(scores: pd.DataFrame, band: float) -> pd.Series:
    """Rows of :func:`category_scores` whose score is within ``band`` of the threshold, or in
    the review band ``[review_threshold, threshold)``."""
    s, t, r = scores["score"], scores["threshold"], scores["review_threshold"]
    near = (s - t).abs() <= band + _BAND_EPS
    review = r.notna() & (s >= r) & (s < t)
    return near | review


def _newest_since_score(lake: Lake, table: str, column: str, pairs: pd.DataFrame, flt=None) -> pd.Series:
    """Per row of ``pairs`` (item_id, category, scored_at): the newest ``column`` of ``table``
    for that pair is at or after ``scored_at`` (False where the pair has no row)."""
    if pairs.empty or not lake.exists(table):
        return pd.Series(False, index=pairs.index)
    cats = pc.field("category").isin(sorted(pairs["category"].unique()))
    rows = lake.read(table, filter=cats if flt is None else cats & flt, columns=["item_id", "category", column])
    if rows.num_rows == 0:
        return pd.Series(False, index=pairs.index)
    last = rows.group_by(["item_id", "category"]).aggregate([(column, "max")]).to_pandas()
    merged = pairs[["item_id", "category", "scored_at"]].merge(last, on=["item_id", "category"], how="left")
    flag = merged[f"{column}_max"].notna() & (merged[f"{column}_max"] >= merged["scored_at"])
    return pd.Series(flag.to_numpy(dtype=bool), index=pairs.index)


def labelled_after_score(lake: Lake, pairs: pd.DataFrame) -> pd.Series:
    """Per row of ``pairs`` (item_id, category, scored_at): ``labels`` holds a review of the item
    for the category at or after ``scored_at``."""
    return _newest_since_score(lake, "labels", "reviewed_at", pairs)


def queued_after_score(lake: Lake, pairs: pd.DataFrame, *, queue_id: str) -> pd.Series:
    """Per row of ``pairs`` (item_id, category, scored_at): an earlier queue (another queue id)
    queued the pair at or after its current score. Such a pair not labelled since its score
    (:func:`labelled_after_score`) is still pending with the reviewers."""
    return _newest_since_score(lake, "review_queue", "queued_at", pairs, pc.field("queue_id") != queue_id)


def _rank(keys: list[str], seed: int) -> list[str]:
    # hashlib per candidate (as diff's sample): reproducible in any SQL engine, independent of the other rows.
    return [hashlib.sha256(f"{seed}:{k}".encode()).hexdigest() for k in keys]


def _missing(v) -> bool:
    """None, NaN or NA (a scalar; a list value is never missing)."""
    return v is None or (not hasattr(v, "__len__") and bool(pd.isna(v)))


def _slice_values(attrs: pd.DataFrame, column: str, items: pd.Series) -> pd.DataFrame:
    """(item_id, value) memberships of ``items`` in the strata of ``column``: one row per value
    (a list column: one per element; null / empty: ``NO_VALUE``)."""
    values = attrs[column].reindex(items.to_numpy())
    frame = pd.DataFrame({"item_id": items.to_numpy(), "value": values.to_numpy()})
    if column == "markets":
        frame["value"] = frame["value"].map(lambda v: list(v) if v is not None and len(v) else [None])
        frame = frame.explode("value")
    frame["value"] = frame["value"].map(lambda v: NO_VALUE if _missing(v) else str(v))
    return frame.drop_duplicates().reset_index(drop=True)


def sample_uncertain(band_rows: pd.DataFrame, attrs: pd.DataFrame, *, slice_columns: tuple[str, ...],
                     per_stratum: int, seed: int) -> pd.DataFrame:
    """The stratified uncertain sample (pure, deterministic).

    Per category, strata are ``<category>/<column>=<value>`` for each column of
    ``slice_columns`` (in that order) and each value (sorted). Within a stratum candidates are
    ranked by ``sha256(f"{seed}:{item_id}:{category}")`` (hex, ascending) and the first
    ``per_stratum`` not already taken by an earlier stratum of the same category are kept: an
    item is queued at most once per category, under the first stratum that took it.
    ``stratum_size`` counts the stratum's candidates (before the cap and before that
    de-duplication).
    """
    kept = []
    for category, cands in band_rows.groupby("category", sort=True):
        cands = cands.assign(_hash=_rank([f"{i}:{category}" for i in cands["item_id"]], seed))
        taken: set[str] = set()
        for column in slice_columns:
            members = _slice_values(attrs, column, cands["item_id"]).merge(cands, on="item_id")
            for value, stratum in members.sort_values(["value", "_hash"], kind="stable").groupby("value", sort=True):
                free = stratum[~stratum["item_id"].isin(taken)].head(per_stratum)
                taken.update(free["item_id"])
                kept.append(free.assign(stratum=f"{category}/{column}={value}", stratum_size=len(stratum)))
    if not kept:
        return band_rows.iloc[0:0].assign(stratum=pd.Series(dtype=object), stratum_size=pd.Series(dtype="int64"))
    return pd.concat(kept, ignore_index=True).drop(columns=["_hash", "value"])


def sample_audit(pairs: pd.DataFrame, exclude: set[str], *, audit: int, seed: int) -> tuple[pd.DataFrame, int]:
    """(rows of ``pairs`` for the audited items, candidate items): a uniform sample of ``audit``
    items among those of ``pairs`` not in ``exclude``, ranked by ``sha256(f"{seed}:{item_id}:audit")``;
    every pair of a chosen item is kept (one row per item x category)."""
    items = pd.Series(sorted(set(pairs["item_id"]) - exclude), dtype=object)
    if items.empty or audit <= 0:
        return pairs.iloc[0:0], len(items)
    ranked = pd.DataFrame({"item_id": items, "_hash": _rank([f"{i}:audit" for i in items], seed)})
    chosen = ranked.sort_values("_hash", kind="stable").head(audit)
    rows = pairs.merge(chosen, on="item_id").sort_values(["_hash", "category"], kind="stable")
    return rows.drop(columns="_hash").reset_index(drop=True), len(items)


@dataclass(frozen=True)
class QueueResult:
    """What one :func:`build_review_queue` call queued."""

    queue_id: str
    policy_id: str
    policy_version: int
    scores_version: int
    scored_items: int  # items with a current score for at least one of the policy's categories
    scored_pairs: int  # (item, category) pairs with a current score
    labelled_skipped: int  # pairs left out: labelled at or after their latest score
    pending_skipped: int  # pairs left out: queued by an earlier queue for this score, not reviewed yet
    band_pairs: int  # pairs in the uncertain band (after that)
    audit_candidates: int  # items the audit sample was drawn from
    written: bool  # False: this queue_id was committed before (rows: what it holds)
    rows: pa.Table  # the queue's rows (REVIEW_QUEUE_SCHEMA)
    params: dict = field(default_factory=dict)

    def counts(self) -> dict[tuple[str, str], int]:
        """(category, reason) -> rows."""
        return dict(Counter(zip(self.rows.column("category").to_pylist(), self.rows.column("reason").to_pylist(),
                                strict=True)))

    def summary(self) -> str:
        lines = [(
            f"review queue {self.queue_id}: policy {self.policy_id} v{self.policy_version} over {self.scored_items} "
            f"scored items / {self.scored_pairs} item x category pairs (scores version {self.scores_version}); "
            f"{self.labelled_skipped} pairs already labelled after their score; {self.pending_skipped} pairs "
            f"still pending in an earlier queue; {self.band_pairs} pairs in the "
            f"uncertain band (±{self.params.get('band')}); {self.rows.num_rows} rows queued"
            + ("" if self.written or not self.rows.num_rows else " (committed before: nothing written)")
        )]
        for (cat, reason), n in sorted(self.counts().items()):
            lines.append(f"  {cat:20} {reason:10} {n:>6}")
        strata = Counter(self.rows.column("stratum").to_pylist())
        sizes = dict(zip(self.rows.column("stratum").to_pylist(), self.rows.column("stratum_size").to_pylist(),
                         strict=True))
        for stratum, n in sorted(strata.items()):
            if stratum != "audit":
                lines.append(f"    {stratum:40} {n:>5} of {sizes[stratum]}")
        if "audit" in strata:
            audited = self.rows.filter(pc.equal(self.rows.column("reason"), "audit"))
            items = len(set(audited.column("item_id").to_pylist()))
            lines.append(f"    {'audit':40} {items:>5} items of {self.audit_candidates} ({strata['audit']} rows)")
        return "\n".join(lines)


def build_review_queue(lake: Lake | str, policy_path: str | Path, *, per_stratum: int = 20, audit: int = 50,
                       band: float = 0.1, slice_columns: tuple[str, ...] | list[str] = ("language", "item_type"),
                       seed: int = 0, queue_id: str | None = None, requeue_pending: bool = False,
                       models_dir: Path | None = None) -> QueueResult:
    """Sample the items of one policy version that humans should review next into ``review_queue``.

    Current scores are decide's (:func:`moderation.decide.latest_scores`): the newest row per
    item x modality x model of the policy's models, restricted to each model's registry digest,
    removed pairs excluded; an item's category score is the maximum over the models and
    modalities the category counts (:func:`category_scores`, the global rule: market overrides
    are not applied). Pairs labelled (any source or market) at or after their latest score are
    left out.

    - ``uncertain``: per category, the items whose score is within ``band`` of the threshold or
      in ``[review_threshold, threshold)``, stratified as :func:`sample_uncertain` describes
      (at most ``per_stratum`` per stratum, an item once per category).
    - ``audit``: ``audit`` items drawn uniformly (:func:`sample_audit`) from all items with a
      current score, except those queued as uncertain (for any category); each audited item
      gets one row per policy category it has an unlabelled score for (a reviewer judges the
      whole item), stratum ``"audit"``, ``stratum_size`` = the candidate items.

    Rows carry the item's category score, the category's threshold, the model giving the score,
    and the item's attributes. All rows are one commit with the app transaction
    ``review_queue/<queue_id>``: calling again with the same ``queue_id`` writes nothing (and
    returns the rows stored). Pairs an earlier queue holds for their current score and that no
    review has answered since (:func:`queued_after_score`, not labelled since) are left out, so reviewers never get the
    same open pair twice; ``requeue_pending`` queues them again (e.g. a queue that was abandoned).
    Records a ``runs`` row (kind ``review_queue``, run_id = queue_id): the policy
    columns, model ids/digests, modalities, categories, scores_version, scored_pairs (pairs
    with a current score), unchanged_pairs (pairs skipped as labelled after their score),
    selected_pairs (rows queued), chunks_committed, config_hash (sha256 of the sampling
    parameters), code_version, started_at, ended_at.

    Raises:
        ConfigError: the policy file is invalid.
        LakeError: the lake has no scores.
        ModerationError: a slice column that is not one of ``QUEUE_SLICES``, or a negative size.
    """
    lake = _lake(lake)
    started = utcnow()
    slice_columns = tuple(slice_columns)
    unknown = [c for c in slice_columns if c not in QUEUE_SLICES]
    if unknown:
        raise ModerationError(f"review queue: slice column(s) {unknown} unknown; use {list(QUEUE_SLICES)}")
    if per_stratum < 0 or audit < 0 or band < 0:
        raise ModerationError(f"review queue: per_stratum ({per_stratum}), audit ({audit}) and band ({band}) "
                              "must not be negative")
    registry = load_model_registry(models_dir)
    loaded = load_policy(policy_path, registry)
    policy = loaded.policy
    queue_id = queue_id or new_run_id("review_queue")
    params = {"per_stratum": per_stratum, "audit": audit, "band": band, "slice_columns": list(slice_columns),
              "seed": seed, "requeue_pending": requeue_pending}

    latest, scores_version = current_scores(lake, loaded, registry)
    attrs = item_attributes(latest)
    pairs = category_scores(latest, loaded, registry)
    scored_pairs = len(pairs)
    scored_items = int(pairs["item_id"].nunique()) if scored_pairs else 0
    done = labelled_after_score(lake, pairs)
    pending = (pd.Series(False, index=pairs.index) if requeue_pending
               else queued_after_score(lake, pairs, queue_id=queue_id) & ~done)
    open_pairs = pairs[~(done | pending).to_numpy(dtype=bool)] if scored_pairs else pairs
    band_rows = open_pairs[in_band(open_pairs, band).to_numpy(dtype=bool)] if len(open_pairs) else open_pairs
    uncertain = sample_uncertain(band_rows, attrs, slice_columns=slice_columns, per_stratum=per_stratum, seed=seed)
    uncertain = uncertain.assign(reason="uncertain")
    audited, candidates = sample_audit(open_pairs, set(uncertain["item_id"]), audit=audit, seed=seed)
    audited = audited.assign(reason="audit", stratum="audit", stratum_size=candidates)
    rows = pd.concat([uncertain, audited], ignore_index=True)
    now = utcnow()
    if not rows.empty:
        a = attrs.reindex(rows["item_id"].to_numpy())
        table = pa.table({
            "queue_id": pa.array([queue_id] * len(rows), pa.string()),
            "item_id": pa.array(rows["item_id"].tolist(), pa.string()),
            "category": pa.array(rows["category"].tolist(), pa.string()),
            "reason": pa.array(rows["reason"].tolist(), pa.string()),
            "stratum": pa.array(rows["stratum"].tolist(), pa.string()),
            "stratum_size": pa.array(rows["stratum_size"].astype("int64").tolist(), pa.int64()),
            "score": pa.array(rows["score"].astype("float64").tolist(), pa.float32()),
            "threshold": pa.array(rows["threshold"].astype("float64").tolist(), pa.float32()),
            "policy_id": pa.array([policy.policy_id] * len(rows), pa.string()),
            "policy_version": pa.array([policy.version] * len(rows), pa.int32()),
            "model_id": pa.array(rows["model_id"].tolist(), pa.string()),
            "item_type": pa.array([None if pd.isna(v) else v for v in a["item_type"]], pa.string()),
            "language": pa.array([None if pd.isna(v) else v for v in a["language"]], pa.string()),
            "markets": pa.array([None if _missing(v) else list(v) for v in a["markets"]], pa.list_(pa.string())),
            "queued_at": pa.array([now] * len(rows), pa.timestamp("us", tz="UTC")),
        }).cast(REVIEW_QUEUE_SCHEMA)
    else:
        table = REVIEW_QUEUE_SCHEMA.empty_table()
    written = False
    if table.num_rows:
        written = lake.append_chunk("review_queue", table, app_id=f"review_queue/{queue_id}", version=0)
        if not written:
            table = lake.read("review_queue", filter=pc.field("queue_id") == queue_id)
    models = [registry[m] for m in policy.models]
    lake.upsert_run(run_row(
        run_id=queue_id, kind="review_queue", status="succeeded", policy_id=policy.policy_id,
        policy_version=policy.version, policy_hash=loaded.content_hash, policy_path=str(policy_path),
        model_ids=[m.model_id for m in models], model_digests=[m.digest for m in models],
        modalities=sorted({m.modality for m in models}), categories=sorted(policy.categories),
        scores_version=scores_version, scored_pairs=scored_pairs,
        unchanged_pairs=int(done.sum()) if scored_pairs else 0,
        selected_pairs=table.num_rows, chunks_committed=int(written),
        config_hash=hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest(),
        code_version=code_version(), started_at=started, ended_at=utcnow(),
    ))
    return QueueResult(queue_id=queue_id, policy_id=policy.policy_id, policy_version=policy.version,
                       scores_version=scores_version, scored_items=scored_items, scored_pairs=scored_pairs,
                       labelled_skipped=int(done.sum()) if scored_pairs else 0,
                       pending_skipped=int(pending.sum()) if scored_pairs else 0, band_pairs=len(band_rows),
                       audit_candidates=candidates, written=written, rows=table, params=params)


# ---------------------------------------------------------------------------------------
# labels_to_dataset
# ---------------------------------------------------------------------------------------
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
    from moderation.catalog import WORK_COLUMNS, open_catalog, to_work_rows

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
