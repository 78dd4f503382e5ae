"""Re-scan planning streams (issue 16): the baseline is computed by DataFusion over the lake and
the catalog is hashed batch by batch into a spill, so the driver's Python memory does not grow
with the catalog or ``scores``; splitting the ids into buckets changes no plan. Without Ray:
tiny real Delta catalogs and lakes written here, the real text model's content hashes."""

from __future__ import annotations

import datetime as dt
import re
import tracemalloc
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pytest
from deltalake import write_deltalake

import moderation.scoring.rescan as rescan
from moderation.classifiers.base import SCORE_ERROR, RunContext, build_classifier
from moderation.config import load_model_registry, load_policy
from moderation.schemas import CATALOG_SCHEMA, QUARANTINE_SCHEMA, REMOVALS_SCHEMA, SCORES_SCHEMA
from moderation.storage.catalog import open_catalog, to_work_rows
from moderation.storage.lake import Lake
from tests.conftest import POLICY_V1

T0 = dt.datetime(2024, 5, 1, tzinfo=dt.timezone.utc)


def _models():
    registry = load_model_registry(None)
    return [registry[m] for m in load_policy(POLICY_V1, registry).policy.models]


def _rows(ids, **change) -> list[dict]:
    return [{"item_id": i, "item_type": "track", "title": f"song {i}", "language": "en", "markets": ["US", "FR"],
             "explicit": False, "updated_at": T0, **change.get(i, {})} for i in ids]


def _lake(tmp_path, rows: list[dict], *, digest=None) -> Lake:
    """A lake whose ``scores`` hold one row per (item, text model) of ``rows`` as the real
    classifier hashes them, scored at T0 (``digest``: per item, another model digest)."""
    lake = Lake(str(tmp_path / "lake"))
    table = pa.Table.from_pylist(rows, schema=CATALOG_SCHEMA)
    out = []
    for m in _models():
        work = to_work_rows(table, m.modality)
        hashes = build_classifier(m, context=RunContext(lake_root=lake.root)).content_hashes(work)
        for r, h in zip(rows, hashes):
            out.append({"run_id": "base", "item_id": r["item_id"], "item_type": r["item_type"], "modality": m.modality,
                        "model_id": m.model_id, "model_digest": (digest or {}).get(r["item_id"], m.digest),
                        "content_hash": h, "language": r["language"], "markets": r["markets"],
                        "explicit": r["explicit"], "scored_at": T0})
    write_deltalake(lake.uri("scores"), pa.Table.from_pylist(out, schema=SCORES_SCHEMA))
    return lake


def _plan(tmp_path, lake: Lake, rows: list[dict], **kw) -> rescan.RescanPlan:
    catalog = tmp_path / "catalog"
    if not catalog.exists():
        write_deltalake(str(catalog), pa.Table.from_pylist(rows, schema=CATALOG_SCHEMA))
    return rescan.plan_rescan(open_catalog(str(catalog)), _models(), lake, context=RunContext(lake_root=lake.root),
                              versions=rescan.pinned_versions(lake), change_source="anti_join", **kw)


def _summary(plan: rescan.RescanPlan) -> dict:
    return {
        "keep": {m: s.keep_ids.to_pylist() for m, s in plan.selections.items()},
        "stream": {m: s.stream_pairs for m, s in plan.selections.items()},
        "prelude": {m: [(r.item_id, r.reason, r.detail) for r in s.prelude.get("text", [])]
                    for m, s in plan.selections.items()},
        "excluded": {m: s.excluded.to_pylist() for m, s in plan.selections.items()},
        "removals": [(r["item_id"], r["modality"], r["reason"]) for r in plan.removals.to_pylist()],
        "unchanged": plan.unchanged_pairs, "rows_read": plan.rows_read, "notes": plan.notes,
    }


def _mixed_lake(tmp_path) -> tuple[Lake, list[str]]:
    """40 items scored at T0 (i008 by an older model digest); i005 and i009 quarantined for a
    reason that may pass; i007 removed after it was scored."""
    ids = [f"i{k:03d}" for k in range(40)]
    lake = _lake(tmp_path, _rows(ids), digest={"i008": "sha256:old"})
    (m,) = _models()
    q = [{"run_id": "r1", "item_id": "i005", "modality": "text", "model_id": m.model_id, "stage": "score",
          "reason": SCORE_ERROR, "quarantined_at": T0 + dt.timedelta(hours=1), "content_hash": "x"},
         # At the same instant as its scores row: the quarantine row wins.
         {"run_id": "r1", "item_id": "i009", "modality": "text", "model_id": m.model_id, "stage": "score",
          "reason": SCORE_ERROR, "quarantined_at": T0, "content_hash": "x"}]
    write_deltalake(lake.uri("quarantine"), pa.Table.from_pylist(q, schema=QUARANTINE_SCHEMA))
    gone = [{"run_id": "r0", "item_id": "i007", "modality": "text", "reason": "item_deleted", "catalog_uri": "c",
             "catalog_version": 0, "removed_at": T0 + dt.timedelta(hours=1)}]
    write_deltalake(lake.uri("removals"), pa.Table.from_pylist(gone, schema=REMOVALS_SCHEMA))
    return lake, ids


def _changed(ids: list[str]) -> list[dict]:
    now = _rows([i for i in ids if i != "i003"] + ["i004", "i040"],
                i001={"title": "a new title"}, i002={"markets": ["FR", "US", "DE"]},
                i010={"markets": ["FR", "US", "US"]})  # the same set of markets: unchanged
    now.append({**now[0], "item_id": "  "})  # a blank id
    return now


def test_a_plan_is_the_same_whatever_the_buckets_and_selects_exactly_what_changed(tmp_path, monkeypatch):
    lake, ids = _mixed_lake(tmp_path)
    (m,) = _models()
    now = _changed(ids)

    plans = [_summary(_plan(tmp_path, lake, now, bucket_rows=n)) for n in (10**9, 7, 3, 1)]
    monkeypatch.setenv(rescan.BUCKET_ROWS_ENV, "5")  # read at plan time when bucket_rows is not given
    plans.append(_summary(_plan(tmp_path, lake, now)))
    assert all(p == plans[0] for p in plans[1:])
    got = plans[0]
    assert got["keep"] == {m.model_id: ["i001", "i002", "i005", "i007", "i008", "i009", "i040"]}
    assert got["stream"] == {m.model_id: {"text": 7}}
    assert [p[:2] for p in got["prelude"][m.model_id]] == [(None, "missing_item_id"), ("i004", "duplicate_item_id")]
    assert got["excluded"] == {m.model_id: [b"i004"]}
    assert got["removals"] == [("i003", "text", "item_deleted")]
    assert got["unchanged"] == 40 - 1 - 1 - 6  # i003 gone, i004 duplicated, 6 changed among the first 40
    assert got["rows_read"] == len(now)
    assert got["notes"][-1].startswith("2 pair(s) quarantined for a reason that may pass")


def test_a_change_feed_plan_is_the_same_whatever_the_buckets(tmp_path):
    """The ``cdf`` path: the feed's ids (and the quarantined pairs to retry, found in the
    baseline's buckets before the catalog is read) go into the catalog side's buckets."""
    from deltalake import DeltaTable

    from moderation.runs import RunRecord, write_run

    lake, ids = _mixed_lake(tmp_path)
    (m,) = _models()
    catalog = tmp_path / "catalog"
    write_deltalake(str(catalog), pa.Table.from_pylist(_rows(ids), schema=CATALOG_SCHEMA),
                    configuration={"delta.enableChangeDataFeed": "true"})
    uri = open_catalog(str(catalog)).uri
    write_run(lake, RunRecord(run_id="base", kind="backfill", status="succeeded", catalog_uri=uri, catalog_version=0,
                              model_ids=(m.model_id,), model_digests=(m.digest,), started_at=T0, ended_at=T0))
    table = DeltaTable(str(catalog))
    table.update(predicate="item_id = 'i001'", updates={"title": "'a new title'"})
    table.delete("item_id = 'i003'")
    write_deltalake(str(catalog), pa.Table.from_pylist(_rows(["i040", "i004"]), schema=CATALOG_SCHEMA), mode="append")

    def plan(n: int) -> dict:
        got = rescan.plan_rescan(open_catalog(str(catalog)), _models(), lake, context=RunContext(lake_root=lake.root),
                                 versions=rescan.pinned_versions(lake), change_source="cdf", bucket_rows=n)
        assert got.change_source == "cdf"
        return _summary(got)

    plans = [plan(n) for n in (10**9, 7, 1)]
    assert plans[0] == plans[1] == plans[2]
    got = plans[0]
    # Listed by the feed: i001 (edited), i003 (deleted), i004 (duplicated), i040 (new); retried: i005, i009.
    assert got["keep"] == {m.model_id: ["i001", "i005", "i009", "i040"]}
    assert got["removals"] == [("i003", "text", "item_deleted")]
    assert [p[:2] for p in got["prelude"][m.model_id]] == [("i004", "duplicate_item_id")]


def test_each_baseline_table_is_read_once_whatever_the_buckets(tmp_path, monkeypatch):
    """Issue 16: the lake's baseline tables are each scanned by one query however many buckets
    the plan uses; the per-bucket queries read local tables only. Every read of a Delta table
    by the planner goes through DataFusion's ``QueryBuilder``, counted here per table."""
    from deltalake import QueryBuilder

    lake, ids = _mixed_lake(tmp_path)
    now = _changed(ids)
    register, execute = QueryBuilder.register, QueryBuilder.execute

    def counting_register(self, name, table):
        self.counted = {**getattr(self, "counted", {}), name: table.table_uri}
        sessions[name] += 1
        return register(self, name, table)

    def counting_execute(self, sql):
        for name, uri in getattr(self, "counted", {}).items():
            if re.search(rf"\b(FROM|JOIN)\s+{name}\b", sql):
                reads[uri] += 1
        return execute(self, sql)

    monkeypatch.setattr(QueryBuilder, "register", counting_register)
    monkeypatch.setattr(QueryBuilder, "execute", counting_execute)
    lake_root = Path(lake.root).resolve().as_posix()
    # 42 pairs a side (the catalog's 42 rows, the lake's 40 scores and 2 quarantine rows).
    for n, buckets in ((10**9, 1), (7, 6), (1, 42)):
        reads: Counter[str] = Counter()
        sessions: Counter[str] = Counter()
        _plan(tmp_path, lake, now, bucket_rows=n)
        on_lake = {uri.rstrip("/").rsplit("/", 1)[-1]: k for uri, k in reads.items() if lake_root in uri}
        assert on_lake == {"scores": 1, "quarantine": 1, "removals": 1}, n
        # One session per bucket to count retries (events, removed), one to compare (and cur).
        assert sessions["cur"] == buckets and sessions["events"] == 2 * buckets, n
        assert all("moderation-rescan-" in uri for uri in reads if lake_root not in uri)  # the bucket files


def _peak_python_bytes(tmp_path, n: int) -> int:
    rows = _rows([f"item-{k:07d}" for k in range(n)])
    lake = _lake(tmp_path, rows)
    _plan(tmp_path, lake, rows)  # warm up: imports, caches, the classifier's tokenizer
    tracemalloc.start()
    try:
        plan = _plan(tmp_path, lake, rows, bucket_rows=n // 4)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert plan.unchanged_pairs == n and plan.selected(_models()) == 0 and plan.removed_pairs == 0
    return peak


def test_planning_python_memory_does_not_grow_with_the_catalog_or_scores(tmp_path, monkeypatch):
    # Small catalog batches, so the catalog spans many of them at both sizes; an unchanged
    # catalog, so nothing is selected: what is left is what planning holds per row.
    monkeypatch.setattr(rescan, "SCAN_ROWS", 500)
    small, large = 1_500, 6_000
    a = _peak_python_bytes(tmp_path / "small", small)
    b = _peak_python_bytes(tmp_path / "large", large)
    # Holding one Python string per row (an id, let alone a hash) would cost > 50 bytes a row.
    per_row = (b - a) / (large - small)
    assert per_row < 20, f"planning's Python peak grows {per_row:.0f} bytes per catalog row ({a:,} -> {b:,})"


@pytest.mark.parametrize("rows, buckets", [(0, 1), (10, 1), (1_000_000, 1), (1_000_001, 2), (10**12, 256)])
def test_bucket_count_follows_the_rows_within_bounds(rows, buckets):
    assert rescan._buckets(rows, 1_000_000) == buckets


def test_a_changed_creator_is_rescored_unless_the_scores_predate_the_rollup_ids(tmp_path):
    """creator_id / show_id / album_id: a changed id re-scores the pair (scores carry them for the
    report's roll-ups); a scores table written before they existed triggers nothing."""
    ids = [f"i{k:03d}" for k in range(6)]
    rows = _rows(ids, i002={"creator_id": "c-new"}, i004={"album_id": "al-9"})
    lake = _lake(tmp_path / "a", _rows(ids))  # scores with the columns, all null
    plan = _plan(tmp_path / "a", lake, rows)
    assert plan.selections["text-minilm-heads-v1"].keep_ids.to_pylist() == ["i002", "i004"]
    assert plan.unchanged_pairs == 4

    old = _lake(tmp_path / "b", _rows(ids))
    dt_scores = old.open("scores")
    legacy = dt_scores.to_pyarrow_table().drop_columns(["creator_id", "show_id", "album_id"])
    write_deltalake(old.uri("scores"), legacy, mode="overwrite", schema_mode="overwrite")
    assert "creator_id" not in old.open("scores").schema().to_arrow().names
    plan = _plan(tmp_path / "b", old, rows)
    assert plan.selections["text-minilm-heads-v1"].keep_ids.to_pylist() == [] and plan.unchanged_pairs == 6
