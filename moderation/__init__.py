"""Catalog policy backfill: score a streaming catalog against content policies.

Heavy dependencies (torch, ray, pyspark) are imported lazily inside the modules that need
them, so importing this package and running ``moderation --help`` stay fast.
"""

__version__ = "0.1.0"
