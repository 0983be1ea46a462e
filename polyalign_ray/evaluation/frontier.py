"""The utility/naturalness frontier (NUF) and the aggregate score of METHOD.md section 6."""

from __future__ import annotations

import math
from collections.abc import Sequence


def naturalness(bng: float, c_mauve: float) -> float:
    """A bucket's naturalness in [0, 1]: the mean of 1 / (1 + BNG) and C-MAUVE."""
    return 0.5 * (1 / (1 + bng)) + 0.5 * c_mauve


def hypervolume_2d(points: Sequence[tuple[float, float]]) -> float:
    """Area dominated by the points (utility, naturalness) against the origin (0, 0): the union of the rectangles
    [0, u] x [0, n]. More buckets that are both useful and natural give a larger area (at most 1 for values in
    [0, 1])."""
    area, best_height = 0.0, 0.0
    for u, n in sorted(((max(u, 0.0), max(n, 0.0)) for u, n in points), reverse=True):
        if n > best_height:
            area += u * (n - best_height)
            best_height = n
    return area


def aggregate_score(
    utility: float, bng: float, mauve_value: float, nuf_hypervolume: float, *, floor: float = 1e-6
) -> float:
    """Geometric mean of utility, 1 / (1 + BNG), MAUVE and the NUF hypervolume (each floored at ``floor`` so one
    zero does not hide the others' differences)."""
    parts = [utility, 1 / (1 + bng), mauve_value, nuf_hypervolume]
    return math.exp(sum(math.log(max(p, floor)) for p in parts) / len(parts))
