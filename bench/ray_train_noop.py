"""Ray Train's own fixed cost on this machine: ``TorchTrainer.fit()`` of a body that does nothing.

Why: a training stage's ``summary.json`` splits its ``fit()`` into startup phases (``startup_s``, see
``distributed/launcher.py``); the first, ``workers_started`` (fit() to the body's first line), is 9.6-10.6 s
here. This measures how much of that any TorchTrainer pays, whatever it trains: the controller actor, the worker
actors, the torch process group and the teardown. What is left above it is ours to cut.

    .venv/bin/python bench/ray_train_noop.py --workers 2 --fits 3 --out bench/results/ray_train_noop.json
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import ray
from ray.train import RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer


def noop_body(config: dict) -> None:
    """Record when the body started (its first line) and return."""
    with open(config["marks"], "a", encoding="utf-8") as handle:
        handle.write(json.dumps({"entered": time.time()}) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2, help="Train workers per fit")
    parser.add_argument("--fits", type=int, default=3, help="fits one after another on one Ray instance")
    parser.add_argument("--num-cpus", type=int, default=2, help="CPUs of the local Ray instance")
    parser.add_argument("--out", default="", help="results JSON (printed either way)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="ray-train-noop-"))
    marks = work / "marks.jsonl"
    # its own instance even inside a job or the test suite, whose RAY_ADDRESS would otherwise be joined
    ray.init(address="local", num_cpus=args.num_cpus, include_dashboard=False, log_to_driver=False)
    fits = []
    try:
        for index in range(args.fits):
            started = time.time()
            TorchTrainer(
                noop_body,
                train_loop_config={"marks": str(marks)},
                scaling_config=ScalingConfig(
                    num_workers=args.workers, resources_per_worker={"CPU": args.num_cpus / args.workers}
                ),
                run_config=RunConfig(storage_path=str(work / "ray_results"), name=f"noop-{index}"),
            ).fit()
            returned = time.time()
            entered = [json.loads(line)["entered"] for line in marks.read_text().splitlines()]
            marks.unlink()
            fits.append(
                {
                    "fit_s": round(returned - started, 3),
                    "to_body_s": round(min(entered) - started, 3),
                    "after_body_s": round(returned - max(entered), 3),
                }
            )
            print(json.dumps({"fit": index, **fits[-1]}), flush=True)
    finally:
        ray.shutdown()
    result = {
        "command": "python bench/ray_train_noop.py "
        + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if v != ""),
        "machine": {"cpus": os.cpu_count(), "load_1min_after": os.getloadavg()[0]},
        "workers": args.workers,
        "fits": fits,
    }
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1), encoding="utf-8")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
