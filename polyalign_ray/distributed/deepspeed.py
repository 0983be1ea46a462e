"""The :class:`~polyalign_ray.loops.strategy.Strategy` on DeepSpeed ZeRO (stages 0-3), inside a Ray Train worker
whose process group Ray has already created (DeepSpeed reuses it)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from polyalign_ray.loops.strategy import OptimizerFactory, SchedulerFactory, trainable_parameters
from polyalign_ray.models import save_model_folder

CHECKPOINT_TAG = "ds"


def init_deepspeed_distributed(use_gpu: bool) -> None:
    """``deepspeed.init_distributed`` on the existing process group. On CPU, DeepSpeed would JIT-compile a
    shared-memory all-reduce op (~50 s) that only inference uses; we skip the build (CPU_NOTES.md)."""
    import deepspeed
    import deepspeed.comm.torch

    if not use_gpu:
        sys.modules["deepspeed.comm.torch"].build_shm_op = lambda: None
    deepspeed.init_distributed(dist_backend="nccl" if use_gpu else "gloo")


class DeepSpeedStrategy:
    """One data-parallel rank of a DeepSpeed ZeRO engine."""

    def __init__(
        self,
        model: torch.nn.Module,
        optimizer_factory: OptimizerFactory,
        scheduler_factory: SchedulerFactory,
        ds_config: dict[str, Any],
        *,
        use_gpu: bool,
    ):
        import deepspeed
        import torch._dynamo

        init_deepspeed_distributed(use_gpu)
        self.rank = dist.get_rank()
        self.world_size = dist.get_world_size()
        self.device = torch.device(f"cuda:{torch.cuda.current_device()}") if use_gpu else torch.device("cpu")
        self.zero_stage = int(ds_config.get("zero_optimization", {}).get("stage", 0))
        params = trainable_parameters(model)
        optimizer = optimizer_factory(params)
        scheduler = scheduler_factory(optimizer)
        self.engine, _, _, self.scheduler = deepspeed.initialize(
            model=model, optimizer=optimizer, lr_scheduler=scheduler, config=ds_config
        )

    @property
    def model(self) -> torch.nn.Module:
        return self.engine

    def backward(self, loss: torch.Tensor) -> None:
        # Undo DeepSpeed's mean over ranks and its division by the accumulation steps (deepspeed_config.py).
        self.engine.backward(loss * self.world_size, scale_wrt_gas=False)
        self.engine.step()  # DeepSpeed counts micro-steps and only updates at the accumulation boundary

    def optimizer_step(self) -> float:
        norm = self.engine.get_global_grad_norm()
        return float(norm) if norm is not None else float("nan")

    def current_lr(self) -> float:
        return float(self.engine.get_lr()[0])

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        out = tensor.detach().clone().to(self.device)
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out.cpu()

    def barrier(self) -> None:
        dist.barrier()

    def broadcast_object(self, obj: Any) -> Any:
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def full_state_dict(self) -> dict[str, torch.Tensor] | None:
        import deepspeed

        module = self.engine.module
        state = None
        with deepspeed.zero.GatheredParameters(list(module.parameters()), enabled=self.zero_stage == 3):
            if self.rank == 0:
                state = {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}
        dist.barrier()
        return state

    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.engine.save_checkpoint(str(directory), tag=CHECKPOINT_TAG)

    def load(self, directory: Path) -> None:
        path, _ = self.engine.load_checkpoint(
            str(directory), tag=CHECKPOINT_TAG, load_optimizer_states=True, load_lr_scheduler_states=True
        )
        if path is None:
            raise FileNotFoundError(f"no DeepSpeed checkpoint under {directory}")

    def export(self, directory: Path, tokenizer: Any, *, final: bool) -> None:
        """Rank 0 writes the full weights; under ZeRO-3 every rank first joins the gather of the partitions."""
        import deepspeed

        module = self.engine.module
        with deepspeed.zero.GatheredParameters(list(module.parameters()), enabled=self.zero_stage == 3):
            if self.rank == 0:
                save_model_folder(module, tokenizer, directory, merge_lora=final)
        dist.barrier()
