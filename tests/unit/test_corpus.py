"""Input formats, normalization, quarantine, dedup and splits of the prepare stage (in-process engine)."""

from __future__ import annotations

import gzip
import itertools
import json
from collections import Counter, defaultdict
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import polyalign_ray.corpus.splits as splits_module
from polyalign_ray.corpus.adapters import Rejected, detect_format, examples_from_row
from polyalign_ray.corpus.normalize import (
    QUARANTINE_REASONS,
    NormalizeSettings,
    clean_text,
    normalize_raw_row,
)
from polyalign_ray.corpus.prepare import prepare_in_process
from polyalign_ray.corpus.readers import (
    InputError,
    ReadUnit,
    _jsonl_rows,
    discover_read_units,
    read_unit,
    split_line_ranges,
)
from polyalign_ray.corpus.splits import plan_splits
from polyalign_ray.corpus.tables import load_split
from polyalign_ray.schema import SPLITS

SETTINGS = NormalizeSettings()
EN_40 = " ".join(["word"] * 40)
EN_41 = " ".join(["word"] * 41)
ZH_40 = "好" * 40
ZH_41 = "好" * 41


def normalize(row: dict, settings: NormalizeSettings = SETTINGS):
    raw = {
        "origin_file": "mem.jsonl",
        "origin_line": 1,
        "raw": json.dumps(row, ensure_ascii=False),
        "read_error": "",
    }
    return normalize_raw_row(raw, settings)


def only_record(row: dict, settings: NormalizeSettings = SETTINGS):
    outcome = normalize(row, settings)
    assert outcome.quarantine is None, outcome.quarantine
    assert len(outcome.records) == 1
    return outcome.records[0]


@pytest.mark.parametrize(
    ("row", "bucket"),
    [
        # plain, single turn, no context -> assistant (rule:default); 40 tokens -> short, 41 -> medium
        ({"prompt": "Say something.", "response": EN_40}, "en|single|assistant|short"),
        ({"prompt": "Say something.", "response": EN_41}, "en|single|assistant|medium"),
        # plain with a grounding passage -> qa
        (
            {"prompt": "谁写的？", "context": "《红楼梦》是曹雪芹写的。", "response": ZH_40},
            "zh|single|qa|short",
        ),
        # plain with an earlier exchange -> multi-turn dialogue
        (
            {
                "prompt": "然后呢？",
                "history": [
                    {"role": "user", "content": "讲个故事"},
                    {"role": "assistant", "content": "从前有座山。"},
                ],
                "response": ZH_41,
            },
            "zh|multi|dialogue|medium",
        ),
        # OpenAI messages: the system turn is not an exchange, so this stays single-turn
        (
            {
                "messages": [
                    {"role": "system", "content": "You are helpful."},
                    {"role": "user", "content": "Hi"},
                    {"role": "assistant", "content": EN_40},
                ]
            },
            "en|single|assistant|short",
        ),
        (
            {
                "messages": [
                    {"role": "user", "content": "你好"},
                    {"role": "assistant", "content": "你好！"},
                    {"role": "user", "content": [{"type": "text", "text": "在吗"}]},
                    {"role": "assistant", "content": ZH_40},
                ]
            },
            "zh|multi|dialogue|short",
        ),
        # ShareGPT
        (
            {
                "conversations": [
                    {"from": "human", "value": "Tell me a joke"},
                    {"from": "gpt", "value": EN_41},
                ]
            },
            "en|single|assistant|medium",
        ),
        (
            {
                "conversations": [
                    {"from": "human", "value": "hi"},
                    {"from": "gpt", "value": "hello"},
                    {"from": "human", "value": "how are you"},
                    {"from": "gpt", "value": EN_40},
                ]
            },
            "en|multi|dialogue|short",
        ),
        # Alpaca: input is the grounding passage -> qa; history pairs make it multi-turn (context still wins)
        ({"instruction": "翻译成英文", "input": "", "output": ZH_41}, "zh|single|assistant|medium"),
        ({"instruction": "Summarize.", "input": "A long passage.", "output": EN_40}, "en|single|qa|short"),
        (
            {
                "instruction": "Continue",
                "input": "",
                "output": EN_41,
                "history": [["Start a story", "Once upon"]],
            },
            "en|multi|dialogue|medium",
        ),
        # a declared family and language win over the rules and the script
        (
            {"prompt": "Q", "response": "A short answer.", "family": "qa", "language": "en"},
            "en|single|qa|short",
        ),
        ({"prompt": "問", "response": "OK", "language": "zh-TW"}, "zh|single|assistant|short"),
    ],
)
def test_buckets_of_every_input_format(row: dict, bucket: str) -> None:
    assert only_record(row).bucket_id == bucket


def test_format_detection() -> None:
    assert detect_format({"messages": []}) == "openai"
    assert detect_format({"conversations": []}) == "sharegpt"
    assert detect_format({"instruction": "x", "output": "y"}) == "alpaca"
    assert detect_format({"prompt": "x", "response": "y"}) == "plain"
    with pytest.raises(Rejected) as info:
        detect_format({"question": "x"})
    assert info.value.reason == "unknown_format"


def test_record_keeps_given_id_source_and_rules() -> None:
    record = only_record(
        {
            "id": 17,
            "source": "mycorpus",
            "prompt": "hi",
            "response": "hello there",
            "style": "chat",
            "license": "MIT",
        }
    )
    assert record.id == "17"
    assert record.source == "mycorpus"
    assert record.family_rule == "rule:default"
    assert record.language_rule == "script:response"
    assert (record.style, record.license) == ("chat", "MIT")


def test_language_falls_back_to_prompt_when_response_has_no_letters() -> None:
    record = only_record({"prompt": "一加一等于几？", "response": "2"})
    assert record.language == "zh"
    assert record.language_rule == "script:prompt"


def test_last_assistant_turn_is_the_response_and_trailing_user_turn_is_ignored() -> None:
    row = {
        "messages": [
            {"role": "user", "content": "a"},
            {"role": "assistant", "content": "b"},
            {"role": "user", "content": "c"},
            {"role": "assistant", "content": "d"},
            {"role": "user", "content": "e (no answer)"},
        ]
    }
    _, examples = examples_from_row(row)
    assert len(examples) == 1
    assert (examples[0].prompt, examples[0].response) == ("c", "d")
    assert examples[0].history == ({"role": "user", "content": "a"}, {"role": "assistant", "content": "b"})


def test_expand_turns_makes_one_record_per_answer() -> None:
    settings = NormalizeSettings(expand_turns=True)
    row = {
        "id": "conv",
        "messages": [
            {"role": "user", "content": "one"},
            {"role": "assistant", "content": "answer one"},
            {"role": "user", "content": "two"},
            {"role": "assistant", "content": "answer two"},
        ],
    }
    records = normalize(row, settings).records
    assert [r.id for r in records] == ["conv#t1", "conv#t2"]
    assert [r.track for r in records] == ["single", "multi"]
    assert len({r.group_id for r in records}) == 1


def test_clean_text() -> None:
    assert clean_text("  a\r\nb\x00c\x07\t  ") == "a\nbc"
    assert clean_text("e\u0301") == "\u00e9"  # NFC


BAD_LINES = {
    "malformed_json": '{"prompt": "x", "response": ',
    "not_an_object": "[1, 2, 3]",
    "unknown_format": '{"question": "what", "answer": "that"}',
    "missing_response": '{"prompt": "only a prompt"}',
    "non_string_response": '{"prompt": "x", "response": 42}',
    "empty_response": '{"prompt": "x", "response": "   \\n "}',
    "no_assistant_turn": '{"messages": [{"role": "user", "content": "hello?"}]}',
    "no_user_turn": '{"messages": [{"role": "assistant", "content": "I speak first"}]}',
    "malformed_conversation": '{"messages": [{"role": "wizard", "content": "abracadabra"}]}',
    "unsupported_language": '{"prompt": "Bonjour", "response": "Ça va bien, merci.", "language": "fr"}',
    "undetected_language": '{"prompt": "1+1", "response": "2"}',
    "invalid_family": '{"prompt": "x", "response": "yes", "family": "poetry"}',
    "oversized_row": '{"prompt": "x", "response": "' + "y" * 5000 + '"}',
}
GOOD_LINES = [
    '{"id": "g1", "prompt": "What is 2+2?", "response": "It is four."}',
    '{"id": "g2", "messages": [{"role": "user", "content": "你好"}, {"role": "assistant", "content": "你好呀"}]}',
    '{"id": "g3", "conversations": [{"from": "human", "value": "hey"}, {"from": "gpt", "value": "hey you"}]}',
    '{"id": "g4", "instruction": "List two colors", "input": "", "output": "Red and blue."}',
]


def write_mixed_file(path: Path) -> None:
    lines = [GOOD_LINES[0], *BAD_LINES.values(), GOOD_LINES[1], "", GOOD_LINES[2], GOOD_LINES[3]]
    payload = "\n".join(lines).encode("utf-8") + b"\n\x00\x01\x02\xff\xfe\xfd garbage \x03\x04\n"
    payload += b'{"prompt": "caf\xe9", "response": "latin-1 bytes"}\n'
    path.write_bytes(payload)


def test_mixed_file_quarantines_every_bad_row_and_reconciles(tmp_path: Path) -> None:
    source = tmp_path / "mixed.jsonl"
    write_mixed_file(source)
    out = tmp_path / "out"
    manifest = prepare_in_process(
        discover_read_units([str(source)]), SETTINGS, out, max_row_chars=2000, show_progress=False
    )
    expected_reasons = Counter({**dict.fromkeys(BAD_LINES, 1), "binary_garbage": 1, "invalid_utf8": 1})
    assert manifest["quarantine_reasons"] == dict(expected_reasons)
    assert manifest["read"] == len(GOOD_LINES) + len(BAD_LINES) + 2  # the blank line is not a row
    assert manifest["kept"] == len(GOOD_LINES)
    assert (
        manifest["read"] + manifest["expanded"]
        == manifest["kept"] + manifest["quarantined"] + manifest["duplicates"]
    )
    quarantine = [json.loads(line) for line in (out / "quarantine.jsonl").read_text().splitlines()]
    assert len(quarantine) == manifest["quarantined"]
    assert all(q["reason"] in QUARANTINE_REASONS and q["detail"] for q in quarantine)
    assert all(q["origin_file"] == str(source) and q["origin_line"] > 0 for q in quarantine)
    lines = {q["reason"]: q["origin_line"] for q in quarantine}
    assert lines["malformed_json"] == 2  # 1-based file lines
    kept_ids = sorted(i for s in SPLITS for i in load_split(out, s)["id"].to_pylist())
    assert kept_ids == ["g1", "g2", "g3", "g4"]
    assert json.loads((out / "manifest.json").read_text()) == manifest


def test_exact_duplicates_keep_the_test_copy(tmp_path: Path) -> None:
    """The same (prompt, response) arrives under two group ids; whichever split each lands in, the survivor is
    the copy in the highest-priority split, and duplicates.jsonl names it."""
    settings = NormalizeSettings(val_fraction=0.0, test_fraction=0.5)
    rows = [
        {"id": f"r{i}", "group_id": f"g{i}", "prompt": "same prompt", "response": "same answer"}
        for i in range(8)
    ]
    path = tmp_path / "dups.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    manifest = prepare_in_process(
        discover_read_units([str(path)]), settings, tmp_path / "out", max_row_chars=1000, show_progress=False
    )
    assert (manifest["kept"], manifest["duplicates"]) == (1, 7)
    assert manifest["per_split"]["test"] == 1
    dropped = [json.loads(x) for x in (tmp_path / "out" / "duplicates.jsonl").read_text().splitlines()]
    assert {d["kept_split"] for d in dropped} == {"test"}
    assert {d["split"] for d in dropped} == {"train", "test"}


def test_colliding_ids_with_different_content_are_quarantined(tmp_path: Path) -> None:
    path = tmp_path / "ids.jsonl"
    path.write_text(
        '{"id": "x", "prompt": "a", "response": "first answer"}\n{"id": "x", "prompt": "b", "response": "other"}\n'
    )
    manifest = prepare_in_process(
        discover_read_units([str(path)]), SETTINGS, tmp_path / "out", max_row_chars=1000, show_progress=False
    )
    assert manifest["kept"] == 1
    assert manifest["quarantine_reasons"] == {"duplicate_id": 1}


def test_conversation_stays_in_one_split_and_splits_are_stratified() -> None:
    pairs = [(f"conv{i}", "src|en") for i in range(200)] + [(f"small{i}", "tiny|zh") for i in range(20)]
    plan = plan_splits(pairs + pairs[:50], seed=0, val_fraction=0.05, test_fraction=0.1)
    assert len(plan) == 220
    big = Counter(plan[f"conv{i}"] for i in range(200))
    small = Counter(plan[f"small{i}"] for i in range(20))
    assert big == {"test": 20, "val": 10, "train": 170}
    assert small == {"test": 2, "val": 1, "train": 17}
    assert plan == plan_splits(list(reversed(pairs)), seed=0, val_fraction=0.05, test_fraction=0.1)
    assert plan != plan_splits(pairs, seed=1, val_fraction=0.05, test_fraction=0.1)


def test_expanded_conversation_shares_one_split(tmp_path: Path) -> None:
    rows = [
        {
            "id": f"c{i}",
            "messages": [
                {"role": "user", "content": f"hello {i}"},
                {"role": "assistant", "content": "hi"},
                {"role": "user", "content": "and then"},
                {"role": "assistant", "content": f"bye {i}"},
            ],
        }
        for i in range(40)
    ]
    path = tmp_path / "convs.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    out = tmp_path / "out"
    settings = NormalizeSettings(expand_turns=True, test_fraction=0.25)
    manifest = prepare_in_process(
        discover_read_units([str(path)]), settings, out, max_row_chars=1000, show_progress=False
    )
    assert manifest["read"] == 40
    assert manifest["expanded"] == 40
    assert manifest["kept"] + manifest["duplicates"] == 80
    split_of_group: dict[str, set[str]] = {}
    for split in SPLITS:
        for group in load_split(out, split)["group_id"].to_pylist():
            split_of_group.setdefault(group, set()).add(split)
    assert all(len(s) == 1 for s in split_of_group.values())


def test_readers_for_every_file_kind(tmp_path: Path) -> None:
    rows = [{"prompt": f"q{i}", "response": f"answer {i}"} for i in range(3)]
    (tmp_path / "a.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    (tmp_path / "b.json").write_text(json.dumps(rows))
    (tmp_path / "c.json").write_text(json.dumps({"data": rows}))
    with gzip.open(tmp_path / "d.jsonl.gz", "wt") as handle:
        handle.write("\n".join(json.dumps(r) for r in rows))
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "e.parquet")
    import datasets

    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "hf"))
    datasets.DatasetDict({"train": datasets.Dataset.from_list(rows)}).save_to_disk(str(tmp_path / "hfdict"))
    units = discover_read_units([str(tmp_path)])
    assert sorted(u.kind for u in units) == ["hf", "hf", "json", "json", "jsonl", "jsonl", "parquet"]
    for unit in units:
        read = list(read_unit(unit, max_chars=1000))
        assert [json.loads(r["raw"])["prompt"] for r in read] == ["q0", "q1", "q2"], unit
        assert [r["origin_line"] for r in read] == [1, 2, 3]


@pytest.mark.parametrize("scan_block", [1 << 20, 5, 64])
@pytest.mark.parametrize("max_bytes", [1, 7, 40, 123, 10_000])
def test_line_ranges_read_exactly_the_whole_files_rows(
    tmp_path: Path, max_bytes: int, scan_block: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Line-aligned byte ranges of a JSONL file, read one by one, give the rows (and 1-based line numbers) of
    parsing the whole file in memory: a BOM, CRLF endings, blank lines, a long line, a bad byte and a last line
    without a newline included; also when the newline scan reads the file in blocks smaller than a line."""
    monkeypatch.setattr("polyalign_ray.corpus.readers.SCAN_BLOCK_BYTES", scan_block)
    lines = [
        b'\xef\xbb\xbf{"prompt": "q0", "response": "a0"}\r\n',
        b"\n",
        b'{"prompt": "q1", "response": "' + b"long " * 60 + b'"}\n',
        b"   \n",
        b'{"prompt": "\xe4\xbd\xa0\xe5\xa5\xbd", "response": "\xe5\x9b\x9e"}\r\n',
        b'{"prompt": "bad \xff byte"}\n',
        b"\n\n",
        b'{"prompt": "q9", "response": "last"}',
    ]
    path = tmp_path / "in.jsonl"
    path.write_bytes(b"".join(lines))
    whole = list(_jsonl_rows(str(path), path.read_bytes(), 1000))
    assert len(whole) == 5 and whole[-1]["origin_line"] == 9
    ranges = split_line_ranges(ReadUnit(str(path), "jsonl"), max_bytes)
    assert len(ranges) > 1 if max_bytes < path.stat().st_size else len(ranges) == 1
    assert ranges[0].byte_start == 0 and ranges[-1].byte_end == -1
    assert all(a.byte_end == b.byte_start for a, b in itertools.pairwise(ranges))
    assert [row for unit in ranges for row in read_unit(unit, max_chars=1000)] == whole


def test_bad_paths_fail_loudly(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="does not exist"):
        discover_read_units([str(tmp_path / "nope.jsonl")])
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(InputError, match="unsupported file type"):
        discover_read_units([str(tmp_path / "notes.txt")])
    with pytest.raises(InputError, match="holds no"):
        discover_read_units([str(tmp_path)])


@pytest.mark.parametrize(
    ("sizes", "val_fraction", "test_fraction", "bins"),
    [
        ({"src|en": 5000, "tiny|zh": 7, "one|en": 1}, 0.05, 0.1, 4096),
        ({"src|en": 300, "b|zh": 40}, 0.0, 1.0, 4096),  # everything test: no threshold inside a stratum
        ({"src|en": 2000, "b|zh": 999}, 0.3, 0.2, 2),  # two bins: a boundary bin holds a thousand keys
    ],
)
def test_the_threshold_plan_equals_plan_splits(sizes, val_fraction, test_fraction, bins, monkeypatch) -> None:
    """What the Ray Data engine does, in one process: a histogram of the groups' hashes per stratum, the keys of
    the boundary bins only, then each group placed alone against its stratum's two thresholds. The same plan."""
    monkeypatch.setattr(splits_module, "HASH_BINS", bins)
    fractions = {"val_fraction": val_fraction, "test_fraction": test_fraction}
    stratum_of = {f"{s}:{i}": s for s, n in sizes.items() for i in range(n)}
    expected = plan_splits(stratum_of.items(), seed=7, **fractions)
    keys = {g: splits_module.group_key(g, 7) for g in stratum_of}
    histogram: dict = defaultdict(Counter)
    for group, stratum in stratum_of.items():
        histogram[stratum][splits_module.hash_bin(keys[group][0])] += 1
    wanted = splits_module.boundary_bins(histogram, **fractions)
    bin_keys: dict = defaultdict(lambda: defaultdict(list))
    for group, stratum in stratum_of.items():
        b = splits_module.hash_bin(keys[group][0])
        if any(b == found for _, found, _ in wanted[stratum]):
            bin_keys[stratum][b].append(keys[group])
    collected = sum(len(v) for s in bin_keys.values() for v in s.values())
    if bins > 2:  # only the boundary bins' keys are gathered, not every group's
        assert collected < len(stratum_of) / 10
    thresholds = splits_module.thresholds_from_keys(histogram, bin_keys, **fractions)
    got = {g: splits_module.split_by_thresholds(keys[g], thresholds[s]) for g, s in stratum_of.items()}
    assert got == expected


def test_partitioned_dedup_decisions_equal_plan_dedup() -> None:
    """What the Ray Data engine does above the driver-plan size, in one process: records hash-partitioned by
    content key and decided partition by partition, then the survivors by id: the same rows dropped, with the
    same duplicates and quarantine lines, as ``plan_dedup`` over the whole table."""
    import random

    from polyalign_ray.corpus import dedup

    rng = random.Random(5)
    rows = [
        {
            "id": f"id{rng.randint(0, 150)}",
            "split": rng.choice(["train", "val", "test"]),
            "content_key": f"c{rng.randint(0, 120)}",
            "origin_file": rng.choice(["a.jsonl", "b.jsonl"]),
            "origin_line": i,
            "group_id": f"g{i}",
        }
        for i in range(400)
    ]
    plan = dedup.plan_dedup(rows)
    assert plan.duplicates and plan.collisions
    table = pa.Table.from_pylist(rows)

    def by_key(t: pa.Table, key: str, fn) -> pa.Table:
        parts = defaultdict(list)
        for i, value in enumerate(t[key].to_pylist()):
            parts[hash(value) % 5].append(i)
        return pa.concat_tables([fn(t.take(indices)) for indices in parts.values()])

    decided = by_key(table, "content_key", dedup.decide_duplicates_table)
    survivors = decided.filter(pa.compute.equal(decided["decision"], "keep"))
    final = pa.concat_tables(
        [
            by_key(survivors, "id", dedup.decide_id_collisions_table),
            decided.filter(pa.compute.not_equal(decided["decision"], "keep")),
        ]
    ).to_pylist()
    duplicates = {dedup.row_key(r): r["side_line"] for r in final if r["decision"] == "duplicate"}
    collisions = {dedup.row_key(r): r["side_line"] for r in final if r["decision"] == "duplicate_id"}
    assert duplicates == {k: dedup.side_line(v) for k, v in plan.duplicates.items()}
    assert collisions == {k: dedup.side_line(v) for k, v in plan.collisions.items()}
    assert len(final) == len(rows)
