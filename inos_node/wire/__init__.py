"""Cap'n Proto at the wire edge: the only package that imports ``capnp``.

Readers and builders never leave this package: ``codec`` decodes to frozen dataclasses
immediately, with size and traversal limits on anything that comes from outside.
"""

from __future__ import annotations

__all__: list[str] = []
