"""The multilingual evaluation datasets (issue 12, point 4): pooled held-out splits of every
corpus with language and source slices, GermEval 2018's held-out part, the functional suite."""

from __future__ import annotations

from collections import Counter

import pytest

from moderation.evaluation import datasets as ds
from moderation.evaluation.corpora import CORPORA, normalise_key, read_all
from moderation.storage.lake import Lake


@pytest.fixture(scope="module")
def corpus_rows(data_dir):
    return read_all(data_dir)


@pytest.fixture(scope="module")
def pooled(tmp_path_factory, data_dir):
    lake = Lake(str(tmp_path_factory.mktemp("lake")))
    ds.import_standard(lake, data_dir, ["multilingual_test", "multilingual_validation", "germeval2018_probe"])
    return {n: ds.read_dataset(lake, n)[0] for n in ("multilingual_test", "multilingual_validation", "germeval2018_probe")}


def test_pooled_test_set_is_held_out_capped_and_sliced(pooled, corpus_rows):
    test = pooled["multilingual_test"]
    per_source = Counter(test.column("source").to_pylist())
    assert set(per_source) == set(CORPORA) - {"hatexplain", "youtube_spam"}
    assert max(per_source.values()) <= ds.POOLED_PER_CORPUS
    assert {"en", "de", "es", "fr", "pt", "it", "ar", "tr"} <= set(test.column("slice_language").to_pylist())
    assert test.column("slice_source").to_pylist() == test.column("source").to_pylist()
    train_keys = {normalise_key(r.text) for r in corpus_rows if r.split == "train"}
    leaked = [t for t in test.column("text").to_pylist() if normalise_key(t) in train_keys]
    assert not leaked, leaked[:3]
    # Labels only where the corpus annotates the category: GermEval violence has no hate label.
    rows = test.to_pylist()
    violence = [r for r in rows if r["source"] == "germeval_violence"]
    assert violence and all(r["label_hate"] is None and r["label_violence"] in (0, 1) for r in violence)
    assert {r["label_self_harm"] for r in rows if r["source"] == "sdcnl_suicide"} == {0, 1}


def test_pooled_validation_is_disjoint_from_test(pooled):
    val = {normalise_key(t) for t in pooled["multilingual_validation"].column("text").to_pylist()}
    test = {normalise_key(t) for t in pooled["multilingual_test"].column("text").to_pylist()}
    assert val and not (val & test)


def test_germeval_probe_holds_only_the_held_out_part(pooled, corpus_rows):
    probe = pooled["germeval2018_probe"]
    held = {normalise_key(r.text) for r in corpus_rows if r.source == "germeval2018" and r.split == "test"}
    trained = {normalise_key(r.text) for r in corpus_rows if r.source == "germeval2018" and r.split == "train"}
    keys = {normalise_key(t) for t in probe.column("text").to_pylist()}
    assert keys and keys <= held and not (keys & trained)


def test_training_seeds_never_repeat_an_evaluation_text(corpus_rows):
    """The project's training statements (scripts/seeds) and its functional suite (evaluation
    only) share no text, and no seed is a test text of a corpus."""
    import csv

    from moderation.config import PROJECT_ROOT
    from moderation.evaluation.functional import build_functional_suite

    seeds = set()
    for path in sorted((PROJECT_ROOT / "scripts" / "seeds").glob("*.csv")):
        with open(path, newline="", encoding="utf-8") as f:
            seeds |= {normalise_key(r["text"]) for r in csv.DictReader(f)}
    assert len(seeds) > 1000
    suite = {normalise_key(t) for t in build_functional_suite().column("text").to_pylist()}
    tests = {normalise_key(r.text) for r in corpus_rows if r.split == "test"}
    assert not (seeds & suite), sorted(seeds & suite)[:5]
    assert not (seeds & tests), sorted(seeds & tests)[:5]


def test_pooled_validation_holds_every_corpus(pooled):
    sources = set(pooled["multilingual_validation"].column("source").to_pylist())
    assert sources == set(CORPORA)


def test_cross_dataset_matrix_in_the_report(tmp_path):
    """The eval report's cross-dataset section pivots the matrix a training script keeps beside
    its registry entry; the shipped model's matrix covers every corpus it trains on, with and
    without it, and every corpus it never trains on."""
    from moderation.evaluation.report import cross_dataset_frame, cross_dataset_section

    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "m1.cross_dataset.csv").write_text(
        "model,dataset,language,category,n,pos,pr_auc,roc_auc,recall,fpr,trained_on_it\n"
        "m1,olid,en,harassment,10,4,0.8,0.9,0.5,0.1,True\n"
        "m1,olid,en,harassment,10,4,0.6,0.7,0.25,0.2,False\n")
    df = cross_dataset_frame(tmp_path)
    row = df.iloc[0]
    assert (row["model_id"], row["pr_auc with"], row["pr_auc without"], row["recall without"]) == ("m1", 0.8, 0.6, 0.25)
    html = cross_dataset_section(tmp_path)
    assert "Cross-dataset generalisation" in html and "0.600" in html and "olid" in html
    assert cross_dataset_section(tmp_path / "nowhere") == ""

    shipped = cross_dataset_frame()
    shipped = shipped[shipped["model_id"] == "text-muse-heads-v1"]
    permissive = {n for n, c in CORPORA.items() if c.permissive}
    with_it = set(shipped.dropna(subset=["pr_auc with"])["dataset"])
    assert with_it == permissive
    assert set(shipped["dataset"]) == set(CORPORA)
    assert shipped["pr_auc without"].notna().all()
