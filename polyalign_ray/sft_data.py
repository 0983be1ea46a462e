"""Training examples for Bucket-Aware SFT: records -> token ids and labels (tokenized once, by Ray Data tasks on a
cluster), and the stores the bucket-balanced sampler draws from: :class:`ShardedSFTExamples` reads each drawn row
from per-bucket shards (``bucket_shards.py``, the default), :class:`SFTExamples` holds every row in memory.

Labels are -100 on everything the model must not be trained to produce: the prompt, the padding, and (unless
``train_history_turns``) the earlier turns. With ``train_history_turns`` the assistant turns of the history are
trained too, each rendered exactly as the prompt renderer renders that prefix of the conversation.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import numpy as np
import pyarrow as pa
import torch

from polyalign_ray.bucket_shards import BucketShardReader
from polyalign_ray.losses import IGNORE_INDEX
from polyalign_ray.prompting import encode_prompt_response, render_prompt
from polyalign_ray.sampler import bucket_row_indices

TOKENIZED_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("bucket_id", pa.string()),
        ("input_ids", pa.list_(pa.int32())),
        ("labels", pa.list_(pa.int32())),
    ]
)


def example_ids_and_labels(
    tokenizer: Any, record: Mapping[str, Any], *, max_length: int, profile_conditioning: bool
) -> tuple[list[int], list[int]]:
    """Token ids of a record's prompt + response, and labels that train only the response tokens."""
    prompt_text = render_prompt(tokenizer, record, profile_conditioning=profile_conditioning)
    ids, response_start = encode_prompt_response(
        tokenizer, prompt_text, str(record["response"]), max_length=max_length
    )
    return ids, [IGNORE_INDEX] * response_start + ids[response_start:]


def history_turn_examples(record: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The earlier assistant turns of a record as records of their own (same bucket attributes), for
    ``train_history_turns``: each answers the user turn before it, with the turns before that as history."""
    history = list(record.get("history") or [])
    out = []
    for i, turn in enumerate(history):
        if turn["role"] == "assistant" and i > 0 and history[i - 1]["role"] == "user":
            out.append(
                {
                    **record,
                    "prompt": history[i - 1]["content"],
                    "context": "",
                    "history": history[: i - 1],
                    "response": turn["content"],
                }
            )
    return out


def tokenize_records(
    records: pa.Table,
    tokenizer: Any,
    *,
    max_length: int,
    profile_conditioning: bool,
    train_history_turns: bool = False,
) -> pa.Table:
    """Records -> :data:`TOKENIZED_SCHEMA` rows (one per record, plus one per earlier assistant turn when
    ``train_history_turns``)."""
    out: dict[str, list] = {"id": [], "bucket_id": [], "input_ids": [], "labels": []}
    for record in records.to_pylist():
        examples = [record, *(history_turn_examples(record) if train_history_turns else [])]
        for k, example in enumerate(examples):
            ids, labels = example_ids_and_labels(
                tokenizer, example, max_length=max_length, profile_conditioning=profile_conditioning
            )
            out["id"].append(record["id"] if k == 0 else f"{record['id']}#h{k}")
            out["bucket_id"].append(record["bucket_id"])
            out["input_ids"].append(ids)
            out["labels"].append(labels)
    return pa.Table.from_pydict(out, schema=TOKENIZED_SCHEMA)


Example = tuple[np.ndarray, np.ndarray]
"""One training example: token ids and labels (int64)."""


class ExampleStore(Protocol):
    """What the SFT loop draws examples from: rows per bucket, and the rows of ``(bucket, index)`` draws, index
    in the bucket's id order (the same order in every store, so every store gives a run the same batches)."""

    def sizes(self) -> dict[str, int]: ...

    def take(self, draws: Sequence[tuple[str, int]]) -> list[Example]: ...


@dataclasses.dataclass
class SFTExamples:
    """Tokenized examples grouped by bucket, in a deterministic order (sorted by id), for index-based sampling."""

    buckets: dict[str, list[tuple[np.ndarray, np.ndarray]]]

    @classmethod
    def from_table(cls, table: pa.Table) -> SFTExamples:
        table = table.sort_by("id")
        ids = table["input_ids"].to_pylist()
        labels = table["labels"].to_pylist()
        rows = bucket_row_indices(table["bucket_id"].to_pylist())
        return cls(
            {
                bucket: [
                    (np.asarray(ids[i], dtype=np.int64), np.asarray(labels[i], dtype=np.int64))
                    for i in indices
                ]
                for bucket, indices in rows.items()
            }
        )

    def sizes(self) -> dict[str, int]:
        return {b: len(v) for b, v in self.buckets.items()}

    def take(self, draws: Sequence[tuple[str, int]]) -> list[Example]:
        return [self.buckets[b][i] for b, i in draws]


class ShardedSFTExamples:
    """Examples read from a shard folder of :data:`TOKENIZED_SCHEMA` rows keyed by ``id`` (what
    ``write_bucket_shards_with_ray`` writes for the SFT stage): each rank reads only the rows it draws."""

    def __init__(self, directory: str, **reader_options: int):
        self.reader = BucketShardReader(directory, **reader_options)
        if self.reader.index["key_column"] != "id":
            raise ValueError(
                f"{directory} holds rows keyed by {self.reader.index['key_column']!r}, not SFT examples"
            )

    def sizes(self) -> dict[str, int]:
        return self.reader.sizes()

    def take(self, draws: Sequence[tuple[str, int]]) -> list[Example]:
        rows = self.reader.take(draws)
        ids, labels = rows["input_ids"].to_pylist(), rows["labels"].to_pylist()
        return [
            (np.asarray(i, dtype=np.int64), np.asarray(lab, dtype=np.int64))
            for i, lab in zip(ids, labels, strict=True)
        ]


def collate(examples: Sequence[Example], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Right-pad to the longest example of the micro-batch (not to max_length: padding is wasted compute)."""
    longest = max(len(ids) for ids, _ in examples)
    input_ids = torch.full((len(examples), longest), pad_token_id, dtype=torch.long)
    labels = torch.full((len(examples), longest), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(examples), longest), dtype=torch.long)
    for row, (ids, labs) in enumerate(examples):
        input_ids[row, : len(ids)] = torch.tensor(
            ids, dtype=torch.long
        )  # rows may be read-only (object store)
        labels[row, : len(labs)] = torch.tensor(labs, dtype=torch.long)
        attention_mask[row, : len(ids)] = 1
    return {"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask}
