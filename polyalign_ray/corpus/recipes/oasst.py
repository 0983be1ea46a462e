"""The Chinese subset of OpenAssistant OASST2: conversation trees, and how message tables become trees.

OASST2 is published two ways: as a table of messages (the Hub's ``OpenAssistant/oasst2``, one row per message
with ``message_id`` / ``parent_id`` / ``message_tree_id``), and as conversation trees (the release's
``*.trees.jsonl.gz``, one row per tree, each message holding its ``replies``). Only a tree shows an answer's
earlier turns, so :func:`assemble_trees` turns message tables into trees once, before the per-row step (the
same way for the in-process and the Ray engine, since both then read the written trees), and
:func:`oasst_tree_examples` maps one tree.

An assistant message is used when it, and every message above it, is not deleted and passed review
(``review_result`` true), and it is not synthetic; its ancestors are the history, its parent the prompt. The
zh subset is the trees whose first prompt is in Chinese (``lang == "zh"``); the others are left out at assembly
(counted in ``assembly.json``) and, when trees are given directly, quarantined as ``outside_subset``.
"""

from __future__ import annotations

import json
import logging
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from polyalign_ray.corpus.adapters import Rejected
from polyalign_ray.corpus.readers import ReadUnit, discover_read_units, read_unit
from polyalign_ray.corpus.recipes.native import NativeRow
from polyalign_ray.corpus.recipes.recipe import RecipeExample, RecipeOutput, Turn, native_split_of

log = logging.getLogger(__name__)

SUBSET_LANGUAGE = "zh"
OASST_ROLES = {"prompter": "user", "assistant": "assistant"}
MESSAGE_KEYS = ("message_id", "parent_id", "message_tree_id", "role", "text")


def message_problem(message: NativeRow) -> Rejected | None:
    """Why a message (and so everything below it) cannot be used, or None."""
    message_id = message.optional_text("message_id")
    if message.fields.get("deleted") is True:
        return Rejected("deleted_message", f"oasst2: message {message_id} is deleted")
    if message.fields.get("review_result") is not True:
        return Rejected(
            "unreviewed_message",
            f"oasst2: message {message_id} has no passing review "
            f"(review_count={message.fields.get('review_count')}, review_result={message.fields.get('review_result')})",
        )
    if message.fields.get("synthetic") is True:
        return Rejected("non_human_answer", f"oasst2: message {message_id} is synthetic")
    return None


def _walk(message: NativeRow, chain: tuple[Turn, ...], tree_id: str) -> Iterator[RecipeExample | Rejected]:
    """Depth first: an example for every usable assistant message, a rejection where a branch is cut."""
    role = OASST_ROLES.get(message.optional_text("role"))
    if role is None:
        yield Rejected("malformed_conversation", f"oasst2: unknown role {message.fields.get('role')!r}")
        return
    problem = message_problem(message)
    if problem is not None:
        yield problem
        return
    text = message.text("text")
    if role == "assistant" and chain and chain[-1][0] == "user":
        yield RecipeExample(
            prompt=chain[-1][1],
            response=text,
            history=chain[:-1],
            native_id=message.text("message_id"),
            group_key=tree_id,
        )
    for reply in message.records("replies"):
        yield from _walk(reply, (*chain, (role, text)), tree_id)


def oasst_tree_examples(row: NativeRow) -> RecipeOutput:
    """Examples of one conversation tree of the zh subset (a message-table row reaching this step was not
    assembled into a tree, which ``polyalign prepare`` always does first)."""
    root = row.fields.get("prompt")
    if not isinstance(root, Mapping):
        if is_message_row(row.fields):
            return [
                Rejected(
                    "malformed_conversation", "oasst2: a message row, not a tree; assemble the table first"
                )
            ]
        return [
            Rejected(
                "missing_field",
                f"oasst2: not a conversation tree (no 'prompt' message); keys seen: {sorted(row.fields)[:12]}",
            )
        ]
    root_message = NativeRow(row.dataset, root)
    language = root_message.optional_text("lang")
    if language != SUBSET_LANGUAGE:
        return [Rejected("outside_subset", f"oasst2: a tree in {language or 'no language'!r}, not zh")]
    tree_id = row.optional_text("message_tree_id") or root_message.text("message_id")
    return list(_walk(root_message, (), tree_id))


def is_message_row(row: Mapping[str, Any]) -> bool:
    """A row of the message table (not a tree)."""
    return all(key in row for key in MESSAGE_KEYS) and "replies" not in row


def _creation_order(message: Mapping[str, Any]) -> tuple[str, str]:
    return str(message.get("created_date") or ""), str(message["message_id"])


def trees_from_messages(messages: Iterable[Mapping[str, Any]]) -> tuple[list[dict[str, Any]], int]:
    """(trees in the release's layout, number of messages not reachable from their tree's root).

    Replies are ordered by creation time, trees by id, so the output does not depend on the table's order.
    """
    by_tree: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for message in messages:
        by_tree[str(message["message_tree_id"])].append(message)
    trees, unreachable = [], 0
    for tree_id in sorted(by_tree):
        members = sorted(by_tree[tree_id], key=_creation_order)
        replies: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
        roots = []
        for message in members:
            parent = message.get("parent_id")
            (replies[str(parent)] if parent is not None else roots).append(message)
        if len(roots) != 1:
            unreachable += len(members)
            continue
        tree = _with_replies(roots[0], replies)
        unreachable += len(members) - _count(tree)
        trees.append(
            {"message_tree_id": tree_id, "tree_state": roots[0].get("tree_state", ""), "prompt": tree}
        )
    return trees, unreachable


def _with_replies(
    message: Mapping[str, Any], replies: Mapping[str, list[Mapping[str, Any]]]
) -> dict[str, Any]:
    """``message`` with its ``replies``, recursively (the layout of the release's trees file)."""
    return {
        **message,
        "replies": [_with_replies(r, replies) for r in replies.get(str(message["message_id"]), [])],
    }


def _count(message: Mapping[str, Any]) -> int:
    return 1 + sum(_count(reply) for reply in message["replies"])


def _tree_language(tree: Mapping[str, Any]) -> str:
    root = tree.get("prompt")
    return str(root.get("lang") or "") if isinstance(root, Mapping) else ""


def assemble_trees(units: Sequence[ReadUnit], target: Path, *, max_row_chars: int) -> list[ReadUnit]:
    """Rewrite the inputs as one JSONL of zh trees per source split under ``target`` and return its read units.

    Message rows are assembled into trees; tree rows are kept; rows that are neither (or cannot be parsed) are
    written as they were read, so that the per-row step quarantines them with a reason instead of losing them.
    ``assembly.json`` counts what was read, built and left out.
    """
    messages: dict[str, list[dict[str, Any]]] = defaultdict(list)
    trees: dict[str, list[dict[str, Any]]] = defaultdict(list)
    unparsed: dict[str, list[str]] = defaultdict(list)
    for unit in units:
        for raw_row in read_unit(unit, max_chars=max_row_chars):
            split = native_split_of(str(raw_row["origin_file"])) or "unsplit"
            try:
                row = json.loads(raw_row["raw"]) if not raw_row["read_error"] else None
            except json.JSONDecodeError:
                row = None
            if isinstance(row, dict) and is_message_row(row):
                messages[split].append(row)
            elif isinstance(row, dict) and "prompt" in row:
                trees[split].append(row)
            else:
                unparsed[split].append(str(raw_row["raw"]))
    target.mkdir(parents=True, exist_ok=True)
    report: Counter[str] = Counter()
    paths = []
    for split in sorted({*messages, *trees, *unparsed}):
        built, unreachable = trees_from_messages(messages[split])
        every_tree = [*built, *trees[split]]
        kept = [t for t in every_tree if _tree_language(t) == SUBSET_LANGUAGE]
        report.update(
            {
                "messages_read": len(messages[split]),
                "trees_built": len(built),
                "trees_given": len(trees[split]),
                "unreachable_messages": unreachable,
                "trees_kept_zh": len(kept),
                "trees_left_out_other_languages": len(every_tree) - len(kept),
                "rows_passed_unparsed": len(unparsed[split]),
            }
        )
        path = target / f"{split}.jsonl"
        with path.open("w", encoding="utf-8") as handle:
            for tree in kept:
                handle.write(json.dumps(tree, ensure_ascii=False, default=str) + "\n")
            for line in unparsed[split]:
                handle.write(line.replace("\n", " ") + "\n")
        paths.append(str(path))
    (target / "assembly.json").write_text(json.dumps(dict(report), indent=2), encoding="utf-8")
    log.info("oasst2: %s", dict(report))
    return discover_read_units(paths) if paths else []
