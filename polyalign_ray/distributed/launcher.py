"""The one Ray Train launcher: a TorchTrainer of DeepSpeed ZeRO workers that runs a stage's worker body.

A training stage (``stages/sft.py``, ``stages/hdpo.py``) hands :func:`launch_training` its worker body (a plain
function of a :class:`~polyalign_ray.stages.context.WorkerContext` and a JSON-able payload), its training section
(workers, GPU, CPUs, threads, failures, checkpoints), the Ray Datasets its workers read, and the Ray Train run name
(``training_runs`` picks it: Ray Train continues a run found in ``output_dir/ray_results/NAME`` from its latest
checkpoint). Each worker gets a :class:`RayWorkerContext`: its rank, every row of each dataset
(``DataConfig(datasets_to_split=[])``: the samplers give each rank its slice of the same global batch, so bucket
shares are exact and every rank takes the same number of steps), a checkpointer that reports to Ray Train, the
checkpoint Ray Train hands back after a restart, and a DeepSpeed strategy.

Where a stage's time goes before its first step: rank 0 writes ``OUTPUT/startup.json`` (wall-clock marks from
``fit()`` to the worker's entry, its context, the model and data, and DeepSpeed's initialization), and the driver
adds the durations to ``summary.json`` as ``startup_s`` (see :func:`startup_durations`).

Fault tolerance: ``FailureConfig(max_failures)`` restarts the worker group after a crash; the restarted body gets
the latest reported checkpoint as ``restore_path`` and continues from its step and sampler state.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
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

from polyalign_ray.config import PolyAlignConfig, TrainingSection
from polyalign_ray.distributed.runtime import configure_worker_logging, free_resources, wait_until_free
from polyalign_ray.loops.checkpoints import STATE_FILE
from polyalign_ray.loops.strategy import OptimizerFactory, SchedulerFactory, Strategy
from polyalign_ray.tracking import StageRun, run_root
from polyalign_ray.training_progress import TrainingProgress

WorkerBody = Callable[[Any, dict[str, Any]], None]


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
    """The latest checkpoint Ray Train persisted for this run (after a restart or an interruption), copied locally."""
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return None
    local = Path(tempfile.mkdtemp(prefix="polyalign-restore-"))
    checkpoint.to_directory(str(local))
    if (local / STATE_FILE).is_file():
        return local
    shutil.rmtree(local, ignore_errors=True)
    return None


class RayWorkerContext:
    """:class:`~polyalign_ray.stages.context.WorkerContext` inside a Ray Train worker."""

    def __init__(self, output_dir: Path | None = None, marks: dict[str, float] | None = None) -> None:
        context = ray.train.get_context()
        self.rank = context.get_world_rank()
        self.world_size = context.get_world_size()
        self.checkpointer = RayTrainCheckpointer()
        self.restore_path = restore_checkpoint()
        self.output_dir = output_dir
        self.marks = {**(marks or {}), "context_ready": time.time()}

    def dataset(self, name: str) -> pa.Table:
        shard = ray.train.get_dataset_shard(name)
        tables = [t for t in shard.iter_batches(batch_format="pyarrow", batch_size=4096) if t.num_rows]
        return pa.concat_tables(tables)

    def strategy(
        self,
        model: torch.nn.Module,
        optimizer_factory: OptimizerFactory,
        scheduler_factory: SchedulerFactory,
        ds_config: dict[str, Any],
        *,
        use_gpu: bool,
    ) -> Strategy:
        from polyalign_ray.distributed.deepspeed import DeepSpeedStrategy

        self.marks["model_and_data_ready"] = time.time()
        strategy = DeepSpeedStrategy(model, optimizer_factory, scheduler_factory, ds_config, use_gpu=use_gpu)
        self.marks["deepspeed_ready"] = time.time()
        if self.rank == 0 and self.output_dir is not None:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            (self.output_dir / STARTUP_FILE).write_text(json.dumps(self.marks), encoding="utf-8")
        return strategy


WORKERS_FILE = "workers.jsonl"
STARTUP_FILE = "startup.json"
STARTUP_PHASES = (
    ("workers_started", "fit_started", "worker_entered"),
    ("worker_context", "worker_entered", "context_ready"),
    ("model_and_data", "context_ready", "model_and_data_ready"),
    ("deepspeed_init", "model_and_data_ready", "deepspeed_ready"),
)
"""(phase, from mark, to mark): ``workers_started`` is Ray Train's controller, placement group and worker
processes up to the body's first line (their imports included; after a restart, every attempt); ``worker_context``
the restored checkpoint and dataset shards; ``model_and_data`` the model, tokenizer and examples."""


def startup_durations(marks: dict[str, float], fit_returned: float, loop_seconds: float) -> dict[str, float]:
    """Seconds per startup phase from rank 0's wall-clock marks (one machine's clock for all but the first phase,
    whose start is the driver's), plus ``fit_total`` and ``after_loop``: what ``fit()`` took beyond the startup and
    the loop's own wall time (checkpoint writes, the final model, the worker group's teardown)."""
    out = {name: round(marks[end] - marks[start], 3) for name, start, end in STARTUP_PHASES}
    out["fit_total"] = round(fit_returned - marks["fit_started"], 3)
    out["after_loop"] = round(fit_returned - marks["deepspeed_ready"] - loop_seconds, 3)
    return out


def record_worker(output_dir: Path, context: RayWorkerContext) -> None:
    """One line per worker start in ``OUTPUT/workers.jsonl``: rank, Ray node, process and the step of the
    checkpoint it resumed from (none on a fresh start). After a restart it shows where the group went again; the
    multi-node test reads placement from it."""
    step = None
    if context.restore_path is not None:
        step = json.loads((context.restore_path / STATE_FILE).read_text(encoding="utf-8"))["step"]
    line = {
        "rank": context.rank,
        "world_size": context.world_size,
        "node_id": ray.get_runtime_context().get_node_id(),
        "pid": os.getpid(),
        "resumed_from_step": step,
    }
    output_dir.mkdir(parents=True, exist_ok=True)
    with (output_dir / WORKERS_FILE).open("a", encoding="utf-8") as handle:
        handle.write(json.dumps(line) + "\n")


def _worker_entry(loop_config: dict[str, Any]) -> None:
    """What each Ray Train worker runs: the stage's body with this worker's context (the local copy of a restored
    checkpoint is removed afterwards)."""
    entered = time.time()
    configure_worker_logging()
    output_dir = Path(loop_config["output_dir"])
    context = RayWorkerContext(
        output_dir, {"fit_started": loop_config["fit_started"], "worker_entered": entered}
    )
    record_worker(output_dir, context)
    try:
        loop_config["body"](context, loop_config["payload"])
    finally:
        if context.restore_path is not None:
            shutil.rmtree(context.restore_path, ignore_errors=True)


def deepspeed_trainer(
    body: WorkerBody,
    payload: dict[str, Any],
    train: TrainingSection,
    *,
    name: str,
    output_dir: Path,
    datasets: dict[str, ray.data.Dataset],
    fit_started: float,
) -> TorchTrainer:
    """The TorchTrainer every training stage uses: ``train.num_workers`` DeepSpeed workers running ``body``,
    checkpoints and restarts under ``output_dir/ray_results/name``, every dataset given whole to every worker.
    A run folder that already holds checkpoints is continued from the latest one."""
    return TorchTrainer(
        _worker_entry,
        train_loop_config={
            "body": body,
            "payload": payload,
            "output_dir": str(output_dir),
            "fit_started": fit_started,
        },
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


def launch_training(
    body: WorkerBody,
    payload: dict[str, Any],
    train: TrainingSection,
    *,
    name: str,
    output_dir: Path,
    datasets: dict[str, ray.data.Dataset],
    config: PolyAlignConfig,
    stage: str,
    **extra: Any,
) -> dict[str, Any]:
    """Run ``body`` on the workers; return rank 0's ``summary.json`` with ``extra`` and the last Ray checkpoint
    added (also written back). While it trains, the driver prints its progress and hands every metrics line to the
    experiment trackers (``tracking.backends``): one run per stage, named by its folder."""
    (output_dir / STARTUP_FILE).unlink(missing_ok=True)
    trainer = deepspeed_trainer(
        body, payload, train, name=name, output_dir=output_dir, datasets=datasets, fit_started=time.time()
    )
    tracker = StageRun(config.tracking, run_root(config), output_dir, stage=stage).start(config)
    free_before = free_resources()
    try:
        with TrainingProgress(output_dir / "metrics.jsonl", output_dir.name, on_line=tracker.log_line):
            result = trainer.fit()
        fit_returned = time.time()
        # the worker group's CPUs back before the next stage starts a Ray Data pass
        wait_until_free(free_before)
    except BaseException:
        tracker.end("FAILED")
        raise
    summary = json.loads((output_dir / "summary.json").read_text(encoding="utf-8"))
    summary.update(extra)
    if (output_dir / STARTUP_FILE).is_file():
        marks = json.loads((output_dir / STARTUP_FILE).read_text(encoding="utf-8"))
        summary["startup_s"] = startup_durations(marks, fit_returned, float(summary.get("wall_s", 0.0)))
    summary["ray_checkpoint"] = result.checkpoint.path if result.checkpoint else None
    (output_dir / "summary.json").write_text(
        json.dumps(summary, indent=1, ensure_ascii=False), encoding="utf-8"
    )
    tracker.log_files(output_dir / "summary.json")
    tracker.end()
    return summary
