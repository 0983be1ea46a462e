"""Bucket-Aware SFT sampling (METHOD.md section 3): shares p(b) ∝ m_b n_b^alpha, global loss weights, the
bucket-balanced sampler's statistics, exact resume, rank slicing, and per-bucket draws without replacement."""

from __future__ import annotations

import json
import math
from collections import Counter

import numpy as np
import pytest

from polyalign_ray.sampler import (
    BucketBalancedSampler,
    bucket_loss_weights,
    bucket_row_indices,
    bucket_shares,
)

TOL = 1e-12


def draw_shares(sampler: BucketBalancedSampler, steps: int) -> tuple[dict[str, float], int]:
    """Empirical bucket shares over ``steps`` global batches, and the number of draws."""
    counts: Counter[str] = Counter()
    for _ in range(steps):
        counts.update(bucket for bucket, _ in sampler.next_global_batch())
    total = sum(counts.values())
    return {b: counts[b] / total for b in sampler.buckets}, total


def five_sigma(p: float, n: int) -> float:
    return 5 * math.sqrt(p * (1 - p) / n)


# --------------------------------------------------------------------------------------------------- shares


def test_bucket_shares_golden_values() -> None:
    """sizes a = 1, b = 4, c = 9 (N = 14):
    alpha 0.5 -> 1 : 2 : 3           -> 1/6, 2/6, 3/6
    alpha 0   -> 1 : 1 : 1           -> 1/3 each
    alpha 1   -> 1 : 4 : 9           -> 1/14, 4/14, 9/14
    alpha 0.5 with m_c = 2 -> 1 : 2 : 6 -> 1/9, 2/9, 6/9"""
    sizes = {"a": 1, "b": 4, "c": 9}
    cases = [
        (0.5, None, [1 / 6, 2 / 6, 3 / 6]),
        (0.0, None, [1 / 3, 1 / 3, 1 / 3]),
        (1.0, None, [1 / 14, 4 / 14, 9 / 14]),
        (0.5, {"c": 2.0}, [1 / 9, 2 / 9, 6 / 9]),
    ]
    for alpha, multipliers, expected in cases:
        shares = bucket_shares(sizes, alpha, multipliers)
        assert list(shares) == ["a", "b", "c"]
        assert list(shares.values()) == pytest.approx(expected, abs=TOL), (alpha, multipliers)


def test_empty_buckets_get_no_share() -> None:
    """An empty bucket has no examples to draw: it is left out, and the rest share the mass (1:1 at alpha 0)."""
    shares = bucket_shares({"a": 5, "empty": 0, "c": 50}, 0.0)
    assert shares == pytest.approx({"a": 0.5, "c": 0.5}, abs=TOL)
    assert "empty" not in BucketBalancedSampler({"a": 5, "empty": 0, "c": 50}, batch_size=2).buckets


def test_unknown_multiplier_bucket_raises_value_error_naming_it() -> None:
    with pytest.raises(ValueError, match="zh\\|multi\\|qa\\|long"):
        bucket_shares({"en|single|qa|short": 3}, 0.0, {"zh|multi|qa|long": 2.0})
    with pytest.raises(ValueError, match="nope"):
        BucketBalancedSampler({"a": 3, "b": 4}, batch_size=2, multipliers={"a": 2.0, "nope": 1.0})
    with pytest.raises(ValueError, match="nope"):
        bucket_loss_weights({"a": 3}, 0.0, {"nope": 1.0})


def test_all_zero_multipliers_are_rejected() -> None:
    with pytest.raises(ValueError, match="zero sampling mass"):
        bucket_shares({"a": 3, "b": 4}, 0.0, {"a": 0.0, "b": 0.0})


def test_negative_multipliers_are_rejected() -> None:
    """m_b scales a share of optimization mass, so it must be >= 0: with sizes 10/10, alpha 0 and m_a = -0.5 a
    share would be p = {a: -1, b: 2} and a loss weight w_a = -2 (gradient ascent on that bucket)."""
    with pytest.raises(ValueError):
        bucket_shares({"a": 10, "b": 10}, 0.0, {"a": -0.5})
    with pytest.raises(ValueError):
        bucket_loss_weights({"a": 10, "b": 10}, 0.0, {"a": -0.5})


# --------------------------------------------------------------------------------------------------- loss weights


def test_loss_weights_golden_values_and_global_mean_one() -> None:
    """sizes 1, 4, 9 (N = 14), alpha 0.5 -> p = 1/6, 2/6, 3/6; w_b = p(b) / (n_b / N):
    w_a = (1/6)/(1/14) = 7/3;  w_b = (2/6)/(4/14) = 7/6;  w_c = (3/6)/(9/14) = 7/9.
    dataset mean: (1 * 7/3 + 4 * 7/6 + 9 * 7/9) / 14 = (7/3 + 14/3 + 7) / 14 = 14/14 = 1."""
    sizes = {"a": 1, "b": 4, "c": 9}
    w = bucket_loss_weights(sizes, 0.5)
    assert w == pytest.approx({"a": 7 / 3, "b": 7 / 6, "c": 7 / 9}, abs=TOL)
    assert sum(sizes[b] * w[b] for b in sizes) / 14 == pytest.approx(1.0, abs=TOL)


def test_loss_weights_at_alpha_one_are_all_one() -> None:
    """alpha = 1 is the natural distribution: p(b) = n_b / N, so every weight is exactly 1."""
    w = bucket_loss_weights({"a": 7, "b": 300, "c": 12}, 1.0)
    assert w == pytest.approx({"a": 1.0, "b": 1.0, "c": 1.0}, abs=TOL)


@pytest.mark.parametrize("seed", range(5))
def test_loss_weights_have_dataset_mean_one_and_reproduce_shares(seed: int) -> None:
    """For random sizes, alphas and multipliers: mean_i w_{b_i} = sum_b n_b w_b / N = 1, and each bucket's total
    weight n_b w_b / N equals its share p(b)."""
    rng = np.random.default_rng(seed)
    sizes = {f"b{i}": int(n) for i, n in enumerate(rng.integers(1, 10_000, size=6))}
    multipliers = {"b0": float(rng.uniform(0.1, 5)), "b3": float(rng.uniform(0.1, 5))}
    alpha = float(rng.uniform(0, 1))
    w = bucket_loss_weights(sizes, alpha, multipliers)
    p = bucket_shares(sizes, alpha, multipliers)
    total = sum(sizes.values())
    assert sum(sizes[b] * w[b] for b in sizes) / total == pytest.approx(1.0, abs=1e-12)
    for b in sizes:
        assert sizes[b] * w[b] / total == pytest.approx(p[b], abs=1e-12)
    # the per-example weights of the whole dataset, averaged: still 1
    per_example = np.concatenate([np.full(sizes[b], w[b]) for b in sizes])
    assert per_example.mean() == pytest.approx(1.0, abs=1e-9)


# --------------------------------------------------------------------------------------------------- empirical shares


def test_alpha_zero_gives_equal_mass_to_very_imbalanced_buckets() -> None:
    """sizes 10 / 1000 / 100000, alpha 0 -> p = 1/3 each. 2000 global batches of 32 = 64000 iid draws; the
    share of a bucket has std sqrt(p (1 - p) / n) = sqrt((1/3)(2/3)/64000) ≈ 0.00186, so 5 sigma ≈ 0.0093.
    (Natural frequencies would give 'a' about 1e-4, far outside the tolerance.)"""
    sampler = BucketBalancedSampler({"a": 10, "b": 1000, "c": 100_000}, batch_size=32, alpha=0.0, seed=0)
    shares, n = draw_shares(sampler, 2000)
    assert n == 64_000
    for b in ("a", "b", "c"):
        assert abs(shares[b] - 1 / 3) < five_sigma(1 / 3, n), (b, shares[b])


def test_alpha_one_follows_natural_frequencies() -> None:
    """sizes 100 / 300 / 600, alpha 1 -> p = 0.1, 0.3, 0.6; 64000 draws, 5 sigma = 5 sqrt(p(1-p)/64000):
    0.0059, 0.0091, 0.0097."""
    sampler = BucketBalancedSampler({"a": 100, "b": 300, "c": 600}, batch_size=16, alpha=1.0, seed=1)
    shares, n = draw_shares(sampler, 4000)
    assert n == 64_000
    for b, p in {"a": 0.1, "b": 0.3, "c": 0.6}.items():
        assert abs(shares[b] - p) < five_sigma(p, n), (b, shares[b])


def test_multipliers_scale_the_shares() -> None:
    """Equal sizes, alpha 0, m_a = 2 -> 2 : 1 : 1 -> p = 0.5, 0.25, 0.25; 64000 draws, 5 sigma ≤ 0.0099."""
    sampler = BucketBalancedSampler(
        {"a": 500, "b": 500, "c": 500}, batch_size=16, alpha=0.0, multipliers={"a": 2.0}, seed=2
    )
    assert sampler.shares == pytest.approx({"a": 0.5, "b": 0.25, "c": 0.25}, abs=TOL)
    shares, n = draw_shares(sampler, 4000)
    for b, p in {"a": 0.5, "b": 0.25, "c": 0.25}.items():
        assert abs(shares[b] - p) < five_sigma(p, n), (b, shares[b])


# --------------------------------------------------------------------------------------------------- without replacement


def test_each_bucket_cycles_through_all_its_examples_before_repeating() -> None:
    """Per bucket, the drawn indices, cut into consecutive chunks of n_b, are permutations of range(n_b) (the last
    chunk may be partial but still has no repeat); and passes are reshuffled (not the same order every pass)."""
    sizes = {"a": 5, "b": 7, "c": 11}
    sampler = BucketBalancedSampler(sizes, batch_size=4, alpha=0.0, seed=4)
    drawn: dict[str, list[int]] = {b: [] for b in sizes}
    for _ in range(150):
        for bucket, index in sampler.next_global_batch():
            drawn[bucket].append(index)
    for bucket, n in sizes.items():
        seq = drawn[bucket]
        assert len(seq) >= 10 * n, bucket  # at least 10 full passes, so the test means something
        chunks = [seq[i : i + n] for i in range(0, len(seq), n)]
        for chunk in chunks[:-1]:
            assert sorted(chunk) == list(range(n)), bucket
        assert len(set(chunks[-1])) == len(chunks[-1])
        assert len({tuple(c) for c in chunks[:-1]}) > 1, bucket  # reshuffled at each pass
        # consequence: per-index counts differ by at most 1
        counts = Counter(seq)
        assert max(counts.values()) - min(counts[i] for i in range(n)) <= 1


# --------------------------------------------------------------------------------------------------- determinism


def _run(sampler: BucketBalancedSampler) -> list[list[tuple[str, int]]]:
    return list(sampler)


SIZES = {"en|single|qa|short": 3, "en|multi|dialogue|medium": 7, "zh|single|assistant|long": 50}


def test_same_seed_same_stream_and_different_seed_different_stream() -> None:
    first = _run(BucketBalancedSampler(SIZES, batch_size=4, seed=7))
    again = _run(BucketBalancedSampler(SIZES, batch_size=4, seed=7))
    other = _run(BucketBalancedSampler(SIZES, batch_size=4, seed=8))
    assert first == again
    assert len(first) == len(other) == math.ceil(60 / 4)
    assert first != other
    # the seed drives the bucket choices themselves, not only the within-bucket orders
    assert [b for batch in first for b, _ in batch] != [b for batch in other for b, _ in batch]


def test_num_steps_default_and_override() -> None:
    """Default: one pass of the data, ceil(N / global batch) = ceil(60 / (4 * 2)) = 8; an explicit value wins."""
    s = BucketBalancedSampler(SIZES, batch_size=4, world_size=2, rank=1, seed=0)
    assert s.num_steps == len(s) == 8
    assert len(_run(s)) == 8
    assert s.step == 8
    assert _run(s) == []  # exhausted
    t = BucketBalancedSampler(SIZES, batch_size=4, seed=0, num_steps=3)
    batches = _run(t)
    assert len(batches) == 3 and all(len(b) == 4 for b in batches)


def test_invalid_arguments_are_rejected() -> None:
    with pytest.raises(ValueError, match="batch_size"):
        BucketBalancedSampler(SIZES, batch_size=0)
    with pytest.raises(ValueError, match="rank"):
        BucketBalancedSampler(SIZES, batch_size=2, world_size=2, rank=2)
    with pytest.raises(ValueError, match="rank"):
        BucketBalancedSampler(SIZES, batch_size=2, world_size=2, rank=-1)


# --------------------------------------------------------------------------------------------------- resume


@pytest.mark.parametrize("k", [0, 1, 5, 11])
def test_resume_from_a_json_state_yields_exactly_the_remaining_batches(k: int) -> None:
    """Take k batches, save the state through json.dumps/json.loads, continue; a fresh sampler that loads that
    state yields exactly the same remaining batches. With n_a = 3 and 4 draws per batch at alpha 0, bucket a
    wraps into its second pass within the first 5 batches, so the resume crosses a reshuffle."""
    original = BucketBalancedSampler(SIZES, batch_size=4, alpha=0.0, seed=11, num_steps=20)
    taken = [original.next_batch() for _ in range(k)]
    state = json.loads(json.dumps(original.state_dict()))
    assert state["step"] == k
    if k >= 5:
        assert state["passes"]["en|single|qa|short"] >= 1
    rest = _run(original)
    assert len(rest) == 20 - k

    resumed = BucketBalancedSampler(SIZES, batch_size=4, alpha=0.0, seed=11, num_steps=20)
    resumed.load_state_dict(state)
    assert resumed.step == k
    assert _run(resumed) == rest
    # control: without the state, a fresh sampler replays from the start instead
    fresh = _run(BucketBalancedSampler(SIZES, batch_size=4, alpha=0.0, seed=11, num_steps=20))
    assert fresh == taken + rest
    if k > 0:
        assert fresh[: len(rest)] != rest


def test_state_of_other_buckets_is_rejected() -> None:
    state = BucketBalancedSampler(SIZES, batch_size=4, seed=0).state_dict()
    other = BucketBalancedSampler({"x": 5, "y": 6}, batch_size=4, seed=0)
    with pytest.raises(ValueError, match="other buckets"):
        other.load_state_dict(state)


# --------------------------------------------------------------------------------------------------- ranks


@pytest.mark.parametrize("world_size", [2, 3])
def test_ranks_take_equal_disjoint_slices_of_the_single_process_global_batch(world_size: int) -> None:
    """Every rank yields num_steps batches of batch_size; rank r holds positions [r B, (r + 1) B) of the global
    batch, and the ranks' slices, concatenated in rank order, equal the batches of a world_size = 1 sampler with
    batch_size B * world_size on the same seed. N = 61 is not divisible by the global batch, yet no rank gets a
    short or missing batch."""
    sizes = {"a": 10, "b": 20, "c": 31}
    batch = 3
    ranks = [
        _run(BucketBalancedSampler(sizes, batch_size=batch, world_size=world_size, rank=r, seed=5))
        for r in range(world_size)
    ]
    single = _run(BucketBalancedSampler(sizes, batch_size=batch * world_size, seed=5))
    steps = math.ceil(61 / (batch * world_size))
    assert len(single) == steps
    for r in range(world_size):
        assert len(ranks[r]) == steps, r
        assert all(len(b) == batch for b in ranks[r])
    for step in range(steps):
        assert [pair for r in range(world_size) for pair in ranks[r][step]] == single[step]


def test_rank_slices_hold_different_examples_when_no_bucket_wraps() -> None:
    """Buckets larger than all the draws of the run never wrap, so no example appears twice across ranks and
    steps: the slices are disjoint sets of examples, not copies of one another."""
    sizes = {"a": 500, "b": 500}
    runs = [
        _run(BucketBalancedSampler(sizes, batch_size=4, world_size=2, rank=r, seed=6, num_steps=20))
        for r in range(2)
    ]
    pairs0 = [p for b in runs[0] for p in b]
    pairs1 = [p for b in runs[1] for p in b]
    assert len(pairs0) == len(pairs1) == 80
    assert len(set(pairs0) | set(pairs1)) == 160
    assert not set(pairs0) & set(pairs1)


def test_resume_on_a_rank_matches_the_uninterrupted_rank() -> None:
    kw = {"batch_size": 2, "world_size": 2, "rank": 1, "seed": 3, "num_steps": 12}
    original = BucketBalancedSampler(SIZES, **kw)
    for _ in range(4):
        original.next_batch()
    state = json.loads(json.dumps(original.state_dict()))
    resumed = BucketBalancedSampler(SIZES, **kw)
    resumed.load_state_dict(state)
    assert _run(resumed) == _run(original)


# --------------------------------------------------------------------------------------------------- row indices


def test_bucket_row_indices_golden() -> None:
    """["b", "a", "b", "c", "a"] -> a: rows 1, 4; b: rows 0, 2; c: row 3; keys sorted, indices ascending int64."""
    rows = bucket_row_indices(["b", "a", "b", "c", "a"])
    assert list(rows) == ["a", "b", "c"]
    assert {b: r.tolist() for b, r in rows.items()} == {"a": [1, 4], "b": [0, 2], "c": [3]}
    assert all(r.dtype == np.int64 for r in rows.values())
    assert bucket_row_indices([]) == {}


def test_sampler_draws_map_to_rows_of_their_bucket() -> None:
    """(bucket, index within bucket) pairs index into bucket_row_indices: every draw lands on a row of its
    bucket, and a pass over the small bucket covers all its rows."""
    column = ["x", "y", "x", "y", "y", "x", "z"]
    rows = bucket_row_indices(column)
    sizes = {b: len(r) for b, r in rows.items()}
    sampler = BucketBalancedSampler(sizes, batch_size=5, seed=0, num_steps=10)
    seen_z = set()
    for batch in sampler:
        for bucket, index in batch:
            row = int(rows[bucket][index])
            assert column[row] == bucket
            if bucket == "z":
                seen_z.add(row)
    assert seen_z == {6}
