"""The arena's block allocator (a pure core over a plain buffer): no overlap, coalescing, exhaustion."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, consumes, invariant, rule

from inos_node.arena.alloc import Heap, HeapLayout
from inos_node.arena.layout import layout
from inos_node.errors import ArenaError, ArenaExhausted

HL = HeapLayout.from_layout(layout)
HEAP_BYTES = 64 * 1024


def fresh(size: int = HEAP_BYTES) -> tuple[bytearray, Heap]:
    buf = bytearray(size)
    return buf, Heap.format(buf, HL)


class HeapMachine(RuleBasedStateMachine):
    """Random allocate/free sequences; after every step the heap must be consistent, every live
    block must keep its own bytes, and no two live blocks may overlap."""

    blocks = Bundle("blocks")

    def __init__(self) -> None:
        super().__init__()
        self.buf, self.heap = fresh()
        self.live: dict[int, tuple[int, int]] = {}  # payload -> (length, fill byte)
        self.fill = 0

    @rule(target=blocks, length=st.integers(min_value=0, max_value=9000))
    def allocate(self, length: int) -> int:
        before = self.heap.statistics()
        try:
            payload = self.heap.allocate(length)
        except ArenaExhausted as exc:
            assert exc.requested == length, "the error names the size asked for"
            assert exc.available == before.largest_free, "the error names the largest free block"
            assert exc.available < max(length, 1), "exhausted only when nothing large enough is free"
            return -1
        assert payload % layout.alloc_align == 0, "payloads are aligned"
        assert 0 < payload and payload + length <= len(self.buf), "the block lies inside the heap"
        self.fill = self.fill % 251 + 1
        self.buf[payload : payload + length] = bytes([self.fill]) * length
        self.live[payload] = (length, self.fill)
        return payload

    @rule(payload=consumes(blocks))
    def free(self, payload: int) -> None:
        if payload < 0:
            return
        self.heap.free(payload)
        del self.live[payload]
        with pytest.raises(ArenaError):
            self.heap.free(payload)  # a double free is refused

    @invariant()
    def consistent(self) -> None:
        self.heap.check()  # tiling, free list == free blocks in order, no adjacent free blocks
        spans = sorted((p, p + max(n, 1)) for p, (n, _f) in self.live.items())
        for (_a0, a1), (b0, _b1) in zip(spans, spans[1:], strict=False):
            assert a1 <= b0, "live blocks never overlap"
        for payload, (length, fill) in self.live.items():
            assert self.buf[payload : payload + length] == bytes([fill]) * length, (
                "nobody wrote into a live block"
            )
        stats = self.heap.statistics()
        assert stats.used_blocks == len(self.live), "the counters track the live blocks"
        assert stats.used + stats.free <= stats.capacity, "used and free fit the heap"


TestHeapMachine = HeapMachine.TestCase
TestHeapMachine.settings = settings(max_examples=60, stateful_step_count=40, deadline=None)


@given(st.lists(st.integers(min_value=0, max_value=4000), min_size=1, max_size=20), st.randoms())
@settings(max_examples=60, deadline=None)
def test_freeing_everything_in_any_order_coalesces_to_one_block(
    lengths: list[int], rnd: random.Random
) -> None:
    _buf, heap = fresh()
    empty = heap.statistics()
    payloads = []
    for n in lengths:
        try:
            payloads.append(heap.allocate(n))
        except ArenaExhausted:
            break
    rnd.shuffle(payloads)
    for p in payloads:
        heap.free(p)
        heap.check()
    assert heap.statistics() == empty, "after freeing everything the heap is one free block again"


def test_neighbours_merge_on_both_sides() -> None:
    _buf, heap = fresh()
    a, b, c, d = (heap.allocate(100) for _ in range(4))
    heap.free(a)
    heap.free(c)
    assert heap.statistics().free_blocks == 3, "a, c and the tail are separate free blocks"
    heap.free(b)  # merges with a (before) and c (after)
    assert heap.statistics().free_blocks == 2, "a+b+c became one block"
    heap.free(d)  # merges with a+b+c and with the tail
    assert heap.statistics().free_blocks == 1, "everything is one block again"
    heap.check()


def test_first_fit_reuses_the_lowest_hole() -> None:
    _buf, heap = fresh()
    a = heap.allocate(1000)
    heap.allocate(10)
    heap.free(a)
    assert heap.allocate(500) == a, "first fit takes the first free block large enough"


def test_exhaustion_is_an_error_naming_both_sizes() -> None:
    _buf, heap = fresh(8192)
    with pytest.raises(ArenaExhausted) as info:
        heap.allocate(10_000)
    assert info.value.requested == 10_000
    assert info.value.available == heap.statistics().largest_free
    assert "10000 bytes" in str(info.value), "the message names the size asked for"
    heap.allocate(info.value.available)  # exactly the largest free block still fits


def test_bad_frees_and_corruption_are_errors_not_crashes() -> None:
    buf, heap = fresh()
    p = heap.allocate(64)
    with pytest.raises(ArenaError):
        heap.free(p + 8)  # not a block start
    with pytest.raises(ArenaError):
        heap.free(len(buf) * 2)  # outside the heap
    with pytest.raises(ArenaError):
        heap.allocate(-1)
    first = p - HL.block_header_size
    buf[first : first + 8] = (3).to_bytes(8, "little")  # a size that cannot be
    with pytest.raises(ArenaError):
        heap.check()


def test_too_small_a_heap_is_refused() -> None:
    with pytest.raises(ArenaExhausted):
        Heap.format(bytearray(128), HL)
