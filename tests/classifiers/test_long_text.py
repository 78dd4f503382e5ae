"""Long-form text scored whole (issue 13): token windows, the word limit, coverage, re-scans.

The long texts are real: conversational English from the UCI SMS Spam Collection's ham messages
(shared/data/text/sms_spam), laid end to end into a transcript of several thousand words, with
a hateful passage (three sentences, about 50 tokens) planted at word 5,000.

What the real MiniLM heads find depends on how much of a window the violation fills: each window's
embedding is the mean over its tokens. Alone, the first planted sentence scores 0.86 for hate; one
sentence of 17 tokens inside a 126-token window of chatter scores about 0.3 (not found), the
three-sentence passage 0.6 to 0.8 depending on where the window boundaries fall. The test plants
the passage, whose position is fixed, and checks it reaches the review threshold.
"""

from __future__ import annotations

import datetime as dt

import pyarrow as pa
import pytest

from moderation.classifiers.base import RunContext
from moderation.classifiers.text import MiniLMHeadsClassifier, normalize_text
from moderation.classifiers.windows import (
    LIMIT_CHARS,
    LIMIT_WORDS,
    WordWindower,
    index_windows,
    limit_words,
    word_spans,
)
from moderation.config import RunProfile, load_model_registry
from moderation.runs import RunRecord, write_run
from moderation.scoring.chunks import split_results
from moderation.storage.catalog import to_work_rows

PLANTED_SENTENCES = (
    "Muslims are filthy terrorists and every one of them should be thrown out of this country.",
    "I hate all black people, they are subhuman animals and should be exterminated.",
    "All muslims are terrorists and should be deported from this country.",
)
PLANTED = " ".join(PLANTED_SENTENCES)
PLANT_AT = 5_000
REVIEW = 0.70  # catalog-safety v1's hate review threshold


@pytest.fixture(scope="module")
def transcript(data_dir) -> str:
    """6,500 words of real conversation (about a 45-minute episode's transcript). The collection's
    ham holds a few crude messages; one slur near word 6,850 (hate 0.85 in its window) lies
    beyond the words taken."""
    lines = (data_dir / "text" / "sms_spam" / "SMSSpamCollection.tsv").read_text(encoding="utf-8").splitlines()[1:]
    ham = [text for label, _, text in (line.partition("\t") for line in lines) if label == "ham"]
    words = " ".join(ham).split()
    return " ".join(words[:6_500])


@pytest.fixture(scope="module")
def planted(transcript) -> str:
    words = transcript.split(" ")
    return " ".join(words[:PLANT_AT] + PLANTED.split(" ") + words[PLANT_AT:])


def _rows(**cols) -> pa.Table:
    n = len(cols["item_id"])
    cols.setdefault("item_type", ["episode"] * n)
    return to_work_rows(pa.table(cols), "text")


@pytest.fixture(scope="module")
def spec():
    return load_model_registry()["text-minilm-heads-v1"]


@pytest.fixture(scope="module")
def minilm(spec) -> MiniLMHeadsClassifier:
    clf = MiniLMHeadsClassifier(spec)
    clf.setup("cpu")
    return clf


# ---- windows, pure ----------------------------------------------------------------------


def test_index_windows_cover_every_unit_with_the_overlap():
    assert index_windows(0, size=5, overlap=2) == []
    assert index_windows(5, size=5, overlap=2) == [(0, 5)]
    assert index_windows(11, size=5, overlap=2) == [(0, 5), (3, 8), (6, 11)]
    assert index_windows(12, size=5, overlap=2) == [(0, 5), (3, 8), (6, 11), (9, 12)]
    for n in range(1, 60):
        wins = index_windows(n, size=7, overlap=3)
        covered = {i for a, b in wins for i in range(a, b)}
        assert covered == set(range(n)) and all(b - a <= 7 for a, b in wins)
        assert all(wins[k][1] - wins[k + 1][0] == 3 for k in range(len(wins) - 1))
    with pytest.raises(ValueError):
        index_windows(3, size=4, overlap=4)


def test_limit_words_keeps_field_order_and_counts():
    fields = {"title": "one two", "description": "three", "body_text": "four five six seven"}
    cut, total, kept = limit_words(fields, max_words=5)
    assert (total, kept) == (7, 5)
    assert cut == {"title": "one two", "description": "three", "body_text": "four five"}
    assert limit_words(fields, max_words=100)[0] == fields


def test_word_windows_for_encoders_without_a_token_limit():
    text = " ".join(f"w{i}" for i in range(400))
    spans = WordWindower(size=160, overlap=16).spans([text])[0]
    words = [text[a:b].split(" ") for a, b in spans]
    assert [len(w) for w in words] == [160, 160, 112]
    assert words[0][-16:] == words[1][:16] and words[-1][-1] == "w399"


# ---- token windows with MiniLM's own tokenizer ------------------------------------------------


def test_token_windows_fit_the_model_and_overlap_by_16_tokens(spec, transcript):
    clf = MiniLMHeadsClassifier(spec)  # the tokenizer only: no weights loaded
    win = clf.windower()
    assert (win.max_tokens, win.content, win.overlap) == (128, 126, 16)
    text = normalize_text(transcript)
    spans = win.spans([text])[0]
    enc = win.tokenizer.encode(text, add_special_tokens=False)
    assert len(spans) >= len(enc.ids) // 110
    counts = win.token_count([text[a:b] for a, b in spans])
    assert max(counts) <= 128  # [CLS] + content + [SEP]: nothing for the encoder to truncate
    starts = {a for a, _ in enc.offsets}
    for k in range(len(spans) - 1):
        # Window k + 1 starts 110 tokens after window k: its first 16 tokens are k's last 16.
        assert spans[k + 1][0] == enc.offsets[110 * (k + 1)][0] and spans[k + 1][0] in starts
        shared = [o for o in enc.offsets if spans[k + 1][0] <= o[0] and o[1] <= spans[k][1]]
        assert len(shared) == 16
    assert spans[0][0] == 0 and spans[-1][1] == len(text)


def test_token_windows_split_a_hostile_unbroken_string(spec):
    win = MiniLMHeadsClassifier(spec).windower()
    text = "\u00e9,z." * 1500  # 6,000 characters without a space: 6,000 tokens
    spans = win.spans([text])[0]
    assert len(spans) > 1 and max(win.token_count([text[a:b] for a, b in spans])) <= 128
    assert spans[0][0] == 0 and spans[-1][1] == len(text)


def test_window_names_carry_the_field_and_offsets(spec, transcript):
    clf = MiniLMHeadsClassifier(spec)
    rows = clf.preprocess(_rows(item_id=["a"], title=["Episode 12"], description=["A chat"], body_text=[transcript]))
    names = rows.column("segment_names").to_pylist()[0]
    segs = rows.column("segments").to_pylist()[0]
    body = normalize_text(transcript)
    assert names[:2] == ["title", "description"]
    assert len(names) > 50  # no cap on windows per item: about 9,000 tokens in windows of 126
    for k, (name, seg) in enumerate(zip(names[2:], segs[2:])):
        head, _, span = name.partition("@")
        a, b = map(int, span.split("-"))
        assert head == f"body_text[{k}]" and body[a:b] == seg


# ---- the real model finds what lies deep inside -----------------------------------------------


def _score(clf: MiniLMHeadsClassifier, rows: pa.Table):
    out = clf.process_batch(rows)
    model = clf.spec
    scores, quarantine = split_results(out, run_id="r", model=model, now=dt.datetime.now(dt.timezone.utc))
    assert quarantine.num_rows == 0
    out = scores.to_pylist()
    for row in out:
        row["category_scores"], row["evidence"] = dict(row["category_scores"]), dict(row["evidence"])
    return out


def test_a_sentence_at_word_5000_is_found_and_its_window_named(minilm, transcript, planted):
    rows = minilm.prepare(_rows(item_id=["clean", "planted"], title=["Episode 12"] * 2, body_text=[transcript, planted]))
    clean, hit = _score(minilm, rows)
    assert hit["category_scores"]["hate"] >= REVIEW > clean["category_scores"]["hate"]
    name = hit["evidence"]["hate"]
    assert name.startswith("body_text[")
    a, b = map(int, name.partition("@")[2].split("-"))
    body = normalize_text(planted)
    at = body.index(PLANTED)
    assert a < at + len(PLANTED) and at < b  # the window overlaps the planted passage ...
    assert any(sentence in body[a:b] for sentence in PLANTED_SENTENCES)  # ... and holds a sentence of it whole
    words = 2 + len(transcript.split(" "))  # the title's and the body's
    assert clean["units_total"] == clean["units_scored"] == words and clean["unit"] == "words"
    assert hit["units_total"] == hit["units_scored"] == words + len(PLANTED.split(" "))
    assert hit["coverage"] == 1.0 and hit["coverage_reason"] is None


def test_an_item_beyond_the_word_limit_is_visibly_partial(spec, planted):
    clf = MiniLMHeadsClassifier(spec, context=RunContext(max_item_words=3_000))
    rows = clf.preprocess(_rows(item_id=["long", "short"], title=["Episode 12", "Short"],
                                body_text=[planted, "just a few words"]))
    names = rows.column("segment_names").to_pylist()[0]
    last = rows.column("segments").to_pylist()[0][-1]
    assert names[-1].startswith("body_text[")
    assert last.split(" ")[-1] == planted.split(" ")[2_997]  # title (2 words) + 2,998 body words
    long, short = (dict(zip(["units_total", "units_scored", "unit", "coverage_reason"], r)) for r in zip(
        *(rows.column(c).to_pylist() for c in ("units_total", "units_scored", "unit", "coverage_reason"))))
    assert long["units_scored"] == 3_000 < long["units_total"] and long["coverage_reason"] == LIMIT_WORDS
    assert short["units_scored"] == short["units_total"] == 5 and short["coverage_reason"] is None


def test_a_field_beyond_max_field_chars_is_visibly_partial(spec):
    clf = MiniLMHeadsClassifier(spec.model_copy(update={"preprocessing": {**spec.preprocessing, "max_field_chars": 50}}))
    rows = clf.preprocess(_rows(item_id=["a"], title=["Fine"], body_text=[" ".join(["word"] * 40)]))
    total, scored, reason = (rows.column(c)[0].as_py() for c in ("units_total", "units_scored", "coverage_reason"))
    assert (total, reason) == (41, LIMIT_CHARS) and scored == 1 + 10


def test_text_hidden_past_max_field_chars_is_no_usable_text(spec):
    from moderation.classifiers.base import QDETAIL, QREASON

    clf = MiniLMHeadsClassifier(spec.model_copy(update={"preprocessing": {**spec.preprocessing, "max_field_chars": 50}}))
    rows = clf.preprocess(_rows(item_id=["a"], body_text=[" " * 60 + "words after the blank"]))
    assert rows.column(QREASON)[0].as_py() == "no_usable_text" and "first 50 characters" in rows.column(QDETAIL)[0].as_py()


def test_windows_longer_than_the_encoder_reads_are_refused(spec):
    from moderation.errors import ConfigError

    with pytest.raises(ConfigError, match="window_tokens"):
        MiniLMHeadsClassifier(spec.model_copy(update={"preprocessing": {**spec.preprocessing, "window_tokens": 256}}))


def test_the_profile_default_is_generous():
    assert RunProfile().max_item_words == 200_000 == RunContext().max_item_words
    assert word_spans(" a  bc ") == [(1, 2), (4, 6)]


# ---- a re-scan re-scores what a lower limit cut ---------------------------------------------


def test_a_rescan_rescores_pairs_cut_by_a_lower_limit(tmp_path, spec, transcript):
    from deltalake import write_deltalake

    from moderation.schemas import CATALOG_SCHEMA
    from moderation.scoring.rescan import pinned_versions, plan_rescan
    from moderation.storage.catalog import open_catalog
    from moderation.storage.lake import Lake

    catalog = str(tmp_path / "catalog")
    items = {"long": transcript, "short": "a short lyric"}
    write_deltalake(catalog, pa.Table.from_pylist(
        [{"item_id": i, "item_type": "episode", "title": "T", "body_text": b} for i, b in items.items()],
        schema=CATALOG_SCHEMA), configuration={"delta.enableChangeDataFeed": "true"})
    lake = Lake(str(tmp_path / "lake"))
    now = dt.datetime.now(dt.timezone.utc)
    write_run(lake, RunRecord(run_id="base", kind="backfill", status="succeeded", catalog_uri=catalog,
                              catalog_version=0, model_ids=[spec.model_id], model_digests=[spec.digest],
                              max_item_words=1_000, started_at=now, ended_at=now))
    low = MiniLMHeadsClassifier(spec, context=RunContext(max_item_words=1_000))
    rows = low.preprocess(_rows(item_id=list(items), title=["T", "T"], body_text=list(items.values())))
    fake = rows.append_column("category_scores", pa.array([[("hate", 0.1)]] * 2, pa.map_(pa.string(), pa.float32())))
    fake = fake.append_column("evidence", pa.array([[("hate", "title")]] * 2, pa.map_(pa.string(), pa.string())))
    scores, _ = split_results(fake, run_id="base", model=spec, now=dt.datetime.now(dt.timezone.utc))
    assert scores.column("coverage_reason").to_pylist() == [LIMIT_WORDS, None]
    lake.append_chunk("scores", scores, app_id="test/base", version=0)

    def selected(limit: int, source: str) -> list[str]:
        plan = plan_rescan(open_catalog(catalog), [spec], lake, context=RunContext(lake_root=lake.root, max_item_words=limit),
                           versions=pinned_versions(lake), change_source=source)
        assert plan.change_source == source
        return sorted(plan.selections[spec.model_id].keep_ids.to_pylist())

    for source in ("anti_join", "cdf"):  # cdf: the feed lists no change, the limit alone selects
        assert selected(1_000, source) == []  # same limit: nothing changed
        assert selected(500, source) == []  # a lower limit scores no more of it
        assert selected(200_000, source) == ["long"]  # raised: the cut item again, the whole one not


def test_a_lake_from_before_coverage_is_read_and_evolved(tmp_path, spec):
    """scores written before issue 13 lack the coverage columns: a re-scan's baseline reads them
    as not cut, and the next append adds the columns (older rows: null)."""
    from deltalake import write_deltalake

    from moderation.schemas import SCORES_SCHEMA
    from moderation.scoring.rescan import load_baseline, pinned_versions
    from moderation.storage.lake import Lake

    old_schema = pa.schema([f for f in SCORES_SCHEMA if f.name not in
                            ("units_total", "units_scored", "unit", "coverage", "coverage_reason")])
    now = dt.datetime.now(dt.timezone.utc)
    row = {"run_id": "old", "item_id": "a", "item_type": "episode", "modality": "text", "model_id": spec.model_id,
           "model_digest": spec.digest, "content_hash": "h", "category_scores": [("hate", 0.1)],
           "evidence": [("hate", "title")], "scored_at": now}
    lake = Lake(str(tmp_path / "lake"))
    write_deltalake(lake.uri("scores"), pa.Table.from_pylist([row], schema=old_schema))
    base = load_baseline(lake, pinned_versions(lake), [spec])
    assert base["cut_at"].isna().all() and len(base) == 1
    later = now + dt.timedelta(seconds=1)
    new = {**row, "run_id": "new", "scored_at": later, "units_total": 9, "units_scored": 4, "unit": "words",
           "coverage": 4 / 9, "coverage_reason": LIMIT_WORDS}
    lake.append_chunk("scores", pa.Table.from_pylist([new], schema=SCORES_SCHEMA), app_id="test/new", version=0)
    got = {r["run_id"]: r for r in lake.read("scores").to_pylist()}
    assert got["old"]["units_total"] is None and got["new"]["coverage_reason"] == LIMIT_WORDS
    assert load_baseline(lake, pinned_versions(lake), [spec])["cut_at"].tolist() == [4.0]


# ---- the windowing of before issue 13, kept to measure against (text_windowing: legacy) -------


def test_legacy_windowing_is_part_of_the_digest_and_off_by_default(spec):
    from moderation.classifiers.windows import with_windowing

    registry = load_model_registry()
    assert RunProfile().text_windowing == "tokens"
    assert with_windowing(spec, "tokens") is spec and MiniLMHeadsClassifier(spec).windowing == "tokens"
    legacy = with_windowing(spec, "legacy")
    assert legacy.preprocessing["windowing"] == "legacy" and legacy.digest != spec.digest
    assert "windowing" not in spec.preprocessing  # the registry entry itself is untouched
    for model_id in ("text-muse-heads-v1", "text-e5-ft-v1", "text-cascade-muse-e5-v1", "text-profanity-check-v1",
                     "image-ocr-text-v1"):
        assert with_windowing(registry[model_id], "legacy").digest != registry[model_id].digest, model_id
    for model_id in ("image-open-nsfw-v1", "audio-speech-text-v1"):  # no text windows of their own
        assert with_windowing(registry[model_id], "legacy") is registry[model_id]


def test_an_unknown_windowing_is_refused(spec):
    from moderation.errors import ConfigError

    with pytest.raises(ConfigError, match="windowing"):
        MiniLMHeadsClassifier(spec.model_copy(update={"preprocessing": {**spec.preprocessing, "windowing": "whole"}}))


def test_legacy_reads_six_truncated_segments_and_says_so(spec, transcript):
    from moderation.classifiers.windows import LEGACY_WINDOWING, with_windowing

    clf = MiniLMHeadsClassifier(with_windowing(spec, "legacy"))
    rows = clf.preprocess(_rows(item_id=["long", "short"], title=["Episode 12", "Short"], description=["A chat", None],
                                body_text=[transcript, "just a few words"]))
    segs, names = (rows.column(c).to_pylist() for c in ("segments", "segment_names"))
    assert names[0][:2] == ["title", "description"] and len(segs[0]) == 6  # title, description, four body windows
    body = normalize_text(transcript)
    win = clf.windower()
    read = 4  # title and description
    for k, (name, seg) in enumerate(zip(names[0][2:], segs[0][2:])):
        a, b = map(int, name.partition("@")[2].split("-"))
        assert name.startswith(f"body_text[{k}]@") and body[a:b] == seg
        # Each 160-word segment, cut where MiniLM's 128 tokens end: the encoder reads it all.
        assert len(seg.split(" ")) < 160 and win.token_count([seg])[0] <= 128
        whole = body[a:].split(" ")[:160]
        assert win.token_count([" ".join(whole)])[0] > 128
        words = seg.split(" ")
        read += len(words) - (words[-1] != whole[len(words) - 1])  # a word cut by the truncation is not read
    total, scored, reason = (rows.column(c).to_pylist() for c in ("units_total", "units_scored", "coverage_reason"))
    assert total[0] == 4 + len(transcript.split(" ")) and reason[0] == LEGACY_WINDOWING
    assert scored[0] == read <= 4 + 4 * 126  # at most one word per token read
    assert total[1] == scored[1] == 5 and reason[1] is None  # a short item is read whole either way


def test_legacy_word_windows_read_four_body_segments_whole(transcript):
    from moderation.classifiers.text import E5HeadsClassifier
    from moderation.classifiers.windows import LEGACY_WINDOWING, with_windowing

    e5 = load_model_registry()["text-e5-ft-v1"]
    clf = E5HeadsClassifier(with_windowing(e5, "legacy"), context=RunContext(max_item_words=3_000))
    rows = clf.preprocess(_rows(item_id=["long"], title=["Episode 12"], body_text=[transcript]))
    names = rows.column("segment_names")[0].as_py()
    assert names[0] == "title" and [n.partition("@")[0] for n in names[1:]] == [f"body_text[{k}]" for k in range(5)]
    assert [len(s.split(" ")) for s in rows.column("segments")[0].as_py()[1:]] == [160] * 5
    total, scored, reason = (rows.column(c)[0].as_py() for c in ("units_total", "units_scored", "coverage_reason"))
    # Both cuts are named: the run's word limit first, then what the old windowing left unread.
    assert (total, scored, reason) == (2 + len(transcript.split(" ")), 2 + 5 * 160, f"{LIMIT_WORDS},{LEGACY_WINDOWING}")


def test_legacy_misses_what_lies_at_word_5000(minilm, spec, planted):
    from moderation.classifiers.windows import with_windowing

    legacy = MiniLMHeadsClassifier(with_windowing(spec, "legacy"))
    legacy.setup("cpu")
    rows = _rows(item_id=["planted"], title=["Episode 12"], body_text=[planted])
    (old,) = _score(legacy, legacy.prepare(rows))
    (new,) = _score(minilm, minilm.prepare(rows))
    assert old["model_digest"] != new["model_digest"]
    assert old["category_scores"]["hate"] < REVIEW <= new["category_scores"]["hate"]
    assert old["coverage"] < 0.1 and new["coverage"] == 1.0


def test_a_run_scores_with_the_profile_windowing_and_a_resume_keeps_its_own():
    from moderation.scoring.backfill import run_models

    registry = load_model_registry()
    ids = ("text-minilm-heads-v1", "image-open-nsfw-v1")
    tokens = run_models(registry, ids, windowing="tokens")
    legacy = run_models(registry, ids, windowing="legacy")
    assert [m.digest for m in tokens] == [registry[m].digest for m in ids]
    assert legacy[0].preprocessing["windowing"] == "legacy" and legacy[1] is registry[ids[1]]
    def started(models) -> RunRecord:
        return RunRecord(run_id="r", kind="backfill", status="running", model_digests=[m.digest for m in models])

    assert [m.digest for m in run_models(registry, ids, windowing="tokens", existing=started(legacy))] == \
        [m.digest for m in legacy]
    assert run_models(registry, ids, windowing="legacy", existing=started(tokens)) == tokens
