"""HDPO on Ray: offline pairs built with the critic pool and Ray Data, and a TorchTrainer of DeepSpeed ZeRO workers
running :func:`~polyalign_ray.loops.hdpo.run_hdpo` (offline, or online with the rollout pipeline of
``distributed/rollouts.py``).

Offline data path: train records + SFT samples -> pairs (``hdpo_data.offline_pairs``) -> critic distances of both
answers through the actor pool -> pair weights (rarity from the train split's bucket counts) -> Ray Data tasks
tokenize each pair and compute the frozen reference's log-probs (``PairPreparer``) -> ``OUT/pairs/*.parquet``. The
workers receive every pair (``datasets_to_split=[]``) and the pair sampler gives each rank its slice of the same
global batch, as in SFT. The reference log-probs do not depend on how the trained policy is partitioned (ZeRO-3
included): they come from an unpartitioned copy of the starting weights.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import ray
import ray.data
import ray.train
import torch

from polyalign_ray.config import ModelConfig, PolyAlignConfig, config_from_dict, config_to_dict
from polyalign_ray.corpus.prepare import write_jsonl
from polyalign_ray.corpus.tables import load_split
from polyalign_ray.deepspeed_config import deepspeed_config
from polyalign_ray.distributed.train import (
    RayTrainCheckpointer,
    deepspeed_trainer,
    fit_and_summarize,
    restore_checkpoint,
)
from polyalign_ray.hdpo_data import (
    PAIR_SCHEMA,
    TokenizedPair,
    bucket_rarity,
    labels_are_empty,
    offline_pairs,
    pairs_from_table,
    pairs_table,
    reference_sequence_logps,
    tokenize_answer,
    weights_for_pairs,
)
from polyalign_ray.loops.hdpo import OfflinePairSource, run_hdpo, total_hdpo_steps
from polyalign_ray.loops.strategy import adamw_factory, scheduler_factory
from polyalign_ray.models import apply_lora, load_causal_lm, load_tokenizer
from polyalign_ray.schema import stable_fraction

log = logging.getLogger(__name__)

PAIR_COUNTS_FILE = "pair_counts.json"


def hdpo_prompt_records(config: PolyAlignConfig) -> pa.Table:
    """The train records HDPO builds pairs (offline) or rollouts (online) from: all, or a seeded choice of
    ``hdpo.max_prompts``."""
    train = load_split(Path(config.data.output_dir), "train")
    limit = config.hdpo.max_prompts
    if limit and train.num_rows > limit:
        order = sorted(
            range(train.num_rows), key=lambda i: stable_fraction(train["id"][i].as_py(), config.hdpo.seed)
        )
        train = train.take(sorted(order[:limit]))
    return train


def train_bucket_counts(config: PolyAlignConfig) -> dict[str, int]:
    """Records per bucket in the whole train split (what rarity(b) is computed from)."""
    buckets = load_split(Path(config.data.output_dir), "train")["bucket_id"].to_pylist()
    return {b: buckets.count(b) for b in sorted(set(buckets))}


def load_samples(path: Path) -> dict[str, list[str]]:
    """``{"id", "samples"}`` JSONL (what the critic stage writes) -> id -> samples."""
    if not path.is_file():
        return {}
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return {row["id"]: list(row["samples"]) for row in rows}


class PairPreparer:
    """Ray Data callable class: pair rows (record fields + chosen, rejected, distances, weight) -> tokenized pairs
    with the frozen reference's log-probs (one model copy per actor). Pairs whose chosen or rejected answer has no
    token left after truncation are dropped (and counted by the caller)."""

    def __init__(self, model_path: str, model: dict[str, Any], precompute: bool, torch_threads: int = 1):
        from polyalign_ray.config import ModelConfig

        if torch_threads:
            torch.set_num_threads(torch_threads)
        self.model_config = config_from_dict(model, ModelConfig)
        self.tokenizer = load_tokenizer(model_path)
        self.model = load_causal_lm(model_path, self.model_config) if precompute else None

    def __call__(self, batch: pa.Table) -> pa.Table:
        pairs = []
        for row in batch.to_pylist():
            kwargs = {
                "max_length": self.model_config.max_length,
                "profile_conditioning": self.model_config.profile_conditioning,
            }
            chosen = tokenize_answer(self.tokenizer, row, row["chosen"], **kwargs)
            rejected = tokenize_answer(self.tokenizer, row, row["rejected"], **kwargs)
            if labels_are_empty(chosen[1]) or labels_are_empty(rejected[1]):
                continue
            pairs.append(
                TokenizedPair(
                    bucket_id=row["bucket_id"],
                    chosen_ids=chosen[0],
                    chosen_labels=chosen[1],
                    rejected_ids=rejected[0],
                    rejected_labels=rejected[1],
                    chosen_distance=float(row["chosen_distance"]),
                    rejected_distance=float(row["rejected_distance"]),
                    weight=float(row["weight"]),
                    pair_id=row["pair_id"],
                )
            )
        if self.model is not None and pairs:
            pad = self.tokenizer.pad_token_id
            chosen_logps = reference_sequence_logps(
                self.model, [(p.chosen_ids, p.chosen_labels) for p in pairs], pad
            )
            rejected_logps = reference_sequence_logps(
                self.model, [(p.rejected_ids, p.rejected_labels) for p in pairs], pad
            )
            for pair, c, r in zip(pairs, chosen_logps, rejected_logps, strict=True):
                pair.reference_chosen_logps, pair.reference_rejected_logps = float(c), float(r)
        return pairs_table(pairs) if pairs else PAIR_SCHEMA.empty_table()


def build_offline_pairs(
    config: PolyAlignConfig, policy: str, critic_dir: str
) -> tuple[ray.data.Dataset, dict]:
    """Offline pairs with distances, weights and reference log-probs, written to ``hdpo.output_dir/pairs/``;
    returns the materialized dataset and the reconciled counts (also in ``pair_counts.json``)."""
    from polyalign_ray.distributed.critic_pool import CriticPool
    from polyalign_ray.distributed.generate import sample_answers_with_ray

    hdpo = config.hdpo
    out = Path(hdpo.output_dir)
    records = hdpo_prompt_records(config)
    samples_path = Path(hdpo.samples) if hdpo.samples else Path(config.critic.output_dir) / "samples.jsonl"
    samples = load_samples(samples_path)
    missing = [i for i, key in enumerate(records["id"].to_pylist()) if key not in samples]
    if missing:
        log.info(
            "hdpo: sampling the SFT policy for %d prompt(s) without a sample in %s",
            len(missing),
            samples_path,
        )
        samples.update(
            sample_answers_with_ray(records.take(missing), policy, config.generation, config.model)
        )
    pairs, counts = offline_pairs(records.to_pylist(), samples)
    log.info("hdpo: %d offline pairs from %d prompts (%s)", len(pairs), records.num_rows, counts)
    if not pairs:
        raise ValueError(f"no offline HDPO pair could be built: {counts}")
    cfg = config.critic
    with CriticPool(
        critic_dir,
        num_actors=cfg.num_actors,
        max_in_flight=cfg.max_in_flight,
        num_cpus=cfg.actor_num_cpus,
        num_gpus=cfg.actor_num_gpus,
    ) as pool:
        texts = [p["chosen"] for p in pairs] + [p["rejected"] for p in pairs]
        distances = pool.score(texts, [p["bucket_id"] for p in pairs] * 2)
    chosen_distance, rejected_distance = distances[: len(pairs)], distances[len(pairs) :]
    if hdpo.unit_weights:
        weights = np.ones(len(pairs))
    else:
        weights = weights_for_pairs(
            [p["bucket_id"] for p in pairs],
            chosen_distance,
            rejected_distance,
            bucket_rarity(train_bucket_counts(config)),
            a=hdpo.weight_rarity,
            c=hdpo.weight_gap,
            w_min=hdpo.weight_min,
            w_max=hdpo.weight_max,
        )
    columns = ("pair_id", "id", "bucket_id", "system", "context", "history", "prompt", "chosen", "rejected")
    keep = ("language", "track", "family", "length_bin")
    rows = [
        {
            **{k: p[k] for k in (*columns, *keep)},
            "chosen_distance": float(dc),
            "rejected_distance": float(dr),
            "weight": float(w),
        }
        for p, dc, dr, w in zip(pairs, chosen_distance, rejected_distance, weights, strict=True)
    ]
    write_jsonl(out / "pairs.jsonl", ({k: r[k] for k in r if k != "history"} for r in rows))
    dataset = (
        ray.data.from_arrow(pa.Table.from_pylist(rows))
        .map_batches(
            PairPreparer,
            fn_constructor_kwargs={
                "model_path": policy,
                "model": config_to_dict(config.model),
                "precompute": hdpo.reference == "precompute",
            },
            batch_size=64,
            batch_format="pyarrow",
            concurrency=config.generation.num_workers,
            num_cpus=1,
        )
        .materialize()
    )
    kept = dataset.count()
    counts["dropped_truncated"] = len(pairs) - kept
    counts["pairs"] = kept
    counts["weight_mean"] = float(np.mean(weights))
    counts["chosen_distance_mean"] = float(np.mean(chosen_distance))
    counts["rejected_distance_mean"] = float(np.mean(rejected_distance))
    (out / "pairs").mkdir(parents=True, exist_ok=True)
    pq.write_table(
        pa.concat_tables(list(dataset.iter_batches(batch_format="pyarrow", batch_size=None))),
        out / "pairs" / "pairs.parquet",
    )
    (out / PAIR_COUNTS_FILE).write_text(json.dumps(counts, indent=1), encoding="utf-8")
    return dataset, counts


def frozen_reference(path: str, model: ModelConfig) -> torch.nn.Module:
    """The starting policy, frozen and in eval mode (``hdpo.reference=frozen_copy``)."""
    reference = load_causal_lm(path, model).eval()
    for parameter in reference.parameters():
        parameter.requires_grad_(False)
    return reference


def hdpo_worker_loop(loop_config: dict[str, Any]) -> None:
    """What each Ray Train worker runs."""
    from polyalign_ray.distributed.deepspeed import DeepSpeedStrategy

    config = config_from_dict(loop_config["config"])
    hdpo, model_cfg = config.hdpo, config.model
    if not hdpo.use_gpu and hdpo.torch_threads:
        torch.set_num_threads(hdpo.torch_threads)
    torch.manual_seed(hdpo.seed)
    context = ray.train.get_context()
    world, rank = context.get_world_size(), context.get_world_rank()
    policy = loop_config["policy"]
    tokenizer = load_tokenizer(policy)
    model = apply_lora(load_causal_lm(policy, model_cfg), model_cfg.lora)
    pairs_per_rank = hdpo.micro_batch_size * hdpo.grad_accum_steps

    pairs: list[TokenizedPair] = []
    if hdpo.mode == "offline":
        shard = ray.train.get_dataset_shard("pairs")
        tables = [t for t in shard.iter_batches(batch_format="pyarrow", batch_size=4096) if t.num_rows]
        pairs = pairs_from_table(pa.concat_tables(tables))
    total = total_hdpo_steps(hdpo, len(pairs), world)
    strategy = DeepSpeedStrategy(
        model,
        adamw_factory(hdpo.lr, hdpo.weight_decay),
        scheduler_factory(
            warmup_steps=hdpo.warmup_steps,
            total_steps=total,
            schedule=hdpo.lr_schedule,
            min_lr_ratio=hdpo.min_lr_ratio,
        ),
        deepspeed_config(hdpo, model_cfg, world),
        use_gpu=hdpo.use_gpu,
    )
    reference = None
    if hdpo.mode == "offline":
        source = OfflinePairSource(
            pairs, pairs_per_rank=pairs_per_rank, world_size=world, rank=rank, seed=hdpo.seed, num_steps=total
        )
        if hdpo.reference == "frozen_copy":
            reference = frozen_reference(policy, model_cfg).to(strategy.device)
    else:
        from polyalign_ray.distributed.rollouts import OnlinePairSource

        source = OnlinePairSource(
            strategy,
            config,
            policy=policy,
            critic_dir=loop_config["critic_dir"],
            records=hdpo_prompt_records(config) if rank == 0 else None,
            rarity=bucket_rarity(train_bucket_counts(config)),
        )
    resume_from = restore_checkpoint()
    if resume_from is None and loop_config.get("resume_from"):
        resume_from = Path(loop_config["resume_from"])
    run_hdpo(
        strategy,
        source,
        tokenizer,
        hdpo=hdpo,
        total_steps=total,
        output_dir=Path(hdpo.output_dir),
        checkpointer=RayTrainCheckpointer(),
        resume_from=resume_from,
        reference_model=reference,
    )


def run_hdpo_with_ray(
    config: PolyAlignConfig,
    policy: str,
    critic_dir: str,
    *,
    run_name: str = "hdpo",
    resume_from: str = "",
) -> dict[str, Any]:
    """Build the offline pairs (offline mode) and train with a TorchTrainer of DeepSpeed workers; returns the
    summary (``hdpo.output_dir/summary.json``). ``run_name``: the Ray Train run folder, as in SFT."""
    hdpo = config.hdpo
    if Path(policy).exists():  # workers run in another working directory: hand them absolute paths
        policy = str(Path(policy).resolve())
    critic_dir = str(Path(critic_dir).resolve())
    output_dir = Path(hdpo.output_dir).resolve()
    output_dir.mkdir(parents=True, exist_ok=True)
    data_dir = str(Path(config.data.output_dir).resolve())
    config = config_from_dict(
        {
            **config_to_dict(config),
            "data": {**config_to_dict(config.data), "output_dir": data_dir},
            "hdpo": {**config_to_dict(hdpo), "output_dir": str(output_dir)},
        }
    )
    datasets: dict[str, ray.data.Dataset] = {}
    counts: dict[str, Any] = {}
    if hdpo.mode == "offline":
        datasets["pairs"], counts = build_offline_pairs(config, policy, critic_dir)
    log.info(
        "hdpo (%s): %d workers, ZeRO-%d, %d pairs per step",
        hdpo.mode,
        hdpo.num_workers,
        hdpo.zero_stage,
        hdpo.micro_batch_size * hdpo.grad_accum_steps * hdpo.num_workers,
    )
    trainer = deepspeed_trainer(
        hdpo_worker_loop,
        {
            "config": config_to_dict(config),
            "policy": policy,
            "critic_dir": critic_dir,
            "resume_from": resume_from,
        },
        hdpo,
        name=run_name,
        output_dir=output_dir,
        datasets=datasets,
    )
    return fit_and_summarize(trainer, output_dir, pair_counts=counts)
