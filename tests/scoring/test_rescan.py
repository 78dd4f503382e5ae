"""Incremental re-scans on a real Delta catalog (change data feed on) with a real local Ray:
only new / changed / re-modelled pairs are scored, removed items are retired, an unchanged
catalog writes nothing, and the change data feed and the content-hash anti-join agree."""

from __future__ import annotations

import os
import shutil
from collections import Counter

import pyarrow as pa
import pyarrow.compute as pc
import pytest
import yaml
from deltalake import DeltaTable, write_deltalake
from typer.testing import CliRunner

from moderation.classifiers.base import RunContext
from moderation.cli import app
from moderation.config import PROJECT_ROOT as ROOT
from moderation.config import default_conf_dir, load_model_registry, load_policy
from moderation.demo.catalog import build_demo_table
from moderation.policy.decide import run_decide
from moderation.runs import read_run
from moderation.scoring.backfill import run_accounting, run_backfill
from moderation.scoring.rescan import pinned_versions, plan_rescan, run_rescan
from moderation.storage.lake import Lake
from tests.conftest import POLICY_V1

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]
ITEMS = 60
TABLES = ("scores", "quarantine", "violations", "runs", "removals")


def _lake_state(lake: Lake) -> dict:
    """Every table's version and every file under the lake (what 'writes nothing' means)."""
    files = sorted(os.path.relpath(os.path.join(d, f), lake.root) for d, _, fs in os.walk(lake.root) for f in fs)
    return {"versions": {t: lake.version(t) for t in TABLES}, "files": files}


@pytest.fixture(scope="module")
def env(tmp_path_factory, ray_local, data_dir):
    root = tmp_path_factory.mktemp("rescan")
    profile = root / "profile.yaml"
    profile.write_text(yaml.safe_dump({"batch_size": 32, "actors": 1, "actor_num_cpus": 1.0,
                                       "torch_threads": 2, "chunk_pairs": 16}))
    table, _ = build_demo_table(items=ITEMS, data_dir=data_dir, cover_share=0.3, audio_share=0.0)
    catalog = str(root / "catalog")
    write_deltalake(catalog, table, configuration={"delta.enableChangeDataFeed": "true"})
    lake = Lake(str(root / "lake"))
    base = run_backfill(catalog_uri=catalog, lake_root=lake.root, policy_path=POLICY_V1, run_id="base",
                        profile_path=profile, progress=False)
    assert base.status == "succeeded" and base.selected_pairs == ITEMS
    run_decide(lake_root=lake.root, policy_path=POLICY_V1, run_id="decide-base")
    return {"root": root, "profile": profile, "catalog": catalog, "lake": lake, "table": table}


def _plan(env, source: str, models_dir=None):
    from moderation.storage.catalog import open_catalog

    registry = load_model_registry(models_dir)
    models = [registry[m] for m in load_policy(POLICY_V1, registry).policy.models]
    snapshot = open_catalog(env["catalog"])
    return plan_rescan(snapshot, models, env["lake"], context=RunContext(lake_root=env["lake"].root),
                       versions=pinned_versions(env["lake"]), change_source=source)


def test_unchanged_catalog_rescan_writes_nothing(env):
    lake = env["lake"]
    before = _lake_state(lake)
    for source in ("auto", "anti_join"):
        result = run_rescan(catalog_uri=env["catalog"], lake_root=lake.root, policy_path=POLICY_V1,
                            change_source=source, profile_path=env["profile"], progress=False)
        assert result.nothing_changed and result.selected_pairs == 0 and result.removed_pairs == 0
        assert result.unchanged_pairs == ITEMS
        assert result.change_source == ("cdf" if source == "auto" else "anti_join")
        assert result.baseline_run_id == "base"
    assert _lake_state(lake) == before
    out = CliRunner().invoke(app, ["rescan", "--catalog", env["catalog"], "--lake", lake.root,
                                   "--policy", str(POLICY_V1), "--profile", str(env["profile"])])
    assert out.exit_code == 0, out.output
    assert "nothing changed since run base" in out.output and "nothing written" in out.output
    # The cluster entrypoint (what ray job submit and the nightly RayCronJob run) does the same.
    import subprocess
    import sys

    job = subprocess.run([sys.executable, "-m", "moderation", "rescan", "--catalog", env["catalog"], "--lake",
                          lake.root, "--policy", str(POLICY_V1), "--profile", str(env["profile"])],
                         capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert job.returncode == 0 and "nothing written" in job.stdout, job.stderr
    assert _lake_state(lake) == before


def test_rescan_scores_exactly_the_changed_pairs_and_records_removals(env):
    lake, table = env["lake"], env["table"]
    dt = DeltaTable(env["catalog"])
    ids = sorted(table.column("item_id").to_pylist())
    violating = set(lake.read("violations", filter=pc.field("decision") == "violation").column("item_id").to_pylist())
    assert violating, "the demo catalog plants violating text"
    deleted = sorted(violating)[:1] + [i for i in ids if i not in violating][:1]
    rest = [i for i in ids if i not in deleted]
    edited = rest[:3]
    relabelled = rest[3]  # metadata only (markets): same content hash, but decide reads the markets
    moved = rest[4]  # to another creator: same content hash, but the report's roll-ups read creator_id
    for item in edited:
        dt.update(predicate=f"item_id = '{item}'", updates={"title": f"'A changed title for {item}'"})
    dt.update(predicate=f"item_id = '{relabelled}'", updates={"markets": "make_array('US', 'SE', 'NO')"})
    dt.update(predicate=f"item_id = '{moved}'", updates={"creator_id": "'creator_moved'"})
    dt.delete(predicate=" OR ".join(f"item_id = '{i}'" for i in deleted))
    new_rows = table.slice(0, 2).to_pylist()
    for n, row in enumerate(new_rows):
        row.update(item_id=f"new_{n:03d}", title=f"Fresh upload {n}")
    write_deltalake(env["catalog"], pa.Table.from_pylist(new_rows, schema=table.schema), mode="append")

    # The change data feed and the full content-hash comparison find the same pairs.
    cdf, full = _plan(env, "cdf"), _plan(env, "anti_join")
    expected = sorted([*edited, relabelled, moved, "new_000", "new_001"])
    for plan in (cdf, full):
        sel = plan.selections["text-minilm-heads-v1"]
        assert sorted(sel.keep_ids.to_pylist()) == expected
        assert sorted(plan.removals.column("item_id").to_pylist()) == sorted(deleted)
        assert set(plan.removals.column("reason").to_pylist()) == {"item_deleted"}
    assert cdf.change_source == "cdf" and full.change_source == "anti_join"
    assert full.unchanged_pairs == ITEMS - len(deleted) - len(edited) - 2
    assert cdf.rows_read < full.rows_read  # the feed reads only the changed items

    out = CliRunner().invoke(app, ["rescan", "--catalog", env["catalog"], "--lake", lake.root, "--policy",
                                   str(POLICY_V1), "--profile", str(env["profile"]), "--run-id", "rescan-1"])
    assert out.exit_code == 0, out.output
    assert "changes found by cdf since run base" in out.output
    run = read_run(lake, "rescan-1")
    assert run.kind == "rescan" and run.status == "succeeded" and run.change_source == "cdf"
    # Accounting invariant of re-scans: changed pairs = new scores rows + quarantine rows.
    scored, quarantined, dupes = run_accounting(lake, "rescan-1")
    assert run.selected_pairs == len(expected) == scored + quarantined and dupes == 0
    rows = lake.read("scores", filter=pc.field("run_id") == "rescan-1")
    q = lake.read("quarantine", filter=pc.field("run_id") == "rescan-1")
    assert sorted(rows.column("item_id").to_pylist() + q.column("item_id").to_pylist()) == expected
    assert run.removed_pairs == len(deleted) and run.unchanged_pairs == ITEMS - len(deleted) - len(edited) - 2
    # The re-scored item carries its new markets, which decide reads.
    assert sorted(rows.filter(pc.equal(rows.column("item_id"), relabelled)).column("markets")[0].as_py()) == \
        ["NO", "SE", "US"]
    # ... and the moved one its new creator, which the roll-ups read.
    assert rows.filter(pc.equal(rows.column("item_id"), moved)).column("creator_id").to_pylist() == ["creator_moved"]
    removals = lake.read("removals", filter=pc.field("run_id") == "rescan-1")
    assert sorted(removals.column("item_id").to_pylist()) == sorted(deleted)
    assert set(removals.column("catalog_version").to_pylist()) == {DeltaTable(env["catalog"]).version()}
    # The re-scan is now the baseline: nothing is left to do.
    again = run_rescan(catalog_uri=env["catalog"], lake_root=lake.root, policy_path=POLICY_V1,
                       profile_path=env["profile"], progress=False)
    assert again.nothing_changed and again.baseline_run_id == "rescan-1"
    env["deleted"], env["violating"] = deleted, violating


def test_next_decide_retires_the_removed_items(env):
    lake = env["lake"]
    deleted = env["deleted"]
    before = lake.read("violations", filter=pc.field("item_id").isin(deleted))
    assert before.num_rows >= 1
    run_decide(lake_root=lake.root, policy_path=POLICY_V1, run_id="decide-after-rescan")
    after = lake.read("violations")
    assert not set(deleted) & set(after.column("item_id").to_pylist())
    assert read_run(lake, "decide-after-rescan").retired_rows == before.num_rows
    # Items still in the catalog keep their violations.
    kept = env["violating"] - set(deleted)
    flagged = set(after.filter(pc.equal(after.column("decision"), "violation")).column("item_id").to_pylist())
    assert kept <= flagged | set(lake.read("scores", filter=pc.field("run_id") == "rescan-1")
                                 .column("item_id").to_pylist())


def test_a_policy_that_adds_a_model_scores_only_that_models_pairs(env, tmp_path):
    """Policy-only change that adds a model: the text pairs are already scored; only the new
    image model's pairs are."""
    lake = env["lake"]
    policy = yaml.safe_load(POLICY_V1.read_text())
    policy.update(policy_id="rescan-test", version=1, status="draft",
                  models=["text-minilm-heads-v1", "image-open-nsfw-v1"])
    policy["categories"]["sexual"] = {"threshold": 0.85, "action": "age_restrict", "severity": "high",
                                      "modalities": ["image"]}
    path = tmp_path / "rescan-test-v1.yaml"
    path.write_text(yaml.safe_dump(policy))
    covers = DeltaTable(env["catalog"]).to_pyarrow_table(columns=["cover_image"]).column("cover_image")
    n_covers = len(covers) - covers.null_count
    assert n_covers >= 5
    result = run_rescan(catalog_uri=env["catalog"], lake_root=lake.root, policy_path=path, run_id="add-model",
                        profile_path=env["profile"], progress=False)
    assert result.status == "succeeded" and result.change_source == "anti_join"  # no full run with both models
    rows = lake.read("scores", filter=pc.field("run_id") == "add-model")
    q = lake.read("quarantine", filter=pc.field("run_id") == "add-model")
    assert set(rows.column("modality").to_pylist()) | set(q.column("modality").to_pylist()) == {"image"}
    assert rows.num_rows + q.num_rows == n_covers == result.selected_pairs


def test_a_changed_model_version_rescores_its_pairs(env, tmp_path):
    lake = env["lake"]
    models_dir = tmp_path / "models"
    shutil.copytree(default_conf_dir() / "models", models_dir)
    spec_file = models_dir / "text-minilm-heads-v1.yaml"
    spec = yaml.safe_load(spec_file.read_text())
    spec.setdefault("preprocessing", {})["window_overlap_tokens"] = 8  # a new model version: new digest
    spec_file.write_text(yaml.safe_dump(spec))
    new_digest = load_model_registry(models_dir)["text-minilm-heads-v1"].digest
    assert new_digest != load_model_registry()["text-minilm-heads-v1"].digest
    n_items = DeltaTable(env["catalog"]).to_pyarrow_table(columns=["item_id"]).num_rows
    plan = _plan(env, "auto", models_dir=models_dir)
    assert plan.change_source == "anti_join"  # no run scored with the new version yet
    assert plan.selections["text-minilm-heads-v1"].selected("text") == n_items and plan.removed_pairs == 0
    result = run_rescan(catalog_uri=env["catalog"], lake_root=lake.root, policy_path=POLICY_V1, run_id="new-model",
                        profile_path=env["profile"], models_dir=models_dir, progress=False)
    assert result.status == "succeeded" and result.selected_pairs == n_items
    digests = Counter(lake.read("scores", filter=pc.field("run_id") == "new-model").column("model_digest").to_pylist())
    assert set(digests) == {new_digest}


def test_killed_rescan_resumes_with_the_same_selection(env):
    """SIGKILL a re-scan after its first scores chunk landed; the same command resumes it: the
    same pairs (pinned baseline versions), nothing duplicated, removals recorded once."""
    import subprocess
    import sys

    lake = env["lake"]
    dt = DeltaTable(env["catalog"])
    ids = sorted(dt.to_pyarrow_table(columns=["item_id"]).column("item_id").to_pylist())
    edited, deleted = ids[:40], ids[-2:]
    dt.update(predicate="item_id IN (" + ", ".join(f"'{i}'" for i in edited) + ")",
              updates={"description": "concat(description, ' Now with bonus tracks.')"})
    DeltaTable(env["catalog"]).delete(predicate="item_id IN (" + ", ".join(f"'{i}'" for i in deleted) + ")")
    cmd = [sys.executable, "-m", "moderation.cli", "rescan", "--catalog", env["catalog"], "--lake", lake.root,
           "--policy", str(POLICY_V1), "--profile", str(env["profile"]), "--run-id", "killed"]
    # after_commit:1 is the removals commit, :2 the first scores chunk (16 pairs).
    killed = subprocess.run(cmd, env={**os.environ, "MODERATION_FAULTS": "after_commit:2"}, capture_output=True,
                            text=True, timeout=300)
    assert killed.returncode == -9, killed.stderr[-2000:]
    partial = lake.read("scores", filter=pc.field("run_id") == "killed").num_rows
    assert 0 < partial < len(edited)
    resumed = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    run = read_run(lake, "killed")
    assert run.status == "succeeded" and run.selected_pairs == len(edited)
    scored, quarantined, dupes = run_accounting(lake, "killed")
    assert scored + quarantined == len(edited) and dupes == 0
    removals = lake.read("removals", filter=pc.field("run_id") == "killed")
    assert sorted(removals.column("item_id").to_pylist()) == deleted


def test_a_past_run_is_reproduced_from_its_runs_row(env, tmp_path):
    """`runs show` gives the command that reproduces the first backfill after the catalog has
    changed many times since: Delta time travel reads version 0 again, and the scores match."""
    import shlex

    lake = env["lake"]
    shown = CliRunner().invoke(app, ["runs", "show", "base", "--lake", lake.root])
    assert shown.exit_code == 0, shown.output
    from moderation.runs import show_run

    report = show_run(lake, "base")
    assert report.reproducible and "--catalog-version 0" in report.command
    args = shlex.split(report.command)[1:]
    args[args.index("NEW_LAKE")] = str(tmp_path / "replay")
    if "--profile" not in args:
        args += ["--profile", str(env["profile"])]
    out = CliRunner().invoke(app, [*args, "--run-id", "replay"])
    assert out.exit_code == 0, out.output
    replay = Lake(str(tmp_path / "replay"))
    assert read_run(replay, "replay").catalog_version == 0
    cols = ["item_id", "content_hash", "category_scores"]
    old = {r["item_id"]: r for r in lake.read("scores", filter=pc.field("run_id") == "base", columns=cols).to_pylist()}
    new = {r["item_id"]: r for r in replay.read("scores", columns=cols).to_pylist()}
    assert set(old) == set(new) and len(old) >= ITEMS - 2
    for item, r in old.items():
        assert new[item]["content_hash"] == r["content_hash"]
        assert dict(new[item]["category_scores"]) == pytest.approx(dict(r["category_scores"]), abs=1e-4)


@pytest.mark.parametrize("ids, want", [
    (pa.array([b"a1", b"\xff\xfe", b"c3"], pa.binary()), ["a1", "c3"]),  # not UTF-8: never selected
    (pa.array([10**37, -5, 7], pa.decimal128(38, 0)), ["10000000000000000000000000000000000000", "-5", "7"]),
])
def test_change_feed_ids_read_like_the_catalog_reads_them(tmp_path, ids, want):
    """The change data feed's ids become the strings the catalog's rows carry (binary as UTF-8,
    decimal digits), and a binary id that is not UTF-8 does not fail the re-scan's planning."""
    from moderation.scoring.rescan import cdf_item_ids
    from moderation.storage.catalog import open_catalog

    uri = str(tmp_path / "catalog")
    write_deltalake(uri, pa.table({"item_id": ids.slice(0, 1), "title": ["x"]}),
                    configuration={"delta.enableChangeDataFeed": "true"})
    write_deltalake(uri, pa.table({"item_id": ids.slice(1), "title": ["y", "z"]}), mode="append")
    got, why = cdf_item_ids(open_catalog(uri), 0)
    assert why == "" and sorted(got.to_pylist()) == sorted(want[1:])
