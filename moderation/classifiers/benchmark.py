"""A zero-cost text classifier for scale benchmarks only (scripts/bench_scale.py).

It loads no model: each category's score is read off the row's content hash (so a changed text
gets new scores, an unchanged one the same), and the evidence names no position. What a
benchmark with it measures is everything around the model: selection, the Ray Data plumbing,
the Delta commits, decide and the report.

Its kind (``BENCHMARK_KIND``) is refused by every registry entry and policy load
(``moderation.config.ModelSpec``, through ``moderation.classifiers.registry.check_kind``) unless
the process called :func:`register` first, which only
the benchmark does: no policy under conf/ can ship with it. Ray workers build it from the
already-validated spec the driver sends them, so they need no registration.
"""

from __future__ import annotations

import hashlib
from typing import ClassVar

import pyarrow as pa

from moderation.classifiers.base import Classifier, prepared
from moderation.classifiers.registry import BENCHMARK_KIND, register_kind
from moderation.schemas import TEXT_COLUMNS


def register() -> None:
    """Allow ``kind: benchmark_null`` registry entries in this process (the benchmark only)."""
    register_kind(BENCHMARK_KIND)


def _hash(fields: list[str | None]) -> str:
    return hashlib.sha256("\x1f".join(f or "" for f in fields).encode("utf-8")).hexdigest()


class NullClassifier(Classifier):
    """Scores text without a model: per category, 8 hex digits of the content hash / 2**32.
    Every word counts as scored (coverage whole), so the report's coverage figures are filled."""

    modality: ClassVar = "text"
    uses_gpu: ClassVar[bool] = False

    def hash_key(self) -> tuple:
        return (self.modality, BENCHMARK_KIND)

    def content_hashes(self, batch: pa.Table) -> list[str]:
        cols = [batch.column(c).to_pylist() if c in batch.column_names else [None] * batch.num_rows
                for c in TEXT_COLUMNS]
        return [_hash(list(row)) for row in zip(*cols, strict=True)]

    def preprocess(self, batch: pa.Table) -> pa.Table:
        hashes = self.content_hashes(batch)
        cols = [batch.column(c).to_pylist() if c in batch.column_names else [None] * batch.num_rows
                for c in TEXT_COLUMNS]
        empty = [not any((f or "").strip() for f in row) for row in zip(*cols, strict=True)]
        n = batch.num_rows
        words = [sum(len(f.split()) for f in row if f) for row in zip(*cols, strict=True)]
        whole = pa.array(words, pa.int64())
        return prepared(
            batch, hashes=hashes,
            inputs={"units_total": whole, "units_scored": whole, "unit": pa.array(["words"] * n, pa.string()),
                    "coverage_reason": pa.nulls(n, pa.string())},
            reasons=["no_usable_text" if e else None for e in empty],
            details=["title, description and body_text are empty or whitespace" if e else None for e in empty],
            stages=["preprocess" if e else None for e in empty] if n else [],
        )

    def setup(self, device: str = "cpu") -> None:
        self.device = device  # nothing to load

    def score(self, batch: pa.Table) -> tuple[list[dict[str, float]], list[dict[str, str]]]:
        cats = self.spec.categories
        scores, evidence = [], []
        for h in batch.column("content_hash").to_pylist():
            scores.append({c: int(h[8 * k: 8 * k + 8], 16) / 2**32 for k, c in enumerate(cats[:8])})
            evidence.append({c: "benchmark: no model" for c in cats[:8]})
        return scores, evidence
