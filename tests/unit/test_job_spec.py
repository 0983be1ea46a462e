"""The pure side of `polyalign submit`: a spec's submit line -> entrypoint, runtime environment, address, and the
equivalent `ray job submit` line."""

from __future__ import annotations

import json
import shutil
import subprocess
from datetime import datetime
from pathlib import Path

import pytest

from polyalign_ray.job_spec import (
    PASSTHROUGH_ENV,
    WORKING_DIR_EXCLUDES,
    JobSpecError,
    check_entrypoint_reads_spec,
    entrypoint_of,
    job_env_vars,
    job_request,
    job_server_address,
    job_server_headers,
    polyalign_commands,
    ray_job_submit_line,
    runtime_env_for,
    spec_path_in_working_dir,
    submission_id_for,
    submit_line,
)

CHAINED = """# ray job submit --address http://HEAD:8265 --working-dir . -- bash -c \\
#   "python -m polyalign_ray.cli prepare --config jobs/a.yaml && \\
#   python -m polyalign_ray.cli references --config jobs/a.yaml"
# (a note)
data:
  builtin: true
"""
NOW = datetime(2026, 1, 2, 3, 4, 5)


def test_submit_line_joins_continuations_and_stops_at_the_last_one() -> None:
    assert submit_line(CHAINED, "a.yaml") == (
        'ray job submit --address http://HEAD:8265 --working-dir . -- bash -c "python -m polyalign_ray.cli '
        'prepare --config jobs/a.yaml && python -m polyalign_ray.cli references --config jobs/a.yaml"'
    )


def test_a_spec_without_its_submit_line_is_refused_with_an_example() -> None:
    with pytest.raises(JobSpecError, match="# ray job submit --address http://HEAD:8265"):
        submit_line("data:\n  builtin: true\n", "jobs/x.yaml")


def test_a_continuation_into_yaml_is_refused() -> None:
    with pytest.raises(JobSpecError, match="non-comment line"):
        submit_line("# ray job submit -- \\\ndata: {}\n", "x.yaml")
    with pytest.raises(JobSpecError, match="nothing follows"):
        submit_line("# ray job submit -- \\", "x.yaml")


def test_entrypoint_is_what_follows_the_double_dash_requoted() -> None:
    entrypoint = entrypoint_of(submit_line(CHAINED, "a.yaml"), "a.yaml")
    assert entrypoint == (
        "bash -c 'python -m polyalign_ray.cli prepare --config jobs/a.yaml && python -m polyalign_ray.cli "
        "references --config jobs/a.yaml'"
    )
    assert entrypoint_of("ray job submit --working-dir . -- polyalign sft --config s.yaml", "s") == (
        "polyalign sft --config s.yaml"
    )


@pytest.mark.parametrize(
    ("command", "problem"),
    [
        ("ray job submit --working-dir . python x.py", "no '--'"),
        ("ray job submit --", "nothing follows"),
        ('ray job submit -- bash -c "unclosed', "not valid shell"),
    ],
)
def test_bad_submit_lines_say_what_to_fix(command: str, problem: str) -> None:
    with pytest.raises(JobSpecError, match=problem):
        entrypoint_of(command, "x.yaml")


def test_polyalign_commands_are_found_directly_and_inside_bash_c() -> None:
    entrypoint = entrypoint_of(submit_line(CHAINED, "a.yaml"), "a.yaml")
    assert polyalign_commands(entrypoint) == [
        ["prepare", "--config", "jobs/a.yaml"],
        ["references", "--config", "jobs/a.yaml"],
    ]
    assert polyalign_commands("polyalign sft --config=s.yaml; echo done | tee log") == [
        ["sft", "--config=s.yaml"]
    ]
    assert polyalign_commands("python -c 'print(1)'") == []


def test_an_entrypoint_that_runs_another_spec_is_refused() -> None:
    check_entrypoint_reads_spec("polyalign sft --config jobs/sft.yaml", "jobs/sft.yaml", "jobs/sft.yaml")
    with pytest.raises(JobSpecError, match=r"change the first lines to --config jobs/sft-big\.yaml"):
        check_entrypoint_reads_spec(
            "bash -c 'polyalign sft --config=jobs/sft.yaml'", "jobs/sft-big.yaml", "jobs/sft-big.yaml"
        )


def test_the_spec_must_lie_inside_the_shipped_folder(tmp_path: Path) -> None:
    (tmp_path / "jobs").mkdir()
    assert spec_path_in_working_dir(tmp_path / "jobs" / "x.yaml", tmp_path) == "jobs/x.yaml"
    with pytest.raises(JobSpecError, match="move the spec into the checkout"):
        spec_path_in_working_dir(tmp_path / "x.yaml", tmp_path / "jobs")


def test_env_vars_come_from_the_environment_and_missing_named_ones_are_errors() -> None:
    environ = {"HF_HUB_OFFLINE": "1", "HF_TOKEN": "t0k", "UNRELATED": "x"}
    assert job_env_vars([], environ) == {"HF_HUB_OFFLINE": "1"}
    assert job_env_vars(["HF_TOKEN"], environ) == {"HF_HUB_OFFLINE": "1", "HF_TOKEN": "t0k"}
    assert "HF_TOKEN" not in PASSTHROUGH_ENV  # a secret travels only when named
    with pytest.raises(JobSpecError, match="MY_VAR not set in your environment; export it"):
        job_env_vars(["MY_VAR"], environ)


def test_runtime_env_ships_the_checkout_without_heavy_or_private_folders() -> None:
    assert runtime_env_for("/src", {}) == {"working_dir": "/src", "excludes": list(WORKING_DIR_EXCLUDES)}
    env = runtime_env_for("/src", {"A": "1"}, pip=["rich==13.7.0"])
    assert env["pip"] == ["rich==13.7.0"] and env["env_vars"] == {"A": "1"}


def test_the_excludes_drop_whole_folders_as_ray_matches_them(tmp_path: Path) -> None:
    """Checked with the matcher Ray applies to working_dir uploads (paths relative to the working dir)."""
    from ray._private.runtime_env.packaging import _get_excludes

    excluded = _get_excludes(tmp_path, list(WORKING_DIR_EXCLUDES))
    for path in (".venv", ".git", "runs", "polyalign_ray/__pycache__", "polyalign_ray_ray.egg-info"):
        assert excluded(tmp_path / path), path
    for path in ("polyalign_ray", "polyalign_ray/cli.py", "jobs/hdpo.yaml", "tests/ray/runs_helper.py"):
        assert not excluded(tmp_path / path), path


def test_address_order_is_flag_then_ray_variables_then_the_spec() -> None:
    environ = {"RAY_ADDRESS": "http://env:8265"}
    assert job_server_address("http://flag:8265", environ, "auto", "s") == "http://flag:8265"
    assert job_server_address("", environ, "auto", "s") == "http://env:8265"
    assert job_server_address("", {**environ, "RAY_API_SERVER_ADDRESS": "http://api:8265"}, "", "s") == (
        "http://api:8265"
    )
    assert job_server_address("", {}, "auto", "s") == "auto"
    with pytest.raises(JobSpecError, match="pass --address http://HEAD:8265"):
        job_server_address("", {}, "", "s")


def test_the_auth_token_is_sent_only_when_given() -> None:
    assert job_server_headers({}) == {}
    assert job_server_headers({"RAY_AUTH_TOKEN": " abc \n"}) == {"Authorization": "Bearer abc"}


def test_submission_ids_are_readable() -> None:
    assert submission_id_for("jobs/hdpo.yaml", NOW, "ab12") == "polyalign-hdpo-20260102-030405-ab12"


def write_checkout(root: Path, header: str) -> Path:
    (root / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    (root / "jobs").mkdir()
    spec = root / "jobs" / "sft.yaml"
    spec.write_text(f"{header}\nray:\n  address: auto\nsft:\n  num_workers: 2\n")
    return spec


def test_job_request_from_a_spec_in_a_checkout(tmp_path: Path) -> None:
    spec = write_checkout(
        tmp_path, "# ray job submit --working-dir . -- polyalign sft --config jobs/sft.yaml"
    )
    request = job_request(
        spec, env_names=["HF_TOKEN"], environ={"HF_TOKEN": "t"}, now=NOW, suffix="0000", pip=["x==1"]
    )
    assert request.spec == "jobs/sft.yaml"
    assert request.address == "auto"
    assert request.entrypoint == "polyalign sft --config jobs/sft.yaml"
    assert request.runtime_env["working_dir"] == str(tmp_path.resolve())
    assert request.runtime_env["env_vars"] == {"HF_TOKEN": "t"}
    assert request.submission_id == "polyalign-sft-20260102-030405-0000"


def test_job_request_refuses_a_copied_spec_and_a_bad_config(tmp_path: Path) -> None:
    spec = write_checkout(tmp_path, "# ray job submit -- polyalign sft --config jobs/other.yaml")
    with pytest.raises(JobSpecError, match=r"--config jobs/sft\.yaml"):
        job_request(spec, environ={}, now=NOW, suffix="0")
    spec.write_text("# ray job submit -- polyalign sft --config jobs/sft.yaml\nsft:\n  num_wrokers: 2\n")
    with pytest.raises(ValueError, match="num_workers"):
        job_request(spec, environ={}, now=NOW, suffix="0")
    with pytest.raises(JobSpecError, match="does not exist"):
        job_request(tmp_path / "jobs" / "nope.yaml", environ={}, now=NOW, suffix="0")


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_the_printed_ray_job_submit_line_is_the_same_request_in_a_shell(tmp_path: Path) -> None:
    """Run the printed line in bash with `ray` replaced by a function that prints its arguments: the runtime
    environment arrives intact, with the token filled in by the shell, never written in the line."""
    spec = write_checkout(
        tmp_path, "# ray job submit -- bash -c \"polyalign sft --config jobs/sft.yaml && echo '$x'\""
    )
    token = "hf_s3cr$t`x'~"
    request = job_request(
        spec,
        address_flag="http://127.0.0.1:8265",
        env_names=["HF_TOKEN"],
        environ={"HF_TOKEN": token},
        now=NOW,
        suffix="0",
    )
    line = ray_job_submit_line(request)
    assert "s3cr" not in line and "${HF_TOKEN}" in line
    script = 'ray() { for arg in "$@"; do printf "%s\\0" "$arg"; done; }\n' + line
    result = subprocess.run(
        ["bash", "-c", script],
        env={"HF_TOKEN": token, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        check=True,
    )
    argv = result.stdout.decode().split("\0")[:-1]
    assert argv[:5] == ["job", "submit", "--address", "http://127.0.0.1:8265", "--submission-id"]
    runtime_env = json.loads(argv[argv.index("--runtime-env-json") + 1])
    assert runtime_env == request.runtime_env
    assert argv[argv.index("--") + 1 :] == ["bash", "-c", "polyalign sft --config jobs/sft.yaml && echo '$x'"]


def test_a_value_json_would_escape_is_masked_not_printed(tmp_path: Path) -> None:
    spec = write_checkout(tmp_path, "# ray job submit -- polyalign sft --config jobs/sft.yaml")
    request = job_request(spec, env_names=["PASS"], environ={"PASS": 'a"b\\c'}, now=NOW, suffix="0")
    line = ray_job_submit_line(request)
    assert "<PASS not shown>" in line and 'a\\"b' not in line and "a\\\\" not in line
