"""Sweeps without Ray: search-space entries, key checks, trial configs, the plan of shared and per-trial stages,
resources, and the table / best config / plot outputs."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from polyalign_ray.config import SWEEP_METRICS, ConfigError, PolyAlignConfig, load_config
from polyalign_ray.distributed.tune_trials import (
    SweepPlan,
    concurrent_trials,
    search_algorithm,
    sweep_plan,
    trial_config,
    trial_resources,
    tune_domain,
)
from polyalign_ray.sweep_domains import Domain, config_key_problem, parse_domain
from polyalign_ray.sweep_space import (
    best_trial,
    config_with,
    plot_objective,
    space_value_problems,
    swept_sections,
    trial_label,
    write_best_config,
    write_trials_table,
)


def test_parse_domain_lists_and_distributions() -> None:
    assert parse_domain("hdpo.beta", [0.05, 0.1]) == Domain("hdpo.beta", "grid", (0.05, 0.1))
    assert parse_domain("hdpo.beta", {"choice": [1, 2]}) == Domain("hdpo.beta", "choice", (1, 2))
    assert parse_domain("hdpo.beta", {"loguniform": [0.01, 1]}) == Domain(
        "hdpo.beta", "loguniform", (), 0.01, 1.0
    )
    assert parse_domain("sft.seed", {"randint": [0, 4]}).kind == "randint"


@pytest.mark.parametrize(
    ("spec", "fragment"),
    [
        ([], "empty list"),
        ({"uniform": [1, 0]}, "low < high"),
        ({"loguniform": [0, 1]}, "low > 0"),
        ({"randint": [0.5, 3]}, "integer bounds"),
        ({"normal": [0, 1]}, "not a search domain"),
        (0.3, "not a search domain"),
    ],
)
def test_parse_domain_rejects_with_the_fix(spec, fragment) -> None:
    with pytest.raises(ValueError, match=fragment):
        parse_domain("hdpo.beta", spec)


def test_config_key_problem() -> None:
    assert config_key_problem("hdpo.reg_lambda", PolyAlignConfig) is None
    assert config_key_problem("model.lora.r", PolyAlignConfig) is None
    assert config_key_problem("sampler.multipliers.zh|multi|dialogue|short", PolyAlignConfig) is None
    assert "no key 'reg_lambdaa'" in config_key_problem("hdpo.reg_lambdaa", PolyAlignConfig)
    assert "whole section" in config_key_problem("hdpo", PolyAlignConfig)
    assert "not swept" in config_key_problem("ray.num_cpus", PolyAlignConfig)
    assert "output folders" in config_key_problem("hdpo.output_dir", PolyAlignConfig)
    assert "is a value" in config_key_problem("hdpo.beta.x", PolyAlignConfig)


def test_bad_sweep_config_names_every_key() -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(
            None,
            ["sweep.space={hdpo.reg_lambdaa: [0, 1], hdpo.beta: {uniform: [1, 0]}}", "sweep.metric=c_mauv"],
        )
    text = str(caught.value)
    assert "sweep.space: 'hdpo.reg_lambdaa'" in text
    assert "sweep.space.hdpo.beta: uniform needs [low, high]" in text
    assert "did you mean 'c_mauve'" in text


def test_config_with_applies_dotted_values_like_overrides() -> None:
    base = load_config()
    trial = config_with(
        base,
        {"hdpo.reg_lambda": 0.3, "sampler.multipliers.zh|multi|dialogue|short": 2.0},
        hdpo={"output_dir": "/x/hdpo"},
    )
    assert trial.hdpo.reg_lambda == 0.3
    assert trial.sampler.multipliers == {"zh|multi|dialogue|short": 2.0}
    assert trial.hdpo.output_dir == "/x/hdpo"
    assert trial.hdpo.beta == base.hdpo.beta
    assert swept_sections({"hdpo.beta": [1], "sampler.alpha": [0]}) == {"hdpo", "sampler"}


def test_sweep_values_are_checked_before_any_trial() -> None:
    """A value no config accepts (hdpo.lr 0, a negative bound of a range) is refused up front, naming the value."""
    base = load_config()
    space = {"hdpo.lr": [0.001, 0.0], "hdpo.beta": {"uniform": [-0.5, 0.2]}, "sampler.alpha": [0.0, 1.0]}
    problems = space_value_problems(base, space)
    assert problems == [
        "sweep.space.hdpo.lr value 0.0: hdpo.lr must be > 0, got 0.0",
        "sweep.space.hdpo.beta value -0.5: hdpo.beta must be > 0, got -0.5; METHOD.md uses 0.1",
    ]
    assert space_value_problems(base, {"hdpo.lr": [0.001, 0.003]}) == []


def test_config_error_survives_pickling_as_ray_moves_it() -> None:
    """Ray re-raises a trial's exception in the driver through pickle: the problems must stay lines, not characters."""
    import pickle

    error = ConfigError(["a.b must be > 0, got 0", "c.d is unknown"])
    again = pickle.loads(pickle.dumps(error))
    assert again.problems == error.problems and str(again) == str(error)


def test_plan_shares_the_stages_the_space_does_not_reach(tmp_path: Path) -> None:
    hdpo_only = load_config(None, ["sweep.space={hdpo.reg_lambda: [0.0, 0.3], hdpo.beta: [0.1]}"])
    assert sweep_plan(hdpo_only) == SweepPlan(prefix=("data", "sft", "critic"), trial=("hdpo", "eval_hdpo"))
    weights = load_config(None, ["sweep.space={sampler.alpha: [0.0, 1.0]}"])
    assert sweep_plan(weights) == SweepPlan(prefix=("data",), trial=("sft", "critic", "hdpo", "eval_hdpo"))
    trial = trial_config(hdpo_only, {"hdpo.reg_lambda": 0.3}, tmp_path / "t1", sweep_plan(hdpo_only))
    assert trial.hdpo.output_dir == str(tmp_path / "t1" / "hdpo")
    assert trial.eval.output_dir == str(tmp_path / "t1" / "eval")
    assert trial.sft.output_dir == hdpo_only.sft.output_dir  # shared: trained once
    assert not trial.pipeline.baselines


def test_trial_resources_and_concurrency() -> None:
    config = load_config(None, ["sweep.space={sampler.alpha: [0.0, 1.0]}", "generation.num_workers=1"])
    needed = trial_resources(config, sweep_plan(config))
    assert needed == {"CPU": 1.0, "GPU": 0.0}  # 2 workers x 0.5 CPU, or 1 generation actor x 1 CPU
    assert concurrent_trials(needed, {"CPU": 2.0}) == 2
    assert concurrent_trials(needed, {"CPU": 0.5}) == 1
    # the generation pool grows from one actor to generation.num_workers where there is room: a trial reserves one
    more = load_config(None, ["sweep.space={sampler.alpha: [0.0, 1.0]}", "generation.num_workers=4"])
    assert trial_resources(more, sweep_plan(more)) == {"CPU": 1.0, "GPU": 0.0}
    gpu = load_config(None, ["sweep.space={hdpo.beta: [0.1]}", "hdpo.use_gpu=true", "hdpo.num_workers=2"])
    needed = trial_resources(gpu, sweep_plan(gpu))
    assert needed["GPU"] == 2.0
    assert concurrent_trials(needed, {"CPU": 64.0, "GPU": 8.0}) == 4


def test_best_trial_and_label() -> None:
    rows = [
        {"trial": 0, "aggregate": 0.4},
        {"trial": 1, "aggregate": 0.7},
        {"trial": 2, "aggregate": float("nan")},
        {"trial": 3, "status": "error"},
    ]
    assert best_trial(rows, "aggregate", "max")["trial"] == 1
    assert best_trial(rows, "aggregate", "min")["trial"] == 0
    assert best_trial(rows[2:], "aggregate", "max") is None
    assert trial_label({"hdpo.reg_lambda": 0.30000001, "sampler.multipliers.zh|multi": 2}) == (
        "reg_lambda=0.3,zh-multi=2"
    )


def test_outputs_table_best_config_and_plot(tmp_path: Path) -> None:
    rows = [
        {"trial": 0, "status": "done", "hdpo.reg_lambda": 0.0, "aggregate": 0.41, "seconds": 12.0},
        {"trial": 1, "status": "done", "hdpo.reg_lambda": 0.3, "aggregate": 0.52, "seconds": 13.0},
        {"trial": 2, "status": "error", "hdpo.reg_lambda": 0.6, "error": "boom"},
    ]
    csv_path, md_path = write_trials_table(rows, ["hdpo.reg_lambda"], "aggregate", tmp_path)
    read = list(csv.DictReader(csv_path.open()))
    assert [r["aggregate"] for r in read] == ["0.41", "0.52", ""]
    assert read[2]["error"] == "boom"
    assert "| 1 | done | 0.3 | 0.52 | 13 |" in md_path.read_text()
    plot = plot_objective(rows, ["hdpo.reg_lambda"], "aggregate", "max", tmp_path / "objective.png")
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    best = config_with(load_config(), {"hdpo.reg_lambda": 0.3})
    path = write_best_config(best, tmp_path / "best.yaml", "best trial\nrun it again")
    assert path.read_text().startswith("# best trial\n# run it again\n")
    assert load_config(path) == best


def test_sweep_metrics_are_report_keys() -> None:
    """Every metric a sweep may optimize is a key of the evaluation report's overall block."""
    import numpy as np

    from polyalign_ray.evaluation.scoring import ScoringSettings, score_predictions

    records = [
        {"id": str(i), "bucket_id": "en|single|qa|short", "language": "en", "track": "single", "response": t}
        for i, t in enumerate(["yes it is", "no", "maybe so", "it is blue", "red", "two cats"])
    ]
    report = score_predictions(records, [r["response"] for r in records], {}, ScoringSettings())
    assert set(SWEEP_METRICS) <= set(report["overall"])
    assert np.isfinite(report["overall"]["f1"])


def test_optuna_search_draws_from_the_space() -> None:
    """sweep.search=optuna: Optuna's TPE proposes values inside every domain (lists become categorical)."""
    config = load_config(
        None,
        [
            "sweep.search=optuna",
            "sweep.num_samples=4",
            "sweep.space={hdpo.reg_lambda: [0.0, 0.3], hdpo.beta: {loguniform: [0.03, 0.3]}}",
        ],
    )
    searcher = search_algorithm(config)
    space = {k: tune_domain(parse_domain(k, v), "optuna") for k, v in config.sweep.space.items()}
    assert searcher.set_search_properties(config.sweep.metric, config.sweep.mode, space)
    for trial in range(3):
        proposal = searcher.suggest(f"t{trial}")
        assert proposal["hdpo.reg_lambda"] in (0.0, 0.3)
        assert 0.03 <= proposal["hdpo.beta"] <= 0.3
    assert search_algorithm(load_config()) is None  # grid / random: Tune's variant generator


def test_seeded_points_average_their_seeds_and_the_best_keeps_utility(tmp_path: Path) -> None:
    """Two points x two seeds: lambda 0.1 has naturalness (0.60 + 0.70) / 2 = 0.65, lambda 0.3 (0.80 + 0.74) / 2 =
    0.77 but mean F1 (0.08 + 0.06) / 2 = 0.07; with a floor of 0.95 x baseline F1 0.09 = 0.0855 only lambda 0.1
    qualifies. A point with a failed seed is never best."""
    from polyalign_ray.sweep_space import aggregate_points, best_point, write_points_table

    rows = [
        {"trial": 0, "status": "done", "hdpo.reg_lambda": 0.1, "seed": 0, "naturalness": 0.60, "f1": 0.09},
        {"trial": 1, "status": "done", "hdpo.reg_lambda": 0.1, "seed": 1, "naturalness": 0.70, "f1": 0.10},
        {"trial": 2, "status": "done", "hdpo.reg_lambda": 0.3, "seed": 0, "naturalness": 0.80, "f1": 0.08},
        {"trial": 3, "status": "done", "hdpo.reg_lambda": 0.3, "seed": 1, "naturalness": 0.74, "f1": 0.06},
        {"trial": 4, "status": "error", "hdpo.reg_lambda": 0.9, "seed": 0, "naturalness": None},
        {"trial": 5, "status": "done", "hdpo.reg_lambda": 0.9, "seed": 1, "naturalness": 0.99, "f1": 0.2},
    ]
    points = aggregate_points(rows, ["hdpo.reg_lambda"], "naturalness")
    by_lambda = {p["hdpo.reg_lambda"]: p for p in points}
    assert by_lambda[0.1]["naturalness"] == pytest.approx(0.65) and by_lambda[0.1]["f1"] == pytest.approx(
        0.095
    )
    assert (by_lambda[0.3]["naturalness_min"], by_lambda[0.3]["naturalness_max"]) == (0.74, 0.80)
    assert by_lambda[0.9]["seeds_done"] == 1 and by_lambda[0.9]["trials"] == [4, 5]
    assert best_point(points, "naturalness", "max", seeds=2)["hdpo.reg_lambda"] == 0.3
    assert best_point(points, "naturalness", "max", seeds=2, min_f1=0.95 * 0.09)["hdpo.reg_lambda"] == 0.1
    assert best_point(points, "naturalness", "max", seeds=2, min_f1=0.5) is None
    text = write_points_table(
        points, ["hdpo.reg_lambda"], "naturalness", tmp_path / "points.md", 0.0855
    ).read_text()
    assert "| 0.1 | 2 | 0.65 | 0.6 … 0.7 |" in text and "mean F1 >= 0.0855" in text


def test_a_point_drawn_twice_without_seeds_is_one_point_of_two_trials() -> None:
    """Optuna (or random search) may propose the same point twice in a sweep without sweep.seeds: its trials carry
    no seed. Found by bench/sweep_asha.py's Optuna arm, whose summary failed sorting the missing seeds."""
    from polyalign_ray.sweep_space import aggregate_points, best_point

    rows = [
        {"trial": 0, "status": "done", "hdpo.beta": 0.3, "aggregate": 0.26},
        {"trial": 1, "status": "done", "hdpo.beta": 0.1, "aggregate": 0.20},
        {"trial": 2, "status": "done", "hdpo.beta": 0.3, "aggregate": 0.28},
        {"trial": 3, "status": "stopped", "hdpo.beta": 0.03, "aggregate": float("nan")},
    ]
    points = {p["hdpo.beta"]: p for p in aggregate_points(rows, ["hdpo.beta"], "aggregate")}
    assert points[0.3]["seeds"] == [] and points[0.3]["trials"] == [0, 2]
    assert points[0.3]["aggregate"] == pytest.approx(0.27) and points[0.03]["seeds_done"] == 0
    assert best_point(list(points.values()), "aggregate", "max")["hdpo.beta"] == 0.3


def test_seeded_sweep_config_errors_name_the_fix() -> None:
    from polyalign_ray.config import ConfigError, load_config

    with pytest.raises(ConfigError) as error:
        load_config(None, ["sweep.seeds=[0, 0]", "sweep.search=optuna", "sweep.min_utility_ratio=0.95"])
    text = str(error.value)
    assert "sweep.seeds needs sweep.search grid or random" in text
    assert "sweep.seeds must be distinct" in text
    assert "sweep.min_utility_ratio needs sweep.baseline" in text


def test_asha_config_errors_name_the_fix_and_the_scheduler_judges_its_own_metric() -> None:
    from ray.tune.schedulers import ASHAScheduler

    from polyalign_ray.distributed.tune_trials import early_stop_key, scheduler, swept_training_stage

    with pytest.raises(ConfigError) as error:
        load_config(None, ["sweep.scheduler=asha", "sweep.seeds=[0, 1]", "sweep.reduction_factor=1"])
    text = str(error.value)
    assert "sweep.scheduler=asha would stop single seeds of a point" in text
    assert "sweep.reduction_factor > 1" in text
    config = load_config(None, ["sweep.scheduler=asha", "sweep.early_stop_metric=distance/expected"])
    made = scheduler(config)
    assert (
        isinstance(made, ASHAScheduler)
        and made.metric == early_stop_key(config.sweep) == "train/distance/expected"
    )
    assert scheduler(load_config(None, [])) is None  # fifo: every trial to its end
    assert (
        swept_training_stage(SweepPlan(prefix=("data", "sft"), trial=("critic", "hdpo", "eval_hdpo")))
        == "hdpo"
    )
    with pytest.raises(ValueError, match="needs a training stage"):
        swept_training_stage(SweepPlan(prefix=("data", "sft", "critic", "hdpo"), trial=("eval_hdpo",)))


def test_asha_refuses_to_compare_losses_the_sweep_defines_differently() -> None:
    """hdpo.beta scales the loss: ASHA on ``loss`` would stop a trial for its scale, not for learning less."""
    space = "sweep.space={hdpo.beta: [0.03, 0.3], hdpo.lr: [0.001, 0.0001]}"
    with pytest.raises(ConfigError) as info:
        load_config(None, [space, "sweep.scheduler=asha"])
    assert "hdpo.beta swept" in str(info.value) and "early_stop_metric=rewards/accuracy" in str(info.value)
    accepted = load_config(
        None,
        [
            space,
            "sweep.scheduler=asha",
            "sweep.early_stop_metric=rewards/accuracy",
            "sweep.early_stop_mode=max",
        ],
    )
    assert accepted.sweep.early_stop_metric == "rewards/accuracy"
    assert load_config(None, ["sweep.space={hdpo.lr: [0.001, 0.0001]}", "sweep.scheduler=asha"]).sweep.space
