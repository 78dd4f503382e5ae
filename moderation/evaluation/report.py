"""``moderation eval report``: a static HTML report of the evaluation results, and a PNG summary.

The report reads what ``moderation evaluate`` wrote (``<lake>/eval/results`` and
``eval/predictions``) and never loads a model; it reads each dataset version only for slice
membership, to compare the production models with the baseline per slice with paired bootstrap
intervals (left out, with a warning, when the version is no longer readable). For each dataset (its
latest evaluated version) it shows what was evaluated (models and digests, policy, code
version, when), and per category: the precision-recall curves of every model with the operating
point at the policy threshold, reliability diagrams, the overall metrics with their bootstrap
intervals and the fairness slices. A "model vs baseline" summary opens the page.

The page is one self-contained file readable offline: no JavaScript, no external URL, CSS
inline and every figure a base64 PNG data URI. Figures are ``matplotlib.figure.Figure``
objects rendered by the Agg canvas (pyplot's global state is never touched); curves come from
scikit-learn, tables from pandas.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import io
import logging
import math
from dataclasses import dataclass, field
from itertools import groupby
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.compute as pc
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from sklearn.calibration import calibration_curve
from sklearn.metrics import precision_recall_curve

from moderation.errors import ModerationError
from moderation.evaluation.compare import COLUMNS as COMPARISON_COLUMNS
from moderation.evaluation.compare import compare_predictions
from moderation.evaluation.datasets import read_dataset
from moderation.evaluation.evaluate import (
    DEFAULT_THRESHOLD,
    MIN_GAP_NEGATIVES,
    dataset_slices,
    latest_results,
)
from moderation.storage.lake import Lake

log = logging.getLogger(__name__)

REPORT_HTML = "eval_report.html"
SUMMARY_PNG = "eval_summary.png"
BASELINE_MARK = "(baseline)"
CALIBRATION_BINS = 10
DIGEST_PREFIX = 12
DPI = 110
#: Without it matplotlib writes its version and home page into every PNG.
_PNG_METADATA = {"Software": None}
_COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf")
_NO_RESULTS = ("no evaluation results in {lake}: run `moderation evaluate --model ID --dataset NAME --lake URI` "
               "first")

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto; max-width: 1250px;
       color: #222; line-height: 1.4; padding: 0 1em; }
h1 { border-bottom: 2px solid #444; padding-bottom: .2em; }
h2 { margin-top: 2.2em; border-bottom: 1px solid #bbb; }
h3 { margin-top: 1.8em; }
table { border-collapse: collapse; margin: .6em 0 1em; font-size: 13px; }
th, td { border: 1px solid #ccc; padding: 3px 7px; text-align: right; white-space: nowrap; }
th { background: #f0f0f0; }
td:first-child, th:first-child { text-align: left; }
tr.below-baseline td { background: #fde2e1; }
td.widest-gap { background: #ffe08a; font-weight: bold; }
td.worse-than-baseline { background: #f4a09c; font-weight: bold; }
tr.below-baseline td.widest-gap { background: #f7b267; }
dl.meta { display: grid; grid-template-columns: max-content auto; gap: .15em 1em; }
dl.meta dt { font-weight: bold; }
dl.meta dd { margin: 0; }
.figures { display: flex; flex-wrap: wrap; gap: 1em; align-items: flex-start; }
.figures img, img.summary { max-width: 100%; border: 1px solid #ddd; }
.note { color: #555; font-size: 13px; }
.gap-line { margin: .2em 0; }
.legend-swatch { padding: 0 .4em; }
"""


# ---------------------------------------------------------------------------------------
# What the report holds
# ---------------------------------------------------------------------------------------
@dataclass
class DatasetEvaluation:
    """The latest evaluated version of one dataset: results rows, predictions and its models.

    ``models`` holds one row per model digest (production models first): model_id,
    model_digest, model_role, label (the name the report shows), policy, code version, when.
    """

    name: str
    version: int
    results: pd.DataFrame
    predictions: pd.DataFrame
    models: pd.DataFrame
    omitted_policies: list[str] = field(default_factory=list)
    #: slice column (without the ``slice_`` prefix) -> value -> example ids, from the dataset
    #: version itself; empty when that version can no longer be read (paired slice comparisons
    #: are then left out of the report).
    members: dict[str, dict[str, set[str]]] = field(default_factory=dict)
    _paired: dict[tuple, pd.DataFrame] = field(default_factory=dict, init=False, repr=False)

    @property
    def categories(self) -> list[str]:
        return sorted(self.results["category"].unique())

    def overall(self, category: str) -> pd.DataFrame:
        """The overall rows of ``category``, one per model in ``models`` order, with its ``label``."""
        rows = self.results[self.results["slice_column"].isna() & self.results["category"].eq(category)]
        return self._ordered(rows)

    def slices(self, category: str) -> pd.DataFrame:
        """The slice rows of ``category``, by model (``models`` order), slice column and value."""
        rows = self.results[self.results["slice_column"].notna() & self.results["category"].eq(category)]
        return self._ordered(rows)

    def scores(self, category: str, digest: str) -> tuple[np.ndarray, np.ndarray]:
        """(labels, scores) of one model on one category; quarantined examples left out."""
        p = self.predictions
        part = p[p["category"].eq(category) & p["model_digest"].eq(digest) & p["score"].notna()]
        return part["label"].to_numpy(dtype=int), part["score"].to_numpy(dtype=float)

    def paired(self, category: str, prod: pd.Series, base: pd.Series, min_slice_n: int) -> pd.DataFrame:
        """PR-AUC rows of :func:`compare_predictions` of ``prod`` against ``base`` (overall, then
        the slices of ``members``), with the production model's bootstrap resamples; computed
        once per pair for the summary and the slice table; empty without resamples or common
        predictions."""
        key = (category, prod["model_digest"], base["model_digest"], min_slice_n)
        if key not in self._paired:
            p = self.predictions[self.predictions["category"].eq(category)]
            a, b = p[p["model_digest"].eq(prod["model_digest"])], p[p["model_digest"].eq(base["model_digest"])]
            samples = 0 if _missing(prod["bootstrap_samples"]) else int(prod["bootstrap_samples"])
            rows = (compare_predictions(a, b, self.members, min_slice_n=min_slice_n, bootstrap=samples, seed=0)
                    if samples > 0 and not a.empty and not b.empty else pd.DataFrame(columns=COMPARISON_COLUMNS))
            self._paired[key] = rows[rows["metric"].eq("pr_auc")].reset_index(drop=True)
        return self._paired[key]

    def _ordered(self, rows: pd.DataFrame) -> pd.DataFrame:
        keys = self.models[["model_digest", "label", "model_role"]].assign(_order=range(len(self.models)))
        out = rows.drop(columns=["model_role"]).merge(keys, on="model_digest")
        return out.sort_values(["_order", "slice_column", "slice_value"], kind="stable", na_position="first") \
            .drop(columns="_order").reset_index(drop=True)


@dataclass
class ReportFiles:
    """What :func:`write_report` wrote.

    Attributes:
        html: the report page.
        png: the summary chart (PR-AUC per dataset x category, production vs baseline).
        figures: the number of figures embedded in the page (the summary chart included).
        pr_auc: one dict per dataset x category x model: dataset, dataset_version, category,
            model_id, model_role, pr_auc, pr_auc_lo, pr_auc_hi.
    """

    html: Path
    png: Path
    figures: int
    pr_auc: list[dict] = field(default_factory=list)

    def summary(self) -> str:
        """Paths and the overall PR-AUC of every model, for the CLI to print."""
        lines = [f"report: {self.html} ({self.figures} figures)", f"summary chart: {self.png}"]
        for r in self.pr_auc:
            name = r["model_id"] + (f" {BASELINE_MARK}" if r["model_role"] == "baseline" else "")
            lines.append(f"  {r['dataset']} v{r['dataset_version']} {r['category']}: {name} PR-AUC "
                         f"{_ci(r['pr_auc'], r['pr_auc_lo'], r['pr_auc_hi'])}")
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------
# Reading the lake
# ---------------------------------------------------------------------------------------
def _policy_text(row: pd.Series) -> str:
    if pd.isna(row["policy_id"]):
        return f"threshold {DEFAULT_THRESHOLD}"
    return f"{row['policy_id']} v{int(row['policy_version'])}"


def _model_frame(results: pd.DataFrame) -> pd.DataFrame:
    """One row per model digest, production models first; ``label`` adds the digest prefix when
    two digests share a model id, and the baseline marker."""
    first = results.sort_values("evaluated_at").groupby("model_digest", as_index=False).last()
    models = first.assign(_baseline=first["model_role"].eq("baseline")) \
        .sort_values(["_baseline", "model_id", "model_digest"]).reset_index(drop=True)
    dup = models["model_id"].duplicated(keep=False)
    label = models["model_id"].where(~dup, models["model_id"] + "@" + models["model_digest"].str[:DIGEST_PREFIX])
    models["label"] = label.where(~models["_baseline"], label + f" {BASELINE_MARK}")
    models["policy"] = models.apply(_policy_text, axis=1)
    return models[["model_id", "model_digest", "model_role", "label", "policy", "policy_hash", "code_version",
                   "evaluated_at", "bootstrap_samples", "target_precision"]]


def _newest_policy(rows: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """Rows of the policy of the newest evaluation (one report shows one policy per dataset
    version); the texts of the policies left out."""
    policy = rows["policy_hash"].fillna("")
    newest = policy[rows["evaluated_at"].idxmax()]
    keep = policy.eq(newest)
    # A baseline not evaluated under that policy still gets a reference row: its newest
    # evaluation of the dataset version (the threshold-free metrics compare all the same).
    for digest in rows.loc[rows["model_role"].eq("baseline") & ~keep, "model_digest"].unique():
        if not (keep & rows["model_digest"].eq(digest)).any():
            mine = rows["model_digest"].eq(digest)
            keep |= mine & rows["eval_id"].eq(rows.loc[rows.loc[mine, "evaluated_at"].idxmax(), "eval_id"])
    omitted = sorted({_policy_text(r) for _, r in rows[policy.ne(newest) & ~keep].iterrows()})
    return rows[keep], omitted


def _read_predictions(lake: Lake, name: str, version: int, digests: list[str]) -> pd.DataFrame:
    flt = (pc.field("dataset") == name) & (pc.field("dataset_version") == version)
    cols = ["model_digest", "example_id", "category", "score", "label"]
    preds = lake.read("eval/predictions", filter=flt, columns=cols).to_pandas()
    return preds[preds["model_digest"].isin(digests)].reset_index(drop=True)


def load_evaluations(lake: Lake, datasets: list[str] | None = None) -> list[DatasetEvaluation]:
    """The latest evaluated version of each dataset (all, or ``datasets``) with its newest
    results per model; raises ModerationError when there is nothing to report."""
    results = latest_results(lake)
    if results.empty:
        raise ModerationError(_NO_RESULTS.format(lake=lake.uri("eval/results")))
    known = sorted(results["dataset"].unique())
    if datasets:
        missing = sorted(set(datasets) - set(known))
        if missing:
            raise ModerationError(f"no evaluation results for dataset(s) {missing} in {lake.uri('eval/results')} "
                                  f"(evaluated: {known}); run `moderation evaluate --model ID --dataset NAME "
                                  "--lake URI` first")
    out = []
    for name in [d for d in known if not datasets or d in datasets]:
        rows = results[results["dataset"].eq(name)]
        version = int(rows["dataset_version"].max())
        rows, omitted = _newest_policy(rows[rows["dataset_version"].eq(version)])
        models = _model_frame(rows)
        preds = _read_predictions(lake, name, version, models["model_digest"].tolist())
        out.append(DatasetEvaluation(name, version, rows.reset_index(drop=True), preds, models, omitted,
                                     _slice_members(lake, name, version)))
    return out


def _slice_members(lake: Lake, name: str, version: int) -> dict[str, dict[str, set[str]]]:
    """Slice membership of one dataset version; empty (with a log line) when it is unreadable,
    e.g. vacuumed: the rest of the report needs only results and predictions."""
    try:
        rows, _ = read_dataset(lake, name, version)
    except ModerationError as e:
        log.warning("report: no paired slice comparison for %s v%d: %s", name, version, e)
        return {}
    return dataset_slices(rows)


# ---------------------------------------------------------------------------------------
# Formatting
# ---------------------------------------------------------------------------------------
def _missing(v) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v)) or v is pd.NA


def _num(v, digits: int = 3) -> str:
    return "–" if _missing(v) else f"{v:.{digits}f}"


def _ci(v, lo, hi) -> str:
    """``0.721 [0.68, 0.76]``; the point alone without an interval."""
    if _missing(v):
        return "–"
    if _missing(lo) or _missing(hi):
        return f"{v:.3f}"
    return f"{v:.3f} [{lo:.2f}, {hi:.2f}]"


def _row_ci(r: pd.Series, metric: str) -> str:
    return _ci(r[metric], r[f"{metric}_lo"], r[f"{metric}_hi"])


def _slice_name(r: pd.Series) -> str:
    return f"{r['slice_column']}={r['slice_value']}"


def _esc(value) -> str:
    return html.escape(str(value), quote=True)


def _frame_html(df: pd.DataFrame, css_class: str) -> str:
    """A pandas table, every cell escaped."""
    return df.to_html(index=False, escape=True, na_rep="–", classes=css_class, border=0)


def _header_rows(columns: pd.Index) -> str:
    """One header row, or two for (group, name) columns: a group spans its columns, columns of
    the empty group span both rows."""
    if not isinstance(columns, pd.MultiIndex):
        return "<tr>" + "".join(f"<th>{_esc(c)}</th>" for c in columns) + "</tr>"
    top: list[str] = []
    bottom: list[str] = []
    for group, members in groupby(columns, key=lambda c: c[0]):
        names = [n for _, n in members]
        if group:
            top.append(f'<th colspan="{len(names)}">{_esc(group)}</th>')
            bottom.extend(f"<th>{_esc(n)}</th>" for n in names)
        else:
            top.extend(f'<th rowspan="2">{_esc(n)}</th>' for n in names)
    return f"<tr>{''.join(top)}</tr><tr>{''.join(bottom)}</tr>"


def _classed_table(df: pd.DataFrame, css_class: str, row_classes: list[str],
                   cell_classes: dict[tuple[int, object], str]) -> str:
    """A table whose rows and cells carry CSS classes (highlights), every cell escaped.
    pandas ``to_html`` has no per-row classes and ``Styler`` needs jinja2, which the project
    does not depend on. ``cell_classes`` maps (row position, column) to a class."""
    body = []
    for i, row in enumerate(df.itertuples(index=False)):
        cells = []
        for col, value in zip(df.columns, row, strict=True):
            cls = cell_classes.get((i, col))
            attr = f' class="{_esc(cls)}"' if cls else ""
            cells.append(f"<td{attr}>{_esc('–' if _missing(value) else value)}</td>")
        attr = f' class="{_esc(row_classes[i])}"' if row_classes[i] else ""
        body.append(f"<tr{attr}>{''.join(cells)}</tr>")
    return (f'<table class="{_esc(css_class)}"><thead>{_header_rows(df.columns)}</thead>'
            f"<tbody>{''.join(body)}</tbody></table>")


def _colors(evaluations: list[DatasetEvaluation]) -> dict[str, str]:
    """One colour per model id across the whole report."""
    ids = pd.concat([e.models for e in evaluations]).sort_values(["model_role", "model_id"], ascending=[False, True])
    return {m: _COLORS[i % len(_COLORS)] for i, m in enumerate(ids["model_id"].drop_duplicates())}


# ---------------------------------------------------------------------------------------
# Figures
# ---------------------------------------------------------------------------------------
def _png_bytes(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, metadata=_PNG_METADATA)
    return buf.getvalue()


def _img(fig: Figure, css_class: str, alt: str) -> str:
    """An ``<img>`` with the figure as a base64 PNG data URI."""
    data = base64.b64encode(_png_bytes(fig)).decode("ascii")
    return f'<img class="{_esc(css_class)}" alt="{_esc(alt)}" src="data:image/png;base64,{data}">'


def _no_data(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="#666")


def pr_figure(ev: DatasetEvaluation, category: str, colors: dict[str, str]) -> Figure:
    """Precision-recall curves of every model on one category (baselines dashed), the PR-AUC
    with its interval in the legend and the operating point at each model's threshold."""
    fig = Figure(figsize=(6.4, 5.6), layout="constrained")
    ax = fig.add_subplot()
    prevalence = None
    for _, r in ev.overall(category).iterrows():
        y, s = ev.scores(category, r["model_digest"])
        color = colors[r["model_id"]]
        style = "--" if r["model_role"] == "baseline" else "-"
        if len(y) == 0 or y.sum() in (0, len(y)):
            ax.plot([], [], ls=style, color=color, label=f"{r['label']}: no curve (one class only)")
            continue
        precision, recall, _ = precision_recall_curve(y, s)
        ax.plot(recall, precision, ls=style, color=color, lw=1.8, drawstyle="steps-post",
                label=f"{r['label']}  PR-AUC {_row_ci(r, 'pr_auc')}")
        if not _missing(r["precision"]) and not _missing(r["recall"]):
            ax.plot(r["recall"], r["precision"], "o", ms=8, color=color, mec="black", mew=1.2, zorder=5)
        prevalence = y.mean()
    if prevalence is None:
        _no_data(ax, "no model has both classes")
    else:
        ax.axhline(prevalence, color="#888", ls=":", lw=1, label=f"prevalence {prevalence:.2f} (chance)")
    thresholds = ", ".join(f"{t:g}" for t in sorted(ev.overall(category)["threshold"].unique()))
    handles, labels = ax.get_legend_handles_labels()
    handles.append(Line2D([], [], ls="", marker="o", ms=8, mfc="white", mec="black"))
    labels.append(f"operating point at threshold {thresholds}")
    ax.set(xlim=(0, 1.01), ylim=(0, 1.03), xlabel="recall", ylabel="precision",
           title=f"{ev.name} v{ev.version}: {category}, precision-recall")
    ax.grid(alpha=0.3)
    fig.legend(handles, labels, loc="outside lower center", fontsize=8.5, frameon=False)
    return fig


def calibration_figure(ev: DatasetEvaluation, category: str, colors: dict[str, str]) -> Figure:
    """Reliability diagrams of one category, a panel per model: fraction of positives per
    uniform score bin (scikit-learn ``calibration_curve``) against the diagonal, ECE in the legend."""
    rows = ev.overall(category)
    ncols = min(len(rows), 3)
    nrows = math.ceil(len(rows) / ncols)
    fig = Figure(figsize=(4.3 * ncols, 4.4 * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax, (_, r) in zip(axes, rows.iterrows(), strict=False):
        y, s = ev.scores(category, r["model_digest"])
        ax.plot([0, 1], [0, 1], color="#888", ls=":", lw=1, label="perfectly calibrated")
        if len(y) and 0 < y.sum() < len(y):
            frac_pos, mean_score = calibration_curve(y, s, n_bins=CALIBRATION_BINS, strategy="uniform")
            ax.plot(mean_score, frac_pos, marker="o", color=colors[r["model_id"]], ms=4.5,
                    ls="--" if r["model_role"] == "baseline" else "-", label=f"ECE {_num(r['ece'])}")
        else:
            _no_data(ax, "one class only")
        ax.set(xlim=(0, 1), ylim=(0, 1), aspect="equal", xlabel="mean score (bin)",
               ylabel="fraction positive", title=r["label"])
        ax.title.set_fontsize(10)
        ax.grid(alpha=0.3)
        ax.legend(loc="upper left", fontsize=8.5)
    for ax in axes[len(rows):]:
        ax.set_axis_off()
    fig.suptitle(f"{ev.name} v{ev.version}: {category}\ncalibration ({CALIBRATION_BINS} uniform bins)",
                 fontsize=11)
    return fig


def summary_frame(evaluations: list[DatasetEvaluation]) -> pd.DataFrame:
    """The overall PR-AUC of every model per dataset x category."""
    parts = [ev.overall(cat).assign(dataset_version=ev.version)
             for ev in evaluations for cat in ev.categories]
    cols = ["dataset", "dataset_version", "category", "model_id", "model_role", "label", "pr_auc", "pr_auc_lo",
            "pr_auc_hi"]
    return pd.concat(parts, ignore_index=True)[cols]


def summary_figure(summary: pd.DataFrame, colors: dict[str, str]) -> Figure:
    """Grouped bars: PR-AUC with its 95% interval per dataset x category, one bar per model
    (baselines hatched), each group's bars centred on its tick."""
    labels = list(dict.fromkeys(summary.sort_values("model_role", ascending=False, kind="stable")["label"]))
    bars = summary.assign(group=summary["dataset"] + "\nv" + summary["dataset_version"].astype(str) + ": "
                          + summary["category"], order=summary["label"].map(labels.index))
    groups = list(dict.fromkeys(bars["group"]))
    bars = bars.sort_values(["group", "order"], key=lambda c: c.map(groups.index) if c.name == "group" else c)
    rank = bars.groupby("group").cumcount()
    size = bars.groupby("group")["label"].transform("size")
    width = min(0.8 / size.max(), 0.35)
    bars["x"] = bars["group"].map(groups.index) + (rank - (size - 1) / 2) * width
    for col in ("pr_auc", "pr_auc_lo", "pr_auc_hi"):
        bars[col] = bars[col].astype(float)
    bars["pr_auc_lo"] = bars["pr_auc_lo"].fillna(bars["pr_auc"])
    bars["pr_auc_hi"] = bars["pr_auc_hi"].fillna(bars["pr_auc"])
    fig = Figure(figsize=(max(7.0, 1.2 + len(groups) * (0.9 * size.max() + 0.9)), 5.4), layout="constrained")
    ax = fig.add_subplot()
    for label in labels:
        part = bars[bars["label"].eq(label)]
        baseline = part["model_role"].eq("baseline").any()
        x, v, lo, hi = (part[c].to_numpy(dtype=float) for c in ("x", "pr_auc", "pr_auc_lo", "pr_auc_hi"))
        ax.bar(x, v, width * 0.92, yerr=[v - lo, hi - v], capsize=3,
               color=colors[part["model_id"].iloc[0]], alpha=0.55 if baseline else 0.9,
               hatch="//" if baseline else None, edgecolor="black", lw=0.6, label=label, error_kw={"lw": 1})
        for xi, vi, hi_i in zip(x, v, hi, strict=True):
            if not np.isnan(vi):
                ax.text(xi, hi_i + 0.015, f"{vi:.2f}", ha="center", va="bottom", fontsize=8)
    ax.set_xticks(np.arange(len(groups)), groups, fontsize=8.5)
    ax.set(xlim=(-0.7, len(groups) - 0.3), ylim=(0, 1.12), ylabel="PR-AUC (average precision)")
    ax.set_title("PR-AUC per dataset and category, production vs baseline\n(95% bootstrap intervals)",
                 fontsize=10.5)
    ax.grid(axis="y", alpha=0.3)
    fig.legend(loc="outside lower center", ncols=min(len(labels), 3), fontsize=8.5, frameon=False)
    return fig


# ---------------------------------------------------------------------------------------
# HTML sections
# ---------------------------------------------------------------------------------------
def _anchor(*parts: str) -> str:
    return "-".join("".join(ch if ch.isalnum() else "_" for ch in p) for p in parts)


def _slice_comparison(ev: DatasetEvaluation, category: str, production: str, baseline: str,
                      min_slice_n: int) -> tuple[int, int]:
    """(slices where ``production`` has a lower PR-AUC than ``baseline``, slices compared);
    slices with at least ``min_slice_n`` examples for both and a PR-AUC for both."""
    sl = ev.slices(category)
    sl = sl[sl["n"].ge(min_slice_n) & sl["pr_auc"].notna()]
    pivot = sl.pivot_table(index=["slice_column", "slice_value"], columns="model_digest", values="pr_auc")
    if production not in pivot or baseline not in pivot:
        return 0, 0
    both = pivot[[production, baseline]].dropna()
    return int((both[production] < both[baseline]).sum()), len(both)


def _comparison_row(ev: DatasetEvaluation, category: str, prod: pd.Series, base: pd.Series | None,
                    min_slice_n: int) -> dict:
    """One production model against one baseline (None: no baseline was evaluated)."""
    row = {"dataset": f"{ev.name} v{ev.version}", "category": category, "model": prod["label"],
           "PR-AUC": _row_ci(prod, "pr_auc"), "baseline": "(none evaluated)", "baseline PR-AUC": None,
           "difference": None, f"slices below baseline (n ≥ {min_slice_n})": None, "_below": False}
    if base is None:
        return row
    below, compared = _slice_comparison(ev, category, prod["model_digest"], base["model_digest"], min_slice_n)
    row.update({"baseline": base["label"], "baseline PR-AUC": _row_ci(base, "pr_auc"),
                f"slices below baseline (n ≥ {min_slice_n})": f"{below} of {compared}"})
    if not _missing(prod["pr_auc"]) and not _missing(base["pr_auc"]):
        row["difference"] = f"{prod['pr_auc'] - base['pr_auc']:+.3f}"
        row["_below"] = prod["pr_auc"] < base["pr_auc"]
        overall = ev.paired(category, prod, base, min_slice_n)
        overall = overall[overall["slice_column"].isna()]
        if len(overall) and overall.iloc[0]["verdict"]:
            row["difference"] = _paired_text(next(overall.itertuples(index=False)))
    return row


def _paired_text(r) -> str:
    """"A - B [lo,hi] verdict" of one row of :meth:`DatasetEvaluation.paired`."""
    return f"{r.diff:+.3f} [{r.lo:+.3f},{r.hi:+.3f}] {r.verdict}" if r.verdict else "–"


def comparison_frame(evaluations: list[DatasetEvaluation], min_slice_n: int) -> pd.DataFrame:
    """Model vs baseline per dataset x category x (production model, baseline) pair; ``_below``
    marks a production model below the baseline overall."""
    out: list[dict[str, Any]] = []
    for ev in evaluations:
        for cat in ev.categories:
            rows = ev.overall(cat)
            is_base = rows["model_role"].eq("baseline")
            bases = [b for _, b in rows[is_base].iterrows()] or [None]
            out.extend(_comparison_row(ev, cat, p, b, min_slice_n)
                       for _, p in rows[~is_base].iterrows() for b in bases)
    return pd.DataFrame(out)


def comparison_section(evaluations: list[DatasetEvaluation], summary_img: str, min_slice_n: int) -> str:
    table = comparison_frame(evaluations, min_slice_n)
    if table.empty:
        body = '<p class="note">no production model was evaluated.</p>'
    else:
        classes = ["below-baseline" if b else "" for b in table["_below"]]
        body = _classed_table(table.drop(columns="_below"), "comparison", classes, {})
    return (f'<section id="summary"><h2>Model vs baseline</h2>{body}'
            '<p class="note">PR-AUC is average precision with its 95% bootstrap interval. Rows in red: the '
            'production model is below the baseline overall. Slices below baseline counts the slice values with '
            f'at least {min_slice_n} examples where the production PR-AUC is lower. The difference carries a paired '
            '95% bootstrap interval (both models scored on the same resamples) and its verdict; the slice '
            'tables give it per slice (<code>moderation eval compare</code> prints it for any two models).</p>'
            f"<div>{summary_img}</div></section>")


def header_section(ev: DatasetEvaluation) -> str:
    """What was evaluated: dataset and version, models, policy, code version, when."""
    m = ev.models
    models = pd.DataFrame({
        "model": m["label"], "digest": m["model_digest"].str[:DIGEST_PREFIX], "role": m["model_role"],
        "policy": m["policy"], "code version": m["code_version"],
        "evaluated at": m["evaluated_at"].map(lambda t: pd.Timestamp(t).strftime("%Y-%m-%d %H:%M:%S UTC")),
        "bootstrap samples": m["bootstrap_samples"],
    })
    policies = ", ".join(dict.fromkeys(m["policy"]))
    omitted = (f'<p class="note">Evaluations of this version under other policies are not shown: '
               f"{_esc(', '.join(ev.omitted_policies))}.</p>" if ev.omitted_policies else "")
    meta = {
        "dataset": f"{ev.name} v{ev.version}",
        "policy": policies,
        "code version": ", ".join(dict.fromkeys(m["code_version"])),
        "evaluated at": ", ".join(dict.fromkeys(models["evaluated at"])),
        "categories": ", ".join(ev.categories),
    }
    dl = "".join(f"<dt>{_esc(k)}</dt><dd>{_esc(v)}</dd>" for k, v in meta.items())
    return (f'<h2 id="{_anchor(ev.name)}">Dataset {_esc(ev.name)} v{ev.version}</h2>'
            f'<dl class="meta">{dl}</dl>{_frame_html(models, "models")}{omitted}')


def metrics_table(ev: DatasetEvaluation, category: str) -> str:
    """Overall metrics of every model on one category."""
    rows = ev.overall(category)
    target = rows["target_precision"].dropna()
    rap = f"recall @ precision ≥ {target.iloc[0]:g}" if len(target) else "recall @ target precision"
    table = pd.DataFrame({
        "model": rows["label"], "threshold": rows["threshold"].map(lambda t: f"{t:g}"), "n": rows["n"],
        "positives": rows["positives"],
        "quarantined": rows["quarantined"].map(lambda q: "–" if _missing(q) else int(q)),
        **{name: rows.apply(_row_ci, axis=1, metric=metric)
           for name, metric in (("PR-AUC", "pr_auc"), ("ROC-AUC", "roc_auc"), ("precision", "precision"),
                                ("recall", "recall"), ("F1", "f1"), ("FPR", "fpr"))},
        rap: rows["recall_at_precision"].map(_num), "ECE": rows["ece"].map(_num),
    })
    return _frame_html(table, "metrics")


def _below_baseline(index: pd.MultiIndex, slices: pd.DataFrame) -> np.ndarray:
    """Per (slice column, value) of ``index``: is some production model's PR-AUC below some
    baseline's?"""
    keys = ["slice_column", "slice_value"]
    is_base = slices["model_role"].eq("baseline")
    prod_low = slices[~is_base].groupby(keys)["pr_auc"].min().reindex(index).astype(float)
    base_high = slices[is_base].groupby(keys)["pr_auc"].max().reindex(index).astype(float)
    return (prod_low < base_high).to_numpy()


def _slice_table(ev: DatasetEvaluation, category: str, min_slice_n: int) -> str:
    """Slice values with at least ``min_slice_n`` examples: per model PR-AUC, FPR (intervals)
    and FPR gap; the widest gap per model and rows where a production model is below a
    baseline are highlighted."""
    sl = ev.slices(category)
    sl = sl[sl["n"].ge(min_slice_n)]
    if sl.empty:
        return f'<p class="note">no slice with at least {min_slice_n} examples.</p>'
    keys = ["slice_column", "slice_value"]
    index = sl.groupby(keys, sort=True).agg(n=("n", "max"), positives=("positives", "max")).reset_index()
    columns = {("", "slice"): index["slice_column"], ("", "value"): index["slice_value"], ("", "n"): index["n"],
               ("", "positives"): index["positives"]}
    cells: dict[tuple[int, object], str] = {}
    for label, part in sl.groupby("label", sort=False):
        part = index[keys].merge(part, on=keys, how="left")
        columns[(label, "PR-AUC")] = part.apply(_row_ci, axis=1, metric="pr_auc")
        columns[(label, "FPR")] = part.apply(_row_ci, axis=1, metric="fpr")
        columns[(label, "FPR gap")] = part["fpr_gap"].map(_num)
        gap = part["fpr_gap"].astype(float)
        if gap.notna().any() and gap.max() > 0:
            for i in np.flatnonzero(np.isclose(gap, gap.max())):
                cells[(int(i), (label, "FPR gap"))] = "widest-gap"
    base, paired = _paired_slices(ev, category, index, min_slice_n)
    for label, verdicts in paired.items():
        key = (f"PR-AUC − {base} (paired 95% interval)", label)
        columns[key] = verdicts
        for i in np.flatnonzero(verdicts.str.endswith(" worse").to_numpy()):
            cells[(int(i), key)] = "worse-than-baseline"
    table = pd.DataFrame(columns)
    below = _below_baseline(index.set_index(keys).index, sl)
    return _classed_table(table, "slices", ["below-baseline" if x else "" for x in below], cells)


def _paired_slices(ev: DatasetEvaluation, category: str, index: pd.DataFrame,
                   min_slice_n: int) -> tuple[str, dict[str, pd.Series]]:
    """(the baseline's label, per production model label: for each slice of ``index``,
    "A − B [lo, hi] verdict" of its PR-AUC against that baseline, the first one; paired
    bootstrap, :mod:`moderation.evaluation.compare`)."""
    models = ev.models
    bases = models[models["model_role"].eq("baseline")]
    if bases.empty or not ev.members:
        return "", {}
    base = bases.iloc[0]
    out = {}
    for _, prod in models[~models["model_role"].eq("baseline")].iterrows():
        rows = ev.paired(category, prod, base, min_slice_n)
        if rows.empty:
            continue  # no common predictions, or evaluated without resampling
        rows = rows[rows["slice_column"].notna()]
        text = {(r.slice_column, r.slice_value): _paired_text(r) for r in rows.itertuples(index=False)}
        out[prod["label"]] = pd.Series([text.get((c, v), "–") for c, v in
                                        zip(index["slice_column"], index["slice_value"], strict=True)], dtype=object)
    return base["label"], out


def _gap_lines(ev: DatasetEvaluation, category: str) -> str:
    """One line per model: the widest FPR gap between slices of one column, and between which."""
    lines = []
    sl = ev.slices(category)
    for _, r in ev.overall(category).iterrows():
        mine = sl[sl["model_digest"].eq(r["model_digest"]) & sl["fpr_gap"].notna()]
        if _missing(r["fpr_gap"]) or mine.empty:
            text = f"no FPR gap (fewer than two slices of a column with at least {MIN_GAP_NEGATIVES} negatives)"
        else:
            top = mine.loc[mine["fpr_gap"].idxmax()]
            col = mine[mine["slice_column"].eq(top["slice_column"])]
            low = col.loc[col["fpr"].idxmin()]
            text = (f"{r['fpr_gap']:.3f}, between {_slice_name(top)} (FPR {top['fpr']:.3f}, n={top['n']}) and "
                    f"{_slice_name(low)} (FPR {low['fpr']:.3f}, n={low['n']})")
        lines.append(f'<p class="gap-line">Widest FPR gap, <b>{_esc(r["label"])}</b>: {_esc(text)}</p>')
    return "".join(lines)


def category_section(ev: DatasetEvaluation, category: str, colors: dict[str, str], min_slice_n: int) -> tuple[str, int]:
    """(HTML, figures) of one category: PR curves, calibration, metrics, slices."""
    pr = pr_figure(ev, category, colors)
    cal = calibration_figure(ev, category, colors)
    figures = (f'<div class="figures">{_img(pr, "pr-curve", f"precision-recall curves, {category}")}'
               f'{_img(cal, "calibration", f"reliability diagrams, {category}")}</div>')
    note = ('<p class="note">Slice rows in red: a production model\'s PR-AUC is below a baseline\'s (point '
            'estimate); PR-AUC − baseline: the difference from the first baseline with a paired 95% bootstrap '
            'interval and its verdict, in bold red where the interval lies below 0 (measurably worse); '
            'yellow: each model\'s widest FPR gap (this slice\'s FPR minus the lowest FPR among the same '
            f'column\'s slices with at least {MIN_GAP_NEGATIVES} negatives).</p>')
    html_ = (f'<h3 id="{_anchor(ev.name, category)}">{_esc(ev.name)} v{ev.version}: {_esc(category)}</h3>'
             f"{figures}<h4>Metrics (all examples; quarantined examples excluded)</h4>{metrics_table(ev, category)}"
             f"<h4>Slices (n ≥ {min_slice_n})</h4>{_slice_table(ev, category, min_slice_n)}{note}"
             f"{_gap_lines(ev, category)}")
    return html_, 2


def cross_dataset_frame(conf_dir: Path | None = None) -> pd.DataFrame:
    """The cross-dataset matrices the training scripts keep beside registry entries
    (``conf/models/<model_id>.cross_dataset.csv``): per model, held-out corpus, language and
    category, PR-AUC and recall at the threshold with that corpus in training and without it."""
    from moderation.config import default_conf_dir

    frames = []
    for path in sorted(((conf_dir or default_conf_dir()) / "models").glob("*.cross_dataset.csv")):
        df = pd.read_csv(path)
        df.insert(0, "model_id", path.name.removesuffix(".cross_dataset.csv"))
        frames.append(df)
    if not frames:
        return pd.DataFrame()
    df = pd.concat(frames, ignore_index=True)
    df["trained"] = np.where(df["trained_on_it"].astype(str).str.lower() == "true", "with", "without")
    wide = df.pivot_table(index=["model_id", "dataset", "language", "category", "n", "pos"], columns="trained",
                          values=["pr_auc", "recall", "fpr"], aggfunc="first")
    wide.columns = [f"{m} {t}" for m, t in wide.columns]
    return wide.reset_index()


def cross_dataset_section(conf_dir: Path | None = None) -> str:
    df = cross_dataset_frame(conf_dir)
    if df.empty:
        return ""
    cols = [c for c in ("pr_auc with", "pr_auc without", "recall with", "recall without", "fpr with", "fpr without")
            if c in df.columns]
    shown = df[["model_id", "dataset", "language", "category", "n", "pos", *cols]].copy()
    for c in cols:
        shown[c] = shown[c].map(lambda v: _num(v))
    return ('<section id="cross-dataset"><h2>Cross-dataset generalisation</h2><p class="note">Each corpus\'s '
            "held-out test split, scored by the model trained with that corpus and by the same recipe trained "
            "without it (recall and FPR at thresholds calibrated on the remaining corpora\'s pooled validation "
            "splits). The gap is what a new source of text, unlike anything in training, may lose. Written by the "
            "training script to conf/models/&lt;model&gt;.cross_dataset.csv.</p>"
            f'{_frame_html(shown, "metrics")}</section>')


def _contents(evaluations: list[DatasetEvaluation]) -> str:
    items = "".join(
        f'<li><a href="#{_anchor(ev.name)}">{_esc(ev.name)} v{ev.version}</a>: '
        + ", ".join(f'<a href="#{_anchor(ev.name, c)}">{_esc(c)}</a>' for c in ev.categories) + "</li>"
        for ev in evaluations)
    return (f'<ul><li><a href="#summary">Model vs baseline</a></li>{items}'
            '<li><a href="#cross-dataset">Cross-dataset generalisation</a></li></ul>')


def _page(title: str, body: str) -> str:
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{_esc(title)}</title>'
            f"<style>{_CSS}</style></head><body>{body}</body></html>\n")


# ---------------------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------------------
def write_report(lake: Lake, out_dir: Path, *, datasets: list[str] | None = None,
                 min_slice_n: int = 30) -> ReportFiles:
    """Write ``out_dir/eval_report.html`` and ``out_dir/eval_summary.png`` from the lake's
    evaluation results.

    Args:
        datasets: report only these datasets (default: every evaluated dataset); each at its
            latest evaluated version.
        min_slice_n: slice values with fewer examples are left out of the slice tables and the
            slice comparison with the baseline.

    Raises:
        ModerationError: the lake holds no evaluation results (for ``datasets``).
    """
    evaluations = load_evaluations(lake, datasets)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    colors = _colors(evaluations)
    summary = summary_frame(evaluations)
    chart = summary_figure(summary, colors)
    png = out_dir / SUMMARY_PNG
    png.write_bytes(_png_bytes(chart))
    sections, figures = [], 1
    for ev in evaluations:
        sections.append(header_section(ev))
        for cat in ev.categories:
            text, n = category_section(ev, cat, colors, min_slice_n)
            sections.append(text)
            figures += n
    generated = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    body = (f"<h1>Evaluation report</h1><p class=\"note\">lake {_esc(lake.root)}; generated {generated}; "
            f"each dataset at its latest evaluated version</p>{_contents(evaluations)}"
            f'{comparison_section(evaluations, _img(chart, "summary", "PR-AUC summary chart"), min_slice_n)}'
            + "".join(sections) + cross_dataset_section())
    path = out_dir / REPORT_HTML
    path.write_text(_page("Evaluation report", body), encoding="utf-8")
    return ReportFiles(path, png, figures, summary.drop(columns="label").to_dict("records"))
