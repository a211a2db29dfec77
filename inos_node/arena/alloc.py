"""The dynamic-region allocator: a pure core that keeps all of its state in the bytes it manages.

Theory of operation
-------------------
The heap is one buffer (in the arena: the dynamic region; in tests: a ``bytearray``).  It
starts with one header line and is then tiled, without gaps, by blocks::

    heap offset 0        header: free-list head, used bytes, used blocks, capacity
    heap offset H        block: [size | tag | next free | length | ...] payload ... (size bytes)
    H + size             next block ...                                  ... up to capacity

Every block starts with one ``block_header_size`` line and is ``align``-aligned, so walking
``offset += size`` from the first block visits every block.  Free blocks are also chained,
**in address order**, through their "next free" word: allocation is *first fit* along that
chain, and freeing inserts the block in order and merges it with a free neighbour on either
side.  So two free blocks are never adjacent (the coalescing invariant the tests check).

Because the state lives in the buffer, any process that maps the arena sees the same
allocator: ``statistics()`` from an attacher reports the owner's allocations.  The core does
no locking; the arena calls it under its ``flock``.  It trusts nothing it reads: every walk is
bounded by the number of blocks that can fit, and any inconsistency is an ``ArenaError``.

Rules:
* Offsets given to and returned by the core are *heap* offsets of the payload (header skipped).
* 0 is never a valid block offset (the heap header lives there), so 0 ends the free chain.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from inos_node.errors import ArenaError, ArenaExhausted

__all__ = ["BlockInfo", "Heap", "HeapLayout", "HeapStatistics"]


@dataclass(frozen=True, slots=True)
class HeapLayout:
    """Where the allocator keeps its words (from sab_layout.capnp via ``arena.layout``)."""

    header_size: int
    free_head: int
    used_bytes: int
    used_blocks: int
    capacity: int
    block_header_size: int
    blk_size: int
    blk_tag: int
    blk_next_free: int
    blk_length: int
    tag_free: int
    tag_used: int
    align: int

    @classmethod
    def from_layout(cls, lay: object) -> HeapLayout:
        """From ``inos_node.arena.layout.layout`` (typed loosely: this core imports no capnp)."""
        names = (
            "heap_header_size",
            "heap_free_head",
            "heap_used_bytes",
            "heap_used_blocks",
            "heap_capacity",
            "block_header_size",
            "blk_size",
            "blk_tag",
            "blk_next_free",
            "blk_length",
            "block_tag_free",
            "block_tag_used",
            "alloc_align",
        )
        return cls(*(int(getattr(lay, n)) for n in names))


@dataclass(frozen=True, slots=True)
class BlockInfo:
    offset: int  # heap offset of the block header
    size: int  # bytes, header included
    used: bool
    length: int  # bytes asked for (used blocks)
    payload: int  # heap offset of the payload


@dataclass(frozen=True, slots=True)
class HeapStatistics:
    capacity: int
    used: int  # bytes in used blocks, headers included
    free: int  # bytes in free blocks, headers included
    largest_free: int  # the largest payload one allocate() could return now
    used_blocks: int
    free_blocks: int


class Heap:
    """First-fit, address-ordered free list with coalescing, stored in ``buf``."""

    def __init__(self, buf: memoryview | bytearray, hl: HeapLayout) -> None:
        view = memoryview(buf).cast("B")
        if len(view) % 8:
            raise ArenaError(f"heap buffer of {len(view)} bytes is not a whole number of words")
        self._w = view.cast("Q")
        self._hl = hl
        self._cap = len(view)
        self._min_block = hl.block_header_size + hl.align
        self._max_blocks = self._cap // self._min_block + 1

    @classmethod
    def format(cls, buf: memoryview | bytearray, hl: HeapLayout) -> Heap:
        """Write an empty heap (one free block spanning everything) into ``buf``."""
        heap = cls(buf, hl)
        first = _align_up(hl.header_size, hl.align)
        size = (heap._cap - first) // hl.align * hl.align
        if size < heap._min_block:
            raise ArenaExhausted(
                f"a heap of {heap._cap} bytes has no room for a single block",
                requested=heap._min_block + first,
                available=heap._cap,
            )
        heap._set(0, hl.capacity, heap._cap)
        heap._set(0, hl.used_bytes, 0)
        heap._set(0, hl.used_blocks, 0)
        heap._write_block(first, size, hl.tag_free, 0, 0)
        heap._set(0, hl.free_head, first)
        return heap

    def release(self) -> None:
        """Drop the view of the buffer (so the arena can be unmapped)."""
        self._w.release()

    # -- words ------------------------------------------------------------------------------
    def _get(self, off: int, field: int) -> int:
        return int(self._w[(off + field) >> 3])

    def _set(self, off: int, field: int, value: int) -> None:
        self._w[(off + field) >> 3] = value

    def _write_block(self, off: int, size: int, tag: int, next_free: int, length: int) -> None:
        hl = self._hl
        self._set(off, hl.blk_size, size)
        self._set(off, hl.blk_next_free, next_free)
        self._set(off, hl.blk_length, length)
        self._set(off, hl.blk_tag, tag)

    def _first_block(self) -> int:
        return _align_up(self._hl.header_size, self._hl.align)

    def _check_block(self, off: int) -> int:
        """The size of the block at ``off``, after checking it is plausible."""
        hl = self._hl
        if off < self._first_block() or off % hl.align or off + self._min_block > self._cap:
            raise ArenaError(f"heap corrupt: block offset {off} out of range (capacity {self._cap})")
        size = self._get(off, hl.blk_size)
        if size < self._min_block or size % hl.align or off + size > self._cap:
            raise ArenaError(f"heap corrupt: block at {off} has size {size}")
        return size

    # -- operations -------------------------------------------------------------------------
    def allocate(self, length: int) -> int:
        """Reserve ``length`` bytes; return the payload's heap offset (``align``-aligned).

        Raises:
            ArenaExhausted: no free block is large enough (``available`` is the largest payload
                that would fit now).
        """
        hl = self._hl
        if length < 0:
            raise ArenaError(f"cannot allocate a negative length ({length})")
        need = _align_up(hl.block_header_size + max(length, 1), hl.align)
        prev, cur = 0, self._get(0, hl.free_head)
        for _ in range(self._max_blocks):
            if cur == 0:
                break
            size = self._check_block(cur)
            nxt = self._get(cur, hl.blk_next_free)
            if size >= need:
                if size - need >= self._min_block:  # split: the tail stays free, in place
                    rest = cur + need
                    self._write_block(rest, size - need, hl.tag_free, nxt, 0)
                    nxt, size = rest, need
                self._link(prev, nxt)
                self._write_block(cur, size, hl.tag_used, 0, length)
                self._set(0, hl.used_bytes, self._get(0, hl.used_bytes) + size)
                self._set(0, hl.used_blocks, self._get(0, hl.used_blocks) + 1)
                return cur + hl.block_header_size
            prev, cur = cur, nxt
        else:
            raise ArenaError("heap corrupt: the free list does not end")
        largest = self.statistics().largest_free
        raise ArenaExhausted(
            f"the arena heap has no free block for {length} bytes: the largest free block holds {largest} "
            f"bytes ({self._get(0, hl.used_blocks)} blocks in use, capacity {self._cap} bytes)",
            requested=length,
            available=largest,
        )

    def free(self, payload: int) -> int:
        """Return a block to the free list, merging it with free neighbours; returns its size."""
        hl = self._hl
        off = payload - hl.block_header_size
        size = self._check_block(off)
        if self._get(off, hl.blk_tag) != hl.tag_used:
            raise ArenaError(f"heap offset {payload} is not an allocated block (double free?)")
        prev, nxt = 0, self._get(0, hl.free_head)
        for _ in range(self._max_blocks):
            if nxt == 0 or nxt > off:
                break
            prev, nxt = nxt, self._get(nxt, hl.blk_next_free)
        else:
            raise ArenaError("heap corrupt: the free list does not end")
        self._set(0, hl.used_bytes, self._get(0, hl.used_bytes) - size)
        self._set(0, hl.used_blocks, self._get(0, hl.used_blocks) - 1)
        total = size
        if nxt and off + size == nxt:  # absorb the following free block
            total += self._check_block(nxt)
            after = self._get(nxt, hl.blk_next_free)
            self._set(nxt, hl.blk_tag, 0)  # its old header is payload now: never a block again
            nxt = after
        if prev and prev + self._check_block(prev) == off:  # grow the preceding free block
            self._set(off, hl.blk_tag, 0)
            self._write_block(prev, self._get(prev, hl.blk_size) + total, hl.tag_free, nxt, 0)
        else:
            self._write_block(off, total, hl.tag_free, nxt, 0)
            self._link(prev, off)
        return size

    def _link(self, prev: int, target: int) -> None:
        if prev == 0:
            self._set(0, self._hl.free_head, target)
        else:
            self._set(prev, self._hl.blk_next_free, target)

    # -- inspection -------------------------------------------------------------------------
    def block_at(self, payload: int) -> BlockInfo:
        """The used block whose payload starts at heap offset ``payload``."""
        off = payload - self._hl.block_header_size
        size = self._check_block(off)
        if self._get(off, self._hl.blk_tag) != self._hl.tag_used:
            raise ArenaError(f"heap offset {payload} is not an allocated block")
        return BlockInfo(off, size, True, self._get(off, self._hl.blk_length), payload)

    def blocks(self) -> Iterator[BlockInfo]:
        """Every block in address order (used and free)."""
        hl = self._hl
        off = self._first_block()
        for _ in range(self._max_blocks):
            if off + self._min_block > self._cap:
                return
            size = self._check_block(off)
            tag = self._get(off, hl.blk_tag)
            if tag not in (hl.tag_used, hl.tag_free):
                raise ArenaError(f"heap corrupt: block at {off} has tag {tag:#x}")
            used = tag == hl.tag_used
            yield BlockInfo(
                off, size, used, self._get(off, hl.blk_length) if used else 0, off + hl.block_header_size
            )
            off += size
        raise ArenaError("heap corrupt: the block chain does not end")

    def free_chain(self) -> Iterator[int]:
        """Heap offsets of the free blocks, following the free list."""
        cur = self._get(0, self._hl.free_head)
        for _ in range(self._max_blocks):
            if cur == 0:
                return
            self._check_block(cur)
            yield cur
            cur = self._get(cur, self._hl.blk_next_free)
        raise ArenaError("heap corrupt: the free list does not end")

    def statistics(self) -> HeapStatistics:
        hl = self._hl
        free = largest = count = 0
        for off in self.free_chain():
            size = self._get(off, hl.blk_size)
            free += size
            count += 1
            largest = max(largest, size - hl.block_header_size)
        return HeapStatistics(
            self._cap, self._get(0, hl.used_bytes), free, largest, self._get(0, hl.used_blocks), count
        )

    def check(self) -> None:
        """Verify every invariant; raise ``ArenaError`` naming the first one broken."""
        hl = self._hl
        blocks = list(self.blocks())
        end = blocks[-1].offset + blocks[-1].size if blocks else self._first_block()
        if end + self._min_block <= self._cap:
            raise ArenaError(f"heap corrupt: blocks end at {end}, capacity is {self._cap}")
        free = [b.offset for b in blocks if not b.used]
        if list(self.free_chain()) != free:
            raise ArenaError("heap corrupt: the free list is not the free blocks in address order")
        for a, b in zip(blocks, blocks[1:], strict=False):
            if not a.used and not b.used:
                raise ArenaError(f"heap: adjacent free blocks at {a.offset} and {b.offset} (not coalesced)")
        used = [b for b in blocks if b.used]
        if sum(b.size for b in used) != self._get(0, hl.used_bytes):
            raise ArenaError("heap corrupt: used-bytes counter disagrees with the blocks")
        if len(used) != self._get(0, hl.used_blocks):
            raise ArenaError("heap corrupt: used-blocks counter disagrees with the blocks")


def _align_up(value: int, align: int) -> int:
    return (value + align - 1) // align * align
