"""Cover-art decoding: every bad-media case becomes its own quarantine reason; good images are
scored by the real open_nsfw port."""

from __future__ import annotations

import pyarrow as pa
import pytest
from PIL import Image

from moderation.classifiers.base import QREASON, build_classifier
from moderation.config import load_model_registry
from moderation.storage.catalog import to_work_rows

SPEC = load_model_registry()["image-open-nsfw-v1"]


def _rows(uris: list[str | None]) -> pa.Table:
    n = len(uris)
    return to_work_rows(pa.table({"item_id": [f"i{k}" for k in range(n)], "item_type": ["track"] * n,
                                  "cover_image": pa.array(uris, pa.string())}), "image")


@pytest.fixture(scope="module")
def bad_media(tmp_path_factory, data_dir):
    d = tmp_path_factory.mktemp("media")
    good = data_dir / "media" / "images" / "rocket.jpg"
    raw = good.read_bytes()
    (d / "empty.png").write_bytes(b"")
    (d / "truncated.jpg").write_bytes(raw[: len(raw) // 3])
    (d / "not_an_image.jpg").write_bytes(b"this is a text file, not a JPEG\n" * 10)
    Image.new("RGB", (32, 32)).save(d / "cover.tiff", format="TIFF")
    Image.new("1", (9000, 9000)).save(d / "bomb.png")  # 81 Mpx, a few KB on disk
    (d / "huge.jpg").write_bytes(b"\xff\xd8" + b"\0" * (SPEC.preprocessing.get("max_bytes", 20_000_000) + 10))
    return {
        "good": str(good),
        "missing": str(d / "does_not_exist.jpg"),
        "empty": str(d / "empty.png"),
        "truncated": str(d / "truncated.jpg"),
        "not_an_image": str(d / "not_an_image.jpg"),
        "tiff": str(d / "cover.tiff"),
        "bomb": str(d / "bomb.png"),
        "huge": str(d / "huge.jpg"),
        "file_uri": "file://" + str(good),
    }


def test_each_bad_media_kind_has_its_own_reason(bad_media):
    clf = build_classifier(SPEC)
    keys = list(bad_media)
    out = clf.prepare(_rows([bad_media[k] for k in keys] + [None, "  "]))
    reasons = dict(zip(keys + ["null", "blank"], out.column(QREASON).to_pylist()))
    assert reasons == {
        "good": None,
        "missing": "image_missing",
        "empty": "image_empty",
        "truncated": "image_truncated",
        "not_an_image": "image_undecodable",
        "tiff": "image_unsupported_format",
        "bomb": "image_too_many_pixels",
        "huge": "image_too_large",
        "file_uri": None,
        "null": "image_missing",
        "blank": "image_missing",
    }
    pixels = out.column("pixels").to_pylist()
    assert len(pixels[0]) == 224 * 224 * 3 * 4 and pixels[0] == pixels[keys.index("file_uri")]
    hashes = out.column("content_hash").to_pylist()
    assert hashes[0] == hashes[keys.index("file_uri")]  # hash of the bytes, not of the URI


def test_benign_shared_images_score_low(data_dir):
    clf = build_classifier(SPEC, batch_size=8)
    clf.setup("cpu")
    images = sorted(str(p) for p in (data_dir / "media" / "images").iterdir())
    out = clf.process_batch(clf.prepare(_rows(images)))
    assert out.column(QREASON).null_count == len(images)
    scores = [dict(s)["sexual"] for s in out.column("category_scores").to_pylist()]
    assert len(scores) == 14 and all(0.0 <= s < 0.5 for s in scores), scores
    assert all(dict(e) == {"sexual": "cover_image"} for e in out.column("evidence").to_pylist())
