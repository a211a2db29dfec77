"""The builtin units.  Adding a unit is adding one module here and naming it in ``UNIT_MODULES``.

Each module defines ``make(ctx: UnitContext) -> Library`` (see ``inos_node.engine.spec``).
"""

from __future__ import annotations

import importlib

from inos_node.engine.spec import Library, UnitContext

__all__ = ["UNIT_MODULES", "load_libraries"]

UNIT_MODULES: tuple[str, ...] = (
    "inos_node.units.system",
    "inos_node.units.compute",
    "inos_node.units.crypto",
    "inos_node.units.linalg",
    "inos_node.units.boids",
    "inos_node.units.wasm",
)


def load_libraries(ctx: UnitContext, modules: tuple[str, ...] = UNIT_MODULES) -> list[Library]:
    """Import every unit module and build its library for this context."""
    return [importlib.import_module(name).make(ctx) for name in modules]
