"""Logits only at labelled positions (logprobs.response_log_probs) against the full-logits path, on real models."""

from __future__ import annotations

import pytest
import torch

from polyalign_ray.config import LoraConfig
from polyalign_ray.logprobs import output_head, response_log_probs
from polyalign_ray.losses import IGNORE_INDEX
from polyalign_ray.models import apply_lora


def padded_batch(vocab: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Three rows of other prompt and response lengths, right-padded: 5+4, 2+9, 7+1 tokens of 12."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (3, 12), generator=generator)
    labels = torch.full((3, 12), IGNORE_INDEX)
    mask = torch.zeros(3, 12, dtype=torch.long)
    for row, (prompt, response) in enumerate([(5, 4), (2, 9), (7, 1)]):
        mask[row, : prompt + response] = 1
        labels[row, prompt : prompt + response] = ids[row, prompt : prompt + response]
    return {"input_ids": ids * mask, "attention_mask": mask, "labels": labels}


def both_paths(model: torch.nn.Module, batch: dict[str, torch.Tensor]):
    results = []
    for labelled_only in (True, False):
        model.zero_grad()
        logps, n_tokens = response_log_probs(
            model, batch["input_ids"], batch["attention_mask"], batch["labels"], labelled_only=labelled_only
        )
        (-logps.sum()).backward()
        grads = [p.grad.detach().clone() for p in model.parameters() if p.grad is not None]
        results.append((logps.detach(), n_tokens, grads))
    return results


def test_labelled_only_equals_full_logits_values_and_gradients(tiny_model) -> None:
    """fp32: the same log-probs (1e-5) and gradients (1e-5 relative to the largest) as the full (B, T, V) path,
    and the head sees only the 4 + 9 + 1 = 14 positions followed by a label instead of 3 x 12."""
    seen: list[tuple[int, ...]] = []
    handle = output_head(tiny_model).register_forward_hook(lambda _m, _a, out: seen.append(tuple(out.shape)))
    batch = padded_batch(tiny_model.config.vocab_size)
    (fast, fast_n, fast_grads), (full, full_n, full_grads) = both_paths(tiny_model, batch)
    handle.remove()
    assert seen[0] == (14, tiny_model.config.vocab_size) and len(seen[1]) == 3
    assert fast_n.tolist() == full_n.tolist() == [4, 9, 1]
    assert torch.allclose(fast, full, atol=1e-5)
    assert len(fast_grads) == len(full_grads)
    for a, b in zip(fast_grads, full_grads, strict=True):
        assert torch.allclose(a, b, atol=1e-5 * max(float(b.abs().max()), 1.0))


def test_labelled_only_with_lora_and_bf16(tiny_model) -> None:
    """Through a PEFT wrapper (the head found behind it) and in bf16 (log-softmax in float32 on both paths)."""
    model = apply_lora(
        tiny_model, LoraConfig(enabled=True, r=4, alpha=8, target_modules=("q_proj", "v_proj"))
    )
    assert output_head(model) is not None
    batch = padded_batch(tiny_model.config.vocab_size, seed=1)
    (fast, _, _), (full, _, _) = both_paths(model, batch)
    assert torch.allclose(fast, full, atol=1e-5)
    bf16 = tiny_model.to(torch.bfloat16)
    with torch.no_grad():
        fast16, _ = response_log_probs(bf16, batch["input_ids"], batch["attention_mask"], batch["labels"])
        full16, _ = response_log_probs(
            bf16, batch["input_ids"], batch["attention_mask"], batch["labels"], labelled_only=False
        )
    assert fast16.dtype == torch.float32
    assert torch.allclose(fast16, full16, rtol=2e-2, atol=0.05)


class HeadlessLM(torch.nn.Module):
    """A model with no get_output_embeddings: the function must take the full-logits path."""

    def __init__(self, vocab: int) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(vocab, vocab)

    def forward(self, input_ids, attention_mask):
        return type("Out", (), {"logits": self.embed(input_ids)})()


def test_a_model_without_an_output_head_falls_back() -> None:
    torch.manual_seed(0)
    model = HeadlessLM(20)
    batch = padded_batch(20)
    fast, n_tokens = response_log_probs(model, batch["input_ids"], batch["attention_mask"], batch["labels"])
    full, _ = response_log_probs(
        model, batch["input_ids"], batch["attention_mask"], batch["labels"], labelled_only=False
    )
    assert output_head(model) is None
    assert n_tokens.tolist() == [4, 9, 1] and torch.equal(fast, full)


@pytest.mark.parametrize("labels_everywhere", [False, True])
def test_rows_without_labels_and_fully_labelled_rows(tiny_model, labels_everywhere: bool) -> None:
    batch = padded_batch(tiny_model.config.vocab_size, seed=2)
    if labels_everywhere:
        batch["labels"] = batch["input_ids"].clone()
    else:
        batch["labels"][1] = IGNORE_INDEX
    with torch.no_grad():
        fast, fast_n = response_log_probs(
            tiny_model, batch["input_ids"], batch["attention_mask"], batch["labels"]
        )
        full, full_n = response_log_probs(
            tiny_model, batch["input_ids"], batch["attention_mask"], batch["labels"], labelled_only=False
        )
    assert fast_n.tolist() == full_n.tolist()
    assert torch.allclose(fast, full, atol=1e-4)
