"""Spark adapter: a Spark session sized for a small machine, Arrow -> Spark schemas, and
:func:`read_snapshot`, which turns one exact Delta snapshot of a lake table into a Spark DataFrame
(delta-rs resolves the snapshot's data files; Spark reads them).

The report (``moderation.reporting.report``), the SQL query path and the benchmark's Spark peer
build on it. pyspark is imported inside the functions, so importing this module stays cheap.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING
from urllib.parse import unquote

import pyarrow as pa

from moderation.errors import LakeError
from moderation.schemas import TABLE_SCHEMAS
from moderation.storage.lake import Lake, join_uri

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

# Reading the data files without applying these would not reproduce the snapshot exactly.
UNSUPPORTED_READER_FEATURES = frozenset({"columnMapping", "deletionVectors"})


def spark_session(master: str | None = "local[*]", *, app_name: str = "moderation-report") -> SparkSession:
    """A Spark session sized for a small machine (getOrCreate: an active session is reused).

    Args:
        master: the Spark master URL; None leaves it to ``spark-submit --master``.
        app_name: the application name.

    Returns:
        The session, with 4 shuffle partitions, no UI, UTC session time zone and a 2g driver.
    """
    from pyspark.sql import SparkSession

    if master is not None and master.startswith("local"):
        # A local job needs no network interface but loopback.
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    builder = SparkSession.builder.appName(app_name)
    if master is not None:
        builder = builder.master(master)
    session = (
        builder.config("spark.sql.shuffle.partitions", "4")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.driver.memory", "2g")
        .getOrCreate()
    )
    session.sparkContext.setLogLevel("ERROR")
    return session


def spark_schema(schema: pa.Schema):
    """The Spark StructType of an Arrow schema (timestamps with a time zone -> TimestampType)."""
    from pyspark.sql.pandas.types import from_arrow_schema

    return from_arrow_schema(schema)


def read_snapshot(spark: SparkSession, lake: Lake, table: str, *, version: int | None = None) -> DataFrame:
    """One Delta snapshot of a lake table as a Spark DataFrame, exactly.

    Spark here has no Delta connector (its jars cannot be fetched), so delta-rs resolves the
    snapshot: its add actions give the exact data files and their partition values, Spark
    reads those parquet files with the snapshot's data schema and the partition values are
    added back as typed literals. Where ``spark.read.format("delta")`` is available it reads
    the same snapshot (``option("versionAsOf", version)``); this function does not need it.
    The Spark session must be able to read the lake's file system (``s3a://`` for S3).

    Args:
        spark: the session that reads the files.
        lake: the lake holding the table.
        table: the table name under the lake root, e.g. ``"violations"``.
        version: the Delta version to read; None reads the latest.

    Returns:
        The rows, with the snapshot's schema in its column order, followed by any column
        declared in ``TABLE_SCHEMAS`` that the snapshot predates (as nulls). A table that was
        never written, or has no data files, gives an empty DataFrame of that schema.

    Raises:
        LakeError: the table is missing and has no declared schema, ``version`` does not
            exist, or the table uses a reader feature read here would get wrong.
    """
    from deltalake.exceptions import DeltaError
    from pyspark.sql import functions as F

    declared = TABLE_SCHEMAS.get(table)
    uri = lake.uri(table)
    try:
        dt = lake.open(table, version=version)
    except DeltaError as e:
        raise LakeError(f"{uri}: cannot open version {version}: {e}") from e
    if dt is None:
        if declared is None:
            raise LakeError(f"{uri}: table does not exist")
        return spark.createDataFrame([], spark_schema(declared))
    _check_readable(dt, uri=uri)
    logical = pa.schema(dt.schema().to_arrow())
    struct = spark_schema(logical)
    partitions = list(dt.metadata().partition_columns)
    groups = _files_by_partition(dt, uri=uri, partitions=partitions)
    if groups and uri.startswith("s3://") and not _has_s3a(spark):
        df = _read_through_arrow(spark, groups, logical=logical, partitions=partitions)
    elif groups:
        data_schema = spark_schema(pa.schema([f for f in logical if f.name not in partitions]))
        frames = [
            spark.read.schema(data_schema)
            .parquet(*("s3a://" + f[len("s3://"):] if f.startswith("s3://") else f for f in files))
            .withColumns({name: F.lit(value).cast(struct[name].dataType)
                          for name, value in zip(partitions, values, strict=True)})
            for values, files in groups.items()
        ]
        df = frames[0]
        for frame in frames[1:]:
            df = df.unionByName(frame)
        df = df.select(*logical.names)
    else:
        df = spark.createDataFrame([], struct)
    if declared is not None:
        for field in spark_schema(declared).fields:
            if field.name not in logical.names:
                df = df.withColumn(field.name, F.lit(None).cast(field.dataType))
    return df


def can_write(spark: SparkSession, uri: str) -> bool:
    """Whether this Spark can write files under ``uri`` itself: a local path, or ``s3://`` with
    the S3A connector on its classpath."""
    return not uri.startswith("s3://") or _has_s3a(spark)


def write_parquet(df: DataFrame, uri: str) -> None:
    """Write ``df`` as Parquet files (zstd, timestamps as microseconds) into the new folder
    ``uri`` with Spark's own writer: the executors write, nothing is collected to the driver.
    A Delta commit of the files is the lake's (``Lake.overwrite_files``); until then no reader
    sees them. Check :func:`can_write` first."""
    spark = df.sparkSession
    key = "spark.sql.parquet.outputTimestampType"
    before = spark.conf.get(key)
    spark.conf.set(key, "TIMESTAMP_MICROS")  # Delta's timestamp; Spark's default is INT96
    try:
        target = "s3a://" + uri[len("s3://"):] if uri.startswith("s3://") else uri
        df.write.mode("errorifexists").option("compression", "zstd").parquet(target)
    finally:
        if before is None:
            spark.conf.unset(key)
        else:
            spark.conf.set(key, before)


def _has_s3a(spark: SparkSession) -> bool:
    """Whether this Spark can read ``s3a://`` itself (hadoop-aws on the classpath)."""
    try:
        jvm = spark.sparkContext._jvm
        if jvm is None:  # no JVM gateway: this Spark cannot read anything itself
            return False
        jvm.java.lang.Class.forName("org.apache.hadoop.fs.s3a.S3AFileSystem")
        return True
    except Exception:  # noqa: BLE001 - py4j wraps ClassNotFoundException
        return False


def _read_through_arrow(spark: SparkSession, groups: dict[tuple, list[str]], *, logical: pa.Schema,
                        partitions: list[str]) -> DataFrame:
    """The same snapshot files read by pyarrow (S3 through the AWS credential chain) and handed
    to Spark as Arrow, for a Spark without the S3A connector (hadoop-aws cannot be fetched
    here). Exact, but the rows pass through the driver: on a cluster, put hadoop-aws on the
    classpath and Spark reads the file list itself."""
    import pyarrow.parquet as pq

    from moderation.storage.lake import arrow_filesystem

    data_schema = pa.schema([f for f in logical if f.name not in partitions])
    parts = []
    for values, files in groups.items():
        for path in files:
            fs, p = arrow_filesystem(path)
            t = pq.read_table(p, filesystem=fs, schema=data_schema)
            for name, value in zip(partitions, values, strict=True):
                typ = logical.field(name).type
                column = pa.nulls(t.num_rows, typ) if value is None else pa.array([value] * t.num_rows).cast(typ)
                t = t.append_column(logical.field(name), column)
            parts.append(t.select(logical.names))
    table = pa.concat_tables(parts) if parts else logical.empty_table()
    return spark.createDataFrame(table, schema=spark_schema(logical))


def _check_readable(dt, *, uri: str) -> None:
    features = set(dt.protocol().reader_features or ())
    if dt.metadata().configuration.get("delta.columnMapping.mode", "none") != "none":
        features.add("columnMapping")
    unsupported = sorted(features & UNSUPPORTED_READER_FEATURES)
    if unsupported:
        raise LakeError(
            f"{uri}: uses Delta reader features {unsupported}, which the report cannot read exactly "
            f"without the Delta Spark connector"
        )


def _files_by_partition(dt, *, uri: str, partitions: list[str]) -> dict[tuple, list[str]]:
    """Absolute data file URIs of the snapshot, grouped by their tuple of partition values."""
    actions = pa.table(dt.get_add_actions(flatten=True))
    # Log paths are URI-encoded (Delta protocol: "Add File"); Spark and Hadoop take them decoded.
    paths = [unquote(p) for p in actions.column("path").to_pylist()]
    values = [actions.column(f"partition.{name}").to_pylist() for name in partitions]
    groups: dict[tuple, list[str]] = {}
    for i, path in enumerate(paths):
        absolute = path if "://" in path or path.startswith("/") else join_uri(uri, path)
        groups.setdefault(tuple(column[i] for column in values), []).append(absolute)
    return groups
