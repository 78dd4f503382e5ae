"""Policy lifecycle: effective status from promote runs, promotion checks, restamped violations,
and immutability of used versions."""

from __future__ import annotations

import datetime as dt
import shutil
from pathlib import Path

import pyarrow.compute as pc
import pytest

from moderation.clock import utcnow
from moderation.errors import ModerationError
from moderation.policy.decide import run_decide
from moderation.policy.enforcement import run_enforce
from moderation.policy.lifecycle import effective_status, live_version, run_promote
from moderation.runs import RunRecord, read_run, write_run
from moderation.storage.lake import Lake
from tests.conftest import POLICY_V1
from tests.policy.test_markets import LOW, score_row, scores_table

PID = "catalog-safety"


@pytest.fixture()
def policies(tmp_path) -> Path:
    """A copy of the shipped catalog-safety versions (v1 live, v2 shadow, v3.. drafts)."""
    folder = tmp_path / "policies"
    shutil.copytree(POLICY_V1.parent, folder)
    return folder


@pytest.fixture()
def lake(tmp_path) -> Lake:
    lake = Lake(str(tmp_path / "lake"))
    lake.append_chunk("scores", scores_table([
        score_row("a", {**LOW, "hate": 0.85}, markets=["US", "DE"]),  # v1 review, v2/v4 violation
        score_row("b", {**LOW, "hate": 0.95}, markets=["US"]),  # violation everywhere
    ]), app_id="t", version=0)
    return lake


def promote_row(lake: Lake, version: int, to: str, n: int) -> None:
    when = dt.datetime(2026, 1, 1, tzinfo=dt.UTC) + dt.timedelta(hours=n)
    write_run(lake, RunRecord(run_id=f"promote-{n}", kind="promote", status="succeeded", policy_id=PID,
                              policy_version=version, started_at=when, ended_at=when, promoted_to=to))


def diff_row(lake: Lake, from_version: int, to_version: int, run_id: str = "diff-1") -> None:
    """What moderation/policy/diff.py records for a succeeded diff."""
    now = utcnow()
    write_run(lake, RunRecord(run_id=run_id, kind="diff", status="succeeded", policy_id=PID, policy_version=to_version,
                              from_version=from_version, diff_rows=1, started_at=now, ended_at=now))


def statuses(lake: Lake) -> dict[int, set[str]]:
    v = lake.read("violations")
    out: dict[int, set[str]] = {}
    for version, status in zip(v.column("policy_version").to_pylist(), v.column("policy_status").to_pylist()):
        out.setdefault(version, set()).add(status)
    return out


def test_effective_status_follows_promote_runs(lake):
    declared = {1: "live", 2: "shadow", 3: "draft", 4: "draft"}
    assert {v: effective_status(lake, PID, v, s) for v, s in declared.items()} == declared  # no promotions yet
    assert live_version(lake, PID, declared) == 1
    promote_row(lake, 2, "live", 1)
    promote_row(lake, 3, "shadow", 2)
    assert {v: effective_status(lake, PID, v, s) for v, s in declared.items()} == {
        1: "retired", 2: "live", 3: "shadow", 4: "draft"}
    promote_row(lake, 3, "live", 3)
    assert {v: effective_status(lake, PID, v, s) for v, s in declared.items()} == {
        1: "retired", 2: "retired", 3: "live", 4: "draft"}
    assert live_version(lake, PID, declared) == 3
    assert effective_status(lake, "other-policy", 1, "shadow") == "shadow"  # other policies untouched
    write_run(lake, RunRecord(run_id="promote-9", kind="promote", status="running", policy_id=PID, policy_version=4,
                              promoted_to="live"))
    assert effective_status(lake, PID, 4, "draft") == "draft"  # unfinished promotions do not count


def test_promote_runs_recorded_before_promoted_to_still_count(lake):
    """Promote runs written before runs had promoted_to kept their target in change_source."""
    when = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    write_run(lake, RunRecord(run_id="promote-old", kind="promote", status="succeeded", policy_id=PID, policy_version=2,
                              started_at=when, ended_at=when, change_source="live"))
    declared = {1: "live", 2: "shadow"}
    assert {v: effective_status(lake, PID, v, s) for v, s in declared.items()} == {1: "retired", 2: "live"}
    promote_row(lake, 1, "live", 1)  # a later promote, recorded in promoted_to
    assert {v: effective_status(lake, PID, v, s) for v, s in declared.items()} == {1: "live", 2: "retired"}


def test_promote_restamps_a_violations_table_that_predates_scope_markets(lake, policies):
    from deltalake import write_deltalake

    run_decide(lake_root=lake.root, policy_path=policies / "v2.yaml")
    rows = lake.read("violations").drop_columns(["scope_markets"])
    write_deltalake(lake.uri("violations"), rows, mode="overwrite", schema_mode="overwrite",
                    partition_by=["policy_id", "policy_version"])
    assert "scope_markets" not in lake.open("violations").schema().to_arrow().names
    result = run_promote(lake_root=lake.root, policy_path=policies / "v2.yaml", force=True)
    assert result.restamped_rows == 2 and statuses(lake) == {2: {"live"}}
    assert lake.read("violations").column("scope_markets").null_count == 2  # gained, null for the old rows


def test_promote_to_live_needs_a_decide_and_a_diff_with_the_live_version(lake, policies):
    v1, v2 = policies / "v1.yaml", policies / "v2.yaml"
    with pytest.raises(ModerationError, match=r"no succeeded decide of this file .* `moderation decide --lake"):
        run_promote(lake_root=lake.root, policy_path=v2)
    run_decide(lake_root=lake.root, policy_path=v2)
    with pytest.raises(ModerationError, match="v1 is live but was never decided"):
        run_promote(lake_root=lake.root, policy_path=v2)
    run_decide(lake_root=lake.root, policy_path=v1)
    with pytest.raises(ModerationError) as e:
        run_promote(lake_root=lake.root, policy_path=v2)
    assert f"`moderation diff --lake {lake.root} --policy {PID} --from 1 --to 2`" in str(e.value)
    diff_row(lake, 1, 2)
    run_decide(lake_root=lake.root, policy_path=v2)  # a decide after the diff makes it stale
    with pytest.raises(ModerationError, match="predates the latest decide"):
        run_promote(lake_root=lake.root, policy_path=v2)
    assert statuses(lake) == {1: {"live"}, 2: {"shadow"}}
    promotes = lambda: lake.read("runs").filter(pc.field("kind") == "promote").num_rows  # noqa: E731
    assert promotes() == 0  # refusals write nothing

    diff_row(lake, 1, 2, run_id="diff-2")
    result = run_promote(lake_root=lake.root, policy_path=v2)
    assert (result.to, result.from_version, result.forced, result.noop) == ("live", 1, False, False)
    assert "v2 is now live (replacing v1, now retired)" in result.summary()
    run = read_run(lake, result.run_id)
    assert (run.kind, run.status, run.policy_version, run.from_version, run.forced) == (
        "promote", "succeeded", 2, 1, False)
    assert run.promoted_to == "live" and run.change_source is None and run.policy_path == str(v2) and run.policy_hash
    assert statuses(lake) == {1: {"retired"}, 2: {"live"}}
    assert result.restamped_rows == lake.read("violations").num_rows
    # The next decides stamp the effective status too.
    assert run_decide(lake_root=lake.root, policy_path=v1).policy_status == "retired"
    assert statuses(lake) == {1: {"retired"}, 2: {"live"}}

    before = (lake.version("runs"), lake.version("violations"))
    again = run_promote(lake_root=lake.root, policy_path=v2)
    assert again.noop and "already live; nothing written" in again.summary()
    assert (lake.version("runs"), lake.version("violations")) == before and promotes() == 1


def test_force_skips_the_checks_and_is_recorded(lake, policies):
    run_decide(lake_root=lake.root, policy_path=policies / "v1.yaml")
    with pytest.raises(ModerationError):
        run_promote(lake_root=lake.root, policy_path=policies / "v4.yaml")
    result = run_promote(lake_root=lake.root, policy_path=policies / "v4.yaml", force=True)
    assert result.forced and "FORCED" in result.summary()
    run = read_run(lake, result.run_id)
    assert run.forced is True and run.from_version == 1
    assert statuses(lake) == {1: {"retired"}}  # v4 has no rows yet
    assert run_decide(lake_root=lake.root, policy_path=policies / "v4.yaml").policy_status == "live"
    assert statuses(lake) == {1: {"retired"}, 4: {"live"}}


def test_promote_to_shadow(lake, policies):
    v1, v4 = policies / "v1.yaml", policies / "v4.yaml"
    run_decide(lake_root=lake.root, policy_path=v4)
    assert statuses(lake) == {4: {"draft"}}
    result = run_promote(lake_root=lake.root, policy_path=v4, to="shadow")
    assert result.to == "shadow" and result.from_version is None and not result.forced
    assert statuses(lake) == {4: {"shadow"}}
    assert run_promote(lake_root=lake.root, policy_path=v4, to="shadow").noop
    with pytest.raises(ModerationError, match="is live: promote another version to live"):
        run_promote(lake_root=lake.root, policy_path=v1, to="shadow")
    with pytest.raises(ModerationError, match="--to 'retired'"):
        run_promote(lake_root=lake.root, policy_path=v4, to="retired")  # type: ignore[arg-type]


def test_a_used_version_is_immutable(lake, policies):
    path = policies / "v2.yaml"
    first = run_decide(lake_root=lake.root, policy_path=path)
    original = path.read_text()
    path.write_text(original.replace("threshold: 0.80", "threshold: 0.85", 1))
    with pytest.raises(ModerationError) as e:
        run_decide(lake_root=lake.root, policy_path=path)
    msg = str(e.value)
    following = max(int(p.stem[1:]) for p in policies.glob("v*.yaml")) + 1  # the next free version number
    assert str(path) in msg and first.run_id in msg and "immutable once used" in msg and f"version: {following}" in msg
    run = read_run(lake, first.run_id)
    assert run.policy_hash[:12] in msg
    for call in (run_promote, run_enforce):
        with pytest.raises(ModerationError, match="immutable once used"):
            call(lake_root=lake.root, policy_path=path, **({"force": True} if call is run_promote else {}))
    assert lake.read("runs").num_rows == 1  # nothing recorded by the refusals
    path.write_text(original)  # restored: the same content is the same version again
    assert run_decide(lake_root=lake.root, policy_path=path).policy_version == 2
    # Another lake never used it: the edited file is fine there (immutability is per lake's runs).
    path.write_text(original.replace("threshold: 0.80", "threshold: 0.85", 1))
    other = Lake(str(Path(lake.root).parent / "other"))
    other.append_chunk("scores", scores_table([score_row("x", LOW)]), app_id="t", version=0)
    assert run_decide(lake_root=other.root, policy_path=path).items == 1


def test_stamps_stay_right_when_a_promote_dies_or_races_a_decide(lake, policies, monkeypatch):
    import moderation.policy.decide as decide_module
    from moderation.policy.lifecycle import restamp_status

    v2 = policies / "v2.yaml"
    run_decide(lake_root=lake.root, policy_path=v2)
    run_promote(lake_root=lake.root, policy_path=v2, force=True)
    # A promote that died after recording its run, before restamping: running it again repairs.
    restamp_status(lake, PID, {2: "shadow"}, run_id="test")
    repaired = run_promote(lake_root=lake.root, policy_path=v2, force=True)
    assert repaired.noop and repaired.restamped_rows == 2 and "2 stale violations rows restamped" in repaired.summary()
    assert statuses(lake) == {2: {"live"}}
    # A decide that read the status before a promotion was recorded stamps the new one after its commit.
    real = decide_module.effective_status
    calls = []

    def stale_first(*args):
        calls.append(args)
        return "shadow" if len(calls) == 1 else real(*args)

    monkeypatch.setattr(decide_module, "effective_status", stale_first)
    result = run_decide(lake_root=lake.root, policy_path=v2)
    assert len(calls) == 2 and result.policy_status == "live" and statuses(lake) == {2: {"live"}}
