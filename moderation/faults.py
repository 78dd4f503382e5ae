"""Fault injection for the resume tests and ``scripts/chaos_backfill.py``.

``fault_point(name)`` does nothing unless ``$MODERATION_FAULTS`` names that point; then the
process kills itself with SIGKILL (no cleanup, no ``finally``, exactly like a lost machine) at
the point's N-th hit. Syntax: ``point[:N][,point[:N]…]`` (N defaults to 1), for example
``MODERATION_FAULTS=before_commit:3``.

Points (in the order a backfill meets them):

* ``after_selection``: the catalog was scanned, nothing scored yet;
* ``after_batch``: a scored batch reached the driver, not yet committed;
* ``before_commit``: a chunk's data files are written to the table folder, its Delta commit
  is not (the files stay as unreferenced orphans);
* ``after_commit``: a chunk's commit landed but the process dies before it learns so (the
  acknowledgement is lost; the resume must not commit it again);
* ``between_chunks``: after a whole chunk (quarantine and scores) committed.
"""

from __future__ import annotations

import os
import signal
from collections import Counter

POINTS = ("after_selection", "after_batch", "before_commit", "after_commit", "between_chunks")
_hits: Counter = Counter()


def _plan() -> dict[str, int]:
    spec = os.environ.get("MODERATION_FAULTS", "").strip()
    plan: dict[str, int] = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        name, _, n = part.partition(":")
        if name not in POINTS:
            raise ValueError(f"MODERATION_FAULTS: unknown fault point {name!r}; known: {POINTS}")
        plan[name] = int(n or 1)
    return plan


def fault_point(name: str) -> None:
    """SIGKILL this process if ``$MODERATION_FAULTS`` asks for it at this hit of ``name``."""
    if "MODERATION_FAULTS" not in os.environ:
        return
    plan = _plan()
    if name not in plan:
        return
    _hits[name] += 1
    if _hits[name] == plan[name]:
        os.kill(os.getpid(), signal.SIGKILL)
