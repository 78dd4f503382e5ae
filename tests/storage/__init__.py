"""Tests of ``moderation/storage/`` (the layout mirrors the package)."""
