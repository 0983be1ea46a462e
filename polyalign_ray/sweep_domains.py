"""A sweep's search space, checked without the config module: the domains (grid lists, ``choice``, ``uniform``,
``loguniform``, ``randint``) and whether a dotted key names a field that may be swept.

Why its own module: ``config.py`` validates ``sweep.space`` while building a config, and the rest of the sweep code
(``sweep_space.py``) builds trial configs from ``config.py``; the key check takes the config's root class as an
argument, so neither module imports the other in a cycle.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping
from typing import Any

DISTRIBUTIONS = ("choice", "uniform", "loguniform", "randint")
"""Space entries other than a plain list (a grid axis)."""
UNSWEEPABLE_SECTIONS = ("sweep", "pipeline", "ray")


@dataclasses.dataclass(frozen=True)
class Domain:
    """One swept key: ``kind`` is ``grid`` (a plain list), or one of :data:`DISTRIBUTIONS`."""

    key: str
    kind: str
    values: tuple[Any, ...] = ()
    low: float = 0.0
    high: float = 0.0


def parse_domain(key: str, spec: Any) -> Domain:
    """A space entry -> :class:`Domain`; raises ``ValueError`` saying what a valid entry looks like."""
    if isinstance(spec, (list, tuple)):
        if not spec:
            raise ValueError(f"{key}: an empty list; give the values to try, e.g. [0.0, 0.1, 0.3]")
        return Domain(key, "grid", tuple(spec))
    if isinstance(spec, Mapping) and len(spec) == 1:
        ((kind, args),) = spec.items()
        if kind == "choice":
            if not isinstance(args, (list, tuple)) or not args:
                raise ValueError(f"{key}: choice needs a non-empty list, e.g. {{choice: [1.0, 2.0]}}")
            return Domain(key, "choice", tuple(args))
        if kind in ("uniform", "loguniform", "randint"):
            if (
                not isinstance(args, (list, tuple))
                or len(args) != 2
                or not all(isinstance(a, (int, float)) and not isinstance(a, bool) for a in args)
                or not args[0] < args[1]
            ):
                raise ValueError(
                    f"{key}: {kind} needs [low, high] with low < high, e.g. {{{kind}: [0.01, 1]}}"
                )
            if kind == "loguniform" and args[0] <= 0:
                raise ValueError(f"{key}: loguniform needs low > 0, got {args[0]}")
            if kind == "randint" and not all(isinstance(a, int) for a in args):
                raise ValueError(f"{key}: randint needs integer bounds, got {list(args)}")
            return Domain(key, kind, (), float(args[0]), float(args[1]))
    raise ValueError(
        f"{key}: {spec!r} is not a search domain; write a list of values, or one of "
        + ", ".join(f"{{{k}: [...]}}" for k in DISTRIBUTIONS)
    )


def config_key_problem(key: str, root: type) -> str | None:
    """Why a dotted key cannot be swept (None when it can): it must name a config field, or one entry of a
    mapping field (``sampler.multipliers.BUCKET``); sweep/pipeline/ray settings and output folders are not swept."""
    parts = key.split(".")
    node: Any = root
    for depth, part in enumerate(parts):
        if dataclasses.is_dataclass(node):
            names = {f.name: f for f in dataclasses.fields(node)}
            if part not in names:
                return f"{key!r}: no key {part!r} here; known: {sorted(names)}"
            node = typing.get_type_hints(node)[part]
            continue
        origin = typing.get_origin(node)
        if (origin in (dict, Mapping) or node is dict) and depth == len(parts) - 1:
            return None
        return f"{key!r}: {'.'.join(parts[:depth])} is a value, not a section"
    if dataclasses.is_dataclass(node):
        return f"{key!r} is a whole section; sweep one of its keys"
    if parts[0] in UNSWEEPABLE_SECTIONS:
        return f"{key!r}: {parts[0]}.* settings describe how to run, not what to train; they are not swept"
    if parts[-1] == "output_dir":
        return f"{key!r}: output folders are set per trial by the sweep"
    return None


def space_problems(space: Mapping[str, Any], search: str, path: str, root: type) -> list[str]:
    """Every problem of a space, each naming the key and the fix (used by ``SweepConfig.problems``)."""
    out = []
    for key, spec in space.items():
        problem = config_key_problem(str(key), root)
        if problem:
            out.append(f"{path}: {problem}")
            continue
        try:
            parse_domain(str(key), spec)
        except ValueError as exc:
            out.append(f"{path}.{exc}")
    return out
