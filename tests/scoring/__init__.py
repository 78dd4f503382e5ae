"""Tests of ``moderation/scoring/`` (the layout mirrors the package)."""
