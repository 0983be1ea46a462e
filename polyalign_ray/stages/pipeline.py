"""``polyalign pipeline``: the whole method as one resumable chain of stages.

data (prepare + references) → plain SFT (baseline) → Bucket-Aware SFT → critic → DPO (baseline) → HDPO → eval of
base, plain SFT, Bucket-SFT, DPO and HDPO → comparison report.

Each stage writes ``stage_done.json`` into its output folder when every output is complete (atomically: written
under a temporary name, then renamed), with a fingerprint of the config sections it depends on and of the runs of
the stages whose outputs it reads (``needs``), and a fresh ``run_id``. A stage withdraws its marker before it starts,
so an interrupted stage is never "done". A rerun skips every stage whose marker matches (so an interrupted pipeline
continues where it stopped, and changing ``eval.*`` re-runs only the evaluation). ``pipeline.redo`` forces stages to
run again from the start; since a rerun gives a stage a new ``run_id``, every stage that reads its outputs is
reopened too, like ``make``. Training stages continue an interrupted run of the same settings from its latest
checkpoint (``training_runs``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from polyalign_ray.config import PolyAlignConfig, config_from_dict, config_to_dict
from polyalign_ray.log_files import prints_to_log_file, stage_log_file
from polyalign_ray.training_runs import read_json_file, settings_fingerprint, write_json_atomically

log = logging.getLogger(__name__)

MARKER = "stage_done.json"


@dataclasses.dataclass(frozen=True)
class Stage:
    name: str
    title: str
    folder: Path
    sections: tuple[str, ...]
    """Config sections whose values decide the stage's result (its fingerprint)."""
    run: Callable[[bool], Any]
    """Runs the stage; the argument is ``fresh``: start training over rather than continue an interrupted run."""
    needs: tuple[str, ...] = ()
    """Stages whose outputs this one reads: a new run of any of them reopens this one."""
    only_generates: bool = False
    """The stage's Ray work is generation alone (an evaluation): consecutive such stages of one pipeline share kept
    generation actors (``distributed/batch_generation.generation_actors_kept``) instead of starting a Ray Data
    pass's actors each; no training stage may run while those hold their CPUs."""


def variant(config: PolyAlignConfig, **sections: dict[str, Any]) -> PolyAlignConfig:
    """``config`` with some keys of some sections replaced (e.g. ``sft={"output_dir": ...}``)."""
    data = config_to_dict(config)
    for section, values in sections.items():
        data[section] = {**data[section], **values}
    return config_from_dict(data)


def fingerprint(config: PolyAlignConfig, sections: tuple[str, ...], extra: str = "") -> str:
    """The settings of ``sections`` (``pipeline.redo`` left out: asking for a redo once must not make the next
    plain run redo again) and ``extra``."""
    data = config_to_dict(config)
    chosen = {s: data[s] for s in sections}
    if "pipeline" in chosen:
        chosen["pipeline"] = {k: v for k, v in chosen["pipeline"].items() if k != "redo"}
    return settings_fingerprint([chosen, extra])


def plain_sft_config(config: PolyAlignConfig) -> PolyAlignConfig:
    """The plain-SFT baseline: natural bucket frequencies (sampler alpha = 1, no multipliers), its own folder."""
    return variant(
        config,
        sampler={"alpha": 1.0, "multipliers": {}},
        sft={"output_dir": str(Path(config.sft.output_dir).parent / "sft_plain")},
    )


def dpo_config(config: PolyAlignConfig) -> PolyAlignConfig:
    """The DPO baseline: HDPO with lambda = gamma = 0 and unit weights, on the same pairs, its own folder."""
    return variant(
        config,
        hdpo={
            "reg_lambda": 0.0,
            "sft_coef": 0.0,
            "unit_weights": True,
            "output_dir": str(Path(config.hdpo.output_dir).parent / "dpo"),
        },
    )


SEEDED_SECTIONS = ("sampler", "sft", "critic", "hdpo", "generation")
"""Sections whose ``seed`` a multi-seed pipeline sets to each seed (data, references and the evaluation set are
shared, so every seed answers the same test items)."""
PER_SEED_FOLDERS = ("sft", "critic", "hdpo", "eval")


def seed_root(config: PolyAlignConfig, seed: int) -> Path:
    """Where one seed's stages write: ``OUT/seeds/seed_N`` (OUT is the folder holding ``sft.output_dir``)."""
    return Path(config.sft.output_dir).parent / "seeds" / f"seed_{seed}"


def seed_config(config: PolyAlignConfig, seed: int) -> PolyAlignConfig:
    """The config of one seed of a multi-seed pipeline: every seeded section's seed, every trained or evaluated
    stage's folder under :func:`seed_root`, no further seeds."""
    root = seed_root(config, seed)
    sections: dict[str, dict[str, Any]] = {name: {"seed": seed} for name in SEEDED_SECTIONS}
    for name in PER_SEED_FOLDERS:
        sections.setdefault(name, {})["output_dir"] = str(root / name)
    return variant(config, **sections, pipeline={"seeds": ()})


def pipeline_stages(config: PolyAlignConfig) -> list[Stage]:
    """The stages this config runs, in order, each with the stages whose outputs it reads."""
    from polyalign_ray.stages import critic, data, evaluate, hdpo, sft

    data_dir = Path(config.data.output_dir)
    eval_dir = Path(config.eval.output_dir)
    base = ("data", "references", "model")
    sft_keys = (*base, "sampler", "sft")
    critic_keys = (*sft_keys, "generation", "critic")
    hdpo_keys = (*critic_keys, "hdpo")
    plain, dpo = plain_sft_config(config), dpo_config(config)
    models = {
        "base": (lambda: data.ensure_base_model(config), base, ("data",)),
        "sft_plain": (lambda: str(Path(plain.sft.output_dir) / "final"), sft_keys, ("data", "sft_plain")),
        "sft": (lambda: str(Path(config.sft.output_dir) / "final"), sft_keys, ("data", "sft")),
        "dpo": (lambda: str(Path(dpo.hdpo.output_dir) / "final"), hdpo_keys, ("data", "dpo")),
        "hdpo": (lambda: str(Path(config.hdpo.output_dir) / "final"), hdpo_keys, ("data", "hdpo")),
    }
    run_baselines = config.pipeline.baselines
    stage_list = [
        Stage("data", "prepare + references", data_dir, ("data", "references"), lambda fresh: _data(config)),
    ]
    if run_baselines:
        stage_list.append(
            Stage(
                "sft_plain",
                "plain SFT (baseline)",
                Path(plain.sft.output_dir),
                sft_keys,
                lambda fresh: sft.run_sft_stage(plain, fresh=fresh),
                needs=("data",),
            )
        )
    stage_list += [
        Stage(
            "sft",
            "Bucket-Aware SFT",
            Path(config.sft.output_dir),
            sft_keys,
            lambda fresh: sft.run_sft_stage(config, fresh=fresh),
            needs=("data",),
        ),
        Stage(
            "critic",
            "critic",
            Path(config.critic.output_dir),
            critic_keys,
            lambda fresh: critic.run_critic_stage(config),
            needs=("data", "sft"),
        ),
    ]
    if run_baselines:
        stage_list.append(
            Stage(
                "dpo",
                "DPO (baseline)",
                Path(dpo.hdpo.output_dir),
                hdpo_keys,
                lambda fresh: hdpo.run_hdpo_stage(dpo, fresh=fresh),
                needs=("data", "sft", "critic"),
            )
        )
    stage_list.append(
        Stage(
            "hdpo",
            "HDPO",
            Path(config.hdpo.output_dir),
            hdpo_keys,
            lambda fresh: hdpo.run_hdpo_stage(config, fresh=fresh),
            needs=("data", "sft", "critic"),
        )
    )
    if config.pipeline.evaluate:
        names = [
            "base",
            *(["sft_plain"] if run_baselines else []),
            "sft",
            *(["dpo"] if run_baselines else []),
            "hdpo",
        ]
        for name in names:
            model, keys, needs = models[name]
            stage_list.append(
                Stage(
                    f"eval_{name}",
                    f"evaluate {name}",
                    eval_dir / name,
                    (*keys, "eval"),
                    lambda fresh, model=model, name=name: evaluate.run_eval_stage(config, model(), name),
                    needs=needs,
                    only_generates=True,
                )
            )
        stage_list.append(
            Stage(
                "compare",
                "comparison report",
                eval_dir / "report",
                (*hdpo_keys, "eval", "pipeline"),
                lambda fresh: evaluate.run_compare(config, names),
                needs=tuple(f"eval_{name}" for name in names),
            )
        )
    return stage_list


def _data(config: PolyAlignConfig) -> str:
    from polyalign_ray.stages.data import run_prepare, run_references

    run_prepare(config, engine="ray")
    return run_references(config)


def read_marker(folder: Path) -> dict[str, Any]:
    return read_json_file(folder / MARKER)


def upstream_runs(stage: Stage, folders: dict[str, Path]) -> dict[str, str]:
    """The ``run_id`` of each stage this one reads from (empty when that stage has no marker)."""
    return {name: read_marker(folders[name]).get("run_id", "") for name in stage.needs if name in folders}


def stage_fingerprint(stage: Stage, config: PolyAlignConfig, folders: dict[str, Path]) -> str:
    """The stage's settings and the runs of the stages it reads from: either changing reopens it."""
    return fingerprint(config, stage.sections, json.dumps(upstream_runs(stage, folders), sort_keys=True))


def stage_folders(stage_list: list[Stage], config: PolyAlignConfig) -> dict[str, Path]:
    """Every pipeline stage's folder (also those a sweep trial does not run: their markers are read)."""
    everything = pipeline_stages(variant(config, pipeline={"baselines": True, "evaluate": True}))
    return {**{s.name: s.folder for s in everything}, **{s.name: s.folder for s in stage_list}}


def stage_is_done(stage: Stage, config: PolyAlignConfig, folders: dict[str, Path] | None = None) -> bool:
    folders = folders if folders is not None else stage_folders([stage], config)
    return read_marker(stage.folder).get("fingerprint") == stage_fingerprint(stage, config, folders)


def why_stage_runs(stage: Stage, config: PolyAlignConfig, folders: dict[str, Path]) -> str:
    """Why a stage that is not skipped runs, for its progress line."""
    if stage.name in config.pipeline.redo:
        return "redo requested: starting over"
    marker = read_marker(stage.folder)
    if not marker:
        return "not done yet"
    recorded = marker.get("upstream", {})
    changed = [name for name, run_id in upstream_runs(stage, folders).items() if recorded.get(name) != run_id]
    if changed:
        return f"reopened: {', '.join(changed)} ran again"
    return "settings changed"


def mark_stage_done(
    stage: Stage, config: PolyAlignConfig, seconds: float, folders: dict[str, Path] | None = None
) -> None:
    """Write the stage's marker (atomically, after every output is complete): later runs with the same settings
    and the same upstream runs skip it; stages that read its outputs see its new ``run_id``."""
    folders = folders if folders is not None else stage_folders([stage], config)
    write_json_atomically(
        stage.folder / MARKER,
        {
            "stage": stage.name,
            "fingerprint": stage_fingerprint(stage, config, folders),
            "upstream": upstream_runs(stage, folders),
            "run_id": uuid.uuid4().hex[:12],
            "seconds": seconds,
        },
    )


def withdraw_marker(stage: Stage) -> None:
    """A stage about to run is not done, whatever it was before (an interruption must not leave it "done")."""
    (stage.folder / MARKER).unlink(missing_ok=True)


def run_log_dir(config: PolyAlignConfig) -> Path:
    """``OUT/logs``: the command's ``ray.log`` and one ``<stage>.log`` per stage run in this process."""
    return Path(config.data.output_dir).parent / "logs"


def run_stage(
    stage: Stage,
    config: PolyAlignConfig,
    folders: dict[str, Path],
    label: str,
    echo: Callable[[str], None],
    elapsed: Callable[[], float],
) -> tuple[Any, float | str]:
    """Skip the stage when done, else run it between withdrawing and writing its marker; (result, seconds)."""
    redo = stage.name in config.pipeline.redo
    if not redo and stage_is_done(stage, config, folders):
        echo(f"{label} — done earlier, skipped ({stage.folder / MARKER})")
        return None, "skipped"
    with stage_log_file(run_log_dir(config) / f"{stage.name}.log") as log_file:
        where = f"; Ray's messages: {log_file}" if log_file else ""
        echo(f"{label} ... ({why_stage_runs(stage, config, folders)}; elapsed {elapsed():.0f} s{where})")
        withdraw_marker(stage)
        began = time.perf_counter()
        result = stage.run(redo)
    if isinstance(result, str) and stage.name == "data":
        echo("\n" + result)  # the bucket table
    seconds = time.perf_counter() - began
    mark_stage_done(stage, config, seconds, folders)
    echo(f"{label} finished in {seconds:.0f} s")
    return result, round(seconds, 1)


def run_pipeline(
    config: PolyAlignConfig,
    *,
    echo: Callable[[str], None] = print,
    only: tuple[str, ...] | None = None,
) -> dict[str, Any]:
    """Run every stage not already done (of ``only``, when given: a sweep trial runs the stages its swept keys
    reach); returns {stage: result} of the stages run now, plus ``timings``. With ``pipeline.seeds``, see
    :func:`run_seeded_pipeline`."""
    if config.pipeline.seeds and only is None:
        return run_seeded_pipeline(config, echo=echo)
    stage_list = pipeline_stages(config)
    if only is not None:
        unknown = sorted(set(only) - {stage.name for stage in stage_list})
        if unknown:
            raise ValueError(
                f"stages {unknown} are not part of this pipeline: {[s.name for s in stage_list]}"
            )
        stage_list = [stage for stage in stage_list if stage.name in only]
    folders = stage_folders(stage_list, config)
    results: dict[str, Any] = {}
    timings: dict[str, float | str] = {}
    start = time.perf_counter()
    # a sweep or seed trial (``only``) runs inside a Tune trial's reserved resources: it keeps Ray Data's passes
    share_actors, actors_kept = only is None, False
    with contextlib.ExitStack() as kept_actors:
        for number, stage in enumerate(stage_list, start=1):
            if actors_kept and not stage.only_generates:
                kept_actors.close()  # the next stage may train: the kept actors' CPUs go back first
                actors_kept = False
            elif share_actors and stage.only_generates and not actors_kept:
                from polyalign_ray.distributed.batch_generation import generation_actors_kept

                kept_actors.enter_context(generation_actors_kept(config.generation))
                actors_kept = True
            label = f"[{number}/{len(stage_list)}] {stage.name}: {stage.title}"
            result, timings[stage.name] = run_stage(
                stage, config, folders, label, echo, lambda: time.perf_counter() - start
            )
            if timings[stage.name] != "skipped":
                results[stage.name] = result
    results["timings"] = timings
    results["wall_s"] = time.perf_counter() - start
    return results


def per_seed_stages(config: PolyAlignConfig) -> tuple[str, ...]:
    """The stages each seed runs: everything but the shared data stage and the comparison over seeds."""
    return tuple(s.name for s in pipeline_stages(config) if s.name not in ("data", "compare"))


def seeds_compare_stage(config: PolyAlignConfig) -> tuple[Stage, dict[str, Path]]:
    """The comparison over every seed's evaluations, and the folders of the stages it reads."""
    from polyalign_ray.stages.evaluate import run_compare

    evaluations = [name for name in per_seed_stages(config) if name.startswith("eval_")]
    folders: dict[str, Path] = {}
    for seed in config.pipeline.seeds:
        seeded = seed_config(config, seed)
        for stage in pipeline_stages(seeded):
            if stage.name in evaluations:
                folders[f"seed_{seed}/{stage.name}"] = stage.folder
    names = [name.removeprefix("eval_") for name in evaluations]
    stage = Stage(
        "compare",
        f"comparison over {len(config.pipeline.seeds)} seeds",
        Path(config.eval.output_dir) / "report",
        ("data", "references", "model", "sampler", "sft", "generation", "critic", "hdpo", "eval", "pipeline"),
        lambda fresh: run_compare(config, names),
        needs=tuple(folders),
    )
    folders["compare"] = stage.folder
    return stage, folders


def run_seeded_pipeline(config: PolyAlignConfig, *, echo: Callable[[str], None] = print) -> dict[str, Any]:
    """``pipeline.seeds``: the shared data stage once; every seed's training stages and evaluations as one Ray Tune
    trial each (the sweep machinery: concurrently where the cluster's resources allow; a seed whose stages are all
    done is not started), each in ``OUT/seeds/seed_N`` with its progress in ``progress.log`` there; then the
    comparison over the seeds. Resumable like the single pipeline: every stage keeps its marker."""
    from polyalign_ray.distributed.tune_trials import run_seed_trials

    start = time.perf_counter()
    seeds = tuple(config.pipeline.seeds)
    shared = variant(config, pipeline={"seeds": ()})
    results = run_pipeline(shared, only=("data",), echo=echo)
    timings: dict[str, Any] = dict(results["timings"])
    stages = per_seed_stages(config)
    pending = []
    for seed in seeds:
        seeded = seed_config(config, seed)
        stage_list = [stage for stage in pipeline_stages(seeded) if stage.name in stages]
        folders = stage_folders(stage_list, seeded)
        redo = set(config.pipeline.redo) & set(stages)
        if redo or not all(stage_is_done(stage, seeded, folders) for stage in stage_list):
            pending.append(seed)
        else:
            echo(f"seed {seed}: every stage done earlier, skipped ({seed_root(config, seed)})")
            timings[f"seed_{seed}"] = "skipped"
    if pending:
        echo(
            f"seeds {pending}: {len(stages)} stages each ({', '.join(stages)}) as Ray Tune trials; progress in "
            f"{seed_root(config, pending[0]).parent}/seed_N/progress.log, Ray's messages in "
            f"{run_log_dir(config) / 'seeds.log'} (elapsed {time.perf_counter() - start:.0f} s)"
        )
        with stage_log_file(run_log_dir(config) / "seeds.log"), prints_to_log_file():
            outcome = run_seed_trials(config, pending, stages)
        for seed, row in outcome.items():
            timings[f"seed_{seed}"] = row.get("seconds", "failed")
            echo(
                f"seed {seed}: {row['status']}"
                + (f" in {row['seconds']:.0f} s" if row.get("seconds") else "")
            )
        failed = {seed: row for seed, row in outcome.items() if row["status"] != "done"}
        if failed:
            details = "; ".join(f"seed {seed}: {row['error']}" for seed, row in sorted(failed.items()))
            raise RuntimeError(
                f"{len(failed)} of {len(pending)} seeds failed ({details}); their progress.log says where; running "
                "the same command again continues every seed where it stopped"
            )
    stage, folders = seeds_compare_stage(config)
    if config.pipeline.evaluate:
        label = f"[{len(seeds) + 2}/{len(seeds) + 2}] compare: {stage.title}"
        result, timings["compare"] = run_stage(
            stage, config, folders, label, echo, lambda: time.perf_counter() - start
        )
        if result is not None:
            results["compare"] = result
    results["timings"] = timings
    results["wall_s"] = time.perf_counter() - start
    return results
