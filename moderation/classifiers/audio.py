"""Speech in a track's or episode's audio (``audio_clip``), transcribed and scored by the
project's text heads, for the clip's whole length.

Per clip, on CPU in preprocessing (``scan_audio``), streaming:

1. read the bytes (``read_media``; ``content_hash`` is their SHA-256);
2. check the duration the container claims (metadata, before decoding) against ``max_claimed_s``;
3. decode packet by packet to 16 kHz mono (PyAV, bundled FFmpeg), up to the run profile's
   ``max_item_seconds`` (4 h by default);
4. feed each decoded chunk to silero-vad (ONNX, run by onnxruntime; its state carries over from
   chunk to chunk) and drop it: what is kept is one probability per 32 ms frame;
5. pack the speech into windows of at most ``window_s`` seconds (Whisper hears 30 s at a time).

Only the windows' sample offsets travel to the actor. Per batch, on the actor's device, the
clips are decoded again, streaming, on a thread that stays two Whisper batches ahead
(``window_samples``: only the audio from the next window's start is held); Whisper tiny.en
(faster-whisper on CTranslate2) transcribes a batch of windows at a time, py3langid names the
transcript's language, and a ``MiniLMHeadsClassifier`` built from the same registry entry (the
artifacts of text-minilm-heads-v1) scores each window's transcript. An item's score per
category is the maximum over its windows; the evidence is that window's span in seconds and the
start of its transcript: ``window 30.0-57.2s: <text>``. Memory stays flat in the clip's length:
a 3-hour episode costs what a 3-minute one does, plus its compressed bytes.

Coverage (``scores`` columns, unit ``seconds``): a clip decoded to its end has ``units_scored ==
units_total`` (its length, rounded). One longer than ``max_item_seconds`` is scored on its first
``max_item_seconds`` with ``coverage_reason = limit_seconds`` and ``units_total`` its length (read
from the timestamps of the packets not decoded). One whose decoding fails part way (a damaged or
cut file) is scored on what decoded, with ``decode_error_after_s`` and ``units_scored`` the
seconds that decoded.

A clip without speech (instrumental music, birdsong) is scored, not quarantined: 0.0 in every
category with evidence ``no_speech``. That covers both a clip in which the VAD finds no speech
and one in which Whisper, hearing the VAD's speech, finds no words.

Quarantine reasons (the audio modality only; the item's text and image are still scored):

  audio_missing, audio_empty, audio_too_large, audio_unreadable   (reading the bytes)
  audio_undecodable   (not audio, corrupt container, no audio stream, nothing decodes)
  audio_too_long      (the container claims more than ``max_claimed_s`` seconds)
  audio_no_samples    (decodes to zero samples)
"""

from __future__ import annotations

import io
import logging
import queue
import re
import threading
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import numpy as np
import pyarrow as pa

from moderation.classifiers.base import (
    CONTENT_HASH,
    Classifier,
    RunContext,
    media_content_hash,
    media_inputs,
)
from moderation.classifiers.text import MiniLMHeadsClassifier, coverage_columns, normalize_text
from moderation.classifiers.windows import Coverage
from moderation.config import ModelSpec
from moderation.errors import ArtifactError, ModerationError
from moderation.modalities import media_column
from moderation.storage.artifacts import ctranslate2_spec, read_verified
from moderation.storage.media import MediaError, read_media

if TYPE_CHECKING:
    from py3langid.langid import LanguageIdentifier

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

#: ``scores.unit`` of audio rows, and the ``coverage_reason`` values of a clip scored in part:
#: cut at the run's ``max_item_seconds``, or its decoding failed part way (what decoded is scored).
SECONDS = "seconds"
LIMIT_SECONDS = "limit_seconds"
DECODE_ERROR_AFTER_S = "decode_error_after_s"

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------
# CPU side: streaming decode, speech detection, windows
# --------------------------------------------------------------------------------------


class AudioStream:
    """One file's audio, decoded a packet at a time to 16 kHz mono 16-bit PCM chunks.

    Nothing holds the waveform: ``chunks()`` yields each resampled frame as it is decoded (a few
    thousand samples), so a 3-hour episode costs the memory of one frame plus its compressed
    bytes. A packet that fails to decode is skipped, as players do; an error that ends decoding
    after some audio came out stops the stream there and is kept in ``error`` (the caller scores
    what decoded and says so); one before any audio is ``audio_undecodable``.

    Raises (on opening):
        MediaError: ``audio_undecodable`` (not audio, no audio stream) or ``audio_too_long``.
    """

    def __init__(self, data: bytes, *, uri: str, max_claimed_s: float) -> None:
        import av

        self.uri = uri
        self.samples = 0  #: samples yielded so far
        self.bad_packets = 0
        self.error: str | None = None  #: why decoding ended before the end of the stream
        self._ogg_cut = False
        try:
            self._container = av.open(io.BytesIO(data), mode="r", metadata_errors="ignore")
        except Exception as e:  # noqa: BLE001 - FFmpeg on untrusted bytes: any failure is this clip's
            raise MediaError("audio_undecodable", f"{uri}: {type(e).__name__}: {e}") from e
        try:
            if not self._container.streams.audio:
                raise MediaError("audio_undecodable", f"{uri}: no audio stream (format {self._container.format.name})")
            self._stream = self._container.streams.audio[0]
            self.claimed_s = _claimed_seconds(self._container, self._stream)
            if self.claimed_s is not None and self.claimed_s > max_claimed_s:
                raise MediaError("audio_too_long",
                                 f"{uri}: claims {self.claimed_s:.0f} s > limit {max_claimed_s:.0f} s")
            # A cut Ogg file decodes up to the cut and its claimed duration shrinks with it;
            # only its missing end-of-stream page shows the damage.
            self._ogg_cut = self._container.format.name == "ogg" and _ogg_truncated(data)
            self._packets = self._container.demux(self._stream)  # the last, empty packet flushes
        except BaseException:
            self._container.close()
            raise

    def __enter__(self) -> AudioStream:
        return self

    def __exit__(self, *exc) -> None:
        self._container.close()

    def chunks(self) -> Iterator[np.ndarray]:
        """The decoded audio, chunk by chunk (int16, 16 kHz mono), to the end or the first error."""
        import av

        resampler = av.AudioResampler(format="s16", layout="mono", rate=SAMPLE_RATE)
        try:
            for packet in self._packets:
                try:
                    frames = packet.decode()
                except av.error.InvalidDataError:
                    self.bad_packets += 1  # a damaged packet: skip it, as players do
                    continue
                for frame in frames:
                    for out in resampler.resample(frame):
                        chunk = out.to_ndarray().reshape(-1)
                        self.samples += chunk.size
                        yield chunk
            for out in resampler.resample(None):
                chunk = out.to_ndarray().reshape(-1)
                self.samples += chunk.size
                yield chunk
        except Exception as e:  # noqa: BLE001 - FFmpeg on untrusted bytes: any failure is this clip's
            if self.samples == 0:
                raise MediaError("audio_undecodable", f"{self.uri}: {type(e).__name__}: {e}") from e
            self.error = f"{type(e).__name__}: {e}"
            return
        if self.samples == 0:
            if self.bad_packets:
                raise MediaError("audio_undecodable", f"{self.uri}: none of {self.bad_packets} packets decodes")
            raise MediaError("audio_no_samples", f"{self.uri}: decodes to zero samples")
        if self._ogg_cut:
            self.error = "Ogg stream ends without its end-of-stream page (truncated)"

    def end_seconds(self) -> float | None:
        """Where the stream ends, in seconds, read from the timestamps of the packets not yet
        decoded (demuxed, not decoded: a few milliseconds for an hour of audio); else what the
        container claims."""
        end = None
        try:
            for packet in self._packets:
                if packet.pts is not None and packet.time_base is not None:
                    t = float((packet.pts + (packet.duration or 0)) * packet.time_base)
                    end = t if end is None else max(end, t)
        except Exception:  # noqa: BLE001 - a damaged tail: fall back on the claim
            pass
        if end is not None and self._stream.start_time is not None and self._stream.time_base is not None:
            end -= float(self._stream.start_time * self._stream.time_base)
        return end if end is not None else self.claimed_s


def decode_audio(data: bytes, *, uri: str, max_seconds: float, max_claimed_s: float = float("inf")) -> np.ndarray:
    """The first ``max_seconds`` seconds of ``data`` as 16 kHz mono 16-bit PCM, in one array
    (for tests and tools; the classifier never holds a whole clip: see ``scan_audio``).

    Raises:
        MediaError: ``audio_undecodable``, ``audio_too_long`` or ``audio_no_samples``.
    """
    limit, out, n = int(max_seconds * SAMPLE_RATE), [], 0
    with AudioStream(data, uri=uri, max_claimed_s=max_claimed_s) as stream:
        for chunk in stream.chunks():
            out.append(chunk[: limit - n])
            n += out[-1].size
            if n >= limit:
                break
    return np.concatenate(out)


@dataclass(frozen=True)
class AudioScan:
    """What ``scan_audio`` found in one clip: its speech windows and how much of it was heard."""

    windows: list[tuple[int, int]]  #: (start, end) sample offsets of each speech window
    samples: int  #: samples decoded and searched for speech
    total_s: float | None  #: the clip's length in seconds (None: unknown, decoding failed early)
    reason: str | None = None  #: None, ``limit_seconds`` or ``decode_error_after_s``
    detail: str | None = None

    @property
    def coverage(self) -> Coverage:
        scored = round(self.samples / SAMPLE_RATE)
        if self.reason is None:
            return Coverage(scored, scored, unit=SECONDS)
        total = round(self.total_s) if self.total_s is not None else None
        return Coverage(max(total, scored) if total is not None else None, scored, unit=SECONDS, reason=self.reason)


def _claimed_seconds(container, stream) -> float | None:
    """The longest duration the container's metadata states, if any (nothing is decoded)."""
    claims = []
    if stream.duration is not None and stream.time_base is not None:
        claims.append(float(stream.duration * stream.time_base))
    if container.duration is not None:
        claims.append(container.duration / 1_000_000)  # in AV_TIME_BASE units
    return max(claims, default=None)


def _ogg_truncated(data: bytes) -> bool:
    """Whether an Ogg file lacks a complete last page flagged end-of-stream."""
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

    def stream(self) -> VadStream:
        """A fresh stream: feed it audio in chunks of any size, in order."""
        return VadStream(self._session)

    def probabilities(self, pcm: np.ndarray) -> np.ndarray:
        """Speech probability of each ``VAD_FRAME``-sample frame (the last one zero-padded)."""
        stream = self.stream()
        stream.feed(pcm)
        return stream.finish()


class VadStream:
    """silero-vad over audio that arrives in chunks: the model's state and the samples of an
    unfinished frame carry over, so the probabilities equal those of the whole clip at once,
    and what is kept is one float per 32 ms frame (1.4 MB for 3 hours), never the audio."""

    def __init__(self, session) -> None:
        self._session = session
        self._state = np.zeros((2, 1, 128), np.float32)
        self._context = np.zeros((1, VAD_CONTEXT), np.float32)
        self._rest = np.zeros(0, np.float32)
        self._sr = np.array(SAMPLE_RATE, np.int64)
        self._probs: list[np.ndarray] = []

    def feed(self, pcm: np.ndarray) -> None:
        x = np.concatenate([self._rest, pcm.astype(np.float32) / 32768.0])
        n = x.size // VAD_FRAME
        self._rest = x[n * VAD_FRAME :]
        if n:
            self._probs.append(self._run(x[: n * VAD_FRAME].reshape(n, VAD_FRAME)))

    def finish(self) -> np.ndarray:
        """The probabilities of every frame fed, the last partial frame zero-padded."""
        if self._rest.size:
            self._probs.append(self._run(np.pad(self._rest, (0, VAD_FRAME - self._rest.size))[None]))
            self._rest = np.zeros(0, np.float32)
        return np.concatenate(self._probs) if self._probs else np.zeros(0, np.float32)

    def _run(self, frames: np.ndarray) -> np.ndarray:
        probs = np.empty(len(frames), np.float32)
        for i, f in enumerate(frames):
            frame = np.concatenate([self._context, f[None]], axis=1)
            out, self._state = self._session.run(None, {"input": frame, "state": self._state, "sr": self._sr})
            probs[i] = out[0, 0]
            self._context = frame[:, -VAD_CONTEXT:]
        return probs


def scan_audio(data: bytes, *, uri: str, vad: SileroVad, max_seconds: float, max_claimed_s: float,
               window: int, threshold: float) -> AudioScan:
    """One clip's speech windows, found streaming: each decoded chunk goes through the VAD and
    is dropped; decoding stops after ``max_seconds`` (``limit_seconds``, the rest of the stream
    demuxed only to learn its length) or at an error after some audio (``decode_error_after_s``).

    Raises:
        MediaError: ``audio_undecodable``, ``audio_too_long`` or ``audio_no_samples``.
    """
    limit = int(max_seconds * SAMPLE_RATE)
    vad_stream = vad.stream()
    n, cut, pending, held = 0, False, [], 0
    with AudioStream(data, uri=uri, max_claimed_s=max_claimed_s) as stream:
        for chunk in stream.chunks():
            if n >= limit:
                cut = True
                break
            part = chunk[: limit - n]
            cut = part.size < chunk.size
            pending.append(part)
            n += part.size
            held += part.size
            # Decoders emit a few hundred samples at a time: the VAD gets them a second at a time.
            if held >= SAMPLE_RATE:
                vad_stream.feed(np.concatenate(pending))
                pending, held = [], 0
            if cut:
                break
        if pending:
            vad_stream.feed(np.concatenate(pending))
        spans = speech_spans(vad_stream.finish(), threshold=threshold, n_samples=n)
        windows = pack_windows(spans, window=window)
        if cut:
            return AudioScan(windows, n, stream.end_seconds(), LIMIT_SECONDS,
                             f"{uri}: scored the first {max_seconds:.0f} s (max_item_seconds)")
        if stream.error is not None:
            claimed = stream.claimed_s
            return AudioScan(windows, n, claimed if claimed and claimed * SAMPLE_RATE > n else None,
                             DECODE_ERROR_AFTER_S,
                             f"{uri}: decoding stopped after {n / SAMPLE_RATE:.1f} s: {stream.error}")
        return AudioScan(windows, n, n / SAMPLE_RATE)


def window_samples(data: bytes, *, uri: str, windows: list[tuple[int, int]]) -> Iterator[np.ndarray]:
    """The samples of each window (sorted, disjoint sample offsets, as ``scan_audio`` found them),
    decoded again streaming: only the audio from the next window's start is buffered, and
    decoding stops at the last window's end.

    Raises:
        ModerationError: the clip decodes to less audio than the windows need (it changed).
    """
    held: deque[tuple[int, np.ndarray]] = deque()  # (offset, chunk), from the next window's start on
    n = k = 0
    with AudioStream(data, uri=uri, max_claimed_s=float("inf")) as stream:
        for chunk in stream.chunks():
            held.append((n, chunk))
            n += chunk.size
            while k < len(windows) and windows[k][1] <= n:
                s, e = windows[k]
                first = held[0][0]
                yield np.concatenate([c for _, c in held])[s - first : e - first]
                k += 1
            if k == len(windows):
                return
            while held and held[0][0] + held[0][1].size <= windows[k][0]:
                held.popleft()  # wholly before the next window
    raise ModerationError(f"{uri}: decodes to {n} samples now, but window {k} ends at sample {windows[k][1]}")


def _prefetched(items: Iterator, depth: int) -> Iterator:
    """``items`` produced on a thread, at most ``depth`` ahead: decoding (PyAV releases the GIL)
    overlaps transcription; an exception is raised where the item would have been."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    done = object()
    stop = threading.Event()

    def put(entry) -> bool:
        while not stop.is_set():
            try:
                q.put(entry, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def run() -> None:
        try:
            for item in items:
                if not put((item, None)):
                    return
            put((done, None))
        except BaseException as e:  # noqa: BLE001 - handed to the consumer
            put((done, e))

    thread = threading.Thread(target=run, name="audio-decode", daemon=True)
    thread.start()
    try:
        while True:
            item, error = q.get()
            if item is done:
                if error is not None:
                    raise error
                return
            yield item
    finally:
        stop.set()
        thread.join(timeout=5)


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
        windows.extend(zip(cuts[:-1], cuts[1:], strict=True))
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
        if "max_audio_s" in pre:
            raise ValueError(f"model {spec.model_id}: preprocessing.max_audio_s is retired: how much of each clip is "
                             "scored is the run profile's max_item_seconds")
        #: Seconds of a clip decoded and scored at most (the run's ``max_item_seconds``).
        self.max_item_seconds = context.max_item_seconds
        self.max_claimed_s = float(pre.get("max_claimed_s", 6 * 3600.0))
        self.max_bytes = int(pre.get("max_bytes", 200_000_000))
        self.vad_threshold = float(pre.get("vad_threshold", 0.5))
        # Same artifacts, categories and token windows as the text model; only the modality of
        # the rows it sees differs.
        self._text = MiniLMHeadsClassifier(spec.model_copy(update={"modality": "text"}), batch_size=batch_size,
                                           context=context)
        self._vad: SileroVad | None = None  # loaded on first preprocess, once per worker copy
        self._whisper = None
        self._langid: LanguageIdentifier | None = None
        self._asr_batch = ASR_BATCH_CPU

    def __getstate__(self) -> dict:
        # Ray ships the classifier to tasks and actors: send the spec, never loaded models.
        return {**self.__dict__, "_vad": None, "_whisper": None, "_langid": None}

    # ---- CPU side -------------------------------------------------------------------
    def preprocess(self, batch: pa.Table) -> pa.Table:
        if self._vad is None:
            self._vad = SileroVad(read_verified(self.spec.model_id, "vad", self.spec.artifacts["vad"]))
        window = int(self.window_s * SAMPLE_RATE)
        vad = self._vad

        def scan(uri: str, data: bytes) -> AudioScan:
            found = scan_audio(data, uri=uri, vad=vad, max_seconds=self.max_item_seconds,
                               max_claimed_s=self.max_claimed_s, window=window, threshold=self.vad_threshold)
            if found.reason is not None:
                log.warning("%s: %s (%s)", self.spec.model_id, found.detail, found.reason)
            return found

        rows = media_inputs(self.media_uris(batch), self._read, scan)
        scans = rows.values
        # Only where the speech is travels to the actor (sample offsets, not samples): the
        # actor decodes the clip again, streaming, and keeps just those windows' audio.
        return rows.prepared(batch, {
            "window_start": pa.array([[] if x is None else [s for s, _ in x.windows] for x in scans],
                                     pa.list_(pa.int64())),  # sample offsets
            "window_end": pa.array([[] if x is None else [e for _, e in x.windows] for x in scans],
                                   pa.list_(pa.int64())),
            **coverage_columns([None if x is None else x.coverage for x in scans]),
        })

    def _read(self, uri: str | None) -> tuple[bytes, bytes]:
        if not uri:
            raise MediaError("audio_missing", f"{media_column(self.modality)} is null or empty")
        data = read_media(uri, max_bytes=self.max_bytes, kind="audio", roots=self.context.media_roots)
        return data, data

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
        files = {fname: read_verified(model_id, name, self.spec.artifacts[name])
                 for name, fname in WHISPER_FILES.items()}
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
            clips = [{"start": offsets[i] / SAMPLE_RATE, "end": offsets[i + 1] / SAMPLE_RATE}
                     for i in range(len(group))]
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

    def transcribe_rows(self, uris: list[str], hashes: list[str], windows: list[list[tuple[int, int]]]) -> list[str]:
        """Each row's windows transcribed, in order (all rows' windows in one flat list).

        The clips are read and decoded again, streaming, on a thread that stays at most two
        Whisper batches ahead: at any time the actor holds one batch of windows (8 x 30 s on
        CPU, 1 MB each), never a whole episode.

        Raises:
            ModerationError: a clip's bytes differ from those preprocessing hashed.
        """

        def audio() -> Iterator[np.ndarray]:
            for uri, want, wins in zip(uris, hashes, windows, strict=True):
                if not wins:
                    continue
                data = read_media(uri, max_bytes=self.max_bytes, kind="audio", roots=self.context.media_roots)
                if media_content_hash(data, uri) != want:
                    raise ModerationError(f"{uri}: changed between preprocessing and scoring (content hash differs)")
                yield from window_samples(data, uri=uri, windows=wins)

        texts: list[str] = []
        group: list[np.ndarray] = []
        for pcm in _prefetched(audio(), depth=2 * self._asr_batch):
            group.append(pcm)
            if len(group) == self._asr_batch:
                texts += self.transcribe(group)
                group = []
        return texts + (self.transcribe(group) if group else [])

    def to_half(self) -> None:
        self._text.to_half()

    def score(self, batch: pa.Table) -> tuple[list[dict[str, float]], list[dict[str, str]]]:
        if self._langid is None:
            raise RuntimeError("setup() was not called")
        categories = self.spec.categories
        n = batch.num_rows
        starts = batch.column("window_start").to_pylist()
        ends = batch.column("window_end").to_pylist()
        uris = batch.column(media_column(self.modality)).to_pylist()  # rows with windows have one
        texts = self.transcribe_rows(uris, batch.column(CONTENT_HASH).to_pylist(),
                                     [list(zip(s, e, strict=True)) for s, e in zip(starts, ends, strict=True)])
        scores = [dict.fromkeys(categories, 0.0) for _ in range(n)]
        evidence = [dict.fromkeys(categories, NO_SPEECH_EVIDENCE) for _ in range(n)]
        rows, segments, names, k = [], [], [], 0
        for i in range(n):
            heard = [(s, e, texts[k + j]) for j, (s, e) in enumerate(zip(starts[i], ends[i], strict=True))
                     if texts[k + j]]
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
            for (s, e, t), spans in zip(heard, self._text.windower().spans([t for _, _, t in heard]), strict=True):
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
