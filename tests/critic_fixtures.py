"""A small synthetic critic setup shared by the critic unit and ray tests: human answers of two buckets, model
answers that drift away from them (repetitive, too long, wrong script), references from the human train answers."""

from __future__ import annotations

import random

import numpy as np

from polyalign_ray.critic.corruptions import corrupt_records
from polyalign_ray.critic.train import CriticExample, build_critic_examples
from polyalign_ray.features import features_matrix
from polyalign_ray.references import build_references
from tests.loops.tiny import EN_WORDS

WORDS = [*EN_WORDS, "yes", "no", "maybe"]
ZH = "我们今天天气很好喜欢喝茶猫坐在垫子上你呢是的"
EN_BUCKET = "en|single|dialogue|short"
ZH_BUCKET = "zh|single|dialogue|short"


def human_answer(rng: random.Random, bucket: str) -> str:
    if bucket == EN_BUCKET:
        return " ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 12))).capitalize() + rng.choice(".?!")
    return "".join(rng.choice(ZH) for _ in range(rng.randint(5, 15))) + rng.choice("。？！")


def model_answer(rng: random.Random, bucket: str) -> str:
    """A drifted answer: how far it drifts is random, so targets spread over a range."""
    kind = rng.random()
    if kind < 0.4:  # degenerate repetition of varying length
        unit = rng.choice(WORDS) + " " if bucket == EN_BUCKET else rng.choice(ZH)
        return unit * rng.randint(3, 60)
    if kind < 0.7:  # far too long
        return " ".join(human_answer(rng, bucket) for _ in range(rng.randint(2, 12)))
    return human_answer(rng, bucket)  # sometimes indistinguishable from a human answer


def prompt_for(answer: str, rng: random.Random) -> str:
    """A prompt that shares two of its answer's words (characters in Chinese), as a question and its reply often
    do: what lets a critic that sees the prompt tell another prompt's answer (``swap``) from this one."""
    english = " " in answer
    pieces = answer.rstrip(".?!").lower().split() if english else list(answer.rstrip("。？！"))
    chosen = rng.sample(pieces, min(2, len(pieces)))
    return "tell me about " + " ".join(chosen) if english else "说说" + "".join(chosen)


def synthetic_records(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    prompt_rng = random.Random(seed + 7919)  # apart, so the answers stay those of the seed
    records = []
    for i in range(n):
        bucket = EN_BUCKET if i % 2 == 0 else ZH_BUCKET
        response = human_answer(rng, bucket)
        records.append(
            {
                "id": f"r{i}",
                "bucket_id": bucket,
                "split": "val" if i % 5 == 0 else "train",
                "prompt": prompt_for(response, prompt_rng),
                "history": [],
                "response": response,
            }
        )
    return records


def synthetic_examples(
    n: int = 400,
    seed: int = 0,
    *,
    with_model_answers: bool = True,
    corrupted_per_record: int = 0,
    corruption_gap: float = 0.0,
) -> tuple[list[CriticExample], object]:
    """Examples of ``n`` synthetic records (human, drifted model answers, and ``corrupted_per_record`` corrupted
    copies of each human answer) and the references their targets come from."""
    records = synthetic_records(n, seed)
    train = [r for r in records if r["split"] == "train"]
    references = build_references(
        features_matrix([r["response"] for r in train]),
        [r["bucket_id"] for r in train],
        ["train"] * len(train),
        quantile_levels=(0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95),
        min_count=10,
        band=(0.1, 0.9),
        scale_floor=0.05,
    )
    rng = random.Random(seed + 1)
    samples = {r["id"]: [model_answer(rng, r["bucket_id"])] for r in records} if with_model_answers else {}
    corrupted = (
        corrupt_records(records, per_record=corrupted_per_record, seed=seed) if corrupted_per_record else []
    )
    return build_critic_examples(
        records, samples, references, corrupted, corruption_gap=corruption_gap
    ), references


def targets(examples) -> np.ndarray:
    return np.asarray([e.target for e in examples])
