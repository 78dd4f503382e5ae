"""Reading media bytes (cover art, audio) named by catalog URIs, with the checks that turn bad
input into quarantine reason codes instead of crashes.

URIs: a local path, ``file://`` path, or ``s3://bucket/key`` (boto3, standard AWS credential
chain). Sizes are checked before the bytes are read.

A run reads media only under its configured roots (``media_roots`` in the run profile, or
``--media-root``; by default the catalog's own folder and the data directory's media). A URI
outside them (``../`` traversal, a symlink out, ``file:///etc/…``, another bucket, another
scheme) is refused before anything is opened: ``{kind}_outside_roots``.

Cover art is read and decoded here too (``load_cover``, for the image classifiers and the hash
bank), with its reason codes: ``image_missing``, ``image_empty``, ``image_too_large``,
``image_unreadable`` (reading the bytes), ``image_unsupported_format``, ``image_undecodable``,
``image_too_many_pixels`` and ``image_truncated`` (decoding them; see ``decode_image``).
"""

from __future__ import annotations

import contextlib
import contextvars
import io
import os
import warnings
from collections.abc import Callable, Hashable, Iterator
from typing import TypeVar
from urllib.parse import unquote, urlparse

from moderation.modalities import media_column

T = TypeVar("T")


class MediaError(Exception):
    """A media item that cannot be used; ``reason`` is the quarantine reason code."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
        #: The bytes, when they were read before the item proved unusable (it cannot be
        #: decoded): its content hash is theirs, as for a usable item.
        self.data: bytes | None = None


#: The reads (and decodes) of the innermost ``shared_reads`` block, by key; None outside one.
_SHARED: contextvars.ContextVar[dict | None] = contextvars.ContextVar("moderation_shared_reads", default=None)


@contextlib.contextmanager
def shared_reads() -> Iterator[None]:
    """Inside this block each media item is read, and each cover decoded, once, however many
    classifiers ask for it: a modality's models prepare the same rows in one block (see
    ``pipeline.prepare_batch``), so a cover is fetched and decoded once for open_nsfw, OCR and
    PDQ. The cache lives only as long as the block (the caller keeps blocks small: a few rows).
    Callers must not modify what they get (Pillow's operations return new images)."""
    token = _SHARED.set({})
    try:
        yield
    finally:
        _SHARED.reset(token)


def shared(key: Hashable, compute: Callable[[], T]) -> T:
    """``compute()``, or inside ``shared_reads`` the value (or ``MediaError``) it gave for ``key``."""
    cache = _SHARED.get()
    if cache is None:
        return compute()
    if key in cache:
        value = cache[key]
        if isinstance(value, MediaError):
            raise value
        return value
    try:
        value = compute()
    except MediaError as e:
        cache[key] = e
        raise
    cache[key] = value
    return value


def check_root(uri: str, roots: tuple[str, ...] | None, *, kind: str) -> str:
    """The local path or ``s3://`` URI to open, if ``uri`` lies under one of ``roots``.

    ``roots=None`` means no restriction (a user's own files, e.g. ``moderation bank add``).

    Raises:
        MediaError: ``{kind}_outside_roots``.
    """
    scheme = urlparse(uri).scheme if "://" in uri else ""
    if scheme not in ("", "file", "s3"):
        raise MediaError(f"{kind}_outside_roots", f"{uri[:200]}: URI scheme {scheme!r} is not allowed")
    if scheme == "s3":
        bucket, _, key = uri[len("s3://"):].partition("/")
        if any(part in ("..", ".") for part in key.split("/")):
            raise MediaError(f"{kind}_outside_roots", f"{uri[:200]}: '.' or '..' segments are not allowed")
        if roots is not None and not any(r.startswith("s3://") and uri.startswith(r.rstrip("/") + "/") for r in roots):
            raise MediaError(f"{kind}_outside_roots", f"{uri[:200]}: not under the media roots {list(roots)}")
        return uri
    path = unquote(urlparse(uri).path) if scheme == "file" else uri
    if "\x00" in path:
        raise MediaError(f"{kind}_outside_roots", f"{uri[:200]!r}: NUL byte in path")
    if roots is None:
        return path
    real = os.path.realpath(path)  # resolves '..' and symlinks
    for root in roots:
        if root.startswith("s3://"):
            continue
        base = os.path.realpath(unquote(urlparse(root).path) if root.startswith("file://") else root)
        if os.path.commonpath([real, base]) == base:
            return real
    raise MediaError(f"{kind}_outside_roots", f"{uri[:200]}: resolves to {real[:200]}, not under the media roots "
                     f"{list(roots)}")


def read_media(uri: str, *, max_bytes: int, kind: str, roots: tuple[str, ...] | None = None) -> bytes:
    """The bytes behind ``uri``, which must lie under ``roots`` (None: anywhere).

    Raises:
        MediaError: ``{kind}_outside_roots`` (see ``check_root``), ``{kind}_missing`` (no such
            file/object), ``{kind}_empty`` (zero bytes), ``{kind}_too_large`` (over
            ``max_bytes``), ``{kind}_unreadable`` (I/O error).
    """
    return shared(("read", uri, max_bytes, kind, roots),
                  lambda: _read(uri, max_bytes=max_bytes, kind=kind, roots=roots))


def _read(uri: str, *, max_bytes: int, kind: str, roots: tuple[str, ...] | None) -> bytes:
    path = check_root(uri, roots, kind=kind)
    if path.startswith("s3://"):
        return _read_s3(uri, max_bytes=max_bytes, kind=kind)
    try:
        size = os.stat(path).st_size
    except FileNotFoundError as e:
        raise MediaError(f"{kind}_missing", f"{uri}: no such file") from e
    except OSError as e:
        raise MediaError(f"{kind}_unreadable", f"{uri}: {e.strerror}") from e
    _check_size(uri, size, max_bytes=max_bytes, kind=kind)
    try:
        with open(path, "rb") as f:
            data = f.read(max_bytes + 1)
    except OSError as e:
        raise MediaError(f"{kind}_unreadable", f"{uri}: {e.strerror}") from e
    _check_read(uri, data, max_bytes=max_bytes, kind=kind)
    return data


def _check_size(uri: str, size: int, *, max_bytes: int, kind: str) -> None:
    if size == 0:
        raise MediaError(f"{kind}_empty", f"{uri}: zero bytes")
    if size > max_bytes:
        raise MediaError(f"{kind}_too_large", f"{uri}: {size} bytes > limit {max_bytes}")


def _check_read(uri: str, data: bytes, *, max_bytes: int, kind: str) -> None:
    """The size check again on what was read: the file or object may have grown (or been
    replaced) since its size was checked, and reads stop at ``max_bytes + 1`` bytes."""
    if len(data) > max_bytes:
        raise MediaError(f"{kind}_too_large", f"{uri}: more than {max_bytes} bytes read (limit {max_bytes}; it grew "
                         f"after its size was checked)")
    _check_size(uri, len(data), max_bytes=max_bytes, kind=kind)


def _read_s3(uri: str, *, max_bytes: int, kind: str) -> bytes:
    import boto3
    from botocore.exceptions import ClientError

    from moderation.storage.lake import storage_options

    bucket, _, key = uri[len("s3://") :].partition("/")
    client = boto3.client("s3", endpoint_url=(storage_options(uri) or {}).get("AWS_ENDPOINT_URL"))
    try:
        head = client.head_object(Bucket=bucket, Key=key)
        _check_size(uri, int(head["ContentLength"]), max_bytes=max_bytes, kind=kind)
        data = get_bounded(client, bucket, key, max_bytes=max_bytes)
    except ClientError as e:
        code = e.response.get("Error", {}).get("Code", "")
        if code in ("404", "NoSuchKey", "NotFound"):
            raise MediaError(f"{kind}_missing", f"{uri}: no such object") from e
        raise MediaError(f"{kind}_unreadable", f"{uri}: {code}") from e
    _check_read(uri, data, max_bytes=max_bytes, kind=kind)
    return data


#: Bytes read from an S3 response body at a time.
READ_CHUNK = 1 << 20


def get_bounded(client, bucket: str, key: str, *, max_bytes: int) -> bytes:
    """At most ``max_bytes + 1`` bytes of an S3 object, so an object larger than the caller's
    limit (one that grew after a HEAD, or a store that ignores ``Range``) never fills memory:
    a result longer than ``max_bytes`` means the object is over the limit.

    The GET asks for ``Range: bytes=0-max_bytes`` and the body is read in bounded chunks and
    closed after ``max_bytes + 1`` bytes, whatever the store sends.

    Raises:
        botocore.exceptions.ClientError: as ``get_object`` raises it (an empty object answers a
            ranged GET with 416 InvalidRange on some stores: that is read as zero bytes).
    """
    from botocore.exceptions import ClientError

    try:
        body = client.get_object(Bucket=bucket, Key=key, Range=f"bytes=0-{max_bytes}")["Body"]
    except ClientError as e:
        if e.response.get("Error", {}).get("Code") == "InvalidRange":
            return b""
        raise
    parts: list[bytes] = []
    left = max_bytes + 1
    try:
        while left > 0:
            chunk = body.read(min(READ_CHUNK, left))
            if not chunk:
                break
            parts.append(chunk)
            left -= len(chunk)
    finally:
        body.close()
    return b"".join(parts)


# --------------------------------------------------------------------------------------
# Cover art
# --------------------------------------------------------------------------------------

#: The image formats accepted for cover art (Pillow's names).
ACCEPTED_FORMATS = frozenset({"JPEG", "PNG", "WEBP", "GIF", "BMP"})


def decode_image(data: bytes, *, uri: str, max_pixels: int):
    """Decode ``data`` to an RGB Pillow image, or raise MediaError with a reason code."""
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            # Pillow warns (then errors at 2x) above MAX_IMAGE_PIXELS; our own limit decides.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            fmt = img.format
            width, height = img.size
    except Image.DecompressionBombError as e:
        raise MediaError("image_too_many_pixels", f"{uri}: {e}") from e
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise MediaError("image_undecodable", f"{uri}: {e}") from e
    if fmt not in ACCEPTED_FORMATS:
        raise MediaError("image_unsupported_format", f"{uri}: format {fmt}; accepted {sorted(ACCEPTED_FORMATS)}")
    if width * height > max_pixels:
        raise MediaError("image_too_many_pixels", f"{uri}: {width}x{height} > {max_pixels} pixels")
    try:
        img.load()
        return img.convert("RGB")
    except (OSError, ValueError, SyntaxError) as e:
        raise MediaError("image_truncated", f"{uri}: {e}") from e


def load_cover(uri: str | None, *, max_bytes: int, max_pixels: int, roots: tuple[str, ...] | None = None):
    """(bytes, RGB Pillow image) of the cover art at ``uri`` (under ``roots``), or MediaError
    with its reason (``data`` set when the bytes were read). Inside ``shared_reads`` a cover
    is read and decoded once."""
    if not uri:
        raise MediaError("image_missing", f"{media_column('image')} is null or empty")

    def load():
        data = read_media(uri, max_bytes=max_bytes, kind="image", roots=roots)
        try:
            return data, decode_image(data, uri=uri, max_pixels=max_pixels)
        except MediaError as e:
            e.data = data
            raise

    # Decoded once per cover for all of a modality's models (shared_reads).
    return shared(("cover", uri, max_bytes, max_pixels, roots), load)
