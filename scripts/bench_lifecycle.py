"""Benchmark: what scheduled re-scans and policy-only changes cost next to a full backfill.

On one demo catalog (text only, Delta with the change data feed on), each step runs as the
`moderation` command a user would run (its own process, its own local Ray), timed wall clock:

1. ``backfill`` of the whole catalog with a policy version (the baseline cost);
2. ``decide`` of that version, and of a second version that changes only thresholds: decided
   from the stored scores, no model loaded (goal: >= 50x faster than the full re-score);
3. ``--changed`` of the items change (edited text, new items, deleted items), then ``rescan``
   through the change data feed, and, on a copy of the lake as it was before, through the
   content-hash anti-join (goal: <= 5% of the full backfill's wall time at 1% of 100,000);
4. a ``rescan`` of the unchanged catalog (writes nothing).

    .venv/bin/python scripts/bench_lifecycle.py --items 100000 --changed 0.01
    .venv/bin/python scripts/bench_lifecycle.py --items 2000            # a quick look
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import typer

os.environ.setdefault("HF_HUB_OFFLINE", "1")

app = typer.Typer(add_completion=False)
ROOT = Path(__file__).resolve().parent.parent
CLI = [sys.executable, "-m", "moderation.cli"]


def _timed(args: list[str], label: str) -> tuple[float, str]:
    t0 = time.perf_counter()
    proc = subprocess.run([*CLI, *args], capture_output=True, text=True)
    took = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{label} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr[-3000:]}")
    print(f"  {label}: {took:.1f} s", flush=True)
    return took, proc.stdout


def change_catalog(uri: str, fraction: float, seed: int = 1) -> dict[str, int]:
    """Change ``fraction`` of the items: 80% get new text, 10% are deleted, and as many new
    items as 10% are appended (three Delta commits)."""
    import pyarrow as pa
    from deltalake import DeltaTable, write_deltalake

    dt = DeltaTable(uri)
    ids = sorted(dt.to_pyarrow_table(columns=["item_id"]).column("item_id").to_pylist())
    n = max(3, int(len(ids) * fraction))
    rng = random.Random(seed)
    picked = rng.sample(ids, n)
    n_new = n_del = max(1, n // 10)
    edited, deleted = picked[: n - n_del - n_new], picked[n - n_del - n_new: n - n_new]

    def _in(values: list[str]) -> str:
        return "item_id IN (" + ", ".join(f"'{v}'" for v in values) + ")"

    dt.update(predicate=_in(edited), updates={"title": "concat(title, ' (remastered)')"})
    DeltaTable(uri).delete(predicate=_in(deleted))
    template = DeltaTable(uri).to_pyarrow_table().slice(0, n_new)
    rows = template.to_pylist()
    for i, row in enumerate(rows):
        row.update(item_id=f"new_{i:07d}", title=f"A new upload number {i}")
    write_deltalake(uri, pa.Table.from_pylist(rows, schema=template.schema), mode="append")
    return {"edited": len(edited), "deleted": len(deleted), "new": n_new}


@app.command()
def main(
    items: int = typer.Option(100_000, min=100),
    changed: float = typer.Option(0.01, min=0.0001, max=1.0, help="share of items changed before the re-scan"),
    policy: Path = typer.Option(ROOT / "conf/policies/catalog-safety/v1.yaml"),
    threshold_policy: Path = typer.Option(ROOT / "conf/policies/catalog-safety/v2.yaml",
                                          help="a version of the same policy that changes only thresholds"),
    workdir: Path | None = typer.Option(None, help="where the catalog and lakes go (default: a temp folder)"),
    profile: Path | None = typer.Option(None, help="run profile (default conf/jobs/local.yaml)"),
) -> None:
    from deltalake import write_deltalake

    from moderation.demo.catalog import build_demo_table
    from moderation.evaluation.sources import default_data_dir

    work = Path(workdir or tempfile.mkdtemp(prefix="bench-lifecycle-"))
    work.mkdir(parents=True, exist_ok=True)
    catalog, lake = str(work / "catalog"), str(work / "lake")
    table, _ = build_demo_table(items=items, data_dir=default_data_dir(), cover_share=0.0, audio_share=0.0)
    table = table.drop_columns(["cover_image", "audio_clip"])
    write_deltalake(catalog, table, mode="overwrite", configuration={"delta.enableChangeDataFeed": "true"})
    prof = ["--profile", str(profile)] if profile else []
    print(f"catalog: {items} items (text), policy {policy.name}; workdir {work.name}", flush=True)

    full, _ = _timed(["backfill", "--catalog", catalog, "--lake", lake, "--policy", str(policy), *prof],
                     "full backfill")
    decide1, _ = _timed(["decide", "--lake", lake, "--policy", str(policy)], f"decide {policy.name}")
    decide2, _ = _timed(["decide", "--lake", lake, "--policy", str(threshold_policy)],
                        f"decide {threshold_policy.name} (threshold-only change, no model)")
    unchanged, out = _timed(["rescan", "--catalog", catalog, "--lake", lake, "--policy", str(policy), *prof],
                            "rescan of the unchanged catalog")
    assert "nothing written" in out, out

    counts = change_catalog(catalog, changed)
    print(f"changed: {counts}", flush=True)
    shutil.copytree(lake, work / "lake-copy")
    cdf, out_cdf = _timed(["rescan", "--catalog", catalog, "--lake", lake, "--policy", str(policy), *prof],
                          "rescan (change data feed)")
    anti, out_anti = _timed(["rescan", "--catalog", catalog, "--lake", str(work / "lake-copy"), "--policy",
                             str(policy), "--change-source", "anti_join", *prof], "rescan (content-hash anti-join)")
    print(out_cdf.strip())
    print(out_anti.strip())

    print("\n| step | wall s | vs full backfill |")
    print("|---|---|---|")
    print(f"| full backfill, {items} items | {full:.1f} | 1.00 |")
    for label, secs in ((f"rescan, {changed:.1%} changed (change data feed)", cdf),
                        (f"rescan, {changed:.1%} changed (content-hash anti-join)", anti),
                        ("rescan, nothing changed", unchanged)):
        print(f"| {label} | {secs:.1f} | {secs / full:.2%} of it |")
    for label, secs in ((f"decide {policy.name}", decide1),
                        (f"decide {threshold_policy.name} (threshold-only change)", decide2)):
        print(f"| {label} | {secs:.1f} | {full / secs:.0f}x faster |")
    ok_rescan = cdf <= 0.05 * full
    ok_decide = full / decide2 >= 50
    print(f"\ngoal rescan <= 5% of full: {'met' if ok_rescan else 'NOT met'} ({cdf / full:.2%}); "
          f"goal decide >= 50x faster than re-scoring: {'met' if ok_decide else 'NOT met'} ({full / decide2:.0f}x)")
    if workdir is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    app()
