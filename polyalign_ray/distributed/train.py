"""Ray Train drivers: a TorchTrainer whose workers each run the SFT loop on a DeepSpeed ZeRO engine.

Data path: the train split is tokenized once by Ray Data tasks (``tokenize_with_ray``) and handed to the trainer
with ``DataConfig(datasets_to_split=[])``: every worker receives all tokenized rows, groups them by bucket, and
the bucket-balanced sampler (same seed on every rank) picks each rank's slice of every global batch. Compared with
splitting the dataset (whole blocks per rank, a rank can end up without a bucket) or one split dataset per bucket
(~200 MB and a shared opening order per bucket, see CPU_NOTES.md), this keeps exact bucket shares, equal step
counts per rank, and an exact resume position, at the cost of each worker holding the token ids of the train split
(about 4 bytes per token).

Fault tolerance: ``FailureConfig(max_failures)`` restarts the worker group after a crash; the restarted loop gets
the latest reported checkpoint from ``ray.train.get_checkpoint()`` and continues from its step and sampler state.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import ray
import ray.data
import ray.train
import torch
from ray.train import Checkpoint, CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from polyalign_ray.config import HDPOConfig, PolyAlignConfig, SFTConfig, config_from_dict, config_to_dict
from polyalign_ray.corpus.tables import RECORD_SCHEMA, split_dir
from polyalign_ray.deepspeed_config import deepspeed_config
from polyalign_ray.loops.checkpoints import STATE_FILE
from polyalign_ray.loops.sft import run_sft, total_optimizer_steps
from polyalign_ray.loops.strategy import adamw_factory, scheduler_factory
from polyalign_ray.models import apply_lora, load_causal_lm, load_tokenizer
from polyalign_ray.sft_data import SFTExamples, tokenize_records

log = logging.getLogger(__name__)


@functools.lru_cache(maxsize=2)
def _cached_tokenizer(path: str) -> Any:
    return load_tokenizer(path)


def _tokenize_batch(
    batch: pa.Table, *, tokenizer_path: str, max_length: int, profile: bool, history: bool
) -> pa.Table:
    return tokenize_records(
        batch,
        _cached_tokenizer(tokenizer_path),
        max_length=max_length,
        profile_conditioning=profile,
        train_history_turns=history,
    )


def tokenize_with_ray(config: PolyAlignConfig, model_path: str, split: str = "train") -> ray.data.Dataset:
    """Token ids and labels of every record of ``split``, computed by Ray Data tasks, materialized."""
    directory = split_dir(config.data.output_dir, split)
    if not any(directory.glob("*.parquet")):
        raise FileNotFoundError(f"no {split} records under {directory}: run `polyalign prepare` first")
    records = ray.data.read_parquet(str(directory.resolve()), schema=RECORD_SCHEMA)
    return records.map_batches(
        _tokenize_batch,
        fn_kwargs={
            "tokenizer_path": model_path,
            "max_length": config.model.max_length,
            "profile": config.model.profile_conditioning,
            "history": config.sft.train_history_turns,
        },
        batch_format="pyarrow",
        batch_size=512,
    ).materialize()


class RayTrainCheckpointer:
    """Every rank writes its part (its ZeRO shard; rank 0 also the state and the model folder) into a temporary
    folder and reports it; Ray Train merges the ranks' folders into one persisted checkpoint."""

    def save(self, step: int, metrics: dict[str, Any], write: Callable[[Path], None]) -> None:
        directory = Path(tempfile.mkdtemp(prefix=f"polyalign-ckpt-{step}-"))
        try:
            write(directory)
            ray.train.report(metrics, checkpoint=Checkpoint.from_directory(str(directory)))
        finally:
            shutil.rmtree(directory, ignore_errors=True)


def restore_checkpoint() -> Path | None:
    """The latest checkpoint Ray Train persisted for this run (after a worker-group restart), copied locally."""
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return None
    local = Path(tempfile.mkdtemp(prefix="polyalign-restore-"))
    checkpoint.to_directory(str(local))
    return local if (local / STATE_FILE).is_file() else None


def sft_worker_loop(loop_config: dict[str, Any]) -> None:
    """What each Ray Train worker runs."""
    config = config_from_dict(loop_config["config"])
    sft, model_cfg = config.sft, config.model
    if not sft.use_gpu and sft.torch_threads:
        torch.set_num_threads(sft.torch_threads)
    torch.manual_seed(sft.seed)
    context = ray.train.get_context()
    world = context.get_world_size()
    shard = ray.train.get_dataset_shard("train")
    tables = [t for t in shard.iter_batches(batch_format="pyarrow", batch_size=4096) if t.num_rows]
    examples = SFTExamples.from_table(pa.concat_tables(tables))
    total = total_optimizer_steps(sft, sum(examples.sizes().values()), world)
    tokenizer = load_tokenizer(loop_config["model_path"])
    model = apply_lora(load_causal_lm(loop_config["model_path"], model_cfg), model_cfg.lora)

    from polyalign_ray.distributed.deepspeed import DeepSpeedStrategy

    strategy = DeepSpeedStrategy(
        model,
        adamw_factory(sft.lr, sft.weight_decay),
        scheduler_factory(
            warmup_steps=sft.warmup_steps,
            total_steps=total,
            schedule=sft.lr_schedule,
            min_lr_ratio=sft.min_lr_ratio,
        ),
        deepspeed_config(sft, model_cfg, world),
        use_gpu=sft.use_gpu,
    )
    resume_from = restore_checkpoint()
    if resume_from is None and loop_config.get("resume_from"):
        resume_from = Path(loop_config["resume_from"])
    run_sft(
        strategy,
        examples,
        tokenizer,
        sft=sft,
        sampler_config=config.sampler,
        output_dir=Path(sft.output_dir),
        checkpointer=RayTrainCheckpointer(),
        resume_from=resume_from,
    )


def run_sft_with_ray(
    config: PolyAlignConfig, model_path: str, *, run_name: str = "sft", resume_from: str = ""
) -> dict[str, Any]:
    """Tokenize with Ray Data, train with a TorchTrainer of DeepSpeed workers; returns the summary.

    ``run_name`` is the Ray Train run folder under ``sft.output_dir/ray_results``: Ray Train continues a run found
    there from its latest checkpoint, so the caller picks it (``training_runs.open_training_run``)."""
    sft = config.sft
    if Path(model_path).exists():  # workers run in another working directory: hand them absolute paths
        model_path = str(Path(model_path).resolve())
    output_dir = Path(sft.output_dir).resolve()
    output_dir.mkdir(parents=True, exist_ok=True)
    config = config_from_dict(
        {**config_to_dict(config), "sft": {**config_to_dict(sft), "output_dir": str(output_dir)}}
    )
    dataset = tokenize_with_ray(config, model_path)
    log.info(
        "sft: %d tokenized train examples; %d workers, ZeRO-%d",
        dataset.count(),
        sft.num_workers,
        sft.zero_stage,
    )
    trainer = deepspeed_trainer(
        sft_worker_loop,
        {"config": config_to_dict(config), "model_path": model_path, "resume_from": resume_from},
        sft,
        name=run_name,
        output_dir=output_dir,
        datasets={"train": dataset},
    )
    return fit_and_summarize(trainer, output_dir)


def deepspeed_trainer(
    loop: Callable[[dict[str, Any]], None],
    loop_config: dict[str, Any],
    train: SFTConfig | HDPOConfig,
    *,
    name: str,
    output_dir: Path,
    datasets: dict[str, ray.data.Dataset],
) -> TorchTrainer:
    """The TorchTrainer both training stages use: ``train.num_workers`` DeepSpeed workers, checkpoints and restarts
    under ``output_dir/ray_results/name``, every dataset given whole to every worker (each rank samples its slice).
    A run folder that already holds checkpoints is continued from the latest one."""
    return TorchTrainer(
        loop,
        train_loop_config=loop_config,
        scaling_config=ScalingConfig(
            num_workers=train.num_workers,
            use_gpu=train.use_gpu,
            resources_per_worker={"CPU": train.cpus_per_worker} if not train.use_gpu else None,
        ),
        run_config=RunConfig(
            name=name,
            storage_path=str(output_dir / "ray_results"),
            failure_config=FailureConfig(max_failures=train.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=train.keep_checkpoints),
            worker_runtime_env={"env_vars": {"OMP_NUM_THREADS": str(train.torch_threads or os.cpu_count())}},
        ),
        datasets=datasets,
        dataset_config=DataConfig(datasets_to_split=[]),
    )


def fit_and_summarize(trainer: TorchTrainer, output_dir: Path, **extra: Any) -> dict[str, Any]:
    """Run the trainer; return rank 0's ``summary.json`` with ``extra`` and the last Ray checkpoint added (also
    written back)."""
    result = trainer.fit()
    summary = json.loads((output_dir / "summary.json").read_text(encoding="utf-8"))
    summary.update(extra)
    summary["ray_checkpoint"] = result.checkpoint.path if result.checkpoint else None
    (output_dir / "summary.json").write_text(
        json.dumps(summary, indent=1, ensure_ascii=False), encoding="utf-8"
    )
    return summary
