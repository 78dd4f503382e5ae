"""The project's exception hierarchy.

Every error a user can cause (a bad policy file, a catalog missing columns, a tampered model
artifact) is a ``ModerationError`` whose message names the file, the field and the value.
The CLI turns these into one line on stderr and a non-zero exit, before anything is written.
"""

from __future__ import annotations

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


def one_line(error: BaseException, limit: int = 500) -> str:
    """An exception's text on one line, without the ANSI colours delta-rs puts in it."""
    import re

    return re.sub(r"\x1b\[[0-9;]*m", "", " ".join(str(error).split()))[:limit]
