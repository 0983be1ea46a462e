"""Ray Data pipelines of the data plane: ``prepare`` (read -> normalize -> dedup -> split -> write), the
per-record feature pass of ``references``, the tokenization of a split for SFT, and the per-bucket shards the
training workers read (``bucket_shards.py``).

The per-row and per-group work is the pure code of :mod:`polyalign_ray.corpus.prepare`; this module only wires it
into Ray Data, so the distributed pipeline and the in-process one produce the same records, quarantine and counts.
"""

from __future__ import annotations

import functools
import logging
import shutil
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import ray
import ray.data

from polyalign_ray.bucket_shards import (
    BUCKET_COLUMN,
    ROWS_PER_READ,
    build_index,
    commit_shards,
    staging_directory,
    write_parts,
)
from polyalign_ray.corpus.dedup import DEDUP_KEY_COLUMNS, DedupPlan, plan_dedup
from polyalign_ray.corpus.normalize import NormalizeSettings
from polyalign_ray.corpus.prepare import build_manifest, normalize_raw_table, write_side_files
from polyalign_ray.corpus.readers import ReadUnit, read_unit
from polyalign_ray.corpus.splits import plan_splits, split_stratum
from polyalign_ray.corpus.tables import QUARANTINE_SCHEMA, RECORD_SCHEMA, split_dir
from polyalign_ray.features import features_table, features_table_schema
from polyalign_ray.models import load_tokenizer
from polyalign_ray.schema import RECORD_COLUMNS, SPLITS
from polyalign_ray.sft_data import tokenize_records

log = logging.getLogger(__name__)
# Raw rows are re-blocked to this many rows so that normalization spreads over all CPUs even for one big file.
ROWS_PER_BLOCK = 4096
# Fewer, larger Parquet parts: one file per block made every later read start a task per small file.
PARQUET_ROWS_PER_FILE = 100_000
# Rows per shard-writing task (a part file holds at most this many rows of one bucket).
SHARD_ROWS_PER_PART = 8192


def _rows_equal(table: pa.Table, column: str, value: Any, *, equal: bool = True) -> pa.Table:
    mask = pc.equal(table[column], value)
    return table.filter(mask if equal else pc.invert(mask))


def _read_unit_rows(unit_row: dict[str, Any], *, max_chars: int) -> list[dict[str, Any]]:
    return list(read_unit(ReadUnit(**unit_row), max_chars=max_chars))


def _kept_records(table: pa.Table, plan: DedupPlan, splits: dict[str, str]) -> pa.Table:
    records = _rows_equal(table, "status", "record").select(list(RECORD_COLUMNS))
    split_column = pa.array([splits[g] for g in records["group_id"].to_pylist()], type=pa.string())
    records = records.set_column(records.schema.get_field_index("split"), "split", split_column)
    keep = [plan.keeps(row) for row in records.select(list(DEDUP_KEY_COLUMNS)).to_pylist()]
    return records.filter(pa.array(keep, type=pa.bool_()))


def prepare_with_ray(
    units: Sequence[ReadUnit],
    settings: NormalizeSettings,
    output_dir: str | Path,
    *,
    max_row_chars: int,
) -> dict[str, Any]:
    """The prepare stage on Ray Data; returns the manifest (also written to ``output_dir``).

    Normalization runs as parallel Ray Data tasks and is materialized once; the dedup decision is made from
    five small key columns (:func:`~polyalign_ray.corpus.dedup.plan_dedup`, the same function the in-process
    engine uses) and applied by a filter, then each split is written by Ray Data as Parquet parts.
    """
    start = time.perf_counter()
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    units_ds = ray.data.from_items([u.to_row() for u in units], override_num_blocks=max(len(units), 1))
    raw = units_ds.flat_map(_read_unit_rows, fn_kwargs={"max_chars": max_row_chars})
    raw = raw.repartition(target_num_rows_per_block=ROWS_PER_BLOCK)
    outcomes = raw.map_batches(
        normalize_raw_table,
        fn_kwargs={"settings": settings},
        batch_format="pyarrow",
        batch_size=ROWS_PER_BLOCK,
    ).materialize()

    columns = [
        "status",
        "first_of_row",
        "skipped_turns",
        "reason",
        "detail",
        "raw",
        "group_id",
        "source",
        "language",
    ]
    columns += [c for c in DEDUP_KEY_COLUMNS if c not in columns]
    summary = pa.concat_tables(ray.get(outcomes.select_columns(columns).to_arrow_refs()))
    read = sum(summary["first_of_row"].to_pylist())
    statuses = summary["status"].to_pylist()
    expanded = statuses.count("record") - sum(
        1
        for status, first in zip(statuses, summary["first_of_row"].to_pylist(), strict=True)
        if first and status == "record"
    )
    skipped = Counter(reason for turns in summary["skipped_turns"].to_pylist() for reason in turns or [])
    quarantine = (
        _rows_equal(summary, "status", "quarantine").select(list(QUARANTINE_SCHEMA.names)).to_pylist()
    )
    record_keys = _rows_equal(summary, "status", "record").to_pylist()
    splits = plan_splits(
        ((r["group_id"], split_stratum(r["source"], r["language"])) for r in record_keys),
        seed=settings.seed,
        val_fraction=settings.val_fraction,
        test_fraction=settings.test_fraction,
    )
    for row in record_keys:
        row["split"] = splits[row["group_id"]]
    plan = plan_dedup(record_keys)
    quarantine.extend(plan.collisions.values())

    kept = outcomes.map_batches(
        _kept_records, fn_kwargs={"plan": plan, "splits": splits}, batch_format="pyarrow"
    ).materialize()
    counts = kept.select_columns(["split", "bucket_id"]).to_pandas().value_counts()
    split_bucket_counts = {(str(s), str(b)): int(n) for (s, b), n in counts.items()}
    for split in SPLITS:
        target = split_dir(output_dir, split)
        shutil.rmtree(target, ignore_errors=True)
        if any(s == split for s, _ in split_bucket_counts):
            part = kept.map_batches(_rows_equal, fn_args=("split", split), batch_format="pyarrow")
            part.write_parquet(str(target), min_rows_per_file=PARQUET_ROWS_PER_FILE)
        target.mkdir(parents=True, exist_ok=True)
    manifest = build_manifest(
        read=read,
        expanded=expanded,
        split_bucket_counts=split_bucket_counts,
        quarantine_counts=Counter(str(q["reason"]) for q in quarantine),
        duplicates=len(plan.duplicates),
        skipped_turn_counts=skipped,
        units=units,
        settings=settings,
        engine="ray-data",
        seconds=time.perf_counter() - start,
    )
    write_side_files(output_dir, quarantine, list(plan.duplicates.values()), manifest)
    return manifest


def compute_features_with_ray(data_dir: str | Path, splits: Sequence[str] = SPLITS) -> pa.Table:
    """Features of every record of ``splits`` (id, split, bucket_id, length_tokens, one column per feature),
    computed by Ray Data tasks and collected as one table sorted by (split, id)."""
    paths = [str(split_dir(data_dir, s)) for s in splits if any(split_dir(data_dir, s).glob("*.parquet"))]
    if not paths:
        raise FileNotFoundError(f"no records under {data_dir}; run `polyalign prepare` first")
    ds = ray.data.read_parquet(paths, schema=RECORD_SCHEMA)
    # The read yields a few large blocks; re-block so the feature pass runs on every CPU, not one.
    ds = ds.repartition(target_num_rows_per_block=2048)
    features = ds.map_batches(features_table, batch_format="pyarrow", batch_size=1024)
    tables = [t for t in ray.get(features.to_arrow_refs()) if t.num_rows]
    table = pa.concat_tables(tables) if tables else features_table_schema().empty_table()
    return table.sort_by([("split", "ascending"), ("id", "ascending")])


@functools.lru_cache(maxsize=2)
def _cached_tokenizer(path: str) -> Any:
    return load_tokenizer(path)


def _tokenize_batch(
    batch: pa.Table, *, tokenizer_path: str, max_length: int, profile: bool, history: bool
) -> pa.Table:
    return tokenize_records(
        batch,
        _cached_tokenizer(tokenizer_path),
        max_length=max_length,
        profile_conditioning=profile,
        train_history_turns=history,
    )


def _tokenized_split(
    data_dir: str | Path,
    tokenizer_path: str,
    *,
    max_length: int,
    profile_conditioning: bool,
    train_history_turns: bool,
    split: str,
) -> ray.data.Dataset:
    directory = split_dir(data_dir, split)
    if not any(directory.glob("*.parquet")):
        raise FileNotFoundError(f"no {split} records under {directory}: run `polyalign prepare` first")
    records = ray.data.read_parquet(str(directory.resolve()), schema=RECORD_SCHEMA)
    return records.map_batches(
        _tokenize_batch,
        fn_kwargs={
            "tokenizer_path": tokenizer_path,
            "max_length": max_length,
            "profile": profile_conditioning,
            "history": train_history_turns,
        },
        batch_format="pyarrow",
        batch_size=512,
    )


def tokenize_with_ray(
    data_dir: str | Path,
    tokenizer_path: str,
    *,
    max_length: int,
    profile_conditioning: bool,
    train_history_turns: bool,
    split: str = "train",
) -> ray.data.Dataset:
    """Token ids and labels of every record of ``split``, computed by Ray Data tasks, materialized (what
    ``example_store=memory`` hands every worker whole)."""
    return _tokenized_split(
        data_dir,
        tokenizer_path,
        max_length=max_length,
        profile_conditioning=profile_conditioning,
        train_history_turns=train_history_turns,
        split=split,
    ).materialize()


def write_tokenized_shards_with_ray(
    data_dir: str | Path,
    tokenizer_path: str,
    directory: str | Path,
    *,
    max_length: int,
    profile_conditioning: bool,
    train_history_turns: bool,
    split: str = "train",
) -> dict[str, Any]:
    """Token ids and labels of every record of ``split`` as per-bucket shards keyed by example id (what
    ``example_store=shards`` workers read); streamed from the split's files to the shards, never whole on the
    driver. Returns the shard index."""
    dataset = _tokenized_split(
        data_dir,
        tokenizer_path,
        max_length=max_length,
        profile_conditioning=profile_conditioning,
        train_history_turns=train_history_turns,
        split=split,
    )
    return write_bucket_shards_with_ray(dataset, directory, key_column="id")


def _write_parts_batch(
    batch: pa.Table, *, directory: str, key_column: str, sum_columns: Sequence[str]
) -> pa.Table:
    return write_parts(
        batch, directory, key_column=key_column, sum_columns=sum_columns, rows_per_read=ROWS_PER_READ
    )


def write_bucket_shards_with_ray(
    dataset: ray.data.Dataset,
    directory: str | Path,
    *,
    key_column: str,
    sum_columns: Sequence[str] = (),
) -> dict[str, Any]:
    """``dataset``'s rows as a per-bucket shard folder at ``directory`` (``bucket_shards.py``): Ray Data sorts
    them by (bucket, key) (a distributed sort: no task holds more than its blocks), tasks write the sorted
    batches as part files, and only their part rows (one per file) come back to build the index. Returns it."""
    staging = staging_directory(directory)
    parts = dataset.sort([BUCKET_COLUMN, key_column]).map_batches(
        _write_parts_batch,
        fn_kwargs={"directory": str(staging), "key_column": key_column, "sum_columns": list(sum_columns)},
        batch_format="pyarrow",
        batch_size=SHARD_ROWS_PER_PART,
    )
    tables = [t for t in ray.get(parts.to_arrow_refs()) if t.num_rows]
    part_rows = (
        pa.concat_tables(tables)
        if tables
        else write_parts(pa.table({}), staging, key_column=key_column, sum_columns=sum_columns)
    )
    index = build_index(
        part_rows, key_column=key_column, sum_columns=sum_columns, rows_per_read=ROWS_PER_READ
    )
    commit_shards(staging, directory, index)
    return index


def prepare_pairs_with_ray(rows: list[dict[str, Any]], policy: str, config: Any) -> ray.data.Dataset:
    """Offline pair rows -> tokenized pairs with the frozen reference's log-probs (``hdpo_data.PairPreparer``,
    one model copy per Ray Data actor, ``generation.num_workers`` of them), not yet executed: the caller writes
    them as shards or materializes them."""
    from polyalign_ray.config import config_to_dict
    from polyalign_ray.hdpo_data import PairPreparer

    return ray.data.from_arrow(pa.Table.from_pylist(rows)).map_batches(
        PairPreparer,
        fn_constructor_kwargs={
            "model_path": policy,
            "model": config_to_dict(config.model),
            "precompute": config.hdpo.reference == "precompute",
        },
        batch_size=64,
        batch_format="pyarrow",
        concurrency=config.generation.num_workers,
        num_cpus=1,
    )
