"""Which run a training stage trains: an interrupted run of the same settings continues, anything else starts over
with the earlier outputs moved aside (no Ray: the Ray Train side only receives the run name)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from polyalign_ray.training_runs import (
    PREVIOUS_DIR,
    RUN_FILE,
    finish_training_run,
    folder_identity,
    open_training_run,
    training_fingerprint,
    write_json_atomically,
)


def fake_outputs(out: Path, tag: str) -> None:
    """What a run leaves: a Ray Train checkpoint, metrics, a summary and the final model."""
    (out / "ray_results" / "x" / "checkpoint_000001").mkdir(parents=True)
    (out / "metrics.jsonl").write_text(json.dumps({"step": 1, "tag": tag}) + "\n")
    (out / "summary.json").write_text(json.dumps({"tag": tag}))
    (out / "final").mkdir()
    (out / "final" / "model.safetensors").write_text(tag)
    (out / ".failed_at_step_7").touch()


def test_a_new_folder_starts_a_new_unfinished_run(tmp_path: Path) -> None:
    run = open_training_run(tmp_path / "sft", "sft", "abcdef0123456789")
    assert (run.name, run.resume, run.reason) == ("sft-abcdef012345", False, "new run")
    recorded = json.loads((tmp_path / "sft" / RUN_FILE).read_text())
    assert recorded["fingerprint"] == "abcdef0123456789" and recorded["finished"] is False


def test_an_interrupted_run_with_the_same_settings_continues_untouched(tmp_path: Path) -> None:
    first = open_training_run(tmp_path, "sft", "f" * 16)
    fake_outputs(tmp_path, "first")
    again = open_training_run(tmp_path, "sft", "f" * 16)
    assert again.resume and again.name == first.name
    assert "continuing the interrupted run" in again.reason
    assert json.loads((tmp_path / "summary.json").read_text()) == {"tag": "first"}
    assert not (tmp_path / PREVIOUS_DIR).exists()


def test_changed_settings_start_over_and_move_the_earlier_run_aside(tmp_path: Path) -> None:
    first = open_training_run(tmp_path, "hdpo", "a" * 16)
    fake_outputs(tmp_path, "first")
    second = open_training_run(tmp_path, "hdpo", "b" * 16)
    assert not second.resume and second.name != first.name
    assert "settings or inputs changed" in second.reason
    for name in ("ray_results", "metrics.jsonl", "summary.json", "final", ".failed_at_step_7"):
        assert not (tmp_path / name).exists(), name
        assert (tmp_path / PREVIOUS_DIR / name).exists(), name
    assert json.loads((tmp_path / PREVIOUS_DIR / "summary.json").read_text()) == {"tag": "first"}
    # A third run replaces the one kept aside: only the latest earlier run is kept.
    fake_outputs(tmp_path, "second")
    open_training_run(tmp_path, "hdpo", "c" * 16)
    assert json.loads((tmp_path / PREVIOUS_DIR / "summary.json").read_text()) == {"tag": "second"}


def test_a_finished_run_or_redo_starts_over_even_with_the_same_settings(tmp_path: Path) -> None:
    run = open_training_run(tmp_path, "sft", "a" * 16)
    fake_outputs(tmp_path, "first")
    finish_training_run(tmp_path, run)
    again = open_training_run(tmp_path, "sft", "a" * 16)
    assert not again.resume and "had finished" in again.reason
    assert not (tmp_path / "final").exists()
    fake_outputs(tmp_path, "second")  # interrupted, same settings, but redo asked for
    redo = open_training_run(tmp_path, "sft", "a" * 16, fresh=True)
    assert not redo.resume and "redo" in redo.reason
    assert json.loads((tmp_path / PREVIOUS_DIR / "summary.json").read_text()) == {"tag": "second"}


def test_an_explicit_checkpoint_inside_the_moved_run_is_followed(tmp_path: Path) -> None:
    open_training_run(tmp_path, "sft", "a" * 16)
    fake_outputs(tmp_path, "first")
    checkpoint = tmp_path / "ray_results" / "x" / "checkpoint_000001"
    run = open_training_run(tmp_path, "sft", "a" * 16, resume_from=str(checkpoint))
    assert not run.resume
    assert (
        Path(run.resume_from)
        == (tmp_path / PREVIOUS_DIR / "ray_results" / "x" / "checkpoint_000001").resolve()
    )
    assert Path(run.resume_from).is_dir()
    elsewhere = open_training_run(tmp_path, "sft", "a" * 16, resume_from="/somewhere/else")
    assert elsewhere.resume_from == "/somewhere/else"


def test_fingerprint_ignores_operational_keys_only() -> None:
    sft = {"lr": 0.001, "output_dir": "a", "fail_at_step": 0, "log_every": 5, "max_failures": 1}
    base = training_fingerprint({"sft": sft, "data": {"seed": 0}}, "sft", {"model": "m1"})
    same = {**sft, "output_dir": "b", "fail_at_step": 7, "log_every": 1, "max_failures": 0}
    assert training_fingerprint({"sft": same, "data": {"seed": 0}}, "sft", {"model": "m1"}) == base
    assert (
        training_fingerprint({"sft": {**sft, "lr": 0.002}, "data": {"seed": 0}}, "sft", {"model": "m1"})
        != base
    )
    assert training_fingerprint({"sft": sft, "data": {"seed": 1}}, "sft", {"model": "m1"}) != base
    assert training_fingerprint({"sft": sft, "data": {"seed": 0}}, "sft", {"model": "m2"}) != base
    # Another section's output_dir is an input location, not an operational key of this run.
    other = training_fingerprint({"sft": sft, "data": {"seed": 0, "output_dir": "x"}}, "sft", {"model": "m1"})
    assert other != training_fingerprint(
        {"sft": sft, "data": {"seed": 0, "output_dir": "y"}}, "sft", {"model": "m1"}
    )


def test_folder_identity_changes_when_a_file_is_rewritten(tmp_path: Path) -> None:
    model = tmp_path / "final"
    model.mkdir()
    (model / "model.safetensors").write_bytes(b"1234")
    (model / "config.json").write_text("{}")
    before = folder_identity(model)
    assert folder_identity(model) == before
    os.utime(model / "model.safetensors", ns=(1, 1))
    assert folder_identity(model) != before
    assert folder_identity(tmp_path / "missing") == f"name:{tmp_path / 'missing'}"
    assert folder_identity("Qwen/Qwen2.5-0.5B-Instruct") == "name:Qwen/Qwen2.5-0.5B-Instruct"


def test_atomic_json_write_leaves_no_temporary_file(tmp_path: Path) -> None:
    write_json_atomically(tmp_path / "sub" / "marker.json", {"a": 1})
    assert json.loads((tmp_path / "sub" / "marker.json").read_text()) == {"a": 1}
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["marker.json"]
