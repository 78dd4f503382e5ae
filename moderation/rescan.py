"""Incremental re-scans: score only what changed since the last successful run.

A (item, modality, model) pair is selected when, compared with the lake's *baseline* (the
newest ``scores`` or ``quarantine`` row of the pair, not retired by a ``removals`` row):

* it is new (no baseline row, or the pair was removed and has come back),
* its content hash changed (text: the normalized text fields; media: the bytes), or
* its model version changed (the registry digest differs from the one that scored it), or
* the item attributes ``scores`` carries for decide changed (markets, explicit, language, item
  type): decisions per market and explicit exemptions follow the catalog, or
* it was scored partially under an item limit (``coverage_reason`` has ``limit_words`` or
  ``limit_seconds``) that the run's ``max_item_words`` / ``max_item_seconds`` now exceeds: more of
  it would be scored now (issue 13), or
* its last word is a quarantine row with a reason that may pass on its own
  (``classifiers.base.RETRIED_REASONS``: ``score_error``, an OCR timeout, an unreadable media
  read): the model or the store may work now though the content did not change (issue 15).
  Permanent reasons (too large, empty, no usable text, bad ids) wait for the content to change.

Which catalog rows are looked at:

* ``cdf``: when the catalog is a Delta table with the change data feed enabled and a successful
  full run (backfill or re-scan, no ``--where``/``--limit``) of the same catalog with the same
  model versions exists, only the item ids the feed lists between that run's catalog version and
  now are read and hashed; every other item is known to be as that run left it.
* ``anti_join``: otherwise every row is read and hashed and compared with the baseline.

Pairs present in the baseline but gone from the catalog (the item deleted, or its cover/audio
URI removed) are written to ``removals``; ``decide`` then ignores their scores, so their
violations are retired in the next decide. A re-scan that finds nothing to score or remove
writes nothing at all.

The baseline tables' versions, the change source and the baseline run are recorded in the
run's ``runs`` row, so a killed re-scan resumes with exactly the same selection.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from moderation.catalog import (
    CatalogSnapshot,
    modality_mask,
    to_work_rows,
    utf8_sanitize,
)
from moderation.classifiers.base import RETRIED_REASONS, RunContext, build_classifier
from moderation.classifiers.audio import LIMIT_SECONDS
from moderation.classifiers.windows import LIMIT_WORDS
from moderation.config import ModelSpec
from moderation.errors import ModerationError
from moderation.lake import Lake, storage_options
from moderation.schemas import REMOVALS_SCHEMA
from moderation.scoring.plan import CHANGE_SOURCES, ChangeSource, ScoringPlan, ScoringRequest, ScoringResult
from moderation.scoring.run import PreparedRun, execute
from moderation.selection import SCAN_ROWS, PreludeRow, Selection, _usable_id_mask

log = logging.getLogger(__name__)

#: The lake tables a re-scan compares with (their versions are pinned in ``runs``).
BASELINE_TABLES = ("scores", "quarantine", "removals")


@dataclass
class RescanPlan:
    """What a re-scan scores (one Selection per model) and removes."""

    selections: dict[str, Selection]
    removals: pa.Table  # REMOVALS_SCHEMA rows without run_id / removed_at filled in
    change_source: str
    baseline_run_id: str | None
    baseline_versions: dict[str, int | None]
    unchanged_pairs: int = 0
    rows_read: int = 0
    notes: list[str] = field(default_factory=list)

    def selected(self, models: list[ModelSpec]) -> int:
        return sum(self.selections[m.model_id].selected(m.modality) for m in models)

    @property
    def removed_pairs(self) -> int:
        return self.removals.num_rows


def pinned_versions(lake: Lake) -> dict[str, int | None]:
    return {t: lake.version(t) for t in BASELINE_TABLES}


def encode_versions(versions: dict[str, int | None]) -> list[str]:
    return [f"{t}={'' if v is None else v}" for t, v in sorted(versions.items())]


def decode_versions(values: list[str] | None) -> dict[str, int | None]:
    out: dict[str, int | None] = {t: None for t in BASELINE_TABLES}
    for item in values or []:
        name, _, v = item.partition("=")
        out[name] = int(v) if v else None
    return out


#: Item attributes copied into ``scores`` that decide and the reports read: a change re-scores
#: the item's pairs so its decisions (per market, explicit exemptions) follow the catalog.
ATTRIBUTES = ("item_type", "language", "markets", "explicit")


def attribute_keys(rows: pa.Table) -> list[str]:
    """One comparable string per row of its ATTRIBUTES (markets as a sorted set)."""
    cols = {a: rows.column(a).to_pylist() if a in rows.column_names else [None] * rows.num_rows for a in ATTRIBUTES}
    return [f"{t}\x1f{lang}\x1f{','.join(sorted(set(m))) if m else ''}\x1f{e}"
            for t, lang, m, e in zip(cols["item_type"], cols["language"], cols["markets"], cols["explicit"])]


#: ``coverage_reason`` values that mean "cut by the run's item limit" (words of text, seconds of audio).
ITEM_LIMITS = (LIMIT_WORDS, LIMIT_SECONDS)


def cut_at(rows: pa.Table) -> np.ndarray:
    """Per ``scores`` row, the units scored when an item limit (``max_item_words`` or
    ``max_item_seconds``) cut the item (NaN: not cut by a limit, or scored before coverage was
    recorded)."""
    if "coverage_reason" not in rows.column_names or "units_scored" not in rows.column_names:
        return np.full(rows.num_rows, np.nan)
    reasons = rows.column("coverage_reason").to_pylist()
    scored = rows.column("units_scored").to_pylist()
    return np.array([float(n) if r and any(x in r.split(",") for x in ITEM_LIMITS) and n is not None else np.nan
                     for r, n in zip(reasons, scored)], dtype=np.float64)


def item_limit(classifier) -> int | None:
    """The units of an item ``classifier`` scores at most in this run: words for text models,
    seconds for audio (None: no item limit)."""
    for name in ("max_item_words", "max_item_seconds"):
        if getattr(classifier, name, None) is not None:
            return getattr(classifier, name)
    return None


def raised_limit(base: pd.DataFrame, limits: dict[str, int | None]) -> pd.Series:
    """Baseline pairs cut by an item limit below the current one (``limits``: model id -> the
    units its classifier scores at most now; None: the model has no item limit). A model's unit
    never changes (text: words, audio: seconds), so the comparison is like with like."""
    limit = base["model_id"].map(lambda m: limits.get(m)).astype("float64")
    return base["cut_at"].notna() & limit.notna() & (base["cut_at"] < limit)


# --------------------------------------------------------------------------------------
# Baseline: the lake's last word on each pair
# --------------------------------------------------------------------------------------


def _run_digests(lake: Lake) -> dict[tuple[str, str], str]:
    """(run_id, model_id) -> model digest, from ``runs`` (quarantine rows carry no digest)."""
    runs = lake.read("runs", columns=["run_id", "model_ids", "model_digests"]).to_pylist()
    return {(r["run_id"], m): d for r in runs for m, d in zip(r["model_ids"] or [], r["model_digests"] or [])}


def load_baseline(lake: Lake, versions: dict[str, int | None], models: list[ModelSpec],
                  ids: pa.Array | None = None) -> pd.DataFrame:
    """The newest event per (item_id, modality, model_id) among ``scores`` and ``quarantine`` at
    the pinned versions: columns digest, state (content hash, or ``catalog:<reason>`` for a pair
    the driver quarantined), retry (a quarantine row with one of ``RETRIED_REASONS``), present
    (False when a later ``removals`` row retired it)."""
    model_ids = [m.model_id for m in models]
    cols = ["item_id", "modality", "model_id", "digest", "state", "event_at", "attrs", "cut_at", "retry"]

    def flt(extra=None):
        f = pc.field("model_id").isin(model_ids)
        if ids is not None:
            f = f & pc.field("item_id").isin(ids)
        return f

    parts = []
    if versions.get("scores") is not None:
        # Coverage columns exist in lakes written since issue 13 (older rows read them as null).
        have = set(lake.open("scores", version=versions["scores"]).schema().to_arrow().names)
        coverage = [c for c in ("units_scored", "coverage_reason") if c in have]
        s = lake.read("scores", version=versions["scores"], filter=flt(),
                      columns=["item_id", "modality", "model_id", "model_digest", "content_hash", "scored_at",
                               *ATTRIBUTES, *coverage])
        parts.append(pd.DataFrame({
            "item_id": s.column("item_id").to_numpy(zero_copy_only=False),
            "modality": s.column("modality").to_numpy(zero_copy_only=False),
            "model_id": s.column("model_id").to_numpy(zero_copy_only=False),
            "digest": s.column("model_digest").to_numpy(zero_copy_only=False),
            "state": s.column("content_hash").to_numpy(zero_copy_only=False),
            "event_at": s.column("scored_at").to_pandas(),
            "attrs": attribute_keys(s),
            "cut_at": cut_at(s),
            "retry": False,
        }))
    if versions.get("quarantine") is not None:
        # Only the columns the baseline needs (``content_hash`` exists in lakes written since it was added).
        have = set(lake.open("quarantine", version=versions["quarantine"]).schema().to_arrow().names)
        q = lake.read("quarantine", version=versions["quarantine"], filter=flt() & pc.field("item_id").is_valid(),
                      columns=[c for c in ("item_id", "modality", "model_id", "run_id", "stage", "reason",
                                           "content_hash", "quarantined_at") if c in have])
        qd = q.to_pandas()
        if "content_hash" not in qd.columns:
            qd["content_hash"] = None
        digests = _run_digests(lake)
        state = np.where(qd["stage"] == "catalog", "catalog:" + qd["reason"].astype(str), qd["content_hash"])
        parts.append(pd.DataFrame({
            "item_id": qd["item_id"], "modality": qd["modality"], "model_id": qd["model_id"],
            "digest": [digests.get((r, m)) for r, m in zip(qd["run_id"], qd["model_id"])],
            "state": state, "event_at": qd["quarantined_at"], "attrs": None, "cut_at": np.nan,
            "retry": (qd["reason"].isin(sorted(RETRIED_REASONS)) & (qd["stage"] != "catalog")).to_numpy(dtype=bool),
        }))
    if not parts:
        return pd.DataFrame(columns=[*cols, "present"])
    events = pd.concat([p for p in parts if not p.empty] or parts[:1], ignore_index=True)
    events = events.sort_values("event_at", kind="stable").drop_duplicates(["item_id", "modality", "model_id"],
                                                                           keep="last")
    events["present"] = True
    if versions.get("removals") is not None and not events.empty:
        rflt = pc.field("item_id").isin(ids) if ids is not None else None
        r = lake.read("removals", version=versions["removals"], filter=rflt,
                      columns=["item_id", "modality", "removed_at"]).to_pandas()
        if not r.empty:
            last = r.groupby(["item_id", "modality"], as_index=False)["removed_at"].max()
            events = events.merge(last, on=["item_id", "modality"], how="left")
            events["present"] = events["removed_at"].isna() | (events["event_at"] > events["removed_at"])
            events = events.drop(columns=["removed_at"])
    return events.reset_index(drop=True)


def baseline_run(lake: Lake, catalog_uri: str, models: list[ModelSpec], *, exclude: str | None = None) -> dict | None:
    """The newest succeeded full run (backfill or rescan, no --where / --limit) of this catalog
    that scored every one of ``models`` at its current digest."""
    runs = lake.read("runs", filter=(pc.field("catalog_uri") == catalog_uri) & (pc.field("status") == "succeeded"))
    best = None
    for r in runs.to_pylist():
        if r["kind"] not in ("backfill", "rescan") or r["where_expr"] or r["item_limit"] or r["run_id"] == exclude:
            continue
        have = dict(zip(r["model_ids"] or [], r["model_digests"] or []))
        if any(have.get(m.model_id) != m.digest for m in models) or r["catalog_version"] is None:
            continue
        if best is None or (r["ended_at"], r["run_id"]) > (best["ended_at"], best["run_id"]):
            best = r
    return best


# --------------------------------------------------------------------------------------
# Change data feed
# --------------------------------------------------------------------------------------


def cdf_item_ids(snapshot: CatalogSnapshot, since_version: int) -> tuple[pa.Array | None, str]:
    """Item ids the catalog's change data feed lists after ``since_version`` up to the
    snapshot's version, or (None, why not) when the feed cannot be used."""
    from deltalake import DeltaTable

    if not snapshot.is_delta or snapshot.version is None:
        return None, "the catalog is not a Delta table"
    dt_ = DeltaTable(snapshot.uri, version=snapshot.version, storage_options=storage_options(snapshot.uri))
    if (dt_.metadata().configuration or {}).get("delta.enableChangeDataFeed", "false").lower() != "true":
        return None, "the catalog does not have delta.enableChangeDataFeed = true"
    if since_version > snapshot.version:
        return None, f"the baseline run read version {since_version}, newer than the catalog's {snapshot.version}"
    if since_version == snapshot.version:
        return pa.array([], pa.string()), ""
    id_col = snapshot.source["item_id"]
    try:
        reader = dt_.load_cdf(starting_version=since_version + 1, ending_version=snapshot.version,
                              columns=[id_col, "_change_type"])
        changes = pa.table(reader.read_all())
    except Exception as e:  # noqa: BLE001 - versions vacuumed, feed enabled later, column mapping, ...
        return None, f"the change data feed from version {since_version + 1} cannot be read ({e})"
    from moderation.catalog import _id_to_string, utf8_sanitize

    # As the catalog reads ids (decimal digits, binary as UTF-8); an id not UTF-8 is never selected.
    ids, _ = utf8_sanitize(_id_to_string(changes.column(id_col).combine_chunks()))
    return pc.unique(ids.drop_null()), ""


# --------------------------------------------------------------------------------------
# The plan
# --------------------------------------------------------------------------------------


def _any_id_in(snapshot: CatalogSnapshot, f, ids: pa.Array) -> bool:
    """Whether data file ``f`` holds any of ``ids`` (reads its id column only)."""
    return any(pc.any(pc.is_in(t.column("item_id"), value_set=ids)).as_py()
               for t in snapshot.read(f, ["item_id"], batch_rows=SCAN_ROWS))


def plan_rescan(
    snapshot: CatalogSnapshot,
    models: list[ModelSpec],
    lake: Lake,
    *,
    context: RunContext,
    versions: dict[str, int | None],
    change_source: ChangeSource = "auto",
    exclude_run: str | None = None,
) -> RescanPlan:
    """Compare the catalog snapshot with the lake's baseline at ``versions``.

    Raises:
        ModerationError: ``change_source='cdf'`` was asked for but cannot be used.
    """
    base_run = baseline_run(lake, snapshot.uri, models, exclude=exclude_run)
    candidates: pa.Array | None = None
    source, notes = "anti_join", []
    if change_source in ("auto", "cdf"):
        if base_run is None:
            why = "no successful full run of this catalog with these model versions to compare with"
        else:
            candidates, why = cdf_item_ids(snapshot, base_run["catalog_version"])
        if candidates is not None:
            source = "cdf"
        elif change_source == "cdf":
            raise ModerationError(f"catalog {snapshot.uri}: --change-source cdf cannot be used: {why}")
        else:
            notes.append(f"change data feed not used: {why}; comparing every row's content hash")
    baseline_files = None
    if base_run is not None and snapshot.is_delta:
        from moderation.catalog import open_catalog

        try:
            old = open_catalog(snapshot.uri, version=base_run["catalog_version"], column_map=dict(snapshot.source))
            baseline_files = {f.path for f in old.files}
        except ModerationError as e:  # its log may have been cleaned up: every file counts as new
            notes.append(f"catalog version {base_run['catalog_version']} of the baseline run is unreadable: {e}")

    classifiers = {m.model_id: build_classifier(m, context=context) for m in models}
    base = load_baseline(lake, versions, models)
    limits = {m.model_id: item_limit(classifiers[m.model_id]) for m in models}
    raised = raised_limit(base, limits) & base["present"].eq(True)
    retry = base["retry"].eq(True) & base["present"].eq(True)
    if retry.any():
        notes.append(f"{int(retry.sum())} pair(s) quarantined for a reason that may pass "
                     f"({', '.join(sorted(RETRIED_REASONS))}) are retried")
        if candidates is not None:  # unchanged in the catalog, but to be scored again
            more = pa.array(base.loc[retry, "item_id"].drop_duplicates().tolist(), pa.string())
            candidates = pc.unique(pa.concat_arrays([candidates, more]))
    if raised.any():
        by_model = base.loc[raised, "model_id"].value_counts()
        notes.append(f"{int(raised.sum())} pair(s) scored partially under a lower item limit are re-scored ("
                     + ", ".join(f"{m}: {n}, limit now {limits[m]}" for m, n in by_model.items()) + ")")
        if candidates is not None:  # not changed in the catalog, but to be scored again
            more = pa.array(base.loc[raised, "item_id"].drop_duplicates().tolist(), pa.string())
            candidates = pc.unique(pa.concat_arrays([candidates, more]))
    groups: dict[tuple, list[ModelSpec]] = defaultdict(list)  # models sharing content hashes
    for m in models:
        groups[classifiers[m.model_id].hash_key()].append(m)
    modalities = sorted({m.modality for m in models if snapshot.has_modality(m.modality)})

    current: dict[tuple, list[pd.DataFrame]] = defaultdict(list)
    present_ids: list[pa.Array] = []
    missing: dict[str, list[PreludeRow]] = defaultdict(list)
    invalid: dict[bytes, set[str]] = {}
    rows_read = 0
    for f in snapshot.files:
        new_file = baseline_files is None or f.path not in baseline_files
        name = os.path.basename(f.path)
        if candidates is not None and not new_file and not _any_id_in(snapshot, f, candidates):
            continue  # data files are immutable: rows of a file the baseline read changed only if listed
        for t in snapshot.read(f, snapshot.columns, batch_rows=SCAN_ROWS):
            if candidates is not None:
                keep = pc.fill_null(pc.is_in(t.column("item_id"), value_set=candidates), False)
                if new_file:  # rows without a usable id are not in the feed's id list
                    keep = pc.or_(keep, pc.invert(_usable_id_mask(t.column("item_id"))))
                t = t.filter(keep)
            if not t.num_rows:
                continue
            rows_read += t.num_rows
            ids = t.column("item_id")
            fixed, bad = utf8_sanitize(ids)
            usable = np.asarray(_usable_id_mask(ids, (fixed, bad)).to_numpy(zero_copy_only=False), dtype=bool)
            flags = {}
            for m in modalities:
                mask = modality_mask(t, m)
                flags[m] = np.ones(t.num_rows, bool) if mask is None else np.asarray(
                    mask.to_numpy(zero_copy_only=False), dtype=bool)
            bad_set = set(bad)
            raw = ids.cast(pa.binary()).to_pylist() if bad else None
            for i in np.flatnonzero(~usable):
                for m in modalities:
                    if not flags[m][i]:
                        continue
                    if i in bad_set:
                        invalid.setdefault(raw[i], set()).add(m)
                    elif new_file:
                        missing[m].append(PreludeRow(None, "missing_item_id",
                                                     f"a row of data file {name} has a null or blank item_id"))
            u = t.filter(pa.array(usable))
            present_ids.append(u.column("item_id").combine_chunks())
            for m in modalities:
                rows = u.filter(pa.array(flags[m][usable]))
                if not rows.num_rows:
                    continue
                work = to_work_rows(rows, m)
                for key, members in groups.items():
                    if members[0].modality != m:
                        continue
                    hashes = classifiers[members[0].model_id].content_hashes(work)
                    current[key].append(pd.DataFrame({
                        "item_id": work.column("item_id").to_numpy(zero_copy_only=False), "hash": hashes,
                        "attrs": attribute_keys(work)}))

    all_ids = pa.concat_arrays(present_ids) if present_ids else pa.array([], pa.string())
    counts = pc.value_counts(all_ids) if len(all_ids) else None
    dup_rows: dict[str, int] = {}
    if counts is not None:
        many = pc.greater(counts.field("counts"), 1)
        dup_rows = dict(zip(counts.field("values").filter(many).to_pylist(), counts.field("counts").filter(many).to_pylist()))
    dup_ids = set(dup_rows)
    excluded = pa.array([d.encode("utf-8") for d in sorted(dup_ids)] + sorted(invalid), pa.binary())
    cur_ids = set(all_ids.to_pylist()) if len(all_ids) else set()

    if candidates is not None:
        # Pairs the feed does not list are as the baseline run left them: unchanged.
        outside = ~base["item_id"].isin(candidates.to_pylist())
        unchanged_outside = int((outside & base["present"]).sum())
        base = base[~outside]
    else:
        unchanged_outside = 0
    selections: dict[str, Selection] = {}
    unchanged = unchanged_outside
    for key, members in groups.items():
        frames = current.get(key)
        cur = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["item_id", "hash", "attrs"])
        dups_here = cur[cur["item_id"].isin(dup_ids)]
        cur = cur[~cur["item_id"].isin(dup_ids)]
        for m in members:
            b = base[base["model_id"] == m.model_id][["item_id", "digest", "state", "present", "attrs", "cut_at",
                                                      "retry"]]
            merged = cur.merge(b.rename(columns={"attrs": "attrs_base"}), on="item_id", how="left")
            present = merged["present"].eq(True)
            cut_short = raised_limit(merged.assign(model_id=m.model_id), limits)
            # Item attributes decide reads from scores (markets, explicit, language, item type):
            # compared where the baseline is a scores row (quarantine rows carry none).
            moved = merged["attrs_base"].notna() & (merged["attrs_base"] != merged["attrs"])
            changed = (~present | (merged["digest"] != m.digest) | (merged["state"] != merged["hash"]) | moved
                       | cut_short | merged["retry"].eq(True))
            keep = merged.loc[changed, "item_id"]
            unchanged += int((~changed).sum())
            prelude = list(missing.get(m.modality, []))
            state_of = dict(zip(b["item_id"], zip(b["state"], b["digest"], b["present"])))

            def seen(item: str, reason: str, _m=m, _s=state_of) -> bool:
                st = _s.get(item)
                return st is not None and bool(st[2]) and st[0] == f"catalog:{reason}" and st[1] == _m.digest

            for item in sorted(set(dups_here["item_id"])):
                if not seen(item, "duplicate_item_id"):
                    prelude.append(PreludeRow(item, "duplicate_item_id",
                                              f"item_id appears on {dup_rows[item]} rows of the catalog snapshot; "
                                              f"none of them is scored"))
                else:
                    unchanged += 1
            for raw_id, mods in sorted(invalid.items()):
                if m.modality not in mods:
                    continue
                shown = raw_id.decode("utf-8", "backslashreplace")
                if not seen(shown, "invalid_item_id"):
                    prelude.append(PreludeRow(shown, "invalid_item_id",
                                              f"item_id is not valid UTF-8: {shown[:80]!r}"))
                else:
                    unchanged += 1
            selections[m.model_id] = Selection(
                keep_ids=pa.array(keep.tolist(), pa.string()), excluded=excluded,
                stream_pairs={m.modality: int(changed.sum())}, prelude={m.modality: prelude}, rows_scanned=rows_read,
            )
    for m in models:  # a modality the catalog cannot hold: nothing to score
        selections.setdefault(m.model_id, Selection(keep_ids=pa.array([], pa.string()), excluded=excluded))

    # Pairs the baseline has that the catalog no longer has.
    gone_rows: list[dict] = []
    if not base.empty:
        live = base[base["present"]][["item_id", "modality"]].drop_duplicates()
        now_pairs = set()
        for key, frames in current.items():
            modality = key[0]
            for fr in frames:
                now_pairs.update((i, modality) for i in fr["item_id"])
        for item in invalid:
            now_pairs.update((item.decode("utf-8", "backslashreplace"), mo) for mo in invalid[item])
        for item, modality in live.itertuples(index=False):
            if (item, modality) in now_pairs:
                continue
            gone_rows.append({"item_id": item, "modality": modality,
                              "reason": "media_removed" if item in cur_ids else "item_deleted"})
    removals = pa.Table.from_pylist(
        [{**r, "run_id": "", "catalog_uri": snapshot.uri, "catalog_version": snapshot.version,
          "removed_at": dt.datetime.now(dt.timezone.utc)} for r in sorted(gone_rows, key=lambda r: (r["item_id"], r["modality"]))],
        schema=REMOVALS_SCHEMA,
    )
    return RescanPlan(
        selections=selections, removals=removals, change_source=source,
        baseline_run_id=base_run["run_id"] if base_run else None, baseline_versions=dict(versions),
        unchanged_pairs=unchanged, rows_read=rows_read, notes=notes,
    )


def plan_rescan_run(prepared: PreparedRun) -> ScoringPlan:
    """The ``ScoringPlan`` of a re-scan run: ``plan_rescan`` against the baseline versions the run
    pins (a resume: those its ``runs`` row recorded, with its change source), so a killed re-scan
    resumes with exactly the same selection. A new re-scan that finds nothing to score or remove
    is planned as ``write_nothing``."""
    existing, request = prepared.existing, prepared.request
    versions = decode_versions(existing.get("baseline_versions")) if existing else pinned_versions(prepared.lake)
    models = list(prepared.models)
    plan = plan_rescan(prepared.snapshot, models, prepared.lake, context=prepared.context, versions=versions,
                       exclude_run=prepared.run_id,
                       change_source=(existing.get("change_source") if existing else None) or request.change_source)
    return ScoringPlan(
        kind="rescan", models=prepared.models, selections=plan.selections, snapshot=prepared.snapshot,
        removals=plan.removals, where_expr=prepared.where, item_limit=prepared.limit,
        change_source=plan.change_source, baseline_run_id=plan.baseline_run_id,
        baseline_versions=tuple(encode_versions(versions)), unchanged_pairs=plan.unchanged_pairs,
        notes=tuple(plan.notes),
        write_nothing=existing is None and plan.selected(models) == 0 and plan.removed_pairs == 0,
    )


def run_rescan(
    *,
    catalog_uri: str,
    lake_root: str,
    policy_path,
    run_id: str | None = None,
    change_source: ChangeSource = "auto",
    ray_address: str | None = None,
    profile_path=None,
    models_dir=None,
    column_map: dict[str, str] | None = None,
    media_roots: list[str] | None = None,
    progress: bool = True,
    force: bool = False,
) -> ScoringResult:
    """Score only the pairs that changed since the last successful run (see the module
    docstring); record removed pairs. Same resume and exactly-once guarantees as a backfill
    (the same ``run_scoring`` runs the plan).

    Args:
        change_source: ``auto`` (the change data feed when usable, else the content-hash
            anti-join), ``cdf`` (fail if the feed cannot be used) or ``anti_join``.
        force: go on when the evaluation gate blocks the policy version (recorded in ``runs``).

    Returns:
        A ``ScoringResult`` with ``kind='rescan'`` (``nothing_changed`` when nothing was written).
    """
    if change_source not in CHANGE_SOURCES:
        raise ModerationError(f"--change-source {change_source!r}: expected auto, cdf or anti_join")
    request = ScoringRequest(
        catalog_uri=catalog_uri, lake_root=lake_root, policy_path=policy_path, run_id=run_id,
        change_source=change_source, ray_address=ray_address, profile_path=profile_path, models_dir=models_dir,
        column_map=column_map, media_roots=media_roots, progress=progress, force=force,
    )
    return execute(request, kind="rescan", planner=plan_rescan_run)
