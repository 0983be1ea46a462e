"""A tiny model config and synthetic bilingual records for loop tests (built in-process, nothing downloaded)."""

from __future__ import annotations

import random

import pyarrow as pa

from polyalign_ray.config import ModelConfig
from polyalign_ray.corpus.tables import RECORD_SCHEMA
from polyalign_ray.schema import bucket_id, count_length_tokens, length_bin

TINY = ModelConfig(
    builtin_hidden_size=32,
    builtin_layers=2,
    builtin_heads=4,
    builtin_kv_heads=2,
    builtin_intermediate_size=64,
    builtin_vocab_size=400,
    max_length=96,
)
EN_WORDS = [
    "the",
    "cat",
    "sat",
    "on",
    "a",
    "mat",
    "and",
    "we",
    "like",
    "tea",
    "very",
    "much",
    "today",
    "it",
    "is",
    "sunny",
]
ZH_CHARS = "我们今天天气很好喜欢喝茶猫坐在垫子上"


def make_records(n: int, seed: int = 0) -> pa.Table:
    """``n`` records over three imbalanced buckets (en short single, zh short multi, en medium single)."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        kind = rng.choices(["en", "zh", "en_long"], weights=[6, 3, 1])[0]
        if kind == "zh":
            response = "".join(rng.choice(ZH_CHARS) for _ in range(rng.randint(5, 20))) + "。"
            history = [{"role": "user", "content": "你好"}, {"role": "assistant", "content": "你好！"}]
            language, track, family = "zh", "multi", "dialogue"
        else:
            k = rng.randint(45, 60) if kind == "en_long" else rng.randint(3, 12)
            response = " ".join(rng.choice(EN_WORDS) for _ in range(k)) + "."
            history, language, track, family = [], "en", "single", "assistant"
        n_tokens = count_length_tokens(response)
        rows.append(
            {
                "id": f"r{i:04d}",
                "source": "synthetic",
                "split": "train",
                "language": language,
                "track": track,
                "family": family,
                "prompt": "say something" if language == "en" else "说点什么",
                "context": "",
                "history": history,
                "response": response,
                "length_tokens": n_tokens,
                "length_bin": length_bin(n_tokens),
                "bucket_id": bucket_id(language, track, family, length_bin(n_tokens)),
                "system": "",
                "group_id": f"g{i}",
                "content_key": f"k{i}",
                "variety": "",
                "style": "",
                "license": "",
                "language_rule": "given",
                "family_rule": "given",
                "machine_translated": False,
                "origin_file": "mem",
                "origin_line": i + 1,
            }
        )
    return pa.Table.from_pylist(rows, schema=RECORD_SCHEMA)
