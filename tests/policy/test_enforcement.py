"""Enforcement export: only the live version, one row per item x category x market, a MERGE
that is idempotent per policy version, and a change data feed downstream can follow."""

from __future__ import annotations

import datetime as dt
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from moderation.errors import ModerationError
from moderation.policy.decide import run_decide
from moderation.policy.enforcement import app_id, run_enforce
from moderation.policy.lifecycle import run_promote
from moderation.runs import read_run
from moderation.storage.lake import Lake
from tests.conftest import POLICY_V1
from tests.policy.test_markets import LOW, T0, score_row, scores_table

PID = "catalog-safety"


@pytest.fixture()
def policies(tmp_path) -> Path:
    folder = tmp_path / "policies"
    shutil.copytree(POLICY_V1.parent, folder)
    return folder


@pytest.fixture()
def lake(tmp_path) -> Lake:
    lake = Lake(str(tmp_path / "lake"))
    lake.append_chunk("scores", scores_table([
        score_row("a", {**LOW, "hate": 0.75}, markets=["US", "DE"]),  # v4: removed in DE only (0.70 there)
        score_row("b", {**LOW, "hate": 0.95, "spam": 0.99}, markets=["BR", "US"]),  # spam exempt in BR
        score_row("c", {**LOW, "spam": 0.99}, markets=["BR"]),  # exempt in its only market: nothing
        score_row("d", {**LOW, "hate": 0.85}, markets=[]),  # lists no market: "*"
        score_row("e", {**LOW, "hate": 0.85}, markets=["DE", "FR"]),  # DE by override, FR by the global rule
        score_row("f", {**LOW, "hate": 0.65}, markets=["US"]),  # review only: never exported
    ]), app_id="t", version=0)
    return lake


def exported(lake: Lake) -> dict[tuple[str, str, str], dict]:
    rows = lake.read("enforcement").to_pylist()
    return {(r["item_id"], r["category"], r["market"]): r for r in rows}


def changes(lake: Lake, since: int) -> pa.Table:
    # The change feed's strings come back as string_view (delta-rs 1.6): cast before comparing.
    feed = pa.table(lake.open("enforcement").load_cdf(starting_version=since).read_all())
    return feed.cast(pa.schema([f.with_type(pa.string()) if f.type == pa.string_view() else f for f in feed.schema]))


def go_live_v4(lake: Lake, policies: Path) -> None:
    run_decide(lake_root=lake.root, policy_path=policies / "v4.yaml")
    run_promote(lake_root=lake.root, policy_path=policies / "v4.yaml", force=True)


def test_only_the_live_version_is_exported(lake, policies):
    with pytest.raises(ModerationError, match="no succeeded decide of this file"):
        run_enforce(lake_root=lake.root, policy_path=policies / "v1.yaml")  # live by declaration, never decided
    run_decide(lake_root=lake.root, policy_path=policies / "v2.yaml")
    with pytest.raises(ModerationError, match="v2 is shadow, not live.*shadow versions never reach the enforcement"):
        run_enforce(lake_root=lake.root, policy_path=policies / "v2.yaml")
    with pytest.raises(ModerationError, match="v4 is draft, not live"):
        run_enforce(lake_root=lake.root, policy_path=policies / "v4.yaml")
    assert not lake.exists("enforcement")
    run_decide(lake_root=lake.root, policy_path=policies / "v1.yaml")
    assert run_enforce(lake_root=lake.root, policy_path=policies / "v1.yaml").rows == 5
    go_live_v4(lake, policies)
    with pytest.raises(ModerationError, match="v1 is retired, not live"):
        run_enforce(lake_root=lake.root, policy_path=policies / "v1.yaml")


def test_export_rows_per_market(lake, policies):
    go_live_v4(lake, policies)
    result = run_enforce(lake_root=lake.root, policy_path=policies / "v4.yaml")
    rows = exported(lake)
    assert set(rows) == {
        ("a", "hate", "DE"),
        ("b", "hate", "BR"), ("b", "hate", "US"), ("b", "spam", "US"),
        ("d", "hate", "*"),
        ("e", "hate", "DE"), ("e", "hate", "FR"),
    }
    assert rows["a", "hate", "DE"]["threshold"] == pytest.approx(0.70)
    assert rows["e", "hate", "FR"]["threshold"] == pytest.approx(0.80)
    assert {r["action"] for k, r in rows.items() if k[1] == "hate"} == {"remove"}
    assert rows["b", "spam", "US"]["action"] == "demote" and rows["b", "spam", "US"]["severity"] == "low"
    decide_run = lake.read("runs").to_pandas().query("kind == 'decide'")["run_id"].iloc[-1]
    assert {r["decide_run_id"] for r in rows.values()} == {decide_run}
    assert {(r["policy_id"], r["policy_version"], r["run_id"]) for r in rows.values()} == {(PID, 4, result.run_id)}
    assert (result.rows, result.inserted, result.updated, result.deleted) == (7, 7, 0, 0)
    run = read_run(lake, result.run_id)
    assert (run.kind, run.status, run.enforcement_rows) == ("enforce", "succeeded", 7)
    table = lake.open("enforcement")
    assert table.metadata().configuration.get("delta.enableChangeDataFeed") == "true"
    assert table.transaction_version(app_id(PID, 4)) == lake.version("violations") == result.violations_version


def test_rerun_writes_nothing(lake, policies):
    go_live_v4(lake, policies)
    first = run_enforce(lake_root=lake.root, policy_path=policies / "v4.yaml")
    before = (lake.version("enforcement"), lake.version("runs"))
    again = run_enforce(lake_root=lake.root, policy_path=policies / "v4.yaml")
    assert again.already_exported and again.run_id is None and again.rows == first.rows
    assert "already exported" in again.summary()
    assert (lake.version("enforcement"), lake.version("runs")) == before


def test_a_new_decide_that_clears_an_item_deletes_its_export_rows(lake, policies):
    go_live_v4(lake, policies)
    run_enforce(lake_root=lake.root, policy_path=policies / "v4.yaml")
    exported_at = lake.version("enforcement")
    # b is re-scored: its hate score drops (spam unchanged).
    lake.append_chunk("scores", scores_table([
        score_row("b", {**LOW, "hate": 0.05, "spam": 0.99}, markets=["BR", "US"], when=T0 + dt.timedelta(days=1),
                  run_id="r2"),
    ]), app_id="t", version=1)
    run_decide(lake_root=lake.root, policy_path=policies / "v4.yaml")
    result = run_enforce(lake_root=lake.root, policy_path=policies / "v4.yaml")
    assert ("b", "hate", "US") not in exported(lake) and ("b", "spam", "US") in exported(lake)
    assert result.deleted == 2 and result.rows == 5
    feed = changes(lake, exported_at + 1).to_pylist()
    deletes = {(r["item_id"], r["category"], r["market"]) for r in feed if r["_change_type"] == "delete"}
    assert deletes == {("b", "hate", "BR"), ("b", "hate", "US")}
    assert not [r for r in feed if r["_change_type"] == "insert"]
    # Rows still flagged were re-decided by a new decide run: updated (their decide_run_id changed).
    updated = {(r["item_id"], r["category"], r["market"]) for r in feed if r["_change_type"] == "update_postimage"}
    assert updated == set(exported(lake))


def test_promoting_a_new_version_replaces_the_policy_s_rows(lake, policies):
    run_decide(lake_root=lake.root, policy_path=policies / "v1.yaml")
    run_enforce(lake_root=lake.root, policy_path=policies / "v1.yaml")
    v1_rows = exported(lake)
    # v1 has no market overrides: its "*" rows go to every market the item lists.
    assert set(v1_rows) == {("b", "hate", "BR"), ("b", "hate", "US"), ("b", "spam", "BR"), ("b", "spam", "US"),
                            ("c", "spam", "BR")}
    # Another policy's rows in the same table are never touched by this one's export.
    other = dict(next(iter(v1_rows.values())), policy_id="other-policy", item_id="zz")
    from deltalake import write_deltalake

    from moderation.schemas import ENFORCEMENT_SCHEMA

    write_deltalake(lake.uri("enforcement"), pa.Table.from_pylist([other], schema=ENFORCEMENT_SCHEMA), mode="append")
    since = lake.version("enforcement")
    go_live_v4(lake, policies)
    result = run_enforce(lake_root=lake.root, policy_path=policies / "v4.yaml")
    rows = exported(lake)
    zz = ("zz", other["category"], other["market"])
    assert {r["policy_version"] for k, r in rows.items() if k != zz} == {4} and rows[zz]["policy_id"] == "other-policy"
    assert (result.rows, result.inserted, result.updated, result.deleted) == (7, 4, 3, 2)
    feed = changes(lake, since + 1).to_pylist()
    by_kind = {k: {(r["item_id"], r["category"], r["market"]) for r in feed if r["_change_type"] == k}
               for k in ("insert", "update_postimage", "delete")}
    assert by_kind == {
        "insert": {("a", "hate", "DE"), ("d", "hate", "*"), ("e", "hate", "DE"), ("e", "hate", "FR")},
        "update_postimage": {("b", "hate", "BR"), ("b", "hate", "US"), ("b", "spam", "US")},
        "delete": {("b", "spam", "BR"), ("c", "spam", "BR")},  # BR is exempt from spam in v4
    }
    # v1 again (promoted back): exported anew even though its app transaction is older.
    run_promote(lake_root=lake.root, policy_path=policies / "v1.yaml", force=True)
    back = run_enforce(lake_root=lake.root, policy_path=policies / "v1.yaml")
    assert not back.already_exported and set(exported(lake)) == set(v1_rows) | {zz}


def test_export_markets_come_from_scope_markets(lake, policies):
    from moderation.config import load_policy
    from moderation.policy.enforcement import enforcement_rows

    run_decide(lake_root=lake.root, policy_path=policies / "v4.yaml")
    flagged = lake.read("violations").filter(pc.field("decision") == "violation")
    policy = load_policy(policies / "v4.yaml").policy

    def markets(table: pa.Table) -> set[tuple[str, str, str]]:
        return {(r["item_id"], r["category"], r["market"]) for r in table.to_pylist()}

    current = markets(enforcement_rows(flagged, policy, run_id="x", now=T0))
    # Rows decided before scope_markets existed: the same markets, from the policy's overrides.
    legacy = flagged.set_column(flagged.schema.get_field_index("scope_markets"), "scope_markets",
                                pa.nulls(flagged.num_rows, pa.list_(pa.string())))
    assert markets(enforcement_rows(legacy, policy, run_id="x", now=T0)) == current
    assert markets(enforcement_rows(flagged.drop_columns(["scope_markets"]), policy, run_id="x", now=T0)) == current
    # The row's scope_markets decide, not the policy: e's "*" row narrowed to nothing but JP.
    e_star = [r["item_id"] == "e" and r["market_scope"] == "*" for r in flagged.to_pylist()]
    scopes = [["JP"] if star else s for star, s in zip(e_star, flagged.column("scope_markets").to_pylist())]
    narrowed = flagged.set_column(flagged.schema.get_field_index("scope_markets"), "scope_markets",
                                  pa.array(scopes, pa.list_(pa.string())))
    assert markets(enforcement_rows(narrowed, policy, run_id="x", now=T0)) == (
        current - {("e", "hate", "FR")}) | {("e", "hate", "JP")}


def test_export_of_a_version_decided_before_scope_markets(lake, policies):
    from deltalake import write_deltalake

    go_live_v4(lake, policies)
    rows = lake.read("violations").drop_columns(["scope_markets"])
    write_deltalake(lake.uri("violations"), rows, mode="overwrite", schema_mode="overwrite",
                    partition_by=["policy_id", "policy_version"])
    result = run_enforce(lake_root=lake.root, policy_path=policies / "v4.yaml")
    assert result.rows == 7 and set(exported(lake)) == {
        ("a", "hate", "DE"),
        ("b", "hate", "BR"), ("b", "hate", "US"), ("b", "spam", "US"),
        ("d", "hate", "*"),
        ("e", "hate", "DE"), ("e", "hate", "FR"),
    }
