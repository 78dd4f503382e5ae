"""The types between planning and running: a request, a plan, a result (no Ray, no lake I/O)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import pyarrow as pa

if TYPE_CHECKING:
    from moderation.config import ModelSpec
    from moderation.scoring.selection import Selection
    from moderation.storage.catalog import CatalogSnapshot

RunKind = Literal["backfill", "rescan"]
ChangeSource = Literal["auto", "cdf", "anti_join"]
CHANGE_SOURCES: tuple[str, ...] = ("auto", "cdf", "anti_join")


@dataclass(frozen=True, kw_only=True)
class ScoringRequest:
    """What the user asked for, as given on the command line (nothing resolved yet).

    ``where``, ``limit`` and ``catalog_version`` are read by backfill plans, ``change_source`` by
    re-scan plans; a resumed run replaces them by what its ``runs`` row recorded.
    """

    catalog_uri: str
    lake_root: str
    policy_path: str | Path
    run_id: str | None = None
    where: str | None = None
    limit: int | None = None
    catalog_version: int | None = None
    change_source: ChangeSource = "auto"
    ray_address: str | None = None
    profile_path: str | Path | None = None
    models_dir: Path | None = None
    column_map: Mapping[str, str] | None = None
    media_roots: tuple[str, ...] | list[str] | None = None
    progress: bool = True
    force: bool = False


@dataclass(frozen=True, kw_only=True)
class ScoringPlan:
    """What one run scores and records, whatever kind of run planned it.

    Attributes:
        kind: the ``runs.kind`` of the run (also names its progress bar and removals commit).
        models: the registry entries scored, in scoring order (digests as recorded in ``runs``).
        selections: model id -> the pairs that model scores (stream + driver quarantine).
        snapshot: the pinned catalog snapshot the stream reads.
        removals: ``REMOVALS_SCHEMA`` rows (``run_id`` filled in at commit) or None.
        where_expr, item_limit: the slice the plan selected (``runs.where_expr``/``item_limit``).
        change_source, baseline_run_id, baseline_versions, unchanged_pairs: re-scan provenance
            (``runs`` columns; None for a backfill).
        notes: warnings printed with the summary.
        write_nothing: the plan found nothing to do and the run writes nothing at all (no
            ``runs`` row): a new re-scan with nothing changed.
    """

    kind: RunKind
    models: tuple[ModelSpec, ...]
    selections: Mapping[str, Selection]
    snapshot: CatalogSnapshot
    removals: pa.Table | None = None
    where_expr: str | None = None
    item_limit: int | None = None
    change_source: str | None = None
    baseline_run_id: str | None = None
    baseline_versions: tuple[str, ...] | None = None
    unchanged_pairs: int | None = None
    notes: tuple[str, ...] = ()
    write_nothing: bool = False

    def __post_init__(self) -> None:
        missing = [m.model_id for m in self.models if m.model_id not in self.selections]
        if missing:
            raise ValueError(f"plan has no selection for model(s) {missing}")

    @property
    def modalities(self) -> tuple[str, ...]:
        return tuple(sorted({m.modality for m in self.models}))

    @property
    def catalog_version(self) -> int | None:
        return self.snapshot.version

    @property
    def selected_pairs(self) -> int:
        """(item, modality, model) pairs the run must account for: scored + quarantined."""
        return sum(self.selections[m.model_id].selected(m.modality) for m in self.models)

    @property
    def removed_pairs(self) -> int | None:
        """Pairs recorded in ``removals`` (None: the plan kind records none)."""
        return None if self.removals is None else self.removals.num_rows

    @property
    def streams(self) -> bool:
        """Whether any model streams catalog rows (Ray is needed)."""
        return any(self.selections[m.model_id].stream_pairs.get(m.modality, 0) for m in self.models)

    def runs_fields(self) -> dict:
        """The plan's provenance as ``runs`` columns (a key is left out when the plan kind has none)."""
        out: dict = {"where_expr": self.where_expr, "item_limit": self.item_limit}
        provenance = {"change_source": self.change_source, "baseline_run_id": self.baseline_run_id,
                      "baseline_versions": None if self.baseline_versions is None else list(self.baseline_versions),
                      "unchanged_pairs": self.unchanged_pairs, "removed_pairs": self.removed_pairs}
        if self.removals is not None or self.change_source is not None:
            out.update(provenance)
        return out


@dataclass(frozen=True)
class ScoringResult:
    run_id: str
    status: str
    catalog_version: int | None
    selected_pairs: int
    scored_pairs: int
    quarantined_pairs: int
    chunks_committed: int
    modalities: tuple[str, ...]
    already_done: bool = False
    kind: str = "backfill"
    #: Re-scans: pairs skipped as unchanged, pairs recorded as removed, how changes were found.
    unchanged_pairs: int | None = None
    removed_pairs: int | None = None
    change_source: str | None = None
    baseline_run_id: str | None = None
    #: A re-scan that found nothing to score or remove (and wrote nothing).
    nothing_changed: bool = False
    notes: tuple[str, ...] = ()
    #: Pairs quarantined as ``score_error`` (the model failed on them after the in-run retries).
    score_error_pairs: int | None = None

    def summary(self) -> str:
        if self.nothing_changed:
            return (f"rescan: nothing changed since run {self.baseline_run_id or '(none)'} (catalog version "
                    f"{self.catalog_version}, {self.unchanged_pairs} pairs unchanged, found by "
                    f"{self.change_source}); nothing written")
        head = f"run {self.run_id}: {self.status}"
        if self.already_done:
            head += " (already finished; nothing written)"
        lines = [
            head,
            f"  catalog version {self.catalog_version}, modalities {', '.join(self.modalities)}",
            f"  selected pairs {self.selected_pairs} = scored {self.scored_pairs} + quarantined "
            f"{self.quarantined_pairs}  [{'OK' if self.balanced else 'MISMATCH'}]",
        ]
        if self.kind == "rescan":
            lines.append(f"  unchanged pairs {self.unchanged_pairs} (skipped), removed pairs {self.removed_pairs} "
                         f"(retired at the next decide); changes found by {self.change_source}"
                         + (f" since run {self.baseline_run_id}" if self.baseline_run_id else ""))
        if self.score_error_pairs:
            lines.append(f"  score errors {self.score_error_pairs} (the model failed after retries; quarantined as "
                         f"score_error, retried by the next rescan)")
        lines.append(f"  chunks committed this invocation: {self.chunks_committed}")
        lines.extend(f"  note: {n}" for n in self.notes)
        return "\n".join(lines)

    @property
    def balanced(self) -> bool:
        return self.selected_pairs == self.scored_pairs + self.quarantined_pairs


#: The name callers used before re-scans shared the result type.
BackfillResult = ScoringResult
