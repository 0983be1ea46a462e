"""Deterministic, group-aware, stratified hash splits.

Every group (a conversation: all records cut from it share ``group_id``) lands in exactly one split, so no turn of
a test conversation is trained on. Within each stratum (source x language) the groups are ordered by a seeded hash
of their id and the first ``round(n * test_fraction)`` go to test, the next ``round(n * val_fraction)`` to val, the
rest to train. Compared with thresholding each group's hash on its own, this gives every source its share of
val/test even when it has few conversations (a source of 58 conversations got no test group at all by plain
thresholding), and it is still a pure function of (seed, groups): no input order, no randomness.

The same plan without holding every group in one place (the Ray Data engine, ``distributed/data.py``): a group's
split depends only on where its key ``(hash, group id)`` falls against two thresholds of its stratum, the keys at
ranks ``n_test`` and ``n_test + n_val``. Those are found from a histogram of the hashes (counts per stratum and
bin, summed over any number of batches) and then the few keys of the bins that hold those ranks
(:func:`boundary_bins`, :func:`thresholds_from_keys`); :func:`split_by_thresholds` then places each group alone.
A test checks that both give the same plan.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence

import pyarrow as pa

from polyalign_ray.schema import stable_fraction


def split_stratum(source: str, language: str) -> str:
    """The stratum a group is split within."""
    return f"{source}|{language}"


def _rounded(x: float) -> int:
    return math.floor(x + 0.5)


def group_key(group: str, seed: int) -> tuple[float, str]:
    """The order of groups within a stratum: a seeded hash of the id, the id breaking ties."""
    return stable_fraction(group, seed), group


def split_sizes(groups: int, *, val_fraction: float, test_fraction: float) -> tuple[int, int]:
    """(test groups, val groups) of a stratum of ``groups`` groups."""
    return _rounded(groups * test_fraction), _rounded(groups * val_fraction)


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
        groups.sort(key=lambda g: group_key(g, seed))
        n_test, n_val = split_sizes(len(groups), val_fraction=val_fraction, test_fraction=test_fraction)
        for rank, group in enumerate(groups):
            plan[group] = "test" if rank < n_test else "val" if rank < n_test + n_val else "train"
    return plan


HASH_BINS = 4096
"""Bins of the hash histogram: a boundary bin holds about groups / 4096 keys of its stratum."""

Thresholds = tuple[tuple[float, str] | None, tuple[float, str] | None]
"""A stratum's (first key not in test, first key not in test or val); None: every group is below."""


def hash_bin(fraction: float) -> int:
    """The histogram bin of a hash in [0, 1)."""
    return min(int(fraction * HASH_BINS), HASH_BINS - 1)


def boundary_bins(
    histogram: Mapping[str, Mapping[int, int]], *, val_fraction: float, test_fraction: float
) -> dict[str, list[tuple[int, int, int]]]:
    """Per stratum, for each of the two threshold ranks (``n_test``, ``n_test + n_val``) that falls inside the
    stratum: (rank, the bin holding the key of that rank, the number of keys in earlier bins)."""
    out: dict[str, list[tuple[int, int, int]]] = {}
    for stratum, bins in histogram.items():
        total = sum(bins.values())
        n_test, n_val = split_sizes(total, val_fraction=val_fraction, test_fraction=test_fraction)
        found = []
        for rank in (n_test, n_test + n_val):
            if rank >= total:
                continue
            below = 0
            for b in sorted(bins):
                if below + bins[b] > rank:
                    found.append((rank, b, below))
                    break
                below += bins[b]
        out[stratum] = found
    return out


def thresholds_from_keys(
    histogram: Mapping[str, Mapping[int, int]],
    bin_keys: Mapping[str, Mapping[int, Sequence[tuple[float, str]]]],
    *,
    val_fraction: float,
    test_fraction: float,
) -> dict[str, Thresholds]:
    """Each stratum's thresholds, from its histogram and the keys of its boundary bins (every key of those bins)."""
    out: dict[str, Thresholds] = {}
    for stratum, bins in histogram.items():
        total = sum(bins.values())
        n_test, n_val = split_sizes(total, val_fraction=val_fraction, test_fraction=test_fraction)
        at_rank = {
            rank: sorted(bin_keys[stratum][b])[rank - below]
            for rank, b, below in boundary_bins(
                {stratum: bins}, val_fraction=val_fraction, test_fraction=test_fraction
            )[stratum]
        }
        out[stratum] = (at_rank.get(n_test), at_rank.get(n_test + n_val))
    return out


def split_by_thresholds(key: tuple[float, str], thresholds: Thresholds) -> str:
    """The split of a group with ``key`` in a stratum with ``thresholds`` (what plan_splits gives it)."""
    test_below, val_below = thresholds
    if test_below is None or key < test_below:
        return "test"
    if val_below is None or key < val_below:
        return "val"
    return "train"


GROUP_SCHEMA = pa.schema(
    [("group_id", pa.string()), ("stratum", pa.string()), ("fraction", pa.float64()), ("bin", pa.int64())]
)


def _group_strata(records: pa.Table) -> dict[str, str]:
    stratum_of: dict[str, str] = {}
    columns = [records[c].to_pylist() for c in ("group_id", "source", "language")]
    for group, source, language in zip(*columns, strict=True):
        stratum = split_stratum(str(source), str(language))
        if group not in stratum_of or stratum < stratum_of[group]:
            stratum_of[group] = stratum
    return stratum_of


def group_strata_table(records: pa.Table, seed: int) -> pa.Table:
    """One :data:`GROUP_SCHEMA` row per group of ``records`` (which must hold whole groups, e.g. a partition
    hashed by ``group_id``): its stratum (the smallest of its records', as :func:`plan_splits` decides), its hash
    and the histogram bin of the hash."""
    stratum_of = _group_strata(records)
    fractions = [group_key(g, seed)[0] for g in stratum_of]
    return pa.Table.from_pydict(
        {
            "group_id": list(stratum_of),
            "stratum": list(stratum_of.values()),
            "fraction": fractions,
            "bin": [hash_bin(f) for f in fractions],
        },
        schema=GROUP_SCHEMA,
    )


def assign_splits_table(records: pa.Table, thresholds: Mapping[str, Thresholds], seed: int) -> pa.Table:
    """``records`` (whole groups) with their ``split`` column set from the strata's thresholds."""
    stratum_of = _group_strata(records)
    split_of = {g: split_by_thresholds(group_key(g, seed), thresholds[s]) for g, s in stratum_of.items()}
    column = pa.array([split_of[g] for g in records["group_id"].to_pylist()], type=pa.string())
    return records.set_column(records.schema.get_field_index("split"), "split", column)
