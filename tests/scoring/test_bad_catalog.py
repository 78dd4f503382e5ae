"""A catalog with every kind of bad row, through a real backfill (local Ray): the run
completes, each bad (item, modality) pair is quarantined once with its reason code, good
pairs are scored, and the accounting invariant holds."""

from __future__ import annotations

import os
from collections import Counter

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import yaml

from moderation.scoring.backfill import run_accounting, run_backfill
from moderation.storage.lake import Lake
from tests.scoring.test_selection import bad_utf8

pytestmark = [pytest.mark.integration, pytest.mark.timeout(400)]

CONTROL = "spam\x00 offer\x07 \x1b[31mnow\x9b"


@pytest.fixture(scope="module")
def bad_run(tmp_path_factory, ray_local, data_dir):
    root = tmp_path_factory.mktemp("bad")
    photo = str(sorted((data_dir / "media" / "images").iterdir())[0])
    link = root / "innocent.jpg"
    os.symlink("/etc/passwd", link)
    rows = [  # (item_id bytes, title bytes, body, cover)
        (b"ok-1", b"a calm song about the sea", None, photo),
        (b"ok-2", b"morning podcast", None, None),
        (None, b"row without id", None, photo),
        (b"   ", b"blank id", None, None),
        (b"dup", b"first copy", None, None),
        (b"dup", b"second copy", None, photo),
        (b"bad\xc3\x28id", b"id not utf-8", None, None),
        (b"bad-title", b"caf\xe9 latin-1 title", None, None),
        (b"ctrl", CONTROL.encode(), None, None),
        (b"huge", b"long transcript", "word " * 2_000_000, None),  # 10 MB
        (b"etc", b"system file", None, "/etc/passwd"),
        (b"file-uri", b"file uri", None, "file:///etc/hostname"),
        (b"traversal", b"dot dot", None, str(root / ".." / ".." / ".." / "etc" / "passwd")),
        (b"symlink", b"symlink out", None, str(link)),
        (b"http", b"remote", None, "http://example.com/cover.jpg"),
    ]
    folder = root / "catalog"
    folder.mkdir()
    pq.write_table(pa.table({
        "item_id": bad_utf8([r[0] for r in rows]),
        "item_type": ["track"] * len(rows),
        "title": bad_utf8([r[1] for r in rows]),
        "body_text": pa.array([r[2] for r in rows], pa.string()),
        "cover_image": pa.array([r[3] for r in rows], pa.string()),
    }), folder / "part-0.parquet")
    policy = root / "policy.yaml"
    policy.write_text(yaml.safe_dump({
        "policy_id": "bad-input", "version": 1, "status": "draft",
        "models": ["text-minilm-heads-v1", "image-open-nsfw-v1"],
        "categories": {"spam": {"threshold": 0.95, "action": "demote", "severity": "low", "modalities": ["text"]},
                       "sexual": {"threshold": 0.85, "action": "age_restrict", "severity": "high",
                                  "modalities": ["image"]}},
    }))
    profile = root / "profile.yaml"
    profile.write_text(yaml.safe_dump({"batch_size": 8, "actors": 1, "actor_num_cpus": 1.0, "torch_threads": 2,
                                       "chunk_pairs": 5,
                                       # The 10 MB transcript is cut at this (scoring the default
                                       # 200,000 words costs minutes of CPU: see docs/models.md on long-form costs).
                                       "max_item_words": 5_000}))
    lake = Lake(str(root / "lake"))
    result = run_backfill(catalog_uri=str(folder), lake_root=lake.root, policy_path=policy, run_id="bad",
                          profile_path=profile, progress=False)
    return {"result": result, "lake": lake, "folder": folder, "policy": policy, "profile": profile}


def _pairs(lake: Lake, table: str, *cols: str) -> list[tuple]:
    t = lake.read(table, filter=pc.field("run_id") == "bad")
    return sorted((tuple(r[c] for c in cols) for r in t.to_pylist()), key=str)


def test_run_completes_with_every_pair_accounted_for(bad_run):
    res, lake = bad_run["result"], bad_run["lake"]
    # text: 15 rows -> 10 unique usable ids + dup + bad id + 2 id-less rows = 14 pairs;
    # image: 8 rows with a cover -> ok-1, 5 outside-roots items, dup, the id-less row = 8 pairs.
    assert res.status == "succeeded" and res.balanced
    assert res.selected_pairs == 14 + 8
    scored, quarantined, dupes = run_accounting(lake, "bad")
    assert dupes == 0 and scored + quarantined == res.selected_pairs


def test_each_bad_pair_has_its_reason(bad_run):
    q = _pairs(bad_run["lake"], "quarantine", "item_id", "modality", "reason")
    reasons = Counter((m, r) for _, m, r in q)
    assert reasons[("text", "missing_item_id")] == 2
    assert reasons[("image", "missing_item_id")] == 1
    assert ("dup", "text", "duplicate_item_id") in q and ("dup", "image", "duplicate_item_id") in q
    assert ("bad\\xc3(id", "text", "invalid_item_id") in q
    assert ("bad-title", "text", "invalid_utf8") in q
    for item in ("etc", "file-uri", "traversal", "symlink", "http"):
        assert (item, "image", "image_outside_roots") in q, item
    assert len(q) == sum(reasons.values())


def test_good_and_odd_rows_are_scored(bad_run):
    lake = bad_run["lake"]
    scores = {(r["item_id"], r["modality"]): r for r in lake.read("scores", filter=pc.field("run_id") == "bad").to_pylist()}
    assert {("ok-1", "text"), ("ok-1", "image"), ("ok-2", "text"), ("ctrl", "text"), ("huge", "text")} <= set(scores)
    # The 10 MB transcript is scored on what the limits allow, and its row says so.
    huge = scores[("huge", "text")]
    assert huge["coverage_reason"] == "limit_chars,limit_words" and huge["units_scored"] == 5_000
    assert huge["units_total"] == 2_000_002 and huge["coverage"] == pytest.approx(5_000 / 2_000_002)
    evidence = " ".join(dict(scores[("ctrl", "text")]["evidence"]).values())
    assert not any(ord(c) < 32 or 0x7F <= ord(c) <= 0x9F for c in evidence)
    # Nothing about a refused URI was opened: its detail names the roots, not file contents.
    detail = lake.read("quarantine", filter=pc.field("item_id") == "etc").column("detail")[0].as_py()
    assert "not under the media roots" in detail and "root:" not in detail


def test_rerun_of_the_same_run_id_writes_nothing(bad_run):
    lake = bad_run["lake"]
    before = (lake.version("scores"), lake.version("quarantine"))
    again = run_backfill(catalog_uri=str(bad_run["folder"]), lake_root=lake.root, policy_path=bad_run["policy"],
                         run_id="bad", profile_path=bad_run["profile"], progress=False)
    assert again.already_done and (lake.version("scores"), lake.version("quarantine")) == before
