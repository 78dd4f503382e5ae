"""Batches of token sequences for the sentence encoders (muse.py, e5.py)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np


def length_batches(lengths: list[int], batch_size: int, max_tokens: int) -> Iterator[list[int]]:
    """Indices of sequences, grouped shortest first: at most ``batch_size`` per batch and at most
    ``max_tokens`` padded tokens (rows x longest row), so activation memory is bounded whatever
    the texts; a sequence longer than ``max_tokens`` runs alone. The last index of a batch is its
    longest sequence."""
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    start = 0
    while start < len(order):
        stop = start + 1
        while (stop < len(order) and stop - start < batch_size
               and (stop - start + 1) * lengths[order[stop]] <= max_tokens):
            stop += 1
        yield order[start:stop]
        start = stop


def encode_batches(model: Callable, seqs: list[list[int]], out: np.ndarray, *, batch_size: int, max_tokens: int,
                   pad: int, device: str | None) -> np.ndarray:
    """``out`` with row ``i`` set to ``model(ids, mask)``'s output for ``seqs[i]``, the sequences
    run in ``length_batches``: each batch right-padded with ``pad`` to its longest sequence,
    ``mask`` 1 on the real tokens, both int64 on ``device``, under ``torch.inference_mode``."""
    import torch

    with torch.inference_mode():
        for idx in length_batches([len(s) for s in seqs], batch_size, max_tokens):
            width = len(seqs[idx[-1]])
            arr = np.full((len(idx), width), pad, dtype=np.int64)
            mask = np.zeros((len(idx), width), dtype=np.int64)
            for r, i in enumerate(idx):
                arr[r, : len(seqs[i])] = seqs[i]
                mask[r, : len(seqs[i])] = 1
            emb = model(torch.from_numpy(arr).to(device), torch.from_numpy(mask).to(device))
            out[idx] = emb.float().cpu().numpy()
    return out
