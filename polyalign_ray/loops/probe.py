"""What a benchmark or a profiler may observe of a training step, without patching the loops.

Both loops mark the sections of a step with ``probe.phase(name)`` and hand each collated micro-batch to
``probe.batch(...)``; the default probe does nothing. The section names are the same in both loops, so one
timer reads either: ``batch`` (draw and collate), ``reference`` (the frozen reference's forward, HDPO only),
``forward`` (the policy's forward and its response log-probs), ``loss``, ``backward``, ``optimizer_step``,
``metrics`` (the all-reduce of the step's sums), ``log`` and ``checkpoint``. A step ends with
``probe.step_end(step)``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Protocol

import torch

PHASES = (
    "batch",
    "reference",
    "forward",
    "loss",
    "backward",
    "optimizer_step",
    "metrics",
    "log",
    "checkpoint",
)


class StepProbe(Protocol):
    def phase(self, name: str) -> contextlib.AbstractContextManager[None]:
        """A context around one section of the step (may be entered several times per step)."""
        ...

    def batch(self, batch: Mapping[str, torch.Tensor]) -> None:
        """One collated micro-batch, before its forward (for token counts)."""
        ...

    def step_end(self, step: int) -> None:
        """The optimizer step ``step`` is complete (logged and checkpointed)."""
        ...


class NoProbe:
    """The default: observes nothing and costs a function call per section."""

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        yield

    def batch(self, batch: Mapping[str, torch.Tensor]) -> None:
        return None

    def step_end(self, step: int) -> None:
        return None


NO_PROBE = NoProbe()
