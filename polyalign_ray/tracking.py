"""Experiment tracking: each training and evaluation stage becomes a run in MLflow, TensorBoard and/or W&B.

Why the driver logs, from files: every stage already writes what a tracker wants (``metrics.jsonl`` by rank 0,
``summary.json``, ``report.json``, the report and its plots), so the driver that launched the stage reads them,
live while it trains (the same follower as the console's progress line) and completely when it ends. Workers
never talk to a tracker: nothing to configure on rank 0 of every backend, nothing a tracker outage can crash.
A backend that fails mid-run warns once and is dropped; training goes on.

Layout: one experiment per run root (the folder above ``data.output_dir``: ``runs/demo``), one run per stage,
named by its folder under the root (``sft``, ``hdpo``, ``seeds/seed_1/hdpo``, ``eval/hdpo``). Params are the
resolved config as dotted keys; metrics are every number of a metrics line, dicts flattened (bucket ids have
their ``|`` written as ``.``: MLflow refuses ``|`` in names); tags carry the stage and the seed.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import math
import os
import re
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Protocol

from polyalign_ray.config import PolyAlignConfig, TrackingConfig, config_to_dict

log = logging.getLogger(__name__)

# No tracking library may phone home (the project runs offline).
OFFLINE_ENV = {"MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "1"}
MLFLOW_PARAMS_PER_BATCH = 100  # MLflow's limit per log_batch call
MLFLOW_PARAM_CHARS = 6000


def run_root(config: PolyAlignConfig) -> Path:
    """The folder that holds the whole run (data, stages, logs): the one above ``data.output_dir``."""
    return Path(config.data.output_dir).resolve().parent


def run_name(stage_dir: str | Path, root: Path) -> str:
    """A stage's run name: its folder relative to the root (``sft``, ``seeds/seed_0/hdpo``); a folder beside the
    root (a sweep's trials next to the data they share) relative to the root's parent (``sweep/trial_3/hdpo``)."""
    path = Path(stage_dir).resolve()
    for base in (root, root.parent):
        if path.is_relative_to(base) and path != base:
            return path.relative_to(base).as_posix()
    return path.as_posix()


def metric_key(key: str) -> str:
    """A name every backend accepts: ``|`` (bucket ids) becomes ``.``, anything else unusual ``_``."""
    return re.sub(r"[^\w\-. :/]", "_", key.replace("|", "."))


def flat_numbers(values: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, float]]:
    """Every finite number of a (nested) metrics dict as (dotted/slashed key, value); booleans and text skipped."""
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            yield from flat_numbers(value, f"{name}/")
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            yield metric_key(name), float(value)


def flat_params(values: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """A nested config as dotted keys with text values (lists as JSON)."""
    out: dict[str, str] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flat_params(value, f"{name}."))
        else:
            out[name] = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    return out


@contextlib.contextmanager
def exclusive_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (created if missing) for the block."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def experiment_id(client: Any, name: str, artifact_location: str | None) -> str:
    """The id of experiment ``name``, created if missing; a tracking server shared with other processes may create
    it between our lookup and our create, so a failed create looks it up again."""
    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    try:
        return client.create_experiment(name, artifact_location=artifact_location)
    except Exception:
        found = client.get_experiment_by_name(name)
        if found is None:
            raise
        return found.experiment_id


class Backend(Protocol):
    name: str

    def start(self, run: str, params: dict[str, str], tags: dict[str, str]) -> None: ...

    def metrics(self, step: int, values: dict[str, float]) -> None: ...

    def artifact(self, path: Path) -> None: ...

    def end(self, status: str) -> None: ...


class MLflowBackend:
    """MLflow through its client API (no global active run: concurrent stages in one process stay apart)."""

    name = "mlflow"

    def __init__(self, uri: str, experiment: str, root: Path) -> None:
        from mlflow import MlflowClient

        # after the import, which sets mlflow's levels: "Creating initial MLflow database tables..." is noise
        for name in ("mlflow", "alembic"):
            logging.getLogger(name).setLevel(logging.WARNING)

        if not uri:
            (root / "mlflow").mkdir(parents=True, exist_ok=True)
            uri = f"sqlite:///{root / 'mlflow' / 'mlflow.db'}"
        # Seeds and sweep trials start their stages at the same moment in other processes: the first client to
        # touch a new sqlite file runs MLflow's schema migrations, and two at once fail ("duplicate column name").
        # An exclusive lock beside the database makes creating the tables and the experiment one at a time.
        local = uri.startswith("sqlite:")
        with exclusive_lock(root / "mlflow" / ".create.lock") if local else contextlib.nullcontext():
            self.client = MlflowClient(tracking_uri=uri)
            location = (root / "mlflow" / "artifacts").as_uri() if local else None
            self.experiment_id = experiment_id(self.client, experiment, location)
        self.run_id = ""

    def start(self, run: str, params: dict[str, str], tags: dict[str, str]) -> None:
        from mlflow.entities import Param

        self.run_id = self.client.create_run(self.experiment_id, run_name=run, tags=tags).info.run_id
        items = [Param(k, v[:MLFLOW_PARAM_CHARS]) for k, v in sorted(params.items())]
        for start in range(0, len(items), MLFLOW_PARAMS_PER_BATCH):
            self.client.log_batch(self.run_id, params=items[start : start + MLFLOW_PARAMS_PER_BATCH])

    def metrics(self, step: int, values: dict[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, v, now, step) for k, v in values.items()]
        for start in range(0, len(items), 1000):
            self.client.log_batch(self.run_id, metrics=items[start : start + 1000])

    def artifact(self, path: Path) -> None:
        if path.is_dir():
            self.client.log_artifacts(self.run_id, str(path), artifact_path=path.name)
        else:
            self.client.log_artifact(self.run_id, str(path))

    def end(self, status: str) -> None:
        self.client.set_terminated(self.run_id, status=status)


class TensorBoardBackend:
    """Event files under ROOT/tensorboard/RUN (``tensorboard --logdir ROOT/tensorboard``)."""

    name = "tensorboard"

    def __init__(self, root: Path) -> None:
        self.root = root / "tensorboard"
        self.writer: Any = None

    def start(self, run: str, params: dict[str, str], tags: dict[str, str]) -> None:
        from tensorboardX import SummaryWriter

        self.writer = SummaryWriter(logdir=str(self.root / run))
        table = "\n".join(f"| {k} | {v} |" for k, v in sorted(params.items()))
        self.writer.add_text("config", "| key | value |\n|---|---|\n" + table, 0)

    def metrics(self, step: int, values: dict[str, float]) -> None:
        for key, value in values.items():
            self.writer.add_scalar(key, value, step)
        self.writer.flush()

    def artifact(self, path: Path) -> None:
        if path.suffix in (".md", ".txt") and path.is_file():
            self.writer.add_text(path.name, path.read_text(encoding="utf-8")[:100_000], 0)

    def end(self, status: str) -> None:
        self.writer.close()


class WandbBackend:
    """Weights & Biases, one ``wandb.init`` per stage (mode from ``WANDB_MODE``, e.g. offline)."""

    name = "wandb"

    def __init__(self, experiment: str, root: Path) -> None:
        self.experiment, self.root = experiment, root
        self.run: Any = None

    def start(self, run: str, params: dict[str, str], tags: dict[str, str]) -> None:
        import wandb

        self.run = wandb.init(
            project=self.experiment, name=run, config=params, tags=list(tags.values()), dir=str(self.root),
            reinit="create_new",
        )  # fmt: skip

    def metrics(self, step: int, values: dict[str, float]) -> None:
        self.run.log(values, step=step)

    def artifact(self, path: Path) -> None:
        self.run.save(str(path), base_path=str(path.parent))

    def end(self, status: str) -> None:
        self.run.finish(exit_code=0 if status == "FINISHED" else 1)


class StageRun:
    """One stage's run on every configured backend. Each call is guarded: a backend that raises is reported once
    and dropped, so tracking can never stop a stage."""

    def __init__(self, tracking: TrackingConfig, root: Path, stage_dir: str | Path, *, stage: str) -> None:
        self.name = run_name(stage_dir, root)
        self.stage = stage
        self.backends: list[Backend] = []
        for key, value in OFFLINE_ENV.items():
            os.environ.setdefault(key, value)
        experiment = tracking.experiment or root.name
        for backend in tracking.backends:
            made = self._guard(backend, "start", lambda b=backend: self._make(b, tracking, experiment, root))
            if made is not None:
                self.backends.append(made)

    @staticmethod
    def _make(backend: str, tracking: TrackingConfig, experiment: str, root: Path) -> Backend:
        if backend == "mlflow":
            return MLflowBackend(tracking.mlflow_uri, experiment, root)
        if backend == "tensorboard":
            return TensorBoardBackend(root)
        return WandbBackend(experiment, root)

    def _guard(self, backend: str, what: str, call: Any) -> Any:
        try:
            return call()
        except Exception as exc:  # a tracker must never stop training
            log.warning("tracking: %s failed to %s (%s: %s); it is dropped for %s", backend, what,
                        type(exc).__name__, exc, self.name)  # fmt: skip
            return None

    def _each(self, what: str, method: str, *args: Any) -> None:
        for backend in list(self.backends):
            ok = self._guard(backend.name, what, lambda b=backend: (getattr(b, method)(*args), True)[1])
            if ok is None:
                self.backends.remove(backend)

    def start(self, config: PolyAlignConfig, tags: dict[str, str] | None = None) -> StageRun:
        params = flat_params(config_to_dict(config))
        self._each("start a run", "start", self.name, params, {"stage": self.stage, **(tags or {})})
        return self

    def log_line(self, line: Mapping[str, Any]) -> None:
        """One metrics.jsonl line (its ``step``; the numbers of everything else)."""
        step = int(line.get("step", 0))
        values = dict(flat_numbers({k: v for k, v in line.items() if k != "step"}))
        if values:
            self._each("log metrics", "metrics", step, values)

    def log_final(self, values: Mapping[str, Any], step: int = 0) -> None:
        numbers = dict(flat_numbers(values))
        if numbers:
            self._each("log metrics", "metrics", step, numbers)

    def log_files(self, *paths: Path) -> None:
        for path in paths:
            if path.exists():
                self._each(f"log {path.name}", "artifact", path)

    def end(self, status: str = "FINISHED") -> None:
        self._each("end the run", "end", status)


def record_stage(
    config: PolyAlignConfig,
    stage_dir: str | Path,
    stage: str,
    metrics: Mapping[str, Any],
    files: list[Path],
    *,
    status: str = "FINISHED",
) -> None:
    """A stage without steps (critic, an evaluation, the comparison) as one run: its settings, its final numbers,
    its files. Does nothing when ``tracking.backends`` is empty."""
    if not config.tracking.backends:
        return
    run = StageRun(config.tracking, run_root(config), stage_dir, stage=stage).start(config)
    run.log_final(metrics)
    run.log_files(*files)
    run.end(status)
