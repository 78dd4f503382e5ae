"""The offline evaluation report: a self-contained HTML page and a PNG summary from a small
synthetic lake (no model runs; results come from the real ``metric_rows``)."""

from __future__ import annotations

import base64
import re
from html.parser import HTMLParser

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from moderation.clock import utcnow
from moderation.errors import ModerationError
from moderation.evaluation.datasets import read_dataset, write_dataset
from moderation.evaluation.evaluate import metric_rows
from moderation.evaluation.report import BASELINE_MARK, write_report
from moderation.schemas import EVAL_PREDICTIONS_SCHEMA, EVAL_RESULTS_SCHEMA
from moderation.storage.lake import Lake

DATASET = "synth_eval"
PROD, BASE = "text-prod-v1", "text-lexical-v1"
CATEGORIES = ("hate", "spam")
#: slice value -> examples; "tiny" stays under min_slice_n=30.
GROUPS = {"large": 130, "mid": 80, "tiny": 20}
PNG = b"\x89PNG\r\n\x1a\n"


def _dataset() -> pa.Table:
    rng = np.random.default_rng(1)
    groups = [g for g, n in GROUPS.items() for _ in range(n)]
    n = len(groups)
    return pa.table({
        "example_id": [f"ex{i}" for i in range(n)],
        "text": [f"text {i}" for i in range(n)],
        **{f"label_{c}": pa.array(rng.integers(0, 2, n), pa.int8()) for c in CATEGORIES},
        "slice_group": groups,
    })


def _scores(labels: np.ndarray, groups: np.ndarray, *, baseline: bool, rng) -> np.ndarray:
    """The production model is good except on "mid", where the lexical baseline is perfect."""
    noisy = np.clip(0.3 * labels + rng.uniform(0, 0.7, len(labels)), 0, 1)
    good = np.clip(0.6 * labels + rng.uniform(0, 0.4, len(labels)), 0, 1)
    perfect = 0.1 + 0.8 * labels
    if baseline:
        return np.where(groups == "mid", perfect, noisy)
    return np.where(groups == "mid", noisy, good)


def _predictions(rows: pa.Table, model_id: str, digest: str, version: int, *, baseline: bool) -> pd.DataFrame:
    rng = np.random.default_rng(7 if baseline else 3)
    groups = np.array(rows.column("slice_group").to_pylist())
    parts = []
    for cat in CATEGORIES:
        labels = np.array(rows.column(f"label_{cat}").to_pylist())
        scores = _scores(labels, groups, baseline=baseline, rng=rng).astype(object)
        if not baseline:
            scores[:2] = None  # quarantined
        parts.append(pd.DataFrame({
            "model_id": model_id, "model_digest": digest, "dataset": DATASET, "dataset_version": version,
            "example_id": rows.column("example_id").to_pylist(), "category": cat, "score": scores,
            "label": labels, "quarantine_reason": [("too_long" if s is None else None) for s in scores],
            "code_version": "0.0.0+test", "predicted_at": utcnow(), "dataset_sha256": None,
        }))
    return pd.concat(parts, ignore_index=True)


@pytest.fixture(scope="module")
def report_lake(tmp_path_factory) -> tuple[Lake, int]:
    lake = Lake(str(tmp_path_factory.mktemp("lake")))
    version, _ = write_dataset(lake, DATASET, _dataset(), description="synthetic")
    rows, _ = read_dataset(lake, DATASET)
    results = []
    for model_id, role in ((PROD, "production"), (BASE, "baseline")):
        digest = (model_id.encode().hex() * 4)[:64]
        preds = _predictions(rows, model_id, digest, version, baseline=role == "baseline")
        lake.append_chunk("eval/predictions", pa.Table.from_pandas(preds, schema=EVAL_PREDICTIONS_SCHEMA,
                                                                    preserve_index=False),
                          app_id=f"eval/{digest}/{DATASET}/v{version}", version=0)
        common = {"eval_id": "eval-test", "model_id": model_id, "model_digest": digest, "model_role": role,
                  "dataset": DATASET, "dataset_version": version, "policy_id": "test-policy", "policy_version": 3,
                  "policy_hash": "ab" * 32, "code_version": "0.0.0+test", "evaluated_at": utcnow()}
        mrows = metric_rows(preds, rows, thresholds=dict.fromkeys(CATEGORIES, 0.5), target_precision=0.9,
                            bootstrap=50, seed=0)
        results.extend({**common, **r} for r in mrows)
    lake.replace_where("eval/results", pa.Table.from_pylist(results, schema=EVAL_RESULTS_SCHEMA), predicate="true")
    return lake, version


class _Page(HTMLParser):
    """The page's <img> tags and the rows (class, cell texts) of its slice tables."""

    def __init__(self):
        super().__init__()
        self.imgs: list[dict] = []
        self.slice_rows: list[tuple[str, list[str]]] = []
        self._tables: list[str] = []
        self._cells: list[str] | None = None
        self._in_td = False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img":
            self.imgs.append(a)
        elif tag == "table":
            self._tables.append(a.get("class") or "")
        elif tag == "tr" and self._tables and self._tables[-1] == "slices":
            self._cells = []
            self._row_class = a.get("class") or ""
        elif tag == "td" and self._cells is not None:
            self._cells.append("")
            self._in_td = True

    def handle_endtag(self, tag):
        if tag == "table" and self._tables:
            self._tables.pop()
        elif tag == "td":
            self._in_td = False
        elif tag == "tr" and self._cells is not None:
            if self._cells:
                self.slice_rows.append((self._row_class, self._cells))
            self._cells = None

    def handle_data(self, data):
        if self._in_td and self._cells is not None:
            self._cells[-1] += data


@pytest.fixture(scope="module")
def report(report_lake, tmp_path_factory):
    lake, _ = report_lake
    files = write_report(lake, tmp_path_factory.mktemp("out"), min_slice_n=30)
    text = files.html.read_text(encoding="utf-8")
    page = _Page()
    page.feed(text)
    return files, text, page


def test_report_is_self_contained_with_figures_per_category(report):
    files, text, page = report
    assert files.html.name == "eval_report.html" and files.html.exists()
    kinds = [img.get("class") for img in page.imgs]
    assert kinds.count("pr-curve") == len(CATEGORIES)
    assert kinds.count("calibration") == len(CATEGORIES)
    assert kinds.count("summary") == 1
    assert files.figures == len(page.imgs) == 2 * len(CATEGORIES) + 1
    for img in page.imgs:
        src = img["src"]
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1]).startswith(PNG)
    lowered = text.lower()
    assert "http://" not in lowered and "https://" not in lowered and "<script" not in lowered


def test_report_names_what_was_evaluated(report, report_lake):
    files, text, _ = report
    _, version = report_lake
    assert f"{DATASET} v{version}" in text
    assert PROD in text and f"{BASE} {BASELINE_MARK}" in text
    assert "test-policy v3" in text and "0.0.0+test" in text
    assert (PROD.encode().hex() * 4)[:12] in text  # digest prefix
    for cat in CATEGORIES:
        assert f"{DATASET} v{version}: {cat}" in text
    summary = files.summary()
    assert str(files.html) in summary and str(files.png) in summary
    assert PROD in summary and BASE in summary
    # Model vs baseline: each category's difference carries its paired interval and verdict.
    paired = re.findall(r"([+-]\d\.\d{3}) \[([+-]\d\.\d{3}),([+-]\d\.\d{3})\] (better|worse|no clear difference)", text)
    # (and so does each shown slice: "large" and "mid" per category)
    assert len(paired) == 3 * len(CATEGORIES)
    for diff, lo, hi, verdict in paired:
        assert float(lo) <= float(diff) <= float(hi)
        assert verdict == ("better" if float(lo) > 0 else "worse" if float(hi) < 0 else "no clear difference")


def test_summary_png(report):
    files, _, _ = report
    assert files.png.name == "eval_summary.png"
    assert files.png.read_bytes().startswith(PNG)


def test_slice_tables_keep_slices_with_enough_examples(report, report_lake):
    _, text, page = report
    values = [cells[1] for _, cells in page.slice_rows]
    assert values.count("large") == len(CATEGORIES)
    assert values.count("mid") == len(CATEGORIES)
    assert "tiny" not in values
    assert "tiny" in set(report_lake[0].read("eval/results").column("slice_value").to_pylist())
    # The baseline is perfect on "mid": those rows are flagged, "large" ones are not.
    flagged = {(cells[1], cls) for cls, cells in page.slice_rows}
    assert {v for v, cls in flagged if cls == "below-baseline"} == {"mid"}
    # The paired difference from the baseline: measurably worse on "mid" (highlighted), not on "large".
    verdicts = {(cells[1], cells[-1].rsplit("] ", 1)[-1]) for _, cells in page.slice_rows}
    assert ("mid", "worse") in verdicts and ("large", "worse") not in verdicts
    assert text.count('class="worse-than-baseline"') == len(CATEGORIES)
    assert 'class="widest-gap"' in text
    assert text.count("Widest FPR gap") == 2 * len(CATEGORIES)


def test_empty_lake_names_the_evaluate_command(tmp_path):
    with pytest.raises(ModerationError, match="moderation evaluate"):
        write_report(Lake(str(tmp_path / "empty")), tmp_path / "out")
    assert not (tmp_path / "out" / "eval_report.html").exists()


def test_unknown_dataset_is_refused(report_lake, tmp_path):
    lake, _ = report_lake
    with pytest.raises(ModerationError, match="nope"):
        write_report(lake, tmp_path / "out", datasets=["nope"])


def test_a_dataset_version_no_longer_readable_leaves_out_only_the_paired_slices(report_lake, tmp_path, caplog):
    import shutil

    lake, _ = report_lake
    copy = tmp_path / "lake"
    shutil.copytree(lake.root, copy)
    shutil.rmtree(copy / "eval" / "datasets" / DATASET)  # e.g. vacuumed or deleted since the evaluation
    files = write_report(Lake(str(copy)), tmp_path / "out", min_slice_n=30)
    text = files.html.read_text(encoding="utf-8")
    assert "paired 95% interval" not in text and 'class="worse-than-baseline"' not in text
    assert "no paired slice comparison" in caplog.text
    # Everything else is still there, the overall paired difference included.
    page = _Page()
    page.feed(text)
    assert len(page.imgs) == 2 * len(CATEGORIES) + 1 and page.slice_rows
    assert re.search(r"[+-]\d\.\d{3} \[[+-]\d\.\d{3},[+-]\d\.\d{3}\] (better|worse|no clear difference)", text)
