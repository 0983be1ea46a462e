"""Bucket-Aware SFT (METHOD.md section 3) as a stage: ``polyalign sft`` and the pipeline's ``sft`` / ``sft_plain``.

Driver (:func:`run_sft_stage`): the base model, which training run this is (``training_runs``: continue an
interrupted run of the same settings, else start over), the train split tokenized by Ray Data, then the launcher's
TorchTrainer of DeepSpeed workers. Worker body (:func:`sft_worker`): model -> strategy -> examples -> the loop of
``loops/sft.py``. The bucket-balanced sampler (same seed on every rank) picks each rank's slice of every global
batch: exact bucket shares, equal step counts per rank and an exact resume position. With ``sft.example_store=
shards`` (default) Ray Data writes the tokenized split as per-bucket shards (``OUTPUT/shards/train``) and each
worker reads only the examples it draws; with ``memory`` every worker receives every tokenized row and holds it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

from polyalign_ray.config import PolyAlignConfig, config_from_dict, config_to_dict
from polyalign_ray.loops.sft import run_sft, total_optimizer_steps
from polyalign_ray.models import apply_lora, load_causal_lm, load_tokenizer
from polyalign_ray.sft_data import ExampleStore, SFTExamples, ShardedSFTExamples
from polyalign_ray.stages.context import WorkerContext, seed_worker, training_strategy
from polyalign_ray.stages.data import ensure_base_model
from polyalign_ray.training_runs import absolute, finish_training_run, folder_identity, open_stage_run

log = logging.getLogger(__name__)

SFT_SECTIONS = ("data", "references", "model", "sampler", "sft")
"""Config sections that decide an SFT run (with the base model and the data manifest as inputs)."""


def sft_worker(context: WorkerContext, payload: dict[str, Any]) -> None:
    """What each training worker runs: load the model, build the strategy, take the examples, run the loop."""
    config = config_from_dict(payload["config"])
    sft, model_config = config.sft, config.model
    seed_worker(sft)
    tokenizer = load_tokenizer(payload["model_path"])
    model = apply_lora(load_causal_lm(payload["model_path"], model_config), model_config.lora)

    examples: ExampleStore = (
        ShardedSFTExamples(payload["shards"])
        if payload.get("shards")
        else SFTExamples.from_table(context.dataset("train"))
    )
    total = total_optimizer_steps(sft, sum(examples.sizes().values()), context.world_size)
    strategy = training_strategy(context, model, sft, model_config, total)
    resume_from = context.restore_path
    if resume_from is None and payload.get("resume_from"):
        resume_from = Path(payload["resume_from"])
    run_sft(
        strategy,
        examples,
        tokenizer,
        sft=sft,
        sampler_config=config.sampler,
        output_dir=Path(sft.output_dir),
        checkpointer=context.checkpointer,
        resume_from=resume_from,
        labelled_only=config.model.logits == "labelled",
    )


def run_sft_stage(config: PolyAlignConfig, *, resume_from: str = "", fresh: bool = False) -> dict[str, Any]:
    """``polyalign sft``: Bucket-Aware SFT on Ray Train + DeepSpeed; returns the summary. An interrupted run with
    the same settings is continued; anything else (``fresh``, changed settings or inputs, a finished run) trains
    from the start."""
    from polyalign_ray.distributed.data import tokenize_with_ray, write_tokenized_shards_with_ray
    from polyalign_ray.distributed.launcher import launch_training

    model_path = ensure_base_model(config)
    run = open_stage_run(
        config,
        "sft",
        SFT_SECTIONS,
        {
            "base_model": folder_identity(model_path),
            "manifest": folder_identity(Path(config.data.output_dir) / "manifest.json"),
        },
        fresh=fresh,
        resume_from=resume_from,
    )
    if Path(model_path).exists():  # workers run in another working directory: hand them absolute paths
        model_path = str(Path(model_path).resolve())
    output_dir = Path(config.sft.output_dir).resolve()
    output_dir.mkdir(parents=True, exist_ok=True)
    config = dataclasses.replace(config, sft=dataclasses.replace(config.sft, output_dir=str(output_dir)))
    tokenize = {
        "max_length": config.model.max_length,
        "profile_conditioning": config.model.profile_conditioning,
        "train_history_turns": config.sft.train_history_turns,
    }
    datasets, shards = {}, ""
    if config.sft.example_store == "shards":
        shards = str(output_dir / "shards" / "train")
        manifest = json.loads((Path(config.data.output_dir) / "manifest.json").read_text(encoding="utf-8"))
        index = write_tokenized_shards_with_ray(
            config.data.output_dir,
            model_path,
            shards,
            records=int(manifest["per_split"]["train"]),
            **tokenize,
        )
        examples = index["rows"]
    else:
        datasets["train"] = tokenize_with_ray(config.data.output_dir, model_path, **tokenize)
        examples = datasets["train"].count()
    log.info(
        "sft: %d tokenized train examples (%s); %d workers, ZeRO-%d",
        examples,
        f"per-bucket shards in {shards}" if shards else "every row to every worker",
        config.sft.num_workers,
        config.sft.zero_stage,
    )
    summary = launch_training(
        sft_worker,
        {
            "config": config_to_dict(config),
            "model_path": model_path,
            "resume_from": absolute(run.resume_from),
            "shards": shards,
        },
        config.sft,
        name=run.name,
        output_dir=output_dir,
        datasets=datasets,
        config=config,
        stage="sft",
    )
    finish_training_run(output_dir, run)
    log.info(
        "sft: %d steps, loss %.3f -> %.3f, %.0f tokens/s; model in %s",
        summary["steps"],
        summary["first_loss"] or float("nan"),
        summary["final_loss"] or float("nan"),
        summary["tokens_per_s"],
        summary["final_model"],
    )
    return summary
