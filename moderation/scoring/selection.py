"""What a run selects from a catalog snapshot, decided once in the driver before scoring.

One streaming pass over the item id column (and the media URI columns) of the pinned snapshot:

* ``--where`` and ``--limit`` become an explicit item id set (``--limit N`` = the N smallest
  selected ids, so a resume selects exactly the same items);
* rows that cannot be keyed are never streamed to the models but quarantined here, once per
  (row or item, modality, model): no item id (``missing_item_id``), an id that is not valid
  UTF-8 (``invalid_item_id``), an id on more than one row (``duplicate_item_id``; none of its
  rows is scored, since which one is right cannot be known);
* the pairs each modality will stream are counted, so the accounting invariant
  (selected = scores + quarantine) needs no second pass through Ray.

Memory: 8 bytes per catalog row (a 64-bit hash of its id) plus the duplicate and bad rows,
independent of text and media sizes; the rows themselves are streamed in bounded batches.
"""

from __future__ import annotations

import os
from collections import Counter, defaultdict
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from moderation.errors import CatalogError
from moderation.modalities import MEDIA_COLUMNS
from moderation.storage.catalog import CatalogSnapshot, modality_mask, utf8_sanitize

SCAN_ROWS = 65_536


@dataclass(frozen=True)
class PreludeRow:
    """A (row or item, modality) pair quarantined by the driver before scoring."""

    item_id: str | None
    reason: str
    detail: str


@dataclass
class Selection:
    """The run's selection. Picklable; ``filter`` runs in the Ray read tasks."""

    keep_ids: pa.Array | None  # string ids selected by --where/--limit; None = every row
    excluded: pa.Array  # binary ids never streamed (duplicates, invalid UTF-8)
    stream_pairs: dict[str, int] = field(default_factory=dict)  # modality -> pairs streamed
    prelude: dict[str, list[PreludeRow]] = field(default_factory=dict)  # modality -> driver quarantine
    rows_scanned: int = 0

    def selected(self, modality: str) -> int:
        return self.stream_pairs.get(modality, 0) + len(self.prelude.get(modality, ()))

    def filter(self, batch: pa.Table, modality: str, skip_ids: pa.Array | None = None) -> pa.Table:
        """The rows of a catalog batch that the stream scores for ``modality``: selected, with a
        usable unique id, with this modality's media, and not in ``skip_ids`` (committed by an
        earlier attempt of the run)."""
        return batch.filter(self.mask(batch, modality, skip_ids))

    def mask(self, batch: pa.Table, modality: str, skip_ids: pa.Array | None = None) -> pa.Array:
        """``filter``'s rows as a boolean mask over ``batch`` (no nulls)."""
        ids = batch.column("item_id")
        mask = _usable_id_mask(ids)
        if self.keep_ids is not None:
            mask = pc.and_(mask, pc.is_in(ids, value_set=self.keep_ids))
        if len(self.excluded):
            mask = pc.and_(mask, pc.invert(pc.is_in(ids.cast(pa.binary()), value_set=self.excluded)))
        media = modality_mask(batch, modality)
        if media is not None:
            mask = pc.and_(mask, pc.fill_null(media, False))
        if skip_ids is not None and len(skip_ids):
            mask = pc.and_(mask, pc.invert(pc.is_in(ids, value_set=skip_ids)))
        mask = pc.fill_null(mask, False)
        return mask.combine_chunks() if isinstance(mask, pa.ChunkedArray) else mask


def _usable_id_mask(ids: pa.ChunkedArray, sanitized: tuple | None = None) -> pa.ChunkedArray:
    """Non-null, non-blank, valid UTF-8 (``sanitized``: ``utf8_sanitize(ids)`` when already done)."""
    fixed, bad = sanitized or utf8_sanitize(ids)
    mask = pc.fill_null(pc.greater(pc.utf8_length(pc.utf8_trim_whitespace(fixed)), 0), False)
    if bad:
        flags = np.ones(len(ids), dtype=bool)
        flags[bad] = False
        mask = pc.and_(mask, pa.array(flags))
    return mask


def _hash(ids: pa.ChunkedArray | pa.Array) -> np.ndarray:
    import pandas as pd

    return pd.util.hash_array(np.asarray(ids.to_pylist(), dtype=object), categorize=False)


def _smallest_ids(snapshot: CatalogSnapshot, limit: int) -> pa.Array:
    best = pa.array([], pa.string())
    for f in snapshot.files:
        for t in snapshot.read(f, ["item_id"], batch_rows=SCAN_ROWS):
            ids = t.column("item_id").filter(_usable_id_mask(t.column("item_id"))).combine_chunks()
            pool = pc.unique(pa.concat_arrays([best, ids.cast(pa.string())]))
            best = pool.take(pc.array_sort_indices(pool)[: min(limit, len(pool))])
    return best


def plan_selection(
    snapshot: CatalogSnapshot, modalities: list[str], *, keep_ids: pa.Array | None = None, limit: int | None = None
) -> Selection:
    """Scan the snapshot's ids once (twice when there are duplicate candidates)."""
    if limit is not None:
        if keep_ids is not None:
            keep_ids = keep_ids.take(pc.array_sort_indices(keep_ids)[:limit])
        else:
            keep_ids = _smallest_ids(snapshot, limit)
    media = {m: MEDIA_COLUMNS[m] for m in modalities if m in MEDIA_COLUMNS and snapshot.has_modality(m)}
    fields = ["item_id", *media.values()]
    stream: Counter[str] = Counter()
    prelude: dict[str, list[PreludeRow]] = defaultdict(list)
    invalid: dict[bytes, Counter] = {}
    hashes: list[np.ndarray] = []
    rows = 0

    def has(batch: pa.Table, m: str) -> np.ndarray:
        mask = modality_mask(batch, m)
        if mask is None:
            return np.ones(batch.num_rows, dtype=bool)
        return np.asarray(mask.to_numpy(zero_copy_only=False), dtype=bool)

    live = [m for m in modalities if m not in MEDIA_COLUMNS or m in media]  # text: every item
    for f in snapshot.files:
        name = os.path.basename(f.path)
        for t in snapshot.read(f, fields, batch_rows=SCAN_ROWS):
            if keep_ids is not None:
                t = t.filter(pc.is_in(t.column("item_id"), value_set=keep_ids))
            rows += t.num_rows
            ids = t.column("item_id")
            fixed, bad = utf8_sanitize(ids)
            usable = np.asarray(_usable_id_mask(ids, (fixed, bad)).to_numpy(zero_copy_only=False), dtype=bool)
            bad_set = set(bad)
            flags = {m: has(t, m) for m in live}
            raw = ids.cast(pa.binary()).to_pylist() if bad else []  # read only for the bad rows
            for i in np.flatnonzero(~usable):
                for m in live:
                    if not flags[m][i]:
                        continue
                    if i in bad_set:
                        invalid.setdefault(raw[i], Counter())[m] += 1
                    else:
                        prelude[m].append(PreludeRow(None, "missing_item_id",
                                                     f"a row of data file {name} has a null or blank item_id"))
            for m in live:
                stream[m] += int(np.count_nonzero(flags[m] & usable))
            hashes.append(_hash(fixed.filter(pa.array(usable))))
    if rows and not any(stream.values()) and not invalid and prelude.get("text"):
        raise CatalogError(f"catalog {snapshot.uri}: no row has a usable item_id ({rows} rows scanned); "
                           f"is the item_id column mapped correctly?")
    all_hashes = np.concatenate(hashes) if hashes else np.array([], dtype=np.uint64)
    uniq, counts = np.unique(all_hashes, return_counts=True)
    candidates = uniq[counts > 1]
    excluded: list[bytes] = []
    if len(candidates):
        per_id: dict[str, Counter] = defaultdict(Counter)
        for f in snapshot.files:
            for t in snapshot.read(f, fields, batch_rows=SCAN_ROWS):
                if keep_ids is not None:
                    t = t.filter(pc.is_in(t.column("item_id"), value_set=keep_ids))
                t = t.filter(_usable_id_mask(t.column("item_id")))
                hit = np.isin(_hash(t.column("item_id")), candidates)
                if not hit.any():
                    continue
                t = t.filter(pa.array(hit))
                flags = {m: has(t, m) for m in live}
                for j, item in enumerate(t.column("item_id").to_pylist()):
                    per_id[item]["rows"] += 1
                    for m in live:
                        per_id[item][m] += int(flags[m][j])
        for item, c in sorted(per_id.items()):
            if c["rows"] < 2:
                continue  # a hash collision, not a duplicate
            excluded.append(item.encode("utf-8"))
            for m in live:
                if c[m]:
                    stream[m] -= c[m]
                    prelude[m].append(PreludeRow(item, "duplicate_item_id",
                                                 f"item_id appears on {c['rows']} rows of the catalog snapshot; "
                                                 f"none of them is scored"))
    for raw_id, c in invalid.items():
        excluded.append(raw_id)
        shown = raw_id.decode("utf-8", "backslashreplace")
        for m in live:
            if c[m]:
                prelude[m].append(PreludeRow(shown, "invalid_item_id",
                                             f"item_id is not valid UTF-8 ({c[m]} row(s)): {shown[:80]!r}"))
    return Selection(keep_ids=keep_ids, excluded=pa.array(excluded, pa.binary()), stream_pairs=dict(stream),
                     prelude=dict(prelude), rows_scanned=rows)
