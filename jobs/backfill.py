"""Entrypoint for `ray job submit`: one backfill (and optionally the decide) on a cluster.

    ray job submit --address http://HEAD:8265 --working-dir . -- \
        python jobs/backfill.py --catalog s3://bucket/catalog --lake s3://bucket/lake \
        --policy conf/policies/catalog-safety/v1.yaml --profile conf/jobs/cluster.yaml --decide
"""

from __future__ import annotations

import argparse
import sys

from moderation.backfill import run_backfill
from moderation.decide import run_decide
from moderation.errors import ModerationError


def main(argv: list[str] | None = None) -> int:
    from moderation.redact import install

    install()  # before deltalake is imported: secrets never reach logs or printed errors
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--catalog", required=True)
    p.add_argument("--lake", required=True)
    p.add_argument("--policy", required=True)
    p.add_argument("--run-id")
    p.add_argument("--where")
    p.add_argument("--limit", type=int)
    p.add_argument("--profile", default="conf/jobs/cluster.yaml")
    p.add_argument("--decide", action="store_true", help="decide the policy after scoring")
    args = p.parse_args(argv)
    try:
        # Inside `ray job submit` RAY_ADDRESS is set, so this joins the cluster.
        result = run_backfill(catalog_uri=args.catalog, lake_root=args.lake, policy_path=args.policy,
                              run_id=args.run_id, where=args.where, limit=args.limit,
                              profile_path=args.profile, progress=False)
        print(result.summary())
        if args.decide:
            print(run_decide(lake_root=args.lake, policy_path=args.policy).summary())
    except ModerationError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0 if result.status == "succeeded" else 1


if __name__ == "__main__":
    sys.exit(main())
