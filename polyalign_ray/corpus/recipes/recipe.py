"""What a source recipe is, and how its output becomes rows of the ``plain`` input format.

A recipe maps one native row of a published dataset to the examples the PolyAlign paper takes from it (the
answer it uses, with its prompt, context and earlier turns), or rejects it with a quarantine reason. The recipe's
fixed assignments (language, track, family, style) and the row's provenance (source dataset, native split, native
id) are then written into ordinary ``plain`` rows, so everything after this point (cleaning, bucketing, dedup,
splits) is the one code path every input takes, in the in-process engine and in Ray Data alike.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import PurePath
from typing import Any

from polyalign_ray.corpus.adapters import Rejected
from polyalign_ray.corpus.recipes.native import NativeRow

# (role, text) with role "user" or "assistant".
Turn = tuple[str, str]


@dataclasses.dataclass(frozen=True)
class RecipeExample:
    """One answer taken from a native row, before cleaning and bucketing."""

    prompt: str
    response: str
    context: str = ""
    history: tuple[Turn, ...] = ()
    native_id: str = ""
    """The dataset's own id of the row or item the answer comes from; empty when the dataset has none (the row
    index is recorded instead and the record id is a content hash, since row indices repeat across files)."""
    group_key: str = ""
    """What must stay in one split (a conversation, a passage); empty: our default, the prompt."""
    part: str = ""
    """Which of several answers of one native row this is (``t3``: the third answered turn, ``h2``: the second
    human answer); empty when the row gives one answer."""


RecipeOutput = list[RecipeExample | Rejected]
"""A map function's result: the examples of a row, and a :class:`Rejected` for each part of the row it skipped."""


@dataclasses.dataclass(frozen=True)
class HubLoad:
    """One ``datasets.load_dataset`` call that fetches (part of) a recipe's dataset.

    With ``files`` empty it is ``load_dataset(repo, config)``; otherwise the files are read with the packaged
    ``file_format`` loader (``json`` or ``parquet``), for repositories whose own loader is a dataset script,
    which current ``datasets`` versions no longer run (their Parquet export, or their raw files, are used).
    """

    repo: str
    config: str | None = None
    files: tuple[tuple[str, str], ...] = ()
    """(split, URL) pairs: ``hf://datasets/...`` paths or plain https URLs."""
    file_format: str = ""
    json_field: str | None = None
    """The field of a JSON document that holds the rows (``data`` in SQuAD-style files)."""

    @property
    def label(self) -> str:
        """Folder name of this load under ``DATA_DIR/inputs/<source>/``."""
        return self.config or "default"

    def load_arguments(self) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """Positional and keyword arguments of the ``datasets.load_dataset`` call."""
        if not self.files:
            return (self.repo, self.config), {}
        keywords: dict[str, Any] = {"data_files": dict(self.files)}
        if self.json_field:
            keywords["field"] = self.json_field
        return (self.file_format,), keywords


def hub_files(repo: str, paths: Mapping[str, str], revision: str = "") -> tuple[tuple[str, str], ...]:
    """(split, ``hf://`` URL) pairs of files in a Hub dataset repository, at ``revision`` if given."""
    at = f"@{revision.replace('/', '%2F')}" if revision else ""
    return tuple((split, f"hf://datasets/{repo}{at}/{path}") for split, path in paths.items())


def parquet_export(repo: str, config: str, splits: Sequence[str]) -> tuple[tuple[str, str], ...]:
    """The Hub's automatic Parquet export (branch ``refs/convert/parquet``) of a script-based dataset."""
    return hub_files(
        repo, {split: f"{config}/{split}/*.parquet" for split in splits}, revision="refs/convert/parquet"
    )


@dataclasses.dataclass(frozen=True)
class Recipe:
    """How one dataset of the paper's corpus becomes records: its fixed assignments, its row mapping, and where
    to load it from."""

    name: str
    dataset: str
    language: str
    """The declared language tag of every record (``zh-Hant`` keeps the traditional-script variety)."""
    track: str
    family: str
    style: str
    answer_rule: str
    """One line on which answer is used (documentation)."""
    map_row: Callable[[NativeRow], RecipeOutput]
    hub: tuple[HubLoad, ...]
    license: str = ""
    single_split: str = ""
    """The one split the dataset is published with, recorded when an input's name does not tell the split."""
    assemble: Callable[..., Any] | None = None
    """A whole-input step run before the per-row mapping (OASST2: message tables -> conversation trees)."""


_BRACKETED_SPLIT = re.compile(r"\[([^\[\]]+)\]$")
SPLIT_WORDS = ("train", "training", "validation", "valid", "val", "dev", "test", "trial")
_SPLIT_TOKEN = re.compile(rf"^(?:{'|'.join(SPLIT_WORDS)})\d?$")


def native_split_of(origin_file: str) -> str:
    """The source split an input row came from, from where the reader found it.

    ``folder[train]`` (one split of a ``save_to_disk`` folder) names it; otherwise the first split word in the
    file name (``train-00000-of-00001.parquet``, ``DRCD_dev.json``), else a folder named by a split word only
    (``default/train/0000.parquet``); a split word followed by one digit keeps it (``eli5-category-validation-1`` and
    ``validation1-000.jsonl`` -> ``validation1``, the Hub's name). Empty when nothing tells.
    """
    bracketed = _BRACKETED_SPLIT.search(origin_file)
    if bracketed:
        return bracketed.group(1)
    path = PurePath(origin_file)
    tokens = [t for t in re.split(r"[^0-9a-z]+", path.name.lower()) if t]
    for i, token in enumerate(tokens):
        if _SPLIT_TOKEN.match(token):
            following = tokens[i + 1] if i + 1 < len(tokens) else ""
            numbered = token.isalpha() and len(following) == 1 and following.isdigit()
            return token + following if numbered else token
    folder = path.parent.name.lower()
    return folder if _SPLIT_TOKEN.match(folder) else ""


def conversation_examples(
    turns: Sequence[Turn], *, context: str = "", native_id: str = "", group_key: str = ""
) -> list[RecipeExample]:
    """Every assistant turn that answers the user turn just before it, with all earlier turns as history.

    ``part`` is ``t<k>`` for the k-th assistant turn of the conversation (the convention of ``expand_turns``).
    """
    examples = []
    answered = 0
    for i, (role, text) in enumerate(turns):
        if role != "assistant":
            continue
        answered += 1
        if i > 0 and turns[i - 1][0] == "user":
            examples.append(
                RecipeExample(
                    prompt=turns[i - 1][1],
                    response=text,
                    context=context,
                    history=tuple(turns[: i - 1]),
                    native_id=native_id,
                    group_key=group_key,
                    part=f"t{answered}",
                )
            )
    return examples


def plain_row(recipe: Recipe, example: RecipeExample, *, source_split: str, row_index: int) -> dict[str, Any]:
    """The ``plain`` input row of one example, carrying the recipe's assignments and the provenance."""
    suffix = f"#{example.part}" if example.part else ""
    row: dict[str, Any] = {
        "prompt": example.prompt,
        "response": example.response,
        "context": example.context,
        "history": [{"role": role, "content": text} for role, text in example.history],
        "source": recipe.name,
        "source_split": source_split,
        "source_id": (example.native_id or f"row{row_index}") + suffix,
        "language": recipe.language,
        "track": recipe.track,
        "family": recipe.family,
        "style": recipe.style,
        "license": recipe.license,
    }
    if example.native_id:
        row["id"] = f"{recipe.name}:{example.native_id}{suffix}"
    if example.group_key:
        row["group_id"] = f"{recipe.name}:{example.group_key}"
    return row


def recipe_plain_rows(
    recipe: Recipe, native: Mapping[str, Any], *, origin_file: str, origin_line: int
) -> tuple[list[dict[str, Any]], list[str]]:
    """(plain rows, reason codes of skipped parts) of one native row; raises :class:`Rejected` when the row
    gives no example at all (with the reason of its first skipped part)."""
    outputs = recipe.map_row(NativeRow(recipe.name, native))
    examples = [o for o in outputs if isinstance(o, RecipeExample)]
    skipped = [o for o in outputs if isinstance(o, Rejected)]
    if not examples:
        if skipped:
            raise Rejected(skipped[0].reason, skipped[0].detail)
        raise Rejected("missing_response", f"{recipe.name}: the row holds no answer to use")
    split = native_split_of(origin_file) or recipe.single_split
    rows = [plain_row(recipe, e, source_split=split, row_index=max(origin_line - 1, 0)) for e in examples]
    return rows, [s.reason for s in skipped]
