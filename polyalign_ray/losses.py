"""Pure torch loss functions (METHOD.md sections 3 and 5). No state, no distributed calls: the caller passes the
global denominators, so the same function is right on one process and on N data-parallel ranks."""

from __future__ import annotations

import dataclasses
from typing import Literal

import torch

IGNORE_INDEX = -100


def token_log_probs(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(log p(label_t | tokens < t), mask) for every predicted position, both of shape (B, T - 1).

    Position t of ``logits`` predicts ``labels[t + 1]``; labels equal to ``IGNORE_INDEX`` (prompt and padding)
    have mask 0 and log-prob 0. Computed in float32 via logsumexp, so bf16 logits do not lose the small
    differences DPO depends on.
    """
    logits = logits[:, :-1, :].float()
    targets = labels[:, 1:]
    mask = targets != IGNORE_INDEX
    safe_targets = torch.where(mask, targets, torch.zeros_like(targets))
    picked = torch.gather(logits, -1, safe_targets.unsqueeze(-1)).squeeze(-1)
    log_probs = (picked - torch.logsumexp(logits, dim=-1)) * mask
    return log_probs, mask


def sequence_log_probs(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of response-token log-probs, number of response tokens) per example, each of shape (B,)."""
    log_probs, mask = token_log_probs(logits, labels)
    return log_probs.sum(-1), mask.sum(-1)


def labelled_positions(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(row, position, target) of every position whose next token carries a label, each of shape (N,).

    Position t of row b predicts ``labels[b, t + 1]``; only these N positions need logits at all (prompt and
    padding positions are about half of a padded batch here). Row-major order, so each row's positions are
    contiguous.
    """
    mask = labels[:, 1:] != IGNORE_INDEX
    rows, positions = mask.nonzero(as_tuple=True)
    return rows, positions, labels[rows, positions + 1]


def gathered_log_probs(
    logits: torch.Tensor, targets: torch.Tensor, *, chunk_rows: int = 1024
) -> torch.Tensor:
    """log p(target_i) for logits of shape (N, V) and targets (N,), in float32, ``chunk_rows`` rows at a time.

    The float32 log-softmax over the vocabulary is the step's largest elementwise work; by rows it never holds
    more than one chunk's float32 copy of bf16 logits, and it skips the full-size slice ``logits[:, :-1]`` of
    :func:`token_log_probs`. Equal to :func:`token_log_probs` at the same positions (tested).
    """
    if logits.shape[0] == 0:
        return logits.new_zeros((0,), dtype=torch.float32)
    pieces = []
    for start in range(0, logits.shape[0], chunk_rows):
        chunk = logits[start : start + chunk_rows].float()
        picked = chunk.gather(-1, targets[start : start + chunk_rows].unsqueeze(-1)).squeeze(-1)
        pieces.append(picked - torch.logsumexp(chunk, dim=-1))
    return torch.cat(pieces)


def sum_by_row(values: torch.Tensor, rows: torch.Tensor, num_rows: int) -> torch.Tensor:
    """Per-row sums of per-position ``values`` (shape (num_rows,)); rows without a position sum to 0."""
    return values.new_zeros(num_rows).index_add(0, rows, values)


def per_token_mean(logps: torch.Tensor, n_tokens: torch.Tensor) -> torch.Tensor:
    """Summed log-probs divided by each answer's token count (at least 1): what IPO squares in TRL."""
    return logps / n_tokens.clamp(min=1).to(device=logps.device, dtype=logps.dtype)


def response_nll(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed NLL over response tokens, number of response tokens) per example."""
    log_probs, n_tokens = sequence_log_probs(logits, labels)
    return -log_probs, n_tokens


def weighted_sft_loss(
    nll_sum: torch.Tensor,
    n_tokens: torch.Tensor,
    weights: torch.Tensor,
    *,
    normalization: Literal["example", "token"],
    denominator: float,
) -> torch.Tensor:
    """This micro-batch's share of the Bucket-Aware SFT loss of one optimizer step.

    ``example``: sum_i w_i * (nll_sum_i / n_i) / denominator, with denominator = the number of examples in the
    whole optimizer step over all ranks (METHOD.md: per-example token-mean NLL, weighted). ``token``:
    sum_i w_i * nll_sum_i / denominator, with denominator = the response tokens of the whole step, all-reduced.

    The weights enter unnormalized: they were normalized once by their dataset mean. Dividing by their sum in the
    micro-batch would cancel them at batch size 1 (the defect of the authors' code). Summing this value over the
    micro-batches and ranks of a step gives the step's loss, so gradient accumulation and data parallelism do not
    change it.
    """
    if denominator <= 0:
        raise ValueError(f"denominator must be > 0, got {denominator}")
    weights = weights.to(nll_sum.dtype)
    if normalization == "example":
        per_example = nll_sum / n_tokens.clamp(min=1).to(nll_sum.dtype)
        return (weights * per_example).sum() / denominator
    if normalization == "token":
        return (weights * nll_sum).sum() / denominator
    raise ValueError(f"normalization must be 'example' or 'token', got {normalization!r}")


def dpo_loss(
    chosen_logratios: torch.Tensor,
    rejected_logratios: torch.Tensor,
    *,
    beta: float = 0.1,
    loss_type: Literal["sigmoid", "ipo", "cdpo"] = "sigmoid",
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """Per-pair preference loss from log-ratios log pi(y) - log pi_ref(y) of the chosen and rejected answers.

    sigmoid: -log sigma(beta * h); cdpo (label-smoothed): -(1 - eps) log sigma(beta h) - eps log sigma(-beta h);
    ipo: (h - 1 / (2 beta))^2, with h = chosen_logratio - rejected_logratio. At policy = reference h = 0 and the
    sigmoid loss is ln 2.
    """
    h = chosen_logratios - rejected_logratios
    if loss_type == "sigmoid":
        return -torch.nn.functional.logsigmoid(beta * h)
    if loss_type == "cdpo":
        return -(1 - label_smoothing) * torch.nn.functional.logsigmoid(
            beta * h
        ) - label_smoothing * torch.nn.functional.logsigmoid(-beta * h)
    if loss_type == "ipo":
        return (h - 1 / (2 * beta)) ** 2
    raise ValueError(f"loss_type must be sigmoid, ipo or cdpo, got {loss_type!r}")


def pair_weights(
    rarity: torch.Tensor,
    chosen_distance: torch.Tensor,
    rejected_distance: torch.Tensor,
    *,
    a: float = 0.5,
    c: float = 1.0,
    w_min: float = 0.5,
    w_max: float = 3.0,
) -> torch.Tensor:
    """w_i = clip(1 + a * rarity(b_i) + c * max(0, d_r - d_c), w_min, w_max) (METHOD.md section 5)."""
    raw = 1 + a * rarity + c * torch.clamp(rejected_distance - chosen_distance, min=0)
    return torch.clamp(raw, w_min, w_max)


@dataclasses.dataclass
class HDPOOutput:
    """The HDPO loss and its parts (per-pair tensors have shape (B,))."""

    loss: torch.Tensor
    preference_loss: torch.Tensor
    regularizer: torch.Tensor
    sft_loss: torch.Tensor
    per_pair_preference: torch.Tensor
    chosen_rewards: torch.Tensor
    rejected_rewards: torch.Tensor
    preference_probability: torch.Tensor
    expected_distance: torch.Tensor

    def metrics(self) -> dict[str, float]:
        margins = self.chosen_rewards - self.rejected_rewards
        return {
            "loss": float(self.loss.detach()),
            "preference_loss": float(self.preference_loss.detach()),
            "regularizer": float(self.regularizer.detach()),
            "sft_loss": float(self.sft_loss.detach()),
            "rewards/chosen": float(self.chosen_rewards.detach().mean()),
            "rewards/rejected": float(self.rejected_rewards.detach().mean()),
            "rewards/margins": float(margins.detach().mean()),
            "rewards/accuracy": float((margins.detach() > 0).float().mean()),
        }


def hdpo_loss(
    *,
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    reference_chosen_logps: torch.Tensor,
    reference_rejected_logps: torch.Tensor,
    chosen_distance: torch.Tensor,
    rejected_distance: torch.Tensor,
    weights: torch.Tensor | None = None,
    chosen_nll: torch.Tensor | None = None,
    beta: float = 0.1,
    reg_lambda: float = 0.1,
    sft_coef: float = 0.05,
    weight_mean: float = 1.0,
    loss_type: Literal["sigmoid", "ipo", "cdpo"] = "sigmoid",
    label_smoothing: float = 0.0,
) -> HDPOOutput:
    """L = sum_i w_i l_i / (B * w_bar) + lambda * mean_i R_i + gamma * mean_i NLL(y_c) (METHOD.md section 5).

    r = beta * (log pi - log pi_ref); l_i the preference loss of the rewards' margin; q_i = sigma(r_c - r_r);
    R_i = q_i d_c + (1 - q_i) d_r, the expected human-support distance of the answer the policy prefers. R uses
    the reference-normalized margin (the authors' raw policy log-prob margin saturates sigma and has no gradient),
    and w_bar is the dataset mean of the weights (never the batch's). With reg_lambda = sft_coef = 0 and unit
    weights this is exactly DPO.
    """
    chosen_logratios = policy_chosen_logps - reference_chosen_logps
    rejected_logratios = policy_rejected_logps - reference_rejected_logps
    chosen_rewards = beta * chosen_logratios
    rejected_rewards = beta * rejected_logratios
    per_pair = dpo_loss(
        chosen_logratios, rejected_logratios, beta=beta, loss_type=loss_type, label_smoothing=label_smoothing
    )
    batch = per_pair.shape[0]
    if weights is None:
        weights = torch.ones_like(per_pair)
    preference = (weights * per_pair).sum() / (batch * weight_mean)
    q = torch.sigmoid(chosen_rewards - rejected_rewards)
    expected = q * chosen_distance + (1 - q) * rejected_distance
    regularizer = expected.mean()
    sft = chosen_nll.mean() if chosen_nll is not None else torch.zeros((), dtype=per_pair.dtype)
    return HDPOOutput(
        loss=preference + reg_lambda * regularizer + sft_coef * sft,
        preference_loss=preference,
        regularizer=regularizer,
        sft_loss=sft,
        per_pair_preference=per_pair,
        chosen_rewards=chosen_rewards,
        rejected_rewards=rejected_rewards,
        preference_probability=q,
        expected_distance=expected,
    )
