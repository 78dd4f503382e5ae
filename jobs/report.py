"""``spark-submit`` entrypoint for the violation reports: exactly ``moderation report`` (the same
typer command, options, exit codes and exit guard; see moderation/cli.py). Under spark-submit the
master is the one spark-submit was given, unless ``--master`` says otherwise.

    spark-submit --master spark://HOST:7077 jobs/report.py --lake s3://bucket/lake
    python jobs/report.py --lake /path/to/lake --master "local[2]"

The ``moderation`` package must be importable by the driver (installed in its environment);
deploy/spark/submit-report.sh is a complete example.
"""

import sys

from moderation.cli import main

if __name__ == "__main__":
    main(["report", *sys.argv[1:]])
