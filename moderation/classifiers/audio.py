"""Speech in a track's audio (``audio_clip``), transcribed and scored by the project's text heads.

Per clip, on CPU in preprocessing:

1. read the bytes (``read_media``; ``content_hash`` is their SHA-256);
2. check the duration the container claims (metadata, before decoding) against ``max_claimed_s``;
3. decode the first ``max_audio_s`` seconds, and no more, to 16 kHz mono (PyAV, bundled FFmpeg);
4. find speech with silero-vad, run from its ONNX file by onnxruntime;
5. pack the speech into windows of at most ``window_s`` seconds (Whisper hears 30 s at a time)
   and keep only those windows' samples, as 16-bit PCM.

Per batch, on the actor's device: Whisper tiny.en (faster-whisper on CTranslate2) transcribes
every window, py3langid names the transcript's language, and a ``MiniLMHeadsClassifier`` built
from the same registry entry (the artifacts of text-minilm-heads-v1) scores each window's
transcript. An item's score per category is the maximum over its windows; the evidence is that
window's span and the start of its transcript: ``window 30.0-57.2s: <text>``.

A clip without speech (instrumental music, birdsong) is scored, not quarantined: 0.0 in every
category with evidence ``no_speech``. That covers both a clip in which the VAD finds no speech
and one in which Whisper, hearing the VAD's speech, finds no words.

Quarantine reasons (the audio modality only; the item's text and image are still scored):

  audio_missing, audio_empty, audio_too_large, audio_unreadable   (reading the bytes)
  audio_undecodable   (not audio, corrupt or truncated container, no audio stream)
  audio_too_long      (the container claims more than ``max_claimed_s`` seconds)
  audio_no_samples    (decodes to zero samples)
"""

from __future__ import annotations

import io
import re
from typing import ClassVar

import numpy as np
import pyarrow as pa

from moderation.artifacts import ctranslate2_spec, read_verified
from moderation.classifiers.base import (
    Classifier,
    RunContext,
    media_content_hash,
    prepared,
)
from moderation.classifiers.text import MiniLMHeadsClassifier, normalize_text
from moderation.config import ModelSpec
from moderation.errors import ArtifactError, ModerationError
from moderation.media import MediaError, read_media

SAMPLE_RATE = 16_000
#: Whisper's receptive field: a longer window would be cut by the model itself.
MAX_WINDOW_S = 30.0
#: Evidence for a clip in which no speech was found.
NO_SPEECH_EVIDENCE = "no_speech"
EVIDENCE_CHARS = 160

#: The whisper files CTranslate2 loads, by artifact name in the registry entry.
WHISPER_FILES = {
    "whisper_model": "model.bin",
    "whisper_config": "config.json",
    "whisper_tokenizer": "tokenizer.json",
    "whisper_vocabulary": "vocabulary.txt",
}

# silero-vad's own segmentation defaults (silero_vad.utils_vad.get_speech_timestamps).
VAD_FRAME = 512  # samples per frame at 16 kHz (32 ms)
VAD_CONTEXT = 64  # samples of the previous frame the model sees with each frame
VAD_NEG_OFFSET = 0.15  # speech ends when the probability falls below threshold - 0.15 ...
VAD_MIN_SILENCE_S = 0.10  # ... for at least this long
VAD_MIN_SPEECH_S = 0.25  # shorter bursts are dropped
VAD_PAD_S = 0.03  # padding added on both sides of each speech span

# Whisper's own rule for a silent window: likely no speech and a low-confidence decode.
NO_SPEECH_PROB = 0.6
MIN_AVG_LOGPROB = -1.0
#: Windows per Whisper forward pass (each is padded to 30 s): 8 keep the encoder's attention
#: under 0.5 GB on CPU.
ASR_BATCH_CPU = 8
ASR_BATCH_GPU = 32

_WORD = re.compile(r"\w{2,}")


# --------------------------------------------------------------------------------------
# CPU side: decoding, speech detection, windows
# --------------------------------------------------------------------------------------


def decode_audio(data: bytes, *, uri: str, max_audio_s: float, max_claimed_s: float) -> np.ndarray:
    """The first ``max_audio_s`` seconds of ``data`` as 16 kHz mono 16-bit PCM.

    Decoding stops once that much audio is out, so a long file costs no more than a short one.

    Raises:
        MediaError: ``audio_undecodable``, ``audio_too_long`` or ``audio_no_samples``.
    """
    import av

    limit = int(max_audio_s * SAMPLE_RATE)
    chunks: list[np.ndarray] = []
    n = bad = 0
    try:
        with av.open(io.BytesIO(data), mode="r", metadata_errors="ignore") as container:
            if not container.streams.audio:
                raise MediaError("audio_undecodable", f"{uri}: no audio stream (format {container.format.name})")
            stream = container.streams.audio[0]
            claimed = _claimed_seconds(container, stream)
            if claimed is not None and claimed > max_claimed_s:
                raise MediaError("audio_too_long", f"{uri}: claims {claimed:.0f} s > limit {max_claimed_s:.0f} s")
            if container.format.name == "ogg" and _ogg_truncated(data):
                raise MediaError("audio_undecodable", f"{uri}: Ogg stream ends without its end-of-stream page (truncated)")
            resampler = av.AudioResampler(format="s16", layout="mono", rate=SAMPLE_RATE)
            for packet in container.demux(stream):  # the last, empty packet flushes the decoder
                try:
                    frames = packet.decode()
                except av.error.InvalidDataError:
                    bad += 1  # a damaged packet: skip it, as players do
                    continue
                for frame in frames:
                    for out in resampler.resample(frame):
                        chunks.append(out.to_ndarray().reshape(-1))
                        n += chunks[-1].size
                if n >= limit:
                    break
            else:
                chunks.extend(out.to_ndarray().reshape(-1) for out in resampler.resample(None))
                n = sum(c.size for c in chunks)
    except MediaError:
        raise
    except Exception as e:  # noqa: BLE001 - FFmpeg on untrusted bytes: any failure is this clip's
        raise MediaError("audio_undecodable", f"{uri}: {type(e).__name__}: {e}") from e
    if n == 0:
        if bad:
            raise MediaError("audio_undecodable", f"{uri}: none of {bad} packets decodes")
        raise MediaError("audio_no_samples", f"{uri}: decodes to zero samples")
    return np.concatenate(chunks)[:limit]


def _claimed_seconds(container, stream) -> float | None:
    """The longest duration the container's metadata states, if any (nothing is decoded)."""
    claims = []
    if stream.duration is not None and stream.time_base is not None:
        claims.append(float(stream.duration * stream.time_base))
    if container.duration is not None:
        claims.append(container.duration / 1_000_000)  # in AV_TIME_BASE units
    return max(claims, default=None)


def _ogg_truncated(data: bytes) -> bool:
    """Whether an Ogg file lacks a complete last page flagged end-of-stream.

    A cut Ogg file still decodes up to the cut and its claimed duration shrinks with it, so
    neither decoding nor the duration shows the damage; the missing EOS page does.
    """
    last = data.rfind(b"OggS")
    if last < 0 or len(data) < last + 27:
        return True
    header_type, n_segments = data[last + 5], data[last + 26]
    body = sum(data[last + 27 : last + 27 + n_segments])
    return last + 27 + n_segments + body > len(data) or not header_type & 0x04


class SileroVad:
    """silero-vad from its ONNX file: per-frame speech probabilities of 16 kHz audio."""

    def __init__(self, onnx_bytes: bytes) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        # One frame at a time is latency-bound; preprocessing already runs a task per core.
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        self._session = ort.InferenceSession(onnx_bytes, sess_options=opts, providers=["CPUExecutionProvider"])

    def probabilities(self, pcm: np.ndarray) -> np.ndarray:
        """Speech probability of each ``VAD_FRAME``-sample frame (the last one zero-padded)."""
        x = pcm.astype(np.float32) / 32768.0
        n = -(-x.size // VAD_FRAME)
        x = np.pad(x, (0, n * VAD_FRAME - x.size))
        state = np.zeros((2, 1, 128), np.float32)
        context = np.zeros((1, VAD_CONTEXT), np.float32)
        sr = np.array(SAMPLE_RATE, np.int64)
        probs = np.empty(n, np.float32)
        for i in range(n):
            frame = np.concatenate([context, x[None, i * VAD_FRAME : (i + 1) * VAD_FRAME]], axis=1)
            out, state = self._session.run(None, {"input": frame, "state": state, "sr": sr})
            probs[i] = out[0, 0]
            context = frame[:, -VAD_CONTEXT:]
        return probs


def speech_spans(probs: np.ndarray, *, threshold: float, n_samples: int) -> list[tuple[int, int]]:
    """(start, end) sample offsets of speech, from per-frame probabilities.

    silero-vad's hysteresis: speech starts at a frame at or above ``threshold`` and ends after
    ``VAD_MIN_SILENCE_S`` below ``threshold - VAD_NEG_OFFSET``; bursts under
    ``VAD_MIN_SPEECH_S`` are dropped and each span is padded by ``VAD_PAD_S``.
    """
    low = max(threshold - VAD_NEG_OFFSET, 0.01)
    min_silence = int(VAD_MIN_SILENCE_S * SAMPLE_RATE)
    spans: list[tuple[int, int]] = []
    start = silent_from = None
    for i, p in enumerate(probs):
        t = i * VAD_FRAME
        if p >= threshold:
            start = t if start is None else start
            silent_from = None
        elif start is not None and p < low:
            silent_from = t if silent_from is None else silent_from
            if t - silent_from >= min_silence:
                spans.append((start, silent_from))
                start = silent_from = None
    if start is not None:
        spans.append((start, n_samples))
    pad = int(VAD_PAD_S * SAMPLE_RATE)
    min_speech = int(VAD_MIN_SPEECH_S * SAMPLE_RATE)
    return [(max(0, s - pad), min(n_samples, e + pad)) for s, e in spans if e - s > min_speech]


def pack_windows(spans: list[tuple[int, int]], *, window: int) -> list[tuple[int, int]]:
    """Speech spans grouped into windows of at most ``window`` samples, in order.

    A window starts where a span starts and takes following spans while the whole stays within
    ``window`` (the pauses between them included: context for Whisper); a span longer than
    ``window`` is cut into the fewest equal pieces that fit, so no piece is a sliver.
    """
    windows: list[tuple[int, int]] = []
    for s, e in spans:
        if windows and s >= windows[-1][1] and e - windows[-1][0] <= window:
            windows[-1] = (windows[-1][0], e)
            continue
        pieces = -(-(e - s) // window)
        cuts = [s + (e - s) * k // pieces for k in range(pieces + 1)]
        windows.extend(zip(cuts[:-1], cuts[1:]))
    return windows


# --------------------------------------------------------------------------------------
# The classifier
# --------------------------------------------------------------------------------------


class SpeechTextClassifier(Classifier):
    """Whisper transcripts of ``audio_clip`` scored by the MiniLM text heads."""

    modality: ClassVar = "audio"

    def __init__(self, spec: ModelSpec, *, batch_size: int = 64, context: RunContext = RunContext()) -> None:
        super().__init__(spec, batch_size=batch_size, context=context)
        pre = spec.preprocessing
        self.window_s = float(pre.get("window_s", MAX_WINDOW_S))
        if not 0 < self.window_s <= MAX_WINDOW_S:
            raise ValueError(f"model {spec.model_id}: window_s {self.window_s} must be in (0, {MAX_WINDOW_S}]")
        self.max_audio_s = float(pre.get("max_audio_s", 600.0))
        self.max_claimed_s = float(pre.get("max_claimed_s", 6 * 3600.0))
        self.max_bytes = int(pre.get("max_bytes", 200_000_000))
        self.vad_threshold = float(pre.get("vad_threshold", 0.5))
        # Same artifacts, categories and token windows as the text model; only the modality of
        # the rows it sees differs.
        self._text = MiniLMHeadsClassifier(spec.model_copy(update={"modality": "text"}), batch_size=batch_size,
                                           context=context)
        self._vad: SileroVad | None = None  # loaded on first preprocess, once per worker copy
        self._whisper = None
        self._langid = None
        self._asr_batch = ASR_BATCH_CPU

    def __getstate__(self) -> dict:
        # Ray ships the classifier to tasks and actors: send the spec, never loaded models.
        return {**self.__dict__, "_vad": None, "_whisper": None, "_langid": None}

    # ---- CPU side -------------------------------------------------------------------
    def preprocess(self, batch: pa.Table) -> pa.Table:
        if self._vad is None:
            self._vad = SileroVad(read_verified(self.spec.model_id, "vad", self.spec.artifacts["vad"]))
        window = int(self.window_s * SAMPLE_RATE)
        uris = batch.column("audio_clip").to_pylist()
        hashes, pcm, starts, ends, reasons, details, stages = [], [], [], [], [], [], []
        for uri in uris:
            data = None
            try:
                if not uri:
                    raise MediaError("audio_missing", "audio_clip is null or empty")
                data = read_media(uri, max_bytes=self.max_bytes, kind="audio", roots=self.context.media_roots)
                samples = decode_audio(data, uri=uri, max_audio_s=self.max_audio_s, max_claimed_s=self.max_claimed_s)
            except MediaError as e:
                hashes.append(media_content_hash(data, uri))
                pcm.append([]), starts.append([]), ends.append([])
                reasons.append(e.reason), details.append(e.detail[:500]), stages.append("preprocess")
                continue
            spans = speech_spans(self._vad.probabilities(samples), threshold=self.vad_threshold, n_samples=samples.size)
            windows = pack_windows(spans, window=window)
            hashes.append(media_content_hash(data, uri))
            # Only speech travels to the actor, as 16-bit PCM (what FFmpeg's resampler gives;
            # half of float32): at most max_audio_s x 32 kB/s per row, 19 MB for 600 s.
            pcm.append([samples[s:e].tobytes() for s, e in windows])
            starts.append([s for s, _ in windows]), ends.append([e for _, e in windows])
            reasons.append(None), details.append(None), stages.append(None)
        return prepared(
            batch,
            hashes=hashes,
            inputs={
                "speech_pcm": pa.array(pcm, pa.list_(pa.binary())),
                "window_start": pa.array(starts, pa.list_(pa.int64())),  # sample offsets
                "window_end": pa.array(ends, pa.list_(pa.int64())),
            },
            reasons=reasons,
            details=details,
            stages=stages,
        )

    # ---- device side ----------------------------------------------------------------
    def setup(self, device: str = "cpu") -> None:
        import ctranslate2
        import torch
        from faster_whisper import BatchedInferencePipeline, WhisperModel
        from py3langid.langid import LanguageIdentifier
        from py3langid.modelio import load_model

        self._text.setup(device)
        model_id = self.spec.model_id
        # CTranslate2 loads from memory: the bytes whose digests were checked are the bytes
        # loaded, with no window for a file on disk to change in between.
        files = {fname: read_verified(model_id, name, self.spec.artifacts[name]) for name, fname in WHISPER_FILES.items()}
        if ctranslate2_spec(files["model.bin"]) != "WhisperSpec":  # read_verified checked the format
            raise ArtifactError(f"model {model_id}: artifact whisper_model is not a CTranslate2 Whisper model")
        on_gpu = device.startswith("cuda")
        if on_gpu and ctranslate2.get_cuda_device_count() == 0:
            raise ModerationError(
                f"model {model_id}: device {device} requested but CTranslate2 sees no CUDA device; it needs the "
                "CUDA 12 cuBLAS and cuDNN 9 libraries (pip: nvidia-cublas-cu12 nvidia-cudnn-cu12==9.*)"
            )
        whisper = WhisperModel(
            f"{model_id}/whisper",  # an identifier only: the files come from memory
            device="cuda" if on_gpu else "cpu",
            device_index=int(device.partition(":")[2] or 0),
            compute_type="float16" if on_gpu else "int8",
            cpu_threads=torch.get_num_threads(),
            files=files,
        )
        self._whisper = BatchedInferencePipeline(whisper)
        self._asr_batch = ASR_BATCH_GPU if on_gpu else ASR_BATCH_CPU
        # py3langid's model is npz inside LZMA, read with allow_pickle=False.
        lid = read_verified(model_id, "langid", self.spec.artifacts["langid"])
        ptc, pc, classes, nextmove, row, output = load_model(io.BytesIO(lid))
        self._langid = LanguageIdentifier(np.asarray(ptc), np.asarray(pc), classes, nextmove, output, tk_row=row)
        self.device = device

    def transcribe(self, windows: list[np.ndarray]) -> list[str]:
        """Whisper's transcript of each window (16 kHz 16-bit PCM, at most 30 s each); ``""``
        for a window in which it hears no words."""
        if self._whisper is None:
            raise RuntimeError("setup() was not called")
        texts: list[str] = []
        for first in range(0, len(windows), self._asr_batch):
            group = windows[first : first + self._asr_batch]
            # The group's windows laid end to end, each its own clip, so the pipeline runs them
            # through the encoder and decoder as one batch; float32 only for this group.
            offsets = np.cumsum([0] + [w.size for w in group])
            clips = [{"start": offsets[i] / SAMPLE_RATE, "end": offsets[i + 1] / SAMPLE_RATE} for i in range(len(group))]
            segments, _ = self._whisper.transcribe(
                np.concatenate(group).astype(np.float32) / 32768.0,
                language="en",
                clip_timestamps=clips,
                batch_size=len(group),
                beam_size=1,  # greedy: deterministic, and 2-3x faster than beam 5 on CPU
                without_timestamps=True,
                log_progress=False,
            )
            heard: list[list[str]] = [[] for _ in group]
            for seg in segments:
                if seg.no_speech_prob > NO_SPEECH_PROB and seg.avg_logprob < MIN_AVG_LOGPROB:
                    continue
                # seg.start is its window's offset rounded to 1 ms; windows are >= 0.25 s long.
                i = int(np.searchsorted(offsets, seg.start * SAMPLE_RATE + 0.01 * SAMPLE_RATE, side="right")) - 1
                heard[min(max(i, 0), len(group) - 1)].append(seg.text)
            texts += [normalize_text(" ".join(t)) for t in heard]
        return [t if _WORD.search(t) else "" for t in texts]

    def to_half(self) -> None:
        self._text.to_half()

    def score(self, batch: pa.Table) -> tuple[list[dict[str, float]], list[dict[str, str]]]:
        categories = self.spec.categories
        n = batch.num_rows
        pcm = batch.column("speech_pcm").to_pylist()
        starts = batch.column("window_start").to_pylist()
        ends = batch.column("window_end").to_pylist()
        texts = self.transcribe([np.frombuffer(b, dtype=np.int16) for row in pcm for b in row])
        scores = [dict.fromkeys(categories, 0.0) for _ in range(n)]
        evidence = [dict.fromkeys(categories, NO_SPEECH_EVIDENCE) for _ in range(n)]
        rows, segments, names, k = [], [], [], 0
        for i in range(n):
            heard = [(s, e, texts[k + j]) for j, (s, e) in enumerate(zip(starts[i], ends[i])) if texts[k + j]]
            k += len(starts[i])
            if not heard:
                continue
            lang, _ = self._langid.classify(" ".join(t for _, _, t in heard))
            # The heads are English-only: a transcript in another language is scored all the
            # same (tiny.en writes what it hears in English letters) and the evidence says so.
            note = "" if lang == "en" else f" [lang {lang}]"
            rows.append(i)
            # A window's transcript longer than the text heads read at once (fast speech) is cut
            # into token windows like any text, each named with its character offsets.
            segs, nms = [], []
            for (s, e, t), spans in zip(heard, self._text.windower().spans([t for _, _, t in heard])):
                span = f"window {s / SAMPLE_RATE:.1f}-{e / SAMPLE_RATE:.1f}s{note}"
                for a, b in spans:
                    segs.append(t[a:b])
                    nms.append(f"{span}: {t[a:b][:EVIDENCE_CHARS]}" if len(spans) == 1
                               else f"{span} chars {a}-{b}: {t[a:b][:EVIDENCE_CHARS]}")
            segments.append(segs)
            names.append(nms)
        if rows:
            table = pa.table({"segments": pa.array(segments, pa.list_(pa.string())),
                              "segment_names": pa.array(names, pa.list_(pa.string()))})
            s, e = self._text.score(table)
            for j, i in enumerate(rows):
                scores[i], evidence[i] = s[j], e[j]
        return scores, evidence
