"""Runs: every job's ``<lake>/runs`` row, typed, read, written, listed and shown.

- :mod:`moderation.runs.record`: :class:`RunRecord` (the row), its shared parts
  (:class:`PolicyProvenance`, :class:`RunTiming`), run ids and the code version, and
  :func:`read_run` / :func:`write_run` (one run, merged on run_id; :func:`read_row` reads the
  row as the table holds it).
- :mod:`moderation.runs.show`: listing runs, showing one, and whether it can be reproduced.

Library only (the jobs and the ``moderation runs`` commands call it); no Ray, no Spark.
"""

from moderation.runs.record import (
    RUN_COLUMNS,
    PolicyProvenance,
    RunRecord,
    RunTiming,
    code_version,
    new_run_id,
    read_row,
    read_run,
    write_run,
)
from moderation.runs.show import (
    GROUPS,
    NEW_LAKE,
    POLICY_PLACEHOLDER,
    SCORING_KINDS,
    Check,
    RunReport,
    delta_version_check,
    find_policy_file,
    format_runs,
    list_runs,
    reproduce_command,
    reproducibility,
    require_run,
    runs_rows,
    show_run,
)

__all__ = [
    "GROUPS",
    "NEW_LAKE",
    "POLICY_PLACEHOLDER",
    "RUN_COLUMNS",
    "SCORING_KINDS",
    "Check",
    "PolicyProvenance",
    "RunRecord",
    "RunReport",
    "RunTiming",
    "code_version",
    "delta_version_check",
    "find_policy_file",
    "format_runs",
    "list_runs",
    "new_run_id",
    "read_row",
    "read_run",
    "reproduce_command",
    "reproducibility",
    "require_run",
    "runs_rows",
    "show_run",
    "write_run",
]
