"""Pure torch loss functions (METHOD.md sections 3 and 5). No state, no distributed calls: the caller passes the
global denominators, so the same function is right on one process and on N data-parallel ranks."""

from __future__ import annotations

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
