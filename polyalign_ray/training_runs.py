"""Which training run an output folder holds, and whether a new start continues it or starts over.

Why this exists: Ray Train restores the latest checkpoint of any run folder it is pointed at, whatever the new
settings are. Pointed at a finished run it restores the final step and trains zero steps, so "change a setting, run
again" silently reported the old model under the new setting. A training stage therefore records in
``OUTPUT/run.json`` the **fingerprint** of the run it is training (the settings and inputs that decide its result)
and whether that run finished. On the next start:

- same fingerprint, run not finished (interrupted, crashed, Ctrl-C): **continue** it: same Ray Train run folder,
  so Ray Train hands the workers its latest checkpoint and the loop resumes with the same sampler position;
- otherwise (settings or inputs changed, the run had finished, ``redo``, or an explicit ``--resume-from``):
  **start over**: the previous run's outputs (checkpoints, metrics, summary, ``final/``, pairs) move to
  ``OUTPUT/previous/`` (only the latest previous run is kept) and a new Ray Train run folder is used, so the
  metrics, summary and ``final/`` of a stage always belong to one run.

Everything here is plain file handling; the Ray side (``RunConfig(name=run.name)``) lives in ``distributed/``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

RUN_FILE = "run.json"
PREVIOUS_DIR = "previous"
RUN_OUTPUTS = (
    "ray_results",
    "checkpoints",
    "metrics.jsonl",
    "summary.json",
    "final",
    "pairs",
    "pairs.jsonl",
    "pair_counts.json",
    "workers.jsonl",
    "shards",
    RUN_FILE,
)
"""What a training run writes into its output folder (moved aside together when a new run starts). Files of the
testing hooks ``fail_at_step`` and ``hold_at_step`` (``.failed_at_step_N``, ``.held_at_step_N``,
``.release_step_N``) move too."""
OPERATIONAL_KEYS = (
    "output_dir",
    "fail_at_step",
    "hold_at_step",
    "max_failures",
    "keep_checkpoints",
    "checkpoint_every",
    "log_every",
)
"""Keys of a training section that do not change what is trained: changing them continues an interrupted run."""


def settings_fingerprint(payload: Any) -> str:
    """A short stable hash of JSON-able settings (key order does not matter)."""
    text = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def folder_identity(path: str | Path) -> str:
    """What an input folder or file is, cheaply: names, sizes and modification times of its files (a retrained
    model or a rebuilt critic changes it; reading gigabytes of weights to hash them is not needed). A path that does
    not exist (a hub model name) is its own identity."""
    path = Path(path)
    if not path.exists():
        return f"name:{path}"
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    listing = [
        (str(p.relative_to(path)) if p != path else p.name, p.stat().st_size, p.stat().st_mtime_ns)
        for p in files
    ]
    return settings_fingerprint(listing)


def training_fingerprint(
    sections: Mapping[str, Mapping[str, Any]], own_section: str, inputs: Mapping[str, str]
) -> str:
    """Fingerprint of a training run: the config ``sections`` that decide it (the ``own_section``'s operational
    keys left out) and the identities of its ``inputs`` (base model, policy, critic, data manifest)."""
    settings = {
        name: {k: v for k, v in values.items() if not (name == own_section and k in OPERATIONAL_KEYS)}
        for name, values in sections.items()
    }
    return settings_fingerprint({"settings": settings, "inputs": dict(inputs)})


@dataclasses.dataclass(frozen=True)
class TrainingRun:
    """The run a training stage is about to train."""

    name: str
    """Ray Train run name (the folder under ``OUTPUT/ray_results``)."""
    fingerprint: str
    resume: bool
    """True: an interrupted run of the same settings is continued from its latest checkpoint."""
    reason: str
    """Why it continues or starts over, for the console."""
    resume_from: str = ""
    """The explicit checkpoint to start from (``--resume-from``), moved with ``previous/`` when it lay inside."""


def read_json_file(path: Path) -> dict[str, Any]:
    """A JSON marker file's content, or {} when it is missing or half-written (it then counts as absent)."""
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        return {}


def read_run_file(output_dir: Path) -> dict[str, Any]:
    return read_json_file(output_dir / RUN_FILE)


def write_json_atomically(path: Path, payload: Any) -> None:
    """Write to a temporary name in the same folder, then rename: a reader sees the old file or the whole new one,
    never half of it (an interrupted write leaves no truncated marker behind)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    temporary.write_text(json.dumps(payload, indent=1, ensure_ascii=False), encoding="utf-8")
    os.replace(temporary, path)


def previous_outputs(output_dir: Path) -> list[Path]:
    """The files and folders of an earlier run in ``output_dir``."""
    found = [output_dir / name for name in RUN_OUTPUTS if (output_dir / name).exists()]
    hooks = [*output_dir.glob(".failed_at_step_*"), *output_dir.glob(".held_at_step_*")]
    return found + sorted([*hooks, *output_dir.glob(".release_step_*")])


def move_aside(output_dir: Path, outputs: list[Path], resume_from: str = "") -> str:
    """Move an earlier run's ``outputs`` into ``output_dir/previous/`` (replacing what was there). Returns
    ``resume_from`` rewritten to its new place when it pointed inside a moved folder."""
    if not outputs:
        return resume_from
    previous = output_dir / PREVIOUS_DIR
    shutil.rmtree(previous, ignore_errors=True)
    previous.mkdir(parents=True)
    moved_resume = resume_from
    resume_path = Path(resume_from).resolve() if resume_from else None
    for item in outputs:
        target = previous / item.name
        if resume_path is not None and resume_path.is_relative_to(item.resolve()):
            moved_resume = str(target / resume_path.relative_to(item.resolve()))
        shutil.move(str(item), str(target))
    return moved_resume


def open_training_run(
    output_dir: str | Path, stage: str, fingerprint: str, *, fresh: bool = False, resume_from: str = ""
) -> TrainingRun:
    """Decide whether the run in ``output_dir`` is continued or a new one starts (see the module docstring), move
    an earlier run aside when a new one starts, and record the run in ``run.json`` as not finished."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    earlier = read_run_file(output_dir)
    name = f"{stage}-{fingerprint[:12]}"
    if (
        earlier.get("fingerprint") == fingerprint
        and not earlier.get("finished")
        and not fresh
        and not resume_from
    ):
        return TrainingRun(
            name=earlier.get("name", name),
            fingerprint=fingerprint,
            resume=True,
            reason=f"continuing the interrupted run {earlier.get('name', name)} (same settings) from its latest "
            "checkpoint",
        )
    if fresh:
        reason = "starting over (redo requested)"
    elif resume_from:
        reason = f"starting a new run from the checkpoint {resume_from}"
    elif not earlier and not previous_outputs(output_dir):
        reason = "new run"
    elif earlier.get("fingerprint") == fingerprint:
        reason = "starting over (the earlier run with these settings had finished)"
    else:
        reason = "starting over (settings or inputs changed since the earlier run)"
    outputs = previous_outputs(output_dir)
    moved = move_aside(output_dir, outputs, resume_from)
    if outputs:
        reason += f"; the earlier run's outputs moved to {output_dir / PREVIOUS_DIR}"
    write_json_atomically(
        output_dir / RUN_FILE,
        {"name": name, "fingerprint": fingerprint, "finished": False, "started": time.time()},
    )
    return TrainingRun(name=name, fingerprint=fingerprint, resume=False, reason=reason, resume_from=moved)


def finish_training_run(output_dir: str | Path, run: TrainingRun) -> None:
    """Record that ``run`` completed: a later start with the same settings trains again rather than resuming."""
    write_json_atomically(
        Path(output_dir) / RUN_FILE,
        {"name": run.name, "fingerprint": run.fingerprint, "finished": True, "finished_at": time.time()},
    )


def open_stage_run(
    config: Any, section: str, sections: tuple[str, ...], inputs: Mapping[str, str], **kwargs: Any
) -> TrainingRun:
    """The training run of stage ``section`` (``config.<section>.output_dir``): its fingerprint from the config
    ``sections`` and ``inputs``, then :func:`open_training_run`; says on the log whether it continues or starts
    over."""
    from polyalign_ray.config import config_to_dict

    data = config_to_dict(config)
    fingerprint = training_fingerprint({name: data[name] for name in sections}, section, inputs)
    run = open_training_run(getattr(config, section).output_dir, section, fingerprint, **kwargs)
    log.info("%s: %s (run %s)", section, run.reason, run.name)
    return run


def absolute(path: str) -> str:
    """``path`` made absolute ("" stays ""): workers run in another working directory than the driver."""
    return str(Path(path).resolve()) if path else ""
