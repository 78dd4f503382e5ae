"""Benchmark-only: a classifier run as a Spark ``mapInPandas`` function, the peer that
``scripts/bench_backfill.py --peer spark`` times against the Ray Data backfill.

It scores what the Ray path scores: the catalog's pinned snapshot (``open_catalog``), read by
Spark from the snapshot's exact data file list (as ``reporting.read_snapshot`` reads lake
tables), the same work rows (``modality_mask``, ``to_work_rows``), and the classifier's own
``prepare`` and ``process_batch``, so the windowing and the scores are the same. Each Spark
Python worker builds the classifier once (``build_classifier`` + ``setup``: digest-checked like
everywhere else) and reuses it for every Arrow batch and every task it runs
(``spark.python.worker.reuse``, on by default). Arrow batches are ``batch_size`` rows, the Ray
path's batch size.

Not a production path: it writes no lake table, has no quarantine table, no resume, and refuses
catalogs whose snapshot deletes rows with deletion vectors. pyspark is imported inside the
functions.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pyarrow as pa

from moderation.classifiers.base import CONTENT_HASH, QREASON, Classifier, RunContext
from moderation.config import ModelSpec
from moderation.storage.catalog import CatalogSnapshot, open_catalog

if TYPE_CHECKING:
    import pandas as pd
    from pyspark.sql import DataFrame, SparkSession

#: Per Python worker: (model id, digest, batch size, threads, context) -> the loaded classifier.
_LOADED: dict[tuple, Classifier] = {}


def output_schema(spec: ModelSpec) -> pa.Schema:
    """The peer's rows: one per (item, modality) pair, a float64 column per category (null when
    the pair was quarantined, ``qreason`` then says why)."""
    return pa.schema([
        pa.field("item_id", pa.string()), pa.field(CONTENT_HASH, pa.string()), pa.field(QREASON, pa.string()),
        *(pa.field(c, pa.float64()) for c in spec.categories),
    ])


def score_table(clf: Classifier, rows: pa.Table) -> pa.Table:
    """Catalog rows -> the peer's rows (``output_schema``), through the classifier's own
    ``prepare`` and ``process_batch``: the Ray path's work rows, windowing and scores."""
    from moderation.storage.catalog import modality_mask, to_work_rows

    mask = modality_mask(rows, clf.spec.modality)
    if mask is not None:
        rows = rows.filter(mask)
    out = clf.process_batch(clf.prepare(to_work_rows(rows, clf.spec.modality)))
    scores = [dict(s) if s is not None else {} for s in out.column("category_scores").to_pylist()]
    return pa.table(
        {"item_id": out.column("item_id"), CONTENT_HASH: out.column(CONTENT_HASH), QREASON: out.column(QREASON),
         **{c: pa.array([s.get(c) for s in scores], pa.float64()) for c in clf.spec.categories}},
        schema=output_schema(clf.spec),
    )


def _loaded(spec: ModelSpec, batch_size: int, torch_threads: int, context: RunContext) -> Classifier:
    """This worker's classifier, built and set up (digest-checked) on its first batch."""
    key = (spec.model_id, spec.digest, batch_size, torch_threads, context)
    clf = _LOADED.get(key)
    if clf is None:
        import torch

        from moderation.classifiers.registry import build_classifier
        from moderation.security import check_environment

        check_environment()  # a worker's environment can differ from the driver's
        if torch_threads:
            torch.set_num_threads(torch_threads)
        clf = build_classifier(spec, batch_size=batch_size, context=context)
        clf.setup("cpu")
        _LOADED[key] = clf
    return clf


def _scorer(spec: ModelSpec, *, batch_size: int, torch_threads: int, context: RunContext, schema: pa.Schema):
    """The ``mapInPandas`` function: pandas batches of catalog rows -> pandas batches of scores."""

    def score(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        clf = _loaded(spec, batch_size, torch_threads, context)
        for pdf in batches:
            rows = pa.Table.from_pandas(pdf, schema=schema, preserve_index=False)
            yield score_table(clf, rows).to_pandas()

    return score


def read_catalog(spark: SparkSession, snapshot: CatalogSnapshot) -> DataFrame:
    """The snapshot's rows (its work columns, under their catalog names) as a Spark DataFrame,
    read from the snapshot's exact data files.

    Raises:
        ValueError: the snapshot deletes rows with deletion vectors (not applied here).
    """
    from pyspark.sql import functions as F

    from moderation.engines.spark import spark_schema

    if any(f.deleted for f in snapshot.files):
        raise ValueError(f"catalog {snapshot.uri}: its snapshot deletes rows (deletion vectors), "
                         f"which the Spark peer does not apply")
    fields = snapshot.columns
    if not snapshot.files:
        return spark.createDataFrame([], spark_schema(_fields_schema(snapshot, fields)))
    frames = []
    by_partition: dict[tuple, list[str]] = {}
    for f in snapshot.files:
        path = f.path.removeprefix("file://")
        by_partition.setdefault(f.partition, []).append("s3a://" + path[5:] if path.startswith("s3://") else path)
    for partition, paths in by_partition.items():
        part = dict(partition)
        df = spark.read.parquet(*paths)
        frames.append(df.select(*(
            (F.lit(part.get(name)) if name in snapshot.partition_fields else F.col(f"`{snapshot.physical[name]}`"))
            .cast(spark_schema(pa.schema([snapshot.schema.field(name)]))[name].dataType).alias(name)
            for name in fields
        )))
    df = frames[0]
    for frame in frames[1:]:
        df = df.unionByName(frame)
    return df


def _fields_schema(snapshot: CatalogSnapshot, fields: list[str]) -> pa.Schema:
    return pa.schema([snapshot.schema.field(name) for name in fields])


@contextlib.contextmanager
def _local_python(spark: SparkSession, batch_size: int) -> Iterator[None]:
    """Arrow batches of ``batch_size`` rows, and Python workers on this interpreter (a local
    session's default is whatever ``python3`` is first on PATH, which may lack torch), for the
    duration of one action; the session's settings are restored after."""
    sc = spark.sparkContext
    key = "spark.sql.execution.arrow.maxRecordsPerBatch"
    before_rows, before_exec = spark.conf.get(key), sc.pythonExec
    spark.conf.set(key, str(batch_size))
    if sc.master is not None and sc.master.startswith("local") and "PYSPARK_PYTHON" not in os.environ:
        sc.pythonExec = sys.executable
    try:
        yield
    finally:
        if before_rows is None:
            spark.conf.unset(key)
        else:
            spark.conf.set(key, before_rows)
        sc.pythonExec = before_exec


def score_catalog(
    spark: SparkSession, catalog_uri: str, spec: ModelSpec, *, batch_size: int, torch_threads: int = 1,
    partitions: int | None = None, context: RunContext = RunContext(), output: str | None = None,
) -> pd.DataFrame | int:
    """Score every (item, modality) pair of the catalog's latest snapshot with ``spec``'s
    classifier, as a Spark job.

    Args:
        spark: the session (local or a cluster).
        catalog_uri: the catalog (Delta or Parquet, as ``open_catalog`` takes it).
        spec: the model (any modality; benchmarked with the text heads).
        batch_size: rows per Arrow batch, and per forward pass.
        torch_threads: torch threads per Python worker (0: torch's default).
        partitions: tasks the rows are spread over (default: the session's default parallelism).
        context: the classifier's run context.
        output: a folder the rows are written to as Parquet (then the row count is returned);
            None collects them to the driver as a pandas DataFrame.

    Returns:
        The scored rows (``output_schema``), or their count when written to ``output``.
    """
    from moderation.engines.spark import spark_schema

    snapshot = open_catalog(catalog_uri)
    rows = read_catalog(spark, snapshot).repartition(partitions or spark.sparkContext.defaultParallelism)
    schema = _fields_schema(snapshot, snapshot.columns)
    fn = _scorer(spec, batch_size=batch_size, torch_threads=torch_threads, context=context, schema=schema)
    with _local_python(spark, batch_size):
        scored = rows.mapInPandas(fn, spark_schema(output_schema(spec)))
        if output is None:
            return scored.toPandas()
        scored.write.mode("overwrite").parquet(output)
    return spark.read.parquet(output).count()
