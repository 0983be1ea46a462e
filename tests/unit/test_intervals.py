"""The bootstrap of ``evaluation/intervals.py``: hand-worked pieces, then its coverage on synthetic per-item scores
whose true mean is known (repeated draws of whole synthetic evaluations)."""

from __future__ import annotations

import numpy as np
import pytest

from polyalign_ray.evaluation.intervals import (
    Draws,
    draw,
    estimate,
    paired_difference,
    percentile_interval,
    replicate_means,
    verdict_of,
)

BUCKETS = {"a": 25, "b": 25, "c": 25, "d": 25}


def test_draws_keep_each_bucket_size_and_are_seeded() -> None:
    draws = draw({"a": 3, "b": 5}, num_seeds=4, samples=200, seed=7)
    assert draws.items["a"].shape == (200, 3) and draws.items["b"].shape == (200, 5)
    assert (draws.items["a"].sum(1) == 3).all() and (draws.items["b"].sum(1) == 5).all()
    assert draws.seeds.shape == (200, 4) and set(np.unique(draws.seeds)) == {0, 1, 2, 3}
    again = draw({"a": 3, "b": 5}, num_seeds=4, samples=200, seed=7)
    assert np.array_equal(again.items["b"], draws.items["b"]) and np.array_equal(again.seeds, draws.seeds)
    assert (draw({"a": 3}, 1, 10).seeds == 0).all()


def test_replicate_means_and_percentiles_by_hand() -> None:
    # two seeds, three replicates; replicate 0 draws seeds (0, 0), 1 draws (0, 1), 2 draws (1, 1)
    seeds = np.array([[0, 0], [0, 1], [1, 1]])
    per_seed = [np.array([1.0, 2.0, 3.0]), np.array([10.0, 20.0, 30.0])]
    assert replicate_means(per_seed, seeds).tolist() == [1.0, 11.0, 30.0]
    assert replicate_means([5.0, 7.0], seeds).tolist() == [5.0, 6.0, 7.0]  # a set metric: constant per seed
    assert percentile_interval(np.arange(101.0), 0.9) == pytest.approx((5.0, 95.0))


def test_verdicts_follow_the_metric_direction() -> None:
    assert verdict_of(0.1, 0.3, "f1") == "better"
    assert verdict_of(-0.3, -0.1, "f1") == "worse"
    assert verdict_of(-0.3, -0.1, "bng") == "better"  # lower BNG is better
    assert verdict_of(-0.1, 0.2, "c_mauve") == "no clear difference"
    assert verdict_of(0.1, 0.2, "mean_length_tokens") == "n/a"
    assert verdict_of(None, None, "f1") == "n/a"


def test_one_seed_set_metric_has_no_interval_and_missing_values_give_none() -> None:
    draws = draw({"a": 4}, 1, 50)
    no_interval = estimate([0.3], [0.3], draws, resampled_items=False)
    assert (no_interval.mean, no_interval.low, no_interval.scheme) == (0.3, None, "none")
    over_seeds = estimate([0.2, 0.4], [0.2, 0.4], draw({"a": 4}, 2, 400), resampled_items=False)
    assert over_seeds.scheme == "seeds"
    assert (over_seeds.low, over_seeds.high) == pytest.approx((0.2, 0.4), abs=0.01)
    assert estimate([0.3, None], [np.zeros(50), None], draws, resampled_items=True) is None


def item_replicates(scores: np.ndarray, draws: Draws) -> np.ndarray:
    """A metric's bootstrap replicates: the mean score of the drawn items (items ordered bucket by bucket)."""
    start, total = 0, 0.0
    for bucket, size in BUCKETS.items():
        total = total + draws.items[bucket] @ scores[start : start + size]
        start += size
    return total / sum(BUCKETS.values())


def test_a_95_interval_covers_the_true_mean_about_95_percent_of_the_time() -> None:
    """400 synthetic evaluations of 100 items (4 buckets of 25) with scores N(0.4, 0.2^2): the interval of the
    item mean covers 0.4 in 92-98% of them (the binomial band of 400 draws around 0.95 is +-2.2%)."""
    rng = np.random.default_rng(0)
    covered = 0
    for repeat in range(400):
        scores = rng.normal(0.4, 0.2, size=100)
        draws = draw(BUCKETS, 1, 1000, seed=repeat)
        result = estimate(
            [float(scores.mean())], [item_replicates(scores, draws)], draws, resampled_items=True
        )
        covered += result.low <= 0.4 <= result.high
    assert 0.92 <= covered / 400 <= 0.98


def test_a_pair_without_a_true_difference_is_marked_at_about_the_nominal_rate() -> None:
    """Two runs whose per-item scores share the item's difficulty (the same test items) and differ by noise
    only: the paired interval excludes 0 in about 5% of 400 repeats (1.5-9%)."""
    rng = np.random.default_rng(1)
    marked = 0
    for repeat in range(400):
        difficulty = rng.normal(0.5, 0.25, size=100)
        a, b = difficulty + rng.normal(0, 0.1, 100), difficulty + rng.normal(0, 0.1, 100)
        draws = draw(BUCKETS, 1, 1000, seed=repeat)
        result = paired_difference(
            "f1",
            ([float(a.mean())], [item_replicates(a, draws)]),
            ([float(b.mean())], [item_replicates(b, draws)]),
            draws,
            resampled_items=True,
        )
        marked += result.verdict in ("better", "worse")
    assert 0.015 <= marked / 400 <= 0.09


def test_a_true_difference_is_found_and_pairing_makes_it_visible() -> None:
    """A beats B by 0.05 per item; items vary much more (sd 0.25) than the runs' noise (sd 0.05). Paired, the
    difference is marked better nearly always; unpaired intervals of the two runs overlap."""
    rng = np.random.default_rng(2)
    difficulty = rng.normal(0.5, 0.25, size=100)
    a = difficulty + 0.05 + rng.normal(0, 0.05, 100)
    b = difficulty + rng.normal(0, 0.05, 100)
    draws = draw(BUCKETS, 1, 1000, seed=0)
    reps_a, reps_b = item_replicates(a, draws), item_replicates(b, draws)
    difference = paired_difference(
        "f1", ([float(a.mean())], [reps_a]), ([float(b.mean())], [reps_b]), draws, resampled_items=True
    )
    assert difference.verdict == "better" and difference.low > 0
    low_a, _ = percentile_interval(reps_a)
    _, high_b = percentile_interval(reps_b)
    assert low_a < high_b  # the separate intervals would not have shown it


def test_with_ten_seeds_the_two_level_interval_covers_about_95_percent() -> None:
    """Scores = item difficulty (shared by every seed) + a seed effect (sd 0.05) + noise: the interval over seeds
    and items covers the true mean in 88-98% of 300 repeats."""
    rng = np.random.default_rng(3)
    covered = 0
    for repeat in range(300):
        difficulty = rng.normal(0.4, 0.2, size=100)
        per_seed = [difficulty + rng.normal(0, 0.05) + rng.normal(0, 0.1, 100) for _ in range(10)]
        draws = draw(BUCKETS, 10, 1000, seed=repeat)
        result = estimate(
            [float(s.mean()) for s in per_seed],
            [item_replicates(s, draws) for s in per_seed],
            draws,
            resampled_items=True,
        )
        covered += result.low <= 0.4 <= result.high
    assert 0.88 <= covered / 300 <= 0.98
