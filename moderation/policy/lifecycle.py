"""Policy lifecycle: a version's effective status, promotions, and immutability of used versions.

A version's file declares its *initial* status (draft, shadow or live). From then on the lake's
``runs`` table is the record: ``moderation policy promote`` writes a ``promote`` run, and the
effective status of every version of the policy follows from the succeeded promote runs:

* the version of the latest promote to ``live`` is live;
* a version promoted to live earlier, and superseded since, is ``retired``;
* a version whose latest promote was to ``shadow`` is ``shadow``;
* a version never promoted keeps its declared status, except that a declared ``live`` version
  is ``retired`` once another version has been promoted to live.

Versions are immutable once a run has used them: a run row records the policy file's content
hash, and :func:`check_immutable` refuses a file whose content differs from what a run used
under the same (policy_id, version). Promote, decide, enforce, backfill and rescan all call it
before writing anything.

Library only (``moderation policy promote`` calls :func:`run_promote`); no Ray, no Spark.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import yaml

from moderation.config import LoadedPolicy, load_model_registry, load_policy
from moderation.errors import ModerationError
from moderation.runs import PolicyProvenance, RunRecord, RunTiming, new_run_id, write_run
from moderation.schemas import RUNS_SCHEMA, VIOLATIONS_SCHEMA
from moderation.storage.lake import Lake, conform, sql_literal

log = logging.getLogger(__name__)

PromoteTarget = Literal["live", "shadow"]
PROMOTE_TARGETS: tuple[PromoteTarget, ...] = ("live", "shadow")


def policy_runs(lake: Lake, policy_id: str) -> pd.DataFrame:
    """Every ``runs`` row of one policy (every column present, older tables included), oldest
    first by end (then start) time."""
    # Filtered in memory: ``runs`` is merged into (write_run), and delta-rs 1.6 merges write
    # string_view files that a PyArrow filter pushed down to them can fail on (delta-rs#4579).
    runs = lake.read("runs")
    table = conform(runs.filter(pc.field("policy_id") == policy_id), RUNS_SCHEMA)
    df = table.to_pandas()
    if df.empty:
        return df
    df["_when"] = df["ended_at"].fillna(df["started_at"])
    return df.sort_values(["_when", "started_at", "run_id"], kind="stable", na_position="first")


def _promotions(runs: pd.DataFrame) -> pd.DataFrame:
    """Succeeded promote runs, oldest first, with their target status (``promoted_to``) in
    ``target``."""
    if runs.empty:
        return runs.assign(target=pd.Series(dtype=object))
    done = runs[(runs["kind"] == "promote") & (runs["status"] == "succeeded")]
    # Promote runs recorded before runs had promoted_to kept their target in change_source
    # (which no promote run uses otherwise): still read there, so those lakes keep their statuses.
    return done.assign(target=done["promoted_to"].fillna(done["change_source"]))


def _status_from(promotions: pd.DataFrame, version: int, declared: str) -> str:
    if promotions.empty:
        return declared
    to_live = promotions[promotions["target"] == "live"]
    live = int(to_live["policy_version"].iloc[-1]) if not to_live.empty else None
    mine = promotions[promotions["policy_version"] == version]
    if version == live:
        return "live"
    if not mine.empty:
        return "retired" if mine["target"].iloc[-1] == "live" else str(mine["target"].iloc[-1])
    if declared == "live" and live is not None:
        return "retired"
    return declared


def effective_status(lake: Lake, policy_id: str, version: int, declared: str) -> str:
    """The status of one policy version now (draft, shadow, live or retired).

    Args:
        declared: the status the version's file declares (its initial status).
    """
    return _status_from(_promotions(policy_runs(lake, policy_id)), version, declared)


def live_version(lake: Lake, policy_id: str, declared_by_version: dict[int, str]) -> int | None:
    """The live version of a policy: that of the latest succeeded promote to live, else the
    highest version whose file declares ``live`` (None when there is neither).

    Args:
        declared_by_version: version -> declared status, for the versions known (see
            :func:`declared_statuses`).
    """
    promotions = _promotions(policy_runs(lake, policy_id))
    to_live = promotions[promotions["target"] == "live"] if not promotions.empty else promotions
    if not to_live.empty:
        return int(to_live["policy_version"].iloc[-1])
    declared_live = [v for v, s in declared_by_version.items() if s == "live"]
    return max(declared_live) if declared_live else None


def declared_statuses(loaded: LoadedPolicy) -> dict[int, str]:
    """Version -> declared status of the policy's version files beside ``loaded`` (same folder,
    same policy_id); ``loaded`` itself included. Files that do not parse are skipped: only the
    loaded version is validated here."""
    policy = loaded.policy
    out: dict[int, str] = {policy.version: policy.status}
    for path in sorted(Path(loaded.path).parent.glob("*.y*ml")):
        try:
            data = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError):
            continue
        if not isinstance(data, dict) or data.get("policy_id") != policy.policy_id:
            continue
        version, status = data.get("version"), data.get("status")
        if isinstance(version, int) and isinstance(status, str) and version != policy.version:
            out[version] = status
    return out


def check_immutable(lake: Lake, loaded: LoadedPolicy) -> None:
    """Refuse a policy file whose content differs from what a run already used under the same
    (policy_id, version).

    Raises:
        ModerationError: naming the file, the (latest) run that used the version, both content
            hashes, and what to do instead (a new version file).
    """
    policy = loaded.policy
    runs = policy_runs(lake, policy.policy_id)
    if runs.empty:
        return
    # A run the evaluation gate blocked wrote nothing: the candidate may still be edited.
    used = runs[(runs["policy_version"] == policy.version) & runs["policy_hash"].notna() & (runs["status"] != "blocked")
                & (runs["policy_hash"] != loaded.content_hash)]
    if used.empty:
        return
    run = used.iloc[-1]
    raise ModerationError(
        f"{loaded.path}: policy {policy.policy_id} v{policy.version} has content hash "
        f"{loaded.content_hash[:12]}, but run {run['run_id']} ({run['kind']}) used v{policy.version} with "
        f"content hash {str(run['policy_hash'])[:12]}: versions are immutable once used; restore the "
        f"file, or put the change in a new version file (version: {_next_version(loaded)})"
    )


def _next_version(loaded: LoadedPolicy) -> int:
    return max(declared_statuses(loaded)) + 1


def latest_run(runs: pd.DataFrame, *, kind: str, version: int, **match) -> pd.Series | None:
    """The newest succeeded run of ``kind`` for ``version`` (columns equal to ``match``)."""
    if runs.empty:
        return None
    sel = (runs["kind"] == kind) & (runs["status"] == "succeeded") & (runs["policy_version"] == version)
    for column, value in match.items():
        sel &= runs[column] == value
    rows = runs[sel]
    return None if rows.empty else rows.iloc[-1]


def _ts(value) -> dt.datetime | None:
    return None if value is None or pd.isna(value) else pd.Timestamp(value).to_pydatetime()


def _when(run: pd.Series) -> dt.datetime:
    """When ``run`` (a ``policy_runs`` row) ended, or started if it has no end."""
    when = _ts(run["_when"])
    if when is None:
        raise ModerationError(f"run {run['run_id']} has neither ended_at nor started_at")
    return when


# ------------------------------------------------------------------------------------------
# Promote
# ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PromoteResult:
    """What ``moderation policy promote`` did.

    Attributes:
        run_id: the promote run (None when nothing was done).
        to: the status the version was promoted to.
        from_version: the version live before (None: none was).
        noop: the version already had that status; no run was recorded (``restamped_rows``:
            stale ``policy_status`` values repaired, normally 0: nothing written).
        forced: the decide / diff checks were skipped with ``--force``.
        restamped_rows: violations rows whose ``policy_status`` was rewritten.
    """

    run_id: str | None
    policy_id: str
    policy_version: int
    to: str
    from_version: int | None
    noop: bool
    forced: bool
    restamped_rows: int

    def summary(self) -> str:
        if self.noop:
            done = (f"{self.restamped_rows} stale violations rows restamped" if self.restamped_rows
                    else "nothing written")
            return f"promote: {self.policy_id} v{self.policy_version} is already {self.to}; {done}"
        head = f"promote {self.run_id}: {self.policy_id} v{self.policy_version} is now {self.to}"
        if self.to == "live":
            head += (f" (replacing v{self.from_version}, now retired)" if self.from_version is not None
                     else " (no version was live before)")
        tail = f"; {self.restamped_rows} violations rows restamped"
        return head + tail + ("; FORCED: the decide/diff checks were skipped" if self.forced else "")


def _require_decided(runs: pd.DataFrame, loaded: LoadedPolicy, lake: Lake) -> pd.Series:
    policy = loaded.policy
    decide = latest_run(runs, kind="decide", version=policy.version, policy_hash=loaded.content_hash)
    if decide is None:
        raise ModerationError(
            f"{policy.policy_id} v{policy.version} has no succeeded decide of this file "
            f"(content hash {loaded.content_hash[:12]}) in {lake.root}: run "
            f"`moderation decide --lake {lake.root} --policy {loaded.path}` first (or --force)"
        )
    return decide


def _require_diffed(runs: pd.DataFrame, loaded: LoadedPolicy, lake: Lake, live: int, decide: pd.Series) -> None:
    policy = loaded.policy
    command = (f"`moderation diff --lake {lake.root} --policy {policy.policy_id} "
               f"--from {live} --to {policy.version}`")
    live_decide = latest_run(runs, kind="decide", version=live)
    if live_decide is None:
        raise ModerationError(
            f"{policy.policy_id} v{live} is live but was never decided in {lake.root}, so v{policy.version} "
            f"cannot be compared with it: run `moderation decide --lake {lake.root} --policy <v{live} file>`, "
            f"then {command} (or --force)"
        )
    diff = latest_run(runs, kind="diff", version=policy.version, from_version=live)
    newest_decide = max(_when(decide), _when(live_decide))
    if diff is None or _when(diff) < newest_decide:
        state = ("no diff" if diff is None else
                 f"the latest diff ({diff['run_id']}) predates the latest decide of v{policy.version} or v{live}")
        raise ModerationError(
            f"{policy.policy_id} v{policy.version} would replace live v{live}, but there is {state} in "
            f"{lake.root}: run {command} and review it first (or --force)"
        )


def restamp_status(lake: Lake, policy_id: str, stamps: dict[int, str], *, run_id: str) -> int:
    """Rewrite ``violations.policy_status`` of some versions of one policy (version -> status)
    in one atomic commit, retried on conflict. Returns the rows rewritten.

    The versions' partitions are read and overwritten (``overwrite`` with a partition predicate,
    from the snapshot read, so a decide committing in between is a conflict and the restamp is
    redone on the new rows) rather than changed with ``DeltaTable.update``: delta-rs 1.6's
    update writes string columns as Arrow ``string_view`` (delta-io/delta-rs#4579), after which
    any PyArrow read filtering the table on a string column fails."""
    if not stamps or not lake.exists("violations"):
        return 0
    versions = sorted(int(v) for v in stamps)
    predicate = f"policy_id = {sql_literal(policy_id)} AND policy_version IN ({', '.join(map(str, versions))})"

    def restamped(table) -> pa.Table | None:
        rows = table.to_pyarrow_dataset().to_table(
            filter=(pc.field("policy_id") == policy_id) & pc.field("policy_version").isin(versions))
        if rows.num_rows == 0:
            return None
        status = rows.column("policy_version").to_pandas().map({int(v): s for v, s in stamps.items()})
        return rows.set_column(rows.schema.get_field_index("policy_status"), "policy_status",
                               pa.array(status.to_numpy(), pa.string()))

    written = lake.rewrite("violations", predicate=predicate, rows=restamped, schema=VIOLATIONS_SCHEMA,
                           metadata={"moderation.run_id": run_id})
    return 0 if written is None else written.num_rows


def stale_stamps(lake: Lake, policy_id: str, version: int, status: str) -> int:
    """Rows of one version in ``violations`` whose ``policy_status`` is not ``status``."""
    if not lake.exists("violations"):
        return 0
    rows = lake.read("violations", columns=["policy_status"],
                     filter=(pc.field("policy_id") == policy_id) & (pc.field("policy_version") == version))
    return int(pc.sum(pc.not_equal(pc.fill_null(rows.column("policy_status"), ""), status)).as_py() or 0)


def run_promote(*, lake_root: str, policy_path: str | Path, to: PromoteTarget = "live", force: bool = False,
                run_id: str | None = None, models_dir: Path | None = None) -> PromoteResult:
    """Promote a policy version to live (or shadow) and record it in ``runs``.

    To live, unless ``force``: the version must have a succeeded decide of this exact file, and
    when another version is live, a succeeded diff from the live version to this one that ended
    after both versions' latest decides. The promote run (kind ``promote``; ``from_version``: the
    version live before; ``forced``) is recorded first: it is what makes the new status effective.
    Then ``violations.policy_status`` of this version (``live`` / ``shadow``) and of the
    previously live one (``retired``) is rewritten. A decide racing with the promotion stamps its
    rows again after its own commit when the status changed meanwhile (see ``run_decide``), and a
    promote that died before restamping is repaired by running it again (a no-op otherwise).

    Raises:
        ConfigError: the policy file is invalid.
        ModerationError: the file differs from what a run used (immutability), ``to`` is not live
            or shadow, a check failed (the message names the command to run), or the live version
            would be moved back to shadow.
    """
    if to not in PROMOTE_TARGETS:
        raise ModerationError(f"--to {to!r}: a version is promoted to one of {list(PROMOTE_TARGETS)}")
    registry = load_model_registry(models_dir)
    loaded = load_policy(policy_path, registry)
    policy = loaded.policy
    lake = Lake(lake_root)
    check_immutable(lake, loaded)
    runs = policy_runs(lake, policy.policy_id)
    promotions = _promotions(runs)
    current = _status_from(promotions, policy.version, policy.status)
    live = live_version(lake, policy.policy_id, declared_statuses(loaded))
    if (to == "live" and live == policy.version) or (to == "shadow" and current == "shadow"):
        stale = stale_stamps(lake, policy.policy_id, policy.version, to)
        if stale:  # a promote that died between recording its run and restamping
            restamp_status(lake, policy.policy_id, {policy.version: to}, run_id=run_id or new_run_id("promote"))
        return PromoteResult(run_id=None, policy_id=policy.policy_id, policy_version=policy.version, to=to,
                             from_version=live, noop=True, forced=bool(force), restamped_rows=stale)
    if to == "shadow" and live == policy.version:
        raise ModerationError(
            f"{policy.policy_id} v{policy.version} is live: promote another version to live to replace it "
            "(it is then retired); a live version is not moved back to shadow"
        )
    if to == "live" and not force:
        decide = _require_decided(runs, loaded, lake)
        if live is not None and live != policy.version:
            _require_diffed(runs, loaded, lake, live, decide)

    run_id = run_id or new_run_id("promote")
    timing = RunTiming.start()
    write_run(lake, RunRecord(
        run_id=run_id, kind="promote", status="succeeded",
        **PolicyProvenance.of(loaded, [registry[m] for m in policy.models], path=policy_path).columns(),
        from_version=live if to == "live" else None, forced=bool(force), promoted_to=to, **timing.ended(),
    ))
    stamps: dict[int, str] = {policy.version: to}
    if to == "live" and live is not None and live != policy.version:
        stamps[live] = "retired"
    restamped = restamp_status(lake, policy.policy_id, stamps, run_id=run_id)
    log.info("promote %s: %s v%d -> %s (was live: %s)", run_id, policy.policy_id, policy.version, to, live)
    return PromoteResult(run_id=run_id, policy_id=policy.policy_id, policy_version=policy.version, to=to,
                         from_version=live if to == "live" else None, noop=False, forced=bool(force),
                         restamped_rows=restamped)
