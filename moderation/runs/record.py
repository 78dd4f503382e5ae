"""A run's record: the typed ``runs`` row, its shared parts, and reading / writing one.

Every job (backfill, rescan, decide, diff, promote, enforce, report, review_queue,
labels_import, ...) records one row in ``<lake>/runs``, merged on ``run_id``. :class:`RunRecord`
is that row, one field per ``RUNS_SCHEMA`` column in the same order
(``tests/test_run_record.py`` keeps the two in step). :class:`PolicyProvenance` (the policy
version and models a run used) and :class:`RunTiming` (code version, start and end) are the
parts most kinds record alike, built once and spread into a record with ``**part.columns()``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import subprocess
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc

from moderation import __version__
from moderation.config import PROJECT_ROOT
from moderation.schemas import RUNS_SCHEMA
from moderation.storage.lake import Lake

if TYPE_CHECKING:
    from moderation.config import LoadedPolicy, ModelSpec


def new_run_id(kind: str) -> str:
    """``<kind>-<utc>-<6 hex>``, e.g. ``decide-20240501T120000Z-1a2b3c``."""
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


# ------------------------------------------------------------------------------------------
# The record
# ------------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class RunRecord:
    """One ``runs`` row: exactly the columns of ``moderation.schemas.RUNS_SCHEMA``, in its order,
    described there. Columns a kind does not record are None; list columns are tuples (a list
    given is made one)."""

    run_id: str
    kind: str
    status: str
    catalog_uri: str | None = None
    catalog_version: int | None = None
    where_expr: str | None = None
    item_limit: int | None = None
    policy_id: str | None = None
    policy_version: int | None = None
    policy_hash: str | None = None
    model_ids: tuple[str, ...] | None = None
    model_digests: tuple[str, ...] | None = None
    modalities: tuple[str, ...] | None = None
    categories: tuple[str, ...] | None = None
    selected_pairs: int | None = None
    scored_pairs: int | None = None
    quarantined_pairs: int | None = None
    violation_rows: int | None = None
    chunks_committed: int | None = None
    scores_version: int | None = None
    hash_bank_version: int | None = None
    catalog_columns: tuple[str, ...] | None = None
    media_roots: tuple[str, ...] | None = None
    config_hash: str | None = None
    code_version: str | None = None
    started_at: dt.datetime | None = None
    ended_at: dt.datetime | None = None
    error: str | None = None
    policy_path: str | None = None
    change_source: str | None = None
    baseline_run_id: str | None = None
    baseline_versions: tuple[str, ...] | None = None
    unchanged_pairs: int | None = None
    removed_pairs: int | None = None
    retired_rows: int | None = None
    from_version: int | None = None
    diff_rows: int | None = None
    enforcement_rows: int | None = None
    forced: bool | None = None
    promoted_to: str | None = None
    gate_status: str | None = None
    gate_detail: str | None = None
    cascade: tuple[str, ...] | None = None
    max_item_words: int | None = None
    max_item_seconds: int | None = None
    max_error_share: float | None = None
    score_error_pairs: int | None = None

    def __post_init__(self) -> None:
        for name in _LIST_COLUMNS:
            value = getattr(self, name)
            if value is not None and not isinstance(value, tuple):
                object.__setattr__(self, name, tuple(value))

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> RunRecord:
        """The record of a ``runs`` row as read from the table (``to_pylist``). Columns this code
        does not know (a newer table) are ignored; columns the row lacks (an older table) are None."""
        values: dict[str, Any] = {name: row.get(name) for name in RUN_COLUMNS}
        return cls(**values)

    def to_row(self) -> dict[str, Any]:
        """The row to write: every ``RUNS_SCHEMA`` column in order, list columns as lists."""
        row = {name: getattr(self, name) for name in RUN_COLUMNS}
        for name in _LIST_COLUMNS:
            if row[name] is not None:
                row[name] = list(row[name])
        return row

    def replace(self, **changes: Any) -> RunRecord:
        """This record with ``changes`` (``dataclasses.replace``)."""
        return dataclasses.replace(self, **changes)


#: The columns a ``RunRecord`` holds, in order (``RUNS_SCHEMA.names``).
RUN_COLUMNS: tuple[str, ...] = tuple(f.name for f in fields(RunRecord))
_LIST_COLUMNS: tuple[str, ...] = tuple(f.name for f in RUNS_SCHEMA if pa.types.is_list(f.type))


# ------------------------------------------------------------------------------------------
# Shared parts
# ------------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class PolicyProvenance:
    """The policy version and models a run used: the ``runs`` columns policy_id, policy_version,
    policy_hash, policy_path, model_ids, model_digests, modalities, categories."""

    policy_id: str
    policy_version: int
    policy_hash: str
    policy_path: str
    model_ids: tuple[str, ...] | None = None
    model_digests: tuple[str, ...] | None = None
    modalities: tuple[str, ...] | None = None
    categories: tuple[str, ...] | None = None

    @classmethod
    def of(cls, loaded: LoadedPolicy, models: Iterable[ModelSpec] | None = None, *, path: str | os.PathLike[str],
           scope: bool = False) -> PolicyProvenance:
        """The provenance of a run of ``loaded`` (a loaded policy version).

        Args:
            models: the model specs the run used (their ids and digests, in order); None: a run
                that used no model (model columns null).
            path: the policy file as the caller gave it (recorded as ``policy_path``).
            scope: also record the modalities of ``models`` and the policy's categories (sorted).
        """
        policy = loaded.policy
        specs = None if models is None else list(models)
        return cls(
            policy_id=policy.policy_id, policy_version=policy.version, policy_hash=loaded.content_hash,
            policy_path=str(path),
            model_ids=None if specs is None else tuple(m.model_id for m in specs),
            model_digests=None if specs is None else tuple(m.digest for m in specs),
            modalities=tuple(sorted({m.modality for m in specs})) if scope and specs is not None else None,
            categories=tuple(sorted(policy.categories)) if scope else None,
        )

    def columns(self) -> dict[str, Any]:
        """The ``runs`` columns it sets (those it leaves None are left out, so a record can set them)."""
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}


@dataclass(frozen=True, kw_only=True)
class RunTiming:
    """When a run started and the code that ran it: the ``runs`` columns code_version,
    started_at and (with :meth:`ended`) ended_at."""

    started_at: dt.datetime
    code_version: str

    @classmethod
    def start(cls, at: dt.datetime | None = None) -> RunTiming:
        """A run starting now (or at ``at``: a resumed run keeps its first start) under this code."""
        return cls(started_at=at or dt.datetime.now(dt.UTC), code_version=code_version())

    def columns(self) -> dict[str, Any]:
        """code_version and started_at (a run still going)."""
        return {"code_version": self.code_version, "started_at": self.started_at}

    def ended(self, at: dt.datetime | None = None) -> dict[str, Any]:
        """code_version, started_at and ended_at (now, unless ``at``)."""
        return {**self.columns(), "ended_at": at or dt.datetime.now(dt.UTC)}


# ------------------------------------------------------------------------------------------
# Reading and writing one run
# ------------------------------------------------------------------------------------------


def read_row(lake: Lake, run_id: str) -> dict[str, Any] | None:
    """The ``runs`` row of ``run_id`` as the table holds it (every column it has); None when there
    is none (or no table). :func:`read_run` is what jobs read."""
    rows = lake.read("runs", filter=pc.field("run_id") == run_id)
    if rows.num_rows == 0:
        return None
    return rows.to_pylist()[0]


def read_run(lake: Lake, run_id: str) -> RunRecord | None:
    """The record of ``run_id`` in the lake's ``runs`` table; None when there is none (or no table)."""
    row = read_row(lake, run_id)
    return None if row is None else RunRecord.from_row(row)


def write_run(lake: Lake, record: RunRecord) -> None:
    """Insert or update the one ``runs`` row of a run (merge on run_id), with commit metadata
    ``moderation.run_id``.

    Runs of other jobs merge into the same table concurrently; a conflicting commit is retried
    on the reloaded table (bounded, with backoff: ``Lake.merge``). Columns this table predates
    are added (schema evolution is additive only); rows carry the table's own column comments."""
    data = pa.Table.from_pylist([record.to_row()], schema=RUNS_SCHEMA)
    lake.merge("runs", data, predicate="t.run_id = s.run_id", schema=RUNS_SCHEMA, merge_schema=True,
               metadata={"moderation.run_id": str(record.run_id)},
               clauses=lambda m: m.when_matched_update_all().when_not_matched_insert_all())
