"""Session fixtures of the Ray tests: the tiny corpus slice, one ZeRO-3 SFT run and a critic trained on it."""

from __future__ import annotations

from pathlib import Path

import pytest

from polyalign_ray.config import load_config
from polyalign_ray.stages.critic import run_critic_stage
from polyalign_ray.stages.data import run_prepare, run_references
from polyalign_ray.stages.sft import run_sft_stage
from tests.ray.tiny_run import sft_config

CRITIC_OVERRIDES = [
    "generation.max_new_tokens=32",
    "generation.batch_size=32",
    "critic.epochs=8",
    "critic.hash_buckets=8192",
]


@pytest.fixture(scope="session")
def data_dir(ray_session, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sftdata") / "data"
    config = load_config(None, [f"data.output_dir={out}", "data.builtin_max_per_bucket=15"])
    run_prepare(config, engine="local")
    run_references(config)
    return out


@pytest.fixture(scope="session")
def zero3_run(ray_session, data_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("zero3")
    run_sft_stage(sft_config(data_dir, out, "sft.zero_stage=3"))
    return out


@pytest.fixture(scope="session")
def critic_bundle(ray_session, data_dir, zero3_run, tmp_path_factory) -> Path:
    """A critic trained on human answers and samples of the ZeRO-3 SFT model (it must pass its gates)."""
    out = tmp_path_factory.mktemp("critic") / "critic"
    run_critic_stage(sft_config(data_dir, zero3_run, f"critic.output_dir={out}", *CRITIC_OVERRIDES))
    return out
