"""Per-bucket human reference distributions and the distance to human support (METHOD.md section 2).

A reference is, for one node of the bucket tree, the count of train records and per-feature quantiles. Nodes are
the concrete buckets and their parents (``lang|track|family|*``, ``lang|track|*|*``, ``lang|*|*|*``). A bucket
with fewer than ``min_count`` train records *resolves* to the first parent that has enough, and the level used is
recorded. References are built from the train split only: validation and test answers never shape them.
"""

from __future__ import annotations

import dataclasses
import json
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from polyalign_ray.features import FEATURE_NAMES
from polyalign_ray.schema import parent_buckets

REFERENCES_VERSION = 1


@dataclasses.dataclass(frozen=True)
class Resolution:
    """Which node a bucket's distances use: ``level`` 0 is the bucket itself, 1-3 its parents."""

    bucket: str
    node: str
    level: int
    bucket_count: int
    sufficient: bool
    """False when even the language-level node has fewer than ``min_count`` train records."""


@dataclasses.dataclass(frozen=True)
class ReferenceSet:
    """Quantiles per node, and the rules to look them up and to measure distances against them."""

    feature_names: tuple[str, ...]
    quantile_levels: tuple[float, ...]
    counts: Mapping[str, int]
    quantiles: Mapping[str, np.ndarray]
    """node -> array of shape (len(quantile_levels), len(feature_names))."""
    min_count: int
    band: tuple[float, float]
    scale_floor: float

    def _q(self, node: str, level: float) -> np.ndarray:
        return self.quantiles[node][self.quantile_levels.index(level)]

    def resolve(self, bucket: str) -> Resolution:
        """The most specific node with at least ``min_count`` train records (METHOD.md's backoff)."""
        chain = parent_buckets(bucket)
        for level, node in enumerate(chain):
            if self.counts.get(node, 0) >= self.min_count:
                return Resolution(bucket, node, level, self.counts.get(bucket, 0), True)
        for level in range(len(chain) - 1, -1, -1):  # nothing is large enough: the broadest node that exists
            if self.counts.get(chain[level], 0) > 0:
                return Resolution(bucket, chain[level], level, self.counts.get(bucket, 0), False)
        raise KeyError(
            f"no train records for any node of bucket {bucket!r} (language {bucket.split('|')[0]!r}); add train "
            "data in that language or drop the bucket"
        )

    def band_and_scale(self, node: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(lo, hi, s) of a node: the band [q_lo, q_hi] and the robust scale max(q75 - q25, scale_floor)."""
        lo, hi = self._q(node, self.band[0]), self._q(node, self.band[1])
        scale = np.maximum(self._q(node, 0.75) - self._q(node, 0.25), self.scale_floor)
        return lo, hi, scale

    def distance(self, features: np.ndarray, buckets: Sequence[str]) -> np.ndarray:
        """d(x, b) = mean_f max(0, (lo_f - x_f) / s_f, (x_f - hi_f) / s_f) for each row of ``features``."""
        features = np.asarray(features, dtype=np.float64)
        out = np.empty(len(buckets), dtype=np.float64)
        rows_by_node: dict[str, list[int]] = defaultdict(list)
        for i, bucket in enumerate(buckets):
            rows_by_node[self.resolve(bucket).node].append(i)
        for node, rows in rows_by_node.items():
            lo, hi, scale = self.band_and_scale(node)
            out[rows] = support_distance(features[rows], lo, hi, scale)
        return out

    def inside_band(self, features: np.ndarray, buckets: Sequence[str]) -> np.ndarray:
        """Boolean (n, F): whether each feature lies inside its bucket's human band (used by HCR)."""
        features = np.asarray(features, dtype=np.float64)
        out = np.zeros(features.shape, dtype=bool)
        for i, bucket in enumerate(buckets):
            lo, hi, _ = self.band_and_scale(self.resolve(bucket).node)
            out[i] = (features[i] >= lo) & (features[i] <= hi)
        return out

    def to_json(self, resolutions: Iterable[str] = ()) -> dict[str, Any]:
        """JSON form; ``resolutions`` lists buckets whose backoff is written out for people to read."""
        return {
            "version": REFERENCES_VERSION,
            "feature_names": list(self.feature_names),
            "quantile_levels": list(self.quantile_levels),
            "min_count": self.min_count,
            "band": list(self.band),
            "scale_floor": self.scale_floor,
            "nodes": {
                node: {
                    "count": int(self.counts[node]),
                    "quantiles": {
                        name: [float(v) for v in self.quantiles[node][:, j]]
                        for j, name in enumerate(self.feature_names)
                    },
                }
                for node in sorted(self.quantiles)
            },
            "resolution": {b: dataclasses.asdict(self.resolve(b)) for b in sorted(set(resolutions))},
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ReferenceSet:
        names = tuple(data["feature_names"])
        return cls(
            feature_names=names,
            quantile_levels=tuple(float(q) for q in data["quantile_levels"]),
            counts={node: int(v["count"]) for node, v in data["nodes"].items()},
            quantiles={
                node: np.asarray([v["quantiles"][n] for n in names], dtype=np.float64).T
                for node, v in data["nodes"].items()
            },
            min_count=int(data["min_count"]),
            band=(float(data["band"][0]), float(data["band"][1])),
            scale_floor=float(data["scale_floor"]),
        )

    def save(self, path: str | Path, resolutions: Iterable[str] = ()) -> None:
        Path(path).write_text(json.dumps(self.to_json(resolutions), indent=1), encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> ReferenceSet:
        return cls.from_json(json.loads(Path(path).read_text(encoding="utf-8")))


def support_distance(features: np.ndarray, lo: np.ndarray, hi: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Mean over features of how far, in robust scales, each value lies outside [lo, hi] (0 inside)."""
    below = (lo - features) / scale
    above = (features - hi) / scale
    return np.maximum(0.0, np.maximum(below, above)).mean(axis=-1)


def build_references(
    features: np.ndarray,
    buckets: Sequence[str],
    splits: Sequence[str],
    *,
    quantile_levels: Sequence[float],
    min_count: int,
    band: tuple[float, float],
    scale_floor: float,
    feature_names: Sequence[str] = FEATURE_NAMES,
) -> ReferenceSet:
    """Quantiles for every bucket and parent node, from the rows whose split is ``train`` (others are ignored,
    so a test-split outlier cannot move a reference)."""
    features = np.asarray(features, dtype=np.float64)
    rows_by_node: dict[str, list[int]] = defaultdict(list)
    for i, (bucket, split) in enumerate(zip(buckets, splits, strict=True)):
        if split != "train":
            continue
        for node in parent_buckets(bucket):
            rows_by_node[node].append(i)
    levels = tuple(float(q) for q in quantile_levels)
    return ReferenceSet(
        feature_names=tuple(feature_names),
        quantile_levels=levels,
        counts={node: len(rows) for node, rows in rows_by_node.items()},
        quantiles={node: np.quantile(features[rows], levels, axis=0) for node, rows in rows_by_node.items()},
        min_count=min_count,
        band=band,
        scale_floor=scale_floor,
    )
