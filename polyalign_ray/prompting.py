"""The one prompt renderer, used by SFT, HDPO, rollouts and evaluation alike.

Training and inference must see byte-identical prompts (the authors' code used different formats, which is one of
the defects METHOD.md lists), so every stage renders a record with :func:`render_prompt` and tokenizes with
:func:`encode_prompt_response`. With a tokenizer that has a chat template, the template renders the messages;
without one, a documented plain template is used.

Messages of a record: an optional system message (the record's ``system`` text and, with profile conditioning,
the bucket profile), the history turns, then the user turn, which holds the grounding ``context`` (if any), a
blank line, and the ``prompt``. The gold response is never part of the prompt.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

PLAIN_ROLE_LABELS = {"system": "System", "user": "User", "assistant": "Assistant"}


def profile_text(record: Mapping[str, Any], *, include_length: bool = True) -> str:
    """The bucket attributes as a system-prompt line. At deployment the gold length bin is unknown, so evaluation
    also renders profiles without it (``include_length=False``)."""
    parts = [
        f"language={record['language']}",
        f"track={record['track']}",
        f"family={record['family']}",
    ]
    if include_length:
        parts.append(f"length={record['length_bin']}")
    return "Answer profile: " + "; ".join(parts)


def user_turn_text(record: Mapping[str, Any]) -> str:
    """The current user turn: the grounding passage, a blank line, the question (just the prompt without one)."""
    context = str(record.get("context") or "")
    prompt = str(record["prompt"])
    return f"{context}\n\n{prompt}" if context else prompt


def prompt_messages(
    record: Mapping[str, Any], *, profile_conditioning: bool = False, include_length: bool = True
) -> list[dict[str, str]]:
    """The chat messages that precede the answer."""
    system_parts = [str(record.get("system") or "")]
    if profile_conditioning:
        system_parts.append(profile_text(record, include_length=include_length))
    system = "\n".join(p for p in system_parts if p)
    history: Sequence[Mapping[str, Any]] = record.get("history") or []
    messages = [{"role": "system", "content": system}] if system else []
    messages += [{"role": str(t["role"]), "content": str(t["content"])} for t in history]
    messages.append({"role": "user", "content": user_turn_text(record)})
    return messages


def render_plain(messages: Sequence[Mapping[str, str]]) -> str:
    """The plain template for tokenizers without a chat template: ``Role: content`` blocks separated by blank
    lines, ending with ``Assistant:`` and a space."""
    blocks = [f"{PLAIN_ROLE_LABELS.get(m['role'], m['role'].title())}: {m['content']}" for m in messages]
    return "\n\n".join(blocks) + "\n\nAssistant: "


def render_prompt(
    tokenizer: Any,
    record: Mapping[str, Any],
    *,
    profile_conditioning: bool = False,
    include_length: bool = True,
) -> str:
    """The prompt text of a record, ending where the model's answer starts."""
    messages = prompt_messages(
        record, profile_conditioning=profile_conditioning, include_length=include_length
    )
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return render_plain(messages)


def encode_prompt_response(
    tokenizer: Any, prompt_text: str, response: str, *, max_length: int
) -> tuple[list[int], int]:
    """Token ids of prompt + response + end-of-turn, and where the response starts.

    Prompt and response are tokenized separately (so the prompt's ids are exactly what generation sees). When
    the pair is longer than ``max_length``, the prompt keeps its most recent tokens (at least half the budget if
    the response needs it), then the response is cut on the right (a cut response has no end-of-turn token).
    """
    prompt_ids = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
    response_ids = tokenizer(response, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    if len(prompt_ids) + len(response_ids) > max_length:
        keep_prompt = min(len(prompt_ids), max(max_length - len(response_ids), max_length // 2))
        prompt_ids = prompt_ids[len(prompt_ids) - keep_prompt :]
        response_ids = response_ids[: max_length - keep_prompt]
    return prompt_ids + response_ids, len(prompt_ids)
