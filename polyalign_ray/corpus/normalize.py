"""Raw rows -> records or quarantine entries: parse, adapt, clean text, resolve language/track/family, bucket.

:func:`normalize_raw_row` is the whole per-row step; it never raises for bad input: every failure becomes a
quarantine entry with a reason code (see ``QUARANTINE_REASONS``) and where the row came from. With a source
recipe (``NormalizeSettings.recipe``, from ``data.source``) each row is first mapped from its dataset's native
layout to ``plain`` rows (:mod:`polyalign_ray.corpus.recipes`); the rest of the step is the same.
"""

from __future__ import annotations

import dataclasses
import json
import unicodedata
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import regex

from polyalign_ray.corpus.adapters import Example, Rejected, examples_from_row
from polyalign_ray.corpus.recipes.catalog import recipe_named
from polyalign_ray.corpus.recipes.recipe import recipe_plain_rows
from polyalign_ray.schema import (
    FAMILIES,
    TRACKS,
    Record,
    bucket_id,
    content_key,
    count_length_tokens,
    family_by_rule,
    length_bin,
    normalize_language_tag,
    script_language,
    track_of,
)

QUARANTINE_REASONS: dict[str, str] = {
    "binary_garbage": "the line is not text (NUL or control bytes)",
    "invalid_utf8": "the line is not valid UTF-8",
    "oversized_row": "the row is longer than data.max_row_chars",
    "unreadable_file": "the file could not be opened or parsed as its type",
    "malformed_json": "the line is not valid JSON",
    "not_an_object": "the row is JSON but not an object",
    "unknown_format": "no known input format (plain, openai messages, sharegpt, alpaca)",
    "missing_response": "no response / output / assistant answer field",
    "missing_prompt": "a plain row without a prompt",
    "non_string_response": "the response is not a string",
    "bad_field_type": "a field has the wrong type",
    "empty_response": "the response is empty after cleaning",
    "empty_prompt": "the prompt is empty after cleaning",
    "malformed_conversation": "turns are not a list of {role, content} with known roles",
    "no_assistant_turn": "a conversation without an assistant answer",
    "no_user_turn": "no assistant answer follows a user turn",
    "unsupported_language": "a language this project does not model (en, zh)",
    "undetected_language": "no letters to tell the language from, and none declared",
    "invalid_family": "a declared family outside qa/dialogue/assistant",
    "invalid_track": "a declared track outside single/multi",
    "missing_field": "a field the source recipe needs is absent from the dataset's row (wrong --source?)",
    "unanswerable": "a reading-comprehension question without an answer (SQuAD v2 unanswerable, DuReader rows "
    "without answers, MS MARCO 'No Answer Present.', CoQA 'unknown')",
    "non_human_answer": "an answer a model wrote and no human verified (COIG-CQIA, synthetic OASST2 messages)",
    "deleted_message": "an OASST2 message marked deleted",
    "unreviewed_message": "an OASST2 message without a passing review",
    "outside_subset": "an OASST2 tree outside the Chinese subset",
    "oversized_response": "the response is longer than data.max_response_tokens",
    "duplicate_id": "another record with different content already has this id",
}
RAW_PREVIEW_CHARS = 2000
_CONTROL = regex.compile(r"[\p{Cc}--[\n\t]]", flags=regex.V1)


@dataclasses.dataclass(frozen=True)
class NormalizeSettings:
    """What the per-row step needs from the data config (small and picklable for Ray tasks)."""

    seed: int = 0
    val_fraction: float = 0.05
    test_fraction: float = 0.1
    expand_turns: bool = False
    max_response_tokens: int = 8192
    default_source: str = ""
    recipe: str = ""
    """A source recipe name (``data.source``): every row is in that dataset's native layout."""

    @classmethod
    def from_data_config(cls, data: Any) -> NormalizeSettings:
        return cls(
            seed=data.seed,
            val_fraction=data.val_fraction,
            test_fraction=data.test_fraction,
            expand_turns=data.expand_turns,
            max_response_tokens=data.max_response_tokens,
            default_source=data.default_source,
            recipe=data.source,
        )


def clean_text(text: str) -> str:
    """NFC, Unix newlines, no control characters but newline/tab, no surrounding whitespace: the text we bucket,
    deduplicate and train on."""
    text = unicodedata.normalize("NFC", text).replace("\r\n", "\n").replace("\r", "\n")
    return _CONTROL.sub("", text).strip()


def quarantine_entry(raw_row: Mapping[str, Any], reason: str, detail: str) -> dict[str, Any]:
    """A quarantine line: reason code, what was wrong, where the row came from and (a prefix of) the row."""
    return {
        "reason": reason,
        "detail": detail,
        "origin_file": raw_row.get("origin_file", ""),
        "origin_line": int(raw_row.get("origin_line", 0) or 0),
        "raw": str(raw_row.get("raw", ""))[:RAW_PREVIEW_CHARS],
    }


def _meta_string(row: Mapping[str, Any], key: str) -> str:
    value = row.get(key)
    if value is None:
        return ""
    if isinstance(value, (str, int)) and not isinstance(value, bool):
        return str(value)
    raise Rejected("bad_field_type", f"{key!r} must be a string, got {type(value).__name__}")


def resolve_language(row: Mapping[str, Any], example: Example) -> tuple[str, str, str]:
    """(language, variety, rule): the declared tag if any, else the script of the response (of the prompt and
    history when the response has no letters)."""
    declared = _meta_string(row, "language")
    variety = _meta_string(row, "variety")
    if declared:
        resolved = normalize_language_tag(declared)
        if resolved is None:
            raise Rejected("unsupported_language", f"declared language {declared!r} is not en or zh")
        return resolved[0], variety or (resolved[1] or ""), "given"
    for rule, text in (
        ("script:response", example.response),
        ("script:prompt", " ".join([example.prompt, *(t["content"] for t in example.history)])),
    ):
        detected = script_language(text)
        if detected == "other":
            raise Rejected(
                "unsupported_language", f"the {rule.split(':')[1]} is in a script other than en/zh"
            )
        if detected is not None:
            return detected, variety, rule
    raise Rejected("undetected_language", "no letters in response or prompt and no 'language' field")


def _clean_example(example: Example) -> Example:
    history = tuple({"role": t["role"], "content": clean_text(t["content"])} for t in example.history)
    return dataclasses.replace(
        example,
        prompt=clean_text(example.prompt),
        response=clean_text(example.response),
        context=clean_text(example.context),
        system=clean_text(example.system),
        history=tuple(t for t in history if t["content"]),
        first_user_turn=clean_text(example.first_user_turn),
    )


def build_record(
    row: Mapping[str, Any], example: Example, raw_row: Mapping[str, Any], settings: NormalizeSettings
) -> Record:
    """Apply METHOD.md section 1 to one cleaned example; raises :class:`Rejected` for bad content."""
    if not example.response:
        raise Rejected("empty_response", "the response is empty after cleaning")
    if not example.prompt:
        raise Rejected("empty_prompt", "the prompt is empty after cleaning")
    language, variety, language_rule = resolve_language(row, example)
    num_tokens = count_length_tokens(example.response)
    if num_tokens > settings.max_response_tokens:
        raise Rejected(
            "oversized_response",
            f"{num_tokens} length tokens > data.max_response_tokens={settings.max_response_tokens}",
        )
    declared_track = _meta_string(row, "track").strip().lower()
    if declared_track and declared_track not in TRACKS:
        raise Rejected("invalid_track", f"track {declared_track!r} is not one of {list(TRACKS)}")
    track = declared_track or track_of(example.history)
    declared_family = _meta_string(row, "family").strip().lower()
    if declared_family:
        if declared_family not in FAMILIES:
            raise Rejected("invalid_family", f"family {declared_family!r} is not one of {list(FAMILIES)}")
        family, family_rule = declared_family, "given"
    else:
        family, family_rule = family_by_rule(has_context=bool(example.context), track=track)
    bin_name = length_bin(num_tokens)
    key = content_key(example.prompt, example.context, example.history, example.response)
    source = _meta_string(row, "source") or settings.default_source or Path(str(raw_row["origin_file"])).stem
    group_id = _meta_string(row, "group_id") or _meta_string(row, "conversation_id")
    if not group_id:
        group_id = f"auto:{content_key(example.first_user_turn or example.prompt, '', (), '')[:20]}"
    given_id = _meta_string(row, "id")
    if given_id:
        record_id = f"{given_id}#t{example.turn_index}" if example.turn_index else given_id
    else:
        record_id = f"auto:{key[:24]}"
    return Record(
        id=record_id,
        source=source,
        split="",  # assigned per group by the prepare stage (corpus/splits.py), which sees all groups
        language=language,
        track=track,
        family=family,
        prompt=example.prompt,
        context=example.context,
        history=example.history,
        response=example.response,
        length_tokens=num_tokens,
        length_bin=bin_name,
        bucket_id=bucket_id(language, track, family, bin_name),
        system=example.system,
        group_id=group_id,
        content_key=key,
        variety=variety,
        style=_meta_string(row, "style"),
        license=_meta_string(row, "license"),
        source_split=_meta_string(row, "source_split"),
        source_id=_meta_string(row, "source_id"),
        language_rule=language_rule,
        family_rule=family_rule,
        machine_translated=bool(row.get("machine_translated", False)),
        origin_file=str(raw_row.get("origin_file", "")),
        origin_line=int(raw_row.get("origin_line", 0) or 0),
    )


@dataclasses.dataclass
class NormalizedRow:
    """The outcome of one raw row: records (several when a conversation is expanded) or one quarantine entry."""

    records: list[Record]
    quarantine: dict[str, Any] | None
    skipped_turns: list[str] = dataclasses.field(default_factory=list)
    """Reason codes of expanded turns that were rejected while other turns of the same row were kept."""


def row_examples(
    row: Mapping[str, Any], raw_row: Mapping[str, Any], settings: NormalizeSettings
) -> tuple[list[tuple[Mapping[str, Any], Example]], list[str]]:
    """((row-level fields, example) pairs, reason codes of parts already skipped) of one parsed row.

    Without a recipe the row is in one of our input formats and carries its own row-level fields. With one, it is
    a native row of the recipe's dataset: each plain row the recipe makes carries the fields of its example
    (never expanded again: the recipe already chose which turns are answers)."""
    if not settings.recipe:
        _, examples = examples_from_row(row, expand_turns=settings.expand_turns)
        return [(row, example) for example in examples], []
    plain_rows, skipped = recipe_plain_rows(
        recipe_named(settings.recipe),
        row,
        origin_file=str(raw_row.get("origin_file", "")),
        origin_line=int(raw_row.get("origin_line", 0) or 0),
    )
    return [(plain, examples_from_row(plain)[1][0]) for plain in plain_rows], skipped


def normalize_raw_row(raw_row: Mapping[str, Any], settings: NormalizeSettings) -> NormalizedRow:
    """Parse, adapt and bucket one raw row. Never raises on bad input."""
    if raw_row.get("read_error"):
        reason = str(raw_row["read_error"])
        return NormalizedRow([], quarantine_entry(raw_row, reason, QUARANTINE_REASONS.get(reason, reason)))
    try:
        row = json.loads(raw_row["raw"])
    except (json.JSONDecodeError, TypeError) as exc:
        return NormalizedRow([], quarantine_entry(raw_row, "malformed_json", str(exc)))
    if not isinstance(row, dict):
        return NormalizedRow(
            [],
            quarantine_entry(raw_row, "not_an_object", f"expected a JSON object, got {type(row).__name__}"),
        )
    try:
        pairs, skipped = row_examples(row, raw_row, settings)
        records = []
        for fields, example in pairs:
            try:
                records.append(build_record(fields, _clean_example(example), raw_row, settings))
            except Rejected as rejected:
                if len(pairs) == 1:
                    raise
                skipped.append(rejected.reason)
        if not records:  # every turn of an expanded conversation was rejected: report the last turn's reason
            fields, example = pairs[-1]
            build_record(fields, _clean_example(example), raw_row, settings)
    except Rejected as rejected:
        return NormalizedRow([], quarantine_entry(raw_row, rejected.reason, rejected.detail))
    return NormalizedRow(records, None, skipped)
