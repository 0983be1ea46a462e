"""The data plane on a real local Ray instance: Ray Data prepare equals the in-process engine, and the
embedded-default pipeline (built-in corpus -> records -> references -> Bucket SFT -> critic -> HDPO -> evaluation ->
comparison report over two seeds) runs end to end, scaled down; a rerun skips every finished stage, a redo retrains."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pytest

from polyalign_ray.cli import main
from polyalign_ray.corpus.normalize import NormalizeSettings
from polyalign_ray.corpus.prepare import prepare_in_process
from polyalign_ray.corpus.readers import discover_read_units
from polyalign_ray.corpus.tables import load_split
from polyalign_ray.references import ReferenceSet
from polyalign_ray.schema import SPLITS

pytestmark = pytest.mark.ray

# What only Ray prints: worker prefixes, Ray Data's execution reports and progress bars, Train's cleaner, the
# autoscaler, Ray's own start line.
RAY_INTERNAL = re.compile(
    r"\(\w* ?pid=\d+\)|streaming_executor|logging_progress|PlacementGroupCleaner|autoscaler|\x1b\[A"
    r"|Started a local Ray instance|Token authentication|execution finished in|core_worker"
    r"|Configuration for experiment|View detailed results here"  # Ray Tune's experiment table
)

ROWS = [
    {"id": "a", "prompt": "What is the capital of France?", "response": "Paris."},
    {
        "id": "b",
        "messages": [{"role": "user", "content": "你好"}, {"role": "assistant", "content": "你好！"}],
    },
    {"id": "a-copy", "prompt": "What is the capital of France?", "response": "Paris."},
    {"id": "a", "prompt": "Different content", "response": "same id as the first row"},
    {"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "Hello! How are you?"}]},
    {"instruction": "Summarize", "input": "Cats sleep a lot.", "output": "Cats sleep."},
]


def write_input(path: Path) -> None:
    lines = [json.dumps(r, ensure_ascii=False) for r in ROWS]
    lines += [
        "{broken",
        "[1]",
        '{"prompt": "x", "response": 3}',
        '{"prompt": "Привет", "response": "Привет!"}',
    ]
    lines += [
        json.dumps({"id": f"n{i}", "prompt": f"question {i}", "response": f"answer number {i}"})
        for i in range(300)
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def write_second_input(path: Path) -> None:
    """Copies of the first input's rows under new ids (duplicates whose survivor depends on the split of both
    copies), ids the first input already used for other content, and conversations whose expanded turns form
    groups of several records, some of them in both languages (a group in two strata)."""
    lines = [
        json.dumps({"id": f"copy{i}", "prompt": f"question {i}", "response": f"answer number {i}"})
        for i in range(0, 300, 7)
    ]
    lines += [
        json.dumps({"id": f"n{i}", "prompt": f"other {i}", "response": f"other answer {i}"}) for i in range(5)
    ]
    for i in range(40):
        turns = [
            {"role": "user", "content": f"hello {i}"},
            {"role": "assistant", "content": f"Hi there, number {i}."},
            {"role": "user", "content": f"tell me more about {i}" if i % 4 else f"你好，第{i}个问题是什么？"},
            {"role": "assistant", "content": f"Here is more about {i}." if i % 4 else f"这是第{i}个回答。"},
        ]
        lines.append(json.dumps({"id": f"conv{i}", "messages": turns}, ensure_ascii=False))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def strip_timing(manifest: dict) -> dict:
    return {k: v for k, v in manifest.items() if k not in ("engine", "seconds")}


def test_ray_prepare_equals_in_process_prepare(ray_session, tmp_path: Path) -> None:
    """The Ray Data engine, planning on the driver and planning by hash-partitioned passes (forced here with
    partitions of 60 records), writes the in-process engine's records, quarantine, duplicates and manifest."""
    from polyalign_ray.corpus.readers import split_line_ranges
    from polyalign_ray.distributed.data import READ_RANGE_BYTES, prepare_with_ray

    write_input(tmp_path / "in.jsonl")
    write_second_input(tmp_path / "in2.jsonl")
    units = discover_read_units([str(tmp_path / "in.jsonl"), str(tmp_path / "in2.jsonl")])
    settings = NormalizeSettings(test_fraction=0.2, val_fraction=0.1, expand_turns=True)
    local = prepare_in_process(units, settings, tmp_path / "local", max_row_chars=5000, show_progress=False)
    assert local["read"] == len(ROWS) + 4 + 300 + 43 + 5 + 40
    assert local["duplicates"] == 1 + 43
    assert local["quarantine_reasons"] == {
        "duplicate_id": 1 + 5,
        "malformed_json": 1,
        "non_string_response": 1,
        "not_an_object": 1,
        "unsupported_language": 1,
    }
    assert local["expanded"] > 0 and {"test", "val", "train"} <= {
        s for s, n in local["per_split"].items() if n
    }
    assert all(len(split_line_ranges(u, 4096)) > 2 for u in units)
    for plan in ("driver", "distributed"):
        out = tmp_path / plan
        # The distributed run also reads each input as many 4 kB line ranges (several read tasks per file).
        distributed = prepare_with_ray(
            units,
            settings,
            out,
            max_row_chars=5000,
            plan=plan,
            partition_rows=60,
            read_range_bytes=4096 if plan == "distributed" else READ_RANGE_BYTES,
        )
        assert strip_timing(distributed) == strip_timing(local), plan
        for split in SPLITS:
            assert load_split(out, split).equals(load_split(tmp_path / "local", split)), (plan, split)
        for name in ("quarantine.jsonl", "duplicates.jsonl"):
            assert (out / name).read_text() == (tmp_path / "local" / name).read_text(), (plan, name)


class RecordActor:
    """A map over an actor pool that stamps each row with the process that handled it."""

    def __call__(self, batch):
        import os
        import time

        import pyarrow as pa

        time.sleep(0.05)  # long enough that one actor cannot take every block before the other starts
        return batch.append_column("pid", pa.array([os.getpid()] * batch.num_rows))


def test_a_table_cut_in_blocks_is_shared_by_the_actor_pool_and_keeps_its_order(ray_session) -> None:
    """``table_in_blocks``: ``from_arrow(table)`` is one block, which an actor-pool map hands to one actor (the
    generation and reference-log-prob actors beyond the first idled); cut into blocks of one batch, both actors of
    a 2-actor pool get batches, every row comes back once, and with ``preserve_order`` in the rows' order."""
    import ray.data

    from polyalign_ray.distributed.batch_generation import table_in_blocks

    table = pa.table({"x": list(range(50))})
    one_block = ray.data.from_arrow(table)
    assert one_block.num_blocks() == 1
    dataset = table_in_blocks(table, 4)
    assert dataset.num_blocks() == 13 and table_in_blocks(table.slice(0, 0), 4).count() == 0
    mapped = dataset.map_batches(
        RecordActor,
        batch_size=4,
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=2),
        num_cpus=1,
    )
    mapped.context.execution_options.preserve_order = True
    rows = list(mapped.iter_rows())
    assert [r["x"] for r in rows] == list(range(50))
    assert len({r["pid"] for r in rows}) == 2


def in_process_answers(model_path: Path, table, config, samples_per_record: int) -> dict[str, list[str]]:
    """What one in-process ``generate_responses`` call over every (record, sample) row gives, one torch thread as
    in the actors."""
    import torch

    from polyalign_ray.generation import generate_responses
    from polyalign_ray.models import load_causal_lm, load_tokenizer

    rows = table.to_pylist() * samples_per_record
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        answers = generate_responses(
            load_causal_lm(model_path, config.model),
            load_tokenizer(model_path),
            rows,
            config.generation,
            profile_conditioning=config.model.profile_conditioning,
            max_prompt_tokens=config.model.max_length,
        )
    finally:
        torch.set_num_threads(threads)
    out: dict[str, list[str]] = {}
    for row, answer in zip(rows, answers, strict=True):
        out.setdefault(row["id"], []).append(answer)
    return out


def test_generation_passes_answer_as_one_in_process_call_and_kept_actors_reload_a_changed_model(
    ray_session, data_dir: Path, zero3_run: Path, tmp_path: Path
) -> None:
    """A Ray Data pass and the pipeline's kept generation actors give the answers of one in-process call over the
    same rows: each batch is seeded by its number in the pass. Six copies of one prompt, one per batch, are not
    six copies of one answer (every Ray Data batch was seeded alike before). Kept actors load a model again when
    its folder changes."""
    import shutil

    from polyalign_ray.distributed.batch_generation import generation_actors_kept, sample_answers_with_ray
    from tests.ray.tiny_run import sft_config

    config = sft_config(
        data_dir,
        zero3_run,
        "generation.batch_size=1",
        "generation.max_new_tokens=6",
        "generation.num_workers=2",
    )
    val = load_split(data_dir, "val").slice(0, 4).to_pylist()
    copies = [dict(val[0], id=f"copy-{i}") for i in range(6)]
    table = pa.Table.from_pylist(val + copies)
    model = tmp_path / "model"
    shutil.copytree(zero3_run / "final", model)

    via_data = sample_answers_with_ray(
        table, str(model), config.generation, config.model, samples_per_record=2
    )
    assert via_data == in_process_answers(model, table, config, 2)
    assert len({via_data[c["id"]][0] for c in copies}) > 1
    with generation_actors_kept(config.generation) as kept:
        assert sample_answers_with_ray(
            table, str(model), config.generation, config.model, samples_per_record=2
        ) == (via_data)
        assert 1 <= len(kept.actors) <= 2
        shutil.rmtree(model)
        shutil.copytree(data_dir / "base_model", model)  # the same path, another model
        retrained = sample_answers_with_ray(table, str(model), config.generation, config.model)
    assert retrained == in_process_answers(model, table, config, 1)
    assert retrained != {key: answers[:1] for key, answers in via_data.items()}
    assert not kept.actors


def test_offline_pairs_prepared_in_the_driver_equal_those_of_the_ray_data_actors(
    ray_session, data_dir: Path, zero3_run: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A small pair set is tokenized and given its reference log-probs in the driver (no actor to start); a large
    one by Ray Data's actors. Both give the same rows in the same order."""
    from polyalign_ray import hdpo_data
    from polyalign_ray.distributed.data import PAIR_BATCH_ROWS, prepare_pairs_with_ray
    from tests.ray.tiny_run import sft_config

    config = sft_config(data_dir, zero3_run, "model.max_length=48")
    records = load_split(data_dir, "train").slice(0, PAIR_BATCH_ROWS + 9).to_pylist()
    rows = [
        dict(
            record,
            pair_id=f"{record['id']}#s0",
            chosen=record["response"],
            rejected=records[i - 1]["response"] + " and more",
            chosen_distance=0.1,
            rejected_distance=0.9,
            weight=1.0 + i / 10,
        )
        for i, record in enumerate(records)
    ]
    policy = str(zero3_run / "final")
    assert hdpo_data.prepares_pairs_in_process(len(rows), policy, precompute=True)
    in_driver = pa.concat_tables(
        prepare_pairs_with_ray(rows, policy, config).iter_batches(batch_format="pyarrow")
    )
    monkeypatch.setattr(hdpo_data, "IN_PROCESS_PAIR_WORK_MAX", 0)
    assert not hdpo_data.prepares_pairs_in_process(len(rows), policy, precompute=True)
    by_actors = pa.concat_tables(
        prepare_pairs_with_ray(rows, policy, config).iter_batches(batch_format="pyarrow")
    )
    assert in_driver["pair_id"].to_pylist() == [row["pair_id"] for row in rows]
    exact = [c for c in in_driver.column_names if not c.startswith("reference_")]
    assert in_driver.select(exact).to_pylist() == by_actors.select(exact).to_pylist()
    for column in ("reference_chosen_logps", "reference_rejected_logps"):
        assert in_driver[column].to_pylist() == pytest.approx(
            by_actors[column].to_pylist(), rel=1e-5, abs=1e-5
        )
        assert all(value < 0 for value in in_driver[column].to_pylist())


def test_pipeline_with_two_seeds_on_the_builtin_corpus(
    ray_session, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`polyalign pipeline --seeds 2`, scaled down: data once, each seed's SFT, critic, HDPO and evaluations as a
    Tune trial in its own folder, one report over both seeds with intervals and the HDPO − Bucket-SFT claim; a
    rerun skips everything; `pipeline.redo=[hdpo]` retrains HDPO from the start in every seed and re-evaluates
    what depends on it (issue 13)."""
    small = [
        "data.builtin_max_per_bucket=60",
        "model.builtin_hidden_size=32",
        "model.builtin_intermediate_size=64",
        "model.builtin_vocab_size=512",
        "model.max_length=128",
        "sft.max_steps=6",
        "generation.max_new_tokens=24",
        "generation.batch_size=32",
        "critic.max_prompts=200",
        "critic.epochs=4",
        "critic.hash_buckets=4096",
        "critic.min_corruption_farther_rate=0.5",
        "hdpo.max_steps=4",
        "hdpo.max_prompts=100",
        "eval.per_bucket=4",
        "eval.min_bucket_items=2",
        "eval.human_per_bucket=40",
        "eval.bootstrap_samples=200",
        "pipeline.baselines=false",  # plain SFT and DPO are the same stages with other settings (unit-tested)
        # one Train worker per stage: two seeds run at once on 2 CPUs; several workers are tested in test_sft_ray
        "sft.num_workers=1",
        "hdpo.num_workers=1",
        "tracking.backends=[mlflow, tensorboard]",
    ]
    # The first run is a real console: its own process and Ray instance, as `make demo` starts it.
    command = [
        str(Path(sys.executable).with_name("polyalign")),
        "pipeline",
        "--output",
        str(tmp_path),
        "--seeds",
        "2",
    ]
    # as a user's shell would have it: no RAY_ADDRESS, no DS_ACCELERATOR (the tests' conftest sets one)
    env = {key: value for key, value in os.environ.items() if key not in ("RAY_ADDRESS", "DS_ACCELERATOR")}
    done = subprocess.run([*command, *small], capture_output=True, text=True, env=env, timeout=1200)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-4000:]
    ray_lines = [line for line in out.splitlines() if RAY_INTERNAL.search(line)]
    # issue 16: Ray's own messages are in logs/ray.log, not on the console
    assert not ray_lines, ray_lines[:10]
    assert (
        "Setting accelerator" not in out
    )  # DeepSpeed's guess, imported by transformers when it saves a model
    assert "Started a local Ray instance" in (tmp_path / "logs" / "ray.log").read_text()
    # ... and a file per stage run by this process, named on the stage's line: Ray Data's execution of prepare in
    # data.log, the seed trials' output (their Train workers' lines included) in seeds.log
    assert f"Ray's messages: {tmp_path / 'logs' / 'data.log'}" in out
    assert "execution" in (tmp_path / "logs" / "data.log").read_text().lower()
    assert "run_seed_trial" in (tmp_path / "logs" / "seeds.log").read_text()
    for line in (
        "[1/1] data: prepare + references ...",
        "seeds [0, 1]: 6 stages each",
        "compare: comparison",
    ):
        assert line in out, line
    data = tmp_path / "data"
    manifest = json.loads((data / "manifest.json").read_text())
    assert (
        manifest["read"] + manifest["expanded"]
        == manifest["kept"] + manifest["quarantined"] + manifest["duplicates"]
    )
    buckets = set(manifest["per_bucket"])
    assert {b.split("|")[0] for b in buckets} == {"en", "zh"}
    assert {b.split("|")[1] for b in buckets} == {"single", "multi"}
    assert len({b.split("|")[2] for b in buckets}) >= 2
    references = ReferenceSet.load(data / "references.json")
    train = load_split(data, "train")
    assert sum(references.counts[b] for b in buckets if b in references.counts) == train.num_rows
    assert "| bucket | train | val | test |" in out
    assert "Empty buckets" in out
    assert (data / "buckets.md").is_file()
    for seed in (0, 1):
        root = tmp_path / "seeds" / f"seed_{seed}"
        assert json.loads((root / "sft" / "summary.json").read_text())["steps"] == 6
        assert json.loads((root / "critic" / "summary.json").read_text())["gates_passed"]
        assert (root / "hdpo" / "final" / "config.json").is_file()
        assert "hdpo: HDPO" in (root / "progress.log").read_text()
    sft_losses = [
        json.loads((tmp_path / "seeds" / f"seed_{s}" / "sft" / "summary.json").read_text())["losses"]
        for s in (0, 1)
    ]
    assert sft_losses[0] != sft_losses[1]  # the seeds trained different runs
    report = (tmp_path / "eval" / "report" / "report.md").read_text()
    for name in ("base", "sft", "hdpo"):
        assert f"| {name} |" in report
    assert "| en | hdpo |" in report and "| zh | hdpo |" in report
    assert "| single | sft |" in report and "| multi | sft |" in report
    assert "2 seed(s) per run" in report and "### HDPO − Bucket-SFT" in report
    assert "t interval over the 2 seeds' values" in report
    comparison = json.loads((tmp_path / "eval" / "report" / "comparison.json").read_text())
    bng = comparison["estimates"]["hdpo"]["overall"]["all"]["bng"]
    assert bng["seeds"] == 2 and bng["scheme"] == "seeds+items" and bng["low"] <= bng["mean"] <= bng["high"]
    assert "Mean ± 95% interval half-width, 2 seed(s)" in out and "HDPO − Bucket-SFT:" in out
    assert "Comparison report" in out
    check_tracking(tmp_path)

    # a second run finds every stage done
    assert main(["pipeline", "--output", str(tmp_path), "--seeds", "2", *small]) == 0
    again = capsys.readouterr().out
    assert (
        "seed 0: every stage done earlier, skipped" in again and "seed 1: every stage done earlier" in again
    )
    assert "compare: comparison over 2 seeds — done earlier, skipped" in again

    # redo HDPO: trained again from the start in both seeds, its evaluation and the report follow (issue 13)
    first_hdpo = (tmp_path / "seeds" / "seed_0" / "hdpo" / "metrics.jsonl").read_text()
    assert main(["pipeline", "--output", str(tmp_path), "--seeds", "2", *small, "pipeline.redo=[hdpo]"]) == 0
    redone_out = capsys.readouterr().out
    assert "compare: comparison over 2 seeds ... (reopened:" in redone_out
    progress = (tmp_path / "seeds" / "seed_0" / "progress.log").read_text()
    assert "hdpo: HDPO ... (redo requested: starting over" in progress
    assert "eval_hdpo: evaluate hdpo ... (reopened: hdpo ran again" in progress
    assert "sft: Bucket-Aware SFT — done earlier, skipped" in progress
    redone = json.loads((tmp_path / "seeds" / "seed_0" / "hdpo" / "summary.json").read_text())
    assert (redone["steps"], redone["resumed_from_step"]) == (4, 0)
    assert (tmp_path / "seeds" / "seed_0" / "hdpo" / "previous" / "metrics.jsonl").read_text() == first_hdpo


def check_tracking(root: Path) -> None:
    """Issue 16: every stage of every seed is a run of one MLflow experiment (named after the root folder) with
    the config as params and the step metrics of metrics.jsonl; the comparison's run holds the report; TensorBoard
    has the same scalars. Read back with each library's own reader."""
    from mlflow import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    client = MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(root.name)
    runs = {r.info.run_name: r for r in client.search_runs([experiment.experiment_id], max_results=200)}
    for seed in (0, 1):
        for stage in ("sft", "critic", "hdpo"):
            assert f"seeds/seed_{seed}/{stage}" in runs, sorted(runs)
    sft = runs["seeds/seed_0/sft"]
    assert sft.data.params["sft.max_steps"] == "6" and sft.info.status == "FINISHED"
    logged = json.loads((root / "seeds" / "seed_0" / "sft" / "metrics.jsonl").read_text().splitlines()[-1])
    history = client.get_metric_history(sft.info.run_id, "loss")
    assert [m.step for m in history][-1] == logged["step"] and history[-1].value == pytest.approx(
        logged["loss"]
    )
    assert any(run_name.endswith("eval/hdpo") for run_name in runs)
    report_run = next(r for name, r in runs.items() if name.endswith("eval/report"))
    assert "report.md" in [a.path for a in client.list_artifacts(report_run.info.run_id)]
    events = EventAccumulator(str(root / "tensorboard" / "seeds" / "seed_0" / "sft"))
    events.Reload()
    assert [e.value for e in events.Scalars("loss")] == pytest.approx([m.value for m in history])
