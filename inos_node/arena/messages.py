"""``MessageRegion``: one variable-length message that a single writer replaces in place.

Theory of operation (a seqlock)
-------------------------------
The region starts with a header line ``[seq | length]``; the payload follows at an 8-aligned
offset (so a Cap'n Proto reader can use it in place).  The writer::

    seq = seq + 1   (odd: "being written")   fence   length, payload   fence   seq = seq + 1 (even)

then publishes the region's epoch.  A reader copies, then validates::

    s1 = seq (retry while odd)   fence   copy length and payload   fence   s2 = seq;  s1 == s2 ?

A copy that overlapped a write sees a different or odd ``seq`` and is retried, so readers never
return a torn message.  Retries are bounded: a writer that died half-way leaves ``seq`` odd for
ever, and readers then raise ``ArenaError`` instead of spinning.  ``seq`` 0 means "never
written" and reads as ``b""``.  The registry and diagnostics regions are message regions.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from inos_node.arena._barrier import full_fence
from inos_node.arena.layout import layout
from inos_node.errors import ArenaError, ArenaExhausted

if TYPE_CHECKING:
    from inos_node.arena.arena import Arena

__all__ = ["MessageRegion"]

_SEQ = layout.msg_seq // 8
_LEN = layout.msg_length // 8


class MessageRegion:
    """The seqlocked message in region ``name`` (kind "message"), e.g. "registry".

    One writer per region (the single writer of its epoch index).  ``epoch_index`` defaults to
    the one recorded in the region directory.
    """

    def __init__(self, arena: Arena, name: str, epoch_index: int | None = None) -> None:
        entry = arena.region_entry(name)
        if entry.kind != layout.kind_message:
            raise ArenaError(f"region {name!r} is not a message region (kind {entry.kind})")
        index = entry.epoch_index if epoch_index is None else epoch_index
        if index is None:
            raise ArenaError(f"region {name!r} has no epoch index; pass epoch_index")
        self.name = name
        self.epoch_index = index
        self.capacity = entry.size - layout.msg_header_size
        self._arena = arena
        self._words: Any = arena._words(entry.offset, layout.msg_header_size)
        self._data: Any = arena.view(entry.offset + layout.msg_header_size, self.capacity)
        arena._dependents.add(self)

    def write(self, data: bytes | bytearray | memoryview) -> int:
        """Replace the message and publish the region's epoch; returns the new epoch.

        Raises:
            ArenaExhausted: the message is larger than the region (names both sizes).
        """
        payload = memoryview(data).cast("B")
        n = payload.nbytes
        if n > self.capacity:
            raise ArenaExhausted(
                f"a message of {n} bytes does not fit region {self.name!r} ({self.capacity} bytes)",
                requested=n,
                available=self.capacity,
            )
        words = self._words
        seq = words[_SEQ]
        odd = seq + 1 + (seq & 1)  # stays odd even after a writer that died half-way
        words[_SEQ] = odd
        full_fence()
        words[_LEN] = n
        self._data[:n] = payload
        full_fence()
        words[_SEQ] = odd + 1
        return self._arena.publish(self.epoch_index)

    def read(self, *, max_retries: int = 100_000) -> bytes:
        """A validated copy of the current message (``b""`` if none was ever written).

        Raises:
            ArenaError: no stable copy after ``max_retries`` attempts (a writer stuck half-way).
        """
        words = self._words
        data = self._data
        for attempt in range(max_retries):
            s1 = words[_SEQ]
            if s1 & 1:
                if attempt > 16:
                    os.sched_yield()  # the writer may be descheduled mid-copy
                continue
            full_fence()
            n = words[_LEN]
            if n > self.capacity:
                continue  # a torn length: the seq check would fail anyway
            out = bytes(data[:n])
            full_fence()
            if words[_SEQ] == s1:
                return out
        raise ArenaError(
            f"region {self.name!r}: no consistent copy in {max_retries} attempts "
            "(the writer died half-way, or writes never pause)"
        )

    @property
    def seq(self) -> int:
        return int(self._words[_SEQ])

    def _release(self) -> None:
        if self._words is not None:
            self._words.release()
        self._words = self._data = None

    def close(self) -> None:
        """Drop this object's views of the arena (the arena's close() does it too)."""
        self._arena._dependents.discard(self)
        self._release()
