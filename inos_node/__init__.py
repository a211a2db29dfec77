"""inos-node: a Python node of INOS, the Internet-Native Operating System."""

from __future__ import annotations

__all__ = ["InosError", "__version__"]

__version__ = "0.1.0"

from inos_node.errors import InosError
