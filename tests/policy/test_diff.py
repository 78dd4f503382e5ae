"""moderation diff on tiny real Delta lakes: change kinds, summaries, replace semantics, sample."""

from __future__ import annotations

import datetime as dt
import hashlib

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from moderation.errors import LakeError, ModerationError
from moderation.policy.decide import run_decide
from moderation.policy.diff import CHANGES, run_diff
from moderation.runs import RunRecord, read_run, write_run
from moderation.schemas import DIFF_SAMPLES_SCHEMA, DIFFS_SCHEMA, VIOLATIONS_SCHEMA
from moderation.storage.lake import Lake
from tests.conftest import POLICY_V1, POLICY_V2
from tests.policy.test_decide import scores

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)


def row(item_id: str, category: str, decision: str, *, action: str | None = None, scope: str = "*",
        score: float = 0.9, item_type: str = "track", language: str | None = "en",
        markets: list[str] | None = ("US",)) -> dict:
    return {
        "item_id": item_id, "category": category, "decision": decision, "market_scope": scope, "score": score,
        "action": action or ("remove" if decision == "violation" else "human_review"), "item_type": item_type,
        "language": language, "markets": None if markets is None else list(markets),
    }


def decided(lake: Lake, version: int, rows: list[dict], *, policy_id: str = "P", run_id: str | None = None,
            status: str = "succeeded") -> str:
    """Write one decide of ``version``: its violations rows and its runs row."""
    run_id = run_id or f"decide-v{version}"
    full = [{"policy_id": policy_id, "policy_version": version, "policy_status": "shadow", "threshold": 0.8,
             "severity": "high", "run_id": run_id, "decided_at": T0, **r} for r in rows]
    lake.replace_violations(pa.Table.from_pylist(full, schema=VIOLATIONS_SCHEMA), policy_id=policy_id,
                            policy_version=version, run_id=run_id)
    write_run(lake, RunRecord(run_id=run_id, kind="decide", status=status, policy_id=policy_id,
                              policy_version=version, started_at=T0, ended_at=T0))
    return run_id


def diff_rows(lake: Lake, policy_id: str = "P", from_version: int = 1, to_version: int = 2) -> list[dict]:
    table = lake.read("diffs", filter=(pc.field("policy_id") == policy_id) & (pc.field("from_version") == from_version)
                      & (pc.field("to_version") == to_version))
    return table.to_pylist()


def by_key(rows: list[dict]) -> dict[tuple, dict]:
    return {(r["item_id"], r["category"], r["market_scope"]): r for r in rows}


@pytest.fixture
def two_versions(tmp_path):
    """P v1 and v2 decided, with one key of every change kind and two unchanged keys."""
    lake = Lake(str(tmp_path / "lake"))
    decided(lake, 1, [
        row("cleared", "hate", "violation", language="de", markets=["DE", "AT"]),
        row("to_review", "hate", "violation", markets=None),  # a violation that became a review: cleared
        row("act", "hate", "violation", action="limit"),
        row("same", "hate", "violation"),
        row("still_review", "spam", "review"),
        row("rev_gone", "spam", "review", item_type="episode"),
        row("rev_up", "spam", "review"),  # a review that became a violation: newly_violating
    ])
    decided(lake, 2, [
        row("to_review", "hate", "review", markets=None, score=0.75),
        row("act", "hate", "violation", action="remove", language="fr"),  # item attributes: the to side's
        row("same", "hate", "violation"),
        row("still_review", "spam", "review"),
        row("rev_up", "spam", "violation", action="demote"),
        row("new", "hate", "violation", item_type="episode", language=None, markets=[]),
        row("new_rev", "spam", "review", markets=["US", "GB"]),
    ])
    return lake


def test_every_change_kind(two_versions):
    lake = two_versions
    result = run_diff(lake_root=lake.root, policy_id="P", from_version=1, to_version=2, run_id="diff-1")
    rows = by_key(diff_rows(lake))
    assert {k: r["change"] for k, r in rows.items()} == {
        ("cleared", "hate", "*"): "cleared",
        ("to_review", "hate", "*"): "cleared",
        ("act", "hate", "*"): "action_changed",
        ("rev_up", "spam", "*"): "newly_violating",
        ("new", "hate", "*"): "newly_violating",
        ("new_rev", "spam", "*"): "newly_review",
        ("rev_gone", "spam", "*"): "review_cleared",
    }
    act = rows[("act", "hate", "*")]
    assert (act["from_action"], act["to_action"], act["language"]) == ("limit", "remove", "fr")
    down = rows[("to_review", "hate", "*")]
    assert (down["from_decision"], down["to_decision"]) == ("violation", "review")
    assert down["to_score"] == pytest.approx(0.75) and down["from_score"] == pytest.approx(0.9)
    gone = rows[("cleared", "hate", "*")]
    assert gone["to_decision"] is None and gone["to_action"] is None and gone["to_score"] is None
    assert (gone["language"], gone["markets"]) == ("de", ["DE", "AT"])  # from the only side there is
    new = rows[("new", "hate", "*")]
    assert new["from_decision"] is None and (new["item_type"], new["markets"]) == ("episode", [])
    assert {(r["from_run_id"], r["to_run_id"], r["run_id"]) for r in rows.values()} == {
        ("decide-v1", "decide-v2", "diff-1")
    }
    assert lake.read("diffs").schema == DIFFS_SCHEMA

    assert result.counts == {"newly_violating": 2, "cleared": 2, "action_changed": 1, "newly_review": 1,
                             "review_cleared": 1}
    assert result.diff_rows == 7 and result.items == 7
    run = read_run(lake, "diff-1")
    assert (run.kind, run.status, run.policy_id, run.from_version, run.policy_version,
            run.diff_rows) == ("diff", "succeeded", "P", 1, 2, 7)
    assert run.code_version and run.started_at <= run.ended_at


def test_summary_breakdowns(two_versions):
    result = run_diff(lake_root=two_versions.root, policy_id="P", from_version=1, to_version=2)
    cat = result.by_category
    assert cat.loc["hate"].to_dict() == {"newly_violating": 1, "cleared": 2, "action_changed": 1,
                                         "newly_review": 0, "review_cleared": 0}
    assert cat.loc["spam"].to_dict() == {"newly_violating": 1, "cleared": 0, "action_changed": 0,
                                         "newly_review": 1, "review_cleared": 1}
    assert result.by_item_type.loc["episode"].to_dict() == {"newly_violating": 1, "cleared": 0, "action_changed": 0,
                                                            "newly_review": 0, "review_cleared": 1}
    market = result.by_market
    # "*" rows count in each of the item's markets; no market listed (null or empty): "none".
    assert market.loc["US", "newly_violating"] == 1 and market.loc["none", "newly_violating"] == 1
    assert market.loc["none", "cleared"] == 1 and market.loc["DE", "cleared"] == 1 and market.loc["AT", "cleared"] == 1
    assert market.loc["GB", "newly_review"] == 1 and market.loc["US", "newly_review"] == 1
    assert result.by_language.loc["unknown", "newly_violating"] == 1
    cells = {(r["category"], r["item_type"], r["market"], r["language"], r["change"]): r["items"]
             for r in result.cells.to_dict("records")}
    assert cells == {
        ("hate", "track", "DE", "de", "cleared"): 1,
        ("hate", "track", "AT", "de", "cleared"): 1,
        ("hate", "track", "none", "en", "cleared"): 1,
        ("hate", "track", "US", "fr", "action_changed"): 1,
        ("hate", "episode", "none", "unknown", "newly_violating"): 1,
        ("spam", "track", "US", "en", "newly_violating"): 1,
        ("spam", "track", "US", "en", "newly_review"): 1,
        ("spam", "track", "GB", "en", "newly_review"): 1,
        ("spam", "episode", "US", "en", "review_cleared"): 1,
    }
    assert set(result.cells["policy_id"]) == {"P"} and set(result.cells["to_version"]) == {2}

    text = result.summary()
    assert "P v1 -> v2" in text and "7 changed rows" in text
    lines = text.splitlines()
    hate = next(line for line in lines if line.split()[:1] == ["hate"])
    assert hate.split()[1:] == ["1", "2", "1", "0", "0"]
    for title in ("by category", "by item type", "by market", "by language"):
        assert any(line.strip().startswith(title) for line in lines)


def test_rerun_replaces_rows_of_the_same_diff_only(two_versions):
    lake = two_versions
    decided(lake, 3, [row("same", "hate", "violation", action="block")])
    run_diff(lake_root=lake.root, policy_id="P", from_version=2, to_version=3, run_id="other")
    first = run_diff(lake_root=lake.root, policy_id="P", from_version=1, to_version=2, run_id="first")
    again = run_diff(lake_root=lake.root, policy_id="P", from_version=1, to_version=2, run_id="again")
    rows = diff_rows(lake)
    assert len(rows) == first.diff_rows == again.diff_rows == 7
    assert {r["run_id"] for r in rows} == {"again"}
    samples = lake.read("diff_samples", filter=pc.field("to_version") == 2)
    assert samples.num_rows == 7 and set(samples.column("run_id").to_pylist()) == {"again"}
    assert {r["run_id"] for r in diff_rows(lake, from_version=2, to_version=3)} == {"other"}

    # v2 decided again, now identical to v1: the diff's old rows go, nothing else changes.
    decided(lake, 2, lake.read("violations", filter=pc.field("policy_version") == 1).select(
        ["item_id", "category", "decision", "market_scope", "score", "action", "item_type", "language", "markets"]
    ).to_pylist(), run_id="decide-v2-again")
    empty = run_diff(lake_root=lake.root, policy_id="P", from_version=1, to_version=2)
    assert empty.diff_rows == 0 and diff_rows(lake) == []
    assert lake.read("diff_samples", filter=pc.field("to_version") == 2).num_rows == 0
    assert len(diff_rows(lake, from_version=2, to_version=3)) > 0
    assert "no changes" in empty.summary()


def test_sample_is_deterministic_capped_per_stratum(tmp_path):
    lake = Lake(str(tmp_path / "lake"))
    decided(lake, 1, [row(f"c{i}", "spam", "violation") for i in range(3)])
    decided(lake, 2, [row(f"n{i:02d}", "hate", "violation") for i in range(30)])

    def sample(seed: int) -> pa.Table:
        run_diff(lake_root=lake.root, policy_id="P", from_version=1, to_version=2, sample_per_stratum=5, seed=seed)
        return lake.read("diff_samples").sort_by([("stratum", "ascending"), ("sample_rank", "ascending")])

    s0 = sample(0)
    assert s0.schema == DIFF_SAMPLES_SCHEMA
    strata = {}
    for r in s0.to_pylist():
        strata.setdefault(r["stratum"], []).append(r)
    assert sorted(strata) == ["hate/newly_violating", "spam/cleared"]
    hate, spam = strata["hate/newly_violating"], strata["spam/cleared"]
    assert [r["sample_rank"] for r in hate] == [0, 1, 2, 3, 4] and {r["stratum_size"] for r in hate} == {30}
    assert [r["sample_rank"] for r in spam] == [0, 1, 2] and {r["stratum_size"] for r in spam} == {3}
    # The documented rule: the lowest sha256("<seed>:<item>:<category>:<scope>") of the stratum.
    expected = sorted((f"n{i:02d}" for i in range(30)),
                      key=lambda item: hashlib.sha256(f"0:{item}:hate:*".encode()).hexdigest())[:5]
    assert [r["item_id"] for r in hate] == expected

    def picked(table: pa.Table) -> list[tuple]:
        return [(r["stratum"], r["sample_rank"], r["item_id"]) for r in table.to_pylist()]

    assert picked(sample(0)) == picked(s0)
    other = [r["item_id"] for r in sample(7).to_pylist() if r["stratum"] == "hate/newly_violating"]
    assert len(other) == 5 and other != [r["item_id"] for r in hate]


def test_market_scopes_are_keyed_separately(tmp_path):
    lake = Lake(str(tmp_path / "lake"))
    decided(lake, 1, [row("x", "hate", "violation", markets=["US", "DE"]),
                      row("y", "hate", "violation", scope="DE", markets=["DE"])])
    decided(lake, 2, [row("x", "hate", "violation", markets=["US", "DE"]),
                      row("x", "hate", "violation", scope="DE", action="block", markets=["US", "DE"]),
                      row("y", "hate", "violation", scope="DE", action="block", markets=["DE"])])
    result = run_diff(lake_root=lake.root, policy_id="P", from_version=1, to_version=2)
    rows = by_key(diff_rows(lake))
    assert {k: r["change"] for k, r in rows.items()} == {
        ("x", "hate", "DE"): "newly_violating",  # the "*" row of x is unchanged
        ("y", "hate", "DE"): "action_changed",
    }
    # A scoped row counts in its own market only, not in each of the item's markets.
    assert result.by_market.index.tolist() == ["DE"]
    assert result.by_market.loc["DE", "newly_violating"] == 1 and result.by_market.loc["DE", "action_changed"] == 1


def test_refuses_versions_never_decided(tmp_path):
    lake = Lake(str(tmp_path / "lake"))
    decided(lake, 1, [row("a", "hate", "violation")])
    with pytest.raises(LakeError, match=r"P v2 was never decided.*moderation decide --lake"):
        run_diff(lake_root=lake.root, policy_id="P", from_version=1, to_version=2)
    decided(lake, 2, [row("a", "hate", "review")], status="failed")  # a failed decide does not count
    with pytest.raises(LakeError, match="P v2 was never decided"):
        run_diff(lake_root=lake.root, policy_id="P", from_version=1, to_version=2)
    with pytest.raises(LakeError, match="Q v1 was never decided"):
        run_diff(lake_root=lake.root, policy_id="Q", from_version=1, to_version=2)
    with pytest.raises(ModerationError, match="both 1"):
        run_diff(lake_root=lake.root, policy_id="P", from_version=1, to_version=1)
    assert not lake.exists("diffs")
    assert lake.read("runs", filter=pc.field("kind") == "diff").num_rows == 0


def test_refuses_rows_of_a_decide_that_did_not_succeed(tmp_path):
    lake = Lake(str(tmp_path / "lake"))
    decided(lake, 1, [row("a", "hate", "violation")])
    decided(lake, 2, [row("a", "hate", "violation")])
    decided(lake, 2, [row("a", "hate", "review")], run_id="decide-v2-crashed", status="running")
    with pytest.raises(LakeError, match="decide-v2-crashed.*did not succeed"):
        run_diff(lake_root=lake.root, policy_id="P", from_version=1, to_version=2)


def test_diff_of_real_decides(tmp_path):
    lake = Lake(str(tmp_path / "lake"))
    lake.append_chunk("scores", scores([
        ("a", {"hate": 0.80, "harassment": 0.1, "spam": 0.1}, False, T0),  # v1 review, v2 violation
        ("b", {"hate": 0.95, "harassment": 0.1, "spam": 0.1}, False, T0),  # violation in both
        ("c", {"hate": 0.1, "harassment": 0.1, "spam": 0.96}, False, T0),  # spam: v1 review, v2 violation
    ]), app_id="t", version=0)
    d1 = run_decide(lake_root=lake.root, policy_path=POLICY_V1)
    d2 = run_decide(lake_root=lake.root, policy_path=POLICY_V2)
    result = run_diff(lake_root=lake.root, policy_id=d1.policy_id, from_version=1, to_version=2)
    rows = by_key(diff_rows(lake, policy_id=d1.policy_id))
    assert {k: r["change"] for k, r in rows.items()} == {
        ("a", "hate", "*"): "newly_violating",
        ("c", "spam", "*"): "newly_violating",
    }
    assert {(r["from_run_id"], r["to_run_id"]) for r in rows.values()} == {(d1.run_id, d2.run_id)}
    assert result.by_market.loc["US", "newly_violating"] == 2 and result.by_market.loc["DE", "newly_violating"] == 2
    assert set(CHANGES) == set(result.counts)


def test_a_star_change_counts_only_in_the_markets_it_applies_to(tmp_path):
    """v2 gives DE its own hate rule: x's "*" violation then stands for US and GB only, and the
    market breakdown counts the "*" change there, not in DE."""
    lake = Lake(str(tmp_path / "lake"))
    decided(lake, 1, [row("x", "hate", "review", markets=["US", "DE", "GB"])])
    decided(lake, 2, [{**row("x", "hate", "violation", markets=["US", "DE", "GB"]), "scope_markets": ["US", "GB"]}])
    result = run_diff(lake_root=lake.root, policy_id="P", from_version=1, to_version=2)
    (only,) = diff_rows(lake)
    assert only["change"] == "newly_violating" and only["scope_markets"] == ["US", "GB"]
    assert sorted(result.by_market.index.tolist()) == ["GB", "US"]
