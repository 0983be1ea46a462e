"""Online HDPO rollouts, without Ray: sample k answers per prompt from the current policy, tokenize every candidate
(the k samples and the human answer) and compute the frozen reference's log-probs, then turn critic distances into
pairs. ``distributed/online_pairs.py`` runs :class:`RolloutWorker` as a restartable Ray actor and pipelines it with the
critic pool.

A rollout is a pure function of (prompts, policy weights, seed): sampling is seeded per call, so a rollout that an
actor restart re-executes returns the same candidates, and the online stream of pairs is reproducible.

The sampling backend is pluggable: :class:`HFGenerationBackend` (HF ``generate``) is the default; any class with
the same three methods, named as ``package.module:ClassName`` in ``hdpo.online.generation_backend``, replaces it (a vLLM
engine on GPU clusters).
"""

from __future__ import annotations

import dataclasses
import importlib
import time
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import numpy as np
import torch

from polyalign_ray.config import GenerationConfig, ModelConfig
from polyalign_ray.critic.prompts import prompt_view
from polyalign_ray.generation import generate_responses
from polyalign_ray.hdpo_data import (
    TokenizedPair,
    choose_online_pair,
    labels_are_empty,
    reference_sequence_logps,
    tokenize_answer,
    weights_for_pairs,
)
from polyalign_ray.models import apply_lora, load_causal_lm, load_tokenizer

SEED_STRIDE = 100_003
"""Rollout batch b samples with generation seed offset b * SEED_STRIDE (batches never share a seed)."""


class GenerationBackend(Protocol):
    """Samples answers from the policy being trained and takes its new weights."""

    def __init__(self, model_path: str, model: ModelConfig, generation: GenerationConfig): ...

    def generate(self, records: Sequence[Mapping[str, Any]], seed: int) -> list[str]:
        """One sampled answer per record (records repeat for several samples), reproducible for a seed."""

    def load_weights(self, state_dict: Mapping[str, torch.Tensor]) -> None:
        """Replace the policy's weights (the trainer's full state dict, LoRA names included)."""


class HFGenerationBackend:
    """HF ``generate`` on the policy (the same renderer and decoding as every other stage)."""

    def __init__(self, model_path: str, model: ModelConfig, generation: GenerationConfig):
        self.model_config = model
        self.settings = generation
        self.tokenizer = load_tokenizer(model_path)
        self.model = apply_lora(load_causal_lm(model_path, model), model.lora)
        if generation.use_gpu:
            self.model = self.model.cuda()

    def generate(self, records: Sequence[Mapping[str, Any]], seed: int) -> list[str]:
        return generate_responses(
            self.model,
            self.tokenizer,
            records,
            self.settings,
            profile_conditioning=self.model_config.profile_conditioning,
            max_prompt_tokens=self.model_config.max_length,
            seed_offset=seed,
        )

    def load_weights(self, state_dict: Mapping[str, torch.Tensor]) -> None:
        self.model.load_state_dict(state_dict)


def backend_class(spec: str) -> type:
    """``hf`` -> :class:`HFGenerationBackend`; ``package.module:ClassName`` -> that class (imported)."""
    if spec == "hf":
        return HFGenerationBackend
    module_name, _, class_name = spec.partition(":")
    try:
        return getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as exc:
        raise ValueError(
            f"hdpo.online.generation_backend {spec!r} cannot be imported ({exc}); give 'hf' or an importable "
            "package.module:ClassName"
        ) from exc


class RolloutWorker:
    """Holds the sampling backend (kept at the trainer's latest pushed weights, ``version`` = its update count)
    and a frozen copy of the starting policy, the reference of the HDPO loss."""

    def __init__(
        self,
        model_path: str,
        model: ModelConfig,
        generation: GenerationConfig,
        *,
        rollouts_per_prompt: int,
        include_human: bool,
        backend: str = "hf",
        torch_threads: int = 1,
    ):
        if torch_threads and not generation.use_gpu:
            torch.set_num_threads(torch_threads)
        self.model_config = model
        self.k = rollouts_per_prompt
        self.include_human = include_human
        self.tokenizer = load_tokenizer(model_path)
        self.backend = backend_class(backend)(model_path, model, generation)
        self.reference = load_causal_lm(model_path, model).eval()
        for parameter in self.reference.parameters():
            parameter.requires_grad_(False)
        if generation.use_gpu:
            self.reference = self.reference.cuda()
        self.version = 0

    def load_weights(self, state_dict: Mapping[str, torch.Tensor], version: int) -> None:
        self.backend.load_weights(state_dict)
        self.version = version

    def rollout(self, records: Sequence[Mapping[str, Any]], seed: int) -> dict[str, Any]:
        """Candidates of each prompt with token ids, labels and reference log-probs, plus the flat ``texts``,
        ``buckets`` and ``text_prompts`` lists the critic scores (in candidate order). Candidates whose answer has
        no token left after truncation are left out."""
        started = time.time()
        repeated = [record for _ in range(self.k) for record in records]
        samples = self.backend.generate(repeated, seed * SEED_STRIDE)
        prompts, sequences = [], []
        for i, record in enumerate(records):
            answers = [(samples[j * len(records) + i], False) for j in range(self.k)]
            if self.include_human:
                answers.append((str(record["response"]), True))
            candidates = []
            for text, human in answers:
                ids, labels = tokenize_answer(
                    self.tokenizer,
                    record,
                    text,
                    max_length=self.model_config.max_length,
                    profile_conditioning=self.model_config.profile_conditioning,
                )
                if labels_are_empty(labels):
                    continue
                candidates.append({"text": text, "human": human, "ids": ids, "labels": labels})
                sequences.append((ids, labels))
            prompts.append({"id": record["id"], "bucket_id": record["bucket_id"], "candidates": candidates})
        logps = reference_sequence_logps(self.reference, sequences, self.tokenizer.pad_token_id)
        flat = [c for p in prompts for c in p["candidates"]]
        for candidate, value in zip(flat, logps, strict=True):
            candidate["reference_logps"] = float(value)
        return {
            "version": self.version,
            "seed": seed,
            "prompts": prompts,
            "texts": [c["text"] for c in flat],
            "buckets": [p["bucket_id"] for p in prompts for _ in p["candidates"]],
            # one view per prompt, the same object for each of its candidates (pickled once in the rollout)
            "text_prompts": [
                view
                for view, p in zip(map(prompt_view, records), prompts, strict=True)
                for _ in p["candidates"]
            ],
            "started": started,
            "finished": time.time(),
        }


@dataclasses.dataclass
class PairBuildCounts:
    """Reconciles: prompts = pairs + no_pair (no pair qualified: gap below the margin, identical texts or too
    few candidates)."""

    prompts: int = 0
    candidates: int = 0
    pairs: int = 0
    no_pair: int = 0


def pairs_from_rollout(
    rollout: Mapping[str, Any],
    distances: np.ndarray,
    *,
    version: int,
    batch_index: int,
    margin: float,
    include_human: bool,
    rarity: Mapping[str, float],
    weight_args: Mapping[str, float],
    counts: PairBuildCounts,
) -> list[TokenizedPair]:
    """Pairs of one scored rollout batch (METHOD.md section 5, online), weighted like offline pairs."""
    chosen_rejected: list[tuple[Mapping[str, Any], dict, dict, float, float]] = []
    offset = 0
    for prompt in rollout["prompts"]:
        candidates = prompt["candidates"]
        prompt_distances = [float(d) for d in distances[offset : offset + len(candidates)]]
        offset += len(candidates)
        counts.prompts += 1
        counts.candidates += len(candidates)
        choice = choose_online_pair(
            prompt_distances,
            [c["human"] for c in candidates],
            [c["text"] for c in candidates],
            margin=margin,
            include_human=include_human,
        )
        if choice is None:
            counts.no_pair += 1
            continue
        c, r = choice
        chosen_rejected.append(
            (prompt, candidates[c], candidates[r], prompt_distances[c], prompt_distances[r])
        )
    if offset != len(distances):
        raise ValueError(f"rollout has {offset} candidates but {len(distances)} distances")
    weights = weights_for_pairs(
        [p["bucket_id"] for p, *_ in chosen_rejected],
        [dc for *_, dc, _ in chosen_rejected],
        [dr for *_, dr in chosen_rejected],
        rarity,
        **weight_args,
    )
    out = []
    for (prompt, chosen, rejected, dc, dr), weight in zip(chosen_rejected, weights, strict=True):
        out.append(
            TokenizedPair(
                bucket_id=prompt["bucket_id"],
                chosen_ids=chosen["ids"],
                chosen_labels=chosen["labels"],
                rejected_ids=rejected["ids"],
                rejected_labels=rejected["labels"],
                chosen_distance=dc,
                rejected_distance=dr,
                weight=float(weight),
                reference_chosen_logps=chosen["reference_logps"],
                reference_rejected_logps=rejected["reference_logps"],
                version=version,
                pair_id=f"{prompt['id']}#b{batch_index}",
            )
        )
    counts.pairs += len(out)
    return out


def overlap_seconds(busy: Sequence[tuple[float, float]], training: Sequence[tuple[float, float]]) -> float:
    """Total time inside both an interval of ``busy`` and an interval of ``training``. ``training`` intervals are
    disjoint; ``busy`` ones may overlap (two actors busy at once count twice, like their busy seconds)."""
    busy, training = sorted(busy), sorted(training)
    total, j = 0.0, 0
    for start, end in busy:
        while j < len(training) and training[j][1] <= start:
            j += 1
        k = j
        while k < len(training) and training[k][0] < end:
            total += max(0.0, min(end, training[k][1]) - max(start, training[k][0]))
            k += 1
    return total
