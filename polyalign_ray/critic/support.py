"""Support statistics: how familiar an answer is to the human answers the critic was trained on, as critic inputs.

Why: a cut answer ("Amsterdam" -> "Ams", "it means we agree." -> "it mea") and another context's answer ("yeah me
too" as the answer to a quiz question) look like normal short answers to the hand features and to a mean over
hashed n-grams, and the exact distance d(x, b) often puts them *nearer* human support than the original
(bench/results/critic_ood.md, the targets' own rate). What gives them away is that no human answer of this corpus
ends that way, uses that word, or reads like that family. Counting those things over the human train answers is
cheap and exact, so the critic gets the counts instead of having to learn them from a few thousand examples:

- ``family_margin``: a multinomial naive Bayes over hashed words and character bigrams, one class per bucket
  family (``language|track|family``, the length bin left to the length features): the answer's log-likelihood
  under its bucket's family minus the best other family's, per n-gram. Negative when the answer reads like
  another family's (a dialogue reply in a QA bucket, an English answer in a Chinese bucket).
- ``family_loglik``: the per-n-gram log-likelihood under its own family (low for text unlike any of its answers).
- ``ending_frequency_1..3``: log frequency of the answer's last 1, 2, 3 characters as the end of a human answer
  (an answer cut mid-word or mid-sentence ends in a way human answers seldom do).
- ``unseen_word_share`` and ``last_word_unseen``: words no human answer used (a cut word is usually not a word).

The critic's own training answers must not see counts that include themselves, or it would learn to trust
in-sample familiarity that scoring-time answers never have: :func:`cross_fitted_support_features` computes each
training prompt's statistics from tables fitted on the other folds' human answers.
"""

from __future__ import annotations

import dataclasses
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import regex

SUPPORT_FEATURE_NAMES: tuple[str, ...] = (
    "family_margin",
    "family_loglik",
    "ending_frequency_1",
    "ending_frequency_2",
    "ending_frequency_3",
    "unseen_word_share",
    "last_word_unseen",
)
SUPPORT_FILE = "support.npz"
GRAM_HASH_BUCKETS = 1 << 15
WORD_HASH_BUCKETS = 1 << 16
SMOOTHING = 0.5
"""Additive smoothing of the naive Bayes counts (a gram never seen in a family gets half a count)."""
CROSS_FIT_FOLDS = 5

_WORD = regex.compile(r"\p{Han}|[\p{L}\p{M}\p{N}']+")
_LATIN_WORD = regex.compile(r"[\p{L}\p{M}\p{N}']+")
_HAN = regex.compile(r"\p{Han}")


def bucket_family(bucket: str) -> str:
    """``language|track|family`` of a ``language|track|family|length_bin`` bucket (the whole id otherwise)."""
    parts = bucket.split("|")
    return "|".join(parts[:3]) if len(parts) == 4 else bucket


def _hash(text: str, buckets: int) -> int:
    return zlib.crc32(text.encode("utf-8")) % buckets


def family_gram_ids(text: str) -> np.ndarray:
    """Hashed lowercased words (a Han character counts as a word) and character bigrams of ``text``."""
    lowered = text.lower()
    grams = [f"w{w}" for w in _WORD.findall(lowered)]
    grams += [f"b{lowered[i : i + 2]}" for i in range(len(lowered) - 1) if not lowered[i : i + 2].isspace()]
    return np.asarray([_hash(g, GRAM_HASH_BUCKETS) for g in grams], dtype=np.int64)


def ending_ids(text: str) -> list[int]:
    """Hashed last 1, 2 and 3 characters of the stripped text (an empty text ends in ``<empty>``)."""
    stripped = text.strip() or "<empty>"
    return [_hash(f"{n}{stripped[-n:]}", WORD_HASH_BUCKETS) for n in (1, 2, 3)]


def latin_words(text: str) -> list[str]:
    """Lowercased words of alphabetic scripts (Han runs are not split into words here)."""
    return [w for w in _LATIN_WORD.findall(text.lower()) if not _HAN.search(w)]


@dataclasses.dataclass(frozen=True)
class SupportTables:
    """Counts over human answers: n-grams per bucket family, answer endings, words."""

    families: tuple[str, ...]
    gram_counts: np.ndarray
    """(families, GRAM_HASH_BUCKETS) n-gram counts per family."""
    ending_counts: np.ndarray
    """(3, WORD_HASH_BUCKETS) how many answers end in each hashed 1-, 2-, 3-character ending."""
    word_counts: np.ndarray
    """(WORD_HASH_BUCKETS,) answers using each hashed word."""
    answers: int

    @classmethod
    def fit(cls, texts: Sequence[str], buckets: Sequence[str]) -> SupportTables:
        families = tuple(sorted({bucket_family(b) for b in buckets}))
        index = {f: i for i, f in enumerate(families)}
        grams = np.zeros((len(families), GRAM_HASH_BUCKETS), dtype=np.float64)
        endings = np.zeros((3, WORD_HASH_BUCKETS), dtype=np.float64)
        words = np.zeros(WORD_HASH_BUCKETS, dtype=np.float64)
        for text, bucket in zip(texts, buckets, strict=True):
            np.add.at(grams[index[bucket_family(bucket)]], family_gram_ids(text), 1.0)
            endings[np.arange(3), ending_ids(text)] += 1.0
            seen = {_hash(w, WORD_HASH_BUCKETS) for w in latin_words(text)}
            words[list(seen)] += 1.0
        return cls(families, grams, endings, words, len(texts))

    def features(self, texts: Sequence[str], buckets: Sequence[str]) -> np.ndarray:
        """(len(texts), len(SUPPORT_FEATURE_NAMES)) support statistics of each text in its bucket."""
        out = np.zeros((len(texts), len(SUPPORT_FEATURE_NAMES)), dtype=np.float64)
        if not len(texts):
            return out
        totals = self.gram_counts.sum(axis=1, keepdims=True)
        log_probs = np.log(self.gram_counts + SMOOTHING) - np.log(totals + SMOOTHING * GRAM_HASH_BUCKETS)
        family_index = {f: i for i, f in enumerate(self.families)}
        log_answers = np.log(self.answers + 1.0)
        for row, (text, bucket) in enumerate(zip(texts, buckets, strict=True)):
            ids = family_gram_ids(text)
            own = family_index.get(bucket_family(bucket))
            if len(ids) and own is not None:
                loglik = log_probs[:, ids].sum(axis=1) / len(ids)
                others = np.delete(loglik, own)
                out[row, 0] = loglik[own] - others.max() if len(others) else 0.0
                out[row, 1] = loglik[own]
            elif len(ids):  # a family no human answer had: as unlike its family as the least likely one
                loglik = log_probs[:, ids].sum(axis=1) / len(ids)
                out[row, 0], out[row, 1] = loglik.min() - loglik.max(), loglik.min()
            out[row, 2:5] = np.log(self.ending_counts[np.arange(3), ending_ids(text)] + 1.0) - log_answers
            words = latin_words(text)
            if words:
                counts = self.word_counts[[_hash(w, WORD_HASH_BUCKETS) for w in words]]
                out[row, 5] = float(np.mean(counts == 0))
                out[row, 6] = float(counts[-1] == 0)
        return out

    def save(self, path: Path) -> None:
        np.savez_compressed(
            path,
            families=np.asarray(self.families, dtype=object).astype(str),
            gram_counts=self.gram_counts.astype(np.float32),
            ending_counts=self.ending_counts.astype(np.float32),
            word_counts=self.word_counts.astype(np.float32),
            answers=np.asarray(self.answers),
        )

    @classmethod
    def load(cls, path: Path) -> SupportTables:
        with np.load(path, allow_pickle=False) as data:
            return cls(
                tuple(str(f) for f in data["families"]),
                data["gram_counts"].astype(np.float64),
                data["ending_counts"].astype(np.float64),
                data["word_counts"].astype(np.float64),
                int(data["answers"]),
            )


def fold_of(group: str, folds: int = CROSS_FIT_FOLDS) -> int:
    """The cross-fitting fold of a prompt (its record id), stable across processes."""
    return _hash(group, folds)


def cross_fitted_support_features(
    texts: Sequence[str],
    buckets: Sequence[str],
    groups: Sequence[str],
    human_texts: Sequence[str],
    human_buckets: Sequence[str],
    human_groups: Sequence[str],
    folds: int = CROSS_FIT_FOLDS,
) -> np.ndarray:
    """Support statistics of training answers, each from tables fitted on the human answers of the *other*
    folds' prompts: an answer (or its corrupted copy, or a model answer to its prompt) never counts towards its
    own familiarity, as at scoring time."""
    out = np.zeros((len(texts), len(SUPPORT_FEATURE_NAMES)), dtype=np.float64)
    fold_of_example = np.asarray([fold_of(g, folds) for g in groups], dtype=np.int64)
    fold_of_human = np.asarray([fold_of(g, folds) for g in human_groups], dtype=np.int64)
    for fold in range(folds):
        members = np.flatnonzero(fold_of_example == fold)
        if not len(members):
            continue
        others = np.flatnonzero(fold_of_human != fold)
        tables = SupportTables.fit([human_texts[i] for i in others], [human_buckets[i] for i in others])
        out[members] = tables.features([texts[i] for i in members], [buckets[i] for i in members])
    return out
