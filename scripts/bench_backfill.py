"""Benchmark: the full Ray Data backfill vs a plain single-process loop, per modality.

For each model of the policy (one modality each), both paths run the same classifier
(digest-checked load included) with the same batch size and torch thread count from the run
profile, on the same demo catalog items. The pipeline is timed from job start to its last
commit (Ray itself is started beforehand, as on a cluster); the loop from model load to its
last scored batch (it writes nothing). The loop also splits its time into preprocessing
(CPU: text segmentation, image decode) and scoring (model).

    .venv/bin/python scripts/bench_backfill.py [--items 2000] [--policy conf/policies/catalog-safety/v1.yaml]
    .venv/bin/python scripts/bench_backfill.py --items 300 --policy conf/policies/catalog-safety/v3.yaml
    .venv/bin/python scripts/bench_backfill.py --policy conf/policies/catalog-safety/v1.yaml \
        --policy conf/policies/catalog-safety/v7.yaml   # models of several policies, side by side
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import typer
import yaml

os.environ.setdefault("HF_HUB_OFFLINE", "1")

app = typer.Typer(add_completion=False)


def plain_loop(catalog_uri: str, spec, profile, lake_root: str) -> tuple[int, float, float]:
    """Score every selected (item, modality) pair in one process. Returns (pairs, prep s, score s)."""
    import pyarrow as pa
    import torch
    from deltalake import DeltaTable

    from moderation.catalog import modality_mask, open_catalog, to_work_rows
    from moderation.classifiers.base import RunContext, build_classifier

    if profile.torch_threads:
        torch.set_num_threads(profile.torch_threads)
    snap = open_catalog(catalog_uri)
    clf = build_classifier(spec, batch_size=profile.batch_size, context=RunContext(lake_root=lake_root))
    t0 = time.perf_counter()
    clf.setup("cpu")
    score_s = time.perf_counter() - t0
    prep_s, n = 0.0, 0
    for batch in DeltaTable(catalog_uri).to_pyarrow_dataset().to_batches(columns=snap.columns, batch_size=profile.batch_size):
        table = pa.Table.from_batches([batch])
        mask = modality_mask(table, spec.modality)
        if mask is not None:
            table = table.filter(mask)
        t0 = time.perf_counter()
        prepared = clf.prepare(to_work_rows(table, spec.modality))
        t1 = time.perf_counter()
        n += clf.process_batch(prepared).num_rows
        prep_s, score_s = prep_s + t1 - t0, score_s + time.perf_counter() - t1
    return n, prep_s, score_s


def single_model_policy(policy_path: Path, model_id: str, registry, out: Path) -> Path:
    """A copy of the policy restricted to one model and the categories it can decide."""
    data = yaml.safe_load(policy_path.read_text())
    spec = registry[model_id]
    data["models"] = [model_id]
    data["categories"] = {
        c: {**rule, "modalities": [spec.modality]}
        for c, rule in data["categories"].items()
        if c in spec.categories and spec.modality in rule.get("modalities", ["text"])
    }
    data["exemptions"] = {"explicit": [c for c in data.get("exemptions", {}).get("explicit", []) if c in data["categories"]]}
    out.write_text(yaml.safe_dump(data))
    return out


@app.command()
def main(
    items: int = typer.Option(2000, help="demo catalog size"),
    policy: list[Path] = typer.Option(None, help="policy whose models are benchmarked (default catalog-safety v1); "
                                      "repeat it to run several policies' models in one run, side by side"),
    profile_path: Path = typer.Option(None, "--profile", help="run profile (default conf/jobs/local.yaml)"),
    data_dir: Path = typer.Option(None, help="labelled data and media (default ../shared/data)"),
) -> None:
    import ray

    from moderation.backfill import run_backfill
    from moderation.config import default_conf_dir, load_model_registry, load_policy, load_run_profile
    from moderation.datasets import default_data_dir
    from moderation.demo import write_demo_catalog
    from moderation.pipeline import ensure_ray

    policies = policy or [default_conf_dir() / "policies/catalog-safety/v1.yaml"]
    profile = load_run_profile(profile_path)
    registry = load_model_registry()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        catalog = f"{tmp}/catalog"
        write_demo_catalog(catalog, items=items, data_dir=data_dir or default_data_dir())
        ensure_ray()
        models = dict.fromkeys((m, p) for p in policies for m in load_policy(p, registry).policy.models)
        for model_id, policy in models:
            spec = registry[model_id]
            t0 = time.perf_counter()
            lake_root = f"{tmp}/lake-{model_id}"  # the hash bank there is empty: nothing matches
            n_loop, prep_s, score_s = plain_loop(catalog, spec, profile, lake_root)
            loop_s = time.perf_counter() - t0

            one = single_model_policy(policy, model_id, registry, Path(tmp) / f"{model_id}.yaml")
            t0 = time.perf_counter()
            result = run_backfill(catalog_uri=catalog, lake_root=lake_root, policy_path=one,
                                  profile_path=profile_path, progress=False)
            pipe_s = time.perf_counter() - t0
            assert n_loop == result.selected_pairs, (model_id, n_loop, result.selected_pairs)
            rows.append((spec.modality, model_id, n_loop, loop_s, prep_s, score_s, pipe_s))
        ray.shutdown()

    print(f"\nitems={items} batch_size={profile.batch_size} torch_threads={profile.torch_threads} "
          f"actors={profile.actors} actor_num_cpus={profile.actor_num_cpus} cpus={os.cpu_count()}")
    print(f"{'modality':9} {'model':24} {'pairs':>6} {'loop s':>7} {'loop/s':>7} {'(prep s':>8} {'model s)':>9} "
          f"{'ray s':>7} {'ray/s':>7} {'ratio':>6}")
    for modality, model_id, n, loop_s, prep_s, score_s, pipe_s in rows:
        print(f"{modality:9} {model_id:24} {n:6d} {loop_s:7.1f} {n / loop_s:7.1f} {prep_s:8.1f} {score_s:9.1f} "
              f"{pipe_s:7.1f} {n / pipe_s:7.1f} {loop_s / pipe_s:5.2f}x")
    print("ratio = pipeline items/s / plain loop items/s (goal >= 0.80x)")


if __name__ == "__main__":
    app()
