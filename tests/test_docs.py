"""The documentation cannot rot: the MkDocs site builds with ``mkdocs build --strict`` (a broken
link or anchor, or a command without help text, fails it), its command reference lists every
command the CLI registers, the hand-written command table names each of them, and README.md stays
a landing page (under 200 lines, links that resolve, commands that parse with the CLI)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import typer

from moderation.cli import app
from tests.test_deploy import invocations, parse

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
DOCS = REPO / "docs"
#: the test command the README and CI run (kept verbatim in both)
SUITE_COMMAND = "bash scripts/setup.sh && .venv/bin/python -m pytest -n 2"
#: what CI runs between the setup and the tests (docs/development.md)
LINT_COMMAND = ".venv/bin/ruff check moderation && .venv/bin/mypy moderation && "


def command_paths() -> list[tuple[str, ...]]:
    """Every visible command of the CLI, groups included, as its words after ``moderation``."""
    out = []

    def walk(command, path):
        out.append(path)
        if hasattr(command, "commands"):
            for name, sub in command.commands.items():
                if not sub.hidden:
                    walk(sub, path + (name,))

    walk(typer.main.get_command(app), ())
    return out


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("docs") / "site"
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(REPO / "mkdocs.yml"),
         "--site-dir", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"mkdocs build --strict failed:\n{result.stdout}{result.stderr}"
    return out


def test_the_reference_lists_every_command(site):
    page = (site / "commands" / "index.html").read_text()
    assert "commands-reference" not in page, "the hook did not replace the marker"
    paths = command_paths()
    assert ("runs", "show") in paths and len(paths) > 20
    for path in paths:
        title = " ".join(("moderation",) + path)
        assert f'id="{"-".join(("moderation",) + path)}"' in page and f">{title}<" in page, title


def test_the_reference_shows_each_option():
    """Options come from the app: one the code has appears, one it lacks does not."""
    sys.path.insert(0, str(DOCS / "hooks"))
    try:
        import typer_ref
    finally:
        sys.path.remove(str(DOCS / "hooks"))
    text = typer_ref.render(app)
    section = text.split("### moderation backfill\n", 1)[1].split("\n### ", 1)[0]
    assert "<code>--catalog-version &lt;int range&gt;</code>" in section and "--change-source" not in section
    assert "<code>RUN_ID</code>" in text.split("### moderation runs show\n", 1)[1]


def test_the_hand_written_table_names_every_command():
    table = (DOCS / "commands.md").read_text().split("<!-- commands-reference -->")[0]
    leaves = [p for p in command_paths() if p and not hasattr(_command(p), "commands")]
    missing = [" ".join(p) for p in leaves if f"moderation {' '.join(p)}" not in table]
    assert not missing, f"docs/commands.md's table does not describe: {missing}"


def _command(path):
    command = typer.main.get_command(app)
    for name in path:
        command = command.commands[name]
    return command


def readme_links() -> list[str]:
    return [t for t in re.findall(r"\]\(([^)\s]+)\)", README.read_text()) if not urlsplit(t).scheme]


def test_readme_is_a_landing_page(site):
    assert len(README.read_text().splitlines()) < 200
    links = readme_links()
    assert any(link.startswith("docs/") for link in links)
    for link in links:
        path, _, anchor = link.partition("#")
        assert (REPO / path).exists(), f"README links to {path}, which does not exist"
        if path.startswith("docs/") and path.endswith(".md"):
            page = path.removeprefix("docs/").removesuffix(".md")
            html = site / ("index.html" if page == "index" else f"{page}/index.html")
            assert html.is_file(), f"README links to {path}, which the site does not build"
            assert not anchor or f'id="{anchor}"' in html.read_text(), f"README: no #{anchor} on {path}"


def test_readme_keeps_the_two_commands_and_ci_runs_the_second():
    text = README.read_text()
    assert "bash scripts/setup.sh && .venv/bin/moderation demo\n" in text
    assert SUITE_COMMAND + "\n" in text
    ci = (REPO / ".ci" / "run").read_text().rstrip()
    assert LINT_COMMAND in ci and ci.replace(LINT_COMMAND, "").endswith(SUITE_COMMAND)


def test_readme_commands_parse_with_the_cli():
    blocks = re.findall(r"^```bash\n(.*?)^```", README.read_text(), flags=re.S | re.M)
    # one command per unindented line, with its indented continuation (and a quoted SQL's lines)
    commands = [c.replace("\\\n", " ") for block in blocks for c in re.split(r"\n(?=\S)", block)]
    found = [parse(argv)[0] for c in commands for argv in invocations(c)]
    assert found == [("backfill",), ("decide",), ("rescan",), ("diff",), ("report",), ("sql",)], found
