"""The critic (METHOD.md section 4) as a stage: ``polyalign critic`` (sample the SFT policy, compute targets,
add corrupted answers, train, check the gates, save the bundle) and ``polyalign score`` (distances through the
critic actor pool). The model, its training and gates are in ``critic/``; the Ray parts (generation actors, the
pool) in ``distributed/``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from polyalign_ray.config import PolyAlignConfig
from polyalign_ray.corpus.prepare import write_jsonl
from polyalign_ray.corpus.tables import load_split
from polyalign_ray.schema import stable_fraction
from polyalign_ray.tracking import record_stage

log = logging.getLogger(__name__)


def critic_records(config: PolyAlignConfig) -> pa.Table:
    """The prompts the critic learns from: train records (at most ``critic.max_prompts``, a seeded choice) and
    every val record (held out for the quality gates)."""
    data_dir = Path(config.data.output_dir)
    train = load_split(data_dir, "train")
    if config.critic.max_prompts and train.num_rows > config.critic.max_prompts:
        order = sorted(
            range(train.num_rows), key=lambda i: stable_fraction(train["id"][i].as_py(), config.critic.seed)
        )
        train = train.take(sorted(order[: config.critic.max_prompts]))
    return pa.concat_tables([train, load_split(data_dir, "val")])


def run_critic_stage(config: PolyAlignConfig) -> dict[str, Any]:
    """``polyalign critic``: sample the SFT policy for the critic's prompts (Ray Data), compute distance targets,
    train, check the gates, save the bundle. Returns the summary; raises CriticQualityError if a gate fails."""
    from polyalign_ray.critic.corruptions import corrupt_records
    from polyalign_ray.critic.encoders import FrozenLMEncoder
    from polyalign_ray.critic.train import (
        CriticQualityError,
        build_critic_examples,
        save_critic_bundle,
        train_critic,
    )
    from polyalign_ray.distributed.batch_generation import sample_answers_with_ray
    from polyalign_ray.models import load_causal_lm, load_tokenizer
    from polyalign_ray.references import ReferenceSet

    cfg = config.critic
    data_dir = Path(config.data.output_dir)
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    policy = cfg.policy or str(Path(config.sft.output_dir) / "final")
    if not Path(policy).exists() and not cfg.policy:
        raise FileNotFoundError(f"no SFT model at {policy}: run `polyalign sft` first or set critic.policy")
    references = ReferenceSet.load(data_dir / "references.json")
    records = critic_records(config)
    log.info(
        "critic: sampling %d answer(s) for %d prompts from %s",
        cfg.samples_per_prompt,
        records.num_rows,
        policy,
    )
    samples = sample_answers_with_ray(
        records, policy, config.generation, config.model, samples_per_record=cfg.samples_per_prompt
    )
    write_jsonl(
        out / "samples.jsonl",
        ({"id": key, "samples": values} for key, values in sorted(samples.items())),
    )
    rows = records.to_pylist()
    corrupted = corrupt_records(
        rows, kinds=cfg.corruptions, per_record=cfg.corruptions_per_prompt, seed=cfg.seed
    )
    write_jsonl(out / "corrupted.jsonl", (dataclasses.asdict(c) for c in corrupted))
    examples = build_critic_examples(
        rows, samples, references, corrupted, corruption_gap=cfg.corruption_target_gap
    )
    encoder, encoder_model = None, ""
    if cfg.encoder == "frozen_lm":
        encoder_model = cfg.encoder_model or policy
        encoder = FrozenLMEncoder(load_causal_lm(encoder_model, config.model), load_tokenizer(encoder_model))
    log.info("critic: training on %d examples (%s encoder)", len(examples), cfg.encoder)
    model, meta, summary = train_critic(examples, cfg, encoder=encoder, encoder_model=encoder_model)
    summary["policy"] = policy
    (out / "summary.json").write_text(json.dumps(summary, indent=1), encoding="utf-8")
    record_stage(
        config,
        out,
        "critic",
        summary,
        [out / "summary.json"],
        status="FINISHED" if summary["gates_passed"] else "FAILED",
    )
    if not summary["gates_passed"]:
        raise CriticQualityError(
            "critic failed its quality gates (nothing saved but summary.json): "
            + "; ".join(summary["gate_failures"])
        )
    save_critic_bundle(out, model, meta, summary, references)
    log.info(
        "critic: held-out Spearman %.3f, human<model ranking accuracy %.3f, spread ratio %.2f -> %s",
        summary["heldout_spearman"],
        summary["heldout_ranking_accuracy_human_below_model"],
        summary["heldout_spread_ratio"],
        out,
    )
    return summary


def read_rows(path: Path) -> pa.Table:
    """Rows to score: a JSONL/JSON file or a Parquet file/folder with ``bucket_id`` and ``response`` (or ``text``),
    and optionally the prompt (``prompt``, ``history``, ``context``: critic/prompts.py)."""
    if path.is_dir() or path.suffix == ".parquet":
        return pa.concat_tables(
            [pq.read_table(p) for p in ([path] if path.is_file() else sorted(path.glob("*.parquet")))]
        )
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return pa.Table.from_pylist(rows)


def run_score(config: PolyAlignConfig, critic_dir: str, input_path: str, output_path: str) -> int:
    """``polyalign score``: critic distances for every row of a file, through the actor pool; returns the count."""
    from polyalign_ray.critic.scorer import SCORE_COLUMN, prompts_of_table
    from polyalign_ray.distributed.critic_pool import CriticPool

    table = read_rows(Path(input_path))
    text_column = "response" if "response" in table.column_names else "text"
    missing = {text_column, "bucket_id"} - set(table.column_names)
    if missing:
        raise ValueError(
            f"{input_path}: rows need 'bucket_id' and 'response' (or 'text'); missing {sorted(missing)}"
        )
    cfg = config.critic
    with CriticPool.from_config(critic_dir, cfg) as pool:
        scores = pool.score(
            table[text_column].to_pylist(), table["bucket_id"].to_pylist(), prompts_of_table(table)
        )
    rows = table.append_column(SCORE_COLUMN, pa.array(scores)).to_pylist()
    write_jsonl(Path(output_path), rows)
    return len(rows)
