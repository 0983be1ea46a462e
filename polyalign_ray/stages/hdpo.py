"""HDPO (METHOD.md section 5) as a stage: ``polyalign hdpo`` and the pipeline's ``hdpo`` / ``dpo``.

Driver (:func:`run_hdpo_stage`): which training run this is (``training_runs``), the offline pairs (human answer vs
SFT sample -> critic distances (``critic_distances``) -> pair weights -> tokenized by Ray Data with the frozen
reference's log-probs, per-bucket shards in ``OUT/shards/pairs``), then the launcher's TorchTrainer of DeepSpeed
workers. Worker body (:func:`hdpo_worker`): model -> strategy -> pair source -> the loop of ``loops/hdpo.py``.
Offline, the pair sampler gives each rank its slice of the same global batch, as in SFT, and each worker reads
only the pairs it draws (``hdpo.example_store=memory``: every worker receives every pair); the
reference log-probs come from an unpartitioned copy of the starting weights, so they do not depend on how the
trained policy is partitioned (ZeRO-3 included). Online, rank 0 runs the rollout pipeline
(``distributed/online_pairs.py``: generator actors chained to the critic pool) and broadcasts each step's pairs.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from polyalign_ray.config import ModelConfig, PolyAlignConfig, config_from_dict, config_to_dict
from polyalign_ray.corpus.prepare import write_jsonl
from polyalign_ray.corpus.tables import load_split
from polyalign_ray.critic.prompts import prompt_view
from polyalign_ray.hdpo_data import (
    InMemoryPairs,
    PairStore,
    ShardedPairs,
    bucket_rarity,
    offline_pair_rows,
    offline_pair_weights,
    offline_pairs,
    pairs_from_table,
)
from polyalign_ray.loops.hdpo import OfflinePairSource, run_hdpo, total_hdpo_steps
from polyalign_ray.models import apply_lora, load_causal_lm, load_tokenizer
from polyalign_ray.schema import stable_fraction
from polyalign_ray.stages.context import WorkerContext, seed_worker, training_strategy
from polyalign_ray.training_runs import absolute, finish_training_run, folder_identity, open_stage_run

log = logging.getLogger(__name__)

HDPO_SECTIONS = ("data", "references", "model", "generation", "hdpo")
"""Config sections that decide an HDPO run (with the policy, the critic bundle and the SFT samples as inputs)."""
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


IN_PROCESS_SCORING_MAX_TEXTS = 20_000
"""Offline pairs with at most this many answers are scored by the critic in the driver, when its encoder is hashed
n-grams: starting the critic actor pool (process start, imports, bundle load: about 3 s on 2 cores) costs more than
scoring them here (the demo's 1,090 answers: about 1 s). Larger sets, and critics that encode with a language
model, go to the pool, which spreads them over the cluster's actors."""


def critic_distances(
    critic_dir: str,
    critic: Any,
    texts: list[str],
    buckets: list[str],
    prompts: list[dict[str, Any]] | None = None,
) -> list[float]:
    """The critic's distance of each answer in its bucket (under its prompt, critic/prompts.py): in the driver for
    small hashed-n-gram jobs, else by the critic actor pool (the same scores either way: the pool's actors run
    the same ``CriticScorer``)."""
    from polyalign_ray.critic.train import BUNDLE_META

    meta = json.loads((Path(critic_dir) / BUNDLE_META).read_text(encoding="utf-8"))
    if len(texts) <= IN_PROCESS_SCORING_MAX_TEXTS and meta.get("encoder") == "hashed_ngrams":
        from polyalign_ray.critic.scorer import CriticScorer

        # num_threads=0: the driver's torch thread count is left as it is
        return [float(d) for d in CriticScorer(critic_dir, num_threads=0).score(texts, buckets, prompts)]
    from polyalign_ray.distributed.critic_pool import CriticPool

    with CriticPool.from_config(critic_dir, critic) as pool:
        return [float(d) for d in pool.score(texts, buckets, prompts)]


def build_offline_pairs(
    config: PolyAlignConfig, policy: str, critic_dir: str
) -> tuple[dict[str, Any], str, dict[str, Any]]:
    """Offline pairs with distances, weights and reference log-probs; returns what the workers read (``shards``:
    the folder ``OUT/shards/pairs``; ``memory``: the materialized Ray Dataset, also written to
    ``OUT/pairs/pairs.parquet``) and the reconciled counts (also in ``pair_counts.json``)."""
    from polyalign_ray.distributed.batch_generation import sample_answers_with_ray
    from polyalign_ray.distributed.data import prepare_pairs_with_ray, write_bucket_shards_with_ray

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
    texts = [p["chosen"] for p in pairs] + [p["rejected"] for p in pairs]
    prompts = [prompt_view(p) for p in pairs]
    distances = critic_distances(
        critic_dir, config.critic, texts, [p["bucket_id"] for p in pairs] * 2, prompts * 2
    )
    chosen_distance, rejected_distance = distances[: len(pairs)], distances[len(pairs) :]
    weights = offline_pair_weights(
        pairs, chosen_distance, rejected_distance, hdpo, train_bucket_counts(config)
    )
    rows = offline_pair_rows(pairs, chosen_distance, rejected_distance, weights)
    write_jsonl(out / "pairs.jsonl", ({k: r[k] for k in r if k != "history"} for r in rows))
    dataset = prepare_pairs_with_ray(rows, policy, config)
    datasets, shards = {}, ""
    if hdpo.example_store == "shards":
        shards = str(out / "shards" / "pairs")
        kept = write_bucket_shards_with_ray(
            dataset, shards, key_column="pair_id", sum_columns=["weight"], expected_rows=len(rows)
        )["rows"]
    else:
        datasets["pairs"] = dataset.materialize()
        kept = datasets["pairs"].count()
        (out / "pairs").mkdir(parents=True, exist_ok=True)
        pq.write_table(
            pa.concat_tables(list(datasets["pairs"].iter_batches(batch_format="pyarrow", batch_size=None))),
            out / "pairs" / "pairs.parquet",
        )
    counts["dropped_truncated"] = len(pairs) - kept
    counts["pairs"] = kept
    counts["weight_mean"] = float(np.mean(weights))
    counts["chosen_distance_mean"] = float(np.mean(chosen_distance))
    counts["rejected_distance_mean"] = float(np.mean(rejected_distance))
    (out / PAIR_COUNTS_FILE).write_text(json.dumps(counts, indent=1), encoding="utf-8")
    return datasets, shards, counts


def frozen_reference(path: str, model: ModelConfig) -> torch.nn.Module:
    """The starting policy, frozen and in eval mode (``hdpo.reference=frozen_copy``)."""
    reference = load_causal_lm(path, model).eval()
    for parameter in reference.parameters():
        parameter.requires_grad_(False)
    return reference


def hdpo_worker(context: WorkerContext, payload: dict[str, Any]) -> None:
    """What each training worker runs: load the policy, take the pairs (offline) or start the rollout pipeline
    (online, rank 0), build the strategy, run the loop."""
    config = config_from_dict(payload["config"])
    hdpo, model_config = config.hdpo, config.model
    seed_worker(hdpo)
    policy = payload["policy"]
    tokenizer = load_tokenizer(policy)
    model = apply_lora(load_causal_lm(policy, model_config), model_config.lora)

    store: PairStore | None = None
    if hdpo.mode == "offline":
        store = (
            ShardedPairs(payload["shards"])
            if payload.get("shards")
            else InMemoryPairs(pairs_from_table(context.dataset("pairs")))
        )
    total = total_hdpo_steps(hdpo, sum(store.sizes().values()) if store else 0, context.world_size)
    strategy = training_strategy(context, model, hdpo, model_config, total)
    reference = None
    if store is not None:
        source = OfflinePairSource(
            store,
            pairs_per_rank=hdpo.rank_batch_size,
            world_size=context.world_size,
            rank=context.rank,
            seed=hdpo.seed,
            num_steps=total,
        )
        if hdpo.reference == "frozen_copy":
            reference = frozen_reference(policy, model_config).to(strategy.device)
    else:
        from polyalign_ray.distributed.online_pairs import OnlinePairSource

        source = OnlinePairSource(
            strategy,
            config,
            policy=policy,
            critic_dir=payload["critic_dir"],
            records=hdpo_prompt_records(config) if context.rank == 0 else None,
            rarity=bucket_rarity(train_bucket_counts(config)),
        )
    resume_from = context.restore_path
    if resume_from is None and payload.get("resume_from"):
        resume_from = Path(payload["resume_from"])
    run_hdpo(
        strategy,
        source,
        tokenizer,
        hdpo=hdpo,
        total_steps=total,
        output_dir=Path(hdpo.output_dir),
        checkpointer=context.checkpointer,
        resume_from=resume_from,
        reference_model=reference,
        labelled_only=config.model.logits == "labelled",
    )


def run_hdpo_stage(config: PolyAlignConfig, *, resume_from: str = "", fresh: bool = False) -> dict[str, Any]:
    """``polyalign hdpo``: HDPO from the SFT policy (the frozen reference too) with the critic's distances,
    offline or online (``hdpo.mode``); returns the summary. Continued or started over as SFT is."""
    from polyalign_ray.distributed.launcher import launch_training

    hdpo = config.hdpo
    policy = hdpo.policy or str(Path(config.sft.output_dir) / "final")
    if not hdpo.policy and not Path(policy).exists():
        raise FileNotFoundError(f"no SFT model at {policy}: run `polyalign sft` first or set hdpo.policy")
    critic_dir = hdpo.critic or config.critic.output_dir
    if not (Path(critic_dir) / "critic.json").is_file():
        raise FileNotFoundError(
            f"no critic bundle in {critic_dir}: run `polyalign critic` first or set hdpo.critic"
        )
    samples = hdpo.samples or str(Path(config.critic.output_dir) / "samples.jsonl")
    run = open_stage_run(
        config,
        "hdpo",
        HDPO_SECTIONS,
        {
            "policy": folder_identity(policy),
            "critic": folder_identity(critic_dir),
            "samples": folder_identity(samples) if hdpo.mode == "offline" else "",
            "manifest": folder_identity(Path(config.data.output_dir) / "manifest.json"),
        },
        fresh=fresh,
        resume_from=resume_from,
    )
    if Path(policy).exists():  # workers run in another working directory: hand them absolute paths
        policy = str(Path(policy).resolve())
    critic_dir = str(Path(critic_dir).resolve())
    output_dir = Path(hdpo.output_dir).resolve()
    output_dir.mkdir(parents=True, exist_ok=True)
    config = dataclasses.replace(
        config,
        data=dataclasses.replace(config.data, output_dir=str(Path(config.data.output_dir).resolve())),
        hdpo=dataclasses.replace(hdpo, output_dir=str(output_dir)),
    )
    datasets: dict[str, Any] = {}
    counts: dict[str, Any] = {}
    shards = ""
    if hdpo.mode == "offline":
        datasets, shards, counts = build_offline_pairs(config, policy, critic_dir)
    log.info(
        "hdpo (%s): %d workers, ZeRO-%d, %d pairs per step",
        hdpo.mode,
        hdpo.num_workers,
        hdpo.zero_stage,
        hdpo.global_batch_size(hdpo.num_workers),
    )
    payload = {
        "config": config_to_dict(config),
        "policy": policy,
        "critic_dir": critic_dir,
        "resume_from": absolute(run.resume_from),
        "shards": shards,
    }
    summary = launch_training(
        hdpo_worker,
        payload,
        config.hdpo,
        name=run.name,
        output_dir=output_dir,
        datasets=datasets,
        pair_counts=counts,
        config=config,
        stage="hdpo",
    )
    finish_training_run(output_dir, run)
    last = summary.get("last") or {}
    log.info(
        "hdpo (%s): %d steps, reward accuracy %.2f, margin %.3f, expected distance %.3f; model in %s",
        hdpo.mode,
        summary["steps"],
        last.get("rewards/accuracy", float("nan")),
        last.get("rewards/margins", float("nan")),
        last.get("distance/expected", float("nan")),
        summary["final_model"],
    )
    return summary
