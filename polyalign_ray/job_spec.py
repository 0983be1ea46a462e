"""What a job spec asks of a Ray cluster: the command it runs, the files and environment it ships, and the
equivalent ``ray job submit`` line.

A job spec (``jobs/*.yaml``) is a polyalign config whose first comment lines are the ``ray job submit`` command
that runs it. That line is the single source of the job's entrypoint: ``polyalign submit`` reads it instead of
keeping a second copy that could drift. Everything here is pure (no Ray, no network), so ``polyalign submit
--dry-run`` and the unit tests need no cluster; ``polyalign_ray.distributed.jobs`` talks to the job server.
"""

from __future__ import annotations

import dataclasses
import json
import shlex
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

SUBMIT_LINE_PREFIX = "# ray job submit "

WORKING_DIR_EXCLUDES: tuple[str, ...] = (
    "/.git",
    "/.venv",
    "/runs",
    "/build",
    "/dist",
    "/bench/.venv-trl",
    "/bench/.gpu-stage",
    "__pycache__",
    "*.egg-info",
    ".pytest_cache",
    ".ruff_cache",
)
"""Gitignore-style patterns Ray leaves out of the uploaded checkout. Anchored with ``/`` so they match the folder
itself (Ray then skips it whole instead of walking a virtual environment file by file). Ray also honours
``.gitignore``, but these hold even where that is switched off (``RAY_RUNTIME_ENV_IGNORE_GITIGNORE=1``)."""

PASSTHROUGH_ENV: tuple[str, ...] = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE")
"""Passed to the job when set in the submitter's environment, so an offline cluster stays offline. Secrets are
never passed unless named with ``--env``: a job's runtime environment is visible to anyone who can open the
dashboard."""

POLYALIGN_PROGRAMS: tuple[tuple[str, ...], ...] = (
    ("python", "-m", "polyalign_ray.cli"),
    ("python3", "-m", "polyalign_ray.cli"),
    ("polyalign",),
)
"""Ways an entrypoint runs the polyalign CLI (the cluster image has the project installed)."""

SHELL_OPERATORS = frozenset({"&&", "||", ";", "|", "&"})


class JobSpecError(ValueError):
    """A job spec, or the request to submit it, cannot be turned into a job; the message says what to change."""


@dataclasses.dataclass(frozen=True)
class JobRequest:
    """Everything a job server needs for one submission, decided before anything is contacted."""

    spec: str
    """The spec's path relative to the working directory (as the entrypoint names it)."""
    address: str
    """The Ray job server (dashboard) address, e.g. ``http://127.0.0.1:8265``."""
    entrypoint: str
    runtime_env: dict[str, Any]
    submission_id: str
    metadata: dict[str, str]


def submit_line(text: str, source: str) -> str:
    """The ``ray job submit ...`` command written in a spec's first comment lines, continuations joined.

    A line ending in ``\\`` continues on the next comment line, exactly as it would in a shell, so the header
    can be copied into a terminal as it is."""
    lines = text.splitlines()
    if not lines or not lines[0].startswith(SUBMIT_LINE_PREFIX):
        raise JobSpecError(
            f"{source}: the first line must be the command that runs the spec, starting with "
            f"{SUBMIT_LINE_PREFIX.strip()!r}, e.g. '# ray job submit --address http://HEAD:8265 --working-dir . -- "
            f"python -m polyalign_ray.cli sft --config {source}'"
        )
    parts = []
    for number, line in enumerate(lines, start=1):
        if not line.startswith("#"):
            raise JobSpecError(f"{source}:{number}: the submit line continues ('\\') into a non-comment line")
        body = line[1:].strip()
        if not body.endswith("\\"):
            parts.append(body)
            break
        parts.append(body[:-1].strip())
    else:
        raise JobSpecError(f"{source}: the submit line ends with '\\' but nothing follows it")
    return " ".join(parts)


def entrypoint_of(command: str, source: str) -> str:
    """The shell command after ``--`` of a ``ray job submit`` line: what the job runs on the cluster."""
    try:
        tokens = shlex.split(command)
    except ValueError as exc:
        raise JobSpecError(f"{source}: the submit line is not valid shell ({exc}); check its quotes") from exc
    if "--" not in tokens:
        raise JobSpecError(
            f"{source}: the submit line has no '--' before the command it runs; write '... -- python -m "
            f"polyalign_ray.cli STAGE --config {source}'"
        )
    argv = tokens[tokens.index("--") + 1 :]
    if not argv:
        raise JobSpecError(
            f"{source}: nothing follows '--' in the submit line; name the command the job runs"
        )
    return shlex.join(argv)


def shell_words(command: str) -> list[str]:
    """``command`` split as a POSIX shell would, with ``&&``, ``;``, ``|`` as words of their own."""
    lexer = shlex.shlex(command, posix=True, punctuation_chars=";&|")
    lexer.whitespace_split = True
    return list(lexer)


def polyalign_commands(entrypoint: str) -> list[list[str]]:
    """The argument lists of every polyalign CLI run in ``entrypoint``, looking inside ``bash -c "..."``.

    Used to check a spec before it is shipped: each run must parse and read the spec itself."""
    words = shell_words(entrypoint)
    commands: list[list[str]] = []
    start = 0
    while start < len(words):
        end = start
        while end < len(words) and words[end] not in SHELL_OPERATORS:
            end += 1
        simple = words[start:end]
        if len(simple) >= 3 and Path(simple[0]).name in ("bash", "sh") and simple[1] == "-c":
            commands += polyalign_commands(simple[2])
        for program in POLYALIGN_PROGRAMS:
            if tuple(simple[: len(program)]) == program:
                commands.append(simple[len(program) :])
                break
        start = end + 1
    return commands


def config_paths(arguments: Sequence[str]) -> list[str]:
    """The values of ``--config`` in one polyalign command's arguments (``--config X`` or ``--config=X``)."""
    out = []
    for index, word in enumerate(arguments):
        if word == "--config" and index + 1 < len(arguments):
            out.append(arguments[index + 1])
        elif word.startswith("--config="):
            out.append(word.split("=", 1)[1])
    return out


def check_entrypoint_reads_spec(entrypoint: str, spec: str, source: str) -> None:
    """Refuse an entrypoint that runs another spec's config: a copied spec whose header still names the original
    would otherwise silently run the original's settings on the cluster."""
    for arguments in polyalign_commands(entrypoint):
        for path in config_paths(arguments):
            if path != spec:
                raise JobSpecError(
                    f"{source}: its submit line runs --config {path}, not this spec; change the first lines to "
                    f"--config {spec}"
                )


def spec_path_in_working_dir(spec: Path, working_dir: Path) -> str:
    """The spec's path as the job sees it: relative to the uploaded working directory (POSIX separators)."""
    try:
        return spec.resolve().relative_to(working_dir.resolve()).as_posix()
    except ValueError:
        raise JobSpecError(
            f"{spec} is outside the working directory {working_dir}, so the job could not read it; move the spec "
            "into the checkout (e.g. jobs/) or pass --working-dir with a folder that contains it"
        ) from None


def checkout_root(start: Path) -> Path:
    """The checkout a spec belongs to: the nearest folder at or above it with a ``pyproject.toml``."""
    for folder in [start.resolve(), *start.resolve().parents]:
        if (folder / "pyproject.toml").is_file():
            return folder
    raise JobSpecError(
        f"no pyproject.toml at or above {start}; run from the polyalign-ray checkout or pass --working-dir"
    )


def job_env_vars(names: Sequence[str], environ: Mapping[str, str]) -> dict[str, str]:
    """Environment variables for the job, each taken from the submitter's environment (never from a file).

    ``names`` are required (an unset one is an error, not a silently missing token); ``PASSTHROUGH_ENV`` is added
    where set."""
    missing = [name for name in names if name not in environ]
    if missing:
        raise JobSpecError(
            f"{', '.join(missing)} not set in your environment; export it before submitting (e.g. "
            f"'export {missing[0]}=...') or drop --env {missing[0]}"
        )
    out = {name: environ[name] for name in PASSTHROUGH_ENV if name in environ}
    out.update({name: environ[name] for name in names})
    return out


def runtime_env_for(
    working_dir: str,
    env_vars: Mapping[str, str],
    pip: Sequence[str] = (),
    excludes: Sequence[str] = WORKING_DIR_EXCLUDES,
) -> dict[str, Any]:
    """The job's runtime environment: this checkout as the working directory (the cluster runs the code you
    have, not what its image was built with), optional extra pip packages, and environment variables."""
    runtime_env: dict[str, Any] = {"working_dir": working_dir, "excludes": list(excludes)}
    if pip:
        runtime_env["pip"] = list(pip)
    if env_vars:
        runtime_env["env_vars"] = dict(env_vars)
    return runtime_env


def job_server_address(flag: str, environ: Mapping[str, str], spec_address: str, source: str) -> str:
    """Where to submit: ``--address``, else ``RAY_API_SERVER_ADDRESS`` / ``RAY_ADDRESS`` (Ray's own order),
    else the spec's ``ray.address`` (``auto`` works on the head node itself)."""
    for candidate in (flag, environ.get("RAY_API_SERVER_ADDRESS", ""), environ.get("RAY_ADDRESS", "")):
        if candidate:
            return candidate
    if spec_address:
        return spec_address
    raise JobSpecError(
        f"no Ray job server address: {source} has ray.address empty (a local run) and neither --address nor "
        "RAY_ADDRESS is set; pass --address http://HEAD:8265 (http://127.0.0.1:8265 while `ray dashboard "
        "cluster/aws-gpu.yaml` or `kubectl port-forward` runs) or export RAY_ADDRESS"
    )


def job_server_headers(environ: Mapping[str, str]) -> dict[str, str]:
    """The bearer token for clusters with Ray's token authentication, from ``RAY_AUTH_TOKEN`` (never a file).

    Ray's own client sends a token only when ``RAY_AUTH_MODE=token`` is also set in the submitting shell; taking
    the token alone is what a person who was handed one expects."""
    token = environ.get("RAY_AUTH_TOKEN", "").strip()
    return {"Authorization": f"Bearer {token}"} if token else {}


def submission_id_for(spec: str, now: datetime, suffix: str) -> str:
    """A readable, unique job id: which spec, when, and a random suffix (two submits in one second differ)."""
    return f"polyalign-{Path(spec).stem}-{now:%Y%m%d-%H%M%S}-{suffix}"


def ray_job_submit_line(request: JobRequest) -> str:
    """The ``ray job submit`` command equivalent to ``request``, never with a secret in it: environment variable
    values are written as ``${NAME}`` for the shell to fill in. A value that JSON would have to escape (quotes,
    backslashes) cannot be filled in that way and is shown as ``<NAME not shown>`` instead."""
    env_vars = request.runtime_env.get("env_vars", {})
    placeholders = {name: f"@@ENV:{name}@@" for name in env_vars}
    shown = {**request.runtime_env}
    if env_vars:
        shown["env_vars"] = {
            name: placeholders[name] if json.dumps(value)[1:-1] == value else f"<{name} not shown>"
            for name, value in env_vars.items()
        }
    quoted = '"' + _escape_for_double_quotes(json.dumps(shown)) + '"'
    for name, placeholder in placeholders.items():
        quoted = quoted.replace(placeholder, "${" + name + "}")
    return (
        f"ray job submit --address {shlex.quote(request.address)} --submission-id "
        f"{shlex.quote(request.submission_id)} --runtime-env-json {quoted} -- {request.entrypoint}"
    )


def _escape_for_double_quotes(text: str) -> str:
    """``text`` made literal inside a double-quoted shell word (no expansion of ``$``, backquotes or ``\\``)."""
    for char in ("\\", '"', "$", "`"):
        text = text.replace(char, "\\" + char)
    return text


def job_request(
    spec: Path,
    *,
    address_flag: str = "",
    working_dir: Path | None = None,
    env_names: Sequence[str] = (),
    pip: Sequence[str] = (),
    environ: Mapping[str, str],
    now: datetime,
    suffix: str,
    submission_id: str = "",
) -> JobRequest:
    """Turn a spec into a submission, checking everything that can be checked here: the config validates, the
    submit line runs this spec, and every variable to pass is set. A mistake costs a second, not a cluster slot."""
    from polyalign_ray.config import load_config

    if not spec.is_file():
        raise JobSpecError(f"job spec {spec} does not exist; the specs are in jobs/ (jobs/README.md)")
    config = load_config(spec)
    folder = working_dir if working_dir is not None else checkout_root(spec.parent)
    relative = spec_path_in_working_dir(spec, folder)
    entrypoint = entrypoint_of(submit_line(spec.read_text(encoding="utf-8"), relative), relative)
    check_entrypoint_reads_spec(entrypoint, relative, relative)
    return JobRequest(
        spec=relative,
        address=job_server_address(address_flag, environ, config.ray.address, relative),
        entrypoint=entrypoint,
        runtime_env=runtime_env_for(str(folder.resolve()), job_env_vars(env_names, environ), pip),
        submission_id=submission_id or submission_id_for(relative, now, suffix),
        metadata={"spec": relative, "submitted_by": "polyalign submit"},
    )
