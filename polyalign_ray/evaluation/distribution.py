"""Distribution metrics per bucket: BNG (bucket naturalness gap), HCR (human coverage rate) and TDM (turn-dynamics
match), all computed on the 19 response features of ``features.py`` (or, for TDM, on user-turn/answer relations).

The human side is always the train split's human answers of the bucket (METHOD.md section 7: references built with
test data in them are a defect), and the human band of HCR is their q10-q90.
"""

from __future__ import annotations

import numpy as np

DEFAULT_SCALE_FLOOR = 0.05
DEFAULT_BNG_CAP = 5.0


def wasserstein_1d(a: np.ndarray, b: np.ndarray) -> float:
    """W1 between two empirical distributions: the integral of |F_a - F_b| (exact, no binning)."""
    a, b = np.sort(np.asarray(a, dtype=np.float64)), np.sort(np.asarray(b, dtype=np.float64))
    if a.size == 0 or b.size == 0:
        raise ValueError("wasserstein_1d needs two non-empty samples")
    values = np.concatenate([a, b])
    values.sort()
    widths = np.diff(values)
    cdf_a = np.searchsorted(a, values[:-1], side="right") / a.size
    cdf_b = np.searchsorted(b, values[:-1], side="right") / b.size
    return float(np.sum(np.abs(cdf_a - cdf_b) * widths))


def robust_scale(values: np.ndarray, floor: float = DEFAULT_SCALE_FLOOR) -> np.ndarray:
    """Per column: max(q75 - q25, floor) (the scale the references use, so a constant feature cannot divide by 0)."""
    q25, q75 = np.quantile(values, [0.25, 0.75], axis=0)
    return np.maximum(q75 - q25, floor)


def bucket_naturalness_gap(
    model: np.ndarray,
    human: np.ndarray,
    *,
    cap: float = DEFAULT_BNG_CAP,
    scale_floor: float = DEFAULT_SCALE_FLOOR,
) -> float:
    """BNG of one bucket (lower is better, 0 when the distributions are equal): the mean over features of
    min(W1(model_f, human_f) / robust scale of human_f, cap). Both arrays are (items, features)."""
    scale = robust_scale(human, scale_floor)
    gaps = [min(wasserstein_1d(model[:, f], human[:, f]) / scale[f], cap) for f in range(human.shape[1])]
    return float(np.mean(gaps))


def human_band(human: np.ndarray, lo: float = 0.1, hi: float = 0.9) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature q_lo and q_hi of the human answers of a bucket."""
    low, high = np.quantile(human, [lo, hi], axis=0)
    return low, high


def human_coverage_rate(model: np.ndarray, low: np.ndarray, high: np.ndarray) -> float:
    """HCR of one bucket (higher is better): the mean over answers of the share of features inside the human band.
    (Requiring all 19 features at once gives ~0 for everything, human answers included: a defect METHOD.md names.)"""
    if model.shape[0] == 0:
        return float("nan")
    inside = (model >= low) & (model <= high)
    return float(inside.mean())


def turn_relations(
    user_lengths: np.ndarray, answer_lengths: np.ndarray, overlaps: np.ndarray, couplings: np.ndarray
) -> np.ndarray:
    """The user-turn/answer relation of each multi-turn item as 3 columns: log length ratio
    log((answer + 1) / (user + 1)), lexical overlap (share of answer tokens found in the user turn) and latent
    coupling (cosine of the two texts' embeddings)."""
    ratio = np.log((np.asarray(answer_lengths, float) + 1) / (np.asarray(user_lengths, float) + 1))
    return np.stack([ratio, np.asarray(overlaps, float), np.asarray(couplings, float)], axis=1)


def turn_dynamics_match(
    model: np.ndarray, human: np.ndarray, *, scale_floor: float = DEFAULT_SCALE_FLOOR
) -> float:
    """TDM of one multi-turn bucket, in (0, 1], 1 when the model's user-turn/answer relations are distributed like
    the human ones: the mean over relation columns of 1 / (1 + W1 / robust scale of the human column)."""
    scale = robust_scale(human, scale_floor)
    matches = [1 / (1 + wasserstein_1d(model[:, f], human[:, f]) / scale[f]) for f in range(human.shape[1])]
    return float(np.mean(matches))
