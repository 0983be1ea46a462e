"""Exact deduplication across all inputs, and id collisions.

Records that share a ``content_key`` (same normalized prompt, context, history and response) are one example
seen several times. The survivor is the copy in the highest-priority split (test > val > train), so a test
example can never also be trained on; among copies of the same split, a seeded hash of the id decides, so the
choice does not depend on input order or on how Ray partitioned the data.

Records whose *given* ids collide while their contents differ cannot both keep the id (downstream stages key
pairs, rollouts and scores by id): the first by the same rank keeps it, the others are quarantined as
``duplicate_id`` naming the record that kept it.

The decision needs only a few small columns per record (:data:`DEDUP_KEY_COLUMNS`), so both engines compute
one :class:`DedupPlan` from those keys and then drop the planned rows; Ray Data needs no shuffle of full records.
"""

from __future__ import annotations

import dataclasses
import json
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import pyarrow as pa

from polyalign_ray.schema import SPLIT_PRIORITY, stable_fraction

DEDUP_KEY_COLUMNS: tuple[str, ...] = ("id", "split", "content_key", "origin_file", "origin_line")


def row_key(record_row: Mapping[str, Any]) -> str:
    """Identity of one record row in this run: where it came from plus its id (expanded turns differ by id)."""
    return f"{record_row['origin_file']}\x1f{int(record_row['origin_line'])}\x1f{record_row['id']}"


def survivor_rank(record_row: Mapping[str, Any]) -> tuple[int, float, str, str, int]:
    """Sort key among copies: split priority, then an order-free hash of the id, then the origin as tie-break."""
    return (
        SPLIT_PRIORITY[str(record_row["split"])],
        stable_fraction(str(record_row["id"]), 0),
        str(record_row["id"]),
        str(record_row["origin_file"]),
        int(record_row["origin_line"]),
    )


def split_duplicates(
    group: Sequence[Mapping[str, Any]],
) -> tuple[Mapping[str, Any], list[Mapping[str, Any]]]:
    """(survivor, dropped copies) of one group of records that must be reduced to one."""
    ordered = sorted(group, key=survivor_rank)
    return ordered[0], ordered[1:]


def duplicate_entry(dropped: Mapping[str, Any], survivor: Mapping[str, Any]) -> dict[str, Any]:
    """One line of ``duplicates.jsonl``: which copy was dropped in favour of which, so nothing vanishes."""
    return {
        "id": dropped["id"],
        "split": dropped["split"],
        "origin_file": dropped["origin_file"],
        "origin_line": int(dropped["origin_line"]),
        "kept_id": survivor["id"],
        "kept_split": survivor["split"],
        "content_key": dropped["content_key"],
    }


def id_collision_entry(dropped: Mapping[str, Any], holder: Mapping[str, Any]) -> dict[str, Any]:
    """Quarantine line for a record whose given id is already held by a record with other content."""
    return {
        "reason": "duplicate_id",
        "detail": (
            f"id {dropped['id']!r} is already used by {holder['origin_file']}:{holder['origin_line']} with "
            "different content; give ids that are unique across inputs, or drop 'id' to use content hashes"
        ),
        "origin_file": dropped["origin_file"],
        "origin_line": int(dropped["origin_line"]),
        "raw": str(dropped["id"]),
    }


@dataclasses.dataclass(frozen=True)
class DedupPlan:
    """Rows to drop, by :func:`row_key`: exact duplicates (with their duplicates.jsonl line) and id collisions
    (with their quarantine line)."""

    duplicates: Mapping[str, dict[str, Any]]
    collisions: Mapping[str, dict[str, Any]]

    def keeps(self, record_row: Mapping[str, Any]) -> bool:
        key = row_key(record_row)
        return key not in self.duplicates and key not in self.collisions


def plan_dedup(keys: Iterable[Mapping[str, Any]]) -> DedupPlan:
    """Decide, from the key columns of every record, which rows are duplicates and which collide on id."""
    by_content: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for row in keys:
        by_content[str(row["content_key"])].append(row)
    survivors, duplicates = [], {}
    for group in by_content.values():
        survivor, dropped = split_duplicates(group)
        survivors.append(survivor)
        duplicates.update({row_key(d): duplicate_entry(d, survivor) for d in dropped})
    by_id: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for row in survivors:
        by_id[str(row["id"])].append(row)
    collisions = {}
    for group in by_id.values():
        holder, others = split_duplicates(group)
        collisions.update({row_key(o): id_collision_entry(o, holder) for o in others})
    return DedupPlan(duplicates, collisions)


# Partition-at-a-time form of the same decisions, for the Ray Data engine on corpora too large to plan on the driver
# (``distributed/data.py``): records are hash-partitioned by content key, then the survivors by id, so each partition
# holds whole groups and decides them alone with the functions above.
DECISION = "decision"
SIDE_LINE = "side_line"
KEEP, DUPLICATE, DUPLICATE_ID = "keep", "duplicate", "duplicate_id"


def side_line(entry: Mapping[str, Any]) -> str:
    """A side file's JSON line (duplicates.jsonl, quarantine.jsonl), as ``prepare.write_jsonl`` writes it."""
    return json.dumps(entry, ensure_ascii=False)


def _with_decisions(records: pa.Table, decisions: list[str], lines: list[str]) -> pa.Table:
    out = records
    for name, values in ((DECISION, decisions), (SIDE_LINE, lines)):
        if name in out.column_names:
            out = out.drop_columns([name])
        out = out.append_column(name, pa.array(values, type=pa.string()))
    return out


def _decide_groups(table: pa.Table, key: str, dropped_as: str, entry: Any) -> pa.Table:
    """``table`` (whole groups of ``key``) with a ``decision`` per row: the first of each group by
    :func:`survivor_rank` is kept, the others get ``dropped_as`` and their side-file line ``entry(row, kept)``."""
    rows = table.select(list(DEDUP_KEY_COLUMNS)).to_pylist()
    groups: dict[str, list[int]] = defaultdict(list)
    for i, row in enumerate(rows):
        groups[str(row[key])].append(i)
    decisions, lines = [KEEP] * len(rows), [""] * len(rows)
    for indices in groups.values():
        ordered = sorted(indices, key=lambda i: survivor_rank(rows[i]))
        for i in ordered[1:]:
            decisions[i], lines[i] = dropped_as, side_line(entry(rows[i], rows[ordered[0]]))
    return _with_decisions(table, decisions, lines)


def decide_duplicates_table(records: pa.Table) -> pa.Table:
    """``records`` (whole content-key groups, splits set) with a ``decision`` (keep / duplicate) and, for each
    dropped copy, its duplicates.jsonl line: the survivor of each group as :func:`plan_dedup` picks it."""
    return _decide_groups(records, "content_key", DUPLICATE, duplicate_entry)


def decide_id_collisions_table(survivors: pa.Table) -> pa.Table:
    """Survivors of deduplication (whole id groups) with a ``decision`` (keep / duplicate_id) and, for each record
    whose id is held by another with other content, its quarantine.jsonl line."""
    return _decide_groups(survivors, "id", DUPLICATE_ID, id_collision_entry)
