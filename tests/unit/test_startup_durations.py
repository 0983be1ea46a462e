"""The startup phases a training stage reports in ``summary.json`` (``startup_s``), worked by hand."""

from __future__ import annotations

import pytest

from polyalign_ray.distributed.launcher import startup_durations


def test_startup_durations_by_hand() -> None:
    """fit() at t=100; the body starts at 110.5, its context at 111, model and data at 114, DeepSpeed at 116;
    fit returns at 130 after a 9 s loop: 10.5 / 0.5 / 3 / 2 s, 30 s in all, 30 - 16 - 9 = 5 s after the loop."""
    marks = {
        "fit_started": 100.0,
        "worker_entered": 110.5,
        "context_ready": 111.0,
        "model_and_data_ready": 114.0,
        "deepspeed_ready": 116.0,
    }
    assert startup_durations(marks, fit_returned=130.0, loop_seconds=9.0) == pytest.approx(
        {
            "workers_started": 10.5,
            "worker_context": 0.5,
            "model_and_data": 3.0,
            "deepspeed_init": 2.0,
            "fit_total": 30.0,
            "after_loop": 5.0,
        }
    )
