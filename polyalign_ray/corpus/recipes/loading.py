"""Where a recipe's rows come from: local copies given with ``--input``, or the Hugging Face Hub.

Without inputs, each of the recipe's ``hub`` loads is fetched with ``datasets.load_dataset`` and written with
``save_to_disk`` under ``DATA_DIR/inputs/<source>/<config>/``; the prepare stage then reads those folders like any
other input, so the in-process and the Ray Data engines read the same rows, and a second run reuses the copy (a
``<config>.done`` file marks a finished one; delete the folder to fetch again). This path needs network access
and is not exercised by the tests; everything after it is.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

from polyalign_ray.corpus.readers import InputError, ReadUnit, discover_read_units
from polyalign_ray.corpus.recipes.catalog import recipe_named
from polyalign_ray.corpus.recipes.recipe import HubLoad, Recipe

log = logging.getLogger(__name__)
OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")


class SourceUnavailableError(InputError):
    """A recipe's dataset could not be loaded from the Hub (offline, not reachable, or moved)."""


def _how_to_copy(recipe: Recipe, load: HubLoad) -> str:
    arguments, keywords = load.load_arguments()
    call = ", ".join(
        [*(repr(a) for a in arguments if a is not None), *(f"{k}={v!r}" for k, v in keywords.items())]
    )
    return (
        f"on a machine with network access, save it with `datasets.load_dataset({call}).save_to_disk(DIR)` "
        f"(or download {load.repo} yourself) and run `polyalign prepare --source {recipe.name} --input DIR`"
    )


def offline_variable() -> str:
    """The environment variable that forbids Hub access, if one is set."""
    for name in OFFLINE_VARIABLES:
        if os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on"):
            return name
    return ""


def download_source(recipe: Recipe, target: Path) -> list[str]:
    """Fetch every Hub load of ``recipe`` into ``target`` (reusing finished copies); returns the folders."""
    blocked = offline_variable()
    if blocked:
        raise SourceUnavailableError(
            f"--source {recipe.name} without --input loads {recipe.hub[0].repo} from the Hugging Face Hub, but "
            f"{blocked} is set (offline); {_how_to_copy(recipe, recipe.hub[0])}"
        )
    import datasets

    folders = []
    for load in recipe.hub:
        folder, done = target / load.label, target / f"{load.label}.done"
        if not done.is_file():
            arguments, keywords = load.load_arguments()
            log.info("source %s: loading %s from the Hub", recipe.name, load.repo)
            try:
                loaded = datasets.load_dataset(*arguments, **keywords)
            except Exception as exc:  # offline, not found, moved, gated: every cause gets the same way out
                raise SourceUnavailableError(
                    f"could not load {load.repo}{f' ({load.config})' if load.config else ''} for --source "
                    f"{recipe.name}: {type(exc).__name__}: {exc}; {_how_to_copy(recipe, load)}"
                ) from exc
            shutil.rmtree(folder, ignore_errors=True)
            loaded.save_to_disk(str(folder))
            done.write_text(f"{load.repo} {load.config or ''}\n", encoding="utf-8")
        folders.append(str(folder))
    return folders


def source_read_units(
    name: str, inputs: Sequence[str], inputs_dir: Path, *, max_row_chars: int
) -> list[ReadUnit]:
    """The read units of ``--source name``: the given local copies, or the Hub copy under ``inputs_dir``; then
    the recipe's whole-input step, if it has one (OASST2's message tables -> trees, under ``inputs_dir``)."""
    recipe = recipe_named(name)
    paths = list(inputs) or download_source(recipe, inputs_dir)
    units = discover_read_units(paths)
    if recipe.assemble is not None:
        units = recipe.assemble(units, inputs_dir / "assembled", max_row_chars=max_row_chars)
    return units
