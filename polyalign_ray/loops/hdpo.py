"""The HDPO loop (METHOD.md section 5), on the same :class:`~polyalign_ray.loops.strategy.Strategy` as SFT.

Each optimizer step: the pair source hands this rank its ``micro_batch_size * grad_accum_steps`` pairs (offline:
the bucket sampler over the stored pairs, every rank drawing its slice of the same global batch; online: rank 0's
rollout pipeline, broadcast to the ranks). Each micro-batch runs one forward over its 2B sequences (chosen, then
rejected), sums response-token log-probs, and takes :func:`~polyalign_ray.losses.hdpo_loss` scaled by
``B / global pairs``: every term of L is a mean over the step's pairs, so summing the micro-batches' values over
ranks and accumulation steps gives exactly the step's L (grad accumulation and data parallelism do not change it).

Reference log-probs come with the pairs (precomputed by Ray Data offline, by the rollout actor online) or from a
frozen reference model handed to the loop. Metrics are sums over the step's pairs, all-reduced, then averaged over
the log window: rewards/chosen, rewards/rejected, margins, accuracy, the regularizer R, distances and weights.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import numpy as np
import torch

from polyalign_ray.config import HDPOConfig
from polyalign_ray.hdpo_data import PairStore, TokenizedPair, collate_pairs
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
from polyalign_ray.losses import HDPOOutput, hdpo_loss, per_token_mean
from polyalign_ray.sampler import BucketBalancedSampler

SOURCE_STATE_FILE = "pair_source.pt"
ONLINE_DEFAULT_STEPS = 20

# Per-step sums over pairs, all-reduced in one call (the order of this tuple is the vector's layout).
STEP_SUMS = (
    "loss",
    "preference_loss",
    "regularizer",
    "sft_loss",
    "pairs",
    "rewards/chosen",
    "rewards/rejected",
    "rewards/margins",
    "rewards/accuracy",
    "distance/chosen",
    "distance/rejected",
    "distance/expected",
    "weights/mean",
    "logps/chosen",
    "logps/rejected",
)
# Sums already divided by the step's pair count inside the loss (summed over ranks they are the step's value).
STEP_VALUES = ("loss", "preference_loss", "regularizer", "sft_loss")


class PairSource(Protocol):
    """Where a step's pairs come from. ``weight_mean`` is w-bar of METHOD.md (the dataset mean of the weights)."""

    weight_mean: float

    def next_pairs(self, step: int) -> list[TokenizedPair]:
        """This rank's pairs for optimizer step ``step`` (1-based), in micro-batch order."""

    def after_update(self, step: int, *, force_sync: bool) -> None:
        """Called on every rank after optimizer step ``step`` (online: pushes weights to the generator)."""

    def step_metrics(self) -> dict[str, float]:
        """Source-side figures of the last step (online: staleness, waiting time), meaningful on rank 0."""

    def state(self) -> Any:
        """Picklable position (rank 0's is saved with the checkpoint and loaded by every rank)."""

    def load_state(self, state: Any) -> None: ...

    def summary(self) -> dict[str, Any]: ...

    def close(self) -> None: ...


def total_hdpo_steps(hdpo: HDPOConfig, num_pairs: int, world_size: int) -> int:
    """``hdpo.max_steps``; else ``epochs`` passes over ``num_pairs`` offline pairs (online: a fixed default)."""
    if hdpo.max_steps:
        return hdpo.max_steps
    if hdpo.mode == "online":
        return ONLINE_DEFAULT_STEPS
    global_batch = hdpo.global_batch_size(world_size)
    return max(1, math.ceil(hdpo.epochs * num_pairs / global_batch))


class OfflinePairSource:
    """Stored pairs drawn by the bucket sampler at natural frequencies (alpha = 1; rare buckets are up-weighted
    through w's rarity term instead). Every rank computes the same global draw and keeps its slice, and reads only
    those pairs from its store (:class:`~polyalign_ray.hdpo_data.ShardedPairs`, or ``InMemoryPairs``)."""

    def __init__(
        self,
        store: PairStore,
        *,
        pairs_per_rank: int,
        world_size: int,
        rank: int,
        seed: int,
        num_steps: int,
    ):
        sizes = store.sizes()
        if not sum(sizes.values()):
            raise ValueError("no HDPO pairs: every record lacked a usable SFT sample (see the pair counts)")
        self.store = store
        self.sampler = BucketBalancedSampler(
            sizes,
            batch_size=pairs_per_rank,
            alpha=1.0,
            seed=seed,
            world_size=world_size,
            rank=rank,
            num_steps=num_steps,
        )
        self.weight_mean = store.weight_mean()
        self.num_pairs = sum(sizes.values())

    def next_pairs(self, step: int) -> list[TokenizedPair]:
        return self.store.take(self.sampler.next_batch())

    def after_update(self, step: int, *, force_sync: bool) -> None:
        return None

    def step_metrics(self) -> dict[str, float]:
        return {}

    def state(self) -> Any:
        return {"sampler": self.sampler.state_dict()}

    def load_state(self, state: Any) -> None:
        self.sampler.load_state_dict(state["sampler"])

    def summary(self) -> dict[str, Any]:
        return {"pairs": self.num_pairs, "weight_mean": self.weight_mean}

    def close(self) -> None:
        return None


class PairLogProbs(NamedTuple):
    """Summed response log-probs and response token counts of a micro-batch's chosen and rejected answers."""

    chosen: torch.Tensor
    rejected: torch.Tensor
    chosen_tokens: torch.Tensor
    rejected_tokens: torch.Tensor


def pair_log_probs(
    model: torch.nn.Module, batch: dict[str, torch.Tensor], *, labelled_only: bool = True
) -> PairLogProbs:
    """(chosen log-probs, rejected log-probs, chosen token counts, rejected token counts) of a collated pair batch:
    one forward over the 2B rows, so chosen and rejected share the step's weights and kernels."""
    logps, n_tokens = response_log_probs(
        model, batch["input_ids"], batch["attention_mask"], batch["labels"], labelled_only=labelled_only
    )
    half = logps.shape[0] // 2
    return PairLogProbs(logps[:half], logps[half:], n_tokens[:half], n_tokens[half:])


def micro_batch_step(
    model: torch.nn.Module,
    batch: dict[str, torch.Tensor],
    *,
    hdpo: HDPOConfig,
    weight_mean: float,
    global_pairs: int,
    reference_model: torch.nn.Module | None = None,
    probe: StepProbe = NO_PROBE,
    labelled_only: bool = True,
) -> tuple[torch.Tensor, dict[str, float]]:
    """This micro-batch's share of the step's HDPO loss (to backpropagate) and its sums for the metrics."""
    if reference_model is not None:
        with torch.no_grad(), probe.phase("reference"):
            ref_chosen, ref_rejected, _, _ = pair_log_probs(
                reference_model, batch, labelled_only=labelled_only
            )
        reference_chosen, reference_rejected = ref_chosen.double(), ref_rejected.double()
    else:
        reference_chosen, reference_rejected = (
            batch["reference_chosen_logps"],
            batch["reference_rejected_logps"],
        )
        if torch.isnan(reference_chosen).any() or torch.isnan(reference_rejected).any():
            raise ValueError(
                "pairs carry no reference log-probs and the loop has no reference model: precompute them "
                "(hdpo.reference=precompute) or pass the frozen reference"
            )
    with probe.phase("forward"):
        policy = pair_log_probs(model, batch, labelled_only=labelled_only)
    with probe.phase("loss"):
        out, sums = pair_loss_and_sums(
            batch,
            policy,
            reference_chosen,
            reference_rejected,
            hdpo=hdpo,
            weight_mean=weight_mean,
            global_pairs=global_pairs,
        )
    return out.loss * (policy.chosen.shape[0] / global_pairs), sums


def pair_loss_and_sums(
    batch: dict[str, torch.Tensor],
    policy: PairLogProbs,
    reference_chosen: torch.Tensor,
    reference_rejected: torch.Tensor,
    *,
    hdpo: HDPOConfig,
    weight_mean: float,
    global_pairs: int,
) -> tuple[HDPOOutput, dict[str, float]]:
    """hdpo_loss of a micro-batch from its log-probs, and the per-pair sums the step's metrics are made of."""
    policy_chosen, policy_rejected, chosen_tokens, rejected_tokens = policy
    device = policy_chosen.device
    pairs = policy_chosen.shape[0]
    chosen_nll = -policy_chosen / chosen_tokens.clamp(min=1)
    logps = [
        policy_chosen.double(),
        policy_rejected.double(),
        reference_chosen.to(device),
        reference_rejected.to(device),
    ]
    if hdpo.loss_type == "ipo" and hdpo.ipo_logps == "token_mean":
        counts = [chosen_tokens, rejected_tokens, chosen_tokens, rejected_tokens]
        logps = [per_token_mean(value, count) for value, count in zip(logps, counts, strict=True)]
    out = hdpo_loss(
        policy_chosen_logps=logps[0],
        policy_rejected_logps=logps[1],
        reference_chosen_logps=logps[2],
        reference_rejected_logps=logps[3],
        chosen_distance=batch["chosen_distance"].to(device),
        rejected_distance=batch["rejected_distance"].to(device),
        weights=batch["weight"].to(device),
        chosen_nll=chosen_nll.double(),
        beta=hdpo.beta,
        reg_lambda=hdpo.reg_lambda,
        sft_coef=hdpo.sft_coef,
        weight_mean=weight_mean,
        loss_type=hdpo.loss_type,
        label_smoothing=hdpo.label_smoothing,
    )
    share = pairs / global_pairs
    margins = (out.chosen_rewards - out.rejected_rewards).detach()
    sums = {
        "loss": float(out.loss.detach()) * share,
        "preference_loss": float(out.preference_loss.detach()) * share,
        "regularizer": float(out.regularizer.detach()) * share,
        "sft_loss": float(out.sft_loss.detach()) * share,
        "pairs": float(pairs),
        "rewards/chosen": float(out.chosen_rewards.detach().sum()),
        "rewards/rejected": float(out.rejected_rewards.detach().sum()),
        "rewards/margins": float(margins.sum()),
        "rewards/accuracy": float((margins > 0).double().sum()),
        "distance/chosen": float(batch["chosen_distance"].sum()),
        "distance/rejected": float(batch["rejected_distance"].sum()),
        "distance/expected": float(out.expected_distance.detach().sum()),
        "weights/mean": float(batch["weight"].sum()),
        "logps/chosen": float(policy_chosen.detach().sum()),
        "logps/rejected": float(policy_rejected.detach().sum()),
    }
    return out, sums


def window_line(step: int, window: list[np.ndarray], seconds: float) -> dict[str, Any]:
    """The log line of a window of steps: step values averaged over steps, pair sums averaged over pairs."""
    total = np.sum(window, axis=0)
    pairs = max(total[STEP_SUMS.index("pairs")], 1.0)
    line: dict[str, Any] = {"step": step}
    for i, name in enumerate(STEP_SUMS):
        if name == "pairs":
            line["pairs"] = int(total[i])
        elif name in STEP_VALUES:
            line[name] = float(total[i] / len(window))
        else:
            line[name] = float(total[i] / pairs)
    line["step_seconds"] = seconds / len(window)
    line["pairs_per_s"] = float(total[STEP_SUMS.index("pairs")] / max(seconds, 1e-9))
    return line


def accumulate_step(
    strategy: Strategy,
    pairs: list[TokenizedPair],
    *,
    hdpo: HDPOConfig,
    pad_id: int,
    weight_mean: float,
    global_pairs: int,
    reference_model: torch.nn.Module | None,
    probe: StepProbe,
    labelled_only: bool,
) -> np.ndarray:
    """Forward, loss and backward of each of the step's ``grad_accum_steps`` micro-batches (gradients accumulate in
    the strategy); returns this rank's :data:`STEP_SUMS` vector."""
    sums = np.zeros(len(STEP_SUMS), dtype=np.float64)
    for k in range(hdpo.grad_accum_steps):
        chunk = pairs[k * hdpo.micro_batch_size : (k + 1) * hdpo.micro_batch_size]
        with probe.phase("batch"):
            batch = {key: value.to(strategy.device) for key, value in collate_pairs(chunk, pad_id).items()}
        probe.batch(batch)
        loss, micro_sums = micro_batch_step(
            strategy.model,
            batch,
            hdpo=hdpo,
            weight_mean=weight_mean,
            global_pairs=global_pairs,
            reference_model=reference_model,
            probe=probe,
            labelled_only=labelled_only,
        )
        with probe.phase("backward"):
            strategy.backward(loss)
        sums += np.asarray([micro_sums[name] for name in STEP_SUMS])
    return sums


def resume_step(
    strategy: Strategy, source: PairSource, resume_from: Path | None, metrics_path: Path, rank: int
) -> int:
    """The step to start from: 0, or the checkpoint's step with the strategy state and the pair source's
    position loaded (a fresh online generator is sent the resumed weights)."""
    state = start_or_resume(strategy, resume_from, metrics_path, rank)
    if state is None:
        return 0
    source.load_state(torch.load(resume_from / SOURCE_STATE_FILE, weights_only=False))
    step = int(state["step"])
    source.after_update(step, force_sync=True)
    return step


def run_hdpo(
    strategy: Strategy,
    source: PairSource,
    tokenizer: Any,
    *,
    hdpo: HDPOConfig,
    total_steps: int,
    output_dir: Path,
    checkpointer: Checkpointer,
    resume_from: Path | None = None,
    reference_model: torch.nn.Module | None = None,
    on_log: Callable[[dict[str, Any]], None] | None = None,
    on_step: Callable[[int], None] | None = None,
    probe: StepProbe = NO_PROBE,
    labelled_only: bool = True,
) -> dict[str, Any]:
    """Train; returns the summary (also written to ``output_dir/summary.json`` by rank 0). ``probe`` observes
    the sections of each step (benchmarks time them through it); ``labelled_only``: logits only where a label
    follows (``model.logits``)."""
    rank, world = strategy.rank, strategy.world_size
    output_dir.mkdir(parents=True, exist_ok=True)
    metrics_path = output_dir / "metrics.jsonl"
    pairs_per_rank = hdpo.rank_batch_size
    global_pairs = pairs_per_rank * world

    # --- start or resume: strategy state, the pair source's position ---
    step = first_step = resume_step(strategy, source, resume_from, metrics_path, rank)
    window: list[np.ndarray] = []
    window_seconds = 0.0
    history: list[dict[str, Any]] = []
    start = time.perf_counter()
    pairs_seen = 0.0
    strategy.model.train()

    while step < total_steps:
        # --- batch: this rank's pairs ---
        step_start = time.perf_counter()
        with probe.phase("batch"):
            pairs = source.next_pairs(step + 1)
        if len(pairs) != pairs_per_rank:
            raise RuntimeError(f"pair source gave {len(pairs)} pairs, expected {pairs_per_rank} per rank")

        # --- forward, loss, backward of each micro-batch ---
        sums = accumulate_step(
            strategy,
            pairs,
            hdpo=hdpo,
            pad_id=tokenizer.pad_token_id,
            weight_mean=source.weight_mean,
            global_pairs=global_pairs,
            reference_model=reference_model,
            probe=probe,
            labelled_only=labelled_only,
        )

        # --- step (and the new weights to the pair source) ---
        with probe.phase("optimizer_step"):
            grad_norm = strategy.optimizer_step()
        step += 1
        maybe_fail(hdpo.fail_at_step, step, rank, world, output_dir)
        maybe_hold(hdpo.hold_at_step, step, rank, output_dir)
        with probe.phase("metrics"):
            reduced = strategy.all_reduce_sum(torch.from_numpy(sums)).numpy()
        checkpoint_now = (hdpo.checkpoint_every and step % hdpo.checkpoint_every == 0) or step == total_steps
        source.after_update(step, force_sync=bool(checkpoint_now))
        pairs_seen += reduced[STEP_SUMS.index("pairs")]
        window.append(reduced)
        window_seconds += time.perf_counter() - step_start
        if on_step is not None:
            on_step(step)

        # --- log ---
        if step % hdpo.log_every == 0 or step == total_steps:
            with probe.phase("log"):
                line = window_line(step, window, window_seconds)
                line["total_steps"] = total_steps
                line.update({"lr": strategy.current_lr(), "grad_norm": grad_norm, **source.step_metrics()})
                history.append(line)
                if rank == 0:
                    write_metrics_line(metrics_path, line)
                if on_log is not None:
                    on_log(line)
            window, window_seconds = [], 0.0

        # --- checkpoint: strategy state, model, the pair source's position (drained on rank 0) ---
        if checkpoint_now:
            with probe.phase("checkpoint"):
                source_state = source.state()
                save_checkpoint(
                    checkpointer,
                    strategy,
                    tokenizer,
                    step=step,
                    loss=float(reduced[0]),
                    state={"step": step, "total_steps": total_steps},
                    rank=rank,
                    write_extra=lambda directory, saved=source_state: torch.save(
                        saved, directory / SOURCE_STATE_FILE
                    ),
                )
        probe.step_end(step)

    # --- the final model and the summary ---
    strategy.export(output_dir / "final", tokenizer, final=True)
    wall = time.perf_counter() - start
    summary = {
        "mode": hdpo.mode,
        "steps": total_steps,
        "resumed_from_step": first_step,
        "world_size": world,
        "pairs_per_step": global_pairs,
        "pairs_seen": int(pairs_seen),
        "pairs_per_s": pairs_seen / max(wall, 1e-9),
        "wall_s": wall,
        "first": history[0] if history else None,
        "last": history[-1] if history else None,
        "source": source.summary(),
        "final_model": str(output_dir / "final"),
    }
    source.close()
    return write_summary(output_dir, summary, rank)
