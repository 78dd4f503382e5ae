"""``moderation demo``: demo catalog -> backfill -> decide (every demo policy version) -> report."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pyarrow.compute as pc

from moderation.config import load_policy
from moderation.evaluation.sources import default_data_dir
from moderation.storage.lake import Lake

#: Shares of demo items with cover art and with audio: every cover goes through three image
#: models (open_nsfw, OCR + text heads, PDQ) and every clip through speech detection and
#: Whisper, which on a 2-core laptop dominate the demo's run time.
DEMO_COVER_SHARE = 0.12
DEMO_AUDIO_SHARE = 0.03


def _catalog_needs_build(uri: str, items: int) -> bool:
    from deltalake import DeltaTable

    from moderation.storage.lake import storage_options

    if not DeltaTable.is_deltatable(uri, storage_options=storage_options(uri)):
        return True
    dt = DeltaTable(uri, storage_options=storage_options(uri))
    return dt.to_pyarrow_dataset().count_rows() != items


def flagged_share(lake: Lake, catalog_uri: str, policy_id: str, version: int,
                  categories: list[str]) -> list[tuple[str, str, int, int]]:
    """(source label, category, planted items, items flagged as violations) for the demo."""
    from deltalake import DeltaTable

    cat = DeltaTable(catalog_uri).to_pyarrow_table(columns=["item_id", "source_label"])
    v = lake.read(
        "violations",
        filter=(pc.field("policy_id") == policy_id) & (pc.field("policy_version") == version)
        & (pc.field("decision") == "violation"),
        columns=["item_id", "category"],
    )
    flagged = {(i, c) for i, c in zip(v.column("item_id").to_pylist(), v.column("category").to_pylist(), strict=True)}
    out: dict[tuple[str, str], list[int]] = {}
    for item, label in zip(cat.column("item_id").to_pylist(), cat.column("source_label").to_pylist(), strict=True):
        label = label or "(no planted text)"
        for category in categories:
            cell = out.setdefault((label, category), [0, 0])
            cell[0] += 1
            cell[1] += (item, category) in flagged
    return [(k[0], k[1], n, f) for k, (n, f) in sorted(out.items())]


def run_demo(*, lake_root: str, items: int, data_dir: Path | None, policies: list[Path],
             echo: Callable[[str], None]) -> None:
    from moderation.demo.catalog import write_demo_catalog
    from moderation.policy.decide import run_decide
    from moderation.reporting.report import run_report
    from moderation.scoring.backfill import run_backfill

    lake = Lake(lake_root)
    catalog_uri = lake.uri("catalog")
    data_dir = data_dir or default_data_dir()
    if not data_dir.is_dir():
        echo(f"note: {data_dir} not found: the demo catalog uses generated text only (benign and spam-like)")
        data_dir = None
    # Generated media (covers with rendered text, altered copies of banked images) live in the lake.
    media_dir = Path(lake_root) / "demo-media" if "://" not in lake_root else None
    if _catalog_needs_build(catalog_uri, items):
        demo = write_demo_catalog(catalog_uri, items=items, data_dir=data_dir, media_dir=media_dir,
                                  cover_share=DEMO_COVER_SHARE, audio_share=DEMO_AUDIO_SHARE)
        src = "labelled text and media from " + str(data_dir) if demo.used_shared_data else "generated text"
        echo(f"demo catalog: {demo.items} items at {catalog_uri} ({src})")
        echo("  planted texts by source label: " + ", ".join(f"{k}={v}" for k, v in sorted(demo.planted.items())))
        if demo.bank_images:
            from moderation.storage.bank import add_to_bank

            banked = add_to_bank(lake, list(demo.bank_images), category="known_violating", label="demo-bank",
                                 source="demo: CC0 photos standing in for known violating images")
            echo(f"  hash bank: {len(banked.added)} image(s) added, {len(banked.already_present)} already present")
    else:
        echo(f"demo catalog: reusing {catalog_uri}")

    from deltalake import DeltaTable

    version = DeltaTable(catalog_uri).version()
    loaded = [load_policy(p).policy for p in policies]
    first = loaded[0]
    # One backfill per distinct set of models, largest first: the multimodal version's backfill
    # scores what v1-v3 decide; the multilingual version's text model needs one of its own.
    scored: set[str] = set()
    for path, pol in sorted(zip(policies, loaded, strict=True), key=lambda pp: -len(pp[1].models)):
        if set(pol.models) <= scored:
            continue
        run_id = f"demo-backfill-v{version}" if not scored else f"demo-backfill-v{version}-policy-v{pol.version}"
        result = run_backfill(catalog_uri=catalog_uri, lake_root=lake_root, policy_path=path, run_id=run_id)
        echo(result.summary())
        scored |= set(pol.models)
    for path in policies:
        echo(run_decide(lake_root=lake_root, policy_path=path).summary())
    report = run_report(lake_root)
    echo(report.summary())

    shares: dict[tuple[str, int], dict[tuple[str, int], float]] = {}
    for pol in loaded:
        for label, category, n, f in flagged_share(lake, catalog_uri, first.policy_id, pol.version,
                                                   list(pol.categories)):
            shares.setdefault((label, n), {})[(category, pol.version)] = 100.0 * f / n
    categories = list(dict.fromkeys(c for pol in loaded for c in pol.categories))
    cols = [(c, pol.version) for c in categories for pol in loaded if c in pol.categories]
    echo("\n% of items flagged as violations, by the label of what was planted in them (held-out text only):")
    echo(f"  {'source label':18} {'items':>5} " + " ".join(f"{c[:6] + ' v' + str(v):>10}" for c, v in cols))
    for (label, n), cells in sorted(shares.items(), key=lambda kv: -kv[0][1]):
        if n >= 20 or label == "banked_copy":
            echo(f"  {label:18} {n:5d} " + " ".join(f"{cells[k]:9.1f}%" for k in cols))
    echo(
        f"\nlake: {lake_root}\n  tables: catalog, scores, quarantine, violations, runs, reports/\n"
        f"  policy {first.policy_id}: versions {', '.join(str(load_policy(p).policy.version) for p in policies)}"
    )
