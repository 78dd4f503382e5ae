"""moderation.evaluation.corpora: every labelled text corpus in ../shared/data/text as LabelledText rows,
with the categories, languages, licences and held-out splits SOURCES.md gives."""

from __future__ import annotations

import csv
import json
import os
import pickle
import subprocess
import sys
from collections import Counter, defaultdict

import pytest

from moderation.evaluation.corpora import (
    CORPORA,
    SPLITS,
    TEXT_CATEGORIES,
    hash_split,
    leaked_keys,
    normalise_key,
    read_all,
    read_corpus,
    read_germeval_violence,
)
from moderation.evaluation.sources import LabelledText

# folder: (rows in SOURCES.md, languages, permissive, categories). germeval_violence counts its
# 2026 rows only: the 2025-only rows are dropped by default.
EXPECTED = {
    "hatexplain": (15_383 + 1_922 + 1_924, {"en"}, True, {"hate", "harassment"}),
    "davidson": (24_783, {"en"}, True, {"hate", "harassment"}),
    "youtube_spam": (1_956, {"en"}, True, {"spam"}),
    "sms_spam": (5_574, {"en"}, True, {"spam"}),
    "germeval2018": (5_009, {"de"}, True, {"harassment"}),
    "mlma": (13_013, {"en", "fr", "ar"}, True, {"hate", "harassment"}),
    "told_br": (21_000, {"pt"}, False, {"hate", "harassment"}),
    "fortuna_pt": (5_670, {"pt"}, False, {"hate"}),
    "olid": (14_100, {"en"}, False, {"harassment"}),
    "osact4_ar": (8_000, {"ar"}, False, {"hate", "harassment"}),
    "offenseval_tr": (35_284, {"tr"}, False, {"harassment"}),
    "germeval2019": (7_026, {"de"}, False, {"harassment"}),
    "germeval2021": (4_188, {"de"}, False, {"harassment"}),
    "offendes": (30_416, {"es"}, False, {"harassment"}),
    "pejorativity_it": (1_200, {"it"}, True, {"hate"}),
    "ftr_fr": (2_856, {"fr"}, True, {"hate"}),
    "cyberagressionado_fr": (2_921, {"fr"}, False, {"hate", "harassment", "violence"}),
    "toxigen_prompts": (769, {"en"}, True, {"hate"}),
    "sdcnl_suicide": (1_895, {"en"}, False, {"self_harm"}),
    "germeval_violence": (16_431, {"de"}, False, {"violence"}),
}


@pytest.fixture(scope="module")
def corpora(data_dir) -> dict[str, list[LabelledText]]:
    return {name: read_corpus(data_dir, name) for name in CORPORA}


def _source_csv(data_dir, name: str) -> list[dict[str, str]]:
    with open(data_dir / "text" / name / f"{name}.csv", newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_every_folder_is_a_corpus(data_dir):
    assert set(CORPORA) == set(EXPECTED)
    assert set(CORPORA) == {p.name for p in (data_dir / "text").iterdir() if p.is_dir()}
    assert TEXT_CATEGORIES == ("hate", "harassment", "violence", "self_harm", "spam")


@pytest.mark.parametrize("name", list(EXPECTED))
def test_corpus_metadata_matches_sources_md(name):
    _, languages, permissive, categories = EXPECTED[name]
    corpus = CORPORA[name]
    assert corpus.name == name
    assert set(corpus.languages) == languages
    assert corpus.permissive is permissive, corpus.licence
    assert set(corpus.categories) == categories
    assert corpus.categories == tuple(c for c in TEXT_CATEGORIES if c in categories)
    assert corpus.licence and corpus.split_note


def test_corpus_specs_pickle():
    """Specs travel to Ray/Spark workers: readers are module functions or partials, not closures."""
    for corpus in CORPORA.values():
        assert pickle.loads(pickle.dumps(corpus)) == corpus


def test_permissive_only_for_permissive_licences():
    for corpus in CORPORA.values():
        licence = corpus.licence
        if corpus.permissive:
            assert licence in {"MIT", "CC BY", "CC BY 4.0", "Apache-2.0", "public domain"}, corpus.name
        else:
            assert licence.startswith(("CC BY-SA", "GPL", "no licence stated")), corpus.name


@pytest.mark.parametrize("name", list(EXPECTED))
def test_rows_languages_categories(corpora, name):
    expected_rows, languages, _, categories = EXPECTED[name]
    rows = corpora[name]
    # Only duplicates and train texts repeated in test are dropped (YouTube spam repeats most).
    assert 0.8 * expected_rows <= len(rows) <= expected_rows
    assert {r.language for r in rows} == languages
    for r in rows:
        assert r.source == name
        assert r.text and r.label
        assert set(r.categories) == categories, r
        assert set(r.categories.values()) <= {0, 1}, r
    for category in categories:
        # Both classes present in the training rows: something to learn from.
        assert {r.categories[category] for r in rows if r.split == "train"} == {0, 1}, category


@pytest.mark.parametrize("name", list(EXPECTED))
def test_every_split_present_and_test_clean(corpora, name):
    rows = corpora[name]
    counts = Counter(r.split for r in rows)
    assert set(counts) == set(SPLITS), counts
    assert counts["train"] > counts["validation"] > 0 and counts["test"] > 0
    train = [r for r in rows if r.split in ("train", "validation")]
    test = [r for r in rows if r.split == "test"]
    assert not leaked_keys(train, test)
    keys = Counter((normalise_key(r.text), r.split) for r in rows)
    assert max(keys.values()) == 1, keys.most_common(1)


def test_sources_own_splits_are_kept(corpora):
    def count(name, split):
        return sum(r.split == split for r in corpora[name])

    # The source's held-out rows stay test (less their own duplicates).
    for name, source_test in [("olid", 860), ("offenseval_tr", 3_528), ("germeval2019", 3_031),
                              ("germeval2021", 944), ("sdcnl_suicide", 379), ("offendes", 13_606),
                              ("told_br", 2_147), ("hatexplain", 1_924)]:
        assert 0.97 * source_test <= count(name, "test") <= source_test, name
    assert count("offendes", "validation") == 100
    assert 2_000 <= count("told_br", "validation") <= 2_112
    # OSACT4: the source's validation set is the test set; validation is carved from train.
    assert 990 <= count("osact4_ar", "test") <= 1_000
    # Where only validation is missing, about 10 % of train becomes validation.
    for name in ("olid", "offenseval_tr", "germeval2019", "germeval2021", "sdcnl_suicide", "osact4_ar", "youtube_spam"):
        share = count(name, "validation") / (count(name, "train") + count(name, "validation"))
        assert 0.07 <= share <= 0.13, (name, share)


def test_hash_split_proportions_and_no_split_corpora(corpora):
    splits = Counter(hash_split(f"text {i}") for i in range(20_000))
    assert abs(splits["train"] / 20_000 - 0.7) < 0.02
    assert abs(splits["validation"] / 20_000 - 0.1) < 0.02
    assert abs(splits["test"] / 20_000 - 0.2) < 0.02
    for name in ("davidson", "sms_spam", "germeval2018", "mlma", "fortuna_pt", "ftr_fr", "germeval_violence"):
        rows = corpora[name]
        share = sum(r.split == "test" for r in rows) / len(rows)
        assert 0.16 <= share <= 0.24, (name, share)
        for r in rows:
            assert r.split == hash_split(normalise_key(r.text))


def test_youtube_heldout_video_is_test(data_dir, corpora):
    with open(data_dir / "text" / "youtube_spam" / "09-pRpeEdMmmQ0.csv", newline="", encoding="utf-8") as f:
        heldout = {normalise_key(r["CONTENT"]) for r in csv.DictReader(f)}
    for r in corpora["youtube_spam"]:
        assert (r.split == "test") == (normalise_key(r.text) in heldout)


def test_cyberagressionado_split_by_conversation(data_dir, corpora):
    src = _source_csv(data_dir, "cyberagressionado_fr")
    once = {t for t, n in Counter(r["text"] for r in src).items() if n == 1}
    split_of = {r.text: r.split for r in corpora["cyberagressionado_fr"]}
    by_conversation = defaultdict(set)
    for r in src:
        if r["text"] in once and r["text"] in split_of:
            by_conversation[r["conversation"]].add(split_of[r["text"]])
    assert len(by_conversation) == 19
    assert all(len(s) == 1 for s in by_conversation.values()), by_conversation
    assert {next(iter(s)) for s in by_conversation.values()} == set(SPLITS)


def test_category_mappings(data_dir, corpora):
    for name in ("hatexplain", "davidson", "mlma", "osact4_ar"):
        # hate is a kind of harassment in these label schemes
        assert all(r.categories["harassment"] for r in corpora[name] if r.categories["hate"]), name
    for r in corpora["cyberagressionado_fr"]:
        assert r.categories["violence"] == (r.label == "threat")
        assert r.categories["harassment"] == (r.label != "none")
    for r in corpora["offendes"]:
        assert r.categories["harassment"] == (r.label in ("OFP", "OFG"))
    for r in corpora["hatexplain"]:
        assert r.categories == {"hate": r.label == "hatespeech", "harassment": r.label in ("hatespeech", "offensive")}
    # ToLD-Br hate: a majority of annotators on homophobia, racism, misogyny or xenophobia.
    by_text = {r.text: r for r in corpora["told_br"]}
    src = _source_csv(data_dir, "told_br")
    once = {t for t, n in Counter(s["text"] for s in src).items() if n == 1}
    checked = 0
    for s in src:
        r = by_text.get(s["text"]) if s["text"] in once else None
        if r is not None:
            votes = max(int(s[f"{c}_votes"]) for c in ("homophobia", "racism", "misogyny", "xenophobia"))
            assert r.categories["hate"] == int(votes >= 2)
            assert r.categories["harassment"] == int(s["toxic_majority"])
            checked += 1
    assert checked > 20_000, checked
    targets = Counter(t for r in corpora["hatexplain"] for t in r.targets)
    assert {"African", "Islam", "Jewish", "Women"} <= set(targets)
    assert any(r.targets for r in corpora["mlma"]) and any(r.targets for r in corpora["toxigen_prompts"])


def test_germeval_violence_drops_2025_rows_by_default(data_dir, corpora):
    default = corpora["germeval_violence"]
    with_2025 = read_germeval_violence(data_dir, include_2025=True)
    assert len(with_2025) > len(default) + 1_500
    assert sum(r.categories["violence"] for r in default) / len(default) < 0.05
    assert {r.text for r in default} <= {r.text for r in with_2025}


def test_splits_deterministic_across_reads(data_dir, corpora):
    again = read_all(data_dir)
    first = [(r.source, r.text, r.split, r.label) for rows in corpora.values() for r in rows]
    assert [(r.source, r.text, r.split, r.label) for r in again] == first


def test_splits_do_not_depend_on_the_process(data_dir, corpora):
    """SHA-256, not hash(): another interpreter with another hash seed gives the same splits."""
    script = (
        "import json, sys; from pathlib import Path; from moderation.evaluation.corpora import read_corpus; "
        "print(json.dumps({n: [[r.text, r.split] for r in read_corpus(Path(sys.argv[1]), n)] "
        "for n in ('cyberagressionado_fr', 'toxigen_prompts')}))"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run([sys.executable, "-c", script, str(data_dir)], env=env, capture_output=True, text=True,
                         check=True, timeout=120)
    other = json.loads(out.stdout)
    for name, rows in other.items():
        assert rows == [[r.text, r.split] for r in corpora[name]], name


def test_read_all_names_and_licence_filter(data_dir, corpora):
    rows = read_all(data_dir, ["ftr_fr", "told_br"], permissive_only=True)
    assert {r.source for r in rows} == {"ftr_fr"}
    assert len(rows) == len(corpora["ftr_fr"])


def test_unknown_corpus_and_missing_files(data_dir, tmp_path):
    with pytest.raises(ValueError, match="no_such_corpus") as e:
        read_corpus(data_dir, "no_such_corpus")
    assert "hatexplain" in str(e.value) and "germeval_violence" in str(e.value)
    with pytest.raises(ValueError, match="nope"):
        read_all(data_dir, ["ftr_fr", "nope"])
    with pytest.raises(FileNotFoundError):
        read_corpus(tmp_path, "ftr_fr")


def test_normalise_key():
    assert normalise_key("@User Check THIS:  https://t.co/x1 now!!") == "check this now"
    assert normalise_key("don't") == normalise_key("don ' t")
    assert normalise_key("Grüße,\u00a0Welt\ufeff") == "grüße welt"
    assert normalise_key("جميل جدا!") == "جميل جدا"
    # Texts with nothing but a link or punctuation stay apart instead of sharing an empty key.
    assert normalise_key("http://a.example/1") != normalise_key("http://a.example/2")
    assert normalise_key("??") == "??"
