"""The node's shared-memory arena: one tmpfs file shared by the node and its worker processes.

What it gives you:

* ``Arena``: create (owner) or attach (by name) a mapped arena laid out by
  ``schemas/system/v1/sab_layout.capnp``; epoch counters (``epoch``, ``publish``), zero-copy
  views, a block allocator for the dynamic region, a region directory and statistics.
* ``EpochWatcher`` (trio) and ``BlockingWaiter`` (plain processes): wait for an epoch to move,
  woken through one doorbell FIFO per process; nothing polls.
* ``MessageRegion`` (seqlocked messages), ``PingPong`` (double-buffered numpy frames) and
  ``Ring`` (SPSC byte rings for the process executor): readers never see torn data.

The memory-ordering argument lives in ``arena.py``'s docstring; the wake-up design in
``epochs.py``; the measurements behind both in notes/arena.md.
"""

from __future__ import annotations

from inos_node.arena._lifecycle import sweep_stale
from inos_node.arena.arena import Arena, ArenaStatistics, Block, EpochInfo, RegionEntry, open_arena
from inos_node.arena.epochs import BlockingWaiter, EpochWatcher
from inos_node.arena.layout import Layout, layout
from inos_node.arena.messages import MessageRegion
from inos_node.arena.pingpong import PingPong
from inos_node.arena.rings import Ring

__all__ = [
    "Arena",
    "ArenaStatistics",
    "Block",
    "BlockingWaiter",
    "EpochInfo",
    "EpochWatcher",
    "Layout",
    "MessageRegion",
    "PingPong",
    "RegionEntry",
    "Ring",
    "layout",
    "open_arena",
    "sweep_stale",
]
