"""Benchmark: peak memory of a backfill at two catalog sizes ten times apart.

Goal (streamed execution, bounded batches): peak memory of a backfill does not grow with the
catalog size; the larger run may use at most 10% more than the smaller one.

For each size (``--items`` N and 10 N) a text-only demo catalog is written first (neither
timed nor measured; no cover art or audio, so any policy scores text only), then
``moderation backfill`` runs as a subprocess against a fresh lake, as a user would run it,
with a local Ray started by that driver. Every ``--interval`` seconds this script samples

* the driver process alone: RSS (what `ps`/`top` show; the issue's figure), and
* the driver plus all its descendants (Ray's gcs_server, raylet and its agents, the task and
  actor workers): the sum of PSS, each shared page divided among the processes that map it.
  Summing RSS instead counts every shared page (torch and pyarrow libraries, the Plasma object
  store in /dev/shm) once per process that maps it; that sum is printed too, for reference.

A process seen once stays tracked while it lives (in case Ray re-parents it). PSS comes from
/proc/PID/smaps_rollup (psutil's memory_full_info); the sampling cost per sample is printed so
it can be weighed against the interval (the sampler shares the machine's CPUs with the job).
Wall time is the subprocess's, Python start-up and Ray start-up included.

    .venv/bin/python scripts/bench_memory.py [--items 1000] [--policy conf/policies/catalog-safety/v1.yaml]
    .venv/bin/python scripts/bench_memory.py --items 100 --interval 0.1 --keep --workdir /tmp/bench-mem

Exits 0 whether or not the goal is met (it is a benchmark); 1 if a backfill fails. With
``--keep`` (or after a failure) the work dir keeps each size's catalog, lake, driver log and
samples (CSV); otherwise a temp work dir is removed, and a given ``--workdir`` loses only the
``items-*`` folders this run wrote.
"""

from __future__ import annotations

import argparse
import csv
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

MiB = 1024 * 1024
GOAL_GROWTH_PCT = 10.0


#: PSS is read from /proc/PID/smaps_rollup, which makes the kernel walk each process's page
#: tables: ~1-20 ms per process (more for the workers that map torch and the object store).
#: It is read at most this share of the time, so the sampler stays off the job's CPUs.
PSS_DUTY = 0.1


@dataclass
class Peaks:
    """Peak memory figures (bytes) over one run's samples, and when they happened."""

    driver_rss: int = 0
    driver_rss_t: float = 0.0
    tree_pss: int = 0
    tree_pss_t: float = 0.0
    tree_pss_top: list[tuple[str, int]] = field(default_factory=list)  # (process, PSS) at the tree PSS peak
    tree_rss: int = 0
    max_procs: int = 0
    samples: int = 0
    pss_samples: int = 0
    pss_cost_s: list[float] = field(default_factory=list)
    rss_cost_s: list[float] = field(default_factory=list)
    sampler_cpu_s: float = 0.0
    pss_available: bool = True


@dataclass
class RunResult:
    items: int
    pairs: int | None
    wall_s: float
    job_s: float | None
    peaks: Peaks
    saw_raylet: bool


def _title(proc) -> str:
    """A short process title: Ray workers set theirs (``ray::MapWorker(...)``, ``ray::IDLE``)."""
    try:
        cmd = proc.cmdline()
        title = cmd[0] if cmd else proc.name()
        title = os.path.basename(title) if title.startswith("/") else title
        title = title.split(" ")[0]
        return title[: title.rindex(")") + 1] if title.startswith("ray::") and ")." in title else title[:48]
    except Exception:  # noqa: BLE001 - a label only; the process may be gone
        return "?"


def sample_run(cmd: list[str], env: dict[str, str], log_path: Path, samples_path: Path,
               interval: float) -> tuple[int, float, Peaks, bool]:
    """Run ``cmd``, sampling its process tree. Returns (exit code, wall s, peaks, saw a raylet).

    Every ``interval`` s: RSS of every process (cheap: /proc/PID/statm). PSS of every process
    at the same cadence when affordable, else every PSS_DUTY-capped multiple of it.
    """
    import psutil

    peaks = Peaks()
    tracked: dict[int, psutil.Process] = {}
    saw_raylet = False
    me = psutil.Process()
    with open(log_path, "wb") as log, open(samples_path, "w", newline="") as sf:
        out = csv.writer(sf)
        out.writerow(["t_s", "driver_rss", "tree_pss", "tree_rss", "procs", "sample_cost_s"])
        cpu0 = sum(me.cpu_times()[:2])
        t0 = time.perf_counter()
        popen = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        driver = psutil.Process(popen.pid)
        tracked[driver.pid] = driver
        next_pss = t0
        while True:
            tick = time.perf_counter()
            if popen.poll() is not None:
                break
            try:
                for child in driver.children(recursive=True):
                    tracked.setdefault(child.pid, child)
            except psutil.Error:
                pass
            want_pss = peaks.pss_available and tick >= next_pss
            driver_rss = tree_pss = tree_rss = procs = 0
            per_proc: list[tuple[psutil.Process, int]] = []
            for pid, proc in list(tracked.items()):
                try:
                    if not proc.is_running():
                        raise psutil.NoSuchProcess(pid)
                    if want_pss:
                        info = proc.memory_full_info()
                        rss, pss = info.rss, info.pss
                        per_proc.append((proc, pss))
                        tree_pss += pss
                    else:
                        rss = proc.memory_info().rss
                    if not saw_raylet and proc.name().startswith("raylet"):
                        saw_raylet = True
                except psutil.AccessDenied:
                    if want_pss and pid != driver.pid:
                        peaks.pss_available = False  # RSS only from the next sample on
                    continue
                except psutil.Error:  # exited between listing and reading
                    tracked.pop(pid, None)
                    continue
                procs += 1
                tree_rss += rss
                if pid == driver.pid:
                    driver_rss = rss
            t = tick - t0
            cost = time.perf_counter() - tick
            peaks.samples += 1
            if driver_rss > peaks.driver_rss:
                peaks.driver_rss, peaks.driver_rss_t = driver_rss, t
            peaks.tree_rss = max(peaks.tree_rss, tree_rss)
            peaks.max_procs = max(peaks.max_procs, procs)
            if want_pss and peaks.pss_available:
                peaks.pss_samples += 1
                peaks.pss_cost_s.append(cost)
                next_pss = tick + max(interval, cost / PSS_DUTY)
                if tree_pss > peaks.tree_pss:
                    peaks.tree_pss, peaks.tree_pss_t = tree_pss, t
                    peaks.tree_pss_top = [(("driver" if p.pid == driver.pid else _title(p)), v) for p, v in per_proc]
            else:
                peaks.rss_cost_s.append(cost)
            out.writerow([f"{t:.2f}", driver_rss, tree_pss if want_pss else "", tree_rss, procs, f"{cost:.4f}"])
            time.sleep(max(0.0, interval - (time.perf_counter() - tick)))
        wall = time.perf_counter() - t0
        peaks.sampler_cpu_s = sum(me.cpu_times()[:2]) - cpu0
    return popen.returncode, wall, peaks, saw_raylet


def build_catalog(uri: str, items: int) -> None:
    """A text-only demo catalog: labelled posts from ../shared/data (when present), no media."""
    from moderation.demo.catalog import write_demo_catalog
    from moderation.evaluation.sources import default_data_dir

    data_dir = default_data_dir()
    write_demo_catalog(uri, items=items, data_dir=data_dir if Path(data_dir).is_dir() else None,
                       cover_share=0.0, audio_share=0.0)


def job_seconds(lake: str, run_id: str) -> float | None:
    """The run's own started_at -> ended_at from the runs table (Ray start-up included)."""
    try:
        from moderation.runs import read_run
        from moderation.storage.lake import Lake

        row = read_run(Lake(lake), run_id)
        return (row.ended_at - row.started_at).total_seconds() if row and row.started_at and row.ended_at else None
    except Exception:  # noqa: BLE001 - a benchmark nicety only
        return None


def run_size(items: int, args: argparse.Namespace, workdir: Path) -> RunResult | None:
    d = workdir / f"items-{items}"
    d.mkdir(parents=True, exist_ok=True)
    catalog, lake = str(d / "catalog"), str(d / "lake")
    print(f"[{items} items] writing catalog ...", flush=True)
    build_catalog(catalog, items)
    run_id = f"bench-memory-{items}"
    cmd = [sys.executable, "-m", "moderation.cli", "backfill", "--catalog", catalog, "--lake", lake,
           "--policy", str(args.policy), "--run-id", run_id]
    if args.profile:
        cmd += ["--profile", str(args.profile)]
    env = dict(os.environ)
    env.pop("RAY_ADDRESS", None)  # a local Ray, started by (and so descending from) the driver
    env.setdefault("HF_HUB_OFFLINE", "1")
    log_path = d / "backfill.log"
    print(f"[{items} items] backfill (sampling every {args.interval:g} s) ...", flush=True)
    rc, wall, peaks, saw_raylet = sample_run(cmd, env, log_path, d / "samples.csv", args.interval)
    text = log_path.read_text(errors="replace")
    if rc != 0:
        print(f"[{items} items] backfill FAILED (exit {rc}); last lines of {log_path}:", file=sys.stderr)
        print("\n".join(text.splitlines()[-30:]), file=sys.stderr)
        return None
    m = re.search(r"selected pairs (\d+)", text)
    pairs = int(m.group(1)) if m else None
    print(f"[{items} items] done in {wall:.1f} s: {pairs} pairs, driver RSS peak {peaks.driver_rss / MiB:.0f} MiB, "
          f"tree PSS peak {peaks.tree_pss / MiB:.0f} MiB", flush=True)
    if not saw_raylet:
        print(f"[{items} items] WARNING: no raylet among the driver's descendants: the driver joined a Ray it did "
              "not start (e.g. one left running by `ray start`), so the tree figure misses Ray's "
              "processes.", file=sys.stderr)
    return RunResult(items=items, pairs=pairs, wall_s=wall, job_s=job_seconds(lake, run_id), peaks=peaks,
                     saw_raylet=saw_raylet)


def growth(small: float, large: float) -> float:
    return (large - small) / small * 100.0 if small else float("nan")


def _mean_ms(xs: list[float]) -> float:
    return 1000 * sum(xs) / len(xs) if xs else 0.0


def _breakdown(top: list[tuple[str, int]], n: int = 6) -> str:
    """'driver 280, ray::MapWorker 2x610, ...': PSS (MiB) at the tree peak by process title."""
    groups: dict[str, list[int]] = {}
    for title, pss in top:
        groups.setdefault(title, []).append(pss)
    ranked = sorted(groups.items(), key=lambda kv: -sum(kv[1]))
    parts = [f"{t} {len(v)}x{sum(v) / len(v) / MiB:.0f}" if len(v) > 1 else f"{t} {v[0] / MiB:.0f}"
             for t, v in ranked[:n]]
    rest = sum(sum(v) for _, v in ranked[n:])
    return ", ".join(parts) + (f", others {rest / MiB:.0f}" if rest else "")


def report(results: list[RunResult], args: argparse.Namespace) -> None:
    import psutil

    pss = all(r.peaks.pss_available for r in results)
    tree_label = "tree PSS MiB" if pss else "tree RSS* MiB"
    print(f"\npolicy={args.policy} profile={args.profile or 'conf/jobs/local.yaml (default)'} "
          f"cpus={os.cpu_count()} ram={psutil.virtual_memory().total / 2**30:.1f} GiB interval={args.interval:g} s")
    print("driver = the `moderation backfill` process alone, RSS. tree = driver + all its descendants (Ray gcs, "
          "raylet, agents, workers): " + ("sum of PSS (each shared page split among the processes mapping it)"
                                          if pss else "sum of RSS* (PSS unreadable here)")
          + "; tree RSS = plain sum of RSS, counts shared pages once per process")
    head = (f"{'items':>7} {'pairs':>7} {'wall s':>7} {'job s':>7} {'items/s':>8} {'driver RSS MiB':>15} "
            f"{'(at s)':>7} {tree_label:>13} {'(at s)':>7} {'tree RSS MiB':>13} {'procs':>6}")
    print("\n" + head)
    for r in results:
        p = r.peaks
        job = f"{r.job_s:7.1f}" if r.job_s is not None else f"{'-':>7}"
        tree = p.tree_pss if pss else p.tree_rss
        print(f"{r.items:7d} {r.pairs if r.pairs is not None else '-':>7} {r.wall_s:7.1f} {job} "
              f"{r.items / r.wall_s:8.1f} {p.driver_rss / MiB:15.0f} {p.driver_rss_t:7.1f} {tree / MiB:13.0f} "
              f"{p.tree_pss_t if pss else float('nan'):7.1f} {p.tree_rss / MiB:13.0f} {p.max_procs:6d}")
    print("(wall s: the subprocess, Python and Ray start-up included; job s: the runs row, started_at -> ended_at)")
    for r in results:
        p = r.peaks
        print(f"sampling {r.items}: {p.samples} samples, RSS-only {_mean_ms(p.rss_cost_s):.1f} ms, "
              f"with PSS {_mean_ms(p.pss_cost_s):.1f} ms ({p.pss_samples} PSS samples, one per "
              f"{r.wall_s / max(1, p.pss_samples):.2f} s); sampler CPU {p.sampler_cpu_s:.1f} s "
              f"= {100 * p.sampler_cpu_s / r.wall_s:.0f}% of one core")
    if pss:
        for r in results:
            print(f"tree PSS peak {r.items} (MiB): {_breakdown(r.peaks.tree_pss_top)}")
    if len(results) == 2:
        small, large = results
        print(f"\ngrowth {large.items} vs {small.items} items (goal: <= {GOAL_GROWTH_PCT:.0f}%):")
        rows = [("driver RSS", small.peaks.driver_rss, large.peaks.driver_rss)]
        if pss:
            rows.append(("tree PSS", small.peaks.tree_pss, large.peaks.tree_pss))
        rows.append(("tree RSS (over-counted)", small.peaks.tree_rss, large.peaks.tree_rss))
        for name, a, b in rows:
            g = growth(a, b)
            print(f"  {name:24} {a / MiB:7.0f} -> {b / MiB:7.0f} MiB  {g:+6.1f}%  "
                  f"{'met' if g <= GOAL_GROWTH_PCT else 'NOT MET'}")


def main(argv: list[str] | None = None) -> int:
    from moderation.config import default_conf_dir

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=1000, help="smaller catalog size; the larger is 10x (default 1000)")
    parser.add_argument("--policy", type=Path, default=default_conf_dir() / "policies/catalog-safety/v1.yaml",
                        help="policy file (default catalog-safety v1, text only)")
    parser.add_argument("--profile", type=Path, default=None, help="run profile (default conf/jobs/local.yaml)")
    parser.add_argument("--workdir", type=Path, default=None, help="where catalogs and lakes go (default a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the work dir (catalogs, lakes, logs, samples)")
    parser.add_argument("--interval", type=float, default=0.2, help="sampling interval in seconds (default 0.2)")
    args = parser.parse_args(argv)
    if args.items < 1 or args.interval <= 0:
        parser.error("--items must be >= 1 and --interval > 0")
    try:
        import psutil  # noqa: F401
    except ImportError:
        parser.error("needs psutil: .venv/bin/pip install psutil")

    created = args.workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="bench-memory-")) if created else args.workdir
    if not created and any(workdir.glob("items-*")):
        parser.error(f"--workdir {workdir} already holds a benchmark's items-* folders; use an empty one")
    workdir.mkdir(parents=True, exist_ok=True)
    results: list[RunResult] = []
    failed = False
    try:
        for items in (args.items, 10 * args.items):
            result = run_size(items, args, workdir)
            if result is None:
                failed = True
                break
            results.append(result)
        report(results, args)
    finally:
        if args.keep or failed:
            print(f"\nkept {workdir} (per size: catalog, lake, backfill.log, samples.csv)")
        elif created:
            shutil.rmtree(workdir, ignore_errors=True)
        else:  # the user's folder stays; only what this run put there goes
            for d in workdir.glob("items-*"):
                shutil.rmtree(d, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
