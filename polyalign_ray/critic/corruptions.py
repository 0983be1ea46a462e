"""Cheap corrupted answers with exactly known distances: what the critic must learn to score as far from humans.

Why: the critic learns from human answers and SFT samples only, so it is blind to answers unlike both, and online
HDPO optimizes against it: its blind spots are what a policy learns to exploit. Measured on the demo's critic
before this module: a human answer moved into a bucket of the other language (true distance 3.09 on average) was
scored 0.18, and an answer repeated six times was scored farther than the original in only 15% of cases.

Each corruption takes a human answer (and, for moves, an answer of another bucket) and makes what rollouts of a
small or over-optimized policy actually produce: loops (the answer or its last sentence repeated), answers cut off
mid-way or mid-word (the token budget ran out), a single token repeated, answers in the wrong bucket (another bucket's answer
scored here, of the same or the other language, or this answer scored in another bucket), shuffled word salad,
and another answer of the same bucket (``swap``: an answer to another question in this context's style, which
only a critic that sees the prompt can tell; critic/prompts.py). Every corrupted answer gets its exact target d(x, b) from the
references like any other example; the critic also learns, through the ranking hinge, that a corrupted answer lies
farther from human support than the answer it came from.

Everything is a pure, seeded function of its inputs.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Mapping, Sequence
from typing import Any

import regex

KINDS = ("repeat", "truncate", "degenerate", "move_bucket", "move_language", "relabel", "shuffle", "swap")
"""Corruption kinds, in the order a seeded choice cycles through them."""

_TOKENS = regex.compile(r"\p{Han}|[\p{L}\p{N}']+|[^\s\p{L}\p{N}]")
_SENTENCE_END = regex.compile(r"(?<=[.!?。！？])\s*")


@dataclasses.dataclass(frozen=True)
class Corrupted:
    """A corrupted answer, the bucket it is scored in, and what it came from."""

    text: str
    bucket: str
    kind: str
    source: str
    """The record id of the human answer it was made from (its group for the ranking hinge)."""


def tokens_with_spacing(text: str) -> list[str]:
    """Tokens as the length counter sees them (a CJK character, a word, a symbol), each with the spacing after
    it, so that joining a prefix gives the text's own prefix."""
    out = []
    matches = list(_TOKENS.finditer(text))
    for i, match in enumerate(matches):
        end = matches[i + 1].start() if i + 1 < len(matches) else len(text)
        out.append(text[match.start() : end])
    return out


def repeat(text: str, rng: random.Random) -> str:
    """The whole answer, or its last sentence, 2-6 times: the loops of a policy that cannot stop."""
    times = rng.randint(2, 6)
    sentences = [s for s in _SENTENCE_END.split(text.strip()) if s]
    if len(sentences) > 1 and rng.random() < 0.5:
        return " ".join([*sentences, *[sentences[-1]] * (times - 1)])
    separator = rng.choice([" ", "\n", ""])
    return separator.join([text.strip()] * times)


def truncate(text: str, rng: random.Random) -> str:
    """The first 10-60% of the tokens, cut mid-sentence: a token budget that ran out. Half the time the cut falls
    inside the next word (``"Edwin Hubble"`` -> ``"Edwin Hu"``), as a subword tokenizer's budget does; the critic's
    support statistics (critic/support.py: endings and words no human answer has) can see those."""
    pieces = tokens_with_spacing(text)
    if len(pieces) < 2:
        return text[: max(1, len(text) // 2)]
    keep = max(1, int(len(pieces) * rng.uniform(0.1, 0.6)))
    cut = "".join(pieces[:keep])
    word = pieces[keep].rstrip() if keep < len(pieces) else ""
    if len(word) > 1 and rng.random() < 0.5:
        return cut + word[: rng.randint(1, len(word) - 1)]
    return cut.rstrip()


def degenerate(text: str, rng: random.Random) -> str:
    """One token of the answer repeated 8-40 times (a collapsed sampler)."""
    pieces = [p.strip() for p in tokens_with_spacing(text) if p.strip()] or [text.strip() or "."]
    token = rng.choice(pieces)
    joiner = "" if regex.fullmatch(r"\p{Han}", token) else " "
    return joiner.join([token] * rng.randint(8, 40))


def shuffle(text: str, rng: random.Random) -> str:
    """The answer's tokens in a random order: its words and length, none of its sense."""
    pieces = [p.strip() for p in tokens_with_spacing(text) if p.strip()]
    if len(pieces) < 3:
        return text
    rng.shuffle(pieces)
    joiner = "" if any(regex.fullmatch(r"\p{Han}", p) for p in pieces) else " "
    return joiner.join(pieces)


def corrupt_records(
    records: Sequence[Mapping[str, Any]],
    *,
    kinds: Sequence[str] = KINDS,
    per_record: int = 1,
    seed: int = 0,
) -> list[Corrupted]:
    """``per_record`` corrupted answers for each record's human answer, the kinds taken in turn from a seeded
    order. ``move_bucket`` scores an answer of another bucket of the same language in this record's bucket,
    ``move_language`` one of the other language's, ``relabel`` this answer in another bucket (any language),
    ``swap`` another record's answer of the same bucket; a record whose move has no candidate gets another kind."""
    unknown = sorted(set(kinds) - set(KINDS))
    if unknown:
        raise ValueError(f"unknown corruption kind(s) {unknown}; choose from {list(KINDS)}")
    by_language: dict[str, list[Mapping[str, Any]]] = {}
    by_bucket: dict[str, list[Mapping[str, Any]]] = {}
    for record in records:
        by_language.setdefault(record["bucket_id"].split("|")[0], []).append(record)
        by_bucket.setdefault(record["bucket_id"], []).append(record)
    buckets = sorted({record["bucket_id"] for record in records})
    text_kinds = [k for k in kinds if k in ("repeat", "truncate", "degenerate", "shuffle")] or ["repeat"]
    functions = {"repeat": repeat, "truncate": truncate, "degenerate": degenerate, "shuffle": shuffle}
    out = []
    for index, record in enumerate(records):
        rng = random.Random(f"{seed}:{record['id']}")
        language = record["bucket_id"].split("|")[0]
        for copy in range(per_record):
            kind = kinds[(index * per_record + copy + seed) % len(kinds)]
            donors: list[Mapping[str, Any]] = []
            if kind == "move_bucket":
                donors = [r for r in by_language[language] if r["bucket_id"] != record["bucket_id"]]
            elif kind == "move_language":
                donors = [r for lang, rows in by_language.items() if lang != language for r in rows]
            elif kind == "swap":  # another answer, not an exact copy of this one
                donors = [
                    r for r in by_bucket[record["bucket_id"]] if str(r["response"]) != str(record["response"])
                ]
            if (kind.startswith("move_") or kind == "swap") and donors:
                donor = donors[rng.randrange(len(donors))]
                out.append(Corrupted(str(donor["response"]), record["bucket_id"], kind, record["id"]))
                continue
            others = [b for b in buckets if b != record["bucket_id"]] if kind == "relabel" else []
            if others:
                out.append(
                    Corrupted(str(record["response"]), others[rng.randrange(len(others))], kind, record["id"])
                )
                continue
            if kind.startswith("move_") or kind in ("relabel", "swap"):
                kind = text_kinds[rng.randrange(len(text_kinds))]
            text = functions[kind](str(record["response"]), rng)
            out.append(Corrupted(text, record["bucket_id"], kind, record["id"]))
    return out
