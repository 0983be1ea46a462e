"""The driver's progress line of a training stage, read from metrics.jsonl."""

from __future__ import annotations

import io
import json
from pathlib import Path

from polyalign_ray.training_progress import TrainingProgress, duration_text, last_metrics_line, progress_text


def test_duration_text() -> None:
    assert [duration_text(s) for s in (0, 42.4, 185, 3725)] == ["0s", "42s", "3m05s", "1h02m"]


def test_progress_text_with_and_without_a_total() -> None:
    line = {"step": 40, "total_steps": 300, "loss": 2.3104, "step_seconds": 0.82}
    # 260 steps left x 0.82 s = 213.2 s = 3m33s
    assert progress_text("sft", line) == "sft: step 40/300 · loss 2.310 · 0.82 s/step · ETA 3m33s"
    assert progress_text("hdpo", {"step": 3}) == "hdpo: step 3"


def test_last_metrics_line_skips_a_line_being_written(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    assert last_metrics_line(path) is None
    path.write_text(json.dumps({"step": 1}) + "\n" + '{"step": 2, "lo')
    assert last_metrics_line(path) == {"step": 1}


def test_a_plain_stream_gets_one_line_per_new_step_and_a_last_line(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    stream = io.StringIO()
    with TrainingProgress(path, "sft", every_s=1000, stream=stream) as progress:  # the thread stays quiet
        path.write_text(json.dumps({"step": 1, "total_steps": 2, "loss": 1.0, "step_seconds": 0.5}) + "\n")
        assert progress.show(final=False)
        assert not progress.show(final=False)  # the same step is not printed twice
        with path.open("a") as f:
            f.write(json.dumps({"step": 2, "total_steps": 2, "loss": 0.5, "step_seconds": 0.5}) + "\n")
    lines = stream.getvalue().splitlines()
    assert lines[0] == "sft: step 1/2 · loss 1.000 · 0.50 s/step · ETA 0s"
    assert lines[-1] == "sft: step 2/2 · loss 0.500 · 0.50 s/step · ETA 0s"
    assert len(lines) == 2
