"""Deterministic, group-aware, stratified hash splits.

Every group (a conversation: all records cut from it share ``group_id``) lands in exactly one split, so no turn of
a test conversation is trained on. Within each stratum (source x language) the groups are ordered by a seeded hash
of their id and the first ``round(n * test_fraction)`` go to test, the next ``round(n * val_fraction)`` to val, the
rest to train. Compared with thresholding each group's hash on its own, this gives every source its share of
val/test even when it has few conversations (a source of 58 conversations got no test group at all by plain
thresholding), and it is still a pure function of (seed, groups): no input order, no randomness.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable

from polyalign_ray.schema import stable_fraction


def split_stratum(source: str, language: str) -> str:
    """The stratum a group is split within."""
    return f"{source}|{language}"


def _rounded(x: float) -> int:
    return math.floor(x + 0.5)


def plan_splits(
    group_strata: Iterable[tuple[str, str]], *, seed: int, val_fraction: float, test_fraction: float
) -> dict[str, str]:
    """group id -> ``train`` / ``val`` / ``test`` from (group id, stratum) pairs (a group seen in several strata
    is placed by the smallest stratum name, so it still lands in exactly one split)."""
    stratum_of: dict[str, str] = {}
    for group, stratum in group_strata:
        if group not in stratum_of or stratum < stratum_of[group]:
            stratum_of[group] = stratum
    groups_by_stratum: dict[str, list[str]] = defaultdict(list)
    for group, stratum in stratum_of.items():
        groups_by_stratum[stratum].append(group)
    plan: dict[str, str] = {}
    for groups in groups_by_stratum.values():
        groups.sort(key=lambda g: (stable_fraction(g, seed), g))
        n_test = _rounded(len(groups) * test_fraction)
        n_val = _rounded(len(groups) * val_fraction)
        for rank, group in enumerate(groups):
            plan[group] = "test" if rank < n_test else "val" if rank < n_test + n_val else "train"
    return plan
