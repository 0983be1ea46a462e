"""Reports a person reads: ``report.md`` (tables) and PNG plots, from one or several runs' ``report.json``.

A run's report is the output of :func:`~polyalign_ray.evaluation.scoring.score_predictions` plus ``name``, ``model``
and the lengths of its answers per bucket. ``compare`` puts runs side by side on the same evaluation set.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

HEADLINE = (
    "f1",
    "rouge_l",
    "em",
    "bng",
    "hcr",
    "c_mauve",
    "mauve",
    "tdm",
    "nuf_hypervolume",
    "distinct_2",
    "self_bleu4",
    "aggregate",
)
BUCKET_COLUMNS = ("f1", "bng", "hcr", "c_mauve", "tdm")
LOWER_IS_BETTER = frozenset({"bng", "self_bleu4"})


def fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def best_marks(values: Sequence[Any], metric: str) -> list[str]:
    """The values formatted, the best one (lowest for BNG and Self-BLEU, highest otherwise) in bold."""
    present = [v for v in values if isinstance(v, (int, float)) and not math.isnan(v)]
    if len(present) < 2:
        return [fmt(v) for v in values]
    best = min(present) if metric in LOWER_IS_BETTER else max(present)
    return [f"**{fmt(v)}**" if v == best else fmt(v) for v in values]


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" if i == 0 else "---:" for i in range(len(header))) + "|",
    ]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def render_comparison(reports: Sequence[Mapping[str, Any]], plots: Sequence[str] = ()) -> str:
    """``report.md``: the headline table, per language and per track, then one row per bucket and run."""
    names = [r["name"] for r in reports]
    parts = ["# PolyAlign evaluation", ""]
    first = reports[0]
    parts.append(
        f"{first['overall']['n']} test items in {first['overall']['buckets']} buckets (split `{first.get('split', 'test')}`); "
        "distribution metrics against the train split's human answers. Best value per column in bold "
        "(lowest for BNG and Self-BLEU-4, highest otherwise); — = not enough items."
    )
    parts += ["", "## Overall", ""]
    rows = []
    columns = {m: best_marks([r["overall"].get(m) for r in reports], m) for m in HEADLINE}
    for i, name in enumerate(names):
        rows.append([name, *(columns[m][i] for m in HEADLINE)])
    parts.append(table(["run", *HEADLINE], rows))
    for group, title in (("by_language", "Per language"), ("by_track", "Per track")):
        parts += ["", f"## {title}", ""]
        rows = []
        for key in sorted(first[group]):
            columns = {
                m: best_marks([r[group].get(key, {}).get(m) for r in reports], m) for m in HEADLINE[:9]
            }
            for i, name in enumerate(names):
                rows.append([key, name, *(columns[m][i] for m in HEADLINE[:9])])
        parts.append(table([group[3:], "run", *HEADLINE[:9]], rows))
    parts += ["", "## Per bucket", ""]
    rows = []
    for bucket in sorted(first["by_bucket"]):
        columns = {
            m: best_marks([r["by_bucket"].get(bucket, {}).get(m) for r in reports], m) for m in BUCKET_COLUMNS
        }
        for i, name in enumerate(names):
            n = reports[i]["by_bucket"].get(bucket, {}).get("n", 0)
            rows.append([bucket, name, str(n), *(columns[m][i] for m in BUCKET_COLUMNS)])
    parts.append(table(["bucket", "run", "n", *BUCKET_COLUMNS], rows))
    if plots:
        parts += ["", "## Plots", ""]
        parts += [f"![{Path(p).stem}]({p})" for p in plots]
    return "\n".join(parts) + "\n"


def frontier_path(points: Sequence[tuple[float, float]]) -> tuple[list[float], list[float]]:
    """The staircase that bounds the area the points dominate (the NUF hypervolume), from (0, n_max) to (u_max, 0)."""
    frontier, height = [], 0.0
    for u, n in sorted(points, reverse=True):
        if n > height:
            frontier.append((u, n))
            height = n
    frontier.reverse()  # utility ascending, naturalness descending
    xs, ys = [0.0], [frontier[0][1]]
    for i, (u, n) in enumerate(frontier):
        xs += [u, u]
        ys += [n, frontier[i + 1][1] if i + 1 < len(frontier) else 0.0]
    return xs, ys


def plot_comparison(
    reports: Sequence[Mapping[str, Any]], human_lengths: Mapping[str, Sequence[int]], out_dir: Path
) -> list[str]:
    """PNG plots (paths relative to ``out_dir``): per-bucket answer lengths human vs each run, per-bucket BNG / HCR /
    C-MAUVE bars per run, and the utility/naturalness frontier."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from polyalign_ray.evaluation.frontier import naturalness

    out_dir.mkdir(parents=True, exist_ok=True)
    buckets = sorted(reports[0]["by_bucket"])
    names = [r["name"] for r in reports]
    written = []

    fig, ax = plt.subplots(figsize=(max(8, 0.9 * len(buckets)), 5))
    series = [("human (test)", human_lengths)] + [(r["name"], r.get("lengths", {})) for r in reports]
    width = 0.8 / len(series)
    for k, (label, lengths) in enumerate(series):
        data = [[max(1, x) for x in lengths.get(b, [])] or [1] for b in buckets]
        positions = [i + (k - (len(series) - 1) / 2) * width for i in range(len(buckets))]
        box = ax.boxplot(data, positions=positions, widths=width * 0.9, patch_artist=True, showfliers=False)
        color = plt.cm.tab10(k)
        for patch in box["boxes"]:
            patch.set_facecolor(color)
        ax.plot([], [], color=color, linewidth=8, label=label)
    ax.set_yscale("log")
    ax.set_xticks(range(len(buckets)), buckets, rotation=60, ha="right", fontsize=7)
    ax.set_ylabel("answer length (tokens, log)")
    ax.set_title("Answer lengths per bucket: human vs model")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out_dir / "lengths_per_bucket.png", dpi=110)
    plt.close(fig)
    written.append("plots/lengths_per_bucket.png")

    fig, axes = plt.subplots(3, 1, figsize=(max(8, 0.9 * len(buckets)), 10), sharex=True)
    width = 0.8 / len(names)
    for row, metric in enumerate(("bng", "hcr", "c_mauve")):
        for k, report in enumerate(reports):
            values = [report["by_bucket"].get(b, {}).get(metric) for b in buckets]
            xs = [i + (k - (len(names) - 1) / 2) * width for i in range(len(buckets))]
            axes[row].bar(
                xs,
                [v if v is not None else 0 for v in values],
                width=width,
                label=report["name"],
                color=plt.cm.tab10(k + 1),
            )
        axes[row].set_ylabel(
            metric.upper().replace("_", "-") + (" (lower better)" if metric == "bng" else "")
        )
    axes[0].legend(fontsize=8, ncol=len(names))
    axes[-1].set_xticks(range(len(buckets)), buckets, rotation=60, ha="right", fontsize=7)
    axes[0].set_title("Per-bucket naturalness per run")
    fig.tight_layout()
    fig.savefig(out_dir / "bucket_metrics.png", dpi=110)
    plt.close(fig)
    written.append("plots/bucket_metrics.png")

    fig, ax = plt.subplots(figsize=(6.5, 5.5))
    for k, report in enumerate(reports):
        points = [
            (s["f1"], naturalness(s["bng"], s["c_mauve"]))
            for s in report["by_bucket"].values()
            if s.get("bng") is not None and s.get("c_mauve") is not None
        ]
        if not points:
            continue
        color = plt.cm.tab10(k + 1)
        ax.scatter([p[0] for p in points], [p[1] for p in points], color=color, s=18, alpha=0.7)
        xs, ys = frontier_path(points)
        ax.plot(
            xs,
            ys,
            color=color,
            label=f"{report['name']} (HV {fmt(report['overall'].get('nuf_hypervolume'))})",
        )
    ax.set_xlabel("utility (token F1)")
    ax.set_ylabel("naturalness (mean of 1/(1+BNG) and C-MAUVE)")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_title("Utility / naturalness frontier (one point per bucket)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out_dir / "nuf_frontier.png", dpi=110)
    plt.close(fig)
    written.append("plots/nuf_frontier.png")
    return written
