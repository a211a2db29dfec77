"""The arena layout constants, read from ``schemas/system/v1/sab_layout.capnp``."""

from __future__ import annotations

import functools

from inos_node.wire import schemas

__all__ = ["layout_constants"]


@functools.cache
def layout_constants() -> dict[str, int]:
    """Every integer ``const`` of sab_layout.capnp, by its schema name."""
    mod = schemas.load("system/v1/sab_layout.capnp")
    out: dict[str, int] = {}
    for name in dir(mod):
        if name.startswith("_"):
            continue
        value = getattr(mod, name)
        if isinstance(value, int) and not isinstance(value, bool):
            out[name] = value
    return out
