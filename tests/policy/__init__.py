"""Tests of ``moderation/policy/`` (the layout mirrors the package)."""
