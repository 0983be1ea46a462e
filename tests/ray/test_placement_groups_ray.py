"""Orphaned placement groups (``distributed/placement_groups.py``) on a real Ray instance: a group made by an actor
that was then killed is found and removed, freeing its CPUs; the driver's groups, a live actor's and a detached
actor's are kept. This is the mechanism that keeps ASHA sweeps from stalling (test_sweep_ray)."""

from __future__ import annotations

import time

import pytest

from polyalign_ray.distributed.placement_groups import (
    placement_group_records,
    remove_orphaned_placement_groups,
)

pytestmark = pytest.mark.ray


def wait_until(condition, timeout_s: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return False


def test_a_killed_actors_placement_group_is_released_and_the_others_are_kept(ray_session) -> None:
    ray = ray_session
    from ray.util.placement_group import PlacementGroup, placement_group, remove_placement_group

    @ray.remote(num_cpus=0)
    class Maker:
        def make(self, cpus: float) -> str:
            group = placement_group([{"CPU": cpus}])
            ray.get(group.ready())
            return group.id.hex()

    driver_group = placement_group([{"CPU": 0.25}])
    ray.get(driver_group.ready())
    live_maker, doomed_maker = Maker.remote(), Maker.remote()
    detached_maker = Maker.options(lifetime="detached", name="pg-test-detached").remote()
    kept = ray.get(live_maker.make.remote(0.25))
    doomed = ray.get(doomed_maker.make.remote(1.0))
    detached = ray.get(detached_maker.make.remote(0.25))
    try:
        free_before = ray.available_resources().get("CPU", 0.0)
        ray.kill(doomed_maker)
        by_id = {}
        assert wait_until(
            lambda: (
                by_id.update({r.placement_group_id: r for r in placement_group_records()})
                or by_id[doomed].creator_actor_dead
            )
        )
        # nothing else freed it: Ray keeps the group of a dead actor for the job's lifetime
        assert ray.available_resources().get("CPU", 0.0) == pytest.approx(free_before)

        removed = remove_orphaned_placement_groups()

        assert removed == [doomed]
        assert wait_until(lambda: ray.available_resources().get("CPU", 0.0) >= free_before + 1.0 - 1e-9)
        live = {r.placement_group_id for r in placement_group_records() if r.live}
        assert {driver_group.id.hex(), kept, detached} <= live and doomed not in live
        assert remove_orphaned_placement_groups() == []  # idempotent
    finally:
        ray.kill(detached_maker)
        ray.kill(live_maker)
        for group_id in (kept, detached):
            remove_placement_group(PlacementGroup(ray.PlacementGroupID(bytes.fromhex(group_id))))
        remove_placement_group(driver_group)


def test_at_the_end_of_a_sweep_the_group_of_an_actor_that_dies_a_moment_later_is_released(
    ray_session,
) -> None:
    """The last stopped trial's Train controller is reported dead a moment after Tune returns (seen in the full
    suite): the sweep's final pass waits for this job's actor-made groups to lose their creator, then frees them."""
    import threading

    from polyalign_ray.distributed.placement_groups import remove_orphaned_placement_groups_when_actors_end

    ray = ray_session
    from ray.util.placement_group import placement_group

    @ray.remote(num_cpus=0)
    class Maker:
        def make(self) -> str:
            group = placement_group([{"CPU": 1.0}])
            ray.get(group.ready())
            return group.id.hex()

    maker = Maker.remote()
    made = ray.get(maker.make.remote())
    killer = threading.Timer(1.0, lambda: ray.kill(maker))
    killer.start()
    removed = remove_orphaned_placement_groups_when_actors_end(timeout_s=30)
    killer.join()
    assert removed == [made]
    assert not [r for r in placement_group_records() if r.live and r.made_by_actor]
