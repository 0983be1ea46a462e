"""Pair building for HDPO: offline pairs and their counts, rarity, online pair choice, rollouts to pairs, the
overlap measure. Golden values worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest

from polyalign_ray.hdpo_data import bucket_rarity, choose_online_pair, offline_pairs, weights_for_pairs
from polyalign_ray.rollout_worker import PairBuildCounts, overlap_seconds, pairs_from_rollout


def record(key: str, response: str, bucket: str = "en|single|qa|short") -> dict:
    return {"id": key, "bucket_id": bucket, "prompt": "q", "response": response}


def test_offline_pairs_drop_exact_matches_and_empty_samples_and_reconcile() -> None:
    records = [record("a", "Human answer."), record("b", "Same"), record("c", "x")]
    samples = {"a": ["model answer", "  "], "b": [" Same "]}
    pairs, counts = offline_pairs(records, samples)
    assert [(p["pair_id"], p["chosen"], p["rejected"]) for p in pairs] == [
        ("a#s0", "Human answer.", "model answer")
    ]
    assert counts == {
        "records": 3,
        "records_without_sample": 1,
        "candidates": 3,
        "pairs": 1,
        "dropped_exact_match": 1,
        "dropped_empty_sample": 1,
    }
    assert (
        counts["candidates"]
        == counts["pairs"] + counts["dropped_exact_match"] + counts["dropped_empty_sample"]
    )
    assert pairs[0]["bucket_id"] == "en|single|qa|short"


def test_bucket_rarity_is_min_count_over_count() -> None:
    assert bucket_rarity({"a": 10, "b": 40, "c": 20, "empty": 0}) == {"a": 1.0, "b": 0.25, "c": 0.5}
    assert bucket_rarity({}) == {}


def test_weights_for_pairs_by_hand() -> None:
    # w = clip(1 + 0.5 * rarity + 1.0 * max(0, d_r - d_c), 0.5, 3)
    weights = weights_for_pairs(
        ["a", "b", "unknown", "a"],
        [0.2, 1.0, 0.0, 0.0],
        [0.7, 0.5, 0.0, 9.0],
        {"a": 1.0, "b": 0.25},
        a=0.5,
        c=1.0,
        w_min=0.5,
        w_max=3.0,
    )
    assert weights.tolist() == pytest.approx([2.0, 1.125, 1.0, 3.0])


@pytest.mark.parametrize(
    ("distances", "human", "texts", "margin", "include_human", "expected"),
    [
        # human is the lowest (0.1) and the worst sample is 0.9: (human, that sample)
        ([0.5, 0.9, 0.1], [False, False, True], ["s0", "s1", "h"], 0.1, True, (2, 1)),
        # without the human answer: best sample 0.5 vs worst 0.9
        ([0.5, 0.9, 0.1], [False, False, True], ["s0", "s1", "h"], 0.1, False, (0, 1)),
        # gap 0.4 not above a margin of 0.4
        ([0.5, 0.9, 0.7], [False, False, True], ["s0", "s1", "h"], 0.4, False, None),
        # identical texts are no preference
        ([0.1, 0.9], [False, False], ["same", " same"], 0.0, True, None),
        # ties go to the earlier candidate for chosen and for rejected
        ([0.3, 0.3, 0.8, 0.8], [False, False, False, False], ["a", "b", "c", "d"], 0.0, True, (0, 2)),
        # one sample and no human: nothing to compare
        ([0.3], [False], ["a"], 0.0, True, None),
    ],
)
def test_choose_online_pair(distances, human, texts, margin, include_human, expected) -> None:
    assert choose_online_pair(distances, human, texts, margin=margin, include_human=include_human) == expected


def candidate(text: str, human: bool, ref: float) -> dict:
    return {"text": text, "human": human, "ids": np.arange(3), "labels": np.arange(3), "reference_logps": ref}


def test_pairs_from_rollout_counts_and_fields() -> None:
    rollout = {
        "prompts": [
            {
                "id": "p1",
                "bucket_id": "a",
                "candidates": [
                    candidate("x", False, -1.0),
                    candidate("y", False, -2.0),
                    candidate("h", True, -3.0),
                ],
            },
            {
                "id": "p2",
                "bucket_id": "b",
                "candidates": [candidate("u", False, -4.0), candidate("v", False, -5.0)],
            },
        ]
    }
    counts = PairBuildCounts()
    pairs = pairs_from_rollout(
        rollout,
        np.array([0.4, 0.9, 0.1, 0.5, 0.55]),
        version=7,
        batch_index=3,
        margin=0.1,
        include_human=True,
        rarity={"a": 1.0},
        weight_args={"a": 0.5, "c": 1.0, "w_min": 0.5, "w_max": 3.0},
        counts=counts,
    )
    assert vars(counts) == {"prompts": 2, "candidates": 5, "pairs": 1, "no_pair": 1}
    (pair,) = pairs
    assert (pair.pair_id, pair.version, pair.bucket_id) == ("p1#b3", 7, "a")
    assert (pair.chosen_distance, pair.rejected_distance) == (0.1, 0.9)
    assert (pair.reference_chosen_logps, pair.reference_rejected_logps) == (-3.0, -2.0)
    assert pair.weight == pytest.approx(1 + 0.5 * 1.0 + 0.8)
    with pytest.raises(ValueError, match="5 candidates but 4 distances"):
        pairs_from_rollout(
            rollout,
            np.zeros(4),
            version=0,
            batch_index=0,
            margin=0.0,
            include_human=True,
            rarity={},
            weight_args={"a": 0.0, "c": 0.0, "w_min": 1.0, "w_max": 1.0},
            counts=PairBuildCounts(),
        )


def test_overlap_seconds_by_hand() -> None:
    training = [(0.0, 2.0), (3.0, 5.0)]
    assert overlap_seconds([(1.0, 4.0)], training) == pytest.approx(2.0)  # 1-2 and 3-4
    assert overlap_seconds([(2.0, 3.0)], training) == 0.0  # only in the gap
    assert overlap_seconds([(1.0, 4.0), (1.5, 3.5)], training) == pytest.approx(3.0)  # two actors: 2 + 1
    assert overlap_seconds([(6.0, 7.0)], training) == 0.0


def test_online_weight_mean_never_depends_on_the_batch_it_normalizes() -> None:
    """One pair per step with weight 3: normalized by the batch's own mean (the former running mean on step 1) the
    weight cancels and the preference loss is ln 2 whatever the weight; held, step 1 divides by the prior (here
    the prompts' mean rarity weight: buckets a (rarity 1) and b (rarity 0), a = 0.5 -> clip(1.5), clip(1.0) ->
    mean 1.25) and step 2 by step 1's pairs."""
    import math

    import torch

    from polyalign_ray.hdpo_data import HeldWeightMean
    from polyalign_ray.losses import hdpo_loss

    held = HeldWeightMean.from_prompts(["a", "b"], {"a": 1.0, "b": 0.0}, a=0.5, w_min=0.5, w_max=3.0)
    assert held.value == pytest.approx(1.25)

    def preference(weight_mean: float) -> float:
        zero = torch.zeros(1, dtype=torch.float64)
        out = hdpo_loss(
            policy_chosen_logps=zero,
            policy_rejected_logps=zero,
            reference_chosen_logps=zero,
            reference_rejected_logps=zero,
            chosen_distance=zero,
            rejected_distance=zero,
            weights=torch.tensor([3.0], dtype=torch.float64),
            weight_mean=weight_mean,
        )
        return out.preference_loss.item()

    assert preference(3.0) == pytest.approx(math.log(2))  # the batch's own mean: the weight is gone
    step_1 = held.value
    held.update([3.0])
    assert preference(step_1) == pytest.approx(3.0 * math.log(2) / 1.25)
    assert held.value == 3.0  # step 2 divides by step 1's pairs
    held.update([1.0, 2.0])
    assert held.value == pytest.approx(2.0)
    again = HeldWeightMean.from_state(held.state())
    assert (again.value, again.prior) == (2.0, 1.25)
    assert HeldWeightMean.from_prompts([], {}, a=0.5, w_min=0.5, w_max=3.0).value == 1.0
    with pytest.raises(ValueError):
        HeldWeightMean(0.0)
