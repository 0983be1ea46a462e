"""Ray Data pipelines of the data plane: ``prepare`` (read -> normalize -> dedup -> split -> write), the
per-record feature pass of ``references``, the tokenization of a split for SFT, and the per-bucket shards the
training workers read (``bucket_shards.py``).

The per-row and per-group work is the pure code of :mod:`polyalign_ray.corpus.prepare`; this module only wires it
into Ray Data, so the distributed pipeline and the in-process one produce the same records, quarantine and counts.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import shutil
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
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
    write_bucket_shards,
    write_parts,
)
from polyalign_ray.corpus.dedup import (
    DECISION,
    DEDUP_KEY_COLUMNS,
    DUPLICATE,
    DUPLICATE_ID,
    KEEP,
    SIDE_LINE,
    DedupPlan,
    decide_duplicates_table,
    decide_id_collisions_table,
    plan_dedup,
    row_key,
    side_line,
)
from polyalign_ray.corpus.normalize import NormalizeSettings
from polyalign_ray.corpus.prepare import build_manifest, normalize_raw_table
from polyalign_ray.corpus.readers import RAW_COLUMNS, ReadUnit, read_unit, split_line_ranges
from polyalign_ray.corpus.splits import (
    HASH_BINS,
    assign_splits_table,
    boundary_bins,
    group_strata_table,
    plan_splits,
    split_stratum,
    thresholds_from_keys,
)
from polyalign_ray.corpus.tables import QUARANTINE_SCHEMA, RECORD_SCHEMA, load_split, split_dir
from polyalign_ray.distributed.batch_generation import model_actor_pool, table_in_blocks
from polyalign_ray.features import features_table, features_table_schema
from polyalign_ray.models import load_tokenizer
from polyalign_ray.schema import RECORD_COLUMNS, SPLITS
from polyalign_ray.sft_data import tokenize_records

log = logging.getLogger(__name__)
# Raw rows are re-blocked to this many rows so that normalization spreads over all CPUs even for one big file.
ROWS_PER_BLOCK = 4096
# Fewer, larger Parquet parts: one file per block made every later read start a task per small file.
# Offline pairs per reference-log-prob batch, and per block, so that every PairPreparer actor gets work.
PAIR_BATCH_ROWS = 64
PARQUET_ROWS_PER_FILE = 100_000
# Rows per shard-writing task (a part file holds at most this many rows of one bucket).
SHARD_ROWS_PER_PART = 8192
# Up to this many rows, shards are written by the driver (no Ray Data sort): a few MB of token ids.
SHARDS_IN_PROCESS_MAX_ROWS = 20_000


def _rows_equal(table: pa.Table, column: str, value: Any, *, equal: bool = True) -> pa.Table:
    mask = pc.equal(table[column], value)
    return table.filter(mask if equal else pc.invert(mask))


# A JSONL file larger than this is read by several tasks, each a line-aligned byte range of about this size: a read
# task's memory is bounded by it, not by the file (one task per whole 100 MB file made Ray Data workers grow with
# the corpus; bench/results/data_scale.md).
READ_RANGE_BYTES = 32 * 1024 * 1024
RAW_SCHEMA = pa.schema([(name, pa.int64() if name == "origin_line" else pa.string()) for name in RAW_COLUMNS])


def _read_unit_batches(units: pa.Table, *, max_chars: int) -> Iterator[pa.Table]:
    """Raw rows of read units, yielded ``ROWS_PER_BLOCK`` at a time (a generator: Ray Data streams each batch
    on as it is made, so a task never holds a unit's rows all at once)."""
    for unit_row in units.to_pylist():
        rows: list[dict[str, Any]] = []
        for row in read_unit(ReadUnit(**unit_row), max_chars=max_chars):
            rows.append(row)
            if len(rows) == ROWS_PER_BLOCK:
                yield pa.Table.from_pylist(rows, schema=RAW_SCHEMA)
                rows = []
        if rows:
            yield pa.Table.from_pylist(rows, schema=RAW_SCHEMA)


# Ray Data's hash shuffle (keyed repartition, sort) concatenates up to DataContext.shuffle_input_batch_bytes of input
# blocks per map task before partitioning them, 1 GiB by default: that batch and its partitions were the largest
# private memory of a prepare at scale (a Ray Data worker at 1.9 GiB on 1.6M rows, bench/results/data_scale.md).
SHUFFLE_INPUT_BATCH_BYTES = 128 * 2**20


@contextlib.contextmanager
def bounded_shuffle_batches(limit: int = SHUFFLE_INPUT_BATCH_BYTES) -> Iterator[None]:
    """Ray Data shuffles started inside batch at most ``limit`` bytes of input per map task (the driver's
    DataContext travels with the execution); the previous setting is restored after."""
    context = ray.data.DataContext.get_current()
    previous = context.shuffle_input_batch_bytes
    context.shuffle_input_batch_bytes = min(previous, limit) if previous else limit
    try:
        yield
    finally:
        context.shuffle_input_batch_bytes = previous


# Below this many records the split and dedup plans are made on the driver from five small key columns (fast, a
# few hundred MB at most); above it they are made by hash-partitioned Ray Data passes, so no process holds a
# per-record structure of the whole corpus. Both give the same records and side files (tests/ray/test_data_plane.py).
DRIVER_PLAN_MAX_RECORDS = 200_000
# Records per hash partition of the distributed plan: each partition is decided whole by one task.
PARTITION_ROWS = 50_000
SIDE_SCHEMA = pa.schema(
    [("file", pa.string()), ("origin_file", pa.string()), ("origin_line", pa.int64()), ("line", pa.string())]
)
"""A line of a side file (``file``: quarantine or duplicates), with the origin it is ordered by."""


def _outcome_tallies(batch: pa.Table) -> pa.Table:
    """One row of counts per batch of normalize outcomes: raw rows read, records, records beyond a raw row's
    first (expanded turns), and the skipped-turn and quarantine reasons."""
    statuses = batch["status"].to_pylist()
    firsts = batch["first_of_row"].to_pylist()
    records = statuses.count("record")
    skipped = Counter(r for turns in batch["skipped_turns"].to_pylist() for r in turns or [])
    reasons = Counter(
        r for r, s in zip(batch["reason"].to_pylist(), statuses, strict=True) if s == "quarantine"
    )
    return pa.table(
        {
            "read": [sum(1 for f in firsts if f)],
            "records": [records],
            "expanded": [
                records - sum(1 for s, f in zip(statuses, firsts, strict=True) if f and s == "record")
            ],
            "skipped": [json.dumps(skipped)],
            "reasons": [json.dumps(reasons)],
        }
    )


def _quarantine_side_rows(batch: pa.Table) -> pa.Table:
    entries = _rows_equal(batch, "status", "quarantine").select(list(QUARANTINE_SCHEMA.names)).to_pylist()
    return pa.Table.from_pydict(
        {
            "file": ["quarantine"] * len(entries),
            "origin_file": [e["origin_file"] for e in entries],
            "origin_line": [e["origin_line"] for e in entries],
            "line": [side_line(e) for e in entries],
        },
        schema=SIDE_SCHEMA,
    )


def _decision_side_rows(batch: pa.Table) -> pa.Table:
    dropped = _rows_equal(batch, DECISION, KEEP, equal=False)
    decisions = dropped[DECISION].to_pylist()
    return pa.Table.from_pydict(
        {
            "file": ["duplicates" if d == DUPLICATE else "quarantine" for d in decisions],
            "origin_file": dropped["origin_file"],
            "origin_line": dropped["origin_line"],
            "line": dropped[SIDE_LINE],
        },
        schema=SIDE_SCHEMA,
    )


def _decision_counts(batch: pa.Table) -> pa.Table:
    """Per batch of decided records: (decision, split, bucket) -> rows."""
    counts = Counter(
        zip(
            batch[DECISION].to_pylist(),
            batch["split"].to_pylist(),
            batch["bucket_id"].to_pylist(),
            strict=True,
        )
    )
    return pa.table(
        {
            "decision": [k[0] for k in counts],
            "split": [k[1] for k in counts],
            "bucket_id": [k[2] for k in counts],
            "n": list(counts.values()),
        }
    )


def _decided_on_driver(table: pa.Table, plan: DedupPlan, splits: dict[str, str]) -> pa.Table:
    records = _rows_equal(table, "status", "record").select(list(RECORD_COLUMNS))
    split_column = pa.array([splits[g] for g in records["group_id"].to_pylist()], type=pa.string())
    records = records.set_column(records.schema.get_field_index("split"), "split", split_column)
    decisions, lines = [], []
    for row in records.select(list(DEDUP_KEY_COLUMNS)).to_pylist():
        key = row_key(row)
        if key in plan.duplicates:
            decisions.append(DUPLICATE)
            lines.append(side_line(plan.duplicates[key]))
        elif key in plan.collisions:
            decisions.append(DUPLICATE_ID)
            lines.append(side_line(plan.collisions[key]))
        else:
            decisions.append(KEEP)
            lines.append("")
    return records.append_column(DECISION, pa.array(decisions, type=pa.string())).append_column(
        SIDE_LINE, pa.array(lines, type=pa.string())
    )


def plan_on_driver(outcomes: ray.data.Dataset, settings: NormalizeSettings) -> ray.data.Dataset:
    """Records with their split and dedup decision, planned on the driver from the key columns of every record
    (:func:`~polyalign_ray.corpus.splits.plan_splits`, :func:`~polyalign_ray.corpus.dedup.plan_dedup`, the
    functions the in-process engine uses) and applied by Ray Data tasks."""
    columns = ["status", "group_id", "source", "language"]
    columns += [c for c in DEDUP_KEY_COLUMNS if c not in columns]
    keys = pa.concat_tables(ray.get(outcomes.select_columns(columns).to_arrow_refs()))
    record_keys = _rows_equal(keys, "status", "record").to_pylist()
    splits = plan_splits(
        ((r["group_id"], split_stratum(r["source"], r["language"])) for r in record_keys),
        seed=settings.seed,
        val_fraction=settings.val_fraction,
        test_fraction=settings.test_fraction,
    )
    for row in record_keys:
        row["split"] = splits[row["group_id"]]
    plan = plan_dedup(record_keys)
    return outcomes.map_batches(
        _decided_on_driver, fn_kwargs={"plan": plan, "splits": splits}, batch_format="pyarrow"
    )


def _bin_counts(groups: pa.Table) -> pa.Table:
    """One row per stratum of a block of groups: its hash histogram as one array of HASH_BINS counts (dense, so
    what reaches the driver does not grow with the number of groups)."""
    counts: dict[str, np.ndarray] = {}
    for stratum, b in zip(groups["stratum"].to_pylist(), groups["bin"].to_pylist(), strict=True):
        counts.setdefault(stratum, np.zeros(HASH_BINS, dtype=np.int64))[b] += 1
    return pa.table(
        {
            "stratum": list(counts),
            "counts": pa.array([c.tolist() for c in counts.values()], pa.list_(pa.int64())),
        }
    )


def _boundary_groups(groups: pa.Table, wanted: dict[str, list[int]]) -> pa.Table:
    keep = [
        b in wanted.get(s, ())
        for s, b in zip(groups["stratum"].to_pylist(), groups["bin"].to_pylist(), strict=True)
    ]
    return groups.filter(pa.array(keep, type=pa.bool_()))


def _by_key(dataset: ray.data.Dataset, key: str, partitions: int, fn: Any, **kwargs: Any) -> ray.data.Dataset:
    """``fn`` on whole groups of ``key``: a hash repartition into exactly ``partitions`` blocks, each handed to
    ``fn`` as one batch."""
    return dataset.repartition(partitions, keys=[key]).map_batches(
        fn, fn_kwargs=kwargs, batch_format="pyarrow", batch_size=None
    )


def plan_distributed(
    outcomes: ray.data.Dataset,
    settings: NormalizeSettings,
    records: int,
    *,
    partition_rows: int = PARTITION_ROWS,
) -> ray.data.Dataset:
    """Records with their split and dedup decision, planned by Ray Data passes hash-partitioned by group, content
    key and id; the driver holds only the hash histogram of the groups and the keys of its boundary bins.

    1. Groups (partitioned by ``group_id``): each group's stratum and hash; the histogram per (stratum, bin).
    2. The split thresholds of each stratum from the histogram and the keys of the bins that hold them
       (``corpus.splits.thresholds_from_keys``); each group's split against them, within its partition.
    3. Duplicates (partitioned by content key), then id collisions among the survivors (partitioned by id): the
       per-group decisions of ``corpus.dedup``, which ``plan_dedup`` makes on one table."""
    fractions = {"val_fraction": settings.val_fraction, "test_fraction": settings.test_fraction}
    partitions = max(2, math.ceil(records / partition_rows))
    record_rows = outcomes.map_batches(
        lambda t: _rows_equal(t, "status", "record").select(list(RECORD_COLUMNS)), batch_format="pyarrow"
    )
    groups = _by_key(
        record_rows.select_columns(["group_id", "source", "language"]),
        "group_id",
        partitions,
        group_strata_table,
        seed=settings.seed,
    ).materialize()
    dense: dict[str, np.ndarray] = {}
    for batch in groups.map_batches(_bin_counts, batch_format="pyarrow").iter_batches(batch_format="pyarrow"):
        for stratum, counts in zip(batch["stratum"].to_pylist(), batch["counts"].to_pylist(), strict=True):
            dense[stratum] = dense.get(stratum, 0) + np.asarray(counts, dtype=np.int64)
    histogram = {s: {int(b): int(c[b]) for b in np.flatnonzero(c)} for s, c in dense.items()}
    wanted = {s: [b for _, b, _ in found] for s, found in boundary_bins(histogram, **fractions).items()}
    bin_keys: dict[str, dict[int, list[tuple[float, str]]]] = {}
    boundary = groups.map_batches(_boundary_groups, fn_kwargs={"wanted": wanted}, batch_format="pyarrow")
    for row in boundary.take_all():
        bin_keys.setdefault(row["stratum"], {}).setdefault(int(row["bin"]), []).append(
            (float(row["fraction"]), str(row["group_id"]))
        )
    thresholds = thresholds_from_keys(histogram, bin_keys, **fractions)
    with_split = _by_key(
        record_rows, "group_id", partitions, assign_splits_table, thresholds=thresholds, seed=settings.seed
    )
    deduped = _by_key(with_split, "content_key", partitions, decide_duplicates_table).materialize()
    survivors = deduped.map_batches(_rows_equal, fn_args=(DECISION, KEEP), batch_format="pyarrow")
    dropped = deduped.map_batches(
        _rows_equal, fn_args=(DECISION, KEEP), fn_kwargs={"equal": False}, batch_format="pyarrow"
    )
    return _by_key(survivors, "id", partitions, decide_id_collisions_table).union(dropped)


def _write_side_files_streamed(
    output_dir: Path, side: ray.data.Dataset | None, manifest: dict[str, Any]
) -> None:
    """quarantine.jsonl and duplicates.jsonl in origin order (Ray Data sorts; the driver streams the sorted lines
    into the files, holding a batch at a time), then manifest.json, last."""
    handles = {
        name: (output_dir / f"{name}.jsonl").open("w", encoding="utf-8")
        for name in ("quarantine", "duplicates")
    }
    try:
        if side is not None:
            ordered = side.sort(["origin_file", "origin_line", "line"])
            for batch in ordered.iter_batches(batch_format="pyarrow", batch_size=4096):
                for name, line in zip(batch["file"].to_pylist(), batch["line"].to_pylist(), strict=True):
                    handles[name].write(line + "\n")
    finally:
        for handle in handles.values():
            handle.close()
    (output_dir / "manifest.json").write_text(
        json.dumps(manifest, indent=2, ensure_ascii=False), encoding="utf-8"
    )


@bounded_shuffle_batches()
def prepare_with_ray(
    units: Sequence[ReadUnit],
    settings: NormalizeSettings,
    output_dir: str | Path,
    *,
    max_row_chars: int,
    plan: str = "auto",
    partition_rows: int = PARTITION_ROWS,
    read_range_bytes: int = READ_RANGE_BYTES,
) -> dict[str, Any]:
    """The prepare stage on Ray Data; returns the manifest (also written to ``output_dir``).

    Input is read by one task per file or per line-aligned byte range of a large JSONL file (``read_range_bytes``),
    each streaming its rows on in blocks.

    Normalization runs as parallel Ray Data tasks and is materialized once (the object store spills to disk when
    it must). Counts come back as one row per batch. The split and dedup plans are made on the driver from the
    key columns (``plan="driver"``) or by hash-partitioned Ray Data passes (``"distributed"``); ``"auto"``
    takes the driver up to :data:`DRIVER_PLAN_MAX_RECORDS` records. Each split is then written by Ray Data as
    Parquet parts, and the side files are streamed in origin order.
    """
    start = time.perf_counter()
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    read_units = [r for u in units for r in split_line_ranges(u, read_range_bytes)]
    units_ds = ray.data.from_items(
        [u.to_row() for u in read_units], override_num_blocks=max(len(read_units), 1)
    )
    raw = units_ds.map_batches(
        _read_unit_batches, fn_kwargs={"max_chars": max_row_chars}, batch_size=1, batch_format="pyarrow"
    )
    raw = raw.repartition(target_num_rows_per_block=ROWS_PER_BLOCK)
    outcomes = raw.map_batches(
        normalize_raw_table,
        fn_kwargs={"settings": settings},
        batch_format="pyarrow",
        batch_size=ROWS_PER_BLOCK,
    ).materialize()

    tallies = outcomes.map_batches(_outcome_tallies, batch_format="pyarrow").take_all()
    read, records, expanded = (sum(int(t[k]) for t in tallies) for k in ("read", "records", "expanded"))
    skipped: Counter[str] = sum((Counter(json.loads(t["skipped"])) for t in tallies), Counter())
    reasons: Counter[str] = sum((Counter(json.loads(t["reasons"])) for t in tallies), Counter())
    distributed = plan == "distributed" or (plan == "auto" and records > DRIVER_PLAN_MAX_RECORDS)
    log.info(
        "prepare: %d rows read, %d records; planning %s",
        read,
        records,
        "with Ray Data" if distributed else "on the driver",
    )
    if distributed:
        decided = plan_distributed(outcomes, settings, records, partition_rows=partition_rows)
    else:
        decided = plan_on_driver(outcomes, settings)
    decided = decided.materialize()

    split_bucket_counts: Counter[tuple[str, str]] = Counter()
    dropped: Counter[str] = Counter()
    counted = decided.map_batches(_decision_counts, batch_format="pyarrow")
    for batch in counted.iter_batches(batch_format="pyarrow"):
        for row in batch.to_pylist():
            if row["decision"] == KEEP:
                split_bucket_counts[(str(row["split"]), str(row["bucket_id"]))] += int(row["n"])
            else:
                dropped[row["decision"]] += int(row["n"])
    kept = decided.map_batches(_rows_equal, fn_args=(DECISION, KEEP), batch_format="pyarrow").drop_columns(
        [DECISION, SIDE_LINE]
    )
    for split in SPLITS:
        target = split_dir(output_dir, split)
        shutil.rmtree(target, ignore_errors=True)
        if any(s == split for s, _ in split_bucket_counts):
            part = kept.map_batches(_rows_equal, fn_args=("split", split), batch_format="pyarrow")
            part.write_parquet(str(target), min_rows_per_file=PARQUET_ROWS_PER_FILE)
        target.mkdir(parents=True, exist_ok=True)
    reasons[DUPLICATE_ID] += dropped[DUPLICATE_ID]
    manifest = build_manifest(
        read=read,
        expanded=expanded,
        split_bucket_counts=split_bucket_counts,
        quarantine_counts=+reasons,
        duplicates=dropped[DUPLICATE],
        skipped_turn_counts=skipped,
        units=units,
        settings=settings,
        engine="ray-data",
        seconds=time.perf_counter() - start,
    )
    side = None
    if sum(reasons.values()) + dropped[DUPLICATE]:
        side = outcomes.map_batches(_quarantine_side_rows, batch_format="pyarrow").union(
            decided.map_batches(_decision_side_rows, batch_format="pyarrow")
        )
    _write_side_files_streamed(output_dir, side, manifest)
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
    records: int | None = None,
) -> dict[str, Any]:
    """Token ids and labels of every record of ``split`` as per-bucket shards keyed by example id (what
    ``example_store=shards`` workers read); streamed from the split's files to the shards, never whole on the
    driver. Returns the shard index. A split of at most :data:`SHARDS_IN_PROCESS_MAX_ROWS` ``records`` is
    tokenized and written in this process instead: the same shards without a Ray Data job (seconds saved per
    stage on small corpora; the test suite and the demo)."""
    if records is not None and records <= SHARDS_IN_PROCESS_MAX_ROWS:
        tokenized = tokenize_records(
            load_split(data_dir, split),
            _cached_tokenizer(tokenizer_path),
            max_length=max_length,
            profile_conditioning=profile_conditioning,
            train_history_turns=train_history_turns,
        )
        return write_bucket_shards(tokenized, directory, key_column="id")
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
    expected_rows: int | None = None,
) -> dict[str, Any]:
    """``dataset``'s rows as a per-bucket shard folder at ``directory`` (``bucket_shards.py``): Ray Data sorts
    them by (bucket, key) (a distributed sort: no task holds more than its blocks), tasks write the sorted
    batches as part files, and only their part rows (one per file) come back to build the index. Returns it.
    With at most :data:`SHARDS_IN_PROCESS_MAX_ROWS` ``expected_rows`` the rows are gathered and written here
    (the same folder; a distributed sort costs seconds whatever the size)."""
    if expected_rows is not None and expected_rows <= SHARDS_IN_PROCESS_MAX_ROWS:
        tables = [t for t in ray.get(dataset.to_arrow_refs()) if t.num_rows]
        if tables:
            return write_bucket_shards(
                pa.concat_tables(tables), directory, key_column=key_column, sum_columns=sum_columns
            )
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
    one model copy per Ray Data actor, up to ``generation.num_workers`` of them), not yet executed: the caller writes
    them as shards or materializes them. A small job (``hdpo_data.prepares_pairs_in_process``: the demo's) is
    prepared in the driver instead, in the same batches, and handed over as a dataset of its blocks."""
    from polyalign_ray.config import config_to_dict
    from polyalign_ray.hdpo_data import PairPreparer, prepare_pairs_in_process, prepares_pairs_in_process

    precompute = config.hdpo.reference == "precompute"
    if prepares_pairs_in_process(len(rows), policy, precompute=precompute):
        began = time.perf_counter()
        table = prepare_pairs_in_process(
            rows, policy, config_to_dict(config.model), precompute=precompute, batch_rows=PAIR_BATCH_ROWS
        )
        log.info("hdpo: %d pairs prepared in the driver in %.1f s", len(rows), time.perf_counter() - began)
        prepared = table_in_blocks(table, PAIR_BATCH_ROWS)
        prepared.context.execution_options.preserve_order = True
        return prepared
    prepared = table_in_blocks(pa.Table.from_pylist(rows), PAIR_BATCH_ROWS).map_batches(
        PairPreparer,
        fn_constructor_kwargs={
            "model_path": policy,
            "model": config_to_dict(config.model),
            "precompute": precompute,
        },
        batch_size=PAIR_BATCH_ROWS,
        batch_format="pyarrow",
        compute=model_actor_pool(config.generation.num_workers),  # CPU actors (num_cpus=1 below)
        num_cpus=1,
    )
    # the pairs keep the rows' order whichever actor prepared them: the in-memory store groups them by bucket in
    # this order and the bucket sampler draws by position, so a rerun (a resume) trains on the same pairs
    prepared.context.execution_options.preserve_order = True
    return prepared
