"""The per-bucket table a person reads after ``prepare`` + ``references``: counts per split, length quantiles,
which reference node each bucket uses, and how close the bucket's own human answers sit to it."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import numpy as np

from polyalign_ray.references import ReferenceSet
from polyalign_ray.schema import SPLITS, all_bucket_ids


@dataclasses.dataclass(frozen=True)
class BucketRow:
    bucket: str
    counts: Mapping[str, int]
    length_q10: float
    length_q50: float
    length_q90: float
    reference_node: str
    reference_level: int
    mean_train_distance: float


def bucket_rows(
    manifest: Mapping,
    buckets: Sequence[str],
    splits: Sequence[str],
    length_tokens: Sequence[int],
    train_distances: Mapping[str, float],
    references: ReferenceSet,
) -> list[BucketRow]:
    """One row per bucket that has records, in the schema's fixed bucket order."""
    lengths: dict[str, list[int]] = {}
    for bucket, split, n in zip(buckets, splits, length_tokens, strict=True):
        if split == "train":
            lengths.setdefault(bucket, []).append(int(n))
    rows = []
    for bucket in all_bucket_ids():
        counts = manifest["per_bucket"].get(bucket)
        if not counts:
            continue
        values = np.asarray(lengths.get(bucket, [np.nan]), dtype=float)
        q10, q50, q90 = (float(np.quantile(values, q)) for q in (0.1, 0.5, 0.9))
        resolution = references.resolve(bucket)
        rows.append(
            BucketRow(
                bucket=bucket,
                counts={s: int(counts.get(s, 0)) for s in SPLITS},
                length_q10=q10,
                length_q50=q50,
                length_q90=q90,
                reference_node=resolution.node,
                reference_level=resolution.level,
                mean_train_distance=float(train_distances.get(bucket, float("nan"))),
            )
        )
    return rows


def empty_buckets(manifest: Mapping) -> list[str]:
    """Buckets of the schema that no record fills (reported, never faked)."""
    return [b for b in all_bucket_ids() if b not in manifest["per_bucket"]]


def render_bucket_table(rows: Sequence[BucketRow], empty: Sequence[str]) -> str:
    """A Markdown table; it reads well in a terminal too."""
    header = (
        "| bucket | train | val | test | len q10 | len q50 | len q90 | reference (backoff level) | mean d(train) |\n"
        "|---|---:|---:|---:|---:|---:|---:|---|---:|\n"
    )
    lines = [
        f"| {r.bucket} | {r.counts['train']} | {r.counts['val']} | {r.counts['test']} | {r.length_q10:.0f} | "
        f"{r.length_q50:.0f} | {r.length_q90:.0f} | {r.reference_node} ({r.reference_level}) | "
        f"{r.mean_train_distance:.3f} |"
        for r in rows
    ]
    total = {s: sum(r.counts[s] for r in rows) for s in SPLITS}
    lines.append(f"| **total** | {total['train']} | {total['val']} | {total['test']} | | | | | |")
    note = f"\nEmpty buckets ({len(empty)}): {', '.join(empty) if empty else 'none'}\n"
    return header + "\n".join(lines) + "\n" + note
