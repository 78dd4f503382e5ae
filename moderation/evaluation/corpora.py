"""Every labelled text corpus in ../shared/data/text as ``LabelledText`` rows (see its SOURCES.md).

For training multilingual classifier heads and for cross-dataset evaluation. Each corpus is a
``Corpus`` in ``CORPORA`` with its languages, licence (as SOURCES.md states it), the project
categories it annotates and how its splits are made; ``read_corpus`` and ``read_all`` read them.

Rows carry only the categories their corpus annotates: a category a corpus says nothing about is
absent from ``LabelledText.categories``, never 0.

Splits, one rule per corpus (``Corpus.split_note`` says which):

* ``source``  the source's own train / validation / test (test rows are its held-out set);
* ``carve``   the source's own test; 10 % of its train rows become validation, chosen by the
              SHA-256 of the normalised text (``normalise_key``);
* ``hash``    no split in the source: 70 % train / 10 % validation / 20 % test by that hash.

The hash buckets are the same in every corpus, so one text lands in the same split wherever it
is hash-split, and a carved validation row is one the 70/10/20 rule would also put in
validation. After splitting, a train or validation row whose normalised text equals a test
row's of the same corpus is dropped, and so is a repeat of a (normalised text, split) pair.

SOURCES.md allows evaluating a model on this file's rows only on a held-out split the source (or
SOURCES.md) defines: ``Corpus.test_is_heldout`` is False where the test rows are a hash split,
which is fine for a model that never trained on that corpus (cross-dataset evaluation), not for
one trained on its train rows.
"""

from __future__ import annotations

import csv
import hashlib
import re
import sys
import unicodedata
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from functools import cache, lru_cache, partial
from pathlib import Path
from typing import Literal

from moderation.evaluation.sources import (
    YOUTUBE_HELDOUT,
    LabelledText,
    default_data_dir,
    read_davidson,
    read_germeval,
    read_hatexplain,
    read_sms_spam,
    read_youtube_spam,
)

__all__ = [
    "CORPORA",
    "SPLITS",
    "TEXT_CATEGORIES",
    "Corpus",
    "default_data_dir",
    "hash_split",
    "leaked_keys",
    "normalise_key",
    "read_all",
    "read_corpus",
    "read_germeval_violence",
]

TEXT_CATEGORIES = ("hate", "harassment", "violence", "self_harm", "spam")
SPLITS = ("train", "validation", "test")
Split = Literal["train", "validation", "test"]
SplitRule = Literal["source", "carve", "hash"]

# Bucket b = SHA-256(key) mod 100: [0, 70) train, [70, 80) validation, [80, 100) test.
_TRAIN_END, _VALIDATION_END = 70, 80

# ---------------------------------------------------------------------------------------
# Normalised keys and splits
# ---------------------------------------------------------------------------------------
_URL_OR_MENTION = re.compile(r"(?:https?://|www\.)\S+|@\w+")


@cache
def _strip_table() -> dict[int, str]:
    """Every Unicode punctuation (P*) and format (Cf: BOM, zero-width) character -> a space.

    A space, not nothing, so that "don't" and HateXplain's tokenised "don ' t" get one key.
    Built on first use (a fraction of a second), not at import.
    """
    return {
        i: " "
        for i in range(sys.maxunicode + 1)
        if unicodedata.category(chr(i))[0] == "P" or unicodedata.category(chr(i)) == "Cf"
    }


def normalise_key(text: str) -> str:
    """The text as compared for leaks and duplicates: NFC, lower-cased, URLs and @mentions
    removed, punctuation removed, whitespace collapsed. Emoji and other symbols are kept.

    A text with nothing else (a bare link, "??" where a source lost its emoji) keys as itself,
    lower-cased with whitespace collapsed: one empty key would make all such texts one.
    """
    text = unicodedata.normalize("NFC", text).lower()
    stripped = _URL_OR_MENTION.sub(" ", text) if "@" in text or "http" in text or "www." in text else text
    return " ".join(stripped.translate(_strip_table()).split()) or " ".join(text.split())


def _bucket(key: str) -> int:
    return int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "big") % 100


def hash_split(key: str) -> Split:
    """70 % train / 10 % validation / 20 % test, by the SHA-256 of ``key`` (a normalised text)."""
    b = _bucket(key)
    return "train" if b < _TRAIN_END else "validation" if b < _VALIDATION_END else "test"


def leaked_keys(train: Iterable[LabelledText], test: Iterable[LabelledText]) -> set[str]:
    """Normalised texts found both in ``train`` and in ``test``: empty when pooled corpora keep
    their test rows clean. Within one corpus ``read_corpus`` already guarantees it."""
    return {normalise_key(r.text) for r in train} & {normalise_key(r.text) for r in test}


def _finish(rows: list[LabelledText], rule: SplitRule) -> list[LabelledText]:
    """Apply the split rule, then drop train/validation rows that repeat a test text and
    repeated (text, split) pairs. The first of a repeat is kept even where the repeats disagree
    on a label (mlma has about 90 such texts). A text in both train and validation of a source's
    own split stays in both: only test is kept clean."""
    keyed: list[tuple[str, LabelledText]] = []
    for r in rows:
        key = normalise_key(r.text)
        split: str
        if rule == "hash":
            split = hash_split(key)
        elif rule == "carve" and r.split == "train":
            split = "validation" if hash_split(key) == "validation" else "train"
        else:
            split = r.split
        if split not in SPLITS:
            raise ValueError(f"{r.source}: split {split!r} is not one of {SPLITS}")
        keyed.append((key, r if split == r.split else replace(r, split=split)))
    test_keys = {k for k, r in keyed if r.split == "test"}
    seen: set[tuple[str, str]] = set()
    out: list[LabelledText] = []
    for key, r in keyed:
        if (r.split != "test" and key in test_keys) or (key, r.split) in seen:
            continue
        seen.add((key, r.split))
        out.append(r)
    return out


# ---------------------------------------------------------------------------------------
# Readers: one per folder, each returning split, de-leaked rows
# ---------------------------------------------------------------------------------------
def _read_csv(data_dir: Path, name: str) -> list[dict[str, str]]:
    with open(data_dir / "text" / name / f"{name}.csv", newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _only(rows: list[LabelledText], categories: tuple[str, ...]) -> list[LabelledText]:
    """The existing readers fill every category of theirs; keep those the corpus annotates."""
    return [replace(r, categories={c: r.categories[c] for c in categories}) for r in rows]


def _named(value: int, name: str) -> str:
    return name if value else f"not_{name}"


def _read_hatexplain(data_dir: Path) -> list[LabelledText]:
    rows = [r for split in SPLITS for r in read_hatexplain(data_dir, split)]
    return _finish(_only(rows, ("hate", "harassment")), "source")


def _read_davidson(data_dir: Path) -> list[LabelledText]:
    return _finish(_only(read_davidson(data_dir), ("hate", "harassment")), "hash")


def _read_youtube_spam(data_dir: Path) -> list[LabelledText]:
    return _finish(_only(read_youtube_spam(data_dir), ("spam",)), "carve")


def _read_sms_spam(data_dir: Path) -> list[LabelledText]:
    return _finish(_only(read_sms_spam(data_dir), ("spam",)), "hash")


def _read_germeval2018(data_dir: Path) -> list[LabelledText]:
    return _finish(_only(read_germeval(data_dir), ("harassment",)), "hash")


def _read_mlma(data_dir: Path) -> list[LabelledText]:
    rows = [
        LabelledText(
            r["text"], "mlma", "train", r["hostility_labels"], language=r["language"],
            targets=(r["target_group"],) if r["target_group"] else (),
            categories={"hate": int(r["hateful"]), "harassment": int(r["toxic"])},
        )
        for r in _read_csv(data_dir, "mlma")
    ]
    return _finish(rows, "hash")


_TOLD_BR_HATE = ("homophobia", "racism", "misogyny", "xenophobia")
_TOLD_BR_ALL = ("homophobia", "obscene", "insult", "racism", "misogyny", "xenophobia")


def _read_told_br(data_dir: Path) -> list[LabelledText]:
    rows = []
    for r in _read_csv(data_dir, "told_br"):
        majority = [c for c in _TOLD_BR_ALL if int(r[f"{c}_votes"]) >= 2]
        hate = int(any(c in _TOLD_BR_HATE for c in majority))
        rows.append(
            LabelledText(
                r["text"], "told_br", r["split"], "+".join(majority) or "none", language=r["language"],
                categories={"hate": hate, "harassment": int(r["toxic_majority"])},
            )
        )
    return _finish(rows, "source")


def _read_olid(data_dir: Path) -> list[LabelledText]:
    rows = []
    for r in _read_csv(data_dir, "olid"):
        label = "/".join(r[k] for k in ("subtask_a", "subtask_b", "subtask_c") if r[k] != "NULL")
        rows.append(LabelledText(r["text"], "olid", r["split"], label, language=r["language"],
                                 categories={"harassment": int(r["offensive"])}))
    return _finish(rows, "carve")


def _read_osact4_ar(data_dir: Path) -> list[LabelledText]:
    rows = []
    for r in _read_csv(data_dir, "osact4_ar"):
        off, hate = int(r["offensive"]), int(r["hate"])
        # The official test set is not in the source repo: its dev set is the held-out set.
        split = "test" if r["split"] == "validation" else r["split"]
        label = f"{'OFF' if off else 'NOT_OFF'}/{'HS' if hate else 'NOT_HS'}"
        rows.append(LabelledText(r["text"], "osact4_ar", split, label, language=r["language"],
                                 categories={"hate": hate, "harassment": off}))
    return _finish(rows, "carve")


def _read_offensive(data_dir: Path, name: str) -> list[LabelledText]:
    """A converted corpus with a train/test split whose one label is ``offensive``."""
    rows = [
        LabelledText(r["text"], name, r["split"], r.get("fine") or ("OFF" if r["offensive"] == "1" else "NOT"),
                     language=r["language"], categories={"harassment": int(r["offensive"])})
        for r in _read_csv(data_dir, name)
    ]
    return _finish(rows, "carve")


def _read_germeval2021(data_dir: Path) -> list[LabelledText]:
    rows = [
        LabelledText(r["text"], "germeval2021", r["split"], _named(int(r["toxic"]), "toxic"), language=r["language"],
                     categories={"harassment": int(r["toxic"])})
        for r in _read_csv(data_dir, "germeval2021")
    ]
    return _finish(rows, "carve")


def _read_offendes(data_dir: Path) -> list[LabelledText]:
    rows = [
        LabelledText(r["text"], "offendes", r["split"], r["label"], language=r["language"],
                     categories={"harassment": int(r["label"] in ("OFP", "OFG"))})
        for r in _read_csv(data_dir, "offendes")
    ]
    return _finish(rows, "source")


def _read_binary(data_dir: Path, name: str, column: str, category: str) -> list[LabelledText]:
    """A converted corpus with no split whose one 0/1 ``column`` is ``category``."""
    rows = [
        LabelledText(r["text"], name, "train", _named(int(r[column]), column), language=r["language"],
                     categories={category: int(r[column])})
        for r in _read_csv(data_dir, name)
    ]
    return _finish(rows, "hash")


def _conversation_splits(sizes: dict[str, int]) -> dict[str, Split]:
    """Whole conversations to splits: in SHA-256 order of their ids, test takes conversations
    until it holds 20 % of the rows, then validation until 10 %, the rest is train. (Bucketing
    each id alone, as for texts, leaves 19 conversations with no validation one.)"""
    total = sum(sizes.values())
    out: dict[str, Split] = {}
    test = validation = 0
    for conv in sorted(sizes, key=lambda c: hashlib.sha256(c.encode("utf-8")).hexdigest()):
        if test < 0.2 * total:
            out[conv], test = "test", test + sizes[conv]
        elif validation < 0.1 * total:
            out[conv], validation = "validation", validation + sizes[conv]
        else:
            out[conv] = "train"
    return out


def _read_cyberagressionado_fr(data_dir: Path) -> list[LabelledText]:
    src = _read_csv(data_dir, "cyberagressionado_fr")
    sizes: dict[str, int] = {}
    for r in src:
        sizes[r["conversation"]] = sizes.get(r["conversation"], 0) + 1
    splits = _conversation_splits(sizes)
    rows = [
        LabelledText(
            r["text"], "cyberagressionado_fr", splits[r["conversation"]], r["verbal_abuse"], language=r["language"],
            categories={
                "hate": int(r["hate_speech"]),
                "harassment": int(r["verbal_abuse"] != "none"),
                "violence": int(r["verbal_abuse"] == "threat"),
            },
        )
        for r in src
    ]
    return _finish(rows, "source")


def _read_toxigen_prompts(data_dir: Path) -> list[LabelledText]:
    rows = [
        LabelledText(r["text"], "toxigen_prompts", "train", "hate" if r["hate"] == "1" else "neutral",
                     language=r["language"], targets=tuple(t for t in r["target_groups"].split(";") if t),
                     categories={"hate": int(r["hate"])})
        for r in _read_csv(data_dir, "toxigen_prompts")
    ]
    return _finish(rows, "hash")


def _read_sdcnl_suicide(data_dir: Path) -> list[LabelledText]:
    rows = [
        LabelledText(r["text"], "sdcnl_suicide", r["split"], "SuicideWatch" if r["suicidal"] == "1" else "depression",
                     language=r["language"], categories={"self_harm": int(r["suicidal"])})
        for r in _read_csv(data_dir, "sdcnl_suicide")
    ]
    return _finish(rows, "carve")


def read_germeval_violence(data_dir: Path, *, include_2025: bool = False) -> list[LabelledText]:
    """GermEval violence rows, hash-split (all source rows are training data).

    Args:
        include_2025: keep the rows that only GermEval 2025 has (``edition=germeval2025_train``:
            19 % violent against 3.2 % in 2026, probably tweets the 2026 annotators could not
            agree on; SOURCES.md advises dropping them for a cleaner set).
    """
    rows = []
    for r in _read_csv(data_dir, "germeval_violence"):
        if r["edition"] == "germeval2025_train" and not include_2025:
            continue
        vio = int(r["violence"])
        label = r["violence_class"] or ("VIO" if vio else "NOT_VIO")
        rows.append(LabelledText(r["text"], "germeval_violence", "train", label, language=r["language"],
                                 categories={"violence": vio}))
    return _finish(rows, "hash")


# ---------------------------------------------------------------------------------------
# The corpora
# ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Corpus:
    """One folder of ../shared/data/text.

    ``permissive``: MIT, CC BY, Apache-2.0 or public domain; False for share-alike, GPL and
    "no licence stated" (fine for research, check with the owners before shipping a model).
    ``test_is_heldout``: the test rows are a held-out split the source or SOURCES.md defines,
    so a model trained on this corpus's train rows may be evaluated on them.
    """

    name: str
    languages: tuple[str, ...]
    licence: str
    permissive: bool
    categories: tuple[str, ...]
    split_note: str
    test_is_heldout: bool
    reader: Callable[[Path], list[LabelledText]] = field(repr=False, compare=False)

    def read(self, data_dir: Path) -> list[LabelledText]:
        return self.reader(data_dir)


_NO_LICENCE = "no licence stated"
_HASH = "no split in the source: 70/10/20 train/validation/test by SHA-256 of the normalised text"
_CARVE = "source train/test; validation = 10 % of train by SHA-256 of the normalised text"

CORPORA: dict[str, Corpus] = {
    c.name: c
    for c in (
        Corpus("hatexplain", ("en",), "MIT", True, ("hate", "harassment"),
               "official train/validation/test; posts where all three annotators disagree dropped", True,
               _read_hatexplain),
        Corpus("davidson", ("en",), "MIT", True, ("hate", "harassment"), _HASH, False, _read_davidson),
        Corpus("youtube_spam", ("en",), "CC BY 4.0", True, ("spam",),
               f"test = the held-out video {YOUTUBE_HELDOUT} (Shakira), the other four train; "
               "validation = 10 % of train by SHA-256 of the normalised text", True, _read_youtube_spam),
        Corpus("sms_spam", ("en",), "CC BY 4.0", True, ("spam",), _HASH, False, _read_sms_spam),
        Corpus("germeval2018", ("de",), "CC BY 4.0", True, ("harassment",),
               f"{_HASH} (only the training file is here)", False, _read_germeval2018),
        Corpus("mlma", ("en", "fr", "ar"), "MIT", True, ("hate", "harassment"), _HASH, False, _read_mlma),
        Corpus("told_br", ("pt",), "CC BY-SA 4.0", False, ("hate", "harassment"),
               "the authors' experiment splits (a text in several of them is test)", True, _read_told_br),
        Corpus("fortuna_pt", ("pt",), f'{_NO_LICENCE}; README: "strictly for research purposes"', False, ("hate",),
               _HASH, False, partial(_read_binary, name="fortuna_pt", column="hate", category="hate")),
        Corpus("olid", ("en",), _NO_LICENCE, False, ("harassment",), _CARVE, True, _read_olid),
        Corpus("osact4_ar", ("ar",), _NO_LICENCE, False, ("hate", "harassment"),
               "the official test set is missing: the source's validation (dev) set is test; "
               "validation = 10 % of train by SHA-256 of the normalised text", True, _read_osact4_ar),
        Corpus("offenseval_tr", ("tr",), _NO_LICENCE, False, ("harassment",), _CARVE, True,
               partial(_read_offensive, name="offenseval_tr")),
        Corpus("germeval2019", ("de",), _NO_LICENCE, False, ("harassment",), _CARVE, True,
               partial(_read_offensive, name="germeval2019")),
        Corpus("germeval2021", ("de",), _NO_LICENCE, False, ("harassment",), _CARVE, True, _read_germeval2021),
        Corpus("offendes", ("es",), _NO_LICENCE, False, ("harassment",),
               "source train/validation (100 rows)/test; train texts also in test dropped", True, _read_offendes),
        Corpus("pejorativity_it", ("it",), "CC BY", True, ("hate",), _HASH, False,
               partial(_read_binary, name="pejorativity_it", column="misogyny", category="hate")),
        Corpus("ftr_fr", ("fr",), "MIT", True, ("hate",), _HASH, False,
               partial(_read_binary, name="ftr_fr", column="racist", category="hate")),
        Corpus("cyberagressionado_fr", ("fr",), _NO_LICENCE, False, ("hate", "harassment", "violence"),
               "no split in the source: whole conversations, in SHA-256 order of their ids, fill test "
               "(20 % of rows), then validation (10 %), the rest train", True, _read_cyberagressionado_fr),
        Corpus("toxigen_prompts", ("en",), "MIT", True, ("hate",), _HASH, False, _read_toxigen_prompts),
        Corpus("sdcnl_suicide", ("en",), _NO_LICENCE, False, ("self_harm",), _CARVE, True, _read_sdcnl_suicide),
        Corpus("germeval_violence", ("de",), "GPL-3.0", False, ("violence",),
               f"all source rows are training data: {_HASH}; GermEval 2025-only rows dropped "
               "(read_germeval_violence(include_2025=True) keeps them)", False, read_germeval_violence),
    )
}


def _corpus(name: str) -> Corpus:
    try:
        return CORPORA[name]
    except KeyError:
        raise ValueError(f"unknown corpus {name!r}; valid: {', '.join(CORPORA)}") from None


def read_corpus(data_dir: Path | None, name: str) -> list[LabelledText]:
    """All rows of one corpus, split and de-leaked. ``data_dir`` None: ``default_data_dir()``.

    Raises:
        ValueError: ``name`` is not in ``CORPORA`` (the message lists the valid names).
        FileNotFoundError: the corpus's files are not under ``data_dir / "text"``.
    """
    _corpus(name)
    return list(_read_cached(name, str(Path(default_data_dir() if data_dir is None else data_dir).resolve())))


@lru_cache(maxsize=32)
def _read_cached(name: str, data_dir: str) -> tuple[LabelledText, ...]:
    """One read of a corpus per process (rows are frozen): tests, evaluation and training read
    the same corpora many times, and a read parses, normalises and splits every row."""
    return tuple(CORPORA[name].read(Path(data_dir)))


def read_all(
    data_dir: Path | None, names: Iterable[str] | None = None, *, permissive_only: bool = False
) -> list[LabelledText]:
    """Rows of several corpora (default: all of ``CORPORA``, in its order), one after another.

    Args:
        data_dir: the folder holding ``text/``; None: ``default_data_dir()``.
        names: the corpora to read; every name is checked before anything is read.
        permissive_only: skip corpora whose licence is not permissive (``Corpus.permissive``).

    Raises:
        ValueError: an unknown name.
    """
    if isinstance(names, str):
        names = [names]
    corpora = [_corpus(n) for n in (CORPORA if names is None else names)]
    data_dir = default_data_dir() if data_dir is None else data_dir
    return [r for c in corpora if c.permissive or not permissive_only for r in read_corpus(data_dir, c.name)]
