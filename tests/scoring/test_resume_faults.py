"""Kill a real backfill process (SIGKILL, driver and its local Ray) at each named fault point,
resume it with the same command each time, and compare with an
uninterrupted run: nothing lost, nothing duplicated, same scores and violations, one runs row.
The full-size version (with random kills too) is scripts/chaos_backfill.py."""

from __future__ import annotations

import pyarrow.compute as pc
import pytest
import yaml

from moderation.demo.catalog import write_demo_catalog
from moderation.scoring.chaos import chaos_backfill
from moderation.storage.lake import Lake
from tests.conftest import POLICY_V1

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]


def test_killed_backfill_resumes_to_exactly_the_uninterrupted_result(tmp_path, data_dir):
    catalog = write_demo_catalog(str(tmp_path / "catalog"), items=60, data_dir=data_dir)
    profile = tmp_path / "profile.yaml"
    profile.write_text(yaml.safe_dump({"batch_size": 8, "actors": 1, "actor_num_cpus": 1.0, "torch_threads": 2,
                                       "chunk_pairs": 8, "block_kib": 32}))
    # The three points where exactly-once could break: a chunk's data file written but not
    # committed (an orphan), a commit whose acknowledgement is lost (a replay must be skipped),
    # and a kill between chunks (resume numbers the next chunk). scripts/chaos_backfill.py also
    # kills after the catalog scan and after a scored batch, and at random moments.
    faults = ["before_commit:2", "after_commit:2", "between_chunks:2"]
    report = chaos_backfill(catalog=catalog.uri, workdir=tmp_path / "chaos", policy=POLICY_V1, profile=profile,
                            kills=0, faults=faults, seed=3)
    print(report.summary())
    killed = [a.fault for a in report.attempts if a.killed]
    assert killed[: len(faults)] == faults, report.summary()  # each fault point really struck
    assert report.ok, report.summary()
    assert report.lost == report.duplicated == report.unexpected == 0 and report.reference_pairs == 60
    assert report.runs_rows == 1 and report.violations_equal
    # The kill between writing a chunk's data file and committing it left an orphan file that
    # no reader sees: the table folder holds more data files than the log references.
    lake = Lake(str(tmp_path / "chaos" / "chaos-lake"))
    from deltalake import DeltaTable

    for table in ("scores", "quarantine"):
        dt = DeltaTable(lake.uri(table))
        on_disk = {p.name for p in (tmp_path / "chaos" / "chaos-lake" / table).glob("*.parquet")}
        referenced = {p.rsplit("/", 1)[-1] for p in dt.file_uris()}
        assert referenced <= on_disk
        if table == "scores":
            assert len(on_disk - referenced) >= 1  # the orphan of before_commit
    assert lake.read("scores", filter=pc.field("run_id") == "chaos").num_rows == \
        Lake(str(tmp_path / "chaos" / "reference-lake")).read("scores", filter=pc.field("run_id") == "reference").num_rows
