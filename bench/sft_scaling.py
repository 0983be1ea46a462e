#!/usr/bin/env python3
"""SFT on Ray Train + DeepSpeed: 1 vs 2 workers, and the cost of ZeRO stages 0/2/3, on this machine's CPUs.

Each configuration is one ``stages.sft.run_sft_stage(config)`` (Ray Data tokenization of the train split,
then a ``TorchTrainer`` whose workers run the SFT loop on a DeepSpeed engine) inside one local Ray instance
(``ray.init(num_cpus=3, include_dashboard=False)``), on the built-in corpus prepared once by
``run_prepare(config, engine="local")``, with the default built-in model (hidden 128) and micro-batch 4 per
worker, ``sft.log_every=1``, no intermediate checkpoints. Configurations are written ``WORKERS:ZERO[:THREADS]``
(THREADS: ``sft.torch_threads`` per worker, default the config's default, 1); the default set is
``1:0,2:0,2:2,2:3,1:0:2`` (the last: one worker with both cores, to tell data parallelism from more threads).

Per configuration, from the run's ``metrics.jsonl`` (written by rank 0; with ``log_every=1`` one line per step):
the median and mean ``step_seconds`` and the tokens/s over the steps after the first --exclude ones
(``tokens`` are the response tokens of the global batch, summed over ranks: the tokens with a loss), plus the
global samples/s. Around it: the wall time of ``run_sft_stage`` (tokenization, trainer start, workers, DeepSpeed
init, the loop, the final export, shutdown of the worker group), the loop's own wall (``summary.json``), and the
fixed overhead, ``wall - steps x median step`` (and ``wall - sum of all step_seconds``). The base model (tokenizer
trained on the corpus) is written once before the timed fits, and an untimed warm-up fit runs first.

While each fit runs, a sampler thread reads /proc every 0.5 s: the CPU used by this process tree (driver, Ray,
workers) and by every other process, and the peak summed RSS of this tree. Results are only comparable when the
other processes' CPU is near 0; --wait-quiet waits for an idle machine before each fit.

Usage (from the repository root):
    .venv/bin/python bench/sft_scaling.py --wait-quiet 600 \\
        --report bench/results/sft_scaling.md --jsonl bench/results/sft_scaling.jsonl
    .venv/bin/python bench/sft_scaling.py --configs 1:0,2:2 --steps 10 --max-per-bucket 30   # quick check
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import harness

harness.set_default_env(harness.RAY_LOCAL_ENV)  # before Ray is imported (in main)


# ----------------------------------------------------------------------------------------------------------------
# Machine load
# ----------------------------------------------------------------------------------------------------------------
class LoadSampler(harness.ProcessSampler):
    """Every ``interval`` s: CPU used by this process tree and by all other processes, and the tree's summed RSS.

    Processes that start after the sampler count from 0; CPU of a process that starts and ends between two
    samples is missed (an under-count of at most one interval per such process)."""

    def __init__(self, interval: float = 0.5):
        super().__init__(interval)
        self.first: dict[int, float] = {}
        self.last: dict[int, float] = {}
        self.ours: set[int] = set()
        self.peak_tree_rss = 0

    def _sample(self, initial: bool = False) -> None:
        procs = harness.read_processes()
        tree = harness.process_tree(procs, self.root)
        self.ours |= tree
        for pid, proc in procs.items():
            if pid not in self.first:
                self.first[pid] = proc.cpu_s if initial else 0.0
            self.last[pid] = proc.cpu_s
        self.peak_tree_rss = max(self.peak_tree_rss, sum(procs[p].rss_bytes for p in tree if p in procs))

    def _started(self) -> None:
        self.busy0 = harness.system_busy_s()
        self.load0 = os.getloadavg()[0]

    def _stopped(self) -> None:
        self.busy = harness.system_busy_s() - self.busy0
        self.load1 = os.getloadavg()[0]

    def summary(self) -> dict[str, Any]:
        ours = sum(self.last[p] - self.first[p] for p in self.ours if p in self.last)
        others = sum(self.last[p] - self.first[p] for p in self.last if p not in self.ours)
        return {
            "tree_cpu_cores": round(ours / self.wall, 2),
            "other_procs_cpu_cores": round(max(others, 0.0) / self.wall, 2),
            "machine_cpu_cores": round(self.busy / self.wall, 2),
            "loadavg_1m_start_end": [round(self.load0, 2), round(self.load1, 2)],
            "peak_tree_rss_mib": round(self.peak_tree_rss / 2**20, 1),
        }


# ----------------------------------------------------------------------------------------------------------------
# Runs
# ----------------------------------------------------------------------------------------------------------------
def parse_configs(text: str) -> list[tuple[int, int, int | None]]:
    out = []
    for item in text.split(","):
        parts = item.strip().split(":")
        if not 2 <= len(parts) <= 3:
            raise SystemExit(f"error: configuration {item!r} must be WORKERS:ZERO[:THREADS], e.g. 2:3")
        out.append((int(parts[0]), int(parts[1]), int(parts[2]) if len(parts) == 3 else None))
    return out


def config_name(workers: int, zero: int, threads: int | None) -> str:
    return f"w{workers}_zero{zero}" + (f"_t{threads}" if threads is not None else "")


def overrides_for(args, data_dir: Path, out: Path, workers: int, zero: int, threads: int | None, steps: int):
    ov = [
        f"data.output_dir={data_dir}",
        f"data.builtin_max_per_bucket={args.max_per_bucket}",
        f"sft.output_dir={out}",
        f"sft.num_workers={workers}",
        f"sft.zero_stage={zero}",
        f"sft.micro_batch_size={args.micro_batch_size}",
        f"sft.max_steps={steps}",
        "sft.log_every=1",
        "sft.checkpoint_every=0",
        "sft.max_failures=0",
        f"ray.num_cpus={args.num_cpus}",
    ]
    if threads is not None:
        ov.append(f"sft.torch_threads={threads}")
    return ov + list(args.set or [])


_ORIGINALS: dict[str, Any] = {}


def time_driver_phases() -> dict[str, float]:
    """Wall time of ``tokenize_with_ray`` and ``TorchTrainer.fit`` inside ``run_sft_stage``, by wrapping the
    names the data and launcher modules look up at call time (no package file is changed)."""
    import polyalign_ray.distributed.data as data_module
    import polyalign_ray.distributed.launcher as launcher_module

    phases = {"tokenize_with_ray": 0.0, "fit": 0.0}
    _ORIGINALS.setdefault("tokenize_with_ray", data_module.tokenize_with_ray)
    _ORIGINALS.setdefault("TorchTrainer", launcher_module.TorchTrainer)

    def tokenize_with_ray(*a, **k):
        t = time.perf_counter()
        try:
            return _ORIGINALS["tokenize_with_ray"](*a, **k)
        finally:
            phases["tokenize_with_ray"] += time.perf_counter() - t

    class TimedTorchTrainer(_ORIGINALS["TorchTrainer"]):
        def fit(self, *a, **k):
            t = time.perf_counter()
            try:
                return super().fit(*a, **k)
            finally:
                phases["fit"] += time.perf_counter() - t

    data_module.tokenize_with_ray = tokenize_with_ray
    launcher_module.TorchTrainer = TimedTorchTrainer
    return phases


def restore_driver_phases() -> None:
    import polyalign_ray.distributed.data as data_module
    import polyalign_ray.distributed.launcher as launcher_module

    data_module.tokenize_with_ray = _ORIGINALS["tokenize_with_ray"]
    launcher_module.TorchTrainer = _ORIGINALS["TorchTrainer"]


def paired_step_delta(a: list[float], b: list[float]) -> tuple[float, float]:
    """Median and standard deviation of per-step differences a - b (same step index: the same global batch, since
    the sampler's global stream does not depend on the configuration)."""
    d = [x - y for x, y in zip(a, b, strict=True)]
    return statistics.median(d), statistics.stdev(d) if len(d) > 1 else 0.0


def measure(args, data_dir: Path, out: Path, workers: int, zero: int, threads: int | None) -> dict[str, Any]:
    from polyalign_ray.config import load_config
    from polyalign_ray.stages.sft import run_sft_stage

    overrides = overrides_for(args, data_dir, out, workers, zero, threads, args.steps)
    config = load_config(None, overrides)
    phases = time_driver_phases()
    with LoadSampler() as sampler:
        t0 = time.perf_counter()
        summary = run_sft_stage(config)
        wall = time.perf_counter() - t0
    restore_driver_phases()
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    if len(lines) != args.steps:
        raise RuntimeError(f"{out}/metrics.jsonl has {len(lines)} lines, expected {args.steps}")
    step_s = [line["step_seconds"] for line in lines]
    timed = lines[args.exclude :]
    timed_s = [line["step_seconds"] for line in timed]
    tokens = sum(line["tokens"] for line in timed)
    median = statistics.median(timed_s)
    global_batch = config.sft.global_batch_size(workers)
    return {
        "config": config_name(workers, zero, threads),
        "workers": workers,
        "zero_stage": zero,
        "torch_threads_per_worker": config.sft.torch_threads,
        "micro_batch_size": config.sft.micro_batch_size,
        "global_batch": global_batch,
        "steps": args.steps,
        "excluded_steps": args.exclude,
        "step_s_median": round(median, 4),
        "step_s_mean": round(statistics.mean(timed_s), 4),
        "step_s_min": round(min(timed_s), 4),
        "step_s_max": round(max(timed_s), 4),
        "tokens_per_s": round(tokens / sum(timed_s), 1),
        "tokens_per_step_mean": round(tokens / len(timed), 1),
        "samples_per_s": round(global_batch / median, 2),
        "fit_wall_s": round(wall, 2),
        "loop_wall_s": round(summary["wall_s"], 2),
        "fixed_overhead_s": round(wall - args.steps * median, 2),
        "wall_minus_sum_step_s": round(wall - sum(step_s), 2),
        # where the overhead goes: Ray Data tokenization (driver), TorchTrainer.fit() outside the loop (worker
        # group start, imports, model load, DeepSpeed init, data shard, teardown), the loop outside its steps
        # (final checkpoint + export, log lines), and the rest of run_sft_stage (base-model check, summary)
        "overhead_breakdown_s": {
            "tokenize_with_ray": round(phases["tokenize_with_ray"], 2),
            "fit_outside_loop": round(phases["fit"] - summary["wall_s"], 2),
            "loop_outside_steps": round(summary["wall_s"] - sum(step_s), 2),
            "rest_of_stage": round(wall - phases["tokenize_with_ray"] - phases["fit"], 2),
        },
        "first_steps_s": [round(x, 3) for x in step_s[: args.exclude]],
        "final_loss": round(summary["final_loss"], 4),
        "load": sampler.summary(),
        "step_seconds": [round(x, 4) for x in step_s],
    }


def describe_busy(d: dict) -> str:
    """A discarded busy fit, as the report lists it."""
    step_ms = d["step_s_median"] * 1000
    return f"{d['config']}: step {step_ms:.0f} ms with {d['load']['other_procs_cpu_cores']} cores busy"


def render(args, argv, rows: list[dict], info: dict, prep: dict, date: str, discarded: list[dict]) -> str:
    base = next(
        (r for r in rows if r["workers"] == 1 and r["zero_stage"] == 0 and r["config"].count("_") == 1), None
    )
    z0 = next((r for r in rows if r["workers"] == 2 and r["zero_stage"] == 0), None)
    lines = [
        "# SFT scaling on Ray Train + DeepSpeed (CPU): 1 vs 2 workers, ZeRO-0/2/3",
        "",
        f"- Date: {date}",
        f"- Command: `{shlex.join(['.venv/bin/python', 'bench/sft_scaling.py', *argv])}`",
        f"- Machine: {info['cpu']}, {info['logical_cpus']} logical CPUs, {info['mem_gib']} GiB; Python "
        f"{info['python']}, torch {info['torch']}, ray {info['ray']}, deepspeed {info['deepspeed']}",
        f"- Ray: local, `ray.init(num_cpus={args.num_cpus}, include_dashboard=False)`; "
        "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S=0.5, RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0",
        f"- Data: built-in corpus (`data.builtin_max_per_bucket={args.max_per_bucket}`), prepared once with "
        f"`run_prepare(engine='local')` in {prep['prepare_s']} s: {prep['train_records']} train records; base "
        f"model written once in {prep['base_model_s']} s ({prep['params']:,} parameters, default built-in config).",
        f"- Each fit: {args.steps} steps, micro-batch {args.micro_batch_size} per worker, `sft.log_every=1`, no "
        f"intermediate checkpoint; step figures exclude the first {args.exclude} steps. tokens/s = response "
        "(loss) tokens of the global batch per second of `step_seconds` (rank 0's loop timer: sampling, collate, "
        "forward, backward, DeepSpeed step, metrics all-reduce; not the log write).",
        "- Load: other processes' CPU during each fit is in the table (cores, from /proc; ~0 = quiet).",
        "",
        "| config | workers | ZeRO | threads/worker | global batch | step s (median) | step s (mean) | tokens/s "
        "| samples/s | fit wall s | loop wall s | fixed overhead s | peak RSS (tree) MiB | other procs (cores) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['config']} | {r['workers']} | {r['zero_stage']} | {r['torch_threads_per_worker']} "
            f"| {r['global_batch']} | {r['step_s_median']:.4f} | {r['step_s_mean']:.4f} | {r['tokens_per_s']:,.0f} "
            f"| {r['samples_per_s']:.1f} | {r['fit_wall_s']:.1f} | {r['loop_wall_s']:.1f} "
            f"| {r['fixed_overhead_s']:.1f} | {r['load']['peak_tree_rss_mib']:,.0f} "
            f"| {r['load']['other_procs_cpu_cores']:.2f} |"
        )
    lines += [
        "",
        "fixed overhead = fit wall − steps × median step (also `wall_minus_sum_step_s` in the JSON: fit wall − "
        "the sum of all steps' `step_seconds`). Where the fit's time outside the steps goes (seconds):",
        "",
        "| config | Ray Data tokenization | `fit()` outside the loop | loop outside its steps | rest of the stage "
        "| first steps (s) |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        b = r["overhead_breakdown_s"]
        lines.append(
            f"| {r['config']} | {b['tokenize_with_ray']:.1f} | {b['fit_outside_loop']:.1f} "
            f"| {b['loop_outside_steps']:.1f} | {b['rest_of_stage']:.1f} "
            f"| {', '.join(f'{x:.2f}' for x in r['first_steps_s'])} |"
        )
    lines += [
        "",
        "`fit()` outside the loop: worker group start, imports, model load, DeepSpeed init, reading the dataset "
        "shard, Train teardown. Loop outside its steps: the final checkpoint (DeepSpeed state + model folder, "
        "reported to Ray Train) and the final export.",
    ]
    derived = []
    if base and z0:
        derived.append(
            f"- 2 workers vs 1 (ZeRO-0): {z0['tokens_per_s'] / base['tokens_per_s']:.2f}× tokens/s "
            f"(step time {z0['step_s_median'] / base['step_s_median']:.2f}×, with twice the global batch)."
        )
    if z0:
        for r in rows:
            if r["workers"] == 2 and r["zero_stage"] in (2, 3):
                ex = r["excluded_steps"]
                med, sd = paired_step_delta(r["step_seconds"][ex:], z0["step_seconds"][ex:])
                derived.append(
                    f"- ZeRO-{r['zero_stage']} vs ZeRO-0 (2 workers): step time "
                    f"{r['step_s_median'] / z0['step_s_median']:.2f}× "
                    f"({(r['step_s_median'] - z0['step_s_median']) * 1000:+.0f} ms per step; paired by step, "
                    f"same batches: median {med * 1000:+.0f} ms, sd {sd * 1000:.0f} ms), fixed overhead "
                    f"{r['fixed_overhead_s'] - z0['fixed_overhead_s']:+.1f} s."
                )
    t2 = next((r for r in rows if r["workers"] == 1 and r["torch_threads_per_worker"] == 2), None)
    if t2 and z0:
        derived.append(
            f"- 2 workers × 1 thread vs 1 worker × 2 threads (ZeRO-0): {z0['tokens_per_s'] / t2['tokens_per_s']:.2f}× "
            "tokens/s."
        )
    if derived:
        lines += ["", *derived]
    lines += harness.busy_run_lines(rows, discarded, describe_busy, args.busy_limit, runs="fits", during="")
    return "\n".join(lines) + "\n"


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", default="1:0,2:0,2:2,2:3,1:0:2", help="WORKERS:ZERO[:THREADS],... ")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--exclude", type=int, default=5, help="first steps left out of the step figures")
    ap.add_argument("--micro-batch-size", type=int, default=4)
    ap.add_argument(
        "--max-per-bucket", type=int, default=400, help="data.builtin_max_per_bucket (default 400)"
    )
    ap.add_argument("--num-cpus", type=int, default=3, help="CPUs of the local Ray instance (default 3)")
    ap.add_argument("--set", action="append", metavar="KEY=VALUE", help="extra config override (repeatable)")
    ap.add_argument("--no-warmup-fit", action="store_true", help="skip the untimed warm-up fit")
    harness.add_quiet_options(ap, quiet_threshold=0.15, busy_limit=0.15, retries=3, run="fit")
    harness.add_result_options(ap)
    ap.add_argument("--out", default=None, help="work folder (default: temp, deleted unless --keep)")
    ap.add_argument("--keep", action="store_true")
    return harness.parse_with_exclude(ap, argv, timed_at_least=1)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)
    configs = parse_configs(args.configs)
    work = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="sft_scaling_"))
    work.mkdir(parents=True, exist_ok=True)
    data_dir = (work / "data").resolve()

    info = harness.ray_stack_info()
    import pyarrow.parquet as pq
    import ray

    from polyalign_ray.config import load_config
    from polyalign_ray.stages.data import ensure_base_model, run_prepare

    date = harness.local_timestamp()
    base_config = load_config(None, overrides_for(args, data_dir, work / "unused", 1, 0, None, args.steps))
    t0 = time.perf_counter()
    if not (data_dir / "manifest.json").is_file():
        run_prepare(base_config, engine="local")
    prepare_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    model_path = ensure_base_model(base_config)
    base_model_s = time.perf_counter() - t0
    from transformers import AutoModelForCausalLM

    base_model = AutoModelForCausalLM.from_pretrained(model_path)
    params = sum(p.numel() for p in base_model.parameters())
    model_cfg = base_model.config
    del base_model
    train_records = sum(pq.read_metadata(p).num_rows for p in (data_dir / "train").glob("*.parquet"))
    prep = {
        "prepare_s": round(prepare_s, 1),
        "base_model_s": round(base_model_s, 1),
        "train_records": train_records,
        "params": params,
        "hidden_size": model_cfg.hidden_size,
        "vocab_size": model_cfg.vocab_size,
    }
    sys.stderr.write(f"[sft_scaling] work folder {work}; {prep}\n")

    ray.init(
        num_cpus=args.num_cpus,
        include_dashboard=False,
        object_store_memory=256 * 2**20,
        log_to_driver=False,
    )
    ledger = harness.RunLedger(args, "sft_scaling", others_only=True)
    rows, discarded = ledger.kept, ledger.discarded
    try:
        if not args.no_warmup_fit:
            w = measure_warmup(args, data_dir, work / "runs" / "warmup")
            sys.stderr.write(f"[sft_scaling] warm-up fit: {w:.1f} s\n")
        for workers, zero, threads in configs:
            name = config_name(workers, zero, threads)
            for attempt in range(args.retries + 1):
                waited = ledger.wait(name)
                out = (work / "runs" / name).resolve()
                if out.exists():
                    shutil.rmtree(out)
                row = measure(args, data_dir, out, workers, zero, threads)
                row["waited_for_quiet_s"] = None if waited is None else round(waited, 1)
                row["attempt"] = attempt
                other = row["load"]["other_procs_cpu_cores"]
                progress = (
                    f"{name}: step {row['step_s_median'] * 1000:.0f} ms, {row['tokens_per_s']:.0f} tokens/s, "
                    f"fit {row['fit_wall_s']:.1f} s, overhead {row['fixed_overhead_s']:.1f} s"
                )
                if ledger.file(row, other, attempt, progress):
                    break
    finally:
        ray.shutdown()

    report = render(args, argv, rows, info, prep, date, discarded)
    summary = {"summary": True, "date": date, "machine": info, "prep": prep,
               "command": shlex.join(["bench/sft_scaling.py", *argv])}  # fmt: skip
    harness.publish(
        args, report, rows, summary, [{**r, "date": date} for r in rows + discarded], ensure_ascii=True
    )
    if not args.out and not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def measure_warmup(args, data_dir: Path, out: Path) -> float:
    """An untimed short fit (1 worker, ZeRO-2): first imports, page cache, Ray worker pool."""
    from polyalign_ray.config import load_config
    from polyalign_ray.stages.sft import run_sft_stage

    config = load_config(None, overrides_for(args, data_dir, out, 1, 2, None, 3))
    t0 = time.perf_counter()
    run_sft_stage(config)
    return time.perf_counter() - t0


if __name__ == "__main__":
    sys.exit(main())
