"""Text + cover art in one backfill: bad images are quarantined for the image modality only,
the accounting holds over both modalities, decide fuses them per policy category."""

from __future__ import annotations

from collections import Counter
from unittest import mock

import pyarrow as pa
import pyarrow.compute as pc
import pytest
import yaml
from deltalake import write_deltalake

import moderation.engines.ray as pipeline
from moderation.config import default_conf_dir
from moderation.policy.decide import run_decide
from moderation.runs import read_run
from moderation.scoring.backfill import run_accounting, run_backfill
from moderation.storage.lake import Lake

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]
POLICY_V3 = default_conf_dir() / "policies" / "catalog-safety" / "v3.yaml"


def test_text_and_image_backfill(ray_local, data_dir, tmp_path):
    images = sorted(str(p) for p in (data_dir / "media" / "images").iterdir())[:6]
    (tmp_path / "zero.png").write_bytes(b"")
    (tmp_path / "junk.jpg").write_bytes(b"not an image at all")
    covers = images + [str(tmp_path / "zero.png"), str(tmp_path / "junk.jpg"), None, None]
    n = len(covers)
    catalog = str(tmp_path / "catalog")
    write_deltalake(catalog, pa.table({
        "item_id": [f"it{k:02d}" for k in range(n)],
        "item_type": ["track"] * n,
        "title": [f"Song number {k}" for k in range(n - 1)] + ["   "],
        "description": ["A calm song about the sea"] * n,
        "cover_image": pa.array(covers, pa.string()),
        "audio_clip": pa.array([str(data_dir / "media" / "audio" / "198-209-0000.ogg"),
                                str(data_dir / "media" / "audio" / "Kevin_MacLeod_-_Vibe_Ace.ogg"),
                                str(tmp_path / "junk.jpg")] + [None] * (n - 3), pa.string()),
    }))
    profile = tmp_path / "profile.yaml"
    profile.write_text(yaml.safe_dump({"batch_size": 4, "actor_num_cpus": 1.0, "torch_threads": 2, "chunk_pairs": 5}))
    lake = Lake(str(tmp_path / "lake"))
    from moderation.storage.bank import add_to_bank

    assert add_to_bank(lake, [images[0]], category="known_violating", label="test-bank").committed
    passes = []  # issue 16 point 2: one Ray Data job per modality, holding all its models
    real_stream = pipeline.score_stream

    def stream(snapshot, pass_, *args, **kwargs):
        passes.append((pass_.modality, sorted(m.model_id for m in pass_.models)))
        yield from real_stream(snapshot, pass_, *args, **kwargs)

    with mock.patch.object(pipeline, "score_stream", stream):
        res = run_backfill(catalog_uri=catalog, lake_root=lake.root, policy_path=POLICY_V3, run_id="mm",
                           profile_path=profile, progress=False)
    image_models = ["image-ocr-text-v1", "image-open-nsfw-v1", "image-pdq-bank-v1"]
    assert sorted(passes) == [("audio", ["audio-speech-text-v1"]), ("image", image_models),
                              ("text", ["text-minilm-heads-v1"])]
    # text: every item; each image model: the 8 items with a cover URI.
    assert res.modalities == ("audio", "image", "text")
    assert res.status == "succeeded" and res.selected_pairs == n + 8 * len(image_models) + 3
    scored, quarantined, dupes = run_accounting(lake, "mm")
    assert dupes == 0 and scored + quarantined == res.selected_pairs
    q = {(r["item_id"], r["model_id"]): r["reason"] for r in lake.read("quarantine").to_pylist()}
    assert q == {**{("it06", m): "image_empty" for m in image_models},
                 **{("it07", m): "image_undecodable" for m in image_models},
                 ("it02", "audio-speech-text-v1"): "audio_undecodable"}
    s = lake.read("scores")
    assert Counter(s.column("model_id").to_pylist()) == {"text-minilm-heads-v1": n, **{m: 6 for m in image_models},
                                                         "audio-speech-text-v1": 2}
    audio = {r["item_id"]: dict(r["evidence"]) for r in s.filter(pc.field("modality") == "audio").to_pylist()}
    assert audio["it01"]["spam"] == "no_speech" and audio["it00"]["spam"].startswith("window 0.")
    # it06/it07 lost their image but their text was still scored.
    text_ids = set(s.filter(pc.field("modality") == "text").column("item_id").to_pylist())
    assert {"it06", "it07"} <= text_ids
    assert read_run(lake, "mm").hash_bank_version == 0

    d = run_decide(lake_root=lake.root, policy_path=POLICY_V3)
    assert d.items == n
    v = lake.read("violations").to_pylist()
    banked = [r for r in v if r["category"] == "known_violating"]
    assert [(r["item_id"], r["decision"], r["evidence_modalities"]) for r in banked] == [("it00", "violation", ["image"])]
    assert any("image-pdq-bank-v1@" in ref for ref in banked[0]["model_refs"])
    assert all(r["evidence_modalities"] == ["image"] for r in v if r["category"] == "sexual")
