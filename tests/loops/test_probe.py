"""The step probe: both loops report their sections and batches to it, so benchmarks time them without patching."""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator
from pathlib import Path

from polyalign_ray.config import HDPOConfig, SamplerConfig, SFTConfig
from polyalign_ray.hdpo_data import InMemoryPairs
from polyalign_ray.loops.checkpoints import LocalCheckpointer
from polyalign_ray.loops.hdpo import OfflinePairSource, run_hdpo
from polyalign_ray.loops.probe import PHASES
from polyalign_ray.loops.sft import run_sft
from tests.loops.test_hdpo_loop import make_pairs
from tests.loops.test_sft_loop import examples_of, strategy_for


class RecordingProbe:
    def __init__(self) -> None:
        self.events: list[str] = []
        self.rows: list[int] = []

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        assert name in PHASES, name
        self.events.append(name)
        yield

    def batch(self, batch) -> None:
        self.rows.append(int(batch["input_ids"].shape[0]))

    def step_end(self, step: int) -> None:
        self.events.append(f"end {step}")


def test_sft_loop_reports_every_section(tiny_model, tiny_tokenizer, tmp_path: Path) -> None:
    """2 steps of 2 micro-batches of 3: four batches, each forward -> loss -> backward, one optimizer step, the
    metrics reduction, a log line and (at the last step) a checkpoint per step."""
    sft = SFTConfig(micro_batch_size=3, grad_accum_steps=2, max_steps=2, log_every=1, checkpoint_every=0)
    probe = RecordingProbe()
    run_sft(
        strategy_for(tiny_model, sft, 2),
        examples_of(tiny_tokenizer),
        tiny_tokenizer,
        sft=sft,
        sampler_config=SamplerConfig(),
        output_dir=tmp_path,
        checkpointer=LocalCheckpointer(tmp_path / "checkpoints", keep=1),
        probe=probe,
    )
    micro = ["forward", "loss", "backward"] * 2
    step = ["batch", *micro, "optimizer_step", "metrics", "log"]
    assert probe.events == [*step, "end 1", *step, "checkpoint", "end 2"]
    assert probe.rows == [3, 3, 3, 3]


def test_hdpo_loop_reports_the_reference_pass(tiny_model, tiny_tokenizer, tmp_path: Path) -> None:
    """With a frozen reference copy each micro-batch has a reference section before the policy's forward; each
    batch holds 2B rows (chosen, then rejected)."""
    pairs = make_pairs(tiny_model, tiny_tokenizer, n=16, with_reference=False)
    hdpo = HDPOConfig(
        micro_batch_size=2, grad_accum_steps=1, max_steps=1, log_every=1, reference="frozen_copy"
    )
    source = OfflinePairSource(
        InMemoryPairs(pairs), pairs_per_rank=2, world_size=1, rank=0, seed=0, num_steps=1
    )
    probe = RecordingProbe()
    run_hdpo(
        strategy_for(tiny_model, hdpo, 1),
        source,
        tiny_tokenizer,
        hdpo=hdpo,
        total_steps=1,
        output_dir=tmp_path,
        checkpointer=LocalCheckpointer(tmp_path / "checkpoints", keep=1),
        reference_model=copy.deepcopy(tiny_model).eval(),
        probe=probe,
    )
    expected = [
        "batch",
        "batch",
        "reference",
        "forward",
        "loss",
        "backward",
        "optimizer_step",
        "metrics",
        "log",
    ]
    assert probe.events == [*expected, "checkpoint", "end 1"]
    assert probe.rows == [4]
