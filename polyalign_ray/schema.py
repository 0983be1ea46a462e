"""The normalized record and the bucket rules of METHOD.md section 1.

Every example, whatever its input format, becomes one :class:`Record`. Its bucket is
``language|track|family|length_bin`` and is derived here, by small pure functions, so that the data plane,
the references, the training loops and the evaluation all bucket text the same way.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Sequence
from typing import Any

import regex

LANGUAGES: tuple[str, ...] = ("en", "zh")
TRACKS: tuple[str, ...] = ("single", "multi")
FAMILIES: tuple[str, ...] = ("qa", "dialogue", "assistant")
LENGTH_BINS: tuple[str, ...] = ("short", "medium", "long", "xlong")
SPLITS: tuple[str, ...] = ("train", "val", "test")
# Upper bounds (inclusive) of the length bins, in length tokens; the paper's thresholds, kept for comparability.
LENGTH_BIN_UPPER: tuple[tuple[str, int], ...] = (("short", 40), ("medium", 120), ("long", 240))
ROLES: tuple[str, ...] = ("system", "user", "assistant")
WILDCARD = "*"

# One length token per CJK ideograph, per run of letters of any other script (inner apostrophes kept inside the
# run, so "don't" is one token), per run of decimal digits, and per other non-space symbol.
_LETTER = r"[\p{L}\p{M}--\p{Han}]"
LENGTH_TOKEN_PATTERN = regex.compile(
    rf"(?V1)\p{{Han}}|{_LETTER}+(?:['’]{_LETTER}+)*|\p{{Nd}}+|\S",
)
_HAN = regex.compile(r"\p{Han}")
_LETTERS = regex.compile(r"\p{L}")
_LATIN = regex.compile(r"\p{Latin}")
_KANA_HANGUL = regex.compile(r"[\p{Hiragana}\p{Katakana}\p{Hangul}]")

# Language detection from script: Chinese text routinely carries Latin words (product names, code, units), each of
# which contributes several letters against one ideograph per Chinese word, so a minority share of ideographs
# among letters already marks Chinese.
CJK_SHARE_FOR_ZH = 0.3
LATIN_SHARE_FOR_EN = 0.5
KANA_HANGUL_SHARE_FOR_OTHER = 0.1

LANGUAGE_ALIASES: dict[str, tuple[str, str | None]] = {
    "en": ("en", None),
    "eng": ("en", None),
    "english": ("en", None),
    "en-us": ("en", None),
    "en-gb": ("en", None),
    "zh": ("zh", None),
    "zho": ("zh", None),
    "chinese": ("zh", None),
    "cn": ("zh", "cmn"),
    "zh-cn": ("zh", "cmn"),
    "zh-hans": ("zh", "cmn"),
    "zh-sg": ("zh", "cmn"),
    "cmn": ("zh", "cmn"),
    "mandarin": ("zh", "cmn"),
    "zh-tw": ("zh", "cmn-hant"),
    "zh-hant": ("zh", "cmn-hant"),
    "zh-hk": ("zh", "yue"),
    "yue": ("zh", "yue"),
    "zh-yue": ("zh", "yue"),
    "cantonese": ("zh", "yue"),
}


def length_tokens(text: str) -> list[str]:
    """Split ``text`` into METHOD.md's language-neutral length tokens.

    The same rule counts English and Chinese, so that "40 tokens" means a comparable amount of text in both.
    """
    return LENGTH_TOKEN_PATTERN.findall(text)


def count_length_tokens(text: str) -> int:
    """Number of length tokens in ``text`` (see :func:`length_tokens`)."""
    return sum(1 for _ in LENGTH_TOKEN_PATTERN.finditer(text))


def length_bin(num_tokens: int) -> str:
    """The paper's length bin: short <= 40 < medium <= 120 < long <= 240 < xlong."""
    for name, upper in LENGTH_BIN_UPPER:
        if num_tokens <= upper:
            return name
    return "xlong"


def script_language(text: str) -> str | None:
    """Language from the script alone: ``"zh"``, ``"en"``, ``"other"``, or None when ``text`` has no letters.

    The share of CJK ideographs among all letters decides Chinese; Latin letters decide English; kana or hangul
    (Japanese, Korean) and other scripts are ``"other"`` so that the caller quarantines them instead of guessing.
    """
    letters = len(_LETTERS.findall(text))  # \p{L} includes the ideographs (category Lo)
    if letters == 0:
        return None
    han = len(_HAN.findall(text))
    if len(_KANA_HANGUL.findall(text)) / letters > KANA_HANGUL_SHARE_FOR_OTHER:
        return "other"
    if han / letters >= CJK_SHARE_FOR_ZH:
        return "zh"
    if len(_LATIN.findall(text)) / letters >= LATIN_SHARE_FOR_EN:
        return "en"
    return "other"


def normalize_language_tag(tag: str) -> tuple[str, str | None] | None:
    """Map a declared language tag (``"zh-CN"``, ``"English"``, ``"yue"``) to (language, variety), or None if
    the tag names a language this project does not model."""
    return LANGUAGE_ALIASES.get(tag.strip().lower().replace("_", "-"))


def history_turns(value: Any) -> tuple[dict[str, str], ...]:
    """A history as stored anywhere (a list or tuple of turns, a numpy array of them from Parquet, a JSON string
    as some writers store nested columns, None or a blank string for none) as ``{"role", "content"}`` turns."""
    if isinstance(value, str):
        value = json.loads(value) if value.strip() else []
    return tuple(
        {"role": str(t["role"]), "content": str(t["content"])} for t in (value if value is not None else [])
    )


def track_of(history: Sequence[dict[str, str]]) -> str:
    """``multi`` when the history holds at least one earlier assistant turn (so an exchange happened), else
    ``single``. A lone system message or a lone earlier user message is not an exchange."""
    return "multi" if any(turn.get("role") == "assistant" for turn in history) else "single"


def family_by_rule(*, has_context: bool, track: str) -> tuple[str, str]:
    """METHOD.md's transparent family rules, returning (family, rule name) so the rule used can be recorded."""
    if has_context:
        return "qa", "rule:context"
    if track == "multi":
        return "dialogue", "rule:multi_turn"
    return "assistant", "rule:default"


def bucket_id(language: str, track: str, family: str, bin_name: str) -> str:
    """``language|track|family|length_bin``, e.g. ``zh|multi|dialogue|short``."""
    return f"{language}|{track}|{family}|{bin_name}"


def parent_buckets(bucket: str) -> list[str]:
    """The backoff chain of a bucket, most specific first and the bucket itself included:
    ``lang|track|family|bin`` -> ``lang|track|family|*`` -> ``lang|track|*|*`` -> ``lang|*|*|*``."""
    language, track, family, _ = bucket.split("|")
    return [
        bucket,
        bucket_id(language, track, family, WILDCARD),
        bucket_id(language, track, WILDCARD, WILDCARD),
        bucket_id(language, WILDCARD, WILDCARD, WILDCARD),
    ]


def all_bucket_ids() -> list[str]:
    """Every concrete bucket id the schema allows (2 x 2 x 3 x 4 = 48), in a fixed order."""
    return [
        bucket_id(lang, track, fam, bin_name)
        for lang in LANGUAGES
        for track in TRACKS
        for fam in FAMILIES
        for bin_name in LENGTH_BINS
    ]


def content_key(prompt: str, context: str, history: Sequence[dict[str, str]], response: str) -> str:
    """Hash of the normalized (prompt, context, history, response): exact duplicates share it across sources."""
    payload = json.dumps(
        [prompt, context, [[t["role"], t["content"]] for t in history], response],
        ensure_ascii=False,
        separators=(",", ":"),
    )
    return hashlib.blake2b(payload.encode("utf-8"), digest_size=16).hexdigest()


def stable_fraction(key: str, seed: int) -> float:
    """A uniform number in [0, 1) that depends only on (seed, key): the basis of deterministic hash splits."""
    digest = hashlib.blake2b(f"{seed}\x1f{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


SPLIT_PRIORITY: dict[str, int] = {"test": 0, "val": 1, "train": 2}


@dataclasses.dataclass(frozen=True)
class Record:
    """One normalized example: a human ``response`` to ``prompt`` in its ``context`` and ``history``."""

    id: str
    source: str
    split: str
    language: str
    track: str
    family: str
    prompt: str
    context: str
    history: tuple[dict[str, str], ...]
    response: str
    length_tokens: int
    length_bin: str
    bucket_id: str
    system: str = ""
    group_id: str = ""
    content_key: str = ""
    variety: str = ""
    style: str = ""
    license: str = ""
    source_split: str = ""
    """The split the example had in its source dataset (``train``, ``validation``...), when known."""
    source_id: str = ""
    """The example's own id in its source dataset (``row12`` when the dataset has no ids, ``#t3`` for a turn)."""
    language_rule: str = ""
    family_rule: str = ""
    machine_translated: bool = False
    origin_file: str = ""
    origin_line: int = 0

    def to_row(self) -> dict[str, Any]:
        """A flat dict with the fixed column set of :data:`RECORD_COLUMNS` (history as a list of dicts).

        Built field by field: ``dataclasses.asdict`` deep-copies and took a third of the prepare stage's time."""
        row = {name: getattr(self, name) for name in RECORD_COLUMNS}
        row["history"] = [dict(turn) for turn in self.history]
        return row

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Record:
        """Inverse of :meth:`to_row`; tolerates history given as a JSON string or numpy array of dicts."""
        values = {f.name: row[f.name] for f in dataclasses.fields(cls) if f.name in row}
        values["history"] = history_turns(values.get("history"))
        values["origin_line"] = int(values.get("origin_line", 0) or 0)
        values["length_tokens"] = int(values["length_tokens"])
        values["machine_translated"] = bool(values.get("machine_translated", False))
        return cls(**values)


RECORD_COLUMNS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(Record))
