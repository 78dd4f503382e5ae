"""The review loop as a user drives it from the command line: queue items for review, import the
moderators' decisions and appeal outcomes, turn them into a new evaluation dataset version, and
evaluate the real text model on it."""

from __future__ import annotations

import datetime as dt

import pyarrow.compute as pc
from deltalake import write_deltalake

from moderation.evaluation.datasets import read_dataset
from moderation.storage.lake import Lake
from tests.conftest import POLICY_V1
from tests.evaluation.test_evaluation import cli
from tests.evaluation.test_review_loop import score_rows, write_catalog

T1 = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
TEXTS = {
    "t1": "I hate those people, they are vermin and should be wiped out",
    "t2": "what a lovely song about the summer by the sea",
    "t3": "buy cheap followers now click this link to win free money",
    "t4": "you are an idiot and everyone laughs at you",
    "t5": "thanks for listening, new episode every friday",
    "t6": "this track is about friendship and long drives",
}


def test_queue_review_import_and_evaluate_from_the_command_line(tmp_path):
    lake = Lake(str(tmp_path / "lake"))
    write_deltalake(lake.uri("scores"), score_rows([
        ("t1", {"hate": 0.86}, "en", "track"),  # in the band around hate's 0.90
        ("t2", {"hate": 0.05}, "en", "track"),
        ("t3", {"spam": 0.95}, "en", "episode"),  # in the band around spam's 0.97
        ("t4", {"harassment": 0.82, "hate": 0.4}, "de", "track"),  # harassment review band
        ("t5", {"hate": 0.02}, "en", "episode"),
        ("t6", {"hate": 0.01}, "en", "track"),
    ], when=T1))
    catalog = write_catalog(tmp_path / "catalog", TEXTS)

    out = cli("review-queue", "--lake", lake.root, "--policy", POLICY_V1, "--per-stratum", 5, "--audit", 2,
              "--seed", 1, "--queue-id", "q1")
    assert "review queue q1" in out and "uncertain" in out
    queue = lake.read("review_queue").to_pylist()
    uncertain = {(r["item_id"], r["category"]) for r in queue if r["reason"] == "uncertain"}
    assert uncertain == {("t1", "hate"), ("t3", "spam"), ("t4", "harassment")}
    audited = {r["item_id"] for r in queue if r["reason"] == "audit"}
    assert len(audited) == 2 and not audited & {"t1", "t3", "t4"}

    reviews = tmp_path / "reviews.csv"
    reviews.write_text("item_id,category,decision,source,reviewed_at\n"
                       "t1,hate,violating,moderator,2026-01-02T09:00:00Z\n"
                       "t3,spam,violating,moderator,2026-01-02T09:00:00Z\n"
                       "t4,harassment,violating,moderator,2026-01-02T09:00:00Z\n"
                       "t4,harassment,overturned,appeal,2026-01-05T09:00:00Z\n"
                       "t2,hate,not_violating,moderator,2026-01-02T09:00:00Z\n"
                       "t5,hate,not_violating,moderator,2026-01-02T09:00:00Z\n")
    assert "6 written" in cli("labels", "import", reviews, "--lake", lake.root, "--policy", POLICY_V1)
    assert "already imported" in cli("labels", "import", reviews, "--lake", lake.root)
    # Reviewed pairs are not queued again while their label is newer than their score.
    cli("review-queue", "--lake", lake.root, "--policy", POLICY_V1, "--audit", 0, "--queue-id", "q2")
    again = lake.read("review_queue", filter=pc.field("queue_id") == "q2").to_pylist()
    assert not {(r["item_id"], r["category"]) for r in again} & {("t1", "hate"), ("t3", "spam"), ("t4", "harassment")}

    out = cli("eval", "from-labels", "--lake", lake.root, "--catalog", catalog)
    assert "catalog_reviews v0" in out
    data, version = read_dataset(lake, "catalog_reviews")
    labels = {(r["example_id"], c): r[f"label_{c}"] for r in data.to_pylist() for c in ("hate", "spam", "harassment")
              if r.get(f"label_{c}") is not None}
    assert labels == {("t1#text", "hate"): 1, ("t3#text", "spam"): 1, ("t4#text", "harassment"): 0,  # overturned
                      ("t2#text", "hate"): 0, ("t5#text", "hate"): 0}
    assert "unchanged" in cli("eval", "from-labels", "--lake", lake.root, "--catalog", catalog)

    out = cli("evaluate", "--lake", lake.root, "--model", "text-minilm-heads-v1", "--dataset", "catalog_reviews",
              "--policy", POLICY_V1, "--bootstrap", 50, "--no-baselines")
    assert "dataset catalog_reviews v0" in out
    results = lake.read("eval/results").to_pandas()
    assert set(results["dataset"]) == {"catalog_reviews"} and set(results["category"]) == {"hate", "spam", "harassment"}
    hate = results[(results["category"] == "hate") & results["slice_column"].isna()].iloc[0]
    assert (hate["n"], hate["positives"]) == (3, 1)

    # A new review makes a new dataset version, and the next evaluation includes it.
    more = tmp_path / "reviews-2.csv"
    more.write_text("item_id,category,label,reviewed_at\nt6,hate,0,2026-01-06T09:00:00Z\n")
    cli("labels", "import", more, "--lake", lake.root)
    assert "catalog_reviews v1" in cli("eval", "from-labels", "--lake", lake.root, "--catalog", catalog)
    cli("evaluate", "--lake", lake.root, "--model", "text-minilm-heads-v1", "--dataset", "catalog_reviews",
        "--policy", POLICY_V1, "--bootstrap", 0, "--no-baselines")
    results = lake.read("eval/results", filter=pc.field("dataset_version") == 1).to_pandas()
    hate = results[(results["category"] == "hate") & results["slice_column"].isna()].iloc[0]
    assert (hate["n"], hate["positives"]) == (4, 1) and version == 0
