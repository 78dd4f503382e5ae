"""MkDocs hook: the command reference, rendered from the typer app at build time.

``docs/commands.md`` holds the marker ``<!-- exit-codes -->``, replaced with the table of
``moderation.cli.EXIT_CODES`` (the one list of exit codes; ``moderation --help`` shows it too), and
the marker ``<!-- commands-reference -->``; this hook replaces it with
every command of ``moderation.cli.app`` (walked through typer's click command tree): its help text,
usage line and options, as ``moderation COMMAND --help`` prints them. Nothing generated is
committed, so the page cannot drift from the CLI. A command without help text is a warning,
which ``mkdocs build --strict`` turns into a failed build.

It also publishes the model cards under ``conf/models/*.md`` as pages ``model-cards/<name>.md``
(the docs link them as ``../conf/models/<name>.md``, right on GitHub, rewritten here), and drops
the backslash of ``\\|`` inside code in table cells (GitHub needs it; Python-Markdown keeps it).
"""

from __future__ import annotations

import html
import logging
import re
import sys
from pathlib import Path

from mkdocs.structure.files import File, Files

MARKER = "<!-- commands-reference -->"
EXIT_MARKER = "<!-- exit-codes -->"
PAGE = "commands.md"
REPO = Path(__file__).resolve().parents[2]
CARDS = REPO / "conf" / "models"

log = logging.getLogger("mkdocs.hooks.typer_ref")


def _inline(text: str) -> str:
    """Help text as inline HTML: escaped, with `backticks` as code."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(text, quote=False))


def _paragraphs(text: str) -> str:
    blocks = [" ".join(b.split()) for b in re.split(r"\n\s*\n", text.replace("\b", "")) if b.strip()]
    return "\n".join(f"<p>{_inline(b)}</p>" for b in blocks)


def _summary(command) -> str:
    """The first paragraph of a command's help."""
    return " ".join(re.split(r"\n\s*\n", (command.help or "").replace("\b", "").strip())[0].split())


def _param_row(param, ctx) -> str | None:
    """One table row: an argument as its usage name (RUN_ID, PATHS...), an option as --help shows it."""
    if param.hidden:
        return None
    record = param.get_help_record(ctx)
    if record is None:
        return None
    name, help_text = record
    if param.param_type_name == "argument":
        name = (param.metavar or param.name.upper()) + ("..." if param.nargs == -1 else "")
    return f"<tr><td><code>{html.escape(name)}</code></td><td>{_inline(help_text)}</td></tr>"


def walk(command, path: tuple[str, ...] = ()):
    """(path, command, context) for the command and every subcommand, depth first, hidden ones left out."""
    ctx = command.make_context(" ".join(("moderation",) + path), [], resilient_parsing=True)
    yield path, command, ctx
    if hasattr(command, "commands"):
        for name in command.list_commands(ctx):
            sub = command.get_command(ctx, name)
            if sub is not None and not sub.hidden:
                yield from walk(sub, path + (name,))


def render(app) -> str:
    """Markdown for every command of the typer ``app``."""
    import typer.main

    out = []
    for path, command, ctx in walk(typer.main.get_command(app)):
        title = " ".join(("moderation",) + path)
        out.append(f"### {title}\n")
        if not (command.help or "").strip():
            log.warning("command reference: `%s` has no help text (give it a docstring)", title)
        else:
            out.append(_paragraphs(command.help) + "\n")
        out.append(f"```text\n{ctx.get_usage()}\n```\n")
        if hasattr(command, "commands"):
            subs = [(name, command.get_command(ctx, name)) for name in command.list_commands(ctx)]
            items = "\n".join(
                f'<tr><td><a href="#{"-".join(("moderation",) + path + (name,))}"><code>{name}</code></a></td>'
                f"<td>{_inline(_summary(sub))}</td></tr>"
                for name, sub in subs if sub is not None and not sub.hidden)
            out.append(f"<table>\n<tr><th>command</th><th>what it does</th></tr>\n{items}\n</table>\n")
        rows = [_param_row(param, ctx) for param in command.get_params(ctx) if param.name != "help"]
        rows = [row for row in rows if row]
        if rows:
            body = "\n".join(rows)
            out.append(f"<table>\n<tr><th>argument / option</th><th>meaning</th></tr>\n{body}\n</table>\n")
    return "\n".join(out)


def on_files(files: Files, config) -> Files:
    for card in sorted(CARDS.glob("*.md")):
        files.append(File.generated(config, f"model-cards/{card.name}", abs_src_path=str(card)))
    return files


def on_page_markdown(markdown: str, page, config, files) -> str:
    # The docs link model cards as ../conf/models/X.md (the repository's path); on the site they
    # are model-cards/X.md. Every page lies at the top of docs/, so the relative path is that.
    markdown = markdown.replace("](../conf/models/", "](model-cards/")
    if page.file.src_uri != PAGE:
        return markdown
    if MARKER not in markdown:
        log.warning("%s has no %s marker: the command reference would be missing", PAGE, MARKER)
        return markdown
    if str(REPO) not in sys.path:  # document this checkout's CLI, whatever else is installed
        sys.path.insert(0, str(REPO))
    from moderation.cli import EXIT_CODES, app

    if EXIT_MARKER not in markdown:
        log.warning("%s has no %s marker: the exit codes would be missing", PAGE, EXIT_MARKER)
    codes = "\n".join(["| status | meaning | when |", "|---|---|---|"]
                      + [f"| {code} | {short} | {detail} |" for code, (short, detail) in EXIT_CODES.items()])
    return markdown.replace(EXIT_MARKER, codes).replace(MARKER, render(app))


def on_page_content(html_text: str, page, config, files) -> str:
    # A `|` inside a code span in a table cell is written `\|` (GitHub splits the cell otherwise);
    # Python-Markdown keeps the backslash inside code, so drop it there.
    return re.sub(r"<code>[^<]*\\\|[^<]*</code>", lambda m: m.group(0).replace("\\|", "|"), html_text)
