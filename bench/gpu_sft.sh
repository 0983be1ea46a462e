#!/usr/bin/env bash
# SFT of a ~0.5B-parameter Qwen2-like model (random init) under DeepSpeed ZeRO-2, bf16, on one GPU, through our
# Ray Train path (polyalign_ray.distributed.stages.run_sft_stage with sft.use_gpu=true sft.num_workers=1
# sft.zero_stage=2 model.dtype=bfloat16), ~40 steps on the built-in corpus; prints tokens/s and MFU.
# Sized to finish in under 5 minutes on one H100 (most of it: building and saving the random 0.5B model).
#
# Modes
#   bash bench/gpu_sft.sh --stage     On the CPU development machine (it reaches PyPI; the GPU machine reaches
#                                     nothing): writes bench/.gpu-stage/ (about 35 MiB): the built-in corpus,
#                                     prepared (the GPU image lacks the corpus packages), and site.tar.xz, the
#                                     Python packages the GPU image lacks (ray, deepspeed, pydantic, jsonschema,
#                                     hjson, ...) for its Python (3.12; --stage-python-version to change), ray
#                                     slimmed (no Java jar, no dashboard web client, no rllib, no tests).
#   bash bench/gpu_sft.sh             On the GPU machine: uses the packages its python3 has, adds the staged ones
#                                     (unpacked into /tmp/polyalign-site, put on PYTHONPATH; nothing is installed
#                                     into the image's Python), runs the benchmark.
#   bash bench/gpu_sft.sh --dry-run   Anywhere: the same path on the CPU (sft.use_gpu=false), a tiny model, 3 steps.
#
# With the device tool: `bench/.gpu-stage` must travel with the working tree (carry it; add `bench/.gpu-stage/`
# to .gitignore so that it is never committed), e.g.
#   run(command="bash bench/gpu_sft.sh", carry=["bench/.gpu-stage"], timeout_s=420)
# Results: the log and gpu_sft.json go to $OUT when it is set (the device tool's output folder), else to
# --results (default /tmp/polyalign-gpu-sft).
#
# MFU = 6 * N * tokens_per_s / peak, N = all parameters (the tied embedding / LM-head matrix counted once),
# peak = 989e12 FLOP/s (H100 SXM dense bf16; the H200 has the same); 6N is forward + backward of the matrix
# products per token and leaves out attention-score FLOPs (about 12 * layers * hidden * seq_len per token, ~8%
# here at 512 positions). Reported twice: on the real (non-pad) tokens, and on all padded positions the GPU
# computes. Tokens come from replaying the run's sampler on the driver (same seed, sizes, batches), checked
# against the response-token counts the run logged in metrics.jsonl.
#
# Options: --steps N (40) --micro-batch N (16) --max-length N (512) --python PY --stage-dir DIR
#          --stage-python-version X.Y (3.12) --work DIR --results DIR --peak-flops F (989e12) --keep
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"

MODE=run
STEPS=""
MICRO=""
MAXLEN=""
PY=""
STAGE="$REPO/bench/.gpu-stage"
STAGE_PYV="3.12"
WORK=""
RESULTS="${OUT:-/tmp/polyalign-gpu-sft}"
PEAK="989e12"
KEEP=0
while [ $# -gt 0 ]; do
    case "$1" in
        --stage) MODE=stage ;;
        --dry-run) MODE=dry ;;
        --steps) STEPS="$2"; shift ;;
        --micro-batch) MICRO="$2"; shift ;;
        --max-length) MAXLEN="$2"; shift ;;
        --python) PY="$2"; shift ;;
        --stage-dir) STAGE="$(mkdir -p "$2" && cd "$2" && pwd)"; shift ;;
        --stage-python-version) STAGE_PYV="$2"; shift ;;
        --work) WORK="$2"; shift ;;
        --results) RESULTS="$2"; shift ;;
        --peak-flops) PEAK="$2"; shift ;;
        --keep) KEEP=1 ;;
        -h|--help) sed -n '2,36p' "${BASH_SOURCE[0]}"; exit 0 ;;
        *) echo "gpu_sft.sh: unknown option $1 (--help)" >&2; exit 2 ;;
    esac
    shift
done

export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export RAY_USAGE_STATS_ENABLED=0 RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS=0 RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0
export RAY_TRAIN_HEALTH_CHECK_INTERVAL_S=0.5 PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1

# Packages the GPU image's Python lacks (KINDS.md of the device tool lists what it has): ray and deepspeed with
# their missing dependencies. Versions: those of the project venv, where the CPU tests run.
STAGED_DISTS="ray pydantic pydantic_core annotated-types typing-inspection jsonschema jsonschema-specifications referencing rpds-py hjson"
NEEDED_IMPORTS="import ray, ray.train.torch, deepspeed, pydantic, jsonschema, hjson, transformers, peft, pyarrow, regex, yaml, safetensors, tokenizers, torch"

# ----------------------------------------------------------------------------------------------------------------
# --stage: on the development machine
# ----------------------------------------------------------------------------------------------------------------
if [ "$MODE" = stage ]; then
    VPY="$REPO/.venv/bin/python"
    [ -x "$VPY" ] || { echo "gpu_sft.sh --stage needs the project venv ($VPY): run 'make venv' first" >&2; exit 1; }
    rm -rf "$STAGE"
    mkdir -p "$STAGE"
    TMP="$(mktemp -d)"
    trap 'rm -rf "$TMP"' EXIT
    echo "[gpu_sft] preparing the built-in corpus into $STAGE/data" >&2
    DS_ACCELERATOR=cpu "$VPY" - "$STAGE/data" <<'PYEOF'
import sys
from polyalign_ray.config import load_config
from polyalign_ray.distributed.stages import run_prepare

manifest = run_prepare(load_config(None, [f"data.output_dir={sys.argv[1]}"]), engine="local")
print(f"[gpu_sft] prepared: kept {manifest['kept']} of {manifest['read']} rows", file=sys.stderr)
PYEOF
    rm -rf "$STAGE/data/inputs"  # the raw corpus JSONL: not needed once prepared
    PINS="$("$VPY" - $STAGED_DISTS <<'PYEOF'
import sys
from importlib.metadata import version
print(" ".join(f"{name}=={version(name)}" for name in sys.argv[1:]))
PYEOF
)"
    echo "[gpu_sft] downloading for CPython $STAGE_PYV manylinux x86_64: $PINS" >&2
    "$VPY" -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
        --python-version "$STAGE_PYV" --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform any \
        -d "$TMP/wheels" $PINS
    mkdir -p "$TMP/site"
    for w in "$TMP"/wheels/*.whl; do unzip -q -o "$w" -d "$TMP/site"; done
    # ray: drop what a local Train + Data run never loads (the Java jar alone is 35 MB)
    rm -rf "$TMP/site/ray/jars" "$TMP/site/ray/dashboard/client/build" "$TMP/site/ray/rllib"
    find "$TMP/site/ray" -type d -name tests -prune -exec rm -rf {} +
    # deepspeed is published as a source archive only; its installed copy is pure Python (ops are JIT-built,
    # and none is used here: torch's AdamW is the client optimizer), so the project venv's copy is staged.
    SITE_PACKAGES="$("$VPY" -c 'import importlib.util, os; print(os.path.dirname(os.path.dirname(importlib.util.find_spec("deepspeed").origin)))')"
    DS_VERSION="$("$VPY" -c 'from importlib.metadata import version; print(version("deepspeed"))')"
    cp -r "$SITE_PACKAGES/deepspeed" "$SITE_PACKAGES/deepspeed-$DS_VERSION.dist-info" "$TMP/site/"
    find "$TMP/site" -type d -name __pycache__ -prune -exec rm -rf {} +
    echo "[gpu_sft] compressing $(du -sh "$TMP/site" | cut -f1) of packages (xz, a few minutes on 2 cores)" >&2
    tar -C "$TMP/site" -cf - . | xz -T0 -6 > "$STAGE/site.tar.xz"
    cat > "$STAGE/stage.json" <<EOF
{"python_version": "$STAGE_PYV", "packages": "$PINS deepspeed==$DS_VERSION", "date": "$(date -Iseconds)"}
EOF
    SIZE_KB="$(du -sk "$STAGE" | cut -f1)"
    echo "[gpu_sft] staged $STAGE: $((SIZE_KB / 1024)) MiB (the device tool carries at most 64 MiB in all)" >&2
    [ "$SIZE_KB" -lt $((60 * 1024)) ] || echo "[gpu_sft] WARNING: the stage is too large to travel" >&2
    exit 0
fi

# ----------------------------------------------------------------------------------------------------------------
# Run (GPU) or --dry-run (CPU)
# ----------------------------------------------------------------------------------------------------------------
if [ -z "$PY" ]; then
    if [ "$MODE" = dry ] && [ -x "$REPO/.venv/bin/python" ]; then PY="$REPO/.venv/bin/python"; else PY=python3; fi
fi
if [ "$MODE" = dry ]; then
    export DS_ACCELERATOR=cpu
    STEPS="${STEPS:-3}"; MICRO="${MICRO:-2}"; MAXLEN="${MAXLEN:-96}"
else
    export DS_ACCELERATOR=cuda
    STEPS="${STEPS:-40}"; MICRO="${MICRO:-16}"; MAXLEN="${MAXLEN:-512}"
fi
WORK_CREATED=0
if [ -z "$WORK" ]; then WORK="$(mktemp -d /tmp/polyalign-gpu-sft-work.XXXXXX)"; WORK_CREATED=1; fi
mkdir -p "$WORK" "$RESULTS"
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"

if ! "$PY" -c "$NEEDED_IMPORTS" 2>/dev/null; then
    if [ ! -f "$STAGE/site.tar.xz" ]; then
        echo "gpu_sft.sh: $PY lacks some of: $NEEDED_IMPORTS" >&2
        echo "  and there is no $STAGE/site.tar.xz: run 'bash bench/gpu_sft.sh --stage' on a machine with PyPI" >&2
        echo "  and carry bench/.gpu-stage, or pass --python with a Python that has them." >&2
        "$PY" -c "$NEEDED_IMPORTS" || true
        exit 1
    fi
    SITE=/tmp/polyalign-site
    STAMP="$(stat -c '%s-%Y' "$STAGE/site.tar.xz")"
    if [ "$(cat "$SITE/.stamp" 2>/dev/null)" != "$STAMP" ]; then
        echo "[gpu_sft] unpacking the staged packages into $SITE" >&2
        rm -rf "$SITE"
        mkdir -p "$SITE"
        xz -dc "$STAGE/site.tar.xz" | tar -C "$SITE" -xf -
        echo "$STAMP" > "$SITE/.stamp"
    fi
    echo "[gpu_sft] staged for $(cat "$STAGE/stage.json" 2>/dev/null); this Python: $("$PY" -c 'import platform; print(platform.python_version())')" >&2
    export PYTHONPATH="$SITE:$PYTHONPATH"
    if ! "$PY" -c "$NEEDED_IMPORTS"; then
        echo "gpu_sft.sh: imports still fail with the staged packages (see above)" >&2
        exit 1
    fi
fi
if [ ! -f "$WORK/data/manifest.json" ] && [ -f "$STAGE/data/manifest.json" ]; then
    mkdir -p "$WORK/data"
    cp -r "$STAGE/data/." "$WORK/data/"
fi

GPU_SFT_MODE="$MODE" GPU_SFT_STEPS="$STEPS" GPU_SFT_MICRO="$MICRO" GPU_SFT_MAXLEN="$MAXLEN" GPU_SFT_WORK="$WORK" \
GPU_SFT_RESULTS="$RESULTS" GPU_SFT_PEAK="$PEAK" \
"$PY" - <<'PYEOF' 2>&1 | tee "$RESULTS/gpu_sft.log"
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

env = os.environ
dry = env["GPU_SFT_MODE"] == "dry"
steps, micro, max_length = int(env["GPU_SFT_STEPS"]), int(env["GPU_SFT_MICRO"]), int(env["GPU_SFT_MAXLEN"])
work, results, peak = Path(env["GPU_SFT_WORK"]), Path(env["GPU_SFT_RESULTS"]), float(env["GPU_SFT_PEAK"])
exclude = 1 if dry else min(5, steps - 1)

import torch

if not dry and not torch.cuda.is_available():
    sys.exit("gpu_sft.sh: torch.cuda.is_available() is False here; use --dry-run on a machine without a GPU")

import ray
from safetensors import safe_open

from polyalign_ray.config import load_config
from polyalign_ray.corpus.tables import load_split
from polyalign_ray.distributed.stages import ensure_base_model, run_prepare, run_sft_stage
from polyalign_ray.loops.sft import total_optimizer_steps
from polyalign_ray.models import load_tokenizer
from polyalign_ray.sampler import BucketBalancedSampler
from polyalign_ray.sft_data import SFTExamples, collate, tokenize_records

if dry:  # tiny, CPU
    model = dict(hidden=64, layers=2, heads=4, kv_heads=2, intermediate=128, vocab=512)
else:  # ~0.5B Qwen2-like: 24 x (attention 2.4M + SwiGLU MLP 16.9M) + tied 32k-ish embedding
    model = dict(hidden=1024, layers=24, heads=16, kv_heads=2, intermediate=5504, vocab=32768)
overrides = [
    f"data.output_dir={work / 'data'}",
    f"sft.output_dir={work / 'sft'}",
    f"model.builtin_hidden_size={model['hidden']}",
    f"model.builtin_layers={model['layers']}",
    f"model.builtin_heads={model['heads']}",
    f"model.builtin_kv_heads={model['kv_heads']}",
    f"model.builtin_intermediate_size={model['intermediate']}",
    f"model.builtin_vocab_size={model['vocab']}",
    f"model.max_length={max_length}",
    "model.dtype=bfloat16",
    f"sft.use_gpu={'false' if dry else 'true'}",
    "sft.num_workers=1",
    "sft.zero_stage=2",
    f"sft.micro_batch_size={micro}",
    f"sft.max_steps={steps}",
    f"sft.warmup_steps={min(5, steps)}",
    "sft.lr=0.0003",
    "sft.log_every=1",
    "sft.checkpoint_every=0",
    "sft.max_failures=0",
]
config = load_config(None, overrides)
t0 = time.perf_counter()
if not (work / "data" / "manifest.json").is_file():
    print("[gpu_sft] preparing the built-in corpus (needs its packages)", file=sys.stderr)
    run_prepare(config, engine="local")
t_prepare = time.perf_counter() - t0
t0 = time.perf_counter()
model_path = Path(ensure_base_model(config))
t_base = time.perf_counter() - t0
with safe_open(str(model_path / "model.safetensors"), framework="pt") as f:
    n_params = sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())
tokenizer = load_tokenizer(model_path)
print(f"[gpu_sft] base model {n_params / 1e6:.1f}M parameters, vocab {len(tokenizer)}, built in {t_base:.1f} s",
      file=sys.stderr)

gpu_name = "cpu (dry run)" if dry else torch.cuda.get_device_name(0)
samples = []
stop = threading.Event()


def sample_gpu() -> None:  # GPU memory and utilization once a second, from nvidia-smi
    while not stop.wait(1.0):
        try:
            out = subprocess.run(
                ["nvidia-smi", "--query-gpu=memory.used,utilization.gpu", "--format=csv,noheader,nounits"],
                capture_output=True, text=True, timeout=5,
            ).stdout.split("\n")[0]
            mem, util = (float(x) for x in out.split(","))
            samples.append((mem, util))
        except Exception:
            pass


import ray.data

ray.data.DataContext.get_current().enable_progress_bars = False
ray.init(
    num_cpus=3 if dry else min(8, os.cpu_count() or 8),
    include_dashboard=False,
    object_store_memory=(256 if dry else 2048) * 2**20,
    log_to_driver=True,
)
sampler_thread = None
if not dry and shutil.which("nvidia-smi"):
    sampler_thread = threading.Thread(target=sample_gpu, daemon=True)
    sampler_thread.start()
try:
    t0 = time.perf_counter()
    summary = run_sft_stage(config)
    fit_wall = time.perf_counter() - t0
finally:
    stop.set()
    ray.shutdown()

metrics = [json.loads(x) for x in (work / "sft" / "metrics.jsonl").read_text().splitlines()]
assert len(metrics) == steps, (len(metrics), steps)

# Replay the run's draws on the driver: the same tokenization and sampler (world size 1) as the worker.
sft, sampler_cfg = config.sft, config.sampler
examples = SFTExamples.from_table(
    tokenize_records(
        load_split(work / "data", "train"),
        tokenizer,
        max_length=config.model.max_length,
        profile_conditioning=config.model.profile_conditioning,
        train_history_turns=sft.train_history_turns,
    )
)
sizes = examples.sizes()
balanced = sampler_cfg.mode == "sampler"
sampler = BucketBalancedSampler(
    sizes,
    batch_size=sft.rank_batch_size,
    alpha=sampler_cfg.alpha if balanced else 1.0,
    multipliers=sampler_cfg.multipliers if balanced else None,
    seed=sampler_cfg.seed,
    world_size=1,
    rank=0,
    num_steps=total_optimizer_steps(sft, sum(sizes.values()), 1),
)
per_step = []
for _ in range(steps):
    draws = sampler.next_batch()
    real = padded = loss_tokens = 0
    for i in range(sft.grad_accum_steps):
        batch = collate(examples.take(draws[i * micro : (i + 1) * micro]), tokenizer.pad_token_id)
        real += int(batch["attention_mask"].sum())
        padded += int(batch["input_ids"].numel())
        loss_tokens += int((batch["labels"][:, 1:] != -100).sum())
    per_step.append((real, padded, loss_tokens))
replay_ok = all(int(m["tokens"]) == s[2] for m, s in zip(metrics, per_step))

timed = list(range(exclude, steps))
step_s = [metrics[i]["step_seconds"] for i in timed]
sum_s = sum(step_s)
real_tps = sum(per_step[i][0] for i in timed) / sum_s
padded_tps = sum(per_step[i][1] for i in timed) / sum_s
loss_tps = sum(per_step[i][2] for i in timed) / sum_s
mfu_real = 6 * n_params * real_tps / peak
mfu_padded = 6 * n_params * padded_tps / peak
result = {
    "mode": "dry-run (CPU)" if dry else "gpu",
    "device": gpu_name,
    "torch": torch.__version__,
    "cuda": torch.version.cuda,
    "ray": ray.__version__,
    "python": sys.version.split()[0],
    "model": {**model, "params": n_params, "tokenizer_vocab": len(tokenizer), "max_length": max_length,
              "dtype": "bfloat16"},
    "zero_stage": 2,
    "workers": 1,
    "micro_batch_size": micro,
    "steps": steps,
    "excluded_steps": exclude,
    "step_s_median": round(statistics.median(step_s), 4),
    "step_s_mean": round(sum_s / len(step_s), 4),
    "real_tokens_per_s": round(real_tps, 1),
    "padded_tokens_per_s": round(padded_tps, 1),
    "loss_tokens_per_s": round(loss_tps, 1),
    "real_tokens_per_step_mean": round(statistics.mean(per_step[i][0] for i in timed), 1),
    "padded_tokens_per_step_mean": round(statistics.mean(per_step[i][1] for i in timed), 1),
    "replay_matches_metrics": replay_ok,
    "peak_flops": peak,
    "mfu_real_tokens": round(mfu_real, 4),
    "mfu_padded_positions": round(mfu_padded, 4),
    "mfu_formula": "6 * params * tokens_per_s / peak_flops",
    "fit_wall_s": round(fit_wall, 1),
    "loop_wall_s": round(summary["wall_s"], 1),
    "base_model_build_s": round(t_base, 1),
    "prepare_s": round(t_prepare, 1),
    "first_loss": summary["first_loss"],
    "final_loss": summary["final_loss"],
    "gpu_memory_used_mib_max": max((s[0] for s in samples), default=None),
    "gpu_util_pct_mean": round(statistics.mean(s[1] for s in samples), 1) if samples else None,
    "step_seconds": [round(m["step_seconds"], 4) for m in metrics],
}
(results / "gpu_sft.json").write_text(json.dumps(result, indent=1))
print()
print(f"=== PolyAlign SFT, DeepSpeed ZeRO-2, bf16, 1 Ray Train worker: {result['mode']} on {gpu_name} ===")
print(f"model      Qwen2-like, hidden {model['hidden']}, {model['layers']} layers, {model['heads']} heads "
      f"({model['kv_heads']} KV), MLP {model['intermediate']}, vocab {len(tokenizer)}: {n_params / 1e6:.1f}M params")
print(f"batch      micro-batch {micro} x max_length {max_length}; {steps} steps, first {exclude} excluded; "
      f"{result['real_tokens_per_step_mean']:.0f} real / {result['padded_tokens_per_step_mean']:.0f} padded "
      f"tokens per step")
print(f"step       median {result['step_s_median'] * 1000:.1f} ms, mean {result['step_s_mean'] * 1000:.1f} ms")
print(f"tokens/s   {real_tps:,.0f} real (non-pad), {padded_tps:,.0f} padded positions, {loss_tps:,.0f} with a loss")
print(f"MFU        6 x {n_params / 1e6:.1f}M x tokens/s / {peak:.3g} = {mfu_real * 100:.2f}% (real tokens), "
      f"{mfu_padded * 100:.2f}% (padded positions)" + ("   [dry run: meaningless on a CPU]" if dry else ""))
print(f"wall       fit {fit_wall:.1f} s (loop {summary['wall_s']:.1f} s), base model build {t_base:.1f} s; "
      f"loss {summary['first_loss']:.3f} -> {summary['final_loss']:.3f}")
if samples:
    print(f"gpu        max memory used {result['gpu_memory_used_mib_max']:.0f} MiB, mean utilization "
          f"{result['gpu_util_pct_mean']}% (nvidia-smi, 1 s samples over the fit)")
print(f"check      replayed draws match metrics.jsonl's token counts: {replay_ok}")
print(f"results    {results / 'gpu_sft.json'}")
if not replay_ok:
    sys.exit("gpu_sft.sh: the replayed token counts differ from the run's metrics: tokens/s would be wrong")
PYEOF

if [ "$KEEP" = 0 ] && [ "$WORK_CREATED" = 1 ]; then rm -rf "$WORK"; else echo "[gpu_sft] work folder kept: $WORK" >&2; fi
