"""The demo's long-form items (issue 13, point 6): a passage planted deep inside a transcript of
thousands of words, or spoken at minute 6 of an 8-minute episode, is found; the evidence names the
window that holds it; coverage is whole, and visibly partial past the run's limits.

The items are the demo catalog's own (``moderation.demo.catalog``): generated talk, the show's intro and
ad read, and a passage of held-out labelled posts (HateXplain test and validation, never trained
on) at about word 5,000 or from second 360. "Found" is the policy's review threshold
(catalog-safety v1, the policy of text-minilm-heads-v1) in a category the passage is labelled with.
The audio tests (Whisper over 8 minutes, about two minutes on 2 cores) are marked integration.
"""

from __future__ import annotations

import datetime as dt
import random
import re
from collections import Counter

import numpy as np
import pyarrow as pa
import pytest

from moderation.classifiers.base import RunContext
from moderation.classifiers.text import MiniLMHeadsClassifier, normalize_text
from moderation.classifiers.windows import LIMIT_WORDS
from moderation.config import load_model_registry, load_policy
from moderation.demo.catalog import (
    LONG_CLIP_SECONDS,
    LONG_FORM_WORDS,
    PLANT_AT_SECONDS,
    PLANT_AT_WORD,
    build_demo_table,
    long_speech_clip,
    long_transcript,
    make_show,
)
from moderation.scoring.chunks import split_results
from moderation.storage.catalog import to_work_rows
from tests.conftest import POLICY_V1

REVIEW = {c: rule.review_threshold for c, rule in load_policy(POLICY_V1).policy.categories.items()}
WINDOW = re.compile(r"^body_text\[(\d+)\]@(\d+)-(\d+)$")
AUDIO_WINDOW = re.compile(r"^window (\d+(?:\.\d+)?)-(\d+(?:\.\d+)?)s\b")


def _long(rows: list[dict]) -> list[dict]:
    return [r for r in rows if r["planted_unit"] or len((r["body_text"] or "").split()) >= LONG_FORM_WORDS[0]]


def _score(clf, rows: list[dict], modality: str) -> list[dict]:
    cols = ("item_id", "item_type", "title", "description", "body_text", "audio_clip")
    work = to_work_rows(pa.Table.from_pylist([{c: r[c] for c in cols} for r in rows]), modality)
    out = clf.process_batch(clf.prepare(work))
    scores, quarantine = split_results(out, run_id="r", model=clf.spec, now=dt.datetime.now(dt.timezone.utc))
    assert quarantine.num_rows == 0, quarantine.to_pylist()
    out = scores.to_pylist()
    for row in out:
        row["category_scores"], row["evidence"] = dict(row["category_scores"]), dict(row["evidence"])
    return out


def _found(scored: dict, categories: list[str]) -> list[str]:
    return [c for c in categories if scored["category_scores"][c] >= REVIEW[c]]


# ---- the builders and the demo catalog, no model ------------------------------------------------


def test_long_transcript_plants_at_a_sentence_boundary_past_the_word():
    plant = "this is the planted passage, which the test looks for."
    show = make_show(random.Random(1))
    a = long_transcript(random.Random(2), words=6_000, show=show, plant=plant, at_word=5_000)
    assert a == long_transcript(random.Random(2), words=6_000, show=show, plant=plant, at_word=5_000)
    assert a.words == 6_000 + len(plant.split()) == len(a.text.split())
    assert normalize_text(a.text) == a.text and a.text[a.planted_start : a.planted_end] == plant
    assert 5_000 <= len(a.text[: a.planted_start].split()) < 5_000 + 30  # at the next sentence's start
    assert a.text[a.planted_start - 2 : a.planted_start] == ". "
    assert a.text.startswith(show.intro) and a.text.count(show.ad_read) == 3  # at words 1,500, 3,000 and 4,500
    b = long_transcript(random.Random(2), words=3_000)
    assert b.words == 3_000 and b.planted_start is None
    with pytest.raises(ValueError, match="at_word"):
        long_transcript(random.Random(2), words=3_000, plant=plant, at_word=3_000)


def test_demo_long_form_items_carry_their_plants_position(data_dir):
    table, _ = build_demo_table(items=2000, data_dir=data_dir)
    rows = table.to_pylist()
    long = _long(rows)
    assert len(long) == 8  # one per 250 items, in place of ordinary ones: the catalog keeps its size
    assert table.num_rows == 2000 and len({r["item_id"] for r in rows}) == 2000
    planted = [r for r in long if r["planted_unit"]]
    assert len(planted) == 4 and {r["source_label"] for r in planted} >= {"hatespeech", "offensive", "spam"}
    for r in long:
        body = r["body_text"]
        assert r["item_type"] in ("episode", "audiobook") and normalize_text(body) == body
        assert LONG_FORM_WORDS[0] <= len(body.split()) <= LONG_FORM_WORDS[1] + 300
    for r in planted:
        a, b = int(r["planted_start"]), int(r["planted_end"])
        assert (r["planted_field"], r["planted_unit"]) == ("body_text", "chars") and r["expected_categories"]
        assert r["planted_start"] == a and len(r["body_text"][a:b].split()) >= 100  # a passage of held-out posts
        assert abs(len(r["body_text"][:a].split()) - PLANT_AT_WORD) <= 250
        assert r["source_dataset"] in ("hatexplain", "youtube_spam")
    # Episodes of one show repeat its intro and ad read (what a segment cache would find again).
    shows = Counter(r["title"].rsplit(",", 1)[0] for r in long)
    assert max(shows.values()) == 4
    show = max(shows, key=shows.get)
    episodes = [r["body_text"] for r in long if r["title"].startswith(show + ",")]
    intro = episodes[0][:200]
    assert all(e.startswith(intro) for e in episodes)
    # Nothing else moved: the other rows are the ones a catalog without long-form items has.
    without, _ = build_demo_table(items=2000, data_dir=data_dir, long_form=0)
    ids = {r["item_id"] for r in long}
    others = [r for r in rows if r["item_id"] not in ids]
    before = {r["item_id"]: r for r in without.to_pylist()}
    assert all(before[r["item_id"]] == r for r in others) and len(others) == 1992
    assert all(r["planted_start"] is None for r in others)


def test_demo_long_form_items_without_shared_data():
    table, used = build_demo_table(items=500, data_dir=None)
    long = _long(table.to_pylist())
    assert not used and len(long) == 2
    (planted,) = [r for r in long if r["planted_unit"]]
    a, b = int(planted["planted_start"]), int(planted["planted_end"])
    assert planted["source_label"] == "spam" and "subscribe" in planted["body_text"][a:b]


def test_long_speech_clip_speaks_the_plant_at_the_second_given(tmp_path):
    from faster_whisper import decode_audio

    from moderation.demo.catalog import _ESPEAK

    if not _ESPEAK:
        pytest.skip("espeak-ng is not installed")
    clip = long_speech_clip(random.Random(3), tmp_path / "c.wav", seconds=60.0, plant="this is the planted sentence",
                            at_seconds=40.0)
    pcm = decode_audio(str(clip.path))
    assert clip.seconds == 60.0 and pcm.size == 60 * 16_000
    assert clip.planted_start == 40.0 and 40.5 < clip.planted_end < 43.0
    loud = np.abs(pcm) > 1e-2
    s, e = int(clip.planted_start * 16_000), int(clip.planted_end * 16_000)
    assert not loud[s - 8_000 : s - 80].any() and loud[s : s + 1_600].any()  # half a second of silence, then speech
    assert not loud[e + 80 : e + 8_000 - 80].any() and loud[: s - 8_000].mean() > 0.05  # talk before it
    with pytest.raises(ValueError, match="does not fit"):
        long_speech_clip(random.Random(3), tmp_path / "d.wav", seconds=41.0, plant="this is the planted sentence",
                         at_seconds=40.0)


# ---- the real MiniLM heads read the whole transcript --------------------------------------------


@pytest.fixture(scope="module")
def long_items(data_dir) -> tuple[dict, dict]:
    """The demo's first two long-form transcripts: a planted one (a passage of HateXplain hate
    speech at about word 5,000) and an unplanted one."""
    table, _ = build_demo_table(items=200, data_dir=data_dir, long_form=2, long_audio=0, cover_share=0.0,
                                audio_share=0.0)
    long = _long(table.to_pylist())
    (planted,), (benign,) = ([r for r in long if bool(r["planted_unit"]) == p] for p in (True, False))
    return planted, benign


def test_a_passage_deep_in_a_long_transcript_is_found_in_its_window(text_classifier, long_items):
    planted, benign = long_items
    hit, clean = _score(text_classifier, [planted, benign], "text")
    found = _found(hit, planted["expected_categories"])
    assert found, (hit["category_scores"], planted["expected_categories"])
    assert not _found(clean, list(REVIEW)), clean["category_scores"]
    body, ps, pe = planted["body_text"], planted["planted_start"], planted["planted_end"]
    for category in found:
        k, a, b = map(int, WINDOW.match(hit["evidence"][category]).groups())
        # The window is on the plant: at least half of it, or of the plant, is planted text.
        assert min(b, pe) - max(a, ps) >= 0.5 * min(b - a, pe - ps), (a, b, ps, pe)
        assert k > 40 and len(body[:a].split()) > PLANT_AT_WORD - 200  # deep inside: window 40 ends near word 3,500
    for row, item in ((hit, planted), (clean, benign)):
        words = sum(len(normalize_text(item[f]).split()) for f in ("title", "description", "body_text"))
        assert row["units_total"] == row["units_scored"] == words and row["unit"] == "words"
        assert row["coverage"] == 1.0 and row["coverage_reason"] is None


def test_a_long_transcript_past_the_word_limit_is_visibly_partial(long_items):
    planted, _ = long_items
    clf = MiniLMHeadsClassifier(load_model_registry()["text-minilm-heads-v1"], context=RunContext(max_item_words=1_000))
    clf.setup("cpu")
    (row,) = _score(clf, [planted], "text")
    assert row["units_scored"] == 1_000 < row["units_total"] and row["coverage"] < 0.2
    assert row["coverage_reason"] == LIMIT_WORDS
    assert not _found(row, planted["expected_categories"])  # the passage lies past word 1,000: never read
    for evidence in row["evidence"].values():
        m = WINDOW.match(evidence)
        assert m is None or int(m.group(3)) < planted["planted_start"]


# ---- speech: Whisper over an 8-minute episode ---------------------------------------------------


@pytest.fixture(scope="module")
def long_clip(data_dir, tmp_path_factory) -> dict:
    """The demo's first long speech clip: 8 minutes of espeak-ng talk with a passage of HateXplain
    hate speech spoken from second 360."""
    from moderation.demo.catalog import _ESPEAK

    if not _ESPEAK:
        pytest.skip("espeak-ng is not installed")
    media = tmp_path_factory.mktemp("long-form-media")
    table, _ = build_demo_table(items=100, data_dir=data_dir, media_dir=media, long_form=0, long_audio=1,
                                cover_share=0.0, audio_share=0.0)
    (row,) = [r for r in table.to_pylist() if r["planted_unit"] == "seconds"]
    assert row["audio_clip"].startswith(str(media.resolve()))
    assert (row["planted_field"], row["planted_start"]) == ("audio_clip", PLANT_AT_SECONDS)
    return row


def _speech_classifier(**context):
    from moderation.classifiers.audio import SpeechTextClassifier

    clf = SpeechTextClassifier(load_model_registry()["audio-speech-text-v1"], context=RunContext(**context))
    clf.setup("cpu")
    return clf


@pytest.mark.integration
def test_a_passage_spoken_at_minute_6_of_an_8_minute_episode_is_found(long_clip):
    (row,) = _score(_speech_classifier(), [long_clip], "audio")
    found = _found(row, long_clip["expected_categories"])
    assert found, (row["category_scores"], row["evidence"])
    for category in found:
        a, b = map(float, AUDIO_WINDOW.match(row["evidence"][category]).groups())
        assert a - 0.5 <= long_clip["planted_start"] < b, row["evidence"][category]
    assert row["units_total"] == row["units_scored"] == int(LONG_CLIP_SECONDS) and row["unit"] == "seconds"
    assert row["coverage"] == 1.0 and row["coverage_reason"] is None


@pytest.mark.integration
def test_an_episode_past_the_seconds_limit_is_visibly_partial(long_clip):
    (row,) = _score(_speech_classifier(max_item_seconds=90), [long_clip], "audio")
    assert (row["units_scored"], row["units_total"], row["unit"]) == (90, int(LONG_CLIP_SECONDS), "seconds")
    assert row["coverage"] < 1.0 and row["coverage_reason"] == "limit_seconds"
    assert not _found(row, long_clip["expected_categories"])  # spoken at minute 6: never heard
    for evidence in row["evidence"].values():
        m = AUDIO_WINDOW.match(evidence)
        assert m is None or float(m.group(2)) <= 90.0
