"""Starting and ending Ray: connect to a cluster when one is named, else start a local instance in-process."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator

import ray

from polyalign_ray.config import RayConfig

log = logging.getLogger(__name__)


@contextlib.contextmanager
def ray_runtime(config: RayConfig) -> Iterator[None]:
    """Run the body with Ray available, and shut down only what this call started.

    ``config.address`` (or ``RAY_ADDRESS``) joins an existing cluster; otherwise a local instance is started with
    ``config.num_cpus`` CPUs, no dashboard, and Ray's usage reporting off, so nothing leaves the machine.
    """
    if ray.is_initialized():
        yield
        return
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    address = config.address or os.environ.get("RAY_ADDRESS", "")
    if address:
        log.info("connecting to the Ray cluster at %s", address)
        ray.init(address=address, log_to_driver=True)
    else:
        # A local instance talks over loopback only (gloo otherwise picks the machine's external address).
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
        # Ray Train's controller polls its workers every 2 s by default; each checkpoint report waits for it.
        os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")
        kwargs = {"include_dashboard": False, "log_to_driver": True}
        if config.num_cpus:
            kwargs["num_cpus"] = config.num_cpus
        if config.object_store_memory_mb:
            kwargs["object_store_memory"] = config.object_store_memory_mb * 2**20
        log.info("starting a local Ray instance (%s CPUs)", config.num_cpus or "all")
        ray.init(**kwargs)
    try:
        yield
    finally:
        ray.shutdown()
