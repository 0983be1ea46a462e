"""Scoring a set of predictions: every metric of METHOD.md section 6, overall, per language, per track, per bucket.

The human side of the distribution metrics is the **train** split's human answers of each bucket
(:func:`human_references`), never the test answers the predictions are compared with for utility.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from polyalign_ray.evaluation.distribution import (
    bucket_naturalness_gap,
    human_band,
    human_coverage_rate,
    turn_dynamics_match,
    turn_relations,
)
from polyalign_ray.evaluation.diversity import distinct_n, self_bleu
from polyalign_ray.evaluation.embeddings import cosine_rows, hashed_ngram_embeddings
from polyalign_ray.evaluation.frontier import aggregate_score, hypervolume_2d, naturalness
from polyalign_ray.evaluation.mauve import mauve
from polyalign_ray.evaluation.text import metric_tokens
from polyalign_ray.evaluation.utility import exact_match, rouge_l_f1, token_f1
from polyalign_ray.features import features_matrix


@dataclasses.dataclass(frozen=True)
class ScoringSettings:
    """Knobs of the distribution metrics (``eval`` section of the config)."""

    min_bucket_items: int = 5
    """Buckets with fewer predictions get no distribution metrics (reported as null)."""
    bng_cap: float = 5.0
    scale_floor: float = 0.05
    self_bleu_sample: int = 200
    mauve_scaling: float = 5.0
    seed: int = 0


@dataclasses.dataclass
class BucketHuman:
    """A bucket's human answers from the train split: features, embeddings, HCR band, TDM relations."""

    features: np.ndarray
    embeddings: np.ndarray
    low: np.ndarray
    high: np.ndarray
    relations: np.ndarray | None


def user_turn(record: Mapping[str, Any]) -> str:
    """The user turn an answer responds to (the prompt; the grounding context is not part of the turn)."""
    return str(record.get("prompt") or "")


def relations_of(records: Sequence[Mapping[str, Any]], answers: Sequence[str]) -> np.ndarray:
    """TDM relations of (user turn, answer) for each record."""
    users = [user_turn(r) for r in records]
    user_tokens = [metric_tokens(u) for u in users]
    answer_tokens = [metric_tokens(a) for a in answers]
    overlaps = [
        sum(t in set(u) for t in a) / len(a) if a else 0.0
        for u, a in zip(user_tokens, answer_tokens, strict=True)
    ]
    couplings = cosine_rows(hashed_ngram_embeddings(users), hashed_ngram_embeddings(list(answers)))
    return turn_relations(
        np.asarray([len(u) for u in user_tokens]),
        np.asarray([len(a) for a in answer_tokens]),
        np.asarray(overlaps),
        couplings,
    )


def human_references(
    train_records: Sequence[Mapping[str, Any]],
    *,
    max_per_bucket: int = 500,
    seed: int = 0,
    features: np.ndarray | None = None,
) -> dict[str, BucketHuman]:
    """Per bucket, up to ``max_per_bucket`` train human answers (a seeded choice): their features (computed, or
    rows of ``features`` aligned with ``train_records``), embeddings, q10-q90 band and, for multi-turn buckets,
    user-turn relations."""
    by_bucket: dict[str, list[int]] = defaultdict(list)
    for i, record in enumerate(train_records):
        by_bucket[record["bucket_id"]].append(i)
    rng = np.random.default_rng(seed)
    out = {}
    for bucket, indices in sorted(by_bucket.items()):
        if len(indices) > max_per_bucket:
            indices = sorted(rng.choice(indices, size=max_per_bucket, replace=False).tolist())
        records = [train_records[i] for i in indices]
        answers = [str(r["response"]) for r in records]
        feats = features[indices] if features is not None else features_matrix(answers)
        low, high = human_band(feats)
        multi = records[0]["track"] == "multi"
        out[bucket] = BucketHuman(
            features=feats,
            embeddings=hashed_ngram_embeddings(answers),
            low=low,
            high=high,
            relations=relations_of(records, answers) if multi else None,
        )
    return out


def _mean(values: Sequence[float | None]) -> float | None:
    kept = [v for v in values if v is not None and not np.isnan(v)]
    return float(np.mean(kept)) if kept else None


def score_bucket(
    records: Sequence[Mapping[str, Any]],
    predictions: Sequence[str],
    pred_features: np.ndarray,
    pred_embeddings: np.ndarray,
    human: BucketHuman | None,
    settings: ScoringSettings,
) -> dict[str, float | None]:
    """Distribution metrics of one bucket (null when the bucket has too few predictions or no human reference)."""
    if human is None or len(predictions) < settings.min_bucket_items:
        return {"bng": None, "hcr": None, "c_mauve": None, "tdm": None}
    bng = bucket_naturalness_gap(
        pred_features, human.features, cap=settings.bng_cap, scale_floor=settings.scale_floor
    )
    tdm = None
    if human.relations is not None:
        tdm = turn_dynamics_match(
            relations_of(records, predictions), human.relations, scale_floor=settings.scale_floor
        )
    return {
        "bng": bng,
        "hcr": human_coverage_rate(pred_features, human.low, human.high),
        "c_mauve": mauve(
            pred_embeddings, human.embeddings, scaling=settings.mauve_scaling, seed=settings.seed
        ),
        "tdm": tdm,
    }


def score_group(
    indices: Sequence[int],
    records: Sequence[Mapping[str, Any]],
    predictions: Sequence[str],
    utilities: np.ndarray,
    bucket_scores: Mapping[str, Mapping[str, float | None]],
    pred_embeddings: np.ndarray,
    human: Mapping[str, BucketHuman],
    settings: ScoringSettings,
) -> dict[str, Any]:
    """Metrics of a group of items (all, a language, a track, a bucket): utility and diversity over its items;
    BNG, HCR, C-MAUVE, TDM as macro means over its buckets; MAUVE over all its items against all its buckets'
    human answers; the NUF hypervolume of its buckets' (F1, naturalness) points; the aggregate."""
    texts = [predictions[i] for i in indices]
    buckets = sorted({records[i]["bucket_id"] for i in indices})
    scored = [bucket_scores[b] for b in buckets]
    points = []
    for b in buckets:
        s = bucket_scores[b]
        if s["bng"] is not None:
            f1 = float(np.mean([utilities[i, 1] for i in indices if records[i]["bucket_id"] == b]))
            points.append((f1, naturalness(s["bng"], s["c_mauve"])))
    human_rows = [human[b].embeddings for b in buckets if b in human]
    global_mauve = None
    if human_rows and len(indices) >= settings.min_bucket_items:
        global_mauve = mauve(
            pred_embeddings[list(indices)],
            np.concatenate(human_rows),
            scaling=settings.mauve_scaling,
            seed=settings.seed,
        )
    out: dict[str, Any] = {
        "n": len(indices),
        "buckets": len(buckets),
        "em": float(utilities[list(indices), 0].mean()),
        "f1": float(utilities[list(indices), 1].mean()),
        "rouge_l": float(utilities[list(indices), 2].mean()),
        "distinct_1": distinct_n(texts, 1),
        "distinct_2": distinct_n(texts, 2),
        "distinct_3": distinct_n(texts, 3),
        "self_bleu4": self_bleu(texts, sample_size=settings.self_bleu_sample, seed=settings.seed),
        "bng": _mean([s["bng"] for s in scored]),
        "hcr": _mean([s["hcr"] for s in scored]),
        "c_mauve": _mean([s["c_mauve"] for s in scored]),
        "mauve": global_mauve,
        "tdm": _mean([s["tdm"] for s in scored]),
        "nuf_hypervolume": hypervolume_2d(points) if points else None,
        "mean_length_tokens": float(np.mean([len(metric_tokens(t)) for t in texts])) if texts else 0.0,
    }
    parts = (out["f1"], out["bng"], out["mauve"], out["nuf_hypervolume"])
    out["aggregate"] = aggregate_score(*parts) if all(p is not None for p in parts) else None
    return out


def score_predictions(
    records: Sequence[Mapping[str, Any]],
    predictions: Sequence[str],
    human: Mapping[str, BucketHuman],
    settings: ScoringSettings = ScoringSettings(),
) -> dict[str, Any]:
    """Every metric, overall / per language / per track / per bucket, of ``predictions[i]`` answering
    ``records[i]`` (whose ``response`` is the human answer used for utility)."""
    if len(records) != len(predictions):
        raise ValueError(f"{len(records)} records but {len(predictions)} predictions")
    utilities = np.asarray(
        [
            (exact_match(p, r["response"]), token_f1(p, r["response"]), rouge_l_f1(p, r["response"]))
            for r, p in zip(records, predictions, strict=True)
        ],
        dtype=np.float64,
    ).reshape(len(records), 3)
    pred_features = features_matrix(list(predictions))
    pred_embeddings = hashed_ngram_embeddings(list(predictions))
    groups: dict[str, dict[str, list[int]]] = {
        "language": defaultdict(list),
        "track": defaultdict(list),
        "bucket": defaultdict(list),
    }
    for i, record in enumerate(records):
        groups["language"][record["language"]].append(i)
        groups["track"][record["track"]].append(i)
        groups["bucket"][record["bucket_id"]].append(i)
    bucket_scores = {
        b: score_bucket(
            [records[i] for i in idx],
            [predictions[i] for i in idx],
            pred_features[idx],
            pred_embeddings[idx],
            human.get(b),
            settings,
        )
        for b, idx in groups["bucket"].items()
    }

    def group(indices: Sequence[int]) -> dict[str, Any]:
        return score_group(
            indices, records, predictions, utilities, bucket_scores, pred_embeddings, human, settings
        )

    return {
        "overall": group(range(len(records))),
        "by_language": {k: group(v) for k, v in sorted(groups["language"].items())},
        "by_track": {k: group(v) for k, v in sorted(groups["track"].items())},
        "by_bucket": {k: group(v) for k, v in sorted(groups["bucket"].items())},
        "items": [
            {"id": r["id"], "bucket_id": r["bucket_id"], "em": u[0], "f1": u[1], "rouge_l": u[2]}
            for r, u in zip(records, utilities.tolist(), strict=True)
        ],
    }
