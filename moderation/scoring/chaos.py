"""Fault injection harness: kill a backfill again and again, resume it, and compare with an
uninterrupted run of the same catalog and policy.

Used by ``scripts/chaos_backfill.py`` (N random kills) and by the resume tests (every named
fault point once). Each attempt is a real ``moderation backfill`` process in its own session;
a kill is SIGKILL to the whole process group (the driver and the local Ray it started), so
nothing gets to clean up, exactly like a lost machine.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow.compute as pc

from moderation.errors import ModerationError
from moderation.runs import read_run
from moderation.storage.lake import Lake

KEY = ("item_id", "modality", "model_id")


@dataclass
class Attempt:
    fault: str  # "kill@12.3s", "before_commit:2", or "none"
    returncode: int
    seconds: float
    killed: bool
    started: float = 0.0  # wall clock (epoch seconds) at process start


@dataclass
class ChaosReport:
    attempts: list[Attempt] = field(default_factory=list)
    reference_pairs: int = 0
    chaos_pairs: int = 0
    lost: int = 0
    duplicated: int = 0
    unexpected: int = 0
    score_mismatches: int = 0
    runs_rows: int = 0
    final_status: str | None = None
    violations_equal: bool | None = None

    @property
    def faults_injected(self) -> int:
        return sum(a.killed for a in self.attempts)

    @property
    def ok(self) -> bool:
        return (self.final_status == "succeeded" and self.lost == 0 and self.duplicated == 0 and self.unexpected == 0
                and self.score_mismatches == 0 and self.runs_rows == 1 and self.violations_equal is not False)

    def summary(self) -> str:
        lines = [f"attempts: {len(self.attempts)}, faults injected and survived: {self.faults_injected}"]
        for a in self.attempts:
            lines.append(f"  {a.fault:<22} exit {a.returncode:>4}  {a.seconds:6.1f} s  {'KILLED' if a.killed else ''}")
        lines += [
            f"reference pairs {self.reference_pairs}, chaos run pairs {self.chaos_pairs}",
            f"rows lost {self.lost}, rows duplicated {self.duplicated}, rows not in the reference {self.unexpected}, "
            f"score mismatches {self.score_mismatches}",
            f"runs rows for the run: {self.runs_rows}, final status: {self.final_status}, "
            f"violations equal to the reference: {self.violations_equal}",
            "RESULT: " + ("OK" if self.ok else "FAILED"),
        ]
        return "\n".join(lines)


def backfill_command(catalog: str, lake: str, policy: str | Path, run_id: str, profile: str | Path | None,
                     extra: list[str] | None = None) -> list[str]:
    cmd = [sys.executable, "-m", "moderation.cli", "backfill", "--catalog", catalog, "--lake", lake,
           "--policy", str(policy), "--run-id", run_id]
    if profile:
        cmd += ["--profile", str(profile)]
    return cmd + list(extra or [])


def _kill_tagged(tag: str) -> None:
    """SIGKILL every process that inherited this attempt's tag (Ray daemons may leave the
    driver's process group)."""
    import psutil

    for proc in psutil.process_iter(["pid"]):
        try:
            if proc.environ().get("MODERATION_CHAOS_TAG") == tag:
                proc.kill()
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue


def run_attempt(cmd: list[str], *, kill_after: float | None = None, faults: str | None = None,
                timeout: float = 900, log_path: Path | None = None) -> Attempt:
    """One backfill process: killed after ``kill_after`` seconds, or by a named fault point
    (``$MODERATION_FAULTS``), or left to finish."""
    tag = uuid.uuid4().hex
    env = {**os.environ, "MODERATION_CHAOS_TAG": tag}
    env.pop("MODERATION_FAULTS", None)
    if faults:
        env["MODERATION_FAULTS"] = faults
    out = open(log_path, "ab") if log_path else None
    started = time.time()
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, env=env, stdout=out if out is not None else subprocess.DEVNULL,
                            stderr=subprocess.STDOUT, start_new_session=True)
    killed = False
    try:
        proc.wait(timeout=kill_after if kill_after is not None else timeout)
    except subprocess.TimeoutExpired:
        if kill_after is None:
            raise
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        killed = True
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # whatever the driver left behind
        except ProcessLookupError:
            pass
        _kill_tagged(tag)
        if out is not None:
            out.close()
    killed = killed or proc.returncode == -signal.SIGKILL
    label = faults or (f"kill@{kill_after:.1f}s" if kill_after is not None else "none")
    return Attempt(fault=label, returncode=proc.returncode, seconds=time.monotonic() - t0, killed=killed,
                   started=started)


def compare_runs(reference: Lake, ref_run: str, chaos: Lake, chaos_run: str, report: ChaosReport) -> None:
    """Fill ``report`` with lost / duplicated / unexpected pairs and score mismatches."""
    def keyed(lake: Lake, run_id: str) -> tuple[Counter, dict]:
        flt = pc.field("run_id") == run_id
        counts: Counter = Counter()
        scores: dict = {}
        for table in ("scores", "quarantine"):
            cols = [*KEY, "category_scores"] if table == "scores" else [*KEY, "reason"]
            for row in lake.read(table, filter=flt, columns=cols).to_pylist():
                key = tuple(row[k] for k in KEY)
                counts[key] += 1
                scores[key] = dict(row["category_scores"]) if table == "scores" else row["reason"]
        return counts, scores

    ref_counts, ref_scores = keyed(reference, ref_run)
    got_counts, got_scores = keyed(chaos, chaos_run)
    # Id-less rows are keyed (None, modality, model) and may legitimately repeat; compare counts.
    report.reference_pairs = sum(ref_counts.values())
    report.chaos_pairs = sum(got_counts.values())
    report.lost = sum(max(0, n - got_counts.get(k, 0)) for k, n in ref_counts.items())
    report.duplicated = sum(max(0, n - ref_counts.get(k, 0)) for k, n in got_counts.items() if k in ref_counts)
    report.unexpected = sum(n for k, n in got_counts.items() if k not in ref_counts)
    mismatches = 0
    for key, value in got_scores.items():
        ref = ref_scores.get(key)
        if isinstance(value, dict) and isinstance(ref, dict):
            mismatches += any(abs(value[c] - ref.get(c, float("nan"))) > 1e-4 for c in value)
        elif ref is not None and value != ref:
            mismatches += 1
    report.score_mismatches = mismatches
    report.runs_rows = chaos.read("runs", filter=pc.field("run_id") == chaos_run).num_rows
    run = read_run(chaos, chaos_run)
    report.final_status = run.status if run else None


def compare_violations(reference: Lake, chaos: Lake, policy: str | Path) -> bool:
    """Decide the policy on both lakes; the violation rows (minus run ids/times) must match."""
    from moderation.policy.decide import run_decide

    def rows(lake: Lake) -> list[tuple]:
        run_decide(lake_root=lake.root, policy_path=policy)
        t = lake.read("violations")
        cols = ["item_id", "category", "decision", "action", "market_scope"]
        return sorted(tuple(r[c] for c in cols) for r in t.select(cols).to_pylist())

    return rows(reference) == rows(chaos)


def chaos_backfill(
    *, catalog: str, workdir: Path, policy: str | Path, profile: str | Path | None = None, kills: int = 10,
    faults: list[str] | None = None, seed: int = 0, extra_args: list[str] | None = None,
    lakes_root: str | None = None, reference: tuple[Lake, str] | None = None,
) -> ChaosReport:
    """Reference run, then a run killed ``kills`` times at random moments (and once at each of
    ``faults``, named fault points), resumed after each kill, then compared. The two lakes
    live under ``lakes_root`` (a folder or ``s3://`` prefix; default ``workdir``). ``reference``
    (lake, run id) names an existing uninterrupted run to compare with instead of running one."""
    rng = random.Random(seed)
    workdir.mkdir(parents=True, exist_ok=True)
    log = workdir / "attempts.log"
    base = lakes_root.rstrip("/") if lakes_root else str(workdir)
    ref_lake, chaos_lake = Lake(f"{base}/reference-lake"), Lake(f"{base}/chaos-lake")
    report = ChaosReport()

    ref_run = "reference"
    if reference is not None:  # an uninterrupted run of the same catalog and policy already exists
        ref_lake, ref_run = reference
        row = read_run(ref_lake, ref_run)
        if row is None or row.started_at is None or row.ended_at is None:
            raise ModerationError(f"reference run {ref_run} is not in {ref_lake.root}"
                                  if row is None else f"reference run {ref_run} in {ref_lake.root} has not ended")
        ref = Attempt(fault="none", returncode=0, killed=False, started=row.started_at.timestamp(),
                      seconds=(row.ended_at - row.started_at).total_seconds())
    else:
        ref = run_attempt(backfill_command(catalog, ref_lake.root, policy, ref_run, profile, extra_args), log_path=log)
        if ref.returncode != 0:
            raise RuntimeError(f"the reference run failed (exit {ref.returncode}); see {log}")
    duration = ref.seconds
    flt = pc.field("run_id") == ref_run
    ref_pairs = sum(ref_lake.read(t, filter=flt, columns=["item_id"]).num_rows for t in ("scores", "quarantine"))
    # Start-up (Python, catalog scan, Ray, model load) lasts until the first scored rows commit.
    first = pc.min(ref_lake.read("scores", filter=flt, columns=["scored_at"]).column("scored_at")).as_py()
    startup = min(duration, max(0.0, first.timestamp() - ref.started)) if first else 0.0
    cmd = backfill_command(catalog, chaos_lake.root, policy, "chaos", profile, extra_args)
    def finished() -> bool:
        run = read_run(chaos_lake, "chaos")
        return bool(run and run.status == "succeeded")

    for fault in faults or []:
        report.attempts.append(run_attempt(cmd, faults=fault, log_path=log))
        if finished():
            break
    for _ in range(kills):
        if finished():
            break  # the run completed before the next fault could strike
        # Kill somewhere in what is left of the run: the fixed start-up cost, then a share of
        # the remaining work (pairs already committed are skipped by the resume).
        done = sum(chaos_lake.read(t, filter=pc.field("run_id") == "chaos", columns=["item_id"]).num_rows
                   for t in ("scores", "quarantine"))
        remaining = 1.0 - min(1.0, done / max(1, ref_pairs))
        window = startup + remaining * (duration - startup)  # what a resume has left to do
        report.attempts.append(run_attempt(cmd, kill_after=rng.uniform(0.5, max(1.0, window)), log_path=log))
    report.attempts.append(run_attempt(cmd, log_path=log))
    compare_runs(ref_lake, ref_run, chaos_lake, "chaos", report)
    report.violations_equal = compare_violations(ref_lake, chaos_lake, policy)
    return report
