"""The review loop: labels import, review queue, labels -> evaluation dataset (real Delta, no Ray, no model)."""

from __future__ import annotations

import datetime as dt
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from moderation.config import load_model_registry
from moderation.evaluation.datasets import DatasetError, read_dataset
from moderation.evaluation.labels import import_labels, labels_to_dataset, latest_labels
from moderation.evaluation.queue import build_review_queue
from moderation.runs import RunRecord, read_run
from moderation.schemas import REMOVALS_SCHEMA, SCORES_SCHEMA
from moderation.storage.lake import Lake
from tests.conftest import POLICY_V1

REG = load_model_registry()
SPEC = REG["text-minilm-heads-v1"]  # POLICY_V1: hate 0.90 / review 0.70, harassment 0.90 / 0.75, spam 0.97 / 0.90
T0 = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
LOW = {"harassment": 0.1, "spam": 0.1}

HEADER = "item_id,category,decision,source,reviewed_at,market,reviewer\n"
LABELS_1 = HEADER + (
    "a,hate,violating,moderator,2026-01-02T10:00:00Z,US,r1\n"
    "a,hate,overturned,appeal,2026-01-03T10:00:00Z,US,r2\n"
    "b,spam,not_violating,,2026-01-02T10:00:00+01:00,,r1\n"
    "c,harassment,upheld,appeal,2026-01-02T10:00:00Z,,\n"
    "gone,hate,violating,moderator,2026-01-02T10:00:00Z,,r1\n"
)


def score_rows(rows: list[tuple[str, dict, str, str]], *, when: dt.datetime = T0, digest: str = SPEC.digest) -> pa.Table:
    """scores rows as decide tests build them, with a language and item type per item."""
    return pa.Table.from_pylist([
        {"run_id": f"r{when.day}", "item_id": item, "item_type": item_type, "modality": "text",
         "model_id": SPEC.model_id, "model_digest": digest, "content_hash": "h",
         "category_scores": list({**LOW, **s}.items()), "evidence": None, "language": language,
         "markets": ["US"], "explicit": False, "scored_at": when}
        for item, s, language, item_type in rows
    ], schema=SCORES_SCHEMA)


def write_csv(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def write_catalog(path: Path, items: dict[str, str]) -> str:
    from deltalake import write_deltalake

    ids = sorted(items)
    write_deltalake(str(path), pa.table({
        "item_id": ids, "item_type": ["track"] * len(ids), "title": [f"title {i}" for i in ids],
        "description": pa.array([None] * len(ids), pa.string()), "body_text": [items[i] for i in ids],
        "language": ["en"] * len(ids), "cover_image": pa.array([None] * len(ids), pa.string()),
    }), mode="overwrite")
    return str(path)


# ---------------------------------------------------------------------------------------
# labels import
# ---------------------------------------------------------------------------------------
def test_import_labels_maps_decisions_and_appeals_and_is_idempotent(tmp_path):
    lake = Lake(str(tmp_path / "lake"))
    f = write_csv(tmp_path / "reviews-2026-01-03.csv", LABELS_1)
    r = import_labels(lake, f, policy_path=POLICY_V1)
    assert (r.rows, r.written, r.already_imported) == (5, 5, False)
    got = {(x["item_id"], x["category"], x["source"]): x for x in lake.read("labels").to_pylist()}
    assert {k: v["label"] for k, v in got.items()} == {
        ("a", "hate", "moderator"): 1, ("a", "hate", "appeal"): 0,  # overturned: the enforcement was wrong
        ("b", "spam", "moderator"): 0, ("c", "harassment", "appeal"): 1, ("gone", "hate", "moderator"): 1}
    b = got["b", "spam", "moderator"]
    assert b["reviewed_at"] == dt.datetime(2026, 1, 2, 9, tzinfo=dt.timezone.utc) and b["market"] is None
    assert got["a", "hate", "moderator"]["market"] == "US" and got["a", "hate", "appeal"]["reviewer"] == "r2"
    assert {x["import_id"] for x in got.values()} == {r.import_id}
    assert {x["source_file"] for x in got.values()} == {"reviews-2026-01-03.csv"}
    assert {x["source_sha256"] for x in got.values()} == {r.source_sha256}
    assert len({x["label_id"] for x in got.values()}) == 5
    version = lake.version("labels")

    again = import_labels(lake, f)
    assert again.already_imported and again.written == 0 and lake.version("labels") == version
    # The same reviews exported again in a bigger file: only the new row is written.
    f2 = write_csv(tmp_path / "reviews-all.csv", LABELS_1 + "d,spam,violating,,2026-01-04T00:00:00Z,,r3\n")
    r2 = import_labels(lake, f2)
    assert (r2.written, r2.already_present, r2.already_imported) == (1, 5, False)
    assert lake.version("labels") == version + 1 and lake.read("labels").num_rows == 6
    runs = map(RunRecord.from_row, lake.read("runs", filter=pc.field("kind") == "labels_import").to_pylist())
    assert {x.run_id: (x.status, x.scored_pairs) for x in runs} == {
        r.import_id: ("succeeded", 5), again.import_id: ("succeeded", 0), r2.import_id: ("succeeded", 1)}
    assert "written" in r.summary() and "already imported" in again.summary()


def test_import_labels_reads_label_columns_parquet_and_a_column_map(tmp_path):
    import pyarrow.parquet as pq

    lake = Lake(str(tmp_path / "lake"))
    path = tmp_path / "appeals.parquet"
    pq.write_table(pa.table({
        "track": ["x", "y"], "category": ["hate", "hate"], "label": [1, 0], "source": ["appeal", "moderator"],
        "reviewed_at": pa.array([T0, T0], pa.timestamp("us", tz="UTC")), "policy_version": [1, None],
        "extra": ["ignored", "ignored"],
    }), path)
    r = import_labels(lake, path, column_map={"item_id": "track"})
    got = {x["item_id"]: (x["label"], x["decision"], x["source"], x["policy_version"])
           for x in lake.read("labels").to_pylist()}
    assert r.written == 2 and got == {"x": (1, "upheld", "appeal", 1), "y": (0, "not_violating", "moderator", None)}


@pytest.mark.parametrize(("row", "column", "value"), [
    ("a,hate,maybe,moderator,2026-01-02T10:00:00Z,,", "decision", "maybe"),
    ("a,hate,violating,moderator,yesterday,,", "reviewed_at", "yesterday"),
    ("a,hate,violating,moderator,,,", "reviewed_at", None),
    (",hate,violating,moderator,2026-01-02T10:00:00Z,,", "item_id", None),
    ("a,nudity,violating,moderator,2026-01-02T10:00:00Z,,", "category", "nudity"),  # not in POLICY_V1
    ("a,hate,violating,boss,2026-01-02T10:00:00Z,,", "source", "boss"),
    ("a,hate,upheld,moderator,2026-01-02T10:00:00Z,,", "decision", "upheld"),
])
def test_a_bad_value_names_file_row_column_and_value_and_writes_nothing(tmp_path, row, column, value):
    lake = Lake(str(tmp_path / "lake"))
    f = write_csv(tmp_path / "bad.csv", HEADER + "b,spam,not_violating,,2026-01-02T10:00:00Z,,r1\n" + row + "\n")
    with pytest.raises(DatasetError) as e:
        import_labels(lake, f, policy_path=POLICY_V1)
    msg = str(e.value)
    assert msg.startswith(f"{f}: row 2, column {column!r}: ") and msg.endswith(f"(value {value!r})")
    assert not lake.exists("labels") and not lake.exists("runs")


def test_a_label_that_is_not_0_or_1_is_refused(tmp_path):
    f = write_csv(tmp_path / "l.tsv", "item_id\tcategory\tlabel\treviewed_at\na\thate\t2\t2026-01-02\n")
    with pytest.raises(DatasetError, match=r"l\.tsv: row 1, column 'label': label is not 0 or 1 \(value '2'\)"):
        import_labels(str(tmp_path / "lake"), f)
    f = write_csv(tmp_path / "m.csv", "item_id,category,reviewed_at\na,hate,2026-01-02\n")
    with pytest.raises(DatasetError, match="needs a 'decision' or a 'label' column"):
        import_labels(str(tmp_path / "lake"), f)


def test_latest_label_newest_first_and_appeal_wins_a_tie():
    t = pa.timestamp("us", tz="UTC")
    labels = pa.table({
        "label_id": ["1", "2", "3", "4"], "item_id": ["a", "a", "b", "b"], "category": ["hate"] * 4,
        "label": pa.array([1, 0, 1, 0], pa.int8()), "source": ["moderator", "appeal", "moderator", "moderator"],
        "reviewed_at": pa.array([T0, T0, T0, T0 + dt.timedelta(hours=1)], t),
    })
    got = latest_labels(labels).set_index("item_id")["label"].to_dict()
    assert got == {"a": 0, "b": 0}


# ---------------------------------------------------------------------------------------
# review queue
# ---------------------------------------------------------------------------------------
@pytest.fixture()
def scored_lake(tmp_path) -> Lake:
    """hate band with band=0.05: [0.70, 0.95]. 30 en tracks at 0.80, 5 de episodes at 0.92, 40 clean
    items, one certain violation (0.99); one band item removed, one band item only scored at an old
    model digest."""
    lake = Lake(str(tmp_path / "lake"))
    rows = ([(f"en{i:02}", {"hate": 0.80}, "en", "track") for i in range(30)]
            + [(f"de{i}", {"hate": 0.92}, "de", "episode") for i in range(5)]
            + [(f"clean{i:02}", {"hate": 0.1}, "en", "track") for i in range(40)]
            + [("far", {"hate": 0.99}, "en", "track"), ("removed", {"hate": 0.8}, "en", "track")])
    lake.append_chunk("scores", score_rows(rows), app_id="t", version=0)
    lake.append_chunk("scores", score_rows([("stale", {"hate": 0.8}, "en", "track")], digest="0" * 64),
                      app_id="t", version=1)
    lake.append_chunk("removals", pa.Table.from_pylist([
        {"run_id": "rescan-1", "item_id": "removed", "modality": "text", "reason": "item_deleted",
         "catalog_uri": "c", "catalog_version": 1, "removed_at": T0 + dt.timedelta(days=1)}], schema=REMOVALS_SCHEMA),
        app_id="rm", version=0)
    return lake


def _keys(table: pa.Table) -> set[tuple]:
    return {(r["item_id"], r["category"], r["reason"], r["stratum"]) for r in table.to_pylist()}


def test_review_queue_samples_the_band_by_stratum_plus_a_disjoint_audit(scored_lake):
    lake = scored_lake
    q = build_review_queue(lake, POLICY_V1, per_stratum=10, audit=8, band=0.05, seed=1, queue_id="q1")
    rows = lake.read("review_queue").to_pylist()
    assert len(rows) == q.rows.num_rows and {r["queue_id"] for r in rows} == {"q1"}
    uncertain = [r for r in rows if r["reason"] == "uncertain"]
    audit = [r for r in rows if r["reason"] == "audit"]
    # Only band items: none of the clean ones, not the certain violation, not removed or stale-digest ones.
    assert {r["category"] for r in uncertain} == {"hate"}
    assert all(0.70 <= r["score"] <= 0.95 for r in uncertain)
    assert not {r["item_id"] for r in uncertain} & {"far", "removed", "stale"}
    assert not any(r["item_id"].startswith("clean") for r in uncertain)
    per_stratum = Counter(r["stratum"] for r in uncertain)
    # language=de: all 5; language=en: 10 of 30; item_type=episode: its 5 already taken; track: 10 more.
    assert per_stratum == {"hate/language=de": 5, "hate/language=en": 10, "hate/item_type=track": 10}
    assert {r["stratum"]: r["stratum_size"] for r in uncertain} == {
        "hate/language=de": 5, "hate/language=en": 30, "hate/item_type=track": 30}
    assert len({(r["item_id"], r["category"]) for r in uncertain}) == len(uncertain)  # once per category
    assert all(r["threshold"] == pytest.approx(0.90) and r["model_id"] == SPEC.model_id for r in uncertain)
    # Audit: 8 items outside the uncertain ones, a row per policy category each.
    audited = {r["item_id"] for r in audit}
    assert len(audited) == 8 and not audited & {r["item_id"] for r in uncertain}
    assert Counter(r["item_id"] for r in audit) == dict.fromkeys(audited, 3)
    assert {r["stratum"] for r in audit} == {"audit"} and not audited & {"removed", "stale"}
    assert {r["stratum_size"] for r in audit} == {q.audit_candidates} == {75 + 1 - 25}
    run = read_run(lake, "q1")
    assert run.kind == "review_queue" and run.status == "succeeded" and run.selected_pairs == len(rows)
    assert "hate/language=en" in q.summary()

    # Deterministic for a seed; the same queue id writes nothing; another seed samples otherwise.
    version = lake.version("review_queue")
    again = build_review_queue(lake, POLICY_V1, per_stratum=10, audit=8, band=0.05, seed=1, queue_id="q1")
    assert not again.written and lake.version("review_queue") == version and _keys(again.rows) == _keys(q.rows)
    q2 = build_review_queue(lake, POLICY_V1, per_stratum=10, audit=8, band=0.05, seed=1, queue_id="q2",
                            requeue_pending=True)
    assert q2.written and _keys(q2.rows) == _keys(q.rows) and q2.pending_skipped == 0
    q3 = build_review_queue(lake, POLICY_V1, per_stratum=10, audit=8, band=0.05, seed=2, queue_id="q3",
                            requeue_pending=True)
    assert _keys(q3.rows) != _keys(q.rows)


def _pairs(table: pa.Table) -> set[tuple]:
    return {(r["item_id"], r["category"]) for r in table.to_pylist()}


def test_pairs_pending_in_an_earlier_queue_are_not_queued_twice(scored_lake, tmp_path):
    lake = scored_lake
    q1 = build_review_queue(lake, POLICY_V1, per_stratum=10, audit=8, band=0.05, seed=1, queue_id="q1")
    q2 = build_review_queue(lake, POLICY_V1, per_stratum=10, audit=8, band=0.05, seed=1, queue_id="q2")
    # Nothing q1 holds is queued again; the same sampling finds other items of the band instead.
    assert q2.pending_skipped == len(_pairs(q1.rows)) == q1.rows.num_rows
    assert q2.rows.num_rows and not _pairs(q2.rows) & _pairs(q1.rows)
    hate_q1 = {r["item_id"] for r in q1.rows.to_pylist() if r["reason"] == "uncertain"}
    hate_q2 = {r["item_id"] for r in q2.rows.to_pylist() if r["reason"] == "uncertain"}
    queued_hate = {i for i, c in _pairs(q1.rows) if c == "hate"}  # uncertain, or audited (every category)
    assert len(hate_q1) == 25 and hate_q2 == {f"en{i:02}" for i in range(30)} - queued_hate  # the en tracks left
    assert "still pending in an earlier queue" in q2.summary()
    # A review answers one pending pair: it is labelled (skipped as such), no longer pending.
    en_pending = min(i for i, c in _pairs(q1.rows) if c == "hate" and i.startswith("en"))
    import_labels(lake, write_csv(tmp_path / "l.csv", HEADER + f"{en_pending},hate,violating,,{dt.datetime.now(dt.timezone.utc).isoformat()},,r\n"))
    q3 = build_review_queue(lake, POLICY_V1, per_stratum=10, audit=8, band=0.05, seed=1, queue_id="q3")
    assert (en_pending, "hate") not in _pairs(q3.rows) and q3.labelled_skipped == 1
    assert q3.pending_skipped == len(_pairs(q1.rows) | _pairs(q2.rows)) - 1
    # A re-score after the queues makes a pending pair current again: it can be queued.
    de = sorted(i for i, c in _pairs(q1.rows) if c == "hate" and i.startswith("de"))
    lake.append_chunk("scores", score_rows([(i, {"hate": 0.92}, "de", "episode") for i in de],
                                           when=dt.datetime.now(dt.timezone.utc) + dt.timedelta(minutes=1)),
                      app_id="t", version=2)
    q4 = build_review_queue(lake, POLICY_V1, per_stratum=10, audit=0, band=0.05, seed=1, queue_id="q4")
    assert {(i, "hate") for i in de} <= _pairs(q4.rows)


def test_items_labelled_after_their_latest_score_are_not_queued_again(scored_lake, tmp_path):
    lake = scored_lake
    labels = HEADER + (
        "de0,hate,violating,,2026-01-02T00:00:00Z,,r\n"  # after the score: done
        "de1,hate,violating,,2025-12-31T00:00:00Z,,r\n"  # before the score: queued again
        "de2,spam,not_violating,,2026-01-02T00:00:00Z,,r\n"  # another category: still queued for hate
    )
    import_labels(lake, write_csv(tmp_path / "l.csv", labels))
    q = build_review_queue(lake, POLICY_V1, per_stratum=10, audit=0, band=0.05, queue_id="q")
    hate = {r["item_id"] for r in q.rows.to_pylist() if r["category"] == "hate"}
    assert "de0" not in hate and {"de1", "de2"} <= hate and q.labelled_skipped == 2
    # A re-score after the label makes the pair current again.
    lake.append_chunk("scores", score_rows([("de0", {"hate": 0.93}, "de", "episode")],
                                           when=T0 + dt.timedelta(days=2)), app_id="t", version=2)
    q = build_review_queue(lake, POLICY_V1, per_stratum=10, audit=0, band=0.05, queue_id="q-after")
    assert "de0" in {r["item_id"] for r in q.rows.to_pylist() if r["category"] == "hate"}


def test_review_queue_refuses_an_unknown_slice_column(scored_lake):
    from moderation.errors import ModerationError

    with pytest.raises(ModerationError, match="slice column"):
        build_review_queue(scored_lake, POLICY_V1, slice_columns=("genre",))


# ---------------------------------------------------------------------------------------
# labels -> evaluation dataset
# ---------------------------------------------------------------------------------------
def test_labels_to_dataset_versions_with_new_reviews_only(tmp_path):
    lake = Lake(str(tmp_path / "lake"))
    catalog = write_catalog(tmp_path / "catalog", {"a": "lyrics a", "b": "lyrics b", "c": "lyrics c"})
    import_labels(lake, write_csv(tmp_path / "l1.csv", LABELS_1))
    res = labels_to_dataset(lake, catalog_uri=catalog)
    version, written, n = res
    assert written and n == 3 and res.missing_items == 1  # "gone" is not in the catalog
    table, v = read_dataset(lake, "catalog_reviews")
    assert v == version
    got = {r["example_id"]: r for r in table.to_pylist()}
    assert set(got) == {"a#text", "b#text", "c#text"}
    a = got["a#text"]
    assert (a["label_hate"], a["label_spam"], a["label_harassment"]) == (0, None, None)  # the appeal overturned it
    assert a["slice_review_source"] == ["appeal"] and a["text"] == "lyrics a" and a["title"] == "title a"
    assert a["modality"] == "text" and a["source"] == "labels" and a["slice_language"] == "en"
    assert got["b#text"]["label_spam"] == 0 and got["c#text"]["label_harassment"] == 1
    assert got["c#text"]["slice_item_type"] == "track"

    # No new labels: nothing written.
    again = labels_to_dataset(lake, catalog_uri=catalog)
    assert tuple(again) == (version, False, 3)
    # A new review: the next version holds it.
    import_labels(lake, write_csv(tmp_path / "l2.csv", HEADER + "b,spam,violating,,2026-01-05T00:00:00Z,,r9\n"))
    version2, written2, _ = labels_to_dataset(lake, catalog_uri=catalog)
    assert written2 and version2 == version + 1
    table, _ = read_dataset(lake, "catalog_reviews")
    assert {r["example_id"]: r["label_spam"] for r in table.to_pylist()}["b#text"] == 1
    old, _ = read_dataset(lake, "catalog_reviews", version=version)
    assert {r["example_id"]: r["label_spam"] for r in old.to_pylist()}["b#text"] == 0  # time travel keeps it
    assert "v" in again.summary()


def test_a_failed_labels_import_stores_its_error_masked(tmp_path, monkeypatch):
    """runs.error of a labels import whose commit failed holds no secret of the environment
    (issue 15, point 5b): masked as backfill masks it."""
    secret = "wJalrXUtnFEMI-K7MDENG-bPxRfiCYEXAMPLEKEY"
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    lake = Lake(str(tmp_path / "lake"))

    def failing(*args, **kwargs):
        raise OSError(f"PUT refused: signature for key AKIAIOSFODNN7EXAMPLE with secret {secret} rejected")

    monkeypatch.setattr(Lake, "append_chunk", failing)
    with pytest.raises(OSError):
        import_labels(lake, write_csv(tmp_path / "l.csv", LABELS_1), import_id="imp-1")
    error = read_run(lake, "imp-1").error
    assert "PUT refused" in error and "***" in error
    assert secret not in error and "AKIAIOSFODNN7EXAMPLE" not in error
