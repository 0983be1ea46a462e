"""Seeded sampling: every batch of a pass draws its own random numbers, and a pass cut into one call per batch (as
Ray Data runs it) gives the answers of one call over every record (no Ray started)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from polyalign_ray.config import GenerationConfig, ModelConfig
from polyalign_ray.generation import batch_seed, generate_responses
from polyalign_ray.models import builtin_model, train_builtin_tokenizer

RECORD = {
    "id": "r0",
    "prompt": "Who wrote Hamlet?",
    "context": "",
    "history": [],
    "system": "",
    "response": "Shakespeare.",
    "language": "en",
    "track": "single",
    "family": "qa",
    "length_bin": "short",
}


@pytest.fixture(scope="module")
def policy():
    texts = ["Who wrote Hamlet? Shakespeare wrote plays and poems. hi hello", "你好 世界 谢谢"] * 20
    tokenizer = train_builtin_tokenizer(texts, 300, 64)
    torch.manual_seed(0)
    model = builtin_model(
        ModelConfig(builtin_hidden_size=32, builtin_intermediate_size=64, builtin_vocab_size=300), tokenizer
    )
    return model, tokenizer


def test_batch_seeds_differ_between_batches_and_between_run_seeds() -> None:
    """``seed + batch number`` would give seed 0's batch 1 the random numbers of seed 1's batch 0."""
    seeds = [batch_seed(seed, number) for seed in range(4) for number in range(100)]
    assert len(set(seeds)) == len(seeds)
    assert batch_seed(0, 1) != batch_seed(1, 0)
    assert batch_seed(3, 7) == batch_seed(3, 7)
    assert all(0 <= s < 2**56 for s in seeds)  # within torch.manual_seed's range


def test_one_call_per_batch_gives_the_answers_of_one_call_and_batches_draw_their_own_numbers(policy) -> None:
    model, tokenizer = policy
    settings = GenerationConfig(batch_size=1, max_new_tokens=8, seed=5)
    # the same prompt eight times, one per batch: only the batch's seed tells their samples apart
    records = [dict(RECORD, id=f"r{i}") for i in range(8)]
    whole = generate_responses(model, tokenizer, records, settings)
    per_batch = [
        generate_responses(model, tokenizer, records[i : i + 1], settings, seed_offset=i)[0]
        for i in range(len(records))
    ]
    assert per_batch == whole
    assert len(set(whole)) > 1  # with one seed for every batch all eight were the same answer
    assert generate_responses(model, tokenizer, records, settings) == whole  # a rerun reproduces them
    reseeded = generate_responses(model, tokenizer, records, dataclasses.replace(settings, seed=6))
    assert reseeded != whole
