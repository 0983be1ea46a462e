"""Pure core, Ray at the edge: every module outside polyalign_ray/distributed/ imports with ray and deepspeed
blocked."""

from __future__ import annotations

import pkgutil
import subprocess
import sys
from pathlib import Path

import polyalign_ray

BLOCKER = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("ray", "deepspeed"):
            raise ImportError(f"{name} is blocked: only polyalign_ray.distributed may import it")
        return None
sys.meta_path.insert(0, Block())
import importlib
for name in sys.argv[1:]:
    importlib.import_module(name)
print("imported", len(sys.argv) - 1)
"""


def core_modules() -> list[str]:
    root = Path(polyalign_ray.__file__).parent
    names = ["polyalign_ray"]
    for info in pkgutil.walk_packages([str(root)], prefix="polyalign_ray."):
        if not info.name.startswith("polyalign_ray.distributed"):
            names.append(info.name)
    return names


def test_core_imports_without_ray_or_deepspeed() -> None:
    modules = core_modules()
    assert "polyalign_ray.corpus.prepare" in modules and "polyalign_ray.cli" in modules
    result = subprocess.run(
        [sys.executable, "-c", BLOCKER, *modules], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"imported {len(modules)}" in result.stdout


def test_the_blocker_really_blocks() -> None:
    result = subprocess.run(
        [sys.executable, "-c", BLOCKER, "polyalign_ray.distributed.runtime"], capture_output=True, text=True
    )
    assert result.returncode != 0
    assert "is blocked" in result.stderr
