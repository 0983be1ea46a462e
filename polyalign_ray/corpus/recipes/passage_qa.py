"""Reading-comprehension datasets in the SQuAD layout: SQuAD v2, CMRC2018, DRCD, DuReader.

Two shapes of the same content exist:

* **flat** (the Hugging Face layout): one row per question, ``id``, ``context``, ``question``, ``answers`` as
  ``{"text": [...], "answer_start": [...]}`` (or a list of ``{"text", "answer_start"}``);
* **articles** (the authors' JSON files such as ``DRCD_training.json``, whose rows are the items of ``data``):
  ``paragraphs[].context`` and ``paragraphs[].qas[]`` with ``id``, ``question``, ``answers`` and, in SQuAD v2
  and DuReader-checklist, ``is_impossible``. DuReader's files hold a whole split in one article, far above
  ``data.max_row_chars``, so :func:`flatten_article_units` rewrites article inputs as flat rows before the
  per-row step; :func:`passage_qa_examples` still reads an article row directly, through the same flattening.

The first answer is the response and the passage is the context. A question without an answer (SQuAD v2's
unanswerable questions, DuReader's unanswerable rows and its test split, whose answers are withheld) is
quarantined as ``unanswerable`` rather than kept with an empty answer. Every question of a passage shares one
group, so a passage never appears in two splits.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from polyalign_ray.corpus.adapters import Rejected
from polyalign_ray.corpus.readers import ReadUnit, discover_read_units, read_unit
from polyalign_ray.corpus.recipes.native import NativeRow, text_key
from polyalign_ray.corpus.recipes.recipe import RecipeExample, RecipeOutput, native_split_of

# An article row of the authors' files may hold a whole split (DuReader: ~15 MB), read here in one piece; the
# flat rows written from it are held to data.max_row_chars again by the per-row step.
ARTICLE_MAX_CHARS = 1 << 31
FLAT_KEYS = ("id", "context", "question", "answers", "is_impossible")


def is_article_row(row: Mapping[str, Any]) -> bool:
    """An article of the authors' SQuAD-style files (it holds ``paragraphs``), not a flat question row."""
    return "paragraphs" in row


def flat_question_rows(article: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The flat rows (``id``, ``title``, ``context``, ``question``, ``answers``, ``is_impossible``) of an
    article; raises :class:`Rejected` when its paragraphs are not a list of objects."""
    rows = []
    article_row = NativeRow("articles", article)
    for paragraph in article_row.records("paragraphs"):
        for question in paragraph.records("qas"):
            flat = {key: question.fields[key] for key in FLAT_KEYS if key in question.fields}
            rows.append({**flat, "title": article.get("title"), "context": paragraph.fields.get("context")})
    return rows


def question_example(question: NativeRow) -> RecipeExample | Rejected:
    """The example of one flat question row, or ``unanswerable`` when it has no answer."""
    question_id = question.optional_text("id")
    context = question.text("context")
    answers = question.records("answers")
    if question.fields.get("is_impossible") is True or not answers:
        return Rejected(
            "unanswerable", f"{question.dataset}: question {question_id or '?'} has no answer in its passage"
        )
    return RecipeExample(
        prompt=question.text("question"),
        response=answers[0].text("text"),
        context=context,
        native_id=question_id,
        group_key=f"passage:{text_key(context)}",
    )


def passage_qa_examples(row: NativeRow) -> RecipeOutput:
    """The example of a flat question row, or those of every question of an article row."""
    if not is_article_row(row.fields):
        return [question_example(row)]
    return [question_example(NativeRow(row.dataset, flat)) for flat in flat_question_rows(row.fields)]


def _flattened_lines(rows: Iterator[dict[str, Any]]) -> Iterator[str]:
    """JSONL lines of an article input: flat question rows, and every other row as it was read (so the per-row
    step quarantines it with its reason rather than losing it)."""
    for raw_row in rows:
        row = None
        if not raw_row["read_error"]:
            try:
                row = json.loads(raw_row["raw"])
            except json.JSONDecodeError:
                row = None
        if isinstance(row, dict) and is_article_row(row):
            try:
                flat_rows = flat_question_rows(row)
            except Rejected:
                flat_rows = []
            if flat_rows:
                yield from (json.dumps(flat, ensure_ascii=False, default=str) for flat in flat_rows)
                continue
        yield str(raw_row["raw"]).replace("\n", " ")


def flatten_article_units(units: Sequence[ReadUnit], target: Path, *, max_row_chars: int) -> list[ReadUnit]:
    """Inputs whose first row is an article are rewritten as flat question rows under ``target`` (one JSONL per
    input, named after its source split so the split is still recorded); other inputs are read as they are."""
    # Article rows are read whole on purpose (ARTICLE_MAX_CHARS); the per-row step applies max_row_chars again.
    del max_row_chars
    out: list[ReadUnit] = []
    for index, unit in enumerate(units):
        rows = read_unit(unit, max_chars=ARTICLE_MAX_CHARS)
        first = next(rows, None)
        try:
            first_row = json.loads(first["raw"]) if first and not first["read_error"] else None
        except json.JSONDecodeError:
            first_row = None
        if not (isinstance(first_row, dict) and is_article_row(first_row)):
            out.append(unit)
            continue
        split = native_split_of(str(first["origin_file"])) or "unsplit"
        target.mkdir(parents=True, exist_ok=True)
        path = target / f"{split}-{index:03d}.jsonl"
        with path.open("w", encoding="utf-8") as handle:
            for line in _flattened_lines(_chain(first, rows)):
                handle.write(line + "\n")
        out.extend(discover_read_units([str(path)]))
    return out


def _chain(first: dict[str, Any], rest: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    yield first
    yield from rest
