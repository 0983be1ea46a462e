"""Experiment tracking read back with each library's own reader: MLflow's client and TensorBoard's event reader."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from polyalign_ray.config import ConfigError, load_config
from polyalign_ray.tracking import MLflowBackend, StageRun, flat_numbers, flat_params, metric_key, run_name


def test_names_and_flattening() -> None:
    assert metric_key("bucket_loss/en|single|qa|short") == "bucket_loss/en.single.qa.short"
    line = {"loss": 1.5, "ok": True, "note": "x", "nan": float("nan"), "bucket_counts": {"zh|multi": 3}}
    assert dict(flat_numbers(line)) == {"loss": 1.5, "bucket_counts/zh.multi": 3.0}
    assert flat_params({"sft": {"lr": 0.001, "seeds": [0, 1], "name": "a"}}) == {
        "sft.lr": "0.001",
        "sft.seeds": "[0, 1]",
        "sft.name": "a",
    }
    root = Path("/r/runs/demo")
    assert run_name(root / "seeds" / "seed_1" / "hdpo", root) == "seeds/seed_1/hdpo"
    assert run_name("/r/runs/sweep/trial_3/hdpo", root) == "sweep/trial_3/hdpo"
    assert run_name("/elsewhere/sft", root) == "/elsewhere/sft"


def tracked_stage(tmp_path: Path, backends: str):
    config = load_config(
        None, [f"data.output_dir={tmp_path / 'run' / 'data'}", f"tracking.backends={backends}"]
    )
    stage_dir = tmp_path / "run" / "sft"
    stage_dir.mkdir(parents=True)
    (stage_dir / "summary.json").write_text('{"steps": 2}')
    run = StageRun(config.tracking, tmp_path / "run", stage_dir, stage="sft").start(config)
    for step, loss in ((1, 2.0), (2, 1.25)):
        run.log_line({"step": step, "loss": loss, "bucket_loss": {"en|single|qa|short": loss + 1}})
    run.log_files(stage_dir / "summary.json")
    run.end()
    return config, run


def test_mlflow_and_tensorboard_hold_the_params_step_metrics_and_files(tmp_path: Path) -> None:
    from mlflow import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    config, run = tracked_stage(tmp_path, "[mlflow, tensorboard]")
    assert [b.name for b in run.backends] == ["mlflow", "tensorboard"]
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'run' / 'mlflow' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("run")  # the run root's folder name
    (found,) = client.search_runs([experiment.experiment_id])
    assert found.info.run_name == "sft" and found.info.status == "FINISHED"
    assert found.data.params["sft.lr"] == str(config.sft.lr)
    assert found.data.tags["stage"] == "sft"
    history = client.get_metric_history(found.info.run_id, "loss")
    assert [(m.step, m.value) for m in history] == [(1, 2.0), (2, 1.25)]
    bucket = client.get_metric_history(found.info.run_id, "bucket_loss/en.single.qa.short")
    assert [m.value for m in bucket] == [3.0, 2.25]
    assert [a.path for a in client.list_artifacts(found.info.run_id)] == ["summary.json"]

    events = EventAccumulator(str(tmp_path / "run" / "tensorboard" / "sft"))
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("loss")] == [(1, 2.0), (2, 1.25)]
    assert [e.value for e in events.Scalars("bucket_loss/en.single.qa.short")] == [3.0, 2.25]


def test_a_failing_backend_warns_once_and_is_dropped(tmp_path: Path, monkeypatch, caplog) -> None:
    def broken(self, step, values):
        raise ConnectionError("tracking server went away")

    monkeypatch.setattr(MLflowBackend, "metrics", broken)
    with caplog.at_level(logging.WARNING, logger="polyalign_ray.tracking"):
        _, run = tracked_stage(tmp_path, "[mlflow, tensorboard]")
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and "mlflow failed to log metrics" in warnings[0]
    assert [b.name for b in run.backends] == ["tensorboard"]  # the other backend kept logging


def test_bad_backends_are_config_errors_that_name_the_fix() -> None:
    with pytest.raises(ConfigError, match="unknown backend 'neptune'"):
        load_config(None, ["tracking.backends=[neptune]"])
    with pytest.raises(ConfigError, match="pip install wandb"):
        load_config(None, ["tracking.backends=[wandb]"])
    assert load_config(None, ["tracking.backends=[]"]).tracking.backends == ()


def open_backend_after(barrier, root: str, queue) -> None:
    """A child process: wait until every sibling is ready, then open the tracker on a fresh root at once."""
    barrier.wait()
    try:
        queue.put(MLflowBackend("", "race", Path(root)).experiment_id)
    except Exception as error:  # reported to the parent, which fails the test with it
        queue.put(f"{type(error).__name__}: {error}")


def test_stages_opening_a_fresh_mlflow_database_at_once_all_succeed(tmp_path: Path) -> None:
    """Seeds and sweep trials start their stages together in separate processes: without the creation lock, two
    clients migrate the new sqlite schema at once and one fails ("duplicate column name"), dropping its run."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    barrier, queue = context.Barrier(3), context.Queue()
    children = [
        context.Process(target=open_backend_after, args=(barrier, str(tmp_path), queue)) for _ in range(3)
    ]
    for child in children:
        child.start()
    results = [queue.get(timeout=120) for _ in children]
    for child in children:
        child.join(timeout=60)
    assert len(set(results)) == 1 and str(results[0]).isdigit(), results
