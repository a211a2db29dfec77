"""Large private buffers whose pages exist before they are written (the owner of ``mmap`` here).

``populated_buffer(n)`` asks the kernel for ``n`` bytes of anonymous memory with every page already
mapped (``MAP_POPULATE``): one system call, which releases the GIL, instead of a page fault per 4 KiB
the first time each page is written.  Call it on a worker thread and the pages are made on another
core while the event loop goes on (``BlobClient.fetch_input`` does, while the first chunks arrive).
"""

from __future__ import annotations

import mmap

__all__ = ["POPULATE_FROM", "populated_buffer"]

POPULATE_FROM = 8 * 1024 * 1024  # smaller buffers are plain bytearrays: not worth a mapping


def populated_buffer(n: int) -> bytearray | mmap.mmap:
    """A writable, zeroed buffer of exactly ``n`` bytes: a bytearray below ``POPULATE_FROM`` (or
    where ``MAP_POPULATE`` does not exist), else an anonymous private mapping, populated."""
    if n < POPULATE_FROM or not hasattr(mmap, "MAP_POPULATE"):
        return bytearray(n)
    return mmap.mmap(-1, n, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | mmap.MAP_POPULATE)
