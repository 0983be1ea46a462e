"""Offline pairs prepared in the driver (hdpo_data.prepare_pairs_in_process): when, and what they carry.

The reference log-probs are checked against an independent computation: each sequence alone (no padding, no
batch), full-vocabulary log-softmax, summed over the labelled next tokens."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from polyalign_ray.config import config_to_dict
from polyalign_ray.hdpo_data import (
    IN_PROCESS_PAIR_WORK_MAX,
    IN_PROCESS_TOKENIZE_MAX_PAIRS,
    prepare_pairs_in_process,
    prepares_pairs_in_process,
)
from polyalign_ray.losses import IGNORE_INDEX
from tests.loops.tiny import TINY, make_records


def test_small_jobs_are_prepared_in_the_driver_and_large_or_remote_ones_by_actors(tmp_path: Path) -> None:
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"\0" * 1000)
    (folder / "tokenizer.json").write_text("{}")  # not a weight file
    most = int(IN_PROCESS_PAIR_WORK_MAX // 1000)
    assert prepares_pairs_in_process(most, str(folder), precompute=True)
    assert not prepares_pairs_in_process(most + 1, str(folder), precompute=True)
    assert not prepares_pairs_in_process(1, "HuggingFaceTB/SmolLM2-135M", precompute=True)  # a hub name
    assert not prepares_pairs_in_process(1, str(tmp_path), precompute=True)  # no weights: unknown size
    # only tokenizing (hdpo.reference=frozen_copy): by count, whatever the model
    assert prepares_pairs_in_process(IN_PROCESS_TOKENIZE_MAX_PAIRS, "org/any", precompute=False)
    assert not prepares_pairs_in_process(IN_PROCESS_TOKENIZE_MAX_PAIRS + 1, str(folder), precompute=False)


def sequence_logp_alone(model: torch.nn.Module, ids: list[int], labels: list[int]) -> float:
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0].double()
    logps = torch.log_softmax(logits[:-1], dim=-1)
    return sum(
        float(logps[i, label]) for i, label in enumerate(labels[1:]) if label != IGNORE_INDEX
    )  # position i predicts token i + 1


def test_pairs_keep_their_order_and_carry_each_sequences_reference_log_prob(
    tiny_model, tiny_tokenizer, tmp_path: Path
) -> None:
    folder = tmp_path / "policy"
    tiny_model.save_pretrained(folder)
    tiny_tokenizer.save_pretrained(folder)
    records = make_records(11, seed=3).to_pylist()
    rows = [
        dict(
            record,
            pair_id=f"p{i}",
            chosen=record["response"],
            rejected=records[i - 1]["response"],
            chosen_distance=0.1,
            rejected_distance=0.5 + i,
            weight=1.0 + i,
        )
        for i, record in enumerate(records)
    ]
    table = prepare_pairs_in_process(rows, str(folder), config_to_dict(TINY), precompute=True, batch_rows=4)
    assert table["pair_id"].to_pylist() == [row["pair_id"] for row in rows]
    assert table["weight"].to_pylist() == [row["weight"] for row in rows]
    tiny_model.eval()
    for row in table.to_pylist():
        for side in ("chosen", "rejected"):
            expected = sequence_logp_alone(tiny_model, row[f"{side}_input_ids"], row[f"{side}_labels"])
            assert row[f"reference_{side}_logps"] == pytest.approx(expected, rel=1e-4, abs=1e-4)
    tokenized_only = prepare_pairs_in_process(
        rows, str(folder), config_to_dict(TINY), precompute=False, batch_rows=4
    )
    assert tokenized_only["chosen_input_ids"].to_pylist() == table["chosen_input_ids"].to_pylist()
    assert all(value != value for value in tokenized_only["reference_chosen_logps"].to_pylist())  # NaN
