"""The job entrypoints are the CLI itself: ``python -m moderation``, ``jobs/backfill.py`` (``ray
job submit``) and ``jobs/report.py`` (``spark-submit``) take every option ``moderation`` documents
and give the same exit codes, through the same ``main`` and its exit guard."""

from __future__ import annotations

import os
import runpy
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import typer

from moderation.cli import app
from moderation.errors import ConfigError, StorageError

REPO = Path(__file__).resolve().parents[1]
#: job file -> the CLI command it is
JOBS = {"jobs/backfill.py": "backfill", "jobs/report.py": "report"}


def _command(name: str):
    """The CLI command ``name`` (typer's own click: a Command with ``params``)."""
    return typer.main.get_command(app).commands[name]


def _value(param) -> str:
    """A value of the option's type that the command accepts."""
    if param.name == "map_":
        return "item_id=track_uri"
    if param.name == "change_source":
        return "auto"
    return "1" if param.type_descriptor.annotation in (int, float) else "x"


def every_option(command) -> list[str]:
    """An argv giving every option of ``command`` (each flag, each repeatable option twice)."""
    argv: list[str] = []
    for param in command.params:
        assert param.param_type_name == "option", f"{command.name}: argument {param.name}: extend this test"
        name = max(param.opts, key=len)
        if param.is_flag:
            argv.append(name)
        else:
            argv += [name, _value(param)] * (2 if param.multiple else 1)
    return argv


@dataclass
class _Result:
    status: str = "succeeded"

    def summary(self) -> str:
        return "fake summary"


@pytest.fixture
def calls(monkeypatch):
    """The library calls behind the commands, recorded instead of run; ``main``'s process exit
    becomes a SystemExit and its stream masking is left out (both act on the test process)."""
    import moderation.cli
    import moderation.policy.decide
    import moderation.policy.enforcement
    import moderation.redact
    import moderation.reporting.report
    import moderation.scoring.backfill

    seen: dict[str, dict] = {}

    def fake(name, error=None):
        def run(*args, **kwargs):
            seen[name] = kwargs
            if error is not None:
                raise error
            return _Result()
        return run

    monkeypatch.setattr(moderation.scoring.backfill, "run_backfill", fake("backfill"))
    monkeypatch.setattr(moderation.policy.decide, "run_decide", fake("decide"))
    monkeypatch.setattr(moderation.policy.enforcement, "run_enforce", fake("enforce"))
    monkeypatch.setattr(moderation.reporting.report, "run_report", fake("report"))
    monkeypatch.setattr(moderation.redact, "install", lambda: None)
    monkeypatch.setattr(moderation.cli, "_exit", lambda code: (_ for _ in ()).throw(SystemExit(code)))
    seen["fake"] = fake
    return seen


def _run_job(path: str, argv: list[str], monkeypatch) -> int:
    monkeypatch.setattr(sys, "argv", [path, *argv])
    with pytest.raises(SystemExit) as e:
        runpy.run_path(str(REPO / path), run_name="__main__")
    return e.value.code


@pytest.mark.parametrize("path", sorted(JOBS))
def test_job_entrypoints_accept_every_option_the_cli_documents(path, calls, monkeypatch):
    command = _command(JOBS[path])
    argv = every_option(command)
    assert _run_job(path, argv, monkeypatch) == 0
    received = calls[JOBS[path]]
    # Every option reached the library call (or, for --decide/--enforce/--verbose, did its part).
    if JOBS[path] == "backfill":
        assert received["run_id"] == "x" and received["where"] == "x" and received["limit"] == 1
        assert received["catalog_version"] == 1 and received["ray_address"] == "x"
        assert received["profile_path"] == Path("x") and received["force"] is True
        assert received["column_map"] == {"item_id": "track_uri"} and len(received["media_roots"]) == 2
        assert "decide" in calls and "enforce" in calls
    else:
        assert received["master"] == "x" and received["min_cell_count"] == 1


def test_python_dash_m_moderation_is_the_cli(tmp_path):
    r = subprocess.run([sys.executable, "-m", "moderation", "--help"], capture_output=True, text=True,
                       cwd=tmp_path, timeout=60)
    assert r.returncode == 0, r.stderr
    for name in typer.main.get_command(app).commands:
        assert name in r.stdout


@pytest.mark.parametrize("entry", ["python -m moderation backfill", "jobs/backfill.py", "jobs/report.py"])
def test_help_of_each_entrypoint_lists_every_option(entry):
    """Through a real process, as ray job submit / spark-submit start it."""
    command = _command(entry.split()[-1].removesuffix(".py").split("/")[-1])
    args = entry.split()[1:] if entry.startswith("python") else [str(REPO / entry)]
    env = {**os.environ, "COLUMNS": "250", "TERM": "dumb"}
    r = subprocess.run([sys.executable, *args, "--help"], capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 0, r.stderr
    for param in command.params:
        for opt in param.opts:
            assert opt in r.stdout, f"{entry}: {opt} missing from --help"


@pytest.mark.parametrize("path", sorted(JOBS))
def test_exit_codes_are_the_clis(path, calls, monkeypatch):
    name = JOBS[path]
    module = {"backfill": "moderation.scoring.backfill", "report": "moderation.reporting.report"}[name]
    required = ["--lake", "x"] + (["--catalog", "x", "--policy", "x"] if name == "backfill" else [])
    target = sys.modules[module]
    attr = "run_backfill" if name == "backfill" else "run_report"
    for error, code in ((ConfigError("bad policy"), 2), (StorageError("store down"), 3),
                        (ConnectionResetError("reset by peer"), 3)):
        monkeypatch.setattr(target, attr, calls["fake"](name, error))
        assert _run_job(path, required, monkeypatch) == code, error
    assert _run_job(path, required + ["--no-such-option"], monkeypatch) == 2  # usage error


def test_enforce_needs_decide(calls, monkeypatch):
    code = _run_job("jobs/backfill.py", ["--lake", "x", "--catalog", "x", "--policy", "x", "--enforce"], monkeypatch)
    assert code == 2 and "backfill" not in calls


def test_report_master_defaults_to_spark_submits_under_spark_submit(calls, monkeypatch):
    monkeypatch.delenv("PYSPARK_GATEWAY_PORT", raising=False)
    assert _run_job("jobs/report.py", ["--lake", "x"], monkeypatch) == 0
    assert calls["report"]["master"] == "local[*]"
    monkeypatch.setenv("PYSPARK_GATEWAY_PORT", "40000")  # what spark-submit hands its Python driver
    assert _run_job("jobs/report.py", ["--lake", "x"], monkeypatch) == 0
    assert calls["report"]["master"] is None
