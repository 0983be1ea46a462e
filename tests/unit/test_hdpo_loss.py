"""HDPO and DPO losses (METHOD.md section 5): hand-worked values, an independent implementation, invariants."""

from __future__ import annotations

import math

import pytest
import torch

from polyalign_ray.losses import dpo_loss, hdpo_loss, pair_weights


def reference_hdpo(pc, pr, rc, rr, dc, dr, w, nll, beta, lam, gamma, wbar) -> float:
    """METHOD.md's formula written out pair by pair in plain Python floats."""
    total_pref, total_reg = 0.0, 0.0
    for i in range(len(pc)):
        r_c, r_r = beta * (pc[i] - rc[i]), beta * (pr[i] - rr[i])
        ell = -math.log(1 / (1 + math.exp(-(r_c - r_r))))
        q = 1 / (1 + math.exp(-(r_c - r_r)))
        total_pref += w[i] * ell
        total_reg += q * dc[i] + (1 - q) * dr[i]
    n = len(pc)
    return total_pref / (n * wbar) + lam * total_reg / n + gamma * sum(nll) / n


def test_dpo_is_ln2_at_policy_equals_reference() -> None:
    zeros = torch.zeros(4)
    out = hdpo_loss(
        policy_chosen_logps=torch.tensor([-5.0, -3.0, -8.0, -1.0]),
        policy_rejected_logps=torch.tensor([-4.0, -6.0, -2.0, -9.0]),
        reference_chosen_logps=torch.tensor([-5.0, -3.0, -8.0, -1.0]),
        reference_rejected_logps=torch.tensor([-4.0, -6.0, -2.0, -9.0]),
        chosen_distance=zeros,
        rejected_distance=zeros,
        reg_lambda=0.0,
        sft_coef=0.0,
    )
    assert out.per_pair_preference.tolist() == pytest.approx([math.log(2)] * 4)
    assert out.loss.item() == pytest.approx(math.log(2))


def test_golden_value_by_hand() -> None:
    """One pair, beta 0.5: log-ratios chosen +2, rejected -2 -> rewards +1, -1, margin 2.
    l = -log sigma(2) = log(1 + e^-2) = 0.126928; q = sigma(2) = 0.880797.
    d_c = 0.2, d_r = 1.0 -> R = 0.880797 * 0.2 + 0.119203 * 1.0 = 0.295362.
    w = 2, w_bar = 1.6 -> preference term 2 * 0.126928 / 1.6 = 0.158660.
    lambda 0.1, gamma 0.05, NLL 3 -> L = 0.158660 + 0.0295362 + 0.15 = 0.338196."""
    out = hdpo_loss(
        policy_chosen_logps=torch.tensor([-8.0]),
        policy_rejected_logps=torch.tensor([-12.0]),
        reference_chosen_logps=torch.tensor([-10.0]),
        reference_rejected_logps=torch.tensor([-10.0]),
        chosen_distance=torch.tensor([0.2]),
        rejected_distance=torch.tensor([1.0]),
        weights=torch.tensor([2.0]),
        chosen_nll=torch.tensor([3.0]),
        beta=0.5,
        reg_lambda=0.1,
        sft_coef=0.05,
        weight_mean=1.6,
    )
    assert out.per_pair_preference.item() == pytest.approx(0.126928, abs=1e-6)
    assert out.regularizer.item() == pytest.approx(0.295362, abs=1e-6)
    assert out.loss.item() == pytest.approx(0.338196, abs=1e-6)
    assert out.metrics()["rewards/accuracy"] == 1.0


def test_agrees_with_an_independent_implementation_on_random_inputs() -> None:
    generator = torch.Generator().manual_seed(0)
    for _ in range(20):
        n = int(torch.randint(1, 9, (1,), generator=generator))
        t = [torch.randn(n, generator=generator, dtype=torch.float64) * 5 - 20 for _ in range(4)]
        dc, dr = (torch.rand(n, generator=generator, dtype=torch.float64) * 2 for _ in range(2))
        w = torch.rand(n, generator=generator, dtype=torch.float64) * 2.5 + 0.5
        nll = torch.rand(n, generator=generator, dtype=torch.float64) * 4
        beta, lam, gamma, wbar = 0.1, 0.3, 0.05, 1.3
        out = hdpo_loss(
            policy_chosen_logps=t[0],
            policy_rejected_logps=t[1],
            reference_chosen_logps=t[2],
            reference_rejected_logps=t[3],
            chosen_distance=dc,
            rejected_distance=dr,
            weights=w,
            chosen_nll=nll,
            beta=beta,
            reg_lambda=lam,
            sft_coef=gamma,
            weight_mean=wbar,
        )
        expected = reference_hdpo(*(x.tolist() for x in (*t, dc, dr, w, nll)), beta, lam, gamma, wbar)
        assert out.loss.item() == pytest.approx(expected, abs=1e-6)


def test_reduces_to_sigmoid_dpo() -> None:
    generator = torch.Generator().manual_seed(1)
    t = [torch.randn(6, generator=generator) for _ in range(4)]
    out = hdpo_loss(
        policy_chosen_logps=t[0],
        policy_rejected_logps=t[1],
        reference_chosen_logps=t[2],
        reference_rejected_logps=t[3],
        chosen_distance=torch.rand(6, generator=generator),
        rejected_distance=torch.rand(6, generator=generator),
        reg_lambda=0.0,
        sft_coef=0.0,
    )
    plain = dpo_loss(t[0] - t[2], t[1] - t[3], beta=0.1).mean()
    assert out.loss.item() == pytest.approx(plain.item(), abs=1e-7)


def test_regularizer_has_gradient_when_distances_differ() -> None:
    """dR/d(policy chosen logp) = beta * q (1 - q) (d_c - d_r): non-zero whenever d_c != d_r, even at q = 1/2,
    and it pushes the policy toward the closer answer (negative when the chosen is closer)."""
    policy_chosen = torch.tensor([-10.0], requires_grad=True)
    out = hdpo_loss(
        policy_chosen_logps=policy_chosen,
        policy_rejected_logps=torch.tensor([-10.0]),
        reference_chosen_logps=torch.tensor([-10.0]),
        reference_rejected_logps=torch.tensor([-10.0]),
        chosen_distance=torch.tensor([0.2]),
        rejected_distance=torch.tensor([1.0]),
        beta=0.1,
        reg_lambda=1.0,
        sft_coef=0.0,
    )
    out.regularizer.backward()
    assert policy_chosen.grad.item() == pytest.approx(0.1 * 0.25 * (0.2 - 1.0))


def test_loss_variants_golden() -> None:
    """h = 1 (log-ratio margin), beta 0.5: IPO (1 - 1/(2*0.5))^2 = 0; cDPO eps 0.1:
    -0.9 log sigma(0.5) - 0.1 log sigma(-0.5) = 0.9 * 0.474077 + 0.1 * 0.974077 = 0.524077."""
    c, r = torch.tensor([1.0]), torch.tensor([0.0])
    assert dpo_loss(c, r, beta=0.5, loss_type="ipo").item() == pytest.approx(0.0)
    assert dpo_loss(c, r, beta=0.5, loss_type="cdpo", label_smoothing=0.1).item() == pytest.approx(
        0.524077, abs=1e-6
    )
    with pytest.raises(ValueError, match="loss_type"):
        dpo_loss(c, r, loss_type="kto")


def test_pair_weights_golden() -> None:
    """1 + 0.5 * rarity + 1.0 * max(0, d_r - d_c), clipped to [0.5, 3]:
    rarity 0, gap 0.4 -> 1.4; rarity 1, gap 3 -> 4.5 -> 3; rarity 0, gap -1 -> 1 (the clamp of the gap)."""
    w = pair_weights(
        torch.tensor([0.0, 1.0, 0.0]), torch.tensor([0.1, 0.0, 1.0]), torch.tensor([0.5, 3.0, 0.0])
    )
    assert w.tolist() == pytest.approx([1.4, 3.0, 1.0])


def test_ipo_on_per_token_means_as_trl_and_on_sums() -> None:
    """Chosen: policy -4, reference -6 over 4 tokens (log-ratio sum 2, mean 0.5); rejected: policy -3, reference -2
    over 2 tokens (sum -1, mean -0.5). beta = 0.1, target 1 / (2 beta) = 5. Means: h = 1, loss (1 - 5)^2 = 16;
    sums: h = 3, loss (3 - 5)^2 = 4."""
    from polyalign_ray.losses import per_token_mean

    chosen_tokens, rejected_tokens = torch.tensor([4]), torch.tensor([2])
    values = {
        "policy_chosen_logps": torch.tensor([-4.0], dtype=torch.float64),
        "policy_rejected_logps": torch.tensor([-3.0], dtype=torch.float64),
        "reference_chosen_logps": torch.tensor([-6.0], dtype=torch.float64),
        "reference_rejected_logps": torch.tensor([-2.0], dtype=torch.float64),
    }
    counts = {
        "policy_chosen_logps": chosen_tokens,
        "policy_rejected_logps": rejected_tokens,
        "reference_chosen_logps": chosen_tokens,
        "reference_rejected_logps": rejected_tokens,
    }
    common = {"chosen_distance": torch.zeros(1), "rejected_distance": torch.zeros(1), "beta": 0.1}
    common.update(reg_lambda=0.0, sft_coef=0.0, loss_type="ipo")
    means = {k: per_token_mean(v, counts[k]) for k, v in values.items()}
    assert hdpo_loss(**means, **common).loss.item() == pytest.approx(16.0)
    assert hdpo_loss(**values, **common).loss.item() == pytest.approx(4.0)
    assert per_token_mean(torch.tensor([-3.0]), torch.tensor([0])).item() == -3.0  # no token: divided by 1
