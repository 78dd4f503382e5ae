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

import numpy as np
import pyarrow as pa
import pytest

from moderation.catalog import to_work_rows
from moderation.artifacts import read_verified
from moderation.classifiers.audio import (
    NO_SPEECH_EVIDENCE,
    SAMPLE_RATE,
    VAD_FRAME,
    SileroVad,
    SpeechTextClassifier,
    decode_audio,
    pack_windows,
    speech_spans,
)
from moderation.classifiers.base import QREASON
from moderation.config import default_conf_dir, load_model_spec
from moderation.errors import ArtifactError

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
    return decode_audio(path.read_bytes(), uri=str(path), max_audio_s=600, max_claimed_s=1e9)


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
    from moderation.artifacts import ctranslate2_spec

    assert ctranslate2_spec(b"\x80\x04\x95" + b"\0" * 64) is None  # pickle protocol 4
    assert ctranslate2_spec(b"PK\x03\x04" + b"\0" * 64) is None  # torch.save zip
    assert ctranslate2_spec(b"") is None
    assert ctranslate2_spec(struct.pack("<IH", 6, 12) + b"WhisperSpec\0") == "WhisperSpec"


def test_decode_reads_only_max_audio_s(audio_dir):
    path = audio_dir / f"{SONG}.ogg"  # 133 s
    pcm = decode_audio(path.read_bytes(), uri=str(path), max_audio_s=20, max_claimed_s=1e9)
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
        "cut_in_audio": "audio_undecodable",
        "no_samples": "audio_no_samples",
        "picture": "audio_undecodable",
        "claims_1000_hours": "audio_too_long",
        "null": "audio_missing",
        "blank": "audio_missing",
    }
    details = dict(zip(keys, out.column("qdetail").to_pylist()))
    assert "end-of-stream" in details["cut_in_audio"]
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
    one 16 kHz WAV (62 s); where each part starts and ends, and the speech spans the VAD finds
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
    assert len(got) == len(want) >= len(bounds)  # 62 s of clip, 36 s of it speech
    for (gs, ge), (ws, we) in zip(got, want):
        assert abs(gs - ws) <= 2 * VAD_FRAME and abs(ge - we) <= 2 * VAD_FRAME, (got, want)
        assert 0 < ge - gs <= window_s * SAMPLE_RATE
    assert all(a[1] <= b[0] for a, b in zip(got, got[1:]))
    # The samples kept are exactly the windows' samples.
    assert [len(b) // 2 for b in row["speech_pcm"]] == [e - s for s, e in got]


def test_nothing_past_max_audio_s_is_windowed(long_clip):
    path, bounds, spans = long_clip
    row = _classifier(max_audio_s=20).prepare(_rows([path])).to_pylist()[0]
    assert row["window_end"] and max(row["window_end"]) <= 20 * SAMPLE_RATE


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
