"""Benchmark: memory of scoring an episode's audio whole, as the episode grows (issue 13, point 3).

Goal: decoding and voice detection stream, so peak memory does not grow with the episode's
length (a 3-hour episode costs what a 10-minute one does, plus its compressed bytes), where
holding the waveform grows by 115 MB per hour (16 kHz, 16-bit).

For each length (``--minutes``, default 10 60 180) an MP3 episode (44.1 kHz mono, 64 kbit/s,
what spoken-word podcasts publish) is built from the shared LibriSpeech readings, espeak-ng
speech and pauses, encoded streaming (never held whole), in a temp dir. Then, each in its own
Python process so each peak is its own (``ru_maxrss``):

* ``streaming``: what the classifier does (``moderation/classifiers/audio.py``): ``scan_audio``
  (decode + silero-vad chunk by chunk, as preprocessing does), then ``window_samples`` (the
  actor's second, windowing decode; the windows' audio is dropped as Whisper would consume it);
* ``whole`` (the baseline, in the same run): the way before streaming, with the limit lifted:
  the clip decoded into one array, the VAD run over it, and the speech windows' samples kept as
  bytes (what preprocessing used to send to the actor).

Each process's RSS after its imports and the compressed file's read is printed as "base", so
the growth is the figure to compare. Whisper is not run here (its memory is one batch of
windows whatever the clip's length; ``scripts/bench_long_form.py`` measures its speed).

    .venv/bin/python scripts/bench_audio_memory.py [--minutes 10 60 180] [--data-dir ../shared/data]

Exits 0 whether or not the goal is met (it is a benchmark).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MiB = 1024 * 1024
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SPOKEN = [
    "Welcome back to the show. Today we talk about city history and the people who built the harbor.",
    "Before the break we were discussing how the old station was saved by a group of volunteers.",
    "Thanks to everyone who wrote in about last week's episode on long distance running.",
]


def _rss_peak() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def _rss_now() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


# ---- the episode --------------------------------------------------------------------


def speech_pattern(data_dir: Path, work: Path) -> "np.ndarray":  # noqa: F821 - numpy imported lazily
    """About a minute of 16 kHz speech and pauses: the shared readings and espeak-ng sentences."""
    import numpy as np

    from moderation.classifiers.audio import SAMPLE_RATE, decode_audio
    from moderation.demo.catalog import speak

    parts = []
    for clip in sorted((data_dir / "media" / "audio").glob("[0-9]*.ogg")):  # LibriSpeech readings
        parts.append(decode_audio(clip.read_bytes(), uri=str(clip), max_seconds=60))
    if shutil.which("espeak-ng"):
        for k, text in enumerate(SPOKEN):
            wav = work / f"spoken{k}.wav"
            speak(text, wav)
            parts.append(decode_audio(wav.read_bytes(), uri=str(wav), max_seconds=60))
    if not parts:
        raise SystemExit(f"no speech: {data_dir}/media/audio has no readings and espeak-ng is not installed")
    pause = np.zeros(int(1.5 * SAMPLE_RATE), np.int16)
    return np.concatenate([x for p in parts for x in (p, pause)])


def write_episode(path: Path, pattern, minutes: float) -> None:
    """``pattern`` repeated for ``minutes``, encoded to MP3 a second at a time."""
    import av
    import numpy as np

    from moderation.classifiers.audio import SAMPLE_RATE

    total = int(minutes * 60 * SAMPLE_RATE)
    with av.open(str(path), "w", format="mp3") as out:
        stream = out.add_stream("libmp3lame", rate=44_100, layout="mono")
        stream.bit_rate = 64_000
        resampler = av.AudioResampler(format="s16p", layout="mono", rate=44_100)
        at = 0
        while at < total:
            n = min(SAMPLE_RATE, total - at)
            idx = (np.arange(at, at + n) % pattern.size)
            frame = av.AudioFrame.from_ndarray(pattern[idx][None], format="s16", layout="mono")
            frame.sample_rate = SAMPLE_RATE
            for f in resampler.resample(frame):
                for packet in stream.encode(f):
                    out.mux(packet)
            at += n
        for f in resampler.resample(None):
            for packet in stream.encode(f):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)


# ---- one measurement, in its own process --------------------------------------------


def measure(mode: str, path: str) -> dict:
    import numpy as np

    from moderation.classifiers.audio import (
        SAMPLE_RATE,
        SileroVad,
        decode_audio,
        pack_windows,
        scan_audio,
        speech_spans,
        window_samples,
    )
    from moderation.config import default_conf_dir, load_model_spec
    from moderation.storage.artifacts import read_verified

    spec = load_model_spec(default_conf_dir() / "models" / "audio-speech-text-v1.yaml")
    vad = SileroVad(read_verified(spec.model_id, "vad", spec.artifacts["vad"]))
    threshold, window = spec.preprocessing["vad_threshold"], int(spec.preprocessing["window_s"] * SAMPLE_RATE)
    data = Path(path).read_bytes()
    base = _rss_now()
    t0 = time.perf_counter()
    if mode == "streaming":
        scan = scan_audio(data, uri=path, vad=vad, max_seconds=1e9, max_claimed_s=1e9, window=window,
                          threshold=threshold)
        t_scan = time.perf_counter() - t0
        scan_peak = _rss_peak()
        t1 = time.perf_counter()
        speech = sum(w.size for w in window_samples(data, uri=path, windows=scan.windows))
        t_windows = time.perf_counter() - t1
        samples, windows = scan.samples, scan.windows
    else:
        pcm = decode_audio(data, uri=path, max_seconds=1e9)
        windows = pack_windows(speech_spans(vad.probabilities(pcm), threshold=threshold, n_samples=pcm.size),
                               window=window)
        kept = [pcm[s:e].tobytes() for s, e in windows]
        t_scan = time.perf_counter() - t0
        scan_peak = _rss_peak()
        t_windows = 0.0
        speech, samples = sum(len(b) // 2 for b in kept), pcm.size
        del kept, pcm
    return {"mode": mode, "base": base, "scan_peak": scan_peak, "peak": _rss_peak(), "t_scan": t_scan,
            "t_windows": t_windows, "seconds": samples / SAMPLE_RATE, "speech_s": speech / SAMPLE_RATE,
            "windows": len(windows), "bytes": len(data), "np": np.__version__}


def run_measure(mode: str, path: Path) -> dict:
    out = subprocess.run([sys.executable, __file__, "--measure", mode, str(path)], capture_output=True, text=True,
                         check=False, env={**os.environ, "OMP_NUM_THREADS": "1"})
    if out.returncode != 0:
        raise SystemExit(f"{mode} {path}: failed\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, nargs="+", default=[10, 60, 180])
    ap.add_argument("--data-dir", type=Path, default=None, help="shared data (default: ../shared/data)")
    ap.add_argument("--measure", nargs=2, metavar=("MODE", "PATH"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.measure:
        print(json.dumps(measure(*args.measure)))
        return

    from moderation.evaluation.sources import default_data_dir

    data_dir = args.data_dir or default_data_dir()
    work = Path(tempfile.mkdtemp(prefix="bench-audio-memory-"))
    try:
        pattern = speech_pattern(Path(data_dir), work)
        print(f"speech pattern: {pattern.size / 16000:.1f} s repeated; MP3 44.1 kHz mono 64 kbit/s; "
              f"{os.cpu_count()} CPUs; each measurement in its own process", flush=True)
        rows = []
        for minutes in args.minutes:
            path = work / f"episode-{minutes:g}min.mp3"
            t = time.perf_counter()
            write_episode(path, pattern, minutes)
            print(f"  built {path.name} ({path.stat().st_size / MiB:.1f} MB) in {time.perf_counter() - t:.0f} s",
                  flush=True)
            for mode in ("streaming", "whole"):
                r = run_measure(mode, path)
                rows.append((minutes, r))
                print(f"  {minutes:g} min {mode}: base {r['base'] / MiB:.0f} MiB, peak {r['peak'] / MiB:.0f} MiB, "
                      f"{r['t_scan']:.1f} s scan + {r['t_windows']:.1f} s windows", flush=True)
            path.unlink()
        print()
        print(f"{'episode':>8} {'mode':>10} {'file MB':>8} {'base MiB':>9} {'peak MiB':>9} {'growth MiB':>11} "
              f"{'speech s':>9} {'windows':>8} {'scan s':>7} {'audio s/s':>10} {'window s':>9}")
        for minutes, r in rows:
            growth = (r["peak"] - r["base"]) / MiB
            print(f"{minutes:>6g} m {r['mode']:>10} {r['bytes'] / 1e6:>8.1f} {r['base'] / MiB:>9.0f} "
                  f"{r['peak'] / MiB:>9.0f} {growth:>11.0f} {r['speech_s']:>9.0f} {r['windows']:>8} "
                  f"{r['t_scan']:>7.1f} {r['seconds'] / r['t_scan']:>10.0f} {r['t_windows']:>9.1f}")
        stream = [r for _, r in rows if r["mode"] == "streaming"]
        if len(stream) >= 2:
            lo, hi = stream[0], stream[-1]
            print(f"\nstreaming growth, {lo['seconds'] / 60:.0f} -> {hi['seconds'] / 60:.0f} min: "
                  f"{(lo['peak'] - lo['base']) / MiB:.0f} -> {(hi['peak'] - hi['base']) / MiB:.0f} MiB "
                  f"(the waveform alone grows by {(hi['seconds'] - lo['seconds']) * 32000 / MiB:.0f} MiB)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
