"""The DeepSpeed config generated from ours."""

from __future__ import annotations

import json
from pathlib import Path

from polyalign_ray.config import ModelConfig, SFTConfig
from polyalign_ray.deepspeed_config import deep_merge, deepspeed_config


def test_batch_geometry_zero_and_precision() -> None:
    config = deepspeed_config(
        SFTConfig(micro_batch_size=4, grad_accum_steps=3, zero_stage=3), ModelConfig(), 2
    )
    assert config["train_batch_size"] == 24
    assert config["train_micro_batch_size_per_gpu"] == 4
    assert config["gradient_accumulation_steps"] == 3
    assert config["zero_optimization"] == {"stage": 3, "stage3_gather_16bit_weights_on_model_save": True}
    assert config["fp16"] == {"enabled": False}
    assert config["bf16"] == {"enabled": False}
    assert deepspeed_config(SFTConfig(), ModelConfig(dtype="bfloat16"), 1)["bf16"] == {"enabled": True}


def test_offload_and_user_override(tmp_path: Path) -> None:
    path = tmp_path / "ds.json"
    path.write_text(json.dumps({"zero_optimization": {"reduce_bucket_size": 1000}, "gradient_clipping": 0.5}))
    config = deepspeed_config(
        SFTConfig(zero_stage=2, offload_optimizer=True, deepspeed_config=str(path)), ModelConfig(), 1
    )
    assert config["zero_optimization"] == {
        "stage": 2,
        "offload_optimizer": {"device": "cpu", "pin_memory": False},
        "reduce_bucket_size": 1000,
    }
    assert config["gradient_clipping"] == 0.5


def test_deep_merge_does_not_mutate() -> None:
    base = {"a": {"b": 1, "c": 2}}
    merged = deep_merge(base, {"a": {"b": 5}})
    assert merged == {"a": {"b": 5, "c": 2}}
    assert base == {"a": {"b": 1, "c": 2}}
