#!/usr/bin/env python3
"""Our HDPO step vs TRL's DPOTrainer: time per pair and real tokens/s on the same model, pairs, batch size and
sequence length, single process on CPU, measured in the same run.

TRL side: the shared baseline script (``../shared/bench/trl_baseline.py`` beside the repository) run unchanged as
a subprocess by a Python that has ``trl`` (see bench/README.md): ``--trainers dpo`` (explicit frozen reference
model, a reference forward every step) and ``--trainers dpo_precompute`` (reference log-probs computed once before
training), both ``--format conversational`` and with TRL's default gradient checkpointing (on); ``--trl-gc off``
adds runs without it.

Our side, on the same inputs: the shared script's generators (``TextGen``, ``build_tokenizer``, ``build_pairs``,
``build_model``: the same seed, pairs, tokenizer and random-init 8.1M-parameter Qwen2), each pair's prompt turned
into one of our records by ``bench/sft_throughput.py``'s ``records_from_pairs`` (the chat template renders the same
user message TRL's conversational format does), the chosen and rejected answers tokenized by
``hdpo_data.tokenize_answer``. Every pair gets critic-like distances (chosen 0.3, rejected 1.0, each plus seeded
Gaussian noise of sd 0.1, clipped at 0) and the HDPO pair weight ``hdpo_data.weights_for_pairs`` (rarity from the
pairs' bucket counts, the ``HDPOConfig`` defaults a, c, w_min, w_max). Training is ``loops.hdpo.run_hdpo`` on a
``LocalStrategy`` with an ``OfflinePairSource``, micro-batch = --batch-size pairs, no accumulation, ``log_every=1``,
with ``HDPOConfig``'s default beta (0.1), reg_lambda (0.1) and sft_coef (0.05): our step also computes the
expected-distance regularizer, the SFT term on the chosen answer and the weighted preference loss. Two reference
modes:

- ``precompute``: reference log-probs computed once with ``hdpo_data.reference_sequence_logps`` (the function the
  Ray Data ``PairPreparer`` calls; batches of 16 sequences, sorted by length) and stored with the pairs. The
  precompute is timed on its own and reported per pair and amortized over one epoch (pairs / batch steps), as
  the shared script does for TRL's ``dpo_precompute``.
- ``frozen_copy``: pairs without reference log-probs and ``run_hdpo(reference_model=<a frozen deep copy of the
  starting model>)``: a reference forward every step, like TRL's ``dpo``.

Both sides: ``torch.set_num_threads(--threads)``, fp32, --batch-size pairs per step (2 x batch sequences), no
accumulation, max_length 384, learning rate 1e-6 with linear decay and no warmup (DPOConfig's defaults), clipping
at 1.0, weight decay 0. Timing is identical on both sides: a stamp at the end of every optimizer step (TRL:
``TrainerCallback.on_step_end``; ours: ``on_log``), the first --warmup steps excluded, then the step-to-step
intervals of the next --steps steps (data, reference, forward, loss, backward, optimizer, scheduler, logging).
Tokens are the real (non-pad) tokens of each step's batch: prompt+chosen and prompt+rejected of every pair (TRL:
the attention-mask sum in ``training_step``; ours: the loop's step probe sees each collated batch). Pairs are
drawn differently (TRL: shuffled; ours: the bucket sampler at natural frequencies), so per-token figures are the
fair ones when token counts differ. Every run is its own child process and records the CPU that other processes
used during its timed steps (~0 means quiet); a run above --busy-limit cores is run again.

Our child also times the sections of each step through ``run_hdpo``'s step probe (``loops/probe.py``, the
``harness.PhaseTimer``; nothing is patched): batch (sampling and collate), the reference pass (frozen copy), the
policy forward with its response log-probs, the HDPO loss, backward, optimizer step, metrics all-reduce, log line;
``--profile DIR`` adds cProfile and torch.profiler tables of one extra precompute run.

Usage (from the repository root):
    .venv/bin/python bench/hdpo_throughput.py --trl-python /work/trl-venv/bin/python --wait-quiet 600 \\
        --report bench/results/hdpo_throughput.md --jsonl bench/results/hdpo_throughput.jsonl
    .venv/bin/python bench/hdpo_throughput.py --skip-trl --ours precompute --steps 5   # quick check of ours
"""

from __future__ import annotations

import argparse
import copy
import json
import shlex
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import harness
import sft_throughput as sftt  # the SFT benchmark's child/report helpers (bench/ is on sys.path as the script's folder)

MARKER = "HDPO_THROUGHPUT_JSON "
TITLE = "HDPO throughput: our HDPO step vs TRL's DPOTrainer (single process, CPU)"
# DPOConfig's defaults (TRL 1.16), matched on our side
LEARNING_RATE = 1e-6
MAX_GRAD_NORM = 1.0
# A run's median over its quiet steps (other processes <= --quiet-threshold cores) counts when it has this many
MIN_QUIET_STEPS = 8
DISTANCE_CHOSEN = 0.3
DISTANCE_REJECTED = 1.0
DISTANCE_NOISE_SD = 0.1


# ----------------------------------------------------------------------------------------------------------------
# Child: our HDPO loop
# ----------------------------------------------------------------------------------------------------------------
def build_our_pairs(args, shared_pairs: list[dict], tok, hdpo) -> tuple[list, dict[str, Any]]:
    """TokenizedPairs (no reference log-probs yet) with distances and weights, and a few data figures."""
    import numpy as np

    from polyalign_ray.hdpo_data import (
        TokenizedPair,
        bucket_rarity,
        labels_are_empty,
        tokenize_answer,
        weights_for_pairs,
    )

    records = sftt.records_from_pairs(shared_pairs).to_pylist()
    kwargs = {"max_length": args.max_length, "profile_conditioning": False}
    tokenized = []
    dropped = 0
    for record, pair in zip(records, shared_pairs, strict=True):
        chosen = tokenize_answer(tok, record, pair["chosen"], **kwargs)
        rejected = tokenize_answer(tok, record, pair["rejected"], **kwargs)
        if labels_are_empty(chosen[1]) or labels_are_empty(rejected[1]):
            dropped += 1
            continue
        tokenized.append((record, chosen, rejected))
    rng = np.random.default_rng(args.seed)
    n = len(tokenized)
    d_chosen = np.clip(DISTANCE_CHOSEN + rng.normal(0.0, DISTANCE_NOISE_SD, n), 0.0, None)
    d_rejected = np.clip(DISTANCE_REJECTED + rng.normal(0.0, DISTANCE_NOISE_SD, n), 0.0, None)
    buckets = [record["bucket_id"] for record, _, _ in tokenized]
    counts = {b: buckets.count(b) for b in sorted(set(buckets))}
    weights = weights_for_pairs(
        buckets,
        d_chosen,
        d_rejected,
        bucket_rarity(counts),
        a=hdpo.weight_rarity,
        c=hdpo.weight_gap,
        w_min=hdpo.weight_min,
        w_max=hdpo.weight_max,
    )
    pairs = [
        TokenizedPair(
            bucket_id=record["bucket_id"],
            chosen_ids=chosen[0],
            chosen_labels=chosen[1],
            rejected_ids=rejected[0],
            rejected_labels=rejected[1],
            chosen_distance=float(dc),
            rejected_distance=float(dr),
            weight=float(w),
            pair_id=f"{record['id']}#s0",
        )
        for (record, chosen, rejected), dc, dr, w in zip(
            tokenized, d_chosen, d_rejected, weights, strict=True
        )
    ]
    seq_lengths = [len(p.chosen_ids) for p in pairs] + [len(p.rejected_ids) for p in pairs]
    info = {
        "pairs": n,
        "dropped_no_response_token": dropped,
        "bucket_counts": counts,
        "weight_mean": round(float(np.mean(weights)), 4),
        "weight_min_max": [round(float(weights.min()), 4), round(float(weights.max()), 4)],
        "sequence_tokens_mean": round(statistics.mean(seq_lengths), 1),
        "sequence_tokens_max": max(seq_lengths),
    }
    return pairs, info


def run_ours(args) -> dict[str, Any]:
    import torch
    import transformers

    import polyalign_ray.loops.hdpo as hdpo_module
    from polyalign_ray.config import HDPOConfig
    from polyalign_ray.hdpo_data import InMemoryPairs, reference_sequence_logps
    from polyalign_ray.loops.probe import PHASES

    reference_mode = args.child_ref
    inputs = sftt.build_shared_inputs(args)
    tok, model = inputs.tokenizer, inputs.model
    n_params = sum(p.numel() for p in model.parameters())
    # The frozen reference is copied before any wrapper is installed on the policy (a deep copy would share it).
    reference = None
    if reference_mode == "frozen_copy":
        reference = copy.deepcopy(model).eval()
        for parameter in reference.parameters():
            parameter.requires_grad_(False)
    gradient_checkpointing = args.child_gc == "on"
    if gradient_checkpointing:
        model.gradient_checkpointing_enable()  # transformers' default kwargs, as TRL passes them

    total_steps = args.warmup + args.steps
    scratch = Path(tempfile.mkdtemp(prefix="hdpo_throughput_ours_"))
    hdpo = HDPOConfig(
        reference=reference_mode,
        **sftt.trl_matched_settings(args, scratch, total_steps, LEARNING_RATE, MAX_GRAD_NORM),
    )
    t0 = time.perf_counter()
    pairs, data_info = build_our_pairs(args, inputs.pairs, tok, hdpo)
    t_tokenize = time.perf_counter() - t0

    t_precompute = None
    if reference_mode == "precompute":
        pad = tok.pad_token_id
        t0 = time.perf_counter()
        chosen = reference_sequence_logps(model, [(p.chosen_ids, p.chosen_labels) for p in pairs], pad)
        rejected = reference_sequence_logps(model, [(p.rejected_ids, p.rejected_labels) for p in pairs], pad)
        t_precompute = time.perf_counter() - t0
        for pair, c, r in zip(pairs, chosen, rejected, strict=True):
            pair.reference_chosen_logps, pair.reference_rejected_logps = float(c), float(r)

    source = hdpo_module.OfflinePairSource(
        InMemoryPairs(pairs),
        pairs_per_rank=args.batch_size,
        world_size=1,
        rank=0,
        seed=args.seed,
        num_steps=total_steps,
    )
    strategy = sftt.local_strategy(model, hdpo, total_steps)

    # Phase timing and token counts: the loop's step probe; step stamps (and profiles): its on_log.
    phases = harness.PhaseTimer()
    clock = harness.StepClock(args.warmup, total_steps, profile=bool(args.profile))

    loop_args = {"hdpo": hdpo, "total_steps": total_steps, "reference_model": reference}
    summary, t_train = sftt.timed_loop(
        hdpo_module.run_hdpo, (strategy, source, tok), loop_args, scratch, clock, phases
    )

    phase_names = [n for n in PHASES if any(n in step for step in phases.steps)]
    steps = harness.TimedSteps(clock, phases, scratch / "metrics.jsonl", phase_names, args.quiet_threshold)
    med, sum_t, metrics = steps.median, steps.total, steps.metrics
    steps_per_epoch = -(-len(pairs) // args.batch_size)

    result = {
        "side": "ours",
        "trainer": f"polyalign run_hdpo + LocalStrategy, reference {reference_mode}",
        "reference": reference_mode,
        **sftt.our_settings_fields(args, gradient_checkpointing),
        "learning_rate": LEARNING_RATE,
        "hdpo": {
            k: getattr(hdpo, k)
            for k in (
                "beta",
                "reg_lambda",
                "sft_coef",
                "loss_type",
                "weight_rarity",
                "weight_gap",
                "weight_min",
                "weight_max",
            )
        },
        "data": data_info,
        **steps.interval_fields(),
        "sec_per_pair_median": round(med / args.batch_size, 4),
        "loop_step_seconds_median": round(statistics.median(steps.loop_step_seconds()), 4),
        "pairs_per_s": round(args.batch_size / med, 3),
        "pairs_per_s_mean_based": round(args.batch_size * len(steps.timed) / sum_t, 3),
        **steps.token_and_load_fields(t_train),
        "precompute_ref_s": None if t_precompute is None else round(t_precompute, 2),
        "precompute_ref_s_per_pair": None if t_precompute is None else round(t_precompute / len(pairs), 4),
        "steps_per_epoch": steps_per_epoch,
        "sec_per_step_median_plus_amortized_precompute": (
            None if t_precompute is None else round(med + t_precompute / steps_per_epoch, 4)
        ),
        "first_logged": {
            k: metrics[0][k]
            for k in ("loss", "preference_loss", "regularizer", "sft_loss", "rewards/margins", "weights/mean")
        },
        "last_logged": {k: metrics[-1][k] for k in ("loss", "rewards/accuracy", "rewards/margins")},
        "tokenizer_train_s": round(inputs.tokenizer_train_s, 2),
        "data_build_s": round(inputs.data_build_s, 2),
        "tokenize_pairs_s": round(t_tokenize, 2),
        "model_params": n_params,
        "step_times_s": [round(x, 4) for x in steps.dts],
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
        "summary_pairs_seen": summary["pairs_seen"],
    }
    if args.profile:
        result["profile_files"] = sftt.write_profiles(
            Path(args.profile), clock.cprofiler, clock.profiler, f"{args.child_gc}_hdpo_{reference_mode}"
        )
    shutil.rmtree(scratch, ignore_errors=True)
    return result


# ----------------------------------------------------------------------------------------------------------------
# Parent
# ----------------------------------------------------------------------------------------------------------------
def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trl", default="dpo,dpo_precompute", help="TRL trainers: dpo, dpo_precompute")
    ap.add_argument(
        "--trl-gc", default="on", help="TRL gradient checkpointing: on (TRL's default), off, or on,off"
    )
    ap.add_argument(
        "--ours", default="precompute,frozen_copy", help="our reference modes: precompute, frozen_copy"
    )
    ap.add_argument(
        "--ours-gc", default="off", help="our gradient checkpointing: off (our default), on, or off,on"
    )
    sftt.add_comparison_options(ap, batch_size_help="pairs per step (default 8)")
    harness.add_quiet_options(ap, quiet_threshold=0.15, busy_limit=0.25, retries=2)
    ap.add_argument(
        "--profile", default=None, metavar="DIR", help="one extra profiled run of ours (precompute)"
    )
    ap.add_argument(
        "--render-from",
        default=None,
        metavar="JSONL",
        help="only re-render the report of the last recorded run in JSONL (its command's settings)",
    )
    sftt.add_output_options(ap)
    ap.add_argument("--child-ref", default="precompute", help=argparse.SUPPRESS)
    return sftt.checked_args(ap, argv)


def run_label(r: dict) -> str:
    gc = f"GC {'on' if r['gradient_checkpointing'] else 'off'}"
    if r["side"] == "trl":
        return f"TRL DPOTrainer {r['trainer']}, {gc}"
    return f"ours run_hdpo {r['reference']}, {gc}"


def aggregate(runs: list[dict]) -> dict[str, dict]:
    """Median over repeats of each configuration; runs that stayed busy after their retries are left out when the
    configuration has a quiet one."""
    by: dict[str, list[dict]] = {}
    for r in runs:
        by.setdefault(r["config"], []).append(r)
    out = {}
    for key, all_runs in by.items():
        rs = [r for r in all_runs if not r.get("busy")] or all_runs
        pre = [r.get("precompute_ref_s") for r in rs if r.get("precompute_ref_s") is not None]
        out[key] = {
            "config": key,
            "label": run_label(rs[0]),
            "repeats": len(rs),
            "busy_repeats_left_out": len(all_runs) - len(rs),
            "sec_per_step_median": statistics.median(r["sec_per_step_median"] for r in rs),
            "sec_per_pair": statistics.median(r["sec_per_step_median"] for r in rs) / rs[0]["batch_size"],
            "tokens_per_s": statistics.median(r["tokens_per_s"] for r in rs),
            "tokens_per_step_mean": statistics.median(r["tokens_per_step_mean"] for r in rs),
            "precompute_ref_s": statistics.median(pre) if pre else None,
            "steps_per_epoch": rs[0].get("steps_per_epoch")
            or -(-rs[0]["data"]["pairs"] // rs[0]["batch_size"]),
            "pairs": rs[0]["data"]["pairs"],
            "other_procs_cpu_util_timed": max(r["other_procs_cpu_util_timed"] for r in rs),
        }
        quiet = [r["sec_per_step_median_quiet"] for r in rs if r["quiet_steps"] >= MIN_QUIET_STEPS]
        out[key]["sec_per_step_median_quiet"] = statistics.median(quiet) if quiet else None
        out[key]["quiet_repeats"] = len(quiet)
    return out


def ratios(agg: dict[str, dict], args) -> list[dict[str, Any]]:
    """ours / TRL time ratios (below 1: ours is faster)."""
    ours_gc = args.ours_gc.split(",")[0]
    trl_gc = args.trl_gc.split(",")[0]
    wanted = [
        ("a", f"ours_precompute_gc_{ours_gc}", f"trl_dpo_precompute_gc_{trl_gc}",
         "ours precompute vs TRL dpo_precompute (both precompute the reference)"),
        ("b", f"ours_frozen_copy_gc_{ours_gc}", f"trl_dpo_gc_{trl_gc}",
         "ours frozen copy vs TRL dpo (both run a reference forward every step)"),
        ("c", f"ours_precompute_gc_{ours_gc}", f"trl_dpo_gc_{trl_gc}",
         "ours precompute (our default) vs TRL dpo (TRL's default)"),
    ]  # fmt: skip
    if "off" in args.trl_gc.split(",") and "off" in args.ours_gc.split(","):
        wanted += [
            ("a'", "ours_precompute_gc_off", "trl_dpo_precompute_gc_off", "like (a), both GC off"),
            ("b'", "ours_frozen_copy_gc_off", "trl_dpo_gc_off", "like (b), both GC off"),
        ]
    if "on" in args.trl_gc.split(",") and "on" in args.ours_gc.split(","):
        wanted += [
            ("a''", "ours_precompute_gc_on", "trl_dpo_precompute_gc_on", "like (a), both GC on"),
            ("b''", "ours_frozen_copy_gc_on", "trl_dpo_gc_on", "like (b), both GC on"),
        ]
    out = []
    seen = set()
    for tag, a, b, label in wanted:
        if a not in agg or b not in agg or (a, b) in seen:
            continue
        seen.add((a, b))
        x, y = agg[a], agg[b]
        row = {
            "tag": tag,
            "ours": a,
            "trl": b,
            "label": label,
            "time_per_pair": x["sec_per_pair"] / y["sec_per_pair"],
            "time_per_token": y["tokens_per_s"] / x["tokens_per_s"],
            "time_per_pair_quiet_steps": (
                x["sec_per_step_median_quiet"] / y["sec_per_step_median_quiet"]
                if x["sec_per_step_median_quiet"] and y["sec_per_step_median_quiet"]
                else None
            ),
        }
        if x["precompute_ref_s"] is not None and y["precompute_ref_s"] is not None:
            xa = x["sec_per_step_median"] + x["precompute_ref_s"] / x["steps_per_epoch"]
            ya = y["sec_per_step_median"] + y["precompute_ref_s"] / y["steps_per_epoch"]
            row["time_per_pair_with_amortized_precompute"] = xa / ya
        elif x["precompute_ref_s"] is not None:
            xa = x["sec_per_step_median"] + x["precompute_ref_s"] / x["steps_per_epoch"]
            row["time_per_pair_with_amortized_precompute"] = xa / y["sec_per_step_median"]
        out.append(row)
    return out


def describe_busy(d: dict) -> str:
    """A discarded busy run, as the report lists it."""
    cores = d["other_procs_cpu_util_timed"]
    return (
        f"{run_label(d)} repeat {d['repeat']}: {d['sec_per_step_median']:.3f} s/step with {cores} cores busy"
    )


def render_report(args, argv, runs, info, load, agg, rats, discarded) -> str:
    fmt = harness.fmt
    lines = harness.report_preamble(TITLE, "bench/hdpo_throughput.py", argv, info, load)
    lines += [
        f"- Settings: {args.steps} timed steps after {args.warmup} warm-up steps, {args.batch_size} pairs per step "
        f"({2 * args.batch_size} sequences), max_length {args.max_length}, {args.threads} torch threads, fp32, "
        f"seed {args.seed}, {args.pairs} pairs, lr {LEARNING_RATE} linear, no warmup, clip {MAX_GRAD_NORM}; TRL "
        "`--format conversational`, sigmoid loss, beta 0.1; ours `HDPOConfig` defaults (beta 0.1, reg_lambda 0.1, "
        f"sft_coef 0.05, pair weights), distances chosen {DISTANCE_CHOSEN} / rejected {DISTANCE_REJECTED} "
        f"+ N(0, {DISTANCE_NOISE_SD}).",
        "",
        "| run | repeat | s/step (median) | s/step (mean) | s/pair | real tokens/s | tokens/step | pad frac "
        "| reference precompute s (per pair) | peak RSS MiB | other procs (cores) | quiet steps "
        "| s/step (median of quiet steps) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        pre = r.get("precompute_ref_s")
        pre_txt = f"{pre:.1f} ({pre / r['data']['pairs'] * 1000:.0f} ms)" if pre is not None else "–"
        lines.append(
            f"| {run_label(r)} | {r['repeat']} | {fmt(r['sec_per_step_median'])} | {fmt(r['sec_per_step_mean'])} "
            f"| {r['sec_per_step_median'] / r['batch_size']:.4f} | {fmt(r['tokens_per_s'], 1)} "
            f"| {fmt(r['tokens_per_step_mean'], 1)} | {fmt(r['pad_fraction'])} | {pre_txt} "
            f"| {fmt(r['peak_rss_mib'], 0)} | {fmt(r['other_procs_cpu_util_timed'], 2)} "
            f"| {r['quiet_steps']}/{r['timed_steps']} | {fmt(r.get('sec_per_step_median_quiet'))} |"
        )
    left_out = [
        f"{a['label']} ({a['busy_repeats_left_out']})" for a in agg.values() if a["busy_repeats_left_out"]
    ]
    lines += [
        "",
        "Ratios ours / TRL of the time (median over repeats; below 1 = ours faster; goal ≤ 0.50 per pair (issue 18); "
        + (
            "repeats still busy after their retries are left out when a quiet repeat exists: "
            + ", ".join(left_out)
            + "). "
            if left_out
            else "no repeat left out). "
        )
        + f"'quiet steps': the same ratio from each run's median over its quiet steps (other processes ≤ "
        f"{args.quiet_threshold} cores; runs with at least {MIN_QUIET_STEPS} such steps):",
        "",
        "| | comparison | time per pair | time per real token | per pair, reference precompute amortized "
        "over one epoch | time per pair, quiet steps |",
        "|---|---|---|---|---|---|",
    ]
    for x in rats:
        amort = x.get("time_per_pair_with_amortized_precompute")
        quiet = x.get("time_per_pair_quiet_steps")
        lines.append(
            f"| ({x['tag']}) | {x['label']} | **{x['time_per_pair']:.2f}×** | {x['time_per_token']:.2f}× "
            f"| {fmt(amort, 2) + '×' if amort is not None else '–'} "
            f"| {fmt(quiet, 2) + '×' if quiet is not None else '–'} |"
        )
    ours = [r for r in runs if r["side"] == "ours"]
    if ours:
        names = list(ours[0]["phase_seconds_median"])
        for r in ours[1:]:
            names += [n for n in r["phase_seconds_median"] if n not in names]
        names = [n for n in names if n != "other"] + ["other"]
        lines += harness.phase_table(ours, names, run_label)
        lines += [
            "",
            "Phases (the loop's step probe, `loops/probe.py`): `batch` the pair sampler and the 2B-row collate, "
            "`reference` the frozen copy's forward and log-probs (no grad), `forward` the policy's forward with "
            "its response log-probs (logits at labelled positions only), `loss` `losses.hdpo_loss` (DPO term, "
            "weights, regularizer, SFT term), `backward`, `optimizer_step` (clip, AdamW, scheduler, zero grad), "
            "`metrics` the all-reduce, `log` the metrics line, `other` the rest of the step.",
        ]
        r = ours[0]
        lines += [
            "",
            f"Our pairs: {r['data']['pairs']} ({r['data']['dropped_no_response_token']} dropped), buckets "
            f"{r['data']['bucket_counts']}; weights mean {r['data']['weight_mean']} (min/max "
            f"{r['data']['weight_min_max']}); sequence tokens mean {r['data']['sequence_tokens_mean']}, max "
            f"{r['data']['sequence_tokens_max']}. First logged step of {run_label(r)}: {r['first_logged']}.",
        ]
    lines += sftt.trl_side_lines(runs, learning_rate=True)
    lines += harness.busy_run_lines(runs, discarded, describe_busy, args.busy_limit)
    return "\n".join(lines) + "\n"


def render_from(path: Path, report_path: str | None) -> int:
    """The report of the last run recorded in a JSONL file (runs, discarded runs, then its summary line)."""
    lines = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
    ends = [i for i, x in enumerate(lines) if x.get("summary")]
    if not ends:
        raise SystemExit(f"error: no summary line in {path}")
    summary = lines[ends[-1]]
    block = [x for x in lines if not x.get("summary") and x.get("run_date") == summary["date"]]
    if not block:  # lines written before runs carried their run's date: the lines since the previous summary
        block = lines[ends[-2] + 1 if len(ends) > 1 else 0 : ends[-1]]
    argv = shlex.split(summary["command"])[1:]
    args = parse_args(argv)
    runs = [x for x in block if not x.get("discarded")]
    discarded = [x for x in block if x.get("discarded")]
    agg = aggregate(runs)
    report = render_report(
        args, argv, runs, summary["machine"], summary["load"], agg, ratios(agg, args), discarded
    )
    print(report)
    if report_path:
        Path(report_path).write_text(report)
    return 0


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.render_from:
        return render_from(Path(args.render_from), args.report)
    if args.child == "ours":
        return sftt.child_main(run_ours, args, MARKER)

    shared_path, trl_python = sftt.trl_paths(args)
    plan: list[tuple[str, str, str]] = []  # (side, trainer or reference mode, gc)
    if not args.skip_trl:
        for gc in (g.strip() for g in args.trl_gc.split(",") if g.strip()):
            plan += [("trl", t.strip(), gc) for t in args.trl.split(",") if t.strip()]
    for gc in (g.strip() for g in args.ours_gc.split(",") if g.strip()):
        plan += [("ours", m.strip(), gc) for m in args.ours.split(",") if m.strip()]
    for side, what, gc in plan:
        valid = ("dpo", "dpo_precompute") if side == "trl" else ("precompute", "frozen_copy")
        if what not in valid or gc not in ("on", "off"):
            raise SystemExit(f"error: unknown {side} run {what!r} / GC {gc!r} ({', '.join(valid)}; on, off)")

    log_dir, env, info, load, ledger = sftt.start_parent(args, "hdpo_throughput")
    runs, discarded = ledger.kept, ledger.discarded
    for repeat in range(args.repeats):
        for side, what, gc in plan:
            config = f"{side}_{what}_gc_{gc}"
            for attempt in range(args.retries + 1):
                waited = ledger.wait(config)
                log_path = log_dir / f"{config}_r{repeat}_a{attempt}.log"
                t0 = time.perf_counter()
                if side == "trl":
                    cmd = [str(trl_python), str(shared_path), "--trainers", what, "--format", "conversational",
                           "--gradient-checkpointing", gc, *sftt.common_argv(args)]  # fmt: skip
                    result = sftt.run_child(cmd, env, log_path, sftt.TRL_MARKER)
                    if result is not None:
                        result["side"] = "trl"
                else:
                    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", "ours", "--child-gc", gc,
                           "--child-ref", what, "--shared-script", str(shared_path), *sftt.common_argv(args)]  # fmt: skip
                    result = sftt.run_child(cmd, env, log_path, MARKER)
                if result is None:
                    sys.stderr.write(f"[hdpo_throughput] {config} failed; log: {log_path}\n")
                    return 1
                result.update(
                    run_date=load["date"], **sftt.attempt_fields(config, repeat, attempt, t0, waited)
                )
                progress = (
                    f"{run_label(result)}: {result['sec_per_step_median']:.3f} s/step, "
                    f"{result['tokens_per_s']:.0f} tokens/s, precompute {result.get('precompute_ref_s')} s, "
                    f"process {result['process_wall_s']} s"
                )
                kept = ledger.file(result, result["other_procs_cpu_util_timed"], attempt, progress)
                if args.jsonl:  # each run as soon as it ends (an interrupted benchmark keeps its runs)
                    with open(args.jsonl, "a") as f:
                        f.write(json.dumps(runs[-1] if kept else discarded[-1], ensure_ascii=False) + "\n")
                if kept:
                    break
    profile_run = None
    if args.profile:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--child", "ours", "--child-gc", "off",
               "--child-ref", "precompute", "--shared-script", str(shared_path), "--profile", args.profile,
               *sftt.common_argv(args)]  # fmt: skip
        profile_run = sftt.run_child(cmd, env, log_dir / "ours_profile.log", MARKER)
        if profile_run is not None:
            sys.stderr.write(f"[hdpo_throughput] profiles: {profile_run.get('profile_files')}\n")
    load["loadavg_after"] = harness.loadavg_rounded()
    agg = aggregate(runs)
    rats = ratios(agg, args)
    profile_files = profile_run.get("profile_files") if profile_run else None
    summary = sftt.summary_line(
        "hdpo_throughput.py", argv, info, load, agg, {"ratios_ours_over_trl_time": rats}, discarded,
        profile_files=profile_files,
    )  # fmt: skip
    report = render_report(args, argv, runs, info, load, agg, rats, discarded)
    harness.publish(args, report, runs, summary, [], ensure_ascii=False)  # the runs are in --jsonl already
    return 0


if __name__ == "__main__":
    sys.exit(main())
