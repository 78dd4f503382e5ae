"""Delta Lake on a real S3 server (SeaweedFS on loopback, see tests/s3_server.py).

Append + merge + read round trip on s3://, two writers committing at the same moment, reading the
data files with pyarrow's own S3 filesystem, and an outage: stop() makes writes fail fast with the
bounded retry options, start() brings the same table back at its latest version.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time

import pyarrow as pa
import pytest

from tests.s3_server import DELTA_S3_BOUNDED_RETRY_OPTIONS, DELTA_S3_OPTIONS, serving

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    with serving(tmp_path_factory.mktemp("seaweed")) as server:
        yield server


def _rows(dt) -> list[tuple]:
    from deltalake import QueryBuilder

    table = QueryBuilder().register("t", dt).execute("SELECT id, v FROM t ORDER BY id").read_all()
    return list(zip(table.column("id").to_pylist(), table.column("v").to_pylist()))


def test_append_merge_read_round_trip(s3):
    from deltalake import CommitProperties, DeltaTable, Transaction, write_deltalake

    uri = f"s3://{s3.bucket}/round_trip"
    assert not DeltaTable.is_deltatable(uri, storage_options=DELTA_S3_OPTIONS)
    write_deltalake(uri, pa.table({"id": [1, 2], "v": ["a", "b"], "p": ["x", "y"]}), partition_by=["p"],
                    storage_options=DELTA_S3_OPTIONS)
    write_deltalake(uri, pa.table({"id": [3], "v": ["c"], "p": ["x"]}), mode="append", storage_options=DELTA_S3_OPTIONS,
                    commit_properties=CommitProperties(app_transactions=[Transaction("job-1", 7)]))
    dt = DeltaTable(uri, storage_options=DELTA_S3_OPTIONS)
    assert DeltaTable.is_deltatable(uri, storage_options=DELTA_S3_OPTIONS)
    assert dt.transaction_version("job-1") == 7 and dt.transaction_version("other") is None

    metrics = (
        dt.merge(pa.table({"id": [2, 4], "v": ["B", "d"], "p": ["y", "y"]}), "t.id = s.id", source_alias="s", target_alias="t")
        .when_matched_update_all().when_not_matched_insert_all().execute()
    )
    assert (metrics["num_target_rows_updated"], metrics["num_target_rows_inserted"]) == (1, 1)
    write_deltalake(uri, pa.table({"id": [9], "v": ["z"], "p": ["x"]}), mode="overwrite", predicate="p = 'x'",
                    storage_options=DELTA_S3_OPTIONS)

    dt = DeltaTable(uri, storage_options=DELTA_S3_OPTIONS)
    assert dt.version() == 3
    assert _rows(dt) == [(2, "B"), (4, "d"), (9, "z")]

    # The data files are plain Parquet on the bucket: pyarrow's S3 filesystem reads them with env credentials.
    import pyarrow.dataset as ds
    from pyarrow.fs import S3FileSystem

    fs = S3FileSystem(endpoint_override=s3.endpoint, scheme="http")
    paths = pa.table(dt.get_add_actions(flatten=True)).column("path").to_pylist()
    files = [f"{s3.bucket}/round_trip/{p}" for p in paths]
    assert ds.dataset(files, format="parquet", filesystem=fs).count_rows() == 3


_WRITER = textwrap.dedent("""
    import json, sys, time
    import pyarrow as pa
    from deltalake import CommitProperties, Transaction, write_deltalake
    uri, name, start, options = sys.argv[1], sys.argv[2], float(sys.argv[3]), json.loads(sys.argv[4])
    while time.time() < start:
        time.sleep(0.001)
    for i in range(3):
        write_deltalake(uri, pa.table({"w": [name], "i": [i]}), mode="append", storage_options=options,
                        commit_properties=CommitProperties(app_transactions=[Transaction(name, i)]))
""")


def test_concurrent_appends_all_land(s3):
    """Two processes append to one table at the same instant: commits race for the same versions and
    the loser retries on the next one (conditional PUT), so all six commits land."""
    from deltalake import DeltaTable, write_deltalake

    uri = f"s3://{s3.bucket}/concurrent"
    write_deltalake(uri, pa.table({"w": ["init"], "i": [0]}), storage_options=DELTA_S3_OPTIONS)
    start = time.time() + 3  # both interpreters import deltalake first
    procs = [
        subprocess.Popen([sys.executable, "-c", _WRITER, uri, name, str(start), json.dumps(DELTA_S3_OPTIONS)])
        for name in ("a", "b")
    ]
    assert [p.wait(timeout=90) for p in procs] == [0, 0]
    dt = DeltaTable(uri, storage_options=DELTA_S3_OPTIONS)
    assert dt.version() == 6
    assert (dt.transaction_version("a"), dt.transaction_version("b")) == (2, 2)
    assert sorted(op["operation"] for op in dt.history()) == ["WRITE"] * 7


def test_outage_fails_fast_then_table_recovers(s3):
    from deltalake import DeltaTable, write_deltalake

    uri = f"s3://{s3.bucket}/outage"
    options = {**DELTA_S3_OPTIONS, **DELTA_S3_BOUNDED_RETRY_OPTIONS}
    write_deltalake(uri, pa.table({"id": [1], "v": ["a"]}), storage_options=options)
    write_deltalake(uri, pa.table({"id": [2], "v": ["b"]}), mode="append", storage_options=options)

    s3.stop()
    try:
        began = time.monotonic()
        with pytest.raises(OSError, match="Connection refused|error sending request"):
            write_deltalake(uri, pa.table({"id": [3], "v": ["c"]}), mode="append", storage_options=options)
        assert time.monotonic() - began < 30
    finally:
        s3.start()

    dt = DeltaTable(uri, storage_options=options)
    assert dt.version() == 1 and _rows(dt) == [(1, "a"), (2, "b")]
    write_deltalake(uri, pa.table({"id": [3], "v": ["c"]}), mode="append", storage_options=options)
    assert DeltaTable(uri, storage_options=options).version() == 2
