"""Response features (METHOD.md section 2): hand-computed golden vectors in English and Chinese, jieba words for
Chinese, the log1p transform of counts, ratio ranges, and the features table round trip."""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from polyalign_ray.features import (
    FEATURE_KEY_COLUMNS,
    FEATURE_NAMES,
    NUM_FEATURES,
    features_as_matrix,
    features_matrix,
    features_table,
    features_table_schema,
    response_features,
    sentences,
    words,
)
from polyalign_ray.schema import count_length_tokens, length_tokens

TOL = 1e-12

EN = "The cat sat. The cat ran! Don't run 2 times?"
ZH = "我喜欢吃苹果。你呢？"
MIXED = "我有3个iPhone，很好用！"

RATIO_FEATURES = (
    "distinct_1",
    "distinct_2",
    "repeated_trigram_ratio",
    "question_ratio",
    "exclamation_ratio",
    "digit_ratio",
    "cjk_ratio",
    "latin_ratio",
)
LOG_COUNT_FEATURES = (
    "log_length_tokens",
    "log_chars",
    "log_sentences",
    "log_mean_sentence_tokens",
    "log_mean_word_chars",
    "log_newlines",
    "log_list_markers",
    "log_code_markers",
)

# A varied set of responses for the property tests: empty, punctuation only, both languages, lists, code, digits.
VARIED_TEXTS = (
    "",
    " ",
    "...",
    "?!",
    "Hi",
    EN,
    ZH,
    MIXED,
    "go go go go",
    "a b c a b c",
    "- a\n- b\n- c",
    "1. Boil water.\n2. Add tea.",
    "Use `ls` and `pwd`.\n```\nls\n```",
    "一、准备材料\n二、开始做\n（1）洗菜",
    "今天天气很好，我们去公园散步吧。你觉得怎么样？太好了！",
    "Pi is 3.14159, e is 2.71828 and 1 + 1 = 2.",
    "Really?!  Yes!!! Why??? Because…",
    "Ça va? Très bien, merci. Привет!",
    "word " * 300,
)


def feature(vector: np.ndarray, name: str) -> float:
    return float(vector[FEATURE_NAMES.index(name)])


def test_feature_names_are_unique_and_match_the_vector_length() -> None:
    assert len(set(FEATURE_NAMES)) == len(FEATURE_NAMES) == NUM_FEATURES == 19
    assert response_features(EN).shape == (NUM_FEATURES,)
    assert response_features(EN).dtype == np.float64


def test_english_golden_vector() -> None:
    """EN = "The cat sat. The cat ran! Don't run 2 times?" (44 characters, 9 spaces -> 35 non-space).

    length tokens (13): The|cat|sat|.|The|cat|ran|!|Don't|run|2|times|?   -> log1p(13) = ln 14
    characters 44                                                          -> ln 45
    sentences (3): "The cat sat." / "The cat ran!" / "Don't run 2 times?" -> ln 4
    mean sentence tokens 13/3                                              -> ln(16/3)
    words (10): the cat sat the cat ran don't run 2 times; 8 types
        root_ttr = 8 / sqrt(10); distinct_1 = 8/10 = 0.8
        bigrams 9, (the, cat) twice -> 8 distinct -> distinct_2 = 8/9
        trigrams 8, all distinct -> repeated_trigram_ratio = 0
        entropy: p = 0.2 (the), 0.2 (cat), 0.1 x 6 -> 0.4 log2 5 + 0.6 log2 10 = log2 5 + 0.6
        mean word chars (3*6 + 5 + 3 + 1 + 5)/10 = 3.2                     -> ln 4.2
    punctuation . ! ' ? = 4 -> 4/13; question 1/3; exclamation 1/3
    digits 1 of 35 non-space -> 1/35; letters 30, all Latin -> cjk 0, latin 1; no newline/list/code -> 0
    """
    v = response_features(EN)
    expected = {
        "log_length_tokens": math.log(14),
        "log_chars": math.log(45),
        "log_sentences": math.log(4),
        "log_mean_sentence_tokens": math.log(16 / 3),
        "root_ttr": 8 / math.sqrt(10),
        "distinct_1": 0.8,
        "distinct_2": 8 / 9,
        "repeated_trigram_ratio": 0.0,
        "word_entropy": math.log2(5) + 0.6,
        "log_mean_word_chars": math.log(4.2),
        "punctuation_density": 4 / 13,
        "question_ratio": 1 / 3,
        "exclamation_ratio": 1 / 3,
        "log_newlines": 0.0,
        "log_list_markers": 0.0,
        "log_code_markers": 0.0,
        "digit_ratio": 1 / 35,
        "cjk_ratio": 0.0,
        "latin_ratio": 1.0,
    }
    assert set(expected) == set(FEATURE_NAMES)
    for name, value in expected.items():
        assert feature(v, name) == pytest.approx(value, abs=TOL), name


def test_english_tokens_words_and_sentences_behind_the_golden_vector() -> None:
    """The intermediate pieces of the English golden vector, so a wrong feature points at its cause."""
    assert length_tokens(EN) == [
        "The", "cat", "sat", ".", "The", "cat", "ran", "!", "Don't", "run", "2", "times", "?",
    ]  # fmt: skip
    assert words(EN) == ["the", "cat", "sat", "the", "cat", "ran", "don't", "run", "2", "times"]
    assert sentences(EN) == ["The cat sat.", "The cat ran!", "Don't run 2 times?"]


def test_chinese_golden_vector() -> None:
    """ZH = "我喜欢吃苹果。你呢？" (10 characters, no spaces).

    length tokens (10): 8 ideographs + 。 + ？, one each       -> log1p(10) = ln 11; characters 10 -> ln 11
    sentences (2): "我喜欢吃苹果。" / "你呢？"                  -> ln 3; mean sentence tokens 10/2 = 5 -> ln 6
    jieba words (6): 我 | 喜欢 | 吃 | 苹果 | 你 | 呢, all distinct
        root_ttr = 6 / sqrt(6) = sqrt(6); distinct_1 = 1; distinct_2 = 5/5 = 1; repeated trigrams 0
        entropy = log2 6; mean word chars (1+2+1+2+1+1)/6 = 4/3 -> ln(7/3)
    punctuation 。？ = 2 of 10 tokens -> 0.2; question 1/2; exclamation 0
    letters 8, all Han -> cjk 1, latin 0; digits 0
    """
    v = response_features(ZH)
    expected = {
        "log_length_tokens": math.log(11),
        "log_chars": math.log(11),
        "log_sentences": math.log(3),
        "log_mean_sentence_tokens": math.log(6),
        "root_ttr": math.sqrt(6),
        "distinct_1": 1.0,
        "distinct_2": 1.0,
        "repeated_trigram_ratio": 0.0,
        "word_entropy": math.log2(6),
        "log_mean_word_chars": math.log(7 / 3),
        "punctuation_density": 0.2,
        "question_ratio": 0.5,
        "exclamation_ratio": 0.0,
        "log_newlines": 0.0,
        "log_list_markers": 0.0,
        "log_code_markers": 0.0,
        "digit_ratio": 0.0,
        "cjk_ratio": 1.0,
        "latin_ratio": 0.0,
    }
    assert set(expected) == set(FEATURE_NAMES)
    for name, value in expected.items():
        assert feature(v, name) == pytest.approx(value, abs=TOL), name


def test_chinese_words_come_from_jieba_not_whitespace() -> None:
    """A Chinese sentence has no spaces: a whitespace split gives 1 "word", jieba gives several multi-character
    words (喜欢, 苹果 are two-character words, so this is not a per-character split either)."""
    assert len(ZH.split()) == 1
    assert words(ZH) == ["我", "喜欢", "吃", "苹果", "你", "呢"]
    longer = "今天天气很好，我们去公园散步吧。"
    assert len(longer.split()) == 1
    segmented = words(longer)
    assert len(segmented) > 1
    assert "我们" in segmented and "公园" in segmented
    assert len(segmented) < len(length_tokens(longer))  # multi-character words, not one per ideograph
    assert "".join(segmented) == "今天天气很好我们去公园散步吧"  # nothing but punctuation is lost


def test_mixed_chinese_latin_digit_golden_ratios() -> None:
    """MIXED = "我有3个iPhone，很好用！" (15 characters, no spaces).

    length tokens (10): 我 有 3 个 iPhone ， 很 好 用 ！ -> ln 11
    words (8): 我 | 有 | 3 | 个 | iphone | 很 | 好 | 用 (Latin lowercased, digits a word) -> entropy log2 8 = 3
    letters 12: 6 Han (我有个很好用) + 6 Latin (iPhone) -> cjk 6/12 = 0.5, latin 0.5
    digits 1 of 15 non-space -> 1/15; one sentence ending in ！ -> exclamation 1, question 0
    """
    v = response_features(MIXED)
    assert words(MIXED) == ["我", "有", "3", "个", "iphone", "很", "好", "用"]
    assert feature(v, "log_length_tokens") == pytest.approx(math.log(11), abs=TOL)
    assert feature(v, "word_entropy") == pytest.approx(3.0, abs=TOL)
    assert feature(v, "cjk_ratio") == pytest.approx(0.5, abs=TOL)
    assert feature(v, "latin_ratio") == pytest.approx(0.5, abs=TOL)
    assert feature(v, "digit_ratio") == pytest.approx(1 / 15, abs=TOL)
    assert feature(v, "exclamation_ratio") == pytest.approx(1.0, abs=TOL)
    assert feature(v, "question_ratio") == pytest.approx(0.0, abs=TOL)


def test_length_tokens_count_the_same_way_in_both_languages() -> None:
    """METHOD.md section 1: one token per ideograph, per letter run (inner apostrophe kept), per digit run, per
    other symbol. "GPT-4模型don't 2024年" -> GPT | - | 4 | 模 | 型 | don't | 2024 | 年 = 8."""
    text = "GPT-4模型don't 2024年"
    assert length_tokens(text) == ["GPT", "-", "4", "模", "型", "don't", "2024", "年"]
    assert count_length_tokens(text) == 8
    assert count_length_tokens("") == 0
    assert count_length_tokens("   \n\t") == 0


def test_repeated_ngram_golden_values() -> None:
    """Text "a b c a b c": 6 words, 3 types -> distinct_1 = 0.5, root_ttr = 3/sqrt(6);
    bigrams ab bc ca ab bc -> 3 distinct of 5 = 0.6; trigrams abc bca cab abc -> 3 of 4 -> repeated 1/4;
    entropy log2 3.
    "go go go go": 4 words, 1 type -> distinct_1 = 1/4, root_ttr = 1/2; bigrams 3, 1 distinct -> 1/3;
    trigrams 2, 1 distinct -> repeated 1/2; entropy 0."""
    v = response_features("a b c a b c")
    assert feature(v, "distinct_1") == pytest.approx(0.5, abs=TOL)
    assert feature(v, "root_ttr") == pytest.approx(3 / math.sqrt(6), abs=TOL)
    assert feature(v, "distinct_2") == pytest.approx(0.6, abs=TOL)
    assert feature(v, "repeated_trigram_ratio") == pytest.approx(0.25, abs=TOL)
    assert feature(v, "word_entropy") == pytest.approx(math.log2(3), abs=TOL)
    g = response_features("go go go go")
    assert feature(g, "distinct_1") == pytest.approx(0.25, abs=TOL)
    assert feature(g, "root_ttr") == pytest.approx(0.5, abs=TOL)
    assert feature(g, "distinct_2") == pytest.approx(1 / 3, abs=TOL)
    assert feature(g, "repeated_trigram_ratio") == pytest.approx(0.5, abs=TOL)
    assert feature(g, "word_entropy") == pytest.approx(0.0, abs=TOL)


def test_list_and_code_markers_are_log1p_counts() -> None:
    """Text "- a\\n- b\\n- c": 2 newlines -> ln 3; 3 list markers -> ln 4; 3 sentences (split at line breaks) -> ln 4.
    "1. Boil water.\\n2. Add tea.": the list numbers do not end sentences -> 2 sentences; 2 markers -> ln 3.
    Chinese "一、…\\n二、…\\n（1）…": 3 markers -> ln 4.
    "Use `ls` and `pwd`.\\n```\\nls\\n```": one fenced block (2 fences // 2) + 2 inline spans = 3 -> ln 4;
    3 newlines -> ln 4."""
    v = response_features("- a\n- b\n- c")
    assert feature(v, "log_newlines") == pytest.approx(math.log(3), abs=TOL)
    assert feature(v, "log_list_markers") == pytest.approx(math.log(4), abs=TOL)
    assert feature(v, "log_sentences") == pytest.approx(math.log(4), abs=TOL)
    numbered = "1. Boil water.\n2. Add tea."
    assert sentences(numbered) == ["1. Boil water.", "2. Add tea."]
    assert feature(response_features(numbered), "log_list_markers") == pytest.approx(math.log(3), abs=TOL)
    chinese_list = "一、准备材料\n二、开始做\n（1）洗菜"
    assert feature(response_features(chinese_list), "log_list_markers") == pytest.approx(math.log(4), abs=TOL)
    code = response_features("Use `ls` and `pwd`.\n```\nls\n```")
    assert feature(code, "log_code_markers") == pytest.approx(math.log(4), abs=TOL)
    assert feature(code, "log_newlines") == pytest.approx(math.log(4), abs=TOL)


def test_counts_are_log1p_transformed() -> None:
    """1000 x "word" joined by single spaces: 1000 length tokens -> log1p(1000) = ln 1001 (not 1000, not ln 1000);
    4999 characters -> ln 5000; one sentence of 1000 tokens -> ln 1001; 0 newlines -> log1p(0) = 0 (a plain log
    would be -inf)."""
    text = " ".join(["word"] * 1000)
    v = response_features(text)
    assert feature(v, "log_length_tokens") == pytest.approx(math.log(1001), abs=TOL)
    assert feature(v, "log_chars") == pytest.approx(math.log(5000), abs=TOL)
    assert feature(v, "log_mean_sentence_tokens") == pytest.approx(math.log(1001), abs=TOL)
    assert feature(v, "log_newlines") == 0.0
    assert feature(v, "log_mean_word_chars") == pytest.approx(math.log(5), abs=TOL)


@pytest.mark.parametrize("text", VARIED_TEXTS, ids=range(len(VARIED_TEXTS)))
def test_log_counts_invert_to_whole_counts(text: str) -> None:
    """expm1 of the log-count features gives back integer counts that match independent counts."""
    v = response_features(text)
    assert math.expm1(feature(v, "log_length_tokens")) == pytest.approx(len(length_tokens(text)), abs=1e-9)
    assert math.expm1(feature(v, "log_chars")) == pytest.approx(len(text), abs=1e-9)
    assert math.expm1(feature(v, "log_newlines")) == pytest.approx(text.count("\n"), abs=1e-9)
    assert math.expm1(feature(v, "log_sentences")) == pytest.approx(len(sentences(text)), abs=1e-9)


@pytest.mark.parametrize("text", VARIED_TEXTS, ids=range(len(VARIED_TEXTS)))
def test_features_are_finite_ratios_in_unit_interval_and_logs_nonnegative(text: str) -> None:
    v = response_features(text)
    assert np.all(np.isfinite(v))
    for name in RATIO_FEATURES:
        assert 0.0 <= feature(v, name) <= 1.0, name
    for name in (*LOG_COUNT_FEATURES, "root_ttr", "word_entropy", "punctuation_density"):
        assert feature(v, name) >= 0.0, name
    # cjk and Latin letters are disjoint subsets of the letters
    assert feature(v, "cjk_ratio") + feature(v, "latin_ratio") <= 1.0 + TOL


def test_empty_text_has_all_zero_counts() -> None:
    v = response_features("")
    for name in (*LOG_COUNT_FEATURES, "root_ttr", "distinct_1", "word_entropy", "punctuation_density"):
        assert feature(v, name) == 0.0, name


def test_features_matrix_stacks_response_features() -> None:
    texts = [EN, ZH, MIXED]
    m = features_matrix(texts)
    assert m.shape == (3, NUM_FEATURES)
    assert m.dtype == np.float64
    for i, text in enumerate(texts):
        np.testing.assert_array_equal(m[i], response_features(text))
    np.testing.assert_array_equal(features_matrix(tuple(texts)), m)


def test_features_matrix_of_no_texts_is_empty_with_the_feature_width() -> None:
    m = features_matrix([])
    assert m.shape == (0, NUM_FEATURES)
    assert m.dtype == np.float64


def _records(responses: list[str]) -> pa.Table:
    n = len(responses)
    return pa.table(
        {
            "id": [f"r{i}" for i in range(n)],
            "split": ["train", "val", "test"][:n] if n <= 3 else ["train"] * n,
            "bucket_id": ["en|single|qa|short"] * n,
            "length_tokens": pa.array([count_length_tokens(r) for r in responses], pa.int64()),
            "prompt": ["q"] * n,  # extra columns are ignored
            "response": responses,
        }
    )


def test_features_table_columns_schema_and_round_trip(tmp_path) -> None:
    responses = [EN, ZH, MIXED]
    records = _records(responses)
    table = features_table(records)
    assert table.schema.equals(features_table_schema())
    assert table.column_names == [*FEATURE_KEY_COLUMNS, *FEATURE_NAMES]
    assert table["id"].to_pylist() == ["r0", "r1", "r2"]
    assert table["split"].to_pylist() == ["train", "val", "test"]
    assert table["length_tokens"].to_pylist() == [13, 10, 10]
    np.testing.assert_array_equal(features_as_matrix(table), features_matrix(responses))
    # through Parquet and back: same schema, bit-identical matrix
    pq.write_table(table, tmp_path / "features.parquet")
    back = pq.read_table(tmp_path / "features.parquet")
    assert back.schema.equals(features_table_schema())
    np.testing.assert_array_equal(features_as_matrix(back), features_matrix(responses))


def test_features_as_matrix_uses_names_not_column_positions() -> None:
    """Reordering the columns of a features table does not change the matrix."""
    table = features_table(_records([EN, ZH]))
    shuffled = table.select(list(reversed(table.column_names)))
    np.testing.assert_array_equal(features_as_matrix(shuffled), features_as_matrix(table))


def test_empty_features_table() -> None:
    table = features_table(_records([]))
    assert table.num_rows == 0
    assert table.schema.equals(features_table_schema())
    m = features_as_matrix(table)
    assert m.shape == (0, NUM_FEATURES)
    assert m.dtype == np.float64


@pytest.mark.parametrize(
    ("text", "markers"),
    [
        ("- item", 1),
        ("* item", 1),
        ("1. item", 1),
        ("2) item", 1),
        ("(3) item", 1),
        ("一、准备", 1),
        ("（2）洗菜", 1),
    ],
)
def test_real_list_markers_are_counted(text: str, markers: int) -> None:
    assert feature(response_features(text), "log_list_markers") == pytest.approx(math.log1p(markers), abs=TOL)


@pytest.mark.parametrize("text", ["3.14 is pi.", "-5 degrees today.", "**Note:** be careful."])
def test_numbers_and_bold_at_line_start_are_not_list_markers(text: str) -> None:
    assert feature(response_features(text), "log_list_markers") == 0.0
