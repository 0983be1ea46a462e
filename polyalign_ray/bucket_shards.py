"""Per-bucket shards: a training stage's rows (SFT examples, offline HDPO pairs) written once, sorted by bucket and
key, as Arrow IPC files that each worker reads row by row, so a worker holds only the rows of its current step
whatever the corpus size.

Why this shape (issue 15; docs/training.md, "How rows reach the workers"):

- The bucket sampler draws ``(bucket, index within the bucket)`` for every slot of the global batch, identically
  on every rank (``sampler.py``). With each bucket's rows stored in key order, index ``i`` of bucket ``b`` is one
  lookup, so a rank reads exactly its own draws. The sampler's guarantees carry over unchanged: exact shares,
  the same number of steps on every rank, a resume position of a few integers. A sharded run draws the same rows
  as the in-memory design (which sorts by the same key), so its losses are the same: the loop tests check it.
- Random access rather than one sequential stream per bucket: a stream would need its own shuffle buffer and
  shuffle state per bucket and rank, in every checkpoint; the sampler's per-pass permutation already is the
  shuffle, and its position already is the resume state.
- Arrow IPC files read with plain file reads, not memory maps: mapped pages count in a worker's RSS as they are
  touched, and an epoch touches them all. A part holds record batches of ``rows_per_read`` rows; reading a row
  reads its batch, and a small LRU keeps the last few batches and open files: a bounded buffer.

A shard folder holds ``index.json`` (per bucket: its parts in key order, with row counts, first and last keys and
column sums) and ``parts/<bucket digest>/<first key digest>.arrow``. Parts are written by any number of writers
(Ray Data tasks on a cluster, :func:`write_bucket_shards` in one process); the index is built afterwards from the
writers' part rows, and refuses overlapping parts (rows not sorted, or written twice).
"""

from __future__ import annotations

import bisect
import hashlib
import itertools
import json
import os
import shutil
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

INDEX_FILE = "index.json"
FORMAT_VERSION = 1
ROWS_PER_READ = 16
"""Rows per Arrow record batch: the unit one draw reads (16 SFT examples of 200 tokens are about 25 KiB)."""
BUCKET_COLUMN = "bucket_id"
PART_COLUMNS = ("bucket_id", "path", "rows", "first_key", "last_key")
"""The columns of a writer's part rows (plus ``sum_<column>`` per summed column)."""


def _digest(text: str) -> str:
    return hashlib.blake2b(text.encode("utf-8"), digest_size=8).hexdigest()


def staging_directory(directory: str | Path) -> Path:
    """Where writers put the parts before :func:`commit_shards` moves them to ``directory``; emptied here, so a
    crashed earlier write leaves nothing behind in the new one."""
    staging = Path(str(directory) + ".writing")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    return staging


def write_parts(
    table: pa.Table,
    directory: str | Path,
    *,
    key_column: str,
    sum_columns: Sequence[str] = (),
    rows_per_read: int = ROWS_PER_READ,
) -> pa.Table:
    """Write ``table``'s rows as one part per bucket (rows in key order) under ``directory/parts``; returns one
    part row per file (:data:`PART_COLUMNS` and ``sum_<column>``) for :func:`build_index`.

    A writer may be handed any slice of the rows sorted by (bucket, key): a slice that holds a bucket's rows only
    in part writes a part that covers a key range of that bucket. Writing is idempotent (a retried task rewrites
    the same file with the same bytes) and atomic per file."""
    directory = Path(directory)
    out: dict[str, list[Any]] = {name: [] for name in PART_COLUMNS}
    out.update({f"sum_{c}": [] for c in sum_columns})
    if table.num_rows == 0:
        return pa.Table.from_pydict(out, schema=_part_schema(sum_columns))
    table = table.sort_by([(BUCKET_COLUMN, "ascending"), (key_column, "ascending")])
    buckets = table[BUCKET_COLUMN].to_pylist()
    start = 0
    for end in range(1, len(buckets) + 1):
        if end < len(buckets) and buckets[end] == buckets[start]:
            continue
        rows = table.slice(start, end - start)
        keys = rows[key_column]
        first, last = str(keys[0].as_py()), str(keys[-1].as_py())
        relative = Path("parts") / _digest(buckets[start]) / f"{_digest(first)}.arrow"
        target = directory / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        temporary = target.with_suffix(f".tmp{os.getpid()}")
        with pa.OSFile(str(temporary), "wb") as sink, pa.ipc.new_file(sink, rows.schema) as writer:
            for batch in rows.to_batches(max_chunksize=rows_per_read):
                writer.write_batch(batch)
        os.replace(temporary, target)
        out["bucket_id"].append(buckets[start])
        out["path"].append(relative.as_posix())
        out["rows"].append(rows.num_rows)
        out["first_key"].append(first)
        out["last_key"].append(last)
        for column in sum_columns:
            out[f"sum_{column}"].append(float(pc.sum(rows[column]).as_py() or 0.0))
        start = end
    return pa.Table.from_pydict(out, schema=_part_schema(sum_columns))


def _part_schema(sum_columns: Sequence[str]) -> pa.Schema:
    fields = [
        ("bucket_id", pa.string()),
        ("path", pa.string()),
        ("rows", pa.int64()),
        ("first_key", pa.string()),
        ("last_key", pa.string()),
    ]
    return pa.schema(fields + [(f"sum_{c}", pa.float64()) for c in sum_columns])


def build_index(
    parts: pa.Table, *, key_column: str, sum_columns: Sequence[str] = (), rows_per_read: int = ROWS_PER_READ
) -> dict[str, Any]:
    """The index of a shard folder from its writers' part rows: per bucket, the parts in key order with their row
    counts, and the bucket's column sums. Overlapping key ranges within a bucket are an error: the writers were
    given unsorted rows, or the same rows twice."""
    by_bucket: dict[str, list[dict[str, Any]]] = {}
    for row in parts.to_pylist():
        by_bucket.setdefault(row["bucket_id"], []).append(row)
    buckets: dict[str, Any] = {}
    for bucket in sorted(by_bucket):
        rows = sorted(by_bucket[bucket], key=lambda r: r["first_key"])
        for before, after in itertools.pairwise(rows):
            if after["first_key"] <= before["last_key"]:
                raise ValueError(
                    f"shard parts of bucket {bucket!r} overlap: keys {before['first_key']!r}..{before['last_key']!r}"
                    f" and {after['first_key']!r}..{after['last_key']!r} (rows not sorted by key, or written twice)"
                )
        buckets[bucket] = {
            "rows": sum(r["rows"] for r in rows),
            "parts": [{"path": r["path"], "rows": r["rows"]} for r in rows],
            "sums": {c: sum(r[f"sum_{c}"] for r in rows) for c in sum_columns},
        }
    return {
        "format": FORMAT_VERSION,
        "key_column": key_column,
        "rows_per_read": rows_per_read,
        "rows": sum(b["rows"] for b in buckets.values()),
        "buckets": buckets,
    }


def commit_shards(staging: Path, directory: str | Path, index: Mapping[str, Any]) -> Path:
    """Write the index into ``staging`` and put it in place of ``directory`` (the previous shards, if any, are
    removed only now: a crash while writing keeps the last complete folder)."""
    directory = Path(directory)
    (staging / INDEX_FILE).write_text(json.dumps(index, indent=1, sort_keys=True), encoding="utf-8")
    shutil.rmtree(directory, ignore_errors=True)
    staging.rename(directory)
    return directory


def write_bucket_shards(
    table: pa.Table,
    directory: str | Path,
    *,
    key_column: str,
    sum_columns: Sequence[str] = (),
    rows_per_read: int = ROWS_PER_READ,
) -> dict[str, Any]:
    """In one process: ``table``'s rows as a shard folder at ``directory``; returns the index. (On a cluster
    ``distributed.data.write_bucket_shards_with_ray`` writes the same folder from Ray Data tasks.)"""
    staging = staging_directory(directory)
    parts = write_parts(
        table, staging, key_column=key_column, sum_columns=sum_columns, rows_per_read=rows_per_read
    )
    index = build_index(parts, key_column=key_column, sum_columns=sum_columns, rows_per_read=rows_per_read)
    commit_shards(staging, directory, index)
    return index


class BucketShardReader:
    """Rows of a shard folder by ``(bucket, index within the bucket)``, index in key order.

    Holds the index (one entry per part), at most ``open_files`` open files and ``cached_batches`` record batches
    of ``rows_per_read`` rows: memory does not grow with the number of rows. ``bytes_read`` counts what was read,
    so a test can check that only the drawn rows' batches were."""

    def __init__(self, directory: str | Path, *, open_files: int = 16, cached_batches: int = 64):
        self.directory = Path(directory)
        index_path = self.directory / INDEX_FILE
        if not index_path.is_file():
            raise FileNotFoundError(f"no shard index at {index_path}: the stage writes it before training")
        index = json.loads(index_path.read_text(encoding="utf-8"))
        if index.get("format") != FORMAT_VERSION:
            raise ValueError(
                f"{index_path} has format {index.get('format')}, this code reads {FORMAT_VERSION}"
            )
        self.index = index
        self.rows_per_read = int(index["rows_per_read"])
        self._parts = {b: [p["path"] for p in v["parts"]] for b, v in index["buckets"].items()}
        self._starts: dict[str, list[int]] = {}
        for bucket, entry in index["buckets"].items():
            starts = [0]
            for part in entry["parts"]:
                starts.append(starts[-1] + int(part["rows"]))
            self._starts[bucket] = starts
        self._open_files = open_files
        self._cached_batches = cached_batches
        self._files: OrderedDict[str, tuple[pa.OSFile, pa.ipc.RecordBatchFileReader]] = OrderedDict()
        self._batches: OrderedDict[tuple[str, int], pa.RecordBatch] = OrderedDict()
        self.bytes_read = 0

    def sizes(self) -> dict[str, int]:
        """Rows per bucket."""
        return {b: int(v["rows"]) for b, v in self.index["buckets"].items()}

    def sums(self, column: str) -> dict[str, float]:
        """The per-bucket sum of a column the writers summed."""
        return {b: float(v["sums"][column]) for b, v in self.index["buckets"].items()}

    def _reader(self, path: str) -> pa.ipc.RecordBatchFileReader:
        if path in self._files:
            self._files.move_to_end(path)
            return self._files[path][1]
        handle = pa.OSFile(str(self.directory / path), "rb")
        self._files[path] = (handle, pa.ipc.open_file(handle))
        if len(self._files) > self._open_files:
            _, (old, _) = self._files.popitem(last=False)
            old.close()
        return self._files[path][1]

    def _batch(self, path: str, number: int) -> pa.RecordBatch:
        key = (path, number)
        if key in self._batches:
            self._batches.move_to_end(key)
            return self._batches[key]
        batch = self._reader(path).get_batch(number)
        self.bytes_read += batch.nbytes
        self._batches[key] = batch
        if len(self._batches) > self._cached_batches:
            self._batches.popitem(last=False)
        return batch

    def row_batch(self, bucket: str, index: int) -> pa.RecordBatch:
        """Row ``index`` of ``bucket`` as a one-row record batch."""
        starts = self._starts.get(bucket)
        if starts is None or not 0 <= index < starts[-1]:
            size = 0 if starts is None else starts[-1]
            raise IndexError(f"row {index} of bucket {bucket!r} does not exist ({size} rows)")
        part = bisect.bisect_right(starts, index) - 1
        local = index - starts[part]
        batch = self._batch(self._parts[bucket][part], local // self.rows_per_read)
        return batch.slice(local % self.rows_per_read, 1)

    def take(self, draws: Sequence[tuple[str, int]]) -> pa.Table:
        """The rows of ``draws`` in draw order."""
        return pa.Table.from_batches([self.row_batch(b, i) for b, i in draws])

    def close(self) -> None:
        for handle, _ in self._files.values():
            handle.close()
        self._files.clear()
        self._batches.clear()
