"""Failed scoring, store failures and progress output of a whole scoring run (issue 15, points 2
and 7), without Ray: ``pipeline.score_stream`` is replaced by the same stages run in-process
(read -> the real text preprocessing -> ``Classifier.process_batch``) with a fake ``score`` that
fails on chosen items, so a backfill or rescan runs in a second or two on a tiny real Delta
catalog and lake."""

from __future__ import annotations

import dataclasses
import datetime as dt

import pyarrow as pa
import pytest
import yaml
from deltalake import write_deltalake
from typer.testing import CliRunner

import moderation.engines.ray as pipeline
from moderation.classifiers.base import SCORE_ERROR, build_classifier
from moderation.errors import ScoringFailed, StorageError
from moderation.runs import read_run
from moderation.schemas import CATALOG_SCHEMA
from moderation.scoring.backfill import run_accounting, run_backfill
from moderation.scoring.rescan import run_rescan
from moderation.storage.lake import Lake
from tests.conftest import POLICY_V1

ITEMS = 20
EMPTY = "item-empty"  # no usable text: a permanent quarantine reason, never retried unchanged


class Model:
    """What the fake model does: fails every attempt on ``failing`` ids; counts calls."""

    def __init__(self) -> None:
        self.failing: set[str] = set()
        self.scored: list[str] = []

    def stream(self, snapshot, pass_, profile, *, context=None, file_pairs=None):
        """``pipeline.score_stream``'s stages in this process: read, prepare, score (the fake
        ``score``), write (a file per read batch, whatever ``file_pairs``); yields the written
        files' metadata as the Ray job does."""
        classifiers = {}
        for spec in pass_.models:
            clf = build_classifier(spec, context=dataclasses.replace(context, score_backoff_s=0.0))
            clf.score = self._score(spec)
            classifiers[spec.model_id] = clf
        for i in range(len(snapshot.files)):
            for rows in pipeline.read_files({"index": [i]}, snapshot=snapshot, pass_=pass_, batch_rows=8):
                scored = pipeline.score_rows(classifiers, pipeline.prepare_batch(rows, pass_=pass_, context=context))
                yield pipeline.write_results(scored, pass_=pass_)

    def _score(self, spec):
        def score(batch):
            ids = batch.column("item_id").to_pylist()
            if self.failing & set(ids):
                raise RuntimeError("CUDA out of memory")
            self.scored.extend(ids)
            return [{c: 0.01 for c in spec.categories} for _ in ids], [{} for _ in ids]

        return score


@pytest.fixture
def model(monkeypatch) -> Model:
    m = Model()
    monkeypatch.setattr(pipeline, "ensure_ray", lambda *a, **k: "already")
    monkeypatch.setattr(pipeline, "score_stream", m.stream)
    return m


def _catalog(path, *, cdf: bool = False) -> str:
    now = dt.datetime(2024, 5, 1, tzinfo=dt.timezone.utc)
    rows = [{"item_id": f"item-{i:02d}", "item_type": "track", "title": f"song number {i}",
             "description": "a calm song about the sea", "language": "en", "markets": ["US"], "explicit": False,
             "updated_at": now} for i in range(ITEMS - 1)]
    rows.append({"item_id": EMPTY, "item_type": "track", "title": " ", "updated_at": now})
    cfg = {"delta.enableChangeDataFeed": "true"} if cdf else None
    write_deltalake(str(path), pa.Table.from_pylist(rows, schema=CATALOG_SCHEMA), configuration=cfg)
    return str(path)


def _profile(tmp_path, **settings):
    p = tmp_path / "profile.yaml"
    p.write_text(yaml.safe_dump({"batch_size": 8, "chunk_pairs": 8, **settings}))
    return p


def _quarantine(lake: Lake, run_id: str) -> dict[str, str]:
    q = lake.read("quarantine").to_pylist()
    return {r["item_id"]: r["reason"] for r in q if r["run_id"] == run_id}


def test_a_run_over_the_error_share_fails_with_its_rows_committed(tmp_path, model):
    catalog, lake = _catalog(tmp_path / "catalog"), Lake(str(tmp_path / "lake"))
    model.failing = {"item-03", "item-07"}
    with pytest.raises(ScoringFailed, match=r"run r1 failed: error share 10\.00% above max_error_share 0\.01"):
        run_backfill(catalog_uri=catalog, lake_root=lake.root, policy_path=POLICY_V1, run_id="r1",
                     profile_path=_profile(tmp_path), progress=False)
    run = read_run(lake, "r1")
    assert run.status == "failed" and run.max_error_share == 0.01 and run.score_error_pairs == 2
    assert "2 of 20 selected pairs" in run.error and "moderation rescan" in run.error
    # Nothing lost: the accounting holds and every row is committed.
    assert run.selected_pairs == ITEMS and run_accounting(lake, "r1") == (17, 3, 0)
    q = lake.read("quarantine").to_pylist()
    bad = {r["item_id"]: r for r in q if r["reason"] == SCORE_ERROR}
    assert sorted(bad) == ["item-03", "item-07"]
    assert all(r["detail"].startswith("failed ") and "attempts" in r["detail"] for r in bad.values())
    # The rest of each failing batch was scored (one bad row does not quarantine its batch-mates).
    assert {"item-02", "item-04", "item-06"} <= set(model.scored)


def test_the_cli_exits_4_with_one_line(tmp_path, model):
    from moderation.cli import app

    catalog, lake = _catalog(tmp_path / "catalog"), str(tmp_path / "lake")
    model.failing = {"item-03"}
    out = CliRunner().invoke(app, ["backfill", "--catalog", catalog, "--lake", lake, "--policy", str(POLICY_V1),
                                   "--run-id", "r1", "--profile", str(_profile(tmp_path))])
    assert out.exit_code == 4, out.output
    lines = [ln for ln in out.output.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and lines[0].startswith("error: run r1 failed: error share 5.00% above max_error_share")
    assert "Traceback" not in out.output


def test_a_run_within_the_error_share_succeeds_and_rescan_retries_only_score_errors(tmp_path, model):
    catalog, lake = _catalog(tmp_path / "catalog", cdf=True), Lake(str(tmp_path / "lake"))
    profile = _profile(tmp_path, max_error_share=0.2)
    model.failing = {"item-03", "item-07"}
    first = run_backfill(catalog_uri=catalog, lake_root=lake.root, policy_path=POLICY_V1, run_id="base",
                         profile_path=profile, progress=False)
    assert first.status == "succeeded" and first.score_error_pairs == 2 and "score errors 2" in first.summary()
    assert read_run(lake, "base").max_error_share == 0.2
    assert _quarantine(lake, "base") == {"item-03": SCORE_ERROR, "item-07": SCORE_ERROR, EMPTY: "no_usable_text"}

    # The catalog did not change: only the score_error pairs are selected (through the change
    # data feed too, which lists no changed item), and the model works now.
    for run_id, source in (("again-1", "cdf"), ("again-2", "anti_join")):
        model.failing, model.scored = set(), []
        again = run_rescan(catalog_uri=catalog, lake_root=lake.root, policy_path=POLICY_V1, run_id=run_id,
                           profile_path=profile, change_source=source, progress=False)
        if run_id == "again-1":
            assert again.status == "succeeded" and again.change_source == "cdf", again.summary()
            assert again.selected_pairs == 2 and again.unchanged_pairs == ITEMS - 2
            assert sorted(model.scored) == ["item-03", "item-07"]
            assert any("retried" in n for n in again.notes)
        else:  # retried and scored: nothing left to retry, the empty item is permanent
            assert again.nothing_changed, again.summary()
    scores = lake.read("scores").to_pylist()
    assert sorted(r["item_id"] for r in scores if r["run_id"] == "again-1") == ["item-03", "item-07"]


def test_progress_bar_writes_no_control_sequences_when_stderr_is_not_a_terminal(tmp_path, model, capfd):
    catalog, lake = _catalog(tmp_path / "catalog"), Lake(str(tmp_path / "lake"))
    run_backfill(catalog_uri=catalog, lake_root=lake.root, policy_path=POLICY_V1, run_id="r1",
                 profile_path=_profile(tmp_path), progress=True)
    out, err = capfd.readouterr()
    assert "\r" not in out + err and "\x1b" not in out + err


#: What DataFusion raised from a count over the lake (QueryBuilder: the accounting's before it
#: spilled keys; run_score_errors still counts that way) when SeaweedFS S3 was stopped.
DATAFUSION_S3_DOWN = (
    "External error: Parquet error: Parquet error: Failed to fetch metadata for file "
    "lake/scores/part-00000-7bfe9035-c000.snappy.parquet: Object Store error: Generic S3 error: Error performing "
    "GET http://127.0.0.1:47497/lake/scores/part-00000-7bfe9035-c000.snappy.parquet in 627.470154ms, after 3 "
    "retries, max_retries: 3, retry_timeout: 30s  - HTTP error: error sending request"
)


def _down(*_a, **_k):
    raise Exception(DATAFUSION_S3_DOWN)  # noqa: TRY002 - the bare Exception QueryBuilder raises


def test_a_store_failure_in_the_accounting_is_a_resumable_storage_error(tmp_path, model, monkeypatch):
    """The flaky half of test_s3_outage_mid_run...: an outage striking the accounting count."""
    import moderation.scoring.run as scoring_run

    catalog, lake = _catalog(tmp_path / "catalog"), Lake(str(tmp_path / "lake"))
    monkeypatch.setattr(scoring_run, "run_accounting", _down)
    with pytest.raises(StorageError, match=r"^run r1: storage failed: External error: .*Object Store error.*"
                                           r"run the same command again \(same --run-id\) to resume"):
        run_backfill(catalog_uri=catalog, lake_root=lake.root, policy_path=POLICY_V1, run_id="r1",
                     profile_path=_profile(tmp_path), progress=False)
    run = read_run(lake, "r1")
    assert run.status == "failed" and run.error.startswith("Exception: External error: Parquet error")
    monkeypatch.undo()
    monkeypatch.setattr(pipeline, "ensure_ray", lambda *a, **k: "already")
    monkeypatch.setattr(pipeline, "score_stream", model.stream)
    done = run_backfill(catalog_uri=catalog, lake_root=lake.root, policy_path=POLICY_V1, run_id="r1",
                        profile_path=_profile(tmp_path), progress=False)
    assert done.status == "succeeded" and done.chunks_committed == 0 and done.balanced


def test_a_store_failure_before_the_run_starts_is_a_storage_error_too(tmp_path, model, monkeypatch):
    """Reading the runs table, the lease, the catalog: outside the scoring loop, same one line."""
    from botocore.exceptions import EndpointConnectionError

    import moderation.scoring.run as scoring_run

    def unreachable(lake, run_id):
        raise EndpointConnectionError(endpoint_url="http://127.0.0.1:9/lake/runs")

    catalog, lake = _catalog(tmp_path / "catalog"), Lake(str(tmp_path / "lake"))
    monkeypatch.setattr(scoring_run, "read_run", unreachable)
    with pytest.raises(StorageError, match=r"^run r1: storage failed: Could not connect to the endpoint URL"):
        run_backfill(catalog_uri=catalog, lake_root=lake.root, policy_path=POLICY_V1, run_id="r1",
                     profile_path=_profile(tmp_path), progress=False)
