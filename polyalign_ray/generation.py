"""Sampling answers from a policy for records: the same prompt renderer as training, left-padded batches, HF
``generate``. Used for the critic's model answers, offline HDPO pairs, rollouts and evaluation; Ray Data runs it
in actors (``distributed/batch_generation.py``), and a vLLM backend can replace it on GPU clusters."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from polyalign_ray.config import GenerationConfig
from polyalign_ray.prompting import render_prompt


def batch_seed(seed: int, batch_number: int) -> int:
    """The torch seed of one generation batch: a hash of the run's seed and the batch's number, so no two batches
    of a pass draw the same random numbers and no batch of one seed repeats a batch of another (``seed + number``
    would: seed 0's batch 1 is seed 1's batch 0)."""
    digest = hashlib.blake2b(f"{seed}:{batch_number}".encode(), digest_size=7).digest()
    return int.from_bytes(digest, "big")


def generate_responses(
    model: Any,
    tokenizer: Any,
    records: Sequence[Mapping[str, Any]],
    settings: GenerationConfig,
    *,
    profile_conditioning: bool = False,
    include_length: bool = True,
    max_prompt_tokens: int = 512,
    seed_offset: int = 0,
) -> list[str]:
    """One sampled answer per record, decoded without special tokens. ``include_length=False`` leaves the gold length
    bin out of profile-conditioned prompts (evaluation: it is unknown at deployment). Sampling is seeded per batch
    with :func:`batch_seed` of ``settings.seed`` and ``seed_offset + batch index``, so a rerun on the same records
    gives the same answers, and records cut into calls of one batch each (Ray Data) give the answers of one call
    over all of them when each call's ``seed_offset`` is its batch's number."""
    model.eval()
    device = next(model.parameters()).device
    padding_side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    out: list[str] = []
    try:
        for start in range(0, len(records), settings.batch_size):
            batch = records[start : start + settings.batch_size]
            prompts = [
                render_prompt(
                    tokenizer, r, profile_conditioning=profile_conditioning, include_length=include_length
                )
                for r in batch
            ]
            encoded = tokenizer(
                prompts,
                return_tensors="pt",
                padding=True,
                truncation=True,
                max_length=max_prompt_tokens,
                add_special_tokens=False,
            ).to(device)
            torch.manual_seed(batch_seed(settings.seed, seed_offset + start // settings.batch_size))
            with torch.no_grad():
                generated = model.generate(
                    **encoded,
                    max_new_tokens=settings.max_new_tokens,
                    do_sample=settings.do_sample,
                    temperature=settings.temperature if settings.do_sample else None,
                    top_p=settings.top_p if settings.do_sample else None,
                    pad_token_id=tokenizer.pad_token_id,
                    eos_token_id=tokenizer.eos_token_id,
                    use_cache=True,  # training configs turn the KV cache off; without it generation is ~4x slower
                )
            new_tokens = generated[:, encoded["input_ids"].shape[1] :]
            out.extend(t.strip() for t in tokenizer.batch_decode(new_tokens, skip_special_tokens=True))
    finally:
        tokenizer.padding_side = padding_side
    return out
