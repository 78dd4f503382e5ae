"""Benchmark-only code (``scripts/bench_*.py`` and their tests). Nothing the CLI or the
pipeline imports lives here."""
