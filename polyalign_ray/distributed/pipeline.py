"""``polyalign pipeline``: the whole method as one resumable chain of stages.

data (prepare + references) → plain SFT (baseline) → Bucket-Aware SFT → critic → DPO (baseline) → HDPO → eval of
base, plain SFT, Bucket-SFT, DPO and HDPO → comparison report.

Each stage writes ``stage_done.json`` into its output folder when it finishes, with a fingerprint of the config
sections it depends on. A rerun skips every stage whose marker matches (so an interrupted pipeline continues where it
stopped, and changing ``eval.*`` re-runs only the evaluation); ``pipeline.redo`` forces stages to run again.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from polyalign_ray.config import PolyAlignConfig, config_from_dict, config_to_dict

log = logging.getLogger(__name__)

MARKER = "stage_done.json"


@dataclasses.dataclass(frozen=True)
class Stage:
    name: str
    title: str
    folder: Path
    sections: tuple[str, ...]
    """Config sections whose values decide the stage's result (its fingerprint)."""
    run: Callable[[], Any]


def variant(config: PolyAlignConfig, **sections: dict[str, Any]) -> PolyAlignConfig:
    """``config`` with some keys of some sections replaced (e.g. ``sft={"output_dir": ...}``)."""
    data = config_to_dict(config)
    for section, values in sections.items():
        data[section] = {**data[section], **values}
    return config_from_dict(data)


def fingerprint(config: PolyAlignConfig, sections: tuple[str, ...], extra: str = "") -> str:
    data = config_to_dict(config)
    payload = json.dumps({s: data[s] for s in sections}, sort_keys=True) + extra
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


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


def pipeline_stages(config: PolyAlignConfig) -> list[Stage]:
    """The stages this config runs, in order."""
    from polyalign_ray.distributed import stages as s

    data_dir = Path(config.data.output_dir)
    eval_dir = Path(config.eval.output_dir)
    base = ("data", "references", "model")
    sft_keys = (*base, "sampler", "sft")
    critic_keys = (*sft_keys, "generation", "critic")
    hdpo_keys = (*critic_keys, "hdpo")
    plain, dpo = plain_sft_config(config), dpo_config(config)
    models = {
        "base": (lambda: s.ensure_base_model(config), base),
        "sft_plain": (lambda: str(Path(plain.sft.output_dir) / "final"), sft_keys),
        "sft": (lambda: str(Path(config.sft.output_dir) / "final"), sft_keys),
        "dpo": (lambda: str(Path(dpo.hdpo.output_dir) / "final"), hdpo_keys),
        "hdpo": (lambda: str(Path(config.hdpo.output_dir) / "final"), hdpo_keys),
    }
    run_baselines = config.pipeline.baselines
    stage_list = [
        Stage("data", "prepare + references", data_dir, ("data", "references"), lambda: _data(config)),
    ]
    if run_baselines:
        stage_list.append(
            Stage(
                "sft_plain",
                "plain SFT (baseline)",
                Path(plain.sft.output_dir),
                sft_keys,
                lambda: s.run_sft_stage(plain),
            )
        )
    stage_list += [
        Stage(
            "sft", "Bucket-Aware SFT", Path(config.sft.output_dir), sft_keys, lambda: s.run_sft_stage(config)
        ),
        Stage(
            "critic",
            "critic",
            Path(config.critic.output_dir),
            critic_keys,
            lambda: s.run_critic_stage(config),
        ),
    ]
    if run_baselines:
        stage_list.append(
            Stage(
                "dpo", "DPO (baseline)", Path(dpo.hdpo.output_dir), hdpo_keys, lambda: s.run_hdpo_stage(dpo)
            )
        )
    stage_list.append(
        Stage("hdpo", "HDPO", Path(config.hdpo.output_dir), hdpo_keys, lambda: s.run_hdpo_stage(config))
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
            model, keys = models[name]
            stage_list.append(
                Stage(
                    f"eval_{name}",
                    f"evaluate {name}",
                    eval_dir / name,
                    (*keys, "eval"),
                    lambda model=model, name=name: s.run_eval_stage(config, model(), name),
                )
            )
        stage_list.append(
            Stage(
                "compare",
                "comparison report",
                eval_dir / "report",
                (*hdpo_keys, "eval", "pipeline"),
                lambda: s.run_compare(config, names),
            )
        )
    return stage_list


def _data(config: PolyAlignConfig) -> str:
    from polyalign_ray.distributed.stages import run_prepare, run_references

    run_prepare(config, engine="ray")
    return run_references(config)


def stage_is_done(stage: Stage, config: PolyAlignConfig) -> bool:
    marker = stage.folder / MARKER
    if not marker.is_file():
        return False
    return json.loads(marker.read_text(encoding="utf-8")).get("fingerprint") == fingerprint(
        config, stage.sections
    )


def mark_stage_done(stage: Stage, config: PolyAlignConfig, seconds: float) -> None:
    """Write the stage's marker: later runs with the same settings skip it."""
    stage.folder.mkdir(parents=True, exist_ok=True)
    (stage.folder / MARKER).write_text(
        json.dumps(
            {"stage": stage.name, "fingerprint": fingerprint(config, stage.sections), "seconds": seconds}
        ),
        encoding="utf-8",
    )


def run_pipeline(
    config: PolyAlignConfig,
    *,
    echo: Callable[[str], None] = print,
    only: tuple[str, ...] | None = None,
) -> dict[str, Any]:
    """Run every stage not already done (of ``only``, when given: a sweep trial runs the stages its swept keys
    reach); returns {stage: result} of the stages run now, plus ``timings``."""
    stage_list = pipeline_stages(config)
    if only is not None:
        unknown = sorted(set(only) - {stage.name for stage in stage_list})
        if unknown:
            raise ValueError(
                f"stages {unknown} are not part of this pipeline: {[s.name for s in stage_list]}"
            )
        stage_list = [stage for stage in stage_list if stage.name in only]
    results: dict[str, Any] = {}
    timings: dict[str, float | str] = {}
    start = time.perf_counter()
    for number, stage in enumerate(stage_list, start=1):
        label = f"[{number}/{len(stage_list)}] {stage.name}: {stage.title}"
        if stage.name not in config.pipeline.redo and stage_is_done(stage, config):
            echo(f"{label} — done earlier, skipped ({stage.folder / MARKER})")
            timings[stage.name] = "skipped"
            continue
        echo(f"{label} ... (elapsed {time.perf_counter() - start:.0f} s)")
        began = time.perf_counter()
        results[stage.name] = stage.run()
        if isinstance(results[stage.name], str) and stage.name == "data":
            echo("\n" + results[stage.name])  # the bucket table
        seconds = time.perf_counter() - began
        timings[stage.name] = round(seconds, 1)
        mark_stage_done(stage, config, seconds)
        echo(f"{label} finished in {seconds:.0f} s")
    results["timings"] = timings
    results["wall_s"] = time.perf_counter() - start
    return results
