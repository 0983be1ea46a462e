"""MAUVE (Pillutla et al., 2021), our own numpy implementation: quantize the union of both samples' embeddings with
k-means, compare the two cluster histograms P (model) and Q (human) along the mixtures R = l P + (1 - l) Q, and take
the area under the divergence curve (exp(-c KL(Q|R)), exp(-c KL(P|R))). 1 for identical distributions, near 0 for
disjoint ones. C-MAUVE is this per bucket, macro-averaged (``report``)."""

from __future__ import annotations

import numpy as np

DEFAULT_SCALING = 5.0


def kmeans(points: np.ndarray, k: int, *, seed: int = 0, iterations: int = 50) -> np.ndarray:
    """Cluster labels of ``points`` (n, d) by Lloyd's algorithm from a k-means++ start (seeded, deterministic)."""
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
    return labels


def _kl(p: np.ndarray, r: np.ndarray) -> float:
    mask = p > 0
    return float(np.sum(p[mask] * np.log(p[mask] / r[mask])))


def mauve_from_histograms(
    p: np.ndarray, q: np.ndarray, *, scaling: float = DEFAULT_SCALING, num_mixtures: int = 50
) -> float:
    """Area under the divergence curve of two histograms over the same clusters."""
    p, q = p / p.sum(), q / q.sum()
    xs, ys = [0.0], [1.0]
    for weight in np.linspace(1e-6, 1 - 1e-6, num_mixtures):
        r = weight * p + (1 - weight) * q
        xs.append(float(np.exp(-scaling * _kl(q, r))))
        ys.append(float(np.exp(-scaling * _kl(p, r))))
    xs.append(1.0)
    ys.append(0.0)
    order = np.argsort(xs, kind="stable")
    x, y = np.asarray(xs)[order], np.asarray(ys)[order]
    return float(np.sum(np.diff(x) * (y[1:] + y[:-1]) / 2))


def mauve(
    model: np.ndarray,
    human: np.ndarray,
    *,
    num_clusters: int | None = None,
    scaling: float = DEFAULT_SCALING,
    seed: int = 0,
) -> float:
    """MAUVE of model vs human embeddings (rows are items). Clusters: ``num_clusters`` or (n_model + n_human) / 10
    (at least 2), on L2-normalized embeddings."""
    if model.shape[0] == 0 or human.shape[0] == 0:
        raise ValueError("mauve needs two non-empty samples")
    points = np.concatenate([model, human]).astype(np.float64)
    norms = np.linalg.norm(points, axis=1, keepdims=True)
    points = points / np.where(norms > 0, norms, 1.0)
    k = num_clusters or max(2, points.shape[0] // 10)
    labels = kmeans(points, k, seed=seed)
    k = int(labels.max()) + 1
    p = np.bincount(labels[: model.shape[0]], minlength=k).astype(np.float64)
    q = np.bincount(labels[model.shape[0] :], minlength=k).astype(np.float64)
    return mauve_from_histograms(p, q, scaling=scaling)
