"""``moderation demo``: demo catalog -> backfill -> decide (two policy versions) -> report."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pyarrow.compute as pc

from moderation.config import load_policy
from moderation.datasets import default_data_dir
from moderation.lake import Lake


def _catalog_needs_build(uri: str, items: int) -> bool:
    from deltalake import DeltaTable

    from moderation.lake import storage_options

    if not DeltaTable.is_deltatable(uri, storage_options=storage_options(uri)):
        return True
    dt = DeltaTable(uri, storage_options=storage_options(uri))
    return dt.to_pyarrow_dataset().count_rows() != items


def flagged_share(lake: Lake, catalog_uri: str, policy_id: str, version: int) -> list[tuple[str, str, int, int]]:
    """(source label, category, planted items, items flagged as violations) for the demo."""
    from deltalake import DeltaTable

    cat = DeltaTable(catalog_uri).to_pyarrow_table(columns=["item_id", "source_label", "expected_categories"])
    v = lake.read(
        "violations",
        filter=(pc.field("policy_id") == policy_id) & (pc.field("policy_version") == version)
        & (pc.field("decision") == "violation"),
        columns=["item_id", "category"],
    )
    flagged = {(i, c) for i, c in zip(v.column("item_id").to_pylist(), v.column("category").to_pylist())}
    out: dict[tuple[str, str], list[int]] = {}
    for item, label, expected in zip(*(cat.column(c).to_pylist() for c in cat.column_names)):
        if label is None:
            label = "(no planted text)"
        for category in ("hate", "harassment", "spam"):
            key = (label, category)
            cell = out.setdefault(key, [0, 0])
            cell[0] += 1
            cell[1] += (item, category) in flagged
    return [(k[0], k[1], n, f) for k, (n, f) in sorted(out.items())]


def run_demo(*, lake_root: str, items: int, data_dir: Path | None, policies: list[Path],
             echo: Callable[[str], None]) -> None:
    from moderation.backfill import run_backfill
    from moderation.decide import run_decide
    from moderation.demo import write_demo_catalog
    from moderation.reporting import run_report

    lake = Lake(lake_root)
    catalog_uri = lake.uri("catalog")
    data_dir = data_dir or default_data_dir()
    if not data_dir.is_dir():
        echo(f"note: {data_dir} not found: the demo catalog uses generated text only (benign and spam-like)")
        data_dir = None
    if _catalog_needs_build(catalog_uri, items):
        demo = write_demo_catalog(catalog_uri, items=items, data_dir=data_dir)
        src = "labelled text and media from " + str(data_dir) if demo.used_shared_data else "generated text"
        echo(f"demo catalog: {demo.items} items at {catalog_uri} ({src})")
        echo("  planted texts by source label: " + ", ".join(f"{k}={v}" for k, v in sorted(demo.planted.items())))
    else:
        echo(f"demo catalog: reusing {catalog_uri}")

    from deltalake import DeltaTable

    version = DeltaTable(catalog_uri).version()
    first = load_policy(policies[0]).policy
    result = run_backfill(
        catalog_uri=catalog_uri, lake_root=lake_root, policy_path=policies[0], run_id=f"demo-backfill-v{version}"
    )
    echo(result.summary())
    for path in policies:
        echo(run_decide(lake_root=lake_root, policy_path=path).summary())
    report = run_report(lake_root)
    echo(report.summary())

    versions = [load_policy(p).policy.version for p in policies]
    shares: dict[tuple[str, int], dict[tuple[str, int], float]] = {}
    for path, version in zip(policies, versions):
        for label, category, n, f in flagged_share(lake, catalog_uri, first.policy_id, version):
            shares.setdefault((label, n), {})[(category, version)] = 100.0 * f / n
    cols = [(c, v) for c in ("hate", "harassment", "spam") for v in versions]
    echo("\n% of items flagged as violations, by the label of the text planted in them (held-out text only):")
    echo(f"  {'source label':18} {'items':>5} " + " ".join(f"{c[:6] + ' v' + str(v):>10}" for c, v in cols))
    for (label, n), cells in sorted(shares.items(), key=lambda kv: -kv[0][1]):
        if n >= 20:
            echo(f"  {label:18} {n:5d} " + " ".join(f"{cells[k]:9.1f}%" for k in cols))
    echo(
        f"\nlake: {lake_root}\n  tables: catalog, scores, quarantine, violations, runs, reports/\n"
        f"  policy {first.policy_id}: versions {', '.join(str(load_policy(p).policy.version) for p in policies)}"
    )
