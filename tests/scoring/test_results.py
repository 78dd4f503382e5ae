from __future__ import annotations

import datetime as dt

import pyarrow as pa

from moderation.classifiers.base import EVIDENCE_TYPE, SCORE_TYPE
from moderation.config import load_model_registry
from moderation.scoring.chunks import ChunkWriter, split_results
from moderation.storage.lake import Lake

NOW = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
SPEC = load_model_registry()["text-minilm-heads-v1"]


def scored_rows(ids: list[str], bad: set[str] = frozenset()) -> pa.Table:
    n = len(ids)
    return pa.table({
        "item_id": ids,
        "item_type": ["track"] * n,
        "language": ["en"] * n,
        "markets": pa.array([["US"]] * n, pa.list_(pa.string())),
        "explicit": [False] * n,
        "modality": ["text"] * n,
        "content_hash": ["h" + i for i in ids],
        "category_scores": pa.array([None if i in bad else [("hate", 0.5)] for i in ids], SCORE_TYPE),
        "evidence": pa.array([None if i in bad else [("hate", "title")] for i in ids], EVIDENCE_TYPE),
        "qreason": [("no_usable_text" if i in bad else None) for i in ids],
        "qdetail": [("empty" if i in bad else None) for i in ids],
        "qstage": [("preprocess" if i in bad else None) for i in ids],
    })


def test_split_results_puts_each_row_in_exactly_one_table():
    s, q = split_results(scored_rows(["a", "b", "c"], bad={"b"}), run_id="r1", model=SPEC, now=NOW)
    assert s.column("item_id").to_pylist() == ["a", "c"]
    assert q.column("item_id").to_pylist() == ["b"]
    assert q.column("reason").to_pylist() == ["no_usable_text"]
    assert set(s.column("model_digest").to_pylist()) == {SPEC.digest}


def test_chunks_commit_once_and_resume_numbering(tmp_path):
    lake = Lake(str(tmp_path / "lake"))
    w = ChunkWriter(lake, run_id="r1", model=SPEC, chunk_pairs=2)
    w.add(scored_rows(["a", "b"], bad={"b"}))  # chunk 0: 1 quarantine + 1 scores commit
    w.add(scored_rows(["c"]))
    w.flush()  # chunk 1
    assert w.chunks_committed == 2
    assert lake.transaction_version("scores", w.app_id) == 1
    assert lake.transaction_version("quarantine", w.app_id) == 0
    versions = (lake.version("scores"), lake.version("quarantine"))

    # A replayed chunk whose commit already landed changes nothing.
    assert lake.append_chunk("scores", split_results(scored_rows(["c"]), run_id="r1", model=SPEC, now=NOW)[0],
                             app_id=w.app_id, version=1) is False
    assert (lake.version("scores"), lake.version("quarantine")) == versions

    # A new writer for the same run continues after the last chunk either table recorded.
    w2 = ChunkWriter(lake, run_id="r1", model=SPEC, chunk_pairs=2)
    assert w2.next_chunk == 2
    assert lake.read("scores").num_rows == 2 and lake.read("quarantine").num_rows == 1


def test_scores_carry_the_catalog_ids_for_the_roll_ups():
    ids = {"creator_id": ["c1", None], "show_id": [None, "s1"], "album_id": ["al1", None]}
    rows = scored_rows(["a", "b"])
    for name, values in ids.items():
        rows = rows.append_column(name, pa.array(values, pa.string()))
    s, _ = split_results(rows, run_id="r1", model=SPEC, now=NOW)
    assert {name: s.column(name).to_pylist() for name in ids} == ids
    # Work rows without them (a classifier that rebuilds its rows): null ids, not an error.
    s, _ = split_results(scored_rows(["a"]), run_id="r1", model=SPEC, now=NOW)
    assert [s.column(name).to_pylist() for name in ids] == [[None]] * 3


def test_catalog_ids_reach_scores_through_a_classifier():
    """catalog rows -> work rows -> prepare -> process_batch -> scores rows: the ids go all the way."""
    from moderation.classifiers.base import Classifier, prepared
    from moderation.storage.catalog import to_work_rows

    class Fixed(Classifier):
        modality = "text"

        def preprocess(self, batch: pa.Table) -> pa.Table:
            n = batch.num_rows
            return prepared(batch, hashes=["h"] * n, inputs={}, reasons=[None] * n, details=[None] * n,
                            stages=[None] * n)

        def setup(self, device: str = "cpu") -> None:
            self.device = device

        def score(self, batch: pa.Table):
            return [{c: 0.5 for c in self.spec.categories} for _ in range(batch.num_rows)], \
                [{} for _ in range(batch.num_rows)]

    catalog = pa.table({"item_id": ["a", "b"], "title": ["x", "y"], "creator_id": ["c1", None],
                        "show_id": [None, "s1"]})
    clf = Fixed(SPEC)
    out = clf.process_batch(clf.prepare(to_work_rows(catalog, "text")))
    s, _ = split_results(out, run_id="r1", model=SPEC, now=NOW)
    assert s.column("creator_id").to_pylist() == ["c1", None]
    assert s.column("show_id").to_pylist() == [None, "s1"]
    assert s.column("album_id").to_pylist() == [None, None]
