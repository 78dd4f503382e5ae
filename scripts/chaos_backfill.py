"""Chaos test of backfill resume: kill a real backfill N times at random moments (SIGKILL to
the driver and its local Ray), resume it each time with the same command, then compare with an
uninterrupted run: rows lost, rows duplicated, score mismatches, runs rows, violations.

    .venv/bin/python scripts/chaos_backfill.py                      # 10 random kills, 300-item demo catalog
    .venv/bin/python scripts/chaos_backfill.py --kills 20 --items 600 --all-points

``--all-points`` first kills once at each named fault point (moderation/faults.py: after the
catalog scan, after a scored batch, after a chunk's data files are written but before its
commit, after a commit whose acknowledgement is lost, between chunks). Exit status 0 only when
nothing was lost or duplicated and the run finished with one runs row.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import typer
import yaml

from moderation.config import default_conf_dir
from moderation.demo.catalog import write_demo_catalog
from moderation.evaluation.sources import default_data_dir
from moderation.faults import POINTS
from moderation.scoring.chaos import chaos_backfill

app = typer.Typer(add_completion=False)


@app.command()
def main(
    kills: int = typer.Option(10, min=0, help="random SIGKILLs to inject"),
    items: int = typer.Option(300, min=10, help="demo catalog size"),
    all_points: bool = typer.Option(False, help="also kill once at each named fault point first"),
    policy: Path = typer.Option(default_conf_dir() / "policies" / "catalog-safety" / "v1.yaml"),
    chunk_pairs: int = typer.Option(32, min=1, help="pairs per committed chunk (small: many commit points)"),
    seed: int = typer.Option(0),
    workdir: Path = typer.Option(None, help="keep lakes and logs here (default: a temp dir, removed)"),
) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="chaos-")) if workdir is None else workdir
    try:
        catalog = write_demo_catalog(str(tmp / "catalog"), items=items, data_dir=default_data_dir(), media_dir=None)
        profile = tmp / "profile.yaml"
        profile.write_text(yaml.safe_dump({"batch_size": 16, "actors": 1, "actor_num_cpus": 1.0, "torch_threads": 2,
                                           "chunk_pairs": chunk_pairs,
                                           # small blocks: scored rows reach the driver in many
                                           # batches, so kills land between many commits
                                           "block_kib": 64}))
        faults = [f"{p}:{2 if p in ('after_batch', 'before_commit', 'between_chunks') else 1}" for p in POINTS] \
            if all_points else []
        report = chaos_backfill(catalog=catalog.uri, workdir=tmp, policy=policy, profile=profile, kills=kills,
                                faults=faults, seed=seed)
        typer.echo(report.summary())
        raise typer.Exit(0 if report.ok else 1)
    finally:
        if workdir is None:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    app()
