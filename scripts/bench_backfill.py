"""Benchmark: the full Ray Data backfill vs a plain single-process loop, per modality.

For each model of the policy (one modality each), both paths run the same classifier
(digest-checked load included) with the same batch size and torch thread count from the run
profile, on the same demo catalog items. The pipeline is timed from job start to its last
commit (Ray itself is started beforehand, as on a cluster); the loop from model load to its
last scored batch (it writes nothing). The loop also splits its time into preprocessing
(CPU: text segmentation, image decode) and scoring (model).

    .venv/bin/python scripts/bench_backfill.py [--items 2000] [--policy conf/policies/catalog-safety/v1.yaml]
    .venv/bin/python scripts/bench_backfill.py --items 300 --policy conf/policies/catalog-safety/v3.yaml
        # + one pass per modality (the image models in one job) against one job per model
    .venv/bin/python scripts/bench_backfill.py --policy conf/policies/catalog-safety/v1.yaml \
        --policy conf/policies/catalog-safety/v7.yaml   # models of several policies, side by side
    .venv/bin/python scripts/bench_backfill.py --items 2000 --peer spark   # + the Spark peer (text models)

The loop also times its encoder calls alone (text models: tokenize + forward pass + pooling, the
same calls on the same batches), which gives the bare encoder's items/s: the most any path can
reach with this model, batch size and thread count; ``ray/bare`` is the pipeline's share of it.

``--peer spark`` also runs each text model as a Spark ``mapInPandas`` job (local[N], N = the
machine's cores; ``moderation/bench/spark_peer.py``) over the same catalog snapshot, with Arrow
batches of the profile's batch size, the model loaded once per Python worker with
``torch_threads / N`` threads each (the Ray path's one actor has ``torch_threads``), timed from
reading the snapshot to its last Parquet file written (the Spark session started beforehand, as
Ray is); its scores are the classifier's own, checked equal in tests/engines/test_spark_peer.py.
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


def plain_loop(catalog_uri: str, spec, profile, lake_root: str) -> tuple[int, float, float, float | None]:
    """Score every selected (item, modality) pair in one process. Returns (pairs, prep s, score s,
    encoder s): the last is the time inside the encoder's ``encode`` calls (text models; None for
    models without one), part of score s."""
    import pyarrow as pa
    import torch
    from deltalake import DeltaTable

    from moderation.classifiers.base import RunContext, build_classifier
    from moderation.storage.catalog import modality_mask, open_catalog, to_work_rows

    if profile.torch_threads:
        torch.set_num_threads(profile.torch_threads)
    snap = open_catalog(catalog_uri)
    clf = build_classifier(spec, batch_size=profile.batch_size, context=RunContext(lake_root=lake_root))
    t0 = time.perf_counter()
    clf.setup("cpu")
    score_s = time.perf_counter() - t0
    encoder = getattr(clf, "_encoder", None)
    encode_s = [0.0] if hasattr(encoder, "encode") else None
    if encode_s is not None:
        bare = encoder.encode

        def timed(*args, **kwargs):
            t = time.perf_counter()
            try:
                return bare(*args, **kwargs)
            finally:
                encode_s[0] += time.perf_counter() - t

        encoder.encode = timed
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
    return n, prep_s, score_s, None if encode_s is None else encode_s[0]


def spark_peer(catalog_uri: str, spec, profile, tasks: int, out: str) -> tuple[int, float]:
    """The Spark peer over the same catalog: (pairs, seconds from snapshot read to last file)."""
    from moderation.bench.spark_peer import score_catalog
    from moderation.engines.spark import spark_session

    spark = spark_session(f"local[{tasks}]", app_name="bench-spark-peer")
    t0 = time.perf_counter()
    n = score_catalog(spark, catalog_uri, spec, batch_size=profile.batch_size, partitions=tasks,
                      torch_threads=max(1, (profile.torch_threads or tasks) // tasks), output=out)
    return n, time.perf_counter() - t0


def single_model_policy(policy_path: Path, model_id: str | list[str], registry, out: Path) -> Path:
    """A copy of the policy restricted to one model (or several of one modality) and the
    categories they can decide."""
    data = yaml.safe_load(policy_path.read_text())
    ids = [model_id] if isinstance(model_id, str) else list(model_id)
    specs = [registry[m] for m in ids]
    data["models"] = ids
    data["categories"] = {
        c: {**rule, "modalities": sorted({s.modality for s in specs if c in s.categories})}
        for c, rule in data["categories"].items()
        if any(c in s.categories and s.modality in rule.get("modalities", ["text"]) for s in specs)
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
    peer: str = typer.Option(None, help="also run each text model on this peer engine: spark"),
) -> None:
    import ray

    if peer not in (None, "spark"):
        raise typer.BadParameter(f"--peer {peer!r}: the only peer is 'spark'")

    from moderation.config import default_conf_dir, load_model_registry, load_policy, load_run_profile
    from moderation.demo.catalog import write_demo_catalog
    from moderation.engines.ray import ensure_ray
    from moderation.evaluation.sources import default_data_dir
    from moderation.scoring.backfill import run_backfill

    policies = policy or [default_conf_dir() / "policies/catalog-safety/v1.yaml"]
    profile = load_run_profile(profile_path)
    registry = load_model_registry()
    rows, peers, passes = [], [], []
    tasks = os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as tmp:
        catalog = f"{tmp}/catalog"
        write_demo_catalog(catalog, items=items, data_dir=data_dir or default_data_dir())
        ensure_ray()
        models = dict.fromkeys((m, p) for p in policies for m in load_policy(p, registry).policy.models)
        for model_id, policy in models:
            spec = registry[model_id]
            t0 = time.perf_counter()
            lake_root = f"{tmp}/lake-{model_id}"  # the hash bank there is empty: nothing matches
            n_loop, prep_s, score_s, encode_s = plain_loop(catalog, spec, profile, lake_root)
            loop_s = time.perf_counter() - t0

            one = single_model_policy(policy, model_id, registry, Path(tmp) / f"{model_id}.yaml")
            t0 = time.perf_counter()
            result = run_backfill(catalog_uri=catalog, lake_root=lake_root, policy_path=one,
                                  profile_path=profile_path, progress=False)
            pipe_s = time.perf_counter() - t0
            assert n_loop == result.selected_pairs, (model_id, n_loop, result.selected_pairs)
            rows.append((spec.modality, model_id, n_loop, loop_s, prep_s, score_s, encode_s, pipe_s))
        # One pass per modality (issue 16 point 2): the modality's models in one backfill (one
        # Ray Data job, each row read and decoded once) against one job per model (above).
        by_modality: dict[tuple[str, Path], list[str]] = {}
        for (modality, model_id, *_), (_, policy) in zip(rows, models):
            by_modality.setdefault((modality, policy), []).append(model_id)
        for (modality, policy), ids in by_modality.items():
            if len(ids) < 2:
                continue
            one = single_model_policy(policy, ids, registry, Path(tmp) / f"{modality}-pass.yaml")
            t0 = time.perf_counter()
            result = run_backfill(catalog_uri=catalog, lake_root=f"{tmp}/lake-{modality}-pass", policy_path=one,
                                  profile_path=profile_path, progress=False)
            jobs_s = sum(r[-1] for r in rows if r[1] in ids)
            passes.append((modality, ids, result.selected_pairs, jobs_s, time.perf_counter() - t0))
        ray.shutdown()  # before the peer: Ray's idle workers would share its cores
        for modality, model_id, n, *_, pipe_s in rows:
            if peer == "spark" and modality == "text":
                n_peer, peer_s = spark_peer(catalog, registry[model_id], profile, tasks, f"{tmp}/spark-{model_id}")
                assert n_peer == n, (model_id, n_peer, n)
                peers.append((model_id, n, pipe_s, peer_s))

    print(f"\nitems={items} batch_size={profile.batch_size} torch_threads={profile.torch_threads} "
          f"actors={profile.actors} actor_num_cpus={profile.actor_num_cpus} cpus={os.cpu_count()}")
    print(f"{'modality':9} {'model':24} {'pairs':>6} {'loop s':>7} {'loop/s':>7} {'(prep s':>8} {'model s)':>9} "
          f"{'bare/s':>7} {'ray s':>7} {'ray/s':>7} {'ratio':>6} {'ray/bare':>8}")
    for modality, model_id, n, loop_s, prep_s, score_s, encode_s, pipe_s in rows:
        bare = f"{n / encode_s:7.1f}" if encode_s else f"{'-':>7}"
        share = f"{encode_s / pipe_s:7.2f}x" if encode_s else f"{'-':>8}"
        print(f"{modality:9} {model_id:24} {n:6d} {loop_s:7.1f} {n / loop_s:7.1f} {prep_s:8.1f} {score_s:9.1f} "
              f"{bare} {pipe_s:7.1f} {n / pipe_s:7.1f} {loop_s / pipe_s:5.2f}x {share}")
    print("ratio = pipeline items/s / plain loop items/s (goal >= 0.80x)")
    print("bare/s = items / seconds inside the encoder's encode calls of the loop (tokenize + forward + pool);")
    print("ray/bare = pipeline items/s / bare encoder items/s (goal >= 0.90x at 8,000 items)")
    if passes:
        print("\nOne pass per modality: all of a modality's models in one Ray Data job (each row read and "
              "decoded once) vs one job per model (the rows above, summed)")
        print(f"{'modality':9} {'models':>6} {'pairs':>6} {'jobs s':>7} {'pass s':>7} {'speed-up':>8}")
        for modality, ids, n, jobs_s, pass_s in passes:
            print(f"{modality:9} {len(ids):6d} {n:6d} {jobs_s:7.1f} {pass_s:7.1f} {jobs_s / pass_s:7.2f}x")
    if peers:
        print(f"\nSpark peer: local[{tasks}], mapInPandas, Arrow batches of {profile.batch_size} rows, "
              f"{max(1, (profile.torch_threads or tasks) // tasks)} torch thread(s) per Python worker")
        print(f"{'model':24} {'pairs':>6} {'ray s':>7} {'ray/s':>7} {'spark s':>8} {'spark/s':>8} {'ray/spark':>9}")
        for model_id, n, pipe_s, peer_s in peers:
            print(f"{model_id:24} {n:6d} {pipe_s:7.1f} {n / pipe_s:7.1f} {peer_s:8.1f} {n / peer_s:8.1f} "
                  f"{peer_s / pipe_s:8.2f}x")


if __name__ == "__main__":
    app()
