"""``polyalign sweep``: Ray Tune trials over dotted config keys, each driving its own TorchTrainers.

Plan (``sweep_plan``): the swept keys' sections decide which pipeline stages depend on them (the same sections that
fingerprint the stages of ``polyalign pipeline``). Stages that depend on none of them (e.g. data, SFT and critic
when only ``hdpo.*`` is swept) are the shared **prefix**: the driver runs them once, before any trial, and they are
skipped when already done. Every trial then runs the remaining stages up to the evaluation of the swept model
(``hdpo``), with those stages' output folders inside its own trial folder. Each training stage is a Ray Train
TorchTrainer of DeepSpeed workers started from within the trial (the pattern Ray Train V2 recommends for Tune);
the evaluation's Ray Data generation runs the same way. The objective is ``sweep.metric`` of the trial's
``report.json`` (``overall`` block).

Trials reserve no CPU themselves (``{"cpu": 0}`` plus a token of memory, which Tune needs to place them); what a
trial uses is what its TorchTrainer and generation actors request, so ``max_concurrent_trials`` (0 = derived) is
the number of trials whose largest stage fits the cluster at once.

Outputs in ``sweep.output_dir``: ``trials.csv`` / ``trials.md``, ``best.yaml`` (the best trial's whole config,
output folders under ``best/``: ``polyalign pipeline --config best.yaml`` trains and evaluates it again),
``objective.png`` and ``sweep.json``; each trial's stages under ``trials/<trial>/``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import json
import logging
import math
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import ray
from ray import tune

from polyalign_ray.config import ConfigError, PolyAlignConfig, SweepConfig, config_from_dict, config_to_dict
from polyalign_ray.distributed.placement_groups import (
    remove_orphaned_placement_groups,
    remove_orphaned_placement_groups_when_actors_end,
)
from polyalign_ray.stages.pipeline import (
    PER_SEED_FOLDERS,
    pipeline_stages,
    run_pipeline,
    seed_config,
    seed_root,
    variant,
)
from polyalign_ray.sweep_domains import Domain, parse_domain
from polyalign_ray.sweep_space import (
    aggregate_points,
    best_point,
    config_with,
    plot_objective,
    space_value_problems,
    swept_sections,
    trial_label,
    write_best_config,
    write_points_table,
    write_trials_table,
)
from polyalign_ray.training_progress import TrainingProgress

log = logging.getLogger(__name__)

SWEPT_MODEL = "hdpo"
"""The model whose evaluation is a trial's objective (every trial trains it from its own settings)."""
STAGE_SECTION = {
    "data": "data",
    "sft": "sft",
    "critic": "critic",
    "hdpo": "hdpo",
    f"eval_{SWEPT_MODEL}": "eval",
}
"""Which section's ``output_dir`` holds each stage a trial may run (moved into the trial's folder)."""
TRIAL_MEMORY_BYTES = 2**20
"""Tune cannot place a trial that requests nothing; a token of memory (with ``cpu: 0``) lets it start."""


@dataclasses.dataclass(frozen=True)
class SweepPlan:
    prefix: tuple[str, ...]
    """Stages run once by the driver, shared by every trial."""
    trial: tuple[str, ...]
    """Stages every trial runs with its own values, in its own folders."""


def sweep_plan(config: PolyAlignConfig) -> SweepPlan:
    """Split the stages up to the evaluation of the swept model into shared prefix and per-trial stages."""
    sections = swept_sections(config.sweep.space)
    run = variant(config, pipeline={"baselines": False, "evaluate": True, "redo": []})
    wanted = [s for s in pipeline_stages(run) if s.name in STAGE_SECTION]
    trial = [s.name for s in wanted if sections & set(s.sections)]
    prefix = [s.name for s in wanted if s.name not in trial and not s.name.startswith("eval_")]
    return SweepPlan(prefix=tuple(prefix), trial=tuple(trial))


def trial_config(
    base: PolyAlignConfig, params: dict[str, Any], folder: Path, plan: SweepPlan
) -> PolyAlignConfig:
    """The base config with the trial's values, its stages' output folders under ``folder``, no baselines."""
    moved = {STAGE_SECTION[name]: {"output_dir": str(folder / STAGE_SECTION[name])} for name in plan.trial}
    return config_with(base, params, pipeline={"baselines": False, "evaluate": True, "redo": []}, **moved)


def tune_domain(domain: Domain, search: str) -> Any:
    """A :class:`~polyalign_ray.sweep_space.Domain` as a Tune search-space entry (lists are grid axes in grid search,
    categorical choices otherwise)."""
    if domain.kind == "grid":
        return tune.grid_search(list(domain.values)) if search == "grid" else tune.choice(list(domain.values))
    if domain.kind == "choice":
        return tune.choice(list(domain.values))
    if domain.kind == "uniform":
        return tune.uniform(domain.low, domain.high)
    if domain.kind == "loguniform":
        return tune.loguniform(domain.low, domain.high)
    return tune.randint(int(domain.low), int(domain.high))


TRAINING_SECTION = {"sft": "sft", "sft_plain": "sft", "hdpo": "hdpo", "dpo": "hdpo"}
"""The config section whose workers a training stage starts."""


def trial_resources(config: PolyAlignConfig, plan: SweepPlan) -> dict[str, float]:
    """The largest CPU and GPU request among a trial's stages (they run one after another)."""
    cpu, gpu = 0.0, 0.0
    for name in plan.trial:
        if name in TRAINING_SECTION:
            section = getattr(config, TRAINING_SECTION[name])
            if section.use_gpu:
                gpu = max(gpu, float(section.num_workers))
            else:
                cpu = max(cpu, section.num_workers * section.cpus_per_worker)
        if name == "critic" or name.startswith("eval_"):
            # the generation pool starts with one actor and grows to generation.num_workers where there is room
            # (batch_generation.model_actor_pool): a trial needs one actor's CPU or GPU
            if config.generation.use_gpu:
                gpu = max(gpu, 1.0)
            else:
                cpu = max(cpu, 1.0)
    return {"CPU": cpu, "GPU": gpu}


def concurrent_trials(needed: dict[str, float], available: dict[str, float]) -> int:
    """How many trials fit the cluster at once (at least 1)."""
    fits = [math.floor(available.get(k, 0.0) / v + 1e-9) for k, v in needed.items() if v > 0]
    return max(1, min(fits)) if fits else 1


def search_algorithm(config: PolyAlignConfig) -> Any:
    sweep = config.sweep
    if sweep.search != "optuna":
        return None
    if importlib.util.find_spec("optuna") is None:
        raise RuntimeError(
            "sweep.search=optuna needs the optuna package: pip install 'polyalign-ray[sweep]' (or optuna), "
            "or use sweep.search=random"
        )
    from ray.tune.search.optuna import OptunaSearch

    return OptunaSearch(metric=sweep.metric, mode=sweep.mode, seed=sweep.seed)


def run_trial(
    params: dict[str, Any], *, base: dict[str, Any], plan: SweepPlan, trials_dir: str, working_dir: str
) -> None:
    """One trial (runs in a Tune actor): its stages, then ``tune.report`` of the objective and the report's
    headline metrics. Relative paths of the config mean what they meant to the driver (Tune may have moved the
    actor into its trial folder)."""
    os.chdir(working_dir)
    config = config_from_dict(base)
    swept = {k: v for k, v in params.items() if k != "seed"}
    if "seed" in params:  # sweep.seeds: seeded like `polyalign pipeline --seeds`, its shared stages per seed
        config = seed_config(config, int(params["seed"]))
    context = tune.get_context()
    folder = Path(trials_dir) / f"{context.get_trial_id()}_{trial_label(params)}"
    trial = trial_config(config, swept, folder, plan)
    began = time.perf_counter()
    reports = (
        early_stop_reports(trial, plan) if config.sweep.scheduler == "asha" else contextlib.nullcontext({})
    )
    with reports as early_stop:
        run_pipeline(trial, only=plan.trial, echo=log.info)
    report = json.loads(
        (Path(trial.eval.output_dir) / SWEPT_MODEL / "report.json").read_text(encoding="utf-8")
    )
    overall = report["overall"]
    value = overall.get(config.sweep.metric)
    headline = {
        k: overall[k]
        for k in ("aggregate", "f1", "bng", "hcr", "c_mauve", "naturalness", "nuf_hypervolume")
        if isinstance(overall.get(k), (int, float))
    }
    tune.report(
        {
            **headline,
            **early_stop,
            config.sweep.metric: float("nan") if value is None else float(value),
            "seconds": time.perf_counter() - began,
            "trial_folder": str(folder),
        }
    )


def early_stop_key(sweep: SweepConfig) -> str:
    """The name ASHA's metric has in Tune's results (prefixed: the report's metrics may share names)."""
    return f"train/{sweep.early_stop_metric}"


def swept_training_stage(plan: SweepPlan) -> str:
    """The last training stage a trial runs: the one whose progress ASHA judges."""
    stages = [name for name in plan.trial if name in TRAINING_SECTION]
    if not stages:
        raise ValueError(
            "sweep.scheduler=asha needs a training stage among the swept ones (the sweep only changes "
            f"{list(plan.trial)}); use sweep.scheduler=fifo"
        )
    return stages[-1]


@contextlib.contextmanager
def early_stop_reports(trial: PolyAlignConfig, plan: SweepPlan) -> Iterator[dict[str, float]]:
    """While the trial's stages run, report ``early_stop_metric`` of the swept training stage to Tune every
    ``report_every`` steps (read from its metrics.jsonl), so that ASHA can stop the trial at a milestone. The
    objective is NaN in these reports (Tune's strict metric check wants it in every result); the trial's last
    report carries it, and the last early-stop value (yielded) too."""
    sweep = trial.sweep
    stage = swept_training_stage(plan)
    metrics_path = Path(getattr(trial, TRAINING_SECTION[stage]).output_dir) / "metrics.jsonl"
    key = early_stop_key(sweep)
    last = {key: float("nan")}

    def report(line: dict[str, Any]) -> None:
        value = line.get(sweep.early_stop_metric)
        if isinstance(value, (int, float)) and int(line.get("step", 0)) % sweep.report_every == 0:
            last[key] = float(value)
            tune.report({key: float(value), "train_step": int(line["step"]), sweep.metric: float("nan")})

    with TrainingProgress(metrics_path, stage, on_line=report, print_progress=False):
        yield last


def scheduler(config: PolyAlignConfig) -> Any:
    """Tune's trial scheduler: FIFO, or ASHA on the training stage's early-stop metric."""
    sweep = config.sweep
    if sweep.scheduler != "asha":
        return None
    from ray.tune.schedulers import ASHAScheduler

    return ASHAScheduler(
        metric=early_stop_key(sweep),
        mode=sweep.early_stop_mode,
        time_attr="training_iteration",
        grace_period=sweep.grace_period,
        reduction_factor=sweep.reduction_factor,
        max_t=10**6,
    )


class ReleaseStoppedTrialPlacementGroups(tune.Callback):
    """Frees the Train placement groups of trials that ASHA stopped (or that died otherwise), from the driver's
    Tune loop, at most once per ``every_s``: without it each stopped trial keeps its CPUs until the sweep ends
    (``placement_groups.py`` says why Ray keeps them)."""

    def __init__(self, every_s: float = 1.0) -> None:
        self.every_s = every_s
        self.last_check = 0.0

    def on_step_end(self, iteration: int, trials: list[Any], **info: Any) -> None:
        now = time.monotonic()
        if now - self.last_check >= self.every_s:
            self.last_check = now
            remove_orphaned_placement_groups()


def baseline_folders(config: PolyAlignConfig, baseline: str, seeds: list[int]) -> list[Path]:
    """The baseline run's evaluation folder per seed (the multi-seed pipeline's layout), or the single one."""
    if seeds:
        return [Path(seed_config(config, s).eval.output_dir) / baseline for s in seeds]
    return [Path(config.eval.output_dir) / baseline]


def baseline_f1(config: PolyAlignConfig, baseline: str, seeds: list[int]) -> float:
    """The baseline's mean F1 over its seeds (what ``sweep.min_utility_ratio`` is measured against)."""
    values = []
    for folder in baseline_folders(config, baseline, seeds):
        report = folder / "report.json"
        if not report.is_file():
            raise FileNotFoundError(
                f"sweep.baseline={baseline!r}: no evaluation at {report}; run the pipeline"
                + (f" with --seeds {len(seeds)}" if seeds else "")
                + " first (it evaluates the baselines)"
            )
        values.append(json.loads(report.read_text(encoding="utf-8"))["overall"]["f1"])
    return sum(values) / len(values)


def compare_best_with_baseline(
    config: PolyAlignConfig, best: dict[str, Any], rows: list[dict[str, Any]], out: Path
) -> Path:
    """The best point against the baseline, seed by seed, with intervals: ``out/best_vs_baseline/report.md``."""
    from polyalign_ray.stages.evaluate import run_compare

    sweep = config.sweep
    members = sorted(
        (r for r in rows if r["trial"] in best["trials"] and r["status"] == "done"),
        key=lambda r: r.get("seed") or 0,
    )
    best_folders = [Path(r["trial_folder"]) / "eval" / SWEPT_MODEL for r in members]
    baseline = baseline_folders(config, sweep.baseline, list(sweep.seeds))
    report_config = variant(config, eval={"output_dir": str(out / "best_vs_baseline")})
    label = f"best − {sweep.baseline}"
    return run_compare(
        report_config,
        {"best": best_folders, sweep.baseline: baseline},
        claims=[("best", sweep.baseline, label)],
    )


def run_sweep(config: PolyAlignConfig, *, echo: Any = print) -> dict[str, Any]:
    """Shared prefix, then the trials, then the table, ``best.yaml`` and the plot; returns the summary."""
    sweep = config.sweep
    if not sweep.space:
        raise ValueError(
            "sweep.space is empty: give the keys to sweep, e.g. sweep.space='{hdpo.reg_lambda: [0, 0.3]}'"
        )
    problems = space_value_problems(config, sweep.space)
    if problems:
        raise ConfigError(problems)
    out = Path(sweep.output_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    plan = sweep_plan(config)
    domains = [parse_domain(str(k), v) for k, v in sweep.space.items()]
    keys = [d.key for d in domains]
    echo(f"sweep over {keys}: shared stages {list(plan.prefix)} (run once), per trial {list(plan.trial)}")
    seeds = list(sweep.seeds)
    if plan.prefix:
        shared = variant(config, pipeline={"baselines": False, "evaluate": False, "redo": []})
        for prefix_config in [seed_config(shared, s) for s in seeds] or [shared]:
            run_pipeline(prefix_config, only=plan.prefix, echo=echo)
    needed = trial_resources(config, plan)
    concurrency = sweep.max_concurrent_trials or concurrent_trials(needed, ray.cluster_resources())
    echo(f"trials: search={sweep.search}, up to {concurrency} at once (each needs {needed})")
    trainable = tune.with_parameters(
        run_trial,
        base=config_to_dict(config),
        plan=plan,
        trials_dir=str(out / "trials"),
        working_dir=os.getcwd(),
    )
    tuner = tune.Tuner(
        tune.with_resources(trainable, {"cpu": 0, "memory": TRIAL_MEMORY_BYTES}),
        param_space={
            **{d.key: tune_domain(d, sweep.search) for d in domains},
            **({"seed": tune.grid_search(seeds)} if seeds else {}),
        },
        # With ASHA the scheduler judges its own metric, so the objective's metric/mode go to the search
        # algorithm only (Tune refuses a metric in both TuneConfig and the scheduler).
        tune_config=tune.TuneConfig(
            metric=None if sweep.scheduler == "asha" else sweep.metric,
            mode=None if sweep.scheduler == "asha" else sweep.mode,
            num_samples=sweep.num_samples,
            max_concurrent_trials=concurrency,
            search_alg=search_algorithm(config),
            scheduler=scheduler(config),
        ),
        run_config=tune.RunConfig(
            name="tune",
            storage_path=str(out),
            verbose=1,
            callbacks=[ReleaseStoppedTrialPlacementGroups()],
        ),
    )
    began = time.perf_counter()
    results = tuner.fit()
    # the last trials' groups: the callback may not run after their stop, and their controllers die a moment later
    remove_orphaned_placement_groups_when_actors_end()
    rows = []
    for number, result in enumerate(results):
        metrics = result.metrics or {}
        stopped = not result.error and "trial_folder" not in metrics  # only a trial's last report names it
        rows.append(
            {
                "trial": number,
                "status": "error" if result.error else "stopped" if stopped else "done",
                **{k: (result.config or {}).get(k) for k in [*keys, *(["seed"] if seeds else [])]},
                **{
                    k: v
                    for k, v in metrics.items()
                    if isinstance(v, (int, float, str)) and not k.startswith("time")
                },
                "error": str(result.error).splitlines()[0][:200] if result.error else "",
            }
        )
    rows = [
        {k: v for k, v in row.items() if k not in ("training_iteration", "timestamp", "pid")} for row in rows
    ]
    summary = summarize_sweep(config, rows, plan, out, wall_s=time.perf_counter() - began)
    if summary["failed"]:
        echo(
            f"{summary['failed']} of {len(rows)} trials failed; see {summary['table']} and the Tune logs in "
            f"{out / 'tune'}"
        )
    return summary


def summarize_sweep(
    config: PolyAlignConfig, rows: list[dict[str, Any]], plan: SweepPlan, out: Path, *, wall_s: float
) -> dict[str, Any]:
    """The sweep's outputs from its trial rows: the tables, the plot, the points (means over seeds), the best
    point's ``best.yaml`` and, with ``sweep.baseline``, its comparison with the baseline; returns the summary
    (also ``sweep.json``)."""
    sweep = config.sweep
    keys = [str(k) for k in sweep.space]
    seeds = list(sweep.seeds)
    csv_path, md_path = write_trials_table(rows, [*keys, *(["seed"] if seeds else [])], sweep.metric, out)
    plot = plot_objective(rows, keys, sweep.metric, sweep.mode, out / "objective.png")
    min_f1 = None
    if sweep.baseline and sweep.min_utility_ratio:
        min_f1 = sweep.min_utility_ratio * baseline_f1(config, sweep.baseline, seeds)
    points = aggregate_points(rows, keys, sweep.metric)
    chosen = best_point(points, sweep.metric, sweep.mode, min_f1=min_f1, seeds=max(1, len(seeds)))
    write_points_table(points, keys, sweep.metric, out / "points.md", min_f1)
    best = None
    if chosen is not None:
        members = [r for r in rows if r["trial"] in chosen["trials"] and r["status"] == "done"]
        best = {**members[0], sweep.metric: chosen[sweep.metric]}
    summary: dict[str, Any] = {
        "space": sweep.space,
        "metric": sweep.metric,
        "mode": sweep.mode,
        "plan": dataclasses.asdict(plan),
        "trials": rows,
        "wall_s": wall_s,
        "table": str(md_path),
        "csv": str(csv_path),
        "plot": str(plot) if plot else None,
        "points": points,
        "points_table": str(out / "points.md"),
        "min_f1": min_f1,
    }
    if best is not None:
        params = {k: best[k] for k in keys}
        if seeds:  # run again as a multi-seed pipeline, every per-seed stage under best/
            folders = {section: {"output_dir": str(out / "best" / section)} for section in PER_SEED_FOLDERS}
            best_config = config_with(config, params, **folders)
            best_config = variant(
                best_config, pipeline={**config_to_dict(config)["pipeline"], "seeds": seeds}
            )
        else:
            best_config = trial_config(config, params, out / "best", plan)
            best_config = variant(best_config, pipeline=config_to_dict(config)["pipeline"])
        summary["best"] = {"params": params, sweep.metric: best[sweep.metric], "trial": best["trial"]}
        summary["best_config"] = str(
            write_best_config(
                best_config,
                out / "best.yaml",
                f"Best trial of the sweep in {out}: {params} -> {sweep.metric} = {best[sweep.metric]:.4f}\n"
                "Run it again: polyalign pipeline --config best.yaml",
            )
        )
    if best is not None and sweep.baseline:
        summary["best_vs_baseline"] = str(compare_best_with_baseline(config, chosen, rows, out))
    summary["failed"] = sum(r["status"] == "error" for r in rows)
    (out / "sweep.json").write_text(json.dumps(summary, indent=1, default=str), encoding="utf-8")
    return summary


def run_seed_trial(
    params: dict[str, Any], *, base: dict[str, Any], stages: tuple[str, ...], working_dir: str
) -> None:
    """One seed of a multi-seed pipeline (runs in a Tune actor): its stages, each line of progress appended to
    ``seed_root/progress.log``."""
    os.chdir(working_dir)
    seed = int(params["seed"])
    config = seed_config(config_from_dict(base), seed)
    progress = seed_root(config_from_dict(base), seed) / "progress.log"
    progress.parent.mkdir(parents=True, exist_ok=True)

    def echo(line: str) -> None:
        with progress.open("a", encoding="utf-8") as handle:
            handle.write(f"{time.strftime('%H:%M:%S')} {line}\n")
        log.info("seed %d: %s", seed, line)

    began = time.perf_counter()
    run_pipeline(config, only=stages, echo=echo)
    tune.report({"seed": seed, "seconds": time.perf_counter() - began})


def run_seed_trials(
    config: PolyAlignConfig, seeds: list[int], stages: tuple[str, ...]
) -> dict[int, dict[str, Any]]:
    """Every seed's ``stages`` as one Tune trial each, as many at once as the cluster fits (the same resource rule
    as sweep trials); returns per seed its status, seconds and error."""
    out = Path(config.sft.output_dir).resolve().parent / "seeds"
    out.mkdir(parents=True, exist_ok=True)
    needed = trial_resources(config, SweepPlan(prefix=(), trial=stages))
    concurrency = config.sweep.max_concurrent_trials or concurrent_trials(needed, ray.cluster_resources())
    log.info("seeds %s: up to %d at once (each needs %s)", seeds, concurrency, needed)
    trainable = tune.with_parameters(
        run_seed_trial, base=config_to_dict(config), stages=stages, working_dir=os.getcwd()
    )
    tuner = tune.Tuner(
        tune.with_resources(trainable, {"cpu": 0, "memory": TRIAL_MEMORY_BYTES}),
        param_space={"seed": tune.grid_search(list(seeds))},
        tune_config=tune.TuneConfig(max_concurrent_trials=concurrency),
        run_config=tune.RunConfig(name="tune", storage_path=str(out), verbose=0),
    )
    results = tuner.fit()
    outcome: dict[int, dict[str, Any]] = {}
    for result in results:
        seed = int((result.config or {}).get("seed", -1))
        metrics = result.metrics or {}
        outcome[seed] = {
            "status": "failed" if result.error else "done",
            "seconds": metrics.get("seconds"),
            "error": str(result.error).splitlines()[0][:300] if result.error else "",
        }
    return outcome
