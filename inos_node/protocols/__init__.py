"""Pure protocol cores of the mesh (STYLE.md C1): no I/O, no clocks, no third-party imports.

Each module here is a plain synchronous state machine that the matching ``inos_node.net``
adapter drives.  Time comes in as arguments (``now_ms``), never from a clock read, so every
decision can be replayed in a unit test.  Modules may import only the standard library,
``inos_node.types`` and ``inos_node.errors``.

  adverts    the table of capability adverts heard over gossip: newest sequence per peer,
             expiry, a bound on peers, queries by method
"""

from __future__ import annotations

__all__: list[str] = []
