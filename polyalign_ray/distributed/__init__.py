"""The only part of polyalign_ray that imports ray or deepspeed.

Everything here composes the pure core (corpus, features, references, sampler, losses, loops) with Ray: Ray Data
pipelines, Ray Train drivers, actor pools, Tune sweeps and job submission. Import the submodules explicitly
(``from polyalign_ray.distributed import data``); this package itself imports nothing heavy.
"""
