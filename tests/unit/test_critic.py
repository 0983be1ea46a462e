"""The critic: encoders, gates, training on human + model answers, and the scorer round trip."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from polyalign_ray.config import CriticConfig
from polyalign_ray.critic.encoders import hashed_ngram_ids, ngram_batch, ngram_id_arrays
from polyalign_ray.critic.scorer import SCORE_COLUMN, CriticScorer
from polyalign_ray.critic.train import (
    CriticExample,
    human_model_pairs,
    save_critic_bundle,
    spearman,
    train_critic,
)
from tests.critic_fixtures import synthetic_examples, targets

SMALL = CriticConfig(hash_buckets=4096, embedding_dim=16, hidden_dim=32, epochs=15, batch_size=64)


def test_hashed_ngrams_are_stable_and_bilingual() -> None:
    """ "ab": 1-grams a, b; 2-gram ab; word ab -> 4 ids, the same in every process (crc32, not hash())."""
    ids = hashed_ngram_ids("ab", 1000)
    assert len(ids) == 4
    assert ids == hashed_ngram_ids("ab", 1000)
    assert len(hashed_ngram_ids("你好吗", 1000)) == 3 + 2 + 1 + 1
    assert hashed_ngram_ids("", 1000) == hashed_ngram_ids("", 1000) != []
    flat, offsets = ngram_batch(ngram_id_arrays(["ab", "你好吗"], 1000))
    assert offsets.tolist() == [0, 4]
    assert len(flat) == 4 + 7


def test_spearman_golden() -> None:
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # ranks x = 1,2,3 ; y = 1,3,2 -> d = 0,1,1 -> 1 - 6*2/(3*8) = 0.5
    assert spearman([1, 2, 3], [1, 3, 2]) == pytest.approx(0.5)
    assert np.isnan(spearman([1, 1, 1], [1, 2, 3]))


def test_pairs_link_model_answers_to_the_human_answer_of_their_prompt() -> None:
    examples = [
        CriticExample("h", "b", 0.0, "p1", True, False),
        CriticExample("m", "b", 1.0, "p1", False, False),
        CriticExample("m2", "b", 1.0, "p2", False, False),  # its human answer is missing: no pair
    ]
    assert human_model_pairs(examples) == [(0, 1)]


def test_targets_of_human_answers_are_small_and_of_model_answers_spread() -> None:
    examples, _ = synthetic_examples()
    human = targets([e for e in examples if e.is_human and not e.heldout])
    model = targets([e for e in examples if not e.is_human])
    assert np.median(human) < 0.05
    assert model.mean() > 5 * human.mean()
    assert model.std() > 0.1


def test_critic_trained_on_human_and_model_answers_passes_the_gates() -> None:
    examples, _ = synthetic_examples()
    _, _, summary = train_critic(examples, SMALL)
    assert summary["gates_passed"], summary["gate_failures"]
    assert summary["heldout_spearman"] > 0.5
    assert summary["heldout_ranking_accuracy_human_below_model"] > 0.7
    assert summary["heldout_spread_ratio"] > 0.3


def test_critic_trained_on_human_answers_only_fails_the_gates() -> None:
    """The authors' defect: with human answers only, targets are ~0 and the critic cannot rank anything; the gates
    must refuse it rather than save a constant."""
    examples, _ = synthetic_examples(with_model_answers=False)
    _, _, summary = train_critic(examples, SMALL)
    assert not summary["gates_passed"]
    assert summary["gate_failures"]


def test_bundle_round_trip_scores_like_training(tmp_path: Path) -> None:
    import pyarrow as pa

    examples, references = synthetic_examples(200)
    model, meta, summary = train_critic(examples, SMALL)
    save_critic_bundle(tmp_path, model, meta, summary, references)
    scorer = CriticScorer(tmp_path)
    heldout = [e for e in examples if e.heldout]
    # the held-out gates score every answer under its prompt (critic.use_prompt), and so does the bundle here
    scores = scorer.score([e.text for e in heldout], [e.bucket for e in heldout], [e.prompt for e in heldout])
    assert (scores >= 0).all()
    assert spearman(scores, targets(heldout)) == pytest.approx(summary["heldout_spearman"], abs=1e-9)
    table = scorer(
        pa.table(
            {
                "response": [e.text for e in heldout[:3]],
                "bucket_id": [e.bucket for e in heldout[:3]],
                "prompt": [e.prompt["prompt"] for e in heldout[:3]],
                "history": [e.prompt["history"] for e in heldout[:3]],
            }
        )
    )
    # fp32 over a batch of 3 vs all held-out rows: matmul blocking differs, so equal to ~1e-6 relative, not bitwise
    assert table[SCORE_COLUMN].to_pylist() == pytest.approx(scores[:3].tolist(), rel=1e-5, abs=1e-7)
    # an unseen bucket is scored (with the "unknown bucket" embedding), not a crash
    assert scorer.score(["hello"], ["en|multi|qa|xlong"]).shape == (1,)
    with pytest.raises(ValueError, match="texts but"):
        scorer.score(["a", "b"], ["x"])


def test_frozen_lm_encoder_critic_round_trip(tmp_path: Path) -> None:
    """critic.encoder=frozen_lm: texts are encoded by a frozen LM (here the tiny test model, saved as an HF folder
    so the scorer can reload it); the critic trains, and the saved bundle scores like the trained model."""
    from polyalign_ray.config import ModelConfig
    from polyalign_ray.critic.encoders import FrozenLMEncoder
    from polyalign_ray.models import builtin_model, load_causal_lm, load_tokenizer, train_builtin_tokenizer

    examples, references = synthetic_examples(120)
    tokenizer = train_builtin_tokenizer([e.text for e in examples], 400, 128)
    lm_dir = tmp_path / "lm"
    builtin_model(
        ModelConfig(builtin_hidden_size=32, builtin_intermediate_size=64, builtin_vocab_size=400), tokenizer
    ).save_pretrained(lm_dir)
    tokenizer.save_pretrained(lm_dir)
    encoder = FrozenLMEncoder(load_causal_lm(lm_dir, ModelConfig()), load_tokenizer(lm_dir))
    config = CriticConfig(encoder="frozen_lm", hidden_dim=32, epochs=5, min_spearman=-1.0)
    model, meta, summary = train_critic(examples, config, encoder=encoder, encoder_model=str(lm_dir))
    assert meta["hash_buckets"] == 0 and meta["dims"]["text_dim"] == 32
    assert np.isfinite(summary["heldout_spearman"])
    save_critic_bundle(tmp_path / "bundle", model, meta, summary, references)
    heldout = [e for e in examples if e.heldout]
    scores = CriticScorer(tmp_path / "bundle").score(
        [e.text for e in heldout], [e.bucket for e in heldout], [e.prompt for e in heldout]
    )
    assert spearman(scores, targets(heldout)) == pytest.approx(summary["heldout_spearman"], abs=1e-6)
    with pytest.raises(ValueError, match="frozen_lm"):
        train_critic(examples, config)


def test_boundary_ngrams_mark_how_an_answer_starts_and_ends() -> None:
    """ "abcd": ^a ^ab ^abc d$ cd$ bcd$ (6 ids); "a": ^a a$; a cut answer ends differently from the full one."""
    import zlib

    from polyalign_ray.critic.encoders import boundary_ngram_ids

    grams = ["^a", "^ab", "^abc", "d$", "cd$", "bcd$"]
    assert boundary_ngram_ids("abcd", 1 << 20) == [zlib.crc32(g.encode()) % (1 << 20) for g in grams]
    assert len(boundary_ngram_ids(" a ", 1000)) == 2
    assert len(boundary_ngram_ids("", 1000)) == 1
    full, cut = boundary_ngram_ids("It rains.", 1 << 20), boundary_ngram_ids("It rai", 1 << 20)
    assert full[:3] == cut[:3] and not set(full[3:]) & set(cut[3:])


def test_corrupted_targets_are_floored_at_their_original_plus_the_gap() -> None:
    """Exact distance, or the original human answer's distance + gap when that is larger; human and model answers
    keep their exact targets. Checked against the gap-free build, example by example."""
    exact, _ = synthetic_examples(60, corrupted_per_record=2)
    floored, _ = synthetic_examples(60, corrupted_per_record=2, corruption_gap=0.5)
    human = {e.group: e.target for e in exact if e.kind == "human"}
    raised = 0
    for before, after in zip(exact, floored, strict=True):
        assert (before.text, before.bucket, before.kind) == (after.text, after.bucket, after.kind)
        if before.kind in ("human", "model"):
            assert after.target == before.target
        else:
            assert after.target == max(before.target, human[before.group] + 0.5)
            raised += after.target > before.target
    assert raised > 0  # the floor does something on these inputs


def reference_fit(model, inputs, train, targets, meta, config, rng) -> list[float]:
    """The critic's training loop written plainly, one forward per loss term (how fit_critic was written before
    it fed the batch and the ranking pairs through one forward)."""
    import torch

    from polyalign_ray.critic.train import human_model_pairs

    target_t = torch.as_tensor(targets, dtype=torch.float32)
    mu, sd = meta["target_mean"], meta["target_std"]
    links = human_model_pairs(train)
    pairs = np.asarray([p for p in links if train[p[1]].kind in ("model", "")]).reshape(-1, 2)
    corruption_pairs = np.asarray([p for p in links if train[p[1]].kind not in ("model", "")]).reshape(-1, 2)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.lr, weight_decay=config.weight_decay, fused=True
    )
    history = []
    steps = -(-len(train) // config.batch_size)
    for _ in range(config.epochs):
        order, total = rng.permutation(len(train)), 0.0
        for step in range(steps):
            index = order[step * config.batch_size : (step + 1) * config.batch_size].tolist()
            prediction = model(**inputs.batch(index))
            loss = torch.nn.functional.huber_loss(
                (prediction - mu) / sd, (target_t[index] - mu) / sd, delta=config.huber_delta
            )
            for ranked, weight in (
                (pairs, config.rank_weight),
                (corruption_pairs, config.corruption_rank_weight),
            ):
                chosen = ranked[rng.integers(0, len(ranked), size=min(config.batch_size, len(ranked)))]
                both = model(**inputs.batch(chosen.reshape(-1).tolist())).view(-1, 2)
                loss = loss + weight * torch.relu(config.rank_margin + both[:, 0] - both[:, 1]).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += float(loss.detach())
        history.append(total / steps)
    return history


def test_one_forward_per_step_trains_like_a_forward_per_loss_term() -> None:
    """fit_critic feeds the batch and both kinds of ranking pairs through one forward (one dense gradient per
    embedding table per step, the critic's training ~35% faster on the demo); the model has no dropout or batch
    norm, so the losses and the weights are those of the plain loop up to float summation order."""
    import dataclasses

    import torch

    from polyalign_ray.critic.train import build_critic_model, critic_inputs, critic_metadata, fit_critic
    from polyalign_ray.features import features_matrix

    config = dataclasses.replace(SMALL, epochs=3, support_features=False)
    examples, _ = synthetic_examples(200, corrupted_per_record=1)
    train = [e for e in examples if not e.heldout]
    assert {"human", "model", "repeat", "truncate"} <= {e.kind for e in train}  # both ranking terms are on
    values = targets(train)
    meta = critic_metadata(
        examples, features_matrix([e.text for e in train]), values, config, encoder=None, encoder_model=""
    )
    inputs = critic_inputs([e.text for e in train], [e.bucket for e in train], meta, use_features=True)
    runs = []
    for fit in (fit_critic, reference_fit):
        torch.manual_seed(0)
        model = build_critic_model(meta)
        history = fit(model, inputs, train, values, meta, config, np.random.default_rng(0))
        runs.append((history, [p.detach().clone() for p in model.parameters()]))
    (history, weights), (expected_history, expected_weights) = runs
    assert history == pytest.approx(expected_history, rel=1e-5)
    for got, want in zip(weights, expected_weights, strict=True):
        assert torch.allclose(got, want, atol=1e-5)


def test_offline_pairs_are_scored_in_the_driver_when_few_and_by_the_pool_when_many(
    tmp_path: Path, monkeypatch
) -> None:
    """``stages.hdpo.critic_distances``: a small job of a hashed-n-gram critic is scored in this process (the
    scorer's scores, the driver's torch threads untouched); above the limit the critic actor pool gets it."""
    import torch

    from polyalign_ray.distributed import critic_pool
    from polyalign_ray.stages import hdpo

    examples, references = synthetic_examples(120)
    model, meta, summary = train_critic(examples, SMALL)
    save_critic_bundle(tmp_path, model, meta, summary, references)
    texts, buckets = [e.text for e in examples[:10]], [e.bucket for e in examples[:10]]
    threads = torch.get_num_threads()
    scored = hdpo.critic_distances(str(tmp_path), SMALL, texts, buckets)
    assert torch.get_num_threads() == threads
    assert scored == pytest.approx(CriticScorer(tmp_path, num_threads=0).score(texts, buckets).tolist())
    prompts = [e.prompt for e in examples[:10]]  # the pairs' prompts reach the critic
    assert hdpo.critic_distances(str(tmp_path), SMALL, texts, buckets, prompts) == pytest.approx(
        CriticScorer(tmp_path, num_threads=0).score(texts, buckets, prompts).tolist()
    )

    pooled: list[int] = []

    class FakePool:
        @classmethod
        def from_config(cls, bundle_dir, critic):
            return cls()

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            pass

        def score(self, texts, buckets, prompts=None):
            pooled.append(len(texts))
            return [0.5] * len(texts)

    monkeypatch.setattr(critic_pool, "CriticPool", FakePool)
    monkeypatch.setattr(hdpo, "IN_PROCESS_SCORING_MAX_TEXTS", 9)
    assert hdpo.critic_distances(str(tmp_path), SMALL, texts, buckets) == [0.5] * 10
    assert pooled == [10]
