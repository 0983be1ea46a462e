"""Training the critic on human AND model answers, with quality gates (METHOD.md section 4).

Targets are the feature-based distances d(x, b) of section 2. The authors trained on human answers only: their
targets were all near zero and the critic collapsed to a constant. Here each train prompt contributes its human
answer and samples of the SFT policy; the loss is a Huber loss on standardized targets plus a ranking hinge that
asks the human answer to score below the model answer for the same prompt. Held-out prompts (the val split) give
the gates: Spearman correlation with the targets, ranking accuracy, and the spread of the predictions; a collapsed
critic raises :class:`CriticQualityError` instead of being saved.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from safetensors.torch import save_file

from polyalign_ray.config import CriticConfig
from polyalign_ray.critic.corruptions import Corrupted
from polyalign_ray.critic.encoders import FrozenLMEncoder, boundary_id_arrays, ngram_batch, ngram_id_arrays
from polyalign_ray.critic.model import CriticModel
from polyalign_ray.critic.prompts import (
    PROMPT_FEATURE_NAMES,
    PromptRecord,
    prompt_features,
    prompt_ngram_text,
    prompt_view,
)
from polyalign_ray.critic.support import (
    SUPPORT_FEATURE_NAMES,
    SUPPORT_FILE,
    SupportTables,
    cross_fitted_support_features,
    support_columns,
)
from polyalign_ray.features import FEATURE_NAMES, features_matrix
from polyalign_ray.references import ReferenceSet
from polyalign_ray.schema import stable_fraction

BUNDLE_META = "critic.json"
MIN_GATED_CORRUPTIONS = 20
"""A corruption kind with fewer held-out answers is reported but not gated: a rate over a handful is noise."""
BUNDLE_WEIGHTS = "critic.safetensors"


class CriticQualityError(RuntimeError):
    """The trained critic failed a quality gate (e.g. its predictions collapsed to a constant)."""


@dataclasses.dataclass(frozen=True)
class CriticExample:
    text: str
    bucket: str
    target: float
    group: str
    """The prompt's record id: a human answer and the model answers to the same prompt share it."""
    is_human: bool
    heldout: bool
    kind: str = ""
    """``human``, ``model`` (a policy sample) or a corruption kind (``critic/corruptions.py``)."""
    prompt: PromptRecord | None = None
    """The prompt the answer is scored under (critic/prompts.py): its record's, for a corrupted answer too."""


def build_critic_examples(
    records: Sequence[dict[str, Any]],
    samples: dict[str, list[str]],
    references: ReferenceSet,
    corrupted: Sequence[Corrupted] = (),
    *,
    corruption_gap: float = 0.0,
) -> list[CriticExample]:
    """Human answers, model samples and corrupted human answers of ``records`` with their distance targets; the
    examples of val records are held out.

    A corrupted answer's target is its exact distance d(x, b); with ``corruption_gap`` > 0 it is raised to at least
    its original's distance plus the gap: no human wrote it, so it must never lie nearer human support than the answer it came from.
    The exact distance alone says otherwise for about a quarter of cut or moved answers (a cut answer can land
    nearer the bucket's typical length; bench/results/critic_ood.md, the targets' own rate), and a critic faithful
    to those targets rewards exactly the answers a policy should not learn to write."""
    rows: list[tuple[str, str, str, bool, bool, str]] = []
    split_of = {record["id"]: record["split"] for record in records}
    prompt_of = {record["id"]: prompt_view(record) for record in records}
    for record in records:
        held = record["split"] != "train"
        rows.append((record["response"], record["bucket_id"], record["id"], True, held, "human"))
        rows += [
            (s, record["bucket_id"], record["id"], False, held, "model")
            for s in samples.get(record["id"], [])
        ]
    for item in corrupted:
        rows.append((item.text, item.bucket, item.source, False, split_of[item.source] != "train", item.kind))
    texts, buckets = [r[0] for r in rows], [r[1] for r in rows]
    targets = references.distance(features_matrix(texts), buckets) if texts else np.zeros(0)
    if corruption_gap > 0:
        original = {r[2]: float(d) for r, d in zip(rows, targets, strict=True) if r[5] == "human"}
        targets = np.asarray(
            [
                d if kind in ("human", "model") else max(float(d), original[group] + corruption_gap)
                for (_, _, group, _, _, kind), d in zip(rows, targets, strict=True)
            ]
        )
    return [
        CriticExample(text, bucket, float(d), group, human, held, kind, prompt_of[group])
        for (text, bucket, group, human, held, kind), d in zip(rows, targets, strict=True)
    ]


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman rank correlation (average ranks for ties); nan when either side is constant."""
    rx, ry = pd.Series(x).rank().to_numpy(), pd.Series(y).rank().to_numpy()
    if rx.std() == 0 or ry.std() == 0:
        return float("nan")
    return float(np.corrcoef(rx, ry)[0, 1])


def human_model_pairs(examples: Sequence[CriticExample]) -> list[tuple[int, int]]:
    """(human index, model index) for every model answer whose prompt's human answer is present."""
    human_of = {e.group: i for i, e in enumerate(examples) if e.is_human}
    return [(human_of[e.group], i) for i, e in enumerate(examples) if not e.is_human and e.group in human_of]


@dataclasses.dataclass
class CriticInputs:
    """Everything the network needs for a set of examples, precomputed once."""

    bucket_ids: torch.Tensor
    features: torch.Tensor
    texts: list[str]
    text_vectors: torch.Tensor | None = None
    """Frozen-LM encodings (``critic.encoder=frozen_lm``)."""
    ngram_ids: list[np.ndarray] | None = None
    """Hashed n-gram ids per text (``critic.encoder=hashed_ngrams``)."""
    boundary_ids: list[np.ndarray] | None = None
    """Hashed ids of how each text starts and ends (``critic.boundary_ngrams``)."""
    prompt_ngram_ids: list[np.ndarray] | None = None
    """Hashed n-gram ids of each answer's prompt (``critic.use_prompt`` with hashed n-grams)."""
    prompt_mask: torch.Tensor | None = None
    """1 where the answer's prompt was given, 0 where not."""

    def batch(self, index: Sequence[int]) -> dict[str, torch.Tensor]:
        index_t = torch.as_tensor(index, dtype=torch.long)
        out = {"bucket_ids": self.bucket_ids[index_t], "features": self.features[index_t]}
        if self.text_vectors is not None:
            out["text_vectors"] = self.text_vectors[index_t]
        else:
            out["ngram_ids"], out["ngram_offsets"] = ngram_batch([self.ngram_ids[i] for i in index])
        if self.boundary_ids is not None:
            out["boundary_ids"], out["boundary_offsets"] = ngram_batch([self.boundary_ids[i] for i in index])
        if self.prompt_ngram_ids is not None:
            out["prompt_ngram_ids"], out["prompt_ngram_offsets"] = ngram_batch(
                [self.prompt_ngram_ids[i] for i in index]
            )
            out["prompt_mask"] = self.prompt_mask[index_t]
        return out


CONSTANT_STD = 1e-6
"""The std a column gets when it never varied over the training answers (the floor ``critic_metadata`` applies)."""


def standardize_features(matrix: np.ndarray, mean: np.ndarray, std: np.ndarray) -> torch.Tensor:
    """(matrix - mean) / std, with 0 in every column that never varied in training. Such a column (no digits in a
    chit-chat corpus, no unseen word in a small one) taught the critic nothing, and divided by the floor an answer
    that differs would enter as a millionfold deviation and saturate the score: it is left out instead."""
    std = np.asarray(std, dtype=np.float64)
    constant = std <= CONSTANT_STD
    standardized = (matrix - mean) / np.where(constant, 1.0, std)
    standardized[..., constant] = 0.0
    return torch.as_tensor(standardized, dtype=torch.float32)


def critic_inputs(
    texts: Sequence[str],
    buckets: Sequence[str],
    meta: dict[str, Any],
    *,
    use_features: bool,
    encoder: FrozenLMEncoder | None = None,
    support: SupportTables | None = None,
    support_features: np.ndarray | None = None,
    prompts: Sequence[PromptRecord | None] | None = None,
    hand_features: np.ndarray | None = None,
) -> CriticInputs:
    """Network inputs for texts in buckets, with the statistics of ``meta`` (the bundle's, at scoring time).

    With ``meta["support"]`` the support statistics (critic/support.py) follow the hand features: computed from
    ``support`` (the bundle's tables), or given precomputed as ``support_features`` (cross-fitted in training).
    With ``meta["prompt"]`` the prompt statistics (critic/prompts.py) follow, and the prompts' n-grams feed the
    learned interaction; ``prompts`` (or any item of it) may be None: the critic then scores the answer alone.
    ``hand_features``: ``features_matrix(texts)`` when the caller already has it (the slow part: jieba)."""
    if prompts is None:
        prompts = [None] * len(texts)
    if len(prompts) != len(texts):
        raise ValueError(f"{len(texts)} texts but {len(prompts)} prompts")
    vocab = meta["buckets"]
    unknown = len(vocab)
    bucket_ids = torch.tensor([vocab.get(b, unknown) for b in buckets], dtype=torch.long)
    parts = []
    if use_features:
        parts.append(
            standardize_features(
                features_matrix(list(texts)) if hand_features is None else hand_features,
                np.asarray(meta["feature_mean"]),
                np.asarray(meta["feature_std"]),
            )
        )
    if meta.get("support", False):  # bundles before support statistics have none
        if support_features is None:
            if support is None:
                raise ValueError("this critic needs its support tables (support.npz in the bundle)")
            support_features = support.features(list(texts), list(buckets))
        # the critic was trained on the columns its bundle names, in order (statistics left out, or added later)
        support_features = support_columns(
            support_features, meta.get("support_feature_names", SUPPORT_FEATURE_NAMES)
        )
        parts.append(
            standardize_features(
                support_features, np.asarray(meta["support_mean"]), np.asarray(meta["support_std"])
            )
        )
    if meta.get("prompt", False):  # bundles before prompts have none
        parts.append(
            standardize_features(
                prompt_features(list(texts), list(buckets), list(prompts)),
                np.asarray(meta["prompt_mean"]),
                np.asarray(meta["prompt_std"]),
            )
        )
    features = torch.cat(parts, dim=-1) if parts else torch.zeros((len(texts), 0), dtype=torch.float32)
    if encoder is not None:
        vectors = torch.as_tensor(encoder.encode(list(texts)), dtype=torch.float32)
        return CriticInputs(bucket_ids, features, list(texts), text_vectors=vectors)
    boundaries = None
    if meta["dims"].get("boundary_dim", 0):
        boundaries = boundary_id_arrays(texts, meta["hash_buckets"])
    prompt_ids, prompt_mask = None, None
    if meta["dims"].get("prompt_interaction", False):
        prompt_ids = ngram_id_arrays([prompt_ngram_text(p) for p in prompts], meta["hash_buckets"])
        prompt_mask = torch.tensor([0.0 if p is None else 1.0 for p in prompts], dtype=torch.float32)
    return CriticInputs(
        bucket_ids,
        features,
        list(texts),
        ngram_ids=ngram_id_arrays(texts, meta["hash_buckets"]),
        boundary_ids=boundaries,
        prompt_ngram_ids=prompt_ids,
        prompt_mask=prompt_mask,
    )


def build_critic_model(meta: dict[str, Any]) -> CriticModel:
    """The network described by a bundle's metadata (untrained)."""
    return CriticModel(
        num_buckets=len(meta["buckets"]),
        bucket_dim=meta["dims"]["bucket_dim"],
        text_dim=meta["dims"]["text_dim"],
        num_features=(len(meta["feature_names"]) if meta["use_features"] else 0)
        + (len(meta["support_feature_names"]) if meta.get("support", False) else 0)
        + (len(meta["prompt_feature_names"]) if meta.get("prompt", False) else 0),
        hidden_dim=meta["dims"]["hidden_dim"],
        hash_buckets=meta["hash_buckets"],
        boundary_dim=meta["dims"].get("boundary_dim", 0),  # bundles before boundary n-grams have none
        prompt_interaction=meta["dims"].get("prompt_interaction", False),
    )


def predict(model: CriticModel, inputs: CriticInputs, batch_size: int = 512) -> np.ndarray:
    model.eval()
    out = []
    with torch.no_grad():
        for start in range(0, len(inputs.texts), batch_size):
            index = list(range(start, min(start + batch_size, len(inputs.texts))))
            out.append(model(**inputs.batch(index)).numpy())
    return np.concatenate(out) if out else np.zeros(0)


def quality_report(
    predictions: np.ndarray, examples: Sequence[CriticExample], *, prefix: str
) -> dict[str, float]:
    """Spearman with the targets, ranking accuracy on (human, model) pairs (against the METHOD's order, human
    below model, and against the targets' own order), spread, mean absolute error."""
    targets = np.asarray([e.target for e in examples])
    pairs = human_model_pairs(examples)
    ordered = [(h, m) for h, m in pairs if targets[h] != targets[m]]
    report = {
        f"{prefix}spearman": spearman(predictions, targets),
        f"{prefix}mae": float(np.abs(predictions - targets).mean()) if len(targets) else float("nan"),
        f"{prefix}prediction_std": float(predictions.std()) if len(predictions) else 0.0,
        f"{prefix}target_std": float(targets.std()) if len(targets) else 0.0,
        f"{prefix}pairs": len(pairs),
        f"{prefix}ranking_accuracy_human_below_model": (
            float(np.mean([predictions[h] < predictions[m] for h, m in pairs])) if pairs else float("nan")
        ),
        f"{prefix}ranking_accuracy_vs_targets": (
            float(
                np.mean([(predictions[h] < predictions[m]) == (targets[h] < targets[m]) for h, m in ordered])
            )
            if ordered
            else float("nan")
        ),
        f"{prefix}target_human_below_model_rate": (
            float(np.mean([targets[h] < targets[m] for h, m in pairs])) if pairs else float("nan")
        ),
    }
    return report


def corruption_report(
    predictions: np.ndarray, examples: Sequence[CriticExample], *, prefix: str
) -> dict[str, Any]:
    """How the critic sees corrupted answers: per kind, how often it scores one farther than the human answer it
    came from (and how often the exact target does), and the Spearman correlation over all corrupted answers."""
    human_of = {e.group: i for i, e in enumerate(examples) if e.is_human}
    corrupted = [
        i for i, e in enumerate(examples) if e.kind not in ("human", "model", "") and e.group in human_of
    ]
    report: dict[str, Any] = {f"{prefix}corrupted": len(corrupted)}
    if not corrupted:
        return report
    targets = np.asarray([e.target for e in examples])
    report[f"{prefix}corrupted_spearman"] = spearman(predictions[corrupted], targets[corrupted])
    farther, target_farther, counts = {}, {}, {}
    for kind in sorted({examples[i].kind for i in corrupted}):
        members = [i for i in corrupted if examples[i].kind == kind]
        counts[kind] = len(members)
        farther[kind] = float(
            np.mean([predictions[i] > predictions[human_of[examples[i].group]] for i in members])
        )
        target_farther[kind] = float(
            np.mean([targets[i] > targets[human_of[examples[i].group]] for i in members])
        )
    report[f"{prefix}corrupted_farther_rate"] = farther
    report[f"{prefix}corrupted_target_farther_rate"] = target_farther
    report[f"{prefix}corrupted_count"] = counts
    return report


def split_kinds(examples: Sequence[CriticExample]) -> list[CriticExample]:
    """Human answers and model samples only: what the original gates are measured on."""
    return [e for e in examples if e.kind in ("human", "model", "")]


def critic_metadata(
    examples: Sequence[CriticExample],
    train_features: np.ndarray,
    targets: np.ndarray,
    config: CriticConfig,
    *,
    encoder: FrozenLMEncoder | None,
    encoder_model: str,
    train_support: np.ndarray | None = None,
    train_prompt_features: np.ndarray | None = None,
) -> dict[str, Any]:
    """What the bundle's ``critic.json`` holds and the model is built from: the bucket vocabulary, the train
    statistics of features, support and prompt statistics and targets (inputs and outputs are standardized with
    them), the encoder and sizes."""
    support = {}
    if train_support is not None:
        names = [n for n in SUPPORT_FEATURE_NAMES if n not in config.support_exclude]
        kept = support_columns(train_support, names)
        support = {
            "support_feature_names": names,
            "support_mean": kept.mean(axis=0).tolist(),
            "support_std": np.maximum(kept.std(axis=0), CONSTANT_STD).tolist(),
        }
    prompt = {}
    if train_prompt_features is not None:
        prompt = {
            "prompt_feature_names": list(PROMPT_FEATURE_NAMES),
            "prompt_mean": train_prompt_features.mean(axis=0).tolist(),
            "prompt_std": np.maximum(train_prompt_features.std(axis=0), CONSTANT_STD).tolist(),
        }
    return {
        "support": train_support is not None,
        **support,
        "prompt": train_prompt_features is not None,
        **prompt,
        "version": 1,
        "encoder": config.encoder,
        "encoder_model": encoder_model,
        "hash_buckets": config.hash_buckets if encoder is None else 0,
        "use_features": config.use_features,
        "buckets": {b: i for i, b in enumerate(sorted({e.bucket for e in examples}))},
        "feature_names": list(FEATURE_NAMES),
        "feature_mean": train_features.mean(axis=0).tolist(),
        "feature_std": np.maximum(train_features.std(axis=0), CONSTANT_STD).tolist(),
        "target_mean": float(targets.mean()),
        "target_std": float(max(targets.std(), 1e-6)),
        "dims": {
            "bucket_dim": config.bucket_embedding_dim,
            "text_dim": config.embedding_dim if encoder is None else encoder.dim,
            "hidden_dim": config.hidden_dim,
            "boundary_dim": config.boundary_dim if encoder is None else 0,
            "prompt_interaction": config.use_prompt and encoder is None,
        },
    }


def fit_critic(
    model: CriticModel,
    inputs: Any,
    train: Sequence[CriticExample],
    targets: np.ndarray,
    meta: dict[str, Any],
    config: CriticConfig,
    rng: np.random.Generator,
) -> list[float]:
    """``config.epochs`` passes of Huber on standardized targets plus the two ranking hinges (human below SFT
    answer; original below its corrupted copy, each with its own weight and batch of pairs); returns the mean loss
    per epoch."""
    target_t = torch.as_tensor(targets, dtype=torch.float32)
    mu, sd = meta["target_mean"], meta["target_std"]
    all_pairs = human_model_pairs(train)
    pairs = np.asarray(
        [(h, m) for h, m in all_pairs if train[m].kind in ("model", "")], dtype=np.int64
    ).reshape(-1, 2)
    corruption_pairs = np.asarray(
        [(h, m) for h, m in all_pairs if train[m].kind not in ("model", "")], dtype=np.int64
    ).reshape(-1, 2)
    # fused: one kernel per parameter for the whole update; the two hashed n-gram tables (5M of the critic's ~5.3M
    # weights at the defaults) take a dense update every step, which was ~30% of the demo's critic training
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.lr, weight_decay=config.weight_decay, fused=True
    )
    ranking_terms = [
        (ranked, weight)
        for ranked, weight in ((pairs, config.rank_weight), (corruption_pairs, config.corruption_rank_weight))
        if len(ranked) and weight > 0
    ]
    steps_per_epoch = math.ceil(len(train) / config.batch_size)
    history = []
    for _epoch in range(config.epochs):
        model.train()
        order = rng.permutation(len(train))
        epoch_loss = 0.0
        for step in range(steps_per_epoch):
            index = order[step * config.batch_size : (step + 1) * config.batch_size].tolist()
            chosen_pairs = [
                ranked[rng.integers(0, len(ranked), size=min(config.batch_size, len(ranked)))]
                for ranked, _ in ranking_terms
            ]
            # One forward over the batch and every ranking pair: each embedding table then makes one dense
            # gradient per step instead of one per term (the same loss; the model has no dropout or batch norm).
            prediction = model(
                **inputs.batch(index + [i for chosen in chosen_pairs for i in chosen.reshape(-1).tolist()])
            )
            main, rest = prediction[: len(index)], prediction[len(index) :]
            loss = torch.nn.functional.huber_loss(
                (main - mu) / sd, (target_t[index] - mu) / sd, delta=config.huber_delta
            )
            for (_, weight), chosen in zip(ranking_terms, chosen_pairs, strict=True):
                both, rest = rest[: chosen.size].view(-1, 2), rest[chosen.size :]
                hinge = torch.relu(config.rank_margin + both[:, 0] - both[:, 1]).mean()
                loss = loss + weight * hinge
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            epoch_loss += float(loss.detach())
        history.append(epoch_loss / steps_per_epoch)
    return history


def gate_failures(summary: dict[str, Any], config: CriticConfig) -> tuple[list[str], list[str]]:
    """The held-out gates: (failures, each naming the key that sets its bar; notes on kinds too rare to gate)."""
    failures = []
    spread_ratio = summary["heldout_spread_ratio"]
    if not spread_ratio >= config.min_prediction_std_ratio:
        failures.append(
            f"predictions collapsed: std {summary['heldout_prediction_std']:.4g} is {spread_ratio:.3g} x the "
            f"targets' std (critic.min_prediction_std_ratio={config.min_prediction_std_ratio})"
        )
    if not summary["heldout_spearman"] >= config.min_spearman:
        failures.append(
            f"held-out Spearman {summary['heldout_spearman']:.3f} < critic.min_spearman={config.min_spearman}"
        )
    notes = []
    for kind, rate in summary.get("heldout_corrupted_farther_rate", {}).items():
        count = summary["heldout_corrupted_count"][kind]
        if count < MIN_GATED_CORRUPTIONS:
            notes.append(
                f"{kind}: {count} held-out answers, too few to gate (at least {MIN_GATED_CORRUPTIONS})"
            )
            continue
        if not rate >= config.min_corruption_farther_rate:
            failures.append(
                f"held-out {kind} answers scored farther than their originals in only {rate:.0%} of cases "
                f"(critic.min_corruption_farther_rate={config.min_corruption_farther_rate}): the critic is blind "
                "to them; train longer (critic.epochs) or on more corrupted answers (critic.corruptions_per_prompt)"
            )
    return failures, notes


PROMPT_ONLY_KINDS = ("swap",)
"""Corruption kinds that only the prompt shows (another answer of the same bucket): without it they read as human."""


def withhold_prompts(examples: Sequence[CriticExample], share: float, seed: int) -> list[CriticExample]:
    """The examples with the prompt of a seeded ``share`` of prompts withheld (whole groups: a human answer and
    its SFT samples and corrupted copies together), so the critic also learns to score answers given alone.
    Corrupted answers of :data:`PROMPT_ONLY_KINDS` in those groups are left out: without the prompt nothing
    tells them from the answer they replace, and the ranking hinge would only learn noise."""
    out = []
    for example in examples:
        # salted: critic_records picks the train prompts by stable_fraction(id, seed) itself, so the unsalted
        # fraction of every chosen prompt is small and the whole train set would be withheld
        if share > 0 and stable_fraction(f"withhold-prompt:{example.group}", seed) < share:
            if example.kind not in PROMPT_ONLY_KINDS:
                out.append(dataclasses.replace(example, prompt=None))
        else:
            out.append(example)
    return out


def train_critic(
    examples: Sequence[CriticExample],
    config: CriticConfig,
    *,
    encoder: FrozenLMEncoder | None = None,
    encoder_model: str = "",
) -> tuple[CriticModel, dict[str, Any], dict[str, Any]]:
    """Train on the non-held-out examples; returns (model, bundle metadata, summary with the gates).

    ``encoder`` (with ``encoder_model``, its path) is required for ``critic.encoder=frozen_lm``. The summary's
    ``gates_passed`` says whether the held-out gates hold; the caller refuses to save a critic that fails them.
    """
    if (config.encoder == "frozen_lm") != (encoder is not None):
        raise ValueError("critic.encoder=frozen_lm needs a FrozenLMEncoder, hashed_ngrams must not get one")
    start = time.perf_counter()
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    # Without critic.use_prompt every prompt is withheld; with it, the held-out gates see every prompt.
    train = withhold_prompts(
        [e for e in examples if not e.heldout],
        config.prompt_dropout if config.use_prompt else 1.0,
        config.seed,
    )
    heldout = withhold_prompts(
        [e for e in examples if e.heldout], 0.0 if config.use_prompt else 1.0, config.seed
    )
    if not train or not heldout:
        raise CriticQualityError("the critic needs train and held-out (val) examples; check the data splits")
    targets = np.asarray([e.target for e in train], dtype=np.float64)
    support, train_support = None, None
    if config.support_features:
        humans = [e for e in train if e.kind in ("human", "") and e.is_human]
        support = SupportTables.fit([e.text for e in humans], [e.bucket for e in humans])
        train_support = cross_fitted_support_features(
            [e.text for e in train],
            [e.bucket for e in train],
            [e.group for e in train],
            [e.text for e in humans],
            [e.bucket for e in humans],
            [e.group for e in humans],
        )
    train_features = features_matrix([e.text for e in train])
    meta = critic_metadata(
        examples,
        train_features,
        targets,
        config,
        encoder=encoder,
        encoder_model=encoder_model,
        train_support=train_support,
        train_prompt_features=(
            prompt_features([e.text for e in train], [e.bucket for e in train], [e.prompt for e in train])
            if config.use_prompt
            else None
        ),
    )
    model = build_critic_model(meta)
    model.support_tables = support

    def inputs_of(
        split: list[CriticExample],
        support_features: np.ndarray | None = None,
        hand_features: np.ndarray | None = None,
    ) -> Any:
        return critic_inputs(
            [e.text for e in split],
            [e.bucket for e in split],
            meta,
            use_features=config.use_features,
            encoder=encoder,
            support=support,
            support_features=support_features,
            prompts=[e.prompt for e in split],
            hand_features=hand_features,
        )

    inputs = inputs_of(train, train_support, train_features)
    history = fit_critic(model, inputs, train, targets, meta, config, rng)

    heldout_features = features_matrix([e.text for e in heldout])
    heldout_pred = predict(model, inputs_of(heldout, hand_features=heldout_features))
    train_pred = predict(model, inputs)
    plain_heldout = [i for i, e in enumerate(heldout) if e.kind in ("human", "model", "")]
    plain_train = [i for i, e in enumerate(train) if e.kind in ("human", "model", "")]
    summary: dict[str, Any] = {
        "train_examples": len(train),
        "heldout_examples": len(heldout),
        "train_human": sum(e.kind in ("human", "") and e.is_human for e in train),
        "train_model": sum(e.kind in ("model", "") and not e.is_human for e in train),
        "train_corrupted": len(train) - len(plain_train),
        "epochs": config.epochs,
        "loss_per_epoch": history,
        "seconds": time.perf_counter() - start,
        **quality_report(heldout_pred[plain_heldout], split_kinds(heldout), prefix="heldout_"),
        **quality_report(train_pred[plain_train], split_kinds(train), prefix="train_"),
        **corruption_report(heldout_pred, heldout, prefix="heldout_"),
    }
    if config.use_prompt:  # what callers that pass no prompt get (not gated: the gates are on the full input)
        kept = [i for i, e in enumerate(heldout) if e.kind not in PROMPT_ONLY_KINDS]  # what withholding keeps
        alone = withhold_prompts(heldout, 1.0, config.seed)
        alone_pred = predict(model, inputs_of(alone, hand_features=heldout_features[kept]))
        summary.update(corruption_report(alone_pred, alone, prefix="heldout_no_prompt_"))
    summary["heldout_spread_ratio"] = summary["heldout_prediction_std"] / max(
        summary["heldout_target_std"], 1e-12
    )
    failures, notes = gate_failures(summary, config)
    summary["gate_notes"] = notes
    summary["gates_passed"] = not failures
    summary["gate_failures"] = failures
    return model, meta, summary


def save_critic_bundle(
    directory: Path,
    model: CriticModel,
    meta: dict[str, Any],
    summary: dict[str, Any],
    references: ReferenceSet,
) -> Path:
    """Weights (safetensors), metadata (bucket vocabulary, feature and target statistics, dimensions), the
    references the targets came from, and the summary with the gates."""
    directory.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(directory / BUNDLE_WEIGHTS))
    if model.support_tables is not None:
        model.support_tables.save(directory / SUPPORT_FILE)
    (directory / BUNDLE_META).write_text(json.dumps(meta, indent=1), encoding="utf-8")
    references.save(directory / "references.json")
    (directory / "summary.json").write_text(json.dumps(summary, indent=1), encoding="utf-8")
    return directory
