"""What a training stage's worker body receives from the launcher: who it is, its data, where checkpoints go.

The worker bodies in ``stages/sft.py`` and ``stages/hdpo.py`` run inside Ray Train workers, but they are written
against this small interface only, so that a stage reads top to bottom (load model -> strategy -> data -> loop)
without Ray or DeepSpeed in it; ``distributed/launcher.py`` implements it on Ray Train + DeepSpeed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import pyarrow as pa
import torch

from polyalign_ray.deepspeed_config import deepspeed_config
from polyalign_ray.loops.checkpoints import Checkpointer
from polyalign_ray.loops.strategy import (
    OptimizerFactory,
    SchedulerFactory,
    Strategy,
    section_schedule,
)


class WorkerContext(Protocol):
    rank: int
    world_size: int
    checkpointer: Checkpointer
    restore_path: Path | None
    """The latest checkpoint of this run handed back after an interruption or a worker-group restart, else None."""

    def dataset(self, name: str) -> pa.Table:
        """Every row of the dataset ``name`` the launcher was given (each rank's sampler picks its slice)."""

    def strategy(
        self,
        model: torch.nn.Module,
        optimizer_factory: OptimizerFactory,
        scheduler_factory: SchedulerFactory,
        ds_config: dict[str, Any],
        *,
        use_gpu: bool,
    ) -> Strategy:
        """The training strategy of this rank (DeepSpeed ZeRO on Ray Train)."""


def training_strategy(
    context: WorkerContext, model: torch.nn.Module, train: Any, model_config: Any, total_steps: int
) -> Strategy:
    """The strategy both training stages build from their section (``sft`` or ``hdpo``): torch AdamW as the client
    optimizer, warmup then the configured decay over ``total_steps``, the generated DeepSpeed config."""
    adamw, schedule = section_schedule(train, total_steps)
    return context.strategy(
        model,
        adamw,
        schedule,
        deepspeed_config(train, model_config, context.world_size),
        use_gpu=train.use_gpu,
    )


def seed_worker(train: Any) -> None:
    """torch threads of a CPU worker (``torch_threads``, 0: torch's default) and the training seed."""
    if not train.use_gpu and train.torch_threads:
        torch.set_num_threads(train.torch_threads)
    torch.manual_seed(train.seed)
