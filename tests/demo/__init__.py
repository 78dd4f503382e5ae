"""Tests of ``moderation/demo/`` (the layout mirrors the package)."""
