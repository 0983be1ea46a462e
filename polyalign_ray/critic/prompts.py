"""What the critic sees of the prompt (METHOD.md section 4: "the response (optionally the prompt)").

Why: an answer read alone cannot show that it answers another question, or that it belongs to another track. A
single-turn chat reply relabeled into the multi-turn bucket of the same family and length reads exactly the same;
what differs is the conversation before it (the exact targets themselves call only 37% of those moves farther,
bench/results/critic_support_breakdown.md). And a policy optimized against an answer-only critic may learn one
human-looking answer for every prompt. Given the prompt, both become visible:

- ``track_mismatch``: the bucket's track (``single``/``multi``) against the track the conversation itself has
  (``schema.track_of``): exact, and what a human answer relabeled into the other track shows;
- how much the answer and the conversation share: the share of the answer's tokens found in the prompt, context
  and history, the share of the last user turn's tokens found in the answer, and the Jaccard overlap of their
  character bigrams (Chinese has no spaces). Weak alone (AUC ~0.63 between an answer and another answer of its
  bucket on the demo's held-out records), so the critic also gets a learned interaction of the prompt's and the
  answer's n-gram embeddings (critic/model.py);
- ``prompt_given``: the prompt is optional at scoring time. Callers that only have texts and buckets
  (``CriticScorer.score(texts, buckets)``) still get scores; the critic learns that case from training examples
  whose prompt is withheld (``critic.prompt_dropout``).

A prompt is a mapping with the record fields ``prompt`` (the last user turn), and optionally ``history`` (earlier
turns, ``{"role", "content"}``) and ``context`` (a passage): a corpus record, an HDPO pair or a rollout's prompt
all qualify. Everything here is a pure function of its inputs.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from polyalign_ray.critic.support import lowercase_words
from polyalign_ray.schema import history_turns, track_of

PROMPT_FEATURE_NAMES = (
    "prompt_given",
    "track_mismatch",
    "history_turns",
    "answer_tokens_in_prompt",
    "prompt_tokens_in_answer",
    "last_turn_bigram_jaccard",
)
"""The prompt statistics, in the column order the critic is fed (all 0 when no prompt is given)."""

PromptRecord = Mapping[str, Any]
"""``prompt`` (str), optional ``history`` (list of ``{"role", "content"}``) and ``context`` (str)."""


def character_bigrams(text: str) -> set[str]:
    lowered = text.lower()
    return {lowered[i : i + 2] for i in range(len(lowered) - 1)}


def history_of(prompt: PromptRecord) -> tuple[dict[str, str], ...]:
    """The prompt's earlier turns, however the record stores them (``schema.history_turns``)."""
    return history_turns(prompt.get("history"))


def conversation_text(prompt: PromptRecord) -> str:
    """Everything the answer could take its words from: the context, the earlier turns and the last user turn."""
    parts = [str(prompt.get("context") or "")]
    parts += [turn["content"] for turn in history_of(prompt)]
    parts.append(str(prompt.get("prompt") or ""))
    return "\n".join(part for part in parts if part)


def bucket_track(bucket: str) -> str | None:
    """The track field of ``language|track|family|length_bin`` (None for a bucket id of another shape)."""
    parts = bucket.split("|")
    return parts[1] if len(parts) == 4 else None


def prompt_statistics(text: str, bucket: str, prompt: PromptRecord | None) -> list[float]:
    """The :data:`PROMPT_FEATURE_NAMES` of one answer in one bucket (zeros when ``prompt`` is None)."""
    if prompt is None:
        return [0.0] * len(PROMPT_FEATURE_NAMES)
    history = history_of(prompt)
    track = bucket_track(bucket)
    mismatch = float(track is not None and track != track_of(history))
    answer_tokens = lowercase_words(text)
    conversation_tokens = set(lowercase_words(conversation_text(prompt)))
    last_turn = str(prompt.get("prompt") or "")
    last_turn_tokens = lowercase_words(last_turn)
    answer_token_set = set(answer_tokens)
    answer_bigrams, turn_bigrams = character_bigrams(text), character_bigrams(last_turn)
    union = answer_bigrams | turn_bigrams
    return [
        1.0,
        mismatch,
        math.log1p(len(history)),
        float(np.mean([t in conversation_tokens for t in answer_tokens])) if answer_tokens else 0.0,
        float(np.mean([t in answer_token_set for t in last_turn_tokens])) if last_turn_tokens else 0.0,
        len(answer_bigrams & turn_bigrams) / len(union) if union else 0.0,
    ]


def prompt_features(
    texts: Sequence[str], buckets: Sequence[str], prompts: Sequence[PromptRecord | None]
) -> np.ndarray:
    """(len(texts), len(PROMPT_FEATURE_NAMES)) float64: the prompt statistics of each answer."""
    if not len(texts) == len(buckets) == len(prompts):
        raise ValueError(f"{len(texts)} texts, {len(buckets)} buckets and {len(prompts)} prompts")
    rows = [prompt_statistics(t, b, p) for t, b, p in zip(texts, buckets, prompts, strict=True)]
    return np.asarray(rows, dtype=np.float64).reshape(len(texts), len(PROMPT_FEATURE_NAMES))


def prompt_ngram_text(prompt: PromptRecord | None) -> str:
    """The text whose hashed n-grams stand for the prompt in the critic's learned interaction: the last user turn
    (what the answer answers), after the last assistant turn (what it continues) when there is one."""
    if prompt is None:
        return ""
    last_assistant = next(
        (t["content"] for t in reversed(history_of(prompt)) if t["role"] == "assistant"), ""
    )
    return "\n".join(part for part in (last_assistant, str(prompt.get("prompt") or "")) if part)


def prompt_view(record: Mapping[str, Any]) -> dict[str, Any]:
    """The prompt fields of a record (or pair, or rollout prompt): what the critic needs and nothing else."""
    return {
        "prompt": str(record.get("prompt") or ""),
        "history": list(history_of(record)),
        "context": str(record.get("context") or ""),
    }
