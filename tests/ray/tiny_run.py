"""The tiny end-to-end setup the Ray tests share: a slice of the built-in corpus, a tiny model, short runs."""

from __future__ import annotations

import json
from pathlib import Path

from polyalign_ray.config import PolyAlignConfig, load_config

TINY_MODEL = [
    "model.builtin_hidden_size=32",
    "model.builtin_layers=2",
    "model.builtin_intermediate_size=64",
    "model.builtin_vocab_size=512",
    "model.max_length=96",
]


def sft_config(data_dir: Path, out: Path, *overrides: str) -> PolyAlignConfig:
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


def losses(out: Path, key: str = "last_loss") -> list[float]:
    return [json.loads(line)[key] for line in (out / "metrics.jsonl").read_text().splitlines()]
