"""Bucket-balanced sampling for Bucket-Aware SFT (METHOD.md section 3).

Bucket b receives the share p(b) proportional to m_b * n_b ** alpha of the optimization mass. The sampler draws
each *global* batch (all data-parallel ranks together) from one seeded random stream that every rank computes
identically, and each rank keeps its own slice. So ranks need no communication to agree, every rank takes exactly
the same number of batches (uneven shards hang ZeRO collectives), and the whole position fits in a small
JSON-able state that a checkpoint stores for an exact resume.

Within a bucket, examples are drawn without replacement from a per-bucket permutation that is reshuffled at each
pass, so a small bucket cycles through all its examples before repeating one.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np


def bucket_shares(
    bucket_sizes: Mapping[str, int], alpha: float, multipliers: Mapping[str, float] | None = None
) -> dict[str, float]:
    """p(b) = m_b * n_b ** alpha / sum over buckets, for buckets with at least one example (m_b defaults to 1)."""
    multipliers = multipliers or {}
    unknown = sorted(set(multipliers) - set(bucket_sizes))
    if unknown:
        raise ValueError(
            f"sampler.multipliers names buckets with no training data: {unknown}; known: {sorted(bucket_sizes)}"
        )
    negative = {b: m for b, m in multipliers.items() if m < 0}
    if negative:
        raise ValueError(
            f"sampler.multipliers must be >= 0 (a negative share is gradient ascent): {negative}"
        )
    mass = {b: multipliers.get(b, 1.0) * float(n) ** alpha for b, n in sorted(bucket_sizes.items()) if n > 0}
    total = sum(mass.values())
    if total <= 0:
        raise ValueError(
            "every bucket has zero sampling mass: check sampler.multipliers and the training data"
        )
    return {b: m / total for b, m in mass.items()}


def bucket_loss_weights(
    bucket_sizes: Mapping[str, int], alpha: float, multipliers: Mapping[str, float] | None = None
) -> dict[str, float]:
    """Per-example loss weight of each bucket, w_b = p(b) / (n_b / N), for training in natural order.

    Normalized by a global constant: the dataset mean of the weights, sum_b n_b w_b / N = sum_b p(b), is exactly 1,
    so no per-micro-batch normalization (which cancels the weights at batch size 1) is needed or allowed.
    """
    shares = bucket_shares(bucket_sizes, alpha, multipliers)
    total = sum(bucket_sizes.values())
    return {b: p / (bucket_sizes[b] / total) for b, p in shares.items()}


def bucket_row_indices(bucket_column: Sequence[str]) -> dict[str, np.ndarray]:
    """bucket -> row indices (ascending) into a table whose bucket ids are ``bucket_column``."""
    rows: dict[str, list[int]] = {}
    for i, bucket in enumerate(bucket_column):
        rows.setdefault(str(bucket), []).append(i)
    return {b: np.asarray(r, dtype=np.int64) for b, r in sorted(rows.items())}


def _bucket_seed(seed: int, bucket: str, epoch: int) -> list[int]:
    digest = hashlib.blake2b(bucket.encode("utf-8"), digest_size=8).digest()
    return [seed, int.from_bytes(digest, "big") % 2**63, epoch]


class BucketBalancedSampler:
    """Yields, per step, this rank's list of ``(bucket, index within bucket)`` pairs.

    ``batch_size`` is per rank; a global batch is ``batch_size * world_size`` draws. ``num_steps`` defaults to
    one pass of the data's size: ceil(N / global batch).
    """

    def __init__(
        self,
        bucket_sizes: Mapping[str, int],
        *,
        batch_size: int,
        alpha: float = 0.0,
        multipliers: Mapping[str, float] | None = None,
        seed: int = 0,
        world_size: int = 1,
        rank: int = 0,
        num_steps: int | None = None,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size={world_size}), got {rank}")
        self.shares = bucket_shares(bucket_sizes, alpha, multipliers)
        self.buckets = list(self.shares)
        self.sizes = {b: int(bucket_sizes[b]) for b in self.buckets}
        self.probabilities = np.asarray([self.shares[b] for b in self.buckets])
        self.batch_size = batch_size
        self.world_size = world_size
        self.rank = rank
        self.seed = seed
        global_batch = batch_size * world_size
        self.num_steps = (
            num_steps if num_steps is not None else math.ceil(sum(self.sizes.values()) / global_batch)
        )
        self._rng = np.random.default_rng(seed)
        self._step = 0
        self._passes = dict.fromkeys(self.buckets, 0)
        self._cursors = dict.fromkeys(self.buckets, 0)
        self._orders = {b: self._permutation(b, 0) for b in self.buckets}

    def _permutation(self, bucket: str, epoch: int) -> np.ndarray:
        return np.random.default_rng(_bucket_seed(self.seed, bucket, epoch)).permutation(self.sizes[bucket])

    def _next_index(self, bucket: str) -> int:
        if self._cursors[bucket] == self.sizes[bucket]:
            self._passes[bucket] += 1
            self._cursors[bucket] = 0
            self._orders[bucket] = self._permutation(bucket, self._passes[bucket])
        index = int(self._orders[bucket][self._cursors[bucket]])
        self._cursors[bucket] += 1
        return index

    @property
    def step(self) -> int:
        """Number of batches taken so far (the same on every rank)."""
        return self._step

    def __len__(self) -> int:
        return self.num_steps

    def next_global_batch(self) -> list[tuple[str, int]]:
        """All ranks' draws for the next step, in rank order; advances the sampler."""
        choices = self._rng.choice(
            len(self.buckets), size=self.batch_size * self.world_size, p=self.probabilities
        )
        self._step += 1
        return [(self.buckets[c], self._next_index(self.buckets[c])) for c in choices]

    def next_batch(self) -> list[tuple[str, int]]:
        """This rank's slice of the next global batch."""
        draws = self.next_global_batch()
        return draws[self.rank * self.batch_size : (self.rank + 1) * self.batch_size]

    def __iter__(self) -> Iterator[list[tuple[str, int]]]:
        while self._step < self.num_steps:
            yield self.next_batch()

    def state_dict(self) -> dict[str, Any]:
        """JSON-able position: the random stream, and each bucket's pass and cursor."""
        return {
            "step": self._step,
            "rng": self._rng.bit_generator.state,
            "passes": dict(self._passes),
            "cursors": dict(self._cursors),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue exactly where ``state`` was taken (same buckets, seed and sizes required)."""
        if set(state["passes"]) != set(self.buckets):
            raise ValueError("sampler state was saved for other buckets; resume with the same training data")
        self._step = int(state["step"])
        self._rng.bit_generator.state = state["rng"]
        self._passes = {b: int(state["passes"][b]) for b in self.buckets}
        self._cursors = {b: int(state["cursors"][b]) for b in self.buckets}
        self._orders = {b: self._permutation(b, self._passes[b]) for b in self.buckets}
