"""Per-response features that mean the same thing in English and Chinese (METHOD.md section 2).

Length is counted in the language-neutral length tokens of :mod:`polyalign_ray.schema`; word-level statistics
(lexical diversity, n-gram repetition, entropy, word length) use *words*: letter runs for alphabetic scripts and
jieba words for Chinese, never whitespace splits (Chinese has no spaces, so whitespace "words" would make every
Chinese sentence one word). Counts are log1p-transformed so that a few very long answers do not dominate the
quantiles; ratios stay in [0, 1].
"""

from __future__ import annotations

import functools
import logging
import math
from collections import Counter
from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import regex

from polyalign_ray.schema import count_length_tokens

FEATURE_NAMES: tuple[str, ...] = (
    "log_length_tokens",
    "log_chars",
    "log_sentences",
    "log_mean_sentence_tokens",
    "root_ttr",
    "distinct_1",
    "distinct_2",
    "repeated_trigram_ratio",
    "word_entropy",
    "log_mean_word_chars",
    "punctuation_density",
    "question_ratio",
    "exclamation_ratio",
    "log_newlines",
    "log_list_markers",
    "log_code_markers",
    "digit_ratio",
    "cjk_ratio",
    "latin_ratio",
)
NUM_FEATURES = len(FEATURE_NAMES)

_HAN_RUN = regex.compile(r"\p{Han}+")
_WORD_PIECES = regex.compile(r"(?V1)\p{Han}+|[\p{L}\p{M}\p{Nd}--\p{Han}]+(?:['’][\p{L}\p{M}--\p{Han}]+)*")
# A list number at the start of a line ("1. ") is not the end of a sentence.
_SENTENCE_END = regex.compile(
    r"(?<!^[ \t]*\d{1,3})[.!?。！？…]+[\"'”’）)]*(?=\s|$)|[。！？]+|\n+", flags=regex.M
)
_PUNCT = regex.compile(r"[\p{P}\p{S}]")
# A list item: a bullet or "N." / "N)" followed by whitespace (so "3.14", "-5" or "**bold**" are not items), or a
# CJK enumerator ("一、", "（2）") which needs no space after it.
_LIST_MARKER = regex.compile(
    r"(?m)^[ \t]*(?:(?:[-*•·]|\d{1,3}[.)])[ \t]+\S|(?:\d{1,3}、|[（(]\d{1,3}[)）]|[一二三四五六七八九十]+[、.])[ \t]*\S)"
)
_CODE_FENCE = regex.compile(r"```")
_INLINE_CODE = regex.compile(r"`[^`\n]+`")
_DIGIT = regex.compile(r"\p{Nd}")
_LETTER = regex.compile(r"\p{L}")
_HAN = regex.compile(r"\p{Han}")
_LATIN = regex.compile(r"\p{Latin}")


@functools.lru_cache(maxsize=1)
def _jieba():
    """jieba, initialized once per process (loading its dictionary takes about a second)."""
    import jieba

    jieba.setLogLevel(logging.WARNING)
    jieba.initialize()
    return jieba


def words(text: str) -> list[str]:
    """Words for word-level features: lowercased letter/digit runs, and jieba's segmentation of Chinese runs."""
    out: list[str] = []
    for piece in _WORD_PIECES.findall(text):
        if _HAN_RUN.fullmatch(piece):
            out.extend(w for w in _jieba().lcut(piece, HMM=True) if w.strip())
        else:
            out.append(piece.lower())
    return out


def sentences(text: str) -> list[str]:
    """Sentences: split after ., !, ?, their CJK forms and ellipses, and at line breaks; empty pieces dropped."""
    pieces, start = [], 0
    for match in _SENTENCE_END.finditer(text):
        pieces.append(text[start : match.end()])
        start = match.end()
    pieces.append(text[start:])
    return [p.strip() for p in pieces if p.strip() and regex.search(r"[\p{L}\p{N}]", p)]


def _distinct(items: Sequence, n: int) -> float:
    grams = [tuple(items[i : i + n]) for i in range(len(items) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 1.0


def _entropy_bits(items: Sequence[str]) -> float:
    if not items:
        return 0.0
    counts = Counter(items)
    total = len(items)
    return -sum(c / total * math.log2(c / total) for c in counts.values())


def response_features(text: str) -> np.ndarray:
    """The feature vector of one response, in the order of :data:`FEATURE_NAMES`."""
    num_tokens = count_length_tokens(text)
    sents = sentences(text)
    num_sentences = max(len(sents), 1)
    ws = words(text)
    num_words = len(ws)
    non_space = sum(1 for ch in text if not ch.isspace())
    letters = len(_LETTER.findall(text))
    ends = [s.rstrip("\"'”’）) ") for s in sents]
    values = (
        math.log1p(num_tokens),
        math.log1p(len(text)),
        math.log1p(len(sents)),
        math.log1p(num_tokens / num_sentences),
        len(set(ws)) / math.sqrt(num_words) if num_words else 0.0,
        _distinct(ws, 1) if ws else 0.0,
        _distinct(ws, 2),
        1.0 - _distinct(ws, 3),
        _entropy_bits(ws),
        math.log1p(sum(len(w) for w in ws) / num_words) if num_words else 0.0,
        len(_PUNCT.findall(text)) / num_tokens if num_tokens else 0.0,
        sum(1 for s in ends if s.endswith(("?", "？"))) / num_sentences,
        sum(1 for s in ends if s.endswith(("!", "！"))) / num_sentences,
        math.log1p(text.count("\n")),
        math.log1p(len(_LIST_MARKER.findall(text))),
        math.log1p(len(_CODE_FENCE.findall(text)) // 2 + len(_INLINE_CODE.findall(text))),
        len(_DIGIT.findall(text)) / non_space if non_space else 0.0,
        len(_HAN.findall(text)) / letters if letters else 0.0,
        len(_LATIN.findall(text)) / letters if letters else 0.0,
    )
    return np.asarray(values, dtype=np.float64)


def features_matrix(texts: Sequence[str]) -> np.ndarray:
    """Features of many responses: an array of shape (len(texts), NUM_FEATURES)."""
    if not texts:
        return np.zeros((0, NUM_FEATURES), dtype=np.float64)
    return np.stack([response_features(t) for t in texts])


FEATURE_KEY_COLUMNS: tuple[str, ...] = ("id", "split", "bucket_id", "length_tokens")


def features_table_schema() -> pa.Schema:
    """Schema of a features table: the record keys, then one float column per feature."""
    return pa.schema(
        [
            ("id", pa.string()),
            ("split", pa.string()),
            ("bucket_id", pa.string()),
            ("length_tokens", pa.int64()),
            *((name, pa.float64()) for name in FEATURE_NAMES),
        ]
    )


def features_table(records: pa.Table) -> pa.Table:
    """Records (any table with the key columns and ``response``) -> a features table."""
    matrix = features_matrix(records["response"].to_pylist())
    columns = [records[c] for c in FEATURE_KEY_COLUMNS] + [
        pa.array(matrix[:, j]) for j in range(NUM_FEATURES)
    ]
    return pa.Table.from_arrays(columns, schema=features_table_schema())


def features_as_matrix(table: pa.Table) -> np.ndarray:
    """The feature columns of a features table as an (n, F) float array."""
    if table.num_rows == 0:
        return np.zeros((0, NUM_FEATURES), dtype=np.float64)
    return np.column_stack([table[name].to_numpy() for name in FEATURE_NAMES]).astype(np.float64)
