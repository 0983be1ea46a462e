"""Starting and ending Ray: connect to a cluster when one is named, else start a local instance in-process.

The console belongs to people: by default (``ray.console: quiet``) it shows our stage lines, warnings and results,
and what Ray, Ray Data, Ray Train and the worker processes print goes to ``LOG_DIR/ray.log`` instead, or, while a
pipeline stage runs, to that stage's ``LOG_DIR/<stage>.log`` (``log_files.py``; Ray's session folder keeps its own
full logs as always). Three things make that so:

- the driver's ``ray`` loggers keep their level but their console handlers only pass warnings (Ray Data's
  execution reports and progress bars, Train's and Tune's status lines are INFO); everything reaches the file;
- worker output still travels to the driver (``log_to_driver``), where it is written to the file instead of the
  console. Worker lines of our own warnings and errors (``WARNING polyalign_ray...``: training workers log in
  our format) and Python tracebacks through our code are echoed to the console, so nothing that matters is
  hidden;
- known noise is dropped from the console only: Ray Train's PlacementGroupCleaner cannot query the state API on
  a local instance without a dashboard and says so every few seconds, token authentication is announced on
  every start, and Ray Data warns that the progress bars we turned off are off.

``ray.console: full`` (the ``-v`` flag) leaves Ray's console as Ray makes it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

import ray

from polyalign_ray.config import RayConfig
from polyalign_ray.log_files import SwitchableLogStream, activate

log = logging.getLogger(__name__)

RAY_LOGGERS = ("ray", "ray.data", "ray.train", "ray.tune")
QUIET_ENV = {"RAY_DATA_DISABLE_PROGRESS_BARS": "1", "RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS": "0"}
WORKER_LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# Worker lines echoed to the console in quiet mode: our own warnings and errors (tracebacks: WorkerOutputToFile).
WORKER_LINES_TO_SHOW = re.compile(r"\b(WARNING|ERROR|CRITICAL) polyalign")
# Driver records never worth a console line (they still reach the log file). Ray Data's "does not have any
# available CPUs" is checked once as a pass starts: between two of our passes (the HDPO stage's pair preparation
# and shard writing) the first one's actors may still hold the CPUs for a moment, and the pass runs when they
# return (wait_until_free covers the gaps after a fit and after the critic pool).
CONSOLE_NOISE = re.compile(
    r"Failed to query Ray Train Controller actor state|Token authentication is enabled|Progress bars disabled"
    r"|The Ray cluster currently does not have any available CPUs"
)


def configure_worker_logging() -> None:
    """Called first in a training worker: our loggers print INFO and above in the driver's format, so the driver
    can tell our warnings from Ray's lines (a Ray worker has no logging set up)."""
    logging.basicConfig(level=logging.INFO, format=WORKER_LOG_FORMAT, datefmt="%H:%M:%S")


class ConsoleNoiseFilter(logging.Filter):
    """Keeps console handlers of Ray's loggers to warnings, minus the known noise of :data:`CONSOLE_NOISE`."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING and not CONSOLE_NOISE.search(record.getMessage())


def worker_line_text(data: dict[str, Any], line: str) -> str:
    """One worker line as Ray would prefix it: ``(ActorName pid=123) text``."""
    name = data.get("actor_name") or data.get("task_name") or ""
    return f"({name + ' ' if name else ''}pid={data.get('pid')}) {line}"


class WorkerOutputToFile:
    """Receives the workers' stdout/stderr batches on the driver (Ray's stdstream dispatcher): every line to the
    log file; to the console our warnings, and tracebacks that pass through our code (a traceback is held per
    worker until its last line: Ray's internal threads dying in a worker are Ray's business, in the file)."""

    def __init__(self, file: TextIO, console: TextIO) -> None:
        self.file, self.console = file, console
        self.lock = threading.Lock()
        self.tracebacks: dict[Any, list[str]] = {}

    def __call__(self, data: dict[str, Any]) -> None:
        if data.get("pid") == "autoscaler":
            return  # its status table every 5 s; Ray's session logs keep it (monitor.log)
        with self.lock:
            key = data.get("pid")
            for line in data.get("lines", []):
                text = worker_line_text(data, line)
                self.file.write(text + "\n")
                if line.startswith("Traceback "):
                    self.tracebacks[key] = [text]
                elif key in self.tracebacks:
                    self.tracebacks[key].append(text)
                    if line and not line.startswith(" "):  # the exception line ends the traceback
                        held = self.tracebacks.pop(key)
                        if any("polyalign_ray" in held_line for held_line in held):
                            self.console.write("\n".join(held) + "\n")
                elif WORKER_LINES_TO_SHOW.search(line):
                    self.console.write(text + "\n")
            self.file.flush()


def ray_data_logging_config() -> dict[str, Any]:
    """Ray Data's own logging config (it re-applies it at every execution, so handler tweaks would not last),
    with its console handler at WARNING minus our noise filter, and a handler to the active log stream added
    (the command's ``ray.log``, or the running stage's file: ``log_files.py``)."""
    import copy

    from ray.data._internal.logging import DEFAULT_CONFIG

    config = copy.deepcopy(DEFAULT_CONFIG)
    config["filters"]["polyalign_console_noise"] = {"()": f"{__name__}.ConsoleNoiseFilter"}
    config["handlers"]["console"]["level"] = "WARNING"
    config["handlers"]["console"].setdefault("filters", []).append("polyalign_console_noise")
    config["handlers"]["polyalign_file"] = {
        "class": "polyalign_ray.log_files.ActiveStreamHandler",
        "formatter": "ray",
        "level": "INFO",
    }
    for logger in config["loggers"].values():
        logger["handlers"].append("polyalign_file")
    return config


@contextlib.contextmanager
def ray_loggers_to_file(log_file: Path) -> Iterator[WorkerOutputToFile]:
    """The driver's ``ray`` loggers (Ray Data's aside): everything to ``log_file``, only warnings that are not
    noise to the console. Yields the handler for worker output, which writes to the same file."""
    stream = SwitchableLogStream(log_file)
    activate(stream)
    file_handler = logging.StreamHandler(stream)
    file_handler.setFormatter(logging.Formatter(WORKER_LOG_FORMAT, "%H:%M:%S"))
    file_handler.setLevel(logging.INFO)
    noise = ConsoleNoiseFilter()
    filtered: list[logging.Handler] = []
    with_file: list[logging.Logger] = []
    for name in RAY_LOGGERS:
        if name == "ray.data":
            continue  # see ray_data_logs_to_file
        logger = logging.getLogger(name)
        for handler in logger.handlers:
            if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
                handler.addFilter(noise)
                filtered.append(handler)
        if name == "ray" or not logger.propagate:
            logger.addHandler(file_handler)
            with_file.append(logger)
    try:
        yield WorkerOutputToFile(stream, sys.stderr)
    finally:
        for handler in filtered:
            handler.removeFilter(noise)
        for logger in with_file:
            logger.removeHandler(file_handler)
        activate(None)
        stream.close()


@contextlib.contextmanager
def ray_data_logs_to_file(log_file: Path) -> Iterator[None]:
    """Ray Data's driver messages to ``log_file`` through its own config file (``RAY_DATA_LOGGING_CONFIG``):
    set after ``ray.init`` so that local workers do not inherit it, and applied now."""
    import yaml
    from ray.data._internal.logging import configure_logging

    data_config = log_file.parent / "ray-data-logging.yaml"
    data_config.write_text(yaml.safe_dump(ray_data_logging_config()), encoding="utf-8")
    previous = os.environ.get("RAY_DATA_LOGGING_CONFIG")
    os.environ["RAY_DATA_LOGGING_CONFIG"] = str(data_config)
    configure_logging()
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("RAY_DATA_LOGGING_CONFIG", None)
        else:
            os.environ["RAY_DATA_LOGGING_CONFIG"] = previous
        configure_logging()


def route_worker_output(handler: WorkerOutputToFile) -> bool:
    """Replace Ray's printing of worker output on the driver by ``handler``; False where this Ray has no such
    dispatcher (then worker output is simply not forwarded: ``log_to_driver`` off)."""
    try:
        from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher
    except ImportError:
        return False
    dispatcher.remove_handler("ray_print_logs")
    dispatcher.add_handler("polyalign_worker_output", handler)
    route_raylet_messages(handler)
    return True


def unroute_worker_output() -> None:
    unroute_raylet_messages()
    with contextlib.suppress(ImportError):
        from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher

        dispatcher.remove_handler("polyalign_worker_output")


def route_raylet_messages(handler: WorkerOutputToFile) -> None:
    """The raylet's messages to the driver to ``handler`` too. Why: they do not pass the dispatcher above. Ray's
    error-listener thread prints them itself (``ray._private.worker.print_to_stdstream``, pid "raylet") on
    stdout, so a 3-seed pipeline's console showed "(raylet) WARNING: 8 PYTHON worker processes have been started
    ..." between our lines. Other callers of that function keep Ray's printing."""
    import ray._private.worker as ray_worker

    printed_by_ray = getattr(ray_worker, "print_to_stdstream", None)
    if printed_by_ray is None or getattr(printed_by_ray, "polyalign_original", None):
        return

    def raylet_lines_to_handler(data: dict[str, Any], ignore_prefix: bool) -> None:
        if data.get("pid") == "raylet":
            handler(data)
        else:
            printed_by_ray(data, ignore_prefix)

    raylet_lines_to_handler.polyalign_original = printed_by_ray  # type: ignore[attr-defined]
    ray_worker.print_to_stdstream = raylet_lines_to_handler


def unroute_raylet_messages() -> None:
    import ray._private.worker as ray_worker

    original = getattr(getattr(ray_worker, "print_to_stdstream", None), "polyalign_original", None)
    if original is not None:
        ray_worker.print_to_stdstream = original


@contextlib.contextmanager
def ray_runtime(config: RayConfig, log_dir: str | Path | None = None) -> Iterator[None]:
    """Run the body with Ray available, and shut down only what this call started.

    ``config.address`` (or ``RAY_ADDRESS``) joins an existing cluster; otherwise a local instance is started with
    ``config.num_cpus`` CPUs, no dashboard, and Ray's usage reporting off, so nothing leaves the machine. With
    ``config.console == "quiet"`` Ray's own messages go to ``log_dir/ray.log`` (see the module docstring).
    """
    if ray.is_initialized():
        yield
        return
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    quiet = config.console == "quiet"
    if quiet:
        import torch

        # transformers imports DeepSpeed whenever it saves or loads a model, and DeepSpeed then guesses the
        # accelerator and says so on the console ("Setting accelerator to CPU ... unable to detect it"); without
        # CUDA the answer is known. (Local workers inherit it; Train workers pick their own accelerator anyway.)
        if not torch.cuda.is_available():
            os.environ.setdefault("DS_ACCELERATOR", "cpu")
    env_vars = dict(QUIET_ENV) if quiet else {}
    for key, value in env_vars.items():
        os.environ.setdefault(key, value)
    log_file = Path(log_dir or ".").resolve() / "ray.log"
    with contextlib.ExitStack() as stack:
        worker_output = stack.enter_context(ray_loggers_to_file(log_file)) if quiet else None
        address = config.address or os.environ.get("RAY_ADDRESS", "")
        if address:
            log.info("connecting to the Ray cluster at %s", address)
            # Remote workers cannot inherit this process's environment; a local instance's workers do, and any
            # runtime_env costs each new worker ~2 s here (no prestarted worker fits it).
            ray.init(address=address, log_to_driver=True, runtime_env={"env_vars": env_vars})
        else:
            # A local instance talks over loopback only (gloo otherwise picks the machine's external address).
            os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
            # Ray Train's controller polls its workers every 2 s by default; each checkpoint report waits for it.
            os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")
            kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": True}
            if config.num_cpus:
                kwargs["num_cpus"] = config.num_cpus
            if config.object_store_memory_mb:
                kwargs["object_store_memory"] = config.object_store_memory_mb * 2**20
            log.info("starting a local Ray instance (%s CPUs)", config.num_cpus or "all")
            ray.init(**kwargs)
        stack.callback(ray.shutdown)
        if worker_output is not None:
            stack.enter_context(ray_data_logs_to_file(log_file))
            if route_worker_output(worker_output):
                stack.callback(unroute_worker_output)
            log.info("Ray's messages: %s (Ray's session logs: %s)", log_file, session_log_dir())
        yield


def free_resources() -> dict[str, float]:
    """The cluster's available CPUs and GPUs now."""
    available = ray.available_resources()
    return {key: float(available.get(key, 0.0)) for key in ("CPU", "GPU")}


def wait_until_free(wanted: dict[str, float], *, timeout_s: float = 2.0) -> bool:
    """Wait (up to ``timeout_s``) until the cluster shows at least ``wanted`` CPUs/GPUs available; returns whether
    it did. Why: what a finished Ray Train worker group or a killed actor held comes back to the cluster some
    0.1-1 s after the call that released it returned, and a Ray Data pass started in that gap prints "The Ray
    cluster currently does not have any available CPUs. The Dataset job will hang ..." on the console (seen
    between the demo's DPO and HDPO stages). Another job taking them meanwhile only makes this wait ``timeout_s``."""
    total = ray.cluster_resources()
    wanted = {k: min(v, float(total.get(k, 0.0))) - 1e-6 for k, v in wanted.items() if v > 0}
    deadline = time.monotonic() + timeout_s
    while True:
        available = free_resources()
        if all(available.get(k, 0.0) >= v for k, v in wanted.items()):
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)


def session_log_dir() -> str:
    """The log folder of the Ray session this process is connected to (where each worker's full log is)."""
    try:
        return str(Path(ray._private.worker.global_worker.node.get_session_dir_path()) / "logs")
    except AttributeError:  # a client connection has no local node
        return "(on the cluster's head node)"
