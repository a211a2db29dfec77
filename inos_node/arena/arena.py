"""The node's shared-memory arena: one tmpfs file, mapped by the node and its worker processes.

Theory of operation
-------------------
One ``Arena.create`` per node makes ``<directory>/<name>`` (``/dev/shm`` by default), reserves
every page with ``posix_fallocate`` and lays it out as ``sab_layout.capnp`` says (see
``inos_node.arena.layout``).  Other processes ``Arena.attach`` by name; the attach checks magic,
layout version and size and refuses a mismatch with ``ArenaLayoutMismatch``.  Only the owner
unlinks the file (and the doorbell FIFOs beside it).

Lifecycle::

    create(name) --tmp file, O_EXCL--> fallocate --> format --> link(tmp, name) --> owner
        |                                                          (attachers see only a
        +-- <name> exists: owner lock held  -> ArenaError "in use"   complete arena)
                           owner lock free  -> warn, remove it and its FIFOs, go on

The owner holds a shared OFD lock on one header byte for its lifetime; the kernel drops it when
the process dies, so a crashed node's file is recognised as stale even if its pid was reused.

Epochs and memory ordering
--------------------------
Each epoch index has **exactly one writer** (one actor, one worker lane...).  The writer
mutates the data, then ``publish(i)``:

1. ``full_fence()``: the data stores are ordered before the epoch store.
2. ``epoch[i] += 1`` as one aligned 8-byte store through a memoryview cast (one ``mov``, like
   numpy's, so atomic: the word sits alone at the start of a 64-byte line, notes §1.2; checked
   here with 22 M cross-process reads, 0 torn).  Only the single writer does this load-add-store.
3. Read the process-table generation and ring the doorbell of every *other* process
   interested in ``i`` (1 byte into its FIFO; see ``_doorbell``).  Between the epoch store and
   that load no fence is needed: a new subscriber pays for the store-load barrier of both sides
   with ``membarrier(2)`` (``_barrier``), unless some process lacks it, and then publishers
   fence here.
4. Wake the local trio waiters of ``i`` (one ``ParkingLot`` per index).

A reader loads the epoch, then ``full_fence()``, then reads the data.  On **x86-64** (TSO) a
plain aligned store is a release store and a plain load an acquire load, so ``full_fence`` is a
no-op there and the pattern "write data, store epoch" / "load epoch, read data" is correct with
plain accesses (notes §1.3: 0 violations in 9.3 M checks).  On **aarch64** and other
weakly ordered machines ``full_fence`` is a real barrier built from a libc spinlock through
ctypes (release then acquire RMW, which ARMv8 orders as RCsc), so the same code stays correct
without a C compiler.  The only store-then-load handshake (publisher vs new subscriber) is
covered as described in step 3.

Multi-word data that changes in place is read with a seqlock (``MessageRegion``, ``PingPong``):
copy, then validate the sequence word; readers never see a torn record.

Views
-----
``view()`` / ``ndarray()`` / ``Block.view()`` hand out zero-copy views that *pin* the mapping
(numpy views are made with ``np.frombuffer``, which pins; ``np.ndarray(buffer=)`` would not and
segfaults after unmapping, pitfall 5).  ``close()`` drops the arena's own views, runs
``gc.collect()`` once if needed, and if a caller still holds a view it finishes every other
clean-up step and raises ``ArenaError`` naming the cause, instead of crashing.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import glob
import os
import secrets
import threading
import weakref
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import trio

from inos_node.arena import _lifecycle as _lc
from inos_node.arena import _shm
from inos_node.arena._barrier import TSO, full_fence, membarrier, store_load_fence
from inos_node.arena._doorbell import BellRinger, Doorbell, ProcessTable
from inos_node.arena.alloc import Heap, HeapLayout
from inos_node.arena.layout import layout
from inos_node.errors import ArenaError, ArenaExhausted, ArenaLayoutMismatch

if TYPE_CHECKING:
    from inos_node.arena.epochs import EpochWatcher, _IndexWaiters

__all__ = ["Arena", "ArenaStatistics", "Block", "EpochInfo", "RegionEntry", "open_arena"]


_U32 = _lc.U32
_U64 = _lc.U64
_ONE = b"\x01"
_get_ident = threading.get_ident
_N_EPOCHS = layout.epoch_count
_LINE_SHIFT = (layout.cache_line // 8).bit_length() - 1  # epoch i is word i << shift
_GEN_WORD = layout.hdr_proc_gen // 8


@dataclass(frozen=True, slots=True)
class RegionEntry:
    """One directory entry: a fixed region, the dynamic region, or a named block."""

    index: int
    name: str
    offset: int
    size: int
    epoch_index: int | None
    kind: int


@dataclass(frozen=True, slots=True)
class EpochInfo:
    index: int
    name: str
    value: int


@dataclass(frozen=True, slots=True)
class ArenaStatistics:
    """A consistent snapshot (taken under the arena lock) of what the arena holds."""

    name: str
    path: str
    size: int
    is_owner: bool
    dynamic_size: int
    used: int  # heap bytes in used blocks, block headers included
    free: int  # heap bytes in free blocks
    largest_free: int  # the largest block allocate() could return now
    blocks: int  # used blocks
    free_blocks: int
    named_blocks: int
    regions: int  # directory entries in use
    processes: int  # subscribed processes (doorbells)
    alloc_generation: int
    epochs: tuple[EpochInfo, ...]  # every named index (fixed and reserved) with its value


class _Closed:
    """Stands in for the arena's numpy views after close(): any use is a clear error."""

    def __getattr__(self, name: str) -> Any:
        raise ArenaError("the arena is closed")

    def __getitem__(self, key: object) -> Any:
        raise ArenaError("the arena is closed")

    def __setitem__(self, key: object, value: object) -> None:
        raise ArenaError("the arena is closed")


_CLOSED: Any = _Closed()


@dataclass(frozen=True, slots=True, eq=False)
class Block:
    """A piece of the dynamic region.  ``offset`` is absolute in the arena (usable by
    ``Arena.view`` in any process); ``size`` is what was asked for."""

    arena: Arena
    offset: int
    size: int
    name: str = ""
    epoch_index: int | None = None

    def view(self) -> memoryview:
        """A writable, zero-copy view of the block (it pins the mapping until dropped)."""
        return self.arena.view(self.offset, self.size)

    def ndarray(self, dtype: Any = np.uint8, shape: int | tuple[int, ...] | None = None) -> np.ndarray:
        """The block as a numpy array (whole items only when ``shape`` is not given)."""
        dt = np.dtype(dtype)
        if shape is None:
            shape = (self.size // dt.itemsize,)
        shape = (shape,) if isinstance(shape, int) else tuple(shape)
        if int(np.prod(shape, dtype=np.int64)) * dt.itemsize > self.size:
            raise ArenaError(
                f"an array of shape {shape} and dtype {dt} does not fit block {self.name or self.offset} "
                f"of {self.size} bytes"
            )
        return self.arena.ndarray(self.offset, dt, shape)


class Arena:
    """One mapped arena.  Make it with ``Arena.create`` (owner) or ``Arena.attach``."""

    def __init__(self, *, name: str, directory: str, fd: int, size: int, is_owner: bool) -> None:
        self.name = name
        self.directory = directory
        self.path = os.path.join(directory, name)
        self.size = size
        self.is_owner = is_owner
        self.closed = False
        self._fd = fd
        self._mm = _shm.map_file(fd, size)
        self._buf = memoryview(self._mm)
        self._flock = _shm.FileLock(fd)
        # Hot words are read and written through memoryview casts: an aligned 8-byte
        # memoryview access is one load/store instruction (as numpy's) at a third of the cost
        # on a cold cache, which is what a wake after an idle gap runs on.
        self._line_shift = _LINE_SHIFT
        self._n_epochs = layout.epoch_count
        self._ew: Any = self._buf[
            layout.epoch_table_offset : layout.epoch_table_offset + layout.epoch_count * layout.cache_line
        ].cast("Q")
        self._hw: Any = self._buf[: layout.header_size].cast("Q")
        self._gen_word = layout.hdr_proc_gen // 8
        self._alloc_word = layout.hdr_alloc_lock // 8
        self._ptable: Any = ProcessTable(self._buf)
        self._heap_base = layout.dynamic_offset
        self._heap_layout = HeapLayout.from_layout(layout)
        self._heap: Any = Heap(self._buf[self._heap_base : size], self._heap_layout)
        self._ringer = BellRinger(self)
        self._waiters: dict[int, _IndexWaiters] = {}
        self._written = bytearray(layout.epoch_count)  # indices this object has published
        self._watcher: EpochWatcher | None = None
        self._trio_token: trio.lowlevel.TrioToken | None = None
        self._trio_thread = -1
        self._local_slot = -1
        self._own_slots: set[int] = set()
        self._doorbells: set[Doorbell] = set()
        self._dependents: weakref.WeakSet[Any] = weakref.WeakSet()
        # Publishers skip the store-load fence when every process can use membarrier (see
        # _barrier); a process that cannot sets hdrFenceMode, which publishers see on refresh.
        self._fence_publish = False
        if not membarrier.register():
            with self._flock.hold():
                _U32.pack_into(self._buf, layout.hdr_fence_mode, 1)
                self._bump_proc_gen()
        self._read_fence_mode()

    # ------------------------------------------------------------------ lifecycle
    @classmethod
    def create(
        cls,
        name: str | None = None,
        size: int = layout.default_arena_size,
        directory: str | os.PathLike[str] = "/dev/shm",
    ) -> Arena:
        """Create and own a new arena file ``<directory>/<name>`` of ``size`` bytes.

        A leftover file of the same name whose owner is gone (crash, kill -9) is removed with a
        warning, with its doorbell FIFOs.

        Raises:
            ArenaExhausted: the filesystem cannot hold ``size`` bytes (names both numbers).
            ArenaError: the name is in use by a live owner, is not an arena, or is invalid.
        """
        directory = os.fspath(directory)
        name = name if name is not None else f"inos-{os.getpid()}-{secrets.token_hex(4)}"
        _lc.check_name(name)
        if size < layout.min_arena_size:
            raise ArenaError(
                f"arena size {size} is below the minimum of {layout.min_arena_size} bytes "
                "(the fixed regions need that much)"
            )
        size = -(-size // layout.page_size) * layout.page_size
        if not os.path.isdir(directory):
            raise ArenaError(f"arena directory {directory} does not exist")
        path = os.path.join(directory, name)
        _lc.remove_stale_tmp(directory, name)
        _shm.check_space(directory, size)
        for _attempt in range(3):
            _lc.remove_if_stale(path, directory, name)
            tmp = os.path.join(directory, f".{name}.tmp.{os.getpid()}.{secrets.token_hex(4)}")
            fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            try:
                _shm.lock_byte_shared(fd, layout.hdr_owner_lock)
                _shm.fallocate(fd, size, directory)
                _lc.format_file(fd, size)
                try:
                    os.link(tmp, path)
                except FileExistsError:
                    os.close(fd)
                    fd = -1
                    continue  # someone created it meanwhile; the next round tells whether it lives
            except BaseException:
                if fd >= 0:
                    os.close(fd)
                raise
            finally:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
            try:
                return cls(name=name, directory=directory, fd=fd, size=size, is_owner=True)
            except BaseException:
                os.unlink(path)
                os.close(fd)
                raise
        raise ArenaError(f"could not create arena {path}: another process keeps creating it")

    @classmethod
    def attach(cls, name: str, directory: str | os.PathLike[str] = "/dev/shm") -> Arena:
        """Map an existing arena.  Attachers never unlink it.

        Raises:
            ArenaLayoutMismatch: magic, layout version, size or a fixed region differ from this
                node's layout (``field``, ``expected`` and ``observed`` say which and how).
            ArenaError: no such arena, or its owner is gone.
        """
        directory = os.fspath(directory)
        _lc.check_name(name)
        path = os.path.join(directory, name)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            raise ArenaError(
                f"no arena {path} (is the node running, with the same arena directory?)"
            ) from None
        except OSError as exc:
            raise ArenaError(f"cannot open arena {path}: {exc}") from exc
        try:
            size = _lc.check_header(fd, path)
            arena = cls(name=name, directory=directory, fd=fd, size=size, is_owner=False)
        except BaseException:
            os.close(fd)
            raise
        try:
            arena._check_regions()
        except BaseException:
            arena.close()
            raise
        return arena

    def __enter__(self) -> Arena:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        role = "owner" if self.is_owner else "attached"
        return f"<Arena {self.path} {self.size} bytes {role}{' closed' if self.closed else ''}>"

    def close(self) -> None:
        """Unsubscribe, unlink (owner only) and unmap.  Idempotent.

        Raises:
            ArenaError: views handed out earlier are still alive; everything else was released
                and the mapping goes away when the last of them is dropped.
        """
        if self.closed:
            return
        for bell in list(self._doorbells):
            bell.close()
        self.closed = True
        self._ringer.close()
        for dep in list(self._dependents):
            dep._release()
        self._heap.release()
        for w in self._waiters.values():
            if w.lot:
                w.lot.unpark_all()
        self._waiters.clear()
        self._ew.release()
        self._hw.release()
        self._ew = self._hw = self._ptable = self._heap = _CLOSED
        if self.is_owner:
            self._unlink()
        unmapped = self._unmap()
        _shm.unlock_byte(self._fd, layout.hdr_owner_lock)
        os.close(self._fd)
        if not unmapped:
            raise ArenaError(
                f"arena {self.path}: closed, but views of its memory are still alive (from view(), "
                "ndarray(), region(), Block.view()/ndarray(), PingPong.begin() or a pycapnp reader); the "
                "mapping stays until they are dropped"
            )

    def _unlink(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            if os.stat(self.path).st_ino == os.fstat(self._fd).st_ino:  # never someone else's file
                os.unlink(self.path)
        for bell in glob.glob(os.path.join(glob.escape(self.directory), glob.escape(self.name) + ".bell.*")):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(bell)

    def _unmap(self) -> bool:
        for attempt in range(2):
            try:
                self._buf.release()
                self._mm.close()
                return True
            except BufferError:
                if attempt == 0:
                    gc.collect()  # views kept only by reference cycles (pitfall 6)
        return False

    # ------------------------------------------------------------------ epochs
    def epoch(self, index: int) -> int:
        """The current value of epoch ``index`` (a plain acquire load on x86)."""
        if not 0 <= index < _N_EPOCHS:
            raise ArenaError(f"epoch index {index} is out of range 0..{_N_EPOCHS - 1}")
        value: int = self._ew[index << _LINE_SHIFT]
        return value

    def publish(self, index: int) -> int:
        """Bump epoch ``index`` and wake its subscribers; returns the new value.

        Call it only from the single writer of ``index``, after writing the data it covers.
        Subscribers in other processes get one doorbell byte each; trio waiters of this arena
        object are unparked directly (also when published from another thread).
        """
        if not 0 <= index < _N_EPOCHS:
            raise ArenaError(f"epoch index {index} is out of range 0..{_N_EPOCHS - 1}")
        # Every step here is on the wake-up path, and after an idle gap it runs on cold caches
        # (each attribute or call costs ~0.2-1 us then): module constants, locals, no helpers.
        ew = self._ew
        word = index << _LINE_SHIFT
        if not TSO:
            full_fence()  # the data before the epoch
        value: int = ew[word] + 1
        ew[word] = value
        self._written[index] = 1
        if self._fence_publish:
            store_load_fence()  # the epoch before the procGen load (when membarrier is missing)
        ringer = self._ringer
        if self._hw[_GEN_WORD] != ringer.gen:
            ringer.refresh()
        if ringer.remotes:
            fds = ringer.subs.get(index)
            if fds is None:
                fds = ringer.build(index)
            for fd in fds:
                try:
                    os.write(fd, _ONE)
                except BlockingIOError:
                    pass  # the FIFO is full: a wake-up is pending there already
                except OSError as exc:
                    ringer.failed(fd, exc)
        waiters = self._waiters.get(index)
        if waiters is not None:
            if _get_ident() == self._trio_thread:
                waiters.wake(value)
            elif self._trio_token is not None:
                with contextlib.suppress(trio.RunFinishedError):
                    self._trio_token.run_sync_soon(waiters.wake, value)
        return value

    def reserve_epoch(self, name: str) -> int:
        """The dynamic epoch index named ``name``, reserving a free one if none has that name.

        Reserving is idempotent (another process asking for the same name gets the same index),
        so the name is how processes agree on an index.  The caller becomes its single writer.

        Raises:
            ArenaExhausted: every dynamic index is taken.
        """
        raw = _lc.encode_name(name, layout.epoch_name_len, "epoch name")
        with self._flock.hold():
            free = None
            for index in range(layout.idx_first_dynamic, layout.epoch_count):
                current = self._epoch_name(index)
                if current == name:
                    return index
                if not current and free is None:
                    free = index
            if free is None:
                count = layout.epoch_count - layout.idx_first_dynamic
                raise ArenaExhausted(
                    f"arena {self.name}: all {count} dynamic epoch indices are reserved",
                    requested=1,
                    available=0,
                )
            off = layout.epoch_line(free) + layout.epoch_name
            self._buf[off : off + layout.epoch_name_len] = raw
            return free

    def find_epoch(self, name: str) -> int | None:
        """The index reserved (or fixed) under ``name``, if any."""
        for index in range(layout.epoch_count):
            if self._epoch_name(index) == name:
                return index
        return None

    def _epoch_name(self, index: int) -> str:
        off = layout.epoch_line(index) + layout.epoch_name
        return _lc.decode_name(self._buf[off : off + layout.epoch_name_len])

    def _proc_generation(self) -> int:
        value: int = self._hw[self._gen_word]
        return value

    def _bump_proc_gen(self) -> None:
        """Only under the flock (one writer at a time)."""
        full_fence()
        self._hw[self._gen_word] = self._hw[self._gen_word] + 1

    def _read_fence_mode(self) -> None:
        """Publishers fence if this process or any other lacks membarrier (``hdrFenceMode``)."""
        flag = _U32.unpack_from(self._buf, layout.hdr_fence_mode)[0]
        self._fence_publish = bool(flag) or not membarrier.available

    # ------------------------------------------------------------------ memory
    def view(self, offset: int, length: int) -> memoryview:
        """A writable zero-copy view of ``length`` bytes at absolute ``offset``."""
        if offset < 0 or length < 0 or offset + length > self.size:
            raise ArenaError(f"view [{offset}, {offset + length}) is outside the arena (size {self.size})")
        return self._buf[offset : offset + length]

    def _words(self, offset: int, nbytes: int) -> memoryview:
        """uint64 words at ``offset`` as a memoryview (the cheapest single-instruction access)."""
        if offset % 8 or nbytes % 8:
            raise ArenaError(f"words at {offset} (+{nbytes}) are not 8-byte aligned")
        return self.view(offset, nbytes).cast("Q")

    def ndarray(self, offset: int, dtype: Any, shape: int | tuple[int, ...]) -> np.ndarray:
        """A zero-copy numpy array at absolute ``offset`` (made with ``np.frombuffer``, so it pins)."""
        dt = np.dtype(dtype)
        shape = (shape,) if isinstance(shape, int) else tuple(shape)
        count = int(np.prod(shape, dtype=np.int64))
        if offset < 0 or count < 0 or offset + count * dt.itemsize > self.size:
            raise ArenaError(f"array of {count} x {dt} at {offset} is outside the arena (size {self.size})")
        if offset % dt.alignment:
            raise ArenaError(f"offset {offset} is not aligned for {dt} (needs a multiple of {dt.alignment})")
        return np.frombuffer(self._buf, dt, count, offset).reshape(shape)

    def region(self, name: str) -> memoryview:
        """A zero-copy view of the region (fixed, dynamic or named block) called ``name``."""
        entry = self.region_entry(name)
        return self.view(entry.offset, entry.size)

    def region_entry(self, name: str) -> RegionEntry:
        entry = self._find_entry(name)
        if entry is None:
            names = [e.name for e in self.regions()]
            raise ArenaError(f"arena {self.name} has no region {name!r} (it has: {', '.join(names)})")
        return entry

    def regions(self) -> list[RegionEntry]:
        """The region directory (fixed regions, the dynamic region, named blocks)."""
        with self._flock.hold():
            return [e for e in (self._read_entry(i) for i in range(layout.max_regions)) if e is not None]

    def allocate(self, size: int, name: str = "", *, epoch_index: int | None = None) -> Block:
        """A block of ``size`` bytes from the dynamic region (64-byte aligned, not zeroed).

        A ``name`` puts the block in the region directory, so other processes can
        ``find_block(name)`` it.  Safe from any attached process (the arena lock guards it).

        Raises:
            ArenaExhausted: no free block is large enough, or the directory is full.
            ArenaError: a block with that name exists.
        """
        raw = _lc.encode_name(name, layout.region_name_len, "block name") if name else b""
        with self._flock.hold():
            slot = -1
            if name:
                if self._find_entry(name) is not None:
                    raise ArenaError(f"arena {self.name} already has a region or block named {name!r}")
                slot = self._free_entry()
            payload = self._heap.allocate(size)
            offset = self._heap_base + payload
            if name:
                self._write_entry(slot, raw, offset, size, epoch_index, layout.kind_block)
            self._allocator_changed()
        return Block(self, offset, size, name, epoch_index)

    def free(self, block: Block) -> None:
        """Give a block back (merging it with free neighbours)."""
        if block.arena is not self and block.arena.path != self.path:
            raise ArenaError("this block belongs to another arena")
        self.free_at(block.offset)

    def free_at(self, offset: int) -> None:
        """Free the block whose payload starts at absolute ``offset`` (from any process)."""
        with self._flock.hold():
            self._heap.free(offset - self._heap_base)
            for i in range(layout.max_regions):
                entry = self._read_entry(i)
                if entry is not None and entry.kind == layout.kind_block and entry.offset == offset:
                    self._clear_entry(i)
            self._allocator_changed()

    def find_block(self, name: str) -> Block | None:
        """The named block ``name`` (allocated by any process), or None."""
        with self._flock.hold():
            entry = self._find_entry(name)
        if entry is None or entry.kind != layout.kind_block:
            return None
        return Block(self, entry.offset, entry.size, entry.name, entry.epoch_index)

    def _allocator_changed(self) -> None:
        """Under the flock: bump the allocator generation and publish ``idxAllocator``.

        Several processes allocate, but only under the lock, whose acquire and release order
        their stores: the index still has one writer at a time.
        """
        self._hw[self._alloc_word] = self._hw[self._alloc_word] + 1
        self.publish(layout.idx_allocator)

    # ------------------------------------------------------------------ directory
    def _read_entry(self, i: int) -> RegionEntry | None:
        base = layout.region_entry(i)
        name = _lc.decode_name(
            self._buf[base + layout.region_name : base + layout.region_name + layout.region_name_len]
        )
        if not name:
            return None
        epoch = _U32.unpack_from(self._buf, base + layout.region_epoch)[0]
        return RegionEntry(
            i,
            name,
            _U64.unpack_from(self._buf, base + layout.region_offset)[0],
            _U64.unpack_from(self._buf, base + layout.region_size)[0],
            None if epoch == layout.no_epoch else epoch,
            _U32.unpack_from(self._buf, base + layout.region_kind)[0],
        )

    def _find_entry(self, name: str) -> RegionEntry | None:
        for i in range(layout.max_regions):
            entry = self._read_entry(i)
            if entry is not None and entry.name == name:
                return entry
        return None

    def _free_entry(self) -> int:
        for i in range(layout.max_regions):
            if self._read_entry(i) is None:
                return i
        raise ArenaExhausted(
            f"arena {self.name}: the region directory is full ({layout.max_regions} entries); "
            "free named blocks or allocate without a name",
            requested=1,
            available=0,
        )

    def _write_entry(
        self, i: int, raw_name: bytes, offset: int, size: int, epoch: int | None, kind: int
    ) -> None:
        _lc.write_entry(self._buf, i, raw_name, offset, size, epoch, kind)
        count = sum(1 for j in range(layout.max_regions) if self._read_entry(j) is not None)
        _U32.pack_into(self._buf, layout.hdr_region_count, count)

    def _clear_entry(self, i: int) -> None:
        base = layout.region_entry(i)
        self._buf[base : base + layout.region_entry_size] = bytes(layout.region_entry_size)
        count = sum(1 for j in range(layout.max_regions) if self._read_entry(j) is not None)
        _U32.pack_into(self._buf, layout.hdr_region_count, count)

    def _check_regions(self) -> None:
        expected = [(r.name, r.offset, r.size) for r in layout.fixed_regions]
        expected.append(("dynamic", layout.dynamic_offset, self.size - layout.dynamic_offset))
        for name, offset, size in expected:
            entry = self._find_entry(name)
            if entry is None:
                raise ArenaLayoutMismatch(
                    f"arena {self.path} has no {name!r} region",
                    field=f"region {name}",
                    expected=offset,
                    observed=-1,
                )
            if entry.offset != offset:
                raise ArenaLayoutMismatch(
                    f"arena {self.path}: region {name!r} is at {entry.offset}, this node expects {offset}",
                    field=f"region {name} offset",
                    expected=offset,
                    observed=entry.offset,
                )
            if entry.size != size:
                raise ArenaLayoutMismatch(
                    f"arena {self.path}: region {name!r} has {entry.size} bytes, this node expects {size}",
                    field=f"region {name} size",
                    expected=size,
                    observed=entry.size,
                )

    # ------------------------------------------------------------------ statistics
    def statistics(self) -> ArenaStatistics:
        with self._flock.hold():
            hs = self._heap.statistics()
            entries = [e for e in (self._read_entry(i) for i in range(layout.max_regions)) if e is not None]
            procs = sum(1 for words in self._ptable.snapshot() if words[layout.proc_pid // 8])
            epochs = []
            for index in range(layout.epoch_count):
                name = self._epoch_name(index)
                if name:
                    epochs.append(EpochInfo(index, name, self._ew[index << self._line_shift]))
            return ArenaStatistics(
                name=self.name,
                path=self.path,
                size=self.size,
                is_owner=self.is_owner,
                dynamic_size=hs.capacity,
                used=hs.used,
                free=hs.free,
                largest_free=hs.largest_free,
                blocks=hs.used_blocks,
                free_blocks=hs.free_blocks,
                named_blocks=sum(1 for e in entries if e.kind == layout.kind_block),
                regions=len(entries),
                processes=procs,
                alloc_generation=self._hw[self._alloc_word],
                epochs=tuple(epochs),
            )

    def check_heap(self) -> None:
        """Verify the allocator's invariants (tests and diagnostics)."""
        with self._flock.hold():
            self._heap.check()


@contextlib.asynccontextmanager
async def open_arena(
    name: str | None = None,
    *,
    size: int = layout.default_arena_size,
    directory: str | os.PathLike[str] = "/dev/shm",
) -> AsyncIterator[Arena]:
    """Create an arena for a trio owner, and close it (unlinking it) on exit.

    The creation runs in a worker thread: reserving a large tmpfs file takes milliseconds.
    """
    arena = await trio.to_thread.run_sync(
        functools.partial(Arena.create, name, size=size, directory=directory)
    )
    try:
        yield arena
    finally:
        arena.close()
