"""Bucket-Aware SFT on Ray Train with DeepSpeed ZeRO workers (2 CPU workers), on a small slice of the built-in
corpus and a tiny model: ZeRO-2 on two Ray nodes with one node lost mid-run, ZeRO-3, and the 1-worker reference;
the per-bucket shards the workers read, written by Ray Data."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from transformers import AutoModelForCausalLM

from polyalign_ray.bucket_shards import BucketShardReader, write_bucket_shards
from polyalign_ray.corpus.tables import load_split
from polyalign_ray.models import load_tokenizer
from polyalign_ray.sampler import bucket_shares
from polyalign_ray.sft_data import tokenize_records
from polyalign_ray.stages.data import ensure_base_model
from polyalign_ray.stages.sft import run_sft_stage
from tests.ray.tiny_run import TINY_MODEL, losses, sft_config

pytestmark = pytest.mark.ray


def test_two_nodes_lose_one_mid_sft_then_online_hdpo_spreads_over_three(
    data_dir, zero3_run, critic_bundle, tmp_path
) -> None:
    """Issue 15: a local multi-node cluster (``multinode_run.py``, its own process): head without CPUs, two worker
    nodes of 1 CPU. The two SFT workers run on the two worker nodes; at step 8 rank 1's node is removed and a
    fresh node added. Ray Train restarts the group from the latest checkpoint its controller registered (step 6,
    or step 3 if the step-6 report was still queued) onto the surviving and the new node, and the run completes.
    In fp32 ZeRO-2 and ZeRO-3 compute the same updates, so the curve equals the single-node ZeRO-3 run's (1e-4):
    the resumed steps repeat exactly what the uninterrupted run did. Then online HDPO from that model on the same
    cluster plus a third node: the two Train workers, the rollout generator and the critic actor run on three
    different worker nodes (the actors' nodes read from the actors themselves). And once more, with the actors'
    node removed at step 2 while rollouts are in flight and a fresh node added: the actors restart there, no
    critic item or rollout is lost or counted twice (the same pair counts), and the losses are the undisturbed
    run's (a rollout depends on its inputs, not on its actor or node)."""
    subprocess.run(
        [sys.executable, "-m", "tests.ray.multinode_run", str(data_dir), str(tmp_path), str(critic_bundle)],
        check=True,
        timeout=600,
        cwd=Path(__file__).resolve().parents[2],
    )
    result = json.loads((tmp_path / "multinode.json").read_text())
    run = tmp_path / "sft"
    summary, events = result["summary"], result["events"]
    assert result["error"] is None, result["error"]
    assert summary["resumed_from_step"] in (3, 6)
    assert summary["steps"] == 12
    starts = [json.loads(line) for line in (run / "workers.jsonl").read_text().splitlines()]
    first, *restarts = [starts[i : i + 2] for i in range(0, len(starts), 2)]
    # first attempt: one rank on each worker node, none on the head
    assert {w["node_id"] for w in first} == set(result["first_nodes"])
    assert all(w["resumed_from_step"] is None for w in first)
    # the last attempt: on the surviving node and the new one, resumed from the checkpoint
    last = restarts[-1]
    survivor = next(n for n in result["first_nodes"] if n != events["removed"])
    assert {w["node_id"] for w in last} == {survivor, events["added"]}
    assert {w["resumed_from_step"] for w in last} == {summary["resumed_from_step"]}
    assert events["head"] not in {w["node_id"] for w in starts}
    curve = losses(run)
    assert len(curve) == 12
    assert curve == pytest.approx(losses(zero3_run), rel=1e-4, abs=1e-4)
    assert sum(curve[-3:]) / 3 < sum(curve[:3]) / 3

    source = result["online"]["source"]
    trainers = {
        json.loads(line)["node_id"] for line in (tmp_path / "hdpo" / "workers.jsonl").read_text().splitlines()
    }
    actors = {*source["actor_nodes"]["generators"], *source["actor_nodes"]["critic"]}
    assert len(trainers) == 2 and len(actors) == 1 and not trainers & actors
    assert source["actor_nodes"]["trainer_rank_0"] in trainers
    assert events["head"] not in trainers | actors
    assert source["pairs_used"] == 4 * 4
    assert source["pairs_built"] == (
        source["pairs_used"] + source["pairs_dropped_stale"] + source["pairs_left_in_buffer"]
    )
    hit = result["online_hit"]["source"]
    assert (
        set(hit["actor_nodes"]["generators"])
        == set(hit["actor_nodes"]["critic"])
        == {events["actors_node_added"]}
    )
    for key in ("pairs_built", "pairs_used", "prompts", "candidates", "rollout_batches"):
        assert hit[key] == source[key], key
    assert losses(tmp_path / "hdpo_hit", "loss") == pytest.approx(losses(tmp_path / "hdpo", "loss"), rel=1e-6)
    assert len(losses(tmp_path / "hdpo", "loss")) == 4


def test_zero3_loss_falls_and_checkpoint_loads(zero3_run: Path) -> None:
    curve = losses(zero3_run)
    assert sum(curve[-3:]) / 3 < sum(curve[:3]) / 3
    model = AutoModelForCausalLM.from_pretrained(zero3_run / "final")
    assert model.config.hidden_size == 32
    assert all(p.numel() > 0 for p in model.parameters())
    # where the stage's time went before its first step (issue 18): every phase measured, inside fit()'s time
    startup = json.loads((zero3_run / "summary.json").read_text())["startup_s"]
    phases = ("workers_started", "worker_context", "model_and_data", "deepspeed_init")
    assert all(startup[p] >= 0 for p in phases) and startup["after_loop"] >= 0
    assert sum(startup[p] for p in phases) < startup["fit_total"]


def test_two_ranks_equal_one_rank_with_the_global_batch(ray_session, data_dir, zero3_run, tmp_path) -> None:
    """1 worker with micro-batch 4 draws the same global batches as 2 workers with micro-batch 2 (the sampler's
    global stream does not depend on the world size), and the loss is normalized by the global batch, so the
    loss curves agree. The 1-worker run is handed every row (``example_store=memory``), the ZeRO-3 run read its
    rows from per-bucket shards: the same draws either way."""
    run_sft_stage(
        sft_config(
            data_dir,
            tmp_path,
            "sft.num_workers=1",
            "sft.micro_batch_size=4",
            "sft.zero_stage=0",
            "sft.example_store=memory",
        )
    )
    assert not (tmp_path / "shards").exists()
    assert losses(tmp_path) == pytest.approx(losses(zero3_run), rel=1e-4, abs=1e-4)


def test_ray_data_shards_equal_the_in_process_ones_and_the_run_drew_the_split_shares(
    ray_session, data_dir, zero3_run, tmp_path, monkeypatch
) -> None:
    """The shards Ray Data wrote for the ZeRO-3 run (and again here with 16-row writer tasks, so buckets span
    several parts) hold the same rows, bucket by bucket and in the same order, as the split tokenized and written
    in one process; the run's target shares are p(b) ∝ n_b^α computed here from the train split."""
    import polyalign_ray.distributed.data as data_module

    config = sft_config(data_dir, tmp_path)
    model_path = ensure_base_model(config)
    split = load_split(data_dir, "train")
    table = tokenize_records(
        split, load_tokenizer(model_path), max_length=config.model.max_length, profile_conditioning=False
    )
    write_bucket_shards(table, tmp_path / "local", key_column="id")
    monkeypatch.setattr(data_module, "SHARD_ROWS_PER_PART", 16)
    index = data_module.write_tokenized_shards_with_ray(
        data_dir,
        model_path,
        tmp_path / "ray",
        max_length=config.model.max_length,
        profile_conditioning=False,
        train_history_turns=False,
    )
    assert any(len(b["parts"]) > 1 for b in index["buckets"].values())
    local = BucketShardReader(tmp_path / "local")
    for folder in (tmp_path / "ray", zero3_run / "shards" / "train"):
        reader = BucketShardReader(folder)
        assert reader.sizes() == local.sizes()
        draws = [(b, i) for b, n in local.sizes().items() for i in range(n)]
        assert reader.take(draws).to_pylist() == local.take(draws).to_pylist()

    counts: dict[str, int] = {}
    for bucket in split["bucket_id"].to_pylist():
        counts[bucket] = counts.get(bucket, 0) + 1
    alpha = config.sampler.alpha
    mass = {b: n**alpha for b, n in counts.items()}
    summary = json.loads((zero3_run / "summary.json").read_text())
    assert summary["bucket_shares_target"] == pytest.approx(
        {b: m / sum(mass.values()) for b, m in mass.items()}
    )
    assert summary["bucket_shares_target"] == pytest.approx(bucket_shares(counts, alpha))
    assert sum(summary["bucket_counts"].values()) == 12 * 4


def test_critic_stage_on_sft_samples_and_score_cli(critic_bundle: Path, tmp_path) -> None:
    """The critic learns from human answers and samples of the (tiny) SFT model, passes its gates, and
    `polyalign score` scores a file through the actor pool."""
    from polyalign_ray.cli import main

    summary = json.loads((critic_bundle / "summary.json").read_text())
    assert summary["gates_passed"]
    assert summary["heldout_spearman"] > 0.5
    assert summary["train_model"] == summary["train_human"] > 0
    rows = tmp_path / "rows.jsonl"
    rows.write_text(
        '{"response": "Hello there!", "bucket_id": "en|single|dialogue|short"}\n'
        '{"response": "你好你好你好你好你好你好你好你好", "bucket_id": "zh|single|dialogue|short"}\n'
    )
    out = tmp_path / "scored.jsonl"
    assert main(["score", "--critic", str(critic_bundle), "--input", str(rows), "--output", str(out)]) == 0
    scored = [json.loads(line) for line in out.read_text().splitlines()]
    assert [round(r["critic_distance"], 9) >= 0 for r in scored] == [True, True]


def test_the_same_folder_with_another_setting_trains_from_the_start(ray_session, data_dir, tmp_path) -> None:
    """Issue 13: Ray Train would restore a finished run found in the folder and train zero steps. A second
    `polyalign sft` into the same folder with another learning rate trains every step from the start (the first
    run's outputs moved to previous/). (A finished run started again with the same settings also starts over:
    tests/unit/test_training_runs.py.)"""
    from polyalign_ray.cli import main

    def sft(lr: str) -> int:
        args = ["sft", "--data", str(data_dir), "--output", str(tmp_path), *TINY_MODEL]
        return main(
            [
                *args,
                "sft.max_steps=5",
                "sft.warmup_steps=1",
                "sft.log_every=1",
                "sft.micro_batch_size=2",
                "sft.num_workers=1",  # what is tested is the run folder, not data parallelism
                f"sft.lr={lr}",
            ]
        )

    assert sft("0.003") == 0
    fast = losses(tmp_path)
    assert sft("0.00001") == 0
    slow = losses(tmp_path)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert (summary["steps"], summary["resumed_from_step"], len(slow)) == (5, 0, 5)
    assert slow[0] == pytest.approx(fast[0], rel=1e-5)  # same start, then the learning rates show
    assert slow[-1] > fast[-1] + 0.03
    assert losses(tmp_path, "lr")[-1] <= 1e-5 < losses(tmp_path / "previous", "lr")[-1]
    assert losses(tmp_path / "previous") == fast


def test_a_crashed_run_continues_onto_the_uninterrupted_curve(
    ray_session, data_dir, zero3_run, tmp_path
) -> None:
    """The run stops for good at step 7 (no restarts allowed: like a killed driver); running the same command
    again continues the same run from its latest checkpoint and ends on the uninterrupted curve."""
    settings = ("sft.zero_stage=2", "sft.checkpoint_every=3", "sft.fail_at_step=7")
    with pytest.raises(Exception):  # noqa: B017 - Ray Train's error type for a failed worker group
        run_sft_stage(sft_config(data_dir, tmp_path, *settings, "sft.max_failures=0"))
    assert not (tmp_path / "summary.json").exists()
    summary = run_sft_stage(sft_config(data_dir, tmp_path, *settings))
    assert summary["resumed_from_step"] in (3, 6)
    assert losses(tmp_path) == pytest.approx(losses(zero3_run), rel=1e-4, abs=1e-4)
    assert not (tmp_path / "previous").exists()
