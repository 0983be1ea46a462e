"""The critic's view of the prompt (``critic/prompts.py``): each statistic worked by hand, prompts withheld by whole
groups in training, and a critic that sees prompts tells another prompt's answer from the original."""

from __future__ import annotations

import math

import numpy as np
import pytest

from polyalign_ray.config import CriticConfig
from polyalign_ray.critic.prompts import (
    PROMPT_FEATURE_NAMES,
    prompt_features,
    prompt_ngram_text,
    prompt_statistics,
    prompt_view,
)
from polyalign_ray.critic.scorer import CriticScorer, prompts_of_table
from polyalign_ray.critic.train import save_critic_bundle, train_critic, withhold_prompts
from tests.critic_fixtures import synthetic_examples

SINGLE = "en|single|dialogue|short"
MULTI = "en|multi|dialogue|short"


def test_statistics_by_hand() -> None:
    prompt = {"prompt": "where is the cat?", "history": []}
    stats = dict(zip(PROMPT_FEATURE_NAMES, prompt_statistics("the cat sat", SINGLE, prompt), strict=True))
    assert stats["prompt_given"] == 1.0
    assert (
        stats["track_mismatch"] == 0.0
    )  # no earlier exchange: a single-turn conversation in a single bucket
    assert stats["history_turns"] == 0.0
    assert stats["answer_tokens_in_prompt"] == pytest.approx(2 / 3)  # the, cat of the, cat, sat
    assert stats["prompt_tokens_in_answer"] == pytest.approx(2 / 4)  # the, cat of where, is, the, cat
    # bigrams of "the cat sat": th he "e " " c" ca at "t " " s" sa (9); of "where is the cat?": 14; shared:
    # th he "e " " c" ca at (6); union 9 + 14 - 6 = 17
    assert stats["last_turn_bigram_jaccard"] == pytest.approx(6 / 17)
    # the same answer in the multi-turn bucket: the conversation has no earlier exchange, so it does not fit
    assert prompt_statistics("the cat sat", MULTI, prompt)[1] == 1.0


def test_history_counts_and_decides_the_track() -> None:
    prompt = {
        "prompt": "and now?",
        "history": [{"role": "user", "content": "hello cat"}, {"role": "assistant", "content": "hi"}],
    }
    stats = dict(zip(PROMPT_FEATURE_NAMES, prompt_statistics("cat now", MULTI, prompt), strict=True))
    assert stats["track_mismatch"] == 0.0 and stats["history_turns"] == pytest.approx(math.log(3))
    assert stats["answer_tokens_in_prompt"] == 1.0  # "cat" from the history, "now" from the last turn
    assert prompt_statistics("cat now", SINGLE, prompt)[1] == 1.0
    # history as a JSON string (some writers store nested columns so) reads the same
    as_json = {
        **prompt,
        "history": '[{"role": "user", "content": "hello cat"}, {"role": "assistant", "content": "hi"}]',
    }
    assert prompt_statistics("cat now", MULTI, as_json) == prompt_statistics("cat now", MULTI, prompt)
    assert prompt_ngram_text(prompt) == "hi\nand now?"


def test_chinese_counts_characters_and_no_prompt_is_zeros() -> None:
    stats = prompt_statistics("我喜欢茶", "zh|single|dialogue|short", {"prompt": "你喜欢茶吗"})
    assert stats[3] == pytest.approx(3 / 4) and stats[4] == pytest.approx(3 / 5)
    assert prompt_statistics("anything", SINGLE, None) == [0.0] * len(PROMPT_FEATURE_NAMES)
    matrix = prompt_features(["a", "b"], [SINGLE, MULTI], [None, {"prompt": "a"}])
    assert matrix.shape == (2, len(PROMPT_FEATURE_NAMES)) and matrix[0].sum() == 0 and matrix[1, 1] == 1.0
    with pytest.raises(ValueError, match="prompts"):
        prompt_features(["a"], [SINGLE], [])
    assert prompt_view({"prompt": "q", "history": None, "extra": 1}) == {
        "prompt": "q",
        "history": [],
        "context": "",
    }


def test_prompts_are_withheld_by_whole_groups_and_swaps_leave_with_them() -> None:
    examples, _ = synthetic_examples(n=200, corrupted_per_record=8)
    assert all(e.prompt is not None for e in examples)
    assert withhold_prompts(examples, 0.0, 0) == examples
    alone = withhold_prompts(examples, 1.0, 0)
    assert all(e.prompt is None for e in alone) and not any(e.kind == "swap" for e in alone)
    assert len(alone) == len(examples) - sum(e.kind == "swap" for e in examples)
    some = withhold_prompts(examples, 0.3, 0)
    withheld = {e.group for e in some if e.prompt is None}
    assert all(e.prompt is None for e in some if e.group in withheld)  # the whole group or none of it
    assert 0.15 < len(withheld) / len({e.group for e in examples}) < 0.45


def test_a_critic_that_sees_prompts_tells_another_prompts_answer_and_still_scores_answers_alone(
    tmp_path,
) -> None:
    examples, references = synthetic_examples(corrupted_per_record=8)
    config = CriticConfig(
        hash_buckets=4096, embedding_dim=16, hidden_dim=32, epochs=15, batch_size=64, min_spearman=0.0
    )
    model, meta, summary = train_critic(examples, config)
    assert meta["prompt"] and meta["dims"]["prompt_interaction"]
    # with its prompt, an answer to another prompt of the same bucket scores farther than the original
    assert summary["heldout_corrupted_farther_rate"]["swap"] >= 0.75, summary[
        "heldout_corrupted_farther_rate"
    ]
    # without prompts the swaps are left out and the other kinds still rank
    alone = summary["heldout_no_prompt_corrupted_farther_rate"]
    assert "swap" not in alone and min(alone.values()) >= config.min_corruption_farther_rate, alone
    save_critic_bundle(tmp_path, model, meta, summary, references)
    scorer = CriticScorer(tmp_path)
    held = [e for e in examples if e.heldout and e.kind == "human"][:20]
    texts, buckets, prompts = [e.text for e in held], [e.bucket for e in held], [e.prompt for e in held]
    with_prompts, without = scorer.score(texts, buckets, prompts), scorer.score(texts, buckets)
    assert np.all(with_prompts >= 0) and not np.allclose(with_prompts, without)
    # a rollout batch carries its candidates' prompts (rollout_worker.py: text_prompts)
    rollout = {"texts": texts, "buckets": buckets, "text_prompts": prompts}
    assert scorer.score_rollout(rollout)["scores"] == pytest.approx(with_prompts)
    # None for an item is the same as no prompts at all
    assert scorer.score(texts[:1], buckets[:1], [None]) == pytest.approx(without[:1])
    with pytest.raises(ValueError, match="prompts"):
        scorer.score(texts, buckets, prompts[:-1])


def test_a_critic_without_prompts_ignores_them_and_drops_swaps() -> None:
    examples, _ = synthetic_examples(n=200, corrupted_per_record=8)
    config = CriticConfig(
        hash_buckets=4096, embedding_dim=16, hidden_dim=32, epochs=3, use_prompt=False, min_spearman=0.0
    )
    _, meta, summary = train_critic(examples, config)
    assert not meta["prompt"] and not meta["dims"]["prompt_interaction"]
    assert "swap" not in summary["heldout_corrupted_farther_rate"]
    assert "heldout_no_prompt_corrupted_farther_rate" not in summary


def test_tables_carry_prompts_when_they_have_a_prompt_column() -> None:
    import pyarrow as pa

    assert prompts_of_table(pa.table({"response": ["a"], "bucket_id": [SINGLE]})) is None
    table = pa.table({"response": ["a", "b"], "bucket_id": [SINGLE] * 2, "prompt": ["q", None]})
    assert prompts_of_table(table) == [{"prompt": "q", "history": [], "context": ""}, None]


def test_one_embedding_call_for_answers_and_prompts_equals_two() -> None:
    """The model embeds the answers' and the prompts' n-gram bags in one call (one dense gradient for the table);
    each bag's mean is its own, so the interaction equals embedding each side alone."""
    import torch

    from polyalign_ray.critic.model import CriticModel

    torch.manual_seed(0)
    model = CriticModel(
        num_buckets=2, bucket_dim=4, text_dim=8, num_features=0, hidden_dim=16, hash_buckets=50,
        prompt_interaction=True,
    )  # fmt: skip
    ids, offsets = torch.tensor([1, 2, 3, 4, 5]), torch.tensor([0, 2])
    prompt_ids, prompt_offsets = torch.tensor([7, 8, 9]), torch.tensor([0, 1])
    mask = torch.tensor([1.0, 0.0])
    got = model(
        torch.tensor([0, 1]), torch.zeros((2, 0)), ngram_ids=ids, ngram_offsets=offsets,
        prompt_ngram_ids=prompt_ids, prompt_ngram_offsets=prompt_offsets, prompt_mask=mask,
    )  # fmt: skip
    text = model.ngram_embedding(ids, offsets)
    prompt = model.ngram_embedding(prompt_ids, prompt_offsets)
    hidden = torch.cat(
        [model.bucket_embedding(torch.tensor([0, 1])), text, prompt * text * mask[:, None]], dim=-1
    )
    want = torch.nn.functional.softplus(model.mlp(hidden).squeeze(-1))
    assert torch.allclose(got, want, atol=1e-6)


def test_a_feature_that_never_varied_in_training_is_left_out() -> None:
    """A column whose train std hit the floor (constant) standardizes to 0 for any value: the critic learned
    nothing from it, and a millionfold deviation would saturate its score."""
    from polyalign_ray.critic.train import CONSTANT_STD, standardize_features

    matrix = np.asarray([[1.0, 5.0], [3.0, 0.0]])
    out = standardize_features(matrix, np.asarray([2.0, 0.0]), np.asarray([0.5, CONSTANT_STD])).numpy()
    assert out.tolist() == [[-2.0, 0.0], [2.0, 0.0]]
