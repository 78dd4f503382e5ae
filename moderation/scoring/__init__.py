"""Scoring: plans say what a run scores, one run executes any plan.

* ``plan.py``: ``ScoringRequest`` (what the user asked for), ``ScoringPlan`` (what a run scores:
  its models, one ``Selection`` per model, the removals it records, the catalog snapshot it reads,
  the pins and provenance its ``runs`` row carries) and ``ScoringResult``.
* ``run.py``: ``prepare_run`` (resolve the request: policy, profile, models, resume, gate,
  catalog snapshot), ``run_scoring`` (score and commit any plan in idempotent chunks, then
  account) and ``execute`` (the three under one storage boundary).

The plans themselves are built by ``backfill.plan_backfill`` and ``rescan.plan_rescan_run``;
neither module imports the other, and ``plan.py`` / ``run.py`` import neither. Beside them:
``selection.py`` (which catalog rows a run reads), ``chunks.py`` (the chunk writer: scored rows
into ``scores`` / ``quarantine`` files and exactly-once commits), ``chaos.py`` (kill-and-resume
checks) and ``model_verify.py`` (artifacts checked on the cluster's nodes).

The top layer but the apps (docs/architecture.md): it may import every layer below it.
"""
