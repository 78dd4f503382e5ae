"""Benchmark: how the whole path scales with the catalog, model cost taken out.

For each catalog size (``--sizes``, default 1,000,000 and 10,000,000 items) this script writes a
synthetic text-only catalog (short titles, descriptions and lyrics from a fixed vocabulary,
generated with numpy/pyarrow, one Delta commit of a few large files, change data feed on) and
runs, each as the ``moderation`` command a user would run (its own process, its own local Ray):

1. ``backfill`` of the whole catalog;
2. ``rescan`` of the unchanged catalog (writes nothing);
3. a 1 % change: one Delta ``update`` appends " (remastered)" to the title of every item whose
   id ends in 07 (exactly 1 %; a new catalog version, its change data feed), then ``rescan``;
4. ``decide`` of the policy;
5. ``report`` (Spark).

The model is ``moderation.classifiers.benchmark.NullClassifier`` (kind ``benchmark_null``):
scores read off each row's content hash, no weights, so the figures are the cost of everything
around the model. That kind is refused by every registry load unless the process called
``moderation.classifiers.benchmark.register()``; each command here runs through a small wrapper
that does so, with ``$MODERATION_CONF_DIR`` pointing at a conf folder in the work dir that holds
the benchmark's model entry (``bench-null-v1``) and policy (``bench-scale`` v1, live).

Figures, per phase and size:

* wall: the command's wall clock (Python, Ray and Spark start-up included);
* driver peak RSS: ``VmHWM`` of ``/proc/self/status`` in the command's own process, read by the
  wrapper just before it exits: the kernel's high-water mark of that one process's resident
  memory (Ray's raylet, GCS and workers, and Spark's JVM are other processes and not counted).
  Not ``getrusage().ru_maxrss``: Linux carries that over fork and exec, so it would include this
  script's own peak;
* rows committed: rows added to ``scores`` + ``quarantine`` (from the Delta add actions'
  ``num_records``), and rows/s = rows committed / wall;
* Delta commits: new versions of every table in the lake; ``_delta_log`` size: bytes of every
  table's log after the phase, with the number of checkpoint files in it (delta-rs writes one
  every ``delta.checkpointInterval`` commits, 100 by default, when the writer runs its
  post-commit hook).

Then, for every figure, the ratio of the two largest sizes and, where they are not 10x apart,
the ratio per 10x of catalog (power-law fit through those two sizes) and the value extrapolated to
10,000,000 items. Goals: every cost ratio per 10x <= 11, driver peak RSS per 10x <= 1.5.

    .venv/bin/python scripts/bench_scale.py                                # 1M and 10M
    .venv/bin/python scripts/bench_scale.py --sizes 100000,1000000
    .venv/bin/python scripts/bench_scale.py --sizes 10000,100000 --keep --workdir /tmp/bench-scale

Exits 0 whether or not the goals are met (it is a benchmark); 1 if a command fails (its log is
printed and the work dir kept). Without ``--keep`` a temp work dir is removed, and a given
``--workdir`` loses only the ``items-*`` folders this run wrote.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROFILE = ROOT / "conf/jobs/local.yaml"
MODEL_ID = "bench-null-v1"
POLICY_ID = "bench-scale"
#: Each command runs through this: the benchmark kind registered, the peak RSS written at exit
#: (the CLI leaves through ``moderation.cli._exit``, an ``os._exit`` that skips atexit hooks).
WRAPPER = """
import os, resource, sys
from moderation.classifiers import benchmark
benchmark.register()
import moderation.cli as cli
_exit = cli._exit
def _measured_exit(code):
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with open("/proc/self/status") as f:
        kib = next((int(l.split()[1]) for l in f if l.startswith("VmHWM:")), kib)
    with open(os.environ["BENCH_RSS_FILE"], "w") as f:
        f.write(str(kib))
    _exit(code)
cli._exit = _measured_exit
cli.main(sys.argv[1:])
"""
RAY_START_FAILED = "The current node timed out during startup"
PHASES = ("backfill", "rescan unchanged", "change 1%", "rescan 1% changed", "decide", "report")
_SYLLABLES = ("la", "mo", "ri", "ka", "zen", "tu", "vo", "shi", "ne", "pa", "dor", "mi", "sol", "fa", "re", "qua")


# ----------------------------------------------------------------------------- catalog

def _vocabulary(n: int = 2000) -> list[str]:
    import numpy as np

    rng = np.random.default_rng(7)
    words = set()
    while len(words) < n:
        words.add("".join(_SYLLABLES[i] for i in rng.integers(0, len(_SYLLABLES), rng.integers(2, 4))))
    return sorted(words)


def _batch(start: int, n: int, words, rng):
    """``n`` catalog rows with ids ``itm{start:010d}`` onwards, built column-wise."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    from moderation.schemas import CATALOG_SCHEMA

    def text(k: int) -> pa.Array:
        parts = [pc.take(words, pa.array(rng.integers(0, len(words), n))) for _ in range(k)]
        return pc.binary_join_element_wise(*parts, " ")

    seq = pa.array(np.arange(start, start + n, dtype=np.int64))
    ids = pc.binary_join_element_wise("itm", pc.utf8_lpad(pc.cast(seq, pa.string()), 10, "0"), "")
    kinds = pa.array(["track", "episode", "audiobook"])
    langs = pa.array(["en", "de", "es", "fr", "pt", "sv", "ja"])
    markets = pa.array(["US", "DE", "BR", "SE", "JP", "GB", "FR", "MX"])
    body = text(12)
    body = pc.if_else(pa.array(rng.random(n) < 0.5), body, pa.nulls(n, pa.string()))
    item_type = pc.take(kinds, pa.array(rng.integers(0, 3, n)))

    def group_ids(prefix: str, per: int) -> pa.Array:
        """``<prefix><k>``, about ``per`` items a group, numbered from this batch's place in the
        catalog: the groups grow with the catalog, as a real catalog's creators do."""
        k = rng.integers(start // per, (start + n) // per + 1, n)
        return pc.binary_join_element_wise(prefix, pc.cast(pa.array(k), pa.string()), "")

    def group_id(prefix: str, kind: str, per: int) -> pa.Array:
        """``group_ids`` for items of ``kind``, null for the others."""
        return pc.if_else(pc.equal(item_type, kind), group_ids(prefix, per), pa.nulls(n, pa.string()))

    columns = {
        "item_id": ids,
        "item_type": item_type,
        "show_id": group_id("sh", "episode", 10),
        "album_id": group_id("al", "track", 10),
        "title": pc.binary_join_element_wise(text(3), pc.cast(pa.array(rng.integers(1, 1000, n)), pa.string()), " "),
        "description": text(8),
        "body_text": body,
        "language": pc.take(langs, pa.array(rng.integers(0, len(langs), n))),
        "markets": pa.ListArray.from_arrays(pa.array(np.arange(0, 2 * n + 1, 2, dtype=np.int32)),
                                            pc.take(markets, pa.array(rng.integers(0, len(markets), 2 * n)))),
        "creator_id": group_ids("cr", 20),
        "explicit": pa.array(rng.random(n) < 0.1),
        "cover_image": pa.nulls(n, pa.string()),
        "audio_clip": pa.nulls(n, pa.string()),
        "updated_at": pa.array(np.full(n, 1_760_000_000_000_000, dtype=np.int64)).cast(pa.timestamp("us", tz="UTC")),
    }
    return pa.RecordBatch.from_arrays([columns[f.name].cast(f.type) for f in CATALOG_SCHEMA], schema=CATALOG_SCHEMA)


def write_catalog(uri: Path, items: int, *, batch_rows: int = 250_000, seed: int = 1) -> None:
    """A synthetic catalog of ``items`` rows: one commit, files of up to ~128 MiB."""
    import numpy as np
    import pyarrow as pa
    from deltalake import write_deltalake

    from moderation.schemas import CATALOG_SCHEMA

    words = pa.array(_vocabulary())
    rng = np.random.default_rng(seed)
    batches = (_batch(s, min(batch_rows, items - s), words, rng) for s in range(0, items, batch_rows))
    write_deltalake(str(uri), pa.RecordBatchReader.from_batches(CATALOG_SCHEMA, batches),
                    configuration={"delta.enableChangeDataFeed": "true"}, target_file_size=128 << 20)


def change_catalog(uri: Path) -> None:
    """A new catalog version with 1 % of the items changed (ids ending in 07)."""
    from deltalake import DeltaTable

    DeltaTable(str(uri)).update(predicate="item_id LIKE '%07'", updates={"title": "concat(title, ' (remastered)')"})


# ----------------------------------------------------------------------------- conf

def write_conf(conf: Path) -> None:
    """The benchmark's registry entry, policy and gate config under ``conf``."""
    (conf / "models").mkdir(parents=True, exist_ok=True)
    (conf / "policies" / POLICY_ID).mkdir(parents=True, exist_ok=True)
    (conf / "eval").mkdir(parents=True, exist_ok=True)
    shutil.copy(ROOT / "conf/eval/gate.yaml", conf / "eval/gate.yaml")
    manifest = conf / "models" / f"{MODEL_ID}.json"
    manifest.write_text(json.dumps({"model": "none", "scores": "8 hex digits of the content hash per category / 2**32"}))
    sha = hashlib.sha256(manifest.read_bytes()).hexdigest()
    (conf / "models" / f"{MODEL_ID}.yaml").write_text(
        f"model_id: {MODEL_ID}\nmodality: text\nkind: benchmark_null\n"
        "description: benchmark only (scripts/bench_scale.py), no model\n"
        "categories: [hate, harassment, spam]\n"
        f"artifacts:\n  manifest:\n    uri: {manifest}\n    sha256: {sha}\n")
    rules = {"hate": (0.999, 0.99, "remove", "high"), "harassment": (0.999, 0.995, "restrict", "medium"),
             "spam": (0.998, 0.99, "demote", "low")}
    body = "".join(f"  {c}:\n    threshold: {t}\n    review_threshold: {r}\n    action: {a}\n    severity: {s}\n"
                   "    modalities: [text]\n" for c, (t, r, a, s) in rules.items())
    (conf / "policies" / POLICY_ID / "v1.yaml").write_text(
        f"policy_id: {POLICY_ID}\nversion: 1\nstatus: live\ndescription: scale benchmark only\n"
        f"models: [{MODEL_ID}]\ncategories:\n{body}")


# ----------------------------------------------------------------------------- measuring

@dataclass
class LakeState:
    commits: int = 0
    log_bytes: int = 0
    checkpoints: int = 0
    rows: int = 0  # scores + quarantine


def lake_state(lake: Path) -> LakeState:
    """Commits, ``_delta_log`` bytes and checkpoint files of every table under ``lake``, and the
    rows of ``scores`` and ``quarantine`` (from the add actions' statistics)."""
    from deltalake import DeltaTable

    st = LakeState()
    if not lake.exists():
        return st
    for log in lake.rglob("_delta_log"):
        for f in log.iterdir():
            if f.is_file():
                st.log_bytes += f.stat().st_size
                st.commits += f.name.endswith(".json") and f.name[:20].isdigit()
                st.checkpoints += ".checkpoint" in f.name
        if log.parent.name in ("scores", "quarantine") and log.parent.parent == lake:
            adds = DeltaTable(str(log.parent)).get_add_actions(flatten=True)
            st.rows += sum(v or 0 for v in adds.column("num_records").to_pylist())
    return st


@dataclass
class Phase:
    wall_s: float = 0.0
    rss_mib: float | None = None
    rows: int = 0
    commits: int = 0
    log_bytes: int = 0
    checkpoints: int = 0

    @property
    def rows_per_s(self) -> float | None:
        return self.rows / self.wall_s if self.rows and self.wall_s else None


@dataclass
class SizeRun:
    items: int
    catalog_s: float = 0.0
    phases: dict[str, Phase] = field(default_factory=dict)


def run_cli(args: list[str], *, conf: Path, log: Path) -> tuple[float, float | None]:
    """Run a ``moderation`` command with the benchmark kind registered: (wall s, peak RSS MiB)."""
    rss_file = log.with_suffix(".rss")
    env = {**os.environ, "MODERATION_CONF_DIR": str(conf), "BENCH_RSS_FILE": str(rss_file), "HF_HUB_OFFLINE": "1"}
    for attempt in range(3):
        t0 = time.perf_counter()
        with open(log, "w") as out:  # not a terminal: no progress bar, no control sequences
            proc = subprocess.run([sys.executable, "-c", WRAPPER, *args], stdout=out, stderr=subprocess.STDOUT,
                                  stdin=subprocess.DEVNULL, env=env, cwd=ROOT)
        took = time.perf_counter() - t0
        # A local Ray that could not start on a loaded machine wrote nothing: start the command again.
        if proc.returncode == 0 or RAY_START_FAILED not in log.read_text() or attempt == 2:
            break
        print(f"  ({args[0]}: local Ray did not start in time; trying again)", flush=True)
    if proc.returncode != 0:
        raise RuntimeError(f"`moderation {' '.join(args)}` exited {proc.returncode}:\n{log.read_text()[-4000:]}")
    rss = int(rss_file.read_text()) / 1024 if rss_file.exists() else None
    return took, rss


def run_size(items: int, work: Path, profile: Path) -> SizeRun:
    conf, catalog, lake = work / "conf", work / "catalog", work / "lake"
    write_conf(conf)
    out = SizeRun(items)
    t0 = time.perf_counter()
    write_catalog(catalog, items)
    out.catalog_s = time.perf_counter() - t0
    print(f"[{items:,}] catalog written in {out.catalog_s:.1f} s", flush=True)
    policy = conf / "policies" / POLICY_ID / "v1.yaml"
    scoring = ["--catalog", str(catalog), "--lake", str(lake), "--policy", str(policy), "--profile", str(profile)]
    commands = {
        "backfill": ["backfill", *scoring],
        "rescan unchanged": ["rescan", *scoring],
        "change 1%": None,
        "rescan 1% changed": ["rescan", *scoring],
        "decide": ["decide", "--lake", str(lake), "--policy", str(policy)],
        "report": ["report", "--lake", str(lake)],
    }
    before = lake_state(lake)
    for i, (name, args) in enumerate(commands.items()):
        if args is None:
            t0 = time.perf_counter()
            change_catalog(catalog)
            wall, rss = time.perf_counter() - t0, None
        else:
            wall, rss = run_cli(args, conf=conf, log=work / f"{i}-{args[0]}.log")
        after = lake_state(lake)
        out.phases[name] = Phase(wall, rss, after.rows - before.rows, after.commits - before.commits,
                                 after.log_bytes, after.checkpoints)
        before = after
        p = out.phases[name]
        print(f"[{items:,}] {name}: {wall:.1f} s, driver peak RSS "
              f"{'-' if rss is None else f'{rss:.0f} MiB'}, {p.rows:,} rows, {p.commits} commits, "
              f"_delta_log {p.log_bytes / 1024:.0f} KiB ({p.checkpoints} checkpoints)", flush=True)
    return out


# ----------------------------------------------------------------------------- table

def _fmt(v: float | None, unit: str) -> str:
    if v is None:
        return "-"
    if unit == "s":
        return f"{v:.1f}"
    if unit in ("MiB", "KiB"):
        return f"{v:,.0f}"
    if unit == "rows/s":
        return f"{v:,.0f}"
    return f"{v:,.0f}"


def figures(run: SizeRun) -> dict[tuple[str, str], tuple[float | None, str]]:
    """(phase, figure) -> (value, unit), in print order."""
    out: dict[tuple[str, str], tuple[float | None, str]] = {("catalog write", "wall"): (run.catalog_s, "s")}
    for name, p in run.phases.items():
        out[(name, "wall")] = (p.wall_s, "s")
        if p.rss_mib is not None:
            out[(name, "driver peak RSS")] = (p.rss_mib, "MiB")
        if name in ("backfill", "rescan 1% changed"):
            out[(name, "rows committed")] = (p.rows, "rows")
            out[(name, "rows/s of commits")] = (p.rows_per_s, "rows/s")
        if name != "change 1%":
            out[(name, "Delta commits")] = (p.commits, "")
    last = run.phases[PHASES[-1]]
    out[("lake, end", "_delta_log size")] = (last.log_bytes / 1024, "KiB")
    out[("lake, end", "checkpoint files")] = (last.checkpoints, "")
    return out


def goal(fig: str) -> tuple[str, float] | None:
    if fig == "driver peak RSS":
        return ("<=", 1.5)
    if fig == "rows/s of commits":
        return (">=", 10 / 11)  # throughput may fall no more than the wall-time goal allows
    if fig in ("wall", "Delta commits", "_delta_log size", "rows committed"):
        return ("<=", 11.0)
    return None


def print_table(runs: list[SizeRun]) -> None:
    sizes = [r.items for r in runs]
    figs = [figures(r) for r in runs]
    keys = list(figs[-1])
    # The two largest sizes: at small ones the fixed costs (Python, Ray and Spark start-up) dominate.
    lo, hi = sizes[-2] if len(sizes) > 1 else sizes[0], sizes[-1]
    span = hi / lo
    tenx = abs(span - 10) > 1e-9
    header = ["phase", "figure", *(f"{s:,}" for s in sizes), f"{hi:,}/{lo:,}"]
    if tenx:
        header += ["per 10x", "at 10,000,000"]
    header.append("goal")
    rows = []
    for key in keys:
        vals = [f.get(key, (None, ""))[0] for f in figs]
        unit = figs[-1][key][1]
        row = [key[0], key[1] + (f" ({unit})" if unit and unit != "rows" else "")]
        row += [_fmt(v, unit) for v in vals]
        a, b = vals[-2] if len(vals) > 1 else vals[0], vals[-1]
        ratio = b / a if a and b is not None else None
        row.append("-" if ratio is None else f"{ratio:.2f}")
        per10 = ratio ** (math.log(10) / math.log(span)) if ratio and span > 1 else None
        if tenx:
            row.append("-" if per10 is None else f"{per10:.2f}")
            row.append("-" if per10 is None else _fmt(b * (10_000_000 / hi) ** (math.log(per10) / math.log(10)), unit))
        g = goal(key[1]) if key[0] not in ("catalog write", "change 1%") else None  # the benchmark's own steps
        if g and per10 is not None:
            ok = per10 <= g[1] if g[0] == "<=" else per10 >= g[1]
            row.append(f"{g[0]} {g[1]:.2f} {'ok' if ok else 'MISSED'}")
        else:
            row.append("")
        rows.append(row)
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    line = "  ".join("{:<%d}" % w if i < 2 else "{:>%d}" % w for i, w in enumerate(widths))
    print(line.format(*header))
    print("  ".join("-" * w for w in widths))
    for r in rows:
        print(line.format(*r))
    if tenx:
        print(f"\nSizes run: {', '.join(f'{s:,}' for s in sizes)}. 'per 10x' fits value ~ items^b through the "
              f"two largest sizes ({span:g}x apart) and gives 10^b; 'at 10,000,000' extrapolates the "
              "largest size's value along that fit. Not measured at 10,000,000.")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="1000000,10000000", help="comma-separated catalog sizes (items), ascending")
    ap.add_argument("--workdir", type=Path, default=None, help="where catalogs and lakes go (default: a temp dir)")
    ap.add_argument("--keep", action="store_true", help="keep catalogs, lakes and command logs")
    ap.add_argument("--profile", type=Path, default=PROFILE, help="run profile of every command (default conf/jobs/local.yaml)")
    args = ap.parse_args(argv)
    sizes = sorted({int(s.replace("_", "")) for s in args.sizes.split(",") if s.strip()})
    if not sizes or sizes[0] < 100:
        ap.error("--sizes: at least one size, each >= 100")
    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"work dir {work}; profile {args.profile}; {os.cpu_count()} CPUs", flush=True)
    runs, written, failed = [], [], False
    try:
        for n in sizes:
            d = work / f"items-{n}"
            if d.exists():
                shutil.rmtree(d)
            written.append(d)
            d.mkdir()
            runs.append(run_size(n, d, args.profile.resolve()))
    except RuntimeError as e:
        print(f"error: {e}", file=sys.stderr)
        failed = True
    if runs:
        print()
        print_table(runs)
    if failed or args.keep:
        print(f"\nkept: {work}")
    elif args.workdir is None:
        shutil.rmtree(work, ignore_errors=True)
    else:
        for d in written:
            shutil.rmtree(d, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
