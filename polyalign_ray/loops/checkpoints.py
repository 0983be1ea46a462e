"""Run state shared by the training loops: where checkpoints go, the metrics log, and the crash hook for tests.

A checkpoint is a folder holding ``state.json`` (the loop's position), the strategy state and an exported model;
``metrics.jsonl`` is one JSON line per logged step, truncated back to the checkpoint's step on resume so a resumed
run's log reads like the uninterrupted one.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

STATE_FILE = "state.json"


class Checkpointer(Protocol):
    """Where checkpoints go: a folder per step locally, or Ray Train's reported checkpoints."""

    def save(self, step: int, metrics: dict[str, Any], write: Callable[[Path], None]) -> None:
        """Call ``write(directory)`` on every rank, then make the directory the latest checkpoint."""


class LocalCheckpointer:
    """``OUTDIR/checkpoints/step_000042/``, keeping the newest ``keep`` of them."""

    def __init__(self, root: Path, keep: int, rank: int = 0):
        self.root = root
        self.keep = keep
        self.rank = rank

    def save(self, step: int, metrics: dict[str, Any], write: Callable[[Path], None]) -> None:
        directory = self.root / f"step_{step:06d}"
        write(directory)
        if self.rank == 0:
            for old in sorted(self.root.glob("step_*"))[: -self.keep]:
                shutil.rmtree(old, ignore_errors=True)

    def latest(self) -> Path | None:
        found = sorted(p for p in self.root.glob("step_*") if (p / STATE_FILE).is_file())
        return found[-1] if found else None


def write_metrics_line(path: Path, line: dict[str, Any]) -> None:
    with path.open("a", encoding="utf-8") as handle:
        handle.write(json.dumps(line, ensure_ascii=False) + "\n")


def truncate_metrics(path: Path, last_step: int) -> None:
    """On resume, drop log lines written after the checkpoint (they will be written again)."""
    if not path.is_file():
        return
    kept = [
        line
        for line in path.read_text(encoding="utf-8").splitlines()
        if json.loads(line)["step"] <= last_step
    ]
    path.write_text("".join(line + "\n" for line in kept), encoding="utf-8")


def maybe_fail(fail_at_step: int, step: int, rank: int, world_size: int, output_dir: Path) -> None:
    """Testing hook: the last rank exits abruptly, once, at ``fail_at_step`` (a marker file makes it once)."""
    marker = output_dir / f".failed_at_step_{step}"
    if fail_at_step == step and rank == world_size - 1 and not marker.exists():
        marker.touch()
        os._exit(1)


def maybe_hold(hold_at_step: int, step: int, rank: int, output_dir: Path, timeout_s: float = 300.0) -> None:
    """Testing hook: every rank waits, once, at ``hold_at_step`` until ``.release_step_N`` exists (rank 0 first
    writes ``.held_at_step_N``), so a test can remove a Ray node while the run is known to be mid-training."""
    if hold_at_step != step:  # every step passes here: nothing else to do on the others
        return
    held = output_dir / f".held_at_step_{step}"
    release = output_dir / f".release_step_{step}"
    if release.exists():
        return
    if rank == 0:
        held.touch()
    deadline = time.monotonic() + timeout_s
    while not release.exists() and time.monotonic() < deadline:
        time.sleep(0.05)


def start_or_resume(
    strategy: Any, resume_from: Path | None, metrics_path: Path, rank: int
) -> dict[str, Any] | None:
    """Where a loop starts. Resuming: the strategy state loaded and the metrics log cut back to the checkpoint's
    step (those lines will be written again); returns the checkpoint's ``state.json``. Starting: an old metrics
    log removed; returns None."""
    if resume_from is None:
        if rank == 0 and metrics_path.exists():
            metrics_path.unlink()
        return None
    state = json.loads((resume_from / STATE_FILE).read_text(encoding="utf-8"))
    strategy.load(resume_from / "strategy")
    if rank == 0:
        truncate_metrics(metrics_path, int(state["step"]))
    return state


def save_checkpoint(
    checkpointer: Checkpointer,
    strategy: Any,
    tokenizer: Any,
    *,
    step: int,
    loss: float,
    state: dict[str, Any],
    rank: int,
    write_extra: Callable[[Path], None] | None = None,
) -> None:
    """A checkpoint of ``step``: every rank's strategy state and the exported model; rank 0 also ``state.json``
    (the loop's position) and whatever ``write_extra`` writes (the HDPO pair source's state)."""

    def write(directory: Path) -> None:
        strategy.save(directory / "strategy")
        strategy.export(directory / "model", tokenizer, final=False)
        if rank == 0:
            if write_extra is not None:
                write_extra(directory)
            (directory / STATE_FILE).write_text(json.dumps(state), encoding="utf-8")

    checkpointer.save(step, {"step": step, "loss": loss}, write)


def write_summary(output_dir: Path, summary: dict[str, Any], rank: int) -> dict[str, Any]:
    """The run's summary to ``output_dir/summary.json`` (rank 0); returned for the caller."""
    if rank == 0:
        (output_dir / "summary.json").write_text(
            json.dumps(summary, indent=1, ensure_ascii=False), encoding="utf-8"
        )
    return summary
