"""Input files -> raw rows, each with where it came from.

A raw row is a plain dict ``{"origin_file", "origin_line", "raw", "read_error"}``: ``raw`` is the row as JSON text
(a JSONL line as read, or a Parquet/HF/JSON-array row dumped to JSON), so rows of any shape travel through Ray Data
under one fixed schema and are parsed only at normalization. ``read_error`` is a quarantine reason code when the
bytes could not even be read as text (binary garbage, oversized rows). Blank lines are not rows.

Files are split into *read units* (one per file, or one per split of an HF dataset folder) so that Ray Data can read
them in parallel; :func:`read_unit` is the per-unit work, the same in Ray and in the in-process pipeline. A large
uncompressed JSONL file is further split into line-aligned byte ranges (:func:`split_line_ranges`), so that no read
task holds a whole file: a task's memory is bounded by the range size, not by the corpus.
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

JSONL_SUFFIXES = (".jsonl", ".ndjson", ".jsonl.gz", ".ndjson.gz")
JSON_SUFFIXES = (".json", ".json.gz")
PARQUET_SUFFIXES = (".parquet",)
# A share of non-text bytes above this marks a line as binary garbage rather than text with a stray bad byte.
BINARY_BYTE_SHARE = 0.05
RAW_COLUMNS = ("origin_file", "origin_line", "raw", "read_error")


class InputError(ValueError):
    """An input path that cannot be used at all (missing, or no supported file in it)."""


@dataclasses.dataclass(frozen=True)
class ReadUnit:
    """One independently readable piece of input: a file, or one split of an HF dataset folder."""

    path: str
    kind: str  # "jsonl" | "json" | "parquet" | "hf"
    hf_split: str = ""
    byte_start: int = 0
    """jsonl: the unit reads the lines that start at byte offsets in [byte_start, byte_end)."""
    byte_end: int = -1
    """-1: to the end of the file."""
    first_line: int = 1
    """The 1-based line number of the line starting at ``byte_start`` (origin_line counts from the file's start)."""

    def to_row(self) -> dict[str, str]:
        return dataclasses.asdict(self)


def _suffix_kind(path: Path) -> str | None:
    name = path.name.lower()
    if name.endswith(JSONL_SUFFIXES):
        return "jsonl"
    if name.endswith(JSON_SUFFIXES):
        return "json"
    if name.endswith(PARQUET_SUFFIXES):
        return "parquet"
    return None


def _is_hf_dataset_dir(path: Path) -> bool:
    """``datasets.save_to_disk`` folders carry ``dataset_info.json``+``state.json`` or ``dataset_dict.json``."""
    return (path / "dataset_dict.json").is_file() or (
        (path / "state.json").is_file() and (path / "dataset_info.json").is_file()
    )


def _hf_units(path: Path) -> list[ReadUnit]:
    if (path / "dataset_dict.json").is_file():
        splits = json.loads((path / "dataset_dict.json").read_text(encoding="utf-8")).get("splits", [])
        return [ReadUnit(str(path), "hf", split) for split in splits]
    return [ReadUnit(str(path), "hf", "")]


def _folder_units(folder: Path) -> list[ReadUnit]:
    """Supported files below ``folder`` in sorted order; datasets folders become HF units and are not entered;
    hidden files and folders are skipped."""
    units: list[ReadUnit] = []
    for root, dirs, files in os.walk(folder):
        root_path = Path(root)
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in list(dirs):
            if _is_hf_dataset_dir(root_path / name):
                units.extend(_hf_units(root_path / name))
                dirs.remove(name)
        for name in sorted(files):
            kind = _suffix_kind(root_path / name)
            if kind and not name.startswith("."):
                units.append(ReadUnit(str(root_path / name), kind))
    return sorted(units, key=lambda u: (u.path, u.hf_split))


def discover_read_units(inputs: list[str] | tuple[str, ...]) -> list[ReadUnit]:
    """Expand input paths (files, folders, HF ``save_to_disk`` folders) into read units, in a stable order.

    Raises :class:`InputError` naming the path when a path does not exist or holds no supported file, because a
    typo in a path must stop the run, not produce an empty corpus.
    """
    units: list[ReadUnit] = []
    for given in inputs:
        path = Path(given)
        if not path.exists():
            raise InputError(
                f"input {given!r} does not exist; check the path passed to --input / data.inputs"
            )
        if path.is_dir():
            if _is_hf_dataset_dir(path):
                units.extend(_hf_units(path))
                continue
            found = _folder_units(path)
            if not found:
                raise InputError(
                    f"input folder {given!r} holds no .jsonl/.json/.parquet file and is not a datasets folder"
                )
            units.extend(found)
            continue
        kind = _suffix_kind(path)
        if kind is None:
            raise InputError(
                f"input {given!r}: unsupported file type; use .jsonl, .json, .parquet (optionally .gz for JSON) "
                "or a folder written by datasets.save_to_disk"
            )
        units.append(ReadUnit(str(path), kind))
    return units


SCAN_BLOCK_BYTES = 1024 * 1024
"""Read size of the newline scan that splits a large file into ranges; it runs on the prepare driver, whose peak
memory it adds to (twice: the next block is read while the last is still held), so it is kept small."""


def split_line_ranges(unit: ReadUnit, max_bytes: int) -> list[ReadUnit]:
    """An uncompressed JSONL unit larger than ``max_bytes`` as consecutive line-aligned byte ranges of about
    ``max_bytes`` each (a range ends after the first newline at or past its target size); any other unit as is.

    One streamed pass counts the newlines before each boundary, so every range knows its first line number and
    the rows keep the origin_line of a whole-file read. Memory: one scan block."""
    if unit.kind != "jsonl" or unit.path.lower().endswith(".gz") or max_bytes < 1:
        return [unit]
    size = os.path.getsize(unit.path)
    if size <= max_bytes:
        return [unit]
    starts = [(0, 1)]  # (byte offset, line number of the line starting there)
    target = max_bytes
    with open(unit.path, "rb") as handle:
        position, newlines = 0, 0
        while block := handle.read(SCAN_BLOCK_BYTES):
            search_from = max(target - position, 0)
            while search_from < len(block):
                found = block.find(b"\n", search_from)
                if found < 0:
                    break
                offset = position + found + 1
                if offset < size:
                    starts.append((offset, newlines + block.count(b"\n", 0, found + 1) + 1))
                target = offset + max_bytes
                search_from = max(target - position, found + 1)
            newlines += block.count(b"\n")
            position += len(block)
    ends = [offset for offset, _ in starts[1:]] + [-1]
    return [
        dataclasses.replace(unit, byte_start=start, byte_end=end, first_line=line)
        for (start, line), end in zip(starts, ends, strict=True)
    ]


def _open_bytes(path: str) -> bytes:
    if path.lower().endswith(".gz"):
        with gzip.open(path, "rb") as handle:
            return handle.read()
    return Path(path).read_bytes()


# Bytes that never occur in UTF-8 text: controls other than tab/newline/CR, and 0xC0, 0xC1, 0xF5-0xFF.
_NON_TEXT_BYTES = bytes([b for b in range(32) if b not in (9, 10, 13)] + [0xC0, 0xC1, *range(0xF5, 0x100)])


def _non_text_share(data: bytes) -> float:
    """Share of bytes that never occur in UTF-8 text (counted in C by ``bytes.translate``)."""
    if not data:
        return 0.0
    return (len(data) - len(data.translate(None, _NON_TEXT_BYTES))) / len(data)


def decode_line(data: bytes, *, max_chars: int) -> tuple[str | None, str | None]:
    """Decode one raw line: (text, None) or (None, reason) with reason ``binary_garbage``, ``invalid_utf8`` or
    ``oversized_row``."""
    if len(data) > 4 * max_chars:
        return None, "oversized_row"
    if b"\x00" in data or _non_text_share(data) > BINARY_BYTE_SHARE:
        return None, "binary_garbage"
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return None, "invalid_utf8"
    if len(text) > max_chars:
        return None, "oversized_row"
    return text, None


def _raw_row(origin_file: str, origin_line: int, raw: str, read_error: str = "") -> dict[str, Any]:
    return {"origin_file": origin_file, "origin_line": origin_line, "raw": raw, "read_error": read_error}


def _preview(data: bytes, limit: int = 200) -> str:
    return data[:limit].decode("utf-8", errors="backslashreplace")


def _line_rows(
    path: str, lines: Iterator[bytes], first_line: int, max_chars: int
) -> Iterator[dict[str, Any]]:
    """Raw rows of JSONL lines (each with or without its newline), numbered from ``first_line``."""
    for line_no, line in enumerate(lines, start=first_line):
        line = line.rstrip(b"\n").rstrip(b"\r")
        if not line.strip():
            continue
        text, error = decode_line(line, max_chars=max_chars)
        if error:
            yield _raw_row(path, line_no, _preview(line), error)
        else:
            yield _raw_row(path, line_no, text or "")


def _jsonl_rows(path: str, data: bytes, max_chars: int) -> Iterator[dict[str, Any]]:
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    yield from _line_rows(path, iter(data.split(b"\n")), 1, max_chars)


def _without_bom(lines: Iterator[bytes]) -> Iterator[bytes]:
    first = next(lines, None)
    if first is None:
        return
    yield first[3:] if first.startswith(b"\xef\xbb\xbf") else first
    yield from lines


def _lines_in_range(handle: Any, start: int, end: int) -> Iterator[bytes]:
    """The lines of a binary file that start at offsets in [start, end) (end -1: to the end of the file)."""
    handle.seek(start)
    position = start
    for line in handle:
        if 0 <= end <= position:
            return
        yield line
        position += len(line)


def _streamed_jsonl_rows(unit: ReadUnit, max_chars: int) -> Iterator[dict[str, Any]]:
    """A JSONL unit read line by line (never the whole file in memory); a byte range of it when it has one."""
    if unit.path.lower().endswith(".gz"):
        with gzip.open(unit.path, "rb") as handle:
            yield from _line_rows(unit.path, _without_bom(iter(handle)), 1, max_chars)
        return
    with open(unit.path, "rb") as handle:
        lines = _lines_in_range(handle, unit.byte_start, unit.byte_end)
        if unit.byte_start == 0:
            lines = _without_bom(lines)
        yield from _line_rows(unit.path, lines, unit.first_line, max_chars)


def _json_default(value: Any) -> Any:
    """JSON fallback for values Parquet/Arrow rows may carry (bytes, dates, numpy scalars)."""
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)


def _dumped_rows(path: str, rows: Iterator[Any], max_chars: int) -> Iterator[dict[str, Any]]:
    for index, row in enumerate(rows, start=1):
        raw = json.dumps(row, ensure_ascii=False, default=_json_default)
        if len(raw) > max_chars:
            yield _raw_row(path, index, raw[:200], "oversized_row")
        else:
            yield _raw_row(path, index, raw)


def _json_rows(path: str, data: bytes, max_chars: int) -> Iterator[dict[str, Any]]:
    """A ``.json`` file: one array of rows, an object holding one list of rows (``{"data": [...]}``), or, as many
    ``.json`` files really are, JSON Lines."""
    try:
        document = json.loads(data.decode("utf-8-sig"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        yield from _jsonl_rows(path, data, max_chars)
        return
    if isinstance(document, dict):
        lists = [v for v in document.values() if isinstance(v, list)]
        document = lists[0] if len(lists) == 1 else [document]
    if not isinstance(document, list):
        document = [document]
    yield from _dumped_rows(path, iter(document), max_chars)


def _parquet_rows(path: str, max_chars: int) -> Iterator[dict[str, Any]]:
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except Exception as exc:  # any unreadable file is quarantined as one row, never a crash
        yield _raw_row(path, 0, f"{type(exc).__name__}: {exc}"[:500], "unreadable_file")
        return
    rows = (row for batch in parquet.iter_batches(batch_size=4096) for row in batch.to_pylist())
    yield from _dumped_rows(path, rows, max_chars)


def _hf_rows(unit: ReadUnit, max_chars: int) -> Iterator[dict[str, Any]]:
    import datasets

    loaded = datasets.load_from_disk(unit.path)
    table = loaded[unit.hf_split] if unit.hf_split else loaded
    origin = f"{unit.path}[{unit.hf_split}]" if unit.hf_split else unit.path
    yield from _dumped_rows(origin, iter(table), max_chars)


def read_unit(unit: ReadUnit, *, max_chars: int) -> Iterator[dict[str, Any]]:
    """Every raw row of one read unit, in file order, line numbers 1-based (row numbers for tabular inputs)."""
    if unit.kind == "parquet":
        yield from _parquet_rows(unit.path, max_chars)
    elif unit.kind == "hf":
        yield from _hf_rows(unit, max_chars)
    elif unit.kind == "jsonl":
        try:
            yield from _streamed_jsonl_rows(unit, max_chars)
        except OSError as exc:
            yield _raw_row(unit.path, 0, f"{type(exc).__name__}: {exc}"[:500], "unreadable_file")
    else:
        try:
            data = _open_bytes(unit.path)
        except OSError as exc:
            yield _raw_row(unit.path, 0, f"{type(exc).__name__}: {exc}"[:500], "unreadable_file")
            return
        yield from _json_rows(unit.path, data, max_chars)
