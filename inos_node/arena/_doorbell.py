"""Doorbells: how a publisher wakes subscribers in other processes without anyone polling.

Theory of operation
-------------------
Each subscribing process (more exactly: each ``EpochWatcher`` or ``BlockingWaiter``) owns one
FIFO next to the arena file, ``<dir>/<name>.bell.<pid>.<slot>``, and one slot of the arena's
process table: ``pid``, a 256-bit interest mask (one bit per epoch index) and a start time.
Slots are claimed and changed under the arena's ``flock``; every change bumps the header's
``procGen`` counter.

A publisher keeps a ``BellRinger``: the write ends of the subscribers' FIFOs and, per epoch
index, the tuple of fds to ring.  It is rebuilt only when ``procGen`` moved, so a publish with a
warm cache costs one load and a dict lookup, plus one 1-byte ``write`` per subscriber.

The lost-wake-up race
---------------------
A new subscriber stores its mask and ``procGen``, then loads the epoch; a publisher stores the
epoch, then loads ``procGen``.  That is the store-buffer (Dekker) pattern: both sides need a
store-load barrier, or both can read the old value and the wake-up is lost.  The subscriber
pays for both with ``subscriber_fence()`` (membarrier), so publishing stays fence-free; see
``_barrier`` for the fallback when membarrier is unavailable.

Liveness
--------
A subscriber holds an OFD lock on the first byte of its slot.  A slot whose lock is free
belongs to a dead process: publishers that fail to open or write its FIFO reap it, and the next
claim reuses it.  Writes ignore ``EAGAIN`` (a full FIFO means a wake-up is already pending).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import time
from typing import TYPE_CHECKING

import numpy as np
import trio

from inos_node.arena import _shm
from inos_node.arena._barrier import full_fence, subscriber_fence
from inos_node.arena.layout import layout
from inos_node.errors import ArenaError, ArenaExhausted

if TYPE_CHECKING:
    from inos_node.arena.arena import Arena

__all__ = ["BellRinger", "Doorbell", "ProcessTable", "bell_path"]

log = logging.getLogger(__name__)

_WORDS_PER_SLOT = layout.process_slot_size // 8
_PID = layout.proc_pid // 8
_MASK = layout.proc_mask // 8
_STARTED = layout.proc_started // 8
_MASK_WORDS = layout.mask_words


def bell_path(directory: str, name: str, pid: int, slot: int) -> str:
    return os.path.join(directory, f"{name}.bell.{pid}.{slot}")


def _mask_add(words: list[int], indices: tuple[int, ...]) -> None:
    for i in indices:
        if not 0 <= i < layout.epoch_count:
            raise ArenaError(f"epoch index {i} is out of range 0..{layout.epoch_count - 1}")
        words[i >> 6] |= 1 << (i & 63)


class ProcessTable:
    """The subscriber slots, as uint64 words (pid, mask words, started)."""

    def __init__(self, buf: memoryview) -> None:
        self.words: np.ndarray = np.frombuffer(
            buf, "<u8", layout.max_processes * _WORDS_PER_SLOT, layout.process_table_offset
        )

    def snapshot(self) -> list[list[int]]:
        """All slots as Python ints, one list per slot (one copy, then no more shared reads)."""
        flat: list[int] = self.words.tolist()
        return [flat[s * _WORDS_PER_SLOT : (s + 1) * _WORDS_PER_SLOT] for s in range(layout.max_processes)]

    def pid(self, slot: int) -> int:
        return int(self.words.item(slot * _WORDS_PER_SLOT + _PID))

    def started(self, slot: int) -> int:
        return int(self.words.item(slot * _WORDS_PER_SLOT + _STARTED))

    def write(self, slot: int, pid: int, mask: list[int], started: int) -> None:
        base = slot * _WORDS_PER_SLOT
        for k, word in enumerate(mask):
            self.words[base + _MASK + k] = word
        self.words[base + _STARTED] = started
        full_fence()
        self.words[base + _PID] = pid  # last: a slot with a pid is complete

    def set_mask(self, slot: int, mask: list[int]) -> None:
        base = slot * _WORDS_PER_SLOT
        for k, word in enumerate(mask):
            self.words[base + _MASK + k] = word

    def clear(self, slot: int) -> None:
        base = slot * _WORDS_PER_SLOT
        self.words[base + _PID] = 0  # first: publishers stop considering the slot
        full_fence()
        self.words[base : base + _WORDS_PER_SLOT] = 0


def slot_lock_byte(slot: int) -> int:
    return layout.process_slot(slot) + layout.proc_pid


class Doorbell:
    """One subscriber's FIFO and process-table slot.  Create it through the arena's users
    (``EpochWatcher.run``, ``BlockingWaiter``); ``close()`` gives the slot back.

    Resource handling: the read end is opened ``O_RDWR | O_NONBLOCK`` (pitfall 9) and the FIFO is
    unlinked by ``close()``; if the process dies instead, the owner's ``close()`` or the next
    claim of the slot removes it.
    """

    def __init__(self, arena: Arena, indices: tuple[int, ...] = (), *, local: bool) -> None:
        self._arena = arena
        self._mask = [0] * _MASK_WORDS
        _mask_add(self._mask, tuple(indices))
        self.fd = -1
        self.path = ""
        self.slot = -1
        self.local = local
        with arena._flock.hold():
            self.slot = self._claim()
        subscriber_fence()  # our mask/procGen stores before any epoch load of the caller
        arena._doorbells.add(self)

    def _claim(self) -> int:
        arena = self._arena
        table = arena._ptable
        pid = os.getpid()
        for slot, words in enumerate(table.snapshot()):
            if slot in arena._own_slots:
                continue
            if words[_PID] != 0:
                if _shm.lock_is_held(arena._fd, slot_lock_byte(slot)):
                    continue
                log.warning(
                    "arena %s: reclaiming subscriber slot %d of pid %d, which is gone",
                    arena.name,
                    slot,
                    words[_PID],
                )
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(bell_path(arena.directory, arena.name, words[_PID], slot))
                table.clear(slot)
            if not _shm.lock_byte_shared(arena._fd, slot_lock_byte(slot)):
                continue
            path = bell_path(arena.directory, arena.name, pid, slot)
            try:
                self.fd = _shm.open_fifo_reader(path)
            except OSError as exc:
                _shm.unlock_byte(arena._fd, slot_lock_byte(slot))
                raise ArenaError(f"cannot create doorbell FIFO {path}: {exc}") from exc
            self.path = path
            table.write(slot, pid, self._mask, time.time_ns())
            arena._own_slots.add(slot)
            if self.local:
                arena._local_slot = slot
            arena._bump_proc_gen()
            return slot
        raise ArenaExhausted(
            f"arena {arena.name}: all {layout.max_processes} subscriber slots are taken",
            requested=1,
            available=0,
        )

    def subscribed(self, index: int) -> bool:
        return 0 <= index < layout.epoch_count and bool(self._mask[index >> 6] >> (index & 63) & 1)

    def subscribe(self, indices: tuple[int, ...] | list[int]) -> None:
        """Add ``indices`` to the interest mask (publishers see it before their next ring)."""
        if self.fd < 0:
            raise ArenaError("this doorbell is closed")
        mask = list(self._mask)
        _mask_add(mask, tuple(indices))
        if mask == self._mask:
            return
        arena = self._arena
        with arena._flock.hold():
            arena._ptable.set_mask(self.slot, mask)
            arena._bump_proc_gen()
        self._mask = mask
        subscriber_fence()

    def drain(self) -> int:
        """Read every pending byte; returns how many (0 when nothing was pending)."""
        total = 0
        for _ in range(1024):  # bounded: a FIFO holds 64 KiB; 1024 reads of 4 KiB drain it
            try:
                got = len(os.read(self.fd, 4096))
            except BlockingIOError:
                return total
            total += got
            if got < 4096:
                return total
        return total

    def close(self) -> None:
        if self.fd < 0:
            return
        arena = self._arena
        fd, self.fd = self.fd, -1
        if not arena.closed:
            with arena._flock.hold():
                arena._ptable.clear(self.slot)
                arena._bump_proc_gen()
            _shm.unlock_byte(arena._fd, slot_lock_byte(self.slot))
        arena._own_slots.discard(self.slot)
        if arena._local_slot == self.slot:
            arena._local_slot = -1
        arena._doorbells.discard(self)
        with contextlib.suppress(RuntimeError):  # RuntimeError: not inside trio; nobody waits then
            trio.lowlevel.notify_closing(fd)
        os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)


class BellRinger:
    """The publisher side: who to ring for each epoch index, cached per ``procGen``."""

    def __init__(self, arena: Arena) -> None:
        self._arena = arena
        self.gen = -1
        self.remotes = False  # any subscriber in another process at all (skips the lookup if not)
        self.subs: dict[int, tuple[int, ...]] = {}
        self._remotes: dict[int, tuple[int, int, int, list[int]]] = {}  # slot -> pid, started, fd, mask

    def refresh(self) -> None:
        """Re-read the process table (``procGen`` moved): open new FIFOs, close vanished ones."""
        arena = self._arena
        gen = arena._proc_generation()
        full_fence()  # procGen load before the slot loads
        arena._read_fence_mode()
        dead: list[tuple[int, int, int]] = []
        remotes: dict[int, tuple[int, int, int, list[int]]] = {}
        for slot, words in enumerate(arena._ptable.snapshot()):
            pid = words[_PID]
            if pid == 0 or slot == arena._local_slot:
                continue
            started = words[_STARTED]
            mask = words[_MASK : _MASK + _MASK_WORDS]
            old = self._remotes.pop(slot, None)
            if old is not None and old[0] == pid and old[1] == started:
                remotes[slot] = (pid, started, old[2], mask)
                continue
            if old is not None:
                os.close(old[2])
            fd = _shm.open_fifo_writer(bell_path(arena.directory, arena.name, pid, slot))
            if fd is None:
                dead.append((slot, pid, started))
                continue
            remotes[slot] = (pid, started, fd, mask)
        for _pid, _started, fd, _mask in self._remotes.values():
            os.close(fd)
        self._remotes = remotes
        self.remotes = bool(remotes)
        self.subs = {}
        self.gen = gen if arena._proc_generation() == gen else -1  # moved while reading: again next time
        for slot, pid, started in dead:
            self._reap(slot, pid, started)

    def build(self, index: int) -> tuple[int, ...]:
        word, bit = index >> 6, 1 << (index & 63)
        fds = tuple(fd for _pid, _started, fd, mask in self._remotes.values() if mask[word] & bit)
        self.subs[index] = fds
        return fds

    def failed(self, fd: int, exc: OSError) -> None:
        """A write failed (EPIPE: the subscriber closed or died).  Forget it; refresh later."""
        if exc.errno not in (errno.EPIPE, errno.EBADF, errno.ENXIO):
            log.warning("arena %s: doorbell write failed: %s", self._arena.name, exc)
        for slot, (pid, started, rfd, _mask) in list(self._remotes.items()):
            if rfd == fd:
                del self._remotes[slot]
                self.remotes = bool(self._remotes)
                os.close(fd)
                if not _shm.lock_is_held(self._arena._fd, slot_lock_byte(slot)):
                    self._reap(slot, pid, started)
        self.subs = {}
        self.gen = -1

    def _reap(self, slot: int, pid: int, started: int) -> None:
        """Free the slot of a subscriber that died without closing (its lock is gone)."""
        arena = self._arena
        with arena._flock.hold():
            table = arena._ptable
            if table.pid(slot) != pid or table.started(slot) != started:
                return  # already reaped or reused
            if _shm.lock_is_held(arena._fd, slot_lock_byte(slot)):
                return  # alive after all (its FIFO is being set up)
            log.warning("arena %s: dropping subscriber pid %d (slot %d): it is gone", arena.name, pid, slot)
            table.clear(slot)
            arena._bump_proc_gen()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(bell_path(arena.directory, arena.name, pid, slot))

    def close(self) -> None:
        for _pid, _started, fd, _mask in self._remotes.values():
            with contextlib.suppress(OSError):
                os.close(fd)
        self._remotes = {}
        self.remotes = False
        self.subs = {}
        self.gen = -1
