"""The project's exception hierarchy.

Every error a user can cause (a bad policy file, a catalog missing columns, a tampered model
artifact) is a ``ModerationError`` whose message names the file, the field and the value.
The CLI turns these into one line on stderr and a non-zero exit, before anything is written.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal


class ModerationError(Exception):
    """Base class for errors the user can act on."""


class ConfigError(ModerationError):
    """A policy, model registry entry or run profile is invalid."""


class CatalogError(ModerationError):
    """The catalog as a whole cannot be used (missing table, missing or mistyped columns)."""


class ArtifactError(ModerationError):
    """A model artifact is missing, has the wrong digest or is in a refused format.

    ``problem`` says which (``moderation models verify`` reports it per artifact): ``missing``
    (no such file, package or S3 object, also for a derived artifact's source), ``digest
    mismatch`` (the bytes, or a derived artifact's source, do not have the pinned SHA-256) or
    ``refused`` (a format that could run code, a converter that failed).
    """

    def __init__(self, message: str, *, problem: Literal["missing", "digest mismatch", "refused"] = "refused") -> None:
        super().__init__(message)
        self.problem = problem  # an instance attribute: pickled with the exception (Ray actors)


class LakeError(ModerationError):
    """An output table is missing or inconsistent with what a command needs."""


class ClusterError(ModerationError):
    """The Ray cluster named by ``--ray-address`` or ``$RAY_ADDRESS`` cannot be joined."""


class StorageError(ModerationError):
    """The lake's or catalog's store failed mid-run (unreachable, timed out). Committed chunks
    are kept; running the same command again resumes the run."""

    exit_code = 3


class ScoringFailed(ModerationError):
    """A scoring run finished but too many of its pairs failed in the model (``score_error``
    share above the run profile's ``max_error_share``). Its rows stay committed; the run is
    recorded as failed, and ``moderation rescan`` retries the failed pairs."""

    exit_code = 4


#: How the object-store layer words a failure inside the generic errors delta-rs and DataFusion
#: raise (``DeltaError``, or a bare ``Exception`` from ``QueryBuilder``): object_store's own
#: ``Generic S3 error``, DataFusion's ``Object Store error``, delta-rs' ``Error interacting with
#: object store``. Schema, parse and "no table" errors carry none, nor do Ray's messages about
#: its own object store (``ObjectStoreFullError``).
_STORE_MARKERS = re.compile(
    r"Object Store error|interacting with object store|\bObjectStore\b"
    r"|Generic (?:S3|GCS|MicrosoftAzure|LocalFileSystem|HTTP) error|Error performing (?:GET|PUT|POST|DELETE|HEAD|list)"
    r"|Object at location \S+ not found"
)


def is_storage_failure(error: BaseException) -> bool:
    """True when ``error`` (or an exception it was raised from) is the store failing rather than
    the data or the code: every command turns it into a ``StorageError`` (exit 3, one line).

    What counts, as the libraries raise it (tests/test_storage_errors.py holds real messages):

    * ``OSError`` and its kin (pyarrow's ``ArrowIOError``, delta-rs' "Kernel error -> Generic S3
      error" on opening a table, ``ConnectionError``, ``TimeoutError``);
    * any botocore/boto3 error (``EndpointConnectionError``, read/connect timeouts, a 5xx or
      throttling ``ClientError``, missing credentials): boto3 is only used to reach the store;
    * delta-rs' ``DeltaError`` and DataFusion's bare ``Exception`` (``QueryBuilder``) when the
      message names the object store (``_STORE_MARKERS``), e.g. the accounting count during an
      S3 outage: "External error: Parquet error: … Object Store error: Generic S3 error: …".

    A Ray task error wrapping one of these counts too (its text carries the cause).
    """
    seen: set[int] = set()
    e: BaseException | None = error
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, ModerationError):
            return isinstance(e, StorageError)
        if isinstance(e, OSError):
            return True
        module = type(e).__module__ or ""
        if module.startswith(("botocore", "boto3", "s3transfer")):
            return True
        if _STORE_MARKERS.search(str(e)):
            return True
        e = e.__cause__ or (None if e.__suppress_context__ else e.__context__)
    return False


@contextmanager
def storage_boundary(what: str, *, hint: str = "run the same command again") -> Iterator[None]:
    """Turn a store failure raised inside the block (``is_storage_failure``) into one
    ``StorageError`` naming ``what`` failed; every other error passes through unchanged."""
    try:
        yield
    except ModerationError:
        raise
    except Exception as e:
        if not is_storage_failure(e):
            raise
        raise StorageError(f"{what}: storage failed: {one_line(e)}; {hint}") from e


_ANSI = re.compile(r"\x1b\[[0-9;]*m")
#: ``Name: message`` lines of a traceback, as Ray prints a task's or an actor's error into the
#: text of the error it raises in the driver (an ``ActorDiedError`` keeps no exception object).
_TRACEBACK_CAUSE = re.compile(r"^(?:[\w.]+\.)?(\w+(?:Error|Exception|Failed)): (.+)$", re.M)


def strip_ansi(text: str) -> str:
    """``text`` without the terminal colour codes delta-rs and Ray put in their messages."""
    return _ANSI.sub("", text)


def traceback_causes(text: str) -> list[tuple[str, str]]:
    """The (class name, message) of every ``SomeError: message`` line in ``text``, in order:
    the last is the root cause of a traceback Ray wrapped."""
    return _TRACEBACK_CAUSE.findall(strip_ansi(text))


def one_line(error: BaseException, limit: int = 500) -> str:
    """An exception's text on one line, without terminal colour codes."""
    return strip_ansi(" ".join(str(error).split()))[:limit]


def _moderation_errors() -> dict[str, type[ModerationError]]:
    out, todo = {}, [ModerationError]
    while todo:
        cls = todo.pop()
        out[cls.__name__] = cls
        todo.extend(cls.__subclasses__())
    return out


def moderation_cause(error: BaseException) -> ModerationError | None:
    """The ``ModerationError`` behind ``error`` when Ray (or a chain of ``raise … from``)
    wrapped one: a scoring actor refusing a tampered artifact surfaces in the driver as Ray's
    ``RayTaskError`` (the cause kept as ``.cause``) or ``ActorDiedError`` (only its traceback's
    text kept: the last ``SomeError: message`` line naming one of this module's classes is
    rebuilt). None when no such cause is found: the error is a bug, not the user's to act on."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [error]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, ModerationError):
            return e
        cause = getattr(e, "cause", None)
        todo += [e.__cause__, e.__context__, cause if isinstance(cause, BaseException) else None]
    known = _moderation_errors()
    for name, message in reversed(traceback_causes(str(error))):
        if name in known:
            return known[name](message.strip())
    return None
