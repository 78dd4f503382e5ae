"""spark-submit entrypoint for the violation reports (the same job as ``moderation report``).

    spark-submit jobs/report.py --lake /path/to/lake            # master from spark-submit
    python jobs/report.py --lake /path/to/lake --master "local[2]"

The ``moderation`` package must be importable by the driver (installed in its environment).
"""

from __future__ import annotations

import argparse
import os
import sys

from moderation.errors import ModerationError
from moderation.reporting import run_report


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Write <lake>/reports/violation_rates and violations_by_category.")
    parser.add_argument("--lake", required=True, help="lake root URI (a local folder or an s3:// prefix)")
    parser.add_argument("--master", default=None, help="Spark master URL (default: the one spark-submit sets)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the report; print its summary. Returns the exit status (1 on a user error)."""
    from moderation.redact import install

    install()  # before deltalake is imported: secrets never reach logs or printed errors
    args = parse_args(argv)
    try:
        # Executors resolve relative paths against their own working directory.
        lake = args.lake if "://" in args.lake else os.path.abspath(args.lake)
        result = run_report(lake, master=args.master)
    except ModerationError as e:
        print(f"report: {e}", file=sys.stderr)
        return 1
    print(result.summary())
    return 0


if __name__ == "__main__":
    sys.exit(main())
