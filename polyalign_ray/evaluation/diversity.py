"""Diversity of a set of answers: distinct-n and Self-BLEU-4 (lower Self-BLEU = more diverse)."""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Sequence

from polyalign_ray.evaluation.text import metric_tokens, ngrams

SMOOTHING_EPSILON = 0.1
"""Chen & Cherry's smoothing method 1: a zero clipped count of a higher order (n >= 2) becomes this, so one missing
4-gram does not zero BLEU. Without any unigram match BLEU is 0."""


def distinct_n(texts: Sequence[str], n: int) -> float:
    """Distinct n-grams / all n-grams over the whole set (0.0 when there is no n-gram at all)."""
    grams = [g for t in texts for g in ngrams(metric_tokens(t), n)]
    return len(set(grams)) / len(grams) if grams else 0.0


def bleu_from_counts(
    hypothesis_counts: Sequence[Counter],
    clipped: Sequence[int],
    hypothesis_length: int,
    closest_reference_length: int,
) -> float:
    """BLEU from per-order n-gram counts of the hypothesis and their clipped matches: geometric mean of the smoothed
    precisions times the brevity penalty."""
    if hypothesis_length == 0 or not clipped[0]:
        # No unigram in common: BLEU is 0 (as in NLTK and sacrebleu). Smoothing only stands in for missing
        # higher-order matches; applied to the unigram precision it would give unrelated texts a positive score.
        return 0.0
    log_precision = 0.0
    for counts, matched in zip(hypothesis_counts, clipped, strict=True):
        total = sum(counts.values())
        log_precision += math.log((matched if matched else SMOOTHING_EPSILON) / max(total, 1))
    if hypothesis_length > closest_reference_length:
        brevity = 1.0
    else:
        brevity = math.exp(1 - closest_reference_length / hypothesis_length)
    return brevity * math.exp(log_precision / len(hypothesis_counts))


def sentence_bleu(hypothesis: list[str], references: Sequence[list[str]], *, max_n: int = 4) -> float:
    """BLEU of one tokenized hypothesis against several tokenized references (clipping by the highest count of each
    n-gram in any reference; brevity penalty against the closest reference length)."""
    if not hypothesis or not references:
        return 0.0
    counts = [Counter(ngrams(hypothesis, n)) for n in range(1, max_n + 1)]
    clipped = []
    for n, hyp in enumerate(counts, start=1):
        best: Counter = Counter()
        for reference in references:
            best |= Counter(ngrams(reference, n))
        clipped.append(sum(min(c, best[g]) for g, c in hyp.items()))
    closest = min((abs(len(r) - len(hypothesis)), len(r)) for r in references)[1]
    return bleu_from_counts(counts, clipped, len(hypothesis), closest)


def self_bleu(texts: Sequence[str], *, sample_size: int = 200, seed: int = 0, max_n: int = 4) -> float:
    """Mean BLEU-``max_n`` of (a seeded sample of up to ``sample_size`` of) the texts, each against all the others.
    Identical texts give 1.0, unrelated ones values near 0; fewer than 2 texts give 0.0.

    The highest and second-highest count of every n-gram over all texts are computed once, so the clipping count
    "over every text but i" costs a lookup instead of a pass over the set.
    """
    tokenized = [metric_tokens(t) for t in texts]
    if len(tokenized) < 2:
        return 0.0
    per_text = [[Counter(ngrams(tokens, n)) for n in range(1, max_n + 1)] for tokens in tokenized]
    tops: list[
        dict[tuple[str, ...], tuple[int, int, int]]
    ] = []  # n-gram -> (best count, its text, second best)
    for order in range(max_n):
        top: dict[tuple[str, ...], tuple[int, int, int]] = {}
        for index, counts in enumerate(per_text):
            for gram, count in counts[order].items():
                best, holder, second = top.get(gram, (0, -1, 0))
                if count > best:
                    top[gram] = (count, index, best)
                elif count > second:
                    top[gram] = (best, holder, count)
        tops.append(top)
    lengths = sorted((len(t), i) for i, t in enumerate(tokenized))
    picked = random.Random(seed).sample(range(len(tokenized)), min(sample_size, len(tokenized)))
    scores = []
    for i in picked:
        clipped = []
        for order in range(max_n):
            matched = 0
            for gram, count in per_text[i][order].items():
                best, holder, second = tops[order][gram]
                matched += min(count, second if holder == i else best)
            clipped.append(matched)
        others = [length for length, j in lengths if j != i]
        closest = min((abs(length - len(tokenized[i])), length) for length in others)[1]
        scores.append(bleu_from_counts(per_text[i], clipped, len(tokenized[i]), closest))
    return sum(scores) / len(scores)
