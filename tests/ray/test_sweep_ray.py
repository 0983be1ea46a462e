"""A 2-trial Ray Tune sweep over ``hdpo.reg_lambda`` on the tiny setup of the session fixtures: each trial trains
HDPO on Ray Train and evaluates it; the table, best.yaml and plot are written; best.yaml run again through the
pipeline reproduces the best trial's objective."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from polyalign_ray.config import load_config
from polyalign_ray.distributed.tune_trials import run_sweep, sweep_plan
from polyalign_ray.stages.pipeline import mark_stage_done, pipeline_stages, run_pipeline, variant
from tests.ray.test_hdpo_ray import hdpo_config

pytestmark = pytest.mark.ray

EVAL = [
    "generation.max_new_tokens=24",
    "eval.per_bucket=6",
    "eval.min_bucket_items=2",
    "eval.human_per_bucket=50",
]


def test_two_trial_sweep_over_reg_lambda(data_dir, zero3_run, critic_bundle, tmp_path: Path) -> None:
    sweep_dir = tmp_path / "sweep"
    config = hdpo_config(
        data_dir,
        zero3_run,
        critic_bundle,
        tmp_path / "hdpo",
        "hdpo.max_steps=6",
        "hdpo.zero_stage=2",
        *EVAL,
        f"eval.output_dir={tmp_path / 'eval'}",
        f"sweep.output_dir={sweep_dir}",
        "sweep.space={hdpo.reg_lambda: [0.0, 2.0]}",
    )
    plan = sweep_plan(config)
    assert plan.prefix == ("data", "sft", "critic")
    # The session fixtures are the finished shared stages (prepared, SFT-trained, critic-trained once).
    shared = variant(config, pipeline={"baselines": False, "evaluate": False, "redo": []})
    for stage in pipeline_stages(shared):
        if stage.name in plan.prefix:
            mark_stage_done(stage, shared, 0.0)

    summary = run_sweep(config)

    rows = summary["trials"]
    assert [r["status"] for r in rows] == ["done", "done"], rows
    assert sorted(r["hdpo.reg_lambda"] for r in rows) == [0.0, 2.0]
    assert all(isinstance(r["aggregate"], float) and 0 <= r["aggregate"] <= 1 for r in rows)
    for stage in plan.prefix:  # shared stages were not trained again
        marker = json.loads(
            next(s.folder for s in pipeline_stages(shared) if s.name == stage)
            .joinpath("stage_done.json")
            .read_text()
        )
        assert marker["seconds"] == 0.0
    folders = [Path(r["trial_folder"]) for r in rows]
    final_losses = [
        json.loads((f / "hdpo" / "metrics.jsonl").read_text().splitlines()[-1])["loss"] for f in folders
    ]
    assert final_losses[0] != final_losses[1]  # lambda changed what was trained
    table = list(csv.DictReader((sweep_dir / "trials.csv").open()))
    assert len(table) == 2 and {"hdpo.reg_lambda", "aggregate", "status"} <= set(table[0])
    assert "hdpo.reg_lambda" in (sweep_dir / "trials.md").read_text()
    assert (sweep_dir / "objective.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    best = load_config(sweep_dir / "best.yaml")
    assert best.hdpo.reg_lambda == summary["best"]["params"]["hdpo.reg_lambda"]
    assert best.hdpo.output_dir == str(sweep_dir.resolve() / "best" / "hdpo")
    assert best.sft.output_dir == config.sft.output_dir
    # `polyalign pipeline --config best.yaml` (the stages the sweep varied) gives the trial's objective again.
    run_pipeline(best, only=plan.trial, echo=lambda _: None)
    again = json.loads((Path(best.eval.output_dir) / "hdpo" / "report.json").read_text())["overall"]
    assert again["aggregate"] == pytest.approx(summary["best"]["aggregate"], abs=0.02)
