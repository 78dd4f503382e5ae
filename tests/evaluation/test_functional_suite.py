"""The multilingual functional test suite: coverage, labels, ids, spelling variants and the
evaluation-dataset schema. Pure Python and Arrow: no network, no Ray, no Spark."""

from __future__ import annotations

import hashlib
import re
from collections import Counter

import pyarrow as pa
import pytest

from moderation.evaluation import datasets as ds
from moderation.evaluation.functional import (
    FUNCTIONALITIES,
    LANGUAGES,
    SOURCE,
    SPELLING,
    TARGET_GROUPS,
    build_functional_suite,
    functional_cases,
    spelling_variant,
)

#: Slur functionalities a language has no case of, because its slur tables are empty. Every
#: language now has at least one slur (slur_h) and one reclaimed term (slur_reclaimed), so none.
NO_SLUR_CASES: dict[str, set[str]] = {language: set() for language in LANGUAGES}

#: Groups with a slur_h case, per language: the rest have no common slur in the table.
SLUR_GROUPS = {
    "en": {"women", "trans_people", "gay_people", "black_people", "disabled_people", "muslims", "jews"},
    "de": {"women", "trans_people", "gay_people", "black_people", "disabled_people", "immigrants"},
    "es": {"women", "trans_people", "gay_people", "black_people", "disabled_people", "muslims", "immigrants"},
    "fr": {"women", "trans_people", "gay_people", "black_people", "disabled_people", "immigrants", "jews"},
    "pt": {"women", "trans_people", "gay_people", "black_people", "disabled_people"},
}

_ID = re.compile(r"^fs:(?P<lang>[a-z]{2}):(?P<func>[a-z_]+):(?P<digest>[0-9a-f]{12})$")


@pytest.fixture(scope="module")
def suite() -> pa.Table:
    return build_functional_suite()


@pytest.fixture(scope="module")
def rows(suite: pa.Table) -> list[dict]:
    return suite.to_pylist()


def test_every_language_has_every_functionality(rows):
    for language in LANGUAGES:
        present = {r["slice_functionality"] for r in rows if r["slice_language"] == language}
        assert present == set(FUNCTIONALITIES) - NO_SLUR_CASES[language], language


def test_group_functionalities_cover_every_group(rows):
    group_free = {"profanity_nh", "target_obj", "target_indiv", "target_nonprot"}
    for language in LANGUAGES:
        for name in set(FUNCTIONALITIES) - group_free - {"slur_h", "slur_reclaimed"}:
            groups = {r["slice_target_group"] for r in rows
                      if r["slice_language"] == language and r["slice_functionality"] == name}
            assert groups == set(TARGET_GROUPS), (language, name)
        slurred = {r["slice_target_group"] for r in rows
                   if r["slice_language"] == language and r["slice_functionality"] == "slur_h"}
        assert slurred == SLUR_GROUPS[language], language
        free = {r["slice_target_group"] for r in rows
                if r["slice_language"] == language and r["slice_functionality"] in group_free}
        assert free == {"none"}, language


def test_both_classes_per_language_in_proportion(rows):
    for language in LANGUAGES:
        labels = Counter(r["label_hate"] for r in rows if r["slice_language"] == language)
        assert set(labels) == {0, 1}, language
        total = labels[0] + labels[1]
        assert 600 <= total <= 1500, (language, total)
        assert 0.55 <= labels[1] / total <= 0.70, (language, labels)


def test_example_ids_unique_well_formed_and_deterministic(suite, rows):
    ids = suite.column("example_id").to_pylist()
    assert len(ids) == len(set(ids))
    assert ids == sorted(ids)
    for r in rows:
        m = _ID.match(r["example_id"])
        assert m, r["example_id"]
        assert m["lang"] == r["slice_language"] and m["func"] == r["slice_functionality"]
        assert m["digest"] == hashlib.sha256(r["text"].encode("utf-8")).hexdigest()[:12]
    assert build_functional_suite().equals(suite)


def test_labels_follow_the_functionality_table(rows):
    for r in rows:
        name = r["slice_functionality"]
        hateful = FUNCTIONALITIES[name].hateful
        assert r["label_hate"] == int(hateful), r
        assert r["label_harassment"] == int(hateful or name in {"target_indiv", "target_nonprot"}), r
        assert r["label_violence"] == int(name in {"threat_dir", "threat_norm"}), r
        assert r["slice_case"] == ("hateful" if hateful else "non_hateful"), r
        assert r["modality"] == "text" and r["source"] == SOURCE


def test_spelling_variants_differ_from_their_hateful_base():
    for language in LANGUAGES:
        cases = functional_cases(language)
        hateful_texts = {c.text for c in cases if c.functionality not in SPELLING
                         and FUNCTIONALITIES[c.functionality].hateful}
        variants = [c for c in cases if c.functionality in SPELLING]
        assert {c.functionality for c in variants} == set(SPELLING), language
        for case in variants:
            assert case.base_text in hateful_texts, case
            assert case.text != case.base_text, case
            # One key word changed, the rest of the sentence kept.
            assert abs(len(case.text) - len(case.base_text)) <= 1, case
        assert all(c.base_text is None for c in cases if c.functionality not in SPELLING)


@pytest.mark.parametrize(("word", "functionality", "expected"), [
    ("hate", "spell_char_swap", "haet"),
    ("hasse", "spell_char_swap", "hsase"),
    ("vermin", "spell_leet", "v3rm1n"),
    ("Odio", "spell_leet", "0d10"),
    ("worthless", "spell_space", "wort hless"),
])
def test_spelling_variant(word, functionality, expected):
    assert spelling_variant(word, functionality) == expected


def test_spelling_variant_refuses_a_no_op():
    with pytest.raises(ValueError, match="unchanged"):
        spelling_variant("rhythm", "spell_leet")
    with pytest.raises(ValueError, match="spell_typo"):
        spelling_variant("hate", "spell_typo")


def test_no_duplicate_text_within_a_language(rows):
    for language in LANGUAGES:
        texts = Counter(r["text"] for r in rows if r["slice_language"] == language)
        assert [t for t, n in texts.items() if n > 1] == [], language


def test_texts_are_filled_templates(rows):
    for r in rows:
        assert not re.search(r"[{}\[\]*|]", r["text"]), r["text"]
        assert r["text"] == r["text"].strip() and "  " not in r["text"], r["text"]


def test_a_subset_of_languages_is_the_same_rows(suite):
    fr_de = build_functional_suite(("fr", "de"))
    assert set(fr_de.column("slice_language").to_pylist()) == {"fr", "de"}
    wanted = {r["example_id"]: r for r in suite.to_pylist() if r["slice_language"] in ("fr", "de")}
    assert {r["example_id"]: r for r in fr_de.to_pylist()} == wanted
    assert build_functional_suite(["fr", "fr", "de"]).equals(fr_de)


def test_unknown_language_is_named_with_the_choices():
    with pytest.raises(ValueError, match=r"'it'.*'en', 'de', 'es', 'fr', 'pt'"):
        build_functional_suite(("en", "it"))
    with pytest.raises(ValueError, match="'xx'"):
        functional_cases("xx")
    with pytest.raises(ValueError, match="sequence"):
        build_functional_suite("en")
    with pytest.raises(ValueError, match="no languages"):
        build_functional_suite(())


def test_passes_dataset_validation(suite):
    out = ds.validate(suite, origin="functional_suite")
    assert out.num_rows == suite.num_rows
    assert sorted(ds.label_categories(out)) == ["harassment", "hate", "violence"]
    assert ds.slice_columns(out) == ["slice_functionality", "slice_language", "slice_target_group", "slice_case"]
    assert out.column("text").to_pylist() == suite.column("text").to_pylist()
