#!/usr/bin/env python3
"""Online vs offline HDPO on Ray: step time at equal batch, and where the online step's time goes.

Setup (once, in a scratch folder outside the repository, ``/tmp/hdpo_online`` by default): the built-in corpus
(``data.builtin_max_per_bucket``, default 60) prepared with ``run_prepare(config, engine="local")``, then
``run_references``, ``run_sft_stage`` (the default built-in model: hidden 128, 2 layers; --sft-steps steps) and
``run_critic_stage`` (SFT samples for ``critic.max_prompts`` train prompts plus the val split, the critic bundle,
its quality gates), all with ``generation.max_new_tokens`` = --max-new-tokens. ``hdpo.max_prompts`` is the same
number, so offline HDPO builds its pairs from the critic stage's samples and online HDPO rolls out the same prompts.

Then ``run_hdpo_stage`` once per variant, same model, same ``hdpo.num_workers`` (2), ``hdpo.micro_batch_size``
(4 pairs per worker: 8 pairs per step), ``hdpo.max_steps`` (30), ``hdpo.log_every=1``, no intermediate
checkpoint, ZeRO-2 (the default). Variants:

- ``offline``: ``hdpo.mode=offline`` (human answer vs SFT sample, critic distances and reference log-probs computed
  before training, by the critic pool and Ray Data; that preparation is outside the step times)
- ``online``: ``hdpo.mode=online`` with the defaults (``rollouts_per_prompt=4``, ``rollout_depth=2``, 2 critic
  actors, weights pushed every step)
- ``online_depth3`` (``hdpo.online.rollout_depth=3``), ``online_k2`` (``hdpo.online.rollouts_per_prompt=2``), ``online_critic1``
  (``critic.num_actors=1``): settings that might lower the online step time

Step time is ``step_seconds`` of each line of the run's ``metrics.jsonl`` (rank 0's loop timer; online it includes
the wait for pairs), median over the steps after the first --exclude (actor and worker start-up). Online runs
also report, from ``summary.json``'s ``source``: trainer compute and wait seconds, critic and generator busy
seconds and the share of it that overlapped training, staleness; and from ``metrics.jsonl``: the per-step wait
for pairs (``online/wait_s``).

A sampler thread reads /proc every 0.5 s: CPU seconds of every process of this process tree, by role (the Ray
process title: ``RayTrainWorker`` = the trainers, ``RemoteRolloutWorker`` = the generator, ``CriticScorer`` = the
critic actors, the driver, Ray's own daemons, ...), and of all other processes (load from others), and the number
of lines in ``metrics.jsonl``, so the CPU each role used during the timed steps (from the line --exclude to the
last) is known. Ray runs in this process: ``ray.init(num_cpus=--num-cpus, include_dashboard=False)``, shut down
at the end.

Usage (from the repository root):
    .venv/bin/python bench/hdpo_online.py --wait-quiet 600 \\
        --report bench/results/hdpo_online.md --jsonl bench/results/hdpo_online.jsonl
    .venv/bin/python bench/hdpo_online.py --variants offline,online --steps 12 --exclude 3   # quick check
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import harness

harness.set_default_env(harness.RAY_LOCAL_ENV)  # before Ray is imported (in main)

VARIANTS: dict[str, list[str]] = {
    "offline": ["hdpo.mode=offline"],
    "online": ["hdpo.mode=online"],
    "online_depth3": ["hdpo.mode=online", "hdpo.online.rollout_depth=3"],
    "online_k2": ["hdpo.mode=online", "hdpo.online.rollouts_per_prompt=2"],
    "online_critic1": ["hdpo.mode=online", "critic.num_actors=1"],
}
DEFAULT_VARIANTS = "offline,online,online_depth3,online_k2,online_critic1"

# Ray process titles (``ray::Class.method``) -> role
ROLES = {
    "RayTrainWorker": "trainers",
    "RemoteRolloutWorker": "generator",
    "CriticScorer": "critic",
}


# ----------------------------------------------------------------------------------------------------------------
# CPU by role
# ----------------------------------------------------------------------------------------------------------------
def process_role(pid: int, root: int) -> str:
    if pid == root:
        return "driver"
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmd = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return "gone"
    if cmd.startswith("ray::"):
        name = cmd[5:].split()[0].split(".")[0]
        for key, role in ROLES.items():
            if key in name:
                return role
        if name == "IDLE":
            return "ray_idle_workers"
        return "ray_other_tasks"  # Ray Data, Train controller, ...
    return "ray_daemons"  # raylet, gcs_server, log monitor, agents, ...


class RoleSampler(harness.ProcessSampler):
    """Every ``interval`` s: CPU seconds of each process of this tree (attributed to its current role) and of the
    rest of the machine, and the line count of ``metrics_path``."""

    def __init__(self, metrics_path: Path, interval: float = 0.5):
        super().__init__(interval)
        self.metrics_path = metrics_path
        self.prev: dict[int, float] = {}
        self.role_cpu: dict[str, float] = {}
        self.other_cpu = 0.0
        self.snapshots: list[dict[str, Any]] = []
        self.peak_tree_rss = 0

    def _lines(self) -> int:
        try:
            with open(self.metrics_path, "rb") as f:
                return sum(1 for _ in f)
        except OSError:
            return 0

    def _sample(self, initial: bool = False) -> None:
        procs = harness.read_processes()
        tree = harness.process_tree(procs, self.root)
        for pid, proc in procs.items():
            cpu = proc.cpu_s
            delta = cpu - self.prev.get(pid, cpu if initial else 0.0)
            self.prev[pid] = cpu
            if delta <= 0:
                continue
            if pid in tree:
                role = process_role(pid, self.root)
                self.role_cpu[role] = self.role_cpu.get(role, 0.0) + delta
            else:
                self.other_cpu += delta
        self.peak_tree_rss = max(self.peak_tree_rss, sum(procs[p].rss_bytes for p in tree if p in procs))
        self.snapshots.append(
            {
                "t": time.perf_counter(),
                "lines": self._lines(),
                "roles": dict(self.role_cpu),
                "other": self.other_cpu,
                "busy": harness.system_busy_s(),
            }
        )

    def window(self, first_line: int, last_line: int) -> dict[str, Any] | None:
        """Cores by role between the first snapshot that saw ``first_line`` metrics lines and the first that saw
        ``last_line`` (the timed steps, to 0.5 s)."""
        a = next((s for s in self.snapshots if s["lines"] >= first_line), None)
        b = next((s for s in self.snapshots if s["lines"] >= last_line), None)
        if a is None or b is None or b["t"] - a["t"] <= 0:
            return None
        wall = b["t"] - a["t"]
        roles = {
            role: round((b["roles"].get(role, 0.0) - a["roles"].get(role, 0.0)) / wall, 2)
            for role in sorted(set(a["roles"]) | set(b["roles"]))
        }
        return {
            "wall_s": round(wall, 2),
            "cores_by_role": {k: v for k, v in sorted(roles.items(), key=lambda kv: -kv[1]) if v > 0.0},
            "tree_cores": round(sum(roles.values()), 2),
            "other_procs_cores": round((b["other"] - a["other"]) / wall, 2),
            "machine_cores": round((b["busy"] - a["busy"]) / wall, 2),
        }

    def whole(self) -> dict[str, Any]:
        a, b = self.snapshots[0], self.snapshots[-1]
        wall = max(b["t"] - a["t"], 1e-9)
        return {
            "wall_s": round(wall, 1),
            "cpu_s_by_role": {
                k: round(v, 1) for k, v in sorted(self.role_cpu.items(), key=lambda kv: -kv[1])
            },
            "other_procs_cores": round(self.other_cpu / wall, 2),
            "peak_tree_rss_mib": round(self.peak_tree_rss / 2**20, 1),
        }


# ----------------------------------------------------------------------------------------------------------------
# Setup and runs
# ----------------------------------------------------------------------------------------------------------------
def base_overrides(args, work: Path) -> list[str]:
    return [
        f"data.output_dir={work / 'data'}",
        f"data.builtin_max_per_bucket={args.max_per_bucket}",
        f"sft.output_dir={work / 'sft'}",
        f"sft.max_steps={args.sft_steps}",
        "sft.log_every=5",
        "sft.max_failures=0",
        f"critic.output_dir={work / 'critic'}",
        f"critic.max_prompts={args.max_prompts}",
        "critic.epochs=8",
        "critic.hash_buckets=8192",
        f"generation.max_new_tokens={args.max_new_tokens}",
        "generation.batch_size=32",
        f"hdpo.max_prompts={args.max_prompts}",
        f"hdpo.num_workers={args.workers}",
        f"hdpo.micro_batch_size={args.micro_batch_size}",
        f"hdpo.max_steps={args.steps}",
        "hdpo.log_every=1",
        "hdpo.checkpoint_every=0",
        "hdpo.max_failures=0",
        f"ray.num_cpus={args.num_cpus}",
        *(args.set or []),
    ]


def setup(args, work: Path) -> dict[str, Any]:
    """prepare -> references -> SFT -> critic, skipping what a previous run of this script left in ``work``."""
    from polyalign_ray.config import load_config
    from polyalign_ray.stages.critic import run_critic_stage
    from polyalign_ray.stages.data import run_prepare, run_references
    from polyalign_ray.stages.sft import run_sft_stage

    config = load_config(None, base_overrides(args, work))
    times: dict[str, float] = {}
    data = work / "data"
    if not (data / "manifest.json").is_file():
        t = time.perf_counter()
        run_prepare(config, engine="local")
        times["prepare_s"] = round(time.perf_counter() - t, 1)
    if not (data / "references.json").is_file():
        t = time.perf_counter()
        run_references(config)
        times["references_s"] = round(time.perf_counter() - t, 1)
    if not (work / "sft" / "final" / "config.json").is_file():
        t = time.perf_counter()
        run_sft_stage(config)
        times["sft_s"] = round(time.perf_counter() - t, 1)
    if not (work / "critic" / "critic.json").is_file():
        t = time.perf_counter()
        run_critic_stage(config)
        times["critic_s"] = round(time.perf_counter() - t, 1)
    setup_file = work / "setup.json"
    previous = json.loads(setup_file.read_text()) if setup_file.is_file() else {}
    used = {"max_per_bucket": args.max_per_bucket, "sft_steps": args.sft_steps, "max_prompts": args.max_prompts,
            "max_new_tokens": args.max_new_tokens}  # fmt: skip
    for key, value in used.items():
        if key in previous and previous[key] != value:
            raise SystemExit(
                f"error: {work} was set up with {key}={previous[key]}, not {value}: use another --work"
            )
    setup_file.write_text(json.dumps({**previous, **used, **times}, indent=1))
    import pyarrow.parquet as pq
    from transformers import AutoConfig

    model_cfg = AutoConfig.from_pretrained(work / "sft" / "final")
    critic = json.loads((work / "critic" / "summary.json").read_text())
    return {
        "setup_times_s": {k: v for k, v in json.loads(setup_file.read_text()).items() if k.endswith("_s")},
        "setup_settings": {
            k: v for k, v in json.loads(setup_file.read_text()).items() if not k.endswith("_s")
        },
        "train_records": sum(pq.read_metadata(p).num_rows for p in (data / "train").glob("*.parquet")),
        "model": {
            "hidden_size": model_cfg.hidden_size,
            "layers": model_cfg.num_hidden_layers,
            "vocab_size": model_cfg.vocab_size,
        },
        "critic_gates_passed": critic.get("gates_passed"),
        "critic_heldout_spearman": critic.get("heldout_spearman"),
    }


def median_after(values: list[float], exclude: int) -> float | None:
    timed = values[exclude:]
    return statistics.median(timed) if timed else None


def measure(args, work: Path, name: str, overrides: list[str], repeat: int) -> dict[str, Any]:
    from polyalign_ray.config import load_config
    from polyalign_ray.stages.hdpo import run_hdpo_stage

    out = (work / "runs" / f"{name}_r{repeat}").resolve()
    if out.exists():
        shutil.rmtree(out)
    config = load_config(None, [*base_overrides(args, work), f"hdpo.output_dir={out}", *overrides])
    with RoleSampler(out / "metrics.jsonl") as sampler:
        t0 = time.perf_counter()
        summary = run_hdpo_stage(config)
        wall = time.perf_counter() - t0
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    if len(lines) != args.steps:
        raise RuntimeError(f"{out}/metrics.jsonl has {len(lines)} lines, expected {args.steps}")
    step_s = [x["step_seconds"] for x in lines]
    timed = step_s[args.exclude :]
    hdpo = config.hdpo
    global_pairs = hdpo.global_batch_size(hdpo.num_workers)
    median = statistics.median(timed)
    row: dict[str, Any] = {
        "variant": name,
        "repeat": repeat,
        "mode": hdpo.mode,
        "overrides": overrides,
        "workers": hdpo.num_workers,
        "micro_batch_size": hdpo.micro_batch_size,
        "pairs_per_step": global_pairs,
        "steps": args.steps,
        "excluded_steps": args.exclude,
        "rollouts_per_prompt": hdpo.online.rollouts_per_prompt,
        "rollout_depth": hdpo.online.rollout_depth,
        "critic_actors": config.critic.num_actors,
        "step_s_median": round(median, 4),
        "step_s_mean": round(statistics.mean(timed), 4),
        "step_s_min": round(min(timed), 4),
        "step_s_max": round(max(timed), 4),
        "step_s_p90": round(sorted(timed)[int(0.9 * (len(timed) - 1))], 4),
        "pairs_per_s": round(global_pairs * len(timed) / sum(timed), 2),
        "first_steps_s": [round(x, 3) for x in step_s[: args.exclude]],
        "step_seconds": [round(x, 4) for x in step_s],
        "stage_wall_s": round(wall, 1),
        "loop_wall_s": round(summary["wall_s"], 1),
        "last": {k: summary["last"].get(k) for k in ("loss", "rewards/accuracy", "rewards/margins")},
        "load_timed": sampler.window(args.exclude, args.steps),
        "load_whole": sampler.whole(),
    }
    if hdpo.mode == "online":
        src = summary["source"]
        waits = [x.get("online/wait_s", 0.0) for x in lines]
        batches = max(src["rollout_batches"], 1)
        row["source"] = src
        row["wait_s_median"] = round(statistics.median(waits[args.exclude :]), 4)
        row["wait_s_mean"] = round(statistics.mean(waits[args.exclude :]), 4)
        row["compute_s_median"] = round(
            statistics.median(s - w for s, w in zip(timed, waits[args.exclude :], strict=True)), 4
        )
        row["steps_waiting_over_10ms"] = sum(1 for w in waits[args.exclude :] if w > 0.01)
        row["generator_s_per_batch"] = round(src["generator_busy_s"] / batches, 3)
        row["critic_s_per_batch"] = round(src["critic_busy_s"] / batches, 3)
        row["pairs_per_batch"] = round(src["pairs_built"] / batches, 2)
        row["candidates_per_batch"] = round(src["candidates"] / batches, 1)
        row["batches_per_step"] = round(batches / args.steps, 2)
        row["generator_s_per_step"] = round(src["generator_busy_s"] / args.steps, 3)
        row["trainer_compute_s_per_step"] = round(src["trainer_compute_s"] / args.steps, 3)
        # step time outside the trainer's compute intervals and the wait: broadcast of the pairs, the weight
        # gather + ray.put after every update (sync_every=1), metrics all-reduce (whole run, per step)
        row["outside_compute_and_wait_s_per_step"] = round(
            (sum(step_s) - src["trainer_compute_s"] - src["trainer_wait_for_pairs_s"]) / args.steps, 3
        )
    else:
        counts = summary.get("pair_counts") or {}
        row["pair_counts"] = {k: counts.get(k) for k in ("pairs", "candidates", "dropped_exact_match",
                                                          "dropped_truncated", "weight_mean")}  # fmt: skip
    return row


def probe_generator(args, work: Path) -> list[dict[str, Any]]:
    """The rollout actor's work, in this process (1 torch thread, like the actor), on a quiet machine: for each k
    in --probe-k, --probe-batches rollout batches of ``workers x micro_batch_size`` prompts (the online default
    ``rollout_prompts``), timing HF generate, tokenization and the reference log-probs inside
    ``RolloutWorker.rollout``, then the critic's ``score_rollout`` of the batch."""
    import torch

    import polyalign_ray.rollout_worker as rollouts
    from polyalign_ray.config import load_config
    from polyalign_ray.critic.scorer import CriticScorer
    from polyalign_ray.stages.hdpo import hdpo_prompt_records

    config = load_config(None, base_overrides(args, work))
    records = hdpo_prompt_records(config).to_pylist()
    prompts_per_batch = args.workers * args.micro_batch_size
    policy = str(work / "sft" / "final")
    scorer = CriticScorer(work / "critic")
    originals = {name: getattr(rollouts, name) for name in ("tokenize_answer", "reference_sequence_logps")}
    rows = []
    for k in args.probe_k:
        worker = rollouts.RolloutWorker(
            policy, config.model, config.generation, rollouts_per_prompt=k, include_human=True
        )
        times: dict[str, float] = {}

        def timed(name, fn, times=times):
            def call(*a, **kw):
                t = time.perf_counter()
                try:
                    return fn(*a, **kw)
                finally:
                    times[name] = times.get(name, 0.0) + time.perf_counter() - t

            return call

        rollouts.tokenize_answer = timed("tokenize", originals["tokenize_answer"])
        rollouts.reference_sequence_logps = timed("reference_logps", originals["reference_sequence_logps"])
        worker.backend.generate = timed("generate", worker.backend.generate)
        scorer.score_rollout(worker.rollout(records[:prompts_per_batch], 10_000))  # warm-up, not counted
        model = worker.backend.model
        original_generate = model.generate

        def full_length_generate(*a, original_generate=original_generate, **kw):
            kw["min_new_tokens"] = kw["max_new_tokens"]  # no end-of-turn before max_new_tokens
            return original_generate(*a, **kw)

        for b in range(args.probe_batches + 1):
            full_length = b == args.probe_batches  # the last batch: every sample max_new_tokens long
            model.generate = full_length_generate if full_length else original_generate
            times.clear()
            batch = records[(b + 1) * prompts_per_batch : (b + 2) * prompts_per_batch]
            t0 = time.perf_counter()
            rollout = worker.rollout(batch, b)
            rollout_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            scorer.score_rollout(rollout)
            critic_s = time.perf_counter() - t0
            samples = [t for p, t in zip(
                [c for p in rollout["prompts"] for c in p["candidates"]], rollout["texts"], strict=True
            ) if not p["human"]]  # fmt: skip
            n_tokens = [len(worker.tokenizer(t, add_special_tokens=False)["input_ids"]) for t in samples]
            rows.append(
                {
                    "k": k,
                    "batch": b,
                    "forced_full_length": full_length,
                    "prompts": len(batch),
                    "samples": len(samples),
                    "candidates": len(rollout["texts"]),
                    "sample_tokens_mean": round(statistics.mean(n_tokens), 1) if n_tokens else 0.0,
                    "samples_at_max_new_tokens": sum(1 for n in n_tokens if n >= args.max_new_tokens - 1),
                    "rollout_s": round(rollout_s, 3),
                    "generate_s": round(times.get("generate", 0.0), 3),
                    "tokenize_s": round(times.get("tokenize", 0.0), 3),
                    "reference_logps_s": round(times.get("reference_logps", 0.0), 3),
                    "critic_score_s": round(critic_s, 3),
                    "torch_threads": torch.get_num_threads(),
                }
            )
        model.generate = original_generate
        del worker
    for name, fn in originals.items():
        setattr(rollouts, name, fn)
    return rows


# ----------------------------------------------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------------------------------------------
def fmt(v: Any, nd: int = 3) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.{nd}f}"
    return str(v)


def describe_busy(d: dict) -> str:
    """A discarded busy run, as the report lists it."""
    cores = (d["load_timed"] or {}).get("other_procs_cores")
    return f"{d['variant']} repeat {d['repeat']}: {d['step_s_median']:.3f} s/step with {cores} cores busy"


def render(
    args, argv, rows: list[dict], info: dict, prep: dict, date: str, discarded: list[dict], probe: list[dict]
) -> str:
    lines = [
        "# Online vs offline HDPO on Ray (CPU): step time at equal batch",
        "",
        f"- Date: {date}",
        f"- Command: `{shlex.join(['.venv/bin/python', 'bench/hdpo_online.py', *argv])}`",
        f"- Machine: {info['cpu']}, {info['logical_cpus']} logical CPUs, {info['mem_gib']} GiB; Python "
        f"{info['python']}, torch {info['torch']}, ray {info['ray']}, deepspeed {info['deepspeed']}",
        f"- Ray: local, `ray.init(num_cpus={args.num_cpus}, include_dashboard=False)`, shut down at the end.",
        f"- Setup (scratch folder, not the repository): built-in corpus, `data.builtin_max_per_bucket="
        f"{args.max_per_bucket}` ({prep['train_records']} train records); default built-in model (hidden "
        f"{prep['model']['hidden_size']}, {prep['model']['layers']} layers, vocab {prep['model']['vocab_size']}); "
        f"SFT {args.sft_steps} steps; critic on {args.max_prompts} train prompts + val (gates passed: "
        f"{prep['critic_gates_passed']}, held-out Spearman {fmt(prep['critic_heldout_spearman'])}); "
        f"`generation.max_new_tokens={args.max_new_tokens}`; `hdpo.max_prompts={args.max_prompts}`. Setup times "
        "(when first run): "
        + ", ".join(f"{k.removesuffix('_s')} {v} s" for k, v in prep["setup_times_s"].items())
        + ".",
        f"- Every HDPO run: {args.workers} workers × micro-batch {args.micro_batch_size} pairs = "
        f"{args.workers * args.micro_batch_size} pairs per step, ZeRO-2, {args.steps} steps, `hdpo.log_every=1`; "
        f"**the first {args.exclude} steps are excluded** from the step figures (worker, generator and critic "
        "actor start-up; the first rollouts). Step time = `step_seconds` of `metrics.jsonl` (rank 0; online it "
        "includes the wait for pairs).",
        "- Load: `other procs` = cores used by processes outside this benchmark during the timed steps (from "
        "/proc; ~0 = quiet).",
        "",
        "| variant | repeat | step s (median) | mean | p90 | pairs/s | ratio to offline | wait s (median) "
        "| compute s (median) | other procs (cores) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    offline = {r["repeat"]: r for r in rows if r["variant"] == "offline"}
    off_med = statistics.median(r["step_s_median"] for r in offline.values()) if offline else None
    for r in rows:
        base = offline.get(r["repeat"])
        ratio = r["step_s_median"] / base["step_s_median"] if base else None
        load = r["load_timed"] or {}
        lines.append(
            f"| {r['variant']} | {r['repeat']} | {r['step_s_median']:.3f} | {r['step_s_mean']:.3f} "
            f"| {r['step_s_p90']:.3f} | {r['pairs_per_s']:.2f} | {fmt(ratio, 2)}× "
            f"| {fmt(r.get('wait_s_median'))} | {fmt(r.get('compute_s_median'))} "
            f"| {fmt(load.get('other_procs_cores'), 2)} |"
        )
    online_rows = [r for r in rows if r["mode"] == "online"]
    if online_rows:
        lines += [
            "",
            "Online pipeline (from `summary.json`'s `source`, whole run incl. the excluded steps; per batch = per "
            "rollout batch of `hdpo.online.rollout_prompts` prompts: the global batch, "
            f"{args.workers * args.micro_batch_size}, unless the variant sets it):",
            "",
            "| variant | repeat | rollout batches | candidates/batch | pairs/batch | generator s/batch | critic s/batch "
            "| generator busy s | gen. overlap | critic busy s | critic busy while training s | critic overlap "
            "| trainer compute s (per step) | trainer wait s | push etc. s/step | steps waiting | staleness mean/max "
            "| stale dropped |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in online_rows:
            s = r["source"]
            lines.append(
                f"| {r['variant']} | {r['repeat']} | {s['rollout_batches']} | {r['candidates_per_batch']} "
                f"| {r['pairs_per_batch']} | {r['generator_s_per_batch']:.2f} | {r['critic_s_per_batch']:.3f} "
                f"| {s['generator_busy_s']:.1f} | {s['generator_overlap_fraction']:.2f} | {s['critic_busy_s']:.2f} "
                f"| {s['critic_busy_while_training_s']:.2f} | {s['critic_overlap_fraction']:.2f} "
                f"| {s['trainer_compute_s']:.1f} ({r['trainer_compute_s_per_step']:.2f}) "
                f"| {s['trainer_wait_for_pairs_s']:.1f} | {r['outside_compute_and_wait_s_per_step']:.3f} "
                f"| {r['steps_waiting_over_10ms']}/{args.steps - args.exclude} "
                f"| {s['staleness_mean']:.2f}/{s['staleness_max']} | {s['pairs_dropped_stale']} |"
            )
    lines += [
        "",
        "CPU by role during the timed steps (cores, from /proc every 0.5 s; `trainers` = the Ray Train worker "
        "processes, `generator` = the rollout actor, `critic` = the critic actors):",
        "",
        "| variant | repeat | window s | trainers | generator | critic | driver | Ray daemons | other Ray "
        "| this tree | other procs | whole machine |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        w = r["load_timed"]
        if not w:
            continue
        c = w["cores_by_role"]
        lines.append(
            f"| {r['variant']} | {r['repeat']} | {w['wall_s']:.1f} | {c.get('trainers', 0.0):.2f} "
            f"| {c.get('generator', 0.0):.2f} | {c.get('critic', 0.0):.2f} | {c.get('driver', 0.0):.2f} "
            f"| {c.get('ray_daemons', 0.0):.2f} "
            f"| {c.get('ray_other_tasks', 0.0) + c.get('ray_idle_workers', 0.0):.2f} | {w['tree_cores']:.2f} "
            f"| {w['other_procs_cores']:.2f} | {w['machine_cores']:.2f} |"
        )
    if off_med:
        lines += ["", "Ratio online / offline of the median step time (median over repeats):", ""]
        by: dict[str, list[float]] = {}
        for r in online_rows:
            by.setdefault(r["variant"], []).append(r["step_s_median"])
        for name, meds in by.items():
            lines.append(f"- {name}: **{statistics.median(meds) / off_med:.2f}×** "
                         f"({statistics.median(meds):.3f} s vs {off_med:.3f} s)")  # fmt: skip
    if probe:
        lines += [
            "",
            "Generator probe: `RolloutWorker.rollout` in the driver process (1 torch thread, like the actor), Ray "
            "stopped, nothing else of this benchmark running; one rollout batch of "
            f"{args.workers * args.micro_batch_size} prompts × k samples + the human answer, then the critic's "
            "`score_rollout` of its candidates (1 thread). Seconds per batch:",
            "",
            "| k | batch | samples | candidates | sample tokens (mean) | samples at max_new_tokens | rollout s "
            "| HF generate s | tokenize s | reference log-probs s | critic score s | other procs (cores) |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for p in probe:
            lines.append(
                f"| {p['k']} | {str(p['batch']) + (f' (forced {args.max_new_tokens}-token samples)' if p['forced_full_length'] else '')} "
                f"| {p['samples']} | {p['candidates']} | {p['sample_tokens_mean']} "
                f"| {p['samples_at_max_new_tokens']} | {p['rollout_s']:.2f} | {p['generate_s']:.2f} "
                f"| {p['tokenize_s']:.3f} | {p['reference_logps_s']:.3f} | {p['critic_score_s']:.3f} "
                f"| {fmt(p.get('other_procs_cores'), 2)} |"
            )
    lines += harness.busy_run_lines(rows, discarded, describe_busy, args.busy_limit)
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------------------------------
# Main
# ----------------------------------------------------------------------------------------------------------------
def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variants", default=DEFAULT_VARIANTS, help=f"comma list of {', '.join(VARIANTS)}")
    ap.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="NAME:KEY=VALUE,...",
        help="an extra variant, e.g. 'online_t2:hdpo.mode=online,hdpo.torch_threads=2' (repeatable)",
    )
    ap.add_argument("--repeats", type=int, default=1, help="the variant list this many times (default 1)")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument(
        "--exclude", type=int, default=5, help="first steps left out of the step figures (default 5)"
    )
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--micro-batch-size", type=int, default=4)
    ap.add_argument("--max-per-bucket", type=int, default=60)
    ap.add_argument("--max-prompts", type=int, default=300, help="critic.max_prompts and hdpo.max_prompts")
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--sft-steps", type=int, default=300)
    ap.add_argument("--num-cpus", type=int, default=2)
    ap.add_argument("--set", action="append", metavar="KEY=VALUE", help="extra override for every stage")
    ap.add_argument(
        "--work", default="/tmp/hdpo_online", help="scratch folder (kept; setup reused if present)"
    )
    ap.add_argument("--setup-only", action="store_true")
    ap.add_argument(
        "--probe-batches", type=int, default=3, help="generator probe batches per k (0: no probe)"
    )
    ap.add_argument(
        "--probe-k",
        default="4,2",
        type=lambda t: [int(x) for x in t.split(",") if x],
        help="k values to probe",
    )
    harness.add_quiet_options(ap, quiet_threshold=0.2, busy_limit=0.25, retries=1)
    harness.add_result_options(ap)
    return harness.parse_with_exclude(ap, argv, timed_at_least=2)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)
    variants: list[tuple[str, list[str]]] = []
    for name in (v.strip() for v in args.variants.split(",") if v.strip()):
        if name not in VARIANTS:
            raise SystemExit(f"error: unknown variant {name!r} ({', '.join(VARIANTS)}; or --variant)")
        variants.append((name, VARIANTS[name]))
    for spec in args.variant:
        name, _, rest = spec.partition(":")
        variants.append((name, [x for x in rest.split(",") if x]))
    work = Path(args.work).resolve()
    if harness.REPO in work.parents or work == harness.REPO:
        raise SystemExit("error: --work must be outside the repository")
    work.mkdir(parents=True, exist_ok=True)

    info = harness.ray_stack_info()
    import ray

    date = harness.local_timestamp()
    ray.init(num_cpus=args.num_cpus, include_dashboard=False, log_to_driver=False)
    ledger = harness.RunLedger(args, "hdpo_online", others_only=True)
    rows, discarded = ledger.kept, ledger.discarded
    try:
        prep = setup(args, work)
        sys.stderr.write(f"[hdpo_online] setup in {work}: {prep}\n")
        if args.setup_only:
            return 0
        for repeat in range(args.repeats):
            for name, overrides in variants:
                for attempt in range(args.retries + 1):
                    waited = ledger.wait(name)
                    row = measure(args, work, name, overrides, repeat)
                    row["attempt"] = attempt
                    row["waited_for_quiet_s"] = None if waited is None else round(waited, 1)
                    other = (row["load_timed"] or {}).get("other_procs_cores", 0.0)
                    median = f"{row['step_s_median']:.3f} s (median after {args.exclude})"
                    progress = f"{name} r{repeat}: step {median}, wait {row.get('wait_s_median')}"
                    if ledger.file(row, other, attempt, progress):
                        break
    finally:
        ray.shutdown()

    probe: list[dict] = []
    if args.probe_batches > 0:
        ledger.wait("probe")
        busy0, t0 = harness.system_busy_s(), time.perf_counter()
        cpu0 = time.process_time()
        probe = probe_generator(args, work)
        wall = time.perf_counter() - t0
        other = max(harness.system_busy_s() - busy0 - (time.process_time() - cpu0), 0.0) / wall
        for p in probe:
            p["other_procs_cores"] = round(other, 2)
        sys.stderr.write(f"[hdpo_online] generator probe: {probe}\n")

    report = render(args, argv, rows, info, prep, date, discarded, probe)
    summary = {"summary": True, "date": date, "machine": info, "setup": prep, "generator_probe": probe,
               "command": shlex.join(["bench/hdpo_online.py", *argv])}  # fmt: skip
    harness.publish(
        args, report, rows, summary, [{**r, "date": date} for r in rows + discarded], ensure_ascii=True
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
