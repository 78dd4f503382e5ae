"""Benchmark: the full Ray Data backfill vs a plain single-process loop, same items.

Both paths run the same classifier (digest-checked load included) with the same batch size
and torch thread count from the run profile, on the same demo catalog. The pipeline is
timed from job start to its last commit (Ray itself is started beforehand, as on a
cluster); the loop from model load to its last scored batch (it writes nothing).

    .venv/bin/python scripts/bench_backfill.py [--items 2000] [--profile conf/jobs/local.yaml]
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import typer

os.environ.setdefault("HF_HUB_OFFLINE", "1")

app = typer.Typer(add_completion=False)


def plain_loop(catalog_uri: str, spec, profile) -> int:
    """Score every catalog item in one process: read -> preprocess -> score, batch by batch."""
    import pyarrow as pa
    import torch
    from deltalake import DeltaTable

    from moderation.catalog import open_catalog, to_work_rows
    from moderation.classifiers.base import build_classifier

    if profile.torch_threads:
        torch.set_num_threads(profile.torch_threads)
    snap = open_catalog(catalog_uri)
    clf = build_classifier(spec, batch_size=profile.batch_size)
    clf.setup("cpu")
    n = 0
    dataset = DeltaTable(catalog_uri).to_pyarrow_dataset()
    for batch in dataset.to_batches(columns=snap.columns, batch_size=profile.batch_size):
        out = clf.process_batch(clf.prepare(to_work_rows(pa.Table.from_batches([batch]), "text")))
        n += out.num_rows
    return n


@app.command()
def main(
    items: int = typer.Option(2000, help="demo catalog size"),
    profile_path: Path = typer.Option(None, "--profile", help="run profile (default conf/jobs/local.yaml)"),
    data_dir: Path = typer.Option(None, help="labelled data (default ../shared/data)"),
) -> None:
    import ray

    from moderation.backfill import run_backfill
    from moderation.config import default_conf_dir, load_model_registry, load_policy, load_run_profile
    from moderation.datasets import default_data_dir
    from moderation.demo import write_demo_catalog
    from moderation.pipeline import ensure_ray

    policy_path = default_conf_dir() / "policies/catalog-safety/v1.yaml"
    profile = load_run_profile(profile_path)
    spec = load_model_registry()[load_policy(policy_path).policy.models[0]]
    with tempfile.TemporaryDirectory() as tmp:
        catalog = f"{tmp}/catalog"
        write_demo_catalog(catalog, items=items, data_dir=data_dir or default_data_dir())

        t0 = time.perf_counter()
        n_loop = plain_loop(catalog, spec, profile)
        loop_s = time.perf_counter() - t0

        ensure_ray()
        t0 = time.perf_counter()
        result = run_backfill(catalog_uri=catalog, lake_root=f"{tmp}/lake", policy_path=policy_path,
                              profile_path=profile_path, progress=False)
        pipe_s = time.perf_counter() - t0
        ray.shutdown()

    assert n_loop == result.selected_pairs == items, (n_loop, result.selected_pairs, items)
    loop_ips, pipe_ips = n_loop / loop_s, result.selected_pairs / pipe_s
    print(f"\nitems={items} batch_size={profile.batch_size} torch_threads={profile.torch_threads} "
          f"actors={profile.actors} actor_num_cpus={profile.actor_num_cpus} cpus={os.cpu_count()}")
    print(f"{'path':34} {'seconds':>8} {'items/s':>8}")
    print(f"{'plain single-process loop':34} {loop_s:8.1f} {loop_ips:8.1f}")
    print(f"{'Ray Data backfill (incl. commits)':34} {pipe_s:8.1f} {pipe_ips:8.1f}")
    print(f"ratio pipeline/loop: {pipe_ips / loop_ips:.2f}x (goal >= 0.80x)")


if __name__ == "__main__":
    app()
