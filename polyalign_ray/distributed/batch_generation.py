"""Batch generation on Ray Data: actors that each hold one copy of the policy sample answers for records."""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pyarrow as pa
import ray
import ray.data
import torch

from polyalign_ray.config import GenerationConfig, ModelConfig, config_from_dict
from polyalign_ray.distributed.runtime import free_resources, wait_until_free
from polyalign_ray.generation import generate_responses
from polyalign_ray.models import load_causal_lm, load_tokenizer
from polyalign_ray.training_runs import folder_identity


def table_in_blocks(table: pa.Table, rows_per_block: int) -> ray.data.Dataset:
    """``table`` as a Ray Dataset of blocks of ``rows_per_block`` rows, in order.

    Why: ``ray.data.from_arrow(table)`` makes one block, and a map over an actor pool hands a block to one actor, so
    every batch ran on one of the pool's actors while the others idled (seen: 13 batches in a row on one of two
    actors). Blocks of one batch each let the whole pool share the work; the batches hold the same rows as one
    block cut in order would, so seeded generation gives the same answers."""
    return ray.data.from_arrow(table_slices(table, rows_per_block))


def table_slices(table: pa.Table, rows_per_block: int) -> list[pa.Table]:
    """``table``'s rows in order, in slices of ``rows_per_block`` (one empty slice for an empty table: a Dataset
    needs a block)."""
    size = max(1, rows_per_block)
    return [table.slice(start, size) for start in range(0, max(table.num_rows, 1), size)]


def model_actor_pool(num_workers: int, *, use_gpu: bool = False) -> ray.data.ActorPoolStrategy:
    """Up to ``num_workers`` model actors (``generation.num_workers``, one CPU or GPU each), at least one: work
    starts as soon as one is ready. A fixed pool of N would wait for N free CPUs (or GPUs), and two seed trials
    sharing a small machine could each hold one actor and wait for the other's CPU. The pool starts with as many
    actors as are free now and Ray Data adds the others when work queues up and room appears (an actor added late
    did 2 of 26 batches here, so starting them at once is what makes a lone pass faster; starting them while
    another trial works only makes both slower)."""
    free = free_resources()["GPU" if use_gpu else "CPU"]
    initial = max(1, min(num_workers, int(free + 1e-6)))
    return ray.data.ActorPoolStrategy(min_size=1, max_size=num_workers, initial_size=initial)


class PolicyGenerator:
    """Ray Data callable class: loads the policy once per actor, then samples one answer per row."""

    def __init__(
        self, model_path: str, generation: dict[str, Any], model: dict[str, Any], include_length: bool = True
    ):
        self.include_length = include_length
        self.settings = config_from_dict(generation, GenerationConfig)
        self.model_config = config_from_dict(model, ModelConfig)
        if not self.settings.use_gpu:
            torch.set_num_threads(1)
        self.tokenizer = load_tokenizer(model_path)
        self.model = load_causal_lm(model_path, self.model_config)
        if self.settings.use_gpu:
            self.model = self.model.cuda()

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = batch.to_pylist()
        samples = generate_responses(
            self.model,
            self.tokenizer,
            rows,
            self.settings,
            profile_conditioning=self.model_config.profile_conditioning,
            include_length=self.include_length,
            max_prompt_tokens=self.model_config.max_length,
            # the batch's number in the pass: every batch its own random numbers, the same on a rerun
            seed_offset=int(rows[0]["row_index"]) // self.settings.batch_size if rows else 0,
        )
        return pa.table({"id": batch["id"], "sample_index": batch["sample_index"], "sample": samples})


class KeptGenerator:
    """A generation actor that outlives one pass: it keeps the last policy it loaded and builds a
    :class:`PolicyGenerator` only when a pass asks for another policy or other settings."""

    def __init__(self) -> None:
        self.key = ""
        self.generator: PolicyGenerator | None = None

    def generate(self, generator_kwargs: dict[str, Any], model_identity: str, batch: pa.Table) -> pa.Table:
        """``model_identity``: what the model's folder holds now (a retrained model at the same path loads again)."""
        key = json.dumps([generator_kwargs, model_identity], sort_keys=True, default=str)
        if key != self.key:
            self.generator = None  # the old policy's memory goes before the new one loads
            self.generator = PolicyGenerator(**generator_kwargs)
            self.key = key
        assert self.generator is not None
        return self.generator(batch)


class KeptGenerationActors:
    """Generation actors kept across consecutive passes (the pipeline's evaluations): the same batches, seeds and
    answers as a Ray Data pass of :class:`PolicyGenerator` actors, without that pass's start-up.

    Why: each Ray Data pass starts its actors anew, 4-7 s of process start, imports and model load before the
    first batch (a timeline of one 202-item evaluation: 2.6-5.0 s until the constructor, 2.2 s in it, 3-6 s of
    work), and an evaluation makes one pass per profile. Between evaluations nothing else wants the cores, so the
    pipeline keeps these actors instead (:func:`generation_actors_kept`); a training stage must not run while
    they hold their CPUs. Actors start on first use, as many as are free then (at least one), up to
    ``num_workers``."""

    def __init__(self, num_workers: int, use_gpu: bool):
        self.num_workers = max(1, num_workers)
        self.use_gpu = use_gpu
        self.actors: list[Any] = []

    def start(self) -> None:
        if self.actors:
            return
        free = free_resources()["GPU" if self.use_gpu else "CPU"]
        count = max(1, min(self.num_workers, int(free + 1e-6)))
        remote = ray.remote(
            num_cpus=0 if self.use_gpu else 1,
            num_gpus=1 if self.use_gpu else 0,
            # a dead actor comes back and its batch runs again (generation is seeded, so the answers are the same),
            # as in a Ray Data pass; a batch that kills its actor every time fails the pass after two retries
            max_restarts=2,
            max_task_retries=2,
        )(KeptGenerator)
        self.actors = [remote.remote() for _ in range(count)]

    def map_blocks(
        self, generator_kwargs: dict[str, Any], model_identity: str, table: pa.Table, rows_per_block: int
    ) -> pa.Table:
        """``table`` cut into blocks of ``rows_per_block`` rows in order, each generated by the next free actor;
        the outputs in the table's order."""
        from ray.util import ActorPool

        if table.num_rows == 0:
            return pa.table({})
        self.start()
        outputs = ActorPool(self.actors).map(
            lambda actor, block: actor.generate.remote(generator_kwargs, model_identity, block),
            table_slices(table, rows_per_block),
        )
        return pa.concat_tables(list(outputs))

    def shutdown(self) -> None:
        for actor in self.actors:
            ray.kill(actor)
        if self.actors:
            wait_until_free({"GPU" if self.use_gpu else "CPU": float(len(self.actors))})
        self.actors = []


_kept_actors: KeptGenerationActors | None = None


@contextmanager
def generation_actors_kept(generation: GenerationConfig) -> Iterator[KeptGenerationActors]:
    """Within the block, :func:`sample_answers_with_ray` uses generation actors kept across its calls
    (:class:`KeptGenerationActors`) instead of a Ray Data pass each; they end with the block."""
    global _kept_actors
    kept = KeptGenerationActors(generation.num_workers, generation.use_gpu)
    previous, _kept_actors = _kept_actors, kept
    try:
        yield kept
    finally:
        _kept_actors = previous
        kept.shutdown()


def sample_answers_with_ray(
    records: pa.Table,
    model_path: str,
    generation: GenerationConfig,
    model: ModelConfig,
    *,
    samples_per_record: int = 1,
    include_length: bool = True,
) -> dict[str, list[str]]:
    """record id -> ``samples_per_record`` sampled answers, generated by ``generation.num_workers`` actors."""
    from polyalign_ray.config import config_to_dict

    repeated = pa.concat_tables(
        [
            records.append_column("sample_index", pa.array([k] * records.num_rows, pa.int64()))
            for k in range(samples_per_record)
        ]
    )
    repeated = repeated.append_column("row_index", pa.array(range(repeated.num_rows), pa.int64()))
    generator_kwargs = {
        "model_path": model_path,
        "generation": config_to_dict(generation),
        "model": config_to_dict(model),
        "include_length": include_length,
    }
    kept = _kept_actors
    if kept is not None and kept.use_gpu == generation.use_gpu:
        identity = folder_identity(model_path)
        rows = kept.map_blocks(generator_kwargs, identity, repeated, generation.batch_size).to_pylist()
    else:
        generated = table_in_blocks(repeated, generation.batch_size).map_batches(
            PolicyGenerator,
            fn_constructor_kwargs=generator_kwargs,
            batch_size=generation.batch_size,
            batch_format="pyarrow",
            compute=model_actor_pool(generation.num_workers, use_gpu=generation.use_gpu),
            num_cpus=0 if generation.use_gpu else 1,
            num_gpus=1 if generation.use_gpu else 0,
        )
        rows = list(generated.iter_rows())
    out: dict[str, list[tuple[int, str]]] = defaultdict(list)
    for row in rows:
        out[row["id"]].append((int(row["sample_index"]), row["sample"]))
    return {key: [text for _, text in sorted(values)] for key, values in out.items()}
