"""One PNG chart per analyst report table (issue 17), written next to the tables in
``<lake>/reports/<name>.png``.

Pure rendering: a report's Arrow table in, PNG bytes out. Figures are
``matplotlib.figure.Figure`` objects rendered by the Agg canvas (pyplot's global state is never
touched), and matplotlib is imported inside the functions, so importing this module stays cheap.
An empty table still gives a chart that says so.
"""

from __future__ import annotations

import io
from collections import defaultdict
from typing import TYPE_CHECKING

import pyarrow as pa

from moderation.storage.lake import Lake, arrow_filesystem

if TYPE_CHECKING:
    from matplotlib.figure import Figure

DPI = 100
#: Without it matplotlib writes its version and home page into every PNG.
_PNG_METADATA = {"Software": None}
#: Bars shown per chart panel (the tables hold them all).
MAX_BARS = 15


def _figure(width: float = 8.0, height: float = 4.5) -> Figure:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, metadata=_PNG_METADATA)
    return buf.getvalue()


def _empty(title: str) -> bytes:
    fig = _figure(6.0, 2.5)
    ax = fig.add_subplot()
    ax.set_axis_off()
    ax.set_title(title)
    ax.text(0.5, 0.5, "no rows in this report", ha="center", va="center", transform=ax.transAxes)
    return _png(fig)


def _barh(ax, labels: list[str], values: list[float], *, title: str, xlabel: str) -> None:
    ys = range(len(labels))
    ax.barh(list(ys), values, color="#1f77b4")
    ax.set_yticks(list(ys), labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(xlabel)


def trend_chart(table: pa.Table) -> bytes:
    """``violation_trend``: violation rate per policy x category over the decide dates."""
    title = "Violation rate by decide date, policy version and category"
    if table.num_rows == 0:
        return _empty(title)
    lines: dict[tuple[str, str], list[tuple]] = defaultdict(list)
    for r in table.to_pylist():
        lines[(r["policy_id"], r["category"])].append((r["decide_date"], r["policy_version"], r["violation_rate"]))
    fig = _figure()
    ax = fig.add_subplot()
    for (policy, category), points in sorted(lines.items()):
        points.sort(key=lambda p: (p[0] is None, p[0], p[1]))
        ax.plot([p[0] for p in points], [100.0 * (p[2] or 0.0) for p in points], marker="o",
                label=f"{policy} / {category}")
        for date, version, rate in points:
            ax.annotate(f"v{version}", (date, 100.0 * (rate or 0.0)), fontsize=7, textcoords="offset points",
                        xytext=(3, 3))
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("decide date (UTC)")
    ax.set_ylabel("violations / items (%)")
    ax.legend(fontsize=7, loc="best")
    fig.autofmt_xdate()
    return _png(fig)


def rollups_chart(table: pa.Table) -> bytes:
    """``rollups``: per level, the entities with the most flagged items (``unknown`` left out)."""
    title = "Flagged items by creator, show and album"
    rows = [r for r in table.to_pylist() if r["entity_id"] != "unknown" and r["flagged_items"]]
    if not rows:
        return _empty(title)
    levels = [lv for lv in ("creator", "show", "album") if any(r["level"] == lv for r in rows)]
    fig = _figure(8.0, 3.0 * len(levels) + 0.5)
    fig.suptitle(title, fontsize=11)
    for i, level in enumerate(levels, start=1):
        top = sorted((r for r in rows if r["level"] == level),
                     key=lambda r: (-r["flagged_items"], r["policy_id"], r["policy_version"],
                                    r["entity_id"]))[:MAX_BARS]
        _barh(fig.add_subplot(len(levels), 1, i),
              [f"{r['policy_id']} v{r['policy_version']} · {r['entity_id']}" for r in top],
              [r["flagged_items"] for r in top], title=level, xlabel="flagged items")
    return _png(fig)


def blast_radius_chart(table: pa.Table) -> bytes:
    """``blast_radius``: the ranked creators of each policy version."""
    title = "Blast radius: creators with the most flagged items"
    if table.num_rows == 0:
        return _empty(title)
    versions = sorted({(r["policy_id"], r["policy_version"]) for r in table.to_pylist()})[:6]
    fig = _figure(8.0, 3.0 * len(versions) + 0.5)
    fig.suptitle(title, fontsize=11)
    for i, (policy, version) in enumerate(versions, start=1):
        top = sorted((r for r in table.to_pylist() if (r["policy_id"], r["policy_version"]) == (policy, version)),
                     key=lambda r: r["rank"])[:MAX_BARS]
        _barh(fig.add_subplot(len(versions), 1, i),
              [f"#{r['rank']} {r['creator_id']} ({r['worst_severity']})" for r in top],
              [r["flagged_items"] for r in top], title=f"{policy} v{version}", xlabel="flagged items")
    return _png(fig)


def _stacked(ax, labels: list[str], series: dict[str, list[float]], *, title: str, xlabel: str) -> None:
    ys = list(range(len(labels)))
    left = [0.0] * len(labels)
    for name, values in series.items():
        ax.barh(ys, values, left=left, label=name)
        left = [a + b for a, b in zip(left, values, strict=True)]  # one value per label
    ax.set_yticks(ys, labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(xlabel)
    ax.legend(fontsize=8)


def detection_chart(table: pa.Table) -> bytes:
    """``detection``: flagged items per modality / model, automated vs human-reviewed."""
    title = "How violations were found: modality / model, automated vs human review"
    if table.num_rows == 0:
        return _empty(title)
    totals: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for r in table.to_pylist():
        totals[f"{r['modality']} / {r['model_id']}"][r["review"]] += r["violations"]
    labels = sorted(totals, key=lambda k: (-sum(totals[k].values()), k))[:MAX_BARS]
    reviews = sorted({k for v in totals.values() for k in v})
    fig = _figure()
    _stacked(fig.add_subplot(), labels, {rv: [totals[lb][rv] for lb in labels] for rv in reviews}, title=title,
             xlabel="flagged items (summed over policy versions and categories)")
    return _png(fig)


def transparency_chart(table: pa.Table) -> bytes:
    """``transparency``: published items per action, by detection method (suppressed cells left out)."""
    rows = table.to_pylist()
    k = rows[0]["min_cell_count"] if rows else None
    title = "Transparency summary: items per action and detection method" + (
        f" (cells below {k} suppressed)" if k is not None else "")
    published = [r for r in rows if not r["suppressed"]]
    if not published:
        return _empty(title)
    totals: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for r in published:
        totals[r["action"]][r["detection_method"]] += r["items"]
    labels = sorted(totals, key=lambda k: (-sum(totals[k].values()), k))
    methods = sorted({m for v in totals.values() for m in v})
    fig = _figure()
    _stacked(fig.add_subplot(), labels, {m: [totals[lb][m] for lb in labels] for m in methods}, title=title,
             xlabel="items (published cells, summed over markets, categories and policy versions)")
    return _png(fig)


#: Report table name -> its chart.
CHARTS = {
    "violation_trend": trend_chart,
    "rollups": rollups_chart,
    "blast_radius": blast_radius_chart,
    "detection": detection_chart,
    "transparency": transparency_chart,
}


def write_chart(lake: Lake, name: str, table: pa.Table) -> str:
    """Render report ``name``'s chart and (over)write it to ``<lake>/reports/<name>.png``, local
    or ``s3://`` (pyarrow's file system, credentials from the AWS chain). Returns its URI."""
    data = CHARTS[name](table)
    uri = lake.uri(f"reports/{name}.png")
    fs, path = arrow_filesystem(uri)
    if fs is None:
        import os

        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        tmp = f"{path}.tmp"
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)  # a reader never sees half a PNG
    else:
        with fs.open_output_stream(path) as f:  # an S3 object appears whole when the stream closes
            f.write(data)
    return uri
