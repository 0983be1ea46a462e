"""Ray jobs from the polyalign CLI: submit a spec to a cluster's job server, follow its logs, stop it, list jobs.

The request itself (entrypoint, runtime environment, address) is decided by the pure ``polyalign_ray.job_spec``;
this module only talks to the job server through Ray's ``JobSubmissionClient`` (the dashboard's HTTP API, by
default on port 8265 of the head node, reached through ``ray dashboard`` or ``kubectl port-forward``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timezone

from ray.exceptions import AuthenticationError
from ray.job_submission import JobDetails, JobStatus, JobSubmissionClient

from polyalign_ray.job_spec import JobRequest, job_server_headers

FINISHED = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED})
ADDRESS_VARIABLES = ("RAY_API_SERVER_ADDRESS", "RAY_ADDRESS")


class JobServerError(RuntimeError):
    """The job server could not be reached or refused a request; the message says what to check."""


@contextlib.contextmanager
def _explicit_address_wins(address: str | None) -> Iterator[None]:
    """Hide ``RAY_ADDRESS`` / ``RAY_API_SERVER_ADDRESS`` while the client is built with an explicit address:
    Ray's client lets those variables override its ``address`` argument, so ``--address`` would be ignored in a
    shell where ``RAY_ADDRESS`` points elsewhere (e.g. ``auto`` on a head node)."""
    saved = {name: os.environ.pop(name) for name in ADDRESS_VARIABLES if address and name in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)


def connect(address: str | None) -> JobSubmissionClient:
    """A client of the job server at ``address`` (``None``: Ray's own lookup: ``RAY_ADDRESS``, then a cluster
    started on this machine), with the ``RAY_AUTH_TOKEN`` of the environment for clusters that require one."""
    try:
        with _explicit_address_wins(address):
            return JobSubmissionClient(address, headers=job_server_headers(os.environ))
    except AuthenticationError as exc:
        raise JobServerError(
            f"the Ray cluster at {address or 'RAY_ADDRESS'} requires its authentication token: export "
            "RAY_AUTH_TOKEN=<token> before this command (the head node prints it with `ray get-auth-token`)\n"
            f"({exc})"
        ) from exc
    except (ConnectionError, ValueError) as exc:
        raise JobServerError(
            f"cannot reach a Ray job server at {address or 'RAY_ADDRESS / this machine'}: {exc}\n"
            "Is the cluster up, and is the dashboard port forwarded? (`ray dashboard cluster/aws-gpu.yaml`, or "
            "`kubectl port-forward svc/polyalign-head-svc 8265:8265`; then --address http://127.0.0.1:8265)"
        ) from exc


def submit(client: JobSubmissionClient, request: JobRequest) -> str:
    """Upload the working directory and start the job; returns its submission id."""
    try:
        return client.submit_job(
            entrypoint=request.entrypoint,
            runtime_env=request.runtime_env,
            submission_id=request.submission_id,
            metadata=request.metadata,
        )
    except RuntimeError as exc:
        raise JobServerError(f"the job server refused {request.spec}: {exc}") from exc


def status_of(client: JobSubmissionClient, job_id: str) -> JobStatus:
    try:
        return client.get_job_status(job_id)
    except RuntimeError as exc:
        raise JobServerError(
            f"no job {job_id!r} on this cluster ({exc}); `polyalign job status` lists them"
        ) from exc


def wait_for_job(
    client: JobSubmissionClient, job_id: str, timeout_s: float, poll_s: float = 0.5
) -> JobStatus:
    """Poll until the job has finished (succeeded, failed or stopped); a job still running after ``timeout_s``
    is an error rather than an endless wait."""
    deadline = time.monotonic() + timeout_s
    while True:
        status = status_of(client, job_id)
        if status in FINISHED:
            return status
        if time.monotonic() > deadline:
            raise TimeoutError(f"job {job_id} is still {status.value} after {timeout_s:.0f} s")
        time.sleep(poll_s)


def logs_of(client: JobSubmissionClient, job_id: str) -> str:
    try:
        return client.get_job_logs(job_id)
    except RuntimeError as exc:
        raise JobServerError(
            f"no logs for job {job_id!r} ({exc}); `polyalign job status` lists jobs"
        ) from exc


def follow_logs(client: JobSubmissionClient, job_id: str, write: Callable[[str], object]) -> JobStatus:
    """Stream the job's output to ``write`` as it is produced, until the job finishes; returns how it ended."""
    status_of(client, job_id)  # a clear error for an unknown id instead of a websocket failure

    async def stream() -> None:
        async for chunk in client.tail_job_logs(job_id):
            write(chunk)

    try:
        asyncio.run(stream())
    except RuntimeError as exc:
        raise JobServerError(
            f"the log stream of job {job_id} broke off ({exc}); the job itself goes on: "
            f"`polyalign job logs {job_id} --follow` picks it up again"
        ) from exc
    return wait_for_job(client, job_id, timeout_s=30.0)


def stop(client: JobSubmissionClient, job_id: str, wait_s: float = 60.0) -> JobStatus:
    """Ask the job to stop (SIGTERM to its entrypoint, then SIGKILL after Ray's grace period) and wait for it."""
    try:
        client.stop_job(job_id)
    except RuntimeError as exc:
        raise JobServerError(
            f"cannot stop job {job_id!r} ({exc}); `polyalign job status` lists jobs"
        ) from exc
    return wait_for_job(client, job_id, timeout_s=wait_s)


def jobs_table(jobs: list[JobDetails]) -> str:
    """Submitted jobs, newest first, as a Markdown table a person scans for the id to follow or stop."""
    rows = ["| submission id | status | started (UTC) | entrypoint |", "|---|---|---|---|"]
    for job in sorted(jobs, key=lambda j: j.start_time or 0, reverse=True):
        started = (
            datetime.fromtimestamp(job.start_time / 1000, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
            if job.start_time
            else "-"
        )
        entrypoint = job.entrypoint if len(job.entrypoint) <= 80 else job.entrypoint[:77] + "..."
        entrypoint = entrypoint.replace("|", "\\|")  # a shell pipe would end the table cell
        rows.append(
            f"| {job.submission_id or job.job_id} | {job.status.value} | {started} | `{entrypoint}` |"
        )
    return "\n".join(rows)


def list_jobs(client: JobSubmissionClient) -> list[JobDetails]:
    try:
        return client.list_jobs()
    except RuntimeError as exc:
        raise JobServerError(f"cannot list jobs ({exc})") from exc
