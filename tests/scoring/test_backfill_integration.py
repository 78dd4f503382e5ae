"""backfill -> decide -> report on a ~200-item demo catalog with a real local Ray and Spark."""

from __future__ import annotations

from collections import Counter
from unittest import mock

import pyarrow as pa
import pyarrow.compute as pc
import pytest
import yaml
from typer.testing import CliRunner

import moderation.engines.ray as pipeline
from moderation.cli import app
from moderation.demo.catalog import write_demo_catalog
from moderation.policy.decide import run_decide
from moderation.runs import read_run
from moderation.scoring.backfill import run_accounting, run_backfill
from moderation.storage.lake import Lake
from tests.conftest import POLICY_V1, POLICY_V2

# The timeout also guards the actor-pool hang of ray-project/ray#44687 (a pool holding every
# CPU starves the read tasks): a hung backfill fails here instead of stalling CI.
pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]
ITEMS = 200


@pytest.fixture(scope="module")
def env(tmp_path_factory, ray_local, data_dir):
    root = tmp_path_factory.mktemp("e2e")
    profile = root / "profile.yaml"
    profile.write_text(yaml.safe_dump({"batch_size": 32, "actors": 1, "actor_num_cpus": 1.0,
                                       "torch_threads": 2, "chunk_pairs": 64, "max_chunks": 2,
                                       # The demo's items are far shorter; the 2 MB transcript below
                                       # is cut here (its 400,000 words would cost minutes of CPU).
                                       "max_item_words": 20_000}))
    catalog = write_demo_catalog(str(root / "catalog"), items=ITEMS, data_dir=data_dir)
    lake = Lake(str(root / "lake"))
    # What the driver itself writes and receives (Ray's workers are other processes).
    driver_files, streamed = Counter(), []
    real_write, real_stream = Lake.write_data_file, pipeline.score_stream

    def write(self, table, rows):
        driver_files[table] += 1
        return real_write(self, table, rows)

    def stream(*args, **kwargs):
        for batch in real_stream(*args, **kwargs):
            streamed.append(batch)
            yield batch

    with mock.patch.object(Lake, "write_data_file", write), mock.patch.object(pipeline, "score_stream", stream):
        result = run_backfill(catalog_uri=catalog.uri, lake_root=lake.root, policy_path=POLICY_V1,
                              run_id="it-full", profile_path=profile, progress=False)
    return {"root": root, "profile": profile, "catalog": catalog, "lake": lake, "result": result,
            "driver_files": driver_files, "streamed": streamed}


def _catalog_ids(uri: str) -> list[str]:
    from deltalake import DeltaTable

    return DeltaTable(uri).to_pyarrow_table(columns=["item_id"]).column("item_id").to_pylist()


def _versions(lake: Lake) -> dict[str, int | None]:
    return {t: lake.version(t) for t in ("scores", "quarantine", "violations", "runs")}


def test_accounting_invariant(env):
    lake, result = env["lake"], env["result"]
    ids = _catalog_ids(env["catalog"].uri)
    assert result.status == "succeeded" and result.selected_pairs == len(ids) == ITEMS
    flt = pc.field("run_id") == "it-full"
    scored = lake.read("scores", filter=flt).column("item_id").to_pylist()
    quarantined = lake.read("quarantine", filter=flt)
    q_ids = quarantined.column("item_id").to_pylist()
    assert Counter(scored + q_ids) == Counter(ids)  # each selected pair exactly once
    assert len(q_ids) >= 1 and set(quarantined.column("reason").to_pylist()) == {"no_usable_text"}
    assert (result.scored_pairs, result.quarantined_pairs) == (len(scored), len(q_ids))
    run = read_run(lake, "it-full")
    assert run.status == "succeeded" and run.catalog_version == 0 and run.modalities == ("text",)
    assert (run.selected_pairs, run.scored_pairs, run.quarantined_pairs) == (ITEMS, len(scored), len(q_ids))
    assert run.model_digests and len(run.config_hash) == 64


def test_work_is_committed_in_idempotent_chunks(env):
    lake = env["lake"]
    app_id = "moderation/backfill/it-full/text-minilm-heads-v1"
    # 200 pairs, chunks of at least 64 and at most 2 chunks (max_chunks): chunks of 100 pairs ->
    # 2 chunks; scores saw a commit for each.
    assert env["result"].chunks_committed == 2
    assert lake.transaction_version("scores", app_id) == 1
    # Version 0 creates the table (the first chunk's files were written before it existed),
    # versions 1..2: one commit per chunk, none at the end.
    assert lake.version("scores") == 2
    # The write tasks sized the files to the chunks (config.file_pairs: 100 rows), not to
    # chunk_pairs (64): about a file a chunk, whatever Ray's blocks were.
    rows = pa.table(lake.open("scores").get_add_actions(flatten=True)).column("num_records").to_pylist()
    assert len(rows) == 2 and min(rows) > 64, rows  # the few pairs left are quarantined


def test_scored_rows_never_pass_through_the_driver(env):
    """Issue 16 point 1: the Ray write tasks write the scores files; the driver receives only
    their metadata (one row per file) and commits it."""
    from moderation.scoring.chunks import FILES_SCHEMA

    assert env["driver_files"]["scores"] == 0
    assert env["streamed"] and all(b.schema.equals(FILES_SCHEMA) for b in env["streamed"])
    files = pa.concat_tables(env["streamed"])
    assert sum(files.column("rows").to_pylist()) == ITEMS  # every streamed pair is in a file
    committed = set(pa.table(env["lake"].open("scores").get_add_actions(flatten=True)).column("path").to_pylist())
    assert {r["path"] for r in files.to_pylist() if r["table"] == "scores"} <= committed


def test_rerunning_a_finished_run_writes_nothing(env):
    lake = env["lake"]
    before = _versions(lake)
    again = run_backfill(catalog_uri=env["catalog"].uri, lake_root=lake.root, policy_path=POLICY_V1,
                         run_id="it-full", profile_path=env["profile"], progress=False)
    assert again.already_done and again.selected_pairs == ITEMS
    assert _versions(lake) == before


def test_interrupted_run_resumes_without_duplicates(env):
    from moderation.config import load_model_registry
    from moderation.scoring.chunks import ChunkWriter

    lake = env["lake"]
    ids = sorted(_catalog_ids(env["catalog"].uri))
    # Simulate a run killed after one committed chunk: copy 50 rows of it-full as it-resume's chunk 0.
    first = lake.read("scores", filter=(pc.field("run_id") == "it-full") & pc.field("item_id").isin(ids[:60]))
    first = first.set_column(first.schema.get_field_index("run_id"), "run_id", pa.array(["it-resume"] * first.num_rows))
    spec = load_model_registry()["text-minilm-heads-v1"]
    writer = ChunkWriter(lake, run_id="it-resume", model=spec, chunk_pairs=10_000)
    assert lake.append_chunk("scores", first, app_id=writer.app_id, version=0)
    res = run_backfill(catalog_uri=env["catalog"].uri, lake_root=lake.root, policy_path=POLICY_V1,
                       run_id="it-resume", profile_path=env["profile"], progress=False)
    scored, quarantined, dupes = run_accounting(lake, "it-resume")
    assert res.status == "succeeded" and dupes == 0
    assert scored + quarantined == ITEMS and res.scored_pairs == scored


def test_where_and_limit_select_a_slice(env):
    lake = env["lake"]
    res = run_backfill(catalog_uri=env["catalog"].uri, lake_root=lake.root, policy_path=POLICY_V1,
                       run_id="it-tracks", where="item_type = 'track'", limit=15,
                       profile_path=env["profile"], progress=False)
    assert res.selected_pairs == 15 == res.scored_pairs + res.quarantined_pairs
    types = lake.read("scores", filter=pc.field("run_id") == "it-tracks").column("item_type").to_pylist()
    assert set(types) == {"track"}
    assert read_run(lake, "it-tracks").where_expr == "item_type = 'track'"


def test_two_policy_versions_decide_differently_from_the_same_scores(env):
    lake = env["lake"]
    scores_version = lake.version("scores")
    d1 = run_decide(lake_root=lake.root, policy_path=POLICY_V1)
    d2 = run_decide(lake_root=lake.root, policy_path=POLICY_V2)
    assert d1.scores_version == d2.scores_version == scores_version
    assert lake.version("scores") == scores_version  # decide never touches scores
    v = lake.read("violations")

    def decisions(version):
        t = v.filter(pc.field("policy_version") == version)
        return {(r["item_id"], r["category"], r["decision"]) for r in t.select(["item_id", "category", "decision"]).to_pylist()}

    one, two = decisions(1), decisions(2)
    assert one and two and one != two
    # v2 lowers the hate threshold: every v1 hate violation is a v2 hate violation too.
    assert {(i, c) for i, c, d in one if c == "hate" and d == "violation"} <= {(i, c) for i, c, d in two if c == "hate" and d == "violation"}
    # Deciding again replaces the version's rows.
    run_decide(lake_root=lake.root, policy_path=POLICY_V1)
    assert decisions(1) == one
    assert lake.read("violations").num_rows == v.num_rows


@pytest.mark.spark
def test_report_equals_counts_from_violations(env, spark):
    from moderation.reporting.report import run_report

    lake = env["lake"]
    run_decide(lake_root=lake.root, policy_path=POLICY_V1)
    run_decide(lake_root=lake.root, policy_path=POLICY_V2)
    report = run_report(lake.root, spark=spark)
    from deltalake import DeltaTable

    rates = DeltaTable(lake.uri("reports/violation_rates")).to_pyarrow_table()
    # Independent count: violations exploded by market, grouped with pyarrow.
    v = lake.read("violations")
    rows = []
    for r in v.to_pylist():
        for m in r["markets"] or ["none"]:
            rows.append((r["policy_version"], r["category"], r["item_type"], m, r["language"] or "unknown", r["decision"]))
    expected = Counter((pv, c, t, m, lang) for pv, c, t, m, lang, d in rows if d == "violation")
    got = {(r["policy_version"], r["category"], r["item_type"], r["market"], r["language"]): r["violations"]
           for r in rates.to_pylist() if r["violations"]}
    assert got == dict(expected)
    reviews = Counter((pv, c, t, m, lang) for pv, c, t, m, lang, d in rows if d == "review")
    got_reviews = {(r["policy_version"], r["category"], r["item_type"], r["market"], r["language"]): r["reviews"]
                   for r in rates.to_pylist() if r["reviews"]}
    assert got_reviews == dict(reviews)
    assert all(0.0 <= r["violation_rate"] <= 1.0 for r in rates.to_pylist())
    assert "catalog-safety" in report.summary()


def test_cli_rejects_bad_input_before_writing(env, tmp_path):
    runner = CliRunner()
    bad_policy = tmp_path / "bad.yaml"
    bad_policy.write_text(POLICY_V1.read_text().replace("threshold: 0.90", "threshold: 9.0", 1))
    lake_dir = tmp_path / "lake"
    r = runner.invoke(app, ["backfill", "--catalog", env["catalog"].uri, "--lake", str(lake_dir), "--policy", str(bad_policy)])
    assert r.exit_code == 2
    assert str(bad_policy) in r.output and "categories.hate.threshold" in r.output
    assert not lake_dir.exists()

    from deltalake import write_deltalake

    bad_catalog = tmp_path / "bad_catalog"
    write_deltalake(str(bad_catalog), pa.table({"id": ["a"], "title": ["x"]}))
    r = runner.invoke(app, ["backfill", "--catalog", str(bad_catalog), "--lake", str(lake_dir), "--policy", str(POLICY_V1)])
    assert r.exit_code == 2 and "missing required column(s) ['item_id']" in r.output and "--map" in r.output
    assert not lake_dir.exists()


def test_bad_rows_are_quarantined_with_reasons_not_dropped(env, tmp_path):
    from deltalake import write_deltalake

    catalog = str(tmp_path / "odd_catalog")
    write_deltalake(catalog, pa.table({
        "item_id": ["ok1", None, "blank", "huge", "ctrl"],
        "item_type": ["track", "track", "episode", "audiobook", "show"],
        "title": ["Summer Rain", "No Id", "   ", "Long Book", "\x00\x07\x1b"],
        "description": [None, None, "\t\n", None, None],
        "body_text": [None, None, None, "word " * 400_000, None],  # 2 MB transcript
    }))
    lake = Lake(str(tmp_path / "lake"))
    res = run_backfill(catalog_uri=catalog, lake_root=lake.root, policy_path=POLICY_V1, run_id="odd",
                       profile_path=env["profile"], progress=False)
    assert res.status == "succeeded" and res.selected_pairs == 5 == res.scored_pairs + res.quarantined_pairs
    q = {r["item_id"]: r["reason"] for r in lake.read("quarantine").to_pylist()}
    assert q == {None: "missing_item_id", "blank": "no_usable_text", "ctrl": "no_usable_text"}
    assert sorted(lake.read("scores").column("item_id").to_pylist()) == ["huge", "ok1"]
    huge = lake.read("scores", filter=pc.field("item_id") == "huge").to_pylist()[0]
    assert (huge["units_scored"], huge["units_total"], huge["coverage_reason"]) == (20_000, 400_002, "limit_words")


@pytest.mark.spark
def test_demo_command_end_to_end(ray_local, spark, data_dir, tmp_path):
    lake_dir = tmp_path / "demo"
    r = CliRunner().invoke(app, ["demo", "--lake", str(lake_dir), "--items", "60", "--data-dir", str(data_dir)])
    assert r.exit_code == 0, r.output
    import re

    m = re.search(r"selected pairs (\d+) = scored (\d+) \+ quarantined (\d+)  \[OK\]", r.output)
    assert m and int(m[1]) >= 60 and int(m[1]) == int(m[2]) + int(m[3])  # text for all 60, plus media pairs
    assert "modalities audio, image, text" in r.output
    for version in (1, 2, 3, 9):
        assert f"policy catalog-safety v{version}" in r.output
    # v9's model (the fine-tuned multilingual e5) is scored by a backfill of its own, and v9's
    # categories appear beside v1's in the summary table.
    assert "run demo-backfill-v0-policy-v9: succeeded" in r.output
    assert "violen v9" in r.output and "hate v1" in r.output
    lake = Lake(str(lake_dir))
    for table in ("catalog", "scores", "quarantine", "violations", "runs", "hash_bank", "reports/violation_rates"):
        assert lake.exists(table), table
    # A second demo reuses the catalog and the finished backfill: scores unchanged.
    before = lake.version("scores")
    r = CliRunner().invoke(app, ["demo", "--lake", str(lake_dir), "--items", "60", "--data-dir", str(data_dir)])
    assert r.exit_code == 0 and "already finished" in r.output and lake.version("scores") == before
