"""Utility against the human answer: exact match, token F1, ROUGE-L F1 (tokens from ``evaluation.text``)."""

from __future__ import annotations

from collections import Counter

from polyalign_ray.evaluation.text import metric_tokens


def exact_match(prediction: str, reference: str) -> float:
    """1.0 when the normalized token sequences are equal (so punctuation, case and spacing do not matter)."""
    return float(metric_tokens(prediction) == metric_tokens(reference))


def _f1(overlap: float, predicted: int, expected: int) -> float:
    if predicted == 0 and expected == 0:
        return 1.0
    if overlap == 0:
        return 0.0
    precision, recall = overlap / predicted, overlap / expected
    return 2 * precision * recall / (precision + recall)


def token_f1(prediction: str, reference: str) -> float:
    """F1 of the bags of tokens (SQuAD-style): overlap = the multiset intersection."""
    predicted, expected = metric_tokens(prediction), metric_tokens(reference)
    overlap = sum((Counter(predicted) & Counter(expected)).values())
    return _f1(overlap, len(predicted), len(expected))


def longest_common_subsequence(a: list[str], b: list[str]) -> int:
    """Length of the LCS, O(len(a) * len(b)) time and O(len(b)) memory."""
    if not a or not b:
        return 0
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0]
        for j, y in enumerate(b):
            current.append(previous[j] + 1 if x == y else max(previous[j + 1], current[j]))
        previous = current
    return previous[-1]


def rouge_l_f1(prediction: str, reference: str) -> float:
    """ROUGE-L F1 (beta = 1): precision = LCS / prediction length, recall = LCS / reference length."""
    predicted, expected = metric_tokens(prediction), metric_tokens(reference)
    return _f1(longest_common_subsequence(predicted, expected), len(predicted), len(expected))
