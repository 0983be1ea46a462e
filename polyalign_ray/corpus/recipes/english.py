"""Row mappings of the English datasets of the PolyAlign corpus (SQuAD v2 is in :mod:`passage_qa`).

Each function takes one native row, in the field layout the dataset is published with on the Hugging Face Hub
(the authors' original layout too where it differs and is still common), and returns the examples the paper takes
from it. The fixed assignments (language, track, family, style) are the recipe table's, in :mod:`catalog`.
"""

from __future__ import annotations

from polyalign_ray.corpus.adapters import Rejected
from polyalign_ray.corpus.recipes.native import NativeRow, text_key
from polyalign_ray.corpus.recipes.recipe import RecipeExample, RecipeOutput, Turn, conversation_examples

MS_MARCO_NO_ANSWER = "No Answer Present."
COQA_NO_ANSWER = "unknown"
MULTIWOZ_SPEAKERS = {0: "user", 1: "assistant", "USER": "user", "SYSTEM": "assistant"}
"""MultiWOZ 2.2's ``speaker``: a class label on the Hub (0 USER, 1 SYSTEM), a name in the original JSON."""


def dolly_examples(row: NativeRow) -> RecipeOutput:
    """databricks-dolly-15k: the human-written ``response`` to ``instruction``, with ``context`` (the reference
    text some categories give) as context. The dataset has no ids."""
    return [
        RecipeExample(
            prompt=row.text("instruction"),
            response=row.text("response"),
            context=row.optional_text("context"),
        )
    ]


def eli5_examples(row: NativeRow) -> RecipeOutput:
    """ELI5-Category: the highest-scored answer (the first of equal scores) to the question, whose text is the
    title followed by the body (``selftext``) when there is one."""
    answers = row.records("answers")
    if not answers:
        return [
            Rejected("missing_response", f"eli5_category: question {row.optional_text('q_id')} has no answer")
        ]
    best = max(answers, key=_score)  # max keeps the first of equal scores
    title, body = row.text("title"), row.optional_text("selftext").strip()
    return [
        RecipeExample(
            prompt=f"{title}\n\n{body}" if body else title,
            response=best.text("text"),
            native_id=row.optional_text("q_id"),
            group_key=row.optional_text("q_id"),
            part=best.optional_text("a_id"),
        )
    ]


def _score(answer: NativeRow) -> int:
    value = answer.fields.get("score")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise Rejected("bad_field_type", f"{answer.dataset}: an answer's 'score' must be a number")
    return int(value)


def _well_formed_answers(row: NativeRow) -> list[str]:
    """MS MARCO's ``wellFormedAnswers``; the v1.1 files write an empty list as the string ``"[]"``."""
    if row.fields.get("wellFormedAnswers") == "[]":
        return []
    return row.texts("wellFormedAnswers")


def ms_marco_examples(row: NativeRow) -> RecipeOutput:
    """MS MARCO v1.1: the first well-formed answer, else the first answer, with the passages the annotator
    selected (``is_selected``) as context. "No Answer Present." and an empty answer list are unanswerable."""
    candidates = [a for a in (*_well_formed_answers(row), *row.texts("answers")) if a.strip()]
    query_id = row.optional_text("query_id")
    if not candidates or candidates[0].strip() == MS_MARCO_NO_ANSWER:
        return [
            Rejected("unanswerable", f"ms_marco: query {query_id} has no answer ({MS_MARCO_NO_ANSWER!r})")
        ]
    selected = [p.text("passage_text") for p in row.records("passages") if p.fields.get("is_selected") == 1]
    return [
        RecipeExample(
            prompt=row.text("query"),
            response=candidates[0],
            context="\n\n".join(selected),
            native_id=query_id,
        )
    ]


def natural_questions_examples(row: NativeRow) -> RecipeOutput:
    """Natural Questions as published by sentence-transformers (``query``, ``answer``; the card also names the
    first column ``question``): the answer passage is the response. No ids."""
    question = row.text("query") if row.has("query") else row.text("question")
    return [RecipeExample(prompt=question, response=row.text("answer"))]


def coqa_examples(row: NativeRow) -> RecipeOutput:
    """CoQA: one example per question, the story as context and the earlier questions and answers as history.

    Questions are strings on the Hub and ``{"input_text", "turn_id"}`` objects in the original JSON; answers are
    ``{"input_text": [...], ...}`` on the Hub and a list of objects in the original. The Hub copy has no story id,
    so the conversation is keyed by its story. Turns answered "unknown" (CoQA's unanswerable) are skipped as
    ``unanswerable`` but stay in the history of later turns, as the annotators saw them.
    """
    if _holds_objects(row, "questions"):
        questions = [q.text("input_text") for q in row.records("questions")]
    else:
        questions = row.texts("questions")
    answers = [a.text("input_text") for a in row.records("answers")]
    if len(questions) != len(answers):
        return [
            Rejected("malformed_conversation", f"coqa: {len(questions)} questions but {len(answers)} answers")
        ]
    story = row.text("story")
    story_id = row.optional_text("id")
    turns: list[Turn] = []
    for question, answer in zip(questions, answers, strict=True):
        turns += [("user", question), ("assistant", answer)]
    examples = conversation_examples(
        turns, context=story, native_id=story_id, group_key=story_id or f"story:{text_key(story)}"
    )
    return [
        Rejected("unanswerable", f"coqa: turn {e.part} is answered {COQA_NO_ANSWER!r}")
        if e.response.strip().lower() == COQA_NO_ANSWER
        else e
        for e in examples
    ]


def _holds_objects(row: NativeRow, key: str) -> bool:
    """Whether ``key`` is a non-empty list of objects (CoQA's original layout) rather than of strings."""
    value = row.fields.get(key)
    return isinstance(value, list) and bool(value) and isinstance(value[0], dict)


def dailydialog_examples(row: NativeRow) -> RecipeOutput:
    """DailyDialog: every even turn (2nd, 4th, ...) answering the turn before it, earlier turns as history; the
    first speaker is the user. The dataset has no ids, so a dialogue is keyed by its text."""
    utterances = [u.strip() for u in row.texts("dialog")]
    if len(utterances) < 2:
        return [Rejected("no_assistant_turn", f"dailydialog: a dialogue of {len(utterances)} turn(s)")]
    turns = [("user" if i % 2 == 0 else "assistant", text) for i, text in enumerate(utterances)]
    dialogue_key = text_key("\n".join(utterances))
    return list(conversation_examples(turns, group_key=f"dialog:{dialogue_key}"))


def multiwoz_examples(row: NativeRow) -> RecipeOutput:
    """MultiWOZ 2.2: every system turn answering the user turn before it, earlier turns as history; the dialogue
    id (``PMUL4398.json``) keys the conversation."""
    turns: list[Turn] = []
    for turn in row.records("turns"):
        speaker = turn.fields.get("speaker")
        if (
            isinstance(speaker, bool)
            or not isinstance(speaker, (int, str))
            or speaker not in MULTIWOZ_SPEAKERS
        ):
            raise Rejected("malformed_conversation", f"multiwoz: unknown speaker {speaker!r}")
        turns.append((MULTIWOZ_SPEAKERS[speaker], turn.text("utterance")))
    dialogue_id = row.text("dialogue_id")
    return list(conversation_examples(turns, native_id=dialogue_id, group_key=dialogue_id))
