"""Classifier kinds: the one map from a registry entry's ``kind`` (conf/models/*.yaml) to the
class that loads it.

``moderation.config.ModelSpec`` checks every entry's ``kind`` here when it loads (an unknown
kind is a ``ConfigError`` naming the file, the field and the value), and
:func:`build_classifier` instantiates the class. The implementation modules are imported only
when a classifier of their kind is built, so importing this module (or ``config``, or
``classifiers.base``) loads no model code, and no implementation module imports this one back
at import time.

The benchmark's zero-cost classifier (``BENCHMARK_KIND``, moderation/classifiers/benchmark.py)
is in the map but refused by every registry entry and policy load unless the process called
:func:`register_kind` for it, which only ``benchmark.register()`` (scripts/bench_scale.py)
does: no policy under conf/ can ship with it.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from moderation.classifiers.base import Classifier, RunContext
    from moderation.config import ModelSpec

#: The model kind of the benchmark classifier; loadable only after :func:`register_kind`.
BENCHMARK_KIND = "benchmark_null"


@dataclass(frozen=True)
class KindEntry:
    """Where the class of one kind lives (imported on first use)."""

    module: str
    name: str
    #: True: refused by config loads unless this process registered the kind.
    benchmark_only: bool = False

    def load(self) -> type[Classifier]:
        return getattr(importlib.import_module(self.module), self.name)


_PKG = "moderation.classifiers"
#: kind -> implementation. Adding a classifier is a line here (plus its module).
KINDS: dict[str, KindEntry] = {
    "minilm_heads": KindEntry(f"{_PKG}.text", "MiniLMHeadsClassifier"),
    "muse_heads": KindEntry(f"{_PKG}.text", "MuseHeadsClassifier"),
    "e5_heads": KindEntry(f"{_PKG}.text", "E5HeadsClassifier"),
    "cascade_heads": KindEntry(f"{_PKG}.cascade", "CascadeHeadsClassifier"),
    "open_nsfw": KindEntry(f"{_PKG}.image", "OpenNsfwClassifier"),
    "ocr_text": KindEntry(f"{_PKG}.ocr", "OcrTextClassifier"),
    "speech_text": KindEntry(f"{_PKG}.audio", "SpeechTextClassifier"),
    "pdq_bank": KindEntry(f"{_PKG}.pdq", "PdqBankClassifier"),
    "profanity_check": KindEntry(f"{_PKG}.lexical", "ProfanityCheckClassifier"),
    BENCHMARK_KIND: KindEntry(f"{_PKG}.benchmark", "NullClassifier", benchmark_only=True),
}

#: The kinds a shipped registry entry may name.
PRODUCTION_KINDS: tuple[str, ...] = tuple(k for k, e in KINDS.items() if not e.benchmark_only)

#: Benchmark-only kinds this process registered (``register_kind``).
_REGISTERED_KINDS: set[str] = set()


def register_kind(kind: str) -> None:
    """Let registry entries of this process name the benchmark-only ``kind`` (only
    scripts/bench_scale.py does, through ``moderation.classifiers.benchmark.register()``).

    Raises:
        ValueError: ``kind`` is not a kind of the map.
    """
    if kind not in KINDS:
        raise ValueError(f"no classifier for kind {kind!r}; known: {', '.join(KINDS)}")
    _REGISTERED_KINDS.add(kind)


def check_kind(kind: str) -> str:
    """``kind`` when a registry entry may name it in this process.

    Raises:
        ValueError: an unknown kind, or a benchmark-only kind this process did not register
            (``ModelSpec`` turns it into a ``ConfigError`` naming the file and field).
    """
    entry = KINDS.get(kind)
    if entry is None:
        raise ValueError(f"unknown kind {kind!r}; valid: {', '.join(PRODUCTION_KINDS)}")
    if entry.benchmark_only and kind not in _REGISTERED_KINDS:
        raise ValueError(f"kind {kind!r} is the benchmark's zero-cost classifier (no model): it exists only "
                         "inside scripts/bench_scale.py, which registers it; a policy cannot score with it")
    return kind


def classifier_class(kind: str) -> type[Classifier]:
    """The class implementing ``kind`` (its module imported now).

    Raises:
        ValueError: no classifier for ``kind``.
    """
    entry = KINDS.get(kind)
    if entry is None:
        raise ValueError(f"no classifier for kind {kind!r}")
    return entry.load()


def build_classifier(spec: ModelSpec, *, batch_size: int = 64, context: RunContext | None = None) -> Classifier:
    """The classifier implementation for a registry entry's ``kind`` (nothing loaded yet).

    No registration check here: Ray workers build the benchmark classifier from the spec the
    (registered) driver validated.

    Raises:
        ValueError: no classifier for the entry's kind.
    """
    entry = KINDS.get(spec.kind)
    if entry is None:
        raise ValueError(f"model {spec.model_id}: no classifier for kind {spec.kind!r}")
    cls = entry.load()
    if context is None:
        return cls(spec, batch_size=batch_size)
    return cls(spec, batch_size=batch_size, context=context)
