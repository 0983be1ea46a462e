"""What the benchmark scripts share: the machine and its load, quiet waits, peak memory, and a phase timer that
plugs into the training loops' :class:`~polyalign_ray.loops.probe.StepProbe` (no module patching).

A figure measured on a busy machine means little, so every script records the CPU the rest of the machine used
(``system_busy_s`` minus its own ``cpu_s``) and can wait for quiet first. Scripts run as ``python bench/NAME.py``,
which puts this folder on ``sys.path``: ``import harness`` needs nothing more.
"""

from __future__ import annotations

import contextlib
import os
import platform
import resource
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]

# Everything a benchmark child needs to stay offline and quiet.
OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "TQDM_DISABLE": "1",
    "DS_ACCELERATOR": "cpu",
}


def peak_rss_mib() -> float:
    """This process's peak resident memory."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def cpu_s() -> float:
    """CPU seconds this process has used (user + system)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def system_busy_s() -> float:
    """CPU seconds all processes on the machine have used since boot (/proc/stat; NaN where there is none)."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
        return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return float("nan")


def machine_cpu_util(window_s: float = 2.0) -> float:
    """Cores in use on the whole machine over a short window."""
    busy, start = system_busy_s(), time.perf_counter()
    time.sleep(window_s)
    return (system_busy_s() - busy) / (time.perf_counter() - start)


def wait_for_quiet(threshold: float, max_wait_s: float, window_s: float = 5.0) -> tuple[float, float]:
    """Wait until the machine uses under ``threshold`` cores for one window; (seconds waited, last reading)."""
    start = time.perf_counter()
    while True:
        used = machine_cpu_util(window_s)
        if used != used or used < threshold or time.perf_counter() - start > max_wait_s:
            return time.perf_counter() - start, used


def machine_info() -> dict[str, Any]:
    """CPU model, logical CPUs, memory and Python: the header of every result file."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    mem_gib = float("nan")
    try:
        with open("/proc/meminfo") as f:
            mem_gib = int(f.readline().split()[1]) / 2**20
    except (OSError, ValueError, IndexError):
        pass
    return {
        "cpu": cpu,
        "logical_cpus": os.cpu_count(),
        "mem_gib": round(mem_gib, 1),
        "python": platform.python_version(),
        "host_kernel": platform.release(),
    }


def fmt(value: Any, digits: int = 3) -> str:
    """A table cell: None as a dash; floats with ``digits`` decimals below 100, else whole with thousands commas."""
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}" if abs(value) < 100 else f"{value:,.0f}"
    return str(value)


class PhaseTimer:
    """A :class:`~polyalign_ray.loops.probe.StepProbe` that records wall seconds per section and per optimizer
    step, and (real tokens, padded tokens, loss tokens, rows) of every micro-batch the loop hands it."""

    def __init__(self) -> None:
        self.current: dict[str, float] = {}
        self.steps: list[dict[str, float]] = []
        self.batches: list[tuple[int, int, int, int]] = []

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.current[name] = self.current.get(name, 0.0) + time.perf_counter() - start

    def batch(self, batch: Mapping[str, Any]) -> None:
        self.batches.append(
            (
                int(batch["attention_mask"].sum()),
                int(batch["input_ids"].numel()),
                int((batch["labels"] != -100).sum()),
                int(batch["input_ids"].shape[0]),
            )
        )

    def step_end(self, step: int) -> None:
        self.steps.append(self.current)
        self.current = {}


def matmul_peak_gflops(size: int = 2048, repeats: int = 5) -> float:
    """fp32 GFLOP/s of a size³ matmul with this process's torch threads (best of ``repeats``): the peak a
    training step's FLOP rate is measured against (MFU), taken in the same process as the step."""
    import torch

    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b  # warm the kernels and the allocator
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e9
