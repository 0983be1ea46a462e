"""Pure SFT losses: golden values by hand and the normalization invariants of METHOD.md section 3."""

from __future__ import annotations

import math

import pytest
import torch

from polyalign_ray.losses import (
    IGNORE_INDEX,
    gathered_log_probs,
    labelled_positions,
    response_nll,
    sequence_log_probs,
    sum_by_row,
    token_log_probs,
    weighted_sft_loss,
)


def test_token_log_probs_golden() -> None:
    """Vocab 3, all-zero logits: every token has log-prob -ln 3. Labels [-100, 2, 1]: position 0 predicts label 2
    and position 1 predicts label 1; the first label is never predicted (nothing precedes it)."""
    logits = torch.zeros(1, 3, 3)
    labels = torch.tensor([[IGNORE_INDEX, 2, 1]])
    log_probs, mask = token_log_probs(logits, labels)
    assert mask.tolist() == [[True, True]]
    assert log_probs[0].tolist() == pytest.approx([-math.log(3), -math.log(3)])


def test_masked_positions_contribute_nothing() -> None:
    """logits favour token 0 strongly at every step: log p(0) = 10 - ln(e^10 + 2) = -9.08e-5 (approx);
    log p(1) = -ln(e^10 + 2) = -10.0000908. Prompt and padding labels are masked: only label 1 at position 2 counts."""
    logits = torch.tensor([[[10.0, 0.0, 0.0]] * 4])
    labels = torch.tensor([[IGNORE_INDEX, IGNORE_INDEX, 1, IGNORE_INDEX]])
    total, n_tokens = sequence_log_probs(logits, labels)
    assert n_tokens.tolist() == [1]
    assert total.item() == pytest.approx(-math.log(math.exp(10) + 2), rel=1e-6)
    nll, _ = response_nll(logits, labels)
    assert nll.item() == pytest.approx(math.log(math.exp(10) + 2), rel=1e-6)


def test_weighted_loss_golden_values() -> None:
    """nll sums [2, 6] over [1, 3] tokens, weights [1, 2].
    example: (1 * 2/1 + 2 * 6/3) / 2 examples = (2 + 4) / 2 = 3.
    token:   (1 * 2 + 2 * 6) / 4 tokens = 14 / 4 = 3.5."""
    nll = torch.tensor([2.0, 6.0])
    n = torch.tensor([1, 3])
    w = torch.tensor([1.0, 2.0])
    assert weighted_sft_loss(nll, n, w, normalization="example", denominator=2).item() == pytest.approx(3.0)
    assert weighted_sft_loss(nll, n, w, normalization="token", denominator=4).item() == pytest.approx(3.5)


def test_weights_survive_batch_size_one() -> None:
    """The authors' defect: normalizing weights inside the micro-batch makes w_i / sum(w) = 1 at batch size 1.
    Here a weight-2 example counts twice as much as a weight-1 example."""
    nll, n = torch.tensor([3.0]), torch.tensor([3])
    light = weighted_sft_loss(nll, n, torch.tensor([1.0]), normalization="example", denominator=1)
    heavy = weighted_sft_loss(nll, n, torch.tensor([2.0]), normalization="example", denominator=1)
    assert heavy.item() == pytest.approx(2 * light.item())


@pytest.mark.parametrize("normalization", ["example", "token"])
def test_sum_over_ranks_equals_the_global_loss(normalization: str) -> None:
    """Two ranks each compute their share with the global denominator (examples, or tokens all-reduced); the sum
    of the shares equals the loss of the whole batch on one rank: the 2-rank mean is the global mean."""
    generator = torch.Generator().manual_seed(0)
    nll = torch.rand(8, generator=generator) * 10
    n = torch.randint(1, 20, (8,), generator=generator)
    w = torch.rand(8, generator=generator) + 0.5
    denominator = 8 if normalization == "example" else int(n.sum())
    whole = weighted_sft_loss(nll, n, w, normalization=normalization, denominator=denominator)
    shares = [
        weighted_sft_loss(nll[s], n[s], w[s], normalization=normalization, denominator=denominator)
        for s in (slice(0, 3), slice(3, 8))
    ]
    assert (shares[0] + shares[1]).item() == pytest.approx(whole.item(), rel=1e-6)
    if normalization == "token":
        assert whole.item() == pytest.approx(float((w * nll).sum() / n.sum()), rel=1e-6)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="denominator"):
        weighted_sft_loss(torch.ones(1), torch.ones(1), torch.ones(1), normalization="example", denominator=0)
    with pytest.raises(ValueError, match="normalization"):
        weighted_sft_loss(torch.ones(1), torch.ones(1), torch.ones(1), normalization="batch", denominator=1)


def test_labelled_positions_golden() -> None:
    """Row 0 labels [-100, -100, 7, 8]: positions 1 and 2 predict 7 and 8. Row 1 [-100, 5, -100, -100]: position 0
    predicts 5; the last position of a row never predicts anything."""
    labels = torch.tensor([[IGNORE_INDEX, IGNORE_INDEX, 7, 8], [IGNORE_INDEX, 5, IGNORE_INDEX, IGNORE_INDEX]])
    rows, positions, targets = labelled_positions(labels)
    assert rows.tolist() == [0, 0, 1]
    assert positions.tolist() == [1, 2, 0]
    assert targets.tolist() == [7, 8, 5]


@pytest.mark.parametrize("chunk_rows", [1, 2, 1024])
def test_gathered_log_probs_equal_the_full_log_softmax(chunk_rows: int) -> None:
    """At the labelled positions, the chunked gather equals token_log_probs (an independent path over all
    positions); per-row sums equal sequence_log_probs, and a row without labels sums to 0."""
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 6, 11, generator=generator) * 4
    labels = torch.randint(0, 11, (3, 6), generator=generator)
    labels[0, :3] = IGNORE_INDEX
    labels[1, 4:] = IGNORE_INDEX
    labels[2, :] = IGNORE_INDEX
    rows, positions, targets = labelled_positions(labels)
    gathered = gathered_log_probs(logits[rows, positions], targets, chunk_rows=chunk_rows)
    full, mask = token_log_probs(logits, labels)
    assert torch.allclose(gathered, full[mask], atol=1e-6)
    total, n_tokens = sequence_log_probs(logits, labels)
    assert torch.allclose(sum_by_row(gathered, rows, 3), total, atol=1e-5)
    assert (
        sum_by_row(torch.ones_like(gathered), rows, 3).tolist()
        == n_tokens.float().tolist()
        == [3.0, 3.0, 0.0]
    )


def test_gathered_log_probs_of_nothing() -> None:
    assert gathered_log_probs(torch.zeros(0, 5), torch.zeros(0, dtype=torch.long)).shape == (0,)
