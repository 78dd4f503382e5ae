"""The per-text embedding cache of the training scripts (moderation/evaluation/embedding_cache.py)."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from moderation.evaluation.embedding_cache import EmbeddingCache


class CountingEncoder:
    """A stand-in encoder (isolates the cache): a text's vector is derived from its digest."""

    dim = 8

    def __init__(self) -> None:
        self.seen: list[str] = []

    def encode(self, texts: list[str], batch_size: int = 0) -> np.ndarray:
        self.seen += texts
        return np.stack([np.frombuffer(hashlib.sha256(t.encode()).digest()[:8], np.uint8).astype(np.float32)
                         for t in texts]) if texts else np.zeros((0, self.dim), np.float32)


def _expected(texts):
    return CountingEncoder().encode(texts)


def test_rows_stay_with_their_texts_across_reloads(tmp_path):
    # Digests ending in a zero byte: a bytes ("S32") key array would strip it on load.
    zero_tail = [t for t in (str(i) for i in range(5000)) if hashlib.sha256(t.encode()).digest()[-1] == 0][:4]
    assert len(zero_tail) == 4
    first = zero_tail[:2] + ["alpha", "beta"]
    enc = CountingEncoder()
    np.testing.assert_array_equal(EmbeddingCache(tmp_path, "t").get(enc, first, "a"), _expected(first))
    second = ["beta", *zero_tail[2:], "gamma", "alpha", zero_tail[0]]
    cache = EmbeddingCache(tmp_path, "t")  # reloaded from disk
    np.testing.assert_array_equal(cache.get(enc, second, "b"), _expected(second))
    assert sorted(enc.seen) == sorted(first + zero_tail[2:] + ["gamma"])  # each text encoded once
    again = EmbeddingCache(tmp_path, "t")
    assert len(again.index) == len(again.x) == 7
    np.testing.assert_array_equal(again.get(enc, first + second, "c"), _expected(first + second))
    assert len(enc.seen) == 7


def test_without_a_folder_nothing_is_written(tmp_path):
    enc = CountingEncoder()
    cache = EmbeddingCache(None, "t")
    np.testing.assert_array_equal(cache.get(enc, ["x", "y", "x"], "a"), _expected(["x", "y", "x"]))
    assert enc.seen == ["x", "y"] and cache.get(enc, [], "b").shape == (0, 8)
    assert not list(tmp_path.iterdir())


def test_a_damaged_cache_is_refused(tmp_path):
    np.savez(tmp_path / "t_embeddings.npz", keys=np.zeros((2, 32), np.uint8), x=np.zeros((2, 8), np.float32))
    with pytest.raises(ValueError, match="1 distinct keys for 2 rows"):
        EmbeddingCache(tmp_path, "t")
