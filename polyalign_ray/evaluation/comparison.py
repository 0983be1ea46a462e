"""Runs side by side with uncertainty: every metric of every group as a mean over seeds with a 95% interval, and the
method's claims as paired differences (``intervals`` has the bootstrap scheme).

Input: for each run name (``base``, ``sft_plain``, ``sft``, ``dpo``, ``hdpo``, ...), one prepared run per seed
(``scoring.prepare_run``), all on the same evaluation items. Output: a JSON-able dict that ``report`` renders.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from polyalign_ray.evaluation.intervals import Draws, draw, estimate, paired_difference
from polyalign_ray.evaluation.report import HEADLINE
from polyalign_ray.evaluation.scoring import SET_METRICS, PreparedRun, run_values, unit_counts

METRICS = (*HEADLINE, "naturalness", "mean_length_tokens", "distinct_1", "distinct_3")
"""Every metric a comparison estimates: the report's headline and the rest of a group's values."""
CLAIMS = (
    ("sft", "sft_plain", "Bucket-SFT − plain SFT"),
    ("hdpo", "dpo", "HDPO − DPO"),
    ("hdpo", "sft", "HDPO − Bucket-SFT"),
)
"""The paper's claims as (A, B, label): A answers more like the humans of each context than B, without losing
utility."""


def bucket_sizes(run: PreparedRun) -> dict[str, int]:
    return {bucket: int(prepared.positions.size) for bucket, prepared in run.buckets.items()}


def seed_values(runs: Sequence[PreparedRun], draws: Draws) -> tuple[list[dict], list[dict]]:
    """Per seed: the metrics on all items (points) and on the drawn items (replicates)."""
    points = [run_values(run, unit_counts(run)) for run in runs]
    replicates = [run_values(run, draws.items) for run in runs]
    return points, replicates


def _scalar(value: Any) -> Any:
    return float(value[0]) if isinstance(value, np.ndarray) else value


def compare_runs(
    prepared: Mapping[str, Sequence[PreparedRun]],
    *,
    samples: int = 1000,
    level: float = 0.95,
    seed: int = 0,
    claims: Sequence[tuple[str, str, str]] = CLAIMS,
) -> dict[str, Any]:
    """Estimates per run / group kind / key / metric and paired differences for the ``claims`` whose runs exist."""
    names = list(prepared)
    if not names:
        raise ValueError("nothing to compare")
    seeds = {name: len(runs) for name, runs in prepared.items()}
    if len(set(seeds.values())) != 1:
        raise ValueError(f"every run needs the same seeds to be compared, got {seeds}")
    first = prepared[names[0]][0]
    sizes = bucket_sizes(first)
    for name, runs in prepared.items():
        if any(bucket_sizes(run) != sizes for run in runs):
            raise ValueError(
                f"{name}: evaluated on other items than {names[0]}; use the same data and eval.*"
            )
    num_seeds = seeds[names[0]]
    draws = draw(sizes, samples, seed)
    values = {name: seed_values(runs, draws) for name, runs in prepared.items()}

    def series(name: str, kind: str, key: str, metric: str) -> tuple[list, list]:
        points, replicates = values[name]
        return (
            [_scalar(p[kind][key].get(metric)) for p in points],
            [r[kind][key].get(metric) for r in replicates],
        )

    estimates: dict[str, Any] = {}
    for name in names:
        points = values[name][0][0]
        estimates[name] = {
            kind: {
                key: {
                    "n": group["n"],
                    "buckets": group["buckets"],
                    **{
                        metric: _as_dict(
                            estimate(
                                *series(name, kind, key, metric),
                                draws,
                                resampled_items=metric not in SET_METRICS,
                                level=level,
                            )
                        )
                        for metric in METRICS
                    },
                }
                for key, group in keys.items()
            }
            for kind, keys in points.items()
        }
    differences: dict[str, Any] = {}
    for a, b, label in claims:
        if a not in prepared or b not in prepared:
            continue
        kinds = values[a][0][0]
        differences[label] = {
            "a": a,
            "b": b,
            "groups": {
                kind: {
                    key: {
                        metric: _as_dict(
                            paired_difference(
                                metric,
                                series(a, kind, key, metric),
                                series(b, kind, key, metric),
                                draws,
                                resampled_items=metric not in SET_METRICS,
                                level=level,
                            )
                        )
                        for metric in METRICS
                    }
                    for key in keys
                }
                for kind, keys in kinds.items()
            },
        }
    return {
        "runs": names,
        "seeds": num_seeds,
        "samples": samples,
        "level": level,
        "items": int(sum(sizes.values())),
        "buckets": len(sizes),
        "estimates": estimates,
        "differences": differences,
    }


def _as_dict(value: Any) -> dict[str, Any] | None:
    return None if value is None else value.as_dict()
