"""The critic actor pool: scores (text, bucket) batches asynchronously, in submission order, losing nothing.

Each actor is the plain :class:`~polyalign_ray.critic.scorer.CriticScorer` made remote with
``max_restarts=-1, max_task_retries=-1``: when an actor dies, Ray restarts it and re-executes the batches it had
in flight (scoring is a pure function, so a re-executed batch returns the same scores), and each submitted batch's
result is collected exactly once. ``max_in_flight`` bounds the batches submitted and not yet collected: ``submit``
blocks on the oldest one beyond it (backpressure), so a fast producer cannot flood the object store.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import ray

from polyalign_ray.critic.scorer import CriticScorer
from polyalign_ray.distributed.runtime import free_resources, wait_until_free


class CriticPool:
    @classmethod
    def from_config(cls, bundle_dir: str | Path, critic: Any, **overrides: Any) -> CriticPool:
        """A pool sized by the ``critic`` config section (actors, work in flight, CPUs and GPUs per actor)."""
        settings = {
            "num_actors": critic.num_actors,
            "max_in_flight": critic.max_in_flight,
            "num_cpus": critic.actor_num_cpus,
            "num_gpus": critic.actor_num_gpus,
            **overrides,
        }
        return cls(bundle_dir, **settings)

    def __init__(
        self,
        bundle_dir: str | Path,
        *,
        num_actors: int = 2,
        max_in_flight: int = 8,
        num_cpus: float = 0.0,
        num_gpus: float = 0.0,
    ):
        if num_actors < 1 or max_in_flight < 1:
            raise ValueError("num_actors and max_in_flight must be >= 1")
        remote_scorer = ray.remote(
            num_cpus=num_cpus, num_gpus=num_gpus, max_restarts=-1, max_task_retries=-1
        )(CriticScorer)
        self.actors = [remote_scorer.remote(str(Path(bundle_dir).resolve())) for _ in range(num_actors)]
        self.held = {"CPU": num_cpus * num_actors, "GPU": num_gpus * num_actors}
        """What the actors reserve, given back when the pool shuts down."""
        self.max_in_flight = max_in_flight
        self._in_flight: collections.deque[tuple[int, ray.ObjectRef]] = collections.deque()
        self._done: collections.deque[tuple[int, Any]] = collections.deque()
        self._next_ticket = 0
        self.submitted = 0
        self.collected = 0

    def submit(
        self,
        texts: Sequence[str],
        buckets: Sequence[str],
        prompts: Sequence[Mapping[str, Any] | None] | None = None,
    ) -> int:
        """Queue one batch (``prompts``: optional, as ``CriticScorer.score`` takes them); returns its ticket.
        Blocks while ``max_in_flight`` batches are outstanding."""
        prompt_list = list(prompts) if prompts is not None else None
        return self._enqueue(lambda actor: actor.score.remote(list(texts), list(buckets), prompt_list))

    def submit_rollout(self, rollout: ray.ObjectRef) -> int:
        """Queue the scoring of a rollout batch that may still be generating (``rollout`` is the generator's
        ObjectRef: Ray starts scoring when it is ready, without the caller waiting). Results are
        ``CriticScorer.score_rollout`` dicts; same ordering, backpressure and exactly-once guarantees as
        :meth:`submit`."""
        return self._enqueue(lambda actor: actor.score_rollout.remote(rollout))

    def _enqueue(self, call: Callable[[Any], ray.ObjectRef]) -> int:
        """Round-robin ``call(actor)`` after waiting for room under ``max_in_flight``; returns the ticket."""
        while len(self._in_flight) >= self.max_in_flight:
            self._collect_oldest()
        ticket = self._next_ticket
        self._in_flight.append((ticket, call(self.actors[ticket % len(self.actors)])))
        self._next_ticket += 1
        self.submitted += 1
        return ticket

    def next_result(self) -> tuple[int, Any]:
        """(ticket, result) of the oldest submission not yet returned, waiting for it if needed."""
        if not self._done:
            if not self._in_flight:
                raise RuntimeError("next_result() on a pool with nothing submitted")
            self._collect_oldest()
        self.collected += 1
        return self._done.popleft()

    def _collect_oldest(self) -> None:
        ticket, ref = self._in_flight.popleft()
        self._done.append((ticket, ray.get(ref)))

    def ready(self) -> bool:
        """True when the oldest outstanding batch can be returned without waiting."""
        if self._done:
            return True
        if not self._in_flight:
            return False
        ready, _ = ray.wait([self._in_flight[0][1]], timeout=0)
        return bool(ready)

    def results(self) -> Iterator[tuple[int, np.ndarray]]:
        """(ticket, scores) of every submitted batch not yet returned, in submission order, each exactly once."""
        while self._done or self._in_flight:
            if not self._done:
                self._collect_oldest()
            self.collected += 1
            yield self._done.popleft()

    def score(
        self,
        texts: Sequence[str],
        buckets: Sequence[str],
        prompts: Sequence[Mapping[str, Any] | None] | None = None,
        *,
        batch_size: int = 64,
    ) -> np.ndarray:
        """Score many items through the pool (submitted in batches, collected in order)."""
        if self._in_flight or self._done:
            raise RuntimeError("score() needs an idle pool: collect earlier submissions with results() first")
        out: list[np.ndarray] = []
        for start in range(0, len(texts), batch_size):
            self.submit(
                texts[start : start + batch_size],
                buckets[start : start + batch_size],
                prompts[start : start + batch_size] if prompts is not None else None,
            )
            while self._done:
                out.append(self._done.popleft()[1])
                self.collected += 1
        out.extend(scores for _, scores in self.results())
        return np.concatenate(out) if out else np.zeros(0)

    def shutdown(self, *, wait_s: float = 2.0) -> None:
        """Kill the actors and wait (up to ``wait_s``) until the cluster shows their CPUs and GPUs free again, so
        the caller's next Ray job finds them (``runtime.wait_until_free``)."""
        before = free_resources()
        for actor in self.actors:
            ray.kill(actor, no_restart=True)
        if self.actors:
            wait_until_free({k: before[k] + v for k, v in self.held.items() if v > 0}, timeout_s=wait_s)
        self.actors = []
        self._in_flight.clear()
        self._done.clear()

    def __enter__(self) -> CriticPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()
