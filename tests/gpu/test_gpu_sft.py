"""GPU checks (marker ``gpu``): skipped on machines without CUDA, run on a lent GPU machine or a GPU cluster."""

from __future__ import annotations

import pytest
import torch

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


def test_sft_steps_on_gpu_in_bf16(tmp_path) -> None:
    """The local SFT loop on the GPU in bfloat16: the loss falls over a few steps of a tiny model."""
    from polyalign_ray.config import ModelConfig, SamplerConfig, SFTConfig
    from polyalign_ray.loops.checkpoints import LocalCheckpointer
    from polyalign_ray.loops.sft import run_sft
    from polyalign_ray.loops.strategy import LocalStrategy, adamw_factory, scheduler_factory
    from polyalign_ray.models import builtin_model, train_builtin_tokenizer
    from polyalign_ray.sft_data import SFTExamples, tokenize_records
    from tests.loops.tiny import make_records

    records = make_records(64)
    tokenizer = train_builtin_tokenizer(records["response"].to_pylist(), 400, 96)
    model = builtin_model(ModelConfig(builtin_vocab_size=400, dtype="bfloat16", max_length=96), tokenizer)
    examples = SFTExamples.from_table(
        tokenize_records(records, tokenizer, max_length=96, profile_conditioning=False)
    )
    sft = SFTConfig(micro_batch_size=8, max_steps=20, lr=3e-3, warmup_steps=2)
    strategy = LocalStrategy(
        model,
        adamw_factory(sft.lr, sft.weight_decay),
        scheduler_factory(warmup_steps=2, total_steps=20, schedule="cosine", min_lr_ratio=0.1),
        max_grad_norm=1.0,
        device="cuda",
    )
    summary = run_sft(
        strategy,
        examples,
        tokenizer,
        sft=sft,
        sampler_config=SamplerConfig(),
        output_dir=tmp_path,
        checkpointer=LocalCheckpointer(tmp_path / "checkpoints", keep=1),
    )
    assert sum(summary["losses"][-3:]) < sum(summary["losses"][:3])
