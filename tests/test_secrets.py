"""Secrets in the environment never appear in any output of a job, at any log level.

Fake AWS keys and tokens are put in the environment of real ``moderation`` CLI runs, with every
log at debug: ours (``MODERATION_LOG_LEVEL``), delta-rs (``RUST_LOG``), Ray (backend, Python,
Ray Data), py4j and Spark (a log4j2 config at debug). The runs: a backfill on a local Ray, a
backfill that crashes inside Ray (an actor refuses a tampered model artifact), a backfill of a
catalog that does not exist, a backfill of an ``s3://`` catalog, decide and report. Then every
byte they produced is searched for every secret, raw and encoded (URL, JSON, base64, hex,
UTF-16): stdout and stderr, every file of Ray's sessions and of the temp dir, every file of the
lake (Delta logs with their commit info), every row of every table, Spark's log.

The lake is local, so the runs never need the credentials; the ``s3://`` catalog is served by a
fake S3 endpoint in this process, so delta-rs does sign requests with them, and it answers the
way real S3 answers an unknown key (``InvalidAccessKeyId``, whose error body echoes the key id).
"""

from __future__ import annotations

import base64
import hashlib
import http.server
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from urllib.parse import quote, quote_plus

import pytest

from moderation.config import default_conf_dir
from moderation.demo.catalog import write_demo_catalog
from tests.conftest import POLICY_V1

pytestmark = [pytest.mark.integration, pytest.mark.timeout(400)]

ROOT = Path(__file__).resolve().parents[1]
ITEMS = 12
S3_BUCKET = "leak-test-bucket"

LOG4J2_DEBUG = """\
rootLogger.level = debug
rootLogger.appenderRef.file.ref = debugfile
appender.debugfile.type = File
appender.debugfile.name = debugfile
appender.debugfile.fileName = {path}
appender.debugfile.layout.type = PatternLayout
appender.debugfile.layout.pattern = %d{{HH:mm:ss.SSS}} %p %c: %m%n
"""


def fake_secrets() -> tuple[dict[str, str], dict[str, str]]:
    """(env var -> fake secret, env var -> its random part). Shaped like the real thing (the AWS
    secret and token carry ``/`` and ``+``, so their URL and JSON forms differ from the raw one)."""
    tag = uuid.uuid4().hex
    core = {i: hashlib.sha256(f"{tag}:{i}".encode()).hexdigest() for i in range(6)}
    parts = {
        "AWS_ACCESS_KEY_ID": core[0][:16].upper(),
        "AWS_SECRET_ACCESS_KEY": core[1][:24],
        "AWS_SESSION_TOKEN": core[2][:40],
        "HF_TOKEN": core[3][:30],
        "GITHUB_TOKEN": core[4][:36],
        "MODERATION_TEST_API_KEY": core[5][:24],
    }
    values = {
        "AWS_ACCESS_KEY_ID": "AKIA" + parts["AWS_ACCESS_KEY_ID"],
        "AWS_SECRET_ACCESS_KEY": f"wJalr/{parts['AWS_SECRET_ACCESS_KEY']}+LeakK3y",
        "AWS_SESSION_TOKEN": f"IQoJb3JpZ2luX2Vj/{parts['AWS_SESSION_TOKEN']}+tok==",
        "HF_TOKEN": f"hf_{parts['HF_TOKEN']}",
        "GITHUB_TOKEN": f"ghp_{parts['GITHUB_TOKEN']}",
        "MODERATION_TEST_API_KEY": f"mtk-{parts['MODERATION_TEST_API_KEY']}",
    }
    return values, parts


def _b64_fragments(data: bytes) -> set[bytes]:
    """The base64 characters that encode ``data`` whatever bytes surround it (3 alignments)."""
    out: set[bytes] = set()
    for pad in range(3):
        a = base64.b64encode(b"\x00" * pad + data + b"\x00\x00").rstrip(b"=")
        b = base64.b64encode(b"\xff" * pad + data + b"\xff\xff").rstrip(b"=")
        start = next(k for k in range(len(a)) if a[k] == b[k])
        end = len(a) - next(k for k in range(len(a)) if a[-1 - k] == b[-1 - k])
        frag = a[start:end]
        out |= {frag, frag.translate(bytes.maketrans(b"+/", b"-_"))}
    return out


def needles(values: dict[str, str], parts: dict[str, str]) -> dict[bytes, str]:
    """Every byte string whose presence means a leak -> 'VAR (form)'."""
    out: dict[bytes, str] = {}
    for name, value in values.items():
        text_forms = {
            "raw": value,
            "random part": parts[name],
            "url": quote(value, safe=""),
            "url+": quote_plus(value),
            "json": json.dumps(value)[1:-1].replace("/", "\\/"),
            "hex": value.encode().hex(),
        }
        for form, text in text_forms.items():
            out.setdefault(text.encode(), f"{name} ({form})")
        out.setdefault(value.encode("utf-16-le"), f"{name} (utf-16)")
        for frag in _b64_fragments(value.encode()):
            out.setdefault(frag, f"{name} (base64)")
    return out


class FakeS3(http.server.ThreadingHTTPServer):
    """Answers every request like S3 answers an unknown access key: 403 ``InvalidAccessKeyId``
    with the key id from the request's signature echoed in the error body. Records requests."""

    def __init__(self):
        self.requests: list[dict[str, str]] = []
        super().__init__(("127.0.0.1", 0), _FakeS3Handler)
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)
        self.thread.start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def close(self) -> None:
        self.shutdown()
        self.server_close()


class _FakeS3Handler(http.server.BaseHTTPRequestHandler):
    def _answer(self) -> None:
        auth = self.headers.get("Authorization", "")
        self.server.requests.append({"method": self.command, "path": self.path, "authorization": auth,
                                     "token": self.headers.get("x-amz-security-token", "")})
        m = re.search(r"Credential=([^/,]+)/", auth)
        body = (
            '<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>InvalidAccessKeyId</Code>'
            "<Message>The AWS Access Key Id you provided does not exist in our records.</Message>"
            f"<AWSAccessKeyId>{m.group(1) if m else ''}</AWSAccessKeyId><RequestId>4442587FB7D0A2F9</RequestId>"
            "</Error>"
        ).encode()
        self.send_response(403)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = _answer

    def log_message(self, *args) -> None:
        pass


def _files(root: Path) -> list[Path]:
    """Regular files under ``root`` (no sockets, no symlinks followed)."""
    out = []
    for dirpath, _, names in os.walk(root):
        for name in names:
            p = Path(dirpath) / name
            try:
                if stat.S_ISREG(os.lstat(p).st_mode):
                    out.append(p)
            except OSError:
                pass
    return out


def _delta_tables(root: Path) -> list[Path]:
    return sorted(p.parent for p in root.rglob("_delta_log") if p.is_dir())


@pytest.fixture(scope="module")
def runs(tmp_path_factory, data_dir):
    """Run every command once with the fake secrets and debug logging; collect what they left."""
    tmp = tmp_path_factory.mktemp("secrets")
    # Ray's socket paths must stay under ~107 characters: its temp dir (and TMPDIR, Spark's
    # local dirs) go to a short folder; it is searched like tmp, then removed.
    short = Path(tempfile.mkdtemp(prefix="r", dir="/tmp"))
    values, parts = fake_secrets()
    s3 = FakeS3()
    try:
        yield _run_all(tmp, short, data_dir, values, parts, s3)
    finally:
        s3.close()
        shutil.rmtree(short, ignore_errors=True)


def _run_all(tmp: Path, short: Path, data_dir: Path, values, parts, s3: FakeS3) -> dict:
    catalog = write_demo_catalog(str(tmp / "catalog"), items=ITEMS, data_dir=data_dir)
    lake = tmp / "lake"
    profile = tmp / "profile.yaml"
    profile.write_text("batch_size: 16\nactors: 1\nactor_num_cpus: 1.0\ntorch_threads: 1\nchunk_pairs: 16\n")
    # A conf dir whose text model pins a wrong digest for its heads: the scoring actor refuses
    # to load it, inside Ray, so the backfill fails there.
    tampered = tmp / "conf-tampered"
    shutil.copytree(default_conf_dir(), tampered)
    entry = tampered / "models" / "text-minilm-heads-v1.yaml"
    text = entry.read_text()
    heads_sha = text.split("heads:")[1].split("sha256: ")[1][:64]
    entry.write_text(text.replace(heads_sha, "ab" * 32))
    spark_conf = tmp / "spark-conf"
    spark_conf.mkdir()
    spark_log = tmp / "spark-logs" / "spark-debug.log"
    (spark_conf / "log4j2.properties").write_text(LOG4J2_DEBUG.format(path=spark_log))
    work = tmp / "cwd"
    out_dir = tmp / "outputs"
    for d in (work, out_dir, short / "t"):
        d.mkdir(parents=True)

    env = {k: v for k, v in os.environ.items()
           if not k.startswith("AWS_") and k not in ("RAY_ADDRESS", "MODERATION_CONF_DIR", "RUST_LOG")}
    env.update(values)
    env.update(
        MODERATION_LOG_LEVEL="DEBUG",
        RUST_LOG="debug",  # delta-rs (env_logger), in the driver and in Ray's workers
        RAY_BACKEND_LOG_LEVEL="debug",  # raylet, GCS, core workers (C++)
        RAY_LOGGER_LEVEL="debug",  # Ray's Python components (node, log monitor, dashboard)
        RAY_DATA_LOG_LEVEL="DEBUG",
        RAY_DEDUP_LOGS="0",
        RAY_USAGE_STATS_ENABLED="0",
        RAY_TMPDIR=str(short),
        TMPDIR=str(short / "t"),
        SPARK_LOCAL_DIRS=str(short / "t"),
        SPARK_CONF_DIR=str(spark_conf),
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        PYTHONPATH=os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]),
    )

    results: dict[str, dict] = {}

    def cli(name: str, args: list[str], *, timeout: int, extra_env: dict[str, str] | None = None) -> dict:
        t0 = time.monotonic()
        p = subprocess.run([sys.executable, "-m", "moderation.cli", *args], cwd=work, capture_output=True,
                           env={**env, **(extra_env or {})}, timeout=timeout)
        (out_dir / f"{name}.stdout").write_bytes(p.stdout)
        (out_dir / f"{name}.stderr").write_bytes(p.stderr)
        results[name] = {"rc": p.returncode, "stdout": p.stdout, "stderr": p.stderr,
                         "seconds": round(time.monotonic() - t0, 1)}
        return results[name]

    common = ["--lake", str(lake), "--profile", str(profile)]
    cli("backfill", ["backfill", "--catalog", catalog.uri, "--policy", str(POLICY_V1), "--run-id", "sec-ok", *common],
        timeout=240)
    cli("backfill_ray_crash",
        ["backfill", "--catalog", catalog.uri, "--policy", str(tampered / "policies" / "catalog-safety" / "v1.yaml"),
         "--run-id", "sec-crash", *common],
        timeout=240, extra_env={"MODERATION_CONF_DIR": str(tampered)})
    cli("backfill_missing_catalog",
        ["backfill", "--catalog", str(tmp / "no-such-catalog"), "--policy", str(POLICY_V1), "--run-id", "sec-missing",
         *common], timeout=120)
    cli("backfill_s3_catalog",
        ["backfill", "--catalog", f"s3://{S3_BUCKET}/catalog", "--policy", str(POLICY_V1), "--run-id", "sec-s3",
         *common], timeout=120, extra_env={"AWS_ENDPOINT_URL": s3.endpoint, "AWS_REGION": "us-east-1"})
    cli("decide", ["decide", "--lake", str(lake), "--policy", str(POLICY_V1)], timeout=120)
    cli("report", ["report", "--lake", str(lake), "--master", "local[1]"], timeout=240)
    return {"tmp": tmp, "short": short, "lake": lake, "spark_log": spark_log, "values": values, "parts": parts,
            "results": results, "s3_requests": list(s3.requests)}


def _ray_logs(short: Path) -> list[Path]:
    return [p for p in _files(short / "ray") if "/logs/" in str(p)]


def test_every_command_ran_at_debug_level_and_left_output_to_search(runs):
    r = runs["results"]
    summary = {k: (v["rc"], v["seconds"]) for k, v in r.items()}
    print("command: (exit code, seconds)", summary)
    ok, crash, missing, s3cat = r["backfill"], r["backfill_ray_crash"], r["backfill_missing_catalog"], r["backfill_s3_catalog"]
    assert ok["rc"] == 0 and f"selected pairs {ITEMS} = scored" in ok["stdout"].decode(), (summary, ok["stderr"][-3000:])
    assert r["decide"]["rc"] == 0, r["decide"]["stderr"][-3000:]
    assert r["report"]["rc"] == 0 and b"report:" in r["report"]["stdout"], r["report"]["stderr"][-3000:]
    # The failing commands failed, and said why.
    # The actor's refusal, raised inside Ray, reaches the command line as the user error it is.
    assert crash["rc"] == 2 and re.search(rb"^error: .*refusing to load", crash["stderr"], re.M), \
        (summary, crash["stderr"][-3000:])
    assert missing["rc"] != 0 and b"no-such-catalog" in missing["stderr"], (summary, missing["stderr"][-3000:])
    assert s3cat["rc"] != 0 and S3_BUCKET.encode() in s3cat["stderr"], (summary, s3cat["stderr"][-3000:])
    # The s3:// catalog really was read with the credentials: signed with the key id and token.
    key_id, token = runs["values"]["AWS_ACCESS_KEY_ID"], runs["values"]["AWS_SESSION_TOKEN"]
    assert any(f"Credential={key_id}/" in q["authorization"] and q["token"] == token for q in runs["s3_requests"]), \
        runs["s3_requests"][:3]

    # Debug logging was really on: delta-rs (driver), our root logger at DEBUG (py4j's debug
    # records pass it), our own INFO lines.
    assert b"DEBUG deltalake_core" in ok["stderr"]
    assert b"INFO moderation." in ok["stderr"]
    assert re.search(rb"\d DEBUG py4j", r["report"]["stderr"])
    # Ray: two sessions (backfill and the crashed one) with their logs; the C++ backend logged at
    # debug; the crashed actor's traceback is in a worker log.
    sessions = [p for p in (runs["short"] / "ray").glob("session_2*") if p.is_dir()]
    ray_logs = _ray_logs(runs["short"])
    assert len(sessions) >= 2 and len(ray_logs) >= 20, (sessions, len(ray_logs))
    raylet = b"".join(p.read_bytes() for p in ray_logs if p.name == "raylet.out")
    assert re.search(rb"^\[[^\]]* D \d+ \d+\] \(raylet\)", raylet, re.M)
    worker_err = b"".join(p.read_bytes() for p in ray_logs if p.name.startswith("worker-") and p.suffix == ".err")
    assert b"refusing to load" in worker_err
    # The lake: Delta logs with commit info, a runs row per backfill and decide, the crash's error.
    commits = list(runs["lake"].rglob("_delta_log/*.json"))
    assert len(commits) >= 8 and any(b'"commitInfo"' in p.read_bytes() for p in commits)
    from deltalake import DeltaTable

    rows = {row["run_id"]: row for row in DeltaTable(str(runs["lake"] / "runs")).to_pyarrow_table().to_pylist()}
    assert rows["sec-ok"]["status"] == "succeeded"
    assert rows["sec-crash"]["status"] == "failed" and "ArtifactError" in (rows["sec-crash"]["error"] or "")
    assert any(row["kind"] == "decide" for row in rows.values())
    # Spark logged at debug until the report set its level.
    assert runs["spark_log"].is_file() and b" DEBUG " in runs["spark_log"].read_bytes()


def test_no_secret_appears_in_any_output(runs):
    from deltalake import DeltaTable

    search = needles(runs["values"], runs["parts"])
    sources: list[tuple[str, bytes]] = []
    for name, res in runs["results"].items():
        sources += [(f"{name} stdout", res["stdout"]), (f"{name} stderr", res["stderr"])]
    files = _files(runs["tmp"]) + _files(runs["short"])
    for p in files:
        try:
            sources.append((str(p), p.read_bytes()))
        except OSError:
            pass
    # Parquet pages are compressed: read every table's rows and its commit history decoded.
    tables = _delta_tables(runs["tmp"])
    for t in tables:
        dt = DeltaTable(str(t))
        rows = dt.to_pyarrow_table().to_pylist()
        sources.append((f"{t} rows", repr(rows).encode()))
        sources.append((f"{t} history", json.dumps(dt.history(), default=str).encode()))

    leaks = []
    for where, data in sources:
        for needle, what in search.items():
            i = data.find(needle)
            if i >= 0:
                leaks.append(f"{what} in {where} ({data.count(needle)}x), first: "
                             f"...{data[max(0, i - 150):i + len(needle) + 50]!r}...")
    total = sum(len(d) for _, d in sources)
    ray_logs = _ray_logs(runs["short"])
    print(f"\nsearched {len(search)} needles in {len(sources)} sources, {total / 1e6:.1f} MB: "
          f"{sum(len(r['stdout']) + len(r['stderr']) for r in runs['results'].values()) / 1e6:.1f} MB stdout/stderr "
          f"of {len(runs['results'])} commands, {len(files)} files ({len(ray_logs)} Ray log files, "
          f"{sum(p.stat().st_size for p in ray_logs if p.exists()) / 1e6:.1f} MB), {len(tables)} Delta tables decoded; "
          f"command seconds {[(k, v['seconds']) for k, v in runs['results'].items()]}")
    assert not leaks, f"{len(leaks)} leak(s):\n" + "\n".join(leaks[:20])
