"""Row mappings of the Chinese instruction and long-form QA datasets of the PolyAlign corpus.

CMRC2018, DRCD and DuReader are in :mod:`passage_qa`, the OASST2 Chinese subset in :mod:`oasst`.
"""

from __future__ import annotations

from polyalign_ray.corpus.adapters import Rejected
from polyalign_ray.corpus.recipes.native import NativeRow
from polyalign_ray.corpus.recipes.recipe import RecipeExample, RecipeOutput


def coig_cqia_examples(row: NativeRow) -> RecipeOutput:
    """COIG-CQIA: the ``output`` to ``instruction`` (``input``, when given, is the context, as in every
    instruction/input/output dataset), kept only when a human wrote it (``answer_from == "human"``) or verified
    it (``human_verified``): the corpus models human answers, and a few COIG-CQIA answers are model-written."""
    answer_from = row.optional_text("answer_from").strip().lower()
    verified = row.fields.get("human_verified") is True
    if answer_from != "human" and not verified:
        return [
            Rejected(
                "non_human_answer",
                f"coig_cqia: answer_from={answer_from or None!r} and not human_verified",
            )
        ]
    return [
        RecipeExample(
            prompt=row.text("instruction"), response=row.text("output"), context=row.optional_text("input")
        )
    ]


def hc3_chinese_examples(row: NativeRow) -> RecipeOutput:
    """HC3-Chinese: one example per human answer (``human_answers``); the ChatGPT answers are never used. The
    ``id`` of the Hub's loader is the row's line number, so it is not used as a record id (the row index is
    recorded either way)."""
    question = row.text("question")
    answers = row.texts("human_answers")
    if not answers:
        return [Rejected("missing_response", "hc3_chinese: the question has no human answer")]
    return [
        RecipeExample(prompt=question, response=answer, part=f"h{k}" if len(answers) > 1 else "")
        for k, answer in enumerate(answers, start=1)
    ]
