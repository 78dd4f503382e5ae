"""Tests of ``moderation/reporting/`` (the layout mirrors the package)."""
