"""Failed scoring is retried (issue 15, point 2): ``Classifier.process_batch`` retries a failing
batch, splits it down to single rows, and quarantines only the rows that fail every attempt, with
the attempts in the detail. A fake classifier isolates the unit: no model, no Ray."""

from __future__ import annotations

import pyarrow as pa
import pytest

from moderation.classifiers.base import (
    QDETAIL,
    QREASON,
    RETRIED_REASONS,
    SCORE_ERROR,
    Classifier,
    RunContext,
    prepared,
)
from moderation.config import load_model_registry


class _Fake(Classifier):
    """Scores every row 0.5; ``fail(ids, n)`` says whether a call on rows ``ids`` (its ``n``-th
    call) raises."""

    modality = "text"

    def __init__(self, spec, fail, **kw) -> None:
        super().__init__(spec, **kw)
        self.fail = fail
        self.calls: list[list[str]] = []

    def preprocess(self, batch: pa.Table) -> pa.Table:
        n = batch.num_rows
        return prepared(batch, hashes=["h"] * n, inputs={}, reasons=[None] * n, details=[None] * n,
                        stages=[None] * n)

    def setup(self, device: str = "cpu") -> None:
        self.device = device

    def score(self, batch: pa.Table):
        ids = batch.column("item_id").to_pylist()
        self.calls.append(ids)
        if self.fail(ids, len(self.calls)):
            raise RuntimeError("CUDA out of memory")
        return [{c: 0.5 for c in self.spec.categories} for _ in ids], [{} for _ in ids]


@pytest.fixture(scope="module")
def spec():
    return load_model_registry()["text-minilm-heads-v1"]


def _run(spec, fail, n=8, attempts=2):
    clf = _Fake(spec, fail, context=RunContext(score_attempts=attempts, score_backoff_s=0.0))
    rows = pa.table({"item_id": [f"i{k}" for k in range(n)], "title": ["t"] * n})
    return clf, clf.process_batch(clf.prepare(rows)).to_pylist()


def test_a_transient_batch_failure_is_retried_and_nothing_is_quarantined(spec):
    clf, out = _run(spec, lambda ids, call: call == 1)  # e.g. one out-of-memory, then fine
    assert [r[QREASON] for r in out] == [None] * 8
    assert all(r["category_scores"] for r in out)
    assert len(clf.calls) == 2 and clf.calls[0] == clf.calls[1]


def test_a_batch_that_keeps_failing_is_split_so_one_bad_row_spares_its_batch_mates(spec):
    clf, out = _run(spec, lambda ids, call: "i5" in ids)
    assert [r[QREASON] for r in out] == [None] * 5 + [SCORE_ERROR] + [None] * 2
    bad = out[5]
    assert bad["category_scores"] is None and bad["qstage"] == "score"
    # 2 tries of the batch of 8, one of each half containing it (4, 2), 2 alone: 6 attempts.
    assert bad[QDETAIL].startswith("failed 6 attempts (the last alone): RuntimeError: CUDA out of memory")
    # Bisection, not one call per row: 2 + 2 halves + 2 quarters + 2 pairs (less those not needed) + 2 alone.
    assert len(clf.calls) < 2 + 8 and clf.calls.count(["i5"]) == 2


def test_every_row_failing_quarantines_every_row_after_bounded_attempts(spec):
    clf, out = _run(spec, lambda ids, call: True, n=4, attempts=3)
    assert [r[QREASON] for r in out] == [SCORE_ERROR] * 4
    # 3 tries of the batch of 4, one of its half, 3 alone.
    assert {r[QDETAIL].split(" (")[0] for r in out} == {"failed 7 attempts"}
    assert len(clf.calls) == 3 + 2 + 4 * 3


def test_a_row_that_fails_once_alone_is_scored_on_its_retry(spec):
    def fail(ids, call):
        return len(ids) > 1 or (ids == ["i1"] and not fail.seen and not setattr(fail, "seen", True))

    fail.seen = False
    _, out = _run(spec, fail, n=2)
    assert [r[QREASON] for r in out] == [None, None]


def test_backoff_doubles_between_tries_of_the_same_rows(spec, monkeypatch):
    import moderation.classifiers.base as base

    slept = []
    monkeypatch.setattr(base.time, "sleep", slept.append)
    clf = _Fake(spec, lambda ids, call: True, context=RunContext(score_attempts=3, score_backoff_s=0.5))
    clf.process_batch(clf.prepare(pa.table({"item_id": ["a"], "title": ["t"]})))
    assert slept == [0.5, 1.0]


def test_score_error_is_a_retried_reason_and_permanent_ones_are_not():
    assert SCORE_ERROR in RETRIED_REASONS
    for permanent in ("image_too_large", "audio_too_large", "no_usable_text", "invalid_utf8", "missing_item_id",
                      "duplicate_item_id", "image_empty"):
        assert permanent not in RETRIED_REASONS
