"""Entrypoint for `ray job submit`: one backfill or scheduled re-scan (and optionally the
decide and the enforcement export) on a cluster.

    ray job submit --address http://HEAD:8265 --working-dir . -- \
        python jobs/backfill.py --catalog s3://bucket/catalog --lake s3://bucket/lake \
        --policy conf/policies/catalog-safety/v1.yaml --profile conf/jobs/cluster.yaml --decide

    # nightly: only what changed, then decide and export the live version's actions
    ... python jobs/backfill.py --rescan --catalog … --lake … --policy … --decide --enforce
"""

from __future__ import annotations

import argparse
import sys

from moderation.backfill import run_backfill
from moderation.decide import run_decide
from moderation.enforcement import run_enforce
from moderation.errors import ModerationError
from moderation.rescan import run_rescan


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
    p.add_argument("--rescan", action="store_true", help="score only what changed since the last successful run")
    p.add_argument("--decide", action="store_true", help="decide the policy after scoring")
    p.add_argument("--enforce", action="store_true", help="after --decide, export the live version's actions")
    p.add_argument("--force", action="store_true",
                   help="run although the evaluation gate blocks the policy version (recorded in runs)")
    args = p.parse_args(argv)
    if args.rescan and (args.where or args.limit):
        p.error("--rescan covers the whole catalog: --where / --limit are for backfills")
    try:
        # Inside `ray job submit` RAY_ADDRESS is set, so this joins the cluster.
        if args.rescan:
            result = run_rescan(catalog_uri=args.catalog, lake_root=args.lake, policy_path=args.policy,
                                run_id=args.run_id, profile_path=args.profile, progress=False, force=args.force)
        else:
            result = run_backfill(catalog_uri=args.catalog, lake_root=args.lake, policy_path=args.policy,
                                  run_id=args.run_id, where=args.where, limit=args.limit,
                                  profile_path=args.profile, progress=False, force=args.force)
        print(result.summary())
        if result.status not in ("succeeded", "nothing_changed"):
            return 1
        if args.decide:
            print(run_decide(lake_root=args.lake, policy_path=args.policy).summary())
            if args.enforce:
                print(run_enforce(lake_root=args.lake, policy_path=args.policy).summary())
    except ModerationError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
