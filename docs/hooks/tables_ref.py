"""MkDocs hook: the column lists of ``docs/tables.md``, generated from ``moderation/schemas.py``.

Each marker ``<!-- columns: TABLE -->`` (TABLE: a path under the lake root, as in
``moderation.schemas.LAKE_SCHEMAS``, or ``eval/datasets``) becomes a table of that table's
columns: name, type and the description the schema carries (the same text as the Delta column
comment and ``moderation tables``). The prose around the markers is written by hand. A marker
naming no known table, or a known table without a marker, is a warning, which ``mkdocs build
--strict`` turns into a failed build: the page cannot drift from the schemas.
"""

from __future__ import annotations

import logging
import re
import sys
from pathlib import Path

PAGE = "tables.md"
MARKER = re.compile(r"<!-- columns: ([A-Za-z0-9_/]+) -->")
REPO = Path(__file__).resolve().parents[2]

log = logging.getLogger("mkdocs.hooks.tables_ref")


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def columns_markdown(table: str) -> str | None:
    """The Markdown table of ``table``'s columns, or None when no schema names it."""
    from moderation.reporting.dictionary import type_name
    from moderation.schemas import EVAL_DATASET_COLUMNS, LAKE_SCHEMAS, description

    rows = ["| column | type | meaning |", "|---|---|---|"]
    if table == "eval/datasets":
        for name, text in EVAL_DATASET_COLUMNS.items():
            kind = "int8" if name == "label_*" else "string or list<string>" if name == "slice_*" else "string"
            rows.append(f"| `{name}` | `{kind}` | {_cell(text)} |")
        return "\n".join(rows)
    schema = LAKE_SCHEMAS.get(table)
    if schema is None:
        return None
    for field in schema:
        kind = type_name(field.type) + ("" if field.nullable else ", not null")
        rows.append(f"| `{field.name}` | `{kind}` | {_cell(description(field) or '')} |")
    return "\n".join(rows)


def on_page_markdown(markdown: str, page, config, files) -> str:
    if page.file.src_uri != PAGE:
        return markdown
    if str(REPO) not in sys.path:  # document this checkout's schemas, whatever else is installed
        sys.path.insert(0, str(REPO))
    from moderation.schemas import LAKE_SCHEMAS

    seen = set(MARKER.findall(markdown))
    for table in sorted(set(LAKE_SCHEMAS) - seen):
        log.warning("%s has no <!-- columns: %s --> marker: the table's columns would be missing", PAGE, table)

    def replace(match: re.Match) -> str:
        text = columns_markdown(match.group(1))
        if text is None:
            log.warning("%s: <!-- columns: %s -->: no such table in moderation.schemas.LAKE_SCHEMAS", PAGE,
                        match.group(1))
            return match.group(0)
        return text

    return MARKER.sub(replace, markdown)
