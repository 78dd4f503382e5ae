"""Text + cover art in one backfill: bad images are quarantined for the image modality only,
the accounting holds over both modalities, decide fuses them per policy category."""

from __future__ import annotations

from collections import Counter

import pyarrow as pa
import pyarrow.compute as pc
import pytest
import yaml
from deltalake import write_deltalake

from moderation.backfill import run_accounting, run_backfill
from moderation.config import default_conf_dir
from moderation.decide import run_decide
from moderation.lake import Lake

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
    }))
    profile = tmp_path / "profile.yaml"
    profile.write_text(yaml.safe_dump({"batch_size": 4, "actor_num_cpus": 1.0, "torch_threads": 2, "chunk_pairs": 5}))
    lake = Lake(str(tmp_path / "lake"))
    res = run_backfill(catalog_uri=catalog, lake_root=lake.root, policy_path=POLICY_V3, run_id="mm",
                       profile_path=profile, progress=False)
    # text: every item; image: the 8 items with a cover URI.
    assert res.modalities == ("image", "text")
    assert res.status == "succeeded" and res.selected_pairs == n + 8
    scored, quarantined, dupes = run_accounting(lake, "mm")
    assert dupes == 0 and scored + quarantined == n + 8
    q = {(r["item_id"], r["modality"]): r["reason"] for r in lake.read("quarantine").to_pylist()}
    assert q == {("it06", "image"): "image_empty", ("it07", "image"): "image_undecodable"}
    s = lake.read("scores")
    by_modality = Counter(s.column("modality").to_pylist())
    assert by_modality["image"] == 6
    # it06/it07 lost their image but their text was still scored.
    text_ids = set(s.filter(pc.field("modality") == "text").column("item_id").to_pylist())
    assert {"it06", "it07"} <= text_ids

    d = run_decide(lake_root=lake.root, policy_path=POLICY_V3)
    assert d.items == n
    v = lake.read("violations")
    for r in v.to_pylist():
        if r["category"] == "sexual":
            assert r["evidence_modalities"] == ["image"]
