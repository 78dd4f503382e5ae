"""--run-id is checked by every command that takes it (issue 15, point 5e): a value outside
``[A-Za-z0-9][A-Za-z0-9._-]{0,127}`` is one error line naming it and exit 2, before anything runs."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from moderation.cli import RUN_ID_PATTERN, app
from tests.conftest import POLICY_V1

COMMANDS = {
    "backfill": ["backfill", "--catalog", "{tmp}/catalog", "--lake", "{tmp}/lake", "--policy", str(POLICY_V1)],
    "rescan": ["rescan", "--catalog", "{tmp}/catalog", "--lake", "{tmp}/lake", "--policy", str(POLICY_V1)],
    "decide": ["decide", "--lake", "{tmp}/lake", "--policy", str(POLICY_V1)],
    "diff": ["diff", "--lake", "{tmp}/lake", "--policy", "catalog-safety", "--from", "1", "--to", "2"],
    "enforce": ["enforce", "--lake", "{tmp}/lake", "--policy", str(POLICY_V1)],
    "promote": ["policy", "promote", "--lake", "{tmp}/lake", "--policy", str(POLICY_V1)],
}
BAD = ["../../etc", "a b", "x'; DROP TABLE runs; --", "-leading-dash", "é", "a/b", "x" * 129, "", "run\nid"]


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_a_bad_run_id_is_refused_with_exit_2(command, tmp_path):
    args = [a.format(tmp=tmp_path) for a in COMMANDS[command]]
    for bad in BAD:
        out = CliRunner().invoke(app, [*args, "--run-id", bad])
        assert out.exit_code == 2, (bad, out.output)
        lines = out.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"error: --run-id {bad[:200]!r}:"), out.output
    assert not (tmp_path / "lake").exists()


def test_the_run_id_pattern():
    for good in ["d1", "backfill-catalog-safety-v3", "rescan-20261206T101010Z-abc123", "A.b_c-9", "x" * 128]:
        assert RUN_ID_PATTERN.fullmatch(good)
    for bad in BAD:
        assert not RUN_ID_PATTERN.fullmatch(bad)
