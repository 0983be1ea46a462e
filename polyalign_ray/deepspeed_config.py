"""The DeepSpeed configuration generated from our config (a plain dict; DeepSpeed itself is imported only in
``distributed/deepspeed.py``).

Our loss already carries the whole step's normalization (see ``losses.weighted_sft_loss``), so the strategy calls
``engine.backward(loss * world_size, scale_wrt_gas=False)``: DeepSpeed's averaging over ranks and its division by
the accumulation steps are undone, and the accumulated gradient is exactly the gradient of the step's loss.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from polyalign_ray.config import ModelConfig, TrainingSection


def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """``override``'s keys win, recursively for nested mappings."""
    out = copy.deepcopy(dict(base))
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def deepspeed_config(sft: TrainingSection, model: ModelConfig, world_size: int) -> dict[str, Any]:
    """ZeRO stage, batch geometry, clipping and precision; fp16 is never used (unsupported on CPU, and bf16 is the
    safer choice on GPUs). ``sft`` is the SFT or the HDPO section (same geometry keys); its ``deepspeed_config``
    (a JSON file) overrides any key."""
    zero: dict[str, Any] = {"stage": sft.zero_stage}
    if sft.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": sft.use_gpu}
    if sft.zero_stage == 3:
        zero["stage3_gather_16bit_weights_on_model_save"] = True
    config: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": sft.micro_batch_size,
        "gradient_accumulation_steps": sft.grad_accum_steps,
        "train_batch_size": sft.global_batch_size(world_size),
        "gradient_clipping": sft.max_grad_norm,
        "zero_optimization": zero,
        "bf16": {"enabled": model.dtype == "bfloat16"},
        "fp16": {"enabled": False},
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }
    if sft.deepspeed_config:
        config = deep_merge(config, json.loads(Path(sft.deepspeed_config).read_text(encoding="utf-8")))
    return config
