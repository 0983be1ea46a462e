"""The pipeline's stage list, its baseline configs and the stage markers that make it resumable (no Ray started)."""

from __future__ import annotations

from pathlib import Path

import pytest

from polyalign_ray.config import PIPELINE_STAGE_NAMES, load_config
from polyalign_ray.stages import pipeline
from polyalign_ray.stages.pipeline import (
    MARKER,
    Stage,
    dpo_config,
    mark_stage_done,
    pipeline_stages,
    plain_sft_config,
    run_pipeline,
    stage_folders,
    stage_is_done,
    why_stage_runs,
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
        mark_stage_done(stage, first, 1.0)
    assert all(stage_is_done(s, first) for s in pipeline_stages(first))
    changed = config(tmp_path, "hdpo.beta=0.2")
    reopened = [s.name for s in pipeline_stages(changed) if not stage_is_done(s, changed)]
    assert reopened == ["dpo", "hdpo", "eval_dpo", "eval_hdpo", "compare"]
    evaluation = config(tmp_path, "eval.per_bucket=7")
    reopened = [s.name for s in pipeline_stages(evaluation) if not stage_is_done(s, evaluation)]
    assert reopened == [n for n in PIPELINE_STAGE_NAMES if n.startswith("eval_") or n == "compare"]


def test_a_stage_that_ran_again_reopens_the_stages_that_read_its_outputs(tmp_path: Path) -> None:
    """Like make: a new run of HDPO (redo, or a retrain) reopens its evaluation; the evaluation's new run then
    reopens the report; nothing else is touched."""
    first = config(tmp_path)
    stages = pipeline_stages(first)
    for stage in stages:
        mark_stage_done(stage, first, 1.0)
    mark_stage_done(next(s for s in stages if s.name == "hdpo"), first, 1.0)  # a new run_id
    folders = stage_folders(stages, first)
    reopened = [s.name for s in stages if not stage_is_done(s, first, folders)]
    assert reopened == ["eval_hdpo"]
    assert why_stage_runs(stages[-2], first, folders) == "reopened: hdpo ran again"
    mark_stage_done(stages[-2], first, 1.0)
    assert [s.name for s in stages if not stage_is_done(s, first, folders)] == ["compare"]
    assert why_stage_runs(stages[-1], first, folders) == "reopened: eval_hdpo ran again"
    mark_stage_done(next(s for s in stages if s.name == "data"), first, 1.0)
    assert [s.name for s in stages if stage_is_done(s, first, folders)] == ["data"]


def fake_stages(tmp_path: Path, calls: list[str], interrupt: set[str]) -> list[Stage]:
    def run(name: str):
        def body(fresh: bool) -> str:
            calls.append(f"{name}{'!' if fresh else ''}")
            (tmp_path / name / "output.txt").write_text("partial")
            if name in interrupt:
                raise KeyboardInterrupt
            return name

        return body

    stages = []
    for name, needs in (("data", ()), ("hdpo", ("data",)), ("eval_hdpo", ("hdpo",))):
        (tmp_path / name).mkdir(exist_ok=True)
        stages.append(Stage(name, name, tmp_path / name, ("data",), run(name), needs=needs))
    return stages


def test_an_interrupted_stage_is_never_done_and_runs_again(tmp_path: Path, monkeypatch) -> None:
    """Ctrl-C inside a stage that was done before with other settings: its old marker was withdrawn when it
    started, so the next run does it (and the stage after it) instead of skipping them."""
    settings = config(tmp_path)
    calls: list[str] = []
    monkeypatch.setattr(pipeline, "pipeline_stages", lambda c: fake_stages(tmp_path, calls, set()))
    monkeypatch.setattr(pipeline, "stage_folders", lambda s, c: {st.name: st.folder for st in s})
    run_pipeline(settings, echo=lambda _: None)
    assert calls == ["data", "hdpo", "eval_hdpo"]
    assert all((tmp_path / n / MARKER).is_file() for n in ("data", "hdpo", "eval_hdpo"))

    redo = config(tmp_path, "pipeline.redo=[hdpo]")
    monkeypatch.setattr(pipeline, "pipeline_stages", lambda c: fake_stages(tmp_path, calls, {"hdpo"}))
    with pytest.raises(KeyboardInterrupt):
        run_pipeline(redo, echo=lambda _: None)
    assert calls[-1] == "hdpo!"  # redo asks the training stage to start over
    assert not (tmp_path / "hdpo" / MARKER).exists()

    lines: list[str] = []
    monkeypatch.setattr(pipeline, "pipeline_stages", lambda c: fake_stages(tmp_path, calls, set()))
    run_pipeline(settings, echo=lines.append)
    assert calls[-2:] == ["hdpo", "eval_hdpo"]  # continued (not fresh), then its consumer reopened
    assert "done earlier, skipped" in lines[0]
    assert "(not done yet;" in lines[1]
    assert "reopened: hdpo ran again" in lines[3]


def test_compare_finds_runs_by_name_by_seed_and_by_folder(tmp_path: Path) -> None:
    """A name resolves to each seed's evaluation folder (pipeline.seeds); an existing folder is taken as it is,
    even when its name holds '=' and ',' (sweep trial folders do); NAME=DIR1,DIR2 lists a run's seeds by hand."""
    from polyalign_ray.stages.evaluate import run_folders
    from polyalign_ray.stages.pipeline import seed_config

    seeded = config(tmp_path, "pipeline.seeds=[0, 1]")
    for seed in (0, 1):
        folder = Path(seed_config(seeded, seed).eval.output_dir) / "hdpo"
        folder.mkdir(parents=True)
        (folder / "report.json").write_text("{}")
    assert run_folders(seeded, ["hdpo"]) == {
        "hdpo": [tmp_path / "seeds" / f"seed_{s}" / "eval" / "hdpo" for s in (0, 1)]
    }
    trial = tmp_path / "trials" / "t1_reg_lambda=0,weight_gap=2,seed=0" / "eval" / "hdpo"
    trial.mkdir(parents=True)
    (trial / "report.json").write_text("{}")
    assert run_folders(seeded, [str(trial)]) == {"hdpo": [trial]}
    two = [str(tmp_path / "seeds" / f"seed_{s}" / "eval" / "hdpo") for s in (0, 1)]
    assert run_folders(seeded, [f"mine={','.join(two)}"]) == {"mine": [Path(p) for p in two]}
    with pytest.raises(FileNotFoundError, match="polyalign eval --name dpo"):
        run_folders(seeded, ["dpo"])


def test_consecutive_evaluations_share_kept_generation_actors_and_training_never_runs_beside_them(
    tmp_path: Path, monkeypatch
) -> None:
    """The top-level pipeline keeps generation actors from its first evaluation to the end of a run of evaluations
    and ends them before any other stage (a training stage needs their CPUs); a Tune trial (``only``) keeps none."""
    from polyalign_ray.distributed import batch_generation

    events: list[str] = []

    class Recorder:
        def __init__(self, generation) -> None:
            pass

        def __enter__(self) -> None:
            events.append("actors kept")

        def __exit__(self, *exc) -> None:
            events.append("actors ended")

    def stages_of(names: list[str]) -> list[Stage]:
        def body(name: str):
            return lambda fresh: events.append(name)

        out = []
        for name in names:
            (tmp_path / name).mkdir(exist_ok=True)
            out.append(
                Stage(
                    name, name, tmp_path / name, ("eval",), body(name), only_generates=name.startswith("eval")
                )
            )
        return out

    names = ["hdpo", "eval_base", "eval_sft", "train_again", "eval_hdpo", "compare"]
    monkeypatch.setattr(batch_generation, "generation_actors_kept", Recorder)
    monkeypatch.setattr(pipeline, "pipeline_stages", lambda c: stages_of(names))
    monkeypatch.setattr(pipeline, "stage_folders", lambda s, c: {st.name: st.folder for st in s})
    run_pipeline(config(tmp_path), echo=lambda _: None)
    assert events == [
        "hdpo",
        "actors kept",
        "eval_base",
        "eval_sft",
        "actors ended",
        "train_again",
        "actors kept",
        "eval_hdpo",
        "actors ended",
        "compare",
    ]
    events.clear()
    run_pipeline(config(tmp_path, "pipeline.redo=[eval_sft]"), echo=lambda _: None, only=("eval_sft",))
    assert events == ["eval_sft"]
