"""Readers for the labelled text in ../shared/data (see its SOURCES.md).

Each reader returns ``LabelledText`` rows with the project's categories:

* ``hate``       HateXplain 0 (hatespeech), Davidson class 0
* ``harassment`` offensive or abusive language: HateXplain 0 or 2, Davidson 0 or 1,
                 GermEval OFFENSE
* ``spam``       YouTube Spam Collection CLASS 1, UCI SMS spam

Splits follow the sources: HateXplain's official train/validation/test; one YouTube video
(Shakira, 09-pRpeEdMmmQ0) held out from training to test cross-artist generalisation; SMS and
Davidson have no held-out split, so they are training-only and never used to evaluate.
"""

from __future__ import annotations

import csv
import json
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from moderation.config import PROJECT_ROOT

YOUTUBE_HELDOUT = "09-pRpeEdMmmQ0"
CATEGORIES = ("hate", "harassment", "spam")


@dataclass(frozen=True)
class LabelledText:
    text: str
    source: str  # e.g. "hatexplain"
    split: str  # train | validation | test
    label: str  # the source's own label name, e.g. "hatespeech"
    language: str = "en"
    targets: tuple[str, ...] = ()
    categories: dict[str, int] = field(default_factory=dict)  # category -> 0/1


def default_data_dir() -> Path:
    """``$MODERATION_DATA_DIR``, else ../shared/data beside the repository."""
    env = os.environ.get("MODERATION_DATA_DIR")
    return Path(env) if env else PROJECT_ROOT.parent / "shared" / "data"


def _cats(hate: int, harassment: int, spam: int) -> dict[str, int]:
    return {"hate": hate, "harassment": harassment, "spam": spam}


_HX_NAMES = {0: "hatespeech", 1: "normal", 2: "offensive"}


def _hx_label(labels: list[int]) -> int | None:
    """Majority of three annotators; None when all three disagree (dropped, per SOURCES.md)."""
    top, count = Counter(labels).most_common(1)[0]
    return top if count >= 2 else None


def _hx_row(text: str, label: int, split: str, targets: tuple[str, ...]) -> LabelledText:
    return LabelledText(
        text=text,
        source="hatexplain",
        split=split,
        label=_HX_NAMES[label],
        targets=targets,
        categories=_cats(int(label == 0), int(label in (0, 2)), 0),
    )


def read_hatexplain(data_dir: Path, split: str) -> list[LabelledText]:
    base = data_dir / "text" / "hatexplain"
    rows: list[LabelledText] = []
    if split == "train":
        with open(base / "train.csv", newline="", encoding="utf-8") as f:
            for r in csv.DictReader(f):
                label = _hx_label([int(x) for x in r["labels"].split(",")])
                if label is None:
                    continue
                targets = tuple(sorted({t.strip() for t in r["targets"].split(",") if t.strip() not in ("", "None")}))
                rows.append(_hx_row(r["text"], label, split, targets))
        return rows
    with open(base / f"{split}.jsonl", encoding="utf-8") as f:
        for line in f:
            r = json.loads(line)
            label = _hx_label(r["annotators"]["label"])
            if label is None:
                continue
            targets = tuple(sorted({t for ts in r["annotators"]["target"] for t in ts if t != "None"}))
            rows.append(_hx_row(" ".join(r["post_tokens"]), label, split, targets))
    return rows


def read_davidson(data_dir: Path) -> list[LabelledText]:
    names = {0: "hate", 1: "offensive", 2: "neither"}
    rows = []
    with open(data_dir / "text" / "davidson" / "labeled_data.csv", newline="", encoding="utf-8") as f:
        for r in csv.DictReader(f):
            c = int(r["class"])
            rows.append(
                LabelledText(r["tweet"], "davidson", "train", names[c],
                             categories=_cats(int(c == 0), int(c in (0, 1)), 0))
            )
    return rows


def read_youtube_spam(data_dir: Path) -> list[LabelledText]:
    rows = []
    for path in sorted((data_dir / "text" / "youtube_spam").glob("*.csv")):
        split = "test" if path.stem.startswith(YOUTUBE_HELDOUT) else "train"
        with open(path, newline="", encoding="utf-8") as f:
            for r in csv.DictReader(f):
                spam = int(r["CLASS"])
                rows.append(
                    LabelledText(r["CONTENT"], "youtube_spam", split, "spam" if spam else "ham",
                                 categories=_cats(0, 0, spam))
                )
    return rows


def read_sms_spam(data_dir: Path) -> list[LabelledText]:
    rows = []
    with open(data_dir / "text" / "sms_spam" / "SMSSpamCollection.tsv", encoding="utf-8") as f:
        next(f)
        for line in f:
            label, _, text = line.rstrip("\n").partition("\t")
            if text:
                rows.append(LabelledText(text, "sms_spam", "train", label,
                                         categories=_cats(0, 0, int(label == "spam"))))
    return rows


def read_germeval(data_dir: Path) -> list[LabelledText]:
    """German tweets. The shipped encoder is English-only, so these are never trained on;
    the demo plants some to show that weakness in the reports."""
    rows = []
    with open(data_dir / "text" / "germeval2018" / "training.txt", encoding="utf-8") as f:
        for line in f:
            parts = line.rstrip("\n").split("\t")
            if len(parts) < 3:
                continue
            offense = int(parts[1] == "OFFENSE")
            rows.append(
                LabelledText(parts[0], "germeval2018", "train", parts[2].lower(), language="de",
                             categories=_cats(0, offense, 0))
            )
    return rows


def training_set(data_dir: Path) -> list[LabelledText]:
    """Everything the reference text heads are trained on: never a held-out split."""
    rows = read_hatexplain(data_dir, "train") + read_davidson(data_dir) + read_sms_spam(data_dir)
    rows += [r for r in read_youtube_spam(data_dir) if r.split == "train"]
    return rows


def heldout_sets(data_dir: Path) -> dict[str, list[LabelledText]]:
    """The held-out sets the heads may be measured on."""
    return {
        "hatexplain_validation": read_hatexplain(data_dir, "validation"),
        "hatexplain_test": read_hatexplain(data_dir, "test"),
        "youtube_spam_heldout": [r for r in read_youtube_spam(data_dir) if r.split == "test"],
    }
