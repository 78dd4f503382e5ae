"""The policy lifecycle as a user drives it from the command line, on stored scores (no model):
decide two versions, compare them, promote the candidate, export what the live version
enforces, list and show the runs."""

from __future__ import annotations

import datetime as dt

import pyarrow.compute as pc
import pytest
from deltalake import write_deltalake
from typer.testing import CliRunner

from moderation.cli import app
from moderation.runs import read_run
from moderation.storage.lake import Lake
from tests.conftest import POLICY_V1, POLICY_V2
from tests.policy.test_decide import scores

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)


@pytest.fixture
def lake(tmp_path) -> Lake:
    lake = Lake(str(tmp_path / "lake"))
    write_deltalake(lake.uri("scores"), scores([
        ("a", {"hate": 0.85, "harassment": 0.1, "spam": 0.1}, False, T0),  # v1 review, v2 violation
        ("b", {"hate": 0.95, "harassment": 0.1, "spam": 0.1}, False, T0),  # violation in both
        ("c", {"hate": 0.1, "harassment": 0.1, "spam": 0.96}, False, T0),  # v1 review, v2 violation
        ("d", {"hate": 0.1, "harassment": 0.1, "spam": 0.1}, False, T0),   # clean
    ]))
    return lake


def cli(*args: str, code: int = 0) -> str:
    out = CliRunner().invoke(app, [str(a) for a in args])
    assert out.exit_code == code, out.output
    return out.output


def test_decide_diff_promote_enforce(lake):
    root = lake.root
    cli("decide", "--lake", root, "--policy", POLICY_V1, "--run-id", "d1")
    cli("decide", "--lake", root, "--policy", POLICY_V2, "--run-id", "d2")
    status = cli("policy", "status", "--lake", root, "--policy", POLICY_V1)
    assert "catalog-safety v1: live" in status and "catalog-safety v2: shadow" in status

    # Shadow versions never reach the enforcement export.
    assert "shadow" in cli("enforce", "--lake", root, "--policy", POLICY_V2, code=2)
    cli("enforce", "--lake", root, "--policy", POLICY_V1)
    enforced = lake.read("enforcement").to_pylist()
    assert {(r["item_id"], r["category"], r["market"], r["action"]) for r in enforced} == {
        ("b", "hate", "US", "remove"), ("b", "hate", "DE", "remove")}

    # Going live needs a comparison with the live version first.
    refused = cli("policy", "promote", "--lake", root, "--policy", POLICY_V2, code=2)
    assert "moderation diff" in refused
    summary = cli("diff", "--lake", root, "--policy", "catalog-safety", "--from", "1", "--to", "2")
    assert "newly_violating" in summary
    diffs = lake.read("diffs").to_pylist()
    assert {(r["item_id"], r["category"], r["change"]) for r in diffs} == {
        ("a", "hate", "newly_violating"), ("c", "spam", "newly_violating")}
    samples = lake.read("diff_samples")
    assert set(samples.column("item_id").to_pylist()) == {"a", "c"}

    cli("policy", "promote", "--lake", root, "--policy", POLICY_V2, "--run-id", "p2")
    promote = read_run(lake, "p2")
    assert promote.kind == "promote" and promote.promoted_to == "live" and promote.from_version == 1
    assert not promote.forced
    status = cli("policy", "status", "--lake", root, "--policy", POLICY_V1)
    assert "catalog-safety v1: retired" in status and "catalog-safety v2: live" in status
    stamps = {(r["policy_version"], r["policy_status"]) for r in lake.read("violations").to_pylist()}
    assert stamps == {(1, "retired"), (2, "live")}

    # The export now holds v2's actions only; exporting the same decide again writes nothing.
    cli("enforce", "--lake", root, "--policy", POLICY_V2)
    enforced = lake.read("enforcement").to_pylist()
    assert {r["policy_version"] for r in enforced} == {2}
    assert {(r["item_id"], r["category"], r["market"]) for r in enforced} == {
        (i, c, m) for i, c in (("a", "hate"), ("b", "hate"), ("c", "spam")) for m in ("US", "DE")}
    version = lake.version("enforcement")
    assert "already exported" in cli("enforce", "--lake", root, "--policy", POLICY_V2)
    assert lake.version("enforcement") == version
    assert "retired" in cli("enforce", "--lake", root, "--policy", POLICY_V1, code=2)

    listing = cli("runs", "list", "--lake", root)
    for kind in ("decide", "diff", "promote", "enforce"):
        assert kind in listing
    assert cli("runs", "list", "--lake", root, "--kind", "promote").count("p2") == 1
    shown = cli("runs", "show", "d2", "--lake", root)
    assert read_run(lake, "d2").policy_hash[:12] in shown and "moderation decide" in shown


def test_an_edited_policy_version_is_refused_once_used(lake, tmp_path):
    policy = tmp_path / "v1.yaml"
    policy.write_text(POLICY_V1.read_text().replace("policy_id: catalog-safety", "policy_id: edited-test"))
    cli("decide", "--lake", lake.root, "--policy", policy)
    policy.write_text(policy.read_text().replace("threshold: 0.90", "threshold: 0.85", 1))
    refused = cli("decide", "--lake", lake.root, "--policy", policy, code=2)
    assert "immutable" in refused and "version: 2" in refused
    assert lake.read("runs", filter=pc.field("policy_id") == "edited-test").num_rows == 1
