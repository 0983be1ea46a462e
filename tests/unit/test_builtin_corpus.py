"""The built-in bilingual corpus: contract of the rows, determinism, caps, and the per-source reading rules."""

from __future__ import annotations

import gzip
from collections import Counter, defaultdict
from pathlib import Path

import pytest
import regex

from polyalign_ray.corpus import builtin
from polyalign_ray.corpus.builtin import (
    alternating_turns,
    builtin_corpus_rows,
    builtin_corpus_stats,
    cantonese_utterance_text,
    load_source,
    normalize_chinese_text,
    parse_debian_faq_text,
    row_bucket,
)
from polyalign_ray.schema import FAMILIES, LENGTH_BINS, track_of

REQUIRED_STRING_KEYS = ("id", "source", "license", "prompt", "response", "language", "family", "group_id")
SMALL_CAP = 25
SPACE_BETWEEN_IDEOGRAPHS = regex.compile(r"\p{Han}\s+\p{Han}")


def unit_of(row: dict) -> str:
    """The conversation unit a row was cut from: its id without the ``#t<n>`` turn suffix."""
    unit, _, turn = row["id"].rpartition("#t")
    assert unit and turn.isdigit(), row["id"]
    return unit


def turn_of(row: dict) -> int:
    return int(row["id"].rpartition("#t")[2])


@pytest.fixture(scope="module")
def rows() -> list[dict]:
    return builtin_corpus_rows()


@pytest.fixture(scope="module")
def stats(rows: list[dict]) -> dict:
    return builtin_corpus_stats(rows)


def test_two_calls_give_the_same_rows(rows: list[dict]) -> None:
    assert builtin_corpus_rows() == rows


def test_the_seed_changes_the_selection_but_not_its_determinism() -> None:
    first = builtin_corpus_rows(max_per_bucket=SMALL_CAP, seed=1)
    assert builtin_corpus_rows(max_per_bucket=SMALL_CAP, seed=1) == first
    other = builtin_corpus_rows(max_per_bucket=SMALL_CAP, seed=2)
    assert {row["id"] for row in first} != {row["id"] for row in other}


def test_mutating_returned_rows_does_not_leak_into_the_next_call() -> None:
    first = builtin_corpus_rows(max_per_bucket=SMALL_CAP)
    original_prompt = first[0]["prompt"]
    first[0]["prompt"] = "changed"
    first[-1]["history"].append({"role": "user", "content": "changed"})
    again = builtin_corpus_rows(max_per_bucket=SMALL_CAP)
    assert again[0]["prompt"] == original_prompt
    assert all(turn["content"] != "changed" for turn in again[-1]["history"])


def test_ids_are_unique(rows: list[dict]) -> None:
    duplicates = [row_id for row_id, count in Counter(row["id"] for row in rows).items() if count > 1]
    assert duplicates == []


def test_every_row_has_the_plain_format_keys_and_types(rows: list[dict]) -> None:
    for row in rows:
        for key in REQUIRED_STRING_KEYS:
            assert isinstance(row[key], str) and row[key].strip(), (key, row["id"])
        assert row["prompt"] == row["prompt"].strip() and row["response"] == row["response"].strip(), row[
            "id"
        ]
        assert isinstance(row["history"], list), row["id"]
        assert isinstance(row["context"], str), row["id"]
        assert isinstance(row["machine_translated"], bool), row["id"]
        assert isinstance(row["style"], str) and row["style"], row["id"]
        assert row["language"] in ("en", "zh"), row["id"]
        assert row["family"] in FAMILIES, row["id"]
        assert row["variety"] in (("",) if row["language"] == "en" else ("cmn", "yue")), row["id"]
        assert all(isinstance(turn["content"], str) and turn["content"].strip() for turn in row["history"])


def test_history_alternates_user_assistant_starting_with_the_user(rows: list[dict]) -> None:
    for row in rows:
        assert all(set(turn) == {"role", "content"} for turn in row["history"]), row["id"]
        roles = [turn["role"] for turn in row["history"]]
        assert roles == ["user", "assistant"] * (len(roles) // 2), row["id"]


def test_both_languages_have_a_few_hundred_rows_and_both_tracks(rows: list[dict]) -> None:
    by_language = Counter(row["language"] for row in rows)
    assert by_language["en"] >= 200 and by_language["zh"] >= 200, by_language
    tracks_by_language = {(row["language"], track_of(row["history"])) for row in rows}
    assert tracks_by_language == {("en", "single"), ("en", "multi"), ("zh", "single"), ("zh", "multi")}


def test_at_least_two_families_and_several_length_bins(rows: list[dict]) -> None:
    assert {"qa", "dialogue"} <= {row["family"] for row in rows}
    bins = {row_bucket(row).rsplit("|", 1)[1] for row in rows}
    assert len(bins) >= 3 and bins <= set(LENGTH_BINS)


@pytest.mark.parametrize("cap", [SMALL_CAP, 400])
def test_no_bucket_exceeds_the_cap(cap: int, rows: list[dict]) -> None:
    capped = rows if cap == 400 else builtin_corpus_rows(max_per_bucket=cap)
    counts = Counter(row_bucket(row) for row in capped)
    assert max(counts.values()) == cap  # the big buckets are full ...
    assert all(count <= cap for count in counts.values())  # ... and none overflows


def test_a_zero_cap_gives_no_rows_and_a_negative_one_is_an_error() -> None:
    assert builtin_corpus_rows(max_per_bucket=0) == []
    with pytest.raises(ValueError):
        builtin_corpus_rows(max_per_bucket=-1)


def test_cantonese_rows_are_zh_yue_and_only_they_are(rows: list[dict]) -> None:
    cantonese = [row for row in rows if row["source"] == "pycantonese/hkcancor"]
    assert len(cantonese) >= 100
    assert all(row["language"] == "zh" and row["variety"] == "yue" for row in cantonese)
    assert all(row["license"] == "CC-BY-4.0" and not row["machine_translated"] for row in cantonese)
    assert all(row["source"] == "pycantonese/hkcancor" for row in rows if row["variety"] == "yue")
    # Words are joined without spaces: no space may sit between two ideographs.
    texts = [text for row in cantonese for text in (row["prompt"], row["response"])]
    assert not [text for text in texts if SPACE_BETWEEN_IDEOGRAPHS.search(text)]


def test_rows_of_one_conversation_share_its_group_and_grow_its_history(rows: list[dict]) -> None:
    rows_by_unit: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        rows_by_unit[unit_of(row)].append(row)
    checked_pairs = 0
    for unit_rows in rows_by_unit.values():
        assert len({row["group_id"] for row in unit_rows}) == 1
        by_turn = {turn_of(row): row for row in unit_rows}
        for turn, row in by_turn.items():
            assert len(row["history"]) == 2 * (turn - 1), row["id"]
            following = by_turn.get(turn + 1)
            if following is not None:
                expected = [
                    *row["history"],
                    {"role": "user", "content": row["prompt"]},
                    {"role": "assistant", "content": row["response"]},
                ]
                assert following["history"] == expected, following["id"]
                checked_pairs += 1
    assert checked_pairs >= 100
    multi_groups = {row["group_id"] for row in rows if track_of(row["history"]) == "multi"}
    rows_per_multi_group = Counter(row["group_id"] for row in rows if row["group_id"] in multi_groups)
    assert sum(1 for count in rows_per_multi_group.values() if count >= 2) >= 50


def test_hkcancor_windows_of_one_recording_share_the_recording_group(rows: list[dict]) -> None:
    groups_by_recording: dict[str, set[str]] = defaultdict(set)
    for row in rows:
        if row["source"] == "pycantonese/hkcancor":
            recording = row["id"].split("/")[1]
            groups_by_recording[recording].add(row["group_id"])
    assert groups_by_recording
    assert all(groups == {f"hkcancor/{recording}"} for recording, groups in groups_by_recording.items())


def test_whole_conversations_are_kept_where_the_cap_allows(rows: list[dict]) -> None:
    chitchat_units = Counter(unit_of(row) for row in rows if row["source"] == "chitchat-dataset")
    assert sum(1 for count in chitchat_units.values() if count >= 3) >= 20


def test_without_turn_expansion_each_conversation_gives_its_last_answer_only() -> None:
    collapsed = builtin_corpus_rows(max_per_bucket=SMALL_CAP, expand_turns=False)
    units = Counter(unit_of(row) for row in collapsed)
    assert max(units.values()) == 1
    assert any(len(row["history"]) >= 4 for row in collapsed)
    for row in collapsed:
        assert len(row["history"]) == 2 * (turn_of(row) - 1), row["id"]


def test_chatterbot_chinese_is_flagged_by_the_translator_fingerprint(rows: list[dict]) -> None:
    chinese = [row for row in rows if row["source"] == "chatterbot-corpus/chinese"]
    flagged_by_file: dict[str, set[bool]] = defaultdict(set)
    for row in chinese:
        flagged_by_file[row["id"].split("/")[2]].add(row["machine_translated"])
        assert row["variety"] == "cmn"
    assert flagged_by_file["humor"] == {True}
    assert flagged_by_file["psychology"] == {True}
    assert flagged_by_file["conversations"] == {False}
    assert not any(row["machine_translated"] for row in rows if row["language"] == "en")


def test_chatterbot_alternative_answers_become_single_turn_rows_of_one_group(rows: list[dict]) -> None:
    emotion = [row for row in rows if row["id"].startswith("chatterbot/english/emotion/")]
    assert emotion
    assert all(row["history"] == [] and "/alt" in row["id"] for row in emotion)
    prompts_by_group: dict[str, set[str]] = defaultdict(set)
    for row in emotion:
        prompts_by_group[row["group_id"]].add(row["prompt"])
    assert all(len(prompts) == 1 for prompts in prompts_by_group.values())


def test_chatterbot_duplicate_entries_are_kept_once(rows: list[dict]) -> None:
    pairs = Counter(
        (row["prompt"], row["response"])
        for row in rows
        if row["id"].startswith("chatterbot/english/tech_support/")
    )
    assert pairs and max(pairs.values()) == 1


def test_stats_count_every_row_and_name_missing_sources(rows: list[dict], stats: dict) -> None:
    assert stats["total_rows"] == len(rows)
    assert sum(stats["by_source"].values()) == len(rows)
    assert sum(stats["by_language"].values()) == len(rows)
    assert sum(stats["by_bucket"].values()) == len(rows)
    assert stats["max_rows_in_a_bucket"] <= 400
    assert set(stats["by_bucket"]).isdisjoint(stats["empty_buckets"])
    assert {"chatterbot-corpus/english", "chatterbot-corpus/chinese", "chitchat-dataset"} <= set(
        stats["by_source"]
    )
    for source in ("debian-faq/en", "debian-faq/zh-cn"):
        # The Debian FAQ is optional: either its rows are there or the stats say why not.
        assert (source in stats["by_source"]) != (source in stats["sources_unavailable"])


def test_alternating_turns_drops_empty_texts_and_merges_a_speakers_run() -> None:
    turns = alternating_turns([("a", "hi"), ("a", "there"), ("b", ""), ("b", "yo"), ("a", "bye")], "\n")
    assert turns == ("hi\nthere", "yo", "bye")
    assert alternating_turns([("a", "x"), ("b", ""), ("a", "y")], "") == ("xy",)


def test_cantonese_words_join_without_spaces_and_get_full_width_punctuation() -> None:
    words = ["我", "聽", "朋友", "講", ",", "Orlando", "Disney", "嗰個", "-", "好", "抵", "玩", "喎", "."]
    assert cantonese_utterance_text(words) == "我聽朋友講，Orlando Disney嗰個好抵玩喎。"
    assert cantonese_utterance_text(["-", "."]) == ""
    assert cantonese_utterance_text(['"', "係", '"', "?"]) == "“係”？"


def test_chinese_normalization_removes_spaces_between_characters_only() -> None:
    assert normalize_chinese_text("  你 好 ， 我用 Python 写 代码 ") == "你好，我用 Python 写代码"


FAQ_SAMPLE = (
    "Table of Contents\n"
    "\n"
    "1. Definitions\n"
    "    1.1.\u00a0What is this FAQ?\n"
    "\n"
    "Chapter 1. Definitions\n"
    "\n"
    "1.1.\u00a0What is this FAQ?\n"
    "\n"
    "\u00a0\u00a0\u00a0 This document answers questions, see the site (https:\n"
    "    //www.debian.org/doc) .\n"
    "\n"
    "    Second paragraph.\n"
    "\n"
    "1.2.\u00a0Why does the official CD contain symlinks for `frozen'\n"
    "and `unstable'?\n"
    "\n"
    "    So that they work.\n"
    "\n"
    "16.2.\u00a0Feedback\n"
    "\n"
    "    Send mail.\n"
)


def test_debian_faq_text_parses_question_sections_only() -> None:
    sections = parse_debian_faq_text(FAQ_SAMPLE, "en")
    assert sections == [
        (
            "1.1",
            "What is this FAQ?",
            "This document answers questions, see the site (https://www.debian.org/doc).\n\nSecond paragraph.",
        ),
        (
            "1.2",
            "Why does the official CD contain symlinks for `frozen' and `unstable'?",
            "So that they work.",
        ),
    ]


def test_debian_faq_chinese_lines_join_without_spaces_between_characters() -> None:
    text = "1.1.\u00a0本 FAQ 文档是什么？\n\n    本文档提供了关于 Debian 发行版的常见\n    问题。您可以在\n    Debian 的网站找到。\n"
    assert parse_debian_faq_text(text, "zh") == [
        (
            "1.1",
            "本 FAQ 文档是什么？",
            "本文档提供了关于 Debian 发行版的常见问题。您可以在 Debian 的网站找到。",
        )
    ]


def test_debian_faq_is_read_when_installed_and_reported_when_not(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setattr(builtin, "DEBIAN_FAQ_DIRECTORY", tmp_path)
    missing = load_source("debian-faq/en")
    assert missing.conversations == () and "debian-faq" in missing.unavailable_reason
    with gzip.open(tmp_path / "debian-faq.en.txt.gz", "wt", encoding="utf-8") as handle:
        handle.write(FAQ_SAMPLE)
    loaded = load_source("debian-faq/en")
    assert loaded.unavailable_reason == ""
    assert [c.unit_id for c in loaded.conversations] == ["debian-faq/en/1.1", "debian-faq/en/1.2"]
    assert all(c.family == "qa" and c.group_id.startswith("debian-faq/1.") for c in loaded.conversations)
