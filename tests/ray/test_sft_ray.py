"""Bucket-Aware SFT on Ray Train with DeepSpeed ZeRO workers (2 CPU workers), on a small slice of the built-in
corpus and a tiny model: ZeRO-2 with a worker killed mid-run, ZeRO-3, and the 1-worker reference."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from transformers import AutoModelForCausalLM

from polyalign_ray.distributed.stages import run_sft_stage
from tests.ray.tiny_run import losses, sft_config

pytestmark = pytest.mark.ray


def test_zero2_survives_a_killed_worker_and_matches_zero3(ray_session, data_dir, zero3_run, tmp_path) -> None:
    """Rank 1 exits abruptly after step 7; Ray Train restarts the group from the latest checkpoint its controller
    registered (step 6, or step 3 if the step-6 report was still queued when the worker died) and the run
    completes. In fp32 ZeRO-2 and ZeRO-3 compute the same updates, so the two loss curves agree (1e-4), and the
    resumed steps repeat exactly what the uninterrupted run did."""
    summary = run_sft_stage(
        sft_config(data_dir, tmp_path, "sft.zero_stage=2", "sft.checkpoint_every=3", "sft.fail_at_step=7")
    )
    assert (tmp_path / ".failed_at_step_7").exists()
    assert summary["resumed_from_step"] in (3, 6)
    assert summary["steps"] == 12
    curve = losses(tmp_path)
    assert len(curve) == 12
    assert curve == pytest.approx(losses(zero3_run), rel=1e-4, abs=1e-4)
    assert sum(curve[-3:]) / 3 < sum(curve[:3]) / 3


def test_zero3_loss_falls_and_checkpoint_loads(zero3_run: Path) -> None:
    curve = losses(zero3_run)
    assert sum(curve[-3:]) / 3 < sum(curve[:3]) / 3
    model = AutoModelForCausalLM.from_pretrained(zero3_run / "final")
    assert model.config.hidden_size == 32
    assert all(p.numel() > 0 for p in model.parameters())


def test_two_ranks_equal_one_rank_with_the_global_batch(ray_session, data_dir, zero3_run, tmp_path) -> None:
    """1 worker with micro-batch 4 draws the same global batches as 2 workers with micro-batch 2 (the sampler's
    global stream does not depend on the world size), and the loss is normalized by the global batch, so the
    loss curves agree."""
    run_sft_stage(
        sft_config(data_dir, tmp_path, "sft.num_workers=1", "sft.micro_batch_size=4", "sft.zero_stage=0")
    )
    assert losses(tmp_path) == pytest.approx(losses(zero3_run), rel=1e-4, abs=1e-4)


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
