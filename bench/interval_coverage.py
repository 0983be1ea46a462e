"""How often do the report's 95% intervals cover the truth? Simulated per-item scores with a known mean, the
bootstrap of ``polyalign_ray/evaluation/intervals.py``, and the number of seeds the pipeline can afford.

Model of a metric (an item mean such as F1): item i of the shared evaluation set has difficulty u_i ~ N(mu, 0.2^2);
seed s shifts the run by delta_s ~ N(0, tau^2) (the training seed's effect); each answer adds noise N(0, 0.1^2).
The estimand is mu. Each configuration is repeated ``--repeats`` times; coverage is the share of repeats whose
interval contains mu, and the false-positive rate the share where two runs with the same mu are marked different.

    .venv/bin/python bench/interval_coverage.py --out bench/results/interval_coverage
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

from polyalign_ray.evaluation.intervals import draw, estimate, paired_difference

BUCKETS = {f"b{i}": 20 for i in range(10)}  # 200 items, 20 per bucket: the demo's evaluation set
ITEMS = sum(BUCKETS.values())


def replicates(scores: np.ndarray, counts: dict[str, np.ndarray]) -> np.ndarray:
    total, start = 0.0, 0
    for bucket, size in BUCKETS.items():
        total = total + counts[bucket] @ scores[start : start + size]
        start += size
    return total / ITEMS


def simulate(
    seeds: int, tau: float, repeats: int, samples: int, rng: np.random.Generator
) -> dict[str, float]:
    covered, marked = 0, 0
    for repeat in range(repeats):
        difficulty = rng.normal(0.4, 0.2, ITEMS)
        runs = []
        for _ in range(2):
            runs.append([difficulty + rng.normal(0, tau) + rng.normal(0, 0.1, ITEMS) for _ in range(seeds)])
        draws = draw(BUCKETS, samples, seed=repeat)
        series = [([float(s.mean()) for s in run], [replicates(s, draws.items) for s in run]) for run in runs]
        result = estimate(*series[0], draws, resampled_items=True)
        covered += result.low <= 0.4 <= result.high
        difference = paired_difference("f1", series[0], series[1], draws, resampled_items=True)
        marked += difference.verdict in ("better", "worse")
    return {"coverage": covered / repeats, "false_positive_rate": marked / repeats}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=400)
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--out", default="bench/results/interval_coverage")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    began = time.perf_counter()
    rows = []
    for tau in (0.0, 0.02, 0.05):
        for seeds in (1, 2, 3, 5, 10):
            result = simulate(seeds, tau, args.repeats, args.samples, rng)
            rows.append({"seed_sd": tau, "seeds": seeds, **result})
            print(rows[-1], flush=True)
    command = f"python bench/interval_coverage.py --repeats {args.repeats} --samples {args.samples}"
    payload = {
        "command": command,
        "cpus": os.cpu_count(),
        "load_1min": os.getloadavg()[0],
        "seconds": time.perf_counter() - began,
        "rows": rows,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(f"{args.out}.json").write_text(json.dumps(payload, indent=1), encoding="utf-8")
    lines = [
        "# Coverage of the report's 95% intervals (simulation)",
        "",
        f"`{command}`; {args.repeats} repeats per row, 200 items in 10 buckets; item difficulty sd 0.2, answer noise "
        "sd 0.1, seed effect sd as given. Nominal: coverage 0.95, false-positive rate 0.05.",
        "",
        "| seed effect sd | seeds | coverage | false positives (no true difference) |",
        "|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {r['seed_sd']} | {r['seeds']} | {r['coverage']:.3f} | {r['false_positive_rate']:.3f} |"
        for r in rows
    ]
    Path(f"{args.out}.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
