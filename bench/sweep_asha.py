"""Does ASHA save time without losing the best point? The same 12-trial HDPO sweep on the embedded default, run
to the end (FIFO) and with ASHA, after the shared stages (data, SFT, critic) are trained once for both.

Space: ``hdpo.reg_lambda`` [0, 0.1, 0.3, 1.0] x ``hdpo.beta`` [0.03, 0.1, 0.3], a grid of 12 trials, each an HDPO
run and its evaluation (objective: the report's aggregate). ASHA judges ``rewards/accuracy`` (mode max: the share
of a step's pairs whose chosen answer the policy prefers; comparable across beta and lambda, unlike the loss, whose
scale both change) every ``--report-every`` optimizer steps, grace period 1, reduction factor 2. Trials run as
many at once as the machine's CPUs allow (two on 2 cores), so ASHA has trials to compare.

A third arm runs ASHA with Optuna's TPE (12 samples of the same 12 points, ``sweep.search=optuna``): ASHA works
with any search algorithm, and this shows it end to end.

Reported per arm: wall time of the trials (the shared stages excluded), trials finished and stopped, optimizer
steps trained in all, the best trial and its aggregate; and where ASHA's best trial ranks among FIFO's.

    .venv/bin/python bench/sweep_asha.py --out bench/results/sweep_asha
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import harness

from polyalign_ray.config import load_config
from polyalign_ray.distributed.runtime import ray_runtime
from polyalign_ray.distributed.tune_trials import run_sweep, sweep_plan
from polyalign_ray.stages.pipeline import run_pipeline, variant

SPACE = "sweep.space={hdpo.reg_lambda: [0.0, 0.1, 0.3, 1.0], hdpo.beta: [0.03, 0.1, 0.3]}"
KEYS = ("hdpo.reg_lambda", "hdpo.beta")
ARMS = ("fifo", "asha", "asha_optuna")


def steps_trained(trials_dir: Path) -> int:
    """Optimizer steps of every trial's HDPO run: the last logged step of each metrics.jsonl."""
    total = 0
    for metrics in trials_dir.glob("*/hdpo/metrics.jsonl"):
        lines = metrics.read_text(encoding="utf-8").splitlines()
        total += json.loads(lines[-1])["step"] if lines else 0
    return total


def arm_result(name: str, summary: dict[str, Any], seconds: float, trials_dir: Path) -> dict[str, Any]:
    """One arm's row: time, statuses, steps, and the trials ranked by their objective."""
    rows = summary["trials"]
    finished = [r for r in rows if r["status"] == "done" and isinstance(r.get("aggregate"), float)]
    ranked = sorted(finished, key=lambda r: r["aggregate"], reverse=True)
    return {
        "arm": name,
        "trials_s": round(seconds, 1),
        "done": len(finished),
        "stopped": sum(r["status"] == "stopped" for r in rows),
        "failed": sum(r["status"] == "error" for r in rows),
        "steps_trained": steps_trained(trials_dir),
        "ranking": [{**{k: r[k] for k in KEYS}, "aggregate": round(r["aggregate"], 4)} for r in ranked],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--work", default="runs/bench_sweep_asha", help="where the shared stages and trials go"
    )
    parser.add_argument("--out", default="bench/results/sweep_asha", help="results prefix (.md and .json)")
    parser.add_argument("--report-every", type=int, default=5, help="sweep.report_every of the ASHA arm")
    parser.add_argument(
        "--arms",
        default="fifo,asha,asha_optuna",
        help="comma-separated arms to run (fifo, asha, asha_optuna)",
    )
    args = parser.parse_args()
    work = Path(args.work).resolve()
    common = [
        f"data.output_dir={work / 'data'}",
        f"sft.output_dir={work / 'sft'}",
        f"critic.output_dir={work / 'critic'}",
        f"hdpo.output_dir={work / 'hdpo'}",
        f"eval.output_dir={work / 'eval'}",
        SPACE,
    ]
    asha = [
        "sweep.scheduler=asha",
        "sweep.early_stop_metric=rewards/accuracy",
        "sweep.early_stop_mode=max",
        f"sweep.report_every={args.report_every}",
    ]
    every_arm = {
        "fifo": [f"sweep.output_dir={work / 'fifo'}", "sweep.scheduler=fifo"],
        "asha": [f"sweep.output_dir={work / 'asha'}", *asha],
        "asha_optuna": [
            f"sweep.output_dir={work / 'asha_optuna'}",
            *asha,
            "sweep.search=optuna",
            "sweep.num_samples=12",
        ],
    }
    arms = {name: every_arm[name] for name in args.arms.split(",")}
    info, load = harness.ray_stack_info(), harness.load_before_runs()
    out_json = Path(f"{args.out}.json")
    earlier = json.loads(out_json.read_text(encoding="utf-8"))["results"] if out_json.is_file() else {}
    # a partial rerun (--arms) keeps the other arms' earlier rows; each row says when and at which commit it ran
    partial = set(arms) != set(ARMS)
    results: dict[str, Any] = {k: v for k, v in earlier.items() if k not in arms} if partial else {}

    def write_results() -> None:
        out_json.parent.mkdir(parents=True, exist_ok=True)
        out_json.write_text(
            json.dumps({"info": info, "load": load, "results": results}, indent=1), encoding="utf-8"
        )

    base = load_config(None, [*common, *every_arm["fifo"]])
    with ray_runtime(base.ray, work / "logs"):
        began = time.perf_counter()
        shared = variant(base, pipeline={"baselines": False, "evaluate": False, "redo": []})
        run_pipeline(shared, only=sweep_plan(base).prefix)
        if "shared_stages_s" not in results:  # (a partial rerun finds them trained)
            results["shared_stages_s"] = round(time.perf_counter() - began, 1)
        for name, overrides in arms.items():
            config = load_config(None, [*common, *overrides])
            began = time.perf_counter()
            summary = run_sweep(config)
            results[name] = {
                **arm_result(name, summary, time.perf_counter() - began, work / name / "trials"),
                "measured": harness.local_timestamp(),
                "commit": harness.git_commit(),
                "loadavg_after": harness.loadavg_rounded(),
            }
            print(json.dumps(results[name]))
            write_results()
    load["loadavg_after"] = harness.loadavg_rounded()
    fifo = results["fifo"]
    fifo_order = [tuple(r[k] for k in KEYS) for r in fifo["ranking"]]
    for name in [a for a in ARMS if a != "fifo" and a in results]:
        arm = results[name]
        best = tuple(arm["ranking"][0][k] for k in KEYS) if arm["ranking"] else None
        arm["best_rank_in_fifo"] = fifo_order.index(best) + 1 if best in fifo_order else None
        arm["points"] = len({tuple(r[k] for k in KEYS) for r in arm["ranking"]})
    write_results()
    lines = [
        "# Sweep with and without ASHA",
        "",
        f"- Date: {load['date']}",
        "- Command: `.venv/bin/python bench/sweep_asha.py "
        + f"--out {args.out} --report-every {args.report_every}`",
        f"- Machine: {info['cpu']}, {info['logical_cpus']} logical CPUs, {info['mem_gib']} GiB, Python {info['python']}",
        f"- Load: 1-min load average {load['loadavg_before']} before, {load['loadavg_after']} after; machine CPU use "
        f"before the first run {load['machine_cores_before']} cores",
    ]
    fifo_ranking = ", ".join(f"{tuple(r[k] for k in KEYS)} {r['aggregate']:.4f}" for r in fifo["ranking"])
    lines += [
        "",
        f"12 trials ({' x '.join(KEYS)}), embedded default; shared stages (data, SFT, critic) trained once before "
        f"both arms in {results['shared_stages_s']:.0f} s.",
        "",
        "| arm | trials wall s | done | stopped | failed | optimizer steps trained | best (lambda, beta) | best aggregate "
        "| measured (commit, load after) |",
        "|---|---:|---:|---:|---:|---:|---|---:|---|",
    ]
    for r in [results[a] for a in ARMS if a in results]:
        best = r["ranking"][0] if r["ranking"] else {}
        lines.append(
            f"| {r['arm']} | {r['trials_s']:.0f} | {r['done']} | {r['stopped']} | {r['failed']} | "
            f"{r['steps_trained']} | {tuple(best.get(k) for k in KEYS)} | {best.get('aggregate', float('nan')):.4f} | "
            f"{r.get('measured', '?')} ({r.get('commit', '?')}, {r.get('loadavg_after', '?')}) |"
        )
    lines += ["", f"FIFO's ranking (aggregate): {fifo_ranking}.", ""]
    for name in [a for a in ARMS if a != "fifo" and a in results]:
        arm = results[name]
        lines.append(
            f"- {name}: its best trial is number {arm['best_rank_in_fifo']} of FIFO's 12; it finished "
            f"{arm['points']} distinct point(s)."
        )
    Path(f"{args.out}.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
