"""Tokens for the text metrics: one token per CJK character, one per word elsewhere.

Chinese is tokenized by character (METHOD.md section 6): splitting it on whitespace makes a whole sentence one token,
so F1 collapses to exact match and diversity means nothing (a defect of the authors' code). Text is NFKC-normalized
(full-width forms become ASCII) and lower-cased, punctuation is dropped, and the English articles a/an/the are
removed (the SQuAD convention), so utility scores ignore formatting.
"""

from __future__ import annotations

import unicodedata

import regex

CJK_CHARACTER = r"[\p{Han}\p{Hiragana}\p{Katakana}\p{Hangul}]"
TOKEN_PATTERN = regex.compile(rf"{CJK_CHARACTER}|[^\W_\p{{Han}}\p{{Hiragana}}\p{{Katakana}}\p{{Hangul}}]+")
ARTICLES = frozenset({"a", "an", "the"})


def metric_tokens(text: str) -> list[str]:
    """Tokens of ``text`` for EM / F1 / ROUGE-L / distinct-n / Self-BLEU."""
    normalized = unicodedata.normalize("NFKC", text).lower()
    return [t for t in TOKEN_PATTERN.findall(normalized) if t not in ARTICLES]


def ngrams(tokens: list[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]
