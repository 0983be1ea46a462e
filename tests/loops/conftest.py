"""Fixtures: a tiny tokenizer and model for loop tests."""

from __future__ import annotations

import pytest

from polyalign_ray.models import builtin_model, train_builtin_tokenizer
from tests.loops.tiny import TINY, make_records


@pytest.fixture(scope="session")
def tiny_tokenizer():
    table = make_records(200, seed=1)
    texts = table["response"].to_pylist() + ["say something", "说点什么", "你好"] * 10
    return train_builtin_tokenizer(texts, TINY.builtin_vocab_size, TINY.max_length)


@pytest.fixture
def tiny_model(tiny_tokenizer):
    return builtin_model(TINY, tiny_tokenizer)
