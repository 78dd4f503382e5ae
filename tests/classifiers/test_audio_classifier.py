"""Speech in audio: decoding, speech detection and windows on the shared clips, every bad-audio
case as its own quarantine reason, and real transcripts scored by the text heads."""

from __future__ import annotations

import hashlib
import io
import pickle
import re
import shutil
import struct
import subprocess
import wave
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from moderation.classifiers.audio import (
    NO_SPEECH_EVIDENCE,
    SAMPLE_RATE,
    VAD_FRAME,
    SileroVad,
    SpeechTextClassifier,
    decode_audio,
    pack_windows,
    scan_audio,
    speech_spans,
    window_samples,
)
from moderation.classifiers.base import QREASON, RunContext
from moderation.config import default_conf_dir, load_model_spec
from moderation.errors import ArtifactError
from moderation.runs import RunRecord, write_run
from moderation.storage.artifacts import read_verified
from moderation.storage.catalog import to_work_rows

SPEC_PATH = default_conf_dir() / "models" / "audio-speech-text-v1.yaml"
SPEC = load_model_spec(SPEC_PATH)

SPEECH = {  # LibriSpeech clips: words Whisper tiny.en must hear in each
    "198-209-0000": {"allen", "tilney", "morning"},
    "3436-172162-0000": {"adventure", "cart", "month", "may"},
    "5703-47212-0000": {"white", "paint", "scarlet", "steamers", "summer"},
}
NO_SPEECH = {
    "Kevin_MacLeod_-_Vibe_Ace": "jazz vibraphone",
    "Hungarian_Dance_number_5_-_Allegro_in_F_sharp_minor_(string_orchestra)": "strings",
    "glacier-bay-humpback": "whale song",
    "456440__inspectorj__bird-whistling-robin-single-13": "robin call",
    "sorohanro_-_solo-trumpet-06": "trumpet",
}
SONG = "Karissa_Hobbs_-_Lets_Go_Fishin"
EVIDENCE = re.compile(r"^window (\d+\.\d)-(\d+\.\d)s: (.+)$")


def _rows(uris: list[str | None]) -> pa.Table:
    n = len(uris)
    catalog = pa.table({"item_id": [f"i{k}" for k in range(n)], "item_type": ["track"] * n,
                        "audio_clip": pa.array(uris, pa.string())})
    return to_work_rows(catalog, "audio")


def _classifier(**preprocessing) -> SpeechTextClassifier:
    spec = SPEC.model_copy(update={"preprocessing": {**SPEC.preprocessing, **preprocessing}})
    return SpeechTextClassifier(spec, batch_size=8)


def _pcm(path) -> np.ndarray:
    return decode_audio(path.read_bytes(), uri=str(path), max_seconds=600)


def _write_wav(path, pcm: np.ndarray) -> str:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(SAMPLE_RATE)
        w.writeframes(pcm.astype("<i2").tobytes())
    return str(path)


@pytest.fixture(scope="module")
def audio_dir(data_dir):
    return data_dir / "media" / "audio"


@pytest.fixture(scope="module")
def scorer():
    clf = SpeechTextClassifier(SPEC, batch_size=8)
    clf.setup("cpu")
    return clf


@pytest.fixture(scope="module")
def shared(audio_dir, scorer):
    """Every shared clip, preprocessed and scored in one batch: {stem: result row}."""
    names = [*SPEECH, *NO_SPEECH, SONG]
    work = scorer.prepare(_rows([str(audio_dir / f"{n}.ogg") for n in names]))
    out = scorer.process_batch(work)
    rows = {}
    for name, pre, res in zip(names, work.to_pylist(), out.to_pylist()):
        rows[name] = {**res, "windows": list(zip(pre["window_start"], pre["window_end"])),
                      "scores": dict(res["category_scores"] or []), "evidence": dict(res["evidence"] or [])}
    return rows


# ---- pure pieces --------------------------------------------------------------------


def test_pack_windows_merges_spans_and_splits_long_ones():
    s = SAMPLE_RATE
    spans = [(0, 2 * s), (3 * s, 4 * s), (6 * s, 17 * s), (18 * s, 19 * s)]
    assert pack_windows(spans, window=5 * s) == [
        (0, 4 * s),  # two spans and the pause between them
        (6 * s, 154_666), (154_666, 213_333), (213_333, 17 * s),  # 11 s in three equal pieces
        (18 * s, 19 * s),  # would make the last piece 5.67 s long
    ]
    assert pack_windows([], window=5 * s) == []


def test_ctranslate2_header_check_refuses_pickle_and_zip():
    from moderation.storage.artifacts import ctranslate2_spec

    assert ctranslate2_spec(b"\x80\x04\x95" + b"\0" * 64) is None  # pickle protocol 4
    assert ctranslate2_spec(b"PK\x03\x04" + b"\0" * 64) is None  # torch.save zip
    assert ctranslate2_spec(b"") is None
    assert ctranslate2_spec(struct.pack("<IH", 6, 12) + b"WhisperSpec\0") == "WhisperSpec"


def test_decode_reads_only_max_seconds(audio_dir):
    path = audio_dir / f"{SONG}.ogg"  # 133 s
    pcm = decode_audio(path.read_bytes(), uri=str(path), max_seconds=20)
    assert pcm.dtype == np.int16 and pcm.size == 20 * SAMPLE_RATE


# ---- bad audio ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def bad_audio(tmp_path_factory, audio_dir, data_dir):
    d = tmp_path_factory.mktemp("audio")
    ogg = (audio_dir / "198-209-0000.ogg").read_bytes()
    (d / "empty.ogg").write_bytes(b"")
    (d / "random.ogg").write_bytes(np.random.default_rng(0).bytes(20_000))
    (d / "cut_in_headers.ogg").write_bytes(ogg[:2000])  # Vorbis setup header incomplete
    (d / "cut_in_audio.ogg").write_bytes(ogg[: len(ogg) // 2])  # decodes, but its EOS page is gone
    _write_wav(d / "no_samples.wav", np.zeros(0, np.int16))
    (d / "picture.ogg").write_bytes((data_dir / "media" / "images" / "camera.png").read_bytes())
    return {
        "good": str(audio_dir / "198-209-0000.ogg"),
        "file_uri": "file://" + str(audio_dir / "198-209-0000.ogg"),
        "missing": str(d / "does_not_exist.ogg"),
        "empty": str(d / "empty.ogg"),
        "random": str(d / "random.ogg"),
        "cut_in_headers": str(d / "cut_in_headers.ogg"),
        "cut_in_audio": str(d / "cut_in_audio.ogg"),
        "no_samples": str(d / "no_samples.wav"),
        "picture": str(d / "picture.ogg"),
        "claims_1000_hours": _flac_claiming_hours(d / "claims.flac"),
    }


def _flac_claiming_hours(path) -> str:
    """One second of FLAC whose STREAMINFO claims 2^36 - 1 samples (about 1,200 hours)."""
    import av

    buf = io.BytesIO()
    with av.open(buf, "w", format="flac") as c:
        stream = c.add_stream("flac", rate=SAMPLE_RATE, layout="mono")
        frame = av.AudioFrame.from_ndarray(np.zeros((1, SAMPLE_RATE), np.int16), format="s16", layout="mono")
        frame.sample_rate = SAMPLE_RATE
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            c.mux(packet)
    data = bytearray(buf.getvalue())
    # STREAMINFO starts at byte 8; its bytes 10..17 end with the 36-bit total sample count.
    field = int.from_bytes(data[18:26], "big") | ((1 << 36) - 1)
    data[18:26] = field.to_bytes(8, "big")
    path.write_bytes(bytes(data))
    return str(path)


def test_each_bad_audio_kind_has_its_own_reason(bad_audio):
    clf = SpeechTextClassifier(SPEC)
    keys = list(bad_audio)
    out = clf.prepare(_rows([bad_audio[k] for k in keys] + [None, ""]))
    reasons = dict(zip([*keys, "null", "blank"], out.column(QREASON).to_pylist()))
    assert reasons == {
        "good": None,
        "file_uri": None,
        "missing": "audio_missing",
        "empty": "audio_empty",
        "random": "audio_undecodable",
        "cut_in_headers": "audio_undecodable",
        "cut_in_audio": None,  # scored on what decodes; its coverage says so (test below)
        "no_samples": "audio_no_samples",
        "picture": "audio_undecodable",
        "claims_1000_hours": "audio_too_long",
        "null": "audio_missing",
        "blank": "audio_missing",
    }
    details = dict(zip(keys, out.column("qdetail").to_pylist()))
    assert "no audio stream" in details["picture"]
    with open(bad_audio["good"], "rb") as f:
        assert out.column("content_hash")[0].as_py() == hashlib.sha256(f.read()).hexdigest()
    # Ray ships the classifier to tasks and actors: still picklable once its VAD is loaded.
    assert pickle.loads(pickle.dumps(clf)).spec == SPEC


def test_size_and_claimed_length_limits_come_from_the_registry(audio_dir):
    clip = str(audio_dir / "198-209-0000.ogg")  # 74 kB, 13.9 s
    assert _classifier(max_bytes=10_000).prepare(_rows([clip])).column(QREASON).to_pylist() == ["audio_too_large"]
    assert _classifier(max_claimed_s=10).prepare(_rows([clip])).column(QREASON).to_pylist() == ["audio_too_long"]


def test_quarantined_rows_are_not_scored(bad_audio, scorer):
    out = scorer.process_batch(scorer.prepare(_rows([bad_audio["random"], bad_audio["no_samples"]])))
    assert out.column(QREASON).to_pylist() == ["audio_undecodable", "audio_no_samples"]
    assert out.column("category_scores").to_pylist() == [None, None]


def test_tampered_vad_is_refused(audio_dir):
    bad = SPEC.artifacts["vad"].model_copy(update={"sha256": "0" * 64})
    spec = SPEC.model_copy(update={"artifacts": {**SPEC.artifacts, "vad": bad}})
    with pytest.raises(ArtifactError, match="vad"):
        SpeechTextClassifier(spec).prepare(_rows([str(audio_dir / "198-209-0000.ogg")]))


# ---- the shared clips ---------------------------------------------------------------


@pytest.mark.parametrize("name", list(SPEECH))
def test_read_speech_is_heard_and_transcribed(shared, name):
    row = shared[name]
    assert row[QREASON] is None and len(row["windows"]) == 1
    m = EVIDENCE.match(row["evidence"]["spam"])
    assert m, row["evidence"]
    words = set(re.findall(r"[a-z]+", m.group(3).lower()))
    assert SPEECH[name] <= words, m.group(3)
    start, end = float(m.group(1)), float(m.group(2))
    assert 0.0 <= start < 1.0 and end > 10.0  # the whole clip is speech, from its first word


@pytest.mark.parametrize("name", list(NO_SPEECH))
def test_music_and_animals_are_scored_as_no_speech(shared, name):
    row = shared[name]
    assert row[QREASON] is None  # scored, not quarantined
    assert row["scores"] == dict.fromkeys(SPEC.categories, 0.0)
    assert row["evidence"] == dict.fromkeys(SPEC.categories, NO_SPEECH_EVIDENCE)


def test_what_the_vad_hears_in_music_and_animals(audio_dir, vad):
    # The VAD alone is silent on strings, whale, robin and trumpet (its highest frame on the
    # Brahms is 0.49, just under the 0.5 threshold). On the jazz track it fires on four short
    # vibraphone notes, 1.7 s in all, in which Whisper then hears no words (test above).
    speech = {}
    for name in NO_SPEECH:
        pcm = _pcm(audio_dir / f"{name}.ogg")
        spans = speech_spans(vad.probabilities(pcm), threshold=SPEC.preprocessing["vad_threshold"], n_samples=pcm.size)
        speech[name] = sum(e - s for s, e in spans) / SAMPLE_RATE
    assert speech.pop("Kevin_MacLeod_-_Vibe_Ace") < 2.5
    assert speech == dict.fromkeys(speech, 0.0)


def test_song_with_vocals_is_transcribed(shared):
    row = shared[SONG]
    assert row[QREASON] is None
    assert all(EVIDENCE.match(e) for e in row["evidence"].values()), row["evidence"]
    assert all(0.0 <= p <= 1.0 for p in row["scores"].values())
    assert all(e - s <= 30 * SAMPLE_RATE for s, e in row["windows"])


# ---- windows over a longer clip -----------------------------------------------------


@pytest.fixture(scope="module")
def vad():
    return SileroVad(read_verified(SPEC.model_id, "vad", SPEC.artifacts["vad"]))


@pytest.fixture(scope="module")
def long_clip(tmp_path_factory, audio_dir, vad):
    """Two read-speech clips and a synthetic spam sentence with 11 s of silence after each, as
    one 16 kHz WAV (72 s); where each part starts and ends, and the speech spans the VAD finds
    in each part on its own, shifted to where the part lies in the long clip."""
    parts = [_pcm(audio_dir / "198-209-0000.ogg"), _pcm(audio_dir / "3436-172162-0000.ogg")]
    espeak = shutil.which("espeak-ng")
    if espeak:
        wav = tmp_path_factory.mktemp("tts") / "spam.wav"
        text = ("Buy cheap followers now! Click the link in my bio to win a free iPhone, subscribe to my "
                "channel and check out my website for free money.")
        subprocess.run([espeak, "-v", "en-us", "-w", str(wav), text], check=True, capture_output=True)
        parts.append(_pcm(wav))
    # Parts and gaps in whole VAD frames, so each part meets the same frame grid as on its own.
    gap = np.zeros(344 * VAD_FRAME, np.int16)  # 11.0 s
    pcm, bounds, spans, t = [], [], [], 0
    for p in parts:
        p = np.pad(p, (0, -p.size % VAD_FRAME))
        bounds.append((t, t + p.size))
        own = speech_spans(vad.probabilities(p), threshold=SPEC.preprocessing["vad_threshold"], n_samples=p.size)
        spans += [(t + s, t + e) for s, e in own]
        pcm += [p, gap]
        t += p.size + gap.size
    path = _write_wav(tmp_path_factory.mktemp("long") / "long.wav", np.concatenate(pcm))
    return path, bounds, spans


def _windows(row) -> list[tuple[int, int]]:
    return list(zip(row["window_start"], row["window_end"]))


@pytest.mark.parametrize("window_s", [10, 30])
def test_windows_of_a_long_clip_lie_where_its_speech_is(long_clip, window_s):
    path, bounds, spans = long_clip
    row = _classifier(window_s=window_s).prepare(_rows([path])).to_pylist()[0]
    got, want = _windows(row), pack_windows(spans, window=window_s * SAMPLE_RATE)
    assert len(got) == len(want) >= len(bounds)  # 72 s of clip, 36 s of it speech
    for (gs, ge), (ws, we) in zip(got, want):
        assert abs(gs - ws) <= 2 * VAD_FRAME and abs(ge - we) <= 2 * VAD_FRAME, (got, want)
        assert 0 < ge - gs <= window_s * SAMPLE_RATE
    assert all(a[1] <= b[0] for a, b in zip(got, got[1:]))
    # Decoded again, streaming, the windows' samples are exactly those of the whole clip.
    whole = _pcm(Path(path))
    again = list(window_samples(open(path, "rb").read(), uri=path, windows=got))
    assert len(again) == len(got) and all(np.array_equal(a, whole[s:e]) for a, (s, e) in zip(again, got))
    # A clip scanned whole is covered whole, in seconds.
    length = round(whole.size / SAMPLE_RATE)
    assert (row["units_total"], row["units_scored"], row["unit"], row["coverage_reason"]) == (length, length, "seconds",
                                                                                              None)


def test_nothing_past_max_item_seconds_is_windowed_and_the_cut_is_recorded(long_clip):
    path, bounds, spans = long_clip
    clf = SpeechTextClassifier(SPEC, context=RunContext(max_item_seconds=20))
    row = clf.prepare(_rows([path])).to_pylist()[0]
    assert row["window_end"] and max(row["window_end"]) <= 20 * SAMPLE_RATE
    # The clip's length comes from the packets past the cut, demuxed but not decoded.
    length = round(_pcm(Path(path)).size / SAMPLE_RATE)
    assert (row["units_total"], row["units_scored"], row["unit"], row["coverage_reason"]) == (length, 20, "seconds",
                                                                                              "limit_seconds")


def test_evidence_names_the_violating_window(long_clip, scorer, shared):
    path, bounds, spans = long_clip
    assert len(bounds) >= 3, "espeak-ng is not installed (apt-get install espeak-ng; scripts/setup.sh does)"
    out = scorer.process_batch(scorer.prepare(_rows([path])))
    scores, evidence = dict(out.column("category_scores")[0].as_py()), dict(out.column("evidence")[0].as_py())
    m = EVIDENCE.match(evidence["spam"])
    assert m, evidence
    # The winning window is one holding the spoken spam (the last part), named by its start and
    # end. At 30 s the sentence is packed into two windows (the first shared with the end of the
    # second reading), cut at the pause after "iPhone": either half may win.
    start, end = bounds[2]
    spam_windows = [(ws / SAMPLE_RATE, we / SAMPLE_RATE) for ws, we in pack_windows(spans, window=30 * SAMPLE_RATE)
                    if we > start]
    got = (float(m.group(1)), float(m.group(2)))
    assert any(got == pytest.approx(w, abs=0.15) for w in spam_windows), (got, spam_windows)
    words = set(re.findall(r"[a-z]+", m.group(3).lower()))
    assert len(words & {"followers", "link", "iphone", "subscribe", "channel", "website", "money"}) >= 3, m.group(3)
    # The spoken spam scores far above the read speech of the shared clips.
    assert scores["spam"] > 0.9 > 0.1 > max(shared[n]["scores"]["spam"] for n in SPEECH)


# ---- streaming: whole clips in bounded memory ---------------------------------------


def test_the_vad_fed_in_chunks_hears_what_it_hears_in_one_piece(long_clip, vad):
    path, _, _ = long_clip
    pcm = _pcm(Path(path))
    stream, rng, at = vad.stream(), np.random.default_rng(3), 0
    while at < pcm.size:  # chunks of odd sizes, as decoders emit them
        step = int(rng.integers(1, 5000))
        stream.feed(pcm[at : at + step])
        at += step
    np.testing.assert_allclose(stream.finish(), vad.probabilities(pcm), atol=1e-6)


def _encode_flac(path, pcm: np.ndarray) -> str:
    import av

    with av.open(str(path), "w", format="flac") as c:
        stream = c.add_stream("flac", rate=SAMPLE_RATE, layout="mono")
        for at in range(0, pcm.size, SAMPLE_RATE):
            frame = av.AudioFrame.from_ndarray(pcm[None, at : at + SAMPLE_RATE], format="s16", layout="mono")
            frame.sample_rate = SAMPLE_RATE
            for packet in stream.encode(frame):
                c.mux(packet)
        for packet in stream.encode(None):
            c.mux(packet)
    return str(path)


def test_a_long_episode_is_scanned_and_cut_into_windows_in_bounded_memory(long_clip, vad, tmp_path):
    """Ten minutes of speech and pauses (19 MB as 16-bit PCM): neither the scan nor the second,
    windowing decode holds more than a few windows' worth of Python-visible memory."""
    import tracemalloc

    path, _, _ = long_clip
    pcm = np.tile(_pcm(Path(path)), 9)[: 600 * SAMPLE_RATE]
    data = open(_encode_flac(tmp_path / "episode.flac", pcm), "rb").read()
    tracemalloc.start()
    try:
        scan = scan_audio(data, uri="episode.flac", vad=vad, max_seconds=4 * 3600, max_claimed_s=86400,
                          window=30 * SAMPLE_RATE, threshold=SPEC.preprocessing["vad_threshold"])
        _, scan_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        sizes = [w.size for w in window_samples(data, uri="episode.flac", windows=scan.windows)]
        _, window_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert scan.reason is None and scan.samples == pcm.size and scan.coverage.units_total == 600
    assert sizes == [e - s for s, e in scan.windows] and scan.windows[-1][1] > 590 * SAMPLE_RATE
    assert scan_peak < 3_000_000, scan_peak  # the waveform alone is 19.2 MB
    assert window_peak < 6 * 30 * SAMPLE_RATE * 2, window_peak  # a few 30 s windows (0.96 MB each)


def test_a_clip_cut_part_way_is_scored_on_what_decodes(bad_audio, scorer):
    out = scorer.process_batch(scorer.prepare(_rows([bad_audio["cut_in_audio"], bad_audio["good"]])))
    cut, good = out.to_pylist()
    assert cut[QREASON] is None and good[QREASON] is None
    assert cut["coverage_reason"] == "decode_error_after_s" and cut["unit"] == "seconds"
    assert 0 < cut["units_scored"] < good["units_scored"] == good["units_total"]
    # The first half of the reading is heard.
    assert dict(cut["evidence"])["hate"] != NO_SPEECH_EVIDENCE


def test_a_clip_changed_between_preprocessing_and_scoring_is_quarantined(audio_dir, scorer, tmp_path):
    clip = tmp_path / "clip.ogg"
    clip.write_bytes((audio_dir / "198-209-0000.ogg").read_bytes())
    work = scorer.prepare(_rows([str(clip)]))
    clip.write_bytes((audio_dir / "3436-172162-0000.ogg").read_bytes())
    out = scorer.process_batch(work).to_pylist()[0]
    assert out[QREASON] == "score_error" and "changed between preprocessing and scoring" in out["qdetail"]


def test_the_retired_max_audio_s_setting_is_refused():
    with pytest.raises(ValueError, match="max_audio_s is retired.*max_item_seconds"):
        _classifier(max_audio_s=600)


def test_a_rescan_rescores_clips_cut_by_a_lower_seconds_limit(tmp_path, long_clip, audio_dir):
    import datetime as dt

    from deltalake import write_deltalake

    from moderation.schemas import CATALOG_SCHEMA
    from moderation.scoring.chunks import split_results
    from moderation.scoring.rescan import pinned_versions, plan_rescan
    from moderation.storage.catalog import open_catalog
    from moderation.storage.lake import Lake

    path, _, _ = long_clip  # 72 s
    catalog = str(tmp_path / "catalog")
    clips = {"long": path, "short": str(audio_dir / "198-209-0000.ogg")}  # 14 s
    write_deltalake(catalog, pa.Table.from_pylist(
        [{"item_id": i, "item_type": "track", "audio_clip": c} for i, c in clips.items()],
        schema=CATALOG_SCHEMA))
    lake = Lake(str(tmp_path / "lake"))
    now = dt.datetime.now(dt.timezone.utc)
    write_run(lake, RunRecord(run_id="base", kind="backfill", status="succeeded", catalog_uri=catalog,
                              catalog_version=0, model_ids=[SPEC.model_id], model_digests=[SPEC.digest],
                              max_item_seconds=20, started_at=now, ended_at=now))
    low = SpeechTextClassifier(SPEC, context=RunContext(max_item_seconds=20))
    rows = low.preprocess(_rows(list(clips.values())))
    fake = rows.append_column("category_scores", pa.array([[("hate", 0.1)]] * 2, pa.map_(pa.string(), pa.float32())))
    fake = fake.append_column("evidence", pa.array([[("hate", "no_speech")]] * 2, pa.map_(pa.string(), pa.string())))
    fake = fake.set_column(0, "item_id", pa.array(list(clips), pa.string()))
    scores, _ = split_results(fake, run_id="base", model=SPEC, now=now)
    assert scores.column("coverage_reason").to_pylist() == ["limit_seconds", None]
    lake.append_chunk("scores", scores, app_id="test/base", version=0)

    def selected(limit: int) -> list[str]:
        plan = plan_rescan(open_catalog(catalog), [SPEC], lake, versions=pinned_versions(lake),
                           context=RunContext(lake_root=lake.root, max_item_seconds=limit))
        return sorted(plan.selections[SPEC.model_id].keep_ids.to_pylist())

    assert selected(20) == []  # same limit: nothing changed
    assert selected(10) == []  # a lower limit scores no more of it
    assert selected(4 * 3600) == ["long"]  # raised: the cut clip again, the whole one not
