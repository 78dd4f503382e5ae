"""The text cascade (moderation/classifiers/cascade.py): routing, member pins, the scores it
gives against its members alone, and what a backfill records of it in ``runs``."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

from moderation.classifiers.base import build_classifier
from moderation.classifiers.cascade import CASCADE_EVIDENCE_KEY, bands, member_spec
from moderation.config import ArtifactRef, load_model_registry
from moderation.runs import read_run

CASCADE = "text-cascade-muse-e5-v1"
TEXTS = [
    "I love this song, play it again",
    "All of them are vermin and should be wiped out.",
    "Ich bringe dich um, wenn ich dich sehe.",
    "Compra ya seguidores baratos en mi web!!!",
    "Ce podcast parle de l'histoire de la Révolution française.",
]


@pytest.fixture(scope="module")
def registry():
    return load_model_registry()


def _with_band(spec, low: float, high: float = 1.0):
    pre = {**spec.preprocessing, "band_high": high, **{f"band_low.{c}": low for c in spec.categories}}
    return spec.model_copy(update={"preprocessing": pre})


def test_routing_follows_the_band(registry):
    spec = _with_band(registry[CASCADE], 0.2, high=0.9)
    clf = build_classifier(spec)
    p = np.array([
        [0.1, 0.1, 0.1, 0.1, 0.1],  # every category cleared: stays with the cheap model
        [0.1, 0.5, 0.1, 0.1, 0.1],  # one category in the band: strong
        [0.95, 0.1, 0.1, 0.1, 0.1],  # above the band in one, below in the rest: cheap score stands
        [0.95, 0.95, 0.95, 0.95, 0.95],  # certain in every category: cheap
        [0.95, 0.5, 0.1, 0.1, 0.1],  # one category in the band: strong
    ], dtype=np.float32)
    assert clf.route(p).tolist() == [False, True, False, False, True]
    assert clf.route(np.zeros((0, 5), np.float32)).tolist() == []


def test_band_is_validated(registry):
    spec = registry[CASCADE]
    pre = {k: v for k, v in spec.preprocessing.items() if k != "band_low.spam"}
    with pytest.raises(ValueError, match="band_low.spam must be a probability"):
        bands(spec.model_copy(update={"preprocessing": pre}))
    with pytest.raises(ValueError, match="band_high"):
        bands(spec.model_copy(update={"preprocessing": {**spec.preprocessing, "band_high": 0.0}}))


def test_members_must_match_what_the_cascade_pins(registry):
    spec = registry[CASCADE]
    assert member_spec(spec, "strong", registry).artifacts == registry["text-e5-heads-v1"].artifacts
    other = ArtifactRef(uri="package://moderation/artifacts/text_heads_e5_v1.safetensors", sha256="1" * 64)
    stale = spec.model_copy(update={"artifacts": {**spec.artifacts, "strong.heads": other}})
    with pytest.raises(ValueError, match="re-pin the cascade"):
        member_spec(stale, "strong", registry)
    with pytest.raises(ValueError, match="names no registry model"):
        member_spec(spec.model_copy(update={"preprocessing": {**spec.preprocessing, "cheap": "nope"}}), "cheap", registry)
    # A cascade's digest moves with its members' weights.
    assert stale.digest != spec.digest


@pytest.fixture(scope="module")
def members(registry):
    out = {}
    for mid in ("text-muse-heads-v1", "text-e5-heads-v1"):
        clf = build_classifier(registry[mid])
        clf.setup("cpu")
        out[mid] = clf.predict_proba(TEXTS)
    return out


def test_scores_come_from_the_member_the_band_picks(registry, members):
    cheap, strong = members["text-muse-heads-v1"], members["text-e5-heads-v1"]
    everything = build_classifier(_with_band(registry[CASCADE], 0.0))
    everything.setup("cpu")
    np.testing.assert_allclose(everything.predict_proba(TEXTS), strong, atol=1e-5)
    assert everything.route(cheap).all()

    shipped = build_classifier(registry[CASCADE])
    shipped.setup("cpu")
    p = shipped.predict_proba(TEXTS)
    sent = shipped.route(cheap)
    np.testing.assert_allclose(p[sent], strong[sent], atol=1e-5)
    np.testing.assert_allclose(p[~sent], cheap[~sent], atol=1e-5)
    low, _ = bands(registry[CASCADE])
    assert (cheap[~sent] < low).all()  # what stays with the cheap model is below every band_low


def test_evidence_says_which_member_scored_an_item(registry):
    import pyarrow as pa

    clf = build_classifier(_with_band(registry[CASCADE], 0.0))
    clf.setup("cpu")
    batch = pa.table({"segments": [[TEXTS[0], TEXTS[1]], [TEXTS[2]]], "segment_names": [["title", "description"], ["title"]]})
    _, evidence = clf.score(batch)
    assert [e[CASCADE_EVIDENCE_KEY] for e in evidence] == ["strong", "strong"]
    clf.low[:] = 1.0  # nothing in the band: the cheap model keeps every segment
    _, evidence = clf.score(batch)
    assert [e[CASCADE_EVIDENCE_KEY] for e in evidence] == ["cheap", "cheap"]
    assert set(evidence[0]) == {*registry[CASCADE].categories, CASCADE_EVIDENCE_KEY}


@pytest.mark.integration
@pytest.mark.timeout(600)
def test_backfill_records_the_band_and_the_share_sent(tmp_path, ray_local, data_dir):
    from moderation.demo.catalog import write_demo_catalog
    from moderation.scoring.backfill import run_backfill
    from moderation.storage.lake import Lake

    policy_dir = tmp_path / "policies" / "cascade-test"
    policy_dir.mkdir(parents=True)
    cats = {c: {"threshold": 0.9, "review_threshold": 0.7, "action": "remove", "severity": "high", "modalities": ["text"]}
            for c in registry_categories()}
    policy = policy_dir / "v1.yaml"
    policy.write_text(yaml.safe_dump({"policy_id": "cascade-test", "version": 1, "status": "draft",
                                      "description": "cascade accounting test", "models": [CASCADE], "categories": cats}))
    profile = tmp_path / "profile.yaml"
    profile.write_text(yaml.safe_dump({"batch_size": 32, "actors": 1, "actor_num_cpus": 1.0, "torch_threads": 2,
                                       "chunk_pairs": 64}))
    catalog = write_demo_catalog(str(tmp_path / "catalog"), items=60, data_dir=data_dir)
    lake = Lake(str(tmp_path / "lake"))
    result = run_backfill(catalog_uri=catalog.uri, lake_root=lake.root, policy_path=policy, run_id="cascade-run",
                          profile_path=profile, progress=False)
    assert result.status == "succeeded"
    (entry,) = [json.loads(s) for s in read_run(lake, "cascade-run").cascade]
    scores = lake.read("scores").to_pylist()
    stages = [dict(s["evidence"])[CASCADE_EVIDENCE_KEY] for s in scores]
    assert entry["model_id"] == CASCADE and entry["pairs"] == len(scores) == result.scored_pairs
    assert entry["strong_pairs"] == stages.count("strong") and 0 < entry["strong_pairs"] < entry["pairs"]
    assert entry["strong_share"] == round(stages.count("strong") / len(scores), 4)
    assert entry["band_low"]["hate"] == registry_band("hate") and entry["band_high"] == 1.0


def registry_categories():
    return list(load_model_registry()[CASCADE].categories)


def registry_band(category: str) -> float:
    return float(load_model_registry()[CASCADE].preprocessing[f"band_low.{category}"])
