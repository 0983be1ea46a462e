#!/usr/bin/env python3
"""Memory and throughput of the data path as the corpus grows: prepare, and SFT with per-bucket shards vs. every
row handed to every worker (issue 15).

The built-in corpus is scaled to ``--base-records x SCALE`` rows for each ``--scales`` entry with the prepare
benchmark's generator (``prepare_throughput.build_scaled_corpus``: perturbed copies, ~5% exact duplicates, ~1%
malformed rows). Per scale, each in its own child process under one local Ray instance (``num_cpus`` = this
machine's CPUs, no dashboard):

* ``prepare`` per ``--prepare-plans`` entry: ``prepare_with_ray`` on the corpus (input rows read per second),
  its split and dedup plans made on the driver (``driver``) or by hash-partitioned Ray Data passes
  (``distributed``; ``auto`` picks by size);
* ``sft`` per ``--stores`` entry: ``run_sft_stage`` for ``--steps`` steps, 2 ZeRO-2 workers, micro-batch 4, on a
  built-in model made once at the start (its tokenizer trained on the unscaled corpus, so every scale tokenizes
  alike): ``sft.example_store=shards`` (Ray Data writes per-bucket shards, each worker reads its draws) or
  ``memory`` (the materialized token table goes whole to every worker, which groups it by bucket).

A sampler thread reads /proc every 0.25 s and keeps, per process of the child's tree, its peak RSS: the driver
(the child itself), the Ray Train workers (by process title), and the largest other Ray process. RSS counts pages
of the object store a process has mapped (shared memory): a worker that reads the whole table from the object
store shows it. The SFT figures are the loop's (``summary.json``: response tokens / loop seconds) and the median
step time without the first 3 steps; the stage's wall time includes tokenization, shard writing and the trainer's
start. The CPU used by other processes meanwhile is recorded: a busy machine shows.

    .venv/bin/python bench/data_scale.py --base-records 100000 --scales 1,4,16 \\
        --report bench/results/data_scale.md --jsonl bench/results/data_scale.jsonl
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

import harness

OBJECT_STORE_ENV = "DATA_SCALE_OBJECT_STORE_MIB"  # --object-store-mib, handed to the children
TRACE_HEAP_ENV = "DATA_SCALE_TRACE_PYTHON_HEAP"  # --trace-python-heap, handed to the children
TRAIN_WORKER_TITLE = "TrainWorker"  # Ray Train worker actors' process titles contain this
SAMPLE_INTERVAL_S = 0.25


def _title(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()[:120]
    except OSError:
        return ""


def _private_bytes(pid: int) -> int:
    """RssAnon of /proc/PID/status: the process's own (anonymous, unshared) resident memory. RSS adds the pages of
    files and of the Ray object store (shared memory) it has mapped, which are bounded by the object store's
    capacity (it spills to disk), not by what the process itself holds."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


class TreePeaks(harness.ProcessSampler):
    """Peak RSS per process of the tree under ``root`` (the child), its title, and the CPU of other processes."""

    def __init__(self, root: int, interval: float = SAMPLE_INTERVAL_S):
        super().__init__(interval)
        self.root = root
        self.peaks: dict[int, int] = {}
        self.private_peaks: dict[int, int] = {}
        self.titles: dict[int, str] = {}
        self.tree_peak = 0
        self.cpu_start: dict[int, float] = {}
        self.cpu_last: dict[int, float] = {}

    def _sample(self, initial: bool = False) -> None:
        procs = harness.read_processes()
        tree = harness.process_tree(procs, self.root) & procs.keys()
        total = 0
        for pid in tree:
            rss = procs[pid].rss_bytes
            total += rss
            if rss > self.peaks.get(pid, 0):
                self.peaks[pid] = rss
            private = _private_bytes(pid)
            if private > self.private_peaks.get(pid, 0):
                self.private_peaks[pid] = private
            title = _title(pid) or procs[pid].name
            if pid not in self.titles or (
                TRAIN_WORKER_TITLE in title and TRAIN_WORKER_TITLE not in self.titles[pid]
            ):
                self.titles[pid] = title  # a worker is a Train worker if it ever was one
        self.tree_peak = max(self.tree_peak, total)
        for pid, proc in procs.items():
            if pid not in tree:
                self.cpu_start.setdefault(pid, proc.cpu_s)
                self.cpu_last[pid] = proc.cpu_s

    def summary(self) -> dict[str, Any]:
        def is_worker(pid: int) -> bool:
            return TRAIN_WORKER_TITLE in self.titles.get(pid, "")

        workers = [rss for pid, rss in self.peaks.items() if is_worker(pid)]
        others = [rss for pid, rss in self.peaks.items() if pid != self.root and not is_worker(pid)]
        private = self.private_peaks
        other_cpu = sum(self.cpu_last[p] - self.cpu_start[p] for p in self.cpu_last)
        return {
            "driver_peak_rss_mib": round(self.peaks.get(self.root, 0) / 2**20, 1),
            "train_worker_peak_rss_mib": round(max(workers, default=0) / 2**20, 1),
            "train_workers_seen": len(workers),
            "other_ray_process_peak_rss_mib": round(max(others, default=0) / 2**20, 1),
            "driver_peak_private_mib": round(private.get(self.root, 0) / 2**20, 1),
            "train_worker_peak_private_mib": round(
                max((b for pid, b in private.items() if is_worker(pid)), default=0) / 2**20, 1
            ),
            "other_ray_process_peak_private_mib": round(
                max((b for pid, b in private.items() if pid != self.root and not is_worker(pid)), default=0)
                / 2**20,
                1,
            ),
            "tree_peak_rss_mib": round(self.tree_peak / 2**20, 1),
            "other_processes_cpu_s": round(other_cpu, 1),
            "largest_processes": [
                [self.titles.get(pid, "")[:60], round(rss / 2**20, 1)]
                for pid, rss in sorted(self.peaks.items(), key=lambda kv: -kv[1])[:6]
            ],
        }


def run_child(args: list[str]) -> dict[str, Any]:
    """One measured child (this script with ``--child``); its last stdout line is its JSON result."""
    env = {**os.environ, **{k: v for k, v in harness.RAY_LOCAL_ENV.items() if k not in os.environ}}
    proc = subprocess.Popen(
        [sys.executable, __file__, "--child", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=harness.REPO,
    )
    with TreePeaks(proc.pid) as peaks:
        out, err = proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"child {args[0]} exited {proc.returncode}:\n{err[-3000:]}")
    result = json.loads(out.strip().splitlines()[-1])
    return {**result, **peaks.summary(), "child_wall_s": round(peaks.wall, 1)}


# ----------------------------------------------------------------------------------------------------------------
# Children
# ----------------------------------------------------------------------------------------------------------------
def _ray_init() -> None:
    import ray

    store_mib = int(os.environ.get(OBJECT_STORE_ENV, "0"))
    ray.init(
        num_cpus=os.cpu_count(),
        include_dashboard=False,
        logging_level="ERROR",
        log_to_driver=False,
        object_store_memory=store_mib * 2**20 if store_mib else None,
    )


def child_base_model(work: Path) -> dict[str, Any]:
    from polyalign_ray.config import load_config
    from polyalign_ray.stages.data import ensure_base_model, run_prepare

    config = load_config(None, [f"data.output_dir={work / 'base_data'}"])
    run_prepare(config, engine="local")
    return {"model": str(Path(ensure_base_model(config)).resolve())}


def child_prepare(corpus: Path, data: Path, plan: str) -> dict[str, Any]:
    from polyalign_ray.corpus.normalize import NormalizeSettings
    from polyalign_ray.corpus.readers import discover_read_units
    from polyalign_ray.distributed.data import prepare_with_ray

    _ray_init()
    trace = os.environ.get(TRACE_HEAP_ENV) == "1"
    if (
        trace
    ):  # Python objects only (ours and Ray Data's); native memory (Arrow, Ray's core worker) is not traced
        tracemalloc.start()
    units = discover_read_units([str(corpus)])
    start = time.perf_counter()
    manifest = prepare_with_ray(units, NormalizeSettings(), data, max_row_chars=200_000, plan=plan)
    seconds = time.perf_counter() - start
    read = int(manifest["read"])
    result = {"seconds": round(seconds, 1), "read": read, "rows_per_s": round(read / seconds, 1)}
    if trace:
        current, peak = tracemalloc.get_traced_memory()
        result |= {
            "driver_python_heap_mib": round(current / 2**20, 1),
            "driver_python_heap_peak_mib": round(peak / 2**20, 1),
        }
    return result


def child_sft(data: Path, model: str, store: str, out: Path, steps: int) -> dict[str, Any]:
    from polyalign_ray.config import load_config
    from polyalign_ray.stages.sft import run_sft_stage

    _ray_init()
    config = load_config(
        None,
        [
            f"data.output_dir={data}",
            f"model.name_or_path={model}",
            f"sft.output_dir={out}",
            f"sft.example_store={store}",
            f"sft.max_steps={steps}",
            "sft.log_every=1",
            "sft.num_workers=2",
            "sft.zero_stage=2",
            "sft.micro_batch_size=4",
            "tracking.backends=[]",
        ],
    )
    start = time.perf_counter()
    summary = run_sft_stage(config, fresh=True)
    wall = time.perf_counter() - start
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    steady = [x["step_seconds"] for x in lines[3:]] or [x["step_seconds"] for x in lines]
    return {
        "stage_wall_s": round(wall, 1),
        "loop_tokens_per_s": round(summary["tokens_per_s"], 1),
        "median_step_s": round(statistics.median(steady), 4),
        "steps": summary["steps"],
        "examples": sum(summary["bucket_counts"].values()),
    }


def child_main(argv: list[str]) -> int:
    kind, rest = argv[0], argv[1:]
    if kind == "base_model":
        result = child_base_model(Path(rest[0]))
    elif kind == "prepare":
        result = child_prepare(Path(rest[0]), Path(rest[1]), rest[2])
    else:
        result = child_sft(Path(rest[0]), rest[1], rest[2], Path(rest[3]), int(rest[4]))
    print(json.dumps(result))
    return 0


# ----------------------------------------------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------------------------------------------
def render_report(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    lines = [
        f"## Run of {meta['date']} (commit {meta['commit']})",
        "",
        f"Command: `{meta['command']}`",
        "",
        f"Machine: {meta['machine']['cpu']}, {meta['machine']['logical_cpus']} CPUs, "
        f"{meta['machine']['mem_gib']} GiB; load before the runs {meta['load']}.",
        "",
        "| scale | rows | what | wall s | rows/s or loop tokens/s | median step s | driver peak RSS MiB "
        "| Train worker peak RSS MiB | largest other Ray process MiB | private (RssAnon) peak MiB: driver / "
        "Train worker / other Ray process | other processes' CPU s |",
        "|---:|---:|---|---:|---:|---:|---:|---:|---:|---|---:|",
    ]
    for r in rows:
        if "failed" in r:
            lines.append(
                f"| {r['scale']}x | {r['records']} | {r['what']} | failed: see the JSON line |" + " |" * 7
            )
            continue
        if r["what"].startswith("prepare"):
            rate, step = f"{r['rows_per_s']:.0f} rows/s", "–"
            wall = r["seconds"]
        else:
            rate, step = f"{r['loop_tokens_per_s']:.0f} tok/s", f"{r['median_step_s']:.3f}"
            wall = r["stage_wall_s"]
        worker = f"{r['train_worker_peak_rss_mib']:.0f}" if r["train_workers_seen"] else "–"
        private = " / ".join(
            f"{r[key]:.0f}" if key in r else "–"
            for key in (
                "driver_peak_private_mib",
                "train_worker_peak_private_mib" if r["train_workers_seen"] else "",
                "other_ray_process_peak_private_mib",
            )
        )
        lines.append(
            f"| {r['scale']}x | {r['records']} | {r['what']} | {wall} | {rate} | {step} | "
            f"{r['driver_peak_rss_mib']:.0f} | {worker} | {r['other_ray_process_peak_rss_mib']:.0f} | "
            f"{private} | {r['other_processes_cpu_s']} |"
        )
    heap = [r for r in rows if "driver_python_heap_mib" in r]
    if heap:
        lines += [
            "",
            "Driver's Python heap (tracemalloc; Python objects only, ours and Ray Data's), MiB at the end / peak:",
            "",
        ]
        lines += [
            f"- {r['scale']}x {r['what']}: {r['driver_python_heap_mib']} / {r['driver_python_heap_peak_mib']}"
            for r in heap
        ]
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--base-records", type=int, default=100_000, help="rows of the 1x corpus")
    parser.add_argument("--scales", default="1,4,16", help="comma-separated multiples of --base-records")
    parser.add_argument(
        "--stores", default="memory,shards", help="sft.example_store values to run ('': none)"
    )
    parser.add_argument(
        "--prepare-plans", default="auto", help="prepare_with_ray plans to run: auto, driver, distributed"
    )
    parser.add_argument("--memory-max-scale", type=int, default=16, help="skip the memory store above this")
    parser.add_argument("--steps", type=int, default=30, help="SFT optimizer steps per run")
    parser.add_argument("--shards", type=int, default=8, help="JSONL files the corpus is written as")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--object-store-mib",
        type=int,
        default=0,
        help="cap Ray's object store (0: Ray's default, 30%% of memory); what processes map of it counts in RSS",
    )
    parser.add_argument(
        "--trace-python-heap",
        action="store_true",
        help="prepare's driver traces its Python heap (tracemalloc: slower); the rows get its end and peak size",
    )
    parser.add_argument("--work-dir", default="", help="scratch folder (default: a temporary one, removed)")
    parser.add_argument("--report", default="", help="append a Markdown section here")
    parser.add_argument("--jsonl", default="", help="append one JSON line per measurement here")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    if argv is None and len(sys.argv) > 1 and sys.argv[1] == "--child":
        return child_main(sys.argv[2:])
    args = parse_args(argv)
    if args.object_store_mib:
        os.environ[OBJECT_STORE_ENV] = str(args.object_store_mib)
    if args.trace_python_heap:
        os.environ[TRACE_HEAP_ENV] = "1"
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import prepare_throughput

    work = Path(args.work_dir) if args.work_dir else Path(tempfile.mkdtemp(prefix="data-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    meta = {
        "date": harness.local_timestamp(),
        "commit": harness.git_commit(),
        "command": shlex.join([sys.executable, *sys.argv]),
        "machine": harness.host_info(),
        "load": harness.loadavg_rounded(),
    }
    rows: list[dict[str, Any]] = []
    try:
        model = run_child(["base_model", str(work)])["model"]
        for scale in [int(s) for s in args.scales.split(",")]:
            records = args.base_records * scale
            corpus, data = work / f"corpus_{scale}", work / f"data_{scale}"
            prepare_throughput.build_scaled_corpus(records, args.shards, corpus, args.seed)
            base = {"scale": scale, "records": records, **meta}
            for plan in args.prepare_plans.split(","):
                shutil.rmtree(data, ignore_errors=True)
                result = run_child(["prepare", str(corpus), str(data), plan])
                rows.append({**base, "what": f"prepare ({plan} plan)", **result})
                print(json.dumps(rows[-1]), flush=True)
                if args.jsonl:
                    with open(args.jsonl, "a", encoding="utf-8") as handle:
                        handle.write(json.dumps(rows[-1]) + "\n")
            shutil.rmtree(corpus, ignore_errors=True)
            for store in filter(None, args.stores.split(",")):
                if store == "memory" and scale > args.memory_max_scale:
                    continue
                out = work / f"sft_{scale}_{store}"
                try:
                    result = run_child(["sft", str(data), model, store, str(out), str(args.steps)])
                except RuntimeError as error:  # e.g. the memory store running out of memory: a result too
                    print(f"sft {store} at {scale}x failed: {error}", file=sys.stderr)
                    result = {"failed": str(error)[-2000:]}
                rows.append({**base, "what": f"sft {store}", **result})
                print(json.dumps(rows[-1]), flush=True)
                shutil.rmtree(out, ignore_errors=True)
                if args.jsonl:
                    with open(args.jsonl, "a", encoding="utf-8") as handle:
                        handle.write(json.dumps(rows[-1]) + "\n")
            shutil.rmtree(data, ignore_errors=True)
    finally:
        if not args.work_dir:
            shutil.rmtree(work, ignore_errors=True)
    report = render_report(rows, meta)
    print(report)
    if args.report:
        with open(args.report, "a", encoding="utf-8") as handle:
            handle.write("\n" + report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
