"""The SFT loop on the local strategy: loss falls, gradient accumulation and resume invariants, outputs."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from polyalign_ray.bucket_shards import write_bucket_shards
from polyalign_ray.config import SamplerConfig, SFTConfig
from polyalign_ray.loops.checkpoints import LocalCheckpointer
from polyalign_ray.loops.sft import run_sft, total_optimizer_steps
from polyalign_ray.loops.strategy import LocalStrategy
from polyalign_ray.sft_data import SFTExamples, ShardedSFTExamples, tokenize_records
from tests.loops.tiny import TINY, make_records


def examples_of(tokenizer, n: int = 120) -> SFTExamples:
    table = tokenize_records(
        make_records(n), tokenizer, max_length=TINY.max_length, profile_conditioning=False
    )
    return SFTExamples.from_table(table)


def sgd(lr: float):
    return lambda params: torch.optim.SGD(params, lr=lr)


def strategy_for(model, sft: SFTConfig, total_steps: int, optimizer=None) -> LocalStrategy:
    return LocalStrategy.for_section(model, sft, total_steps, optimizer)


def train(
    model, tokenizer, sft: SFTConfig, out: Path, sampler=None, resume_from=None, examples=None, optimizer=None
):
    examples = examples or examples_of(tokenizer)
    total = total_optimizer_steps(sft, sum(examples.sizes().values()), 1)
    strategy = strategy_for(model, sft, total, optimizer)
    summary = run_sft(
        strategy,
        examples,
        tokenizer,
        sft=sft,
        sampler_config=sampler or SamplerConfig(),
        output_dir=out,
        checkpointer=LocalCheckpointer(out / "checkpoints", keep=5),
        resume_from=resume_from,
    )
    return summary, strategy


def test_loss_falls_and_outputs_are_written(tiny_model, tiny_tokenizer, tmp_path: Path) -> None:
    sft = SFTConfig(micro_batch_size=8, max_steps=30, lr=3e-3, warmup_steps=3, log_every=10)
    summary, _ = train(tiny_model, tiny_tokenizer, sft, tmp_path)
    first = sum(summary["losses"][:3]) / 3
    last = sum(summary["losses"][-3:]) / 3
    assert last < 0.8 * first, (first, last)
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [10, 20, 30]
    for key in ("loss", "lr", "grad_norm", "tokens_per_s", "bucket_counts", "bucket_loss"):
        assert key in lines[-1]
    assert sum(lines[-1]["bucket_counts"].values()) == 30 * 8
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "final")
    assert sum(p.numel() for p in reloaded.parameters()) == sum(p.numel() for p in tiny_model.parameters())
    assert json.loads((tmp_path / "summary.json").read_text())["steps"] == 30


@pytest.mark.parametrize("normalization", ["example", "token"])
def test_gradient_accumulation_4x1_equals_1x4(
    tiny_model, tiny_tokenizer, tmp_path: Path, normalization
) -> None:
    """One SGD step (lr 1, no clipping: the weight change is minus the gradient) over the same 4 examples, as 4
    micro-batches of 1 or 1 micro-batch of 4. The loss's denominator is fixed per step (examples or response
    tokens of the whole step), so the accumulated gradients agree to float32 round-off (atol 1e-6)."""
    examples = examples_of(tiny_tokenizer)
    model_b = copy.deepcopy(tiny_model)
    common = dict(
        max_steps=1,
        lr=1.0,
        warmup_steps=0,
        lr_schedule="constant",
        max_grad_norm=0.0,
        loss_normalization=normalization,
    )
    runs = []
    for model, micro, accum, name in ((tiny_model, 1, 4, "a"), (model_b, 4, 1, "b")):
        sft = SFTConfig(micro_batch_size=micro, grad_accum_steps=accum, **common)
        runs.append(train(model, tiny_tokenizer, sft, tmp_path / name, examples=examples, optimizer=sgd(1.0)))
    (summary_a, strategy_a), (summary_b, strategy_b) = runs
    assert summary_a["losses"][0] == pytest.approx(summary_b["losses"][0], rel=1e-5)
    moved = 0.0
    for (name, a), b in zip(strategy_a.model.named_parameters(), strategy_b.model.parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-6), name
        moved = max(moved, float((a - b).detach().abs().max()))
    assert moved < 1e-6


def test_resume_equals_uninterrupted(tiny_tokenizer, tmp_path: Path) -> None:
    """12 steps straight vs 6 steps, a fresh process state, then resume to 12: identical loss curves."""
    from polyalign_ray.models import builtin_model

    examples = examples_of(tiny_tokenizer)
    sft = SFTConfig(
        micro_batch_size=4, max_steps=12, checkpoint_every=6, log_every=3, lr=3e-3, warmup_steps=2
    )
    straight, _ = train(
        builtin_model(TINY, tiny_tokenizer), tiny_tokenizer, sft, tmp_path / "a", examples=examples
    )

    out = tmp_path / "b"
    first_half = SFTConfig(**{**sft.__dict__, "max_steps": 12, "fail_at_step": 0})
    # Run the first 6 steps by training a run of 12 whose checkpoint at step 6 we resume from.
    train(builtin_model(TINY, tiny_tokenizer), tiny_tokenizer, first_half, out, examples=examples)
    checkpoint = out / "checkpoints" / "step_000006"
    assert (checkpoint / "state.json").is_file()
    resumed, _ = train(
        builtin_model(TINY, tiny_tokenizer),
        tiny_tokenizer,
        sft,
        out,
        resume_from=checkpoint,
        examples=examples,
    )
    assert resumed["resumed_from_step"] == 6
    assert resumed["losses"] == pytest.approx(straight["losses"][6:], rel=1e-6, abs=1e-7)
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [3, 6, 9, 12]
    straight_lines = [json.loads(x) for x in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    assert lines[-1]["bucket_counts"] == straight_lines[-1]["bucket_counts"]


def test_a_sharded_run_equals_the_in_memory_run_and_resumes_onto_it(tiny_tokenizer, tmp_path: Path) -> None:
    """The same examples as per-bucket shards (rows read one draw at a time) and in memory: the sampler draws the
    same (bucket, index) pairs and both stores order a bucket by id, so the loss curves are identical; a sharded
    run resumed from its step-6 checkpoint with a fresh reader continues onto the in-memory curve."""
    from polyalign_ray.models import builtin_model

    table = tokenize_records(
        make_records(120), tiny_tokenizer, max_length=TINY.max_length, profile_conditioning=False
    )
    write_bucket_shards(table, tmp_path / "shards", key_column="id", rows_per_read=4)
    sft = SFTConfig(micro_batch_size=4, max_steps=12, checkpoint_every=6, lr=3e-3, warmup_steps=2)
    sampler = SamplerConfig(alpha=0.5)
    memory, _ = train(
        builtin_model(TINY, tiny_tokenizer),
        tiny_tokenizer,
        sft,
        tmp_path / "memory",
        sampler=sampler,
        examples=SFTExamples.from_table(table),
    )
    sharded, _ = train(
        builtin_model(TINY, tiny_tokenizer),
        tiny_tokenizer,
        sft,
        tmp_path / "sharded",
        sampler=sampler,
        examples=ShardedSFTExamples(str(tmp_path / "shards")),
    )
    assert sharded["losses"] == memory["losses"]
    assert sharded["bucket_counts"] == memory["bucket_counts"]
    resumed, _ = train(
        builtin_model(TINY, tiny_tokenizer),
        tiny_tokenizer,
        sft,
        tmp_path / "sharded",
        sampler=sampler,
        resume_from=tmp_path / "sharded" / "checkpoints" / "step_000006",
        examples=ShardedSFTExamples(str(tmp_path / "shards")),
    )
    assert resumed["resumed_from_step"] == 6
    assert resumed["losses"] == pytest.approx(memory["losses"][6:], rel=1e-6, abs=1e-7)


def test_alpha_zero_balances_buckets_and_alpha_one_follows_frequencies(tiny_model, tiny_tokenizer, tmp_path):
    examples = examples_of(tiny_tokenizer, n=200)
    sizes = examples.sizes()
    sft = SFTConfig(micro_batch_size=8, max_steps=60, lr=1e-3, log_every=60)
    equal, _ = train(
        copy.deepcopy(tiny_model),
        tiny_tokenizer,
        sft,
        tmp_path / "a0",
        SamplerConfig(alpha=0.0),
        examples=examples,
    )
    natural, _ = train(
        tiny_model, tiny_tokenizer, sft, tmp_path / "a1", SamplerConfig(alpha=1.0), examples=examples
    )
    draws = 60 * 8
    n = sum(sizes.values())
    for bucket, size in sizes.items():
        # binomial std of a share p over 480 draws is at most 0.023; allow 4 sigma
        assert equal["bucket_counts"][bucket] / draws == pytest.approx(1 / len(sizes), abs=0.09)
        assert natural["bucket_counts"][bucket] / draws == pytest.approx(size / n, abs=0.09)


def test_lora_trains_only_adapters_and_exports_merged_and_adapter(
    tiny_model, tiny_tokenizer, tmp_path
) -> None:
    from peft import PeftModel

    from polyalign_ray.config import LoraConfig
    from polyalign_ray.models import apply_lora, builtin_model

    base = copy.deepcopy(tiny_model)
    lora = apply_lora(tiny_model, LoraConfig(enabled=True, r=4, alpha=8, target_modules=("q_proj", "v_proj")))
    trainable = {n for n, p in lora.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    sft = SFTConfig(micro_batch_size=8, max_steps=8, lr=1e-2, warmup_steps=0)
    summary, _ = train(lora, tiny_tokenizer, sft, tmp_path)
    assert (tmp_path / "final" / "adapter" / "adapter_config.json").is_file()
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "final")
    changed = [
        name
        for (name, p), q in zip(merged.named_parameters(), base.parameters(), strict=True)
        if not torch.equal(p, q)
    ]
    # frozen weights are untouched: only the adapted projections differ from the base, by the merged adapters
    assert changed and all(("q_proj" in n or "v_proj" in n) for n in changed)
    reloaded = PeftModel.from_pretrained(builtin_model(TINY, tiny_tokenizer), tmp_path / "final" / "adapter")
    ids = torch.tensor([[1, 2, 3, 4]])
    assert torch.allclose(reloaded(input_ids=ids).logits, merged(input_ids=ids).logits, atol=1e-5)
    assert summary["steps"] == 8


def test_hold_at_step_waits_for_the_release_file_once(tmp_path: Path) -> None:
    """The multi-node test's hook: rank 0 announces the hold, every rank waits for the release file; once released,
    passing the same step again (after a restart) does not wait."""
    import threading
    import time

    from polyalign_ray.loops.checkpoints import maybe_hold

    maybe_hold(3, 2, 0, tmp_path, timeout_s=5)  # another step: no wait, no marker
    assert not (tmp_path / ".held_at_step_2").exists()

    def release() -> None:
        while not (tmp_path / ".held_at_step_3").exists():
            time.sleep(0.01)
        time.sleep(0.3)
        (tmp_path / ".release_step_3").touch()

    releaser = threading.Thread(target=release)
    releaser.start()
    maybe_hold(3, 3, 0, tmp_path, timeout_s=30)
    assert (tmp_path / ".release_step_3").exists()  # it returned on the release, not at once
    releaser.join()
    began = time.perf_counter()
    maybe_hold(3, 3, 1, tmp_path, timeout_s=30)
    assert time.perf_counter() - began < 10  # released already: no wait (a wait would last the 30 s timeout)
