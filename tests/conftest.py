"""Shared test settings: offline, quiet, CPU-only; one local Ray instance for the whole session (ray tests)."""

from __future__ import annotations

import os

import pytest

from polyalign_ray.cli import OFFLINE_DEFAULTS, QUIET_DEFAULTS

for _key, _value in {
    **OFFLINE_DEFAULTS,
    **QUIET_DEFAULTS,
    "DS_ACCELERATOR": "cpu",
    # gloo and Ray bind to loopback only (CPU_NOTES.md), so tests never use another address of the machine.
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    # Ray Train's controller polls workers every 2 s by default; reports and failure detection wait on it.
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2",
}.items():
    os.environ.setdefault(_key, _value)


@pytest.fixture(scope="session")
def ray_session():
    """A local Ray instance shared by every ``ray`` test, shut down at the end of the session."""
    import ray

    if not ray.is_initialized():
        ray.init(
            num_cpus=2,
            include_dashboard=False,
            object_store_memory=256 * 2**20,
            log_to_driver=False,
        )
    yield ray
    ray.shutdown()
