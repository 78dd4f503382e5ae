"""Sentence embeddings kept per text on disk, for training scripts that re-run over the same
corpora with different caps, subsets or recipes (scripts/train_multilingual_heads.py)."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import numpy as np


class EmbeddingCache:
    """Embeddings kept per text (SHA-256 of the normalised text -> vector) in
    ``<dir>/<encoder>_embeddings.npz``, so that any subset, cap or new corpus re-encodes only
    the texts it has not seen. Loaded with ``allow_pickle=False``."""

    def __init__(self, cache_dir: Path | None, tag: str) -> None:
        self.path = None if cache_dir is None else cache_dir / f"{tag}_embeddings.npz"
        self.index: dict[bytes, int] = {}
        self.x = np.zeros((0, 0), dtype=np.float32)
        if self.path is not None and self.path.is_file():
            with np.load(self.path, allow_pickle=False) as z:
                self.x = z["x"]
                # Keys are kept as [n, 32] uint8: a bytes ("S32") array would strip a digest's
                # trailing zero bytes on load and misalign rows.
                keys = z["keys"]
                self.index = {bytes(k): i for i, k in enumerate(keys)}
            if keys.ndim != 2 or keys.shape[1] != 32 or len(self.index) != len(self.x):
                raise ValueError(f"{self.path}: {len(self.index)} distinct keys for {len(self.x)} rows; delete it")

    @staticmethod
    def key(text: str) -> bytes:
        return hashlib.sha256(text.encode("utf-8")).digest()

    def get(self, encoder, texts: list[str], name: str) -> np.ndarray:
        keys = [self.key(t) for t in texts]
        missing = sorted({k: t for k, t in zip(keys, texts, strict=True) if k not in self.index}.items())
        if missing:
            t0 = time.perf_counter()
            new = encoder.encode([t for _, t in missing], batch_size=128)
            print(f"  {name}: encoded {len(missing)} new texts in {time.perf_counter() - t0:.0f}s", flush=True)
            base = len(self.index)
            assert base == len(self.x), "embedding cache rows and keys out of step"
            self.x = new if not self.index else np.concatenate([self.x, new])
            self.index.update({k: base + i for i, (k, _) in enumerate(missing)})
            if self.path is not None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                tmp = self.path.with_suffix(".tmp.npz")
                np.savez(tmp, keys=np.frombuffer(b"".join(self.index), dtype=np.uint8).reshape(-1, 32), x=self.x)
                tmp.replace(self.path)
        if not texts:
            return np.zeros((0, encoder.dim), dtype=np.float32)
        return self.x[[self.index[k] for k in keys]]


__all__ = ["EmbeddingCache"]
