"""The arena layout is the schema's, its regions do not overlap, and every counter has its own line."""

from __future__ import annotations

import dataclasses

import pytest

from inos_node.arena import _barrier
from inos_node.arena.layout import FIXED_REGION_NAMES, Layout, layout
from inos_node.wire.layout import layout_constants

C = layout_constants()
LINE = layout.cache_line


def _camel(snake: str) -> str:
    head, *rest = snake.split("_")
    return head + "".join(p[:1].upper() + p[1:] for p in rest)


def test_every_field_is_the_schema_constant() -> None:
    schema_fields = [f for f in dataclasses.fields(Layout) if f.metadata.get("schema")]
    assert schema_fields, "the layout has schema fields"
    for f in schema_fields:
        assert getattr(layout, f.name) == C[_camel(f.name)], f.name
    assert dict(layout.constants) == C, "all constants are kept"


def test_tables_follow_each_other_without_overlap() -> None:
    spans = [
        ("header", 0, layout.header_size),
        ("epochs", layout.epoch_table_offset, layout.epoch_count * LINE),
        ("processes", layout.process_table_offset, layout.max_processes * layout.process_slot_size),
        ("regions", layout.region_table_offset, layout.max_regions * layout.region_entry_size),
    ]
    spans += [(r.name, r.offset, r.size) for r in layout.fixed_regions]
    spans.append(("dynamic", layout.dynamic_offset, layout.min_arena_size - layout.dynamic_offset))
    for (a, a0, an), (b, b0, _bn) in zip(spans, spans[1:], strict=False):
        assert a0 + an <= b0, f"{a} overlaps {b}"
    for name, start, _n in spans:
        assert start % LINE == 0, f"{name} starts on a cache line"
    assert layout.dynamic_offset % layout.page_size == 0, "the heap starts on a page"
    assert layout.min_arena_size - layout.dynamic_offset >= 1024 * 1024, "the minimum arena leaves heap room"


def test_fixed_regions_are_the_schema_order_and_sizes() -> None:
    assert tuple(r.name for r in layout.fixed_regions) == FIXED_REGION_NAMES
    assert layout.fixed_regions[0].offset == layout.fixed_regions_offset
    for r in layout.fixed_regions:
        assert r.size == C[f"{r.name}Size"], r.name
    assert layout.fixed_region("inbox").kind == layout.kind_ring
    assert layout.fixed_region("registry").epoch_index == layout.idx_registry


def test_every_counter_sits_alone_at_the_start_of_a_64_byte_line() -> None:
    assert LINE == 64
    for i in range(layout.epoch_count):
        assert (layout.epoch_line(i) + layout.epoch_value) % LINE == 0, i
    # the epoch name shares the line but never the counter's word
    assert layout.epoch_value + 8 <= layout.epoch_name
    assert layout.epoch_name + layout.epoch_name_len <= LINE
    # header counters: own lines, away from the fixed header fields (line 0)
    assert layout.hdr_proc_gen % LINE == 0 and layout.hdr_alloc_lock % LINE == 0
    assert len({0, layout.hdr_proc_gen // LINE, layout.hdr_alloc_lock // LINE}) == 3
    for f in ("hdr_magic", "hdr_total_size", "hdr_creator_pid", "hdr_created_ns"):
        assert getattr(layout, f) % 8 == 0 and getattr(layout, f) + 8 <= LINE, f
    for f in ("hdr_version", "hdr_epoch_count", "hdr_region_count", "hdr_fence_mode"):
        assert getattr(layout, f) % 4 == 0 and getattr(layout, f) + 4 <= LINE, f
    header_fields = sorted(
        [
            (layout.hdr_magic, 8),
            (layout.hdr_version, 4),
            (layout.hdr_total_size, 8),
            (layout.hdr_creator_pid, 8),
            (layout.hdr_created_ns, 8),
            (layout.hdr_epoch_count, 4),
            (layout.hdr_region_count, 4),
            (layout.hdr_fence_mode, 4),
        ]
    )
    for (a, n), (b, _m) in zip(header_fields, header_fields[1:], strict=False):
        assert a + n <= b, "header fields do not overlap"
    assert layout.hdr_owner_lock < layout.header_size
    # ring lanes, ping-pong sequence words, message header
    assert layout.ring_head % LINE == 0 and layout.ring_tail % LINE == 0
    assert layout.ring_head // LINE != layout.ring_tail // LINE
    assert layout.ring_header_size >= layout.ring_tail + 8 and layout.ring_header_size % LINE == 0
    assert layout.pp_seq0 % LINE == 0 and layout.pp_seq1 % LINE == 0 and layout.pp_seq0 != layout.pp_seq1
    assert layout.pp_header_size % LINE == 0 and layout.pp_header_size >= layout.pp_seq1 + 8
    assert layout.pp_shape + 8 * layout.pp_max_dims <= layout.pp_seq0
    assert layout.msg_header_size % 8 == 0 and layout.msg_seq % 8 == 0 and layout.msg_length % 8 == 0


def test_slots_entries_and_blocks_fit_their_records() -> None:
    assert layout.proc_mask + 8 * layout.mask_words <= layout.proc_started
    assert layout.proc_started + 8 <= layout.process_slot_size
    assert layout.mask_words * 64 >= layout.epoch_count
    assert layout.region_name + layout.region_name_len <= layout.region_offset
    assert layout.region_kind + 4 <= layout.region_entry_size
    assert layout.block_header_size == layout.alloc_align, "a block header is one aligned line"
    assert layout.blk_length + 8 <= layout.block_header_size
    assert layout.heap_capacity + 8 <= layout.heap_header_size
    assert layout.idx_first_dynamic > max(layout.fixed_epoch_names), "fixed indices come before dynamic ones"


@pytest.mark.parametrize("machine", ["aarch64", "x86_64"])
def test_fences_run_on_both_paths(machine: str) -> None:
    """The non-x86 path (release + acquire on a private spinlock) and the x86 path both run,
    and leave the lock held as they found it."""
    fences = _barrier.build_fences(machine)
    assert fences.tso is (machine == "x86_64")
    for _ in range(1000):
        fences.full()
        fences.store_load()
    assert fences.is_locked(), "a fence leaves the private lock held"


def test_membarrier_is_optional() -> None:
    assert not _barrier.Membarrier("sparc").available, "unknown machines fall back to fencing publishers"
    assert not _barrier.Membarrier("x86_64", enable=False).available
    _barrier.subscriber_fence()  # whichever way this machine supports
