"""A 3-trial Ray Tune sweep over ``hdpo.lr`` with ASHA on the tiny setup of the session fixtures: each trial trains
HDPO on Ray Train and evaluates it, unless ASHA stops it; the table, best.yaml and plot are written; best.yaml run
again through the pipeline reproduces the best trial's objective."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from polyalign_ray.config import load_config
from polyalign_ray.distributed.placement_groups import placement_group_records
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


def test_sweep_with_asha_stops_the_trial_that_learns_nothing(
    data_dir, zero3_run, critic_bundle, tmp_path: Path
) -> None:
    """Issue 16: trials report the HDPO loss every 2 steps; ASHA keeps the better half at each milestone. The second
    and third trials (lr 1e-9 and 2e-9: their loss never falls) reach the first milestone after the first trial, are
    worse there, and are stopped before their last step and before their evaluation; the best point is the trial
    that ran to its end. One trial at a time on 2 CPUs: the third starts only because the second's Train placement
    group was released when ASHA stopped it (without that, the sweep waits forever)."""
    sweep_dir = tmp_path / "sweep"
    # long enough that ASHA's stop (the report at step 2, then Tune's decision, a second or two) lands mid-training
    steps = 400  # about 10 s of training here
    config = hdpo_config(
        data_dir,
        zero3_run,
        critic_bundle,
        tmp_path / "hdpo",
        f"hdpo.max_steps={steps}",
        "hdpo.zero_stage=2",
        "hdpo.num_workers=1",  # several workers are tested in test_hdpo_ray
        *EVAL,
        f"eval.output_dir={tmp_path / 'eval'}",
        f"sweep.output_dir={sweep_dir}",
        "sweep.space={hdpo.lr: [0.003, 1.0e-9, 2.0e-9]}",
        "sweep.scheduler=asha",
        "sweep.early_stop_metric=loss",
        "sweep.report_every=2",
        "sweep.max_concurrent_trials=1",  # the good trial sets the bar at the milestone first
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
    assert [(r["hdpo.lr"], r["status"]) for r in rows] == [
        (0.003, "done"),
        (1.0e-9, "stopped"),
        (2.0e-9, "stopped"),
    ], rows
    # every Train placement group (made by a Train controller actor) is gone, the stopped trials' too
    actor_groups = [record for record in placement_group_records() if record.live and record.made_by_actor]
    assert not actor_groups, actor_groups
    assert isinstance(rows[0]["aggregate"], float) and 0 <= rows[0]["aggregate"] <= 1
    for stage in plan.prefix:  # shared stages were not trained again
        marker = json.loads(
            next(s.folder for s in pipeline_stages(shared) if s.name == stage)
            .joinpath("stage_done.json")
            .read_text()
        )
        assert marker["seconds"] == 0.0
    good = Path(rows[0]["trial_folder"])
    assert len((good / "hdpo" / "metrics.jsonl").read_text().splitlines()) == steps
    # the stopped trials reported no objective; their folders are found from their ids (never reported)
    stopped = [f for f in (sweep_dir / "trials").iterdir() if f != good]
    assert len(stopped) == 2
    for bad in stopped:
        assert len((bad / "hdpo" / "metrics.jsonl").read_text().splitlines()) < steps
        assert not (bad / "eval" / "hdpo" / "report.json").exists()
    table = list(csv.DictReader((sweep_dir / "trials.csv").open()))
    assert len(table) == 3 and {"hdpo.lr", "aggregate", "status"} <= set(table[0])
    assert "hdpo.lr" in (sweep_dir / "trials.md").read_text()
    assert (sweep_dir / "objective.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    best = load_config(sweep_dir / "best.yaml")
    assert best.hdpo.lr == summary["best"]["params"]["hdpo.lr"] == 0.003
    assert best.hdpo.output_dir == str(sweep_dir.resolve() / "best" / "hdpo")
    assert best.sft.output_dir == config.sft.output_dir
    # `polyalign pipeline --config best.yaml` (the stages the sweep varied) gives the trial's objective again.
    run_pipeline(best, only=plan.trial, echo=lambda _: None)
    again = json.loads((Path(best.eval.output_dir) / "hdpo" / "report.json").read_text())["overall"]
    assert again["aggregate"] == pytest.approx(summary["best"]["aggregate"], abs=0.02)
