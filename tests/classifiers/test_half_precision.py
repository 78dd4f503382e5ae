"""float16 on GPU actors must not move decisions: scores in fp16 vs fp32 on held-out text and
the shared images, compared at every threshold the shipped policies use.

CPU torch runs float16 too (slowly), so the tolerance is checked here on every run; the `gpu`
variant repeats it on CUDA kernels where a GPU exists.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from moderation.classifiers.base import build_classifier
from moderation.config import default_conf_dir, load_model_registry, load_policy
from moderation.evaluation.sources import read_hatexplain, read_youtube_spam

TOLERANCE = 0.01  # max absolute change of any probability
REGISTRY = load_model_registry()


def _thresholds(category: str, model_id: str) -> set[float]:
    """Every threshold and review threshold of ``category`` in the shipped policies that use
    ``model_id`` (another model's thresholds are on another score scale)."""
    out = set()
    for path in sorted((default_conf_dir() / "policies").rglob("*.yaml")):
        policy = load_policy(path, REGISTRY).policy
        rule = policy.categories.get(category)
        if rule and model_id in policy.models:
            out |= {rule.threshold} | ({rule.review_threshold} if rule.review_threshold else set())
    return out


def _flips(p32: np.ndarray, p16: np.ndarray, thresholds: set[float]) -> int:
    return sum(int(((p32 >= t) != (p16 >= t)).sum()) for t in thresholds)


TEXT_MODELS = ("text-minilm-heads-v1", "text-minilm-heads-v2", "text-e5-heads-v1")


def _text_probs(device: str, texts: list[str], model_id: str = "text-minilm-heads-v1") -> tuple[np.ndarray, np.ndarray]:
    clf = build_classifier(REGISTRY[model_id], batch_size=64)
    clf.setup(device)
    p32 = clf.predict_proba(texts)
    clf.to_half()
    return p32, clf.predict_proba(texts)


def _image_probs(device: str, data_dir) -> tuple[np.ndarray, np.ndarray]:
    from moderation.classifiers.open_nsfw import nsfw_probability, preprocess_image

    clf = build_classifier(REGISTRY["image-open-nsfw-v1"])
    clf.setup(device)
    batch = np.stack([preprocess_image(Image.open(p)) for p in sorted((data_dir / "media" / "images").iterdir())])
    p32 = nsfw_probability(clf._module, batch, device=device)
    clf.to_half()
    return p32, nsfw_probability(clf._module, batch, device=device)


@pytest.fixture(scope="module")
def texts(data_dir) -> list[str]:
    """320 held-out posts (240 HateXplain, 80 YouTube spam): the CUDA check scores them all."""
    posts = [r.text for r in read_hatexplain(data_dir, "test")[:240]]
    return posts + [r.text for r in read_youtube_spam(data_dir) if r.split == "test"][:80]


@pytest.fixture(scope="module")
def cpu_texts(texts) -> list[str]:
    """Every eighth of them on CPU, whose float16 kernels are slow (6x float32 on this AVX2 CPU):
    40 posts, 10 of them spam. The tolerance is per probability, so fewer posts lose no precision."""
    return texts[::8]


def _check_text(p32, p16, model_id: str = "text-minilm-heads-v1"):
    assert np.abs(p16 - p32).max() < TOLERANCE
    thresholds_used = 0
    for j, category in enumerate(REGISTRY[model_id].categories):
        thresholds = _thresholds(category, model_id)
        thresholds_used += len(thresholds)
        assert _flips(p32[:, j], p16[:, j], thresholds) == 0, category
    assert thresholds_used  # a shipped policy uses the model


@pytest.mark.parametrize("model_id", TEXT_MODELS)
def test_text_heads_in_float16(cpu_texts, model_id):
    _check_text(*_text_probs("cpu", cpu_texts, model_id), model_id)


def test_multilingual_heads_stay_in_float32(cpu_texts):
    """text-muse-heads-v1 declines float16 (see MuseHeadsClassifier.to_half): same scores."""
    p32, p16 = _text_probs("cpu", cpu_texts, "text-muse-heads-v1")
    np.testing.assert_array_equal(p32, p16)


def test_open_nsfw_in_float16(data_dir):
    p32, p16 = _image_probs("cpu", data_dir)
    assert np.abs(p16 - p32).max() < TOLERANCE
    assert _flips(p32, p16, _thresholds("sexual", "image-open-nsfw-v1")) == 0


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run on a GPU node: pytest -m gpu)")
def test_float16_on_cuda(texts, data_dir):
    for model_id in TEXT_MODELS:
        _check_text(*_text_probs("cuda", texts, model_id), model_id)
    p32, p16 = _image_probs("cuda", data_dir)
    assert np.abs(p16 - p32).max() < TOLERANCE and _flips(p32, p16, _thresholds("sexual", "image-open-nsfw-v1")) == 0
