"""Source recipes of the paper's 14 corpora: hand-written native rows in, the records the paper's table says out.

Every fixture under tests/fixtures/recipes/ is a few rows written by hand in the dataset's published field layout
(the Hub's, and the authors' original JSON where it differs); nothing is downloaded.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
from collections import defaultdict
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from polyalign_ray.cli import apply_environment_defaults, main
from polyalign_ray.config import load_config
from polyalign_ray.corpus.normalize import NormalizeSettings, normalize_raw_row
from polyalign_ray.corpus.prepare import normalize_raw_table, prepare_in_process
from polyalign_ray.corpus.readers import RAW_COLUMNS, discover_read_units, read_unit
from polyalign_ray.corpus.recipes import RECIPES, UnknownSourceError, recipe_named
from polyalign_ray.corpus.recipes.loading import SourceUnavailableError, source_read_units
from polyalign_ray.corpus.recipes.recipe import native_split_of
from polyalign_ray.corpus.tables import RECORD_SCHEMA, load_split
from polyalign_ray.schema import RECORD_COLUMNS, SPLITS

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "recipes"
MAX_ROW_CHARS = 200_000

# The table: language, track, family, style of every dataset.
PAPER_TABLE = {
    "dolly": ("en", "single", "assistant", "assistant_like"),
    "eli5_category": ("en", "single", "qa", "longform_qa"),
    "ms_marco": ("en", "single", "qa", "qa_search"),
    "squad_v2": ("en", "single", "qa", "qa_search"),
    "natural_questions": ("en", "single", "qa", "qa_search"),
    "coqa": ("en", "multi", "qa", "qa_search"),
    "dailydialog": ("en", "multi", "dialogue", "open_chat"),
    "multiwoz": ("en", "multi", "dialogue", "task_dialogue"),
    "coig_cqia": ("zh", "single", "assistant", "assistant_like"),
    "hc3_chinese": ("zh", "single", "qa", "longform_qa"),
    "oasst2_zh": ("zh", "multi", "dialogue", "open_chat"),
    "cmrc2018": ("zh", "single", "qa", "qa_search"),
    "drcd": ("zh", "single", "qa", "qa_search"),
    "dureader": ("zh", "single", "qa", "qa_search"),
}


def outcomes(name: str, fixture: str, split: str = "train") -> list[Any]:
    """Normalize every row of a fixture with recipe ``name``, as if read from split ``split`` of a
    ``save_to_disk`` copy (``folder[split]``), so the recorded source split can be checked."""
    settings = NormalizeSettings(recipe=name)
    results = []
    for unit in discover_read_units([str(FIXTURES / fixture)]):
        for raw_row in read_unit(unit, max_chars=MAX_ROW_CHARS):
            results.append(normalize_raw_row({**raw_row, "origin_file": f"{name}[{split}]"}, settings))
    return results


def records_and_reasons(name: str, fixture: str) -> tuple[list[dict[str, Any]], list[str], list[str]]:
    """(record rows, quarantine reasons, skipped-part reasons) of a fixture, in row order."""
    records, quarantined, skipped = [], [], []
    for outcome in outcomes(name, fixture):
        records += [r.to_row() for r in outcome.records]
        skipped += outcome.skipped_turns
        if outcome.quarantine is not None:
            quarantined.append(outcome.quarantine["reason"])
    return records, quarantined, skipped


def assert_paper_assignments(name: str, records: list[dict[str, Any]]) -> None:
    language, track, family, style = PAPER_TABLE[name]
    for record in records:
        assert (record["source"], record["language"], record["track"], record["family"], record["style"]) == (
            name,
            language,
            track,
            family,
            style,
        ), record["id"]
        assert record["language_rule"] == "given" and record["family_rule"] == "given"


def pick(records: list[dict[str, Any]], *keys: str) -> list[tuple[Any, ...]]:
    return [tuple(r[k] for k in keys) for r in records]


def test_the_table_has_the_papers_fourteen_datasets_with_their_assignments() -> None:
    assert {name: (r.language.split("-")[0], r.track, r.family, r.style) for name, r in RECIPES.items()} == (
        PAPER_TABLE
    )
    for recipe in RECIPES.values():
        assert recipe.hub, recipe.name
        for load in recipe.hub:
            assert load.repo and (not load.files or load.file_format in ("json", "parquet")), recipe.name
        assert len({load.label for load in recipe.hub}) == len(recipe.hub), recipe.name


def test_hub_loads_are_the_calls_documented() -> None:
    assert RECIPES["ms_marco"].hub[0].load_arguments() == (("microsoft/ms_marco", "v1.1"), {})
    assert RECIPES["squad_v2"].hub[0].load_arguments() == (("rajpurkar/squad_v2", None), {})
    args, keywords = RECIPES["dailydialog"].hub[0].load_arguments()
    assert args == ("parquet",)
    assert keywords["data_files"]["validation"] == (
        "hf://datasets/li2017dailydialog/daily_dialog@refs%2Fconvert%2Fparquet/default/validation/*.parquet"
    )
    args, keywords = RECIPES["drcd"].hub[0].load_arguments()
    assert args == ("json",) and keywords["field"] == "data"
    assert keywords["data_files"]["train"].endswith("/DRCD_training.json")
    assert [load.config for load in RECIPES["coig_cqia"].hub][:2] == ["chinese_traditional", "coig_pc"]


def test_dolly_response_with_reference_text_as_context() -> None:
    records, quarantined, _ = records_and_reasons("dolly", "dolly.jsonl")
    assert_paper_assignments("dolly", records)
    assert pick(records, "prompt", "response", "source_split", "source_id") == [
        ("When did the harbour ferry start running?", "It started running in 1911.", "train", "row0"),
        (
            "Give me three tips for staying focused while studying.",
            "Put your phone in another room, work in short blocks with a timer, and take a real break between "
            "blocks.",
            "train",
            "row1",
        ),
    ]
    assert records[0]["context"].startswith("The harbour ferry was launched in 1911")
    assert records[1]["context"] == ""
    assert all(
        r["id"].startswith("auto:") for r in records
    )  # Dolly has no ids; row indices repeat across files
    assert quarantined == ["missing_field"]


def test_eli5_highest_scored_answer_to_title_and_body() -> None:
    records, quarantined, _ = records_and_reasons("eli5_category", "eli5_category.jsonl")
    assert_paper_assignments("eli5_category", records)
    first, second = records
    assert first["prompt"] == "Why do cats purr?\n\nMine purrs when she is happy but also at the vet."
    assert first["response"].startswith(
        "Purring comes from the muscles of the voice box"
    )  # 15 beats 2; first of two 15s
    assert (first["id"], first["source_id"]) == ("eli5_category:7fq2k1#dqe1bb2", "7fq2k1#dqe1bb2")
    assert second["prompt"] == "How do noise cancelling headphones work?"  # empty body: the title alone
    assert quarantined == ["missing_response"]


def test_ms_marco_well_formed_answer_first_selected_passages_as_context() -> None:
    records, quarantined, _ = records_and_reasons("ms_marco", "ms_marco.jsonl")
    assert_paper_assignments("ms_marco", records)
    assert pick(records, "id", "response", "context") == [
        (
            "ms_marco:19699",
            "Bread dough rises for 2 to 3 hours at room temperature.",
            "Most bread dough needs to rise for 2 to 3 hours at room temperature before baking.",
        ),
        (
            "ms_marco:19700",
            "Canberra",
            "Canberra is the capital city of Australia.\n\nSydney is the largest city in Australia, but Canberra "
            "is its capital.",
        ),
        # the original v1.1 JSON layout: passages as a list of objects, wellFormedAnswers as the string "[]"
        ("ms_marco:19702", "About 206.", "An adult human skeleton has about 206 bones."),
    ]
    assert quarantined == ["unanswerable"]  # "No Answer Present."


def test_squad_v2_first_answer_and_unanswerable_quarantined_with_its_own_reason() -> None:
    records, quarantined, _ = records_and_reasons("squad_v2", "squad_v2.jsonl")
    assert_paper_assignments("squad_v2", records)
    assert pick(records, "id", "prompt", "response") == [
        ("squad_v2:5a1c0001", "What was the lighthouse built from?", "local granite"),
        ("squad_v2:5a1c0002", "When was the lamp electrified?", "1931"),
    ]
    passage = (
        "The Old Point lighthouse was built in 1872 from local granite. Its lamp was electrified in 1931."
    )
    assert records[0]["context"] == records[1]["context"] == passage
    assert records[0]["group_id"] == records[1]["group_id"]  # one passage, one split
    assert records[0]["license"] == "CC-BY-SA-4.0"
    assert quarantined == ["unanswerable"]


def test_natural_questions_answer_passage() -> None:
    records, quarantined, _ = records_and_reasons("natural_questions", "natural_questions.jsonl")
    assert_paper_assignments("natural_questions", records)
    assert pick(records, "prompt", "context", "source_id") == [
        ("who painted the ceiling of the town library", "", "row0"),
        ("when was the first bridge over the river built", "", "row1"),  # the card's column name "question"
    ]
    assert records[0]["response"].startswith("Town library The reading room ceiling was painted in 1902")
    assert quarantined == []


def test_coqa_one_record_per_turn_story_as_context_earlier_turns_as_history() -> None:
    records, quarantined, skipped = records_and_reasons("coqa", "coqa.jsonl")
    assert_paper_assignments("coqa", records)
    hub = [r for r in records if r["source_id"].startswith("row0")]
    assert pick(hub, "prompt", "response", "source_id") == [
        ("What color was the boat?", "red", "row0#t1"),
        ("Where did he sail it?", "on the pond behind his grandmother's house", "row0#t2"),
        ("Who got it back?", "his dog Max", "row0#t3"),
    ]
    assert hub[0]["history"] == [] and hub[0]["track"] == "multi"  # the first turn is still the multi track
    assert hub[2]["history"] == [
        {"role": "user", "content": "What color was the boat?"},
        {"role": "assistant", "content": "red"},
        {"role": "user", "content": "Where did he sail it?"},
        {"role": "assistant", "content": "on the pond behind his grandmother's house"},
    ]
    assert all(r["context"].startswith("Tom had a small red boat.") for r in hub)
    assert len({r["group_id"] for r in hub}) == 1
    original = [
        r for r in records if r["id"].startswith("coqa:3ab9xq")
    ]  # the authors' JSON layout, with an id
    assert pick(original, "id", "response", "group_id") == [
        ("coqa:3ab9xq#t1", "in 1890", "coqa:3ab9xq"),
        ("coqa:3ab9xq#t2", "a whale skeleton", "coqa:3ab9xq"),
    ]
    assert skipped == ["unanswerable"]  # turn 4 is answered "unknown"
    assert quarantined == ["malformed_conversation"]  # two questions, one answer


def test_dailydialog_even_turns_answer_the_turn_before() -> None:
    records, quarantined, _ = records_and_reasons("dailydialog", "dailydialog.jsonl")
    assert_paper_assignments("dailydialog", records)
    assert pick(records, "prompt", "response", "source_id") == [
        ("Are you coming to the picnic on Sunday ?", "I would love to . What should I bring ?", "row0#t1"),
        ("Maybe some fruit and a blanket .", "Sure , I have a big one .", "row0#t2"),
    ]
    assert records[1]["history"] == [
        {"role": "user", "content": "Are you coming to the picnic on Sunday ?"},
        {"role": "assistant", "content": "I would love to . What should I bring ?"},
    ]
    assert records[0]["group_id"] == records[1]["group_id"]
    assert quarantined == ["no_assistant_turn"]  # a one-utterance dialogue


def test_multiwoz_system_turns_with_earlier_turns_as_history() -> None:
    records, quarantined, _ = records_and_reasons("multiwoz", "multiwoz.jsonl")
    assert_paper_assignments("multiwoz", records)
    assert [(r["id"], r["group_id"], len(r["history"])) for r in records] == [
        ("multiwoz:PMUL0101.json#t1", "multiwoz:PMUL0101.json", 0),
        ("multiwoz:PMUL0101.json#t2", "multiwoz:PMUL0101.json", 2),
        ("multiwoz:SNG0202.json#t1", "multiwoz:SNG0202.json", 0),  # the original layout: speaker names
    ]
    assert records[1]["prompt"] == "Italian, please. Book a table for two at 7pm."
    assert records[1]["response"] == "Done. Your table at Pizza Corner is booked, reference ABC123."
    assert quarantined == []


def test_coig_cqia_keeps_human_written_or_verified_answers_only() -> None:
    records, quarantined, _ = records_and_reasons("coig_cqia", "coig_cqia.jsonl")
    assert_paper_assignments("coig_cqia", records)
    assert pick(records, "prompt", "response", "context") == [
        (
            "如何判断西瓜是否成熟？",
            "可以轻轻拍一拍，声音清脆、有回响的一般比较熟；再看瓜蒂附近的卷须是否已经干枯。",
            "",
        ),
        (
            "把下面这句话改写得更正式一些。",
            "建议取消明天的会议。",
            "明天的会咱们就别开了吧。",
        ),  # llm, but verified
    ]
    assert quarantined == ["non_human_answer"]


def test_hc3_chinese_one_record_per_human_answer_never_chatgpt() -> None:
    records, quarantined, _ = records_and_reasons("hc3_chinese", "hc3_chinese.jsonl")
    assert_paper_assignments("hc3_chinese", records)
    assert pick(records, "prompt", "response", "source_id") == [
        (
            "为什么冬天手容易干裂？",
            "冬天空气干燥，皮肤里的水分蒸发得快，再加上经常洗手，油脂被洗掉，手就容易干裂。",
            "row0#h1",
        ),
        ("为什么冬天手容易干裂？", "天冷时皮脂分泌少，记得洗手后擦护手霜。", "row0#h2"),
    ]
    assert quarantined == ["missing_response"]  # a question with ChatGPT answers only


def test_oasst2_reviewed_non_deleted_assistant_messages_along_their_ancestor_chain() -> None:
    records, quarantined, skipped = records_and_reasons("oasst2_zh", "oasst2_zh.jsonl")
    assert_paper_assignments("oasst2_zh", records)
    assert [(r["id"], r["group_id"], r["prompt"]) for r in records] == [
        ("oasst2_zh:a1", "oasst2_zh:tree-zh-1", "怎样才能养成早起的习惯？"),
        ("oasst2_zh:a2", "oasst2_zh:tree-zh-1", "如果早上还是很困怎么办？"),
    ]
    assert records[1]["history"] == [
        {"role": "user", "content": "怎样才能养成早起的习惯？"},
        {"role": "assistant", "content": "可以每天提前十五分钟睡觉，并把闹钟放在床边够不到的地方。"},
    ]
    # a3 failed review; a4 is deleted, so a5 below it is not used either
    assert skipped == ["unreviewed_message", "deleted_message"]
    assert quarantined == ["outside_subset"]  # the English tree


def test_cmrc2018_first_answer_passage_as_context() -> None:
    records, quarantined, _ = records_and_reasons("cmrc2018", "cmrc2018.jsonl")
    assert_paper_assignments("cmrc2018", records)
    assert pick(records, "id", "response", "source_id") == [
        ("cmrc2018:TRAIN_0042_QUERY_0", "清朝乾隆年间", "TRAIN_0042_QUERY_0"),
        ("cmrc2018:TRAIN_0042_QUERY_1", "三十二米", "TRAIN_0042_QUERY_1"),
    ]
    assert (
        records[0]["context"] == "青石桥位于小镇东头，始建于清朝乾隆年间，全长三十二米，是镇上最古老的石桥。"
    )
    assert quarantined == []


def test_drcd_authors_article_layout_traditional_script() -> None:
    records, quarantined, _ = records_and_reasons("drcd", "drcd.json")
    assert_paper_assignments("drcd", records)
    assert pick(records, "id", "response", "variety") == [
        ("drcd:9001-1-1", "一八八三年", "cmn-hant"),
        ("drcd:9001-1-2", "花崗岩", "cmn-hant"),
        ("drcd:9001-2-1", "二十海里", "cmn-hant"),
    ]
    assert records[0]["group_id"] == records[1]["group_id"] != records[2]["group_id"]  # grouped by passage
    assert quarantined == []


def test_dureader_first_answer_and_unanswerable_rows_quarantined() -> None:
    records, quarantined, skipped = records_and_reasons("dureader", "dureader.json")
    assert_paper_assignments("dureader", records)
    assert pick(records, "id", "prompt", "response") == [
        ("dureader:c2a1f0e5b6d7", "番茄炒蛋先炒什么", "鸡蛋"),
        ("dureader:c2a1f0e5b6d9", "北京到上海高铁要多久", "约四个半小时"),
    ]
    assert skipped == ["unanswerable"] and quarantined == []  # one article row holds all three questions


def test_one_unanswerable_question_row_is_quarantined_not_kept_empty(tmp_path: Path) -> None:
    """Row by row (the Hub's flat layout), an unanswerable DuReader question is a quarantine line."""
    row = {
        "id": "q9",
        "context": "今天晴。",
        "question": "明天会下雨吗",
        "answers": {"text": [], "answer_start": []},
    }
    raw = {"origin_file": "dureader[test]", "origin_line": 1, "raw": json.dumps(row), "read_error": ""}
    outcome = normalize_raw_row(raw, NormalizeSettings(recipe="dureader"))
    assert outcome.records == [] and outcome.quarantine is not None
    assert outcome.quarantine["reason"] == "unanswerable" and "q9" in outcome.quarantine["detail"]


@pytest.mark.parametrize(
    ("origin_file", "split"),
    [
        ("runs/x/inputs/coqa/default[validation]", "validation"),
        ("data/train-00000-of-00002.parquet", "train"),
        ("refs/default/test/0000.parquet", "test"),
        ("DRCD_dev.json", "dev"),
        ("eli5-category-validation-2.json.gz", "validation2"),
        ("coqa-train-v1.0.json", "train"),
        ("databricks-dolly-15k.jsonl", ""),
        ("/tmp/test_something0/coqa.jsonl", ""),  # a folder merely starting with a split word does not count
    ],
)
def test_native_split_from_where_the_row_was_read(origin_file: str, split: str) -> None:
    assert native_split_of(origin_file) == split


def test_single_split_datasets_record_their_split_and_others_stay_empty() -> None:
    dolly = outcomes("dolly", "dolly.jsonl", split="")[0].records[0]
    squad = outcomes("squad_v2", "squad_v2.jsonl", split="")[0].records[0]
    assert (dolly.source_split, squad.source_split) == ("train", "")


def test_prepare_with_source_reconciles_and_keeps_each_conversation_in_one_split(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The real CLI path (`polyalign prepare --source coqa --engine local`) on a local copy of the fixture."""
    local_copy = tmp_path / "coqa-train.jsonl"
    shutil.copy(FIXTURES / "coqa.jsonl", local_copy)
    out = tmp_path / "data"
    argv = [
        "prepare",
        "--engine",
        "local",
        "--source",
        "coqa",
        "--input",
        str(local_copy),
        "--output",
        str(out),
    ]
    assert main([*argv, "data.test_fraction=0.5", "data.val_fraction=0"]) == 0
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    records = [row for split in SPLITS for row in load_split(out, split).to_pylist()]
    quarantine = [json.loads(line) for line in (out / "quarantine.jsonl").read_text().splitlines()]
    # 3 rows read: 2 conversations (3 + 2 answered turns, one "unknown" turn skipped) and 1 quarantined
    assert (manifest["read"], manifest["kept"], manifest["quarantined"], manifest["duplicates"]) == (
        3,
        5,
        1,
        0,
    )
    assert manifest["read"] + manifest["expanded"] == len(records) + len(quarantine)
    assert manifest["skipped_expanded_turns"] == {"unanswerable": 1}
    assert manifest["settings"]["recipe"] == "coqa"
    assert [q["reason"] for q in quarantine] == ["malformed_conversation"]
    splits_of_group = defaultdict(set)
    for record in records:
        splits_of_group[record["group_id"]].add(record["split"])
    assert len(splits_of_group) == 2 and all(len(s) == 1 for s in splits_of_group.values())
    assert {s for (s,) in splits_of_group.values()} == {"train", "test"}  # both used, never mixed
    assert {r["source_split"] for r in records} == {"train"}
    assert all(r["track"] == "multi" and r["source"] == "coqa" for r in records)


def test_oasst2_message_table_is_assembled_into_trees(tmp_path: Path) -> None:
    """The Hub's message-per-row layout becomes the release's trees before the per-row step."""
    units = source_read_units(
        "oasst2_zh", [str(FIXTURES / "oasst2_messages.jsonl")], tmp_path / "in", max_row_chars=MAX_ROW_CHARS
    )
    manifest = prepare_in_process(
        units, NormalizeSettings(recipe="oasst2_zh"), tmp_path / "data", max_row_chars=MAX_ROW_CHARS
    )
    records = sorted(
        (row for split in SPLITS for row in load_split(tmp_path / "data", split).to_pylist()),
        key=lambda r: r["id"],
    )
    assert [(r["id"], len(r["history"])) for r in records] == [
        ("oasst2_zh:m-zh-a1", 0),
        ("oasst2_zh:m-zh-a2", 0),
        ("oasst2_zh:m-zh-a3", 2),
    ]
    assert records[2]["prompt"] == "这本书适合小学生吗？"
    assert records[2]["history"][1]["content"] == "《星空的故事》写得通俗，每章讲一个星座。"
    assert {r["group_id"] for r in records} == {"oasst2_zh:m-zh-root"}
    assert (manifest["read"], manifest["kept"], manifest["quarantined"]) == (1, 3, 0)  # one zh tree
    assembly = json.loads((tmp_path / "in" / "assembled" / "assembly.json").read_text())
    assert assembly["messages_read"] == 8 and assembly["trees_built"] == 2
    assert assembly["trees_left_out_other_languages"] == 1 and assembly["unreachable_messages"] == 1


def test_article_files_are_flattened_so_a_whole_split_in_one_row_still_fits(tmp_path: Path) -> None:
    """DuReader's files hold a split in one article; flat rows keep each question under data.max_row_chars."""
    limit = 400
    article = json.loads((FIXTURES / "dureader.json").read_text(encoding="utf-8"))["data"][0]
    assert len(json.dumps(article, ensure_ascii=False)) > limit
    units = source_read_units(
        "dureader", [str(FIXTURES / "dureader.json")], tmp_path / "in", max_row_chars=limit
    )
    manifest = prepare_in_process(
        units, NormalizeSettings(recipe="dureader"), tmp_path / "data", max_row_chars=limit
    )
    assert (manifest["read"], manifest["kept"], manifest["quarantine_reasons"]) == (3, 2, {"unanswerable": 1})


def test_ray_batch_form_gives_the_same_records_and_settings_carry_the_recipe() -> None:
    """Ray Data runs ``normalize_raw_table`` on pickled settings: the recipe name must travel with them."""
    settings = pickle.loads(pickle.dumps(NormalizeSettings(recipe="multiwoz")))
    assert settings.recipe == "multiwoz"
    unit = discover_read_units([str(FIXTURES / "multiwoz.jsonl")])[0]
    raw_rows = list(read_unit(unit, max_chars=MAX_ROW_CHARS))
    table = normalize_raw_table(pa.Table.from_pylist(raw_rows).select(list(RAW_COLUMNS)), settings)
    batch_records = [
        {c: row[c] for c in RECORD_COLUMNS} for row in table.to_pylist() if row["status"] == "record"
    ]
    row_records = [r.to_row() for raw in raw_rows for r in normalize_raw_row(raw, settings).records]
    assert batch_records == row_records and len(row_records) == 3


def test_a_bad_source_name_lists_the_valid_ones(capsys: pytest.CaptureFixture[str], monkeypatch) -> None:
    with pytest.raises(UnknownSourceError, match="squad_v2") as error:
        recipe_named("squad")
    assert all(name in str(error.value) for name in PAPER_TABLE)
    import polyalign_ray.cli as cli

    monkeypatch.setattr(cli, "_run_prepare", lambda *a, **k: pytest.fail("prepare ran with a bad --source"))
    assert main(["prepare", "--source", "squad", "--output", "/nonexistent/x"]) == 2
    err = capsys.readouterr().err
    assert "data.source 'squad' is not a source recipe" in err and "dolly, eli5_category" in err


def test_loading_from_the_hub_offline_says_how_to_use_a_local_copy(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(SourceUnavailableError) as error:
        source_read_units("ms_marco", [], tmp_path / "in", max_row_chars=MAX_ROW_CHARS)
    message = str(error.value)
    assert "HF_HUB_OFFLINE" in message and "save_to_disk" in message
    assert "--source ms_marco --input DIR" in message and "'microsoft/ms_marco', 'v1.1'" in message


def test_the_cli_leaves_the_hub_reachable_only_when_a_source_is_to_be_downloaded(monkeypatch) -> None:
    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    apply_environment_defaults(load_config(None, ["data.source=dolly", "data.inputs=['dolly.jsonl']"]))
    assert "HF_DATASETS_OFFLINE" in os.environ
    monkeypatch.delenv("HF_DATASETS_OFFLINE")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    apply_environment_defaults(load_config(None, ["data.source=dolly"]))
    assert "HF_DATASETS_OFFLINE" not in os.environ


def test_declared_track_wins_and_a_bad_one_is_quarantined() -> None:
    """The recipes' track assignment travels as the plain row field ``track``."""
    base = {"prompt": "hi", "response": "hello there", "language": "en"}
    first_turn = normalize_raw_row(
        {
            "origin_file": "m.jsonl",
            "origin_line": 1,
            "raw": json.dumps({**base, "track": "multi"}),
            "read_error": "",
        },
        NormalizeSettings(),
    )
    assert first_turn.records[0].track == "multi" and first_turn.records[0].bucket_id.startswith("en|multi|")
    bad = normalize_raw_row(
        {
            "origin_file": "m.jsonl",
            "origin_line": 1,
            "raw": json.dumps({**base, "track": "both"}),
            "read_error": "",
        },
        NormalizeSettings(),
    )
    assert bad.quarantine is not None and bad.quarantine["reason"] == "invalid_track"


def test_data_directories_written_before_the_source_columns_still_load(tmp_path: Path) -> None:
    row = {c: "" for c in RECORD_COLUMNS}
    row.update(
        id="r1",
        split="train",
        history=[],
        length_tokens=1,
        origin_line=1,
        machine_translated=False,
        response="x",
    )
    old_schema = pa.schema([f for f in RECORD_SCHEMA if f.name not in ("source_split", "source_id")])
    (tmp_path / "train").mkdir()
    pq.write_table(pa.Table.from_pylist([row], schema=old_schema), tmp_path / "train" / "part-00000.parquet")
    loaded = load_split(tmp_path, "train").to_pylist()
    assert (loaded[0]["id"], loaded[0]["source_split"], loaded[0]["source_id"]) == ("r1", "", "")
