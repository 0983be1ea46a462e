"""Scoring a set of predictions: every metric of METHOD.md section 6, overall, per language, per track, per bucket.

The human side of the distribution metrics is the **train** split's human answers of each bucket
(:func:`human_references`), never the test answers the predictions are compared with for utility.

Every metric is computed from a **prepared run** (:func:`prepare_run`: per-item utilities, features, user-turn
relations, and a MAUVE quantization per bucket and per group) and **item counts**: how many times each item
enters the metric. All ones give the report's values (:func:`score_predictions`); multinomial counts give a
bootstrap replicate (``intervals``). One code path for both, so an interval is always around the reported value's
own definition. Set metrics (distinct-n, Self-BLEU) are computed once on the items as they are: resampling with
replacement would repeat answers and make them look less diverse.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from polyalign_ray.evaluation.distribution import (
    human_band,
    robust_scale,
    turn_relations,
)
from polyalign_ray.evaluation.diversity import distinct_n, self_bleu
from polyalign_ray.evaluation.embeddings import cosine_rows, hashed_ngram_embeddings
from polyalign_ray.evaluation.frontier import hypervolume_2d
from polyalign_ray.evaluation.mauve import Quantization, matched_human_sample, mauve_from_histograms, quantize
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
    mauve_human_ratio: float = 5.0
    """Global MAUVE: at most this many human answers per model answer, in the model side's bucket mix."""
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


ITEM_METRICS = ("em", "f1", "rouge_l")
SET_METRICS = ("distinct_1", "distinct_2", "distinct_3", "self_bleu4")
"""Metrics of a set of answers as a whole: computed on the items as they are, never on a resample."""
AGGREGATE_FLOOR = 1e-6


@dataclasses.dataclass(frozen=True)
class WassersteinPlan:
    """W1 between a reweighted model sample and a fixed human sample, for every column, scaled by the human robust
    scale: the model's empirical CDF on the merged grid is ``counts @ below / n``, so a batch of resamples of the
    same answers costs one matrix product per column."""

    below: tuple[np.ndarray, ...]
    """Per column: (n_model, grid - 1) indicator of model value <= grid point."""
    human_cdf: tuple[np.ndarray, ...]
    widths: tuple[np.ndarray, ...]
    scale: np.ndarray

    @classmethod
    def build(cls, model: np.ndarray, human: np.ndarray, scale_floor: float) -> WassersteinPlan:
        below, human_cdf, widths = [], [], []
        for column in range(human.shape[1]):
            grid = np.unique(np.concatenate([model[:, column], human[:, column]]))
            points = grid[:-1]
            below.append((model[:, column][:, None] <= points[None, :]).astype(np.float64))
            human_sorted = np.sort(human[:, column])
            human_cdf.append(np.searchsorted(human_sorted, points, side="right") / human_sorted.size)
            widths.append(np.diff(grid))
        return cls(tuple(below), tuple(human_cdf), tuple(widths), robust_scale(human, scale_floor))

    def scaled_distances(self, counts: np.ndarray) -> np.ndarray:
        """(B, columns): W1 of each column / the human scale, for counts (B, n_model)."""
        total = counts.sum(1, keepdims=True)
        columns = [
            np.abs(counts @ below / total - cdf) @ widths
            for below, cdf, widths in zip(self.below, self.human_cdf, self.widths, strict=True)
        ]
        return np.stack(columns, axis=1) / self.scale[None, :]


@dataclasses.dataclass(frozen=True)
class PreparedBucket:
    """One bucket's items of a run, ready to be scored under any item counts."""

    bucket: str
    positions: np.ndarray
    """Positions of the bucket's items in the run's item list."""
    bng: WassersteinPlan | None
    """None: too few items or no human reference (no distribution metric for this bucket)."""
    inside_share: np.ndarray | None
    mauve: Quantization | None
    human_histogram: np.ndarray | None
    tdm: WassersteinPlan | None


@dataclasses.dataclass(frozen=True)
class PreparedGroup:
    """A group of items (all, a language, a track, a bucket): its buckets, its MAUVE quantization and the values of
    its set metrics."""

    buckets: tuple[str, ...]
    mauve: Quantization | None
    human_histogram: np.ndarray | None
    set_values: dict[str, float]


@dataclasses.dataclass(frozen=True)
class PreparedRun:
    """Everything the metrics of one run's predictions need, computed once."""

    utilities: np.ndarray
    """(n, 3): EM, F1, ROUGE-L per item."""
    lengths: np.ndarray
    buckets: dict[str, PreparedBucket]
    groups: dict[str, dict[str, PreparedGroup]]
    """``overall`` / ``by_language`` / ``by_track`` / ``by_bucket`` -> key -> group (``overall`` has key ``all``)."""
    settings: ScoringSettings


def item_utilities(records: Sequence[Mapping[str, Any]], predictions: Sequence[str]) -> np.ndarray:
    return np.asarray(
        [
            (exact_match(p, r["response"]), token_f1(p, r["response"]), rouge_l_f1(p, r["response"]))
            for r, p in zip(records, predictions, strict=True)
        ],
        dtype=np.float64,
    ).reshape(len(records), 3)


def group_indices(records: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, list[int]]]:
    """Item positions per group kind and key, in a stable order."""
    groups: dict[str, dict[str, list[int]]] = {
        "overall": {"all": list(range(len(records)))},
        "by_language": defaultdict(list),
        "by_track": defaultdict(list),
        "by_bucket": defaultdict(list),
    }
    for i, record in enumerate(records):
        groups["by_language"][record["language"]].append(i)
        groups["by_track"][record["track"]].append(i)
        groups["by_bucket"][record["bucket_id"]].append(i)
    return {kind: dict(sorted(keys.items())) for kind, keys in groups.items()}


def prepare_bucket(
    bucket: str,
    positions: list[int],
    records: Sequence[Mapping[str, Any]],
    predictions: Sequence[str],
    features: np.ndarray,
    embeddings: np.ndarray,
    human: BucketHuman | None,
    settings: ScoringSettings,
) -> PreparedBucket:
    index = np.asarray(positions)
    if human is None or len(positions) < settings.min_bucket_items:
        return PreparedBucket(bucket, index, None, None, None, None, None)
    model = features[index]
    quantization = quantize(embeddings[index], human.embeddings, seed=settings.seed)
    tdm = None
    if human.relations is not None:
        relations = relations_of([records[i] for i in positions], [predictions[i] for i in positions])
        tdm = WassersteinPlan.build(relations, human.relations, settings.scale_floor)
    return PreparedBucket(
        bucket=bucket,
        positions=index,
        bng=WassersteinPlan.build(model, human.features, settings.scale_floor),
        inside_share=((model >= human.low) & (model <= human.high)).mean(1),
        mauve=quantization,
        human_histogram=quantization.human_histogram(),
        tdm=tdm,
    )


def prepare_group(
    positions: list[int],
    records: Sequence[Mapping[str, Any]],
    predictions: Sequence[str],
    embeddings: np.ndarray,
    human: Mapping[str, BucketHuman],
    settings: ScoringSettings,
) -> PreparedGroup:
    """The group's buckets, set metrics and, for groups of several buckets, the global MAUVE quantization: the
    group's answers against human answers drawn in the same bucket mix (``matched_human_sample``)."""
    texts = [predictions[i] for i in positions]
    buckets = tuple(sorted({records[i]["bucket_id"] for i in positions}))
    set_values = {
        "distinct_1": distinct_n(texts, 1),
        "distinct_2": distinct_n(texts, 2),
        "distinct_3": distinct_n(texts, 3),
        "self_bleu4": self_bleu(texts, sample_size=settings.self_bleu_sample, seed=settings.seed),
    }
    quantization, histogram = None, None
    if len(buckets) > 1 and len(positions) >= settings.min_bucket_items:
        in_group = [records[i]["bucket_id"] for i in positions]
        sample = matched_human_sample(
            {b: in_group.count(b) for b in buckets},
            {b: human[b].embeddings.shape[0] for b in buckets if b in human},
            max_ratio=settings.mauve_human_ratio,
            seed=settings.seed,
        )
        if sample:
            human_rows = np.concatenate([human[b].embeddings[rows] for b, rows in sample.items()])
            quantization = quantize(embeddings[list(positions)], human_rows, seed=settings.seed)
            histogram = quantization.human_histogram()
    return PreparedGroup(buckets, quantization, histogram, set_values)


def prepare_run(
    records: Sequence[Mapping[str, Any]],
    predictions: Sequence[str],
    human: Mapping[str, BucketHuman],
    settings: ScoringSettings = ScoringSettings(),
) -> PreparedRun:
    """Features, embeddings, quantizations and set metrics of ``predictions[i]`` answering ``records[i]``."""
    if len(records) != len(predictions):
        raise ValueError(f"{len(records)} records but {len(predictions)} predictions")
    features = features_matrix(list(predictions))
    embeddings = hashed_ngram_embeddings(list(predictions))
    indices = group_indices(records)
    buckets = {
        bucket: prepare_bucket(
            bucket, positions, records, predictions, features, embeddings, human.get(bucket), settings
        )
        for bucket, positions in indices["by_bucket"].items()
    }
    groups = {
        kind: {
            key: prepare_group(positions, records, predictions, embeddings, human, settings)
            for key, positions in keys.items()
        }
        for kind, keys in indices.items()
    }
    return PreparedRun(
        utilities=item_utilities(records, predictions),
        lengths=np.asarray([len(metric_tokens(p)) for p in predictions], dtype=np.float64),
        buckets=buckets,
        groups=groups,
        settings=settings,
    )


def unit_counts(run: PreparedRun) -> dict[str, np.ndarray]:
    """Every item once: the counts of the report's own values (one 'replicate')."""
    return {b: np.ones((1, p.positions.size)) for b, p in run.buckets.items()}


def bucket_values(
    run: PreparedRun, bucket: PreparedBucket, counts: np.ndarray
) -> dict[str, np.ndarray | None]:
    """A bucket's BNG, HCR, C-MAUVE and TDM, each (B,), under item counts (B, n_b); None when not scored."""
    if bucket.bng is None:
        return {"bng": None, "hcr": None, "c_mauve": None, "tdm": None}
    settings = run.settings
    bng = np.minimum(bucket.bng.scaled_distances(counts), settings.bng_cap).mean(1)
    hcr = counts @ bucket.inside_share / counts.sum(1)
    c_mauve = np.atleast_1d(
        mauve_from_histograms(
            bucket.mauve.model_histogram(counts), bucket.human_histogram, scaling=settings.mauve_scaling
        )
    )
    tdm = None
    if bucket.tdm is not None:
        tdm = (1 / (1 + bucket.tdm.scaled_distances(counts))).mean(1)
    return {"bng": bng, "hcr": hcr, "c_mauve": c_mauve, "tdm": tdm}


def macro_mean(values: Sequence[np.ndarray | None]) -> np.ndarray | None:
    present = [v for v in values if v is not None]
    return np.mean(np.stack(present), axis=0) if present else None


def hypervolumes(f1: np.ndarray, naturalness_values: np.ndarray) -> np.ndarray:
    """NUF hypervolume per replicate of the points (F1_b, naturalness_b), arrays (B, buckets)."""
    return np.asarray(
        [
            hypervolume_2d(list(zip(u.tolist(), n.tolist(), strict=True)))
            for u, n in zip(f1, naturalness_values, strict=True)
        ]
    )


def aggregate_values(parts: Sequence[np.ndarray]) -> np.ndarray:
    """Geometric mean of utility, 1 / (1 + BNG), MAUVE and NUF per replicate (``frontier.aggregate_score``)."""
    f1, bng, mauve_value, nuf = parts
    stacked = np.stack([f1, 1 / (1 + bng), mauve_value, nuf])
    return np.exp(np.log(np.maximum(stacked, AGGREGATE_FLOOR)).mean(0))


def group_values(
    run: PreparedRun,
    group: PreparedGroup,
    bucket_scores: Mapping[str, Mapping[str, np.ndarray | None]],
    counts: Mapping[str, np.ndarray],
) -> dict[str, Any]:
    """Every metric of a group under item counts: arrays (B,) (None where not defined) and the set metrics."""
    members = [run.buckets[b] for b in group.buckets]
    weights = [counts[b.bucket] for b in members]
    total = sum(w.sum(1) for w in weights)
    out: dict[str, Any] = {"n": int(sum(b.positions.size for b in members)), "buckets": len(members)}
    for column, name in enumerate(ITEM_METRICS):
        out[name] = (
            sum(w @ run.utilities[b.positions, column] for b, w in zip(members, weights, strict=True)) / total
        )
    out["mean_length_tokens"] = (
        sum(w @ run.lengths[b.positions] for b, w in zip(members, weights, strict=True)) / total
    )
    for name in ("bng", "hcr", "c_mauve", "tdm"):
        out[name] = macro_mean([bucket_scores[b][name] for b in group.buckets])
    if len(members) == 1:
        out["mauve"] = out["c_mauve"]  # one bucket: the global MAUVE is its C-MAUVE
    elif group.mauve is not None:
        stacked = np.concatenate(weights, axis=1)
        out["mauve"] = np.atleast_1d(
            mauve_from_histograms(
                group.mauve.model_histogram(stacked),
                group.human_histogram,
                scaling=run.settings.mauve_scaling,
            )
        )
    else:
        out["mauve"] = None
    scored = [b for b in members if bucket_scores[b.bucket]["bng"] is not None]
    if scored:
        f1 = np.stack(
            [counts[b.bucket] @ run.utilities[b.positions, 1] / counts[b.bucket].sum(1) for b in scored], 1
        )
        natural = np.stack(
            [
                0.5 / (1 + bucket_scores[b.bucket]["bng"]) + 0.5 * bucket_scores[b.bucket]["c_mauve"]
                for b in scored
            ],
            1,
        )
        out["nuf_hypervolume"] = hypervolumes(f1, natural)
    else:
        out["nuf_hypervolume"] = None
    parts = [out["f1"], out["bng"], out["mauve"], out["nuf_hypervolume"]]
    out["aggregate"] = aggregate_values(parts) if all(p is not None for p in parts) else None
    # The NUF's naturalness of a bucket, here of the group's macro BNG and C-MAUVE: one number for "answers like
    # the humans of their context" (a sweep objective), in [0, 1].
    out["naturalness"] = (
        0.5 / (1 + out["bng"]) + 0.5 * out["c_mauve"]
        if out["bng"] is not None and out["c_mauve"] is not None
        else None
    )
    out.update(group.set_values)
    return out


def run_values(run: PreparedRun, counts: Mapping[str, np.ndarray]) -> dict[str, dict[str, dict[str, Any]]]:
    """kind -> key -> metric -> values (B,) under item counts per bucket (B, n_b); set metrics as floats."""
    bucket_scores = {b: bucket_values(run, prepared, counts[b]) for b, prepared in run.buckets.items()}
    return {
        kind: {key: group_values(run, group, bucket_scores, counts) for key, group in keys.items()}
        for kind, keys in run.groups.items()
    }


def _as_float(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return float(value[0])
    return value


def score_predictions(
    records: Sequence[Mapping[str, Any]],
    predictions: Sequence[str],
    human: Mapping[str, BucketHuman],
    settings: ScoringSettings = ScoringSettings(),
) -> dict[str, Any]:
    """Every metric, overall / per language / per track / per bucket, of ``predictions[i]`` answering
    ``records[i]`` (whose ``response`` is the human answer used for utility)."""
    return score_prepared_run(records, prepare_run(records, predictions, human, settings))


def score_prepared_run(records: Sequence[Mapping[str, Any]], run: PreparedRun) -> dict[str, Any]:
    """:func:`score_predictions` of a run already prepared (:func:`prepare_run`) for these ``records``."""
    values = run_values(run, unit_counts(run))
    report: dict[str, Any] = {
        kind: {key: {m: _as_float(v) for m, v in metrics.items()} for key, metrics in keys.items()}
        for kind, keys in values.items()
    }
    report["overall"] = report["overall"]["all"]
    report["items"] = [
        {"id": r["id"], "bucket_id": r["bucket_id"], "em": u[0], "f1": u[1], "rouge_l": u[2]}
        for r, u in zip(records, run.utilities.tolist(), strict=True)
    ]
    return report
