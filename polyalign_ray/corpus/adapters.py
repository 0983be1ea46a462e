"""Input formats -> examples (prompt, context, history, response), detected per row.

Supported row formats (docs/data.md has an example of each):

* **plain**: ``prompt`` / ``response``, optional ``context``, ``history`` as ``[{role, content}]``, ``system``;
* **openai**: ``messages`` as ``[{role, content}]`` (content may be a list of ``{"type": "text", "text"}`` parts);
* **sharegpt**: ``conversations`` as ``[{from, value}]`` (``human``/``gpt``/``system``...);
* **alpaca**: ``instruction`` / ``input`` / ``output``, optional ``history`` as ``[[instruction, output], ...]``;
  ``input`` is the grounding passage and becomes ``context``.

Every format may also carry the row-level fields ``id``, ``source``, ``language``, ``family``, ``style``,
``license``, ``variety``, ``group_id`` (or ``conversation_id``) and ``machine_translated``.

For a conversation the last assistant turn is the response and the turns before its user message are the
history; with ``expand_turns`` every assistant turn that answers a user turn becomes its own example.
Consecutive turns of the same role are merged, system turns go to ``system``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

ROLE_ALIASES: dict[str, str] = {
    "user": "user",
    "human": "user",
    "prompter": "user",
    "question": "user",
    "assistant": "assistant",
    "gpt": "assistant",
    "chatgpt": "assistant",
    "bot": "assistant",
    "model": "assistant",
    "bard": "assistant",
    "bing": "assistant",
    "answer": "assistant",
    "system": "system",
}


class Rejected(Exception):
    """A row that cannot become a record; ``reason`` is the quarantine code, ``detail`` says what was wrong."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclasses.dataclass(frozen=True)
class Example:
    """One (prompt, response) with its surroundings, before language/bucket rules are applied."""

    prompt: str
    response: str
    context: str = ""
    history: tuple[dict[str, str], ...] = ()
    system: str = ""
    turn_index: int = 0
    """1-based ordinal of the answered assistant turn when a conversation was expanded, else 0."""
    first_user_turn: str = ""
    """The conversation's opening user message: the default group key, so a conversation stays in one split."""


def detect_format(row: Mapping[str, Any]) -> str:
    """``openai``, ``sharegpt``, ``alpaca`` or ``plain``; raises ``unknown_format`` naming the keys seen."""
    if "messages" in row:
        return "openai"
    if "conversations" in row or "conversation" in row:
        return "sharegpt"
    if "instruction" in row and ("output" in row or "response" not in row):
        return "alpaca"
    if "prompt" in row or "response" in row:
        return "plain"
    raise Rejected(
        "unknown_format",
        f"no messages/conversations/instruction/prompt/response key; keys seen: {sorted(row)[:12]}",
    )


def _text_of(content: Any, where: str) -> str:
    """Content as a string: a string, or the text parts of an OpenAI content list."""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(p, Mapping) for p in content):
        texts = [p.get("text") for p in content if p.get("type", "text") == "text"]
        if all(isinstance(t, str) for t in texts) and texts:
            return "\n".join(texts)
    raise Rejected(
        "malformed_conversation", f"{where}: content must be a string, got {type(content).__name__}"
    )


def _role(value: Any, where: str) -> str:
    if not isinstance(value, str) or value.strip().lower() not in ROLE_ALIASES:
        raise Rejected("malformed_conversation", f"{where}: unknown role {value!r}")
    return ROLE_ALIASES[value.strip().lower()]


def _turns_from_dicts(
    items: Any, role_key: str, content_key: str, field: str
) -> list[tuple[str, str]]:  # (role, text)
    if not isinstance(items, list):
        raise Rejected(
            "malformed_conversation", f"{field} must be a list of turns, got {type(items).__name__}"
        )
    turns = []
    for i, item in enumerate(items):
        if not isinstance(item, Mapping):
            raise Rejected(
                "malformed_conversation", f"{field}[{i}] must be an object, got {type(item).__name__}"
            )
        if role_key not in item or content_key not in item:
            raise Rejected("malformed_conversation", f"{field}[{i}] needs {role_key!r} and {content_key!r}")
        turns.append((_role(item[role_key], f"{field}[{i}]"), _text_of(item[content_key], f"{field}[{i}]")))
    return turns


def _merge_turns(turns: Sequence[tuple[str, str]]) -> tuple[str, list[tuple[str, str]]]:
    """(system text, alternating user/assistant turns): system turns are pulled out, consecutive turns of the
    same role are joined with a blank line."""
    system = "\n\n".join(text for role, text in turns if role == "system" and text.strip())
    merged: list[tuple[str, str]] = []
    for role, text in turns:
        if role == "system":
            continue
        if merged and merged[-1][0] == role:
            merged[-1] = (role, f"{merged[-1][1]}\n\n{text}")
        else:
            merged.append((role, text))
    return system, merged


def _history(turns: Sequence[tuple[str, str]]) -> tuple[dict[str, str], ...]:
    return tuple({"role": role, "content": text} for role, text in turns)


def examples_from_turns(
    turns: Sequence[tuple[str, str]], *, context: str, expand_turns: bool, extra_system: str = ""
) -> list[Example]:
    """Cut a conversation into examples: the last assistant turn (or, expanded, every assistant turn) that
    answers a user turn."""
    system, merged = _merge_turns(turns)
    system = "\n\n".join(s for s in (extra_system, system) if s)
    answer_positions = [i for i, (role, _) in enumerate(merged) if role == "assistant"]
    if not answer_positions:
        raise Rejected("no_assistant_turn", "the conversation has no assistant turn to use as the response")
    answered = [i for i in answer_positions if i > 0 and merged[i - 1][0] == "user"]
    if not answered:
        raise Rejected("no_user_turn", "no assistant turn follows a user turn")
    chosen = answered if expand_turns else answered[-1:]
    first_user = next(text for role, text in merged if role == "user")
    return [
        Example(
            prompt=merged[i - 1][1],
            response=merged[i][1],
            context=context,
            history=_history(merged[: i - 1]),
            system=system,
            turn_index=(answer_positions.index(i) + 1) if expand_turns else 0,
            first_user_turn=first_user,
        )
        for i in chosen
    ]


def _optional_string(row: Mapping[str, Any], key: str) -> str:
    value = row.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise Rejected("bad_field_type", f"{key!r} must be a string, got {type(value).__name__}")
    return value


def _plain_examples(row: Mapping[str, Any], expand_turns: bool) -> list[Example]:
    if "response" not in row:
        raise Rejected("missing_response", "plain row has a 'prompt' but no 'response'")
    response = row["response"]
    if response is None:
        raise Rejected("missing_response", "'response' is null")
    if not isinstance(response, str):
        raise Rejected("non_string_response", f"'response' must be a string, got {type(response).__name__}")
    prompt = row.get("prompt")
    if prompt is None:
        raise Rejected("missing_prompt", "plain row has a 'response' but no 'prompt'")
    if not isinstance(prompt, str):
        raise Rejected("bad_field_type", f"'prompt' must be a string, got {type(prompt).__name__}")
    history_turns = _turns_from_dicts(row.get("history") or [], "role", "content", "history")
    turns = [*history_turns, ("user", prompt), ("assistant", response)]
    system, merged = _merge_turns(history_turns)
    # Keep the row's own split of prompt/response even if history ends with a user turn.
    history = _history(merged)
    first_user = next((text for role, text in merged if role == "user"), prompt)
    if expand_turns and any(role == "assistant" for role, _ in merged):
        return examples_from_turns(
            turns,
            context=_optional_string(row, "context"),
            expand_turns=True,
            extra_system=_optional_string(row, "system"),
        )
    return [
        Example(
            prompt=prompt,
            response=response,
            context=_optional_string(row, "context"),
            history=history,
            system="\n\n".join(s for s in (_optional_string(row, "system"), system) if s),
            first_user_turn=first_user,
        )
    ]


def _alpaca_examples(row: Mapping[str, Any], expand_turns: bool) -> list[Example]:
    output = row.get("output")
    if output is None:
        raise Rejected("missing_response", "alpaca row has no 'output'")
    if not isinstance(output, str):
        raise Rejected("non_string_response", f"'output' must be a string, got {type(output).__name__}")
    instruction = row.get("instruction")
    if not isinstance(instruction, str):
        raise Rejected("bad_field_type", f"'instruction' must be a string, got {type(instruction).__name__}")
    history_pairs = row.get("history") or []
    if not isinstance(history_pairs, list):
        raise Rejected(
            "malformed_conversation", "alpaca 'history' must be a list of [instruction, output] pairs"
        )
    turns: list[tuple[str, str]] = []
    for i, pair in enumerate(history_pairs):
        if not (isinstance(pair, (list, tuple)) and len(pair) == 2 and all(isinstance(x, str) for x in pair)):
            raise Rejected(
                "malformed_conversation", f"alpaca history[{i}] must be [instruction, output] strings"
            )
        turns += [("user", pair[0]), ("assistant", pair[1])]
    turns += [("user", instruction), ("assistant", output)]
    return examples_from_turns(
        turns,
        context=_optional_string(row, "input"),
        expand_turns=expand_turns,
        extra_system=_optional_string(row, "system"),
    )


def examples_from_row(row: Mapping[str, Any], *, expand_turns: bool = False) -> tuple[str, list[Example]]:
    """(format name, examples) of one parsed input row; raises :class:`Rejected` with a quarantine reason."""
    fmt = detect_format(row)
    if fmt == "openai":
        turns = _turns_from_dicts(row["messages"], "role", "content", "messages")
        examples = examples_from_turns(
            turns,
            context=_optional_string(row, "context"),
            expand_turns=expand_turns,
            extra_system=_optional_string(row, "system"),
        )
    elif fmt == "sharegpt":
        key = "conversations" if "conversations" in row else "conversation"
        turns = _turns_from_dicts(row[key], "from", "value", key)
        examples = examples_from_turns(
            turns,
            context=_optional_string(row, "context"),
            expand_turns=expand_turns,
            extra_system=_optional_string(row, "system"),
        )
    elif fmt == "alpaca":
        examples = _alpaca_examples(row, expand_turns)
    else:
        examples = _plain_examples(row, expand_turns)
    return fmt, examples
