#!/usr/bin/env python3
"""Our SFT loop vs TRL's SFTTrainer: tokens/s on the same model, data, batch size and sequence length, single
process on CPU, measured in the same run.

TRL side: the shared baseline script (``../shared/bench/trl_baseline.py`` beside the repository) run as a
subprocess with ``--trainers sft --format conversational`` by a Python that has ``trl`` (a separate venv,
``bench/.venv-trl`` by default; see bench/README.md), once with its default gradient checkpointing (on) and once
with ``--gradient-checkpointing off``.

Our side, on the same inputs: the shared script's own generators (``TextGen``, ``build_tokenizer``,
``build_pairs``, ``build_model``, same seed, pairs, tokenizer and model config) imported from that file; each pair's
(prompt, chosen) becomes one of our records (language en, or zh for zh and code-mixed, track single, family
assistant, length bin from ``schema.count_length_tokens``), tokenized by ``sft_data.tokenize_records`` (our prompt
renderer applies the tokenizer's ChatML chat template, which is why TRL runs with ``--format conversational``: both
sides train on chat-formatted prompts), trained by ``loops.sft.run_sft`` on a ``LocalStrategy`` with bucket
balancing on (``SamplerConfig(alpha=0.0)``), gradient checkpointing off (our default) and, for reference, on.

Both sides: ``torch.set_num_threads(--threads)``, fp32, micro-batch 8, no accumulation, max_length 384, learning
rate 2e-5 with a linear decay and no warmup (TRL's defaults), clipping at 1.0. Timing is the same on both sides:
a stamp at the end of every optimizer step (TRL: a ``TrainerCallback.on_step_end``; ours: run_sft's ``on_log``
with ``log_every=1``), the first --warmup steps excluded, then the step-to-step intervals of the next --steps
steps (data, forward, backward, optimizer, scheduler and logging included). Tokens are the real (non-pad) tokens
of each batch, the attention-mask sum of prompt+completion (TRL: counted in ``training_step``; ours: counted in a
wrapper around ``loops.sft.collate`` installed in the child process; no package file is changed). Every run is a
child process of its own, so peak RSS is per run. Each step also records the CPU the rest of the machine used
(/proc/stat minus this process), as the shared script does.

Our child also times the phases of each step (sampler + collate, forward, loss, backward, optimizer, metrics
reduction, log line) by wrapping the objects run_sft calls; ``--profile`` adds cProfile and torch.profiler tables
over the timed steps of our gradient-checkpointing-off run.

Usage (from the repository root):
    .venv/bin/python bench/sft_throughput.py --wait-quiet 600 \\
        --report bench/results/sft_throughput.md --jsonl bench/results/sft_throughput.jsonl
    .venv/bin/python bench/sft_throughput.py --skip-trl --ours gc_off --steps 5 --profile /tmp/sft_prof
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import harness

DEFAULT_SHARED = harness.REPO.parent / "shared" / "bench" / "trl_baseline.py"
DEFAULT_TRL_PYTHON = harness.REPO / "bench" / ".venv-trl" / "bin" / "python"
MARKER = "SFT_THROUGHPUT_JSON "
TITLE = "SFT throughput: our loop vs TRL's SFTTrainer (single process, CPU)"
# The shared script's parent prints bare JSON lines; its child prefixes them with this.
TRL_MARKER = "TRL_BASELINE_JSON "

# TRL's SFTConfig defaults (transformers TrainingArguments), matched on our side
LEARNING_RATE = 2e-5
MAX_GRAD_NORM = 1.0


# ----------------------------------------------------------------------------------------------------------------
# Helpers shared by parent and child
# ----------------------------------------------------------------------------------------------------------------
def load_shared(path: Path):
    """The shared TRL baseline script as a module (its import needs only the standard library)."""
    if not path.is_file():
        raise SystemExit(
            f"error: the shared TRL baseline script {path} does not exist.\n"
            "It is expected at ../shared/bench/trl_baseline.py relative to the repository root "
            f"({harness.REPO}); pass --shared-script PATH if it lives elsewhere."
        )
    spec = importlib.util.spec_from_file_location("trl_baseline_shared", path)
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    missing = [
        name
        for name in ("TextGen", "build_tokenizer", "build_pairs", "build_model", "MODEL_CONFIG")
        if not hasattr(module, name)
    ]
    if missing:
        raise SystemExit(f"error: {path} has no {missing}: not the expected trl_baseline.py")
    return module


# ----------------------------------------------------------------------------------------------------------------
# Child: our SFT loop
# ----------------------------------------------------------------------------------------------------------------
def records_from_pairs(pairs: list[dict]) -> Any:
    """The shared script's (prompt, chosen) pairs as our records. The prompt loses its trailing newline, as TRL's
    conversational format does (``to_conversational``), so both sides render the same user message."""
    import pyarrow as pa

    from polyalign_ray.corpus.tables import RECORD_SCHEMA
    from polyalign_ray.schema import bucket_id, content_key, count_length_tokens, length_bin

    rows = []
    for i, pair in enumerate(pairs):
        language = "en" if pair["lang"] == "en" else "zh"  # code-mixed text is Chinese with English words
        prompt = pair["prompt"].rstrip("\n")
        response = pair["chosen"]
        n_tokens = count_length_tokens(response)
        bin_name = length_bin(n_tokens)
        rows.append(
            {
                "id": f"pair{i:05d}",
                "source": "trl_baseline",
                "split": "train",
                "language": language,
                "track": "single",
                "family": "assistant",
                "prompt": prompt,
                "context": "",
                "history": [],
                "response": response,
                "length_tokens": n_tokens,
                "length_bin": bin_name,
                "bucket_id": bucket_id(language, "single", "assistant", bin_name),
                "system": "",
                "group_id": f"pair{i:05d}",
                "content_key": content_key(prompt, "", [], response),
                "variety": "",
                "style": "",
                "license": "",
                "language_rule": "given",
                "family_rule": "given",
                "machine_translated": False,
                "origin_file": "trl_baseline.py",
                "origin_line": i + 1,
            }
        )
    return pa.Table.from_pylist(rows, schema=RECORD_SCHEMA)


@dataclasses.dataclass
class SharedInputs:
    """What the shared TRL baseline script builds, the same for both sides: the tokenizer (trained on its
    corpus), the pairs and the random-init model, and the seconds the first two took."""

    tokenizer: Any
    pairs: list[dict]
    model: Any
    tokenizer_train_s: float
    data_build_s: float


def build_shared_inputs(args) -> SharedInputs:
    """The shared script's tokenizer, pairs and model for ``args`` (seed, corpus sentences, pairs), built with
    --threads torch threads, as every child of both sides trains with."""
    import torch
    import transformers

    torch.set_num_threads(args.threads)
    transformers.logging.set_verbosity_warning()
    shared = load_shared(Path(args.shared_script))
    t0 = time.perf_counter()
    gen = shared.TextGen(args.seed)
    tok = shared.build_tokenizer(gen, args.seed, args.corpus_sentences)
    t_tok = time.perf_counter() - t0
    t0 = time.perf_counter()
    pairs = shared.build_pairs(gen, tok, args.seed, args.pairs)
    t_data = time.perf_counter() - t0
    model = shared.build_model(tok, args.seed)
    return SharedInputs(tok, pairs, model, t_tok, t_data)


def trl_matched_settings(
    args, output_dir: Path, total_steps: int, learning_rate: float, max_grad_norm: float
) -> dict[str, Any]:
    """Training settings of our side as TRL's defaults have them (one process, micro-batch --batch-size, no
    accumulation, linear decay without warmup, no weight decay), with a log line every step for the step stamps
    and no checkpoint: the keyword arguments our ``SFTConfig`` and ``HDPOConfig`` share."""
    return {
        "output_dir": str(output_dir),
        "num_workers": 1,
        "micro_batch_size": args.batch_size,
        "grad_accum_steps": 1,
        "max_steps": total_steps,
        "lr": learning_rate,
        "weight_decay": 0.0,
        "warmup_steps": 0,
        "lr_schedule": "linear",
        "min_lr_ratio": 0.0,
        "max_grad_norm": max_grad_norm,
        "log_every": 1,
        "checkpoint_every": 0,
        "keep_checkpoints": 1,
        "seed": args.seed,
    }


def our_settings_fields(args, gradient_checkpointing: bool) -> dict[str, Any]:
    """The settings our side's result rows (SFT and HDPO) report, after their trainer."""
    import torch

    return {
        "format": "chat template (ChatML) via polyalign_ray.prompting.render_prompt",
        "threads": torch.get_num_threads(),
        "batch_size": args.batch_size,
        "max_length": args.max_length,
        "gradient_checkpointing": gradient_checkpointing,
        "optim": "torch.optim.AdamW (adamw_factory: betas 0.9/0.95, fused)",
    }


def local_strategy(model: Any, train: Any, total_steps: int) -> Any:
    """A ``LocalStrategy`` for ``train`` (an ``SFTConfig`` or ``HDPOConfig``): AdamW, its schedule over
    ``total_steps``, clipping."""
    from polyalign_ray.loops.strategy import LocalStrategy

    return LocalStrategy.for_section(model, train, total_steps)


def timed_loop(
    loop: Callable[..., dict[str, Any]],
    positional: tuple,
    keywords: dict[str, Any],
    scratch: Path,
    clock: harness.StepClock,
    phases: harness.PhaseTimer,
) -> tuple[dict[str, Any], float]:
    """Run a training loop (``run_sft``, ``run_hdpo``) as both benchmarks do: writing to ``scratch`` (a local
    checkpointer, though no checkpoint is asked for), stamped by ``clock`` and probed by ``phases``; its summary
    and its wall seconds."""
    from polyalign_ray.loops.checkpoints import LocalCheckpointer

    t0 = time.perf_counter()
    summary = loop(
        *positional,
        **keywords,
        output_dir=scratch,
        checkpointer=LocalCheckpointer(scratch / "checkpoints", keep=1),
        on_log=clock.on_log,
        probe=phases,
    )
    return summary, time.perf_counter() - t0


def run_ours(args) -> dict[str, Any]:
    import torch
    import transformers

    from polyalign_ray.config import SamplerConfig, SFTConfig
    from polyalign_ray.loops.sft import run_sft
    from polyalign_ray.sft_data import SFTExamples, tokenize_records

    inputs = build_shared_inputs(args)
    tok, model = inputs.tokenizer, inputs.model
    gradient_checkpointing = args.child_gc == "on"
    if gradient_checkpointing:
        model.gradient_checkpointing_enable()  # transformers' default kwargs, as TRL passes them
    n_params = sum(p.numel() for p in model.parameters())
    n_head = model.get_output_embeddings().weight.numel()  # tied: also counted once in n_params
    peak = harness.matmul_peak_gflops()

    t0 = time.perf_counter()
    records = records_from_pairs(inputs.pairs)
    table = tokenize_records(records, tok, max_length=args.max_length, profile_conditioning=False)
    examples = SFTExamples.from_table(table)
    t_tokenize = time.perf_counter() - t0
    sizes = examples.sizes()
    example_lengths = [len(ids) for bucket in examples.buckets.values() for ids, _ in bucket]

    total_steps = args.warmup + args.steps
    scratch = Path(tempfile.mkdtemp(prefix="sft_throughput_ours_"))
    sft = SFTConfig(
        **trl_matched_settings(args, scratch, total_steps, LEARNING_RATE, MAX_GRAD_NORM),
        loss_normalization="example",
    )
    sampler_config = SamplerConfig(alpha=args.alpha, seed=args.seed)
    strategy = local_strategy(model, sft, total_steps)

    # Phase timing and token counts: the loop's step probe; step stamps (and profiles): its on_log.
    phases = harness.PhaseTimer()
    clock = harness.StepClock(args.warmup, total_steps, profile=bool(args.profile))

    loop_args = {"sft": sft, "sampler_config": sampler_config, "labelled_only": args.logits == "labelled"}
    summary, t_train = timed_loop(run_sft, (strategy, examples, tok), loop_args, scratch, clock, phases)
    peak = max(peak, harness.matmul_peak_gflops())  # a peak is a maximum: before and after the steps

    phase_names = sorted({k for s in phases.steps for k in s})
    steps = harness.TimedSteps(clock, phases, scratch / "metrics.jsonl", phase_names, args.quiet_threshold)
    med, sum_t = steps.median, steps.total

    result = {
        "side": "ours",
        "trainer": "polyalign run_sft + LocalStrategy",
        **our_settings_fields(args, gradient_checkpointing),
        "logits": args.logits,
        "matmul_peak_gflops": round(peak, 1),
        "mfu_6n": round(6 * n_params * sum(steps.real) / sum_t / 1e9 / peak, 4),
        "lm_head_share_of_6n": round(n_head / n_params, 4),
        "logit_rows_per_step_mean": round(
            statistics.mean(b[2] if args.logits == "labelled" else b[1] for b in steps.timed_batches), 1
        ),
        "learning_rate": LEARNING_RATE,
        "sampler_alpha": args.alpha,
        "bucket_sizes": sizes,
        "bucket_shares_target": summary["bucket_shares_target"],
        "bucket_counts_drawn": summary["bucket_counts"],
        **steps.interval_fields(),
        "loop_step_seconds_median": round(statistics.median(steps.loop_step_seconds()), 4),
        "samples_per_s": round(args.batch_size / med, 3),
        "samples_per_s_mean_based": round(args.batch_size * len(steps.timed) / sum_t, 3),
        **steps.token_and_load_fields(t_train),
        "final_loss_logged": round(steps.metrics[-1]["last_loss"], 5),
        "tokenizer_train_s": round(inputs.tokenizer_train_s, 2),
        "data_build_s": round(inputs.data_build_s, 2),
        "tokenize_records_s": round(t_tokenize, 2),
        "model_params": n_params,
        "examples": len(example_lengths),
        "example_tokens_mean": round(statistics.mean(example_lengths), 1),
        "example_tokens_max": max(example_lengths),
        "step_times_s": [round(x, 4) for x in steps.dts],
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
    }
    if args.profile:
        result["profile_files"] = write_profiles(
            Path(args.profile), clock.cprofiler, clock.profiler, args.child_gc
        )
    shutil.rmtree(scratch, ignore_errors=True)
    return result


def write_profiles(directory: Path, cprofiler, profiler, tag: str) -> list[str]:
    import io
    import pstats

    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for sort in ("tottime", "cumulative"):
        buf = io.StringIO()
        pstats.Stats(cprofiler, stream=buf).strip_dirs().sort_stats(sort).print_stats(45)
        path = directory / f"ours_gc_{tag}_cprofile_{sort}.txt"
        path.write_text(buf.getvalue())
        paths.append(str(path))
    cprofiler.dump_stats(str(directory / f"ours_gc_{tag}.pstats"))
    path = directory / f"ours_gc_{tag}_torch_ops.txt"
    path.write_text(profiler.key_averages().table(sort_by="self_cpu_time_total", row_limit=40))
    paths.append(str(path))
    return paths


# ----------------------------------------------------------------------------------------------------------------
# Parent
# ----------------------------------------------------------------------------------------------------------------
def common_argv(args) -> list[str]:
    return [
        "--steps", str(args.steps), "--warmup", str(args.warmup), "--threads", str(args.threads),
        "--batch-size", str(args.batch_size), "--max-length", str(args.max_length), "--pairs", str(args.pairs),
        "--seed", str(args.seed), "--corpus-sentences", str(args.corpus_sentences),
        "--quiet-threshold", str(args.quiet_threshold),
    ]  # fmt: skip


def child_env(args) -> dict[str, str]:
    env = dict(os.environ)
    env.update(harness.OFFLINE_ENV)
    env["OMP_NUM_THREADS"] = str(args.threads)
    env["MKL_NUM_THREADS"] = str(args.threads)
    env["PYTHONPATH"] = str(harness.REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def run_child(cmd: list[str], env: dict[str, str], log_path: Path, marker: str | None) -> dict | None:
    """Run one measurement process; its stderr (and non-result stdout) go to ``log_path``."""
    with log_path.open("w") as log:
        log.write("$ " + shlex.join(cmd) + "\n")
        log.flush()
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=log, text=True, env=env, cwd=harness.REPO)
        line = None
        for out_line in proc.stdout.splitlines():
            stripped = out_line[len(marker) :] if marker and out_line.startswith(marker) else out_line
            if stripped.startswith("{"):
                try:
                    line = json.loads(stripped)
                    continue
                except json.JSONDecodeError:
                    pass
            log.write(out_line + "\n")
    if proc.returncode != 0 or line is None:
        tail = log_path.read_text().splitlines()[-25:]
        sys.stderr.write(f"[sft_throughput] FAILED (exit {proc.returncode}): {shlex.join(cmd)}\n")
        sys.stderr.write("\n".join(tail) + "\n")
        return None
    return line


def add_comparison_options(ap: argparse.ArgumentParser, *, batch_size_help: str | None = None) -> None:
    """The options both TRL comparisons share: where TRL's Python and the shared script are, and the size of
    every run (what :func:`common_argv` hands each child)."""
    ap.add_argument(
        "--trl-python",
        default=str(DEFAULT_TRL_PYTHON),
        help=f"Python with trl installed (default {DEFAULT_TRL_PYTHON.relative_to(harness.REPO)})",
    )
    ap.add_argument(
        "--shared-script",
        default=str(DEFAULT_SHARED),
        help="the shared TRL baseline (default ../shared/bench/trl_baseline.py from the repo root)",
    )
    ap.add_argument("--skip-trl", action="store_true", help="only our side (no ratio)")
    for flag, default, text in (
        ("--repeats", 1, "run the whole set this many times, interleaved; figures are medians over repeats"),
        ("--steps", 20, "timed optimizer steps per run (default 20)"),
        ("--warmup", 2, "optimizer steps excluded from timing (default 2, >= 1)"),
        ("--threads", 2, "torch.set_num_threads for both sides (default 2)"),
        ("--batch-size", 8, batch_size_help),
        ("--max-length", 384, None),
        ("--pairs", 512, None),
        ("--seed", 0, None),
        ("--corpus-sentences", 60000, None),
    ):
        ap.add_argument(flag, type=int, default=default, help=text)


def add_output_options(ap: argparse.ArgumentParser) -> None:
    """Where a TRL comparison keeps its logs and results, and the hidden options of its own children."""
    ap.add_argument("--logs", default=None, metavar="DIR", help="keep each child's log here (default: temp)")
    harness.add_result_options(ap)
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--child-gc", default="off", help=argparse.SUPPRESS)


def checked_args(ap: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """The parsed options; the first step has no start stamp, so at least one warm-up step is required."""
    args = ap.parse_args(argv)
    if args.warmup < 1:
        ap.error("--warmup must be >= 1")
    return args


def trl_paths(args) -> tuple[Path, Path]:
    """The shared script (loaded now, for a clear error before any run) and TRL's Python, which must exist
    unless --skip-trl."""
    shared_path = Path(args.shared_script).resolve()
    load_shared(shared_path)
    trl_python = Path(args.trl_python)
    if not trl_python.is_absolute():
        trl_python = harness.REPO / trl_python
    if not args.skip_trl and not trl_python.exists():
        raise SystemExit(
            f"error: no Python at {trl_python} (--trl-python). Create the TRL venv (bench/README.md):\n"
            "  python3 -m venv bench/.venv-trl && bench/.venv-trl/bin/pip install torch==2.13.0 trl "
            "transformers==5.24.0 accelerate datasets tokenizers\n"
            "or pass --skip-trl for our side alone."
        )
    return shared_path, trl_python


class ParentSetup(NamedTuple):
    """What a TRL comparison's parent sets up before its first run."""

    log_dir: Path  # --logs, or a new temporary folder: each child's log
    env: dict[str, str]  # the children's environment
    info: dict[str, Any]  # the machine
    load: dict[str, Any]  # its load before the first run
    ledger: harness.RunLedger  # the runs, kept and discarded


def start_parent(args, tag: str) -> ParentSetup:
    """The children's log folder and environment, the machine and its load (said on stderr), and an empty
    ledger of runs."""
    log_dir = Path(args.logs) if args.logs else Path(tempfile.mkdtemp(prefix=f"{tag}_logs_"))
    log_dir.mkdir(parents=True, exist_ok=True)
    env = child_env(args)
    info = harness.machine_info()
    load = harness.load_before_runs()
    sys.stderr.write(f"[{tag}] logs in {log_dir}; load {load}\n")
    return ParentSetup(log_dir, env, info, load, harness.RunLedger(args, tag))


def child_main(run: Callable[[argparse.Namespace], dict[str, Any]], args, marker: str) -> int:
    """A measurement child: offline, one run, its result as one marked JSON line on stdout for
    :func:`run_child`."""
    harness.set_default_env(harness.OFFLINE_ENV)
    result = run(args)
    sys.stdout.write(marker + json.dumps(result, ensure_ascii=False) + "\n")
    sys.stdout.flush()
    return 0


def trl_side_lines(runs: list[dict], *, learning_rate: bool = False) -> list[str]:
    """The report's note on the TRL side's versions and optimizer (none without TRL runs)."""
    trl = [r for r in runs if r["side"] == "trl"]
    if not trl:
        return []
    v = trl[0].get("versions", {})
    end = f", learning rate {trl[0].get('learning_rate')}." if learning_rate else "."
    return [
        "",
        f"TRL side: trl {v.get('trl')}, transformers {v.get('transformers')}, torch {v.get('torch')}, "
        f"accelerate {v.get('accelerate')}, datasets {v.get('datasets')}; optimizer {trl[0].get('optim')}{end}",
    ]


def attempt_fields(config: str, repeat: int, attempt: int, t0: float, waited: float | None) -> dict[str, Any]:
    """What the parent adds to a child's result: which configuration, repeat and attempt it was, the child's
    whole wall time (since ``t0``) and how long the parent waited for quiet before it."""
    return {
        "config": config,
        "repeat": repeat,
        "attempt": attempt,
        "process_wall_s": round(time.perf_counter() - t0, 1),
        "waited_for_quiet_s": None if waited is None else round(waited, 1),
    }


def summary_line(
    script: str,
    argv: list[str],
    info: dict,
    load: dict,
    agg: dict,
    ratios: dict,
    discarded: list[dict],
    **extra,
) -> dict[str, Any]:
    """The last JSON line of a TRL comparison: machine, load, the medians over repeats, the ratios (one named
    entry), the busy runs that were run again (configuration, repeat, cores busy), ``extra`` and the command."""
    return {
        "summary": True,
        "date": load["date"],
        "machine": info,
        "load": load,
        "aggregate": agg,
        **ratios,
        "discarded_busy_runs": [
            (d["config"], d["repeat"], d["other_procs_cpu_util_timed"]) for d in discarded
        ],
        **extra,
        "command": shlex.join([f"bench/{script}", *argv]),
    }


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--trl",
        default="gc_on,gc_off",
        help="TRL runs: comma list of gc_on (TRL's default), gc_off (default both)",
    )
    ap.add_argument(
        "--ours",
        default="gc_off,gc_on,gc_off+all_logits",
        help="our runs: gc_off (our default), gc_on; +all_logits computes logits at every position "
        "(model.logits=all, the path before logits were limited to labelled positions) (default all three)",
    )
    add_comparison_options(ap)
    ap.add_argument(
        "--alpha",
        type=float,
        default=0.0,
        help="our sampler's alpha (default 0.0 = every bucket equal: bucket balancing on)",
    )
    harness.add_quiet_options(ap, quiet_threshold=0.15, busy_limit=0.25, retries=3)
    ap.add_argument(
        "--profile",
        default=None,
        metavar="DIR",
        help="also write cProfile and torch.profiler tables of our timed steps to DIR",
    )
    add_output_options(ap)
    ap.add_argument("--logits", default="labelled", choices=["labelled", "all"], help=argparse.SUPPRESS)
    return checked_args(ap, argv)


def run_label(r: dict) -> str:
    side = "TRL SFTTrainer" if r["side"] == "trl" else "ours run_sft"
    logits = ", all logits" if r.get("logits") == "all" else ""
    return f"{side}, GC {'on' if r['gradient_checkpointing'] else 'off'}{logits}"


def aggregate(runs: list[dict]) -> dict[str, dict]:
    """Median over repeats of each configuration."""
    by: dict[str, list[dict]] = {}
    for r in runs:
        by.setdefault(r["config"], []).append(r)
    out = {}
    for key, rs in by.items():
        out[key] = {
            "config": key,
            "repeats": len(rs),
            "tokens_per_s": statistics.median(r["tokens_per_s"] for r in rs),
            "sec_per_step_median": statistics.median(r["sec_per_step_median"] for r in rs),
            "samples_per_s": statistics.median(r["samples_per_s"] for r in rs),
            "other_procs_cpu_util_timed": max(r["other_procs_cpu_util_timed"] for r in rs),
        }
        if all("mfu_6n" in r for r in rs):
            out[key]["mfu_6n"] = statistics.median(r["mfu_6n"] for r in rs)
            out[key]["matmul_peak_gflops"] = statistics.median(r["matmul_peak_gflops"] for r in rs)
    return out


def ratios(agg: dict[str, dict]) -> list[tuple[str, str, str, float]]:
    pairs = [
        ("ours_gc_off", "trl_gc_on", "ours (GC off, our default) / TRL (GC on, TRL's default)"),
        ("ours_gc_off", "trl_gc_off", "ours / TRL, both GC off (like for like)"),
        ("ours_gc_on", "trl_gc_on", "ours / TRL, both GC on (like for like)"),
        ("ours_gc_off", "ours_gc_off+all_logits", "ours, logits at labelled positions / at every position"),
    ]
    out = []
    for a, b, label in pairs:
        if a in agg and b in agg:
            out.append((a, b, label, agg[a]["tokens_per_s"] / agg[b]["tokens_per_s"]))
    return out


def describe_busy(d: dict) -> str:
    """A discarded busy run, as the report lists it."""
    cores = d["other_procs_cpu_util_timed"]
    return f"{run_label(d)} repeat {d['repeat']}: {d['tokens_per_s']:.0f} tokens/s with {cores} cores busy"


def render_report(
    args, argv: list[str], runs: list[dict], info: dict, load: dict, agg, rats, discarded: list[dict]
) -> str:
    fmt = harness.fmt
    lines = harness.report_preamble(TITLE, "bench/sft_throughput.py", argv, info, load)
    lines += [
        f"- Settings: {args.steps} timed steps after {args.warmup} warm-up steps, batch {args.batch_size}, "
        f"max_length {args.max_length}, {args.threads} torch threads, fp32, seed {args.seed}, {args.pairs} pairs; "
        "TRL with `--format conversational` (chat-formatted prompts, like ours); ours with "
        f"`SamplerConfig(alpha={args.alpha})` (bucket balancing on).",
        "",
        "| run | repeat | s/step (median) | s/step (mean) | real tokens/s | tokens/step | pad frac | samples/s "
        "| peak RSS MiB | other procs (cores) | quiet steps |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        lines.append(
            f"| {run_label(r)} | {r['repeat']} | {fmt(r['sec_per_step_median'])} | {fmt(r['sec_per_step_mean'])} "
            f"| {fmt(r['tokens_per_s'], 1)} | {fmt(r['tokens_per_step_mean'], 1)} | {fmt(r['pad_fraction'])} "
            f"| {fmt(r['samples_per_s'])} | {fmt(r['peak_rss_mib'], 0)} | {fmt(r['other_procs_cpu_util_timed'], 2)} "
            f"| {r['quiet_steps']}/{r['timed_steps']} |"
        )
    lines += ["", "Ratio of real tokens/s (median over repeats):", ""]
    for _, _, label, value in rats:
        lines.append(f"- {label}: **{value:.2f}×**")
    ours = [r for r in runs if r["side"] == "ours"]
    mfu = [(key, row) for key, row in agg.items() if "mfu_6n" in row]
    if mfu:
        lines += [
            "",
            "Model FLOP utilization, counting 6N FLOPs per real token (N = all parameters, the tied lm_head "
            "included) against the fp32 2048³ matmul peak measured in the same process (median over repeats). "
            "With logits at labelled positions only, the lm_head's share of 6N "
            f"({fmt(ours[0]['lm_head_share_of_6n'] * 100, 1)}% here) is computed only for the loss tokens: that part "
            "of the gain is work skipped, not work done faster.",
            "",
        ]
        for key, row in mfu:
            lines.append(
                f"- {key}: MFU {row['mfu_6n'] * 100:.1f}% of {row['matmul_peak_gflops']:.0f} GFLOP/s"
            )
    if ours:
        lines += harness.phase_table(ours, list(ours[0]["phase_seconds_median"]), run_label)
        r = ours[0]
        lines += [
            "",
            f"Our buckets (train examples): {r['bucket_sizes']}; drawn over the run: {r['bucket_counts_drawn']}.",
        ]
    lines += trl_side_lines(runs)
    lines += harness.busy_run_lines(runs, discarded, describe_busy, args.busy_limit)
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.child == "ours":
        return child_main(run_ours, args, MARKER)

    shared_path, trl_python = trl_paths(args)
    plan: list[tuple[str, str]] = []
    if not args.skip_trl:
        plan += [("trl", c.strip()) for c in args.trl.split(",") if c.strip()]
    plan += [("ours", c.strip()) for c in args.ours.split(",") if c.strip()]
    for side, c in plan:
        if c.split("+")[0] not in ("gc_on", "gc_off") or c.split("+")[1:] not in ([], ["all_logits"]):
            raise SystemExit(
                f"error: unknown configuration {c!r} for {side} (gc_on, gc_off, gc_off+all_logits)"
            )

    log_dir, env, info, load, ledger = start_parent(args, "sft_throughput")
    runs, discarded = ledger.kept, ledger.discarded
    for repeat in range(args.repeats):
        for side, c in plan:
            gc = c.split("+")[0].split("_")[1]
            logits = "all" if c.endswith("+all_logits") else "labelled"
            for attempt in range(args.retries + 1):
                waited = ledger.wait(f"{side} {c}")
                log_path = log_dir / f"{side}_{c}_r{repeat}_a{attempt}.log"
                t0 = time.perf_counter()
                if side == "trl":
                    cmd = [str(trl_python), str(shared_path), "--trainers", "sft", "--format", "conversational",
                           "--gradient-checkpointing", gc, *common_argv(args)]  # fmt: skip
                    result = run_child(cmd, env, log_path, TRL_MARKER)
                    if result is not None:
                        result["side"] = "trl"
                else:
                    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", "ours", "--child-gc", gc,
                           "--shared-script", str(shared_path), "--alpha", str(args.alpha), "--logits", logits,
                           *common_argv(args)]  # fmt: skip
                    if args.profile and gc == "off":
                        cmd += ["--profile", args.profile]
                    result = run_child(cmd, env, log_path, MARKER)
                if result is None:
                    return 1
                result.update(attempt_fields(f"{side}_{c}", repeat, attempt, t0, waited))
                step = f"{result['sec_per_step_median']:.3f} s/step, {result['tokens_per_s']:.0f} tokens/s"
                progress = f"{run_label(result)}: {step}"
                if ledger.file(result, result["other_procs_cpu_util_timed"], attempt, progress):
                    break
    load["loadavg_after"] = harness.loadavg_rounded()
    agg = aggregate(runs)
    rats = ratios(agg)
    ratio_values = {f"{a}/{b}": round(v, 3) for a, b, _, v in rats}
    summary = summary_line(
        "sft_throughput.py", argv, info, load, agg, {"ratios_tokens_per_s": ratio_values}, discarded
    )
    # Table on stdout, then the JSON lines.
    report = render_report(args, argv, runs, info, load, agg, rats, discarded)
    harness.publish(args, report, runs, summary, runs + discarded, ensure_ascii=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
