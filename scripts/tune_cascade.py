"""Pick a text cascade's band on validation data and measure what it costs.

The cheap model clears a segment (its scores stand, the strong model never sees it) when every
category's cheap probability is below ``band_low.<category>``. This script sets, per category,
``band_low`` to the cheap probability that keeps ``--keep`` of the segments the strong model
scores at or above a floor (the "strong positives": what a policy could act on): with
``--policy``, that version's ``review_threshold`` of the category (the lowest score it acts on),
else ``--strong-floor``, on every corpus's validation split (``--max-rows-per-corpus``, a fixed
sample ordered by the text's SHA-256; never a test split, never the functional suite). It prints
the band, the share of validation traffic the band sends to the strong model, and the recall the
cascade keeps of the strong model's positives, per category and language; ``--write`` puts the
band into the cascade's registry entry.

    .venv/bin/python scripts/tune_cascade.py [--model text-cascade-muse-e5-v1] [--keep 0.98]
        [--policy FILE | --strong-floor 0.3] [--screen CATEGORY]... [--max-rows-per-corpus 200] [--write]
"""

from __future__ import annotations

import hashlib
import re
from collections import defaultdict
from pathlib import Path

import numpy as np
import typer

from moderation.classifiers.base import build_classifier
from moderation.classifiers.cascade import member_spec
from moderation.classifiers.text import normalize_text
from moderation.config import PROJECT_ROOT, load_model_registry
from moderation.evaluation.corpora import read_all
from moderation.evaluation.sources import default_data_dir

app = typer.Typer(add_completion=False)


@app.command()
def main(
    model: str = typer.Option("text-cascade-muse-e5-v1", help="the cascade's registry id"),
    keep: float = typer.Option(0.98, help="share of the strong model's positives the cheap model must not clear"),
    strong_floor: float = typer.Option(0.3, help="a strong score at or above this is a positive to keep"),
    policy: Path = typer.Option(None, help="take each category's floor from this policy version's review_threshold"),
    screen: list[str] = typer.Option(None, help="route only on these categories (repeatable; default all): the "
                                     "others get band_low 1 and their cheap scores stand unless another category routes"),
    max_rows_per_corpus: int = typer.Option(200, help="validation rows per corpus (hash-ordered sample)"),
    data_dir: Path = typer.Option(None, help="labelled data folder (default ../shared/data)"),
    write: bool = typer.Option(False, help="write band_low.<category> into conf/models/<model>.yaml"),
) -> None:
    registry = load_model_registry()
    spec = registry[model]
    by_corpus = defaultdict(list)
    for r in read_all(data_dir or default_data_dir()):
        if r.split == "validation":
            by_corpus[r.source].append(r)
    rows = [r for rs in by_corpus.values()
            for r in sorted(rs, key=lambda r: hashlib.sha256(r.text.encode("utf-8")).hexdigest())[:max_rows_per_corpus]]
    texts = [normalize_text(r.text) for r in rows]
    langs = np.array([r.language for r in rows])
    probs = {}
    for role in ("cheap", "strong"):
        clf = build_classifier(member_spec(spec, role, registry), batch_size=64)
        clf.setup("cpu")
        probs[role] = clf.predict_proba(texts)
    cheap, strong = probs["cheap"], probs["strong"]
    cats = list(spec.categories)
    floor = {c: strong_floor for c in cats}
    if policy is not None:
        from moderation.config import load_policy

        rules = load_policy(policy, registry).policy.categories
        floor.update({c: float(rules[c].review_threshold) for c in cats if c in rules})
    unknown = set(screen or []) - set(cats)
    if unknown:
        raise typer.BadParameter(f"--screen {sorted(unknown)}: the cascade's categories are {cats}")
    low = {}
    for j, c in enumerate(cats):
        pos = strong[:, j] >= floor[c]
        if screen and c not in screen:
            low[c] = 1.0  # never routes on this category
        else:  # the cheap score below which at most (1 - keep) of the strong positives fall
            low[c] = float(np.quantile(cheap[pos, j], 1.0 - keep, method="lower")) if pos.sum() >= 20 else 0.0
    low_arr = np.array([low[c] for c in cats], dtype=np.float32)
    sent = (cheap >= low_arr).any(axis=1)
    print(f"{len(rows)} validation segments from {len(by_corpus)} corpora; cheap {spec.preprocessing['cheap']}, "
          f"strong {spec.preprocessing['strong']}; keep {keep} of the strong scores at or above each floor\n")
    print("| category | floor (strong score) | band_low (cheap score) | strong positives | kept by the cascade |")
    print("|---|---|---|---|---|")
    for j, c in enumerate(cats):
        pos = strong[:, j] >= floor[c]
        print(f"| {c} | {floor[c]:.4f} | {low[c]:.4f} | {int(pos.sum())} | "
              f"{(sent[pos].mean() if pos.any() else float('nan')):.3f} |")
    print(f"\nshare of validation segments sent to the strong model: {sent.mean():.3f}\n")
    print("| language | segments | sent | strong positives kept (any category) |")
    print("|---|---|---|---|")
    anypos = (strong >= np.array([floor[c] for c in cats])).any(axis=1)
    for lang in sorted(set(langs)):
        m = langs == lang
        kept = sent[m & anypos].mean() if (m & anypos).any() else float("nan")
        print(f"| {lang} | {int(m.sum())} | {sent[m].mean():.3f} | {kept:.3f} |")
    if write:
        path = PROJECT_ROOT / "conf" / "models" / f"{model}.yaml"
        text = path.read_text()
        for c in cats:
            text, n = re.subn(rf"(\n\s+band_low\.{re.escape(c)}: )[0-9.eE+-]+", rf"\g<1>{low[c]:.4f}", text)
            if n != 1:
                raise typer.BadParameter(f"{path}: no preprocessing band_low.{c} line to update")
        path.write_text(text)
        print(f"\nwrote the band into {path}")


if __name__ == "__main__":
    app()
