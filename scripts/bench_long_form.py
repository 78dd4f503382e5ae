"""Benchmark: what scoring long-form content whole costs (issue 13), in one run on this machine.

Text: for each model (default text-minilm-heads-v1 and text-e5-ft-v1) and each windowing, the
real registry model's classifier scores two sets of items the way a pipeline actor does
(``prepare``, ``setup``, ``process_batch``; batch size and torch threads from the run profile;
a warm-up batch excluded, as is ``setup``; wall time by ``time.perf_counter``, process CPU time
beside it; the two windowings take turns batch by batch):

* ``short``: the text of today's demo mix (``demo.build_demo_table`` without its long-form items);
* ``long``: transcripts of 6,000 words of a show's talk (``demo.long_transcript``: its intro, its
  ad read every 1,500 words), each with a passage of held-out hateful posts (HateXplain test,
  labelled hatespeech; about 100 words, as the demo plants them, ``--plant-words``) from word 5,000.

``legacy`` is the windowing of before issue 13 (a run profile's ``text_windowing: legacy``: at
most six 160-word segments, MiniLM reading each up to 128 tokens), ``tokens`` today's (every word,
windows the encoder reads whole). The table gives items/s, words/s (words of the items, read or
not), encoder tokens/s (tokens the encoder ran, special tokens included), windows per item, the
share of words read, and for the long set how many planted passages were found: the item's hate
score at or above the review threshold of the newest policy that uses the model, with the
evidence window on the plant. The passages alone (each scored as a short item) give the ceiling.

Audio: an 8-minute clip of espeak-ng talk (``demo.long_speech_clip``) with a spoken passage of
held-out hateful posts from minute 6, through audio-speech-text-v1 (decode, voice detection,
Whisper, the text heads): audio seconds per wall second, and whether the passage was found.

Costs are extrapolated from the long set and the clip: wall and CPU hours on this machine per
million words and per 1,000 hours of audio. Other processes on the machine slow the wall
figures; the load average is printed before and after.

    .venv/bin/python scripts/bench_long_form.py [--quick] [--json figures.json]
    .venv/bin/python scripts/bench_long_form.py --model text-minilm-heads-v1 --model text-cascade-muse-e5-v1

``scripts/bench_device.py --long-form`` runs the same long-form measurement on a GPU.
"""

from __future__ import annotations

import json
import math
import os
import random
import re
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import typer

os.environ.setdefault("HF_HUB_OFFLINE", "1")
app = typer.Typer(add_completion=False)

DEFAULT_MODELS = ("text-minilm-heads-v1", "text-e5-ft-v1")
AUDIO_MODEL = "audio-speech-text-v1"
PLANT_AT = 5_000
_SPAN = re.compile(r"@(\d+)-(\d+)$")
_SECONDS = re.compile(r"^window (\d+(?:\.\d+)?)-(\d+(?:\.\d+)?)s")


@dataclass(frozen=True)
class LongItem:
    item_id: str
    body: str  #: normalised, as the classifiers read it
    plant_start: int  #: character offsets of the planted passage in ``body``
    plant_end: int
    plant: str


@dataclass
class TextRun:
    """One model x windowing x item set."""

    model_id: str
    windowing: str
    set: str
    items: int
    words: int  #: words of the items (units_total)
    words_read: int  #: words the encoder read whole (units_scored)
    windows: int
    tokens: int | None  #: tokens the encoder ran (None: no encoder tokens, e.g. the lexical baseline)
    setup_s: float
    prep_s: float
    score_s: float
    cpu_s: float
    found: int | None = None  #: planted posts found (long set)
    planted: int | None = None

    @property
    def wall_s(self) -> float:
        return self.prep_s + self.score_s

    def rates(self) -> dict[str, float | None]:
        w = self.wall_s
        return {"items_per_s": self.items / w, "words_per_s": self.words / w,
                "tokens_per_s": None if self.tokens is None else self.tokens / w,
                "windows_per_item": self.windows / self.items, "read_share": self.words_read / max(self.words, 1),
                "wall_s_per_million_words": 1e6 * w / max(self.words, 1),
                "cpu_s_per_million_words": 1e6 * self.cpu_s / max(self.words, 1)}


@dataclass
class AudioRun:
    model_id: str
    clip_s: float
    units_scored: float | None
    coverage_reason: str | None
    setup_s: float
    prep_s: float
    score_s: float
    cpu_s: float
    found: bool | None = None  #: the spoken plant found (None: no plant)
    evidence: str | None = None  #: the hate evidence

    def rates(self) -> dict[str, float]:
        w = self.prep_s + self.score_s
        return {"audio_s_per_wall_s": self.clip_s / w, "wall_h_per_1000_audio_h": 1000 * w / self.clip_s,
                "cpu_h_per_1000_audio_h": 1000 * self.cpu_s / self.clip_s}


# ---- inputs ---------------------------------------------------------------------------------


def held_out_posts(data_dir: Path, *, seed: int = 13, max_chars: int | None = None):
    """HateXplain test posts labelled hatespeech (held out from every model's training), shuffled."""
    from moderation.evaluation.sources import read_hatexplain

    posts = [r for r in read_hatexplain(data_dir, "test")
             if r.label == "hatespeech" and (max_chars is None or len(r.text) <= max_chars)]
    random.Random(seed).shuffle(posts)
    return posts


def plants(n: int, *, data_dir: Path, min_words: int, spoken: bool = False, seed: int = 13) -> list[str]:
    """``n`` passages of held-out hateful posts (``demo.plant_passage``: posts joined until
    ``min_words`` words; 0: one post each), no post used twice while the posts last."""
    from moderation.demo.catalog import plant_passage

    posts = held_out_posts(data_dir, seed=seed, max_chars=200 if spoken else None)
    out, at = [], 0
    for _ in range(n):
        turn = posts[at % len(posts):] + posts[: at % len(posts)]
        out.append(plant_passage(turn, min_words=min_words, spoken=spoken).text)
        used = 0
        while True:  # the posts plant_passage took: the first ones with min_words words between them
            used += len(posts[at % len(posts)].text.split())
            at += 1
            if used >= min_words:
                break
    return out


def long_items(n: int, *, data_dir: Path, words: int = 6_000, plant_words: int = 100, seed: int = 13) -> list[LongItem]:
    """``n`` transcripts of ``words`` words of a show's talk (``demo.long_transcript``: its intro,
    its ad read every 1,500 words), each with a passage of held-out hateful posts planted at word
    ``PLANT_AT``."""
    from moderation.demo.catalog import long_transcript, make_show

    rng = random.Random(seed)
    out = []
    for i, plant in enumerate(plants(n, data_dir=data_dir, min_words=plant_words, seed=seed)):
        text = long_transcript(rng, words=words, show=make_show(rng), plant=plant, at_word=PLANT_AT)
        out.append(LongItem(f"long_{i:03d}", text.text, text.planted_start, text.planted_end, plant))
    return out


def short_rows(items: int, *, data_dir: Path):
    """Text work rows of today's demo mix (``build_demo_table`` without long-form items)."""
    from moderation.demo.catalog import build_demo_table
    from moderation.storage.catalog import to_work_rows

    table, _ = build_demo_table(items=items, data_dir=data_dir, long_form=0, long_audio=0)
    return to_work_rows(table, "text")


def long_rows(items: list[LongItem]):
    import pyarrow as pa

    from moderation.storage.catalog import to_work_rows

    return to_work_rows(pa.table({"item_id": [x.item_id for x in items], "item_type": ["episode"] * len(items),
                                  "title": [f"Episode {i + 1}" for i in range(len(items))],
                                  "body_text": [x.body for x in items]}), "text")


def speech_clip(seconds: float, out: Path, *, data_dir: Path | None = None, seed: int = 13):
    """``demo.long_speech_clip``: ``seconds`` of espeak-ng talk, with (given ``data_dir``) a spoken
    passage of held-out hateful posts from three quarters of the way in (minute 6 of 8, as in the
    demo); None without espeak-ng."""
    from moderation.demo.catalog import _ESPEAK, long_speech_clip

    if not _ESPEAK:
        return None
    rng = random.Random(seed)
    plant = plants(1, data_dir=data_dir, min_words=60, spoken=True, seed=seed)[0] if data_dir else None
    return long_speech_clip(rng, out, seconds=seconds, plant=plant, at_seconds=0.75 * seconds)


def review_threshold(model_id: str, category: str = "hate") -> float:
    """``category``'s review threshold (else its threshold) in the newest policy using the model."""
    from moderation.config import default_conf_dir, load_model_registry, load_policy

    registry = load_model_registry()
    best = None
    for path in (default_conf_dir() / "policies").glob("*/*.yaml"):
        policy = load_policy(path, registry).policy
        if model_id in policy.models and category in policy.categories and (best is None or policy.version > best.version):
            best = policy
    if best is None:
        return 0.5
    rule = best.categories[category]
    return rule.review_threshold or rule.threshold


# ---- measurement ----------------------------------------------------------------------------


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def encoder_tokens(clf, texts: list[str], sent=None) -> int | None:
    """Tokens the encoder runs for ``texts`` (special tokens included; None without an encoder).
    The cascade: its cheap model's for every text plus its strong model's for ``sent`` ones."""
    kind = clf.spec.kind
    if not texts:
        return 0
    if kind == "cascade_heads":
        strong = [t for t, s in zip(texts, sent if sent is not None else [True] * len(texts)) if s]
        return (encoder_tokens(clf.cheap, texts) or 0) + (encoder_tokens(clf.strong, strong) or 0)
    if kind in ("minilm_heads", "ocr_text", "speech_text"):
        return sum(min(c, clf.max_tokens) for c in clf.windower().token_count(texts))
    if kind == "e5_heads":
        enc = clf._encoder
        return sum(len(ids) + 2 * max(1, math.ceil(len(ids) / enc.window)) for ids in enc.content_ids(texts))
    if kind == "muse_heads":
        return sum(len(ids) for ids in clf._encoder.token_ids(texts))
    return None


def _found(row: dict, item: LongItem, threshold: float) -> bool:
    scores, evidence = dict(row["category_scores"] or []), dict(row["evidence"] or [])
    m = _SPAN.search(evidence.get("hate", ""))
    return (scores.get("hate", 0.0) >= threshold and m is not None
            and int(m.group(1)) < item.plant_end and item.plant_start < int(m.group(2)))


def _warm_rows():
    import pyarrow as pa

    from moderation.demo.catalog import _TOPIC, _TRANSCRIPT
    from moderation.storage.catalog import to_work_rows

    body = " ".join(f"{line} {topic}." for line, topic in zip(_TRANSCRIPT * 8, _TOPIC * 4))  # about 400 words
    return to_work_rows(pa.table({"item_id": ["warm_0", "warm_1"], "item_type": ["episode"] * 2,
                                  "title": ["Warm up", "Warm up"], "body_text": [body, body[:200]]}), "text")


def measure_text(spec, windowings: tuple[str, ...], sets: dict, *, batch_size: int, device: str = "cpu",
                 half: bool = False, long: list[LongItem] = (), threshold: float = 0.5) -> list[TextRun]:
    """Score each set of work rows with ``spec`` under each of ``windowings`` (see the module
    docstring). The windowings take turns batch by batch, so a change in the machine's load
    between them falls on both alike."""
    import numpy as np

    from moderation.classifiers.base import build_classifier
    from moderation.classifiers.windows import with_windowing

    clfs, setup = {}, {}
    for windowing in windowings:
        clf = build_classifier(with_windowing(spec, windowing), batch_size=batch_size)
        t0 = time.perf_counter()
        clf.setup(device)
        if half:
            clf.to_half()
        _sync(device)
        setup[windowing] = time.perf_counter() - t0
        clf.process_batch(clf.prepare(_warm_rows()))  # warm-up (lazy init, allocator), not timed
        clfs[windowing] = clf
    by_id = {x.item_id: x for x in long}
    runs = []
    for name, rows in sets.items():
        n_long = sum(1 for i in rows.column("item_id").to_pylist() if i in by_id)
        acc = {w: TextRun(spec.model_id, w, name, rows.num_rows, 0, 0, 0, 0, setup[w], 0.0, 0.0, 0.0,
                          0 if n_long else None, n_long or None) for w in windowings}
        for start in range(0, rows.num_rows, batch_size):
            batch = rows.slice(start, batch_size)
            for windowing, clf in clfs.items():
                run = acc[windowing]
                c0, t0 = time.process_time(), time.perf_counter()
                prepared = clf.prepare(batch)
                t1 = time.perf_counter()
                out = clf.process_batch(prepared)
                _sync(device)
                t2 = time.perf_counter()
                run.cpu_s += time.process_time() - c0
                run.prep_s += t1 - t0
                run.score_s += t2 - t1
                sent = getattr(clf, "_last_sent", None)
                scorable = [r is None for r in prepared.column("qreason").to_pylist()]
                segs = [s for ok, ss in zip(scorable, prepared.column("segments").to_pylist()) if ok for s in ss]
                n_tok = encoder_tokens(clf, segs, sent=None if sent is None or len(sent) != len(segs) else sent)
                run.tokens = None if run.tokens is None or n_tok is None else run.tokens + n_tok
                run.windows += len(segs)
                run.words += int(np.nansum(np.array(prepared.column("units_total").to_pylist(), dtype=float)))
                run.words_read += int(np.nansum(np.array(prepared.column("units_scored").to_pylist(), dtype=float)))
                if n_long:
                    run.found += sum(1 for row in out.to_pylist()
                                     if row["item_id"] in by_id and _found(row, by_id[row["item_id"]], threshold))
        runs += acc.values()
    return runs


def plants_alone(spec, items: list[LongItem], *, threshold: float, batch_size: int, device: str = "cpu") -> int:
    """How many of the planted passages the model flags when each is the whole item (the ceiling)."""
    import pyarrow as pa

    from moderation.classifiers.base import build_classifier
    from moderation.storage.catalog import to_work_rows

    clf = build_classifier(spec, batch_size=batch_size)
    clf.setup(device)
    rows = to_work_rows(pa.table({"item_id": [x.item_id for x in items], "item_type": ["episode"] * len(items),
                                  "title": [x.plant for x in items]}), "text")
    out = clf.process_batch(clf.prepare(rows))
    return sum(dict(s or []).get("hate", 0.0) >= threshold for s in out.column("category_scores").to_pylist())


def measure_audio(clip, *, device: str = "cpu", batch_size: int = 64, warm=None) -> AudioRun:
    """audio-speech-text-v1 on one ``demo.LongClip``: prepare, setup, process_batch (a short
    warm-up clip first, not timed); the plant found when the hate score reaches the review
    threshold with the evidence window on it."""
    import pyarrow as pa

    from moderation.classifiers.base import build_classifier
    from moderation.config import load_model_registry
    from moderation.storage.catalog import to_work_rows

    def rows(path: Path, item_id: str):
        return to_work_rows(pa.table({"item_id": [item_id], "item_type": ["episode"], "audio_clip": [str(path)]}), "audio")

    clf = build_classifier(load_model_registry()[AUDIO_MODEL], batch_size=batch_size)
    t0 = time.perf_counter()
    clf.setup(device)
    setup_s = time.perf_counter() - t0
    if warm is not None:
        clf.process_batch(clf.prepare(rows(warm.path, "warm")))
    c0, t0 = time.process_time(), time.perf_counter()
    prepared = clf.prepare(rows(clip.path, "clip"))
    t1 = time.perf_counter()
    out = clf.process_batch(prepared)
    _sync(device)
    t2 = time.perf_counter()
    cpu_s = time.process_time() - c0
    row = out.to_pylist()[0]
    if row["qreason"] is not None:
        raise RuntimeError(f"{AUDIO_MODEL}: the clip was quarantined: {row['qreason']}: {row['qdetail']}")
    found = evidence = None
    if clip.planted_start is not None:
        evidence = dict(row["evidence"]).get("hate", "")
        m = _SECONDS.match(evidence)
        found = bool(dict(row["category_scores"]).get("hate", 0.0) >= review_threshold(AUDIO_MODEL) and m
                     and float(m.group(1)) < clip.planted_end and clip.planted_start < float(m.group(2)))
    return AudioRun(AUDIO_MODEL, clip.seconds, row.get("units_scored"), row.get("coverage_reason"), setup_s,
                    t1 - t0, t2 - t1, cpu_s, found, evidence)


def print_audio(audio: AudioRun) -> None:
    y = audio.rates()
    print(f"\naudio {audio.model_id}: clip {audio.clip_s:.1f} s (scored {audio.units_scored} s, "
          f"reason {audio.coverage_reason}); setup {audio.setup_s:.1f} s, prepare {audio.prep_s:.1f} s "
          f"(decode, voice detection), score {audio.score_s:.1f} s (Whisper, text heads), cpu {audio.cpu_s:.1f} s: "
          f"{y['audio_s_per_wall_s']:.2f} audio s per wall s")
    if audio.found is not None:
        print(f"  the passage spoken from {0.75 * audio.clip_s:.0f} s found: {audio.found} (hate evidence: "
              f"{audio.evidence[:70]})")


# ---- report ---------------------------------------------------------------------------------


def print_text(runs: list[TextRun], ceilings: dict[str, tuple[int, int, float]]) -> None:
    print(f"{'model':24} {'windowing':9} {'set':5} {'items':>5} {'words':>7} {'read':>6} {'win/item':>8} "
          f"{'tokens':>8} {'wall s':>7} {'cpu s':>7} {'items/s':>8} {'words/s':>8} {'tokens/s':>8} {'found':>6}")
    for r in runs:
        x = r.rates()
        tok = "-" if r.tokens is None else f"{r.tokens:8d}"
        tps = "-" if x["tokens_per_s"] is None else f"{x['tokens_per_s']:8.0f}"
        found = f"{r.found}/{r.planted}" if r.planted else "-"
        print(f"{r.model_id:24} {r.windowing:9} {r.set:5} {r.items:5d} {r.words:7d} {x['read_share']:6.1%} "
              f"{x['windows_per_item']:8.1f} {tok:>8} {r.wall_s:7.1f} {r.cpu_s:7.1f} {x['items_per_s']:8.1f} "
              f"{x['words_per_s']:8.0f} {tps:>8} {found:>6}")
    print("read = words the encoder read whole / words of the items; found = planted passages with the item's hate "
          "score >= the review threshold and the evidence window on the plant")
    for model_id, (alone, n, thr) in ceilings.items():
        print(f"  {model_id}: hate review threshold {thr:.3f}; the planted passages alone, as whole items: "
              f"{alone}/{n} flagged")


def print_costs(runs: list[TextRun], audio: AudioRun | None, where: str) -> dict:
    """Per long-set run and for the clip: wall and CPU hours per million words and per 1,000 h
    of audio on ``where`` (the machine, in words)."""
    costs: dict = {"text": {}, "audio": None}
    print(f"\ncost on {where}, extrapolated from the long set and the clip:")
    for r in runs:
        if r.set != "long":
            continue
        x = r.rates()
        costs["text"][f"{r.model_id}/{r.windowing}"] = {k: x[k] for k in ("wall_s_per_million_words",
                                                                            "cpu_s_per_million_words", "read_share")}
        print(f"  {r.model_id:24} {r.windowing:7} per million words: {x['wall_s_per_million_words'] / 3600:6.2f} h wall, "
              f"{x['cpu_s_per_million_words'] / 3600:6.2f} CPU-h  (reads {x['read_share']:.1%} of the words)")
    if audio is not None:
        y = audio.rates()
        costs["audio"] = y
        print(f"  {audio.model_id:24} per 1,000 h of audio: {y['wall_h_per_1000_audio_h']:6.1f} h wall, "
              f"{y['cpu_h_per_1000_audio_h']:6.1f} CPU-h  ({y['audio_s_per_wall_s']:.1f} audio s per wall s)")
    return costs


@app.command()
def main(
    quick: bool = typer.Option(False, help="a small run: 200 demo items, 2 long transcripts, a 2-minute clip"),
    items: int = typer.Option(1000, help="demo catalog items for the short set"),
    long_count: int = typer.Option(6, "--long", help="long transcripts"),
    long_words: int = typer.Option(6_000, help="words per long transcript (the plant starts at word 5,000)"),
    plant_words: int = typer.Option(100, help="words of held-out hateful posts planted in each transcript "
                                    "(whole posts joined, as the demo plants them; 0: one post)"),
    clip_seconds: float = typer.Option(480.0, help="seconds of the audio clip, a spoken passage from three "
                                       "quarters of the way in (0: no audio)"),
    model: list[str] = typer.Option(None, help=f"text model (repeatable; default {', '.join(DEFAULT_MODELS)})"),
    profile_path: Path = typer.Option(None, "--profile", help="run profile (default conf/jobs/local.yaml)"),
    data_dir: Path = typer.Option(None, help="labelled data and media (default ../shared/data)"),
    json_path: Path = typer.Option(None, "--json", help="also write the figures here"),
) -> None:
    import torch

    from moderation.config import load_model_registry, load_run_profile
    from moderation.evaluation.sources import default_data_dir

    if quick:
        items, long_count, clip_seconds = min(items, 200), min(long_count, 2), min(clip_seconds, 120.0)
    data_dir = data_dir or default_data_dir()
    profile = load_run_profile(profile_path)
    if profile.torch_threads:
        torch.set_num_threads(profile.torch_threads)  # as the pipeline's actors do
    registry = load_model_registry()
    models = model or list(DEFAULT_MODELS)
    load_before = os.getloadavg()
    print(f"cpus={os.cpu_count()} torch_threads={torch.get_num_threads()} batch_size={profile.batch_size} "
          f"load average before: {load_before[0]:.1f}")

    long = long_items(long_count, data_dir=data_dir, words=long_words, plant_words=plant_words)
    sets = {"short": short_rows(items, data_dir=data_dir), "long": long_rows(long)}
    runs: list[TextRun] = []
    ceilings: dict[str, tuple[int, int, float]] = {}
    for model_id in models:
        spec = registry[model_id]
        thr = review_threshold(model_id)
        runs += measure_text(spec, ("legacy", "tokens"), sets, batch_size=profile.batch_size, long=long, threshold=thr)
        ceilings[model_id] = (plants_alone(spec, long, threshold=thr, batch_size=profile.batch_size), len(long), thr)

    audio = None
    if clip_seconds > 0:
        with tempfile.TemporaryDirectory() as tmp:
            clip = speech_clip(clip_seconds, Path(tmp) / "clip.wav", data_dir=data_dir)
            if clip is None:
                print("espeak-ng not found: no audio figure")
            else:
                audio = measure_audio(clip, batch_size=profile.batch_size,
                                      warm=speech_clip(5.0, Path(tmp) / "warm.wav", seed=1))

    load_after = os.getloadavg()
    print(f"\nload average after: {load_after[0]:.1f} (other processes on these {os.cpu_count()} CPUs slow the wall "
          f"figures; cpu s is this process's own CPU time)\n")
    print_text(runs, ceilings)
    if audio is not None:
        print_audio(audio)
    costs = print_costs(runs, audio, f"this machine ({os.cpu_count()} CPUs)")
    if json_path is not None:
        json_path.write_text(json.dumps({
            "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "batch_size": profile.batch_size,
            "load_average": {"before": load_before[0], "after": load_after[0]},
            "text": [{**asdict(r), **r.rates()} for r in runs],
            "plants_alone": {m: {"flagged": a, "planted": n, "threshold": t} for m, (a, n, t) in ceilings.items()},
            "audio": None if audio is None else {**asdict(audio), **audio.rates()},
            "cost": costs,
        }, indent=2))
        print(f"\nfigures written to {json_path}")


if __name__ == "__main__":
    app()
