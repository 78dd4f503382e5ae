"""The PDQ hash bank and its classifier, on the shared images: copies of banked images
(re-encoded, resized, cropped 2-3% per side, brightened) match; the other images do not."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image, ImageEnhance

from moderation.classifiers.base import QREASON, RunContext, build_classifier
from moderation.config import default_conf_dir, load_model_spec
from moderation.errors import ModerationError
from moderation.storage.bank import (
    CROP_VARIANTS,
    HASH_BANK_SCHEMA,
    HASH_BANK_TABLE,
    BankSnapshot,
    add_to_bank,
    distances,
    hamming,
    load_bank,
    match,
    nearest,
    pdq_hash,
)
from moderation.storage.catalog import to_work_rows
from moderation.storage.lake import Lake

SPEC_PATH = default_conf_dir() / "models" / "image-pdq-bank-v1.yaml"
BANKED = ("astronaut.png", "coffee.png", "rocket.jpg")
COPIES = ("jpeg_q60", "half", "one_and_half", "crop_2pct", "crop_3pct", "brighter")
LOW_QUALITY = "clock_motion.png"  # motion blur: PDQ quality 34


def _params() -> dict:
    from moderation.storage.artifacts import resolve_local

    spec = load_model_spec(SPEC_PATH)
    return json.loads(resolve_local(spec.artifacts["params"].uri).read_bytes())


MAX_DISTANCE = _params()["max_distance"]


def _crop(img: Image.Image, left: float, top: float, right: float, bottom: float) -> Image.Image:
    w, h = img.size
    return img.crop((round(w * left), round(h * top), w - round(w * right), h - round(h * bottom)))


def _copy(img: Image.Image, kind: str) -> Image.Image:
    w, h = img.size
    return {
        "jpeg_q60": lambda: img,  # saved below at quality 60
        "half": lambda: img.resize((w // 2, h // 2), Image.Resampling.LANCZOS),
        "one_and_half": lambda: img.resize((w * 3 // 2, h * 3 // 2), Image.Resampling.BICUBIC),
        "crop_2pct": lambda: _crop(img, 0.02, 0.02, 0.02, 0.02),
        "crop_3pct": lambda: _crop(img, 0.03, 0.03, 0.03, 0.03),
        "brighter": lambda: ImageEnhance.Brightness(img).enhance(1.15),
    }[kind]()


@pytest.fixture(scope="module")
def images(data_dir) -> dict[str, str]:
    folder = data_dir / "media" / "images"
    found = {p.name: str(p) for p in sorted(folder.iterdir()) if p.suffix in (".png", ".jpg")}
    assert set(BANKED) | {LOW_QUALITY} <= set(found), f"shared images missing in {folder}"
    return found


@pytest.fixture(scope="module")
def copies(images, tmp_path_factory) -> dict[tuple[str, str], str]:
    """(banked name, copy kind) -> path of the altered copy, re-encoded as JPEG (q60 or q90)."""
    out = tmp_path_factory.mktemp("copies")
    paths = {}
    for name in BANKED:
        with Image.open(images[name]) as src:
            img = src.convert("RGB")
        for kind in COPIES:
            path = out / f"{name.split('.')[0]}-{kind}.jpg"
            _copy(img, kind).save(path, "JPEG", quality=60 if kind == "jpeg_q60" else 90)
            paths[name, kind] = str(path)
    return paths


@pytest.fixture(scope="module")
def bank_lake(images, tmp_path_factory) -> Lake:
    lake = Lake(str(tmp_path_factory.mktemp("lake")))
    for name in BANKED:
        res = add_to_bank(lake, [images[name]], category="sexual", label=f"case-{name.split('.')[0]}",
                          source="test-fixture")
        assert res.added == (images[name],) and not res.rejected
    return lake


def _rows(uris: list[str | None]) -> pa.Table:
    n = len(uris)
    return to_work_rows(pa.table({"item_id": [f"i{k}" for k in range(n)], "item_type": ["album"] * n,
                                  "cover_image": pa.array(uris, pa.string())}), "image")


def _hash_file(path: str) -> tuple[str, int]:
    with Image.open(path) as img:
        return pdq_hash(img)


# ---- hashing and matching ----------------------------------------------------------------


def test_pdq_hash_is_canonical_hex_and_hamming_counts_bits(images):
    hex_, quality = _hash_file(images["astronaut.png"])
    assert len(hex_) == 64 and int(hex_, 16) >= 0 and quality == 100
    flipped = f"{int(hex_, 16) ^ ((1 << 256) - 1):064x}"
    assert hamming(hex_, hex_) == 0 and hamming(hex_, flipped) == 256
    assert hamming("0" * 64, "0" * 62 + "0f") == 4
    assert _hash_file(images[LOW_QUALITY])[1] < 50
    assert pdq_hash(Image.new("RGB", (64, 64), (128, 128, 128)))[1] == 0  # flat: no signal
    with pytest.raises(ValueError, match="64 hex"):
        hamming(hex_, "xyz")


def test_vectorised_distances_equal_pairwise_hamming(tmp_path):
    rng = np.random.default_rng(0)
    hexes = [rng.bytes(32).hex() for _ in range(50)]
    none = load_bank(Lake(str(tmp_path / "lake")))  # no table: an empty snapshot
    assert none.version is None and len(none) == 0 and nearest(none, hexes[0]) is None
    packed = np.frombuffer(bytes.fromhex("".join(hexes)), np.uint8).reshape(50, 32)
    bank = BankSnapshot(3, packed, ("c",) * 50, tuple(str(i) for i in range(50)))
    query = rng.bytes(32).hex()
    assert distances(bank, query).tolist() == [hamming(query, h) for h in hexes]
    d, i = nearest(bank, query)
    assert d == min(hamming(query, h) for h in hexes) and hamming(query, hexes[i]) == d
    assert match(bank, query, max_distance=d) == (d, i) and match(bank, query, max_distance=d - 1) is None
    assert match(bank, hexes[7], max_distance=0) == (0, 7)


def test_copies_of_banked_images_match_and_other_images_do_not(bank_lake, copies, images):
    bank = load_bank(bank_lake)
    assert bank.version == len(BANKED) - 1 and len(bank) == len(BANKED) * len(CROP_VARIANTS)
    matched = {}
    for (name, kind), path in copies.items():
        d, i = nearest(bank, _hash_file(path)[0])
        matched[f"{name}/{kind}"] = d
        assert d <= MAX_DISTANCE and bank.labels[i] == f"case-{name.split('.')[0]}", (name, kind, d)
    unrelated = {}
    for name, path in images.items():
        if name not in BANKED:
            unrelated[name] = nearest(bank, _hash_file(path)[0])[0]
    assert min(unrelated.values()) > MAX_DISTANCE, unrelated
    # Shown with -s: the margins the threshold sits between.
    print(f"\nbanked copies: max d={max(matched.values())} {matched}")
    print(f"unrelated: min d={min(unrelated.values())} {unrelated}")


# ---- adding to the bank ------------------------------------------------------------------


def test_add_is_idempotent_and_reports_every_rejection(images, tmp_path):
    lake = Lake(str(tmp_path / "lake"))
    bad = tmp_path / "not_an_image.jpg"
    bad.write_bytes(b"this is text, not a JPEG\n" * 10)
    first = [images[n] for n in BANKED[:2]]
    res = add_to_bank(lake, [*first, str(bad), str(tmp_path / "gone.png"), images[LOW_QUALITY]],
                      category="known_violating", label="case-1", run_id="bank-t1")
    assert res.added == tuple(first) and res.already_present == () and res.version == 0
    assert [(p, r.split(":")[0]) for p, r in res.rejected] == [
        (str(bad), "image_undecodable"), (str(tmp_path / "gone.png"), "image_missing"),
        (images[LOW_QUALITY], "pdq_low_quality"),
    ]
    table = lake.open(HASH_BANK_TABLE)
    rows = table.to_pyarrow_dataset().to_table()
    assert rows.num_rows == res.hashes_added == 2 * len(CROP_VARIANTS)
    assert [(f.name, f.type) for f in rows.schema] == [(f.name, f.type) for f in HASH_BANK_SCHEMA]
    assert set(rows.column("source").to_pylist()) == set(first)  # default source: the path
    assert set(rows.column("added_by_run").to_pylist()) == {"bank-t1"}
    assert rows.column("variant").to_pylist()[:3] == ["full", "crop1.25", "crop2.5"]

    again = add_to_bank(lake, first, category="known_violating", label="case-1")
    assert again.added == () and again.already_present == tuple(first) and again.hashes_added == 0
    assert again.version == 0 and len(lake.open(HASH_BANK_TABLE).history()) == 1  # no commit

    more = add_to_bank(lake, [*first, images[BANKED[2]]], category="known_violating", label="case-2")
    assert more.added == (images[BANKED[2]],) and more.already_present == tuple(first)
    assert more.version == 1 and load_bank(lake).version == 1 and len(load_bank(lake)) == 3 * len(CROP_VARIANTS)

    with pytest.raises(ModerationError, match="category"):
        add_to_bank(lake, first, category="Known Violating", label="x")


# ---- the classifier ----------------------------------------------------------------------


def _score(lake_root: str, uris: list[str | None], spec=None):
    clf = build_classifier(spec or load_model_spec(SPEC_PATH), context=RunContext(lake_root=lake_root))
    prepared = clf.prepare(_rows(uris))
    clf.setup("cpu")
    return clf, prepared, clf.process_batch(prepared)


def test_classifier_flags_banked_copies_only(bank_lake, copies, images, tmp_path):
    bad = tmp_path / "truncated.jpg"
    raw = open(images["rocket.jpg"], "rb").read()
    bad.write_bytes(raw[: len(raw) // 3])
    unrelated = [images[n] for n in images if n not in BANKED and n != LOW_QUALITY]
    uris = [*copies.values(), *unrelated, images[LOW_QUALITY], str(bad)]
    clf, prepared, out = _score(bank_lake.root, uris)
    assert clf.bank_version == len(BANKED) - 1
    assert prepared.column("pdq_hash").to_pylist()[0] == _hash_file(uris[0])[0]
    assert out.column("content_hash").to_pylist()[0] == hashlib.sha256(open(uris[0], "rb").read()).hexdigest()
    scores = [None if s is None else dict(s) for s in out.column("category_scores").to_pylist()]
    evidence = [None if e is None else dict(e) for e in out.column("evidence").to_pylist()]
    n = len(copies)
    for k in range(n):
        assert scores[k] == {"known_violating": 1.0}, (uris[k], evidence[k])
        assert evidence[k]["known_violating"].startswith("pdq:match:case-")
    for k in range(n, n + len(unrelated)):
        assert scores[k] == {"known_violating": 0.0}, (uris[k], evidence[k])
        assert evidence[k]["known_violating"].startswith("pdq:none:d=")
        assert int(evidence[k]["known_violating"].split("d=")[1]) > MAX_DISTANCE
    assert scores[-2] == {"known_violating": 0.0} and evidence[-2]["known_violating"] == "pdq:low_quality:q=34"
    assert out.column(QREASON).to_pylist()[-1] == "image_truncated" and scores[-1] is None
    assert out.column(QREASON).null_count == len(uris) - 1


def test_registry_category_matches_bank_rows_of_that_category_only(bank_lake, copies):
    spec = load_model_spec(SPEC_PATH).model_copy(update={"categories": ("sexual", "violence")})
    uri = copies["coffee.png", "crop_3pct"]
    _, _, out = _score(bank_lake.root, [uri], spec=spec)
    assert dict(out.column("category_scores")[0].as_py()) == {"sexual": 1.0, "violence": 0.0}
    assert dict(out.column("evidence")[0].as_py())["violence"] == "pdq:none:bank_empty"


def test_missing_bank_matches_nothing(copies, tmp_path):
    uri = copies["astronaut.png", "jpeg_q60"]
    clf, _, out = _score(str(tmp_path / "empty-lake"), [uri])
    assert clf.bank_version is None
    assert dict(out.column("category_scores")[0].as_py()) == {"known_violating": 0.0}
    assert dict(out.column("evidence")[0].as_py()) == {"known_violating": "pdq:none:bank_empty"}


def test_classifier_needs_the_run_lake():
    clf = build_classifier(load_model_spec(SPEC_PATH))
    with pytest.raises(ValueError, match="lake_root"):
        clf.setup("cpu")
    with pytest.raises(RuntimeError, match="setup"):
        clf.bank_version
