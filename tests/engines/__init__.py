"""Tests of ``moderation/engines/`` (Ray and Spark adapters) (the layout mirrors the package)."""
