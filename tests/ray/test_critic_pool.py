"""The critic actor pool on real Ray: order, exactly-once delivery through an actor kill, backpressure."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from polyalign_ray.config import CriticConfig
from polyalign_ray.critic.scorer import CriticScorer
from polyalign_ray.critic.train import save_critic_bundle, train_critic
from tests.critic_fixtures import synthetic_examples

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    examples, references = synthetic_examples(200)
    config = CriticConfig(hash_buckets=4096, embedding_dim=16, hidden_dim=32, epochs=5)
    model, meta, summary = train_critic(examples, config)
    return save_critic_bundle(tmp_path_factory.mktemp("critic"), model, meta, summary, references)


def items(n: int) -> tuple[list[str], list[str]]:
    texts = [f"answer number {i} " * (1 + i % 7) for i in range(n)]
    buckets = ["en|single|dialogue|short" if i % 3 else "zh|single|dialogue|short" for i in range(n)]
    return texts, buckets


def test_killed_actor_loses_nothing_and_scores_nothing_twice(ray_session, bundle: Path) -> None:
    """1,000 items in 100 batches all in flight; one actor is killed (Ray restarts it and re-runs its batches).
    Every batch comes back exactly once, in submission order, with the scores of an in-process scorer."""
    import ray

    from polyalign_ray.distributed.critic_pool import CriticPool

    texts, buckets = items(1000)
    expected = CriticScorer(bundle).score(texts, buckets)
    with CriticPool(bundle, num_actors=2, max_in_flight=100) as pool:
        tickets = [pool.submit(texts[i : i + 10], buckets[i : i + 10]) for i in range(0, 1000, 10)]
        ray.kill(pool.actors[0], no_restart=False)
        results = list(pool.results())
        assert [t for t, _ in results] == tickets == list(range(100))
        assert np.allclose(np.concatenate([s for _, s in results]), expected, atol=1e-6)
        assert (pool.submitted, pool.collected) == (100, 100)
        assert list(pool.results()) == []
        # the restarted actor serves new work
        again = pool.score(texts[:50], buckets[:50], batch_size=5)
        assert np.allclose(again, expected[:50], atol=1e-6)
        # prompts travel with their batch to the actors (critic.use_prompt); answers like the critic's own (the
        # texts above have digits and words its training never saw: inputs far outside, scores saturated)
        held = [e for e in synthetic_examples(200)[0] if e.heldout][:50]
        answers, answer_buckets = [e.text for e in held], [e.bucket for e in held]
        prompts = [e.prompt for e in held]
        with_prompts = pool.score(answers, answer_buckets, prompts, batch_size=5)
        in_process = CriticScorer(bundle)
        assert np.allclose(with_prompts, in_process.score(answers, answer_buckets, prompts), atol=1e-6)
        assert not np.allclose(with_prompts, in_process.score(answers, answer_buckets), atol=1e-6)


def test_backpressure_bounds_work_in_flight(ray_session, bundle: Path) -> None:
    from polyalign_ray.distributed.critic_pool import CriticPool

    texts, buckets = items(200)
    free = ray_session.available_resources().get("CPU", 0.0)
    with CriticPool(bundle, num_actors=2, max_in_flight=3, num_cpus=0.5) as pool:
        for i in range(0, 200, 10):
            pool.submit(texts[i : i + 10], buckets[i : i + 10])
            assert len(pool._in_flight) <= 3
        assert [t for t, _ in pool.results()] == list(range(20))
        assert ray_session.available_resources().get("CPU", 0.0) < free
    # the pool's CPUs are free once it is closed (a Ray Data job started right after found none and warned)
    assert ray_session.available_resources().get("CPU", 0.0) >= free
