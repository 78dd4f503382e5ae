"""The Spark peer of the benchmark (moderation/bench/spark_peer.py) scores what the in-process
classifier scores: same rows, same windows, same scores."""

from __future__ import annotations

import pyarrow as pa
import pytest

pytestmark = pytest.mark.spark


def test_spark_peer_scores_equal_the_in_process_classifier(tmp_path, spark, text_classifier, data_dir):
    from moderation.bench.spark_peer import score_catalog, score_table
    from moderation.demo.catalog import write_demo_catalog
    from moderation.storage.catalog import open_catalog

    catalog = str(tmp_path / "catalog")
    write_demo_catalog(catalog, items=20, data_dir=data_dir)
    snap = open_catalog(catalog)
    rows = pa.concat_tables(t for f in snap.files for t in snap.read(f, snap.columns))
    expected = score_table(text_classifier, rows).to_pandas().set_index("item_id").sort_index()

    # Two tasks: two Python workers, each loading the model once for its batches.
    got = score_catalog(spark, catalog, text_classifier.spec, batch_size=8, partitions=2)
    got = got.set_index("item_id").sort_index()

    assert len(expected) == 20 and list(got.index) == list(expected.index)
    assert (got["content_hash"] == expected["content_hash"]).all()
    assert got["qreason"].isna().equals(expected["qreason"].isna())
    categories = list(text_classifier.spec.categories)
    assert expected[categories].notna().any().all()
    # Batches of 8 in Spark vs one of 20 here: only the padding of each forward pass differs.
    diff = (got[categories] - expected[categories]).abs().max().max()
    assert diff < 1e-5, diff
