"""The pipeline's stage list, its baseline configs and the stage markers that make it resumable (no Ray started)."""

from __future__ import annotations

import json
from pathlib import Path

from polyalign_ray.config import PIPELINE_STAGE_NAMES, load_config
from polyalign_ray.distributed.pipeline import (
    MARKER,
    dpo_config,
    fingerprint,
    pipeline_stages,
    plain_sft_config,
    stage_is_done,
)


def config(tmp_path: Path, *overrides: str):
    stages = ("data", "sft", "critic", "hdpo", "eval")
    return load_config(None, [f"{s}.output_dir={tmp_path / s}" for s in stages] + list(overrides))


def test_stage_order_with_and_without_baselines(tmp_path: Path) -> None:
    assert [s.name for s in pipeline_stages(config(tmp_path))] == list(PIPELINE_STAGE_NAMES)
    lean = pipeline_stages(config(tmp_path, "pipeline.baselines=false", "pipeline.evaluate=false"))
    assert [s.name for s in lean] == ["data", "sft", "critic", "hdpo"]


def test_baseline_configs(tmp_path: Path) -> None:
    base = config(tmp_path, "sampler.alpha=0.3", "hdpo.reg_lambda=0.2")
    plain = plain_sft_config(base)
    assert (plain.sampler.alpha, plain.sft.output_dir) == (1.0, str(tmp_path / "sft_plain"))
    dpo = dpo_config(base)
    assert (dpo.hdpo.reg_lambda, dpo.hdpo.sft_coef, dpo.hdpo.unit_weights) == (0.0, 0.0, True)
    assert dpo.hdpo.output_dir == str(tmp_path / "dpo")
    assert dpo.hdpo.beta == base.hdpo.beta and dpo.sampler.alpha == 0.3


def test_a_changed_setting_reopens_only_the_stages_that_depend_on_it(tmp_path: Path) -> None:
    first = config(tmp_path)
    for stage in pipeline_stages(first):
        stage.folder.mkdir(parents=True, exist_ok=True)
        (stage.folder / MARKER).write_text(json.dumps({"fingerprint": fingerprint(first, stage.sections)}))
    assert all(stage_is_done(s, first) for s in pipeline_stages(first))
    changed = config(tmp_path, "hdpo.beta=0.2")
    reopened = [s.name for s in pipeline_stages(changed) if not stage_is_done(s, changed)]
    assert reopened == ["dpo", "hdpo", "eval_dpo", "eval_hdpo", "compare"]
    evaluation = config(tmp_path, "eval.per_bucket=7")
    reopened = [s.name for s in pipeline_stages(evaluation) if not stage_is_done(s, evaluation)]
    assert reopened == [n for n in PIPELINE_STAGE_NAMES if n.startswith("eval_") or n == "compare"]
