"""What the benchmark scripts share: the machine and its load, quiet waits and busy re-runs, peak memory, the
processes of this process tree, step stamps and a phase timer that plugs into the training loops'
:class:`~polyalign_ray.loops.probe.StepProbe` (no module patching), and report pieces.

A figure measured on a busy machine means little, so every script records the CPU the rest of the machine used
(``system_busy_s`` minus its own ``cpu_s``) and can wait for quiet first. Scripts run as ``python bench/NAME.py``,
which puts this folder on ``sys.path``: ``import harness`` needs nothing more.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import itertools
import json
import os
import platform
import resource
import shlex
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

REPO = Path(__file__).resolve().parents[1]
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")

# Hugging Face and DeepSpeed offline and quiet: no download, no telemetry, no tokenizer threads, CPU DeepSpeed.
HF_OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "DS_ACCELERATOR": "cpu",
}
# Everything a benchmark child needs to stay offline and quiet.
OFFLINE_ENV = {**HF_OFFLINE_ENV, "TQDM_DISABLE": "1"}
# A script that starts a local Ray instance, before Ray is imported: loopback-only gloo/Ray, faster Train
# polling, nothing sent anywhere (CPU_NOTES.md).
RAY_LOCAL_ENV = {
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5",
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS": "0",
    **HF_OFFLINE_ENV,
}


def set_default_env(env: Mapping[str, str]) -> None:
    """Set each variable of ``env`` that the user has not set: a value given on the command line wins."""
    for key, value in env.items():
        os.environ.setdefault(key, value)


# ----------------------------------------------------------------------------------------------------------------
# This process, the machine and its load
# ----------------------------------------------------------------------------------------------------------------
def peak_rss_mib() -> float:
    """This process's peak resident memory."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def cpu_s() -> float:
    """CPU seconds this process has used (user + system)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def system_busy_s() -> float:
    """CPU seconds all processes on the machine have used since boot (/proc/stat; NaN where there is none)."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
        return (sum(fields[:8]) - idle) / CLK_TCK
    except (OSError, ValueError, IndexError):
        return float("nan")


def machine_cpu_util(window_s: float = 2.0) -> float:
    """Cores in use on the whole machine over a short window."""
    busy, start = system_busy_s(), time.perf_counter()
    time.sleep(window_s)
    return (system_busy_s() - busy) / (time.perf_counter() - start)


class ProcessStat(NamedTuple):
    """One process as /proc/PID/stat shows it."""

    ppid: int
    cpu_s: float  # user + system CPU seconds so far
    rss_bytes: int
    name: str  # the command name (a Ray worker's is its title, ``ray::Class.method``, cut to 15 characters)


def read_processes() -> dict[int, ProcessStat]:
    """Every process on the machine by pid; one that ends while it is read is left out."""
    out = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                data = f.read()
            rest = data[data.rfind(")") + 2 :].split()
            name = data[data.find("(") + 1 : data.rfind(")")]
            cpu = (int(rest[11]) + int(rest[12])) / CLK_TCK
            out[int(entry)] = ProcessStat(int(rest[1]), cpu, int(rest[21]) * PAGE_SIZE, name)
        except (OSError, IndexError, ValueError):
            continue
    return out


def process_tree(procs: Mapping[int, ProcessStat], root: int) -> set[int]:
    """``root`` and every process it started, recursively: the CPU a benchmark's Ray processes and workers use
    is its own, not load from others."""
    children: dict[int, list[int]] = {}
    for pid, proc in procs.items():
        children.setdefault(proc.ppid, []).append(pid)
    tree, stack = set(), [root]
    while stack:
        pid = stack.pop()
        if pid not in tree:
            tree.add(pid)
            stack.extend(children.get(pid, []))
    return tree


SamplerT = TypeVar("SamplerT", bound="ProcessSampler")


class ProcessSampler:
    """While a measurement runs (``with``), samples the processes on a daemon thread: :meth:`_sample` every
    ``interval`` s, and once more at each end (``initial`` at the start); ``wall`` is the seconds in between.
    Subclasses say what a sample keeps; :meth:`_started` and :meth:`_stopped` read what they need at each end."""

    def __init__(self, interval: float = 0.5) -> None:
        self.interval = interval
        self.root = os.getpid()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self, initial: bool = False) -> None:
        raise NotImplementedError

    def _started(self) -> None:
        """Just after the start time is taken, before the first sample."""

    def _stopped(self) -> None:
        """Just after the last sample and the wall time."""

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def __enter__(self: SamplerT) -> SamplerT:
        self.t0 = time.perf_counter()
        self._started()
        self._sample(initial=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()
        self.wall = time.perf_counter() - self.t0
        self._stopped()


def other_processes_cpu_util(window_s: float) -> float:
    """Cores used over ``window_s`` by processes outside this process tree (our own idle Ray processes use
    about 0.2 cores, which is no reason to wait)."""
    before = read_processes()
    t0 = time.perf_counter()
    time.sleep(window_s)
    after = read_processes()
    wall = time.perf_counter() - t0
    ours = process_tree(before, os.getpid()) | process_tree(after, os.getpid())
    used = sum(
        proc.cpu_s - (before[pid].cpu_s if pid in before else 0.0)
        for pid, proc in after.items()
        if pid not in ours
    )
    return max(used, 0.0) / wall


def wait_for_quiet(
    threshold: float,
    max_wait_s: float,
    window_s: float = 5.0,
    measure: Callable[[float], float] = machine_cpu_util,
) -> tuple[float, float]:
    """Wait until ``measure`` (cores in use over one window; by default the whole machine's) is under
    ``threshold``, or ``max_wait_s`` has passed; (seconds waited, last reading)."""
    start = time.perf_counter()
    while True:
        used = measure(window_s)
        if used != used or used < threshold or time.perf_counter() - start > max_wait_s:
            return time.perf_counter() - start, used


def host_info() -> dict[str, Any]:
    """CPU model, logical CPUs, memory and Python: what every result file says of the machine."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    mem_gib = float("nan")
    try:
        with open("/proc/meminfo") as f:
            mem_gib = int(f.readline().split()[1]) / 2**20
    except (OSError, ValueError, IndexError):
        pass
    return {
        "cpu": cpu,
        "logical_cpus": os.cpu_count(),
        "mem_gib": round(mem_gib, 1),
        "python": platform.python_version(),
    }


def machine_info() -> dict[str, Any]:
    """:func:`host_info` and the kernel: the header of the single-process benchmarks' result files."""
    return {**host_info(), "host_kernel": platform.release()}


def ray_stack_info() -> dict[str, Any]:
    """:func:`host_info` and the versions of torch, Ray and DeepSpeed: the header of the Ray Train benchmarks'
    result files (imports all three)."""
    import deepspeed
    import ray
    import torch

    return {
        **host_info(),
        "torch": torch.__version__,
        "ray": ray.__version__,
        "deepspeed": deepspeed.__version__,
    }


def local_timestamp() -> str:
    """Now, to the second, with the local UTC offset: the date of a run in its rows and report."""
    return datetime.datetime.now().astimezone().isoformat(timespec="seconds")


def git_commit() -> str:
    """The checkout's short commit (with ``+changes`` when the tree differs from it): which code a row measured."""
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=here, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(["git", "diff", "--quiet", "HEAD"], cwd=here).returncode != 0
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + ("+changes" if dirty else "")


def loadavg_rounded() -> list[float]:
    """The 1, 5 and 15-minute load averages, two decimals."""
    return [round(x, 2) for x in os.getloadavg()]


def load_before_runs() -> dict[str, Any]:
    """The date, load averages and cores in use before the first run: a report's load line starts from these."""
    return {
        "date": local_timestamp(),
        "loadavg_before": loadavg_rounded(),
        "machine_cores_before": round(machine_cpu_util(2.0), 2),
    }


# ----------------------------------------------------------------------------------------------------------------
# Quiet waits and busy re-runs
# ----------------------------------------------------------------------------------------------------------------
def add_quiet_options(
    parser: argparse.ArgumentParser,
    *,
    quiet_threshold: float,
    busy_limit: float,
    retries: int,
    run: str = "run",
) -> None:
    """``--wait-quiet``, ``--quiet-threshold``, ``--quiet-window``, ``--busy-limit`` and ``--retries``: the same
    flags in every script that waits for a quiet machine and runs a disturbed measurement (a ``run``) again."""
    parser.add_argument(
        "--wait-quiet",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help=f"before each {run}, wait up to SECONDS for the machine to be idle (default 0: no wait)",
    )
    parser.add_argument(
        "--quiet-threshold",
        type=float,
        default=quiet_threshold,
        help=f"the machine (or a step) is quiet when other processes use at most this many cores "
        f"(default {quiet_threshold})",
    )
    parser.add_argument(
        "--quiet-window", type=float, default=10.0, help="seconds the machine must stay idle (default 10)"
    )
    parser.add_argument(
        "--busy-limit",
        type=float,
        default=busy_limit,
        help=f"a {run} during which other processes used more cores than this is run again "
        f"(default {busy_limit})",
    )
    parser.add_argument(
        "--retries", type=int, default=retries, help=f"reruns of a busy {run} (default {retries})"
    )


def add_result_options(parser: argparse.ArgumentParser) -> None:
    """``--jsonl`` and ``--report``: where a benchmark keeps its rows and its report (see :func:`publish`)."""
    parser.add_argument(
        "--jsonl", default=None, help="append one JSON line per run and one summary line here"
    )
    parser.add_argument("--report", default=None, help="write the Markdown report here")


def parse_with_exclude(
    parser: argparse.ArgumentParser, argv: Sequence[str] | None, *, timed_at_least: int
) -> argparse.Namespace:
    """The options of a benchmark whose step figures leave out the first ``--exclude`` steps, which must leave
    at least ``timed_at_least`` of the ``--steps`` steps to time."""
    args = parser.parse_args(argv)
    if not 0 <= args.exclude <= args.steps - timed_at_least:
        end = "--steps" if timed_at_least == 1 else f"--steps - {timed_at_least - 1}"
        parser.error(f"--exclude must be in [0, {end})")
    return args


class RunLedger:
    """The measured runs of a benchmark that waits for a quiet machine before each run (``--wait-quiet``) and runs
    again a run that other processes disturbed (more than ``--busy-limit`` cores, up to ``--retries`` times):
    ``kept`` holds the runs that count, ``discarded`` the busy ones that were run again, for the report.
    ``others_only``: wait on the processes outside this tree only (a script whose own Ray instance idles)."""

    def __init__(self, args: argparse.Namespace, tag: str, *, others_only: bool = False) -> None:
        self.args = args
        self.tag = tag
        self.others_only = others_only
        self.kept: list[dict[str, Any]] = []
        self.discarded: list[dict[str, Any]] = []

    def wait(self, label: str) -> float | None:
        """With ``--wait-quiet``, wait for a quiet machine before measuring ``label`` and say on stderr how long;
        the seconds waited, which the run's row keeps (None without ``--wait-quiet``)."""
        args = self.args
        if args.wait_quiet <= 0:
            return None
        measure, who = (
            (other_processes_cpu_util, "other processes")
            if self.others_only
            else (machine_cpu_util, "machine")
        )
        waited, used = wait_for_quiet(args.quiet_threshold, args.wait_quiet, args.quiet_window, measure)
        sys.stderr.write(f"[{self.tag}] waited {waited:.0f}s ({who} {used:.2f} cores) before {label}\n")
        return waited

    def file(self, row: dict[str, Any], other_cores: float, attempt: int, progress: str) -> bool:
        """Say on stderr how a run went (``progress``, then the cores other processes used during it) and file it
        by those cores: kept when quiet, or when busy but out of retries (marked busy: the report warns); else
        discarded, and the run is to be run again. True when kept, which ends the run's attempts."""
        busy = other_cores > self.args.busy_limit
        again = busy and attempt < self.args.retries
        note = " (busy: run again)" if again else ""
        sys.stderr.write(f"[{self.tag}] {progress}, other procs {other_cores} cores{note}\n")
        if not again:
            row["busy"] = busy
            self.kept.append(row)
            return True
        self.discarded.append({**row, "busy": True, "discarded": True})
        return False


def busy_run_lines(
    kept: Sequence[Mapping[str, Any]],
    discarded: Sequence[Mapping[str, Any]],
    describe: Callable[[Mapping[str, Any]], str],
    busy_limit: float,
    *,
    runs: str = "runs",
    during: str = " during their timed steps",
) -> list[str]:
    """The report's paragraphs on load, each after a blank line: the ``discarded`` runs that were run again (as
    ``describe`` names them: which run, its figure, the cores other processes used), and a warning when a
    ``kept`` run was still busy, so that a figure from a busy machine is never read as a clean one."""
    out = []
    if discarded:
        out += [
            "",
            f"{runs.capitalize()} discarded because other processes used more than {busy_limit} cores{during} "
            "(each was run again): " + "; ".join(map(describe, discarded)) + ".",
        ]
    if any(r.get("busy") for r in kept):
        out += [
            "",
            f"**Warning: some kept {runs} were still busy after all retries; their figures are not clean.**",
        ]
    return out


# ----------------------------------------------------------------------------------------------------------------
# Step timing in a training loop
# ----------------------------------------------------------------------------------------------------------------
# A step's end: wall clock, this process's CPU seconds, the machine's busy CPU seconds, the 1-min load average.
Stamp = tuple[float, float, float, float]


class PhaseTimer:
    """A :class:`~polyalign_ray.loops.probe.StepProbe` that records wall seconds per section and per optimizer
    step, and (real tokens, padded tokens, loss tokens, rows) of every micro-batch the loop hands it."""

    def __init__(self) -> None:
        self.current: dict[str, float] = {}
        self.steps: list[dict[str, float]] = []
        self.batches: list[tuple[int, int, int, int]] = []

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.current[name] = self.current.get(name, 0.0) + time.perf_counter() - start

    def batch(self, batch: Mapping[str, Any]) -> None:
        self.batches.append(
            (
                int(batch["attention_mask"].sum()),
                int(batch["input_ids"].numel()),
                int((batch["labels"] != -100).sum()),
                int(batch["input_ids"].shape[0]),
            )
        )

    def step_end(self, step: int) -> None:
        self.steps.append(self.current)
        self.current = {}


class StepClock:
    """A training loop's ``on_log`` (with ``log_every=1``): stamps the end of every optimizer step with the wall
    clock, this process's CPU, the machine's busy CPU and the load, so that step times and the CPU other processes
    used come from the same instants. With ``profile``, cProfile and torch.profiler run over the timed steps only
    (from the end of the last warm-up step to the end of the last step)."""

    def __init__(self, warmup: int, total_steps: int, profile: bool = False) -> None:
        self.warmup = warmup
        self.total_steps = total_steps
        self.stamps: list[Stamp] = []
        self.cprofiler: Any = None
        self.profiler: Any = None
        if profile:
            import cProfile

            import torch.profiler

            self.cprofiler = cProfile.Profile()
            self.profiler = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU])

    def on_log(self, line: Mapping[str, Any]) -> None:
        self.stamps.append((time.perf_counter(), cpu_s(), system_busy_s(), os.getloadavg()[0]))
        if self.profiler is not None and len(self.stamps) == self.warmup:
            self.profiler.start()
            self.cprofiler.enable()
        if self.profiler is not None and len(self.stamps) == self.total_steps:
            self.cprofiler.disable()
            self.profiler.stop()


class TimedSteps:
    """A finished run's timed steps (the step-to-step intervals after the warm-up steps) from its clock's stamps,
    its phase timer and its ``metrics.jsonl``: the figures every benchmark that times a training loop against
    another trainer's reports alike."""

    def __init__(
        self,
        clock: StepClock,
        phases: PhaseTimer,
        metrics_path: Path,
        phase_names: Sequence[str],
        quiet: float,
    ) -> None:
        stamps, warmup, total_steps = clock.stamps, clock.warmup, clock.total_steps
        if len(stamps) != total_steps:
            raise RuntimeError(f"expected {total_steps} step stamps, got {len(stamps)}")
        if warmup < 1:
            raise RuntimeError("--warmup must be >= 1 (the first step has no start stamp)")
        self.warmup, self.total_steps, self.quiet_threshold = warmup, total_steps, quiet
        # interval k (0-based) = step k+2 (stamp k -> stamp k+1); the timed steps are warmup+1 .. warmup+steps
        self.dts = [b[0] - a[0] for a, b in itertools.pairwise(stamps)]
        # cores other processes used in each interval
        self.others = [
            max((b[2] - a[2]) - (b[1] - a[1]), 0.0) / (b[0] - a[0]) for a, b in itertools.pairwise(stamps)
        ]
        self.timed = self.dts[warmup - 1 :]
        timed_others = self.others[warmup - 1 :]
        self.quiet = [t for t, o in zip(self.timed, timed_others, strict=True) if o <= quiet]
        self.median = statistics.median(self.timed)
        self.total = sum(self.timed)
        self.batches = phases.batches  # every micro-batch's (real, padded, loss tokens, rows)
        self.timed_batches = self.batches[warmup:total_steps]
        self.real = [b[0] for b in self.timed_batches]
        self.first, self.last = stamps[warmup - 1], stamps[total_steps - 1]
        self.metrics = [json.loads(x) for x in metrics_path.read_text().splitlines()]
        self.phase_median = {
            name: round(statistics.median(s.get(name, 0.0) for s in phases.steps[warmup:total_steps]), 4)
            for name in phase_names
        }
        self.phase_median["other"] = round(self.median - sum(self.phase_median.values()), 4)

    def loop_step_seconds(self) -> list[float]:
        """The loop's own ``step_seconds`` of the timed steps."""
        return [m["step_seconds"] for m in self.metrics[self.warmup : self.total_steps]]

    def interval_fields(self) -> dict[str, Any]:
        """The step-time figures of a result row."""
        timed = self.timed
        return {
            "warmup_steps_excluded": self.warmup,
            "timed_steps": len(timed),
            "sec_per_step_median": round(self.median, 4),
            "sec_per_step_mean": round(self.total / len(timed), 4),
            "sec_per_step_min": round(min(timed), 4),
            "sec_per_step_max": round(max(timed), 4),
            "sec_per_step_stdev": round(statistics.stdev(timed), 4) if len(timed) > 1 else 0.0,
        }

    def token_and_load_fields(self, train_wall_s: float) -> dict[str, Any]:
        """The token, phase, load and memory figures of a result row."""
        real = self.real
        padded = [b[1] for b in self.timed_batches]
        trained = [b[2] for b in self.timed_batches]
        sum_t = self.total
        timed_cpu = self.last[1] - self.first[1]
        other_cpu = self.last[2] - self.first[2] - timed_cpu
        return {
            "tokens_per_s": round(sum(real) / sum_t, 1),
            "tokens_per_s_median_based": round(statistics.mean(real) / self.median, 1),
            "tokens_per_step_mean": round(statistics.mean(real), 1),
            "padded_tokens_per_step_mean": round(statistics.mean(padded), 1),
            "pad_fraction": round(1 - sum(real) / sum(padded), 4),
            "loss_tokens_per_s": round(sum(trained) / sum_t, 1),
            "sequences_per_step": self.batches[0][3],
            "phase_seconds_median": self.phase_median,
            "cpu_util_timed": round(timed_cpu / sum_t, 2),
            "other_procs_cpu_util_timed": round(max(other_cpu, 0.0) / sum_t, 2),
            "loadavg_1m_timed_start_end": [round(self.first[3], 2), round(self.last[3], 2)],
            "quiet_threshold_cores": self.quiet_threshold,
            "quiet_steps": len(self.quiet),
            "sec_per_step_median_quiet": round(statistics.median(self.quiet), 4) if self.quiet else None,
            "other_procs_cores_per_step": [round(o, 2) for o in self.others],
            "peak_rss_mib": round(peak_rss_mib(), 1),
            "train_wall_s": round(train_wall_s, 2),
        }


def matmul_peak_gflops(size: int = 2048, repeats: int = 20) -> float:
    """fp32 GFLOP/s of a size³ matmul with this process's torch threads (best of ``repeats``): the peak a
    training step's FLOP rate is measured against (MFU), taken in the same process as the step. Best of 5 once
    gave 124 GFLOP/s where the same run's other processes measured 170-194 (an MFU of 100%): this VM's speed
    dips for a second or two, so the peak takes 20 tries (about 2 s), and callers measure it again after the
    timed steps and keep the higher one."""
    import torch

    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b  # warm the kernels and the allocator
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e9


# ----------------------------------------------------------------------------------------------------------------
# Reports
# ----------------------------------------------------------------------------------------------------------------
def fmt(value: Any, digits: int = 3) -> str:
    """A table cell: None as a dash; floats with ``digits`` decimals below 100, else whole with thousands commas."""
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}" if abs(value) < 100 else f"{value:,.0f}"
    return str(value)


def report_preamble(
    title: str, script: str, argv: Sequence[str], info: Mapping[str, Any], load: Mapping[str, Any]
) -> list[str]:
    """A report's title, then its date, command, machine and load lines (``load`` from :func:`load_before_runs`
    with ``loadavg_after`` added), so that every figure travels with the conditions it was measured in."""
    return [
        f"# {title}",
        "",
        f"- Date: {load['date']}",
        f"- Command: `{shlex.join(['.venv/bin/python', script, *argv])}`",
        f"- Machine: {info['cpu']}, {info['logical_cpus']} logical CPUs, {info['mem_gib']} GiB, "
        f"Python {info['python']}",
        f"- Load: 1-min load average {load['loadavg_before']} before, {load['loadavg_after']} after; machine CPU "
        f"use before the first run {load['machine_cores_before']} cores; other processes' CPU during each run's "
        "timed steps is in the table (cores; ~0 means quiet).",
    ]


def publish(
    args: argparse.Namespace,
    report: str,
    printed: Sequence[Mapping[str, Any]],
    summary: Mapping[str, Any],
    appended: Sequence[Mapping[str, Any]],
    *,
    ensure_ascii: bool,
) -> None:
    """A finished benchmark's output: the report, each of the ``printed`` rows and the summary as JSON lines on
    stdout; the ``appended`` rows and the summary added to ``--jsonl``; the report written to ``--report``."""
    print(report)
    for r in printed:
        print(json.dumps(r, ensure_ascii=ensure_ascii))
    print(json.dumps(summary, ensure_ascii=ensure_ascii))
    if args.jsonl:
        with open(args.jsonl, "a") as f:
            for r in appended:
                f.write(json.dumps(r, ensure_ascii=ensure_ascii) + "\n")
            f.write(json.dumps(summary, ensure_ascii=ensure_ascii) + "\n")
    if args.report:
        Path(args.report).write_text(report)


def phase_table(
    rows: Sequence[Mapping[str, Any]], names: Sequence[str], label: Callable[[Mapping[str, Any]], str]
) -> list[str]:
    """The report's table of our step by phase (a :class:`PhaseTimer`'s sections): one line per run, the median
    seconds of each section over its timed steps."""
    lines = ["", "Our step, by phase (median seconds over the timed steps):", ""]
    lines.append("| run | " + " | ".join(names) + " |")
    lines.append("|---|" + "---|" * len(names))
    for r in rows:
        lines.append(
            f"| {label(r)} (repeat {r['repeat']}) | "
            + " | ".join(fmt(r["phase_seconds_median"].get(n), 4) for n in names)
            + " |"
        )
    return lines
