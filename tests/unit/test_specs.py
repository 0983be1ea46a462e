"""Every job spec and cluster profile in the repository is a valid polyalign config, and job specs say how to
submit themselves."""

from __future__ import annotations

from pathlib import Path

import pytest

from polyalign_ray.cli import build_parser
from polyalign_ray.config import load_config
from polyalign_ray.job_spec import config_paths, entrypoint_of, polyalign_commands, submit_line

ROOT = Path(__file__).resolve().parents[2]
SPECS = sorted((ROOT / "jobs").glob("*.yaml"))
PROFILES = sorted((ROOT / "cluster").glob("local*.yaml"))


def test_there_are_specs() -> None:
    assert SPECS and PROFILES


@pytest.mark.parametrize("path", SPECS + PROFILES, ids=lambda p: p.name)
def test_spec_validates(path: Path) -> None:
    load_config(path)


@pytest.mark.parametrize("path", SPECS, ids=lambda p: p.name)
def test_job_spec_starts_with_its_submit_line(path: Path) -> None:
    first = path.read_text(encoding="utf-8").splitlines()[0]
    assert first.startswith("# ray job submit ")


SHARED_STORAGE = "/mnt/shared/"
GPU_SECTIONS = {
    "sft": ("sft",),
    "critic": ("generation",),
    "hdpo": ("hdpo",),
    "eval": ("generation",),
    "pipeline": ("sft", "generation", "hdpo"),
    "sweep": ("generation", "hdpo"),
}
"""Per stage, the config sections whose work must land on GPUs in a cluster spec."""
CPU_ONLY = {"prepare", "references", "compare", "config"}


def spec_commands(path: Path) -> list[list[str]]:
    relative = path.relative_to(ROOT).as_posix()
    return polyalign_commands(
        entrypoint_of(submit_line(path.read_text(encoding="utf-8"), relative), relative)
    )


@pytest.mark.parametrize("path", SPECS, ids=lambda p: p.name)
def test_job_spec_runs_polyalign_commands_that_parse_and_read_the_spec(path: Path) -> None:
    commands = spec_commands(path)
    assert commands, "the submit line runs no polyalign command"
    for arguments in commands:
        build_parser().parse_args(arguments)  # exits (fails the test) on an unknown subcommand or flag
        assert config_paths(arguments) == [path.relative_to(ROOT).as_posix()], arguments


STAGE_FOLDERS = {
    "prepare": ("data",),
    "references": ("data",),
    "sft": ("data", "sft"),
    "critic": ("data", "sft", "critic"),
    "hdpo": ("data", "sft", "critic", "hdpo"),
    "eval": ("data", "eval"),
    "compare": ("data", "eval"),
    "pipeline": ("data", "sft", "critic", "hdpo", "eval"),
    "sweep": ("data", "sft", "critic", "hdpo", "eval", "sweep"),
}
"""Per stage, the sections whose ``output_dir`` it reads or writes: on a cluster, all on shared storage."""


@pytest.mark.parametrize("path", SPECS, ids=lambda p: p.name)
def test_job_spec_runs_on_a_cluster_with_shared_storage_and_gpus(path: Path) -> None:
    config = load_config(path)
    assert config.ray.address == "auto", "a job's driver joins the cluster it was submitted to"
    stages = {arguments[0] for arguments in spec_commands(path)}
    assert stages <= set(STAGE_FOLDERS), (
        f"say which folders {stages - set(STAGE_FOLDERS)} use in STAGE_FOLDERS"
    )
    for section in {s for stage in stages for s in STAGE_FOLDERS[stage]}:
        folder = getattr(config, section).output_dir
        assert folder.startswith(SHARED_STORAGE), f"{section}.output_dir={folder} is not on shared storage"
    assert all(folder.startswith(SHARED_STORAGE) for folder in config.data.inputs), config.data.inputs
    if stages - CPU_ONLY:
        assert config.model.name_or_path, "a cluster spec trains or samples a real (hub or shared) model"
        assert config.model.dtype == "bfloat16"
    for stage in stages:
        for section in GPU_SECTIONS.get(stage, ()):
            assert getattr(config, section).use_gpu, f"{stage} on a GPU cluster needs {section}.use_gpu=true"
