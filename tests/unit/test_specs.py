"""Every job spec and cluster profile in the repository is a valid polyalign config, and job specs say how to
submit themselves."""

from __future__ import annotations

from pathlib import Path

import pytest

from polyalign_ray.config import load_config

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
