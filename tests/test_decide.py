from __future__ import annotations

import datetime as dt

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from moderation.config import load_model_registry, load_policy
from moderation.decide import apply_policy, latest_scores, run_decide
from moderation.errors import LakeError
from moderation.lake import Lake
from moderation.schemas import SCORES_SCHEMA
from tests.conftest import POLICY_V1, POLICY_V2

REG = load_model_registry()
SPEC = REG["text-minilm-heads-v1"]
T0 = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)


def scores(rows: list[tuple[str, dict, bool, dt.datetime]]) -> pa.Table:
    return pa.Table.from_pylist([
        {"run_id": f"r{when.day}", "item_id": item, "item_type": "track", "modality": "text", "model_id": SPEC.model_id,
         "model_digest": SPEC.digest, "content_hash": "h", "category_scores": list(s.items()),
         "evidence": [(k, "title") for k in s], "language": "en", "markets": ["US", "DE"],
         "explicit": explicit, "scored_at": when}
        for item, s, explicit, when in rows
    ], schema=SCORES_SCHEMA)


def decided(table: pa.Table) -> dict[tuple[str, str], str]:
    return {(r["item_id"], r["category"]): r["decision"] for r in table.to_pylist()}


def test_thresholds_review_band_and_explicit_exemption():
    loaded = load_policy(POLICY_V1)  # hate 0.90 / review 0.70; harassment exempt when explicit
    latest = latest_scores(scores([
        ("clean", {"hate": 0.1, "harassment": 0.2, "spam": 0.1}, False, T0),
        ("hateful", {"hate": 0.95, "harassment": 0.95, "spam": 0.1}, False, T0),
        ("borderline", {"hate": 0.8, "harassment": 0.1, "spam": 0.1}, False, T0),
        ("explicit_song", {"hate": 0.1, "harassment": 0.99, "spam": 0.1}, True, T0),
    ]))
    v = apply_policy(latest, loaded, REG, run_id="d1", now=T0)
    assert decided(v) == {
        ("hateful", "hate"): "violation",
        ("hateful", "harassment"): "violation",
        ("borderline", "hate"): "review",
    }
    row = next(r for r in v.to_pylist() if r["item_id"] == "hateful" and r["category"] == "hate")
    assert row["action"] == "remove" and row["severity"] == "high" and row["threshold"] == pytest.approx(0.90)
    assert row["evidence_modalities"] == ["text"] and row["model_refs"] == [SPEC.ref]
    assert row["markets"] == ["US", "DE"] and row["market_scope"] == "*"


def test_latest_score_per_item_wins():
    latest = latest_scores(scores([
        ("a", {"hate": 0.99, "harassment": 0.1, "spam": 0.1}, False, T0),
        ("a", {"hate": 0.01, "harassment": 0.1, "spam": 0.1}, False, T0 + dt.timedelta(days=1)),
    ]))
    assert len(latest) == 1
    assert apply_policy(latest, load_policy(POLICY_V1), REG, run_id="d", now=T0).num_rows == 0


def test_decide_replaces_a_version_and_versions_differ(tmp_path):
    lake = Lake(str(tmp_path / "lake"))
    with pytest.raises(LakeError, match="no scores yet"):
        run_decide(lake_root=lake.root, policy_path=POLICY_V1)
    lake.append_chunk("scores", scores([
        ("a", {"hate": 0.80, "harassment": 0.1, "spam": 0.1}, False, T0),  # v2 violation, v1 review
        ("b", {"hate": 0.95, "harassment": 0.1, "spam": 0.1}, False, T0),
        ("c", {"hate": 0.1, "harassment": 0.1, "spam": 0.96}, False, T0),  # v2 spam violation, v1 review
    ]), app_id="t", version=0)
    r1 = run_decide(lake_root=lake.root, policy_path=POLICY_V1)
    r1b = run_decide(lake_root=lake.root, policy_path=POLICY_V1)
    run_decide(lake_root=lake.root, policy_path=POLICY_V2)
    v = lake.read("violations")
    v1 = v.filter(pc.field("policy_version") == 1)
    v2 = v.filter(pc.field("policy_version") == 2)
    assert v1.num_rows == r1.violations + r1.reviews == r1b.violations + r1b.reviews  # replaced, not appended
    assert set(v1.column("run_id").to_pylist()) == {r1b.run_id}
    assert decided(v1) == {("a", "hate"): "review", ("b", "hate"): "violation", ("c", "spam"): "review"}
    assert decided(v2) == {("a", "hate"): "violation", ("b", "hate"): "violation", ("c", "spam"): "violation"}
    runs = lake.read("runs", filter=pc.field("kind") == "decide")
    assert runs.num_rows == 3 and set(runs.column("status").to_pylist()) == {"succeeded"}
