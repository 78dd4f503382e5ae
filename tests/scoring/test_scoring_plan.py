"""The plan types and the one scoring run, without Ray: plans built from tiny real Delta
catalogs, ``run_scoring`` over plans that stream nothing (the driver's quarantine only)."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys

import pyarrow as pa
import pytest
import yaml
from deltalake import write_deltalake

from moderation.runs import read_run
from moderation.schemas import CATALOG_SCHEMA
from moderation.scoring.backfill import plan_backfill
from moderation.scoring.plan import ScoringPlan, ScoringRequest, ScoringResult
from moderation.scoring.rescan import plan_rescan_run
from moderation.scoring.run import PreparedRun, execute, prepare_run, run_scoring
from moderation.scoring.selection import PreludeRow, Selection
from moderation.storage.lake import Lake
from tests.conftest import POLICY_V1

NOW = dt.datetime(2024, 5, 1, tzinfo=dt.timezone.utc)


def _catalog(path, ids) -> str:
    rows = [{"item_id": i, "item_type": "track", "title": f"song {i}", "language": "en", "markets": ["US"],
             "explicit": False, "updated_at": NOW} for i in ids]
    write_deltalake(str(path), pa.Table.from_pylist(rows, schema=CATALOG_SCHEMA))
    return str(path)


def _request(tmp_path, catalog, **kw) -> ScoringRequest:
    profile = tmp_path / "profile.yaml"
    profile.write_text(yaml.safe_dump({"batch_size": 8, "chunk_pairs": 8}))
    return ScoringRequest(catalog_uri=catalog, lake_root=str(tmp_path / "lake"), policy_path=POLICY_V1,
                          profile_path=profile, progress=False, **kw)


def _prepared(tmp_path, ids, *, kind="backfill", **kw) -> PreparedRun:
    prepared = prepare_run(_request(tmp_path, _catalog(tmp_path / "catalog", ids), **kw), kind=kind)
    assert isinstance(prepared, PreparedRun)
    return prepared


@pytest.mark.parametrize("module, never", [("moderation.scoring.backfill", "moderation.scoring.rescan"),
                                           ("moderation.scoring.rescan", "moderation.scoring.backfill"),
                                           ("moderation.scoring.run", "moderation.scoring.backfill"),
                                           ("moderation.scoring.run", "moderation.scoring.rescan")])
def test_planners_and_the_run_do_not_import_each_other(module, never):
    code = f"import sys, {module}; assert {never!r} not in sys.modules, sorted(sys.modules)"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_backfill_plan_selects_the_slice_for_every_model(tmp_path):
    prepared = _prepared(tmp_path, ["a", "b", "c", "d"], where="item_id <> 'a'", limit=2)
    plan = plan_backfill(prepared)
    assert plan.kind == "backfill" and plan.modalities == ("text",) and plan.snapshot is prepared.snapshot
    assert plan.selected_pairs == 2 and plan.streams and plan.removed_pairs is None
    assert plan.catalog_version == prepared.snapshot.version == 0
    assert len({id(s) for s in plan.selections.values()}) == 1  # one selection shared by the models
    assert sorted(plan.selections[prepared.models[0].model_id].keep_ids.to_pylist()) == ["b", "c"]
    # A backfill's runs row carries its slice and none of a re-scan's provenance columns.
    assert plan.runs_fields() == {"where_expr": "item_id <> 'a'", "item_limit": 2}


def test_rescan_plan_of_a_new_lake_selects_everything_and_records_its_pins(tmp_path):
    prepared = _prepared(tmp_path, ["a", "b"], kind="rescan", change_source="anti_join")
    plan = plan_rescan_run(prepared)
    assert plan.kind == "rescan" and plan.selected_pairs == 2 and not plan.write_nothing
    fields = plan.runs_fields()
    assert fields == {"where_expr": None, "item_limit": None, "change_source": "anti_join", "baseline_run_id": None,
                      "baseline_versions": ["quarantine=", "removals=", "scores="], "unchanged_pairs": 0,
                      "removed_pairs": 0}


def test_a_plan_needs_a_selection_per_model(tmp_path):
    prepared = _prepared(tmp_path, ["a"])
    with pytest.raises(ValueError, match="no selection for model"):
        ScoringPlan(kind="backfill", models=prepared.models, selections={}, snapshot=prepared.snapshot)


def _driver_only_plan(prepared: PreparedRun, **kw) -> ScoringPlan:
    """Every model's pairs quarantined by the driver: runs without Ray."""
    rows = [PreludeRow("a", "duplicate_item_id", "twice"), PreludeRow(None, "missing_item_id", "no id")]
    sel = Selection(keep_ids=pa.array([], pa.string()), excluded=pa.array([], pa.binary()), prelude={"text": rows})
    return ScoringPlan(kind=kw.pop("kind", prepared.kind), models=prepared.models,
                       selections={m.model_id: sel for m in prepared.models}, snapshot=prepared.snapshot, **kw)


def test_run_scoring_commits_any_plan_once_and_accounts_for_it(tmp_path):
    prepared = _prepared(tmp_path, ["a", "b"], run_id="r1")
    plan = _driver_only_plan(prepared)
    assert not plan.streams and plan.selected_pairs == 2 * len(prepared.models)
    result = run_scoring(prepared, plan)
    assert (result.status, result.selected_pairs, result.quarantined_pairs, result.scored_pairs) == \
        ("succeeded", plan.selected_pairs, plan.selected_pairs, 0)
    lake = Lake(prepared.lake.root)
    run = read_run(lake, "r1")
    assert run.kind == "backfill" and run.status == "succeeded" and run.change_source is None
    version = lake.version("quarantine")
    # The same run id again: finished, nothing written (the plan is not even built).
    again = execute(prepared.request, kind="backfill", planner=lambda p: pytest.fail("planned a finished run"))
    assert isinstance(again, ScoringResult) and again.already_done and lake.version("quarantine") == version


def test_a_plan_that_writes_nothing_writes_no_runs_row(tmp_path):
    prepared = _prepared(tmp_path, ["a"], kind="rescan", run_id="r2")
    empty = Selection(keep_ids=pa.array([], pa.string()), excluded=pa.array([], pa.binary()))
    plan = ScoringPlan(kind="rescan", models=prepared.models, selections={m.model_id: empty for m in prepared.models},
                       snapshot=prepared.snapshot, removals=pa.table({"x": pa.array([], pa.int64())}),
                       change_source="anti_join", unchanged_pairs=1, write_nothing=True)
    result = run_scoring(prepared, plan)
    assert result.nothing_changed and result.status == "nothing_changed" and result.unchanged_pairs == 1
    assert read_run(Lake(prepared.lake.root), "r2") is None
