"""The whole job on s3:// through a real S3 server started here (SeaweedFS on loopback, see
tests/s3_server.py): catalog, lake tables, leases. Credentials reach every client (delta-rs,
pyarrow, boto3, the Ray workers of the backfill process) only through the standard AWS
environment. Backfill, a killed-and-resumed backfill, decide and report; and the S3 server
stopped in the middle of a run: the run fails with a clear error, the tables stay readable,
and the same command then completes it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import Counter

import pyarrow.compute as pc
import pytest
import yaml
from typer.testing import CliRunner

from moderation.cli import app
from moderation.demo.catalog import write_demo_catalog
from moderation.policy.decide import run_decide
from moderation.runs import read_run
from moderation.scoring.backfill import run_accounting
from moderation.scoring.chaos import backfill_command, chaos_backfill
from moderation.storage.lake import Lake
from tests.conftest import POLICY_V1
from tests.s3_server import SeaweedS3

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]
ITEMS = 60


@pytest.fixture(scope="module")
def s3(tmp_path_factory, data_dir):
    root = tmp_path_factory.mktemp("s3")
    with SeaweedS3(root / "server") as server, pytest.MonkeyPatch.context() as mp:
        for key, value in server.env.items():
            mp.setenv(key, value)
        catalog = write_demo_catalog(f"s3://{server.bucket}/catalog", items=ITEMS, data_dir=data_dir)
        profile = root / "profile.yaml"
        profile.write_text(yaml.safe_dump({"batch_size": 8, "actors": 1, "actor_num_cpus": 1.0, "torch_threads": 2,
                                           "chunk_pairs": 8}))
        yield {"server": server, "root": root, "catalog": catalog.uri, "profile": profile,
               "lake": Lake(f"s3://{server.bucket}/lake")}


def _run(s3, run_id: str, **kw) -> subprocess.CompletedProcess:
    cmd = backfill_command(s3["catalog"], s3["lake"].root, POLICY_V1, run_id, s3["profile"])
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={**os.environ, **kw})


def test_backfill_decide_report_on_s3(s3, spark):
    from moderation.reporting.report import run_report

    proc = _run(s3, "s3-full")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lake = s3["lake"]
    run = read_run(lake, "s3-full")
    scored, quarantined, dupes = run_accounting(lake, "s3-full")
    assert run.status == "succeeded" and run.catalog_version == 0 and dupes == 0
    assert scored + quarantined == run.selected_pairs == ITEMS
    assert lake.version("scores") is not None and lake.uri("scores").startswith("s3://")
    assert not s3["server"].client().list_objects_v2(Bucket=s3["server"].bucket, Prefix="lake/_leases/").get("Contents")
    decided = run_decide(lake_root=lake.root, policy_path=POLICY_V1)
    violations = lake.read("violations")
    assert violations.num_rows == decided.violations + decided.reviews > 0
    report = run_report(lake.root, spark=spark)
    rates = Lake(f"{lake.root}/reports").read("violation_rates")
    assert rates.num_rows > 0 and report.summary()
    flagged = pc.sum(rates.column("violations")).as_py()
    assert flagged >= len(set(violations.filter(pc.field("decision") == "violation").column("item_id").to_pylist()))
    # An analyst's `moderation sql` over the S3 lake: every table a view of the pinned snapshot,
    # read through Arrow (this Spark has no s3a), the report tables included.
    q = ("SELECT v.decision, count(*) AS n, count(DISTINCT s.item_id) AS scored FROM violations v "
         "JOIN scores s ON s.item_id = v.item_id GROUP BY v.decision ORDER BY v.decision")
    out = CliRunner().invoke(app, ["sql", q, "--lake", lake.root, "--json"])
    assert out.exit_code == 0, out.output
    got = {r["decision"]: r for r in map(json.loads, out.stdout.splitlines())}
    by_decision = Counter(violations.column("decision").to_pylist())
    assert {d: r["scored"] for d, r in got.items()} == {
        d: len(set(violations.filter(pc.field("decision") == d).column("item_id").to_pylist())) for d in by_decision}
    shown = CliRunner().invoke(app, ["sql", "SELECT count(*) AS n FROM reports_violation_rates", "--lake", lake.root, "--json"])
    assert shown.exit_code == 0 and json.loads(shown.stdout)["n"] == rates.num_rows, shown.output


def test_killed_backfill_resumes_on_s3(s3, tmp_path):
    report = chaos_backfill(catalog=s3["catalog"], workdir=tmp_path, policy=POLICY_V1, profile=s3["profile"],
                            kills=0, faults=["before_commit:2", "after_commit:2"],
                            lakes_root=f"s3://{s3['server'].bucket}/chaos", reference=(s3["lake"], "s3-full"))
    assert [a.fault for a in report.attempts if a.killed] == ["before_commit:2", "after_commit:2"], report.summary()
    assert report.ok and report.lost == report.duplicated == 0 and report.reference_pairs == ITEMS, report.summary()


#: Runs the CLI with the run's accounting held until the test says go: the test stops the S3
#: server there, so the outage strikes the accounting step every time (it once struck it by
#: chance, and its "Object Store error" ended the command with a traceback, exit 1).
_PAUSE_AT_ACCOUNTING = """
import os, sys, time

from moderation.redact import install

install()  # before deltalake is imported, as cli.main does
import moderation.scoring.run as scoring_run

gate, release = sys.argv[1], sys.argv[2]
real = scoring_run.run_accounting


def held_accounting(*args, **kwargs):
    if not os.path.exists(gate):
        open(gate, "w").close()
        while not os.path.exists(release):
            time.sleep(0.1)
    return real(*args, **kwargs)


scoring_run.run_accounting = held_accounting
from moderation.cli import main
from moderation.runs import read_run

main(sys.argv[3:])
"""


def test_s3_outage_mid_run_fails_clearly_then_resume_completes(s3, tmp_path):
    """The outage strikes after every chunk is committed, at the accounting over S3 (tables
    opened, data files scanned): exit 3 with one line, then the resume completes.
    Deterministic: the accounting waits for the test to stop the server."""
    server, lake = s3["server"], s3["lake"]
    gate, release = tmp_path / "at-accounting", tmp_path / "go"
    cmd = backfill_command(s3["catalog"], lake.root, POLICY_V1, "s3-outage", s3["profile"])
    assert cmd[1:3] == ["-m", "moderation.cli"]
    cmd = [sys.executable, "-c", _PAUSE_AT_ACCOUNTING, str(gate), str(release), *cmd[3:]]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None and not gate.exists():
        time.sleep(0.2)
    assert gate.exists(), f"the run never reached its accounting: {proc.poll()}"
    assert lake.transaction_version("scores", "moderation/backfill/s3-outage/text-minilm-heads-v1") is not None
    server.stop()
    release.touch()
    t0 = time.monotonic()
    try:
        out = proc.communicate(timeout=300)[0]
    finally:
        server.start()
    failed_after = time.monotonic() - t0
    assert proc.returncode == 3, out[-3000:]
    last = out.strip().splitlines()[-1]
    assert last.startswith("error: run s3-outage: storage failed:") and "run the same command again" in last, last
    assert "Generic S3 error" in last  # delta-rs' object store error, as it struck
    assert "Traceback" not in out and "\x1b[" not in last
    assert failed_after < 240  # bounded retries, not a hang
    # The tables are readable right away, at a committed version; the resume completes the run.
    assert lake.read("scores").num_rows > 0
    again = _run(s3, "s3-outage")
    assert again.returncode == 0, again.stdout + again.stderr
    scored, quarantined, dupes = run_accounting(lake, "s3-outage")
    assert dupes == 0 and scored + quarantined == ITEMS and read_run(lake, "s3-outage").status == "succeeded"


def test_store_failures_delta_rs_wraps_count_as_storage_failures():
    """An S3 endpoint answering 500 while it goes down reaches us as delta-rs' generic
    DeltaError, not an OSError: it must still end the run as a storage failure (exit 3,
    resumable), while other Delta errors stay what they are."""
    from deltalake.exceptions import DeltaError, TableNotFoundError

    from moderation.scoring.backfill import is_storage_failure

    wrapped = DeltaError("Generic DeltaTable error: Error interacting with object store: Generic S3 error: "
                         "Error performing list request: Server returned non-2xx status code: 500")
    assert is_storage_failure(wrapped)
    assert is_storage_failure(OSError("connection refused"))
    assert not is_storage_failure(DeltaError("Generic DeltaTable error: Schema mismatch"))
    assert not is_storage_failure(TableNotFoundError("no log files"))
    assert not is_storage_failure(ValueError("bad input"))
