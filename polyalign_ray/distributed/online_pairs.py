"""Online HDPO's pair source: a rollout actor and the critic pool, pipelined ahead of the trainer.

Rank 0 owns the pipeline; the other ranks receive each step's global batch by broadcast and keep their slice.

- **Rollout batch** b: ``rollout_prompts`` train prompts (a seeded permutation, epoch after epoch) go to
  :class:`~polyalign_ray.rollout_worker.RolloutWorker` actor b mod ``num_generators`` with the weights version to sample
  from (which actor runs a batch changes nothing: a rollout is a pure function of its inputs); its ObjectRef goes
  straight to a critic pool actor (``CriticPool.submit_rollout``), so scoring starts when generation ends, without
  the trainer waiting. Up to ``rollout_depth`` batches are in flight while the trainer runs its steps.
- **Pairs**: a harvested batch's distances pick chosen/rejected per prompt (``rollout_worker.pairs_from_rollout``); pairs
  enter a FIFO buffer; a step's weights are normalized by a mean of earlier steps' weights, never its own
  (``hdpo_data.HeldWeightMean``); each step takes the global batch from it, dropping (and counting) pairs whose generating
  weights are more than ``max_staleness`` updates old.
- **Weights** reach the generator every ``sync_every`` updates (and at checkpoints and on resume): every rank joins
  the gather (ZeRO-3), rank 0 puts the CPU state dict in the object store and later rollouts carry a reference to it.
  A rollout passes its weights version with the reference, so a restarted actor reloads the right weights when Ray
  re-executes its call: a killed generator or critic actor costs time, never a pair.
- **Reproducible**: what is submitted, with which weights, and which pairs a step uses depend only on the data (never
  on timing). Checkpoints drain the in-flight batches into the buffer and save it, so a resumed run uses exactly the
  pairs of the uninterrupted one.

The trainer's compute intervals and the actors' busy intervals are recorded; the summary reports how much of the
critic's and the generator's work overlapped training.
"""

from __future__ import annotations

import collections
import logging
import time
from typing import Any

import numpy as np
import pyarrow as pa
import ray

from polyalign_ray.config import PolyAlignConfig
from polyalign_ray.distributed.critic_pool import CriticPool
from polyalign_ray.hdpo_data import HeldWeightMean, TokenizedPair
from polyalign_ray.loops.strategy import Strategy
from polyalign_ray.rollout_worker import (
    PairBuildCounts,
    RolloutWorker,
    overlap_seconds,
    pairs_from_rollout,
)

log = logging.getLogger(__name__)

MAX_BATCHES_WITHOUT_PAIR = 20
"""The pipeline stops with an error (instead of sampling forever) after this many rollout batches without a pair."""


class RemoteRolloutWorker(RolloutWorker):
    """The actor form: each call names the weights version it must sample from and carries (boxed, so Ray does not
    fetch it unless needed) the object-store reference to those weights."""

    def rollout_at(
        self, records: list[dict[str, Any]], seed: int, version: int, weights_box: list[ray.ObjectRef] | None
    ) -> dict[str, Any]:
        if version != self.version:
            if not weights_box:
                raise RuntimeError(f"rollout asks for weights version {version} but carries none")
            self.load_weights(ray.get(weights_box[0]), version)
        return self.rollout(records, seed)


def actor_nodes(actors: list[Any]) -> list[str]:
    """The Ray node each actor runs on now (where a restarted actor went, too): the summary's placement record."""
    return ray.get([a.__ray_call__.remote(lambda _: ray.get_runtime_context().get_node_id()) for a in actors])


class OnlinePairSource:
    """:class:`~polyalign_ray.loops.hdpo.PairSource` for online HDPO (see the module docstring)."""

    def __init__(
        self,
        strategy: Strategy,
        config: PolyAlignConfig,
        *,
        policy: str,
        critic_dir: str,
        records: pa.Table | None,
        rarity: dict[str, float],
    ):
        hdpo = config.hdpo
        self.strategy = strategy
        self.hdpo = hdpo
        self.rank, self.world = strategy.rank, strategy.world_size
        self.pairs_per_rank = hdpo.rank_batch_size
        self.global_pairs = self.pairs_per_rank * self.world
        self.prompts_per_batch = hdpo.online.rollout_prompts or self.global_pairs
        self.rarity = rarity
        self.weight_args = (
            {"a": 0.0, "c": 0.0, "w_min": 1.0, "w_max": 1.0}
            if hdpo.unit_weights
            else {
                "a": hdpo.weight_rarity,
                "c": hdpo.weight_gap,
                "w_min": hdpo.weight_min,
                "w_max": hdpo.weight_max,
            }
        )
        self.weight_mean = 1.0
        self._metrics: dict[str, float] = {}
        self._compute_started = 0.0
        if self.rank != 0:
            return
        if records is None or records.num_rows == 0:
            raise ValueError("online HDPO needs train prompts: the train split is empty")
        self.records = records.to_pylist()
        self.held_mean = HeldWeightMean.from_prompts(
            [r["bucket_id"] for r in self.records],
            rarity,
            a=self.weight_args["a"],
            w_min=self.weight_args["w_min"],
            w_max=self.weight_args["w_max"],
        )
        remote = ray.remote(
            num_cpus=hdpo.online.generator_cpus,
            num_gpus=1 if config.generation.use_gpu else 0,
            max_restarts=-1,
            max_task_retries=-1,
        )(RemoteRolloutWorker)
        self.generators = [
            remote.remote(
                policy,
                config.model,
                config.generation,
                rollouts_per_prompt=hdpo.online.rollouts_per_prompt,
                include_human=hdpo.online.include_human,
                backend=hdpo.online.generation_backend,
                torch_threads=hdpo.online.generator_threads,
            )
            for _ in range(hdpo.online.num_generators)
        ]
        cfg = config.critic
        self.pool = CriticPool.from_config(
            critic_dir, cfg, max_in_flight=max(cfg.max_in_flight, hdpo.online.rollout_depth + 1)
        )
        log.info(
            "online HDPO: %d rollout actors + %d critic actors; %d prompts x %d samples per rollout batch, "
            "%d in flight",
            hdpo.online.num_generators,
            cfg.num_actors,
            self.prompts_per_batch,
            hdpo.online.rollouts_per_prompt,
            hdpo.online.rollout_depth,
        )
        self.buffer: collections.deque[TokenizedPair] = collections.deque()
        self.in_flight: collections.deque[dict[str, Any]] = collections.deque()
        self.version = 0
        self.weights_box: list[ray.ObjectRef] | None = None
        self.position = {"batch": 0, "epoch": 0, "cursor": 0}
        self.counts = PairBuildCounts()
        self.totals = {"weight_sum": 0.0, "weight_count": 0, "dropped_stale": 0, "used": 0}
        self.train_intervals: list[tuple[float, float]] = []
        self.critic_intervals: list[tuple[float, float]] = []
        self.generator_intervals: list[tuple[float, float]] = []
        self.wait_seconds = 0.0
        self.staleness: list[int] = []
        self.batches_without_pair = 0

    # --- rank 0: the pipeline -------------------------------------------------------------------------------

    def _next_prompts(self) -> list[dict[str, Any]]:
        """The next ``rollout_prompts`` prompts of a per-epoch seeded permutation of the train prompts."""
        out = []
        while len(out) < self.prompts_per_batch:
            order = np.random.default_rng([self.hdpo.seed, self.position["epoch"]]).permutation(
                len(self.records)
            )
            take = order[
                self.position["cursor"] : self.position["cursor"] + self.prompts_per_batch - len(out)
            ]
            out.extend(self.records[int(i)] for i in take)
            self.position["cursor"] += len(take)
            if self.position["cursor"] >= len(self.records):
                self.position["epoch"] += 1
                self.position["cursor"] = 0
        return out

    def _submit(self) -> None:
        batch = self.position["batch"]
        generator = self.generators[batch % len(self.generators)]
        generated = generator.rollout_at.remote(self._next_prompts(), batch, self.version, self.weights_box)
        ticket = self.pool.submit_rollout(generated)
        self.in_flight.append(
            {
                "batch": batch,
                "version": self.version,
                "ref": generated,
                "ticket": ticket,
                "box": self.weights_box,
            }
        )
        self.position["batch"] += 1

    def _harvest_oldest(self) -> None:
        entry = self.in_flight.popleft()
        rollout = ray.get(entry["ref"])
        ticket, scored = self.pool.next_result()
        if ticket != entry["ticket"]:
            raise RuntimeError(f"critic pool returned ticket {ticket}, expected {entry['ticket']}")
        self.generator_intervals.append((rollout["started"], rollout["finished"]))
        self.critic_intervals.append((scored["started"], scored["finished"]))
        pairs = pairs_from_rollout(
            rollout,
            np.asarray(scored["scores"]),
            version=entry["version"],
            batch_index=entry["batch"],
            margin=self.hdpo.online.pair_margin,
            include_human=self.hdpo.online.include_human,
            rarity=self.rarity,
            weight_args=self.weight_args,
            counts=self.counts,
        )
        self.totals["weight_sum"] += sum(p.weight for p in pairs)
        self.totals["weight_count"] += len(pairs)
        self.buffer.extend(pairs)
        self.batches_without_pair = 0 if pairs else self.batches_without_pair + 1
        if self.batches_without_pair >= MAX_BATCHES_WITHOUT_PAIR:
            raise RuntimeError(
                f"{MAX_BATCHES_WITHOUT_PAIR} rollout batches in a row gave no pair (no candidate beat another by "
                f"more than hdpo.online.pair_margin={self.hdpo.online.pair_margin}); lower hdpo.online.pair_margin, raise "
                "hdpo.online.rollouts_per_prompt, or check the critic (polyalign score) and generation settings"
            )

    def _take_global_batch(self, step: int) -> list[TokenizedPair]:
        """``global_pairs`` fresh-enough pairs, topping the pipeline up to ``rollout_depth`` batches first."""
        while (
            len(self.in_flight) < self.hdpo.online.rollout_depth
            and len(self.buffer) < self.global_pairs * self.hdpo.online.rollout_depth
        ):
            self._submit()
        batch: list[TokenizedPair] = []
        while len(batch) < self.global_pairs:
            if not self.buffer:
                if not self.in_flight:
                    self._submit()
                self._harvest_oldest()
                continue
            pair = self.buffer.popleft()
            if (step - 1) - pair.version > self.hdpo.online.max_staleness:
                self.totals["dropped_stale"] += 1
                continue
            batch.append(pair)
        return batch

    # --- every rank ------------------------------------------------------------------------------------------

    def next_pairs(self, step: int) -> list[TokenizedPair]:
        payload = None
        if self.rank == 0:
            waited = time.perf_counter()
            batch = self._take_global_batch(step)
            waited = time.perf_counter() - waited
            self.wait_seconds += waited
            staleness = [(step - 1) - p.version for p in batch]
            self.staleness.extend(staleness)
            self.totals["used"] += len(batch)
            weight_mean = self.held_mean.value  # never this batch's own weights (rollouts.HeldWeightMean)
            self.held_mean.update([p.weight for p in batch])
            metrics = {
                "online/wait_s": waited,
                "online/staleness_mean": float(np.mean(staleness)),
                "online/staleness_max": float(max(staleness)),
                "online/buffer": float(len(self.buffer)),
                "online/in_flight": float(len(self.in_flight)),
                "online/pairs_built": float(self.counts.pairs),
                "online/prompts_without_pair": float(self.counts.no_pair),
                "online/dropped_stale": float(self.totals["dropped_stale"]),
                "online/policy_version": float(self.version),
            }
            payload = (batch, weight_mean, metrics)
        batch, self.weight_mean, self._metrics = self.strategy.broadcast_object(payload)
        self._compute_started = time.time()
        return batch[self.rank * self.pairs_per_rank : (self.rank + 1) * self.pairs_per_rank]

    def after_update(self, step: int, *, force_sync: bool) -> None:
        if self.rank == 0 and self._compute_started:
            self.train_intervals.append((self._compute_started, time.time()))
            self._compute_started = 0.0
        if step % self.hdpo.online.sync_every and not force_sync:
            return
        state = self.strategy.full_state_dict()  # every rank joins the gather
        if self.rank == 0 and step != self.version:
            self.weights_box = [ray.put(state)]
            self.version = step

    def step_metrics(self) -> dict[str, float]:
        return dict(self._metrics)

    def state(self) -> Any:
        if self.rank != 0:
            return None
        while self.in_flight:  # drain: a resumed run must find these pairs in the buffer, as this run will
            self._harvest_oldest()
        return {
            "buffer": list(self.buffer),
            "position": dict(self.position),
            "counts": vars(self.counts).copy(),
            "totals": dict(self.totals),
            "staleness": list(self.staleness),
            "held_mean": self.held_mean.state(),
        }

    def load_state(self, state: Any) -> None:
        if self.rank != 0:
            return
        self.buffer = collections.deque(state["buffer"])
        self.position = dict(state["position"])
        self.counts = PairBuildCounts(**state["counts"])
        self.totals = dict(state["totals"])
        self.staleness = list(state["staleness"])
        self.held_mean = HeldWeightMean.from_state(state["held_mean"])

    def summary(self) -> dict[str, Any]:
        if self.rank != 0:
            return {}
        train = sum(e - s for s, e in self.train_intervals)
        critic = sum(e - s for s, e in self.critic_intervals)
        generator = sum(e - s for s, e in self.generator_intervals)
        critic_overlap = overlap_seconds(self.critic_intervals, self.train_intervals)
        generator_overlap = overlap_seconds(self.generator_intervals, self.train_intervals)
        return {
            "rollout_batches": self.position["batch"],
            "prompts": self.counts.prompts,
            "candidates": self.counts.candidates,
            "pairs_built": self.counts.pairs,
            "prompts_without_pair": self.counts.no_pair,
            "pairs_used": self.totals["used"],
            "pairs_dropped_stale": self.totals["dropped_stale"],
            "pairs_left_in_buffer": len(self.buffer),
            "weight_mean": self.totals["weight_sum"] / max(self.totals["weight_count"], 1),
            "weight_mean_prior": self.held_mean.prior,
            "staleness_mean": float(np.mean(self.staleness)) if self.staleness else 0.0,
            "staleness_max": int(max(self.staleness)) if self.staleness else 0,
            "trainer_compute_s": train,
            "trainer_wait_for_pairs_s": self.wait_seconds,
            "critic_busy_s": critic,
            "critic_busy_while_training_s": critic_overlap,
            "critic_overlap_fraction": critic_overlap / critic if critic else 0.0,
            "generator_busy_s": generator,
            "generator_busy_while_training_s": generator_overlap,
            "generator_overlap_fraction": generator_overlap / generator if generator else 0.0,
            "actor_nodes": {
                "generators": actor_nodes(self.generators),
                "critic": actor_nodes(self.pool.actors),
                "trainer_rank_0": ray.get_runtime_context().get_node_id(),
            },
        }

    def close(self) -> None:
        if self.rank != 0:
            return
        self.pool.shutdown()
        for generator in self.generators:
            ray.kill(generator, no_restart=True)
