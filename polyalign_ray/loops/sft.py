"""The Bucket-Aware SFT loop (METHOD.md section 3), readable top to bottom.

Each optimizer step: the bucket-balanced sampler gives this rank its ``micro_batch_size * grad_accum_steps``
examples (every rank computes the same global draw and keeps its slice, so all ranks take the same number of
steps); the denominator of the step's loss is fixed first (examples, or response tokens all-reduced over ranks);
then each micro-batch's forward, weighted loss and backward; then one optimizer step; then metrics summed over
ranks. Checkpoints hold the strategy state (model, optimizer, scheduler), the sampler position and a
``from_pretrained``-loadable model folder, so a resumed run continues with the same batches and the same losses.

The loop knows nothing of Ray or DeepSpeed: it is handed a :class:`~polyalign_ray.loops.strategy.Strategy` and a
:class:`Checkpointer`.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from polyalign_ray.config import SamplerConfig, SFTConfig
from polyalign_ray.logprobs import response_log_probs
from polyalign_ray.loops.checkpoints import (
    Checkpointer,
    maybe_fail,
    maybe_hold,
    save_checkpoint,
    start_or_resume,
    write_metrics_line,
    write_summary,
)
from polyalign_ray.loops.probe import NO_PROBE, StepProbe
from polyalign_ray.loops.strategy import Strategy
from polyalign_ray.losses import weighted_sft_loss
from polyalign_ray.sampler import BucketBalancedSampler, bucket_loss_weights
from polyalign_ray.sft_data import ExampleStore, collate


def total_optimizer_steps(sft: SFTConfig, num_examples: int, world_size: int) -> int:
    """``sft.max_steps``, or ``sft.epochs`` passes of the train split at the global batch size."""
    if sft.max_steps:
        return sft.max_steps
    global_batch = sft.global_batch_size(world_size)
    return max(1, math.ceil(sft.epochs * num_examples / global_batch))


@dataclasses.dataclass
class WindowStats:
    """Sums over the steps since the last log line."""

    steps: int = 0
    loss: float = 0.0
    tokens: float = 0.0
    seconds: float = 0.0
    bucket_counts: torch.Tensor | None = None
    bucket_nll: torch.Tensor | None = None

    def add(
        self, loss: float, tokens: float, seconds: float, counts: torch.Tensor, nll: torch.Tensor
    ) -> None:
        """One optimizer step's global loss, tokens, wall seconds and per-bucket examples and NLL sums."""
        self.steps += 1
        self.loss += loss
        self.tokens += tokens
        self.seconds += seconds
        self.bucket_counts = counts if self.bucket_counts is None else self.bucket_counts + counts
        self.bucket_nll = nll if self.bucket_nll is None else self.bucket_nll + nll


def bucket_sampler(
    sizes: dict[str, int], sft: SFTConfig, sampler_config: SamplerConfig, *, world: int, rank: int, steps: int
) -> tuple[BucketBalancedSampler, dict[str, float]]:
    """The step's draws and the examples' loss weights: ``sampler`` mode draws p(b) ∝ m_b·n_b^α with unit weights;
    ``loss_weights`` mode draws in natural proportions and weights each bucket by w_b = p(b) / (n_b / N)."""
    balanced = sampler_config.mode == "sampler"
    sampler = BucketBalancedSampler(
        sizes,
        batch_size=sft.rank_batch_size,
        alpha=sampler_config.alpha if balanced else 1.0,
        multipliers=sampler_config.multipliers if balanced else None,
        seed=sampler_config.seed,
        world_size=world,
        rank=rank,
        num_steps=steps,
    )
    weight_of = (
        dict.fromkeys(sizes, 1.0)
        if balanced
        else bucket_loss_weights(sizes, sampler_config.alpha, sampler_config.multipliers)
    )
    return sampler, weight_of


def forward_backward(
    strategy: Strategy,
    micro_draws: list[list[tuple[str, int]]],
    batches: list[dict[str, torch.Tensor]],
    weight_of: dict[str, float],
    bucket_index: dict[str, int],
    sft: SFTConfig,
    denominator: float,
    probe: StepProbe = NO_PROBE,
    *,
    labelled_only: bool = True,
) -> tuple[float, torch.Tensor, torch.Tensor]:
    """Each micro-batch's forward, weighted loss (its share of the step's loss: the denominator is the step's)
    and backward; returns this rank's loss sum and the examples and NLL sums per bucket."""
    step_loss = 0.0
    bucket_counts = torch.zeros(len(bucket_index), dtype=torch.float64)
    bucket_nll = torch.zeros(len(bucket_index), dtype=torch.float64)
    for micro, batch in zip(micro_draws, batches, strict=True):
        batch = {k: v.to(strategy.device) for k, v in batch.items()}
        probe.batch(batch)
        with probe.phase("forward"):
            log_probs, n_tokens = response_log_probs(
                strategy.model,
                batch["input_ids"],
                batch["attention_mask"],
                batch["labels"],
                labelled_only=labelled_only,
            )
        with probe.phase("loss"):
            nll_sum = -log_probs
            weights = torch.tensor([weight_of[b] for b, _ in micro], device=nll_sum.device)
            loss = weighted_sft_loss(
                nll_sum, n_tokens, weights, normalization=sft.loss_normalization, denominator=denominator
            )
        with probe.phase("backward"):
            strategy.backward(loss)
        step_loss += float(loss.detach())
        per_example = (nll_sum.detach() / n_tokens.clamp(min=1)).double().cpu()
        for (bucket, _), value in zip(micro, per_example, strict=True):
            bucket_counts[bucket_index[bucket]] += 1
            bucket_nll[bucket_index[bucket]] += value
    return step_loss, bucket_counts, bucket_nll


def log_line(
    step: int,
    window: WindowStats,
    last_loss: float,
    lr: float,
    grad_norm: float,
    cumulative: torch.Tensor,
    bucket_index: dict[str, int],
) -> dict[str, Any]:
    """The metrics line of a log window: mean loss, throughput, cumulative bucket counts, per-bucket loss."""
    return {
        "step": step,
        "loss": window.loss / window.steps,
        "last_loss": last_loss,
        "lr": lr,
        "grad_norm": grad_norm,
        "tokens": window.tokens,
        "tokens_per_s": window.tokens / max(window.seconds, 1e-9),
        "step_seconds": window.seconds / window.steps,
        "bucket_counts": {b: int(cumulative[i]) for b, i in bucket_index.items()},
        "bucket_loss": {
            b: float(window.bucket_nll[i] / window.bucket_counts[i])
            for b, i in bucket_index.items()
            if window.bucket_counts[i] > 0
        },
    }


def step_batches(
    sampler: BucketBalancedSampler, examples: ExampleStore, sft: SFTConfig, pad_id: int
) -> tuple[list[list[tuple[str, int]]], list[dict[str, torch.Tensor]]]:
    """This rank's slice of the step's global draw, cut into ``grad_accum_steps`` micro-batches and collated."""
    draws = sampler.next_batch()
    micro_draws = [
        draws[i * sft.micro_batch_size : (i + 1) * sft.micro_batch_size] for i in range(sft.grad_accum_steps)
    ]
    return micro_draws, [collate(examples.take(m), pad_id) for m in micro_draws]


def loss_denominator(
    strategy: Strategy, sft: SFTConfig, batches: list[dict[str, torch.Tensor]]
) -> tuple[float, int]:
    """The step's loss denominator, fixed before any micro-batch so that accumulating micro-batches gives the same
    gradient as one big batch: the response tokens of every rank (all-reduced) with token normalization, else the
    global batch's examples. Also returns this rank's response tokens."""
    local_tokens = sum(int((b["labels"][:, 1:] != -100).sum()) for b in batches)
    if sft.loss_normalization == "token":
        summed = strategy.all_reduce_sum(torch.tensor([float(local_tokens)], dtype=torch.float64))
        return float(summed[0]), local_tokens
    return float(sft.global_batch_size(strategy.world_size)), local_tokens


def reduce_step_metrics(
    strategy: Strategy, step_loss: float, local_tokens: int, counts: torch.Tensor, nll: torch.Tensor
) -> tuple[float, float, torch.Tensor, torch.Tensor]:
    """The step's loss, response tokens, and per-bucket examples and NLL sums, summed over ranks in one call."""
    reduced = strategy.all_reduce_sum(
        torch.cat([torch.tensor([step_loss, float(local_tokens)], dtype=torch.float64), counts, nll])
    )
    n = len(counts)
    return float(reduced[0]), float(reduced[1]), reduced[2 : 2 + n], reduced[2 + n :]


def sft_summary(
    *,
    total_steps: int,
    first_step: int,
    world: int,
    history: list[float],
    tokens_seen: float,
    wall: float,
    cumulative: torch.Tensor,
    sampler: BucketBalancedSampler,
    sampler_config: SamplerConfig,
    sizes: dict[str, int],
    weight_of: dict[str, float],
    output_dir: Path,
) -> dict[str, Any]:
    """What ``summary.json`` says of a finished run: steps, losses, throughput, bucket counts against the target
    shares, the loss weights and where the final model is."""
    return {
        "steps": total_steps,
        "resumed_from_step": first_step,
        "world_size": world,
        "first_loss": history[0] if history else None,
        "final_loss": history[-1] if history else None,
        "losses": history,
        "tokens_seen": tokens_seen,
        "tokens_per_s": tokens_seen / max(wall, 1e-9),
        "wall_s": wall,
        "bucket_counts": {b: int(cumulative[i]) for i, b in enumerate(sampler.buckets)},
        "bucket_shares_target": sampler.shares
        if sampler_config.mode == "sampler"
        else {b: n / sum(sizes.values()) for b, n in sizes.items()},
        "loss_weights": weight_of,
        "final_model": str(output_dir / "final"),
    }


def run_sft(
    strategy: Strategy,
    examples: ExampleStore,
    tokenizer: Any,
    *,
    sft: SFTConfig,
    sampler_config: SamplerConfig,
    output_dir: Path,
    checkpointer: Checkpointer,
    resume_from: Path | None = None,
    on_log: Callable[[dict[str, Any]], None] | None = None,
    probe: StepProbe = NO_PROBE,
    labelled_only: bool = True,
) -> dict[str, Any]:
    """Train; returns the summary (also written to ``output_dir/summary.json`` by rank 0). ``probe`` observes
    the sections of each step (benchmarks time them through it); ``labelled_only``: logits only where a label
    follows (``model.logits``)."""
    rank, world = strategy.rank, strategy.world_size
    output_dir.mkdir(parents=True, exist_ok=True)
    metrics_path = output_dir / "metrics.jsonl"
    sizes = examples.sizes()
    total_steps = total_optimizer_steps(sft, sum(sizes.values()), world)
    sampler, weight_of = bucket_sampler(sizes, sft, sampler_config, world=world, rank=rank, steps=total_steps)
    bucket_index = {b: i for i, b in enumerate(sampler.buckets)}

    # --- start or resume: strategy state, sampler position, cumulative bucket counts ---
    state = start_or_resume(strategy, resume_from, metrics_path, rank)
    cumulative = torch.zeros(len(sampler.buckets), dtype=torch.float64)
    if state is not None:
        sampler.load_state_dict(state["sampler"])
        cumulative = torch.tensor(state["bucket_counts_vector"], dtype=torch.float64)
    first_step = sampler.step
    window = WindowStats()
    history: list[float] = []
    start = time.perf_counter()
    tokens_seen = 0.0
    strategy.model.train()

    while sampler.step < total_steps:
        # --- batch: this rank's slice of the global draw, and the step's loss denominator ---
        step_start = time.perf_counter()
        with probe.phase("batch"):
            micro_draws, batches = step_batches(sampler, examples, sft, tokenizer.pad_token_id)
        denominator, local_tokens = loss_denominator(strategy, sft, batches)

        # --- forward, loss, backward of each micro-batch ---
        step_loss, bucket_counts, bucket_nll = forward_backward(
            strategy,
            micro_draws,
            batches,
            weight_of,
            bucket_index,
            sft,
            denominator,
            probe,
            labelled_only=labelled_only,
        )

        # --- step ---
        with probe.phase("optimizer_step"):
            grad_norm = strategy.optimizer_step()
        step = sampler.step
        maybe_fail(sft.fail_at_step, step, rank, world, output_dir)
        maybe_hold(sft.hold_at_step, step, rank, output_dir)
        with probe.phase("metrics"):
            global_loss, global_tokens, counts, nll = reduce_step_metrics(
                strategy, step_loss, local_tokens, bucket_counts, bucket_nll
            )
        cumulative += counts
        tokens_seen += global_tokens
        history.append(global_loss)
        window.add(global_loss, global_tokens, time.perf_counter() - step_start, counts, nll)

        # --- log ---
        if step % sft.log_every == 0 or step == total_steps:
            with probe.phase("log"):
                line = log_line(
                    step, window, global_loss, strategy.current_lr(), grad_norm, cumulative, bucket_index
                )
                line["total_steps"] = total_steps
                if rank == 0:
                    write_metrics_line(metrics_path, line)
                if on_log is not None:
                    on_log(line)
            window = WindowStats()

        # --- checkpoint: strategy state, model, sampler position ---
        if (sft.checkpoint_every and step % sft.checkpoint_every == 0) or step == total_steps:
            position = {
                "step": step,
                "total_steps": total_steps,
                "sampler": sampler.state_dict(),
                "bucket_counts_vector": cumulative.tolist(),
                "buckets": sampler.buckets,
            }
            with probe.phase("checkpoint"):
                save_checkpoint(
                    checkpointer, strategy, tokenizer, step=step, loss=global_loss, state=position, rank=rank
                )
        probe.step_end(step)

    # --- the final model and the summary ---
    strategy.export(output_dir / "final", tokenizer, final=True)
    summary = sft_summary(
        total_steps=total_steps,
        first_step=first_step,
        world=world,
        history=history,
        tokens_seen=tokens_seen,
        wall=time.perf_counter() - start,
        cumulative=cumulative,
        sampler=sampler,
        sampler_config=sampler_config,
        sizes=sizes,
        weight_of=weight_of,
        output_dir=output_dir,
    )
    return write_summary(output_dir, summary, rank)
