"""Batches of token sequences for the sentence encoders (muse.py, e5.py)."""

from __future__ import annotations

from collections.abc import Iterator


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
