"""The hash bank: PDQ perceptual hashes of known violating images, kept as data in the lake.

``<lake>/hash_bank`` is a Delta table (``HASH_BANK_SCHEMA``), so every change is a versioned
commit: a run records the bank version it matched against and can be replayed against it.
It holds hashes and where each image came from, never the image itself.

PDQ (Meta's perceptual hash, 256 bits) tolerates re-encoding, resizing and brightness changes
well within its usual match distance of 31, but not cropping: removing 2% per side already
moves a hash 30-60 bits. So each banked image is stored as its full-frame hash plus the hashes
of centred crops (``CROP_VARIANTS``, every 1.25% up to 5% per side): a copy cropped evenly by
up to ~5.6% per side lies within 0.625% of a stored variant, about 20 bits at most on natural
images. Uneven crops are a shift, which no centred variant undoes: 0.5% of unevenness already
costs 30-40 bits, a 3% cut on one side only 30-55, so those are mostly missed. Fine repetitive
textures (brick, gravel) move far more per pixel of crop and are matched only when re-encoded
or resized.

Hex strings use PDQ's canonical bit order (the C++ reference and ThreatExchange), so hashes
from other PDQ implementations can be compared with these.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from moderation.errors import LakeError, ModerationError
from moderation.schemas import HASH_BANK_SCHEMA  # defined (and described) with the other tables
from moderation.storage.lake import Lake

log = logging.getLogger(__name__)

HASH_BANK_TABLE = "hash_bank"

HASH_BYTES = 32  # 256 bits
#: Fraction cut from each side for the stored variants of a banked image (0.0 = full frame).
CROP_VARIANTS: tuple[float, ...] = (0.0, 0.0125, 0.025, 0.0375, 0.05)
#: Longest side an image is reduced to before hashing. PDQ reduces to 64x64 anyway; this
#: bounds the float buffers it allocates (a 50 Mpx cover would need over a gigabyte) and
#: moves hashes by only a few bits.
PDQ_MAX_SIDE = 512
#: Reading limits for banked files, the same as the image classifiers'.
MAX_BYTES = 20_000_000
MAX_PIXELS = 50_000_000

_CATEGORY = re.compile(r"^[a-z0-9_]+$")
_HEX = re.compile(r"^[0-9a-f]{64}$")
# Set bits of every byte value: XOR of packed hashes -> table lookup -> sum = Hamming distance.
_POPCOUNT = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint16)


# ------------------------------------------------------------------------------------------
# Hashing
# ------------------------------------------------------------------------------------------


def pdq_hash(img) -> tuple[str, int]:
    """PDQ hash of a Pillow image.

    Returns:
        (hex, quality): 64 lower-case hex chars in PDQ's canonical order, and PDQ's quality
        (0-100; below 50 PDQ's authors advise discarding the hash: flat or blurred images).
    """
    import pdqhash
    from PIL import Image

    rgb = img if img.mode == "RGB" else img.convert("RGB")
    width, height = rgb.size
    if max(width, height) > PDQ_MAX_SIDE:
        scale = PDQ_MAX_SIDE / max(width, height)
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        rgb = rgb.resize(size, Image.Resampling.BILINEAR)
    bits, quality = pdqhash.compute(np.ascontiguousarray(np.asarray(rgb), dtype=np.uint8))
    # pdqhash returns bit 255 first, the order of the reference hex format.
    return np.packbits(np.asarray(bits, dtype=np.uint8)).tobytes().hex(), int(quality)


def hash_bits(hash_hex: str) -> np.ndarray:
    """The 32 packed bytes of a PDQ hex string.

    Raises:
        ValueError: not 64 hex characters.
    """
    if not isinstance(hash_hex, str) or not _HEX.match(hash_hex.lower()):
        raise ValueError(f"not a PDQ hash (64 hex characters): {hash_hex!r}")
    return np.frombuffer(bytes.fromhex(hash_hex), dtype=np.uint8)


def hamming(a_hex: str, b_hex: str) -> int:
    """Number of differing bits (0-256) between two PDQ hex strings.

    Raises:
        ValueError: either is not 64 hex characters.
    """
    return int(_POPCOUNT[np.bitwise_xor(hash_bits(a_hex), hash_bits(b_hex))].sum())


def _crop(img, fraction: float):
    if not fraction:
        return img
    width, height = img.size
    dx, dy = round(width * fraction), round(height * fraction)
    if width - 2 * dx < 1 or height - 2 * dy < 1:
        return img
    return img.crop((dx, dy, width - dx, height - dy))


def _variant_name(fraction: float) -> str:
    return "full" if not fraction else f"crop{fraction * 100:g}"


# ------------------------------------------------------------------------------------------
# Adding to the bank
# ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BankAddResult:
    """What ``add_to_bank`` did, per input path."""

    added: tuple[str, ...]  # paths with at least one hash new to the bank
    already_present: tuple[str, ...]  # paths whose every hash was already banked
    rejected: tuple[tuple[str, str], ...]  # (path, "reason_code: detail"), nothing stored
    hashes_added: int  # rows committed (each image gives up to len(CROP_VARIANTS))
    version: int | None  # table version after the call; None when the bank does not exist

    @property
    def committed(self) -> bool:
        return self.hashes_added > 0


def add_to_bank(
    lake: Lake,
    paths: Sequence[str],
    *,
    category: str,
    label: str,
    source: str | None = None,
    min_quality: int = 50,
    run_id: str | None = None,
) -> BankAddResult:
    """Hash images and append the hashes the bank does not hold yet, in one Delta commit.

    Each image is read and decoded like cover art (same reason codes) and hashed in full and
    as ``CROP_VARIANTS``. An unreadable image, or one whose full-frame quality is below
    ``min_quality``, is rejected with its reason and nothing of it is stored; a crop variant
    below ``min_quality`` is left out. Hashes already in the bank are skipped, so adding the
    same files again commits nothing and leaves the table version unchanged. (Two concurrent
    calls may both append a hash; matching is unaffected by a duplicate row.)

    Args:
        lake: the lake whose ``hash_bank`` table receives the hashes (created on first use).
        paths: image paths or URIs (local, ``file://``, ``s3://``).
        category: lower-case letters, digits, ``_`` (e.g. ``sexual``, ``known_violating``).
        label: free text identifying the banked content; shown in match evidence.
        source: where the images came from (a case id, a feed); default each file's path.
        min_quality: PDQ quality below which a hash is not trusted (PDQ's authors: 50).
        run_id: recorded in ``added_by_run`` and the commit metadata; default a new id.

    Raises:
        ModerationError: invalid category, label or min_quality.
    """
    from moderation.runs import new_run_id
    from moderation.storage.media import MediaError, load_cover

    if not _CATEGORY.match(category):
        raise ModerationError(f"bank category {category!r} must be lower-case letters, digits, _")
    if not label.strip():
        raise ModerationError("bank label must not be empty")
    if not 0 <= min_quality <= 100:
        raise ModerationError(f"min_quality {min_quality} must be within 0-100 (PDQ quality)")
    run_id = run_id or new_run_id("bank-add")

    hashed: list[tuple[str, list[tuple[str, str, int]]]] = []  # (path, [(variant, hex, quality)])
    rejected: list[tuple[str, str]] = []
    for path in paths:
        try:
            _, img = load_cover(path, max_bytes=MAX_BYTES, max_pixels=MAX_PIXELS)
        except MediaError as e:
            rejected.append((path, f"{e.reason}: {e.detail}"))
            continue
        variants = []
        for fraction in CROP_VARIANTS:
            hex_, quality = pdq_hash(_crop(img, fraction))
            if quality >= min_quality:
                variants.append((_variant_name(fraction), hex_, quality))
            elif not fraction:
                rejected.append((path, f"pdq_low_quality: quality {quality} < min_quality {min_quality}"))
                break
            else:
                log.info("%s: variant %s has PDQ quality %d < %d; not stored", path, _variant_name(fraction),
                         quality, min_quality)
        else:
            hashed.append((path, variants))

    table = lake.open(HASH_BANK_TABLE)
    seen: set[str] = set()
    if table is not None:
        seen.update(table.to_pyarrow_dataset().to_table(columns=["hash"]).column("hash").to_pylist())
    added: list[str] = []
    already: list[str] = []
    rows: list[dict[str, Any]] = []
    now = dt.datetime.now(dt.UTC)
    for path, variants in hashed:
        new = [(v, h, q) for v, h, q in variants if h not in seen]
        seen.update(h for _, h, _ in new)
        (added if new else already).append(path)
        rows.extend(
            {"hash": h, "quality": q, "variant": v, "category": category, "label": label,
             "source": source if source is not None else path, "added_at": now, "added_by_run": run_id}
            for v, h, q in new
        )
    for path, reason in rejected:
        log.warning("not banked: %s (%s)", path, reason)

    if rows:
        lake.append(HASH_BANK_TABLE, pa.Table.from_pylist(rows, schema=HASH_BANK_SCHEMA),
                    metadata={"moderation.run_id": run_id, "moderation.operation": "bank_add"})
    return BankAddResult(
        added=tuple(added),
        already_present=tuple(already),
        rejected=tuple(rejected),
        hashes_added=len(rows),
        version=lake.version(HASH_BANK_TABLE),
    )


# ------------------------------------------------------------------------------------------
# Reading and matching
# ------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)  # eq would compare arrays elementwise
class BankSnapshot:
    """The bank at one Delta version, ready for matching. Row ``i`` of ``hashes`` (packed
    bits, read-only) belongs with ``categories[i]`` and ``labels[i]``."""

    version: int | None  # None: the bank table does not exist
    hashes: np.ndarray  # (N, 32) uint8
    categories: tuple[str, ...]
    labels: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.labels)

    def take(self, indices: Sequence[int] | np.ndarray) -> BankSnapshot:
        """The rows at ``indices``, same version (e.g. one category's hashes)."""
        idx = np.asarray(indices, dtype=np.intp)
        hashes = self.hashes[idx]
        hashes.setflags(write=False)
        return BankSnapshot(self.version, hashes, tuple(self.categories[i] for i in idx),
                            tuple(self.labels[i] for i in idx))


def _snapshot(version: int | None, hashes: np.ndarray, categories, labels) -> BankSnapshot:
    hashes = np.ascontiguousarray(hashes, dtype=np.uint8).reshape(-1, HASH_BYTES)
    hashes.setflags(write=False)
    return BankSnapshot(version, hashes, tuple(categories), tuple(labels))


def load_bank(lake: Lake, *, version: int | None = None) -> BankSnapshot:
    """The bank at ``version`` (default the latest); an empty snapshot when there is none.

    Raises:
        LakeError: a stored hash is not 64 hex characters.
    """
    table = lake.open(HASH_BANK_TABLE, version=version)
    if table is None:
        return _snapshot(None, np.empty((0, HASH_BYTES), np.uint8), (), ())
    rows = table.to_pyarrow_dataset().to_table(columns=["hash", "category", "label"])
    hexes = rows.column("hash").to_pylist()
    bad = next((h for h in hexes if not isinstance(h, str) or not _HEX.match(h.lower())), None)
    if bad is not None:
        raise LakeError(f"{lake.uri(HASH_BANK_TABLE)} v{table.version()}: hash {bad!r} is not 64 hex characters")
    packed = np.frombuffer(bytes.fromhex("".join(hexes)), dtype=np.uint8)
    return _snapshot(table.version(), packed, rows.column("category").to_pylist(), rows.column("label").to_pylist())


def distances(bank: BankSnapshot, hash_hex: str) -> np.ndarray:
    """Hamming distance from ``hash_hex`` to every bank hash: int32 array of shape (N,)."""
    return _POPCOUNT[np.bitwise_xor(bank.hashes, hash_bits(hash_hex))].sum(axis=1, dtype=np.int32)


def nearest(bank: BankSnapshot, hash_hex: str) -> tuple[int, int] | None:
    """(distance, index) of the closest bank hash (first on ties); None for an empty bank."""
    if len(bank) == 0:
        hash_bits(hash_hex)  # still reject a malformed query
        return None
    d = distances(bank, hash_hex)
    i = int(np.argmin(d))
    return int(d[i]), i


def match(bank: BankSnapshot, hash_hex: str, *, max_distance: int) -> tuple[int, int] | None:
    """(distance, index) of the closest bank hash when it is within ``max_distance`` bits
    (inclusive), else None."""
    hit = nearest(bank, hash_hex)
    return hit if hit is not None and hit[0] <= max_distance else None
