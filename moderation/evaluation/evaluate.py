"""``moderation evaluate``: score an evaluation dataset with a registry model and measure it.

The model scores the examples through the same classifier code the catalog scorer runs
(``Classifier.prepare`` + ``process_batch``: normalisation, segmenting, quarantine), so what is
measured is what production does. Scores land in ``<lake>/eval/predictions`` once per (model
digest, dataset version); metrics per category, overall and per slice value, land in
``<lake>/eval/results``, replaced as a whole per key (model digest, dataset version, policy
version and hash, code version).

Reference models (registry ``role: baseline``, e.g. the lexical alt-profanity-check) are
evaluated beside the model asked for, so every result table shows how it compares with an
off-the-shelf option.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from moderation.classifiers.base import QREASON, RunContext
from moderation.classifiers.registry import build_classifier
from moderation.clock import utcnow
from moderation.config import LoadedPolicy, ModelSpec, load_model_registry, load_policy
from moderation.errors import ConfigError, ModerationError
from moderation.evaluation.datasets import (
    LABEL_PREFIX,
    SLICE_PREFIX,
    DatasetError,
    dataset_digest,
    label_categories,
    read_dataset,
    slice_columns,
)
from moderation.evaluation.metrics import (
    INTERVAL_METRICS,
    bootstrap_intervals,
    point_metrics,
)
from moderation.modalities import MEDIA_COLUMNS
from moderation.runs import code_version, new_run_id
from moderation.schemas import EVAL_PREDICTIONS_SCHEMA, EVAL_RESULTS_SCHEMA
from moderation.storage.lake import Lake, sql_literal

log = logging.getLogger(__name__)

DEFAULT_THRESHOLD = 0.5
#: Slices with fewer examples get metrics (and intervals) but take no part in the FPR gap.
MIN_GAP_NEGATIVES = 20
SCORE_CHUNK = 256


# ---------------------------------------------------------------------------------------
# Predictions
# ---------------------------------------------------------------------------------------
def _work_table(rows: pa.Table, spec: ModelSpec) -> pa.Table:
    """Dataset examples as the catalog work rows a classifier reads."""
    n = rows.num_rows

    def col(name: str) -> pa.Array:
        return rows.column(name).combine_chunks() if name in rows.column_names else pa.nulls(n, pa.string())

    body = col("text")
    item_type = col(f"{SLICE_PREFIX}item_type")
    language = col(f"{SLICE_PREFIX}language")
    media = col("media_uri")
    return pa.table({
        "item_id": col("example_id"),
        "item_type": item_type if pa.types.is_string(item_type.type) else pa.nulls(n, pa.string()),
        "language": language if pa.types.is_string(language.type) else pa.nulls(n, pa.string()),
        "markets": pa.nulls(n, pa.list_(pa.string())),
        "explicit": pa.nulls(n, pa.bool_()),
        "title": col("title"),
        "description": col("description"),
        "body_text": body,
        # Each media modality's URI column (moderation.modalities): the example's media_uri in
        # the column of the model's modality, null in the others.
        **{column: media if modality == spec.modality else pa.nulls(n, pa.string())
           for modality, column in MEDIA_COLUMNS.items()},
        "modality": pa.array([spec.modality] * n, pa.string()),
    })


def default_media_roots() -> list[str]:
    """Where evaluation examples' media may lie by default: the data directory's ``media``."""
    from moderation.evaluation.sources import default_data_dir

    media = default_data_dir() / "media"
    return [str(media.resolve())] if media.is_dir() else []


def check_media_uris(rows: pa.Table, *, dataset: str, version: int, roots: tuple[str, ...]) -> None:
    """Refuse a dataset whose media examples name a ``media_uri`` outside ``roots`` (the same
    check a backfill applies to catalog media, ``media.check_root``), before anything is read.

    Raises:
        DatasetError: naming the dataset and version, the row, its example_id and the URI.
    """
    from moderation.storage.media import MediaError, check_root

    if "media_uri" not in rows.column_names:
        return
    for i, (example_id, modality, uri) in enumerate(zip(rows.column("example_id").to_pylist(),
                                                        rows.column("modality").to_pylist(),
                                                        rows.column("media_uri").to_pylist(), strict=True)):
        if modality not in MEDIA_COLUMNS or not uri:  # text: no media to read
            continue
        try:
            check_root(uri, roots, kind=modality)
        except MediaError as e:
            raise DatasetError(
                f"dataset {dataset} v{version}: row {i + 1} (example_id {example_id!r}): media_uri {uri[:200]!r} "
                f"is not under the media roots {list(roots)} ({e.reason}); pass --media-root to allow its folder"
            ) from e


def score_examples(spec: ModelSpec, rows: pa.Table, *, lake_root: str | None = None,
                   batch_size: int = 64, progress: bool = True,
                   media_roots: tuple[str, ...] | None = None) -> pd.DataFrame:
    """One row per example: example_id, category_scores (dict or None), quarantine reason.

    ``media_roots``: media are read only under these (None: no restriction; callers check the
    dataset first, see :func:`check_media_uris`). ``progress``: a progress bar on a terminal
    only, so logs of a job get no control sequences."""
    from tqdm import tqdm

    clf = build_classifier(spec, batch_size=batch_size,
                           context=RunContext(lake_root=lake_root, media_roots=media_roots))
    clf.setup("cpu")
    work = _work_table(rows, spec)
    parts = []
    for start in tqdm(range(0, work.num_rows, SCORE_CHUNK), desc=f"scoring {spec.model_id}", unit="chunk",
                      disable=None if progress else True):
        out = clf.process_batch(clf.prepare(work.slice(start, SCORE_CHUNK)))
        parts.append(out.select(["item_id", "category_scores", QREASON]))
    table = pa.concat_tables(parts) if parts else pa.table({"item_id": [], "category_scores": [], QREASON: []})
    return pd.DataFrame({
        "example_id": table.column("item_id").to_pylist(),
        "scores": [dict(s) if s is not None else None for s in table.column("category_scores").to_pylist()],
        "quarantine_reason": table.column(QREASON).to_pylist(),
    })


def _predictions_key(spec: ModelSpec, dataset: str, version: int) -> tuple:
    """(pyarrow filter, SQL predicate) of one (model digest, dataset version)'s predictions."""
    return ((pc.field("model_digest") == spec.digest) & (pc.field("dataset") == dataset)
            & (pc.field("dataset_version") == version),
            _key_sql(spec, dataset, version))


def _key_sql(spec: ModelSpec, dataset: str, version: int) -> str:
    return (f"model_digest = {sql_literal(spec.digest)} AND dataset = {sql_literal(dataset)} "
            f"AND dataset_version = {int(version)}")


def predictions(lake: Lake, spec: ModelSpec, dataset: str, *, version: int | None = None,
                batch_size: int = 64, progress: bool = True,
                read: tuple[pa.Table, int] | None = None,
                media_roots: list[str] | None = None) -> tuple[pd.DataFrame, int, bool]:
    """(predictions, dataset version, newly scored) of ``spec`` on ``dataset``.

    Stored predictions of the same model digest, dataset version and dataset content digest,
    covering every category to evaluate, are reused (whatever code version made them: it is
    recorded in each row); otherwise the dataset is scored and the key's predictions replaced
    in one commit. ``read``: the (rows, version) the caller already read. ``media_roots``: where
    media examples may lie (default: :func:`default_media_roots`); a dataset naming media
    elsewhere is refused (:func:`check_media_uris`) before anything is scored.

    Raises:
        DatasetError: a media example outside the media roots.
        ModerationError: the model scores nothing the dataset labels, or another modality."""
    rows, version = read or read_dataset(lake, dataset, version)
    cats = [c for c in spec.categories if c in label_categories(rows)]
    if not cats:
        raise ModerationError(f"model {spec.model_id} scores {list(spec.categories)}; dataset {dataset} v{version} "
                              f"labels {label_categories(rows)}: nothing to evaluate")
    if spec.modality not in set(rows.column("modality").to_pylist()):
        raise ModerationError(f"model {spec.model_id} scores {spec.modality}; dataset {dataset} v{version} holds "
                              f"{sorted(set(rows.column('modality').to_pylist()))} examples")
    content = dataset_digest(lake, dataset, version)
    flt, predicate = _predictions_key(spec, dataset, version)
    stored = lake.read("eval/predictions", filter=flt)
    # Rows of another content of the same name and version (or written before the column
    # existed, so of unknown content) are not reused.
    same = "dataset_sha256" in stored.column_names and stored.num_rows
    stored = stored.filter(pc.equal(stored.column("dataset_sha256"), content)) if same else stored.slice(0, 0)
    if stored.num_rows and set(cats) <= set(stored.column("category").to_pylist()):
        return stored.to_pandas(), version, False
    examples = rows.filter(pc.equal(rows.column("modality"), spec.modality))
    roots = tuple(default_media_roots() if media_roots is None else media_roots)
    check_media_uris(rows, dataset=dataset, version=version, roots=roots)
    scored = score_examples(spec, examples, lake_root=lake.root, batch_size=batch_size, progress=progress,
                            media_roots=roots)
    labels = {c: examples.column(LABEL_PREFIX + c).to_pylist() for c in cats}
    now, cv = utcnow(), code_version()
    out = []
    for i, r in enumerate(scored.itertuples(index=False)):
        for c in cats:
            if labels[c][i] is None:
                continue
            out.append({"model_id": spec.model_id, "model_digest": spec.digest, "dataset": dataset,
                        "dataset_version": version, "example_id": r.example_id, "category": c,
                        "score": None if r.scores is None else float(r.scores[c]), "label": int(labels[c][i]),
                        "quarantine_reason": r.quarantine_reason, "code_version": cv, "predicted_at": now,
                        "dataset_sha256": content})
    table = pa.Table.from_pylist(out, schema=EVAL_PREDICTIONS_SCHEMA)
    # Replaces what the key held (another dataset content of the same name and version, or
    # fewer categories), in one commit.
    lake.replace_where("eval/predictions", table, predicate=predicate,
                       metadata={"moderation.eval": f"{spec.model_id} on {dataset} v{version}"})
    return table.to_pandas(), version, True


# ---------------------------------------------------------------------------------------
# Metrics tables
# ---------------------------------------------------------------------------------------
def dataset_slices(rows: pa.Table) -> dict[str, dict[str, set[str]]]:
    """slice name (``slice_`` prefix dropped) -> slice value -> example ids; a list-valued slice
    puts an example in each of its values."""
    ids = rows.column("example_id").to_pylist()
    slices: dict[str, dict[str, set[str]]] = {}
    for column in slice_columns(rows):
        out = slices.setdefault(column[len(SLICE_PREFIX):], {})
        for eid, value in zip(ids, rows.column(column).to_pylist(), strict=True):
            for v in (value if isinstance(value, list) else [value]):
                out.setdefault("(none)" if v is None else str(v), set()).add(eid)
    return slices


def _thresholds(policy: LoadedPolicy | None, cats: list[str]) -> dict[str, float]:
    if policy is None:
        return dict.fromkeys(cats, DEFAULT_THRESHOLD)
    return {c: float(policy.policy.categories[c].threshold) if c in policy.policy.categories else DEFAULT_THRESHOLD
            for c in cats}


def metric_rows(preds: pd.DataFrame, rows: pa.Table, *, thresholds: dict[str, float], target_precision: float,
                bootstrap: int, seed: int) -> list[dict]:
    """Metric rows per category: overall, then per slice value of each slice column."""
    out = []
    slices = dataset_slices(rows)
    for cat, group in preds.groupby("category", sort=True):
        ok = group[group["score"].notna()]
        quarantined = int(len(group) - len(ok))
        thr = thresholds.get(cat, DEFAULT_THRESHOLD)
        parts: list[tuple[str | None, str | None, pd.DataFrame]] = [(None, None, ok)]
        for slice_col, members in slices.items():
            for slice_value, ids in sorted(members.items()):
                parts.append((slice_col, slice_value, ok[ok["example_id"].isin(ids)]))
        cat_rows: list[dict[str, Any]] = []
        for col, value, part in parts:
            if part.empty and col is not None:
                continue  # the slice value has no example labelled for this category
            y = part["label"].to_numpy(dtype=int)
            s = part["score"].to_numpy(dtype=float)
            m = point_metrics(y, s, thr, target_precision)
            ci = bootstrap_intervals(y, s, thr, samples=bootstrap, seed=seed)
            row = {"category": cat, "slice_column": col, "slice_value": value, "threshold": thr,
                   "target_precision": target_precision, "quarantined": quarantined if col is None else None,
                   "bootstrap_samples": bootstrap, **m}
            for name in INTERVAL_METRICS:
                lo_hi = ci.get(name)
                row[f"{name}_lo"], row[f"{name}_hi"] = lo_hi if lo_hi else (None, None)
            cat_rows.append(row)
        # FPR gap: per slice column, each slice's FPR minus the lowest slice FPR (slices with
        # enough negatives only); the overall row carries the widest gap over all columns.
        widest = None
        for col in {r["slice_column"] for r in cat_rows if r["slice_column"]}:
            gapped = [r for r in cat_rows if r["slice_column"] == col and r["fpr"] is not None
                      and r["n"] - r["positives"] >= MIN_GAP_NEGATIVES]
            if len(gapped) < 2:
                continue
            low = min(r["fpr"] for r in gapped)
            for r in gapped:
                r["fpr_gap"] = r["fpr"] - low
            gap = max(r["fpr_gap"] for r in gapped)
            widest = gap if widest is None else max(widest, gap)
        cat_rows[0]["fpr_gap"] = widest
        out.extend(cat_rows)
    return out


# ---------------------------------------------------------------------------------------
# evaluate
# ---------------------------------------------------------------------------------------
@dataclass
class ModelEvaluation:
    spec: ModelSpec
    dataset: str
    dataset_version: int
    rows: pd.DataFrame  # the results rows written
    newly_scored: bool


@dataclass
class EvaluateResult:
    eval_id: str
    dataset: str
    dataset_version: int
    policy: LoadedPolicy | None
    evaluations: list[ModelEvaluation] = field(default_factory=list)

    def summary(self, *, slices: bool = True) -> str:
        return format_results(pd.concat([e.rows for e in self.evaluations], ignore_index=True), slices=slices)


def _fmt(v, ci_lo=None, ci_hi=None) -> str:
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return "-"
    if ci_lo is None or pd.isna(ci_lo):
        return f"{v:.3f}"
    return f"{v:.3f} [{ci_lo:.2f},{ci_hi:.2f}]"


def format_results(rows: pd.DataFrame, *, slices: bool = True, min_slice_n: int = 30) -> str:
    """A printable table: one line per model x category (and slice)."""
    if rows.empty:
        return "no results"
    lines = []
    for (dataset, version), by_ds in rows.groupby(["dataset", "dataset_version"], sort=False):
        pol = by_ds.iloc[0]
        policy = f"{pol['policy_id']} v{int(pol['policy_version'])}" if pd.notna(pol.get("policy_id")) else \
            f"threshold {DEFAULT_THRESHOLD}"
        lines.append(f"dataset {dataset} v{int(version)}  ({policy}; 95% bootstrap intervals)")
        head = (f"  {'model':34} {'category':11} {'slice':26} {'n':>5} {'pos':>5} {'PR-AUC':>19} {'ROC-AUC':>19} "
                f"{'P@thr':>6} {'R@thr':>6} {'F1':>6} {'FPR':>6} {'R@P':>6} {'ECE':>6}")
        lines.append(head)
        order = by_ds.assign(_role=by_ds["model_role"].eq("baseline")).sort_values(
            ["category", "_role", "model_id"], kind="stable")
        for _, r in order.iterrows():
            if r["slice_column"] is not None and not pd.isna(r["slice_column"]):
                if not slices or r["n"] < min_slice_n:
                    continue
                sl = f"{r['slice_column']}={r['slice_value']}"[:26]
            else:
                sl = "all"
            name = r["model_id"] + (" (base)" if r["model_role"] == "baseline" else "")
            lines.append(
                f"  {name[:34]:34} {r['category']:11} {sl:26} {int(r['n']):5d} {int(r['positives']):5d} "
                f"{_fmt(r['pr_auc'], r['pr_auc_lo'], r['pr_auc_hi']):>19} "
                f"{_fmt(r['roc_auc'], r['roc_auc_lo'], r['roc_auc_hi']):>19} "
                f"{_fmt(r['precision']):>6} {_fmt(r['recall']):>6} {_fmt(r['f1']):>6} {_fmt(r['fpr']):>6} "
                f"{_fmt(r['recall_at_precision']):>6} {_fmt(r['ece']):>6}")
        gaps = by_ds[by_ds["slice_column"].isna() & by_ds["fpr_gap"].notna()]
        for _, r in gaps.iterrows():
            lines.append(f"  widest FPR gap between slices: {r['model_id']} {r['category']} {r['fpr_gap']:.3f}")
    return "\n".join(lines)


def _results_predicate(spec: ModelSpec, dataset: str, version: int, policy: LoadedPolicy | None, cv: str) -> str:
    pol = ("policy_hash IS NULL" if policy is None else f"policy_hash = {sql_literal(policy.content_hash)}")
    return f"{_key_sql(spec, dataset, version)} AND {pol} AND code_version = {sql_literal(cv)}"


def baseline_models(registry: dict[str, ModelSpec], spec: ModelSpec, labelled: list[str]) -> list[ModelSpec]:
    """Registry models marked ``role: baseline`` of the same modality that share a category with
    ``spec`` which the dataset labels."""
    wanted = set(spec.categories) & set(labelled)
    return [m for m in registry.values() if m.role == "baseline" and m.model_id != spec.model_id
            and m.modality == spec.modality and set(m.categories) & wanted]


def evaluate(*, lake_root: str, model_id: str, dataset: str, policy_path: str | Path | None = None,
             dataset_version: int | None = None, baselines: bool = True, target_precision: float = 0.9,
             bootstrap: int = 1000, seed: int = 0, batch_size: int = 64, models_dir: Path | None = None,
             progress: bool = True, media_roots: list[str] | None = None) -> EvaluateResult:
    """Evaluate ``model_id`` (and the registry's baselines) on ``dataset``; write the results.

    Args:
        policy_path: thresholds come from this policy version (default 0.5 for every category)
            and the results are keyed by its version and content hash.
        dataset_version: a past version of the dataset (default: the latest).
        baselines: also evaluate the registry's ``role: baseline`` models.
        target_precision: for ``recall_at_precision``.
        bootstrap: resamples for the 95% intervals (0: none).
        media_roots: folders or ``s3://`` prefixes image and audio examples may lie under
            (default: the data directory's ``media``).

    Raises:
        DatasetError: a media example's ``media_uri`` lies outside ``media_roots``.
    """
    if not 0 < target_precision <= 1:
        raise ConfigError(f"--target-precision {target_precision}: must be in (0, 1]")
    registry = load_model_registry(models_dir)
    if model_id not in registry:
        raise ConfigError(f"unknown model {model_id!r}; registered: {sorted(registry)}")
    spec = registry[model_id]
    policy = load_policy(policy_path, registry) if policy_path else None
    lake = Lake(lake_root)
    rows, version = read_dataset(lake, dataset, dataset_version)
    cv = code_version()
    eval_id = new_run_id("eval")
    result = EvaluateResult(eval_id, dataset, version, policy)
    specs = [spec] + (baseline_models(registry, spec, label_categories(rows)) if baselines else [])
    for m in specs:
        preds, _, newly = predictions(lake, m, dataset, batch_size=batch_size, progress=progress,
                                      read=(rows, version), media_roots=media_roots)
        cats = sorted(preds["category"].unique())
        thresholds = _thresholds(policy, cats)
        mrows = metric_rows(preds, rows, thresholds=thresholds, target_precision=target_precision,
                            bootstrap=bootstrap, seed=seed)
        common = {"eval_id": eval_id, "model_id": m.model_id, "model_digest": m.digest, "model_role": m.role,
                  "dataset": dataset, "dataset_version": version,
                  "policy_id": policy.policy.policy_id if policy else None,
                  "policy_version": policy.policy.version if policy else None,
                  "policy_hash": policy.content_hash if policy else None, "code_version": cv,
                  "evaluated_at": utcnow()}
        table = pa.Table.from_pylist([{**common, **r} for r in mrows], schema=EVAL_RESULTS_SCHEMA)
        lake.replace_where("eval/results", table, predicate=_results_predicate(m, dataset, version, policy, cv),
                           metadata={"moderation.eval_id": eval_id})
        result.evaluations.append(ModelEvaluation(m, dataset, version, table.to_pandas(), newly))
        log.info("evaluated %s on %s v%d: %d result rows", m.ref, dataset, version, table.num_rows)
    return result


def latest_results(lake: Lake, *, dataset: str | None = None) -> pd.DataFrame:
    """Results rows of the newest evaluation per (model digest, dataset version, policy hash)."""
    flt = None if dataset is None else pc.field("dataset") == dataset
    df = lake.read("eval/results", filter=flt).to_pandas()
    if df.empty:
        return df
    policy = df["policy_hash"].fillna("")
    newest = df.groupby([df["model_digest"], df["dataset"], df["dataset_version"], policy])["evaluated_at"] \
        .transform("max")
    return df[df["evaluated_at"].eq(newest)].reset_index(drop=True)
