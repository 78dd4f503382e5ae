"""The evaluation framework: datasets, metrics, evaluate with the real text model and the
lexical baseline, the promotion gate in front of backfill, calibration of thresholds."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pytest
import yaml
from sklearn.metrics import (
    average_precision_score,
    f1_score,
    precision_score,
    recall_score,
    roc_auc_score,
)
from typer.testing import CliRunner

from moderation.cli import app
from moderation.config import load_model_registry, load_policy
from moderation.evaluation import datasets as ds
from moderation.evaluation.calibrate import calibrate
from moderation.evaluation.evaluate import evaluate, latest_results
from moderation.evaluation.gate import GateBlocked, GateConfig, check_gate
from moderation.evaluation.metrics import (
    bootstrap_intervals,
    expected_calibration_error,
    paired_difference,
    point_metrics,
    recall_at_precision,
    weighted_metrics,
)
from moderation.runs import RunRecord, read_run, write_run
from moderation.storage.lake import Lake
from tests.conftest import POLICY_V1

SMALL = 90  # examples of the small dataset cut from HateXplain test at run time


def cli(*args, code: int = 0) -> str:
    out = CliRunner().invoke(app, [str(a) for a in args])
    assert out.exit_code == code, out.output
    return out.output


# ---------------------------------------------------------------------------------------
# Metrics
# ---------------------------------------------------------------------------------------
def test_resampled_metrics_equal_scikit_learn_with_weights():
    rng = np.random.default_rng(3)
    n = 400
    y = rng.integers(0, 2, n)
    s = np.round(np.clip(0.35 * y + rng.random(n) * 0.7, 0, 1), 2)  # rounded: many ties
    w = rng.multinomial(n, np.full(n, 1 / n), size=6).astype(float)
    got = weighted_metrics(y, s, w, threshold=0.5)
    for i in range(len(w)):
        kw = {"sample_weight": w[i]}
        assert got["pr_auc"][i] == pytest.approx(average_precision_score(y, s, **kw), abs=1e-12)
        assert got["roc_auc"][i] == pytest.approx(roc_auc_score(y, s, **kw), abs=1e-12)
        assert got["precision"][i] == pytest.approx(precision_score(y, s >= 0.5, **kw), abs=1e-12)
        assert got["recall"][i] == pytest.approx(recall_score(y, s >= 0.5, **kw), abs=1e-12)
        assert got["f1"][i] == pytest.approx(f1_score(y, s >= 0.5, **kw), abs=1e-12)


def test_paired_difference_of_two_models():
    rng = np.random.default_rng(5)
    n = 300
    y = rng.integers(0, 2, n)
    good = y + rng.normal(0, 0.6, n)  # separates the classes
    noise = rng.normal(0, 1, n)        # does not
    res = paired_difference(y, good, noise, samples=400, seed=2)
    for metric, score in (("pr_auc", average_precision_score), ("roc_auc", roc_auc_score)):
        r = res[metric]
        assert r["a"] == pytest.approx(score(y, good)) and r["b"] == pytest.approx(score(y, noise))
        assert r["diff"] == pytest.approx(r["a"] - r["b"]) and r["lo"] <= r["diff"] <= r["hi"]
        assert r["verdict"] == "better" and r["lo"] > 0
    assert paired_difference(y, noise, good, samples=400, seed=2)["roc_auc"]["verdict"] == "worse"
    # A model against itself: difference 0 on every resample, so no clear difference.
    same = paired_difference(y, good, good, samples=200)["pr_auc"]
    assert same["diff"] == 0 and same["lo"] == same["hi"] == 0 and same["verdict"] == "no clear difference"
    # The paired interval is narrower than the two separate intervals suggest: a small, consistent
    # improvement is detected although the separate intervals overlap.
    nudged = good + 0.15 * y
    sep_a = bootstrap_intervals(y, nudged, 0.5, samples=400, seed=2)["roc_auc"]
    sep_b = bootstrap_intervals(y, good, 0.5, samples=400, seed=2)["roc_auc"]
    assert sep_a[0] < sep_b[1]  # overlapping
    assert paired_difference(y, nudged, good, samples=400, seed=2)["roc_auc"]["verdict"] == "better"
    one_class = paired_difference(np.ones(10, int), good[:10], noise[:10], samples=100)
    assert one_class["pr_auc"]["verdict"] is None and one_class["pr_auc"]["diff"] is None
    with pytest.raises(ValueError, match="labels"):
        paired_difference(y, good[:-1], noise)
    # Two prediction sets of the same examples must agree on the labels.
    from moderation.errors import ModerationError
    from moderation.evaluation.compare import compare_predictions

    a = pd.DataFrame({"example_id": ["e1", "e2"], "category": "hate", "score": [0.1, 0.9], "label": [0, 1]})
    with pytest.raises(ModerationError, match="different labels"):
        compare_predictions(a, a.assign(label=[1, 1]), {}, bootstrap=100)


def test_point_metrics_intervals_and_calibration_error():
    rng = np.random.default_rng(0)
    s = rng.random(4000)
    y = (rng.random(4000) < s).astype(int)  # calibrated by construction
    assert expected_calibration_error(y, s) < 0.03
    assert expected_calibration_error(y, np.clip(s + 0.3, 0, 1)) > 0.2
    m = point_metrics(y, s, 0.5, target_precision=0.8)
    assert m["n"] == 4000 and m["positives"] == int(y.sum())
    assert m["pr_auc"] == pytest.approx(average_precision_score(y, s))
    ci = bootstrap_intervals(y, s, 0.5, samples=300, seed=1)
    for name in ("pr_auc", "roc_auc", "precision", "recall", "f1", "fpr"):
        lo, hi = ci[name]
        assert lo <= m[name] <= hi and hi - lo < 0.1
    # Recall at target precision: the best recall among thresholds reaching the precision.
    rec, thr = recall_at_precision(y, s, 0.8)
    best = max((((s >= t) & (y == 1)).sum() / y.sum()) for t in np.unique(s)
               if y[s >= t].mean() >= 0.8)
    assert rec == pytest.approx(best) and y[s >= thr].mean() >= 0.8
    # One class only: threshold-free metrics undefined, not an error.
    one = point_metrics(np.zeros(10, int), s[:10], 0.5, 0.8)
    assert one["pr_auc"] is None and one["roc_auc"] is None
    assert bootstrap_intervals(np.zeros(10, int), s[:10], 0.5, samples=50)["pr_auc"] is None


# ---------------------------------------------------------------------------------------
# Datasets
# ---------------------------------------------------------------------------------------
def test_standard_datasets_are_built_from_held_out_splits(tmp_path, data_dir):
    lake = Lake(str(tmp_path / "lake"))
    done = ds.import_standard(lake, data_dir)
    assert {n for n, _, written in done if written} == {s.name for s in ds.STANDARD_DATASETS}
    listed = {d["name"]: d for d in ds.list_datasets(lake)}
    test, version = ds.read_dataset(lake, "hatexplain_test")
    lines = [json.loads(x) for x in (data_dir / "text/hatexplain/test.jsonl").read_text().splitlines()]
    from collections import Counter

    kept = [r for r in lines if Counter(r["annotators"]["label"]).most_common(1)[0][1] >= 2]
    assert test.num_rows == len(kept) == listed["hatexplain_test"]["rows"]
    assert set(test.column("example_id").to_pylist()) == {r["id"] for r in kept}
    majority = {r["id"]: Counter(r["annotators"]["label"]).most_common(1)[0][0] for r in kept}
    hate = dict(zip(test.column("example_id").to_pylist(), test.column("label_hate").to_pylist()))
    assert all(hate[i] == int(lbl == 0) for i, lbl in majority.items())
    assert listed["hatexplain_test"]["labels"]["hate"] == (sum(v == 0 for v in majority.values()), len(kept))
    assert "target_group" in listed["hatexplain_test"]["slices"]
    groups = {g for gs in test.column("slice_target_group").to_pylist() for g in gs}
    assert {"African", "Jewish", "Women", "none"} <= groups
    # The YouTube set is the held-out video only; importing again writes no new version.
    yt, _ = ds.read_dataset(lake, "youtube_spam_heldout")
    assert set(yt.column("slice_video").to_pylist()) == {"09-pRpeEdMmmQ0"}
    again = ds.import_standard(lake, data_dir, ["hatexplain_test"])
    assert again == [("hatexplain_test", version, False)]
    out = cli("eval", "datasets", "--lake", lake.root)
    assert "hatexplain_test" in out and "target_group" in out


def test_import_a_user_file_and_its_errors(tmp_path):
    lake = Lake(str(tmp_path / "lake"))
    f = tmp_path / "reviews.csv"
    f.write_text("id,comment,is_hate,group\n1,you are great,0,women\n2,awful slur here,yes,women|jewish\n"
                 "3,neutral text,,none\n")
    out = cli("eval", "import", f, "--lake", lake.root, "--name", "mine", "--label-column", "hate=is_hate",
              "--slice-column", "group", "--text-column", "comment", "--id-column", "id")
    assert "wrote dataset mine v0" in out
    table, version = ds.read_dataset(lake, "mine")
    assert table.column("label_hate").to_pylist() == [0, 1, None]
    assert table.column("slice_group").to_pylist() == [["women"], ["women", "jewish"], ["none"]]
    assert "unchanged: dataset mine v0" in cli("eval", "import", f, "--lake", lake.root, "--name", "mine",
                                               "--label-column", "hate=is_hate", "--slice-column", "group",
                                               "--text-column", "comment", "--id-column", "id")
    f.write_text(f.read_text() + "4,more text,1,women\n")
    cli("eval", "import", f, "--lake", lake.root, "--name", "mine", "--label-column", "hate=is_hate",
        "--text-column", "comment", "--id-column", "id")
    assert ds.read_dataset(lake, "mine")[1] == 1 and ds.read_dataset(lake, "mine", 0)[0].num_rows == 3

    bad = tmp_path / "bad.csv"
    bad.write_text("text,hate\nok,0\nhmm,maybe\n")
    err = cli("eval", "import", bad, "--lake", lake.root, "--name", "bad", "--label-column", "hate", code=2)
    assert "bad.csv" in err and "row 2" in err and "column hate" in err and "'maybe'" in err
    dup = tmp_path / "dup.csv"
    dup.write_text("id,text,hate\na,x,0\na,y,1\n")
    err = cli("eval", "import", dup, "--lake", lake.root, "--name", "dup", "--label-column", "hate",
              "--id-column", "id", code=2)
    assert "example_id 'a' appears 2 times" in err
    err = cli("eval", "import", dup, "--lake", lake.root, "--name", "dup", "--label-column", "hate=nope", code=2)
    assert "no column 'nope'" in err
    assert not Lake(lake.root).exists("eval/datasets/bad") and not Lake(lake.root).exists("eval/datasets/dup")


# ---------------------------------------------------------------------------------------
# evaluate, gate, calibrate: the real text model and the lexical baseline on a small set
# ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def env(tmp_path_factory, data_dir):
    root = tmp_path_factory.mktemp("eval")
    lake = Lake(str(root / "lake"))
    ds.import_standard(lake, data_dir, ["hatexplain_test"])
    full, _ = ds.read_dataset(lake, "hatexplain_test")
    # A small, balanced cut of the held-out split keeps the models' CPU time low.
    df = full.to_pandas()
    small = pd.concat([df[df["label_hate"] == 1].head(SMALL // 3), df[(df["label_harassment"] == 1)
                       & (df["label_hate"] == 0)].head(SMALL // 3), df[df["label_harassment"] == 0].head(SMALL // 3)])
    ds.write_dataset(lake, "hx_small", pa.Table.from_pandas(small, preserve_index=False), description="test cut")
    policies = root / "policies"
    policies.mkdir()
    shutil.copy(POLICY_V1, policies / "v1.yaml")
    strict = yaml.safe_load(POLICY_V1.read_text())
    strict.update(version=5, status="draft")
    for rule in strict["categories"].values():
        rule.update(threshold=0.995, review_threshold=0.99)
    (policies / "v5.yaml").write_text(yaml.safe_dump(strict))
    first = evaluate(lake_root=lake.root, model_id="text-minilm-heads-v1", dataset="hx_small",
                     policy_path=policies / "v1.yaml", bootstrap=200, progress=False)
    return {"root": root, "lake": lake, "policies": policies, "first": first}


def test_evaluate_writes_predictions_and_results_for_model_and_baseline(env):
    lake, first = env["lake"], env["first"]
    roles = {e.spec.model_id: e.spec for e in first.evaluations}
    assert set(roles) == {"text-minilm-heads-v1", "text-profanity-check-v1"}
    preds = lake.read("eval/predictions").to_pandas()
    results = lake.read("eval/results").to_pandas()
    assert len(preds) == 2 * 2 * SMALL  # 2 models x 2 categories (hate, harassment) x examples
    registry = load_model_registry()
    for model_id in roles:
        digest = registry[model_id].digest
        mine = results[results["model_digest"] == digest]
        assert set(mine["model_role"]) == {"baseline" if "profanity" in model_id else "production"}
        assert set(mine["policy_version"]) == {1} and set(mine["dataset"]) == {"hx_small"}
        for cat in ("hate", "harassment"):
            p = preds[(preds["model_digest"] == digest) & (preds["category"] == cat)]
            overall = mine[(mine["category"] == cat) & mine["slice_column"].isna()].iloc[0]
            thr = load_policy(env["policies"] / "v1.yaml").policy.categories[cat].threshold
            assert overall["threshold"] == pytest.approx(thr)
            assert overall["pr_auc"] == pytest.approx(average_precision_score(p["label"], p["score"]))
            assert overall["roc_auc"] == pytest.approx(roc_auc_score(p["label"], p["score"]))
            assert overall["recall"] == pytest.approx(recall_score(p["label"], p["score"] >= thr))
            assert overall["pr_auc_lo"] <= overall["pr_auc"] <= overall["pr_auc_hi"]
            slices = mine[(mine["category"] == cat) & (mine["slice_column"] == "target_group")]
            assert len(slices) >= 3 and slices["n"].sum() >= overall["n"]
            gaps = slices["fpr_gap"].dropna()
            if len(gaps):
                assert gaps.min() == 0 and overall["fpr_gap"] == pytest.approx(gaps.max())
    # The summary prints both models, the baseline marked.
    text = first.summary()
    assert "text-minilm-heads-v1" in text and "text-profanity-check-v1 (base)" in text and "language=en" in text

    # Evaluating again reuses the stored predictions and replaces (not duplicates) the results.
    again = evaluate(lake_root=lake.root, model_id="text-minilm-heads-v1", dataset="hx_small",
                     policy_path=env["policies"] / "v1.yaml", bootstrap=200, progress=False)
    assert not any(e.newly_scored for e in again.evaluations)
    assert len(lake.read("eval/predictions")) == len(preds)
    assert len(lake.read("eval/results")) == len(results)
    assert set(latest_results(lake)["eval_id"]) == {again.eval_id}


def test_compare_models_per_slice_from_the_command_line(env, tmp_path):
    lake = env["lake"]
    n_preds = len(lake.read("eval/predictions"))
    out = tmp_path / "cmp.csv"
    text = cli("eval", "compare", "--lake", lake.root, "--model", "text-minilm-heads-v1", "--dataset", "hx_small",
               "--bootstrap", 200, "--min-slice-n", 10, "--csv", out)
    assert "text-minilm-heads-v1 (A) vs text-profanity-check-v1 (B)" in text
    assert "hate PR-AUC: of " in text and "paired 95% bootstrap interval" in text
    assert len(lake.read("eval/predictions")) == n_preds  # stored predictions reused, nothing written
    rows = pd.read_csv(out)
    preds = lake.read("eval/predictions").to_pandas()
    registry = load_model_registry()
    a = preds[preds["model_digest"] == registry["text-minilm-heads-v1"].digest]
    b = preds[preds["model_digest"] == registry["text-profanity-check-v1"].digest]
    for cat in ("hate", "harassment"):
        overall = rows[(rows["category"] == cat) & rows["slice_column"].isna() & (rows["metric"] == "pr_auc")].iloc[0]
        pa_, pb_ = a[a["category"] == cat], b[b["category"] == cat]
        assert overall["a"] == pytest.approx(average_precision_score(pa_["label"], pa_["score"]))
        assert overall["b"] == pytest.approx(average_precision_score(pb_["label"], pb_["score"]))
        assert overall["n"] == SMALL and overall["lo"] <= overall["diff"] <= overall["hi"]
    sl = rows[rows["slice_column"].eq("target_group")]
    assert len(sl) and sl["n"].min() >= 10 and set(sl["verdict"].dropna()) <= {"better", "worse", "no clear difference"}
    # Against itself: every defined verdict is "no clear difference".
    text = cli("eval", "compare", "--lake", lake.root, "--model", "text-minilm-heads-v1", "--dataset", "hx_small",
               "--against", "text-minilm-heads-v1", "--bootstrap", 100)
    assert "worse in 0" in text and "A is better in 0" in text
    out = cli("eval", "compare", "--lake", lake.root, "--model", "nope", "--dataset", "hx_small", code=2)
    assert "unknown model" in out
    assert "at least 100" in cli("eval", "compare", "--lake", lake.root, "--model", "text-minilm-heads-v1",
                                 "--dataset", "hx_small", "--bootstrap", 10, code=2)


def test_gate_blocks_a_worse_candidate_and_force_is_recorded(env, tmp_path, data_dir, ray_local, monkeypatch):
    from moderation.demo.catalog import write_demo_catalog
    from moderation.scoring.backfill import run_backfill

    lake, policies = env["lake"], env["policies"]
    registry = load_model_registry()
    candidate = load_policy(policies / "v5.yaml", registry)
    config = GateConfig(datasets=["hx_small"], tolerance={"recall": 0.05, "pr_auc": 0.01},
                        slice_tolerance={"recall": 0.1}, min_slice_examples=10)
    # Not evaluated yet: blocked, naming the command that fills the gap.
    gate = check_gate(lake, candidate, registry, config=config)
    assert gate.status == "blocked" and any("moderation evaluate" in m and "v5.yaml" in m for m in gate.missing)
    evaluate(lake_root=lake.root, model_id="text-minilm-heads-v1", dataset="hx_small",
             policy_path=policies / "v5.yaml", bootstrap=0, baselines=False, progress=False)
    gate = check_gate(lake, candidate, registry, config=config)
    assert gate.status == "blocked" and not gate.missing
    assert {(d.category, d.metric) for d in gate.drops if d.slice == "all"} >= {("hate", "recall")}
    assert not any(d.metric == "pr_auc" for d in gate.drops)  # same model: ranking unchanged
    # The live version itself needs no gate.
    assert check_gate(lake, load_policy(policies / "v1.yaml", registry), registry, config=config).status \
        == "not_required"

    gate_file = tmp_path / "gate.yaml"
    gate_file.write_text(yaml.safe_dump(config.model_dump()))
    catalog = write_demo_catalog(str(tmp_path / "catalog"), items=6, data_dir=data_dir)
    profile = tmp_path / "profile.yaml"
    profile.write_text(yaml.safe_dump({"batch_size": 8, "actors": 1, "actor_num_cpus": 1.0, "chunk_pairs": 8}))
    import moderation.evaluation.gate as gate_mod

    default = gate_mod.load_gate_config
    monkeypatch.setattr(gate_mod, "load_gate_config", lambda path=None: default(gate_file))
    with pytest.raises(GateBlocked, match="recall"):
        run_backfill(catalog_uri=catalog.uri, lake_root=lake.root, policy_path=policies / "v5.yaml",
                     run_id="cand-1", profile_path=profile, progress=False)
    blocked = read_run(lake, "cand-1")
    assert blocked.status == "blocked" and blocked.gate_status == "blocked"
    assert json.loads(blocked.gate_detail)["drops"] and not lake.exists("scores")
    forced = run_backfill(catalog_uri=catalog.uri, lake_root=lake.root, policy_path=policies / "v5.yaml",
                          run_id="cand-2", profile_path=profile, progress=False, force=True)
    assert forced.status == "succeeded"
    row = read_run(lake, "cand-2")
    assert row.gate_status == "overridden" and row.forced is True and row.status == "succeeded"
    listed = cli("runs", "list", "--lake", lake.root)
    assert "cand-1" in listed and "blocked" in listed


def test_calibrate_writes_a_valid_draft_version(env):
    lake, policies = env["lake"], env["policies"]
    result = calibrate(lake_root=lake.root, model_id="text-minilm-heads-v1", dataset="hx_small",
                       policy_path=policies / "v1.yaml", target_precision=0.8, progress=False)
    assert result.path == policies / "v6.yaml" and result.version == 6  # v5 exists beside it
    new = load_policy(result.path)
    assert new.policy.status == "draft" and new.policy.version == 6
    assert "moderation calibrate" in result.path.read_text().splitlines()[0]
    preds = lake.read("eval/predictions", filter=pc.field("model_id") == "text-minilm-heads-v1").to_pandas()
    reached = 0
    assert {c.category for c in result.categories if c.n == 0} == {"spam"}  # hx_small labels no spam
    assert new.policy.categories["spam"] == load_policy(POLICY_V1).policy.categories["spam"]
    for c in result.categories:
        p = preds[preds["category"] == c.category]
        rule = new.policy.categories[c.category]
        if c.threshold is None:
            assert rule.threshold == c.old_threshold
            continue
        reached += 1
        flagged = p["score"] >= rule.threshold
        assert p.loc[flagged, "label"].mean() >= 0.8 - 1e-9
        assert rule.review_threshold is None or rule.review_threshold < rule.threshold
    assert reached >= 1
    # Versions are never overwritten; the base file is untouched.
    assert load_policy(policies / "v1.yaml").content_hash == load_policy(POLICY_V1).content_hash
    out = cli("calibrate", "--lake", lake.root, "--model", "text-minilm-heads-v1", "--dataset", "hx_small",
              "--policy", policies / "v1.yaml", "--target-precision", "0.7", "--out", result.path, code=2)
    assert "exists" in out


def test_calibrate_only_some_categories(env, tmp_path):
    """--category: the other categories keep the base rule (said in the file and the summary);
    an unknown category is an error naming it, nothing written."""
    lake, policies = env["lake"], env["policies"]
    out = cli("calibrate", "--lake", lake.root, "--model", "text-minilm-heads-v1", "--dataset", "hx_small",
              "--policy", policies / "v1.yaml", "--target-precision", "0.8", "--category", "hate",
              "--out", tmp_path / "v9.yaml")
    new, base = load_policy(tmp_path / "v9.yaml").policy, load_policy(POLICY_V1).policy
    assert new.categories["harassment"] == base.categories["harassment"]
    assert new.categories["hate"].threshold != base.categories["hate"].threshold
    assert "harassment  not calibrated (--category)" in out
    assert "base version's rule kept: harassment, spam" in (tmp_path / "v9.yaml").read_text()
    err = cli("calibrate", "--lake", lake.root, "--model", "text-minilm-heads-v1", "--dataset", "hx_small",
              "--policy", policies / "v1.yaml", "--target-precision", "0.8", "--category", "violence",
              "--out", tmp_path / "v10.yaml", code=2)
    assert "'violence'" in err and not (tmp_path / "v10.yaml").exists()


def test_eval_report_from_the_command_line(env, tmp_path):
    out = cli("eval", "report", "--lake", env["lake"].root, "--out", tmp_path / "report", "--min-slice-n", 10)
    html = (tmp_path / "report" / "eval_report.html").read_text()
    assert (tmp_path / "report" / "eval_summary.png").read_bytes()[:4] == b"\x89PNG"
    assert "hx_small" in html and "text-profanity-check-v1" in html and "text-minilm-heads-v1" in html
    assert "http://" not in html and "https://" not in html and "<script" not in html
    assert html.count("data:image/png;base64,") >= 5  # 2 categories x (PR, calibration) + summary
    assert "eval_report.html" in out
    assert "moderation evaluate" in cli("eval", "report", "--lake", tmp_path / "empty", "--out", tmp_path / "r2",
                                        code=2)


def test_calibrate_a_candidate_model_swaps_it_into_the_new_version(env, tmp_path):
    lake = env["lake"]
    base = yaml.safe_load(POLICY_V1.read_text())
    base["categories"].pop("spam")
    (tmp_path / "v1.yaml").write_text(yaml.safe_dump(base))
    result = calibrate(lake_root=lake.root, model_id="text-profanity-check-v1", dataset="hx_small",
                       policy_path=tmp_path / "v1.yaml", target_precision=0.6, progress=False)
    new = load_policy(result.path)
    assert new.policy.models == ("text-profanity-check-v1",) and new.policy.version == 2
    # A model that does not emit a category the replaced one scores cannot replace it.
    with pytest.raises(Exception, match="does not emit"):
        calibrate(lake_root=lake.root, model_id="text-profanity-check-v1", dataset="hx_small",
                  policy_path=env["policies"] / "v1.yaml", target_precision=0.6, progress=False)


def test_gate_holes_model_digest_change_unloadable_live_version_and_nothing_comparable(tmp_path):
    lake = Lake(str(tmp_path / "lake"))
    ds.write_dataset(lake, "tiny", pa.table({"example_id": ["a", "b"], "text": ["x", "y"],
                                             "label_hate": pa.array([1, 0], pa.int8())}))
    registry = load_model_registry()
    policies = tmp_path / "policies"
    policies.mkdir()
    shutil.copy(POLICY_V1, policies / "v1.yaml")
    live = load_policy(policies / "v1.yaml", registry)
    config = GateConfig(datasets=["tiny"], tolerance={"pr_auc": 0.01})

    # The live version scored with an older digest of the same model id: the "same" policy file is
    # a different candidate, and the old digest cannot be evaluated any more.
    write_run(lake, RunRecord(run_id="old", kind="backfill", status="succeeded", policy_id="catalog-safety",
                              policy_version=1, policy_hash=live.content_hash, model_ids=["text-minilm-heads-v1"],
                              model_digests=["0" * 64]))
    gate = check_gate(lake, live, registry, config=config)
    assert gate.status == "blocked" and set(gate.changed) == {"hate", "harassment", "spam"}
    assert any("no longer holds" in r for r in gate.reasons)

    # A spam-only threshold change that no gate dataset labels: nothing compared, said so.
    fresh = Lake(str(tmp_path / "fresh"))
    ds.write_dataset(fresh, "tiny", pa.table({"example_id": ["a"], "text": ["x"],
                                              "label_hate": pa.array([1], pa.int8())}))
    spam = yaml.safe_load(POLICY_V1.read_text())
    spam.update(version=7, status="draft")
    spam["categories"]["spam"]["threshold"] = 0.99
    (policies / "v7.yaml").write_text(yaml.safe_dump(spam))
    cand = load_policy(policies / "v7.yaml", registry)
    gate = check_gate(fresh, cand, registry, config=config)
    assert gate.status == "not_configured" and gate.changed == ["spam"]
    assert any("changed but not compared: spam" in n for n in gate.notes)
    strict = GateConfig(datasets=["tiny"], tolerance={"pr_auc": 0.01}, required=True)
    assert check_gate(fresh, cand, registry, config=strict).status == "blocked"

    # A live version that no longer loads (its model left the registry) blocks; --force can go on.
    broken = yaml.safe_load(POLICY_V1.read_text())
    broken["models"] = ["text-minilm-heads-v0-retired"]
    (policies / "v1.yaml").write_text(yaml.safe_dump(broken))
    gate = check_gate(fresh, cand, registry, config=config)
    assert gate.status == "blocked" and any("cannot be loaded" in r for r in gate.reasons)


def test_predictions_written_before_the_content_digest_column_are_rescored(tmp_path):
    from deltalake import write_deltalake

    from moderation.evaluation.evaluate import predictions

    lake = Lake(str(tmp_path / "lake"))
    ds.write_dataset(lake, "tiny", pa.table({"example_id": ["a", "b"], "text": ["you idiot", "nice song"],
                                             "label_harassment": pa.array([1, 0], pa.int8())}))
    spec = load_model_registry()["text-profanity-check-v1"]
    from moderation.schemas import EVAL_PREDICTIONS_SCHEMA

    old_schema = pa.schema([f for f in EVAL_PREDICTIONS_SCHEMA if f.name != "dataset_sha256"])
    stale = pa.Table.from_pylist([{"model_id": spec.model_id, "model_digest": spec.digest, "dataset": "tiny",
                                   "dataset_version": 0, "example_id": "a", "category": "harassment",
                                   "score": 0.5, "label": 1, "predicted_at": pd.Timestamp.now(tz="UTC")}],
                                 schema=old_schema)
    write_deltalake(lake.uri("eval/predictions"), stale)
    preds, version, newly = predictions(lake, spec, "tiny", progress=False)
    assert newly and version == 0 and len(preds) == 2  # scored again, the stale row replaced
    stored = lake.read("eval/predictions").to_pandas()
    assert len(stored) == 2 and stored["dataset_sha256"].notna().all() and 0.5 not in set(stored["score"])
    again = predictions(lake, spec, "tiny", progress=False)
    assert not again[2]


def test_an_image_dataset_measures_false_positives_on_benign_covers(tmp_path, data_dir):
    """The shared images are all benign: the image model is measured on its false-positive rate
    (PR-AUC is undefined with one class, and says so instead of failing)."""
    lake = Lake(str(tmp_path / "lake"))
    images = sorted((data_dir / "media" / "images").iterdir())
    f = tmp_path / "covers.csv"
    f.write_text("path,sexual\n" + "".join(f"{p},0\n" for p in images))
    cli("eval", "import", f, "--lake", lake.root, "--name", "benign_covers", "--modality", "image",
        "--media-column", "path", "--label-column", "sexual")
    result = evaluate(lake_root=lake.root, model_id="image-open-nsfw-v1", dataset="benign_covers",
                      bootstrap=100, progress=False)
    row = result.evaluations[0].rows.iloc[0]
    assert (row["n"], row["positives"], row["quarantined"]) == (len(images), 0, 0)
    assert pd.isna(row["pr_auc"]) and 0.0 <= row["fpr"] <= 0.2
    preds = lake.read("eval/predictions").to_pandas()
    assert len(preds) == len(images) and preds["score"].between(0, 1).all()


def test_evaluate_refuses_media_outside_the_media_roots(tmp_path):
    """An imported dataset's media_uri is confined to the media roots as a backfill's catalog
    media are (issue 15, point 5a): a path outside them is refused, naming the dataset, row and
    value, before any model loads or any byte is read."""
    lake = Lake(str(tmp_path / "lake"))
    outside = tmp_path / "elsewhere" / "cover.png"
    outside.parent.mkdir()
    outside.write_bytes(b"not read")
    f = tmp_path / "covers.csv"
    f.write_text(f"path,sexual\n{outside},0\n")
    cli("eval", "import", f, "--lake", lake.root, "--name", "covers", "--modality", "image",
        "--media-column", "path", "--label-column", "sexual")
    err = cli("evaluate", "--lake", lake.root, "--model", "image-open-nsfw-v1", "--dataset", "covers",
              "--no-baselines", "--bootstrap", 0, code=2)
    assert "dataset covers v0: row 1" in err and str(outside) in err and "media roots" in err
    assert not lake.exists("eval/predictions")

    from moderation.evaluation.evaluate import check_media_uris

    rows, _ = ds.read_dataset(lake, "covers")
    check_media_uris(rows, dataset="covers", version=0, roots=(str(outside.parent),))  # allowed: no error
    for uri in (f"{outside.parent}/../elsewhere/../../etc/passwd", "file:///etc/passwd", "http://x/y.png"):
        with pytest.raises(ds.DatasetError, match=r"dataset covers v0: row 1 .*media_uri"):
            check_media_uris(rows.set_column(rows.schema.get_field_index("media_uri"), "media_uri",
                                             pa.array([uri])), dataset="covers", version=0,
                             roots=(str(outside.parent),))


def test_scoring_progress_writes_no_control_sequences_to_a_log(monkeypatch, capsys):
    """With stderr not a terminal (a job's log), scoring prints no progress bar (issue 15, point 5f)."""
    from moderation.evaluation import evaluate as ev

    class Fake:
        def setup(self, device):
            pass

        def prepare(self, batch):
            return batch

        def process_batch(self, batch):
            n = batch.num_rows
            return pa.table({"item_id": batch.column("item_id"),
                             "category_scores": pa.array([[("hate", 0.5)]] * n, pa.map_(pa.string(), pa.float64())),
                             ev.QREASON: pa.nulls(n, pa.string())})

    monkeypatch.setattr(ev, "build_classifier", lambda *a, **k: Fake())
    rows = pa.table({"example_id": [f"e{i}" for i in range(600)], "modality": ["text"] * 600,
                     "text": ["hello"] * 600})
    out = ev.score_examples(load_model_registry()["text-minilm-heads-v1"], rows, progress=True)
    assert len(out) == 600
    err = capsys.readouterr().err
    assert "\r" not in err and "\x1b" not in err and "scoring" not in err
