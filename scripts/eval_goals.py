"""The issue-12 goal figures of text models, side by side on the project's own equivalents of
the independent sets:

* functional suite (hate): per language, ROC-AUC and the recall reached at a false-positive
  rate of at most 0.10 on the non-hateful cases (goal: recall >= 0.70 in en, de, es);
* "any unsafe" on the pooled multilingual test set: an example is unsafe when any category it is
  annotated for is positive, its score is the model's highest score over the categories it
  emits among those; AUPRC overall and per language (goal: >= 0.80).

Every model is scored through the production classifier code (segmenting, normalisation).

    .venv/bin/python scripts/eval_goals.py [--model ID]... [--data-dir DIR]
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import typer
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

from moderation.classifiers.base import build_classifier
from moderation.classifiers.text import normalize_text
from moderation.config import load_model_registry
from moderation.evaluation.datasets import STANDARD_DATASETS
from moderation.evaluation.functional import build_functional_suite
from moderation.evaluation.sources import default_data_dir

app = typer.Typer(add_completion=False)
DEFAULT_MODELS = ["text-minilm-heads-v1", "text-minilm-heads-v2", "text-profanity-check-v1", "text-muse-heads-v1",
                  "text-e5-heads-v1", "text-e5-ft-v1"]


def recall_at_fpr(y: np.ndarray, s: np.ndarray, max_fpr: float = 0.10) -> float:
    """Best recall among thresholds whose false-positive rate is at most ``max_fpr``."""
    fpr, tpr, _ = roc_curve(y, s)
    return float(tpr[fpr <= max_fpr].max())


@app.command()
def main(model: list[str] = typer.Option(None, help="registry model ids (default: v1, v2, baseline, muse, e5, e5 fine-tuned)"),
         data_dir: Path = typer.Option(None, help="labelled data folder (default ../shared/data)")) -> None:
    registry = load_model_registry()
    suite = build_functional_suite().to_pylist()
    pooled, _ = next(d for d in STANDARD_DATASETS if d.name == "multilingual_test").build(data_dir or default_data_dir())
    pooled = pooled.to_pylist()
    print("| model | functional: language | ROC-AUC | recall at FPR <= 0.10 | any unsafe AUPRC (pooled test) |")
    print("|---|---|---|---|---|")
    for model_id in model or DEFAULT_MODELS:
        clf = build_classifier(registry[model_id], batch_size=64)
        clf.setup("cpu")
        cats = list(clf.spec.categories)
        hate = clf.predict_proba([normalize_text(r["text"]) for r in suite])[:, cats.index("hate")]
        y = np.array([r["label_hate"] for r in suite])
        langs = np.array([r["slice_language"] for r in suite])
        p = clf.predict_proba([normalize_text(r["text"]) for r in pooled])
        unsafe_y, unsafe_s, plangs = [], [], []
        for r, row in zip(pooled, p):
            labelled = [c for c in cats if r.get(f"label_{c}") is not None]
            if not labelled:
                continue
            unsafe_y.append(int(any(r[f"label_{c}"] for c in labelled)))
            unsafe_s.append(max(row[cats.index(c)] for c in labelled))
            plangs.append(r["slice_language"])
        unsafe_y, unsafe_s, plangs = np.array(unsafe_y), np.array(unsafe_s), np.array(plangs)
        for lang in ["*", *sorted(set(langs))]:
            m = np.ones(len(y), bool) if lang == "*" else langs == lang
            pm = np.ones(len(unsafe_y), bool) if lang == "*" else plangs == lang
            auprc = average_precision_score(unsafe_y[pm], unsafe_s[pm]) if 0 < unsafe_y[pm].sum() < pm.sum() else None
            print(f"| {model_id} | {'all' if lang == '*' else lang} | {roc_auc_score(y[m], hate[m]):.3f} | "
                  f"{recall_at_fpr(y[m], hate[m]):.3f} | {'–' if auprc is None else f'{auprc:.3f}'} |", flush=True)


if __name__ == "__main__":
    app()
