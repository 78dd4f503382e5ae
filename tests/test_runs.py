"""moderation.runs: listing runs, showing one, and its reproducibility checks.

No Ray: runs rows are written directly with ``write_run``, the catalog is a tiny real
Delta table with two versions in tmp_path.
"""

from __future__ import annotations

import datetime as dt
import os
import shlex
import shutil
from pathlib import Path

import pyarrow as pa
import pytest
from deltalake import DeltaTable, write_deltalake

from moderation.config import (
    config_hash,
    default_conf_dir,
    load_model_registry,
    load_policy,
    load_run_profile,
)
from moderation.errors import ModerationError
from moderation.runs import (
    GROUPS,
    Check,
    RunRecord,
    RunReport,
    find_policy_file,
    format_runs,
    list_runs,
    reproduce_command,
    reproducibility,
    show_run,
    write_run,
)
from moderation.schemas import RUNS_SCHEMA
from moderation.storage.lake import Lake

from .conftest import POLICY_V1

POLICY_V3 = default_conf_dir() / "policies" / "catalog-safety" / "v3.yaml"

T0 = dt.datetime(2024, 5, 1, 12, 0, tzinfo=dt.timezone.utc)


@pytest.fixture(scope="module")
def registry():
    return load_model_registry()


@pytest.fixture
def catalog(tmp_path: Path) -> str:
    """A Delta catalog at version 1 (version 0: two items; version 1: one more)."""
    uri = str(tmp_path / "catalog")
    write_deltalake(uri, pa.table({"item_id": ["a", "b"], "title": ["one", "two"]}))
    write_deltalake(uri, pa.table({"item_id": ["c"], "title": ["three"]}), mode="append")
    return uri


@pytest.fixture
def lake(tmp_path: Path) -> Lake:
    return Lake(str(tmp_path / "lake"))


def backfill_row(registry, catalog: str, policy_path: Path = POLICY_V1, **over) -> RunRecord:
    loaded = load_policy(policy_path, registry)
    models = [registry[m] for m in loaded.policy.models]
    fields: dict = dict(  # noqa: C408 - keyword form reads like RunRecord's
        run_id="backfill-20240501T120000Z-aaaaaa", kind="backfill", status="succeeded", catalog_uri=catalog,
        catalog_version=0, where_expr="item_type = 'track'", item_limit=100, policy_id=loaded.policy.policy_id,
        policy_version=loaded.policy.version, policy_hash=loaded.content_hash, policy_path=str(policy_path),
        model_ids=[m.model_id for m in models], model_digests=[m.digest for m in models], modalities=["text"],
        selected_pairs=3, scored_pairs=2, quarantined_pairs=1, chunks_committed=1,
        catalog_columns=["title=title"], media_roots=["/data/media"],
        config_hash=config_hash(loaded.policy, load_run_profile(), *models), code_version="0.1.0+gabc123",
        started_at=T0, ended_at=T0 + dt.timedelta(seconds=83),
    )
    fields.update(over)
    return RunRecord(**fields)


def decide_row(registry, **over) -> RunRecord:
    loaded = load_policy(POLICY_V1, registry)
    models = [registry[m] for m in loaded.policy.models]
    fields: dict = dict(  # noqa: C408 - keyword form reads like RunRecord's
        run_id="decide-20240501T130000Z-bbbbbb", kind="decide", status="succeeded",
        policy_id=loaded.policy.policy_id, policy_version=loaded.policy.version, policy_hash=loaded.content_hash,
        model_ids=[m.model_id for m in models], model_digests=[m.digest for m in models],
        categories=sorted(loaded.policy.categories), scores_version=0, violation_rows=5,
        started_at=T0 + dt.timedelta(hours=1), ended_at=T0 + dt.timedelta(hours=1, seconds=2),
    )
    fields.update(over)
    return RunRecord(**fields)


def names(table: pa.Table) -> list[str]:
    return table.column("run_id").to_pylist()


# ------------------------------------------------------------------------------------------
# list
# ------------------------------------------------------------------------------------------


def test_list_runs_newest_first_with_filters_and_limit(lake, registry, catalog):
    write_run(lake, backfill_row(registry, catalog, run_id="b-old", started_at=T0))
    write_run(lake, decide_row(registry, run_id="d-mid", started_at=T0 + dt.timedelta(hours=1)))
    # Same start time: run_id breaks the tie (descending).
    write_run(lake, decide_row(registry, run_id="d-new-a", status="failed", started_at=T0 + dt.timedelta(hours=2)))
    write_run(lake, decide_row(registry, run_id="d-new-b", started_at=T0 + dt.timedelta(hours=2)))
    write_run(lake, RunRecord(run_id="x-nostart", kind="promote", status="running", policy_id="other-policy"))

    assert names(list_runs(lake)) == ["d-new-b", "d-new-a", "d-mid", "b-old", "x-nostart"]
    assert names(list_runs(lake, kind="decide")) == ["d-new-b", "d-new-a", "d-mid"]
    assert names(list_runs(lake, status="failed")) == ["d-new-a"]
    assert names(list_runs(lake, policy_id="other-policy")) == ["x-nostart"]
    assert names(list_runs(lake, kind="decide", status="succeeded", limit=1)) == ["d-new-b"]
    assert names(list_runs(lake, limit=2)) == ["d-new-b", "d-new-a"]
    assert list_runs(lake, kind="enforce").num_rows == 0
    assert list_runs(lake).schema.names[: len(RUNS_SCHEMA)] == RUNS_SCHEMA.names
    with pytest.raises(ModerationError, match="limit"):
        list_runs(lake, limit=0)


def test_list_runs_of_an_empty_lake(lake):
    table = list_runs(lake)
    assert table.num_rows == 0
    assert format_runs(table) == "no runs"


def test_list_runs_reads_a_runs_table_that_predates_newer_columns(lake, catalog):
    old_schema = pa.schema([f for f in RUNS_SCHEMA if f.name not in ("policy_path", "diff_rows", "forced")])
    row = dict.fromkeys(old_schema.names)
    row.update(run_id="old-run", kind="backfill", status="succeeded", catalog_uri=catalog, catalog_version=0,
               started_at=T0)
    write_deltalake(lake.uri("runs"), pa.Table.from_pylist([row], schema=old_schema))
    table = list_runs(lake)
    assert names(table) == ["old-run"]
    assert table.column("policy_path").to_pylist() == [None]
    assert "old-run" in format_runs(table)
    report = show_run(lake, "old-run")
    assert report.run.policy_path is None
    assert "policy file" not in report.format()  # no policy hash recorded: no policy check


def test_format_runs_is_aligned_and_says_what_each_kind_did(lake, registry, catalog):
    write_run(lake, backfill_row(registry, catalog))
    write_run(lake, decide_row(registry))
    write_run(lake, RunRecord(run_id="diff-1", kind="diff", status="failed", policy_id="catalog-safety",
                              policy_version=2, from_version=1, diff_rows=7, started_at=T0 + dt.timedelta(hours=3)))
    text = format_runs(list_runs(lake))
    lines = text.splitlines()
    assert lines[0].split() == ["RUN", "ID", "KIND", "STATUS", "POLICY", "CATALOG", "COUNTS", "STARTED", "TOOK"]
    assert [ln.split()[0] for ln in lines[1:]] == ["diff-1", "decide-20240501T130000Z-bbbbbb",
                                                   "backfill-20240501T120000Z-aaaaaa"]
    # Columns line up: the kind starts at the same offset on every line.
    at = lines[0].index("KIND")
    assert [ln[at:].split()[0] for ln in lines] == ["KIND", "diff", "decide", "backfill"]
    at = lines[0].index("COUNTS")
    assert [ln[at:].split()[0] for ln in lines] == ["COUNTS", "7", "5", "3"]
    backfill, decide, diff = lines[3], lines[2], lines[1]
    assert "catalog-safety v1" in backfill and " v0 " in backfill
    assert "3 sel, 2 scored, 1 quar" in backfill and "1m23s" in backfill and "2024-05-01 12:00Z" in backfill
    assert "5 violation rows" in decide and "2s" in decide
    assert "catalog-safety v1->v2" in diff and "7 diff rows" in diff
    assert max(len(ln) for ln in lines) <= 140  # one terminal line per run


# ------------------------------------------------------------------------------------------
# show
# ------------------------------------------------------------------------------------------


def test_groups_name_every_runs_column():
    grouped = [name for _, cols in GROUPS for name, _ in cols]
    assert sorted(grouped) == sorted(RUNS_SCHEMA.names)
    assert len(grouped) == len(set(grouped))


def test_show_prints_every_non_null_column_grouped(lake, registry, catalog):
    row = backfill_row(registry, catalog, hash_bank_version=4, forced=True, error="first line\nsecond line")
    write_run(lake, row)
    report = show_run(lake, row.run_id)
    text = report.format()
    for name, value in row.to_row().items():
        if value is None:
            continue
        values = value if isinstance(value, list) else [value]
        for v in values:
            shown = v.strftime("%Y-%m-%d %H:%M:%S") if isinstance(v, dt.datetime) else ("yes" if v is True else str(v))
            assert shown.splitlines()[0] in text, f"{name}: {shown!r} not shown"
    labels = {name: label for _, cols in GROUPS for name, label in cols}
    for name, value in row.to_row().items():
        if value is not None and name != "model_digests":  # digests sit beside the model ids
            assert f"  {labels[name]} " in text, f"label of {name} not shown"
    heads = [ln for ln in text.splitlines() if ln and not ln.startswith(" ")]
    assert heads[:6] == [f"run {row.run_id}", "inputs", "outputs", "provenance", "error",
                         "reproducibility: NOT reproducible"]  # the hash bank version 4 does not exist
    assert "selected 3 = scored 2 + quarantined 1  [OK]" in text
    assert "duration            1m23s" in text
    # Model ids are paired with their digests on one line.
    model, digest = row.model_ids[0], row.model_digests[0]
    assert any(model in ln and digest in ln for ln in text.splitlines())
    assert "FAIL  hash bank version:" in text


def test_show_puts_columns_it_does_not_know_under_other(lake):
    report = RunReport(lake_root="/lake", run=RunRecord(run_id="r1", kind="export", status="succeeded"),
                       extra=(("exported_rows", 12), ("unused", None)))
    text = report.format()
    assert "other\n  exported_rows       12" in text
    assert "unused" not in text
    # A runs table written by a newer version: its extra columns are shown, and in --json.
    newer = pa.schema([*RUNS_SCHEMA, pa.field("exported_rows", pa.int64())])
    row = {**RunRecord(run_id="r2", kind="export", status="succeeded").to_row(), "exported_rows": 7}
    write_deltalake(lake.uri("runs"), pa.Table.from_pylist([row], schema=newer))
    report = show_run(lake, "r2")
    assert "other\n  exported_rows       7" in report.format()
    assert report.to_dict()["run"]["exported_rows"] == 7 and report.run.kind == "export"


def test_unknown_run_id_names_the_run_and_the_lake(lake, registry, catalog):
    with pytest.raises(ModerationError, match=r"'nope'.*does not exist") as err:
        show_run(lake, "nope")
    assert lake.root in str(err.value)
    write_run(lake, backfill_row(registry, catalog))
    with pytest.raises(ModerationError) as err:
        show_run(lake, "backfill-20240501T120000Z")
    msg = str(err.value)
    assert "'backfill-20240501T120000Z' not found in " + lake.uri("runs") in msg
    assert "backfill-20240501T120000Z-aaaaaa" in msg  # the run id containing it is suggested


def test_show_a_reproducible_backfill_and_its_command(lake, registry, catalog):
    row = backfill_row(registry, catalog)
    write_run(lake, row)
    report = show_run(lake, row.run_id)
    assert report.reproducible
    by_name = {c.name: c for c in report.checks}
    assert set(by_name) == {"catalog version", "policy file", "model text-minilm-heads-v1", "run profile"}
    assert all(c.ok for c in report.checks)
    args = shlex.split(report.command)
    assert args[:2] == ["moderation", "backfill"]

    def opt(name):
        return [args[i + 1] for i, a in enumerate(args) if a == name]

    assert opt("--catalog") == [catalog] and opt("--catalog-version") == ["0"] and opt("--lake") == ["NEW_LAKE"]
    assert opt("--policy") == [str(POLICY_V1)]
    assert opt("--profile") == [str(default_conf_dir() / "jobs" / "local.yaml")]
    assert opt("--where") == ["item_type = 'track'"] and opt("--limit") == ["100"]
    assert opt("--map") == ["title=title"] and opt("--media-root") == ["/data/media"]
    assert "--where \"item_type = 'track'\"" in report.command  # readable quoting
    text = report.format()
    assert "reproducibility: reproducible" in text and "reproduce with\n  moderation backfill" in text


def test_decide_command_and_scores_version_check(lake, registry):
    write_deltalake(lake.uri("scores"), pa.table({"x": [1]}))
    write_deltalake(lake.uri("scores"), pa.table({"x": [2]}), mode="append")
    row = decide_row(registry)
    write_run(lake, row)
    report = show_run(lake, row.run_id)
    assert report.command == f"moderation decide --lake {lake.root} --policy {POLICY_V1}"
    scores = next(c for c in report.checks if c.name == "scores version")
    assert scores.ok and "now at version 1" in scores.detail
    assert report.reproducible


def test_kinds_without_a_command_are_shown(lake):
    write_run(lake, RunRecord(run_id="enforce-1", kind="enforce", status="succeeded", policy_id="catalog-safety",
                              policy_version=2, enforcement_rows=40, started_at=T0))
    report = show_run(lake, "enforce-1")
    assert report.command is None and report.checks == ()
    text = report.format()
    assert "enforcement rows    40" in text and "no command to reproduce it" in text
    assert reproduce_command(RunRecord(run_id="p", kind="promote", status="succeeded")) is None


# ------------------------------------------------------------------------------------------
# reproducibility: catalog version
# ------------------------------------------------------------------------------------------


def catalog_check(run: RunRecord) -> Check:
    return next(c for c in reproducibility(run) if c.name == "catalog version")


def test_catalog_version_still_readable(registry, catalog):
    check = catalog_check(backfill_row(registry, catalog, catalog_version=0))
    assert check.ok, check.detail
    assert "version 0 is readable by time travel" in check.detail and "now at version 1" in check.detail


def test_catalog_version_vacuumed(registry, catalog):
    write_deltalake(catalog, pa.table({"item_id": ["z"], "title": ["new"]}), mode="overwrite")
    DeltaTable(catalog).vacuum(retention_hours=0, enforce_retention_duration=False, dry_run=False)
    check = catalog_check(backfill_row(registry, catalog, catalog_version=0))
    assert not check.ok
    assert "version 0: 1 of its 1 data file gone from the store (vacuumed" in check.detail
    # The latest version is still readable.
    assert catalog_check(backfill_row(registry, catalog, catalog_version=DeltaTable(catalog).version())).ok


def test_catalog_version_whose_log_expired(registry, catalog):
    dt_ = DeltaTable(catalog)
    dt_.create_checkpoint()
    os.remove(Path(catalog) / "_delta_log" / "00000000000000000000.json")
    check = catalog_check(backfill_row(registry, catalog, catalog_version=0))
    assert not check.ok
    assert "no longer readable by time travel: the log entries it needs have expired" in check.detail


def test_catalog_version_that_does_not_exist_or_a_catalog_gone(registry, catalog, tmp_path):
    check = catalog_check(backfill_row(registry, catalog, catalog_version=7))
    assert not check.ok and "at version 1; version 7 does not exist" in check.detail
    gone = str(tmp_path / "moved-away")
    check = catalog_check(backfill_row(registry, gone, catalog_version=0))
    assert not check.ok and "no longer a Delta table" in check.detail


def test_plain_parquet_catalog_cannot_be_pinned(registry, tmp_path):
    check = catalog_check(backfill_row(registry, str(tmp_path / "cat.parquet"), catalog_version=None))
    assert not check.ok and "plain Parquet" in check.detail


def test_catalog_version_a_backfill_would_refuse(registry, catalog):
    check = catalog_check(backfill_row(registry, catalog, catalog_columns=["title=no_such_column"]))
    assert not check.ok and "refuses it" in check.detail and "no_such_column" in check.detail


# ------------------------------------------------------------------------------------------
# reproducibility: policy file
# ------------------------------------------------------------------------------------------


def test_policy_file_found_at_the_recorded_path(registry, catalog, tmp_path):
    copy = tmp_path / "policy.yaml"
    shutil.copyfile(POLICY_V1, copy)
    run = backfill_row(registry, catalog, policy_path=copy)
    found, detail = find_policy_file(run, conf_dir=tmp_path / "empty-conf")
    assert found == copy and "still has sha256" in detail


def test_policy_file_edited_and_no_other_copy(registry, catalog, tmp_path):
    copy = tmp_path / "policy.yaml"
    shutil.copyfile(POLICY_V1, copy)
    run = backfill_row(registry, catalog, policy_path=copy)
    copy.write_text(copy.read_text().replace("threshold: 0.90", "threshold: 0.80", 1))
    checks = {c.name: c for c in reproducibility(run, conf_dir=tmp_path / "empty-conf")}
    policy = checks["policy file"]
    assert not policy.ok
    assert "was edited since the run" in policy.detail and run.policy_hash in policy.detail
    assert "run profile" not in checks  # no policy file: nothing to recompute the config hash from
    assert "--policy" in reproduce_command(run)


def test_policy_file_edited_but_the_original_is_under_conf(registry, catalog, tmp_path):
    copy = tmp_path / "policy.yaml"
    shutil.copyfile(POLICY_V1, copy)
    run = backfill_row(registry, catalog, policy_path=copy)
    copy.write_text(copy.read_text() + "\n# edited\n")
    found, detail = find_policy_file(run)  # default conf/: conf/policies/catalog-safety/v1.yaml
    assert found == POLICY_V1
    assert "was edited since the run" in detail and str(POLICY_V1) in detail
    check = next(c for c in reproducibility(run) if c.name == "policy file")
    assert check.ok


def test_policy_file_missing_and_none_recorded(registry, catalog, tmp_path, lake):
    run = backfill_row(registry, catalog).replace(policy_path=str(tmp_path / "deleted.yaml"), policy_hash="0" * 64)
    found, detail = find_policy_file(run)
    assert found is None and "no longer exists" in detail and "0" * 64 in detail
    write_run(lake, run)
    report = show_run(lake, run.run_id)
    assert not report.reproducible
    assert "--policy POLICY_FILE" in report.command and "POLICY_FILE: no file" in report.format()
    # An older row without policy_path: found by hash under conf/ alone.
    found, detail = find_policy_file(backfill_row(registry, catalog).replace(policy_path=None))
    assert found == POLICY_V1 and "recorded no policy path" in detail


def test_relative_policy_path_resolves_against_the_project(registry, catalog):
    run = backfill_row(registry, catalog, policy_path=Path("conf/policies/catalog-safety/v1.yaml"))
    found, _ = find_policy_file(run, conf_dir=Path("/nonexistent"))
    assert found is not None and found.resolve() == POLICY_V1.resolve()


# ------------------------------------------------------------------------------------------
# reproducibility: models and run profile
# ------------------------------------------------------------------------------------------


def test_model_digest_mismatch_and_unknown_model(registry, catalog):
    run = backfill_row(registry, catalog, policy_path=POLICY_V3)
    ids = run.model_ids
    assert len(ids) >= 2
    digests = list(run.model_digests)
    digests[1] = "f" * 64
    run = run.replace(model_digests=digests)
    checks = {c.name: c for c in reproducibility(run)}
    assert checks[f"model {ids[0]}"].ok
    bad = checks[f"model {ids[1]}"]
    assert not bad.ok and "ffffffffffff" in bad.detail and registry[ids[1]].digest[:12] in bad.detail

    gone = run.replace(model_ids=[ids[0], "retired-model-v0"], model_digests=[run.model_digests[0], "a" * 64])
    check = {c.name: c for c in reproducibility(gone)}["model retired-model-v0"]
    assert not check.ok and "no longer in the model registry" in check.detail


def test_unmatched_config_hash_only_warns(lake, registry, catalog):
    row = backfill_row(registry, catalog, config_hash="e" * 64)
    write_run(lake, row)
    report = show_run(lake, row.run_id)
    profile = next(c for c in report.checks if c.name == "run profile")
    assert not profile.ok and profile.advisory
    assert report.reproducible  # advisory only
    assert "--profile" not in report.command
    assert "WARN  run profile:" in report.format()


def test_show_without_checks(lake, registry, catalog):
    row = backfill_row(registry, catalog, catalog_version=9)  # would fail the catalog check
    write_run(lake, row)
    report = show_run(lake, row.run_id, check=False)
    assert report.checks == () and "reproducibility" not in report.format()
    assert "--catalog-version 9" in report.command


# ------------------------------------------------------------------------------------------
# s3://: the data files are found by one listing of the table prefix
# ------------------------------------------------------------------------------------------


@pytest.mark.integration
@pytest.mark.timeout(120)
def test_catalog_version_check_on_s3(tmp_path, registry, monkeypatch):
    import pyarrow.fs as pafs

    from moderation.runs import delta_version_check
    from moderation.storage.lake import arrow_filesystem, storage_options
    from tests.s3_server import SeaweedS3

    with SeaweedS3(tmp_path / "seaweed") as s3:
        for key, value in s3.env.items():
            monkeypatch.setenv(key, value)
        uri = f"s3://{s3.bucket}/catalog"
        opts = storage_options(uri)
        write_deltalake(uri, pa.table({"item_id": ["a", "b"], "title": ["one", "two"]}), storage_options=opts)
        write_deltalake(uri, pa.table({"item_id": ["c"], "title": ["three"]}), mode="overwrite", storage_options=opts)
        check = delta_version_check("catalog version", uri, 0)
        assert check.ok, check.detail
        assert "1 data file present; the table is now at version 1" in check.detail
        # Vacuum by hand: the file only version 0 references goes.
        old = DeltaTable(uri, version=0, storage_options=opts).file_uris()[0]
        fs, key = arrow_filesystem(old)
        fs.delete_file(key)
        assert fs.get_file_info(key).type == pafs.FileType.NotFound
        check = delta_version_check("catalog version", uri, 0)
        assert not check.ok and "1 of its 1 data file gone from the store" in check.detail
        assert delta_version_check("catalog version", uri, 1).ok


def test_a_failed_runs_error_leads_with_the_cause_ray_wrapped():
    from moderation.scoring.backfill import error_text

    class ActorDiedError(Exception):
        pass

    wrapped = ActorDiedError("The actor died \x1b[36mray::MapWorker\x1b[0m\n" + "  File x, line 1\n" * 400
                             + "moderation.errors.ArtifactError: model m: refusing to load artifact weights")
    text = error_text(wrapped)
    assert text.startswith("ArtifactError: model m: refusing to load artifact weights (raised inside ActorDiedError)")
    assert "\x1b" not in text and len(text) == 2000
    assert error_text(ValueError("plain")) == "ValueError: plain"
