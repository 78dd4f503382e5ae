"""Enforcement export: the actions the live version of each policy takes, for downstream systems.

``<lake>/enforcement`` holds one row per (policy_id, item_id, category, market) that the live
version of the policy flags as a violation (reviews are not exported). A ``violations`` row
becomes one row per market of its ``scope_markets`` (a row with ``market_scope`` M: market M; a
``"*"`` row: the item's markets that have no override for the category), or one row with market
``"*"`` when that is null (the item lists no market). Rows decided before ``scope_markets``
existed (null there while the item lists markets) get their markets from the policy's overrides,
as decide gives them now.

The export is a Delta MERGE keyed (policy_id, item_id, category, market): changed rows are
updated, new ones inserted, and rows of the policy that the live version no longer flags are
deleted, so the table always holds exactly the live version's current actions. The table is
created with the change data feed on: consumers read what changed since the version they last
processed (``DeltaTable.load_cdf(starting_version=…)``: insert, update_postimage, delete).

Exactly once per policy version: each merge commits the app transaction
``moderation/enforcement/<policy_id>/v<version>`` with the ``violations`` table version it read,
and an export whose app transaction already records that version (and whose rows are all of this
version) writes nothing, because delta-rs records app transactions but does not skip a
duplicate by itself.

Library only (``moderation enforce`` calls :func:`run_enforce`); no Ray, no Spark.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from moderation.clock import utcnow
from moderation.config import ALL_MARKETS, Policy, load_model_registry, load_policy
from moderation.errors import ModerationError
from moderation.policy.lifecycle import check_immutable, effective_status, latest_run, policy_runs
from moderation.runs import PolicyProvenance, RunRecord, RunTiming, new_run_id, write_run
from moderation.schemas import ENFORCEMENT_SCHEMA, STR_LIST
from moderation.storage.lake import Lake, sql_literal

log = logging.getLogger(__name__)

KEYS = ("policy_id", "item_id", "category", "market")
#: A matched row is rewritten only when one of these differs (unchanged rows keep their
#: ``run_id`` / ``exported_at`` and produce no change-feed rows).
COMPARED = ("policy_version", "action", "severity", "threshold", "score", "decide_run_id")
TABLE_CONFIGURATION = {"delta.enableChangeDataFeed": "true"}
_VIOLATION_COLUMNS = ["policy_id", "policy_version", "item_id", "category", "market_scope", "markets",
                      "scope_markets", "action", "severity", "score", "threshold", "run_id"]


def app_id(policy_id: str, version: int) -> str:
    """The app transaction id an export of one policy version commits with."""
    return f"moderation/enforcement/{policy_id}/v{version}"


def enforcement_rows(violations: pa.Table, policy: Policy, *, run_id: str, now) -> pa.Table:
    """Export rows of one policy version's violation rows (pure).

    Args:
        violations: ``violations`` rows of the version with decision ``violation`` (at least the
            columns in ``_VIOLATION_COLUMNS``; ``scope_markets`` may be missing: rows decided
            before it existed).
        policy: the version; its overrides are read only for rows without ``scope_markets``.
    """
    if "scope_markets" not in violations.column_names:
        violations = violations.append_column("scope_markets", pa.nulls(violations.num_rows, STR_LIST))
    df = violations.select(_VIOLATION_COLUMNS).to_pandas()
    if df.empty:
        return ENFORCEMENT_SCHEMA.empty_table()
    listed = df["markets"].map(len, na_action="ignore").fillna(0).gt(0)
    legacy = (df["scope_markets"].isna() & listed).to_numpy()
    out = df[~legacy].explode("scope_markets")
    out = out.assign(market=out["scope_markets"].fillna(ALL_MARKETS))
    out = pd.concat([out, _legacy_markets(df[legacy], policy)], ignore_index=True).drop_duplicates(list(KEYS))
    out = out.rename(columns={"run_id": "decide_run_id"}).assign(run_id=run_id, exported_at=now)
    out = out.sort_values(["item_id", "category", "market"], kind="stable")
    return pa.Table.from_pandas(out[ENFORCEMENT_SCHEMA.names], schema=ENFORCEMENT_SCHEMA, preserve_index=False)


def _legacy_markets(df: pd.DataFrame, policy: Policy) -> pd.DataFrame:
    """Rows decided before ``scope_markets`` existed (their item lists markets), with ``market``:
    ``market_scope`` for a market row; for a ``"*"`` row, each of the item's markets with no
    override for the category in ``policy``."""
    scoped = df[df["market_scope"] != ALL_MARKETS].assign(market=lambda d: d["market_scope"])
    star = df[df["market_scope"] == ALL_MARKETS].explode("markets")
    star = star[star["markets"].notna()].assign(market=lambda d: d["markets"])
    overridden = pd.DataFrame(
        [(c, m) for c in policy.categories for m in policy.market_overrides(c)], columns=["category", "market"]
    )
    if not overridden.empty and not star.empty:
        hit = star[["category", "market"]].merge(overridden.assign(_o=True), on=["category", "market"], how="left")
        star = star[hit["_o"].isna().to_numpy()]
    return pd.concat([scoped, star], ignore_index=True)


@dataclass(frozen=True)
class EnforceResult:
    """What ``moderation enforce`` did.

    Attributes:
        run_id: the export run (None when the version was already exported).
        rows: rows the export holds for the policy now (= the live version's actions).
        inserted / updated / deleted: rows this export changed.
        already_exported: this version was exported at this ``violations`` version; nothing written.
        violations_version: the ``violations`` table version exported.
        table_version: the ``enforcement`` table version after the export.
    """

    run_id: str | None
    policy_id: str
    policy_version: int
    rows: int
    inserted: int
    updated: int
    deleted: int
    already_exported: bool
    violations_version: int
    table_version: int | None
    table_uri: str

    def summary(self) -> str:
        if self.already_exported:
            return (f"enforce: {self.policy_id} v{self.policy_version} already exported at violations version "
                    f"{self.violations_version} ({self.rows} rows in {self.table_uri}); nothing written")
        return (f"enforce {self.run_id}: {self.policy_id} v{self.policy_version} -> {self.table_uri} "
                f"(version {self.table_version}): {self.rows} rows ({self.inserted} inserted, {self.updated} "
                f"updated, {self.deleted} deleted) from violations version {self.violations_version}")


def _exported(target, app: str, violations_version: int, policy_id: str, version: int) -> bool:
    """The export already holds this version as of ``violations_version``: its app transaction
    records that version (or a later one) and every row of the policy is of this version (a
    version exported, superseded, then promoted back is exported again)."""
    committed = target.transaction_version(app)
    if committed is None or committed < violations_version:
        return False
    held = _policy_rows(target, policy_id, ["policy_version"])
    return set(pc.unique(held.column("policy_version")).to_pylist()) <= {version}


def _policy_rows(target, policy_id: str, columns: list[str]) -> pa.Table:
    """The export's rows of one policy. Filtered in memory, not pushed down: the MERGE writes
    string columns as string_view (delta-rs 1.6, delta-io/delta-rs#4579), and a PyArrow filter
    on such a file fails; a scan without a filter casts them back to string."""
    rows = target.to_pyarrow_dataset().to_table(columns=sorted({"policy_id", *columns}))
    return rows.filter(pc.field("policy_id") == policy_id).select(columns)


def _merge(lake: Lake, source: pa.Table, *, policy_id: str, app: str, violations_version: int, run_id: str,
           version: int) -> dict | None:
    """Merge ``source`` into the export in one commit carrying the app transaction, retried on
    conflict. Returns the merge metrics, or None when the export already held it."""
    key = " AND ".join(f"t.{k} = s.{k}" for k in KEYS)
    changed = " OR ".join(f"t.{c} <> s.{c}" for c in COMPARED)
    return lake.merge(
        "enforcement", source, predicate=key, app_id=app, version=violations_version,
        metadata={"moderation.run_id": run_id}, configuration=TABLE_CONFIGURATION,
        done=lambda target: _exported(target, app, violations_version, policy_id, version),
        clauses=lambda m: (
            m.when_matched_update({c: f"s.{c}" for c in ENFORCEMENT_SCHEMA.names}, predicate=changed)
            .when_not_matched_insert_all()
            .when_not_matched_by_source_delete(predicate=f"t.policy_id = {sql_literal(policy_id)}")
        ),
    )


def run_enforce(*, lake_root: str, policy_path: str | Path, run_id: str | None = None,
                models_dir: Path | None = None) -> EnforceResult:
    """Export the live version's violations to ``<lake>/enforcement`` (MERGE, change data feed).

    Raises:
        ConfigError: the policy file is invalid.
        ModerationError: the file differs from what a run used (immutability); the version is not
            live (shadow versions never reach the export); it has no succeeded decide of this file.
    """
    registry = load_model_registry(models_dir)
    loaded = load_policy(policy_path, registry)
    policy = loaded.policy
    lake = Lake(lake_root)
    check_immutable(lake, loaded)
    status = effective_status(lake, policy.policy_id, policy.version, policy.status)
    if status != "live":
        raise ModerationError(
            f"{loaded.path}: {policy.policy_id} v{policy.version} is {status}, not live: only the live version is "
            f"exported (shadow versions never reach the enforcement export); promote it first with "
            f"`moderation policy promote --lake {lake.root} --policy {loaded.path}`"
        )
    runs = policy_runs(lake, policy.policy_id)
    decide = latest_run(runs, kind="decide", version=policy.version)
    if decide is None or decide["policy_hash"] != loaded.content_hash:
        raise ModerationError(
            f"{loaded.path}: {policy.policy_id} v{policy.version} has no succeeded decide of this file "
            f"(content hash {loaded.content_hash[:12]}): run `moderation decide --lake {lake.root} "
            f"--policy {loaded.path}` first"
        )
    dt_violations = lake.require("violations", written_by="moderation decide")
    violations_version = dt_violations.version()
    run_id = run_id or new_run_id("enforce")
    timing = RunTiming.start()
    # Partition columns pushed down; decision filtered in memory (see _policy_rows). A table
    # written before scope_markets existed lacks it (enforcement_rows copes).
    have = set(dt_violations.schema().to_arrow().names)
    flagged = dt_violations.to_pyarrow_dataset().to_table(
        filter=(pc.field("policy_id") == policy.policy_id) & (pc.field("policy_version") == policy.version),
        columns=[c for c in [*_VIOLATION_COLUMNS, "decision"] if c in have],
    ).filter(pc.field("decision") == "violation")
    source = enforcement_rows(flagged, policy, run_id=run_id, now=utcnow())
    app = app_id(policy.policy_id, policy.version)
    record = RunRecord(
        run_id=run_id, kind="enforce", status="running",
        **PolicyProvenance.of(loaded, [registry[m] for m in policy.models], path=policy_path).columns(),
        baseline_versions=(f"violations={violations_version}",), **timing.columns(),
    )
    existing = lake.open("enforcement")
    if existing is not None and _exported(existing, app, violations_version, policy.policy_id, policy.version):
        return _result(lake, policy, None, violations_version, {}, already=True)
    write_run(lake, record)
    metrics = _merge(lake, source, policy_id=policy.policy_id, app=app, violations_version=violations_version,
                     run_id=run_id, version=policy.version)
    # None: another export of this version committed between the check and the merge.
    result = _result(lake, policy, run_id, violations_version, metrics or {}, already=metrics is None)
    write_run(lake, record.replace(status="succeeded", enforcement_rows=result.rows, **timing.ended()))
    log.info("enforce %s: %s v%d: %d rows", run_id, policy.policy_id, policy.version, result.rows)
    return result


def _result(lake: Lake, policy: Policy, run_id: str | None, violations_version: int, metrics: dict, *,
            already: bool) -> EnforceResult:
    table = lake.open("enforcement")
    held = _policy_rows(table, policy.policy_id, ["policy_id"]).num_rows
    return EnforceResult(
        run_id=None if already else run_id, policy_id=policy.policy_id, policy_version=policy.version, rows=held,
        inserted=int(metrics.get("num_target_rows_inserted", 0)),
        updated=int(metrics.get("num_target_rows_updated", 0)),
        deleted=int(metrics.get("num_target_rows_deleted", 0)),
        already_exported=already, violations_version=violations_version, table_version=table.version(),
        table_uri=lake.uri("enforcement"),
    )
