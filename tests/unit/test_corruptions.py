"""Corrupted answers for the critic (``critic/corruptions.py``): each kind by hand, seeded, and the critic trained
with them scores corrupted held-out answers farther than their originals (its gate)."""

from __future__ import annotations

import random

import pytest

from polyalign_ray.config import CriticConfig
from polyalign_ray.critic.corruptions import (
    KINDS,
    corrupt_records,
    degenerate,
    repeat,
    shuffle,
    tokens_with_spacing,
    truncate,
)
from polyalign_ray.critic.train import train_critic
from tests.critic_fixtures import EN_BUCKET, ZH_BUCKET, synthetic_examples, synthetic_records


def test_tokens_keep_their_spacing_so_a_prefix_is_the_texts_prefix() -> None:
    assert tokens_with_spacing("Hi there, you!") == ["Hi ", "there", ", ", "you", "!"]
    assert tokens_with_spacing("我喜欢茶。") == ["我", "喜", "欢", "茶", "。"]
    assert "".join(tokens_with_spacing("a  b")) == "a  b"


def test_each_kind_by_hand() -> None:
    rng = random.Random(0)
    looped = repeat("One. Two.", rng)
    assert looped.count("Two.") >= 2 and looped.startswith("One.")
    cut = truncate("the quick brown fox jumps over the lazy dog today", random.Random(1))
    assert "the quick brown fox jumps over the lazy dog today".startswith(cut) and len(cut.split()) <= 6
    stuck = degenerate("我喜欢茶", random.Random(2))
    assert len(set(stuck)) == 1 and len(stuck) >= 8
    words = degenerate("hello world", random.Random(3)).split(" ")
    assert len(set(words)) == 1 and len(words) >= 8
    salad = shuffle("a b c d e f g h", random.Random(4))
    assert sorted(salad.split()) == list("abcdefgh") and salad != "a b c d e f g h"
    assert shuffle("hi", random.Random(0)) == "hi"


def test_corrupt_records_cycles_kinds_moves_across_buckets_and_is_seeded() -> None:
    records = synthetic_records(24, seed=1)
    corrupted = corrupt_records(records, per_record=2, seed=5)
    assert len(corrupted) == 48
    # one bucket per language here: a move to another bucket of the same language has no candidate
    assert {c.kind for c in corrupted} == set(KINDS) - {"move_bucket"}
    assert corrupted == corrupt_records(records, per_record=2, seed=5)
    by_id = {r["id"]: r for r in records}
    for item in corrupted:
        source = by_id[item.source]
        if item.kind == "relabel":  # this answer, scored in another bucket
            assert item.text == source["response"] and item.bucket != source["bucket_id"]
            continue
        assert item.bucket == source["bucket_id"]
        if item.kind == "move_language":  # another language's human answer, scored in this bucket
            donor = next(r for r in records if r["response"] == item.text)
            assert donor["bucket_id"].split("|")[0] != source["bucket_id"].split("|")[0]
    with pytest.raises(ValueError, match="unknown corruption"):
        corrupt_records(records, kinds=("rot13",))
    # one language only: a move to another bucket has no candidate and falls back to a text corruption
    english = [r for r in records if r["bucket_id"] == EN_BUCKET]
    assert {c.kind for c in corrupt_records(english, kinds=("move_bucket",))} == {"repeat"}


def critic_setup(corruptions_per_prompt: int) -> tuple[list, CriticConfig]:
    examples, _ = synthetic_examples(corrupted_per_record=corruptions_per_prompt)
    config = CriticConfig(
        hash_buckets=4096,
        embedding_dim=16,
        hidden_dim=32,
        epochs=15,
        batch_size=64,
        corruptions_per_prompt=corruptions_per_prompt,
        min_spearman=0.0,
    )
    return examples, config


def test_a_critic_trained_with_corruptions_scores_them_farther_and_passes_its_gate() -> None:
    examples, config = critic_setup(corruptions_per_prompt=2)
    assert sum(e.kind in KINDS for e in examples) == 800
    assert {e.bucket for e in examples} == {EN_BUCKET, ZH_BUCKET}
    _, _, summary = train_critic(examples, config)
    rates = summary["heldout_corrupted_farther_rate"]
    assert set(rates) == set(KINDS) - {"move_bucket"}
    assert min(rates.values()) >= config.min_corruption_farther_rate, rates
    assert summary["gates_passed"], summary["gate_failures"]
    assert summary["train_corrupted"] > 0 and summary["heldout_corrupted"] > 0


def test_the_corruption_gate_fails_a_critic_that_is_blind_to_them() -> None:
    """Trained without corrupted answers but gated on held-out ones with an impossible rate: the gate names the
    kinds and the fix."""
    examples, config = critic_setup(corruptions_per_prompt=2)
    train_only_plain = [e for e in examples if e.heldout or e.kind not in KINDS]
    blind = CriticConfig(**{**config.__dict__, "min_corruption_farther_rate": 1.0})
    _, _, summary = train_critic(train_only_plain, blind)
    assert not summary["gates_passed"]
    assert any("critic.corruptions_per_prompt" in failure for failure in summary["gate_failures"])
