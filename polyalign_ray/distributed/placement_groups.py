"""Placement groups that outlive the actor that made them, and their removal.

Why this exists: when ASHA stops a sweep trial, Tune kills the trial's actor; the Ray Train controller that actor
owns dies with it, and so do the training workers. The workers' placement group does not: Ray ties a placement
group made by a non-detached actor to the *job*, not to the actor, so it holds its CPUs until the driver exits.
Ray Train guards against this with a detached ``PlacementGroupCleaner`` that watches the controller through the
state API, but the state API needs the dashboard, which local instances here run without (tests, the demo); so
each stopped trial kept its CPUs, and a 12-trial sweep on 2 CPUs stalled after its second stop
(``bench/results/sweep_asha.md``).

The rule used here is Ray's own lifetime rule with the job-death half left out: a placement group of *this* job
whose creator was an actor (not the driver), that actor now dead, and the group not detached, can never be used
again, so it is removed. Ray keeps that information in the GCS placement-group table; the public
``ray.util.placement_group_table()`` drops the creator fields, so the table is read through the GCS accessor that
function uses (``ray._private.state``; ray is pinned in pyproject.toml, and ``tests/ray/test_placement_groups_ray``
fails if the accessor or the fields move). The table's ``creator_actor_dead`` flag is set some time after the actor
table says DEAD (seen: a trial stopped just before the sweep ended), so the actor table is asked as well.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import ray
from ray.core.generated import gcs_pb2
from ray.util.placement_group import PlacementGroup, remove_placement_group

log = logging.getLogger(__name__)

NIL_ACTOR_ID_BYTE = 0xFF  # Ray's nil ids are all 0xff bytes: a group the driver made has a nil creator actor
LIVE_STATES = {
    gcs_pb2.PlacementGroupTableData.PENDING,
    gcs_pb2.PlacementGroupTableData.PREPARED,
    gcs_pb2.PlacementGroupTableData.CREATED,
    gcs_pb2.PlacementGroupTableData.RESCHEDULING,
}


@dataclass(frozen=True)
class PlacementGroupRecord:
    """What decides whether a placement group is orphaned (the GCS table's fields, ids as hex)."""

    placement_group_id: str
    creator_job_id: str
    made_by_actor: bool
    creator_actor_dead: bool
    is_detached: bool
    live: bool


def is_orphaned(record: PlacementGroupRecord, job_id: str) -> bool:
    """A live, non-detached group of ``job_id`` whose creating actor is dead: nothing can schedule into it again
    (its creator's children died with the creator) and Ray would free it only when the whole job ends."""
    return (
        record.live
        and record.creator_job_id == job_id
        and record.made_by_actor
        and record.creator_actor_dead
        and not record.is_detached
    )


def placement_group_records() -> list[PlacementGroupRecord]:
    """Every placement group the GCS knows, with its creator fields."""
    accessor = ray._private.state.state._connect_and_get_accessor()
    records = []
    for raw in accessor.get_placement_group_table():
        data = gcs_pb2.PlacementGroupTableData.FromString(raw)
        actor_id = bytes(data.creator_actor_id)
        made_by_actor = bool(actor_id) and any(b != NIL_ACTOR_ID_BYTE for b in actor_id)
        live = data.state in LIVE_STATES
        # the actor table only where the answer matters: the table keeps every removed group of the job too
        creator_dead = data.creator_actor_dead or (
            live and made_by_actor and ray._private.state.actors(actor_id.hex()).get("State") == "DEAD"
        )
        records.append(
            PlacementGroupRecord(
                placement_group_id=data.placement_group_id.hex(),
                creator_job_id=data.creator_job_id.hex(),
                made_by_actor=made_by_actor,
                creator_actor_dead=creator_dead,
                is_detached=data.is_detached,
                live=live,
            )
        )
    return records


def remove_groups(records: list[PlacementGroupRecord]) -> list[str]:
    """Remove these placement groups; returns their ids."""
    for record in records:
        remove_placement_group(PlacementGroup(ray.PlacementGroupID(bytes.fromhex(record.placement_group_id))))
    if records:
        log.info("released %d placement group(s) of dead actors", len(records))
    return [record.placement_group_id for record in records]


def remove_orphaned_placement_groups() -> list[str]:
    """Remove this job's orphaned placement groups (:func:`is_orphaned`); returns their ids. Safe to call at any
    time from the driver: groups of the driver, of live actors, of detached actors and of other jobs are kept."""
    job_id = ray.get_runtime_context().get_job_id()
    return remove_groups([r for r in placement_group_records() if is_orphaned(r, job_id)])


def remove_orphaned_placement_groups_when_actors_end(timeout_s: float = 20.0) -> list[str]:
    """At the end of a sweep: every actor of this job that made a placement group (the trials' Train controllers)
    has ended or is ending, but the last stopped trial's controller may be reported dead a moment after Tune
    returns. Remove orphans until no live actor-made group of this job is left, or warn after ``timeout_s``.

    ``remove_placement_group`` is asynchronous: the GCS table may show a removed group live for a moment (CI saw
    one right after this function returned), so a group counts as gone only once the table stops listing it live.
    """
    job_id = ray.get_runtime_context().get_job_id()
    deadline = time.monotonic() + timeout_s
    removed: list[str] = []
    clear_since: float | None = None
    while True:
        actor_groups = [
            r for r in placement_group_records() if r.live and r.made_by_actor and r.creator_job_id == job_id
        ]
        if not actor_groups:
            # a stopped trial's controller may still be making a new worker group when the table is first clear
            # (CI saw one listed live right after this returned), so the table must stay clear for a second
            clear_since = clear_since if clear_since is not None else time.monotonic()
            if time.monotonic() - clear_since >= 1.0:
                return removed
            time.sleep(0.2)
            continue
        clear_since = None
        removed += remove_groups(
            [r for r in actor_groups if is_orphaned(r, job_id) and r.placement_group_id not in removed]
        )
        if time.monotonic() > deadline:
            left = [r.placement_group_id for r in actor_groups if r.placement_group_id not in removed]
            waiting = [r.placement_group_id for r in actor_groups if r.placement_group_id in removed]
            log.warning(
                "placement groups left after the sweep: of still-running actors %s; removed but still live %s",
                left,
                waiting,
            )
            return removed
        time.sleep(0.2)
