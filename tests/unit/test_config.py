"""Config: YAML mirrors the dataclasses, overrides apply in order, and every bad key is named with a fix."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from polyalign_ray.cli import main
from polyalign_ray.config import (
    MOVED_KEYS,
    ConfigError,
    HDPOConfig,
    PolyAlignConfig,
    SFTConfig,
    TrainingSection,
    config_from_dict,
    config_to_dict,
    default_config_path,
    load_config,
)
from polyalign_ray.config_reference import (
    config_fields,
    config_reference_markdown,
    explained_yaml,
    field_help,
)


def test_default_yaml_mirrors_the_dataclass_defaults() -> None:
    loaded = yaml.safe_load(default_config_path().read_text(encoding="utf-8"))
    assert config_from_dict(loaded) == PolyAlignConfig()
    assert loaded == config_to_dict(PolyAlignConfig())


def test_round_trip_through_dict() -> None:
    config = load_config(None, ["sampler.alpha=0.5", "sampler.multipliers={'en|single|qa|short': 2}"])
    assert config_from_dict(config_to_dict(config)) == config


def test_file_then_overrides(tmp_path: Path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text("sampler:\n  alpha: 0.25\ndata:\n  inputs: [a.jsonl, b.parquet]\n")
    config = load_config(path, ["sampler.alpha=1", "references.band=[0.05, 0.95]"])
    assert config.sampler.alpha == 1.0
    assert config.data.inputs == ("a.jsonl", "b.parquet")
    assert config.references.band == (0.05, 0.95)


def test_every_problem_is_reported_at_once_with_a_fix() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(
            None,
            [
                "data.val_fractoin=0.3",
                "sampler.alpha=2",
                "data.seed=abc",
                "references.band=[0.9, 0.1]",
                "sampler.mode=weights",
                "refrences.min_count=3",
            ],
        )
    problems = info.value.problems
    assert len(problems) == 6, problems
    text = str(info.value)
    assert "did you mean 'data.val_fraction'" in text
    assert "sampler.alpha must be in [0, 1]" in text
    assert "data.seed must be an integer" in text
    assert "references.band must be [lo, hi] with lo < hi" in text
    assert "sampler.mode must be one of ['sampler', 'loss_weights']" in text
    assert "did you mean 'references'" in text


def test_fractions_must_leave_room_for_train() -> None:
    with pytest.raises(ConfigError, match="nothing would be left for train"):
        load_config(None, ["data.val_fraction=0.5", "data.test_fraction=0.5"])


def test_override_syntax_errors_name_the_override() -> None:
    with pytest.raises(ConfigError, match=r"must look like section\.key=value"):
        load_config(None, ["sampler.alpha"])


def test_missing_and_invalid_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_config(bad)


def test_cli_rejects_a_bad_config_before_any_ray_work(
    capsys: pytest.CaptureFixture[str], monkeypatch
) -> None:
    """Exit code 2 and the key named, and the prepare stage (which would start Ray) is never entered."""
    import polyalign_ray.cli as cli

    def must_not_run(*args, **kwargs):
        raise AssertionError("the prepare stage started despite a bad config")

    monkeypatch.setattr(cli, "_run_prepare", must_not_run)
    assert main(["prepare", "--output", "/nonexistent/x", "data.max_row_chars=0", "sampler.alhpa=1"]) == 2
    err = capsys.readouterr().err
    assert "data.max_row_chars must be > 0" in err
    assert "did you mean 'sampler.alpha'" in err


def test_sft_bad_config_fails_before_ray(capsys: pytest.CaptureFixture[str], monkeypatch) -> None:
    """ZeRO stage 5, batch size 0 and an unknown key: exit 2, every key named, and the stage (which would start
    Ray) is never entered."""
    import polyalign_ray.cli as cli

    def must_not_run(*args, **kwargs):
        raise AssertionError("the SFT stage started despite a bad config")

    monkeypatch.setattr(cli, "_run_sft", must_not_run)
    assert main(["sft", "sft.zero_stage=5", "sft.micro_batch_size=0", "sft.nm_workers=2"]) == 2
    err = capsys.readouterr().err
    assert "sft.zero_stage must be 0, 1, 2 or 3, got 5" in err
    assert "sft.micro_batch_size must be >= 1, got 0" in err
    assert "did you mean 'sft.num_workers'" in err


def test_hdpo_bad_config_fails_before_ray(capsys: pytest.CaptureFixture[str], monkeypatch) -> None:
    """Online with a staleness bound every pair would exceed, a backend that is not importable-looking, inverted
    weight bounds: exit 2, each named with its fix, and the stage never starts."""
    import polyalign_ray.cli as cli

    def must_not_run(*args, **kwargs):
        raise AssertionError("the HDPO stage started despite a bad config")

    monkeypatch.setattr(cli, "_run_hdpo", must_not_run)
    argv = [
        "hdpo",
        "--mode",
        "online",
        "hdpo.online.rollout_depth=4",
        "hdpo.online.sync_every=2",
        "hdpo.online.max_staleness=3",
        "hdpo.online.generation_backend=vllm",
        "hdpo.weight_min=2",
        "hdpo.weight_max=1",
        "hdpo.beta=0",
    ]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "hdpo.online.max_staleness (3) is below rollout_depth + sync_every - 1 (5)" in err
    assert "hdpo.online.generation_backend must be 'hf' or 'package.module:ClassName', got 'vllm'" in err
    assert "0 < weight_min <= weight_max, got 2.0 and 1.0" in err
    assert "hdpo.beta must be > 0, got 0.0" in err


def test_hdpo_cli_maps_its_flags(monkeypatch) -> None:
    import polyalign_ray.cli as cli

    seen = {}
    monkeypatch.setattr(
        cli, "_run_hdpo", lambda config, resume: seen.update(config=config, resume=resume) or 0
    )
    assert main(["hdpo", "--data", "d", "--output", "o", "--mode", "online", "--resume-from", "ck"]) == 0
    hdpo = seen["config"].hdpo
    assert (seen["config"].data.output_dir, hdpo.output_dir, hdpo.mode, seen["resume"]) == (
        "d",
        "o",
        "online",
        "ck",
    )


@pytest.mark.parametrize(
    "path", ["runs/exp #2", "runs/my exp", "off", "null", "2024", "yes", "runs/[a]", "a: b"]
)
def test_flags_set_typed_values_and_paths_stay_strings(path: str, monkeypatch) -> None:
    """A flag's value is taken as it is; parsed as YAML ('KEY=VALUE' overrides) '#' starts a comment, 'off' is a
    boolean, 'null' is None, '2024' a number."""
    import polyalign_ray.cli as cli

    seen = {}
    monkeypatch.setattr(cli, "_run_pipeline", lambda config: seen.update(config=config) or 0)
    monkeypatch.setattr(cli, "_run_prepare", lambda config, engine: seen.update(config=config) or 0)
    assert main(["pipeline", "--output", path]) == 0
    config = seen["config"]
    assert (config.data.output_dir, config.sft.output_dir) == (f"{path}/data", f"{path}/sft")
    assert config.eval.output_dir == f"{path}/eval" and config.critic.output_dir == f"{path}/critic"
    assert main(["prepare", "--output", path, "--input", path, "--input", "b.jsonl"]) == 0
    assert (seen["config"].data.output_dir, seen["config"].data.inputs) == (path, (path, "b.jsonl"))


def test_dotted_overrides_still_parse_yaml_and_win_over_flags(monkeypatch) -> None:
    import polyalign_ray.cli as cli

    seen = {}
    monkeypatch.setattr(cli, "_run_pipeline", lambda config: seen.update(config=config) or 0)
    assert (
        main(["pipeline", "--output", "o", "--seeds", "3", "sft.output_dir=elsewhere", "sampler.alpha=0.5"])
        == 0
    )
    config = seen["config"]
    assert (config.sft.output_dir, config.sampler.alpha, config.pipeline.seeds) == (
        "elsewhere",
        0.5,
        (0, 1, 2),
    )
    assert main(["pipeline", "--seeds", "0"]) == 2


def test_every_key_has_help_and_the_explained_yaml_loads_back() -> None:
    config = load_config(None, ["sampler.alpha=0.5", "hdpo.online.rollout_depth=3", "pipeline.seeds=[0, 1]"])
    fields = config_fields(config)
    assert len(fields) >= 200 and not [key for key, _, text in fields if not text]
    assert config_from_dict(yaml.safe_load(explained_yaml(config))) == config
    # a stage that only redeclares a default keeps the shared group's help
    assert field_help(HDPOConfig)["lr"] == field_help(SFTConfig)["lr"] == "Peak learning rate of AdamW."


def test_docs_configuration_md_is_generated_from_the_dataclasses() -> None:
    """docs/configuration.md is what ``polyalign config --markdown`` prints: regenerate it after changing a field."""
    committed = Path(__file__).parents[2] / "docs" / "configuration.md"
    assert committed.read_text(encoding="utf-8") == config_reference_markdown(), (
        "docs/configuration.md is stale: run `.venv/bin/polyalign config --markdown > docs/configuration.md`"
    )


def test_sft_and_hdpo_share_one_definition_of_their_training_keys() -> None:
    shared = {f.name for f in dataclasses.fields(TrainingSection)}
    assert {
        "lr",
        "micro_batch_size",
        "num_workers",
        "zero_stage",
        "checkpoint_every",
        "max_failures",
    } <= shared
    assert shared <= {f.name for f in dataclasses.fields(SFTConfig)} & {
        f.name for f in dataclasses.fields(HDPOConfig)
    }
    config = load_config(None, ["sft.micro_batch_size=3", "sft.grad_accum_steps=2", "hdpo.lr=0.01"])
    assert config.sft.rank_batch_size == 6 and config.sft.global_batch_size(4) == 24
    assert (config.sft.lr, config.hdpo.lr, config.hdpo.warmup_steps, config.sft.epochs) == (
        1e-3,
        0.01,
        5,
        0.5,
    )


@pytest.mark.parametrize("old", sorted(MOVED_KEYS))
def test_moved_keys_are_refused_with_the_new_name(old: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, [f"{old}=2"])
    assert info.value.problems == [f"{old!r} moved to {MOVED_KEYS[old]!r}: write {MOVED_KEYS[old]}=2"]
    key = MOVED_KEYS[old].rsplit(".", 1)[1]
    assert key in {f.name for f in dataclasses.fields(type(load_config().hdpo.online))}
