"""``moderation eval compare``: one model against another on the same examples, per category
and per slice, with paired bootstrap intervals of the difference.

Two models' separate 95% intervals overlap long before a difference stops being noise; the
question a reviewer asks ("is the candidate worse than the baseline on Arab-targeted posts, or
is that 7 negatives of luck?") is answered by resampling the examples once and scoring both
models on every resample (``metrics.paired_difference``). Each (category, slice, metric) gets
the point difference, its interval and a verdict: better, worse, or no clear difference.

Predictions come from ``eval/predictions`` (what ``moderation evaluate`` stored, reused when
the model digest, dataset version and content match; otherwise the model scores the dataset
once, exactly as ``evaluate`` does). Nothing is written to the lake.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from moderation.config import load_model_registry
from moderation.errors import ConfigError, ModerationError
from moderation.evaluation.datasets import label_categories, read_dataset
from moderation.evaluation.evaluate import baseline_models, dataset_slices, predictions
from moderation.evaluation.metrics import PAIRED_METRICS, paired_difference
from moderation.storage.lake import Lake

METRIC_NAMES = {"pr_auc": "PR-AUC", "roc_auc": "ROC-AUC"}
#: The columns of a comparison table (:func:`compare_predictions`).
COLUMNS = ["category", "slice_column", "slice_value", "n", "positives", "metric", "a", "b", "diff", "lo", "hi",
           "verdict"]


@dataclass
class Comparison:
    dataset: str
    dataset_version: int
    model: str
    against: str
    rows: pd.DataFrame  # one row per category x slice x metric

    def counts(self, metric: str = "pr_auc", category: str | None = None) -> dict[str, int]:
        """Slices (not the overall rows) by verdict, plus ``below``: point estimate below."""
        r = self.rows[self.rows["metric"].eq(metric) & self.rows["slice_column"].notna()]
        if category is not None:
            r = r[r["category"].eq(category)]
        r = r[r["verdict"].notna()]
        return {"slices": len(r), "better": int(r["verdict"].eq("better").sum()),
                "worse": int(r["verdict"].eq("worse").sum()),
                "no clear difference": int(r["verdict"].eq("no clear difference").sum()),
                "below": int((r["diff"] < 0).sum())}


def compare_predictions(a: pd.DataFrame, b: pd.DataFrame, slices: dict[str, dict[str, set[str]]], *,
                        min_slice_n: int = 30, bootstrap: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Paired comparison of predictions ``a`` and ``b`` (columns example_id, category, score,
    label) on the examples both scored (quarantined ones left out), per category: overall, then
    each slice value with at least ``min_slice_n`` examples (and not all of them). ``slices``: slice column -> value
    -> example ids."""
    keep = ["example_id", "category", "score", "label"]
    both = a[keep].merge(b[keep], on=["example_id", "category"], suffixes=("_a", "_b"))
    both = both[both["score_a"].notna() & both["score_b"].notna()]
    if not (both["label_a"].to_numpy(dtype=int) == both["label_b"].to_numpy(dtype=int)).all():
        raise ModerationError("the two models' predictions carry different labels for the same examples")
    out = []
    for cat, group in both.groupby("category", sort=True):
        parts: list[tuple[str | None, str | None, pd.DataFrame]] = [(None, None, group)]
        for slice_col, members in slices.items():
            for slice_value, ids in sorted(members.items()):
                part = group[group["example_id"].isin(ids)]
                if min_slice_n <= len(part) < len(group):  # a slice of every example repeats "all"
                    parts.append((slice_col, slice_value, part))
        for col, value, part in parts:
            y = part["label_a"].to_numpy(dtype=int)
            res = paired_difference(y, part["score_a"].to_numpy(float), part["score_b"].to_numpy(float),
                                    samples=bootstrap, seed=seed)
            for metric in PAIRED_METRICS:
                out.append({"category": cat, "slice_column": col, "slice_value": value, "n": len(y),
                            "positives": int(y.sum()), "metric": metric, **res[metric]})
    return pd.DataFrame(out, columns=COLUMNS)


def compare(*, lake_root: str, dataset: str, model_id: str, against: list[str] | None = None,
            dataset_version: int | None = None, min_slice_n: int = 30, bootstrap: int = 1000, seed: int = 0,
            batch_size: int = 64, models_dir: Path | None = None, progress: bool = True) -> list[Comparison]:
    """Compare ``model_id`` with each model of ``against`` (default: the registry's baselines
    for its categories) on ``dataset``.

    Raises:
        ConfigError: an unknown model id, or nothing to compare against.
        ModerationError: the dataset is missing, or a model shares no labelled category with it.
    """
    if bootstrap < 100:
        raise ConfigError(f"--bootstrap {bootstrap}: at least 100 resamples are needed for a 95% interval")
    registry = load_model_registry(models_dir)
    unknown = [m for m in [model_id, *(against or [])] if m not in registry]
    if unknown:
        raise ConfigError(f"unknown model(s) {unknown}; registered: {sorted(registry)}")
    lake = Lake(lake_root)
    rows, version = read_dataset(lake, dataset, dataset_version)
    spec = registry[model_id]
    others = [registry[m] for m in against] if against else baseline_models(registry, spec, label_categories(rows))
    if not others:
        raise ConfigError(f"nothing to compare {model_id} with: pass --against MODEL (no registry baseline "
                          f"scores {sorted(set(spec.categories) & set(label_categories(rows)))} on {dataset})")
    slices = dataset_slices(rows)
    preds_a, _, _ = predictions(lake, spec, dataset, batch_size=batch_size, progress=progress, read=(rows, version))
    out = []
    for other in others:
        preds_b, _, _ = predictions(lake, other, dataset, batch_size=batch_size, progress=progress,
                                    read=(rows, version))
        table = compare_predictions(preds_a, preds_b, slices, min_slice_n=min_slice_n, bootstrap=bootstrap,
                                    seed=seed)
        if table.empty:
            raise ModerationError(f"{model_id} and {other.model_id} share no scored category on {dataset} v{version}")
        out.append(Comparison(dataset, version, spec.model_id, other.model_id, table))
    return out


def comparisons_frame(comparisons: list[Comparison]) -> pd.DataFrame:
    """The rows of several comparisons in one table, each row naming its dataset, version and models."""
    return pd.concat([c.rows.assign(dataset=c.dataset, dataset_version=c.dataset_version, model=c.model,
                                    against=c.against) for c in comparisons], ignore_index=True)


def _num(v) -> str:
    return "-" if v is None or pd.isna(v) else f"{v:.3f}"


def format_comparison(c: Comparison) -> str:
    """Printable table of one comparison and a verdict count per category and metric."""
    title = (f"dataset {c.dataset} v{c.dataset_version}: {c.model} (A) vs {c.against} (B); "
             "difference A - B with a paired 95% bootstrap interval")
    head = (f"  {'category':11} {'slice':28} {'n':>5} {'pos':>5} {'metric':8} {'A':>6} {'B':>6} "
            f"{'A - B':>7} {'interval':>17}  verdict")
    lines = [title, head]
    for _, r in c.rows.iterrows():
        sl = "all" if r["slice_column"] is None or pd.isna(r["slice_column"]) else \
            f"{r['slice_column']}={r['slice_value']}"
        interval = "-" if pd.isna(r["lo"]) else f"[{r['lo']:+.3f},{r['hi']:+.3f}]"
        diff = "-" if pd.isna(r["diff"]) else f"{r['diff']:+.3f}"
        lines.append(f"  {r['category']:11} {sl[:28]:28} {int(r['n']):5d} {int(r['positives']):5d} "
                     f"{METRIC_NAMES[r['metric']]:8} {_num(r['a']):>6} {_num(r['b']):>6} {diff:>7} {interval:>17}  "
                     f"{r['verdict'] or 'undefined (one class)'}")
    for cat in sorted(c.rows["category"].unique()):
        for metric in PAIRED_METRICS:
            k = c.counts(metric, cat)
            lines.append(f"  {cat} {METRIC_NAMES[metric]}: of {k['slices']} slices A is better in {k['better']}, "
                         f"worse in {k['worse']}, no clear difference in {k['no clear difference']} "
                         f"(point estimate below B in {k['below']})")
    return "\n".join(lines)
