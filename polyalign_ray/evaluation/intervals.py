"""Confidence intervals and paired differences of evaluation metrics, over training seeds and test items.

Why: one seed and 5-20 test items per bucket cannot tell an effect from noise. Every number a comparison reports
carries a 95% interval, and the claims of the method are paired differences whose interval either excludes 0 or
does not.

The scheme (docs/evaluation.md), for a run trained and evaluated with S seeds on the same test items:

1. **Items**: ``B`` bootstrap replicates, each drawing inside every bucket its n_b test items with replacement (the
   evaluation set's bucket mix is kept). The same item draw serves every seed and every run. Item metrics (EM, F1,
   ROUGE-L, length) are means over the drawn items; distribution metrics (BNG, HCR, C-MAUVE, TDM, MAUVE, NUF, the
   aggregate) are recomputed on the resampled model answers of each bucket against the fixed human side, the
   MAUVE quantization held fixed (re-clustering would add k-means noise, not sampling noise). Set metrics
   (distinct-n, Self-BLEU) are not resampled (repeated answers would look less diverse).
2. **One seed**: the interval is the 2.5-97.5 percentiles of the replicates **centred on the point estimate**.
   Distance-type metrics (BNG, TDM, MAUVE) are biased on a resample (repeated answers make the sample lumpier, so
   every replicate lies farther from the humans), and uncentred percentiles could miss the reported value. It
   covers the test items only: a training seed's own variation is not in it (the report says so).
3. **Several seeds**: the point is the mean over seeds; its variance is the seeds' variance / S (from the S
   per-seed values, S - 1 degrees of freedom) plus the item variance of the mean over seeds (the replicates of
   step 1 averaged over the seeds); the interval is point ± t(df) x its square root, df by Welch-Satterthwaite.
   A percentile bootstrap that also resampled the seeds was tried first and measured (bench/interval_coverage.py):
   with 3 seeds and a seed effect of sd 0.05 it marked 23% of pairs without a true difference; with 3 seeds the
   seed level rests on 3 values and only a t interval is honest about that (it is wide: t(2) = 4.30).
4. A paired difference A − B uses the same items for both runs and the per-seed differences A_s − B_s (seeds paired
   by number), so what the runs share (the items' difficulty) cancels. It is marked when its interval excludes 0,
   as better or worse in the metric's direction.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

LOWER_IS_BETTER = frozenset({"bng", "self_bleu4"})
NO_DIRECTION = frozenset({"mean_length_tokens", "n", "buckets"})
"""Metrics with no better direction: shown with intervals, never marked better or worse."""


@dataclasses.dataclass(frozen=True)
class Draws:
    """The random part of every replicate: how often each item of each bucket is drawn, (B, n_b) per bucket."""

    items: dict[str, np.ndarray]

    @property
    def samples(self) -> int:
        return int(next(iter(self.items.values())).shape[0]) if self.items else 0


def draw(bucket_sizes: Mapping[str, int], samples: int, seed: int = 0) -> Draws:
    """Seeded draws for ``samples`` replicates: per bucket a multinomial count of each of its items (a resample
    with replacement of its n_b items, so every replicate keeps the bucket mix)."""
    if samples < 1:
        raise ValueError(f"need at least one sample, got {samples}")
    rng = np.random.default_rng(seed)
    items = {
        bucket: rng.multinomial(size, np.full(size, 1.0 / size), size=samples).astype(np.float64)
        for bucket, size in sorted(bucket_sizes.items())
    }
    return Draws(items=items)


def student_t_quantile(probability: float, df: float) -> float:
    """The ``probability`` quantile of Student's t with ``df`` degrees of freedom (df >= 1; the normal quantile
    for very large df): the t density integrated by Simpson's rule, the quantile found by bisection."""
    if df > 1e6:
        return statistics.NormalDist().inv_cdf(probability)
    if not 0.5 <= probability < 1:
        raise ValueError(f"probability must be in [0.5, 1), got {probability}")
    norm = math.exp(math.lgamma((df + 1) / 2) - math.lgamma(df / 2)) / math.sqrt(df * math.pi)

    def cdf(x: float, steps: int = 4000) -> float:
        xs = np.linspace(0.0, x, steps + 1)
        ys = norm * (1 + xs**2 / df) ** (-(df + 1) / 2)
        weights = np.ones(steps + 1)
        weights[1:-1:2], weights[2:-1:2] = 4, 2
        return 0.5 + float(np.sum(weights * ys) * (x / steps) / 3)

    low, high = 0.0, 1.0
    while cdf(high) < probability:
        high *= 2
    for _ in range(60):
        middle = (low + high) / 2
        low, high = (middle, high) if cdf(middle) < probability else (low, middle)
    return (low + high) / 2


def combined_interval(
    point: float, per_seed: Sequence[float], item_replicates: np.ndarray | None, level: float = 0.95
) -> tuple[float, float]:
    """The interval of a mean over seeds (module docstring, step 4): with one seed the percentiles of the item
    replicates centred on the point; with S seeds point ± t(df) x sqrt(seed variance / S + item variance), df by
    Welch-Satterthwaite (S - 1 when the seeds dominate)."""
    if len(per_seed) == 1:
        if item_replicates is None:
            raise ValueError("one seed and no item replicates: no interval")
        return centred_interval(item_replicates, point, level)
    seed_var = float(np.var(np.asarray(per_seed, dtype=np.float64), ddof=1)) / len(per_seed)
    item_var = float(np.var(item_replicates)) if item_replicates is not None else 0.0
    total = seed_var + item_var
    if total <= 0:
        return point, point
    df = math.inf if seed_var <= 0 else total**2 * (len(per_seed) - 1) / seed_var**2
    half = student_t_quantile(0.5 + level / 2, min(df, 1e7)) * math.sqrt(total)
    return point - half, point + half


def percentile_interval(values: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    tail = (1 - level) / 2
    low, high = np.quantile(np.asarray(values, dtype=np.float64), [tail, 1 - tail])
    return float(low), float(high)


def centred_interval(replicates: np.ndarray, point: float, level: float = 0.95) -> tuple[float, float]:
    """Percentile interval of the replicates shifted so that their mean is the point estimate (module docstring)."""
    replicates = np.asarray(replicates, dtype=np.float64)
    return percentile_interval(replicates - replicates.mean() + point, level)


def seed_average(per_seed: Sequence[np.ndarray | float], samples: int) -> np.ndarray:
    """Replicate b: the mean over the seeds of each seed's replicate b (a float is constant over b): the item
    resampling of the mean over seeds, seeds held fixed."""
    return np.mean(
        np.stack([np.broadcast_to(np.asarray(v, dtype=np.float64), (samples,)) for v in per_seed]), axis=0
    )


@dataclasses.dataclass(frozen=True)
class Estimate:
    """A metric's mean over seeds and its interval (None where the scheme gives none)."""

    mean: float
    low: float | None
    high: float | None
    seeds: int
    scheme: str
    """``items`` (one seed), ``seeds+items``, ``seeds`` (set metrics) or ``none``."""

    @property
    def half_width(self) -> float | None:
        return None if self.low is None or self.high is None else (self.high - self.low) / 2

    def as_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "half_width": self.half_width}


def scheme_of(num_seeds: int, resampled_items: bool) -> str:
    if resampled_items:
        return "items" if num_seeds == 1 else "seeds+items"
    return "seeds" if num_seeds > 1 else "none"


def estimate(
    points: Sequence[float | None],
    replicates: Sequence[np.ndarray | float | None],
    draws: Draws,
    *,
    resampled_items: bool,
    level: float = 0.95,
) -> Estimate | None:
    """Mean over seeds and interval of one metric; None when it is undefined in some seed."""
    if any(p is None for p in points) or any(r is None for r in replicates):
        return None
    mean = float(np.mean(points))
    scheme = scheme_of(len(points), resampled_items)
    if scheme == "none":
        return Estimate(mean, None, None, len(points), scheme)
    items = seed_average(replicates, draws.samples) if resampled_items else None
    low, high = combined_interval(mean, [float(p) for p in points], items, level)
    return Estimate(mean, low, high, len(points), scheme)


@dataclasses.dataclass(frozen=True)
class Difference:
    """A − B for one metric, its interval and what it says in the metric's better direction."""

    mean: float
    low: float | None
    high: float | None
    verdict: str
    """``better`` / ``worse`` (A vs B, interval excludes 0 in the metric's direction), ``no clear difference``,
    or ``n/a`` (no interval, or a metric without a direction)."""

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def verdict_of(low: float | None, high: float | None, metric: str) -> str:
    if low is None or high is None or metric in NO_DIRECTION:
        return "n/a"
    if low <= 0 <= high:
        return "no clear difference"
    higher = low > 0
    return "better" if higher != (metric in LOWER_IS_BETTER) else "worse"


def paired_difference(
    metric: str,
    a: tuple[Sequence[float | None], Sequence[np.ndarray | float | None]],
    b: tuple[Sequence[float | None], Sequence[np.ndarray | float | None]],
    draws: Draws,
    *,
    resampled_items: bool,
    level: float = 0.95,
) -> Difference | None:
    """A − B from (points, replicates) per seed of each run, the same draws for both (runs of equal seed count)."""
    (points_a, reps_a), (points_b, reps_b) = a, b
    values = [*points_a, *points_b, *reps_a, *reps_b]
    if any(v is None for v in values):
        return None
    if len(points_a) != len(points_b):
        raise ValueError(f"paired runs need the same seeds, got {len(points_a)} and {len(points_b)}")
    mean = float(np.mean(points_a) - np.mean(points_b))
    if scheme_of(len(points_a), resampled_items) == "none":
        return Difference(mean, None, None, "n/a")
    items = None
    if resampled_items:
        items = seed_average(reps_a, draws.samples) - seed_average(reps_b, draws.samples)
    per_seed = [float(x) - float(y) for x, y in zip(points_a, points_b, strict=True)]
    low, high = combined_interval(mean, per_seed, items, level)
    return Difference(mean, low, high, verdict_of(low, high, metric))
