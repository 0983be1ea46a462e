"""MAUVE (Pillutla et al., 2021), our own numpy implementation following the reference library's conventions
(mauve-text): L2-normalize the union of both samples' embeddings, keep the principal components that explain 90%
of its variance, quantize with k-means (best of 5 restarts, k = max(2, round(min(n_model, n_human) / 10))), compare
the two cluster histograms P (model) and Q (human) along the mixtures R = w P + (1 - w) Q at 25 weights, and take
the area under the divergence curve (exp(-c KL(Q|R)), exp(-c KL(P|R))). 1 for identical histograms, near 0 for
disjoint ones. C-MAUVE is this per bucket, macro-averaged (``scoring``).

Why the cluster count matters: two samples of one distribution fall into k clusters with sampling noise that grows
with k; the former (n_model + n_human) / 10 put ~0.90 on identical distributions where mauve-text's rule gives ~0.96.

The quantization is its own step (:func:`quantize`) so that a bootstrap can resample the model's answers and
recount the histogram without clustering again (``intervals``); :func:`mauve_from_histograms` takes a batch of
histograms at once for the same reason.
"""

from __future__ import annotations

import dataclasses

import numpy as np

DEFAULT_SCALING = 5.0
DIVERGENCE_CURVE_POINTS = 25
"""Mixture weights of the divergence curve (mauve-text's ``divergence_curve_discretization_size``)."""
EXPLAINED_VARIANCE = 0.9
"""Principal components kept before k-means (mauve-text's ``kmeans_explained_var``)."""
KMEANS_RESTARTS = 5
"""k-means runs from different seeded starts; the one with the lowest inertia is kept (mauve-text's ``num_redo``)."""


def default_num_clusters(num_model: int, num_human: int) -> int:
    """mauve-text's rule: one cluster per 10 answers of the smaller sample, at least 2."""
    return max(2, round(min(num_model, num_human) / 10))


def kmeans(points: np.ndarray, k: int, *, seed: int = 0, iterations: int = 100) -> tuple[np.ndarray, float]:
    """Cluster labels of ``points`` (n, d) and their inertia (sum of squared distances to the centers), by Lloyd's
    algorithm from a k-means++ start (seeded, deterministic)."""
    rng = np.random.default_rng(seed)
    n = points.shape[0]
    k = max(1, min(k, n))
    point_norms = np.sum(points**2, axis=1)

    def squared_distances_to(index: int) -> np.ndarray:
        return np.maximum(point_norms - 2.0 * (points @ points[index]) + point_norms[index], 0.0)

    first = int(rng.integers(n))
    centers = [points[first]]
    distances = squared_distances_to(first)
    for _ in range(1, k):
        total = distances.sum()
        index = int(rng.choice(n, p=distances / total)) if total > 0 else int(rng.integers(n))
        centers.append(points[index])
        distances = np.minimum(distances, squared_distances_to(index))
    center_array = np.stack(centers)
    labels = np.zeros(n, dtype=np.int64)
    squared = np.zeros((n, k))
    for step in range(iterations):
        # |x - c|^2 = |x|^2 - 2 x.c + |c|^2: one matrix product instead of an (n, k, d) array (which made the
        # evaluation of a few thousand answers take minutes).
        squared = (
            point_norms[:, None] - 2.0 * (points @ center_array.T) + np.sum(center_array**2, axis=1)[None, :]
        )
        new_labels = squared.argmin(1)
        if step and np.array_equal(new_labels, labels):
            break
        labels = new_labels
        order = np.argsort(labels, kind="stable")
        counts = np.bincount(labels, minlength=k)
        filled = np.flatnonzero(counts)
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])[filled]
        center_array[filled] = np.add.reduceat(points[order], starts, axis=0) / counts[filled, None]
    inertia = float(np.maximum(squared[np.arange(n), labels], 0.0).sum())
    return labels, inertia


def principal_components(points: np.ndarray, explained_variance: float = EXPLAINED_VARIANCE) -> np.ndarray:
    """``points`` projected on the fewest principal components that explain ``explained_variance`` of the
    variance (at least one)."""
    centered = points - points.mean(axis=0)
    # The variances along the principal axes are the squared singular values of the centered points (descending).
    # An SVD of the n x D points costs O(n^2 D) where an eigendecomposition of the D x D scatter costs O(D^3): a
    # bucket has tens to hundreds of answers against 512 embedding dimensions (it was 60% of a comparison's time).
    _, singular, axes = np.linalg.svd(centered, full_matrices=False)
    variances = singular**2
    total = variances.sum()
    if total <= 0:
        return centered[:, :1]
    keep = int(np.argmax(np.cumsum(variances) / total >= explained_variance - 1e-12)) + 1
    return centered @ axes[:keep].T


@dataclasses.dataclass(frozen=True)
class Quantization:
    """Cluster labels of the model's and the human answers' embeddings, from one k-means on their union."""

    model_labels: np.ndarray
    human_labels: np.ndarray
    num_clusters: int

    def model_histogram(self, counts: np.ndarray | None = None) -> np.ndarray:
        """Cluster counts of the model answers; ``counts`` (..., n_model) repeats each answer that many times
        (a bootstrap resample), giving (..., k)."""
        onehot = np.eye(self.num_clusters)[self.model_labels]
        return onehot.sum(0) if counts is None else counts @ onehot

    def human_histogram(self) -> np.ndarray:
        return np.bincount(self.human_labels, minlength=self.num_clusters).astype(np.float64)


def quantize(
    model: np.ndarray,
    human: np.ndarray,
    *,
    num_clusters: int | None = None,
    seed: int = 0,
    explained_variance: float = EXPLAINED_VARIANCE,
    restarts: int = KMEANS_RESTARTS,
) -> Quantization:
    """Quantize the union of model and human embeddings (rows are items) as mauve-text does (module docstring)."""
    if model.shape[0] == 0 or human.shape[0] == 0:
        raise ValueError("mauve needs two non-empty samples")
    points = np.concatenate([model, human]).astype(np.float64)
    norms = np.linalg.norm(points, axis=1, keepdims=True)
    points = principal_components(points / np.where(norms > 0, norms, 1.0), explained_variance)
    k = num_clusters or default_num_clusters(model.shape[0], human.shape[0])
    runs = [kmeans(points, k, seed=seed + restart) for restart in range(restarts)]
    labels = min(runs, key=lambda run: run[1])[0]
    return Quantization(labels[: model.shape[0]], labels[model.shape[0] :], max(1, min(k, points.shape[0])))


def _kl_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """KL(a | b) along the last axis (terms with a = 0 are 0; b > 0 wherever a > 0 for the mixtures used here)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(a > 0, a * np.log(np.where(a > 0, a, 1.0) / np.where(b > 0, b, 1.0)), 0.0)
    return terms.sum(-1)


def mauve_from_histograms(
    p: np.ndarray,
    q: np.ndarray,
    *,
    scaling: float = DEFAULT_SCALING,
    num_mixtures: int = DIVERGENCE_CURVE_POINTS,
) -> np.ndarray | float:
    """Area under the divergence curve of histograms over the same clusters. ``p`` and ``q`` may carry leading
    batch dimensions (broadcast); a float for one pair, an array for a batch. As in mauve-text the curve includes
    its end points (1, 0) and (0, 1). Along the mixture weight the curve is monotone (x falls, y rises: both KL
    terms are convex in w and 0 at their end), so the trapezoids are taken in that order; sorting by x instead
    would misplace tied points (identical histograms put every mixture at x = 1)."""
    p = np.asarray(p, dtype=np.float64)
    q = np.asarray(q, dtype=np.float64)
    p = p / p.sum(-1, keepdims=True)
    q = q / q.sum(-1, keepdims=True)
    weights = np.linspace(1e-6, 1 - 1e-6, num_mixtures)
    mixtures = weights[:, None] * p[..., None, :] + (1 - weights[:, None]) * q[..., None, :]
    x = np.exp(-scaling * _kl_rows(q[..., None, :], mixtures))
    y = np.exp(-scaling * _kl_rows(p[..., None, :], mixtures))
    shape = (*x.shape[:-1], 1)
    x = np.concatenate([np.ones(shape), x, np.zeros(shape)], axis=-1)
    y = np.concatenate([np.zeros(shape), y, np.ones(shape)], axis=-1)
    area = np.sum((x[..., :-1] - x[..., 1:]) * (y[..., 1:] + y[..., :-1]) / 2, axis=-1)
    return float(area) if np.ndim(area) == 0 else area


def mauve(
    model: np.ndarray,
    human: np.ndarray,
    *,
    num_clusters: int | None = None,
    scaling: float = DEFAULT_SCALING,
    seed: int = 0,
) -> float:
    """MAUVE of model vs human embeddings (rows are items)."""
    quantization = quantize(model, human, num_clusters=num_clusters, seed=seed)
    return float(
        mauve_from_histograms(quantization.model_histogram(), quantization.human_histogram(), scaling=scaling)
    )


def matched_human_sample(
    model_counts: dict[str, int], human_sizes: dict[str, int], *, max_ratio: float = 5.0, seed: int = 0
) -> dict[str, np.ndarray]:
    """Which human answers of each bucket form the human side of a MAUVE over several buckets: the same bucket mix
    as the model side (bucket b gets ratio x n_b answers, ratio = min(max_ratio, min_b human_b / n_b)), a seeded
    choice inside each bucket. Pooling every bucket's capped human sample instead gives the human side another mix
    than the model's, and MAUVE then measures the mix as much as the answers."""
    present = {b: n for b, n in model_counts.items() if n > 0 and human_sizes.get(b, 0) > 0}
    if not present:
        return {}
    ratio = min(max_ratio, min(human_sizes[b] / n for b, n in present.items()))
    rng = np.random.default_rng(seed)
    out = {}
    for bucket, n in sorted(present.items()):
        take = max(1, min(human_sizes[bucket], round(ratio * n)))
        out[bucket] = np.sort(rng.choice(human_sizes[bucket], size=take, replace=False))
    return out
