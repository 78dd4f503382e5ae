"""Keep secrets from the environment (AWS keys, tokens) out of everything a job prints or logs.

``install()`` is called once, first thing in a process entrypoint (``moderation.cli.main``,
``jobs/*.py``), before deltalake is imported. It:

1. caps the delta-rs / object_store / AWS SDK log targets that print credentials in ``RUST_LOG``
   (at debug, ``deltalake_aws::storage`` logs the S3 client config with the access key id in
   clear). delta-rs' env_logger reads ``RUST_LOG`` once, when deltalake is imported, and Ray's
   raylet and workers and Spark's JVM inherit the capped value from this process;
2. masks secret values in every Python log record, whatever the logger or handler (a log record
   factory: ``ray``, ``py4j``, ``botocore`` and our own loggers alike), exception text included;
3. masks secret values in everything written to ``sys.stdout`` / ``sys.stderr``: ``error:``
   lines, uncaught tracebacks (S3 answers ``InvalidAccessKeyId`` with the key id in its error
   body, and delta-rs puts that body in its exception), Ray worker lines forwarded to the driver.

``mask(text)`` is the masking itself, for text that is stored (``runs.error``) rather than
printed. What writes straight to file descriptors or files of other processes (Rust and JVM
output, Ray worker log files) is covered by the ``RUST_LOG`` cap only.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
from urllib.parse import quote, quote_plus

from moderation.security import secret_values

MASK = "***"
#: AWS access key ids, masked wherever they come from (env, ~/.aws/credentials, an S3 error body).
AWS_KEY_ID = re.compile(r"\b(?:AKIA|ASIA|AROA|AIDA)[0-9A-Z]{16}\b")

#: Rust log targets that print credentials (or signing material) at debug/trace, and the most
#: verbose level each may log at.
RUST_LOG_CAP = "info"
RUST_LOG_CAPPED = (
    "deltalake_aws", "deltalake_azure", "deltalake_gcp",
    "object_store::aws", "object_store::azure", "object_store::gcp",
    "aws_config", "aws_credential_types", "aws_sigv4", "aws_sdk_sts", "aws_sdk_sso", "aws_sdk_ssooidc",
    "aws_smithy_runtime", "aws_smithy_runtime_api",
)
_LEVELS = {"off": 0, "error": 1, "warn": 2, "info": 3, "debug": 4, "trace": 5}

_installed = False


def _forms(value: str) -> set[str]:
    """The value as it may appear in text: raw, URL-encoded, JSON-escaped."""
    json_escaped = json.dumps(value)[1:-1]
    return {value, quote(value, safe=""), quote_plus(value, safe=""), json_escaped, json_escaped.replace("/", "\\/")}


def _needles() -> list[str]:
    found = {form for value in secret_values() for form in _forms(value)}
    return sorted(found, key=len, reverse=True)


def mask(text: str) -> str:
    """``text`` with every secret environment value (raw, URL-encoded or JSON-escaped) and every
    AWS access key id replaced by ``***``."""
    if not text:
        return text
    for needle in _needles():
        if needle in text:
            text = text.replace(needle, MASK)
    return AWS_KEY_ID.sub(MASK, text)


def cap_rust_log(spec: str, *, targets: tuple[str, ...] = RUST_LOG_CAPPED, cap: str = RUST_LOG_CAP) -> str:
    """``spec`` (an env_logger ``RUST_LOG`` value) with ``targets`` logging at most at ``cap``.

    Directives naming a capped target (or a module inside one) are lowered to ``cap``; a target
    that a broader directive (e.g. a bare ``debug``) would let log below ``cap`` gets its own
    ``target=cap`` directive (env_logger applies the longest matching name). Nothing is made
    more verbose than ``spec`` asked for."""
    directives_part, slash, regex = spec.partition("/")
    directives: list[tuple[str, str]] = []
    for raw in filter(None, (d.strip() for d in directives_part.split(","))):
        name, eq, level = raw.partition("=")
        if not eq:
            name, level = ("", raw) if raw.lower() in _LEVELS else (raw, "trace")
        level = level.strip().lower()
        if level in _LEVELS and _LEVELS[level] > _LEVELS[cap] and any(
                name == t or name.startswith(t + "::") for t in targets):
            level = cap
        directives.append((name.strip(), level))
    for target in targets:
        matches = [(n, lv) for n, lv in directives if n == "" or target == n or target.startswith(n + "::")]
        level = max(matches, key=lambda d: len(d[0]))[1] if matches else "error"
        if _LEVELS.get(level, 0) > _LEVELS[cap]:
            directives.append((target, cap))
    text = ",".join(f"{n}={lv}" if n else lv for n, lv in directives)
    return text + (slash + regex if slash else "")


def _mask_record(record: logging.LogRecord) -> None:
    try:
        message = record.getMessage()
    except Exception:  # noqa: BLE001 - a malformed record is the handler's to report
        return
    masked = mask(message)
    if masked != message:
        record.msg, record.args = masked, None
    if record.exc_info and not record.exc_text:
        text = logging.Formatter().formatException(record.exc_info)
        masked = mask(text)
        if masked != text:
            record.exc_text = masked
    if record.stack_info:
        record.stack_info = mask(record.stack_info)


class _MaskingStream:
    """A text stream proxy whose ``write`` masks secrets; everything else is the wrapped stream's."""

    def __init__(self, stream):
        self._stream = stream

    def write(self, text):
        self._stream.write(mask(text) if isinstance(text, str) else text)
        return len(text)

    def writelines(self, lines):
        for line in lines:
            self.write(line)

    def __getattr__(self, name):
        return getattr(self._stream, name)


def install() -> None:
    """Cap ``RUST_LOG``, mask log records and ``sys.stdout``/``sys.stderr`` (idempotent)."""
    global _installed
    if _installed:
        return
    _installed = True
    if os.environ.get("RUST_LOG"):
        os.environ["RUST_LOG"] = cap_rust_log(os.environ["RUST_LOG"])
    base_factory = logging.getLogRecordFactory()

    def factory(*args, **kwargs):
        record = base_factory(*args, **kwargs)
        _mask_record(record)
        return record

    logging.setLogRecordFactory(factory)
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        if stream is not None and not isinstance(stream, _MaskingStream):
            setattr(sys, name, _MaskingStream(stream))
