"""The arena layout as a typed, frozen value, built once from ``sab_layout.capnp``.

Theory of operation
-------------------
``schemas/system/v1/sab_layout.capnp`` is the single source of truth for every offset, size and
epoch index of the shared arena.  ``layout_constants()`` (in ``inos_node.wire``, the only package
that imports capnp) turns its ``const`` declarations into a dict; this module maps each
``camelCase`` constant onto a ``snake_case`` field of ``Layout`` and adds the values that follow
from them (where each fixed region starts, where the dynamic heap starts).  Nothing in
``inos_node.arena`` spells a layout number itself: it reads ``layout.<field>``.

The picture (see the schema for the authoritative comment)::

    0                     header page: magic, version, size, creator pid, ... procGen, allocGen
    epoch_table_offset    epoch_count lines of cache_line bytes (word 0: the counter)
    process_table_offset  max_processes subscriber slots (pid, 256-bit interest mask, started)
    region_table_offset   max_regions directory entries (name, offset, size, epoch, kind)
    fixed_regions_offset  inbox | outbox | registry | diagnostics
    dynamic_offset        the heap: allocator header line, then blocks (alloc_align aligned)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from inos_node.errors import InosInternalError
from inos_node.wire.layout import layout_constants

__all__ = ["FIXED_REGION_NAMES", "FixedRegion", "Layout", "layout"]

# The order of the fixed regions is part of the schema ("fixed regions, in this order").
FIXED_REGION_NAMES = ("inbox", "outbox", "registry", "diagnostics")


@dataclass(frozen=True, slots=True)
class FixedRegion:
    """One of the regions every arena has, at an offset that depends only on the layout."""

    name: str
    offset: int
    size: int
    kind: int
    epoch_index: int


def _schema(default: int = 0) -> int:
    return field(default=default, metadata={"schema": True})


@dataclass(frozen=True, slots=True)
class Layout:
    """Every constant of sab_layout.capnp the arena uses, plus derived offsets."""

    magic: int = _schema()
    layout_version: int = _schema()
    cache_line: int = _schema()
    page_size: int = _schema()
    # header
    header_size: int = _schema()
    hdr_magic: int = _schema()
    hdr_version: int = _schema()
    hdr_total_size: int = _schema()
    hdr_creator_pid: int = _schema()
    hdr_created_ns: int = _schema()
    hdr_epoch_count: int = _schema()
    hdr_region_count: int = _schema()
    hdr_proc_gen: int = _schema()
    hdr_alloc_lock: int = _schema()
    hdr_owner_lock: int = _schema()
    hdr_fence_mode: int = _schema()
    # epoch table
    epoch_table_offset: int = _schema()
    epoch_count: int = _schema()
    epoch_value: int = _schema()
    epoch_name: int = _schema()
    epoch_name_len: int = _schema()
    no_epoch: int = _schema()
    # process table
    process_table_offset: int = _schema()
    max_processes: int = _schema()
    process_slot_size: int = _schema()
    proc_pid: int = _schema()
    proc_mask: int = _schema()
    proc_started: int = _schema()
    # region table
    region_table_offset: int = _schema()
    max_regions: int = _schema()
    region_entry_size: int = _schema()
    region_name: int = _schema()
    region_name_len: int = _schema()
    region_offset: int = _schema()
    region_size: int = _schema()
    region_epoch: int = _schema()
    region_kind: int = _schema()
    # fixed regions and sizes
    fixed_regions_offset: int = _schema()
    inbox_size: int = _schema()
    outbox_size: int = _schema()
    registry_size: int = _schema()
    diagnostics_size: int = _schema()
    alloc_align: int = _schema()
    min_arena_size: int = _schema()
    default_arena_size: int = _schema()
    # epoch indices
    idx_control: int = _schema()
    idx_inbox: int = _schema()
    idx_outbox: int = _schema()
    idx_registry: int = _schema()
    idx_diagnostics: int = _schema()
    idx_allocator: int = _schema()
    idx_boids: int = _schema()
    idx_first_dynamic: int = _schema()
    # region kinds
    kind_ring: int = _schema()
    kind_message: int = _schema()
    kind_dynamic: int = _schema()
    kind_block: int = _schema()
    # message regions
    msg_seq: int = _schema()
    msg_length: int = _schema()
    msg_header_size: int = _schema()
    # rings
    ring_head: int = _schema()
    ring_tail: int = _schema()
    ring_header_size: int = _schema()
    ring_record_align: int = _schema()
    # heap
    heap_free_head: int = _schema()
    heap_used_bytes: int = _schema()
    heap_used_blocks: int = _schema()
    heap_capacity: int = _schema()
    heap_header_size: int = _schema()
    block_header_size: int = _schema()
    blk_size: int = _schema()
    blk_tag: int = _schema()
    blk_next_free: int = _schema()
    blk_length: int = _schema()
    block_tag_free: int = _schema()
    block_tag_used: int = _schema()
    # ping-pong
    pp_dtype: int = _schema()
    pp_dtype_len: int = _schema()
    pp_ndim: int = _schema()
    pp_shape: int = _schema()
    pp_max_dims: int = _schema()
    pp_seq0: int = _schema()
    pp_seq1: int = _schema()
    pp_header_size: int = _schema()
    # derived
    fixed_regions: tuple[FixedRegion, ...] = ()
    dynamic_offset: int = 0
    fixed_epoch_names: Mapping[int, str] = field(default_factory=dict)
    constants: Mapping[str, int] = field(default_factory=dict)

    @classmethod
    def from_constants(cls, c: Mapping[str, int]) -> Layout:
        """Build the layout from the schema's constants (``layout_constants()``)."""
        values: dict[str, object] = {}
        for f in dataclasses.fields(cls):
            if not f.metadata.get("schema"):
                continue
            key = _camel(f.name)
            if key not in c:
                raise InosInternalError(f"sab_layout.capnp has no constant {key!r} (Layout.{f.name})")
            values[f.name] = c[key]
        kinds = {
            "inbox": c["kindRing"],
            "outbox": c["kindRing"],
            "registry": c["kindMessage"],
            "diagnostics": c["kindMessage"],
        }
        epochs = {
            "inbox": c["idxInbox"],
            "outbox": c["idxOutbox"],
            "registry": c["idxRegistry"],
            "diagnostics": c["idxDiagnostics"],
        }
        regions = []
        offset = c["fixedRegionsOffset"]
        for name in FIXED_REGION_NAMES:
            size = c[f"{name}Size"]
            regions.append(FixedRegion(name, offset, size, kinds[name], epochs[name]))
            offset = _align_up(offset + size, c["allocAlign"])
        values["fixed_regions"] = tuple(regions)
        values["dynamic_offset"] = _align_up(offset, c["pageSize"])
        # Fixed epoch indices carry their schema names ("idxBoids" -> "boids") in the table.
        values["fixed_epoch_names"] = MappingProxyType(
            {v: k[3].lower() + k[4:] for k, v in c.items() if k.startswith("idx") and k != "idxFirstDynamic"}
        )
        values["constants"] = MappingProxyType(dict(c))
        return cls(**values)  # type: ignore[arg-type]

    # -- offsets ---------------------------------------------------------------------------
    def epoch_line(self, index: int) -> int:
        """Byte offset of epoch line ``index`` (its counter is word 0)."""
        return self.epoch_table_offset + index * self.cache_line

    def process_slot(self, slot: int) -> int:
        return self.process_table_offset + slot * self.process_slot_size

    def region_entry(self, entry: int) -> int:
        return self.region_table_offset + entry * self.region_entry_size

    def fixed_region(self, name: str) -> FixedRegion:
        for r in self.fixed_regions:
            if r.name == name:
                return r
        raise KeyError(name)

    def dynamic_size(self, arena_size: int) -> int:
        return arena_size - self.dynamic_offset

    @property
    def mask_words(self) -> int:
        """uint64 words of a process's interest mask (one bit per epoch index)."""
        return (self.epoch_count + 63) // 64


def _camel(snake: str) -> str:
    head, *rest = snake.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


def _align_up(value: int, align: int) -> int:
    return (value + align - 1) // align * align


layout = Layout.from_constants(layout_constants())
