"""Offline metrics of one category's scores: scikit-learn point estimates, bootstrap intervals.

``point_metrics`` computes PR-AUC (average precision), ROC-AUC, precision / recall / F1 / false-
positive rate at a threshold, the best recall at a target precision and the expected calibration
error with scikit-learn. ``bootstrap_intervals`` gives percentile 95% intervals of the same
threshold-free and thresholded metrics over resamples of the examples. A resample is a vector of
multinomial example weights, so all resamples are computed together with NumPy as the weighted
forms of the scikit-learn metrics (``sample_weight``); tests check them against scikit-learn.
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import (
    average_precision_score,
    confusion_matrix,
    precision_recall_curve,
    precision_recall_fscore_support,
    roc_auc_score,
)

INTERVAL_METRICS = ("pr_auc", "roc_auc", "precision", "recall", "f1", "fpr")
ECE_BINS = 10


def expected_calibration_error(y: np.ndarray, s: np.ndarray, bins: int = ECE_BINS) -> float:
    """Sum over equal-width score bins of |mean label - mean score|, weighted by bin size."""
    idx = np.minimum((s * bins).astype(int), bins - 1)
    counts = np.bincount(idx, minlength=bins)
    if counts.sum() == 0:
        return float("nan")
    mean_y = np.bincount(idx, weights=y, minlength=bins)
    mean_s = np.bincount(idx, weights=s, minlength=bins)
    nz = counts > 0
    return float(np.sum(np.abs(mean_y[nz] - mean_s[nz])) / counts.sum())


def recall_at_precision(y: np.ndarray, s: np.ndarray, target: float) -> tuple[float, float | None]:
    """(best recall with precision >= target, the lowest threshold reaching it); (0, None) if none."""
    if y.sum() == 0:
        return 0.0, None
    precision, recall, thresholds = precision_recall_curve(y, s)
    ok = np.nonzero(precision[:-1] >= target)[0]  # the last point (recall 0) has no threshold
    if ok.size == 0:
        return 0.0, None
    best = ok[np.argmax(recall[ok])]
    return float(recall[best]), float(thresholds[best])


def point_metrics(y: np.ndarray, s: np.ndarray, threshold: float, target_precision: float) -> dict:
    """Every metric of one category on one set of examples (None where undefined)."""
    y = np.asarray(y, dtype=int)
    s = np.asarray(s, dtype=float)
    if len(y) == 0:
        return {"n": 0, "positives": 0, **dict.fromkeys(
            ("pr_auc", "roc_auc", "precision", "recall", "f1", "fpr", "recall_at_precision", "ece"))}
    pred = (s >= threshold).astype(int)
    two_classes = 0 < y.sum() < len(y)
    p, r, f1, _ = precision_recall_fscore_support(y, pred, average="binary", zero_division=0)
    tn, fp, fn, tp = confusion_matrix(y, pred, labels=[0, 1]).ravel()
    rap, _ = recall_at_precision(y, s, target_precision)
    return {
        "n": len(y), "positives": int(y.sum()),
        "pr_auc": float(average_precision_score(y, s)) if two_classes else None,
        "roc_auc": float(roc_auc_score(y, s)) if two_classes else None,
        "precision": float(p) if tp + fp else None,
        "recall": float(r) if tp + fn else None,
        "f1": float(f1) if tp + fp and tp + fn else None,
        "fpr": float(fp / (fp + tn)) if fp + tn else None,
        "recall_at_precision": rap if y.sum() else None,
        "ece": expected_calibration_error(y, s) if len(y) else None,
    }


def _weighted_curves(y: np.ndarray, s: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cumulative weighted true / false positives at each distinct score (descending), per row of
    ``w`` (resamples x examples), as scikit-learn's ``_binary_clf_curve`` does with weights."""
    order = np.argsort(-s, kind="mergesort")
    s_sorted, y_sorted, w_sorted = s[order], y[order], w[:, order]
    last_of_tie = np.r_[np.nonzero(np.diff(s_sorted))[0], len(s_sorted) - 1]
    tps = np.cumsum(w_sorted * y_sorted, axis=1)[:, last_of_tie]
    fps = np.cumsum(w_sorted * (1 - y_sorted), axis=1)[:, last_of_tie]
    return tps, fps


def weighted_metrics(y: np.ndarray, s: np.ndarray, w: np.ndarray, threshold: float) -> dict[str, np.ndarray]:
    """The interval metrics for each row of weights ``w`` (NaN where undefined)."""
    y = np.asarray(y, dtype=float)
    s = np.asarray(s, dtype=float)
    w = np.atleast_2d(np.asarray(w, dtype=float))
    pos = w @ y
    neg = w @ (1 - y)
    with np.errstate(invalid="ignore", divide="ignore"):
        tps, fps = _weighted_curves(y, s, w)
        # Average precision: sum over thresholds of (R_k - R_{k-1}) * P_k.
        precision = tps / (tps + fps)
        recall = tps / pos[:, None]
        prev = np.concatenate([np.zeros((len(w), 1)), recall[:, :-1]], axis=1)
        ap = np.nansum((recall - prev) * np.nan_to_num(precision), axis=1)
        # ROC AUC: trapezoids under (FPR, TPR) starting at (0, 0).
        tpr = np.concatenate([np.zeros((len(w), 1)), tps / pos[:, None]], axis=1)
        fpr_curve = np.concatenate([np.zeros((len(w), 1)), fps / neg[:, None]], axis=1)
        auc = np.trapezoid(tpr, fpr_curve, axis=1)
        pred = (s >= threshold).astype(float)
        tp = w @ (pred * y)
        fp = w @ (pred * (1 - y))
        fn = pos - tp
        prec = tp / (tp + fp)
        rec = tp / pos
        f1 = 2 * tp / (2 * tp + fp + fn)
        fpr = fp / neg
    undefined = (pos == 0) | (neg == 0)
    ap[undefined] = np.nan
    auc[undefined] = np.nan
    return {"pr_auc": ap, "roc_auc": auc, "precision": prec, "recall": rec, "f1": f1, "fpr": fpr}


def bootstrap_intervals(y: np.ndarray, s: np.ndarray, threshold: float, *, samples: int = 1000,
                        seed: int = 0, level: float = 0.95, chunk: int = 250) -> dict[str, tuple[float, float] | None]:
    """Percentile bootstrap intervals of the interval metrics (None when too few resamples are
    defined, e.g. a slice with no positives)."""
    n = len(y)
    if n == 0 or samples <= 0:
        return dict.fromkeys(INTERVAL_METRICS)
    rng = np.random.default_rng(seed)
    draws: dict[str, list[np.ndarray]] = {m: [] for m in INTERVAL_METRICS}
    for start in range(0, samples, chunk):
        b = min(chunk, samples - start)
        w = rng.multinomial(n, np.full(n, 1.0 / n), size=b).astype(float)
        for name, values in weighted_metrics(y, s, w, threshold).items():
            draws[name].append(values)
    alpha = (1 - level) / 2
    out: dict[str, tuple[float, float] | None] = {}
    for name, parts in draws.items():
        values = np.concatenate(parts)
        values = values[~np.isnan(values)]
        if len(values) < 0.5 * samples:
            out[name] = None
        else:
            lo, hi = np.quantile(values, [alpha, 1 - alpha])
            out[name] = (float(lo), float(hi))
    return out


#: Metrics compared between two models by ``paired_difference``.
PAIRED_METRICS = ("pr_auc", "roc_auc")


def paired_difference(y: np.ndarray, s_a: np.ndarray, s_b: np.ndarray, *, samples: int = 1000, seed: int = 0,
                      level: float = 0.95, chunk: int = 250) -> dict[str, dict]:
    """PR-AUC and ROC-AUC of model A minus model B on the same examples, with a paired
    percentile bootstrap interval: each resample weights the examples once and both models are
    scored on it, so the interval is of the difference itself (much narrower than comparing two
    separate intervals when the models' errors are correlated).

    Returns per metric ``{"a", "b", "diff", "lo", "hi", "verdict"}``: ``verdict`` is "better"
    (the interval lies above 0), "worse" (below 0), "no clear difference" (it spans 0), or None
    when the metric is undefined (one class only) or too few resamples define it.
    """
    y = np.asarray(y, dtype=int)
    s_a = np.asarray(s_a, dtype=float)
    s_b = np.asarray(s_b, dtype=float)
    if not len(y) == len(s_a) == len(s_b):
        raise ValueError(f"paired_difference: {len(y)} labels, {len(s_a)} and {len(s_b)} scores")
    empty = {"a": None, "b": None, "diff": None, "lo": None, "hi": None, "verdict": None}
    if not 0 < y.sum() < len(y):
        return {m: dict(empty) for m in PAIRED_METRICS}
    point = {"pr_auc": (average_precision_score(y, s_a), average_precision_score(y, s_b)),
             "roc_auc": (roc_auc_score(y, s_a), roc_auc_score(y, s_b))}
    rng = np.random.default_rng(seed)
    diffs: dict[str, list[np.ndarray]] = {m: [] for m in PAIRED_METRICS}
    n = len(y)
    for start in range(0, samples, chunk):
        w = rng.multinomial(n, np.full(n, 1.0 / n), size=min(chunk, samples - start)).astype(float)
        ma = weighted_metrics(y, s_a, w, threshold=0.5)
        mb = weighted_metrics(y, s_b, w, threshold=0.5)
        for m in PAIRED_METRICS:
            diffs[m].append(ma[m] - mb[m])
    alpha = (1 - level) / 2
    out = {}
    for m in PAIRED_METRICS:
        a, b = point[m]
        d = np.concatenate(diffs[m]) if diffs[m] else np.array([])
        d = d[~np.isnan(d)]
        row: dict[str, float | str | None] = {**empty, "a": float(a), "b": float(b), "diff": float(a - b)}
        if samples > 0 and len(d) >= 0.5 * samples:
            lo, hi = np.quantile(d, [alpha, 1 - alpha])
            row.update(lo=float(lo), hi=float(hi),
                       verdict="better" if lo > 0 else "worse" if hi < 0 else "no clear difference")
        out[m] = row
    return out
