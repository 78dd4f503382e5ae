"""Text in cover art: Tesseract reads covers rendered here, the text heads score what it read
like a title, photos without text score zero, and bad images keep the image reason codes."""

from __future__ import annotations

import hashlib
import re
import shutil
import textwrap

import pyarrow as pa
import pytest
from PIL import Image, ImageDraw, ImageFont

from moderation.classifiers.base import QREASON, build_classifier
from moderation.classifiers.ocr import NO_TEXT_EVIDENCE, OcrTextClassifier
from moderation.config import load_model_registry
from moderation.errors import ModerationError
from moderation.evaluation.sources import read_hatexplain
from moderation.storage.catalog import to_work_rows

SPEC = load_model_registry()["image-ocr-text-v1"]
SPAM = "subscribe to my channel and win free gift cards click the link now"
BENIGN = "a quiet morning walk by the river with my dog"

@pytest.fixture
def tesseract() -> str:
    """OCR is part of the product: a missing binary fails the tests (scripts/setup.sh installs it)."""
    path = shutil.which("tesseract")
    assert path, "tesseract not installed: apt-get install tesseract-ocr tesseract-ocr-eng (scripts/setup.sh does)"
    return path


needs_tesseract = pytest.mark.usefixtures("tesseract")


def _rows(uris: list[str | None]) -> pa.Table:
    n = len(uris)
    return to_work_rows(pa.table({"item_id": [f"i{k}" for k in range(n)], "item_type": ["track"] * n,
                                  "cover_image": pa.array(uris, pa.string())}), "image")


def _render(text: str, path, *, ground: tuple[int, int, int], ink: tuple[int, int, int]) -> str:
    """A square cover with ``text`` in large type, outlined like typical cover lettering."""
    img = Image.new("RGB", (800, 800), ground)
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default(size=56)  # Pillow >= 10.1 with FreeType
    for k, line in enumerate(textwrap.wrap(text, width=22)):
        draw.text((50, 80 + 73 * k), line, font=font, fill=ink, stroke_width=2, stroke_fill=(0, 0, 0))
    img.save(path)
    return str(path)


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9']+", text.lower())


@pytest.fixture(scope="module")
def hateful_sentence(data_dir, text_classifier) -> str:
    """The shortest HateXplain test post (letters only, 4-8 words, first by length then text)
    that the text heads score >= 0.9 for hate as a title: the cover must be caught like it."""
    rows = read_hatexplain(data_dir, "test")
    short = {r.text for r in rows if r.label == "hatespeech" and 4 <= len(r.text.split()) <= 8}
    candidates = sorted((t for t in short if re.fullmatch(r"[a-z ]+", t)), key=lambda t: (len(t), t))
    hate = text_classifier.predict_proba(candidates)[:, list(text_classifier.spec.categories).index("hate")]
    return next(t for t, p in zip(candidates, hate) if p >= 0.9)


@pytest.fixture(scope="module")
def clf() -> OcrTextClassifier:
    c = build_classifier(SPEC, batch_size=8)
    assert isinstance(c, OcrTextClassifier)
    c.setup("cpu")
    return c


@pytest.fixture(scope="module")
def covers(tmp_path_factory, data_dir, hateful_sentence) -> dict[str, str]:
    d = tmp_path_factory.mktemp("covers")
    images = data_dir / "media" / "images"
    return {
        # Light outlined lettering on dark artwork (OCR inverts it to dark on light) ...
        "hate": _render(hateful_sentence, d / "hate.png", ground=(30, 30, 60), ink=(255, 230, 0)),
        # ... and dark lettering on a light ground.
        "spam": _render(SPAM, d / "spam.png", ground=(235, 225, 200), ink=(20, 20, 20)),
        "benign": _render(BENIGN, d / "benign.png", ground=(30, 30, 60), ink=(255, 255, 255)),
        "astronaut": str(images / "astronaut.png"),
        # Handwritten equations photographed at a slant: Tesseract finds only low-confidence
        # glyph fragments in it, which must not become "text".
        "text_png": str(images / "text.png"),
    }


@pytest.fixture(scope="module")
def scored(clf, covers) -> dict[str, dict]:
    prepared = clf.prepare(_rows(list(covers.values())))
    out = clf.process_batch(prepared)
    return {
        name: {
            "ocr_text": prepared.column("ocr_text")[k].as_py(),
            "content_hash": out.column("content_hash")[k].as_py(),
            "qreason": out.column(QREASON)[k].as_py(),
            "scores": dict(out.column("category_scores")[k].as_py() or []),
            "evidence": dict(out.column("evidence")[k].as_py() or []),
        }
        for k, name in enumerate(covers)
    }


@needs_tesseract
def test_rendered_cover_text_is_read_back(scored, covers, hateful_sentence):
    for name, sentence in (("hate", hateful_sentence), ("spam", SPAM), ("benign", BENIGN)):
        row = scored[name]
        assert _words(row["ocr_text"]) == _words(sentence), name
        assert row["qreason"] is None
        with open(covers[name], "rb") as f:
            assert row["content_hash"] == hashlib.sha256(f.read()).hexdigest()  # the image bytes


@needs_tesseract
def test_text_in_covers_is_scored_like_a_title(scored, text_classifier, hateful_sentence):
    hate, spam, benign = scored["hate"]["scores"], scored["spam"]["scores"], scored["benign"]["scores"]
    assert hate["hate"] >= 0.8 and hate["hate"] > benign["hate"] + 0.5, (hate, benign)
    assert spam["spam"] >= 0.85 and spam["spam"] > benign["spam"] + 0.5, (spam, benign)
    assert max(benign.values()) < 0.3, benign
    # The same words as a title score the same: OCR adds no distortion of its own here.
    titles = text_classifier.predict_proba([hateful_sentence, SPAM])
    assert hate["hate"] == pytest.approx(float(titles[0, 0]), abs=0.02)
    assert spam["spam"] == pytest.approx(float(titles[1, 2]), abs=0.02)
    # The recognised text is kept as evidence.
    assert scored["hate"]["evidence"]["hate"] == "ocr:" + scored["hate"]["ocr_text"][:200]
    assert scored["spam"]["evidence"]["spam"].startswith("ocr:subscribe to my channel")


@needs_tesseract
@pytest.mark.parametrize("name", ["astronaut", "text_png"])
def test_images_without_text_are_scored_zero_not_quarantined(scored, name):
    row = scored[name]
    assert row["qreason"] is None and row["ocr_text"] == ""
    assert row["scores"] == dict.fromkeys(SPEC.categories, 0.0)
    assert row["evidence"] == dict.fromkeys(SPEC.categories, NO_TEXT_EVIDENCE)


@needs_tesseract
def test_bad_images_get_the_image_reason_codes(tmp_path, data_dir):
    good = data_dir / "media" / "images" / "rocket.jpg"
    raw = good.read_bytes()
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "not_an_image.jpg").write_bytes(b"this is a text file, not a JPEG\n" * 10)
    (tmp_path / "truncated.jpg").write_bytes(raw[: len(raw) // 3])
    Image.new("RGB", (32, 32)).save(tmp_path / "cover.tiff", format="TIFF")
    Image.new("L", (600, 600), 255).save(tmp_path / "wide.png")  # 360,000 px in a few KB
    cases = {
        "missing": str(tmp_path / "does_not_exist.png"),
        "empty": str(tmp_path / "empty.png"),
        "not_an_image": str(tmp_path / "not_an_image.jpg"),
        "truncated": str(tmp_path / "truncated.jpg"),
        "tiff": str(tmp_path / "cover.tiff"),
        "too_large": str(good),
        "too_many_pixels": str(tmp_path / "wide.png"),
        "null": None,
        "blank": "  ",
    }
    limits = {**SPEC.preprocessing, "max_bytes": 50_000, "max_pixels": 300_000}  # rocket.jpg is 112 KB, 273 kpx
    tight = OcrTextClassifier(SPEC.model_copy(update={"preprocessing": limits}))
    out = tight.prepare(_rows(list(cases.values())))
    assert dict(zip(cases, out.column(QREASON).to_pylist())) == {
        "missing": "image_missing",
        "empty": "image_empty",
        "not_an_image": "image_undecodable",
        "truncated": "image_truncated",
        "tiff": "image_unsupported_format",
        "too_large": "image_too_large",
        "too_many_pixels": "image_too_many_pixels",
        "null": "image_missing",
        "blank": "image_missing",
    }
    assert out.column("ocr_text").null_count == len(cases)


@needs_tesseract
def test_ocr_timeout_is_quarantined_as_ocr_failed(covers):
    slow = OcrTextClassifier(SPEC.model_copy(update={"preprocessing": {**SPEC.preprocessing, "ocr_timeout_s": 0.001}}))
    out = slow.prepare(_rows([covers["spam"]]))
    assert out.column(QREASON).to_pylist() == ["ocr_failed"]
    assert "tesseract ran past" in out.column("qdetail")[0].as_py()


def test_missing_tesseract_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # a folder without tesseract
    with pytest.raises(ModerationError, match="apt-get install tesseract-ocr"):
        OcrTextClassifier(SPEC).prepare(_rows(["cover.png"]))
