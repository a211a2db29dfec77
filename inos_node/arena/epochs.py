"""Waiting for epochs: ``EpochWatcher`` for trio processes, ``BlockingWaiter`` for plain ones.

Theory of operation
-------------------
Nothing here polls.  A waiter first checks the epoch, and only if it has not moved past what
the caller has seen does it sleep; the publisher's side (``Arena.publish``) stores the epoch
*before* it wakes anybody, so "check, then sleep" cannot miss a wake-up:

* **Same arena object (in-process):** ``publish`` unparks the ``ParkingLot`` of that index
  directly: one lot per index, so a bump wakes only the tasks that wait on it (notes §2.1).
* **Other processes:** ``publish`` writes one byte into this process's doorbell FIFO.  The trio
  side waits for it with ``trio.lowlevel.wait_readable`` (no thread, no timer).

The leader
----------
A dedicated watcher task that wakes on the doorbell and then unparks the waiting task costs two
scheduler passes per wake-up.  So, as in notes §7 ("LeaderWatcher"), the first task that has to
wait for a *remote* index waits on the doorbell itself ("leads"); tasks arriving while it leads
park in their index's lot.  When the leader wakes it drains the FIFO, unparks every lot whose
epoch moved, and returns if its own index moved.  ``run()`` is the leader of last resort::

    run():   [nobody leads] --wait_readable--> drain, unpark moved lots --> loop
             [a task leads]  --park on _run_lot--> (leader leaves while others are parked)

    wait(i): epoch(i) > seen? --> return
             i is published by this arena object, or someone leads --> park in lot i
             else lead: cancel run()'s wait_readable, wait_readable, drain, unpark, hand back

A task that leads on index ``i`` is also woken by a local ``publish(i)`` (through a cancel
scope), and by ``run()`` if ``run()`` drained the doorbell in the short window before the
leader took over; so every path that consumes a doorbell byte also re-checks the leader.
"""

from __future__ import annotations

import logging
import math
import select
import threading
import time
from typing import TYPE_CHECKING

import trio

from inos_node.arena._barrier import TSO, full_fence
from inos_node.arena._doorbell import Doorbell
from inos_node.errors import ArenaError

if TYPE_CHECKING:
    from collections.abc import Iterable

    from inos_node.arena.arena import Arena

__all__ = ["BlockingWaiter", "EpochWatcher"]

log = logging.getLogger(__name__)


class _IndexWaiters:
    """The trio tasks of this process that wait on one epoch index."""

    __slots__ = ("last", "leader_scope", "lot")

    def __init__(self, last: int) -> None:
        self.lot = trio.lowlevel.ParkingLot()
        self.last = last  # epoch when the lot was last unparked (or created)
        self.leader_scope: trio.CancelScope | None = None  # a task leading the doorbell for us

    def wake(self, value: int) -> None:
        self.last = value
        self.lot.unpark_all()  # no "if self.lot": ParkingLot.__len__ is a Python call
        scope = self.leader_scope
        if scope is not None:
            self.leader_scope = None
            scope.cancel()


class EpochWatcher:
    """Wakes the trio tasks of this process when epochs move, whoever published them.

    Start it with ``await nursery.start(watcher.run)``; then any number of tasks may
    ``await watcher.wait(index, seen)``.  At most one watcher runs per ``Arena`` object.
    """

    def __init__(self, arena: Arena, indices: Iterable[int] = ()) -> None:
        self._arena = arena
        self._initial = tuple(indices)
        self._bell: Doorbell | None = None
        self._leading: _IndexWaiters | None = None
        self._run_scope: trio.CancelScope | None = None
        self._run_lot = trio.lowlevel.ParkingLot()
        self.drains = 0  # doorbell wake-ups handled (statistics)

    @property
    def arena(self) -> Arena:
        return self._arena

    def epoch(self, index: int) -> int:
        return self._arena.epoch(index)

    def subscribe(self, indices: Iterable[int]) -> None:
        """Ask other processes to ring this process for ``indices`` (``wait`` also does it)."""
        indices = tuple(indices)
        if self._bell is None:
            self._initial += indices
        else:
            self._bell.subscribe(indices)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Register this process's doorbell, report ready, then serve wake-ups until cancelled.

        Cancellation: cancel the surrounding scope; the doorbell is closed (slot freed, FIFO
        unlinked) and tasks still in ``wait`` get ``ArenaError``.
        """
        arena = self._arena
        if self._bell is not None or arena._watcher is not None:
            raise ArenaError(f"arena {arena.name}: an EpochWatcher is already running on this Arena object")
        bell = Doorbell(arena, self._initial, local=True)
        self._bell = bell
        arena._watcher = self
        arena._trio_token = trio.lowlevel.current_trio_token()
        arena._trio_thread = threading.get_ident()
        try:
            task_status.started()
            while True:
                if bell.fd < 0:
                    return  # the doorbell was closed under us (arena.close())
                if self._leading is not None:
                    await self._run_lot.park()
                    continue
                with trio.CancelScope() as scope:
                    self._run_scope = scope
                    try:
                        await trio.lowlevel.wait_readable(bell.fd)
                    except trio.ClosedResourceError:
                        log.warning("arena %s was closed under a running EpochWatcher", arena.name)
                        return
                    finally:
                        self._run_scope = None
                if scope.cancelled_caught:
                    continue  # a waiter took the lead
                self._wake_moved()
                leader = self._leading
                if leader is not None and leader.leader_scope is not None:
                    leader.leader_scope.cancel()  # it may have missed the byte we just drained
        finally:
            self._bell = None
            if arena._watcher is self:
                arena._watcher = None
                arena._trio_thread = -1
                arena._trio_token = None
            bell.close()
            for waiters in list(arena._waiters.values()):
                waiters.wake(waiters.last)  # they see the watcher is gone and raise

    async def wait(self, index: int, seen: int) -> int:
        """Return the epoch of ``index`` once it is greater than ``seen``.

        Returns at once (after a checkpoint) if it already is.  Subscribes the index if needed.

        Raises:
            ArenaError: the watcher is not running (or stopped while we waited).
        """
        bell = self._bell
        if bell is None:
            raise ArenaError(
                "EpochWatcher.wait() needs the watcher running: await nursery.start(watcher.run)"
            )
        arena = self._arena
        if not bell.subscribed(index):
            bell.subscribe((index,))
        value = arena.epoch(index)
        if value > seen:
            full_fence()
            await trio.lowlevel.checkpoint()
            return value
        waiters = arena._waiters.get(index)
        if waiters is None:
            waiters = arena._waiters[index] = _IndexWaiters(value)
        written = arena._written
        ew: memoryview = arena._ew  # the wake-up path reads the word directly (no method call)
        word = index << arena._line_shift
        while True:
            if self._leading is not None or written[index]:
                await waiters.lot.park()
            else:
                await self._lead(waiters)
            if self._bell is None or arena.closed:
                raise ArenaError("the EpochWatcher or its arena stopped while a task was waiting")
            value = ew[word]
            if value > seen:
                if not TSO:
                    full_fence()
                return value

    async def _lead(self, waiters: _IndexWaiters) -> None:
        bell = self._bell
        assert bell is not None
        self._leading = waiters
        run_scope = self._run_scope
        if run_scope is not None:
            run_scope.cancel()  # frees the fd at once (trio aborts the registration synchronously)
        try:
            with trio.CancelScope() as scope:
                waiters.leader_scope = scope
                try:
                    await trio.lowlevel.wait_readable(bell.fd)
                except trio.ClosedResourceError:
                    raise ArenaError("the EpochWatcher stopped while a task was waiting") from None
            if not scope.cancelled_caught:
                self._wake_moved()
        finally:
            waiters.leader_scope = None
            self._leading = None
            if bell.fd < 0 or any(w.lot for w in self._arena._waiters.values()):
                self._run_lot.unpark_all()  # others still wait (or the bell closed): over to run()

    def _wake_moved(self) -> None:
        bell = self._bell
        if bell is None:
            return
        bell.drain()
        self.drains += 1
        full_fence()
        arena = self._arena
        for index, waiters in arena._waiters.items():
            if waiters.lot:
                value = arena.epoch(index)
                if value != waiters.last:
                    waiters.last = value
                    waiters.lot.unpark_all()


class BlockingWaiter:
    """Epoch waits for plain (non-trio) processes: ``poll`` on this waiter's own doorbell.

    Resource handling: owns a doorbell (a process-table slot and a FIFO) until ``close()``; also
    a context manager.  Not for use from several threads at once.
    """

    def __init__(self, arena: Arena, indices: Iterable[int] = ()) -> None:
        self._arena = arena
        self._bell: Doorbell | None = Doorbell(arena, tuple(indices), local=False)
        self._poll = select.poll()
        self._poll.register(self._bell.fd, select.POLLIN)

    def subscribe(self, indices: Iterable[int]) -> None:
        self._live().subscribe(tuple(indices))

    def wait(self, index: int, seen: int, timeout: float | None = None) -> int:
        """Block until epoch ``index`` is greater than ``seen``; return it.

        With a ``timeout`` (seconds) it returns the current value, possibly ``<= seen``, when the
        time is up: compare to tell.  Sleeps in ``poll``; never spins.
        """
        bell = self._live()
        if not bell.subscribed(index):
            bell.subscribe((index,))
        arena = self._arena
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            value = arena.epoch(index)
            if value > seen:
                full_fence()
                return value
            if deadline is None:
                ms = -1
            else:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return value
                ms = max(1, math.ceil(remaining * 1000))
            if self._poll.poll(ms):
                bell.drain()

    def _live(self) -> Doorbell:
        if self._bell is None:
            raise ArenaError("this BlockingWaiter is closed")
        return self._bell

    def close(self) -> None:
        bell, self._bell = self._bell, None
        if bell is not None:
            self._poll.unregister(bell.fd)
            bell.close()

    def __enter__(self) -> BlockingWaiter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
