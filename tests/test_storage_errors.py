"""Store errors are classified as storage failures wherever they are raised (issue 15, point 7):
``errors.is_storage_failure`` on the exception types and messages delta-rs, DataFusion, pyarrow
and botocore really raise. The S3 messages below were captured from those libraries with the
SeaweedFS server of tests/s3_server.py stopped (colour codes included, as delta-rs prints them);
the local ones are raised here for real."""

from __future__ import annotations

import glob
import os

import pyarrow as pa
import pytest
from deltalake import DeltaTable, QueryBuilder, write_deltalake
from deltalake.exceptions import DeltaError, TableNotFoundError

from moderation.errors import (
    ConfigError,
    ScoringFailed,
    StorageError,
    is_storage_failure,
    one_line,
    storage_boundary,
)

ARROW = "\x1b[31m\u21b3\x1b[0m"
S3_DOWN = {
    # DeltaTable(uri) / update_incremental / transaction_version: delta-kernel's OSError.
    "open": OSError(f"Kernel error -> Generic S3 error\n  {ARROW} Error performing GET http://127.0.0.1:47497/lake/t/"
                    f"_delta_log/_last_checkpoint in 104.9ms, after 1 retries, max_retries\n  {ARROW} 1, retry_timeout"
                    f"\n  {ARROW} 3s  - HTTP error\n  {ARROW} error sending request\n  {ARROW} client error (Connect)"
                    f"\n  {ARROW} tcp connect error\n  {ARROW} Connection refused (os error 111)\n"),
    # QueryBuilder.execute (run_accounting, cascade_accounting): DataFusion's bare Exception.
    "accounting": Exception("External error: Parquet error: Parquet error: Failed to fetch metadata for file t/part-0"
                            "0000-7bfe9035-c000.snappy.parquet: Object Store error: Generic S3 error: Error performing "
                            "GET http://127.0.0.1:47497/lake/t/part-00000-7bfe9035-c000.snappy.parquet in 627.4ms, "
                            "after 3 retries, max_retries: 3, retry_timeout: 30s  - HTTP error: error sending request"),
    # write_deltalake (a chunk's commit): DeltaError.
    "commit": DeltaError("Failed to parse parquet: External: Generic S3 error: Error performing PUT http://127.0.0.1:"
                         "47497/lake/t/part-00000-1bb6cded-c000.snappy.parquet in 563.3ms, after 3 retries, "
                         "max_retries: 3, retry_timeout: 30s  - HTTP error: error sending request"),
    # DeltaTable.merge (write_run): DeltaError.
    "merge": DeltaError("Generic DeltaTable error: Parquet error: Parquet error: Failed to fetch metadata for file "
                        "t/part-00000-7bfe9035-c000.snappy.parquet: Object Store error: Generic S3 error: Error "
                        "performing GET http://127.0.0.1:47497/lake/t/part-00000-7bfe9035-c000.snappy.parquet in "
                        "366.2ms, after 3 retries, max_retries: 3, retry_timeout: 30s  - HTTP error"),
    # An S3 endpoint answering 500 while it goes down (seen before issue 15).
    "list 500": DeltaError("Generic DeltaTable error: Error interacting with object store: Generic S3 error: Error "
                           "performing list request: Server returned non-2xx status code: 500"),
    # to_pyarrow_dataset().to_table() (lake.read): pyarrow's OSError.
    "read": OSError(f"Generic S3 error\n  {ARROW} Error performing GET http://127.0.0.1:47497/lake/t/part-00000.snappy"
                    f".parquet in 465.6ms, after 3 retries\n  {ARROW} Connection refused (os error 111)\n"),
}


@pytest.mark.parametrize("where", sorted(S3_DOWN))
def test_what_delta_rs_datafusion_and_pyarrow_raise_when_s3_is_down_is_a_storage_failure(where):
    assert is_storage_failure(S3_DOWN[where])


def test_botocore_errors_are_storage_failures():
    """The lease and S3 media reads use boto3: connection, timeouts, 5xx, throttling."""
    from botocore.exceptions import (
        ClientError,
        ConnectTimeoutError,
        EndpointConnectionError,
        NoCredentialsError,
        ReadTimeoutError,
    )

    url = "http://127.0.0.1:47497/lake/lake/_leases/x"
    for e in (EndpointConnectionError(endpoint_url=url), ReadTimeoutError(endpoint_url=url),
              ConnectTimeoutError(endpoint_url=url), NoCredentialsError(),
              ClientError({"Error": {"Code": "SlowDown", "Message": "Please reduce your request rate."},
                           "ResponseMetadata": {"HTTPStatusCode": 503}}, "PutObject")):
        assert is_storage_failure(e), type(e).__name__


def test_real_local_store_errors_are_storage_failures(tmp_path):
    write_deltalake(str(tmp_path / "t"), pa.table({"run_id": ["a"]}))
    dt = DeltaTable(str(tmp_path / "t"))
    for f in glob.glob(str(tmp_path / "t" / "*.parquet")):
        os.remove(f)  # the object store no longer has the data file the log names
    with pytest.raises(Exception) as read:
        dt.to_pyarrow_dataset().to_table()
    assert is_storage_failure(read.value)
    qb = QueryBuilder()
    qb.register("t", dt)
    with pytest.raises(Exception) as query:
        qb.execute("SELECT run_id FROM t").read_all()
    assert is_storage_failure(query.value), repr(query.value)


def test_data_and_code_errors_are_not_storage_failures(tmp_path):
    write_deltalake(str(tmp_path / "t"), pa.table({"run_id": ["a"]}))
    qb = QueryBuilder()
    qb.register("t", DeltaTable(str(tmp_path / "t")))
    with pytest.raises(Exception) as sql:
        qb.execute("SELEC 1").read_all()
    with pytest.raises(TableNotFoundError) as missing:
        DeltaTable(str(tmp_path / "nope"))
    for e in (sql.value, missing.value, DeltaError("Generic DeltaTable error: Schema mismatch"), ValueError("bad"),
              ConfigError("bad policy"), ScoringFailed("error share"),
              RuntimeError("ObjectStoreFullError: the Ray object store is full")):
        assert not is_storage_failure(e), repr(e)
    assert is_storage_failure(StorageError("store down"))


def test_a_store_error_wrapped_by_ray_or_re_raised_is_still_one():
    from ray.exceptions import RayTaskError

    cause = S3_DOWN["commit"]
    wrapped = RayTaskError("MapBatches(read_files)", f"Traceback ...\n_internal.DeltaError: {cause}", cause)
    assert is_storage_failure(wrapped) and is_storage_failure(wrapped.as_instanceof_cause())
    assert not is_storage_failure(RayTaskError("f", "Traceback ...\nValueError: bad", ValueError("bad")))
    try:
        try:
            raise S3_DOWN["accounting"]
        except Exception as e:
            raise RuntimeError("counting failed") from e
    except RuntimeError as e:
        assert is_storage_failure(e)


def test_storage_boundary_gives_one_line_and_passes_other_errors():
    with pytest.raises(StorageError) as caught:
        with storage_boundary("run r1", hint="run the same command again"):
            raise S3_DOWN["open"]
    text = str(caught.value)
    assert text.startswith("run r1: storage failed: Kernel error -> Generic S3 error")
    assert "\n" not in text and "\x1b" not in text and text.endswith("; run the same command again")
    assert StorageError.exit_code == 3 and one_line(S3_DOWN["open"]) in text
    with pytest.raises(ValueError):
        with storage_boundary("run r1"):
            raise ValueError("bad input")


@pytest.mark.parametrize("error", [S3_DOWN["merge"], S3_DOWN["accounting"]], ids=["delta-rs", "datafusion"])
def test_any_command_exits_3_with_one_line_on_a_store_failure(error, monkeypatch, capsys):
    """Outside a scoring run too (decide, report, runs ...): cli.main is the last boundary."""
    import moderation.cli as cli
    import moderation.policy.decide as decide

    def fail(**_kw):
        raise error

    codes = []
    monkeypatch.setattr(decide, "run_decide", fail)
    monkeypatch.setattr(cli, "_exit", codes.append)
    cli.main(["decide", "--lake", "s3://bucket/lake", "--policy", "conf/policies/catalog-safety/v1.yaml"])
    err = capsys.readouterr().err
    assert codes == [3] and err.count("\n") == 1 and err.startswith("error: storage failed: ")
    monkeypatch.setattr(decide, "run_decide", lambda **_kw: (_ for _ in ()).throw(ValueError("a bug")))
    with pytest.raises(ValueError):  # not a store failure: the traceback is the useful output
        cli.main(["decide", "--lake", "s3://bucket/lake", "--policy", "conf/policies/catalog-safety/v1.yaml"])
