from __future__ import annotations

import pyarrow as pa
import pytest

from moderation.catalog import to_work_rows
from moderation.classifiers.base import QREASON
from moderation.classifiers.text import MiniLMHeadsClassifier, normalize_text, text_segments
from moderation.config import load_model_registry


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


def test_max_over_segments_finds_text_buried_in_lyrics(text_classifier):
    body = " ".join(["we were dancing in the kitchen light"] * 40) + " check out my channel subscribe and win a free iphone"
    rows = text_classifier.preprocess(_rows(item_id=["x"], title=["Kitchen Light"], body_text=[body]))
    scores, evidence = text_classifier.score(rows)
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
