"""Preference pairs for HDPO (METHOD.md section 5): building them, tokenizing them, reference log-probs, batches.

A pair is one prompt (a record), a chosen and a rejected answer, the critic's distance to human support of each,
the pair weight ``w`` and the frozen reference's summed log-probs of both answers.

- **Offline**: chosen = the record's human answer, rejected = an SFT sample for the same prompt (exact matches are
  dropped: they would teach nothing and make the loss constant).
- **Online**: the current policy samples k answers per prompt; the critic scores them (and the human answer);
  chosen = the lowest-distance candidate among the samples and the human answer, rejected = the highest-distance
  sample; a pair is kept only when the distance gap exceeds a margin.

Everything here is plain Python/torch: Ray Data, the Ray Train workers and the rollout actors call these functions.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pyarrow as pa
import torch

from polyalign_ray.bucket_shards import BucketShardReader
from polyalign_ray.logprobs import response_log_probs
from polyalign_ray.losses import IGNORE_INDEX, pair_weights
from polyalign_ray.sampler import bucket_row_indices
from polyalign_ray.sft_data import collate, example_ids_and_labels

PAIR_SCHEMA = pa.schema(
    [
        ("pair_id", pa.string()),
        ("id", pa.string()),
        ("bucket_id", pa.string()),
        ("chosen_input_ids", pa.list_(pa.int32())),
        ("chosen_labels", pa.list_(pa.int32())),
        ("rejected_input_ids", pa.list_(pa.int32())),
        ("rejected_labels", pa.list_(pa.int32())),
        ("chosen_distance", pa.float64()),
        ("rejected_distance", pa.float64()),
        ("weight", pa.float64()),
        ("reference_chosen_logps", pa.float64()),
        ("reference_rejected_logps", pa.float64()),
    ]
)
"""A tokenized pair as stored (one row per pair). Reference log-probs are NaN when computed in the workers."""


@dataclasses.dataclass
class TokenizedPair:
    """One pair ready for a micro-batch (``version``: the policy version that generated the rejected answer
    online, used for staleness; 0 offline)."""

    bucket_id: str
    chosen_ids: np.ndarray
    chosen_labels: np.ndarray
    rejected_ids: np.ndarray
    rejected_labels: np.ndarray
    chosen_distance: float
    rejected_distance: float
    weight: float
    reference_chosen_logps: float = float("nan")
    reference_rejected_logps: float = float("nan")
    version: int = 0
    pair_id: str = ""


def bucket_rarity(bucket_counts: Mapping[str, int]) -> dict[str, float]:
    """rarity(b) = (1 / n_b) / max_b' (1 / n_b') = min_b' n_b' / n_b: 1 for the rarest bucket, towards 0 for common
    ones (METHOD.md: normalized inverse bucket frequency in [0, 1]). Buckets with no examples are left out."""
    present = {b: int(n) for b, n in bucket_counts.items() if n > 0}
    if not present:
        return {}
    smallest = min(present.values())
    return {b: smallest / n for b, n in present.items()}


def weights_for_pairs(
    buckets: Sequence[str],
    chosen_distance: Sequence[float],
    rejected_distance: Sequence[float],
    rarity: Mapping[str, float],
    *,
    a: float,
    c: float,
    w_min: float,
    w_max: float,
) -> np.ndarray:
    """Pair weights w_i of METHOD.md section 5 (a bucket missing from ``rarity`` counts as rarity 0)."""
    rarities = torch.tensor([rarity.get(b, 0.0) for b in buckets], dtype=torch.float64)
    weights = pair_weights(
        rarities,
        torch.tensor(list(chosen_distance), dtype=torch.float64),
        torch.tensor(list(rejected_distance), dtype=torch.float64),
        a=a,
        c=c,
        w_min=w_min,
        w_max=w_max,
    )
    return weights.numpy()


def offline_pairs(
    records: Sequence[Mapping[str, Any]], samples: Mapping[str, Sequence[str]]
) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """(pairs, counts): one pair per (record, SFT sample), chosen = the human answer, rejected = the sample.

    Each pair is the record (its prompt fields and bucket) plus ``pair_id``, ``chosen`` and ``rejected``. Counts
    reconcile: ``candidates = pairs + dropped_exact_match + dropped_empty_sample``, and ``records_without_sample``
    counts records that had no sample at all.
    """
    pairs: list[dict[str, Any]] = []
    counts = dict.fromkeys(
        (
            "records",
            "records_without_sample",
            "candidates",
            "pairs",
            "dropped_exact_match",
            "dropped_empty_sample",
        ),
        0,
    )
    for record in records:
        counts["records"] += 1
        answers = samples.get(record["id"]) or []
        if not answers:
            counts["records_without_sample"] += 1
        human = str(record["response"])
        for k, answer in enumerate(answers):
            counts["candidates"] += 1
            if not answer.strip():
                counts["dropped_empty_sample"] += 1
            elif answer.strip() == human.strip():
                counts["dropped_exact_match"] += 1
            else:
                pairs.append(
                    {**record, "pair_id": f"{record['id']}#s{k}", "chosen": human, "rejected": answer}
                )
                counts["pairs"] += 1
    return pairs, counts


def tokenize_answer(
    tokenizer: Any, record: Mapping[str, Any], answer: str, *, max_length: int, profile_conditioning: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Token ids and response-only labels of ``answer`` to ``record``'s prompt (the SFT tokenization, so HDPO and
    SFT see identical prompts)."""
    ids, labels = example_ids_and_labels(
        tokenizer,
        {**record, "response": answer},
        max_length=max_length,
        profile_conditioning=profile_conditioning,
    )
    return np.asarray(ids, dtype=np.int64), np.asarray(labels, dtype=np.int64)


@torch.no_grad()
def reference_sequence_logps(
    model: torch.nn.Module,
    sequences: Sequence[tuple[np.ndarray, np.ndarray]],
    pad_token_id: int,
    *,
    batch_size: int = 16,
) -> np.ndarray:
    """Summed response-token log-probs of each (ids, labels) sequence under a frozen ``model``, in float64.

    Sequences are sorted by length before batching (less padding) and returned in input order. The model is put in
    eval mode: the reference must not apply dropout.
    """
    model.eval()
    device = next(model.parameters()).device
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i][0]))
    out = np.zeros(len(sequences), dtype=np.float64)
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        batch = collate([sequences[i] for i in chunk], pad_token_id)
        logps, _ = response_log_probs(
            model,
            batch["input_ids"].to(device),
            batch["attention_mask"].to(device),
            batch["labels"].to(device),
        )
        out[chunk] = logps.double().cpu().numpy()
    return out


def pairs_table(pairs: Sequence[TokenizedPair]) -> pa.Table:
    """Tokenized pairs -> :data:`PAIR_SCHEMA` rows."""
    return pa.Table.from_pydict(
        {
            "pair_id": [p.pair_id for p in pairs],
            "id": [p.pair_id.split("#", 1)[0] for p in pairs],
            "bucket_id": [p.bucket_id for p in pairs],
            "chosen_input_ids": [p.chosen_ids.tolist() for p in pairs],
            "chosen_labels": [p.chosen_labels.tolist() for p in pairs],
            "rejected_input_ids": [p.rejected_ids.tolist() for p in pairs],
            "rejected_labels": [p.rejected_labels.tolist() for p in pairs],
            "chosen_distance": [p.chosen_distance for p in pairs],
            "rejected_distance": [p.rejected_distance for p in pairs],
            "weight": [p.weight for p in pairs],
            "reference_chosen_logps": [p.reference_chosen_logps for p in pairs],
            "reference_rejected_logps": [p.reference_rejected_logps for p in pairs],
        },
        schema=PAIR_SCHEMA,
    )


def pairs_from_table(table: pa.Table) -> list[TokenizedPair]:
    """:data:`PAIR_SCHEMA` rows -> tokenized pairs, sorted by ``pair_id`` (a deterministic order on every rank)."""
    return _pairs_of_rows(table.sort_by("pair_id"))


def _pairs_of_rows(table: pa.Table) -> list[TokenizedPair]:
    columns = {name: table[name].to_pylist() for name in table.column_names}
    return [
        TokenizedPair(
            bucket_id=columns["bucket_id"][i],
            chosen_ids=np.asarray(columns["chosen_input_ids"][i], dtype=np.int64),
            chosen_labels=np.asarray(columns["chosen_labels"][i], dtype=np.int64),
            rejected_ids=np.asarray(columns["rejected_input_ids"][i], dtype=np.int64),
            rejected_labels=np.asarray(columns["rejected_labels"][i], dtype=np.int64),
            chosen_distance=float(columns["chosen_distance"][i]),
            rejected_distance=float(columns["rejected_distance"][i]),
            weight=float(columns["weight"][i]),
            reference_chosen_logps=float(columns["reference_chosen_logps"][i]),
            reference_rejected_logps=float(columns["reference_rejected_logps"][i]),
            pair_id=columns["pair_id"][i],
        )
        for i in range(table.num_rows)
    ]


class PairStore(Protocol):
    """What offline HDPO draws pairs from: pairs per bucket, the pairs of ``(bucket, index)`` draws (index in the
    bucket's ``pair_id`` order in every store), and the mean pair weight over all of them."""

    def sizes(self) -> dict[str, int]: ...

    def take(self, draws: Sequence[tuple[str, int]]) -> list[TokenizedPair]: ...

    def weight_mean(self) -> float: ...


class InMemoryPairs:
    """Every pair held in memory, grouped by bucket in the given order."""

    def __init__(self, pairs: Sequence[TokenizedPair]):
        self.groups = pairs_by_bucket(pairs)
        self._weight_mean = float(np.mean([p.weight for p in pairs])) if pairs else float("nan")

    def sizes(self) -> dict[str, int]:
        return {b: len(v) for b, v in self.groups.items()}

    def take(self, draws: Sequence[tuple[str, int]]) -> list[TokenizedPair]:
        return [self.groups[b][i] for b, i in draws]

    def weight_mean(self) -> float:
        return self._weight_mean


class ShardedPairs:
    """Pairs read from a shard folder of :data:`PAIR_SCHEMA` rows keyed by ``pair_id`` with summed ``weight``
    (what the HDPO stage writes): each rank reads only the pairs it draws."""

    def __init__(self, directory: str, **reader_options: int):
        self.reader = BucketShardReader(directory, **reader_options)
        if self.reader.index["key_column"] != "pair_id":
            raise ValueError(
                f"{directory} holds rows keyed by {self.reader.index['key_column']!r}, not pairs"
            )

    def sizes(self) -> dict[str, int]:
        return self.reader.sizes()

    def take(self, draws: Sequence[tuple[str, int]]) -> list[TokenizedPair]:
        return _pairs_of_rows(self.reader.take(draws))

    def weight_mean(self) -> float:
        total = sum(self.reader.sizes().values())
        return sum(self.reader.sums("weight").values()) / total if total else float("nan")


def pairs_by_bucket(pairs: Sequence[TokenizedPair]) -> dict[str, list[TokenizedPair]]:
    """Pairs grouped by bucket, each group in input order (what the bucket sampler indexes into)."""
    rows = bucket_row_indices([p.bucket_id for p in pairs])
    return {bucket: [pairs[i] for i in indices] for bucket, indices in rows.items()}


def collate_pairs(pairs: Sequence[TokenizedPair], pad_token_id: int) -> dict[str, torch.Tensor]:
    """One forward batch of 2B rows (the B chosen answers, then the B rejected ones) plus the per-pair tensors."""
    sequences = [(p.chosen_ids, p.chosen_labels) for p in pairs] + [
        (p.rejected_ids, p.rejected_labels) for p in pairs
    ]
    batch = collate(sequences, pad_token_id)
    for name in (
        "chosen_distance",
        "rejected_distance",
        "weight",
        "reference_chosen_logps",
        "reference_rejected_logps",
    ):
        batch[name] = torch.tensor([getattr(p, name) for p in pairs], dtype=torch.float64)
    return batch


def choose_online_pair(
    distances: Sequence[float],
    is_human: Sequence[bool],
    texts: Sequence[str],
    *,
    margin: float,
    include_human: bool,
) -> tuple[int, int] | None:
    """(chosen index, rejected index) among one prompt's candidates, or None when no pair qualifies.

    chosen = the lowest distance among the samples (and the human answer with ``include_human``); rejected = the
    highest-distance sample; kept only when d_rejected - d_chosen > margin and the two texts differ. Ties go to
    the earlier candidate, so the choice is deterministic.
    """
    samples = [i for i, human in enumerate(is_human) if not human]
    pool = [i for i in range(len(distances)) if include_human or not is_human[i]]
    if not samples or len(pool) < 2:
        return None
    chosen = min(pool, key=lambda i: (distances[i], i))
    rejected = max(samples, key=lambda i: (distances[i], -i))
    if chosen == rejected or distances[rejected] - distances[chosen] <= margin:
        return None
    if texts[chosen].strip() == texts[rejected].strip():
        return None
    return chosen, rejected


def labels_are_empty(labels: np.ndarray) -> bool:
    """True when a sequence has no response token to score (its prompt filled ``max_length``)."""
    return not bool((labels[1:] != IGNORE_INDEX).any())


class PairPreparer:
    """Ray Data callable class: pair rows (record fields + chosen, rejected, distances, weight) -> tokenized pairs
    with the frozen reference's log-probs (one model copy per actor). Pairs whose chosen or rejected answer has no
    token left after truncation are dropped (and counted by the caller)."""

    def __init__(self, model_path: str, model: dict[str, Any], precompute: bool, torch_threads: int = 1):
        from polyalign_ray.config import ModelConfig, config_from_dict
        from polyalign_ray.models import load_causal_lm, load_tokenizer

        if torch_threads:
            torch.set_num_threads(torch_threads)
        self.model_config = config_from_dict(model, ModelConfig)
        self.tokenizer = load_tokenizer(model_path)
        self.model = load_causal_lm(model_path, self.model_config) if precompute else None

    def __call__(self, batch: pa.Table) -> pa.Table:
        pairs = []
        for row in batch.to_pylist():
            kwargs = {
                "max_length": self.model_config.max_length,
                "profile_conditioning": self.model_config.profile_conditioning,
            }
            chosen = tokenize_answer(self.tokenizer, row, row["chosen"], **kwargs)
            rejected = tokenize_answer(self.tokenizer, row, row["rejected"], **kwargs)
            if labels_are_empty(chosen[1]) or labels_are_empty(rejected[1]):
                continue
            pairs.append(
                TokenizedPair(
                    bucket_id=row["bucket_id"],
                    chosen_ids=chosen[0],
                    chosen_labels=chosen[1],
                    rejected_ids=rejected[0],
                    rejected_labels=rejected[1],
                    chosen_distance=float(row["chosen_distance"]),
                    rejected_distance=float(row["rejected_distance"]),
                    weight=float(row["weight"]),
                    pair_id=row["pair_id"],
                )
            )
        if self.model is not None and pairs:
            pad = self.tokenizer.pad_token_id
            chosen_logps = reference_sequence_logps(
                self.model, [(p.chosen_ids, p.chosen_labels) for p in pairs], pad
            )
            rejected_logps = reference_sequence_logps(
                self.model, [(p.rejected_ids, p.rejected_labels) for p in pairs], pad
            )
            for pair, c, r in zip(pairs, chosen_logps, rejected_logps, strict=True):
                pair.reference_chosen_logps, pair.reference_rejected_logps = float(c), float(r)
        return pairs_table(pairs) if pairs else PAIR_SCHEMA.empty_table()


IN_PROCESS_PAIR_WORK_MAX = 4e9
"""Offline pairs are prepared in the driver when (pairs) x (the policy's weight bytes) is at most this: about 4e11
FLOPs of reference forwards, a few seconds on 2 cores (the demo: about 550 pairs of a 4 MB model). Starting the
Ray Data actors (a process each, torch and transformers imports, a model copy) costs 4-7 s per HDPO or DPO stage
here, more than the work; larger jobs, and policies not in a local folder, go to the actors, which spread over
the cluster."""
IN_PROCESS_TOKENIZE_MAX_PAIRS = 20_000
"""Without precomputed reference log-probs (``hdpo.reference=frozen_copy``) preparing a pair is tokenizing it."""
WEIGHT_FILE_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")


def model_weight_bytes(path: str) -> int | None:
    """The bytes of a local model folder's weight files; None for a hub name or anything not a local folder."""
    folder = Path(path)
    if not folder.is_dir():
        return None
    return sum(f.stat().st_size for f in folder.iterdir() if f.suffix in WEIGHT_FILE_SUFFIXES and f.is_file())


def prepares_pairs_in_process(pair_count: int, model_path: str, *, precompute: bool) -> bool:
    """Whether :func:`prepare_pairs_in_process` (the driver) or Ray Data's actors should prepare ``pair_count``
    offline pairs: see :data:`IN_PROCESS_PAIR_WORK_MAX`."""
    if not precompute:
        return pair_count <= IN_PROCESS_TOKENIZE_MAX_PAIRS
    weight_bytes = model_weight_bytes(model_path)
    return bool(weight_bytes) and pair_count * weight_bytes <= IN_PROCESS_PAIR_WORK_MAX


def prepare_pairs_in_process(
    rows: Sequence[Mapping[str, Any]],
    model_path: str,
    model: Mapping[str, Any],
    *,
    precompute: bool,
    batch_rows: int,
) -> pa.Table:
    """What Ray Data's :class:`PairPreparer` actors make of ``rows``, made here: the same batches of ``batch_rows``
    rows in order (a batch's sequences are sorted by length and padded together, so the same cut gives the same
    log-probs), with the driver's torch threads left as they are."""
    preparer = PairPreparer(model_path, dict(model), precompute, torch_threads=0)
    table = pa.Table.from_pylist(list(rows))
    parts = [preparer(table.slice(start, batch_rows)) for start in range(0, table.num_rows, batch_rows)]
    return pa.concat_tables(parts) if parts else PAIR_SCHEMA.empty_table()


def offline_pair_weights(
    pairs: Sequence[Mapping[str, Any]],
    chosen_distance: Sequence[float],
    rejected_distance: Sequence[float],
    hdpo: Any,
    bucket_counts: Mapping[str, int],
) -> np.ndarray:
    """The pair weights w_i of METHOD.md section 5 (all 1 with ``hdpo.unit_weights``), rarity from the train split's
    bucket counts."""
    if hdpo.unit_weights:
        return np.ones(len(pairs))
    return weights_for_pairs(
        [p["bucket_id"] for p in pairs],
        chosen_distance,
        rejected_distance,
        bucket_rarity(bucket_counts),
        a=hdpo.weight_rarity,
        c=hdpo.weight_gap,
        w_min=hdpo.weight_min,
        w_max=hdpo.weight_max,
    )


OFFLINE_PAIR_COLUMNS = (
    "pair_id",
    "id",
    "bucket_id",
    "system",
    "context",
    "history",
    "prompt",
    "chosen",
    "rejected",
)
"""The record and answer fields an offline pair row keeps (with its language, track, family, length bin,
distances and weight)."""


def offline_pair_rows(
    pairs: Sequence[Mapping[str, Any]],
    chosen_distance: Sequence[float],
    rejected_distance: Sequence[float],
    weights: Sequence[float],
) -> list[dict[str, Any]]:
    """Offline pairs with their critic distances and weights: the rows that are tokenized and stored."""
    keep = ("language", "track", "family", "length_bin")
    return [
        {
            **{k: p[k] for k in (*OFFLINE_PAIR_COLUMNS, *keep)},
            "chosen_distance": float(dc),
            "rejected_distance": float(dr),
            "weight": float(w),
        }
        for p, dc, dr, w in zip(pairs, chosen_distance, rejected_distance, weights, strict=True)
    ]


class HeldWeightMean:
    """w-bar of METHOD.md for online pairs: a mean that never depends on the batch it normalizes.

    Dividing a step's weights by a mean that includes them (the former running mean over the pairs built so far
    was, on the first steps, the batch's own mean) cancels the weights: with one pair per step every weight becomes
    1, the defect METHOD.md's global normalization exists to avoid. Here step 1 divides by a **prior** (the expected
    weight of the train prompts' buckets: ``clip(1 + a * rarity(b), w_min, w_max)`` averaged over the prompts; the
    distance-gap term is unknown before any rollout and counts as 0), and step t by the mean weight of the pairs
    used in steps 1..t-1.
    """

    def __init__(self, prior: float):
        if prior <= 0:
            raise ValueError(f"the prior weight mean must be > 0, got {prior}")
        self.prior = float(prior)
        self.total = 0.0
        self.count = 0

    @classmethod
    def from_prompts(
        cls, buckets: Sequence[str], rarity: Mapping[str, float], *, a: float, w_min: float, w_max: float
    ) -> HeldWeightMean:
        if not buckets:
            return cls(1.0)
        zeros = [0.0] * len(buckets)
        weights = weights_for_pairs(buckets, zeros, zeros, rarity, a=a, c=0.0, w_min=w_min, w_max=w_max)
        return cls(float(np.mean(weights)))

    @property
    def value(self) -> float:
        return self.total / self.count if self.count else self.prior

    def update(self, weights: Sequence[float]) -> None:
        """Fold in the weights of the pairs a step used (after that step took :attr:`value`)."""
        self.total += float(sum(weights))
        self.count += len(weights)

    def state(self) -> dict[str, float]:
        return {"prior": self.prior, "total": self.total, "count": self.count}

    @classmethod
    def from_state(cls, state: Mapping[str, float]) -> HeldWeightMean:
        held = cls(state["prior"])
        held.total, held.count = float(state["total"]), int(state["count"])
        return held
