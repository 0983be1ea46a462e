"""METHOD.md section 1: length tokens, bins, language, track, family, bucket ids. Golden values by hand."""

from __future__ import annotations

import pytest

from polyalign_ray.schema import (
    all_bucket_ids,
    bucket_id,
    content_key,
    count_length_tokens,
    family_by_rule,
    length_bin,
    length_tokens,
    normalize_language_tag,
    parent_buckets,
    script_language,
    track_of,
)


@pytest.mark.parametrize(
    ("text", "tokens"),
    [
        # letters run, symbol, letters run, symbol
        ("Hello, world!", ["Hello", ",", "world", "!"]),
        # inner apostrophes stay inside the letter run; outer quotes are symbols
        ("don't stop", ["don't", "stop"]),
        ("rock'n'roll", ["rock'n'roll"]),
        ("'quoted'", ["'", "quoted", "'"]),
        ("it’s", ["it’s"]),
        # one token per CJK ideograph, full-width punctuation is a symbol
        ("我爱北京。", ["我", "爱", "北", "京", "。"]),
        # digit runs are one token; the decimal point is a symbol
        ("3.14 apples", ["3", ".", "14", "apples"]),
        # mixed script: letters, symbol, digits, ideographs
        ("GPT-4模型", ["GPT", "-", "4", "模", "型"]),
        # letters of any script: accented Latin, Cyrillic, Greek runs
        ("café Привет αβγ", ["café", "Привет", "αβγ"]),
        ("", []),
        ("   \n\t ", []),
    ],
)
def test_length_tokens_golden(text: str, tokens: list[str]) -> None:
    assert length_tokens(text) == tokens
    assert count_length_tokens(text) == len(tokens)


@pytest.mark.parametrize(
    ("n", "expected"),
    [
        (1, "short"),
        (40, "short"),
        (41, "medium"),
        (120, "medium"),
        (121, "long"),
        (240, "long"),
        (241, "xlong"),
    ],
)
def test_length_bin_boundaries(n: int, expected: str) -> None:
    assert length_bin(n) == expected


@pytest.mark.parametrize(
    ("text", "n", "expected_bin"),
    [
        (" ".join(["word"] * 40), 40, "short"),
        (" ".join(["word"] * 41), 41, "medium"),
        ("字" * 40, 40, "short"),
        ("字" * 41, 41, "medium"),
        # 20 ideographs + 19 words + a full stop = 40 tokens
        ("中" * 20 + " ".join(["ok"] * 19) + ".", 40, "short"),
        ("中" * 20 + " ".join(["ok"] * 20) + ".", 41, "medium"),
    ],
)
def test_text_length_bin_boundaries(text: str, n: int, expected_bin: str) -> None:
    assert count_length_tokens(text) == n
    assert length_bin(count_length_tokens(text)) == expected_bin


@pytest.mark.parametrize(
    ("text", "language"),
    [
        ("The weather is nice today.", "en"),
        ("今天天气很好。", "zh"),
        # Chinese with an English product name: 5 ideographs among 5 + 6 = 11 letters (45 %) is still Chinese
        ("我用 Python 写代码", "zh"),
        ("I learned the word 你好 today in class", "en"),
        ("Привет, как дела?", "other"),
        ("こんにちは、元気ですか", "other"),
        ("12345 !!!", None),
    ],
)
def test_script_language(text: str, language: str | None) -> None:
    assert script_language(text) == language


def test_language_tags() -> None:
    assert normalize_language_tag("zh-CN") == ("zh", "cmn")
    assert normalize_language_tag("English") == ("en", None)
    assert normalize_language_tag("yue") == ("zh", "yue")
    assert normalize_language_tag("fr") is None


def test_track_needs_an_earlier_assistant_turn() -> None:
    assert track_of([]) == "single"
    assert track_of([{"role": "system", "content": "be brief"}]) == "single"
    assert track_of([{"role": "user", "content": "hi"}]) == "single"
    assert track_of([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]) == "multi"


def test_family_rules_in_order() -> None:
    assert family_by_rule(has_context=True, track="multi") == ("qa", "rule:context")
    assert family_by_rule(has_context=False, track="multi") == ("dialogue", "rule:multi_turn")
    assert family_by_rule(has_context=False, track="single") == ("assistant", "rule:default")


def test_bucket_ids_and_backoff_chain() -> None:
    bucket = bucket_id("zh", "multi", "dialogue", "short")
    assert bucket == "zh|multi|dialogue|short"
    assert parent_buckets(bucket) == [
        "zh|multi|dialogue|short",
        "zh|multi|dialogue|*",
        "zh|multi|*|*",
        "zh|*|*|*",
    ]
    assert len(all_bucket_ids()) == 2 * 2 * 3 * 4
    assert len(set(all_bucket_ids())) == 48


def test_content_key_sees_every_part() -> None:
    history = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]
    base = content_key("p", "c", history, "r")
    assert base == content_key("p", "c", [dict(t) for t in history], "r")
    assert base != content_key("p", "c", history, "r2")
    assert base != content_key("p", "", history, "r")
    assert base != content_key("p", "c", history[:1], "r")
    # field boundaries matter: ("ab", "") is not ("a", "b")
    assert content_key("ab", "", [], "r") != content_key("a", "b", [], "r")
