"""Train the reference text heads (hate, harassment, spam) on frozen MiniLM embeddings.

Reads only the training splits of ../shared/data (see moderation/datasets.py), fits one
scikit-learn logistic regression per category, writes the heads as a safetensors file
(weight [C, 384], bias [C], categories in the metadata), pins its SHA-256 in the registry
entry, and prints held-out metrics.

    .venv/bin/python scripts/train_text_heads.py [--data-dir DIR]
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import time
from pathlib import Path

import numpy as np
import typer
from safetensors.numpy import save
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import average_precision_score, f1_score, roc_auc_score

from moderation.classifiers.text import MiniLMEncoder, normalize_text
from moderation.config import PROJECT_ROOT, load_model_spec
from moderation.datasets import CATEGORIES, default_data_dir, heldout_sets, training_set

app = typer.Typer(add_completion=False)


@app.command()
def main(
    data_dir: Path = typer.Option(None, help="labelled data folder (default ../shared/data)"),
    registry: Path = typer.Option(PROJECT_ROOT / "conf/models/text-minilm-heads-v1.yaml"),
    out: Path = typer.Option(PROJECT_ROOT / "moderation/artifacts/text_heads_v1.safetensors"),
    davidson_offensive: int = typer.Option(5000, help="cap on Davidson 'offensive' rows (77% of it)"),
    seed: int = 13,
) -> None:
    data_dir = data_dir or default_data_dir()
    rng = random.Random(seed)
    rows = training_set(data_dir)
    offensive = [r for r in rows if r.source == "davidson" and r.label == "offensive"]
    keep = set(map(id, rng.sample(offensive, min(davidson_offensive, len(offensive)))))
    rows = [r for r in rows if not (r.source == "davidson" and r.label == "offensive") or id(r) in keep]
    print(f"training rows: {len(rows)}")

    spec = load_model_spec(registry)
    encoder = MiniLMEncoder(spec)
    t0 = time.perf_counter()
    x = encoder.encode([normalize_text(r.text) for r in rows], batch_size=128)
    print(f"encoded {len(rows)} texts in {time.perf_counter() - t0:.0f}s")

    weights, biases = [], []
    for cat in CATEGORIES:
        y = np.array([r.categories[cat] for r in rows])
        clf = LogisticRegression(C=2.0, max_iter=3000, class_weight="balanced")
        clf.fit(x, y)
        weights.append(clf.coef_[0].astype(np.float32))
        biases.append(np.float32(clf.intercept_[0]))
    w, b = np.stack(weights), np.array(biases, dtype=np.float32)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "categories": json.dumps(list(CATEGORIES)),
        "encoder_sha256": spec.artifacts["encoder"].sha256,
        "trained_on": "hatexplain:train,davidson,sms_spam,youtube_spam(minus 09-pRpeEdMmmQ0)",
        "seed": str(seed),
    }
    out.write_bytes(save({"weight": w, "bias": b}, metadata=meta))
    digest = hashlib.sha256(out.read_bytes()).hexdigest()
    text = registry.read_text()
    text = re.sub(r"(heads:\n\s+uri: [^\n]+\n\s+sha256: )[0-9a-f]{64}", rf"\g<1>{digest}", text)
    registry.write_text(text)
    print(f"wrote {out} sha256={digest} and pinned it in {registry}")

    print(f"\n{'held-out set':24} {'category':11} {'n':>5} {'pos':>5} {'PR-AUC':>7} {'ROC-AUC':>7} {'F1@0.5':>7}")
    for name, held in heldout_sets(data_dir).items():
        xh = encoder.encode([normalize_text(r.text) for r in held], batch_size=128)
        p = 1.0 / (1.0 + np.exp(-(xh @ w.T + b)))
        for j, cat in enumerate(CATEGORIES):
            y = np.array([r.categories[cat] for r in held])
            if y.min() == y.max():
                continue
            print(
                f"{name:24} {cat:11} {len(y):5d} {int(y.sum()):5d} {average_precision_score(y, p[:, j]):7.3f} "
                f"{roc_auc_score(y, p[:, j]):7.3f} {f1_score(y, p[:, j] >= 0.5):7.3f}"
            )


if __name__ == "__main__":
    app()
