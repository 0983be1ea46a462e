"""Confidence intervals and paired differences of evaluation metrics, over training seeds and test items.

Why: one seed and 5-20 test items per bucket cannot tell an effect from noise. Every number a comparison reports
carries a 95% interval, and the claims of the method are paired differences whose interval either excludes 0 or
does not.

The scheme, a two-level percentile bootstrap with ``B`` replicates (docs/evaluation.md):

1. **Seeds**: draw S seeds with replacement from the S trained seeds (nothing to draw with one seed).
2. **Items**: inside every bucket draw its n_b test items with replacement, so each replicate keeps the evaluation
   set's bucket mix. The same item draw serves every seed and every run of the replicate.
3. A run's replicate value is the mean over the drawn seeds of its metric on the drawn items. Item metrics
   (EM, F1, ROUGE-L, length) are means over the drawn items; distribution metrics (BNG, HCR, C-MAUVE, TDM, MAUVE,
   NUF, the aggregate) are recomputed on the resampled model answers of each bucket against the fixed human side,
   with the MAUVE quantization held fixed (re-clustering would add k-means noise, not sampling noise). Set metrics
   (distinct-n, Self-BLEU) are not resampled over items (repeated answers would look less diverse): their interval
   is over seeds only, and there is none with one seed.
4. The point estimate is the mean over seeds of the metric on all items; the interval is the 2.5th and 97.5th
   percentiles of the replicates **centred on the point estimate** (shifted by the replicates' mean bias).
   Distance-type metrics (BNG, TDM, MAUVE) are biased on a resample: repeated answers make the model's sample
   lumpier, so every replicate lies farther from the humans than the real answers do, and uncentred percentiles
   could leave the reported value outside its own interval. Centring keeps the spread and drops that artifact;
   for item means it changes nothing (their replicates are centred already). A paired difference A − B takes both runs' values from the same replicate (same
   seeds drawn by index, same items), so what they share (the items' difficulty, the seed's data order) cancels.
   It is marked when its interval excludes 0, as better or worse in the metric's direction.

Known limits, measured in ``tests/unit/test_intervals.py``: with one seed the interval covers a known mean at about
the nominal rate; with three seeds the seed level is estimated from three values and the interval is narrower than
it should be when seeds differ much (see docs/evaluation.md for the simulated coverage).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

LOWER_IS_BETTER = frozenset({"bng", "self_bleu4"})
NO_DIRECTION = frozenset({"mean_length_tokens", "n", "buckets"})
"""Metrics with no better direction: shown with intervals, never marked better or worse."""


@dataclasses.dataclass(frozen=True)
class Draws:
    """The random part of every replicate: which seeds (B, S) and how often each item of each bucket (B, n_b)."""

    seeds: np.ndarray
    items: dict[str, np.ndarray]

    @property
    def samples(self) -> int:
        return int(self.seeds.shape[0])


def draw(bucket_sizes: Mapping[str, int], num_seeds: int, samples: int, seed: int = 0) -> Draws:
    """Seeded draws for ``samples`` replicates: seeds with replacement (all seed 0 when there is one), and per
    bucket a multinomial count of each of its items (a resample with replacement of its n_b items)."""
    if num_seeds < 1 or samples < 1:
        raise ValueError(f"need at least one seed and one sample, got {num_seeds} and {samples}")
    rng = np.random.default_rng(seed)
    seeds = (
        rng.integers(0, num_seeds, size=(samples, num_seeds))
        if num_seeds > 1
        else np.zeros((samples, 1), dtype=np.int64)
    )
    items = {
        bucket: rng.multinomial(size, np.full(size, 1.0 / size), size=samples).astype(np.float64)
        for bucket, size in sorted(bucket_sizes.items())
    }
    return Draws(seeds=seeds, items=items)


def percentile_interval(values: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    tail = (1 - level) / 2
    low, high = np.quantile(np.asarray(values, dtype=np.float64), [tail, 1 - tail])
    return float(low), float(high)


def centred_interval(replicates: np.ndarray, point: float, level: float = 0.95) -> tuple[float, float]:
    """Percentile interval of the replicates shifted so that their mean is the point estimate (module docstring)."""
    replicates = np.asarray(replicates, dtype=np.float64)
    return percentile_interval(replicates - replicates.mean() + point, level)


def replicate_means(per_seed: Sequence[np.ndarray | float], seed_draws: np.ndarray) -> np.ndarray:
    """Replicate b: the mean over its drawn seeds of that seed's replicate value b (a float is constant over b)."""
    samples = seed_draws.shape[0]
    stacked = np.stack([np.broadcast_to(np.asarray(v, dtype=np.float64), (samples,)) for v in per_seed])
    return stacked[seed_draws, np.arange(samples)[:, None]].mean(1)


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
    low, high = centred_interval(replicate_means(replicates, draws.seeds), mean, level)
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
    replicated = replicate_means(reps_a, draws.seeds) - replicate_means(reps_b, draws.seeds)
    low, high = centred_interval(replicated, mean, level)
    return Difference(mean, low, high, verdict_of(low, high, metric))
