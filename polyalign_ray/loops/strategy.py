"""The small interface the training loops are written against, and its plain-torch implementation.

A strategy owns the model, optimizer and scheduler and knows how this process relates to the others: backward,
optimizer step, all-reduce, checkpoint save/load, model export. ``LocalStrategy`` is one process, plain torch
(tests, debugging, the single-process benchmark); ``distributed/deepspeed.py`` implements the same interface on
DeepSpeed ZeRO under Ray Train. The loops never import either: they receive one.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import torch

from polyalign_ray.models import save_model_folder

if TYPE_CHECKING:
    from polyalign_ray.config import OptimizerSchedule

OptimizerFactory = Callable[[list[torch.nn.Parameter]], torch.optim.Optimizer]
SchedulerFactory = Callable[[torch.optim.Optimizer], torch.optim.lr_scheduler.LRScheduler]


class Strategy(Protocol):
    rank: int
    world_size: int
    device: torch.device

    @property
    def model(self) -> torch.nn.Module:
        """The module to call for forward passes."""

    def backward(self, loss: torch.Tensor) -> None:
        """Accumulate gradients of ``loss``, whose sum over the micro-batches and ranks of a step is the step's
        loss (no averaging is applied on top)."""

    def optimizer_step(self) -> float:
        """Clip, step optimizer and scheduler, zero gradients; returns the global gradient norm before clipping."""

    def current_lr(self) -> float: ...

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum over data-parallel ranks (a copy; the input is not modified)."""

    def barrier(self) -> None: ...

    def broadcast_object(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank (other ranks pass anything, e.g. None)."""

    def full_state_dict(self) -> dict[str, torch.Tensor] | None:
        """The full, unpartitioned weights as CPU tensors on rank 0 (None on other ranks); every rank must call it
        (under ZeRO-3 the partitions are gathered). Used to push the current policy to a rollout generator."""

    def save(self, directory: Path) -> None:
        """Model, optimizer and scheduler state into ``directory`` (every rank calls it)."""

    def load(self, directory: Path) -> None: ...

    def export(self, directory: Path, tokenizer: Any, *, final: bool) -> None:
        """A ``from_pretrained``-loadable folder of the current weights (every rank calls it; rank 0 writes).
        ``final`` merges LoRA adapters into the weights (which ends training with them)."""


def lr_multiplier(
    step: int, *, warmup_steps: int, total_steps: int, schedule: str, min_lr_ratio: float
) -> float:
    """Linear warmup over ``warmup_steps``, then constant, linear or cosine decay to ``min_lr_ratio`` at
    ``total_steps``. ``step`` counts optimizer steps already taken (0 for the first)."""
    if warmup_steps and step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant" or total_steps <= warmup_steps:
        return 1.0
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    if schedule == "linear":
        return 1.0 - (1.0 - min_lr_ratio) * progress
    return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def scheduler_factory(
    *, warmup_steps: int, total_steps: int, schedule: str, min_lr_ratio: float
) -> SchedulerFactory:
    """A LambdaLR following :func:`lr_multiplier` (stepped once per optimizer step)."""

    def build(optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LRScheduler:
        return torch.optim.lr_scheduler.LambdaLR(
            optimizer,
            lambda step: lr_multiplier(
                step,
                warmup_steps=warmup_steps,
                total_steps=total_steps,
                schedule=schedule,
                min_lr_ratio=min_lr_ratio,
            ),
        )

    return build


def adamw_factory(lr: float, weight_decay: float) -> OptimizerFactory:
    """torch's AdamW (DeepSpeed's own Adam JIT-compiles for a minute on CPU; see CPU_NOTES.md), fused where torch
    has the kernel (CPU and CUDA): one pass over each parameter instead of a dozen elementwise ops (the optimizer
    step is 0.011 s of a 0.67 s SFT step in bench/results/sft_throughput.md)."""

    def build(params: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
        fused = all(p.device.type in ("cpu", "cuda") for p in params)
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, betas=(0.9, 0.95), fused=fused)

    return build


def section_schedule(train: OptimizerSchedule, total_steps: int) -> tuple[OptimizerFactory, SchedulerFactory]:
    """A training section's (``sft``, ``hdpo``) AdamW and its schedule over ``total_steps``: what every strategy of
    a stage, a benchmark or a test builds from the section."""
    return adamw_factory(train.lr, train.weight_decay), scheduler_factory(
        warmup_steps=train.warmup_steps,
        total_steps=total_steps,
        schedule=train.lr_schedule,
        min_lr_ratio=train.min_lr_ratio,
    )


def trainable_parameters(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


class LocalStrategy:
    """One process, plain torch: the reference implementation of :class:`Strategy`."""

    rank = 0
    world_size = 1

    def __init__(
        self,
        model: torch.nn.Module,
        optimizer_factory: OptimizerFactory,
        scheduler_factory: SchedulerFactory,
        *,
        max_grad_norm: float,
        device: str = "cpu",
    ):
        self.device = torch.device(device)
        self._model = model.to(self.device)
        self.optimizer = optimizer_factory(trainable_parameters(self._model))
        self.scheduler = scheduler_factory(self.optimizer)
        self.max_grad_norm = max_grad_norm

    @classmethod
    def for_section(
        cls,
        model: torch.nn.Module,
        train: OptimizerSchedule,
        total_steps: int,
        optimizer_factory: OptimizerFactory | None = None,
    ) -> LocalStrategy:
        """The section's AdamW (or ``optimizer_factory``), schedule and clipping (:func:`section_schedule`)."""
        adamw, schedule = section_schedule(train, total_steps)
        return cls(model, optimizer_factory or adamw, schedule, max_grad_norm=train.max_grad_norm)

    @property
    def model(self) -> torch.nn.Module:
        return self._model

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def optimizer_step(self) -> float:
        params = trainable_parameters(self._model)
        if self.max_grad_norm > 0:
            norm = torch.nn.utils.clip_grad_norm_(params, self.max_grad_norm)
        else:
            norm = torch.linalg.vector_norm(
                torch.stack([p.grad.norm() for p in params if p.grad is not None])
            )
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(norm)

    def current_lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor.clone()

    def barrier(self) -> None:
        return None

    def broadcast_object(self, obj: Any) -> Any:
        return obj

    def full_state_dict(self) -> dict[str, torch.Tensor] | None:
        return {k: v.detach().cpu().clone() for k, v in self._model.state_dict().items()}

    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        torch.save(
            {
                "model": self._model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
            },
            directory / "local_strategy.pt",
        )

    def load(self, directory: Path) -> None:
        state = torch.load(directory / "local_strategy.pt", map_location=self.device, weights_only=False)
        self._model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])

    def export(self, directory: Path, tokenizer: Any, *, final: bool) -> None:
        save_model_folder(self._model, tokenizer, directory, merge_lora=final)
