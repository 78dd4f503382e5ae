from __future__ import annotations

import pyarrow as pa
import pytest

from moderation.classifiers.base import QREASON
from moderation.classifiers.text import MiniLMHeadsClassifier, normalize_text, text_segments
from moderation.config import load_model_registry
from moderation.storage.catalog import to_work_rows


def _rows(**cols) -> pa.Table:
    n = len(cols["item_id"])
    cols.setdefault("item_type", ["track"] * n)
    return to_work_rows(pa.table(cols), "text")


@pytest.fixture(scope="module")
def unloaded() -> MiniLMHeadsClassifier:
    return MiniLMHeadsClassifier(load_model_registry()["text-minilm-heads-v1"])


def test_normalize_and_segments():
    assert normalize_text("  a\x00b\n\n c ") == "a b c"
    segs = text_segments({"title": "t", "description": "", "body_text": " ".join(["w"] * 25)}, segment_words=10, max_segments=3)
    assert [n for n, _ in segs] == ["title", "body_text[0]", "body_text[1]"]


def test_preprocess_quarantines_items_without_text(unloaded):
    out = unloaded.preprocess(
        _rows(item_id=["a", "b", "c"], title=["Hello", "   ", None], description=[None, "\x00\x01", None], body_text=[None, None, None])
    )
    assert out.column(QREASON).to_pylist() == [None, "no_usable_text", "no_usable_text"]
    assert out.column("segments").to_pylist()[0] == ["Hello"]


def test_content_hash_tracks_content_not_whitespace(unloaded):
    out = unloaded.preprocess(_rows(item_id=["a", "b", "c"], title=["Hello  world", "Hello world", "Hello there"]))
    h = out.column("content_hash").to_pylist()
    assert h[0] == h[1] != h[2]


def test_real_model_separates_categories(text_classifier):
    rows = text_classifier.preprocess(_rows(
        item_id=["benign", "spam", "hate"],
        title=[
            "Songs about the summer rain and my grandmother's garden",
            "subscribe to my channel and win free gift cards click the link now",
            "all muslims are terrorists and should be deported from this country",
        ],
    ))
    scores, evidence = text_classifier.score(rows)
    assert scores[1]["spam"] > 0.5 > scores[0]["spam"]
    assert scores[2]["hate"] > scores[0]["hate"] + 0.3
    assert evidence[2]["hate"] == "title"


@pytest.mark.parametrize("fixture", ["text_classifier", "text_classifier_v2"])
def test_max_over_segments_finds_text_buried_in_lyrics(fixture, request):
    clf = request.getfixturevalue(fixture)
    body = " ".join(["we were dancing in the kitchen light"] * 40) + " check out my channel subscribe and win a free iphone"
    rows = clf.preprocess(_rows(item_id=["x"], title=["Kitchen Light"], body_text=[body]))
    scores, evidence = clf.score(rows)
    assert scores[0]["spam"] > 0.5
    assert evidence[0]["spam"].startswith("body_text[")


class _Flaky(MiniLMHeadsClassifier):
    """Fails on any batch containing the poison text: isolates per-row quarantine."""

    def score(self, batch):
        segs = batch.column("segments").to_pylist()
        if any("POISON" in s for row in segs for s in row):
            raise RuntimeError("cannot score this")
        return [{c: 0.1 for c in self.spec.categories} for _ in segs], [{c: "title" for c in self.spec.categories} for _ in segs]


def test_process_batch_quarantines_only_failing_rows(unloaded):
    clf = _Flaky(unloaded.spec)
    out = clf.process_batch(clf.preprocess(_rows(item_id=["a", "b", "c"], title=["fine", "POISON", None])))
    assert out.column(QREASON).to_pylist() == [None, "score_error", "no_usable_text"]
    assert out.column("qstage").to_pylist() == [None, "score", "preprocess"]
    assert out.column("category_scores").to_pylist()[0] is not None
    assert out.column("category_scores").to_pylist()[1] is None
    assert "cannot score this" in out.column("qdetail").to_pylist()[1]


def test_prepare_quarantines_rows_without_item_id(unloaded):
    out = unloaded.prepare(_rows(item_id=["a", None, " "], title=["fine", "fine", "fine"]))
    assert out.column(QREASON).to_pylist() == [None, "missing_item_id", "missing_item_id"]
    assert out.column("qstage").to_pylist() == [None, "preprocess", "preprocess"]


# ---- text-minilm-heads-v2: MLP heads stacked with a lexical TF-IDF model, same file format family


@pytest.fixture(scope="module")
def text_classifier_v2():
    from moderation.classifiers.base import build_classifier

    clf = build_classifier(load_model_registry()["text-minilm-heads-v2"])
    clf.setup("cpu")  # verifies the pinned SHA-256 of every artifact before loading
    return clf


def test_v2_registry_entry_and_heads_file():
    from safetensors.numpy import load_file

    from moderation.classifiers.text import _heads_categories
    from moderation.storage.artifacts import resolve_local

    reg = load_model_registry()
    v1, v2 = reg["text-minilm-heads-v1"], reg["text-minilm-heads-v2"]
    assert v2.kind == "minilm_heads" and v2.modality == "text"
    assert v2.categories == v1.categories == ("hate", "harassment", "spam")
    assert v2.digest != v1.digest
    path = resolve_local(v2.artifacts["heads"].uri)
    assert path.suffix == ".safetensors" and path.stat().st_size < 5_000_000
    assert tuple(_heads_categories(path.read_bytes())) == v2.categories
    tensors = load_file(path)
    assert {"hidden.weight", "weight", "lexical.weight", "combine.weight"} <= set(tensors)
    # Encoder artifacts are shared with v1: same pinned files.
    for name in ("encoder", "encoder_config", "tokenizer"):
        assert v2.artifacts[name] == v1.artifacts[name]


def test_v2_refuses_a_heads_file_with_another_digest(tmp_path):
    from moderation.classifiers.base import build_classifier
    from moderation.errors import ArtifactError
    from moderation.storage.artifacts import resolve_local

    spec = load_model_registry()["text-minilm-heads-v2"]
    ref = spec.artifacts["heads"]
    data = bytearray(resolve_local(ref.uri).read_bytes())
    data[-1] ^= 0x01
    bad = tmp_path / "text_heads_v2.safetensors"
    bad.write_bytes(bytes(data))
    tampered = spec.model_copy(update={"artifacts": {**spec.artifacts, "heads": ref.model_copy(update={"uri": str(bad)})}})
    with pytest.raises(ArtifactError, match="SHA-256"):
        build_classifier(tampered).setup("cpu")


def test_v2_separates_hateful_offensive_neutral_and_spam(text_classifier_v2):
    rows = text_classifier_v2.preprocess(_rows(
        item_id=["benign", "benign2", "spam", "hate", "offensive"],
        title=[
            "Songs about the summer rain and my grandmother's garden",
            "A quiet piano piece recorded live in Lisbon",
            "subscribe to my channel and win free gift cards click the link now",
            "all muslims are terrorists and should be deported from this country",
            "shut up you stupid bitch nobody wants to hear your fucking voice",
        ],
    ))
    scores, evidence = text_classifier_v2.score(rows)
    s = {i: sc for i, sc in zip(["benign", "benign2", "spam", "hate", "offensive"], scores)}
    for neutral in ("benign", "benign2"):
        assert s[neutral]["hate"] < 0.5 and s[neutral]["harassment"] < 0.5 and s[neutral]["spam"] < 0.5
        assert s["hate"]["hate"] > s[neutral]["hate"] + 0.3
        assert s["offensive"]["harassment"] > s[neutral]["harassment"] + 0.3
    assert s["spam"]["spam"] > 0.5 > s["hate"]["spam"]
    assert s["hate"]["hate"] > 0.5 and s["offensive"]["harassment"] > 0.5
    assert evidence[3]["hate"] == "title"
    assert set(scores[0]) == set(text_classifier_v2.spec.categories)


def test_v2_lexical_model_matches_scikit_learn_tfidf(text_classifier_v2):
    """The pickle-free lexical transform equals TfidfVectorizer fitted with the same vocabulary."""
    import numpy as np
    from sklearn.feature_extraction.text import TfidfVectorizer

    lex = text_classifier_v2._lexical
    texts = ["Subscribe to my channel!!", "you are a stupid idiot", "", "Café déjà vu, naïve résumé"]
    got = lex.transform(texts).toarray()
    start = 0
    for vec, idf in zip(lex._count, lex.idfs):
        ref = TfidfVectorizer(vocabulary=vec.vocabulary, analyzer=vec.analyzer, ngram_range=vec.ngram_range,
                              lowercase=vec.lowercase, token_pattern=vec.token_pattern, sublinear_tf=True,
                              dtype=np.float32)
        ref.fit(["x"])  # sets up the fixed vocabulary; idf replaced below
        ref.idf_ = idf
        block = ref.transform(texts).toarray()
        assert np.allclose(got[:, start : start + len(idf)], block, atol=1e-6)
        start += len(idf)
    assert start == got.shape[1]


#: text-e5-heads-v1 (the same encoder, frozen) is scored by tests/classifiers/test_cascade.py and test_e5_port.py.
MULTILINGUAL = ["text-muse-heads-v1", "text-e5-ft-v1"]


@pytest.fixture(scope="module", params=MULTILINGUAL)
def multilingual_classifier(request):
    from moderation.classifiers.base import build_classifier

    clf = build_classifier(load_model_registry()[request.param])
    clf.setup("cpu")
    return clf


# (corpus, category, language) -> ROC-AUC floor per model: the shipped heads on HELDOUT_ROWS rows
# of each corpus's held-out test split (a fixed sample), floors about 0.05 under what
# scripts/train_multilingual_heads.py measured (model cards): a regression check per language with
# data, not a goal. The model cards and `moderation evaluate` report the full splits.
HELDOUT_ROWS = 160
HELDOUT_FLOORS = {
    ("hatexplain", "hate", "en"): {"text-muse-heads-v1": 0.78, "text-e5-ft-v1": 0.82},
    ("ftr_fr", "hate", "fr"): {"text-muse-heads-v1": 0.72, "text-e5-ft-v1": 0.79},
    ("offendes", "harassment", "es"): {"text-muse-heads-v1": 0.68, "text-e5-ft-v1": 0.75},
    ("germeval2019", "harassment", "de"): {"text-muse-heads-v1": 0.62, "text-e5-ft-v1": 0.71},
    ("told_br", "harassment", "pt"): {"text-muse-heads-v1": 0.64, "text-e5-ft-v1": 0.70},
    ("sdcnl_suicide", "self_harm", "en"): {"text-muse-heads-v1": 0.58, "text-e5-ft-v1": 0.55},
    ("youtube_spam", "spam", "en"): {"text-muse-heads-v1": 0.93, "text-e5-ft-v1": 0.94},
}
#: functional-suite threats against every other case, violence ROC-AUC floor per model
THREAT_FLOORS = {"text-muse-heads-v1": 0.82, "text-e5-ft-v1": 0.86}


def test_multilingual_model_separates_categories_on_held_out_text(multilingual_classifier, data_dir):
    import random

    from sklearn.metrics import roc_auc_score

    from moderation.evaluation.corpora import read_corpus

    clf = multilingual_classifier
    cats = list(clf.spec.categories)
    assert cats == ["hate", "harassment", "violence", "self_harm", "spam"]
    for (corpus, category, language), floors in HELDOUT_FLOORS.items():
        rows = [r for r in read_corpus(data_dir, corpus) if r.split == "test" and r.language == language]
        rows = random.Random(0).sample(rows, min(HELDOUT_ROWS, len(rows)))
        y = [r.categories[category] for r in rows]
        p = clf.predict_proba([normalize_text(r.text) for r in rows])[:, cats.index(category)]
        assert roc_auc_score(y, p) > floors[clf.spec.model_id], (clf.spec.model_id, corpus, category)


def test_multilingual_model_scores_threats_as_violence(multilingual_classifier):
    """violence has no real training data in the shipped weights (project seed statements
    only): on the functional suite's threats against every other case, in five languages."""
    from sklearn.metrics import roc_auc_score

    from moderation.evaluation.functional import build_functional_suite

    clf = multilingual_classifier
    suite = build_functional_suite().to_pylist()[::3]  # every third case: 1,610 (400 of them threats x 1/3)
    p = clf.predict_proba([r["text"] for r in suite])[:, list(clf.spec.categories).index("violence")]
    auc = roc_auc_score([r["label_violence"] for r in suite], p)
    assert auc > THREAT_FLOORS[clf.spec.model_id], auc


def test_multilingual_model_refuses_heads_for_other_categories(tmp_path):
    import hashlib

    import numpy as np
    from safetensors.numpy import save

    from moderation.classifiers.base import build_classifier
    from moderation.config import ArtifactRef

    spec = load_model_registry()["text-muse-heads-v1"]
    data = save({"weight": np.zeros((3, 512), np.float32), "bias": np.zeros(3, np.float32)},
                metadata={"categories": '["hate", "harassment", "spam"]'})
    (tmp_path / "h.safetensors").write_bytes(data)
    arts = {**spec.artifacts, "heads": ArtifactRef(uri=str(tmp_path / "h.safetensors"), sha256=hashlib.sha256(data).hexdigest())}
    clf = build_classifier(spec.model_copy(update={"artifacts": arts}))
    with pytest.raises(ValueError, match="heads file holds categories"):
        clf.setup("cpu")
