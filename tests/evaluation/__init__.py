"""Tests of ``moderation/evaluation/`` (the layout mirrors the package)."""
