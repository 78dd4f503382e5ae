"""``ray job submit`` entrypoint for a backfill: exactly ``moderation backfill`` (the same typer
command, options, exit codes and exit guard; see moderation/cli.py). ``python -m moderation
backfill …`` is the same thing and is what deploy/ uses.

    ray job submit --address http://HEAD:8265 --working-dir . --runtime-env deploy/ray/runtime-env.yaml -- \
        python jobs/backfill.py --catalog s3://bucket/catalog --lake s3://bucket/lake \
        --policy conf/policies/catalog-safety/v3.yaml --profile conf/jobs/cluster.yaml --decide
"""

import sys

from moderation.cli import main

if __name__ == "__main__":
    main(["backfill", *sys.argv[1:]])
