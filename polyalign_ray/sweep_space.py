"""Sweeps without Ray: the search space written with dotted config keys, trial configs, and the sweep's outputs.

A sweep (``polyalign sweep``, ``distributed/tune_trials.py``) varies config keys such as ``hdpo.reg_lambda``,
``hdpo.beta``, ``sampler.alpha`` or one bucket's multiplier ``sampler.multipliers.zh|multi|dialogue|short``. Each
trial is the base config with its values applied (the same merge as command-line overrides), so a trial's config
is exactly what ``polyalign pipeline --config best.yaml`` runs again.

The outputs are a table of trials (CSV and Markdown), the best trial's config as a ready-to-run YAML, and a plot
of the objective against each swept key.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from polyalign_ray.config import (
    ConfigError,
    PolyAlignConfig,
    config_from_dict,
    config_to_dict,
    merge_override,
)
from polyalign_ray.sweep_domains import parse_domain


def space_value_problems(base: PolyAlignConfig, space: Mapping[str, Any]) -> list[str]:
    """Every listed value (grid, choice) and both bounds of a range, each set alone on ``base``, must give a valid
    config: a sweep refuses ``hdpo.lr: [0.001, 0.0]`` before any trial starts, not as a failed trial an hour in."""
    out = []
    for key, spec in space.items():
        domain = parse_domain(str(key), spec)
        values = domain.values if domain.values else (domain.low, domain.high)
        if domain.kind == "randint":
            values = (int(domain.low), int(domain.high) - 1)
        for value in values:
            try:
                config_with(base, {str(key): value})
            except ConfigError as exc:
                out.extend(f"sweep.space.{key} value {value!r}: {problem}" for problem in exc.problems)
    return out


def swept_sections(space: Mapping[str, Any]) -> set[str]:
    """Config sections the space touches: the pipeline stages that depend on them run in every trial."""
    return {str(key).split(".")[0] for key in space}


def config_with(
    base: PolyAlignConfig, params: Mapping[str, Any], **sections: Mapping[str, Any]
) -> PolyAlignConfig:
    """``base`` with each dotted key of ``params`` set (as a command-line override would), then whole
    ``sections`` keys replaced (e.g. ``hdpo={"output_dir": ...}``); validated."""
    data = config_to_dict(base)
    for key, value in params.items():
        data = merge_override(data, str(key).split("."), value)
    for section, values in sections.items():
        data[section] = {**data[section], **values}
    return config_from_dict(data)


def trial_label(params: Mapping[str, Any]) -> str:
    """A short, file-name-safe label of a trial's values, e.g. ``reg_lambda=0.1,beta=0.05``."""
    parts = []
    for key, value in params.items():
        shown = f"{value:.4g}" if isinstance(value, float) else str(value)
        parts.append(f"{str(key).split('.')[-1]}={shown}")
    return ",".join(parts).replace("/", "_").replace("|", "-")[:120]


def best_trial(rows: Sequence[Mapping[str, Any]], metric: str, mode: str) -> Mapping[str, Any] | None:
    """The finished trial with the best objective (None when no trial produced one)."""
    scored = [r for r in rows if isinstance(r.get(metric), (int, float)) and math.isfinite(r[metric])]
    if not scored:
        return None
    return (max if mode == "max" else min)(scored, key=lambda r: r[metric])


def write_trials_table(
    rows: Sequence[Mapping[str, Any]], keys: Sequence[str], metric: str, out_dir: Path
) -> tuple[Path, Path]:
    """``trials.csv`` (every column) and ``trials.md`` (trial, status, swept values, objective, seconds)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    columns = ["trial", "status", *keys, metric, "seconds", "error"]
    extra = sorted({c for r in rows for c in r} - set(columns))
    csv_path = out_dir / "trials.csv"
    with csv_path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=[*columns, *extra], extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({c: row.get(c, "") for c in [*columns, *extra]})

    def cell(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:.4g}"
        return "" if value is None else str(value).replace("|", "\\|")

    shown = ["trial", "status", *keys, metric, "seconds"]
    lines = [
        "| " + " | ".join(c.replace("|", "\\|") for c in shown) + " |",
        "|" + "---|" * len(shown),
    ]
    lines += ["| " + " | ".join(cell(r.get(c)) for c in shown) + " |" for r in rows]
    md_path = out_dir / "trials.md"
    md_path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return csv_path, md_path


def write_best_config(config: PolyAlignConfig, path: Path, header: str) -> Path:
    """The best trial's whole config as YAML, ready for ``polyalign pipeline --config``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    comment = "".join(f"# {line}\n" for line in header.splitlines())
    body = yaml.safe_dump(config_to_dict(config), sort_keys=False, allow_unicode=True)
    path.write_text(comment + body, encoding="utf-8")
    return path


def plot_objective(
    rows: Sequence[Mapping[str, Any]], keys: Sequence[str], metric: str, mode: str, path: Path
) -> Path | None:
    """One panel per swept key: the objective of each finished trial against the key's value (best marked)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    finished = [r for r in rows if isinstance(r.get(metric), (int, float))]
    if not finished or not keys:
        return None
    best = best_trial(finished, metric, mode)
    figure, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys), 3.4), squeeze=False)
    for axis, key in zip(axes[0], keys, strict=True):
        values = [r[key] for r in finished]
        numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
        labels = sorted({str(v) for v in values})
        xs = values if numeric else [labels.index(str(v)) for v in values]
        axis.scatter(xs, [r[metric] for r in finished], color="tab:blue", label="trial")
        if best is not None:
            bx = best[key] if numeric else labels.index(str(best[key]))
            axis.scatter([bx], [best[metric]], color="tab:red", marker="*", s=160, label="best")
        if not numeric:
            axis.set_xticks(range(len(labels)), labels, rotation=30, ha="right")
        axis.set_xlabel(key)
        axis.set_ylabel(f"{metric} ({mode})")
        axis.grid(alpha=0.3)
    axes[0][0].legend(loc="best", fontsize=8)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


POINT_METRICS = ("f1", "bng", "c_mauve", "naturalness", "aggregate")
"""Headline metrics a point of a seeded sweep reports (means over its seeds) beside the objective."""


def aggregate_points(
    rows: Sequence[Mapping[str, Any]], keys: Sequence[str], metric: str
) -> list[dict[str, Any]]:
    """Trials of a seeded sweep grouped by their swept values (a point): per point the seeds that finished, the
    mean and the spread (min, max) of the objective over them, and the means of the headline metrics."""
    groups: dict[tuple, list[Mapping[str, Any]]] = {}
    for row in rows:
        groups.setdefault(tuple(repr(row.get(k)) for k in keys), []).append(row)
    points = []
    for members in groups.values():
        done = [r for r in members if isinstance(r.get(metric), (int, float)) and math.isfinite(r[metric])]
        point: dict[str, Any] = {k: members[0].get(k) for k in keys}
        point["seeds_done"] = len(done)
        # without sweep.seeds a point's trials carry no seed (Optuna and random search may draw a point twice)
        point["seeds"] = sorted(r["seed"] for r in members if r.get("seed") is not None)
        point["trials"] = [r["trial"] for r in members]
        values = [r[metric] for r in done]
        point[metric] = sum(values) / len(values) if values else None
        point[f"{metric}_min"] = min(values) if values else None
        point[f"{metric}_max"] = max(values) if values else None
        for name in POINT_METRICS:
            present = [r[name] for r in done if isinstance(r.get(name), (int, float))]
            if name != metric:
                point[name] = sum(present) / len(present) if present else None
        points.append(point)
    return points


def best_point(
    points: Sequence[Mapping[str, Any]],
    metric: str,
    mode: str,
    *,
    min_f1: float | None = None,
    seeds: int = 1,
) -> Mapping[str, Any] | None:
    """The point with the best mean objective among those with every seed done and (when ``min_f1`` is given)
    a mean F1 of at least ``min_f1``; None when no point qualifies."""
    eligible = [
        p
        for p in points
        if p["seeds_done"] >= seeds
        and p.get(metric) is not None
        and (min_f1 is None or (p.get("f1") is not None and p["f1"] >= min_f1))
    ]
    if not eligible:
        return None
    return (max if mode == "max" else min)(eligible, key=lambda p: p[metric])


def write_points_table(
    points: Sequence[Mapping[str, Any]], keys: Sequence[str], metric: str, path: Path, min_f1: float | None
) -> Path:
    """``points.md``: one row per point with its mean objective over seeds, its range, and the headline means."""

    def cell(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:.4g}"
        return "" if value is None else str(value).replace("|", "\\|")

    others = [m for m in POINT_METRICS if m != metric]
    header = [*keys, "seeds", f"{metric} (mean)", "range", *others]
    lines = ["| " + " | ".join(h.replace("|", "\\|") for h in header) + " |", "|" + "---|" * len(header)]
    for p in points:
        spread = (
            f"{cell(p[f'{metric}_min'])} … {cell(p[f'{metric}_max'])}" if p.get(metric) is not None else ""
        )
        lines.append(
            "| "
            + " | ".join([*(cell(p.get(k)) for k in keys), str(p["seeds_done"]), cell(p.get(metric)), spread])
            + " | "
            + " | ".join(cell(p.get(m)) for m in others)
            + " |"
        )
    if min_f1 is not None:
        lines += [
            "",
            f"Eligible as best: mean F1 >= {min_f1:.4g} (sweep.min_utility_ratio x the baseline's F1).",
        ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
