"""A training stage's progress on the driver's console, read from the ``metrics.jsonl`` rank 0 writes.

The workers' own output goes to the log file (``ray.console: quiet``), so the driver follows the metrics file
instead: on a terminal one line rewritten in place, elsewhere (CI, ``tee``, a job log) a plain line every
``every_s`` seconds; always a last line when the stage ends. Reading the file needs it on a file system the
driver sees: the local machine, or the cluster's shared storage.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO


def duration_text(seconds: float) -> str:
    """``42s``, ``3m05s``, ``1h02m``."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def progress_text(label: str, line: dict[str, Any]) -> str:
    """``sft: step 40/300 · loss 2.310 · 0.82 s/step · ETA 3m33s`` from one metrics line."""
    step, total = int(line["step"]), line.get("total_steps")
    parts = [f"{label}: step {step}" + (f"/{total}" if total else "")]
    if isinstance(line.get("loss"), (int, float)):
        parts.append(f"loss {line['loss']:.3f}")
    seconds = line.get("step_seconds")
    if isinstance(seconds, (int, float)):
        parts.append(f"{seconds:.2f} s/step")
        if total:
            parts.append(f"ETA {duration_text(seconds * (int(total) - step))}")
    return " · ".join(parts)


def last_metrics_line(path: Path) -> dict[str, Any] | None:
    """The last complete JSON line of ``path`` (None while there is none)."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError:
        return None
    for text in reversed(lines):
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            continue  # a line being written
    return None


class TrainingProgress:
    """Context manager: follow ``metrics_path`` in a background thread while the stage trains; every complete line
    also goes, once and in order, to ``on_line`` (experiment tracking)."""

    def __init__(
        self,
        metrics_path: Path,
        label: str,
        *,
        every_s: float = 30.0,
        stream: TextIO | None = None,
        on_line: Callable[[dict[str, Any]], None] | None = None,
        print_progress: bool = True,
    ) -> None:
        self.metrics_path, self.label, self.every_s = metrics_path, label, every_s
        self.on_line = on_line
        self.print_progress = print_progress
        self.lines_done = 0
        self.stream = stream or sys.stdout
        self.interactive = bool(getattr(self.stream, "isatty", lambda: False)())
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.follow, name=f"progress-{label}", daemon=True)
        self.shown_step: int | None = None

    def __enter__(self) -> TrainingProgress:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=5)
        self.hand_new_lines()
        self.show(final=True)

    def hand_new_lines(self) -> None:
        """Each complete metrics line not handed to ``on_line`` yet, in order (a partly written last line waits)."""
        if self.on_line is None:
            return
        try:
            texts = self.metrics_path.read_text(encoding="utf-8").split("\n")[:-1]
        except OSError:
            return
        if len(texts) < self.lines_done:  # the file was truncated (a resume from an earlier checkpoint)
            self.lines_done = 0
        for text in texts[self.lines_done :]:
            try:
                line = json.loads(text)
            except json.JSONDecodeError:
                break
            self.on_line(line)
            self.lines_done += 1

    def follow(self) -> None:
        last_print = time.monotonic()
        while not self.stop.wait(1.0 if self.interactive else min(self.every_s, 5.0)):
            self.hand_new_lines()
            due = self.interactive or time.monotonic() - last_print >= self.every_s
            if due and self.show(final=False):
                last_print = time.monotonic()

    def show(self, *, final: bool) -> bool:
        """Print the latest step if it is new (the final call on a terminal also ends the rewritten line)."""
        if not self.print_progress:
            return False
        line = last_metrics_line(self.metrics_path)
        if line is None or "step" not in line:
            return False
        if line["step"] == self.shown_step and not (final and self.interactive):
            return False
        text = progress_text(self.label, line)
        if self.interactive:
            self.stream.write("\r" + text.ljust(100) + ("\n" if final else ""))
        else:
            self.stream.write(text + "\n")
        self.stream.flush()
        self.shown_step = line["step"]
        return True
