"""``moderation calibrate``: per-category thresholds for a target precision, as a new draft
policy version file.

For each category of the base policy that the model scores and the dataset labels, the
threshold is the lowest score at which precision on the dataset reaches the target (the
operating point with the best recall among those that reach it); the review threshold is the
same for the review precision (default: target - 0.2). Categories where the target cannot be
reached keep the base version's rule, with a warning. The new file copies the base version
(models, actions, market overrides, exemptions), takes the next free version number, declares
``status: draft`` and records where its thresholds come from in a header comment. Calibrate on
one split (HateXplain validation) and report on another (HateXplain test): a threshold fitted
on the test split would flatter it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from moderation.config import load_model_registry, load_policy
from moderation.errors import ConfigError, ModerationError
from moderation.evaluation.metrics import recall_at_precision
from moderation.policy.lifecycle import declared_statuses
from moderation.storage.lake import Lake


@dataclass
class CategoryCalibration:
    category: str
    old_threshold: float
    threshold: float | None  # None: target not reachable, base rule kept
    old_review: float | None
    review_threshold: float | None
    precision: float | None
    recall: float | None
    n: int
    positives: int
    skipped: bool = False  # not asked for (--category): the base rule is kept


@dataclass
class CalibrateResult:
    path: Path
    policy_id: str
    version: int
    model_ref: str
    dataset: str
    dataset_version: int
    target_precision: float
    categories: list[CategoryCalibration] = field(default_factory=list)

    def summary(self) -> str:
        lines = [f"wrote {self.path} ({self.policy_id} v{self.version}, draft): thresholds for precision >= "
                 f"{self.target_precision} on {self.dataset} v{self.dataset_version} scored by {self.model_ref}"]
        for c in self.categories:
            if c.skipped:
                lines.append(f"  {c.category:11} not calibrated (--category): kept threshold {c.old_threshold}")
            elif c.n == 0:
                lines.append(f"  {c.category:11} not labelled in {self.dataset}: kept threshold {c.old_threshold}")
            elif c.threshold is None:
                lines.append(f"  {c.category:11} target not reachable (n {c.n}, positives {c.positives}): "
                             f"kept threshold {c.old_threshold}")
            else:
                prec = "-" if c.precision is None else f"{c.precision:.3f}"
                lines.append(f"  {c.category:11} threshold {c.old_threshold} -> {c.threshold} (precision {prec}, "
                             f"recall {c.recall:.3f}); review {c.old_review} -> {c.review_threshold}")
        lines.append("next: moderation evaluate on a held-out set with --policy <this file>, decide, diff, promote")
        return "\n".join(lines)


def _operating_point(y: np.ndarray, s: np.ndarray, target: float) -> tuple[float | None, float | None, float | None]:
    """(threshold, precision, recall) of the best-recall point with precision >= target."""
    recall, threshold = recall_at_precision(y, s, target)
    if threshold is None:
        return None, None, None
    pred = s >= threshold
    return threshold, float(y[pred].mean()), recall


def _at(y: np.ndarray, s: np.ndarray, threshold: float) -> tuple[float | None, float]:
    """(precision, recall) at ``threshold``."""
    pred = s >= threshold
    return (float(y[pred].mean()) if pred.any() else None), float(y[pred].sum() / max(y.sum(), 1))


def _swap_in(base, registry: dict, spec) -> list[str]:
    """The new version's models: the base's, with ``spec`` in place of the base's models of the
    same modality that emit one of its categories (a candidate model gets thresholds of its own)."""
    if spec.model_id in base.policy.models:
        return list(base.policy.models)
    replaced = [m for m in base.policy.models
                if registry[m].modality == spec.modality and set(registry[m].categories) & set(spec.categories)]
    if not replaced:
        raise ConfigError(f"{base.path}: policy {base.policy.policy_id} v{base.policy.version} has no "
                          f"{spec.modality} model emitting {list(spec.categories)} for {spec.model_id} to replace "
                          f"(models: {list(base.policy.models)})")
    missing = {c for m in replaced for c in registry[m].categories if c in base.policy.categories} \
        - set(spec.categories)
    if missing:
        raise ConfigError(f"{spec.model_id} does not emit {sorted(missing)}, which {', '.join(replaced)} scores for "
                          f"{base.policy.policy_id} v{base.policy.version}: cannot replace it")
    out: list[str] = []
    for m in base.policy.models:
        new = spec.model_id if m in replaced else m
        if new not in out:
            out.append(new)
    return out


def calibrate(*, lake_root: str, model_id: str, dataset: str, policy_path: str | Path, target_precision: float,
              review_precision: float | None = None, out: Path | None = None, dataset_version: int | None = None,
              models_dir: Path | None = None, progress: bool = True,
              categories: list[str] | None = None) -> CalibrateResult:
    """Propose thresholds from ``model_id``'s predictions on ``dataset`` (scored first if the
    lake has none for this model digest and dataset version) and write a draft policy file.

    When the base version does not use ``model_id``, the new version uses it in place of the
    base's model of the same modality and categories (a candidate model, e.g. new heads).

    Args:
        policy_path: the base version (usually the live one); the new file sits beside it
            unless ``out`` is given.
        review_precision: precision the review threshold aims at (default target - 0.2).
        categories: calibrate only these (default: every category); the others keep the base
            version's rule, e.g. where the dataset's base rate is nothing like the catalog's.
    """
    from moderation.evaluation.evaluate import predictions

    if not 0 < target_precision <= 1:
        raise ConfigError(f"--target-precision {target_precision}: must be in (0, 1]")
    review_precision = review_precision if review_precision is not None else max(target_precision - 0.2, 0.05)
    if not 0 < review_precision <= target_precision:
        raise ConfigError(f"--review-precision {review_precision}: must be in (0, target precision]")
    registry = load_model_registry(models_dir)
    if model_id not in registry:
        raise ConfigError(f"unknown model {model_id!r}; registered: {sorted(registry)}")
    spec = registry[model_id]
    base = load_policy(policy_path, registry)
    unknown = sorted(set(categories or ()) - set(base.policy.categories))
    if unknown:
        raise ConfigError(f"--category {unknown[0]!r}: not a category of {policy_path}")
    models = _swap_in(base, registry, spec)
    preds, version, _ = predictions(Lake(lake_root), spec, dataset, version=dataset_version, progress=progress)
    data = yaml.safe_load(Path(base.path).read_text())
    new_version = max(declared_statuses(base)) + 1
    result = CalibrateResult(Path(), base.policy.policy_id, new_version, spec.ref, dataset, version, target_precision)
    for cat, rule in base.policy.categories.items():
        part = preds[(preds["category"] == cat) & preds["score"].notna()]
        if categories and cat not in categories:
            result.categories.append(CategoryCalibration(cat, rule.threshold, None, rule.review_threshold, None,
                                                         None, None, 0, 0, skipped=True))
            continue
        if part.empty:  # the dataset does not label it (or the model does not score it): kept
            result.categories.append(CategoryCalibration(cat, rule.threshold, None, rule.review_threshold, None,
                                                         None, None, 0, 0))
            continue
        y, s = part["label"].to_numpy(dtype=int), part["score"].to_numpy(dtype=float)
        thr, prec, rec = _operating_point(y, s, target_precision)
        review, _, _ = _operating_point(y, s, review_precision)
        cal = CategoryCalibration(cat, rule.threshold, None, rule.review_threshold, None, prec, rec, len(y),
                                  int(y.sum()))
        if thr is not None:
            # The exact score of the operating point (YAML keeps every digit): rounding either
            # way moves the threshold past examples and can miss the target precision.
            cal.threshold = float(thr)
            cal.precision, cal.recall = _at(y, s, cal.threshold)
            cal.review_threshold = float(min(review if review is not None else thr, thr))
            data["categories"][cat]["threshold"] = cal.threshold
            if cal.review_threshold < cal.threshold:
                data["categories"][cat]["review_threshold"] = cal.review_threshold
            else:
                data["categories"][cat].pop("review_threshold", None)
        result.categories.append(cal)
    if not any(c.n for c in result.categories):
        raise ModerationError(f"model {model_id} has no predictions for any category of {base.policy.policy_id} on "
                              f"{dataset} v{version}: nothing to calibrate")
    data["models"] = models
    data["version"] = new_version
    data["status"] = "draft"
    data["description"] = (f"{data.get('description', '')} Thresholds calibrated for precision >= {target_precision} "
                           f"on {dataset} v{version}.").strip()
    out = Path(out) if out else Path(base.path).parent / f"v{new_version}.yaml"
    if out.exists():
        raise ModerationError(f"{out} exists: policy versions are never overwritten; pass --out")
    header = [
        f"# {base.policy.policy_id} v{new_version} (draft), written by `moderation calibrate` from "
        f"v{base.policy.version}:",
        f"# thresholds for precision >= {target_precision} (review: >= {review_precision}) on evaluation dataset "
        f"{dataset} v{version},",
        f"# scored by {spec.ref}; models {', '.join(models)}. Evaluate it on another split before deciding or "
        "promoting it.",
    ]
    kept = [c.category for c in result.categories if c.skipped]
    if kept:
        header.append(f"# Not calibrated (--category), the base version's rule kept: {', '.join(kept)}.")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text("\n".join(header) + "\n" + yaml.safe_dump(data, sort_keys=False, allow_unicode=True))
    try:
        load_policy(tmp, registry)  # e.g. a market override's review band above the new threshold
    except ConfigError as e:
        tmp.unlink()
        raise ConfigError(f"the calibrated version would not be a valid policy (nothing written): {e}") from e
    tmp.replace(out)
    result.path = out
    return result
