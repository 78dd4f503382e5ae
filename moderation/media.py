"""Reading media bytes (cover art, audio) named by catalog URIs, with the checks that turn bad
input into quarantine reason codes instead of crashes.

URIs: a local path, ``file://`` path, or ``s3://bucket/key`` (boto3, standard AWS credential
chain). Sizes are checked before the bytes are read.
"""

from __future__ import annotations

import os
from urllib.parse import unquote, urlparse


class MediaError(Exception):
    """A media item that cannot be used; ``reason`` is the quarantine reason code."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def read_media(uri: str, *, max_bytes: int, kind: str) -> bytes:
    """The bytes behind ``uri``.

    Raises:
        MediaError: ``{kind}_missing`` (no such file/object), ``{kind}_empty`` (zero bytes),
            ``{kind}_too_large`` (over ``max_bytes``), ``{kind}_unreadable`` (I/O error).
    """
    if uri.startswith("s3://"):
        return _read_s3(uri, max_bytes=max_bytes, kind=kind)
    path = unquote(urlparse(uri).path) if uri.startswith("file://") else uri
    try:
        size = os.stat(path).st_size
    except FileNotFoundError as e:
        raise MediaError(f"{kind}_missing", f"{uri}: no such file") from e
    except OSError as e:
        raise MediaError(f"{kind}_unreadable", f"{uri}: {e.strerror}") from e
    _check_size(uri, size, max_bytes=max_bytes, kind=kind)
    try:
        with open(path, "rb") as f:
            return f.read(max_bytes + 1)
    except OSError as e:
        raise MediaError(f"{kind}_unreadable", f"{uri}: {e.strerror}") from e


def _check_size(uri: str, size: int, *, max_bytes: int, kind: str) -> None:
    if size == 0:
        raise MediaError(f"{kind}_empty", f"{uri}: zero bytes")
    if size > max_bytes:
        raise MediaError(f"{kind}_too_large", f"{uri}: {size} bytes > limit {max_bytes}")


def _read_s3(uri: str, *, max_bytes: int, kind: str) -> bytes:
    import boto3
    from botocore.exceptions import ClientError

    from moderation.lake import storage_options

    bucket, _, key = uri[len("s3://") :].partition("/")
    client = boto3.client("s3", endpoint_url=(storage_options(uri) or {}).get("AWS_ENDPOINT_URL"))
    try:
        head = client.head_object(Bucket=bucket, Key=key)
        _check_size(uri, int(head["ContentLength"]), max_bytes=max_bytes, kind=kind)
        return client.get_object(Bucket=bucket, Key=key)["Body"].read()
    except ClientError as e:
        code = e.response.get("Error", {}).get("Code", "")
        if code in ("404", "NoSuchKey", "NotFound"):
            raise MediaError(f"{kind}_missing", f"{uri}: no such object") from e
        raise MediaError(f"{kind}_unreadable", f"{uri}: {code}") from e
