"""Per-market policy variants: config validation, decide's market scopes, and the vectorized
decide checked against a plain per-item implementation of the same rules."""

from __future__ import annotations

import datetime as dt
import random
from pathlib import Path

import pyarrow as pa
import pytest
import yaml

from moderation.config import MarketOverride, Policy, load_model_registry, load_policy
from moderation.errors import ConfigError
from moderation.policy.decide import apply_policy, latest_scores
from moderation.schemas import REMOVALS_SCHEMA, SCORES_SCHEMA
from tests.conftest import POLICY_V2

REG = load_model_registry()
TEXT = REG["text-minilm-heads-v1"]
OCR = REG["image-ocr-text-v1"]
T0 = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
POLICY_V4 = POLICY_V2.parent / "v4.yaml"
LOW = {"hate": 0.01, "harassment": 0.01, "spam": 0.01}


def score_row(item: str, scores: dict | None, *, markets: list[str] | None = None, explicit: bool = False,
              when: dt.datetime = T0, model=TEXT, digest: str | None = None, run_id: str = "r1") -> dict:
    return {"run_id": run_id, "item_id": item, "item_type": "track", "modality": model.modality,
            "model_id": model.model_id, "model_digest": digest or model.digest, "content_hash": f"h-{item}",
            "category_scores": None if scores is None else list(scores.items()), "evidence": [],
            "language": "en", "markets": markets, "explicit": explicit, "scored_at": when}


def scores_table(rows: list[dict]) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=SCORES_SCHEMA)


def removal(item: str, modality: str, when: dt.datetime) -> dict:
    return {"run_id": "rescan-1", "item_id": item, "modality": modality, "reason": "item_deleted",
            "catalog_uri": "/catalog", "catalog_version": 3, "removed_at": when}


def by_scope(table: pa.Table) -> dict[tuple[str, str, str], dict]:
    return {(r["item_id"], r["category"], r["market_scope"]): r for r in table.to_pylist()}


def decide(rows: list[dict], policy=POLICY_V4, removals: list[dict] | None = None) -> dict:
    latest = latest_scores(scores_table(rows), pa.Table.from_pylist(removals or [], schema=REMOVALS_SCHEMA))
    return by_scope(apply_policy(latest, load_policy(policy, REG), REG, run_id="d1", now=T0))


# ------------------------------------------------------------------------------------------
# Config
# ------------------------------------------------------------------------------------------


def test_v4_market_rules_inherit_the_global_rule():
    policy = load_policy(POLICY_V4).policy
    de = policy.rule_for("hate", "DE")
    assert (de.threshold, de.review_threshold, de.action, de.severity) == (0.70, 0.60, "remove", "high")
    assert policy.rule_for("hate", "US") == policy.categories["hate"] == policy.rule_for("hate")
    assert policy.rule_for("spam", "BR") is None  # exempt
    assert policy.rule_for("spam", "DE") == policy.categories["spam"]
    assert set(policy.market_overrides("hate")) == {"DE"} and set(policy.market_overrides("spam")) == {"BR"}
    assert policy.market_overrides("harassment") == {}
    with pytest.raises(KeyError):
        policy.rule_for("violence", "DE")


def test_explicit_null_review_threshold_removes_the_band():
    policy = Policy.model_validate({
        **yaml.safe_load(POLICY_V4.read_text()),
        "markets": {"FR": {"hate": {"review_threshold": None, "severity": "critical"}}},
    })
    fr = policy.rule_for("hate", "FR")
    assert fr.review_threshold is None and fr.severity == "critical" and fr.threshold == 0.80
    assert MarketOverride(action="label").model_fields_set == {"action"}


def _v4() -> dict:
    return yaml.safe_load(POLICY_V4.read_text())


@pytest.mark.parametrize(
    ("markets", "field", "message"),
    [
        ({"de": {"hate": {"threshold": 0.7}}}, "markets.de", "two upper-case letters"),
        ({"DEU": {"hate": {"threshold": 0.7}}}, "markets.DEU", "two upper-case letters"),
        ({"DE": {"violence": {"threshold": 0.7}}}, "markets.DE.violence", "unknown category 'violence'"),
        ({"DE": {"hate": {"threshold": 0.5}}}, "markets.DE.hate.threshold", "must be below threshold"),
        ({"DE": {"hate": {"review_threshold": 0.85}}}, "markets.DE.hate.review_threshold", "must be below"),
        ({"DE": {"hate": {"threshold": 1.5}}}, "markets.DE.hate.threshold", "less than or equal to 1"),
        ({"DE": {"hate": {"action": "ban"}}}, "markets.DE.hate.action", "'remove'"),
        ({"DE": {"hate": {"colour": "red"}}}, "markets.DE.hate.colour", "Extra inputs"),
        ({"BR": {"spam": {"exempt": True, "threshold": 0.5}}}, "markets.BR.spam", "exempt market takes no other"),
        ({False: {"spam": {"exempt": True}}}, "markets.False", "quote it"),  # YAML's unquoted NO
    ],
)
def test_bad_market_override_names_file_and_field(tmp_path, markets, field, message):
    data = {**_v4(), "markets": markets}
    path = tmp_path / "v4.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError) as e:
        load_policy(path)
    msg = str(e.value)
    assert str(path) in msg and f"field '{field}'" in msg and message in msg, msg


def test_unquoted_norway_in_yaml_is_a_clear_error(tmp_path):
    path = tmp_path / "v4.yaml"
    path.write_text(POLICY_V4.read_text() + "  NO:\n    spam:\n      exempt: true\n")
    with pytest.raises(ConfigError, match="quote it"):
        load_policy(path)
    path.write_text(POLICY_V4.read_text() + "  'NO':\n    spam:\n      exempt: true\n")
    assert load_policy(path).policy.rule_for("spam", "NO") is None


# ------------------------------------------------------------------------------------------
# Decide per market
# ------------------------------------------------------------------------------------------


def test_item_allowed_in_one_market_and_restricted_in_another():
    # v4: hate 0.80 / review 0.60 globally, 0.70 in DE. An item scoring 0.75 is removed in DE and
    # only goes to review in its other market (US).
    v = decide([score_row("a", {**LOW, "hate": 0.75}, markets=["US", "DE"])])
    assert set(v) == {("a", "hate", "*"), ("a", "hate", "DE")}
    de, rest = v["a", "hate", "DE"], v["a", "hate", "*"]
    assert (de["decision"], de["action"], de["threshold"]) == ("violation", "remove", pytest.approx(0.70))
    assert (rest["decision"], rest["action"], rest["threshold"]) == ("review", "human_review", pytest.approx(0.60))
    assert de["markets"] == rest["markets"] == ["US", "DE"]
    assert de["scope_markets"] == ["DE"] and rest["scope_markets"] == ["US"]  # each counts where it applies
    assert de["evidence_modalities"] == ["text"] and de["model_refs"] == [TEXT.ref]


def test_market_scopes_follow_the_markets_the_item_lists():
    v = decide([
        score_row("de_only", {**LOW, "hate": 0.75}, markets=["DE"]),  # no market without an override: no "*"
        score_row("nowhere", {**LOW, "hate": 0.85}, markets=[]),  # lists no market: "*" only
        score_row("null_markets", {**LOW, "hate": 0.85}, markets=None),
        score_row("us_only", {**LOW, "hate": 0.75}, markets=["US"]),  # no override market listed
        score_row("low", {**LOW, "hate": 0.65}, markets=["DE", "US"]),  # review in both
    ])
    assert set(v) == {
        ("de_only", "hate", "DE"), ("nowhere", "hate", "*"), ("null_markets", "hate", "*"), ("us_only", "hate", "*"),
        ("low", "hate", "*"), ("low", "hate", "DE"),
    }
    assert v["de_only", "hate", "DE"]["decision"] == "violation"
    assert v["us_only", "hate", "*"]["decision"] == "review"
    assert v["low", "hate", "DE"]["decision"] == v["low", "hate", "*"]["decision"] == "review"
    assert {k: r["scope_markets"] for k, r in v.items()} == {
        ("de_only", "hate", "DE"): ["DE"], ("nowhere", "hate", "*"): None, ("null_markets", "hate", "*"): None,
        ("us_only", "hate", "*"): ["US"], ("low", "hate", "*"): ["US"], ("low", "hate", "DE"): ["DE"],
    }


def test_scope_markets_of_a_category_without_overrides_are_the_item_s_markets():
    # v4 overrides hate (DE) and spam (BR), not harassment; duplicates in markets count once.
    v = decide([score_row("a", {**LOW, "harassment": 0.95, "spam": 0.99}, markets=["DE", "BR", "JP", "DE"])])
    assert set(v) == {("a", "harassment", "*"), ("a", "spam", "*")}  # spam exempt in BR: no BR row
    assert v["a", "harassment", "*"]["scope_markets"] == ["DE", "BR", "JP"]
    assert v["a", "spam", "*"]["scope_markets"] == ["DE", "JP"]


def test_exempt_market_gets_no_row_but_the_item_s_other_markets_do():
    v = decide([
        score_row("br", {**LOW, "spam": 0.99}, markets=["BR"]),
        score_row("br_us", {**LOW, "spam": 0.99}, markets=["BR", "US"]),
        score_row("none", {**LOW, "spam": 0.99}, markets=[]),
    ])
    assert set(v) == {("br_us", "spam", "*"), ("none", "spam", "*")}
    assert v["br_us", "spam", "*"]["action"] == "demote"
    assert v["br_us", "spam", "*"]["scope_markets"] == ["US"] and v["none", "spam", "*"]["scope_markets"] is None


def test_explicit_exemption_applies_in_every_market(tmp_path):
    data = {**_v4(), "markets": {"DE": {"harassment": {"threshold": 0.5, "review_threshold": 0.4}}}}
    path = tmp_path / "v4.yaml"
    path.write_text(yaml.safe_dump(data))
    v = decide([
        score_row("song", {**LOW, "harassment": 0.95}, markets=["DE", "US"], explicit=True),
        score_row("post", {**LOW, "harassment": 0.6}, markets=["DE", "US"]),
    ], policy=path)
    assert set(v) == {("post", "harassment", "DE")}
    assert v["post", "harassment", "DE"]["threshold"] == pytest.approx(0.5)


# ------------------------------------------------------------------------------------------
# The vectorized decide equals a plain per-item implementation
# ------------------------------------------------------------------------------------------


def reference_decide(rows: list[dict], removals: list[dict], policy: Policy) -> dict:
    """The decide rules written as the obvious loop (old semantics + markets + removals)."""
    latest: dict[tuple, dict] = {}
    for r in sorted(rows, key=lambda r: (r["scored_at"], r["run_id"]), reverse=True):
        latest.setdefault((r["item_id"], r["modality"], r["model_id"]), r)
    removed: dict[tuple, dt.datetime] = {}
    for x in removals:
        key = (x["item_id"], x["modality"])
        removed[key] = max(removed.get(key, x["removed_at"]), x["removed_at"])
    by_item: dict[str, list[dict]] = {}
    for (item, modality, _), r in latest.items():
        if (item, modality) in removed and removed[item, modality] >= r["scored_at"]:
            continue
        by_item.setdefault(item, []).append(r)
    out = {}
    for item, rs in by_item.items():
        newest = max(rs, key=lambda r: (r["scored_at"], r["run_id"]))
        markets = set(newest["markets"] or [])
        for category, rule in policy.categories.items():
            if category in policy.exemptions.explicit and newest["explicit"]:
                continue
            usable = {m for m in policy.models if category in REG[m].categories and REG[m].modality in rule.modalities}
            evidence = [(float(pa.scalar(dict(r["category_scores"])[category], pa.float32()).as_py()), r) for r in rs
                        if r["model_id"] in usable and r["category_scores"] and category in dict(r["category_scores"])]
            overridden = {m for m, cats in policy.markets.items() if category in cats}
            scopes = [("*", rule)] if not markets or markets - overridden else []
            scopes += [(m, policy.rule_for(category, m)) for m in sorted(markets & overridden)]
            free = [m for m in dict.fromkeys(newest["markets"] or []) if m not in overridden]
            for scope, r_ in scopes:
                if r_ is None:
                    continue
                floor = r_.review_threshold if r_.review_threshold is not None else r_.threshold
                hits = [(s, r) for s, r in evidence if s >= floor]
                if not hits:
                    continue
                score = max(s for s, _ in hits)
                violation = score >= r_.threshold
                out[item, category, scope] = {
                    "score": score, "decision": "violation" if violation else "review",
                    "action": r_.action if violation else "human_review", "severity": r_.severity,
                    "threshold": r_.threshold if violation else floor,
                    "evidence_modalities": sorted({r["modality"] for _, r in hits}),
                    "model_refs": sorted({f"{r['model_id']}@{r['model_digest'][:12]}" for _, r in hits}),
                    "markets": newest["markets"],
                    "scope_markets": [scope] if scope != "*" else free or None,
                }
    return out


def random_policy(tmp_path: Path) -> Path:
    data = {
        "policy_id": "random-policy", "version": 1, "status": "draft",
        "models": [TEXT.model_id, OCR.model_id],
        "categories": {
            "hate": {"threshold": 0.8, "review_threshold": 0.6, "action": "remove", "severity": "high",
                     "modalities": ["text", "image"]},
            "harassment": {"threshold": 0.9, "review_threshold": 0.75, "action": "restrict", "severity": "medium"},
            "spam": {"threshold": 0.95, "action": "demote", "severity": "low", "modalities": ["text", "image"]},
        },
        "exemptions": {"explicit": ["harassment"]},
        "markets": {
            "DE": {"hate": {"threshold": 0.7}, "spam": {"review_threshold": 0.5}},
            "FR": {"hate": {"review_threshold": None, "severity": "critical"}},
            "BR": {"spam": {"exempt": True}},
            "US": {"harassment": {"threshold": 0.6, "review_threshold": 0.5, "action": "label"}},
        },
    }
    path = tmp_path / "random.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_vectorized_decide_equals_the_per_item_rules(tmp_path):
    rng = random.Random(7)
    path = random_policy(tmp_path)
    loaded = load_policy(path, REG)
    rows, removals = [], []
    for i in range(400):
        item = f"item{i:03d}"
        markets = rng.choice([None, [], ["US"], ["DE"], ["BR"], ["FR", "DE"], ["US", "BR"], ["JP", "DE", "FR"],
                              ["DE", "DE"]])
        explicit = rng.random() < 0.2
        for model, modality in ((TEXT, "text"), (OCR, "image")):
            if modality == "image" and rng.random() < 0.5:
                continue
            for k in range(rng.randint(1, 3)):  # re-scores: the newest counts
                when = T0 + dt.timedelta(days=k, hours=rng.randint(0, 5))
                cats = {c: rng.choice([rng.random(), rng.uniform(0.45, 1.0)]) for c in model.categories
                        if rng.random() < 0.9}
                digest = model.digest if rng.random() < 0.8 else "0" * 64
                rows.append(score_row(item, cats if rng.random() < 0.95 else None, markets=markets, explicit=explicit,
                                      when=when, model=model, digest=digest, run_id=f"r{k}"))
            if rng.random() < 0.15:
                removals.append(removal(item, modality, T0 + dt.timedelta(days=rng.randint(0, 3))))
    removals_table = pa.Table.from_pylist(removals, schema=REMOVALS_SCHEMA)
    got = by_scope(apply_policy(latest_scores(scores_table(rows), removals_table), loaded, REG, run_id="d", now=T0))
    want = reference_decide(rows, removals, loaded.policy)
    assert len(want) > 300 and {k[2] for k in want} >= {"*", "DE", "FR", "US"}
    assert set(got) == set(want)
    for key, w in want.items():
        g = got[key]
        assert g["score"] == pytest.approx(w.pop("score"), abs=1e-6), key
        assert g["threshold"] == pytest.approx(w.pop("threshold"), abs=1e-6), key
        assert {k: g[k] for k in w} == w, key
