"""Text embeddings for MAUVE / C-MAUVE and TDM's latent coupling that handle Chinese without a model: hashed
character 1-3-grams (log counts, L2-normalized). A character n-gram view works the same for English words and
Chinese characters, and costs no download; the policy's hidden states can replace it for a model-based view."""

from __future__ import annotations

import unicodedata
import zlib
from collections.abc import Sequence

import numpy as np

DEFAULT_DIM = 512


def hashed_ngram_embeddings(texts: Sequence[str], *, dim: int = DEFAULT_DIM, max_n: int = 3) -> np.ndarray:
    """(len(texts), dim) rows: log(1 + count) of each hashed character n-gram (n = 1..max_n, whitespace collapsed),
    L2-normalized (an empty text is the zero row). crc32 hashing: identical on every machine and run."""
    out = np.zeros((len(texts), dim), dtype=np.float64)
    for row, text in enumerate(texts):
        chars = " ".join(unicodedata.normalize("NFKC", text).lower().split())
        for n in range(1, max_n + 1):
            for i in range(len(chars) - n + 1):
                out[row, zlib.crc32(chars[i : i + n].encode("utf-8")) % dim] += 1.0
    out = np.log1p(out)
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    return out / np.where(norms > 0, norms, 1.0)


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity of two (n, d) arrays of L2-normalized rows (0 for zero rows)."""
    return np.sum(a * b, axis=1)
