"""Summed response-token log-probs of a causal LM, with vocabulary logits only where a label follows.

Every training loss here (Bucket-Aware SFT's NLL, DPO/HDPO's sequence log-probs, the precomputed reference
log-probs) needs log p(y_t | y_<t) at the response positions only, yet a causal LM's head computes (B, T, V)
logits for every position, prompt and padding included: on the demo about half the positions, and the
float32 log-softmax over them was ~21% of a CPU step (bench/results/sft_throughput_profile.md).

:func:`response_log_probs` runs the model as usual but hands its output head only the hidden states of the
labelled positions, through a forward pre-hook on ``get_output_embeddings()``: the head is a plain linear layer
applied per position, so the logits of the kept rows are the same numbers (up to matmul blocking), and whatever
the model does after the head (Gemma's soft-capping, a logit scale) is elementwise and still applies. DeepSpeed
ZeRO-3's parameter gathering and LoRA adapters are hooks and wrappers around the same modules, so they are
unaffected. A model without an output head we can find, or whose head sees another shape than (B, T, H), gets
the full-logits path (:func:`~polyalign_ray.losses.sequence_log_probs`), which gives the same result.
"""

from __future__ import annotations

from typing import Any

import torch

from polyalign_ray.losses import gathered_log_probs, labelled_positions, sequence_log_probs, sum_by_row


def output_head(model: Any) -> torch.nn.Module | None:
    """The module that maps hidden states to vocabulary logits, through DeepSpeed and PEFT wrappers; or None."""
    inner = getattr(model, "module", model)  # a DeepSpeed engine holds the model as .module
    getter = getattr(inner, "get_output_embeddings", None)
    head = getter() if callable(getter) else None
    return head if isinstance(head, torch.nn.Module) else None


def response_log_probs(
    model: Any,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    labels: torch.Tensor,
    *,
    labelled_only: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of response-token log-probs, number of response tokens) per row, each of shape (B,), float32.

    ``labelled_only`` computes logits only at the N positions followed by a label (see the module docstring);
    False computes them everywhere, the reference path the tests compare with.
    """
    head = output_head(model) if labelled_only else None
    if head is None:
        return sequence_log_probs(model(input_ids=input_ids, attention_mask=attention_mask).logits, labels)
    rows, positions, targets = labelled_positions(labels)
    batch, length = input_ids.shape
    selected = {"done": False}

    def keep_labelled(_module: torch.nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
        hidden = args[0]
        if selected["done"] or hidden.dim() != 3 or tuple(hidden.shape[:2]) != (batch, length):
            return None  # an unexpected call or shape: leave the head alone, the caller falls back
        selected["done"] = True
        return (hidden[rows, positions], *args[1:])

    handle = head.register_forward_pre_hook(keep_labelled)
    try:
        logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
    finally:
        handle.remove()
    if not selected["done"] or logits.dim() != 2:
        return sequence_log_probs(logits, labels)
    n_tokens = sum_by_row(torch.ones_like(targets, dtype=torch.long), rows, batch)
    return sum_by_row(gathered_log_probs(logits, targets), rows, batch), n_tokens
