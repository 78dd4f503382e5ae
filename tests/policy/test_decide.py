from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from moderation.config import load_model_registry, load_policy
from moderation.errors import LakeError
from moderation.policy.decide import apply_policy, latest_scores, run_decide
from moderation.runs import read_run
from moderation.schemas import SCORES_SCHEMA, VIOLATIONS_SCHEMA
from moderation.storage.lake import Lake
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
    assert row["markets"] == ["US", "DE"] and row["market_scope"] == "*" and row["scope_markets"] == ["US", "DE"]


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


def _old_violation_row() -> dict:
    """A violations row as an older decide wrote it (v2, shadow), for the schema-evolution tests."""
    return {"policy_id": "catalog-safety", "policy_version": 2, "policy_status": "shadow", "item_id": "old",
            "item_type": "track", "language": "en", "markets": ["US"], "market_scope": "*", "category": "hate",
            "score": 0.9, "threshold": 0.8, "decision": "violation", "action": "remove", "severity": "high",
            "evidence_modalities": ["text"], "model_refs": [SPEC.ref], "run_id": "decide-old", "decided_at": T0}


def test_decide_adds_scope_markets_to_a_violations_table_that_predates_it(tmp_path):
    from deltalake import write_deltalake

    from moderation.schemas import VIOLATIONS_PARTITIONS, VIOLATIONS_SCHEMA

    lake = Lake(str(tmp_path / "lake"))
    old_schema = VIOLATIONS_SCHEMA.remove(VIOLATIONS_SCHEMA.get_field_index("scope_markets"))
    old_row = _old_violation_row()
    write_deltalake(lake.uri("violations"), pa.Table.from_pylist([old_row], schema=old_schema), mode="append",
                    partition_by=VIOLATIONS_PARTITIONS)
    assert "scope_markets" not in lake.open("violations").schema().to_arrow().names
    lake.append_chunk("scores", scores([("a", {"hate": 0.95, "harassment": 0.1, "spam": 0.1}, False, T0)]),
                      app_id="t", version=0)
    result = run_decide(lake_root=lake.root, policy_path=POLICY_V1)
    assert result.violations == 1
    v = {(r["policy_version"], r["item_id"]): r for r in lake.read("violations").to_pylist()}
    assert set(v) == {(2, "old"), (1, "a")}
    assert v[2, "old"]["scope_markets"] is None and v[2, "old"]["run_id"] == "decide-old"  # untouched, reads null
    assert v[1, "a"]["scope_markets"] == ["US", "DE"]
    assert run_decide(lake_root=lake.root, policy_path=POLICY_V1).violations == 1  # and again, evolved already


def test_evidence_position_of_text_and_audio_windows():
    import pandas as pd

    from moderation.policy.decide import evidence_position

    got = evidence_position(pd.Series([
        "body_text[3]@1520-2310", "title[0]@0-312", "title", "window 360.0-387.5s: you people are vermin",
        "window 30.0-57.2s [lang de] chars 0-120: hallo", "window 2.0-3.0s: window 9.0-9.5s", "no_speech",
        "ocr:window 1.0-2.0s", "pdq:match:x:d=3", None,
    ])).to_dict("records")
    positions = [(r["evidence_start"], r["evidence_end"], r["evidence_unit"]) for r in got]
    assert positions[:6] == [(1520, 2310, "chars"), (0, 312, "chars"), positions[2], (360.0, 387.5, "seconds"),
                             (30.0, 57.2, "seconds"), (2.0, 3.0, "seconds")]
    for start, end, unit in [positions[2], *positions[6:]]:  # no position named
        assert np.isnan(start) and np.isnan(end) and unit is None


def test_violations_carry_the_winning_rows_evidence_position_and_coverage():
    """Per category, the row that gave the score (here the audio window for hate, the partly read
    transcript for spam) gives the evidence, its position and its coverage."""
    audio = REG["audio-speech-text-v1"]
    rows = scores([
        ("ep", {"hate": 0.62, "harassment": 0.1, "spam": 0.97}, False, T0),
        ("ep", {"hate": 0.91, "harassment": 0.1, "spam": 0.2}, False, T0),
        ("song", {"hate": 0.95, "harassment": 0.1, "spam": 0.1}, False, T0),
    ]).to_pylist()
    rows[0].update(evidence=[("hate", "body_text[7]@5012-5790"), ("spam", "body_text[41]@30100-30950")],
                   coverage=0.5, coverage_reason="limit_words", units_total=80_000, units_scored=40_000, unit="words")
    rows[1].update(modality="audio", model_id=audio.model_id, model_digest=audio.digest,
                   evidence=[("hate", "window 360.0-387.5s: you people are vermin")])
    loaded = load_policy(POLICY_V2.parent / "v3.yaml")  # hate 0.80 / review 0.60, spam 0.95; text + audio
    v = apply_policy(latest_scores(pa.Table.from_pylist(rows, schema=SCORES_SCHEMA)), loaded, REG,
                     run_id="d", now=T0)
    assert v.schema == VIOLATIONS_SCHEMA
    got = {(r["item_id"], r["category"]): r for r in v.to_pylist()}
    assert set(got) == {("ep", "hate"), ("ep", "spam"), ("song", "hate")}
    hate = got["ep", "hate"]
    assert hate["score"] == pytest.approx(0.91) and hate["evidence_modalities"] == ["audio", "text"]
    assert hate["evidence"].startswith("window 360.0-387.5s")
    assert (hate["evidence_start"], hate["evidence_end"], hate["evidence_unit"]) == (360.0, 387.5, "seconds")
    assert hate["coverage"] is None and hate["coverage_reason"] is None  # audio records none (yet)
    spam = got["ep", "spam"]
    assert (spam["evidence"], spam["evidence_start"], spam["evidence_end"], spam["evidence_unit"]) == (
        "body_text[41]@30100-30950", 30100.0, 30950.0, "chars")
    assert spam["coverage"] == pytest.approx(0.5) and spam["coverage_reason"] == "limit_words"
    song = got["song", "hate"]  # a title read whole: named, no position; coverage not recorded in the row
    assert song["evidence"] == "title" and song["evidence_start"] is None and song["evidence_unit"] is None


def test_decide_over_a_lake_from_before_coverage_and_evidence_positions(tmp_path):
    """scores without the coverage columns and violations without the evidence columns (as an
    older version wrote them): decide reads the one and evolves the other; older rows read null."""
    from deltalake import write_deltalake

    from moderation.schemas import VIOLATIONS_PARTITIONS

    lake = Lake(str(tmp_path / "lake"))
    new_scores = {"units_total", "units_scored", "unit", "coverage", "coverage_reason"}
    new_violations = {"evidence", "evidence_start", "evidence_end", "evidence_unit", "coverage", "coverage_reason"}
    old_scores = pa.schema([f for f in SCORES_SCHEMA if f.name not in new_scores])
    old_violations = pa.schema([f for f in VIOLATIONS_SCHEMA if f.name not in new_violations])
    rows = scores([("a", {"hate": 0.95, "harassment": 0.1, "spam": 0.1}, False, T0)]).to_pylist()
    rows[0]["evidence"] = [("hate", "body_text[2]@900-1650")]
    write_deltalake(lake.uri("scores"), pa.Table.from_pylist(rows, schema=old_scores), mode="append")
    old_row = _old_violation_row()
    write_deltalake(lake.uri("violations"), pa.Table.from_pylist([old_row], schema=old_violations), mode="append",
                    partition_by=VIOLATIONS_PARTITIONS)

    assert run_decide(lake_root=lake.root, policy_path=POLICY_V1).violations == 1
    assert new_violations <= set(lake.open("violations").schema().to_arrow().names)
    v = {r["item_id"]: r for r in lake.read("violations").to_pylist()}
    assert (v["a"]["evidence"], v["a"]["evidence_start"], v["a"]["evidence_end"], v["a"]["evidence_unit"]) == (
        "body_text[2]@900-1650", 900.0, 1650.0, "chars")
    assert v["a"]["coverage"] is None  # the scores row predates coverage
    assert all(v["old"][c] is None for c in new_violations)


def _decided_rows(lake: Lake, version: int) -> dict[tuple[str, str, str], str]:
    v = lake.read("violations", filter=pc.field("policy_version") == version)
    return {(r["item_id"], r["category"], r["market_scope"]): r["decision"] for r in v.to_pylist()}


def test_decide_never_loads_a_model(tmp_path, monkeypatch):
    """decide reads the registry's digests only: with every artifact URI pointing nowhere (and the
    artifact reader booby-trapped) it decides exactly as with the real registry."""
    import yaml

    import moderation.storage.artifacts as artifacts
    from moderation.config import default_conf_dir

    models = tmp_path / "models"
    models.mkdir()
    for path in (default_conf_dir() / "models").glob("*.yaml"):
        data = yaml.safe_load(path.read_text())
        for ref in data["artifacts"].values():
            ref["uri"] = str(tmp_path / "missing" / Path(ref["uri"]).name)
        (models / path.name).write_text(yaml.safe_dump(data))
    assert load_model_registry(models)[SPEC.model_id].digest == SPEC.digest  # digests pin content, not paths

    def refuse(*args, **kwargs):
        raise AssertionError("decide tried to read a model artifact")

    monkeypatch.setattr(artifacts, "read_verified", refuse)
    lake = Lake(str(tmp_path / "lake"))
    lake.append_chunk("scores", scores([
        ("a", {"hate": 0.95, "harassment": 0.1, "spam": 0.1}, False, T0),
        ("b", {"hate": 0.75, "harassment": 0.1, "spam": 0.1}, False, T0),
    ]), app_id="t", version=0)
    result = run_decide(lake_root=lake.root, policy_path=POLICY_V1, models_dir=models)
    assert (result.violations, result.reviews) == (1, 1) and not result.warnings
    assert _decided_rows(lake, 1) == {("a", "hate", "*"): "violation", ("b", "hate", "*"): "review"}


def test_removals_retire_violations_in_the_next_decide(tmp_path):
    from moderation.schemas import REMOVALS_SCHEMA

    lake = Lake(str(tmp_path / "lake"))
    lake.append_chunk("scores", scores([
        ("gone", {"hate": 0.95, "harassment": 0.95, "spam": 0.1}, False, T0),  # 2 rows, item deleted later
        ("back", {"hate": 0.95, "harassment": 0.1, "spam": 0.1}, False, T0 + dt.timedelta(days=3)),  # re-added
        ("kept", {"hate": 0.95, "harassment": 0.1, "spam": 0.1}, False, T0),
    ]), app_id="t", version=0)
    first = run_decide(lake_root=lake.root, policy_path=POLICY_V1)
    assert first.retired_rows == 0 and first.violations == 4
    lake.append_chunk("removals", pa.Table.from_pylist([
        {"run_id": "rescan-1", "item_id": item, "modality": "text", "reason": "item_deleted",
         "catalog_uri": "/c", "catalog_version": 2, "removed_at": T0 + dt.timedelta(days=1)}
        for item in ("gone", "back")
    ], schema=REMOVALS_SCHEMA), app_id="rm", version=0)
    second = run_decide(lake_root=lake.root, policy_path=POLICY_V1)
    assert _decided_rows(lake, 1) == {("back", "hate", "*"): "violation", ("kept", "hate", "*"): "violation"}
    assert second.retired_rows == 2 and second.items == 2
    assert "2 rows of the previous decide retired by removals" in second.summary()
    run = read_run(lake, second.run_id)
    assert run.retired_rows == 2 and run.violation_rows == 2
    assert run_decide(lake_root=lake.root, policy_path=POLICY_V1).retired_rows == 0  # already gone


def test_coverage_warnings_name_models_without_current_scores(tmp_path):
    from tests.conftest import POLICY_V2

    lake = Lake(str(tmp_path / "lake"))
    old = scores([("a", {"hate": 0.95, "harassment": 0.1, "spam": 0.1}, False, T0 + dt.timedelta(days=1))])
    old = old.set_column(old.schema.get_field_index("model_digest"), "model_digest", pa.array(["f" * 64], pa.string()))
    lake.append_chunk("scores", old, app_id="t", version=0)
    v3 = POLICY_V2.parent / "v3.yaml"  # text + four image/audio models
    result = run_decide(lake_root=lake.root, policy_path=v3)
    text = [w for w in result.warnings if w.startswith("model text-minilm-heads-v1:")]
    assert len(text) == 1 and f"no scores at its registry digest {SPEC.digest[:12]}" in text[0] and "ffffffffffff" in text[0]
    for model_id in ("image-open-nsfw-v1", "image-ocr-text-v1", "image-pdq-bank-v1", "audio-speech-text-v1"):
        assert any(w.startswith(f"model {model_id}: no scores in") for w in result.warnings), model_id
    assert all("moderation rescan" in w for w in result.warnings) and len(result.warnings) == 5
    assert "warning: model image-open-nsfw-v1" in result.summary()
    assert result.violations == 1  # decided from what is there
    lake.append_chunk("scores", scores([("a", {"hate": 0.1, "harassment": 0.1, "spam": 0.1}, False, T0)]),
                      app_id="t", version=1)
    # Both digests now, but the item's latest score is still the one from the older digest.
    stale = run_decide(lake_root=lake.root, policy_path=POLICY_V1)
    assert stale.warnings and "1 of 1 latest scores are from an older digest" in stale.warnings[0]


def test_decide_is_vectorized_100k_items(tmp_path):
    """100k items x 3 categories, 4 market variants: seconds, not minutes (no per-item Python)."""
    import time

    import numpy as np

    from tests.policy.test_markets import POLICY_V4

    n = 100_000
    rng = np.random.default_rng(0)
    categories = ["hate", "harassment", "spam"]
    maps = pa.MapArray.from_arrays(np.arange(0, 3 * n + 1, 3, dtype=np.int32), pa.array(categories * n),
                                   pa.array(rng.random(3 * n).astype("float32")))
    choices = [["US", "DE"], ["BR"], ["DE"], [], None, ["US", "BR", "DE"]]
    from moderation.storage.lake import conform

    table = conform(pa.table({
        "run_id": ["r1"] * n, "item_id": [f"i{i}" for i in range(n)], "item_type": ["track"] * n,
        "modality": ["text"] * n, "model_id": [SPEC.model_id] * n, "model_digest": [SPEC.digest] * n,
        "content_hash": ["h"] * n, "category_scores": maps,
        "evidence": pa.nulls(n, pa.map_(pa.string(), pa.string())), "language": ["en"] * n,
        "markets": pa.array([choices[i % 6] for i in range(n)], pa.list_(pa.string())),
        "explicit": np.arange(n) % 7 == 0, "scored_at": pa.array([T0] * n, pa.timestamp("us", tz="UTC")),
    }), SCORES_SCHEMA)  # columns the rows lack (coverage) are null
    loaded = load_policy(POLICY_V4)
    started = time.perf_counter()
    rows = apply_policy(latest_scores(table), loaded, REG, run_id="d", now=T0)
    elapsed = time.perf_counter() - started
    # 3 categories with review bands over uniform scores: ~0.4 + 0.25 + 0.15 flagged per item.
    assert rows.num_rows > 70_000
    assert elapsed < 30, f"decide of 100k items took {elapsed:.1f}s"


def _bucket_case(root) -> Lake:
    """300 items, each scored twice (the newer score wins), with removals, a stale digest and a
    previous decide to retire rows from."""
    import random

    from moderation.schemas import REMOVALS_SCHEMA

    rng = random.Random(7)
    lake = Lake(str(root))
    rows = [(f"i{i:03d}", {c: round(rng.random(), 3) for c in ("hate", "harassment", "spam")}, i % 5 == 0,
             T0 + dt.timedelta(days=day)) for day in (0, 2) for i in range(300)]
    lake.append_chunk("scores", scores(rows[:300]), app_id="t", version=0)
    old = scores(rows[300:])
    digests = pa.array(["f" * 64 if i % 11 == 0 else SPEC.digest for i in range(300)], pa.string())
    lake.append_chunk("scores", old.set_column(old.schema.get_field_index("model_digest"), "model_digest", digests),
                      app_id="t", version=1)
    run_decide(lake_root=lake.root, policy_path=POLICY_V1, run_id="first")
    lake.append_chunk("removals", pa.Table.from_pylist([
        {"run_id": "rescan-1", "item_id": f"i{i:03d}", "modality": "text", "reason": "item_deleted",
         "catalog_uri": "/c", "catalog_version": 2, "removed_at": T0 + dt.timedelta(days=3)}
        for i in range(0, 300, 13)
    ], schema=REMOVALS_SCHEMA), app_id="rm", version=0)
    return lake


def test_decide_in_buckets_equals_deciding_all_at_once(tmp_path, monkeypatch):
    import moderation.policy.decide as decide

    whole_lake, split_lake = _bucket_case(tmp_path / "whole"), _bucket_case(tmp_path / "split")
    reads = []
    monkeypatch.setattr(decide.BucketSpill, "read", lambda self, b, _read=decide.BucketSpill.read: (
        reads.append((self.paths[b].name, b)) or _read(self, b)))
    whole = run_decide(lake_root=whole_lake.root, policy_path=POLICY_V1, run_id="second")
    assert {b for _, b in reads} == {0}
    reads.clear()
    split = run_decide(lake_root=split_lake.root, policy_path=POLICY_V1, run_id="second", bucket_rows=40)
    assert {b for name, b in reads if name.startswith("scores")} == set(range(15))  # 600 rows / 40
    assert whole.retired_rows > 0 and whole.warnings and whole.violations > 0 and whole.reviews > 0
    for field in ("items", "violations", "reviews", "retired_rows", "warnings"):
        assert getattr(split, field) == getattr(whole, field), field

    def rows(lake: Lake) -> list[tuple]:
        table = lake.read("violations", filter=pc.field("run_id") == "second").drop_columns(["decided_at"])
        return sorted(tuple(map(str, r.values())) for r in table.to_pylist())

    assert rows(split_lake) == rows(whole_lake) and len(rows(whole_lake)) == whole.violations + whole.reviews
    assert read_run(split_lake, "second").violation_rows == whole.violations + whole.reviews
