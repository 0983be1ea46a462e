"""The evaluation set: test records stratified by bucket (language x track x family x length bin).

Every bucket of the split is represented: a bucket keeps all its records when it has at most ``per_bucket``, else a
seeded choice of ``per_bucket`` (stable across runs and machines: ``schema.stable_fraction`` of the record id)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

from polyalign_ray.schema import stable_fraction


def stratified_eval_set(
    records: Sequence[Mapping[str, Any]], *, per_bucket: int, seed: int = 0
) -> list[Mapping[str, Any]]:
    """At most ``per_bucket`` records of each bucket, sorted by (bucket, id)."""
    by_bucket: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for record in records:
        by_bucket[record["bucket_id"]].append(record)
    chosen = []
    for bucket in sorted(by_bucket):
        members = sorted(by_bucket[bucket], key=lambda r: stable_fraction(str(r["id"]), seed))
        chosen.extend(sorted(members[:per_bucket], key=lambda r: str(r["id"])))
    return chosen


def bucket_counts(records: Sequence[Mapping[str, Any]]) -> dict[str, int]:
    counts: dict[str, int] = defaultdict(int)
    for record in records:
        counts[record["bucket_id"]] += 1
    return dict(sorted(counts.items()))
