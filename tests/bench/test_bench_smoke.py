"""Every benchmark runs on main: each script at tiny sizes, in seconds, as a user would start it. Nothing about
speed is asserted (performance lives in bench/results/); a script that no longer runs, or whose output lost its
tables, fails here instead of rotting until someone re-measures (issue 18)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
# The benchmarks' data and model generators, tiny (the real ones are the shared TRL baseline script's).
STUB = REPO / "tests" / "fixtures" / "bench_baseline_stub.py"
TINY_TRAINING = ["--steps", "2", "--warmup", "1", "--pairs", "24", "--corpus-sentences", "400"]
TINY_TRAINING += ["--max-length", "64", "--shared-script", str(STUB)]


def run_bench(script: str, *args: str, timeout: int = 300) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "PYTHONHASHSEED": "0"}
    result = subprocess.run(
        [sys.executable, str(REPO / "bench" / script), *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert result.returncode == 0, f"{script} exited {result.returncode}:\n{result.stderr[-3000:]}"
    return result


def test_sft_throughput_runs(tmp_path: Path) -> None:
    report = tmp_path / "sft.md"
    out = run_bench(
        "sft_throughput.py", "--skip-trl", "--ours", "gc_off,gc_off+all_logits", "--report", str(report),
        "--retries", "0", *TINY_TRAINING,
    )  # fmt: skip
    runs = [json.loads(line) for line in out.stdout.splitlines() if line.startswith('{"side"')]
    assert {r["logits"] for r in runs} == {"labelled", "all"}
    assert all(r["tokens_per_s"] > 0 and r["mfu_6n"] > 0 for r in runs)
    labelled = next(r for r in runs if r["logits"] == "labelled")
    assert labelled["logit_rows_per_step_mean"] < labelled["padded_tokens_per_step_mean"]
    text = report.read_text()
    assert "| ours run_sft, GC off |" in text and "Model FLOP utilization" in text and "| backward |" in text


def test_hdpo_throughput_runs(tmp_path: Path) -> None:
    report = tmp_path / "hdpo.md"
    run_bench(
        "hdpo_throughput.py", "--skip-trl", "--ours", "precompute,frozen_copy", "--report", str(report),
        "--retries", "0", *TINY_TRAINING,
    )  # fmt: skip
    text = report.read_text()
    assert "ours run_hdpo precompute" in text and "ours run_hdpo frozen_copy" in text
    assert "| reference |" in text or " reference |" in text


def test_interval_coverage_runs(tmp_path: Path) -> None:
    run_bench(
        "interval_coverage.py", "--repeats", "4", "--samples", "40", "--out", str(tmp_path / "coverage")
    )
    rows = json.loads((tmp_path / "coverage.json").read_text())["rows"]
    assert len(rows) == 15 and all(0 <= r["coverage"] <= 1 for r in rows)


def test_data_scale_runs(tmp_path: Path) -> None:
    report, lines = tmp_path / "scale.md", tmp_path / "scale.jsonl"
    run_bench(
        "data_scale.py", "--base-records", "200", "--scales", "1", "--stores", "shards", "--steps", "2",
        "--prepare-plans", "driver", "--report", str(report), "--jsonl", str(lines), "--trace-python-heap",
    )  # fmt: skip
    rows = [json.loads(line) for line in lines.read_text().splitlines()]
    assert [r["what"] for r in rows] == ["prepare (driver plan)", "sft shards"]
    assert rows[0]["read"] == 200 and rows[1]["steps"] == 2 and rows[1]["train_workers_seen"] == 2
    assert "| 1x | 200 | sft shards |" in report.read_text()
    assert 0 < rows[0]["driver_python_heap_mib"] <= rows[0]["driver_python_heap_peak_mib"]


def test_critic_ood_runs(tmp_path: Path) -> None:
    """The critic benchmark on a tiny prepared corpus; stand-in SFT samples (each prompt's "sample" is another
    record's human answer) are enough for it: it needs model answers, not a model."""
    from polyalign_ray.config import load_config
    from polyalign_ray.corpus.tables import load_split
    from polyalign_ray.stages.data import run_prepare, run_references

    run = tmp_path / "run"
    config = load_config(None, [f"data.output_dir={run / 'data'}", "data.builtin_max_per_bucket=15"])
    run_prepare(config, engine="local")
    run_references(config)
    rows = [r for split in ("train", "val") for r in load_split(run / "data", split).to_pylist()]
    (run / "critic").mkdir()
    with (run / "critic" / "samples.jsonl").open("w", encoding="utf-8") as out:
        for i, row in enumerate(rows):
            out.write(
                json.dumps({"id": row["id"], "samples": [rows[(i + 7) % len(rows)]["response"]]}) + "\n"
            )
    tiny = "tiny=critic.epochs=2,critic.hash_buckets=4096,critic.min_spearman=-1,critic.support_exclude=[family_loglik]"
    run_bench(
        "critic_ood.py", "--run", str(run), "--out", str(tmp_path / "ood"), "--work", str(tmp_path / "work"),
        "--seeds", "0", "--variant", tiny,
    )  # fmt: skip
    results = json.loads((tmp_path / "ood.json").read_text())["results"]["tiny"]
    assert results["overrides"][-1] == "critic.support_exclude=[family_loglik]"
    altered = results["hand_altered"]
    assert {"repeated", "cut", "other_bucket", "relabeled"} <= set(altered)
    assert all(0.0 <= altered[k]["critic_farther_rate"]["mean"] <= 1.0 for k in ("repeated", "cut"))
    assert "| tiny |" in (tmp_path / "ood.md").read_text()
    by_case = json.loads((tmp_path / "ood.json").read_text())["results"]["tiny"]["seeds"]["0"]["hand_altered"]
    cut_cases = by_case["by_case"]["cut"]
    assert sum(c["n"] for c in cut_cases.values()) == altered["cut"]["n"]


@pytest.mark.ray
def test_ray_train_noop_runs(tmp_path: Path) -> None:
    """Its own local Ray instance in a child process (the suite's session instance is not used)."""
    env_out = tmp_path / "noop.json"
    run_bench("ray_train_noop.py", "--workers", "1", "--fits", "1", "--num-cpus", "1", "--out", str(env_out))
    fit = json.loads(env_out.read_text())["fits"][0]
    assert 0 < fit["to_body_s"] < fit["fit_s"] and fit["after_body_s"] > 0


@pytest.mark.ray
def test_prepare_throughput_runs(tmp_path: Path) -> None:
    """Both engines on a tiny scaled corpus, each in its own child process; they must count alike."""
    lines, report = tmp_path / "prepare.jsonl", tmp_path / "prepare.md"
    run_bench(
        "prepare_throughput.py", "--records", "3000", "--shards", "2", "--engines", "ray,local",
        "--wait-idle", "0", "--out", str(tmp_path / "work"), "--json", str(lines), "--report", str(report),
    )  # fmt: skip
    rows = [json.loads(line) for line in lines.read_text().splitlines()]
    assert [r["engine"] for r in rows] == ["ray", "local"]
    assert rows[0]["counts"] == rows[1]["counts"] and rows[0]["counts"]["read"] >= 3000
    assert all(r["prepare_records_per_s"] > 0 and r["features_records_per_s"] > 0 for r in rows)
    assert "| ray |" in report.read_text() and "| local |" in report.read_text()


@pytest.mark.ray
def test_critic_pool_runs(tmp_path: Path) -> None:
    """The pool against the in-process scorer at tiny sizes: the bench's own check (the pool's scores equal the
    scorer's) must hold."""
    lines = tmp_path / "pool.jsonl"
    run_bench(
        "critic_pool.py", "--items", "400", "--repeats", "1", "--actors", "1", "--latency-calls", "5",
        "--phase-items", "100", "--overlap-items", "128", "--overlap-actors", "1", "--overlap-rounds", "1",
        "--producers", "sleep", "--jsonl", str(lines), "--report", str(tmp_path / "pool.md"),
    )  # fmt: skip
    rows = [json.loads(line) for line in lines.read_text().splitlines()]
    summary = rows[-1]
    assert summary["kind"] == "summary" and summary["checks_failed"] == 0
    assert {r["kind"] for r in rows[:-1]} >= {"throughput", "latency", "overlap"}
    assert "critic_pool" in summary["bench"]


@pytest.mark.ray
def test_sft_scaling_runs(tmp_path: Path) -> None:
    """One tiny configuration (1 worker, ZeRO-0, 3 steps) on a slice of the built-in corpus."""
    lines, report = tmp_path / "scaling.jsonl", tmp_path / "scaling.md"
    tiny = [
        "model.builtin_hidden_size=32",
        "model.builtin_intermediate_size=64",
        "model.builtin_vocab_size=512",
    ]
    run_bench(
        "sft_scaling.py", "--configs", "1:0", "--steps", "3", "--exclude", "1", "--max-per-bucket", "15",
        "--num-cpus", "2", "--no-warmup-fit", "--retries", "0", "--out", str(tmp_path / "work"),
        "--jsonl", str(lines), "--report", str(report), *[arg for t in tiny for arg in ("--set", t)],
    )  # fmt: skip
    rows = [json.loads(line) for line in lines.read_text().splitlines()]
    runs = [r for r in rows if not r.get("summary")]
    assert [(r["workers"], r["zero_stage"], r["steps"]) for r in runs] == [(1, 0, 3)], rows
    assert runs[0]["tokens_per_s"] > 0 and runs[0]["fit_wall_s"] >= runs[0]["loop_wall_s"]
    assert rows[-1].get("summary") and "1:0" in report.read_text()


@pytest.mark.ray
def test_hdpo_online_runs(tmp_path: Path) -> None:
    """Offline and online HDPO on a tiny setup (prepare, a 2-step SFT, a critic without gates), 3 steps each, one
    worker, and the generator probe: the online path through the bench (rollouts, critic pool, pairs) runs."""
    lines, report = tmp_path / "online.jsonl", tmp_path / "online.md"
    tiny = [
        "model.builtin_hidden_size=32",
        "model.builtin_intermediate_size=64",
        "model.builtin_vocab_size=512",
        "critic.epochs=2",
        "critic.hash_buckets=4096",
        "critic.min_spearman=-1",
        "critic.min_prediction_std_ratio=0",
        "critic.min_corruption_farther_rate=0",
    ]
    run_bench(
        "hdpo_online.py", "--variants", "offline,online", "--steps", "3", "--exclude", "1", "--workers", "1",
        "--micro-batch-size", "2", "--max-per-bucket", "8", "--max-prompts", "16", "--max-new-tokens", "8",
        "--sft-steps", "2", "--probe-batches", "1", "--probe-k", "2", "--retries", "0",
        "--work", str(tmp_path / "work"), "--jsonl", str(lines), "--report", str(report),
        *[arg for t in tiny for arg in ("--set", t)],
    )  # fmt: skip
    rows = [json.loads(line) for line in lines.read_text().splitlines()]
    runs = {r["variant"]: r for r in rows if "variant" in r}
    assert set(runs) == {"offline", "online"}, rows
    assert all(r["step_s_median"] > 0 for r in runs.values())
    assert "| offline |" in report.read_text() and "| online |" in report.read_text()
