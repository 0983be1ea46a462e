"""Throughput of the prepare stage and of the feature pass: Ray Data pipeline vs. a plain single-process loop.

The built-in bilingual corpus (about 3.2k rows) is scaled up to ``--records`` rows (default 200k) by replicating
it with deterministic perturbations: every replica gets new ids and group ids and small text edits, so most
replicas are new examples, about 5% are exact content copies (deduplication drops them) and about 1% are
malformed rows of several kinds (quarantine keeps them). The corpus is written as ``--shards`` JSONL files so that
Ray Data can read them in parallel; generation is timed on its own and is not part of any engine's figures.

Each engine then runs in its own child process on the same files, one after the other:

* ``local``: ``prepare_in_process`` and then ``features_table(load_split(...))`` for each split;
* ``ray``: ``ray.init`` (timed on its own), ``prepare_with_ray`` and then ``compute_features_with_ray``.

Per engine and stage it reports wall seconds and records/s (prepare: input rows read per second; features:
kept records per second), the counts (which must be equal across engines: checked, as are the written records
and the features), peak memory (see ``MEMORY_NOTE``) and the CPU seconds used by the engine's processes and by
every other process on the machine meanwhile, so that a busy machine shows in the results.

Run from the repository root::

    RAY_USAGE_STATS_ENABLED=0 .venv/bin/python bench/prepare_throughput.py --records 200000 --shards 8
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import random
import resource
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import psutil

MAX_ROW_CHARS = 200_000  # the default of data.max_row_chars
SAMPLE_INTERVAL_S = 0.2
OTHER_CPU_SHARE_WARNING = 0.05  # warn when other processes used more than this share of the CPUs in a stage
EXACT_COPY_SHARE = 0.05  # replicas whose text is left as is: exact duplicates that dedup must drop
MALFORMED_SHARE = 0.01  # rows replaced by one of MALFORMED_KINDS, which quarantine must keep
MALFORMED_KINDS = (
    "broken_json",
    "not_an_object",
    "missing_response",
    "empty_response",
    "invalid_utf8",
    "duplicate_id",
)
ENGINES = ("ray", "local")
COUNT_KEYS = ("read", "expanded", "kept", "quarantined", "duplicates")
MEMORY_NOTE = (
    "peak memory: local = peak RSS of the engine's own process (VmHWM); ray = peak RSS of the driver "
    "process (VmHWM) + the peak, over samples every 0.2 s, of the summed RSS of every process the driver "
    "started (raylet, gcs_server, ray:: workers, agents). Summed RSS counts shared pages (libraries, the "
    "object store in /dev/shm) once per process; 'footprint' is the peak of the summed private memory "
    "(RSS minus shared pages) of driver and Ray processes plus the growth of /dev/shm (object store)."
)

EN_FILLERS = ("well", "really", "indeed", "actually", "so", "yes", "okay", "right", "truly", "now")
ZH_FILLERS = "的了是嗯啊呢吧呀喔就也都很"
EN_PUNCT = {".": "!", "!": ".", "?": "?!", ",": ";"}
ZH_PUNCT = {"。": "！", "！": "。", "？": "。", "，": "、"}


# ---------------------------------------------------------------------------------------------------------------
# The scaled corpus
# ---------------------------------------------------------------------------------------------------------------
def _perturb_english(text: str, rng: random.Random, replica: int) -> str:
    words = text.split(" ")
    op = rng.randrange(5)
    if op == 0:  # append a replica marker
        return f"{text} ({rng.choice(EN_FILLERS)} {replica})"
    if op == 1 and len(words) > 1:  # swap two neighbouring words
        i = rng.randrange(len(words) - 1)
        words[i], words[i + 1] = words[i + 1], words[i]
        return " ".join(words)
    if op == 2 and len(words) > 2:  # drop a word
        del words[rng.randrange(len(words))]
        return " ".join(words)
    if op == 3:  # change (or add) the final punctuation
        stripped = text.rstrip(".!?,;")
        end = text[len(stripped) :]
        return stripped + (EN_PUNCT.get(end[:1], "...") if end else rng.choice(".!?"))
    i = rng.randrange(len(words) + 1)  # insert a filler word
    words.insert(i, rng.choice(EN_FILLERS))
    return " ".join(words)


def _perturb_chinese(text: str, rng: random.Random, replica: int) -> str:
    op = rng.randrange(4)
    if op == 0:  # append a replica marker
        return f"{text}（第{replica}遍）"
    if op == 1 and text:  # replace a character that is not punctuation
        positions = [i for i, ch in enumerate(text) if ch not in ZH_PUNCT and not ch.isspace()]
        if positions:
            i = rng.choice(positions)
            return text[:i] + rng.choice(ZH_FILLERS) + text[i + 1 :]
    if op == 2 and text and text[-1] in ZH_PUNCT:  # change the final punctuation
        return text[:-1] + ZH_PUNCT[text[-1]]
    i = rng.randrange(len(text) + 1)  # insert a character
    return text[:i] + rng.choice(ZH_FILLERS) + text[i:]


def perturb_row(base: dict[str, Any], rng: random.Random, replica: int) -> dict[str, Any]:
    """Replica ``replica`` of ``base``: new id and group id, and (unless it is an exact copy) 1-2 text edits of
    the response, sometimes of the prompt too. Replica 0 is the base row itself."""
    row = {**base, "history": [dict(turn) for turn in base["history"]]}
    if replica == 0:
        return row
    row["id"] = f"{base['id']}~r{replica}"
    row["group_id"] = f"{base['group_id']}~r{replica}"
    if rng.random() < EXACT_COPY_SHARE:
        return row
    perturb = _perturb_chinese if base["language"] == "zh" else _perturb_english
    for _ in range(rng.choice((1, 1, 2))):
        row["response"] = perturb(row["response"], rng, replica)
    if rng.random() < 0.3:
        row["prompt"] = perturb(row["prompt"], rng, replica)
    return row


def malformed_line(kind: str, row: dict[str, Any], rng: random.Random, used_ids: list[str]) -> bytes:
    """One bad JSONL line of ``kind`` made from ``row`` (each lands in quarantine with its own reason)."""
    if kind == "broken_json":
        text = json.dumps(row, ensure_ascii=False)
        return text[: rng.randrange(1, max(len(text) - 1, 2))].encode("utf-8")
    if kind == "not_an_object":
        value = rng.choice([[row["prompt"], row["response"]], row["response"], 42, None])
        return json.dumps(value, ensure_ascii=False).encode("utf-8")
    if kind == "missing_response":
        return json.dumps({k: v for k, v in row.items() if k != "response"}, ensure_ascii=False).encode()
    if kind == "empty_response":
        return json.dumps({**row, "response": rng.choice(["", "   ", "\n\t"])}, ensure_ascii=False).encode()
    if kind == "invalid_utf8":
        return json.dumps(row, ensure_ascii=False).encode("utf-8")[:40] + b"\xff\xfe\xfa" + b'"}'
    # duplicate_id: new content under an id that an earlier row already holds
    taken = rng.choice(used_ids) if used_ids else row["id"]
    return json.dumps({**row, "id": taken, "response": f"{row['response']} #{rng.randrange(10**6)}"}).encode()


def build_scaled_corpus(records: int, shards: int, directory: Path, seed: int) -> dict[str, Any]:
    """Write ``records`` JSONL lines as ``shards`` files under ``directory``; returns what was generated."""
    from polyalign_ray.corpus.builtin import builtin_corpus_rows

    start = time.perf_counter()
    base = builtin_corpus_rows(max_per_bucket=400, seed=seed)
    base_seconds = time.perf_counter() - start
    rng = random.Random(seed)
    directory.mkdir(parents=True, exist_ok=True)
    per_shard = -(-records // shards)
    handles = [(directory / f"part-{k:03d}.jsonl").open("wb") for k in range(shards)]
    kinds: Counter[str] = Counter()
    used_ids: list[str] = []
    written = 0
    try:
        while written < records:
            replica, index = divmod(written, len(base))
            row = perturb_row(base[index], rng, replica)
            if replica > 0 and rng.random() < MALFORMED_SHARE:
                kind = MALFORMED_KINDS[rng.randrange(len(MALFORMED_KINDS))]
                line = malformed_line(kind, row, rng, used_ids)
                kinds[kind] += 1
            else:
                line = json.dumps(row, ensure_ascii=False).encode("utf-8")
                if rng.random() < 0.001:
                    used_ids.append(row["id"])
            handles[written // per_shard].write(line + b"\n")
            written += 1
    finally:
        for handle in handles:
            handle.close()
    return {
        "records": written,
        "shards": shards,
        "base_rows": len(base),
        "replicas": -(-written // len(base)),
        "malformed": dict(sorted(kinds.items())),
        "bytes": sum(p.stat().st_size for p in directory.glob("*.jsonl")),
        "builtin_seconds": round(base_seconds, 2),
        "seconds": round(time.perf_counter() - start, 2),
    }


# ---------------------------------------------------------------------------------------------------------------
# Measuring
# ---------------------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class PhasePeak:
    driver_rss: int = 0
    procs_rss: int = 0
    workers_rss: int = 0
    footprint: int = 0
    shm_used: int = 0
    processes: int = 0


def _shm_used() -> int:
    try:
        return shutil.disk_usage("/dev/shm").used
    except OSError:
        return 0


def _cpu_seconds(times: Any) -> float:
    return float(times.user + times.system)


class TreeSampler(threading.Thread):
    """Samples this process and every process it started (recursively) every ``interval`` seconds: peak
    memory per phase, and the CPU seconds used by the tree and by the whole machine (so by other processes)."""

    def __init__(self, interval: float = SAMPLE_INTERVAL_S):
        super().__init__(daemon=True)
        self.interval = interval
        self.root = psutil.Process()
        self.phase = "setup"
        self.peaks: dict[str, PhasePeak] = {}
        self.kinds: dict[int, str] = {}
        self.cpu_last: dict[int, float] = {}
        self.cpu_first: dict[int, float] = {}
        self.shm_base = _shm_used()
        self.stop_event = threading.Event()
        self.lock = threading.Lock()
        self.machine_busy_start = self._machine_busy()
        self.samples = 0

    @staticmethod
    def _machine_busy() -> float:
        times = psutil.cpu_times()
        return float(sum(times) - times.idle - getattr(times, "iowait", 0.0))

    def _kind(self, proc: psutil.Process) -> str:
        if proc.pid not in self.kinds:
            try:
                cmdline = " ".join(proc.cmdline())
            except psutil.Error:
                cmdline = ""
            if "ray::" in cmdline or "default_worker.py" in cmdline:
                kind = "worker"
            elif "raylet" in cmdline:
                kind = "raylet"
            elif "gcs_server" in cmdline:
                kind = "gcs_server"
            else:
                kind = "other"
            self.kinds[proc.pid] = kind
        kind = self.kinds[proc.pid]
        if kind == "other":  # a worker's title becomes ray::... only once it has started
            try:
                if proc.name().startswith("ray::"):
                    self.kinds[proc.pid] = kind = "worker"
            except psutil.Error:
                pass
        return kind

    def sample(self) -> None:
        try:
            driver = self.root.memory_info()
            self._note_cpu(self.root)
            children = self.root.children(recursive=True)
        except psutil.Error:
            return
        procs_rss = workers_rss = private = 0
        alive = 0
        for proc in children:
            try:
                mem = proc.memory_info()
                self._note_cpu(proc)
                kind = self._kind(proc)
            except psutil.Error:
                continue
            alive += 1
            procs_rss += mem.rss
            private += mem.rss - mem.shared
            if kind == "worker":
                workers_rss += mem.rss
        shm = max(_shm_used() - self.shm_base, 0)
        footprint = driver.rss - driver.shared + private + shm
        with self.lock:
            self.samples += 1
            peak = self.peaks.setdefault(self.phase, PhasePeak())
            peak.driver_rss = max(peak.driver_rss, driver.rss)
            peak.procs_rss = max(peak.procs_rss, procs_rss)
            peak.workers_rss = max(peak.workers_rss, workers_rss)
            peak.footprint = max(peak.footprint, footprint)
            peak.shm_used = max(peak.shm_used, shm)
            peak.processes = max(peak.processes, alive)

    def _note_cpu(self, proc: psutil.Process) -> None:
        seconds = _cpu_seconds(proc.cpu_times())
        self.cpu_first.setdefault(proc.pid, 0.0 if proc.pid != self.root.pid else seconds)
        self.cpu_last[proc.pid] = seconds

    def set_phase(self, phase: str) -> None:
        self.sample()  # close the previous phase with a sample
        with self.lock:
            self.phase = phase
        self.sample()

    def cpu_snapshot(self) -> tuple[float, float]:
        """(CPU seconds of this process tree so far, busy CPU seconds of the machine so far)."""
        self.sample()
        with self.lock:
            tree = sum(self.cpu_last[p] - self.cpu_first.get(p, 0.0) for p in self.cpu_last)
        return tree, self._machine_busy() - self.machine_busy_start

    def run(self) -> None:
        while not self.stop_event.wait(self.interval):
            self.sample()

    def stop(self) -> None:
        self.stop_event.set()
        self.join()
        self.sample()


def _mib(n: float) -> float:
    return round(n / 2**20, 1)


def _peak_rss_bytes() -> int:
    """Peak RSS of this process: ``VmHWM`` of /proc/self/status. Not ``ru_maxrss``, which a child started by
    fork+exec inherits from its parent when the parent's peak was higher."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def _timed_phase(sampler: TreeSampler, phase: str, fn: Any) -> tuple[Any, dict[str, float]]:
    sampler.set_phase(phase)
    cpu0, busy0 = sampler.cpu_snapshot()
    load0 = os.getloadavg()[0]
    wall_start = time.time()
    start = time.perf_counter()
    result = fn()
    seconds = time.perf_counter() - start
    wall_end = time.time()
    cpu1, busy1 = sampler.cpu_snapshot()
    return result, {
        "seconds": seconds,
        "start": wall_start,
        "end": wall_end,
        "cpu_s_engine": cpu1 - cpu0,
        "cpu_s_other": max((busy1 - busy0) - (cpu1 - cpu0), 0.0),
        "loadavg1_start": load0,
        "loadavg1_end": os.getloadavg()[0],
    }


# Driver-side steps timed by wrapping module attributes in the child process (the package files are untouched);
# only coarse steps that run in the driver, never per-row functions or functions shipped to Ray tasks.
TIMED_STEPS = {
    "local": (
        "polyalign_ray.corpus.prepare",
        ("plan_splits", "plan_dedup", "write_split", "write_side_files"),
    ),
    # plan_on_driver calls plan_splits and plan_dedup; plan_distributed (above 200k records) plans by Ray Data passes
    "ray": (
        "polyalign_ray.distributed.data",
        ("plan_splits", "plan_dedup", "plan_distributed", "_write_side_files_streamed"),
    ),
}
_LOG_TIME = r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})\s+\w+\s+\S+ -- "
OPERATOR_METRICS = {
    "tasks": "num_tasks_finished",
    "rows_out": "rows_task_outputs_generated",
    "task_s": "task_completion_time_s",
    "transform_s": "block_transform_time_s",
    "scheduling_s": "task_scheduling_time_s",
}


def instrument_steps(engine: str, events: list[dict[str, Any]]) -> None:
    """Wrap the driver-side steps of ``engine`` so that each call appends (step, start, end) to ``events``."""
    import functools
    import importlib

    module_name, names = TIMED_STEPS[engine]
    module = importlib.import_module(module_name)
    for name in names:
        # a renamed step fails here, loudly (the smoke run in tests/bench catches it) rather than going untimed
        original = getattr(module, name)

        def timed(*args: Any, _original: Any = original, _name: str = name, **kwargs: Any) -> Any:
            start = time.time()
            try:
                return _original(*args, **kwargs)
            finally:
                events.append({"step": _name, "start": start, "end": time.time()})

        setattr(module, name, functools.wraps(original)(timed))


def _log_epoch(stamp: str) -> float:
    return datetime.datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp()


def _operator_name(text: str) -> str:
    """``TaskPoolMapOperator[MapBatches(f)] -> ...`` -> ``MapBatches(f) -> ...``."""
    import re

    return re.sub(r"\w+Operator\[(.*?)\](?= -> |$)", r"\1", text)


def parse_ray_data_log(path: Path) -> list[dict[str, Any]]:
    """Executions of Ray Data datasets from ``ray-data.log``: plan, start/end (epoch s), and per operator the
    final metrics of :data:`OPERATOR_METRICS` (task-seconds summed over the operator's tasks)."""
    import re

    datasets: list[dict[str, Any]] = []
    current: dict[str, Any] | None = None
    pending_operator = ""
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        if pending_operator and line.startswith("{") and current is not None:
            metrics = {}
            for key, metric in OPERATOR_METRICS.items():
                found = re.search(rf"'{metric}': ([0-9.eE+-]+)", line)
                metrics[key] = float(found.group(1)) if found else None
            current["operators"].append({"name": pending_operator, **metrics})
            pending_operator = ""
            continue
        stamp = re.match(_LOG_TIME, line)
        if not stamp:
            continue
        text = line[stamp.end() :]
        if text.startswith("Starting execution of Dataset"):
            current = {"start": _log_epoch(stamp.group(1)), "plan": "", "operators": []}
            datasets.append(current)
        elif text.startswith("Execution plan of Dataset") and current is not None:
            current["plan"] = _operator_name(text.split(": ", 1)[1].replace("InputDataBuffer[Input] -> ", ""))
        elif " completed. Operator Metrics:" in text and current is not None:
            name = text.split("Operator ", 1)[1].split(" completed.")[0]
            pending_operator = "" if name.startswith("InputDataBuffer") else _operator_name(name)
        elif "execution finished in" in text and current is not None:
            current["end"] = _log_epoch(stamp.group(1))
            current["seconds"] = float(text.split("execution finished in ")[1].split()[0])
    return [d for d in datasets if "seconds" in d]


def timeline(result: dict[str, Any], phase: str) -> list[dict[str, Any]]:
    """The Ray Data executions and timed driver steps of ``phase``, in start order, relative to its start."""
    start, end = result[phase]["start"], result[phase]["end"]
    items = [
        {
            "what": f"ray-data: {d['plan']}",
            "start": d["start"],
            "seconds": d["seconds"],
            "operators": d["operators"],
        }
        for d in result.get("ray_datasets", [])
        if start - 0.01 <= d["start"] <= end
    ]
    items += [
        {"what": f"driver: {e['step']}", "start": e["start"], "seconds": e["end"] - e["start"]}
        for e in result.get("steps", [])
        if start <= e["start"] <= end
    ]
    items.sort(key=lambda item: item["start"])
    for item in items:
        item["start"] = round(item["start"] - start, 2)
        item["seconds"] = round(item["seconds"], 2)
    return items


def _ray_data_logs(session_dir: str, into: Path) -> list[str]:
    """Copy the Ray Data logs of this session (per-operator stats) next to the outputs."""
    copied = []
    shutil.rmtree(into, ignore_errors=True)
    into.mkdir(parents=True)
    for path in sorted(Path(session_dir, "logs").glob("ray-data*")):
        if path.is_dir():
            shutil.copytree(path, into / path.name)
        else:
            shutil.copy2(path, into / path.name)
        copied.append(str(into / path.name))
    return copied


def run_engine(engine: str, input_dir: Path, work_dir: Path, num_cpus: int) -> dict[str, Any]:
    """One engine, prepare then features, in this (child) process; returns the measurements."""
    import pyarrow.parquet as pq

    from polyalign_ray.corpus.normalize import NormalizeSettings
    from polyalign_ray.corpus.readers import discover_read_units
    from polyalign_ray.schema import SPLITS

    output_dir = work_dir / f"output-{engine}"
    shutil.rmtree(output_dir, ignore_errors=True)
    units = discover_read_units([str(input_dir)])
    settings = NormalizeSettings()
    sampler = TreeSampler()
    sampler.start()
    result: dict[str, Any] = {"engine": engine, "units": len(units), "steps": []}
    instrument_steps(engine, result["steps"])
    per_split: dict[str, dict[str, float]] = {}
    try:
        if engine == "ray":
            import ray
            import ray.data

            def start_ray() -> str:
                ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)
                context = ray.data.DataContext.get_current()
                context.enable_progress_bars = False  # no progress bars in the child's log file
                context.enable_auto_log_stats = True  # per-operator stats in the Ray Data log
                return ray.get_runtime_context().get_node_id()

            from polyalign_ray.distributed.data import compute_features_with_ray, prepare_with_ray

            _, result["init"] = _timed_phase(sampler, "init", start_ray)
            session_dir = ray._private.worker._global_node.get_session_dir_path()
            manifest, result["prepare"] = _timed_phase(
                sampler,
                "prepare",
                lambda: prepare_with_ray(units, settings, output_dir, max_row_chars=MAX_ROW_CHARS),
            )
            features, result["features"] = _timed_phase(
                sampler, "features", lambda: compute_features_with_ray(output_dir)
            )
        else:
            from polyalign_ray.corpus.prepare import prepare_in_process
            from polyalign_ray.corpus.tables import load_split
            from polyalign_ray.features import features_table

            manifest, result["prepare"] = _timed_phase(
                sampler,
                "prepare",
                lambda: prepare_in_process(
                    units, settings, output_dir, max_row_chars=MAX_ROW_CHARS, show_progress=False
                ),
            )
            result["maxrss_after_prepare"] = _peak_rss_bytes()

            def local_features() -> Any:
                import pyarrow as pa

                tables = []
                for split in SPLITS:
                    start = time.perf_counter()
                    table = features_table(load_split(output_dir, split))
                    per_split[split] = {"records": table.num_rows, "seconds": time.perf_counter() - start}
                    tables.append(table)
                return pa.concat_tables(tables).sort_by([("split", "ascending"), ("id", "ascending")])

            features, result["features"] = _timed_phase(sampler, "features", local_features)
        sampler.set_phase("teardown")
        pq.write_table(features, output_dir / "features.parquet")  # for the cross-engine check, not timed
        if engine == "ray":
            ray.shutdown()  # flushes the Ray Data logs
            result["ray_data_logs"] = _ray_data_logs(session_dir, work_dir / "ray-data-logs")
            logs = sorted((work_dir / "ray-data-logs").rglob("ray-data.log"))
            result["ray_datasets"] = parse_ray_data_log(logs[0]) if logs else []
    finally:
        sampler.stop()
    result["manifest"] = {k: manifest[k] for k in (*COUNT_KEYS, "quarantine_reasons", "per_split")}
    result["manifest_seconds"] = manifest["seconds"]
    result["features"]["records"] = features.num_rows
    result["features_per_split"] = per_split
    result["maxrss"] = _peak_rss_bytes()
    result["peaks"] = {phase: dataclasses.asdict(p) for phase, p in sampler.peaks.items()}
    result["samples"] = sampler.samples
    result["output_dir"] = str(output_dir)
    result["timeline"] = {phase: timeline(result, phase) for phase in ("prepare", "features")}
    return result


# ---------------------------------------------------------------------------------------------------------------
# Reporting
# ---------------------------------------------------------------------------------------------------------------
def engine_line(child: dict[str, Any], meta: dict[str, Any]) -> dict[str, Any]:
    """The JSON line of one engine: what the tables show, in numbers."""
    prep, feat = child["prepare"], child["features"]
    engine_phases = ("prepare", "features")
    peaks = child["peaks"]
    line: dict[str, Any] = {
        "benchmark": "prepare_throughput",
        "engine": child["engine"],
        **{k: meta[k] for k in ("date", "records", "shards", "num_cpus", "machine")},
        "prepare_seconds": round(prep["seconds"], 2),
        "prepare_records_per_s": round(child["manifest"]["read"] / prep["seconds"], 1),
        "features_seconds": round(feat["seconds"], 2),
        "features_records_per_s": round(feat["records"] / feat["seconds"], 1),
        # per CPU-second of the engine's own processes: less sensitive to other load on the machine than wall time
        "prepare_records_per_cpu_s": round(child["manifest"]["read"] / max(prep["cpu_s_engine"], 1e-9), 1),
        "features_records_per_cpu_s": round(feat["records"] / max(feat["cpu_s_engine"], 1e-9), 1),
        "counts": {k: child["manifest"][k] for k in COUNT_KEYS},
        "quarantine_reasons": child["manifest"]["quarantine_reasons"],
        "per_split": child["manifest"]["per_split"],
        "cpu_s_engine": {p: round(child[p]["cpu_s_engine"], 1) for p in engine_phases},
        "cpu_s_other_processes": {p: round(child[p]["cpu_s_other"], 1) for p in engine_phases},
        # share of the machine's CPU capacity that other processes used during the stage
        "other_cpu_share": {
            p: round(child[p]["cpu_s_other"] / (child[p]["seconds"] * (os.cpu_count() or 1)), 3)
            for p in engine_phases
        },
        "loadavg1": {
            p: [round(child[p]["loadavg1_start"], 2), round(child[p]["loadavg1_end"], 2)]
            for p in engine_phases
        },
        "idle_wait": child.get("idle_wait"),
        "peak_driver_rss_mib": _mib(child["maxrss"]),
    }
    if child["engine"] == "ray":
        line["ray_init_seconds"] = round(child["init"]["seconds"], 2)
        line["peak_ray_procs_rss_sum_mib"] = _mib(max(peaks[p]["procs_rss"] for p in engine_phases))
        line["peak_ray_workers_rss_sum_mib"] = _mib(max(peaks[p]["workers_rss"] for p in engine_phases))
        line["peak_total_rss_mib"] = round(
            line["peak_driver_rss_mib"] + line["peak_ray_procs_rss_sum_mib"], 1
        )
        line["peak_object_store_shm_mib"] = _mib(max(peaks[p]["shm_used"] for p in engine_phases))
        line["ray_processes"] = max(peaks[p]["processes"] for p in engine_phases)
    else:
        line["peak_rss_after_prepare_mib"] = _mib(child["maxrss_after_prepare"])
        line["peak_total_rss_mib"] = line["peak_driver_rss_mib"]
        line["features_per_split"] = {
            s: {
                "records": v["records"],
                "records_per_s": round(v["records"] / v["seconds"], 1) if v["seconds"] else None,
            }
            for s, v in child["features_per_split"].items()
        }
    line["peak_footprint_mib"] = _mib(max(peaks[p]["footprint"] for p in engine_phases))
    line["timeline"] = child["timeline"]
    line["memory_note"] = MEMORY_NOTE
    return line


def _render_timeline(line: dict[str, Any], phase: str) -> list[str]:
    items = line["timeline"][phase]
    if not items:
        return []
    total = line[f"{phase}_seconds"]
    out = [f"{line['engine']} {phase} ({total} s), where the time goes (start +seconds):"]
    for item in items:
        out.append(f"  {item['start']:7.2f} +{item['seconds']:6.2f}  {item['what']}")
        for op in item.get("operators", []):
            # an operator's metrics line may lack a key (Ray Data's names and per-operator sets change)
            tasks, rows, task_s, transform_s, scheduling_s = (
                "?" if op.get(key) is None else format(op[key], spec)
                for key, spec in (
                    ("tasks", ".0f"),
                    ("rows_out", ".0f"),
                    ("task_s", ".1f"),
                    ("transform_s", ".1f"),
                    ("scheduling_s", ".1f"),
                )
            )
            out.append(
                f"                    {op['name']}: {tasks} tasks, {rows} rows out, {task_s} task-s = "
                f"UDF+block {transform_s} + scheduling/wait {scheduling_s} + rest"
            )
    rest = total - sum(item["seconds"] for item in items)
    where = "the read + normalize loop" if line["engine"] == "local" else "collecting results, counting"
    out.append(f"                   {rest:6.2f} s in the driver outside the steps above ({where}, ...)")
    return out


def render_report(
    lines: list[dict[str, Any]], meta: dict[str, Any], checks: dict[str, Any]
) -> tuple[str, str]:
    """The human-readable report: (corpus, machine and two Markdown tables; counts, checks, notes and
    timelines as plain text)."""
    gen, machine = meta["generation"], meta["machine"]
    by_engine = {line["engine"]: line for line in lines}
    local = by_engine.get("local")
    out = [
        f"- corpus: {gen['records']} rows in {gen['shards']} JSONL shard(s), {gen['bytes'] / 2**20:.1f} MiB "
        f"({gen['base_rows']} built-in rows x {gen['replicas']} perturbed replicas; "
        f"{sum(gen['malformed'].values())} malformed rows {gen['malformed']}); generated in "
        f"{gen['seconds']} s, not part of the engine figures",
        f"- machine: {machine['cpus']} CPUs, {machine['memory_gib']} GiB, {machine['processor']}, python "
        f"{machine['python']}, ray {machine['ray']}, pyarrow {machine['pyarrow']}; Ray num_cpus={meta['num_cpus']}",
        "",
        "| engine | prepare s | prepare rec/s | features s | features rec/s | vs local (prepare / features) "
        "| prepare rec/CPU-s | features rec/CPU-s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for line in lines:
        engine = line["engine"]
        if "ray_init_seconds" in line:
            engine += f" (ray.init {line['ray_init_seconds']} s, not included)"
        ratio = "-"
        if local and line is not local:
            ratio = (
                f"{line['prepare_records_per_s'] / local['prepare_records_per_s']:.2f}x / "
                f"{line['features_records_per_s'] / local['features_records_per_s']:.2f}x"
            )
        out.append(
            f"| {engine} | {line['prepare_seconds']} | {line['prepare_records_per_s']:.0f} "
            f"| {line['features_seconds']} | {line['features_records_per_s']:.0f} | {ratio} "
            f"| {line['prepare_records_per_cpu_s']:.0f} | {line['features_records_per_cpu_s']:.0f} |"
        )
    out += [
        "",
        "| engine | peak driver RSS MiB | peak Ray procs RSS sum MiB | peak total RSS MiB | peak footprint MiB "
        "| engine CPU s (prepare + features) | other processes' CPU s | load1 start -> end |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for line in lines:
        cpu, other, load = line["cpu_s_engine"], line["cpu_s_other_processes"], line["loadavg1"]
        out.append(
            f"| {line['engine']} | {line['peak_driver_rss_mib']} | {line.get('peak_ray_procs_rss_sum_mib', '-')} "
            f"| {line['peak_total_rss_mib']} | {line['peak_footprint_mib']} "
            f"| {cpu['prepare']} + {cpu['features']} | {other['prepare']} + {other['features']} "
            f"| {load['prepare'][0]} -> {load['features'][1]} |"
        )
    first = lines[0]
    agree = "equal across engines" if checks["counts_equal"] else "DIFFER between engines"
    tables, out = out, []
    out += [
        f"counts ({agree}): " + ", ".join(f"{k} {v}" for k, v in first["counts"].items()),
        f"quarantine reasons: {first['quarantine_reasons']}; per split: {first['per_split']}",
        f"checks: {json.dumps(checks)}",
        "",
        "prepare rec/s = input rows read / prepare wall seconds; features rec/s = kept records / feature-pass "
        "wall seconds; rec/CPU-s = the same records per CPU second of the engine's own processes (less affected by "
        "other load than wall time, but it does not show parallelism). Engine CPU s = CPU seconds of the engine's processes; other processes' CPU s = busy CPU "
        "seconds of the whole machine meanwhile minus the engine's (other users of the machine; 0 on a quiet one).",
        MEMORY_NOTE,
    ]
    for line in lines:
        for phase, share in line["other_cpu_share"].items():
            if share > OTHER_CPU_SHARE_WARNING:
                out.append(
                    f"WARNING: other processes used {share:.0%} of the machine's CPU during {line['engine']} "
                    f"{phase}: that figure is not representative of a quiet machine"
                )
        if line.get("idle_wait"):
            wait = line["idle_wait"]
            out.append(
                f"{line['engine']}: waited {wait['waited_s']} s for a quiet machine; CPU busy "
                f"{wait['cpu_busy_pct']}% just before the start"
            )
        if "features_per_split" in line:
            out.append(f"local features per split: {json.dumps(line['features_per_split'])}")
        if "peak_object_store_shm_mib" in line:
            out.append(
                f"ray: {line['ray_processes']} Ray processes at most; peak RSS sum of ray:: workers "
                f"{line['peak_ray_workers_rss_sum_mib']} MiB; peak object store use in /dev/shm "
                f"{line['peak_object_store_shm_mib']} MiB"
            )
    for line in lines:
        for phase in ("prepare", "features"):
            rendered = _render_timeline(line, phase)
            if rendered:
                out += ["", *rendered]
    return "\n".join(tables), "\n".join(out)


def compare_outputs(results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Counts, written records and features of the engines, compared (the engines must agree exactly)."""
    import pyarrow.parquet as pq

    from polyalign_ray.corpus.tables import load_split
    from polyalign_ray.schema import SPLITS

    engines = list(results)
    checks: dict[str, Any] = {"engines": engines}
    if len(engines) < 2:
        return {**checks, "counts_equal": True, "records_equal": None, "features_equal": None}
    a, b = (results[e] for e in engines[:2])
    checks["counts_equal"] = a["manifest"] == b["manifest"]
    start = time.perf_counter()
    checks["records_equal"] = all(
        load_split(a["output_dir"], s).equals(load_split(b["output_dir"], s)) for s in SPLITS
    )
    fa = pq.read_table(Path(a["output_dir"]) / "features.parquet")
    fb = pq.read_table(Path(b["output_dir"]) / "features.parquet")
    checks["features_equal"] = fa.equals(fb)
    checks["check_seconds"] = round(time.perf_counter() - start, 1)
    return checks


def wait_for_quiet_machine(max_wait_s: float, busy_below_pct: float = 20.0) -> dict[str, float]:
    """Wait (at most ``max_wait_s``) until the machine's CPU is less than ``busy_below_pct`` busy over 2 s, so
    that an engine does not start while something else (a test run, a build) is using the CPUs."""
    start = time.perf_counter()
    busy = psutil.cpu_percent(interval=2.0)
    while busy >= busy_below_pct and time.perf_counter() - start < max_wait_s:
        busy = psutil.cpu_percent(interval=2.0)
    return {"waited_s": round(time.perf_counter() - start, 1), "cpu_busy_pct": busy}


def machine_info(num_cpus: int) -> dict[str, Any]:
    from importlib.metadata import version  # versions without importing ray/pyarrow into this process

    return {
        "cpus": os.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "ray": version("ray"),
        "pyarrow": version("pyarrow"),
        "ray_num_cpus": num_cpus,
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--records", type=int, default=200_000, help="rows of the scaled corpus (default 200000)"
    )
    parser.add_argument(
        "--shards", type=int, default=8, help="JSONL files the corpus is written as (default 8)"
    )
    parser.add_argument(
        "--engines", default="ray,local", help="comma-separated, run in this order: ray,local"
    )
    parser.add_argument(
        "--out", default="", help="work folder (corpus, outputs, logs); default a temp folder"
    )
    parser.add_argument("--json", default="", help="append one JSON line per engine to this file")
    parser.add_argument(
        "--report", default="", help="append the table, command and date to this Markdown file"
    )
    parser.add_argument(
        "--num-cpus", type=int, default=2, help="num_cpus of the local Ray instance (default 2)"
    )
    parser.add_argument(
        "--wait-idle",
        type=float,
        default=60.0,
        help="before each engine, wait up to this many seconds for the CPUs to be < 20%% busy (default 60)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the built-in corpus and perturbations")
    parser.add_argument(
        "--keep", action="store_true", help="keep the temp work folder (kept anyway with --out)"
    )
    parser.add_argument("--child", choices=ENGINES, help=argparse.SUPPRESS)
    parser.add_argument("--child-result", default="", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.records < 1 or args.shards < 1 or args.num_cpus < 1:
        parser.error("--records, --shards and --num-cpus must be >= 1")
    args.engine_list = [e.strip() for e in args.engines.split(",") if e.strip()]
    unknown = [e for e in args.engine_list if e not in ENGINES]
    if unknown or not args.engine_list:
        parser.error(f"--engines: unknown {unknown}, choose from {ENGINES}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if args.child:
        result = run_engine(args.child, Path(args.out) / "input", Path(args.out), args.num_cpus)
        Path(args.child_result).write_text(json.dumps(result), encoding="utf-8")
        return 0

    command = "RAY_USAGE_STATS_ENABLED=0 " + shlex.join([".venv/bin/python", *sys.argv])
    work = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="prepare_throughput-"))
    work.mkdir(parents=True, exist_ok=True)
    input_dir = work / "input"
    shutil.rmtree(input_dir, ignore_errors=True)
    meta: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "records": args.records,
        "shards": args.shards,
        "num_cpus": args.num_cpus,
        "machine": machine_info(args.num_cpus),
        "loadavg_start": os.getloadavg(),
        "cpu_percent_idle_check": psutil.cpu_percent(interval=1.0),
    }
    print(f"work folder: {work}", flush=True)
    print(
        f"machine before the run: loadavg {meta['loadavg_start']}, CPU busy {meta['cpu_percent_idle_check']}% "
        "over 1 s",
        flush=True,
    )
    meta["generation"] = build_scaled_corpus(args.records, args.shards, input_dir, args.seed)
    meta["generation"]["peak_rss_mib"] = _mib(_peak_rss_bytes())
    print(f"generated: {json.dumps(meta['generation'])}", flush=True)

    results: dict[str, dict[str, Any]] = {}
    for engine in args.engine_list:
        result_path = work / f"result-{engine}.json"
        log_path = work / f"child-{engine}.log"
        cmd = [sys.executable, __file__, "--child", engine, "--child-result", str(result_path)]
        cmd += ["--out", str(work), "--num-cpus", str(args.num_cpus)]
        idle = wait_for_quiet_machine(args.wait_idle) if args.wait_idle > 0 else None
        print(f"running {engine} (log: {log_path}; machine before: {idle}) ...", flush=True)
        start = time.perf_counter()
        with log_path.open("w") as log:
            proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, check=False)
        if proc.returncode != 0:
            print(f"{engine} failed with exit code {proc.returncode}; see {log_path}", file=sys.stderr)
            print(log_path.read_text()[-4000:], file=sys.stderr)
            return 1
        results[engine] = json.loads(result_path.read_text(encoding="utf-8"))
        results[engine]["child_seconds"] = time.perf_counter() - start
        results[engine]["idle_wait"] = idle
        print(
            f"  {engine}: done in {results[engine]['child_seconds']:.1f} s (process start to exit)",
            flush=True,
        )

    checks = compare_outputs(results)
    meta["loadavg_end"] = os.getloadavg()
    lines = [engine_line(results[e], meta) for e in args.engine_list]
    for line in lines:
        line["generation"] = meta["generation"]
        line["checks"] = checks
        line["loadavg_run_start_end"] = [meta["loadavg_start"], meta["loadavg_end"]]
        line["cpu_percent_before_run"] = meta["cpu_percent_idle_check"]
        if "ray_data_logs" in results[line["engine"]]:
            line["ray_data_logs"] = results[line["engine"]]["ray_data_logs"]
    tables, notes = render_report(lines, meta, checks)
    print()
    print(tables)
    print()
    print(notes)
    print()
    for line in lines:
        print(json.dumps(line, ensure_ascii=False))
    if args.json:
        with open(args.json, "a", encoding="utf-8") as handle:
            for line in lines:
                handle.write(json.dumps(line, ensure_ascii=False) + "\n")
    if args.report:
        with open(args.report, "a", encoding="utf-8") as handle:
            handle.write(f"\n## {meta['date']}: {args.records} records, {args.shards} shard(s)\n\n")
            handle.write(f"```\n{command}\n```\n\n{tables}\n\n```text\n{notes}\n```\n")
    if not args.out and not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    if not (
        checks["counts_equal"]
        and checks.get("records_equal") is not False
        and checks.get("features_equal") is not False
    ):
        print("ENGINES DISAGREE: see checks above", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
