"""Run identity and provenance: run ids, code version, the runs row skeleton."""

from __future__ import annotations

import datetime as dt
import subprocess
import uuid
from functools import lru_cache

from moderation import __version__
from moderation.config import PROJECT_ROOT


def new_run_id(kind: str) -> str:
    now = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    return f"{kind}-{now}-{uuid.uuid4().hex[:6]}"


@lru_cache(maxsize=1)
def code_version() -> str:
    """Package version plus the git commit when run from a checkout (``+dirty`` if modified)."""
    try:
        sha = subprocess.run(
            ["git", "-C", str(PROJECT_ROOT), "rev-parse", "--short=12", "HEAD"],
            capture_output=True, text=True, timeout=5, check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(PROJECT_ROOT), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, timeout=5, check=True,
        ).stdout.strip()
        return f"{__version__}+g{sha}{'.dirty' if dirty else ''}"
    except (OSError, subprocess.SubprocessError):
        return __version__


def run_row(**fields) -> dict:
    """A runs row with every column present (missing ones null)."""
    from moderation.schemas import RUNS_SCHEMA

    row = {name: None for name in RUNS_SCHEMA.names}
    unknown = set(fields) - set(row)
    if unknown:
        raise KeyError(f"not runs columns: {sorted(unknown)}")
    row.update(fields)
    return row
