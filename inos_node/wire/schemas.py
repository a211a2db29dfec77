"""Find and load the Cap'n Proto schemas, once per process.

The schemas live in the repository's top-level ``schemas/`` folder.  A wheel ships them as
``inos_node/_schemas`` (hatchling force-include); an editable checkout finds them beside the
package.  ``schema_dir()`` tries the packaged copy first, then the checkout.

pycapnp aborts the whole process (a C++ ``terminate``, not a Python exception) when the same
file is loaded twice under two different path strings ("Duplicate ID").  So every load goes
through ``load()``, which resolves the path and caches the module.
"""

from __future__ import annotations

import functools
import threading
from importlib import resources
from pathlib import Path
from typing import Any

import capnp  # type: ignore[import-untyped]

from inos_node.errors import InosInternalError

__all__ = ["load", "schema_dir", "schema_files"]

capnp.remove_import_hook()
_lock = threading.Lock()


@functools.cache
def schema_dir() -> Path:
    """The folder holding ``<domain>/v1/*.capnp``, packaged copy first."""
    packaged = Path(str(resources.files("inos_node"))) / "_schemas"
    if (packaged / "system" / "v1" / "sab_layout.capnp").is_file():
        return packaged.resolve()
    checkout = Path(__file__).resolve().parents[2] / "schemas"
    if (checkout / "system" / "v1" / "sab_layout.capnp").is_file():
        return checkout
    raise InosInternalError(
        f"cannot find the capnp schemas: looked in {packaged} (installed wheel) and {checkout} (checkout)"
    )


def schema_files() -> list[Path]:
    """Every shipped schema, relative to ``schema_dir()``."""
    root = schema_dir()
    return sorted(p.relative_to(root) for p in root.rglob("*.capnp"))


_cache: dict[str, Any] = {}


def load(relative: str) -> Any:
    """Load ``schemas/<relative>`` (e.g. ``"compute/v1/capsule.capnp"``), cached per process."""
    with _lock:
        mod = _cache.get(relative)
        if mod is None:
            root = schema_dir()
            path = (root / relative).resolve()
            if not path.is_file():
                raise InosInternalError(f"schema {relative} not found under {root}")
            mod = capnp.load(str(path), imports=[str(root)])
            _cache[relative] = mod
        return mod
