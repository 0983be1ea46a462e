"""`polyalign eval` and `polyalign compare` on real Ray: the base and the SFT model of the session fixtures on the
stratified test set (both profile-conditioning profiles), then the comparison report with intervals and plots."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from polyalign_ray.cli import main
from tests.ray.tiny_run import TINY_MODEL

pytestmark = pytest.mark.ray


def test_eval_two_models_and_compare(data_dir: Path, zero3_run: Path, tmp_path: Path) -> None:
    common = [
        "--data",
        str(data_dir),
        "--output",
        str(tmp_path),
        *TINY_MODEL,
        "generation.max_new_tokens=24",
        "generation.batch_size=32",
        "eval.per_bucket=6",
        "eval.min_bucket_items=2",
        "eval.human_per_bucket=50",
        "model.profile_conditioning=true",  # both evaluation profiles: without and with the oracle length bin
    ]
    assert main(["eval", "--model", str(data_dir / "base_model"), "--name", "base", *common]) == 0
    assert main(["eval", "--model", str(zero3_run / "final"), "--name", "sft", *common]) == 0
    base = json.loads((tmp_path / "base" / "report.json").read_text())
    sft = json.loads((tmp_path / "sft" / "report.json").read_text())
    assert base["overall"]["n"] == sft["overall"]["n"] > 0
    assert set(base["by_language"]) == {"en", "zh"}
    assert set(base["by_track"]) == {"single", "multi"}
    predictions = (tmp_path / "sft" / "predictions.jsonl").read_text().splitlines()
    assert len(predictions) == sft["overall"]["n"]
    base_answers = (tmp_path / "base" / "predictions.jsonl").read_text().splitlines()
    assert predictions != base_answers  # two different models were evaluated
    assert all(
        value is not None
        for value in (sft["overall"]["bng"], sft["overall"]["c_mauve"], sft["overall"]["mauve"])
    )
    assert main(["compare", "base", "sft", "--data", str(data_dir), "--output", str(tmp_path)]) == 0
    report = (tmp_path / "report" / "report.md").read_text()
    assert "| en | base |" in report and "| zh | sft |" in report
    assert "| multi | sft |" in report and "| single | base |" in report
    for plot in ("lengths_per_bucket", "bucket_metrics", "nuf_frontier"):
        assert (tmp_path / "report" / "plots" / f"{plot}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    comparison = json.loads((tmp_path / "report" / "comparison.json").read_text())
    assert comparison["runs"] == ["base", "sft"] and comparison["seeds"] == 1
    f1 = comparison["estimates"]["sft"]["overall"]["all"]["f1"]
    assert f1["scheme"] == "items" and f1["low"] <= f1["mean"] <= f1["high"]
    assert "± " in report and "one seed" in report
    # profile conditioning: the report's answers have no length bin; the oracle-length profile is reported too
    assert sft["profile"] == "without_length" and sft["other_profile"]["profile"] == "oracle_length"
    assert (tmp_path / "sft" / "predictions_other_profile.jsonl").is_file()
    assert "## Profile conditioning: the other evaluation profile (oracle length)" in report
