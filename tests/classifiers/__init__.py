"""Tests of ``moderation/classifiers/`` (the layout mirrors the package)."""
