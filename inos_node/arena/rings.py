"""``Ring``: single-producer, single-consumer byte rings in the inbox and outbox regions.

Theory of operation
-------------------
A ring region is cut into ``lanes`` equal lanes, one per worker process.  A lane is::

    +0                 head  (uint64, bytes consumed; written only by the consumer)
    +ring_tail         tail  (uint64, bytes produced; written only by the producer)
    +ring_header_size  data  (capacity bytes)

``head`` and ``tail`` count bytes since the lane was made and never wrap (2^64 bytes); the
position in the data area is ``counter % capacity``.  Each counter has one writer and sits on
its own cache line, so neither side ever writes what the other writes.  A record is an 8-byte
length, the payload and padding to 8 bytes; the length word never straddles the end (capacity
is a multiple of 8), the payload may wrap around and is then copied in two pieces.

    producer: free = capacity - (tail - head);  write record at tail;  fence;  tail += size
    consumer: tail == head ? empty;  fence;  read record at head;  fence;  head += size

The fences order the data before the counter that hands it over (store-store for the
producer, load-load and load-store for the consumer), as the epoch protocol does.  The ring
wakes nobody: the producer publishes an epoch after ``try_put`` (the inbox's ``idxInbox``, one
outbox index per lane), and the consumer waits on it.  Both sides must pass the same ``lanes``.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING, Any

from inos_node.arena._barrier import full_fence
from inos_node.arena.layout import layout
from inos_node.errors import ArenaError, ArenaExhausted

if TYPE_CHECKING:
    from inos_node.arena.arena import Arena

__all__ = ["Ring"]

_LEN = struct.Struct("<Q")
_ALIGN = layout.ring_record_align
_HEAD = layout.ring_head // 8
_TAIL = layout.ring_tail // 8


class Ring:
    """Lane ``lane`` of ``lanes`` in ring region ``region`` ("inbox" or "outbox")."""

    def __init__(self, arena: Arena, region: str, lane: int, lanes: int) -> None:
        entry = arena.region_entry(region)
        if entry.kind != layout.kind_ring:
            raise ArenaError(f"region {region!r} is not a ring region (kind {entry.kind})")
        if not 0 <= lane < lanes:
            raise ArenaError(f"lane {lane} is not in 0..{lanes - 1}")
        stride = entry.size // lanes // layout.cache_line * layout.cache_line
        if stride < layout.ring_header_size + 2 * _ALIGN:
            raise ArenaError(f"region {region!r} of {entry.size} bytes cannot hold {lanes} lanes")
        base = entry.offset + lane * stride
        self.region = region
        self.lane = lane
        self.capacity = stride - layout.ring_header_size
        self.max_payload = self.capacity - _LEN.size
        self._arena = arena
        self._words: Any = arena._words(base, layout.ring_header_size)
        self._data: Any = arena.view(base + layout.ring_header_size, self.capacity)
        arena._dependents.add(self)

    def try_put(self, payload: bytes | bytearray | memoryview) -> bool:
        """Append one record; False when the lane has no room now (try again later).

        Raises:
            ArenaExhausted: the payload can never fit this lane (names the limit).
        """
        mv = memoryview(payload).cast("B")
        n = mv.nbytes
        if n > self.max_payload:
            raise ArenaExhausted(
                f"a {n}-byte record can never fit {self.region} lane {self.lane}: records are "
                f"limited to {self.max_payload} bytes (put large payloads in an arena block)",
                requested=n,
                available=self.max_payload,
            )
        cap = self.capacity
        size = _LEN.size + -(-n // _ALIGN) * _ALIGN
        words = self._words
        tail = words[_TAIL]
        if size > cap - (tail - words[_HEAD]):
            return False
        data = self._data
        pos = tail % cap
        _LEN.pack_into(data, pos, n)
        start = (pos + _LEN.size) % cap
        first = min(n, cap - start)
        data[start : start + first] = mv[:first]
        if first < n:
            data[0 : n - first] = mv[first:]
        full_fence()  # the record before the tail that hands it over
        words[_TAIL] = tail + size
        return True

    def try_get(self) -> bytes | None:
        """Take the oldest record, or None when the lane is empty."""
        words = self._words
        head = words[_HEAD]
        tail = words[_TAIL]
        if tail == head:
            return None
        full_fence()  # the tail load before the record loads
        cap = self.capacity
        data = self._data
        pos = head % cap
        n = _LEN.unpack_from(data, pos)[0]
        size = _LEN.size + -(-n // _ALIGN) * _ALIGN
        if n > self.max_payload or size > tail - head:
            raise ArenaError(
                f"{self.region} lane {self.lane} is corrupt: record of {n} bytes with "
                f"{tail - head} bytes pending (do both sides use the same number of lanes?)"
            )
        start = (pos + _LEN.size) % cap
        first = min(n, cap - start)
        out = (
            bytes(data[start : start + first])
            if first == n
            else bytes(data[start:cap]) + bytes(data[0 : n - first])
        )
        full_fence()  # the record loads before the head store that frees the space
        words[_HEAD] = head + size
        return out

    @property
    def pending(self) -> int:
        """Bytes produced and not yet consumed (records, headers and padding)."""
        return int(self._words[_TAIL] - self._words[_HEAD])

    def _release(self) -> None:
        if self._words is not None:
            self._words.release()
        self._words = self._data = None

    def close(self) -> None:
        self._arena._dependents.discard(self)
        self._release()
