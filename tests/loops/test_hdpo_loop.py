"""The HDPO loop on the local strategy: ln 2 at init, accuracy rises, grad accumulation, resume, frozen reference."""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import random
from pathlib import Path

import pytest
import torch

from polyalign_ray.config import HDPOConfig
from polyalign_ray.hdpo_data import (
    InMemoryPairs,
    TokenizedPair,
    bucket_rarity,
    reference_sequence_logps,
    tokenize_answer,
    weights_for_pairs,
)
from polyalign_ray.loops.checkpoints import LocalCheckpointer
from polyalign_ray.loops.hdpo import OfflinePairSource, run_hdpo, total_hdpo_steps
from polyalign_ray.loops.strategy import LocalStrategy
from tests.loops.tiny import TINY, make_records


def make_pairs(model, tokenizer, n: int = 64, *, with_reference: bool = True) -> list[TokenizedPair]:
    """chosen = the record's answer, rejected = another record's answer of a different bucket (a clear signal);
    distances: human 0.2, rejected 1.0 + a little noise."""
    records = make_records(n, seed=3).to_pylist()
    rng = random.Random(0)
    out = []
    for i, record in enumerate(records):
        other = next(r for r in records[i + 1 :] + records[:i] if r["bucket_id"] != record["bucket_id"])
        chosen = tokenize_answer(
            tokenizer, record, record["response"], max_length=TINY.max_length, profile_conditioning=False
        )
        rejected = tokenize_answer(
            tokenizer, record, other["response"], max_length=TINY.max_length, profile_conditioning=False
        )
        out.append(
            TokenizedPair(
                bucket_id=record["bucket_id"],
                chosen_ids=chosen[0],
                chosen_labels=chosen[1],
                rejected_ids=rejected[0],
                rejected_labels=rejected[1],
                chosen_distance=0.2,
                rejected_distance=1.0 + rng.random() * 0.5,
                weight=1.0,
                pair_id=f"{record['id']}#s0",
            )
        )
    rarity = bucket_rarity({b: sum(p.bucket_id == b for p in out) for b in {p.bucket_id for p in out}})
    weights = weights_for_pairs(
        [p.bucket_id for p in out],
        [p.chosen_distance for p in out],
        [p.rejected_distance for p in out],
        rarity,
        a=0.5,
        c=1.0,
        w_min=0.5,
        w_max=3.0,
    )
    for pair, weight in zip(out, weights, strict=True):
        pair.weight = float(weight)
    if with_reference:
        chosen = reference_sequence_logps(
            model, [(p.chosen_ids, p.chosen_labels) for p in out], tokenizer.pad_token_id
        )
        rejected = reference_sequence_logps(
            model, [(p.rejected_ids, p.rejected_labels) for p in out], tokenizer.pad_token_id
        )
        for pair, c, r in zip(out, chosen, rejected, strict=True):
            pair.reference_chosen_logps, pair.reference_rejected_logps = float(c), float(r)
    return out


def train(
    model, tokenizer, hdpo: HDPOConfig, pairs, out: Path, *, resume_from=None, reference=None, optimizer=None
):
    total = total_hdpo_steps(hdpo, len(pairs), 1)
    strategy = LocalStrategy.for_section(model, hdpo, total, optimizer)
    source = OfflinePairSource(
        InMemoryPairs(pairs),
        pairs_per_rank=hdpo.rank_batch_size,
        world_size=1,
        rank=0,
        seed=hdpo.seed,
        num_steps=total,
    )
    lines: list[dict] = []
    summary = run_hdpo(
        strategy,
        source,
        tokenizer,
        hdpo=hdpo,
        total_steps=total,
        output_dir=out,
        checkpointer=LocalCheckpointer(out / "checkpoints", keep=5),
        resume_from=resume_from,
        reference_model=reference,
        on_log=lines.append,
    )
    return summary, lines, strategy


def test_first_step_preference_loss_is_ln2_and_accuracy_rises(
    tiny_model, tiny_tokenizer, tmp_path: Path
) -> None:
    pairs = make_pairs(tiny_model, tiny_tokenizer)
    hdpo = HDPOConfig(
        micro_batch_size=8, max_steps=24, lr=3e-3, warmup_steps=0, log_every=1, lr_schedule="constant"
    )
    _, lines, _ = train(tiny_model, tiny_tokenizer, hdpo, pairs, tmp_path)
    first = lines[0]
    # every l_i = ln 2 at init: the weighted term is ln 2 * (mean w of the batch) / w_bar
    assert first["preference_loss"] == pytest.approx(
        math.log(2) * first["weights/mean"] / pairs_weight_mean(pairs), rel=1e-6
    )
    assert first["rewards/margins"] == pytest.approx(0.0, abs=1e-5)
    late = lines[-6:]
    assert sum(x["rewards/accuracy"] for x in late) / len(late) > 0.7
    assert sum(x["rewards/margins"] for x in late) / len(late) > 0
    assert lines[-1]["distance/expected"] < lines[0]["distance/expected"]
    written = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in written] == list(range(1, 25))
    for key in ("rewards/chosen", "rewards/rejected", "regularizer", "distance/chosen", "weights/mean", "lr"):
        assert key in written[-1]
    assert json.loads((tmp_path / "summary.json").read_text())["pairs_seen"] == 24 * 8
    assert (tmp_path / "final" / "config.json").is_file()


def pairs_weight_mean(pairs) -> float:
    return sum(p.weight for p in pairs) / len(pairs)


def test_weighted_preference_term_at_init_is_ln2_times_weight_ratio(
    tiny_model, tiny_tokenizer, tmp_path: Path
) -> None:
    """At policy = reference every l_i = ln 2, so the first step's preference term is ln 2 * mean(w in batch) / w_bar;
    with unit weights it is exactly ln 2 (the DPO invariant)."""
    pairs = make_pairs(tiny_model, tiny_tokenizer, n=32)
    for pair in pairs:
        pair.weight = 1.0
    hdpo = HDPOConfig(micro_batch_size=4, max_steps=1, log_every=1, reg_lambda=0.0, sft_coef=0.0)
    _, lines, _ = train(tiny_model, tiny_tokenizer, hdpo, pairs, tmp_path)
    assert lines[0]["preference_loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert lines[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)


def test_gradient_accumulation_matches_one_big_batch(tiny_model, tiny_tokenizer, tmp_path: Path) -> None:
    pairs = make_pairs(tiny_model, tiny_tokenizer, n=48)
    base = HDPOConfig(max_steps=3, lr=0.05, warmup_steps=0, max_grad_norm=0.0, log_every=1)
    sgd = lambda params: torch.optim.SGD(params, lr=0.05)  # noqa: E731
    one = copy.deepcopy(tiny_model)
    two = copy.deepcopy(tiny_model)
    _, lines_one, s_one = train(
        one,
        tiny_tokenizer,
        dataclasses.replace(base, micro_batch_size=8),
        pairs,
        tmp_path / "a",
        optimizer=sgd,
    )
    _, lines_two, s_two = train(
        two,
        tiny_tokenizer,
        dataclasses.replace(base, micro_batch_size=2, grad_accum_steps=4),
        pairs,
        tmp_path / "b",
        optimizer=sgd,
    )
    for a, b in zip(lines_one, lines_two, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-6)
        assert a["rewards/margins"] == pytest.approx(b["rewards/margins"], rel=1e-4, abs=1e-6)
    for p, q in zip(s_one.model.parameters(), s_two.model.parameters(), strict=True):
        assert torch.allclose(p, q, atol=1e-6)


def test_resume_equals_uninterrupted(tiny_model, tiny_tokenizer, tmp_path: Path) -> None:
    pairs = make_pairs(tiny_model, tiny_tokenizer, n=48)
    hdpo = HDPOConfig(
        micro_batch_size=4, max_steps=10, checkpoint_every=4, log_every=1, lr=3e-3, warmup_steps=2
    )
    full_model = copy.deepcopy(tiny_model)
    _, full_lines, full = train(full_model, tiny_tokenizer, hdpo, pairs, tmp_path / "full")
    checkpoint = tmp_path / "full" / "checkpoints" / "step_000004"
    assert checkpoint.is_dir()
    _, resumed_lines, resumed = train(
        copy.deepcopy(tiny_model), tiny_tokenizer, hdpo, pairs, tmp_path / "resumed", resume_from=checkpoint
    )
    assert [x["step"] for x in resumed_lines] == list(range(5, 11))
    for a, b in zip(full_lines[4:], resumed_lines, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-9)
        assert a["rewards/accuracy"] == b["rewards/accuracy"]
    for p, q in zip(full.model.parameters(), resumed.model.parameters(), strict=True):
        assert torch.equal(p, q)


def test_frozen_reference_copy_equals_precomputed(tiny_model, tiny_tokenizer, tmp_path: Path) -> None:
    precomputed = make_pairs(tiny_model, tiny_tokenizer, n=32)
    bare = make_pairs(tiny_model, tiny_tokenizer, n=32, with_reference=False)
    hdpo = HDPOConfig(micro_batch_size=4, max_steps=4, log_every=1, lr=3e-3, warmup_steps=0)
    reference = copy.deepcopy(tiny_model).eval()
    for p in reference.parameters():
        p.requires_grad_(False)
    _, lines_a, _ = train(copy.deepcopy(tiny_model), tiny_tokenizer, hdpo, precomputed, tmp_path / "a")
    _, lines_b, _ = train(
        copy.deepcopy(tiny_model), tiny_tokenizer, hdpo, bare, tmp_path / "b", reference=reference
    )
    for a, b in zip(lines_a, lines_b, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
    with pytest.raises(ValueError, match="reference log-probs"):
        train(copy.deepcopy(tiny_model), tiny_tokenizer, hdpo, bare, tmp_path / "c")


@pytest.mark.parametrize("ipo_logps", ["token_mean", "sum"])
def test_ipo_step_uses_the_configured_log_prob_reduction(tiny_model, tiny_tokenizer, ipo_logps: str) -> None:
    """micro_batch_step with loss_type ipo gives hdpo_loss of the per-token means (TRL's IPO) or of the sums."""
    from polyalign_ray.hdpo_data import collate_pairs
    from polyalign_ray.loops.hdpo import micro_batch_step, pair_log_probs
    from polyalign_ray.losses import hdpo_loss, per_token_mean

    pairs = make_pairs(tiny_model, tiny_tokenizer)[:4]
    batch = collate_pairs(pairs, tiny_tokenizer.pad_token_id)
    hdpo = HDPOConfig(loss_type="ipo", ipo_logps=ipo_logps, reg_lambda=0.0, sft_coef=0.0)
    with torch.no_grad():
        loss, _ = micro_batch_step(tiny_model, batch, hdpo=hdpo, weight_mean=1.0, global_pairs=4)
        pc, pr, nc, nr = pair_log_probs(tiny_model, batch)
    values = [pc.double(), pr.double(), batch["reference_chosen_logps"], batch["reference_rejected_logps"]]
    if ipo_logps == "token_mean":
        values = [per_token_mean(v, n) for v, n in zip(values, [nc, nr, nc, nr], strict=True)]
    expected = hdpo_loss(
        policy_chosen_logps=values[0],
        policy_rejected_logps=values[1],
        reference_chosen_logps=values[2],
        reference_rejected_logps=values[3],
        chosen_distance=batch["chosen_distance"],
        rejected_distance=batch["rejected_distance"],
        weights=batch["weight"],
        beta=hdpo.beta,
        reg_lambda=0.0,
        sft_coef=0.0,
        loss_type="ipo",
    )
    assert loss.item() == pytest.approx(expected.loss.item(), rel=1e-9)
