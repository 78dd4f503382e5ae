"""What the CLI prints: JSON for machines (``--json``), rich tables for a person at a terminal,
and the same aligned plain text as before anywhere else (a pipe, a job's log, a test).

rich is imported only when a terminal is there to draw on, so ``moderation --help`` stays quick.
"""

from __future__ import annotations

import base64
import datetime as dt
import decimal
import json
import sys
from collections.abc import Sequence
from pathlib import PurePath


def json_value(value):
    """A JSON-able Python value: maps (Arrow gives key/value pairs) as objects, times as ISO 8601,
    decimals as strings, bytes as base64, paths as strings."""
    if isinstance(value, (list, tuple)):
        if value and all(isinstance(v, tuple) and len(v) == 2 for v in value):
            return {str(k): json_value(v) for k, v in value}
        return [json_value(v) for v in value]
    if isinstance(value, dict):
        return {str(k): json_value(v) for k, v in value.items()}
    if isinstance(value, (dt.datetime, dt.date, dt.time)):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if isinstance(value, decimal.Decimal):
        return str(value)
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    if isinstance(value, PurePath):
        return str(value)
    return value


def dumps(value) -> str:
    """One JSON document (indented, UTF-8 kept), as ``--json`` prints it."""
    return json.dumps(json_value(value), indent=2, ensure_ascii=False)


def is_terminal() -> bool:
    """stdout is a terminal: a person reads it, so tables may be drawn with rich."""
    return sys.stdout.isatty()


def plain_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """An aligned text table, two spaces between columns, ``-`` for None."""
    cells = [[str(h) for h in headers]] + [["-" if v is None else str(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() for r in cells)


def print_rich_table(headers: Sequence[str], rows: Sequence[Sequence[object]], *, title: str | None = None) -> None:
    """Draw a table on the terminal with rich (cells as text; None as ``-``)."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, title_justify="left", header_style="bold")
    for h in headers:
        table.add_column(str(h), overflow="fold")
    for row in rows:
        table.add_row(*("-" if v is None else str(v) for v in row))
    Console().print(table)
