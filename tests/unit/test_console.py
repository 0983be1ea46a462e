"""The quiet console's pieces: worker output to the log file with our warnings and tracebacks echoed, Ray's known
noise kept off the console, Ray Data's logging config with our file (no Ray instance needed)."""

from __future__ import annotations

import io
import logging
from pathlib import Path

from polyalign_ray.distributed.runtime import (
    ConsoleNoiseFilter,
    WorkerOutputToFile,
    ray_data_logging_config,
    route_raylet_messages,
    unroute_raylet_messages,
)


def batch(lines: list[str], pid: int = 7, actor: str = "RayTrainWorker") -> dict:
    return {"lines": lines, "pid": pid, "actor_name": actor, "is_err": True}


def test_worker_lines_go_to_the_file_and_only_what_matters_to_the_console() -> None:
    file, console = io.StringIO(), io.StringIO()
    handler = WorkerOutputToFile(file, console)
    handler(batch(["06:00:01 INFO polyalign_ray.loops.sft: step 3", "some Ray Data progress"]))
    handler(batch(["06:00:02 WARNING polyalign_ray.stages.critic: gate failed for kind cut"]))
    ours = [
        "Traceback (most recent call last):",
        '  File "/x/polyalign_ray/loops/sft.py", line 1, in run_sft',
        "ValueError: bad batch",
    ]
    rays = [
        "Traceback (most recent call last):",
        '  File "/x/ray/train/v2/placement_group_cleaner.py", line 80, in _monitor_loop',
        "ConnectionError: Found multiple active Ray instances",
    ]
    handler(batch(ours[:2], pid=8))
    handler(batch(rays, pid=9))  # interleaved with the first traceback, from another worker
    handler(batch(ours[2:], pid=8))
    handler({"lines": ["======== Autoscaler status ========"], "pid": "autoscaler", "is_err": False})
    assert len(file.getvalue().splitlines()) == 9  # everything, in arrival order, prefixed like Ray does
    assert (
        file.getvalue().splitlines()[0]
        == "(RayTrainWorker pid=7) 06:00:01 INFO polyalign_ray.loops.sft: step 3"
    )
    shown = console.getvalue().splitlines()
    assert shown == [
        "(RayTrainWorker pid=7) 06:00:02 WARNING polyalign_ray.stages.critic: gate failed for kind cut",
        *[f"(RayTrainWorker pid=8) {line}" for line in ours],
    ]


def test_console_noise_filter() -> None:
    keep = ConsoleNoiseFilter()

    def record(level: int, message: str) -> logging.LogRecord:
        return logging.LogRecord("ray.train", level, __file__, 1, message, None, None)

    assert keep.filter(record(logging.WARNING, "disk almost full"))
    assert not keep.filter(record(logging.INFO, "Started a local Ray instance."))
    assert not keep.filter(
        record(logging.WARNING, "Failed to query Ray Train Controller actor state. State API")
    )
    assert not keep.filter(record(logging.WARNING, "Progress bars disabled. To enable, set ..."))
    busy = (
        "Warning: The Ray cluster currently does not have any available CPUs. The Dataset job will hang ..."
    )
    assert not keep.filter(
        record(logging.WARNING, busy)
    )  # between two passes of a stage: in the log file only


def test_ray_data_config_adds_our_file_and_quiets_its_console(tmp_path: Path) -> None:
    from polyalign_ray.distributed.runtime import ray_data_logs_to_file
    from polyalign_ray.log_files import SwitchableLogStream, activate

    config = ray_data_logging_config()
    assert config["handlers"]["console"]["level"] == "WARNING"
    assert "polyalign_console_noise" in config["handlers"]["console"]["filters"]
    assert all("polyalign_file" in logger["handlers"] for logger in config["loggers"].values())
    # applied by Ray Data's own loader (as at every execution), its INFO lines reach the active stream
    stream = SwitchableLogStream(tmp_path / "ray.log")
    activate(stream)
    try:
        with ray_data_logs_to_file(tmp_path / "ray.log"):
            logging.getLogger("ray.data").info("Execution finished")
    finally:
        activate(None)
        stream.close()
    assert "Execution finished" in (tmp_path / "ray.log").read_text()


def test_the_raylets_messages_go_to_the_file_not_to_stdout(capsys) -> None:
    """Ray's error listener prints the raylet's messages itself; routed, they reach our handler (the file) and
    the console stays ours. Unrouted, Ray's own printer is back."""
    import ray._private.worker as ray_worker

    original = ray_worker.print_to_stdstream
    file, console = io.StringIO(), io.StringIO()
    route_raylet_messages(WorkerOutputToFile(file, console))
    route_raylet_messages(WorkerOutputToFile(io.StringIO(), io.StringIO()))  # a second route changes nothing
    try:
        ray_worker.print_to_stdstream(
            {
                "lines": ["WARNING: 8 PYTHON worker processes have been started"],
                "pid": "raylet",
                "is_err": False,
            },
            ignore_prefix=False,
        )
    finally:
        unroute_raylet_messages()
    assert ray_worker.print_to_stdstream is original
    assert file.getvalue() == "(pid=raylet) WARNING: 8 PYTHON worker processes have been started\n"
    assert console.getvalue() == "" and capsys.readouterr().out == ""
