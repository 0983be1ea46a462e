"""Text representations for the critic.

``hashed_ngrams`` (default): character 1-3-grams and lowercased words, hashed (crc32, stable across processes
and machines, unlike Python's ``hash``) into ``hash_buckets`` ids, embedded and mean-pooled by the critic
(fastText-style). Character n-grams need no tokenizer and work the same for English and Chinese.

``frozen_lm``: mean-pooled last hidden states of a frozen causal LM (the SFT policy by default), computed once
per text and cached by a hash of the text.
"""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import Sequence
from typing import Any

import numpy as np
import regex
import torch

_WORD = regex.compile(r"\p{L}+|\p{N}+")
MAX_CHARS = 1000


def hashed_ngram_ids(text: str, hash_buckets: int) -> list[int]:
    """Ids of the character 1-, 2-, 3-grams and the words of ``text`` (first ``MAX_CHARS`` characters)."""
    text = text[:MAX_CHARS]
    grams = [f"1{text[i]}" for i in range(len(text))]
    grams += [f"2{text[i : i + 2]}" for i in range(len(text) - 1)]
    grams += [f"3{text[i : i + 3]}" for i in range(len(text) - 2)]
    grams += [f"w{w.lower()}" for w in _WORD.findall(text)]
    if not grams:
        grams = ["<empty>"]
    return [zlib.crc32(g.encode("utf-8")) % hash_buckets for g in grams]


def boundary_ngram_ids(text: str, hash_buckets: int) -> list[int]:
    """Ids of how the text starts and ends: its first and last 1-3 characters, marked as such. Mean-pooled with
    every other n-gram they would drown in a long answer; embedded on their own they show an answer cut off
    mid-sentence ("...and the" vs "...it."), which the answer's other n-grams (a subset of the full answer's) and
    the hand features do not."""
    text = text.strip()
    if not text:
        return [zlib.crc32(b"<empty-boundary>") % hash_buckets]
    grams = [f"^{text[:n]}" for n in (1, 2, 3) if len(text) >= n]
    grams += [f"{text[-n:]}$" for n in (1, 2, 3) if len(text) >= n]
    return [zlib.crc32(g.encode("utf-8")) % hash_buckets for g in grams]


def ngram_id_arrays(texts: Sequence[str], hash_buckets: int) -> list[np.ndarray]:
    """The n-gram ids of each text, computed once (hashing is the slow part of a training step)."""
    return [np.asarray(hashed_ngram_ids(t, hash_buckets), dtype=np.int64) for t in texts]


def boundary_id_arrays(texts: Sequence[str], hash_buckets: int) -> list[np.ndarray]:
    return [np.asarray(boundary_ngram_ids(t, hash_buckets), dtype=np.int64) for t in texts]


def ngram_batch(id_arrays: Sequence[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    """(flat ids, offsets) for ``torch.nn.EmbeddingBag``."""
    lengths = np.asarray([len(a) for a in id_arrays], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]) if len(lengths) else lengths
    return torch.from_numpy(np.concatenate(id_arrays)), torch.from_numpy(offsets)


class FrozenLMEncoder:
    """Mean-pooled last hidden states of a frozen causal LM, cached per text."""

    def __init__(self, model: Any, tokenizer: Any, *, batch_size: int = 16, max_length: int = 256):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.max_length = max_length
        self.dim = int(model.config.hidden_size)
        self._cache: dict[str, np.ndarray] = {}

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        keys = [hashlib.blake2b(t.encode("utf-8"), digest_size=16).hexdigest() for t in texts]
        missing = sorted({k: t for k, t in zip(keys, texts, strict=True) if k not in self._cache}.items())
        for start in range(0, len(missing), self.batch_size):
            chunk = missing[start : start + self.batch_size]
            encoded = self.tokenizer(
                [t or " " for _, t in chunk],
                return_tensors="pt",
                padding=True,
                truncation=True,
                max_length=self.max_length,
                add_special_tokens=False,
            )
            with torch.no_grad():
                hidden = self.model(**encoded, output_hidden_states=True).hidden_states[-1].float()
            mask = encoded["attention_mask"].unsqueeze(-1).float()
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
            for (key, _), vector in zip(chunk, pooled.numpy(), strict=True):
                self._cache[key] = vector
        return np.stack([self._cache[k] for k in keys]) if keys else np.zeros((0, self.dim), dtype=np.float32)
