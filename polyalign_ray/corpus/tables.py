"""Arrow tables of records: one fixed schema, so every writer (Ray Data or in-process) produces the same files and
every reader (Ray Data, pandas, the training loops) sees the same columns."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from polyalign_ray.schema import RECORD_COLUMNS, SPLITS

HISTORY_TYPE = pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))
_INT_COLUMNS = {"length_tokens", "origin_line"}
_BOOL_COLUMNS = {"machine_translated"}


def _arrow_type(column: str) -> pa.DataType:
    if column == "history":
        return HISTORY_TYPE
    if column in _INT_COLUMNS:
        return pa.int64()
    if column in _BOOL_COLUMNS:
        return pa.bool_()
    return pa.string()


RECORD_SCHEMA = pa.schema([(c, _arrow_type(c)) for c in RECORD_COLUMNS])
QUARANTINE_SCHEMA = pa.schema(
    [
        ("reason", pa.string()),
        ("detail", pa.string()),
        ("origin_file", pa.string()),
        ("origin_line", pa.int64()),
        ("raw", pa.string()),
    ]
)


def records_table(rows: Iterable[Mapping[str, Any]]) -> pa.Table:
    """Record rows (``Record.to_row()`` dicts) -> a table with :data:`RECORD_SCHEMA`."""
    rows = list(rows)
    return pa.Table.from_pylist([{c: row[c] for c in RECORD_COLUMNS} for row in rows], schema=RECORD_SCHEMA)


def split_dir(data_dir: str | Path, split: str) -> Path:
    """Where the records of ``split`` live: ``DATA_DIR/<split>/`` holding ``*.parquet`` parts."""
    return Path(data_dir) / split


def load_split(data_dir: str | Path, split: str) -> pa.Table:
    """All records of one split, sorted by id so that row indices are stable across runs and machines."""
    directory = split_dir(data_dir, split)
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    parts = sorted(directory.glob("*.parquet")) if directory.is_dir() else []
    if not parts:
        return RECORD_SCHEMA.empty_table()
    table = pa.concat_tables(
        [
            with_record_columns(pq.read_table(p)).select(list(RECORD_COLUMNS)).cast(RECORD_SCHEMA)
            for p in parts
        ]
    )
    return table.sort_by("id")


def with_record_columns(table: pa.Table) -> pa.Table:
    """``table`` with every record column: string columns added to the record since a data directory was written
    (``source_split``, ``source_id``) are filled with empty strings, so older data directories still load."""
    for name in RECORD_COLUMNS:
        if name not in table.column_names and _arrow_type(name) == pa.string():
            table = table.append_column(name, pa.array([""] * table.num_rows, type=pa.string()))
    return table


def write_split(table: pa.Table, data_dir: str | Path, split: str) -> Path:
    """Write one split as a single Parquet part (the in-process writer; Ray Data writes several parts)."""
    directory = split_dir(data_dir, split)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "part-00000.parquet"
    pq.write_table(table.cast(RECORD_SCHEMA), path)
    return path
