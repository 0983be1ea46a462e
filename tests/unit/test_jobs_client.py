"""The parts of the job server client that need no server: the address override and the jobs table."""

from __future__ import annotations

import os

from ray.job_submission import JobDetails, JobStatus, JobType

from polyalign_ray.distributed.jobs import _explicit_address_wins, jobs_table


def test_an_explicit_address_hides_ray_address_only_while_the_client_is_built(monkeypatch) -> None:
    monkeypatch.setenv("RAY_ADDRESS", "auto")
    with _explicit_address_wins("http://10.0.0.1:8265"):
        assert "RAY_ADDRESS" not in os.environ
    assert os.environ["RAY_ADDRESS"] == "auto"
    with _explicit_address_wins(None):
        assert os.environ["RAY_ADDRESS"] == "auto"


def job(submission_id: str, start_time: int, entrypoint: str, status: JobStatus) -> JobDetails:
    return JobDetails(
        type=JobType.SUBMISSION,
        entrypoint=entrypoint,
        submission_id=submission_id,
        status=status,
        start_time=start_time,
    )


def test_jobs_table_lists_newest_first_and_keeps_cells_intact() -> None:
    table = jobs_table(
        [
            job("old", 1_700_000_000_000, "polyalign sft --config jobs/sft.yaml", JobStatus.SUCCEEDED),
            job("new", 1_700_000_600_000, "a || b " + "x" * 100, JobStatus.RUNNING),
        ]
    )
    lines = table.splitlines()
    assert lines[0] == "| submission id | status | started (UTC) | entrypoint |"
    assert lines[2].startswith("| new | RUNNING | 2023-11-14 22:23:20 | `a \\|\\| b x")
    assert lines[2].endswith("...` |")
    assert lines[3] == "| old | SUCCEEDED | 2023-11-14 22:13:20 | `polyalign sft --config jobs/sft.yaml` |"
