"""Evaluation datasets: versioned Delta tables under ``<lake>/eval/datasets/<name>``.

One table per dataset; every write of a changed content is a new Delta version (the dataset
version an evaluation records). Columns (the documented import schema, docs/evaluation.md and docs/tables.md;
descriptions in ``moderation.schemas.EVAL_DATASET_COLUMNS``):

==================  =======================================================================
``example_id``      string, unique within a version
``modality``        ``text`` | ``image`` | ``audio``
``text``            the text of a text example (scored like a catalog item's ``body_text``)
``title``,          optional: catalog text fields, scored as the catalog scores them (review
``description``     labels of catalog items carry all three)
``media_uri``       image or audio examples: where the bytes are
``source``          where the example comes from (``hatexplain``, ``labels``, a file name)
``label_<cat>``     int8 0/1 per category; null = not annotated for that category
``slice_<name>``    string, or list of strings (the example belongs to each listed value):
                    the fairness slices (target group, language, dialect, item type, ...)
==================  =======================================================================

Standard datasets come from the held-out splits in ../shared/data (never a training split):
HateXplain test and validation (slices: target group, the majority of three annotators), the
YouTube Spam Collection video held out from training, and GermEval 2018 as a language probe
(German; the shipped heads never train on it).
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import json
import math
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from moderation.errors import ModerationError
from moderation.evaluation.sources import YOUTUBE_HELDOUT, _hx_label
from moderation.modalities import MODALITIES
from moderation.storage.lake import Lake, arrow_filesystem

DATASETS_DIR = "eval/datasets"
LABEL_PREFIX = "label_"
SLICE_PREFIX = "slice_"
BASE_FIELDS = {
    "example_id": pa.string(), "modality": pa.string(), "text": pa.string(), "title": pa.string(),
    "description": pa.string(), "media_uri": pa.string(), "source": pa.string(),
}
_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
_TRUE = {"1", "true", "yes", "y", "t"}
_FALSE = {"0", "false", "no", "n", "f"}
#: Delta commit metadata keys of a dataset version.
META_DESCRIPTION = "moderation.dataset.description"
META_CONTENT = "moderation.dataset.content_sha256"
META_PROVENANCE = "moderation.dataset.provenance"


class DatasetError(ModerationError):
    """A dataset that cannot be imported or read: names the file, column, row and value."""


def table_name(name: str) -> str:
    if not _NAME.match(name or ""):
        raise DatasetError(f"dataset name {name!r}: use 1-64 lowercase letters, digits, '_' or '-'")
    return f"{DATASETS_DIR}/{name}"


def label_categories(table: pa.Table | pa.Schema) -> list[str]:
    names = table.names if isinstance(table, pa.Schema) else table.column_names
    return [c[len(LABEL_PREFIX):] for c in names if c.startswith(LABEL_PREFIX)]


def slice_columns(table: pa.Table | pa.Schema) -> list[str]:
    names = table.names if isinstance(table, pa.Schema) else table.column_names
    return [c for c in names if c.startswith(SLICE_PREFIX)]


# ---------------------------------------------------------------------------------------
# Validation and storage
# ---------------------------------------------------------------------------------------
def _conform_column(name: str, col: pa.ChunkedArray, origin: str) -> tuple[pa.DataType, pa.ChunkedArray]:
    """(type, column) of one dataset column in its stored type."""
    if name in BASE_FIELDS:
        typ = BASE_FIELDS[name]
    elif name.startswith(LABEL_PREFIX):
        typ = pa.int8()
        bad = pc.and_(pc.is_valid(col), pc.invert(pc.is_in(col.cast(pa.int64()), pa.array([0, 1]))))
        if pc.any(bad).as_py():
            row = pc.index(bad, True).as_py()
            raise DatasetError(f"{origin}: row {row + 1}, column {name}: label {col[row].as_py()!r} is not 0 or 1")
    else:
        typ = pa.list_(pa.string()) if pa.types.is_list(col.type) else pa.string()
    return typ, col.cast(typ)


def validate(table: pa.Table, *, origin: str) -> pa.Table:
    """Check a dataset table against the schema above; conform types. ``origin`` (a file or a
    dataset name) is named in every error; rows are numbered from 1 (the first data row)."""
    if "example_id" not in table.column_names:
        raise DatasetError(f"{origin}: no example_id column")
    if table.num_rows == 0:
        raise DatasetError(f"{origin}: no rows")
    try:
        ids = table.column("example_id").cast(pa.string())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as e:
        raise DatasetError(f"{origin}: column example_id: type {table.column('example_id').type} is not text ({e})") \
            from e
    missing = pc.fill_null(pc.equal(pc.utf8_trim_whitespace(ids), ""), True)
    if pc.any(missing).as_py():
        row = pc.index(missing, True).as_py()
        raise DatasetError(f"{origin}: row {row + 1}: example_id is null or empty")
    counts = Counter(ids.to_pylist())
    dup = next((k for k, n in counts.items() if n > 1), None)
    if dup is not None:
        raise DatasetError(f"{origin}: example_id {dup!r} appears {counts[dup]} times")
    if not label_categories(table):
        raise DatasetError(f"{origin}: no label_<category> column")
    extra = [c for c in table.column_names if c not in BASE_FIELDS and not c.startswith((LABEL_PREFIX, SLICE_PREFIX))]
    if extra:
        raise DatasetError(f"{origin}: unknown columns {extra} (allowed: {sorted(BASE_FIELDS)}, label_*, slice_*)")
    fields, cols = [], []
    n = table.num_rows
    for name in table.column_names:
        col = table.column(name)
        try:
            typ, col = _conform_column(name, col, origin)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as e:
            want = "a 0/1 label" if name.startswith(LABEL_PREFIX) else "text or a list of text"
            raise DatasetError(f"{origin}: column {name}: type {col.type} cannot be read as {want} ({e})") from e
        fields.append(pa.field(name, typ))
        cols.append(col)
    out = pa.Table.from_arrays(cols, schema=pa.schema(fields))
    if "modality" not in out.column_names:
        out = out.append_column("modality", pa.array(["text"] * n, pa.string()))
    bad_mod = pc.invert(pc.fill_null(pc.is_in(out.column("modality"), pa.array(MODALITIES)), False))
    if pc.any(bad_mod).as_py():
        row = pc.index(bad_mod, True).as_py()
        raise DatasetError(f"{origin}: row {row + 1}, column modality: {out.column('modality')[row].as_py()!r} "
                           f"is not one of {list(MODALITIES)}")
    text_cols = [c for c in ("text", "title", "description") if c in out.column_names]
    media = ["media_uri"] if "media_uri" in out.column_names else []
    for i, row in enumerate(out.select(["modality", *text_cols, *media]).to_pylist()):
        if row["modality"] == "text" and not any((row.get(c) or "").strip() for c in text_cols):
            raise DatasetError(f"{origin}: row {i + 1} (example_id {ids[i].as_py()!r}): text example with no text "
                               f"(columns {text_cols or ['text']})")
        if row["modality"] != "text" and not row.get("media_uri"):
            raise DatasetError(f"{origin}: row {i + 1} (example_id {ids[i].as_py()!r}): {row['modality']} example "
                               "with no media_uri")
    return out


def content_sha256(table: pa.Table) -> str:
    """A digest of a dataset's content independent of row order."""
    ordered = table.sort_by("example_id")
    h = hashlib.sha256(json.dumps(ordered.schema.names).encode())
    for batch in ordered.to_batches(max_chunksize=4096):
        h.update(json.dumps(batch.to_pylist(), sort_keys=True, default=str).encode())
    return h.hexdigest()


def _latest_metadata(lake: Lake, name: str) -> dict:
    dt_ = lake.open(table_name(name))
    if dt_ is None:
        return {}
    for entry in dt_.history(1):
        return entry
    return {}


def write_dataset(lake: Lake, name: str, table: pa.Table, *, description: str = "",
                  provenance: dict | None = None) -> tuple[int, bool]:
    """Store ``table`` as the next version of dataset ``name``: (version, written).

    A content identical to the latest version writes nothing and returns that version. A new
    version replaces the rows (and columns) whole; older versions stay readable by time travel.
    """
    data = validate(table, origin=f"dataset {name}")
    digest = content_sha256(data)
    tname = table_name(name)
    latest = _latest_metadata(lake, name)
    if latest.get(META_CONTENT) == digest:
        return _version(lake, tname), False
    meta = {META_DESCRIPTION: description, META_CONTENT: digest,
            META_PROVENANCE: json.dumps(provenance or {}, sort_keys=True, default=str)}
    if lake.exists(tname):
        lake.overwrite(tname, data, metadata=meta)
    else:
        lake.append(tname, data, metadata=meta)
    return _version(lake, tname), True


def _version(lake: Lake, tname: str) -> int:
    """The latest version of a dataset table known to exist (just read or written)."""
    version = lake.version(tname)
    if version is None:
        raise DatasetError(f"{lake.uri(tname)}: the dataset table does not exist")
    return version


def read_dataset(lake: Lake, name: str, version: int | None = None) -> tuple[pa.Table, int]:
    """(rows, version) of a dataset; the latest version unless ``version`` is given."""
    tname = table_name(name)
    dt_ = lake.open(tname)
    if dt_ is None:
        known = ", ".join(d["name"] for d in list_datasets(lake)) or "none"
        raise DatasetError(f"no evaluation dataset {name!r} in {lake.uri(DATASETS_DIR)} (datasets: {known}); "
                           "create it with `moderation eval import` or `moderation eval import-standard`")
    if version is not None:
        try:
            dt_.load_as_version(version)
        except Exception as e:
            raise DatasetError(f"dataset {name}: version {version} is not readable ({e})") from e
    return dt_.to_pyarrow_table(), dt_.version()


def dataset_digest(lake: Lake, name: str, version: int) -> str:
    """The content digest recorded with a dataset version (computed when it is missing)."""
    dt_ = lake.open(table_name(name))
    for entry in dt_.history():
        if entry.get("version") == version and entry.get(META_CONTENT):
            return entry[META_CONTENT]
    table, _ = read_dataset(lake, name, version)
    return content_sha256(table)


def dataset_names(lake: Lake) -> list[str]:
    fs, path = arrow_filesystem(lake.uri(DATASETS_DIR))
    import pyarrow.fs as pafs

    if fs is None:
        fs = pafs.LocalFileSystem()
    try:
        infos = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
    except FileNotFoundError:
        return []
    return sorted(Path(i.path).name for i in infos if i.type == pafs.FileType.Directory
                  and lake.exists(f"{DATASETS_DIR}/{Path(i.path).name}"))


def list_datasets(lake: Lake) -> list[dict]:
    """One dict per dataset: name, version, rows, per-category positives/labelled, slices."""
    out = []
    for name in dataset_names(lake):
        table, version = read_dataset(lake, name)
        meta = _latest_metadata(lake, name)
        balance = {}
        for cat in label_categories(table):
            col = table.column(LABEL_PREFIX + cat)
            balance[cat] = (int(pc.sum(col).as_py() or 0), int(pc.count(col).as_py()))
        out.append({"name": name, "version": version, "rows": table.num_rows, "labels": balance,
                    "slices": [c[len(SLICE_PREFIX):] for c in slice_columns(table)],
                    "modalities": sorted(set(table.column("modality").to_pylist())),
                    "description": meta.get(META_DESCRIPTION, ""),
                    "written_at": meta.get("timestamp")})
    return out


def format_datasets(rows: list[dict]) -> str:
    if not rows:
        return "no evaluation datasets (moderation eval import-standard / moderation eval import FILE)"
    lines = [f"{'dataset':26} {'version':>7} {'rows':>6}  labels (positives/labelled)        slices"]
    for r in rows:
        labels = ", ".join(f"{c} {p}/{n}" for c, (p, n) in r["labels"].items())
        lines.append(f"{r['name']:26} {r['version']:>7} {r['rows']:>6}  {labels:34} {', '.join(r['slices']) or '-'}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------
# Standard datasets from ../shared/data (held-out splits only)
# ---------------------------------------------------------------------------------------
def _sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _hatexplain(data_dir: Path, split: str) -> tuple[pa.Table, dict]:
    path = data_dir / "text" / "hatexplain" / f"{split}.jsonl"
    rows = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            r = json.loads(line)
            label = _hx_label(r["annotators"]["label"])
            if label is None:  # all three annotators disagree (SOURCES.md)
                continue
            votes = Counter(t for ts in r["annotators"]["target"] for t in set(ts) if t not in ("None", ""))
            groups = sorted(t for t, k in votes.items() if k >= 2) or ["none"]
            rows.append({"example_id": r["id"], "modality": "text", "text": " ".join(r["post_tokens"]),
                         "source": "hatexplain", "label_hate": int(label == 0),
                         "label_harassment": int(label in (0, 2)), "slice_target_group": groups,
                         "slice_language": "en"})
    return pa.Table.from_pylist(rows), {"file": str(path.relative_to(data_dir)), "sha256": _sha256_file(path)}


def _youtube_heldout(data_dir: Path) -> tuple[pa.Table, dict]:
    path = next((data_dir / "text" / "youtube_spam").glob(f"*{YOUTUBE_HELDOUT}*.csv"))
    rows: list[dict[str, Any]] = []
    seen: Counter[str] = Counter()
    with open(path, newline="", encoding="utf-8") as f:
        for r in csv.DictReader(f):
            # The collection repeats some comment ids (a reposted comment): keep each row, suffixed.
            seen[r["COMMENT_ID"]] += 1
            suffix = f"#{seen[r['COMMENT_ID']]}" if seen[r["COMMENT_ID"]] > 1 else ""
            rows.append({"example_id": r["COMMENT_ID"] + suffix, "modality": "text", "text": r["CONTENT"],
                         "source": "youtube_spam", "label_spam": int(r["CLASS"]), "slice_language": "en",
                         "slice_video": YOUTUBE_HELDOUT})
    return pa.Table.from_pylist(rows), {"file": str(path.relative_to(data_dir)), "sha256": _sha256_file(path)}


def _germeval(data_dir: Path) -> tuple[pa.Table, dict]:
    """GermEval 2018's held-out part: the rows ``moderation.evaluation.corpora`` puts in its test split
    (the multilingual heads train on its train split; the English heads on none of it)."""
    from moderation.evaluation.corpora import hash_split, normalise_key

    path = data_dir / "text" / "germeval2018" / "training.txt"
    rows = []
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f):
            parts = line.rstrip("\n").split("\t")
            if len(parts) < 3 or hash_split(normalise_key(parts[0])) != "test":
                continue
            rows.append({"example_id": f"germeval2018:{i}", "modality": "text", "text": parts[0],
                         "source": "germeval2018", "label_harassment": int(parts[1] == "OFFENSE"),
                         "slice_language": "de", "slice_fine_label": parts[2].lower()})
    return pa.Table.from_pylist(rows), {"file": str(path.relative_to(data_dir)), "sha256": _sha256_file(path)}


#: Rows per corpus in the pooled multilingual sets (the test set leaves out HateXplain and
#: YouTube, which have standard test sets of their own; the validation set holds every corpus).
POOLED_PER_CORPUS = 800


def _pooled(data_dir: Path, split: str) -> tuple[pa.Table, dict]:
    """One held-out split of every corpus in ``moderation.evaluation.corpora`` (at most POOLED_PER_CORPUS
    rows each, the same rows every time: smallest SHA-256 of the text), labels per annotated
    category, slices ``language`` and ``source``. A text that also occurs in any corpus's
    training split (short generic posts: "Oui", "non") is left out, so no model trained on the
    corpora has seen an example; a validation text that is also some corpus's test text is left
    out of validation, so calibration never sees a test example."""
    from moderation.evaluation.corpora import CORPORA, TEXT_CATEGORIES, normalise_key, read_all

    rows, files = [], {}
    corpus_rows = read_all(data_dir)
    excluded = {"train"} | ({"test"} if split == "validation" else set())
    trained = {normalise_key(r.text) for r in corpus_rows if r.split in excluded}
    for name in sorted(CORPORA):
        if split == "test" and name in ("hatexplain", "youtube_spam"):  # standard test sets of their own
            continue
        picked = [r for r in corpus_rows
                  if r.source == name and r.split == split and normalise_key(r.text) not in trained]
        picked.sort(key=lambda r: hashlib.sha256(r.text.encode("utf-8")).hexdigest())
        seen: Counter = Counter()
        for r in picked[:POOLED_PER_CORPUS]:
            base = f"{name}:{split}:{hashlib.sha256(r.text.encode('utf-8')).hexdigest()[:16]}"
            seen[base] += 1
            row: dict[str, Any] = {"example_id": base + (f"#{seen[base]}" if seen[base] > 1 else ""),
                                   "modality": "text", "text": r.text, "source": name, "slice_language": r.language,
                                   "slice_source": name}
            for c in TEXT_CATEGORIES:
                row[f"label_{c}"] = r.categories.get(c)
            rows.append(row)
        files[name] = CORPORA[name].licence
    table = pa.Table.from_pylist(rows)
    for c in TEXT_CATEGORIES:  # a category no pooled corpus annotates is still a typed column
        col = table.column(f"label_{c}").cast(pa.int8())
        table = table.set_column(table.schema.get_field_index(f"label_{c}"), f"label_{c}", col)
    return table, {"corpora": files, "split": split, "per_corpus": POOLED_PER_CORPUS}


def _functional(data_dir: Path) -> tuple[pa.Table, dict]:
    from moderation.evaluation.functional import build_functional_suite

    return build_functional_suite(), {"builder": "moderation.evaluation.functional"}


@dataclass(frozen=True)
class StandardDataset:
    name: str
    description: str
    build: Callable[[Path], tuple[pa.Table, dict]]  # (data_dir) -> (table, provenance)


STANDARD_DATASETS = (
    StandardDataset("hatexplain_test", "HateXplain official test split (hate, harassment = hate or offensive); "
                    "slices: target group (majority of 3 annotators)", lambda d: _hatexplain(d, "test")),
    StandardDataset("hatexplain_validation", "HateXplain official validation split: for calibration and model "
                    "selection (report test figures)", lambda d: _hatexplain(d, "validation")),
    StandardDataset("youtube_spam_heldout", f"YouTube Spam Collection, video {YOUTUBE_HELDOUT} (Shakira), held out "
                    "from training: cross-artist spam", _youtube_heldout),
    StandardDataset("germeval2018_probe", "GermEval 2018 held-out rows (German tweets, OFFENSE = harassment): a "
                    "language probe; the English encoder is expected to do poorly", _germeval),
    StandardDataset("multilingual_test", "Test splits of 18 corpora in 8 languages (moderation/evaluation/corpora.py), "
                    f"<= {POOLED_PER_CORPUS} rows each: cross-dataset and per-language results; slices language, "
                    "source",
                    lambda d: _pooled(d, "test")),
    StandardDataset("multilingual_validation", "Validation splits of all 20 corpora: pooled calibration "
                    "across datasets and languages (report test figures)", lambda d: _pooled(d, "validation")),
    StandardDataset("functional_suite", "The project's functional tests (en, de, es, fr, pt): hateful and "
                    "non-hateful contrasts per functionality and target group; evaluation only",
                    _functional),
)


def import_standard(lake: Lake, data_dir: Path, names: list[str] | None = None) -> list[tuple[str, int, bool]]:
    """Build the standard datasets from ``data_dir`` into the lake: (name, version, written)."""
    wanted = [s for s in STANDARD_DATASETS if not names or s.name in names]
    unknown = set(names or ()) - {s.name for s in STANDARD_DATASETS}
    if unknown:
        raise DatasetError(f"unknown standard datasets {sorted(unknown)}; known: {[s.name for s in STANDARD_DATASETS]}")
    out = []
    for spec in wanted:
        try:
            table, prov = spec.build(data_dir)
        except FileNotFoundError as e:
            raise DatasetError(f"{spec.name}: {e.filename} not found (data directory {data_dir}; see "
                               "../shared/data/SOURCES.md or pass --data-dir)") from e
        version, written = write_dataset(lake, spec.name, table, description=spec.description,
                                         provenance={"builder": "standard", **prov})
        out.append((spec.name, version, written))
    return out


# ---------------------------------------------------------------------------------------
# Import from a user file
# ---------------------------------------------------------------------------------------
def _read_file(path: Path) -> pa.Table:
    if not path.exists():
        raise DatasetError(f"{path}: no such file")
    suffix = path.suffix.lower()
    try:
        if suffix in (".parquet", ".pq"):
            import pyarrow.parquet as pq

            return pq.read_table(path)
        if suffix in (".csv", ".tsv", ".txt"):
            from pyarrow import csv as pacsv

            opts = pacsv.ReadOptions(encoding="utf8")
            parse = pacsv.ParseOptions(delimiter="\t" if suffix == ".tsv" else ",", newlines_in_values=True)
            convert = pacsv.ConvertOptions(strings_can_be_null=True, column_types=None)
            table = pacsv.read_csv(path, read_options=opts, parse_options=parse, convert_options=convert)
            return table
    except (pa.ArrowInvalid, OSError) as e:
        raise DatasetError(f"{path}: not readable as {suffix[1:]}: {e}") from e
    raise DatasetError(f"{path}: unsupported file type {suffix!r} (use .csv, .tsv or .parquet)")


def parse_labels(values: list, *, origin: str, column: str) -> list[int | None]:
    out: list[int | None] = []
    for i, v in enumerate(values):
        if v is None or (isinstance(v, str) and not v.strip()) or (isinstance(v, float) and math.isnan(v)):
            out.append(None)
        elif isinstance(v, bool) or isinstance(v, (int, float)) and v in (0, 1):
            out.append(int(v))
        elif isinstance(v, str) and v.strip().lower() in _TRUE | _FALSE:
            out.append(int(v.strip().lower() in _TRUE))
        else:
            raise DatasetError(f"{origin}: row {i + 1}, column {column}: label {v!r} is not 0/1, true/false or "
                               "yes/no")
    return out


def import_file(path: Path, *, label_columns: dict[str, str], slice_columns: list[str] | None = None,
                text_column: str = "text", id_column: str | None = None, media_column: str | None = None,
                modality: str = "text", list_separator: str | None = "|") -> pa.Table:
    """A dataset table from a user CSV/TSV/Parquet file.

    Args:
        label_columns: category -> the file's column holding its 0/1 label (true/false, yes/no,
            empty = not labelled).
        slice_columns: the file's columns to slice by (``slice_<column>``); string values
            containing ``list_separator`` name several groups.
        text_column: the text of text examples; ``media_column`` the URI of media examples.
        id_column: the example id (default: the row number).
    """
    raw = _read_file(path)
    origin = str(path)
    names = raw.column_names

    def need(col: str, what: str) -> pa.ChunkedArray:
        if col not in names:
            raise DatasetError(f"{origin}: no column {col!r} ({what}); columns: {names}")
        return raw.column(col)

    def text(col: str, what: str, typ: pa.DataType = pa.string()) -> pa.ChunkedArray:
        values = need(col, what)
        try:
            return values.cast(typ)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as e:
            raise DatasetError(f"{origin}: column {col}: type {values.type} cannot be read as text "
                               f"(is the file UTF-8?): {e}") from e

    if not label_columns:
        raise DatasetError(f"{origin}: name at least one label column (--label-column CATEGORY=COLUMN)")
    n = raw.num_rows
    cols: dict[str, pa.Array] = {}
    if id_column:
        cols["example_id"] = text(id_column, "--id-column")
    else:
        cols["example_id"] = pa.array([f"{path.stem}:{i}" for i in range(n)], pa.string())
    if modality not in MODALITIES:
        raise DatasetError(f"{origin}: modality {modality!r} is not one of {list(MODALITIES)}")
    cols["modality"] = pa.array([modality] * n, pa.string())
    if modality == "text":
        cols["text"] = text(text_column, "--text-column")
    else:
        cols["media_uri"] = text(media_column or "media_uri", "--media-column")
    cols["source"] = pa.array([path.name] * n, pa.string())
    for cat, col in label_columns.items():
        if not re.match(r"^[a-z][a-z0-9_]*$", cat):
            raise DatasetError(f"{origin}: category name {cat!r}: use lowercase letters, digits and '_'")
        cols[LABEL_PREFIX + cat] = pa.array(parse_labels(need(col, f"label of {cat}").to_pylist(), origin=origin,
                                                         column=col), pa.int8())
    for col in slice_columns or ():
        if pa.types.is_list(need(col, "--slice-column").type):
            cols[SLICE_PREFIX + col] = text(col, "--slice-column", pa.list_(pa.string()))
            continue
        values = text(col, "--slice-column").to_pylist()
        if list_separator and any(list_separator in (v or "") for v in values):
            cols[SLICE_PREFIX + col] = pa.array(
                [[p.strip() for p in v.split(list_separator) if p.strip()] if v else None for v in values],
                pa.list_(pa.string()))
        else:
            cols[SLICE_PREFIX + col] = pa.array(values, pa.string())
    return validate(pa.table(cols), origin=origin)


def import_provenance(path: Path, **options) -> dict:
    return {"builder": "import", "file": path.name, "sha256": _sha256_file(path),
            "imported_at": dt.datetime.now(dt.UTC).isoformat(), **options}
