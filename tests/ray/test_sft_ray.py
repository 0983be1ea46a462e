"""Bucket-Aware SFT on Ray Train with DeepSpeed ZeRO workers (2 CPU workers), on a small slice of the built-in
corpus and a tiny model: ZeRO-2 with a worker killed mid-run, ZeRO-3, and the 1-worker reference."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from transformers import AutoModelForCausalLM

from polyalign_ray.config import load_config
from polyalign_ray.distributed.stages import run_prepare, run_references, run_sft_stage

pytestmark = pytest.mark.ray

TINY_MODEL = [
    "model.builtin_hidden_size=32",
    "model.builtin_layers=2",
    "model.builtin_intermediate_size=64",
    "model.builtin_vocab_size=512",
    "model.max_length=96",
]


@pytest.fixture(scope="module")
def data_dir(ray_session, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sftdata") / "data"
    config = load_config(None, [f"data.output_dir={out}", "data.builtin_max_per_bucket=15"])
    run_prepare(config, engine="local")
    run_references(config)
    return out


def sft_config(data_dir: Path, out: Path, *overrides: str):
    return load_config(
        None,
        [
            f"data.output_dir={data_dir}",
            f"sft.output_dir={out}",
            *TINY_MODEL,
            "sft.max_steps=12",
            "sft.log_every=1",
            "sft.lr=0.003",
            "sft.warmup_steps=2",
            "sft.micro_batch_size=2",
            *overrides,
        ],
    )


def losses(out: Path) -> list[float]:
    return [json.loads(line)["last_loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def zero3_run(ray_session, data_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("zero3")
    run_sft_stage(sft_config(data_dir, out, "sft.zero_stage=3"))
    return out


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


def test_critic_stage_on_sft_samples_and_score_cli(ray_session, data_dir, zero3_run, tmp_path) -> None:
    """The critic learns from human answers and samples of the (tiny) SFT model, passes its gates, and
    `polyalign score` scores a file through the actor pool."""
    from polyalign_ray.cli import main
    from polyalign_ray.distributed.stages import run_critic_stage

    config = sft_config(
        data_dir,
        zero3_run,
        f"critic.output_dir={tmp_path / 'critic'}",
        "generation.max_new_tokens=32",
        "generation.batch_size=32",
        "critic.epochs=8",
        "critic.hash_buckets=8192",
    )
    summary = run_critic_stage(config)
    assert summary["gates_passed"]
    assert summary["heldout_spearman"] > 0.5
    assert summary["train_model"] == summary["train_human"] > 0
    rows = tmp_path / "rows.jsonl"
    rows.write_text(
        '{"response": "Hello there!", "bucket_id": "en|single|dialogue|short"}\n'
        '{"response": "你好你好你好你好你好你好你好你好", "bucket_id": "zh|single|dialogue|short"}\n'
    )
    out = tmp_path / "scored.jsonl"
    assert (
        main(["score", "--critic", str(tmp_path / "critic"), "--input", str(rows), "--output", str(out)]) == 0
    )
    scored = [json.loads(line) for line in out.read_text().splitlines()]
    assert [round(r["critic_distance"], 9) >= 0 for r in scored] == [True, True]
