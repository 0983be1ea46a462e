"""The prepare stage as plain Python: read -> normalize -> dedup -> split -> write, plus its output contract.

This in-process version is the reference the Ray Data pipeline (``distributed/data.py``) is checked against and
benchmarked with; both call the same per-row and per-group functions and the same writers, so their outputs are
identical for the same input.

Output contract of ``DATA_DIR``:

* ``train/``, ``val/``, ``test/``: Parquet parts of records (:data:`~polyalign_ray.corpus.tables.RECORD_SCHEMA`);
* ``quarantine.jsonl``: one line per rejected input, ``reason`` code, ``detail``, ``origin_file``, ``origin_line``;
* ``duplicates.jsonl``: one line per dropped exact duplicate, with the id of the copy that was kept;
* ``manifest.json``: counts that reconcile, ``read + expanded = kept + quarantined + duplicates``.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
from tqdm import tqdm

from polyalign_ray.corpus.dedup import plan_dedup, side_line
from polyalign_ray.corpus.normalize import NormalizeSettings, normalize_raw_row
from polyalign_ray.corpus.readers import ReadUnit, read_unit
from polyalign_ray.corpus.splits import plan_splits, split_stratum
from polyalign_ray.corpus.tables import QUARANTINE_SCHEMA, RECORD_SCHEMA, records_table, write_split
from polyalign_ray.schema import SPLITS

MANIFEST_VERSION = 1


class ReconciliationError(RuntimeError):
    """Counts that do not add up: a bug, never bad input. Raised so that no run silently loses rows."""


def build_manifest(
    *,
    read: int,
    expanded: int,
    split_bucket_counts: Mapping[tuple[str, str], int],
    quarantine_counts: Mapping[str, int],
    duplicates: int,
    skipped_turn_counts: Mapping[str, int],
    units: Sequence[ReadUnit],
    settings: NormalizeSettings,
    engine: str,
    seconds: float,
) -> dict[str, Any]:
    """The manifest; raises :class:`ReconciliationError` unless ``read + expanded = kept + quarantined +
    duplicates``."""
    kept = sum(split_bucket_counts.values())
    quarantined = sum(quarantine_counts.values())
    if read + expanded != kept + quarantined + duplicates:
        raise ReconciliationError(
            f"read {read} + expanded {expanded} != kept {kept} + quarantined {quarantined} + duplicates {duplicates}"
        )
    per_split = {s: sum(n for (sp, _), n in split_bucket_counts.items() if sp == s) for s in SPLITS}
    per_bucket: dict[str, dict[str, int]] = {}
    for (split, bucket), n in sorted(split_bucket_counts.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        per_bucket.setdefault(bucket, dict.fromkeys(SPLITS, 0))[split] = n
    return {
        "version": MANIFEST_VERSION,
        "read": read,
        "expanded": expanded,
        "kept": kept,
        "quarantined": quarantined,
        "duplicates": duplicates,
        "reconciles": True,
        "quarantine_reasons": dict(sorted(quarantine_counts.items())),
        "skipped_expanded_turns": dict(sorted(skipped_turn_counts.items())),
        "per_split": per_split,
        "per_bucket": per_bucket,
        "inputs": [u.to_row() for u in units],
        "settings": {
            "seed": settings.seed,
            "val_fraction": settings.val_fraction,
            "test_fraction": settings.test_fraction,
            "split_strata": "source|language",
            "expand_turns": settings.expand_turns,
            "max_response_tokens": settings.max_response_tokens,
            "recipe": settings.recipe,
        },
        "outputs": {
            **{split: f"{split}/" for split in SPLITS},
            "quarantine": "quarantine.jsonl",
            "duplicates": "duplicates.jsonl",
        },
        "engine": engine,
        "seconds": round(seconds, 3),
    }


def origin_order(entry: Mapping[str, Any]) -> tuple[str, int, str]:
    """Side-file order: by origin, then by the line itself (one raw row can leave several lines), so both
    engines write the same bytes whatever order they found the entries in."""
    return str(entry["origin_file"]), int(entry["origin_line"]), side_line(entry)


def write_jsonl(path: Path, rows: Iterable[Mapping[str, Any]]) -> int:
    """Write rows as JSON Lines (UTF-8, not ASCII-escaped, so Chinese stays readable); returns the count."""
    count = 0
    with path.open("w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
            count += 1
    return count


def write_side_files(
    output_dir: Path,
    quarantine: Sequence[Mapping[str, Any]],
    duplicates: Sequence[Mapping[str, Any]],
    manifest: Mapping[str, Any],
) -> None:
    """``quarantine.jsonl`` and ``duplicates.jsonl`` in origin order, then ``manifest.json`` (written last, so its
    presence means the stage finished)."""
    write_jsonl(output_dir / "quarantine.jsonl", sorted(quarantine, key=origin_order))
    write_jsonl(output_dir / "duplicates.jsonl", sorted(duplicates, key=origin_order))
    (output_dir / "manifest.json").write_text(
        json.dumps(manifest, indent=2, ensure_ascii=False), encoding="utf-8"
    )


def prepare_in_process(
    units: Sequence[ReadUnit],
    settings: NormalizeSettings,
    output_dir: str | Path,
    *,
    max_row_chars: int,
    show_progress: bool = True,
) -> dict[str, Any]:
    """The whole prepare stage in this process; returns the manifest (also written to ``output_dir``)."""
    start = time.perf_counter()
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    read = expanded = 0
    record_rows: list[dict[str, Any]] = []
    quarantine: list[dict[str, Any]] = []
    skipped: Counter[str] = Counter()
    for unit in units:
        rows = read_unit(unit, max_chars=max_row_chars)
        for raw_row in tqdm(
            rows, desc=f"prepare {Path(unit.path).name}", unit="row", disable=not show_progress
        ):
            read += 1
            outcome = normalize_raw_row(raw_row, settings)
            if outcome.quarantine is not None:
                quarantine.append(outcome.quarantine)
                continue
            expanded += len(outcome.records) - 1
            skipped.update(outcome.skipped_turns)
            record_rows.extend(r.to_row() for r in outcome.records)
    splits = plan_splits(
        ((str(r["group_id"]), split_stratum(str(r["source"]), str(r["language"]))) for r in record_rows),
        seed=settings.seed,
        val_fraction=settings.val_fraction,
        test_fraction=settings.test_fraction,
    )
    for row in record_rows:
        row["split"] = splits[str(row["group_id"])]
    plan = plan_dedup(record_rows)
    quarantine.extend(plan.collisions.values())
    duplicates = list(plan.duplicates.values())
    kept = sorted((r for r in record_rows if plan.keeps(r)), key=lambda r: str(r["id"]))
    for split in SPLITS:
        write_split(records_table(r for r in kept if r["split"] == split), output_dir, split)
    manifest = build_manifest(
        read=read,
        expanded=expanded,
        split_bucket_counts=Counter((str(r["split"]), str(r["bucket_id"])) for r in kept),
        quarantine_counts=Counter(str(q["reason"]) for q in quarantine),
        duplicates=len(duplicates),
        skipped_turn_counts=skipped,
        units=units,
        settings=settings,
        engine="in-process",
        seconds=time.perf_counter() - start,
    )
    write_side_files(output_dir, quarantine, duplicates, manifest)
    return manifest


# ---------------------------------------------------------------------------------------------------------------
# Table-at-a-time forms of the same steps, for Ray Data's map_batches / map_groups (one fixed schema per stage).
# ---------------------------------------------------------------------------------------------------------------
OUTCOME_SCHEMA = pa.schema(
    [
        *RECORD_SCHEMA,
        pa.field("status", pa.string()),
        pa.field("first_of_row", pa.bool_()),
        pa.field("skipped_turns", pa.list_(pa.string())),
        *(f for f in QUARANTINE_SCHEMA if f.name not in ("origin_file", "origin_line")),
    ]
)


def normalize_raw_table(raw: pa.Table, settings: NormalizeSettings) -> pa.Table:
    """Normalize a batch of raw rows into outcome rows: ``status`` is ``record`` or ``quarantine``;
    ``first_of_row`` marks one outcome per raw row, so ``read`` is their count."""
    out: list[dict[str, Any]] = []
    for raw_row in raw.to_pylist():
        outcome = normalize_raw_row(raw_row, settings)
        if outcome.quarantine is not None:
            out.append(
                {**outcome.quarantine, "status": "quarantine", "first_of_row": True, "skipped_turns": []}
            )
            continue
        for i, record in enumerate(outcome.records):
            out.append(
                {
                    **record.to_row(),
                    "status": "record",
                    "first_of_row": i == 0,
                    "skipped_turns": outcome.skipped_turns if i == 0 else [],
                }
            )
    return pa.Table.from_pylist(out, schema=OUTCOME_SCHEMA)
