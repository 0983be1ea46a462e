"""Reports a person reads: ``report.md`` (tables with intervals, the method's claims as paired differences) and PNG
plots with error bars, from :func:`~polyalign_ray.evaluation.comparison.compare_runs` (runs side by side on the
same evaluation set, one or several seeds each) and the answer lengths of the runs' ``report.json``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from polyalign_ray.evaluation.intervals import LOWER_IS_BETTER, NO_DIRECTION

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
GROUP_COLUMNS = HEADLINE[:9]
BUCKET_COLUMNS = ("f1", "bng", "hcr", "c_mauve", "tdm")
CLAIM_METRICS = ("f1", "rouge_l", "bng", "hcr", "c_mauve", "mauve", "tdm", "nuf_hypervolume", "aggregate")
CLAIM_BUCKET_METRICS = ("f1", "bng", "hcr", "c_mauve")
MARKS = {"better": "▲", "worse": "▼", "no clear difference": "·", "n/a": ""}


def fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def fmt_estimate(entry: Mapping[str, Any] | None, bold: bool = False) -> str:
    """``mean ± half-width`` (the mean in bold when it is the column's best), or — when undefined."""
    if not entry:
        return "—"
    mean = f"**{entry['mean']:.3f}**" if bold else f"{entry['mean']:.3f}"
    return mean if entry.get("half_width") is None else f"{mean} ± {entry['half_width']:.3f}"


def best_flags(entries: Sequence[Mapping[str, Any] | None], metric: str) -> list[bool]:
    """Which entries hold the best mean (lowest for BNG and Self-BLEU, highest otherwise); none with < 2 values."""
    means = [e["mean"] if e else None for e in entries]
    present = [m for m in means if m is not None]
    if len(present) < 2 or metric in NO_DIRECTION:
        return [False] * len(entries)
    best = min(present) if metric in LOWER_IS_BETTER else max(present)
    return [m == best for m in means]


def estimate_cells(entries: Sequence[Mapping[str, Any] | None], metric: str) -> list[str]:
    return [fmt_estimate(e, b) for e, b in zip(entries, best_flags(entries, metric), strict=True)]


def fmt_difference(entry: Mapping[str, Any] | None) -> str:
    """``+0.031 [+0.004, +0.058] ▲``: A − B, its interval and the verdict's mark."""
    if not entry:
        return "—"
    text = f"{entry['mean']:+.3f}"
    if entry.get("low") is not None:
        text += f" [{entry['low']:+.3f}, {entry['high']:+.3f}]"
    mark = MARKS.get(entry.get("verdict", "n/a"), "")
    return f"{text} {mark}".strip()


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" if i == 0 else "---:" for i in range(len(header))) + "|",
    ]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def verdict_counts(groups: Mapping[str, Mapping[str, Any]], metric: str) -> dict[str, int]:
    counts = {"better": 0, "worse": 0, "no clear difference": 0}
    for entry in groups.values():
        verdict = (entry.get(metric) or {}).get("verdict")
        if verdict in counts:
            counts[verdict] += 1
    return counts


def render_claims(comparison: Mapping[str, Any]) -> list[str]:
    """One section per claim: overall and per-language/track differences with intervals, and per-bucket counts."""
    parts: list[str] = []
    if not comparison["differences"]:
        return parts
    parts += [
        "",
        "## The method's claims: paired differences",
        "",
        "A − B on the same items and seeds, with its 95% interval; ▲ A is better (the interval excludes 0 in the "
        "metric's better direction: lower for BNG), ▼ A is worse, · no clear difference.",
    ]
    for label, claim in comparison["differences"].items():
        groups = claim["groups"]
        parts += ["", f"### {label}", ""]
        header = ["group", *CLAIM_METRICS]
        rows = [["overall", *(fmt_difference(groups["overall"]["all"].get(m)) for m in CLAIM_METRICS)]]
        for kind in ("by_language", "by_track"):
            for key, entry in sorted(groups.get(kind, {}).items()):
                rows.append([key, *(fmt_difference(entry.get(m)) for m in CLAIM_METRICS)])
        parts.append(table(header, rows))
        buckets = groups.get("by_bucket", {})
        summary = []
        for metric in CLAIM_BUCKET_METRICS:
            c = verdict_counts(buckets, metric)
            measured = sum(c.values())
            summary.append(
                f"{metric}: ▲ {c['better']}, ▼ {c['worse']}, · {c['no clear difference']} of {measured} buckets"
            )
        parts += ["", "Per bucket — " + "; ".join(summary) + "."]
    return parts


def render_other_profile(comparison: Mapping[str, Any]) -> list[str]:
    """With profile conditioning: each run's metrics under the other evaluation profile (with or without the
    oracle length bin), mean over seeds, next to the main table's profile."""
    other = {name: seeds for name, seeds in comparison.get("other_profile", {}).items() if seeds}
    if not other:
        return []
    profile = next(iter(other.values()))[0]["profile"]
    metrics = ("f1", "bng", "hcr", "c_mauve", "mauve", "aggregate")
    rows = []
    for name, seeds in other.items():
        values = [[s["overall"].get(m) for s in seeds] for m in metrics]
        means = [None if any(v is None for v in vs) else sum(vs) / len(vs) for vs in values]
        rows.append([name, *(fmt(m) for m in means)])
    return [
        "",
        f"## Profile conditioning: the other evaluation profile ({profile.replace('_', ' ')})",
        "",
        "The gold length bin is unknown at deployment, so both profiles are evaluated (METHOD.md section 3); the "
        f"tables above use the other one. Means over {comparison['seeds']} seed(s), no intervals.",
        "",
        table(["run", *metrics], rows),
    ]


def interval_scheme_text(seeds: int, samples: int) -> str:
    """How the intervals were made, in the report's words (evaluation/intervals.py has the scheme and its why)."""
    if seeds == 1:
        return (
            f"percentile bootstrap over test items (one seed: the spread of training seeds is not included), {samples} "
            "replicates, centred on the estimate; "
            "distinct-n and Self-BLEU have none"
        )
    return (
        f"t interval over the {seeds} seeds' values, with the test items' variance from {samples} bootstrap "
        "replicates added; distinct-n and Self-BLEU over seeds only"
    )


def render_comparison(comparison: Mapping[str, Any], plots: Sequence[str] = ()) -> str:
    """``report.md`` from ``comparison.compare_runs``: headline, claims, per language / track / bucket."""
    names = list(comparison["runs"])
    estimates = comparison["estimates"]
    seeds = comparison["seeds"]
    parts = ["# PolyAlign evaluation", ""]
    parts.append(
        f"{comparison['items']} test items in {comparison['buckets']} buckets, {seeds} seed(s) per run; distribution "
        "metrics against the train split's human answers. Each value is the mean over seeds ± the half-width of its "
        f"95% interval ({interval_scheme_text(seeds, comparison['samples'])}). Best mean per column in bold "
        "(lowest for BNG and Self-BLEU-4); — = not enough items."
    )
    parts += ["", "## Overall", ""]
    columns = {m: estimate_cells([estimates[n]["overall"]["all"].get(m) for n in names], m) for m in HEADLINE}
    rows = [[name, *(columns[m][i] for m in HEADLINE)] for i, name in enumerate(names)]
    parts.append(table(["run", *HEADLINE], rows))
    parts += render_claims(comparison)
    first = estimates[names[0]]
    for group, title in (("by_language", "Per language"), ("by_track", "Per track")):
        parts += ["", f"## {title}", ""]
        rows = []
        for key in sorted(first[group]):
            entries = {m: [estimates[n][group].get(key, {}).get(m) for n in names] for m in GROUP_COLUMNS}
            cells = {m: estimate_cells(entries[m], m) for m in GROUP_COLUMNS}
            for i, name in enumerate(names):
                rows.append([key, name, *(cells[m][i] for m in GROUP_COLUMNS)])
        parts.append(table([group[3:], "run", *GROUP_COLUMNS], rows))
    parts += ["", "## Per bucket", ""]
    rows = []
    for bucket in sorted(first["by_bucket"]):
        entries = {
            m: [estimates[n]["by_bucket"].get(bucket, {}).get(m) for n in names] for m in BUCKET_COLUMNS
        }
        cells = {m: estimate_cells(entries[m], m) for m in BUCKET_COLUMNS}
        for i, name in enumerate(names):
            n = estimates[name]["by_bucket"].get(bucket, {}).get("n", 0)
            rows.append([bucket, name, str(n), *(cells[m][i] for m in BUCKET_COLUMNS)])
    parts.append(table(["bucket", "run", "n", *BUCKET_COLUMNS], rows))
    for label, claim in comparison["differences"].items():
        parts += ["", f"### Per bucket: {label}", ""]
        rows = [
            [bucket, *(fmt_difference(entry.get(m)) for m in CLAIM_BUCKET_METRICS)]
            for bucket, entry in sorted(claim["groups"].get("by_bucket", {}).items())
        ]
        parts.append(table(["bucket", *CLAIM_BUCKET_METRICS], rows))
    parts += render_other_profile(comparison)
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


def error_bars(entries: Sequence[Mapping[str, Any] | None]) -> tuple[list[float], list[list[float]] | None]:
    """Means (0 where undefined) and matplotlib's asymmetric ``yerr`` (None when no entry has an interval)."""
    means = [e["mean"] if e else 0.0 for e in entries]
    if not any(e and e.get("low") is not None for e in entries):
        return means, None
    lows = [max(e["mean"] - e["low"], 0.0) if e and e.get("low") is not None else 0.0 for e in entries]
    highs = [max(e["high"] - e["mean"], 0.0) if e and e.get("high") is not None else 0.0 for e in entries]
    return means, [lows, highs]


def plot_comparison(
    comparison: Mapping[str, Any],
    lengths: Mapping[str, Mapping[str, Sequence[int]]],
    human_lengths: Mapping[str, Sequence[int]],
    out_dir: Path,
) -> list[str]:
    """PNG plots (paths relative to ``out_dir``'s parent): per-bucket answer lengths human vs each run (all seeds'
    answers), per-bucket BNG / HCR / C-MAUVE bars per run with their 95% intervals, the utility/naturalness
    frontier at the means, and the claims' overall differences with intervals."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from polyalign_ray.evaluation.frontier import naturalness

    out_dir.mkdir(parents=True, exist_ok=True)
    names = list(comparison["runs"])
    estimates = comparison["estimates"]
    buckets = sorted(estimates[names[0]]["by_bucket"])
    written = []

    fig, ax = plt.subplots(figsize=(max(8, 0.9 * len(buckets)), 5))
    series = [("human (test)", human_lengths)] + [(name, lengths.get(name, {})) for name in names]
    width = 0.8 / len(series)
    for k, (label, per_bucket) in enumerate(series):
        data = [[max(1, x) for x in per_bucket.get(b, [])] or [1] for b in buckets]
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
        for k, name in enumerate(names):
            means, yerr = error_bars([estimates[name]["by_bucket"].get(b, {}).get(metric) for b in buckets])
            xs = [i + (k - (len(names) - 1) / 2) * width for i in range(len(buckets))]
            axes[row].bar(xs, means, width=width, yerr=yerr, capsize=2, label=name, color=plt.cm.tab10(k + 1))
        axes[row].set_ylabel(
            metric.upper().replace("_", "-") + (" (lower better)" if metric == "bng" else "")
        )
    axes[0].legend(fontsize=8, ncol=len(names))
    axes[-1].set_xticks(range(len(buckets)), buckets, rotation=60, ha="right", fontsize=7)
    axes[0].set_title(
        f"Per-bucket naturalness per run (mean over {comparison['seeds']} seed(s), 95% intervals)"
    )
    fig.tight_layout()
    fig.savefig(out_dir / "bucket_metrics.png", dpi=110)
    plt.close(fig)
    written.append("plots/bucket_metrics.png")

    fig, ax = plt.subplots(figsize=(6.5, 5.5))
    for k, name in enumerate(names):
        points = [
            (s["f1"]["mean"], naturalness(s["bng"]["mean"], s["c_mauve"]["mean"]))
            for s in estimates[name]["by_bucket"].values()
            if s.get("f1") and s.get("bng") and s.get("c_mauve")
        ]
        if not points:
            continue
        color = plt.cm.tab10(k + 1)
        ax.scatter([p[0] for p in points], [p[1] for p in points], color=color, s=18, alpha=0.7)
        xs, ys = frontier_path(points)
        hv = estimates[name]["overall"]["all"].get("nuf_hypervolume")
        ax.plot(xs, ys, color=color, label=f"{name} (HV {fmt_estimate(hv)})")
    ax.set_xlabel("utility (token F1)")
    ax.set_ylabel("naturalness (mean of 1/(1+BNG) and C-MAUVE)")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_title("Utility / naturalness frontier (one point per bucket, means)")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out_dir / "nuf_frontier.png", dpi=110)
    plt.close(fig)
    written.append("plots/nuf_frontier.png")

    claims = comparison["differences"]
    if claims:
        metrics = ("f1", "bng", "hcr", "c_mauve", "mauve", "aggregate")
        fig, axes = plt.subplots(
            1, len(metrics), figsize=(3 * len(metrics), 0.6 * len(claims) + 2), sharey=True
        )
        labels = list(claims)
        for ax, metric in zip(axes, metrics, strict=True):
            entries = [claims[label]["groups"]["overall"]["all"].get(metric) for label in labels]
            for y, entry in enumerate(entries):
                if not entry:
                    continue
                color = {"better": "tab:green", "worse": "tab:red"}.get(entry["verdict"], "tab:gray")
                xerr = None
                if entry.get("low") is not None:
                    xerr = [[entry["mean"] - entry["low"]], [entry["high"] - entry["mean"]]]
                ax.errorbar([entry["mean"]], [y], xerr=xerr, fmt="o", color=color, capsize=3)
            ax.axvline(0.0, color="black", linewidth=0.8)
            ax.set_title(
                metric.upper().replace("_", "-") + (" (lower better)" if metric == "bng" else ""), fontsize=9
            )
        axes[0].set_yticks(range(len(labels)), labels, fontsize=8)
        axes[0].invert_yaxis()
        fig.suptitle("Claims: A − B overall with 95% intervals (green: A better, red: A worse)", fontsize=10)
        fig.tight_layout()
        fig.savefig(out_dir / "claims.png", dpi=110)
        plt.close(fig)
        written.append("plots/claims.png")
    return written
