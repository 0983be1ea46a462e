"""`polyalign submit` and `polyalign job` against a real Ray job server: a local `ray start --head` on loopback.

The head is its own Ray instance (own temp dir and ports), so the in-process `ray.init` of the other Ray tests never
finds it, and it is stopped at the end by the ids of its processes. `ray stop` is not used: it ends every Ray
process of the machine, the session's in-process instance and other users' included.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from polyalign_ray.cli import main

pytestmark = pytest.mark.ray

ROOT = Path(__file__).resolve().parents[2]
SMOKE_SPEC = "tests/ray/job_smoke.yaml"
START_TIMEOUT_S = 120


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def stop_process_tree(process: subprocess.Popen, grace_s: float = 20.0) -> None:
    """End `ray start --block` and everything it started (GCS, raylet, dashboard, workers, job drivers), by pid.

    SIGTERM to `ray start --block` alone shuts its node down in order (about 5 s); whatever of its process tree,
    listed before the signal, is still alive after ``grace_s`` is killed. A job driver runs in its own session,
    so the tree is found through parents, not through the process group."""
    try:
        root = psutil.Process(process.pid)
        tree = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return
    with contextlib.suppress(psutil.NoSuchProcess):
        root.send_signal(signal.SIGTERM)
    _, alive = psutil.wait_procs(tree, timeout=grace_s)
    for proc in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()
    psutil.wait_procs(alive, timeout=5)
    process.wait(timeout=5)


def wait_for_job_server(address: str, process: subprocess.Popen, log: Path) -> None:
    from polyalign_ray.distributed import jobs

    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        if process.poll() is not None:
            pytest.fail(f"ray start exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            jobs.list_jobs(jobs.connect(address))
            return
        except jobs.JobServerError as exc:
            if time.monotonic() > deadline:
                pytest.fail(
                    f"no job server at {address} after {START_TIMEOUT_S} s: {exc}\n{log.read_text()[-3000:]}"
                )
            time.sleep(1.0)


@dataclasses.dataclass(frozen=True)
class LocalHead:
    job_server: str
    """The dashboard's HTTP address, where jobs are submitted."""
    gcs_address: str
    """The cluster's address for `ray.init`; no other test may find it."""


@pytest.fixture(scope="module")
def head() -> Iterator[LocalHead]:
    """A Ray head with the dashboard (the job server lives in it) on free loopback ports.

    Token authentication is on, as Ray 2.60 turns it on wherever a token exists: the head gets a fresh token from
    its environment (never ~/.ray/auth_token), and the client side sees it only as RAY_AUTH_TOKEN, the way
    `polyalign submit` users pass it."""
    temp_dir = tempfile.mkdtemp(prefix="pa-ray-", dir="/tmp")  # short: Ray's socket paths are length-limited
    dashboard_port, gcs_port = free_port(), free_port()
    token = secrets.token_hex(16)
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS")}
    # Job entrypoints run `python`: the one of this virtual environment, as on a cluster node set up for it.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.update({"RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token})
    command = [
        str(Path(sys.executable).parent / "ray"),
        "start",
        "--head",
        "--block",
        "--num-cpus=1",
        "--node-ip-address=127.0.0.1",
        f"--port={gcs_port}",
        f"--ray-client-server-port={free_port()}",
        "--include-dashboard=true",
        "--dashboard-host=127.0.0.1",
        f"--dashboard-port={dashboard_port}",
        f"--dashboard-agent-listen-port={free_port()}",
        f"--temp-dir={temp_dir}",
        "--disable-usage-stats",
    ]
    log = Path(temp_dir) / "ray-start.log"
    with log.open("w") as out:
        process = subprocess.Popen(
            command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("RAY_AUTH_TOKEN", token)
            for name in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS"):
                patch.delenv(name, raising=False)
            address = f"http://127.0.0.1:{dashboard_port}"
            wait_for_job_server(address, process, log)
            yield LocalHead(job_server=address, gcs_address=f"127.0.0.1:{gcs_port}")
    finally:
        stop_process_tree(process)
        shutil.rmtree(temp_dir, ignore_errors=True)


def test_submit_spec_follow_logs_and_status(head, capsys, monkeypatch) -> None:
    job_server = head.job_server
    monkeypatch.setenv("POLYALIGN_JOB_SMOKE", "from-the-caller")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    job_id = f"polyalign-smoke-{os.getpid()}"
    code = main(
        [
            "submit",
            str(ROOT / SMOKE_SPEC),
            "--address",
            job_server,
            "--env",
            "POLYALIGN_JOB_SMOKE",
            "--submission-id",
            job_id,
            "--follow",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0, out
    assert f"job {job_id}: SUCCEEDED" in out
    assert "default_source: job-smoke-marker" in out  # the shipped spec, parsed inside the job

    assert main(["job", "logs", job_id, "--address", job_server]) == 0
    logs = capsys.readouterr().out
    assert "default_source: job-smoke-marker" in logs
    assert "offline=1 named=from-the-caller" in logs

    assert main(["job", "status", job_id, "--address", job_server]) == 0
    assert capsys.readouterr().out.strip() == f"job {job_id}: SUCCEEDED"
    assert main(["job", "status", "--address", job_server]) == 0
    assert job_id in capsys.readouterr().out


def test_stop_a_running_job(head, capsys) -> None:
    job_server = head.job_server
    from polyalign_ray.distributed import jobs
    from polyalign_ray.job_spec import JobRequest

    client = jobs.connect(job_server)
    job_id = f"polyalign-sleep-{os.getpid()}"
    request = JobRequest(
        spec="(none)",
        address=job_server,
        entrypoint="python -c 'import time; print(\"sleeping\", flush=True); time.sleep(300)'",
        runtime_env={},
        submission_id=job_id,
        metadata={},
    )
    assert jobs.submit(client, request) == job_id
    deadline = time.monotonic() + 60
    while jobs.status_of(client, job_id).value != "RUNNING":
        assert time.monotonic() < deadline, jobs.status_of(client, job_id)
        time.sleep(0.5)
    assert main(["job", "stop", job_id, "--address", job_server]) == 0
    assert capsys.readouterr().out.strip() == f"job {job_id}: STOPPED"


def test_unknown_job_is_a_clear_error(head, capsys) -> None:
    assert main(["job", "logs", "no-such-job", "--address", head.job_server]) == 1
    assert "no-such-job" in capsys.readouterr().err


def test_the_head_is_invisible_to_an_in_process_ray_init(head, monkeypatch) -> None:
    """The other Ray tests call `ray.init()` without an address: it must start their own instance, not join this
    head (which would be stopped under them, with only one CPU)."""
    from ray._private.services import get_ray_address_from_environment

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert get_ray_address_from_environment(None, None) != head.gcs_address


def test_a_wrong_token_says_how_to_pass_the_right_one(head, capsys, monkeypatch) -> None:
    monkeypatch.setenv("RAY_AUTH_TOKEN", "not-the-token")
    assert main(["job", "status", "--address", head.job_server]) == 1
    assert "export RAY_AUTH_TOKEN=<token>" in capsys.readouterr().err
