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
- ``word_end_rate_2``, ``word_end_rate_3``: when the answer ends inside a word or a run of Han characters (its
  last character belongs to it), how often the last 2 (3) characters of that word end a word rather than continue
  one in human answers, as a log rate ("Edwi", "Bla", "it mea": "dwi", "bla", "mea" nearly always continue; "你"
  seldom ends a run). Rare words are common in answers (names, in QA), so whether the last word was seen says
  less than whether it *ends* like a word. 0 (a complete word) when the answer ends in a space or punctuation.
- ``last_word_end_rate``: the same question for the whole last word of an alphabetic script: how often human
  answers use it as a complete word rather than as the start of a longer one, as a log rate ("littl", "certai",
  "happenin" only ever start "little", "certain", "happening": very low; a name no answer used, "Mussolini", is
  neither: log(1/2); "the": high). A cut through a common word is what a token budget leaves; the letter pieces
  above see only its last letters, which often also end words ("tl" no, but "mea", "ai", "ick" sometimes do).
- ``length_below_bin`` and ``length_above_bin``: how far (in log length tokens) the answer lies below or above its
  bucket's length bin. A bucket's bin is defined by its human answers' length, so every one of them lies inside
  it: an answer outside is outside human support by construction (a medium answer cut to a third, an answer
  repeated, a short answer moved into a long bucket), however normal its text reads. 0 inside the bin and for
  bucket ids without a length bin.

The critic's own training answers must not see counts that include themselves, or it would learn to trust
in-sample familiarity that scoring-time answers never have: :func:`cross_fitted_support_features` computes each
training prompt's statistics from tables fitted on the other folds' human answers.
"""

from __future__ import annotations

import dataclasses
import math
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import regex

from polyalign_ray.schema import LENGTH_BIN_UPPER, count_length_tokens

SUPPORT_FEATURE_NAMES: tuple[str, ...] = (
    "family_margin",
    "family_loglik",
    "ending_frequency_1",
    "ending_frequency_2",
    "ending_frequency_3",
    "unseen_word_share",
    "last_word_unseen",
    "word_end_rate_2",
    "word_end_rate_3",
    "length_below_bin",
    "length_above_bin",
    "last_word_end_rate",
)
SUPPORT_FILE = "support.npz"
GRAM_HASH_BUCKETS = 1 << 15
WORD_HASH_BUCKETS = 1 << 16
PREFIX_HASH_BUCKETS = 1 << 18
"""Word prefixes are many (every word of n letters has n - 1), so their table is larger than the words'."""
SMOOTHING = 0.5
"""Additive smoothing of the naive Bayes counts (a gram never seen in a family gets half a count)."""
CROSS_FIT_FOLDS = 5

_WORD = regex.compile(r"\p{Han}|[\p{L}\p{M}\p{N}']+")
_LATIN_WORD = regex.compile(r"[\p{L}\p{M}\p{N}']+")
_HAN = regex.compile(r"\p{Han}")
_RUN = regex.compile(r"(?V1)\p{Han}+|[[\p{L}\p{M}\p{N}']--\p{Han}]+")
"""A word of an alphabetic script, or a run of Han characters (Chinese has no spaces: a run ends where the
clause does, at punctuation, a space or another script)."""


def bucket_family(bucket: str) -> str:
    """``language|track|family`` of a ``language|track|family|length_bin`` bucket (the whole id otherwise)."""
    parts = bucket.split("|")
    return "|".join(parts[:3]) if len(parts) == 4 else bucket


def length_bin_bounds(bucket: str) -> tuple[int, float] | None:
    """Inclusive (lower, upper) length tokens of a ``language|track|family|length_bin`` bucket's bin (upper is
    infinite for the last bin); None when the id names no known length bin."""
    name = bucket.rsplit("|", 1)[-1]
    lower = 1  # a human answer has at least one length token
    for bin_name, upper in LENGTH_BIN_UPPER:
        if name == bin_name:
            return lower, float(upper)
        lower = upper + 1
    return (lower, math.inf) if name == "xlong" else None


def length_bin_excess(text: str, bucket: str) -> tuple[float, float]:
    """(below, above): log(1 + lower) - log(1 + n) when the answer's n length tokens fall short of its bucket's
    bin, log(1 + n) - log(1 + upper) when they exceed it, 0 otherwise (and for a bucket without a bin)."""
    bounds = length_bin_bounds(bucket)
    if bounds is None:
        return 0.0, 0.0
    lower, upper = bounds
    n = count_length_tokens(text)
    below = math.log1p(lower) - math.log1p(n) if n < lower else 0.0
    above = math.log1p(n) - math.log1p(upper) if n > upper else 0.0
    return below, above


def _hash(text: str, buckets: int) -> int:
    return zlib.crc32(text.encode("utf-8")) % buckets


def family_gram_ids(text: str) -> np.ndarray:
    """Hashed lowercased words (a Han character counts as a word) and character bigrams of ``text``."""
    lowered = text.lower()
    grams = [f"w{w}" for w in lowercase_words(text)]
    grams += [f"b{lowered[i : i + 2]}" for i in range(len(lowered) - 1) if not lowered[i : i + 2].isspace()]
    return np.asarray([_hash(g, GRAM_HASH_BUCKETS) for g in grams], dtype=np.int64)


def lowercase_words(text: str) -> list[str]:
    """Lowercased words, a Han character counting as a word: the naive Bayes' words, and the words the critic's
    prompt statistics look for in both the prompt and the answer (critic/prompts.py)."""
    return _WORD.findall(text.lower())


def ending_ids(text: str) -> list[int]:
    """Hashed last 1, 2 and 3 characters of the stripped text (an empty text ends in ``<empty>``)."""
    stripped = text.strip() or "<empty>"
    return [_hash(f"{n}{stripped[-n:]}", WORD_HASH_BUCKETS) for n in (1, 2, 3)]


def word_runs(text: str) -> list[str]:
    """Lowercased words of alphabetic scripts and runs of Han characters, in order."""
    return _RUN.findall(text.lower())


def ending_word(text: str) -> str | None:
    """The lowercased word or Han run the text ends inside of (its last character belongs to it), or None when
    the text ends in a space, punctuation or a symbol."""
    lowered = text.lower()
    runs = list(_RUN.finditer(lowered))
    if not runs or runs[-1].end() != len(lowered):
        return None
    return runs[-1].group()


def _piece_id(piece: str) -> int:
    """Hashed 1-3 letter piece of a word, keyed by its length (so "s" as a piece is not "s" inside "is")."""
    return _hash(f"{len(piece)}{piece}", WORD_HASH_BUCKETS)


def word_piece_ids(word: str) -> tuple[list[int], list[int]]:
    """(final, inner) hashed pieces of a word: its last 1, 2, 3 letters, and every 1-3 letter piece followed by
    at least one more letter."""
    final = [_piece_id(word[-n:]) for n in (1, 2, 3) if len(word) >= n]
    inner = [_piece_id(word[i : i + n]) for n in (1, 2, 3) for i in range(len(word) - n)]
    return final, inner


def prefix_id(prefix: str) -> int:
    """Hashed proper prefix of a word (marked, so a prefix never shares a key with the same letters as a word)."""
    return _hash(f"p{prefix}", PREFIX_HASH_BUCKETS)


def proper_prefix_ids(word: str) -> list[int]:
    """Hashed prefixes of ``word`` that are shorter than it: what a cut through this word could leave."""
    return [prefix_id(word[:n]) for n in range(1, len(word))]


def support_columns(matrix: np.ndarray, names: Sequence[str]) -> np.ndarray:
    """The columns of a (rows, len(SUPPORT_FEATURE_NAMES)) statistics matrix named by ``names``, in that order."""
    return matrix[:, [SUPPORT_FEATURE_NAMES.index(n) for n in names]]


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
    word_final_counts: np.ndarray
    """(WORD_HASH_BUCKETS,) word occurrences ending in each hashed 1-3 letter piece."""
    word_inner_counts: np.ndarray
    """(WORD_HASH_BUCKETS,) occurrences of each hashed 1-3 letter piece followed by another letter."""
    word_prefix_counts: np.ndarray
    """(PREFIX_HASH_BUCKETS,) word occurrences (alphabetic scripts) that each hashed proper prefix starts."""
    word_occurrences: np.ndarray
    """(WORD_HASH_BUCKETS,) occurrences of each hashed complete word (alphabetic scripts)."""

    @classmethod
    def fit(cls, texts: Sequence[str], buckets: Sequence[str]) -> SupportTables:
        families = tuple(sorted({bucket_family(b) for b in buckets}))
        index = {f: i for i, f in enumerate(families)}
        grams = np.zeros((len(families), GRAM_HASH_BUCKETS), dtype=np.float64)
        endings = np.zeros((3, WORD_HASH_BUCKETS), dtype=np.float64)
        words = np.zeros(WORD_HASH_BUCKETS, dtype=np.float64)
        final = np.zeros(WORD_HASH_BUCKETS, dtype=np.float64)
        inner = np.zeros(WORD_HASH_BUCKETS, dtype=np.float64)
        prefixes = np.zeros(PREFIX_HASH_BUCKETS, dtype=np.float64)
        occurrences = np.zeros(WORD_HASH_BUCKETS, dtype=np.float64)
        for text, bucket in zip(texts, buckets, strict=True):
            np.add.at(grams[index[bucket_family(bucket)]], family_gram_ids(text), 1.0)
            endings[np.arange(3), ending_ids(text)] += 1.0
            latin = latin_words(text)
            word_ids = [_hash(w, WORD_HASH_BUCKETS) for w in latin]
            words[list(set(word_ids))] += 1.0
            np.add.at(occurrences, np.asarray(word_ids, dtype=np.int64), 1.0)
            np.add.at(
                prefixes, np.asarray([i for w in latin for i in proper_prefix_ids(w)], dtype=np.int64), 1.0
            )
            for word in word_runs(text):
                final_ids, inner_ids = word_piece_ids(word)
                np.add.at(final, final_ids, 1.0)
                np.add.at(inner, inner_ids, 1.0)
        return cls(families, grams, endings, words, len(texts), final, inner, prefixes, occurrences)

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
            out[row, 7:9] = self.word_end_rates(text)
            out[row, 9:11] = length_bin_excess(text, bucket)
            out[row, 11] = self.last_word_end_rate(text)
        return out

    def last_word_end_rate(self, text: str) -> float:
        """log((complete + 1/2) / (complete + prefix + 1)) of the alphabetic word the text ends inside of, where
        complete counts its occurrences as a word and prefix the words it starts; 0 when the text ends outside
        a word or in a Han run (a Chinese character is a word of its own)."""
        word = ending_word(text)
        if word is None or _HAN.search(word):
            return 0.0
        complete = self.word_occurrences[_hash(word, WORD_HASH_BUCKETS)]
        prefix = self.word_prefix_counts[prefix_id(word)]
        return math.log((complete + 0.5) / (complete + prefix + 1.0))

    def word_end_rates(self, text: str) -> tuple[float, float]:
        """log((final + 1/2) / (final + inner + 1)) of the last 2 and 3 letters (fewer in a shorter word) of the
        word the text ends inside of; (0, 0) when it ends outside a word."""
        word = ending_word(text)
        if word is None:
            return 0.0, 0.0
        rates = []
        for n in (2, 3):
            piece = _piece_id(word[-n:])  # a shorter word is its own piece
            final, inner = self.word_final_counts[piece], self.word_inner_counts[piece]
            rates.append(math.log((final + 0.5) / (final + inner + 1.0)))
        return rates[0], rates[1]

    def save(self, path: Path) -> None:
        np.savez_compressed(
            path,
            families=np.asarray(self.families, dtype=object).astype(str),
            gram_counts=self.gram_counts.astype(np.float32),
            ending_counts=self.ending_counts.astype(np.float32),
            word_counts=self.word_counts.astype(np.float32),
            answers=np.asarray(self.answers),
            word_final_counts=self.word_final_counts.astype(np.float32),
            word_inner_counts=self.word_inner_counts.astype(np.float32),
            word_prefix_counts=self.word_prefix_counts.astype(np.float32),
            word_occurrences=self.word_occurrences.astype(np.float32),
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
                # tables saved before these counts existed: the statistics from them are not fed to that critic
                *(
                    data[name].astype(np.float64) if name in data.files else np.zeros(size)
                    for name, size in (
                        ("word_final_counts", WORD_HASH_BUCKETS),
                        ("word_inner_counts", WORD_HASH_BUCKETS),
                        ("word_prefix_counts", PREFIX_HASH_BUCKETS),
                        ("word_occurrences", WORD_HASH_BUCKETS),
                    )
                ),
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
