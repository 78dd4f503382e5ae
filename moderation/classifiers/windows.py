"""Long text scored whole: windows measured in the encoder's own units, and the item limits.

An item's text fields (title, description, body_text: lyrics or a transcript; OCR text and
speech transcripts go through the same code) are cut into overlapping windows, every one of which
the encoder reads whole, and no window count caps an item: a 7,000-word transcript is 7,000 words
of windows. What is left to bound cost and hostile input:

* ``max_field_chars`` (registry preprocessing): a field is cut at this many characters before it
  is normalised or hashed (a 10 MB "transcript" is not tokenised whole);
* ``max_item_words`` (run profile, recorded in ``runs``): words of the item scored at most, in
  field order title, description, body_text.

An item that hits either is scored on what is left and says so in its coverage
(``scores.units_total``, ``units_scored``, ``unit``, ``coverage``, ``coverage_reason``).

How windows are measured, per encoder:

* MiniLM (``minilm_heads``, and OCR and speech transcripts through its heads): in its WordPiece
  tokens. A window holds at most ``window_tokens`` (default: the model's ``max_tokens``, 128)
  tokens including ``[CLS]``/``[SEP]``; consecutive windows share ``window_overlap_tokens``
  (default 16), so a sentence cut by one window boundary is whole in the next.
* USE-m3 (``muse_heads``) has no token limit (a convolutional encoder reads any length) and
  e5 (``e5_heads``) encodes a text longer than 510 tokens window by window, whole (see
  ``e5.py``): for them, and for the cascade and the lexical baseline, windows are measured in
  words, ``window_words`` (default 160, the segment length the heads were calibrated on) with
  ``window_overlap_words`` (default 16). Short windows keep one violating sentence from being
  averaged away by the benign text around it.

Coverage is counted in words (whitespace-separated, after normalisation) for every text model,
so the share scored compares across encoders and with the words limit; every token of a scored
word lies in some window.

Character offsets in window names are offsets into the field's normalised text (NFC, control
characters removed, runs of whitespace collapsed to one space), in code points.

The windowing before issue 13 stays available to measure what whole-item scoring costs and finds
(``scripts/bench_long_form.py``): a run profile's ``text_windowing: legacy`` puts
``windowing: legacy`` in each text model's preprocessing (``with_windowing``), so the model's
digest differs and its scores are never taken for whole-item scores. Such a model scores title,
description and 160-word body segments, at most six per item, each truncated by MiniLM's
tokenizer at ``max_tokens`` (``legacy_spans``, ``TokenWindower.read_ends``); its coverage counts
the words the encoder read whole (``coverage_reason`` ``legacy_windowing`` when not all).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from moderation.config import DEFAULT_MAX_ITEM_WORDS, ModelSpec

#: ``coverage_reason`` values: the item's fields were longer than ``max_field_chars``, or the item
#: had more words than ``max_item_words``. Several are joined by ``,`` in this order.
LIMIT_CHARS = "limit_chars"
LIMIT_WORDS = "limit_words"
#: ``coverage_reason`` of an item scored under ``windowing: legacy`` whose words were not all read.
LEGACY_WINDOWING = "legacy_windowing"
WORDS = "words"

Windowing = Literal["tokens", "legacy"]
#: The preprocessing key naming a text model's windowing (absent: ``tokens``).
WINDOWING_KEY = "windowing"
WINDOWINGS: tuple[Windowing, ...] = ("tokens", "legacy")
#: Kinds whose text windows the run profile's ``text_windowing`` sets. ``speech_text`` cuts its
#: transcripts itself (classifiers/audio.py) and is left as it is.
WINDOWED_KINDS = ("minilm_heads", "muse_heads", "e5_heads", "cascade_heads", "profanity_check", "ocr_text")

_WORD = re.compile(r"\S+")


@dataclass(frozen=True)
class Window:
    """One scored window of one field."""

    name: str  #: as shown in ``evidence``: ``title``, or ``body_text[3]@1520-2310``
    text: str
    start: int  #: character offsets of the window in the field's normalised text, [start, end)
    end: int


@dataclass(frozen=True)
class Coverage:
    """What share of an item was scored, and why not all of it."""

    units_total: int | None  #: None when unknown (a clip that stopped decoding and claims no length)
    units_scored: int
    unit: str = WORDS
    reason: str | None = None  #: None when whole

    @property
    def fraction(self) -> float | None:
        """The share scored; None when the total is unknown (``scores.coverage`` is null then)."""
        if self.units_total is None:
            return None
        return 1.0 if self.units_total <= 0 else self.units_scored / self.units_total


def word_spans(text: str) -> list[tuple[int, int]]:
    """(start, end) character offsets of each whitespace-separated word of ``text``."""
    return [m.span() for m in _WORD.finditer(text)]


def count_words(text: str) -> int:
    return sum(1 for _ in _WORD.finditer(text))


def index_windows(n: int, *, size: int, overlap: int) -> list[tuple[int, int]]:
    """[i, j) ranges over ``n`` units: at most ``size`` each, consecutive ones sharing ``overlap``
    units, together covering every unit; ``[]`` when ``n`` is 0.

    Raises:
        ValueError: ``size`` < 1 or ``overlap`` not in [0, size).
    """
    if size < 1 or not 0 <= overlap < size:
        raise ValueError(f"window of {size} units with an overlap of {overlap}: need size >= 1 and 0 <= overlap < size")
    out: list[tuple[int, int]] = []
    i = 0
    while i < n:
        j = min(i + size, n)
        out.append((i, j))
        if j == n:
            break
        i = j - overlap
    return out


def window_name(field: str, k: int, start: int, end: int, *, single: bool) -> str:
    """The evidence name of window ``k`` of ``field``. A title or description read in one window
    is named by its field alone; body windows always carry their index and offsets."""
    if single and field != "body_text":
        return field
    return f"{field}[{k}]@{start}-{end}"


def limit_words(fields: dict[str, str], *, max_words: int) -> tuple[dict[str, str], int, int]:
    """Fields cut so that at most ``max_words`` words remain, taken in field order.

    Returns:
        (the cut fields, words before the cut, words kept).
    """
    out, total, kept = {}, 0, 0
    for name, text in fields.items():
        spans = word_spans(text) if text else []
        total += len(spans)
        room = max_words - kept
        if len(spans) <= room:
            out[name] = text
            kept += len(spans)
        else:
            out[name] = text[: spans[room - 1][1]] if room > 0 else ""
            kept += max(room, 0)
    return out, total, kept


def with_windowing(spec: ModelSpec, windowing: Windowing) -> ModelSpec:
    """``spec`` as a run with the profile's ``text_windowing`` scores it: unchanged for
    ``tokens`` and for kinds outside ``WINDOWED_KINDS``; otherwise with ``windowing: legacy`` in
    its preprocessing, hence another digest.

    Raises:
        ValueError: ``windowing`` is not one of ``WINDOWINGS``.
    """
    if windowing not in WINDOWINGS:
        raise ValueError(f"text windowing {windowing!r}: expected one of {', '.join(WINDOWINGS)}")
    if windowing == "tokens" or spec.kind not in WINDOWED_KINDS:
        return spec
    # Validated afresh rather than model_copy'd: model_copy would carry the cached digest over.
    return type(spec).model_validate({**spec.model_dump(), "role": spec.role,
                                      "preprocessing": {**spec.preprocessing, WINDOWING_KEY: windowing}})


def legacy_spans(fields: dict[str, str], *, segment_words: int, max_segments: int) -> list[tuple[str, int, int, int]]:
    """The segments an item was scored on before issue 13 (``text.text_segments``), as
    (field, body window index, start, end) character offsets in the field: title and description
    whole, then body windows of ``segment_words`` words, at most ``max_segments`` in all."""
    out: list[tuple[str, int, int, int]] = []
    for name in ("title", "description"):
        if fields.get(name):
            out.append((name, 0, 0, len(fields[name])))
    words = word_spans(fields.get("body_text") or "")
    for k, w in enumerate(range(0, len(words), segment_words)):
        if len(out) >= max_segments:
            break
        out.append(("body_text", k, words[w][0], words[min(w + segment_words, len(words)) - 1][1]))
    return out[:max_segments]


class WordWindower:
    """Windows of ``size`` words sharing ``overlap`` words (encoders without a token limit)."""

    unit = WORDS

    def __init__(self, *, size: int, overlap: int) -> None:
        index_windows(0, size=size, overlap=overlap)  # validates
        self.size, self.overlap = size, overlap

    def spans(self, texts: list[str]) -> list[list[tuple[int, int]]]:
        """Per text, the (start, end) character offsets of its windows."""
        out = []
        for text in texts:
            words = word_spans(text)
            out.append([(words[i][0], words[j - 1][1]) for i, j in index_windows(len(words), size=self.size,
                                                                                  overlap=self.overlap)])
        return out


class TokenWindower:
    """Windows of at most ``max_tokens`` tokens of a Hugging Face ``tokenizers`` tokenizer, its
    special tokens included, consecutive windows sharing ``overlap`` tokens.

    Windows are cut at the token offsets of the whole text; each window's text is then tokenised
    again (a window starting inside a word may tokenise differently) and shortened until it fits,
    so that no window is ever truncated by the encoder.
    """

    unit = "tokens"

    def __init__(self, tokenizer, *, max_tokens: int, overlap: int) -> None:
        tokenizer.no_truncation()
        tokenizer.no_padding()
        self.tokenizer = tokenizer
        self.max_tokens = max_tokens
        self.content = max_tokens - tokenizer.num_special_tokens_to_add(False)
        self.overlap = overlap
        index_windows(0, size=self.content, overlap=overlap)  # validates

    def token_count(self, texts: list[str]) -> list[int]:
        """Tokens of each text as the encoder reads it, special tokens included."""
        return [len(e.ids) for e in self.tokenizer.encode_batch(list(texts))]

    def read_ends(self, texts: list[str], *, max_tokens: int) -> list[int]:
        """Per text, the character offset at which an encoder that truncates at ``max_tokens``
        tokens (special tokens included) stops reading it: ``len(text)`` when it reads it all."""
        keep = max_tokens - self.tokenizer.num_special_tokens_to_add(False)
        encs = self.tokenizer.encode_batch(list(texts), add_special_tokens=False)
        return [len(t) if len(e.offsets) <= keep else (e.offsets[keep - 1][1] if keep > 0 else 0)
                for t, e in zip(texts, encs, strict=True)]

    def spans(self, texts: list[str]) -> list[list[tuple[int, int]]]:
        """Per text, the (start, end) character offsets of its windows."""
        encs = self.tokenizer.encode_batch(list(texts), add_special_tokens=False)
        out: list[list[tuple[int, int]]] = []
        for text, enc in zip(texts, encs, strict=True):
            offs = enc.offsets
            if not offs:
                # Nothing the vocabulary keeps (e.g. only zero-width characters): one window,
                # read as [CLS] [SEP], so the field is still accounted as scored.
                out.append([(0, len(text))] if text else [])
                continue
            out.append([(offs[i][0], offs[j - 1][1]) for i, j in index_windows(len(offs), size=self.content,
                                                                                overlap=self.overlap)])
        return self._fit(texts, out)

    def _fit(self, texts: list[str], spans: list[list[tuple[int, int]]]) -> list[list[tuple[int, int]]]:
        for _ in range(8):
            flat = [(t, w) for t, ws in enumerate(spans) for w in range(len(ws))]
            counts = self.token_count([texts[t][slice(*spans[t][w])] for t, w in flat])
            over = [(t, w, c) for (t, w), c in zip(flat, counts, strict=True) if c > self.max_tokens]
            if not over:
                return spans
            for t, w, c in over:
                a, b = spans[t][w]
                offs = self.tokenizer.encode(texts[t][a:b], add_special_tokens=False).offsets
                keep = max(len(offs) - (c - self.max_tokens), 1)
                # The tokens cut from this window's end start the next one.
                cut = a + offs[keep - 1][1]
                spans[t][w] = (a, cut)
                if w + 1 < len(spans[t]):
                    spans[t][w + 1] = (min(spans[t][w + 1][0], cut), spans[t][w + 1][1])
                else:
                    spans[t].append((cut, b))
        raise ValueError("token windows did not converge within the token limit")


__all__ = [
    "DEFAULT_MAX_ITEM_WORDS", "LEGACY_WINDOWING", "LIMIT_CHARS", "LIMIT_WORDS", "WINDOWED_KINDS", "WINDOWINGS",
    "WINDOWING_KEY", "Coverage", "TokenWindower", "Window", "Windowing", "WordWindower", "count_words",
    "index_windows", "legacy_spans", "limit_words", "window_name", "with_windowing", "word_spans",
]
