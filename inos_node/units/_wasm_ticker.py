"""Wall-clock deadlines for WASM capsules: one ticker thread per process, epochs only on expiry.

Theory of operation
-------------------
wasmtime's *epoch interruption* makes compiled code check, at every function entry and loop
back-edge, whether the engine's epoch counter has reached the store's deadline.  The check is a
load and a compare, so the counter must be bumped from outside, by a timer.  The engine has one
counter and every store shares it, so bumping it for one call reaches every call in flight.

The scheme here:

* Each call ``arm``s a ``Deadline`` (its absolute ``time.monotonic()`` expiry) and sets its store
  to trap one epoch *after the current one*.  Arming pushes onto a heap under a lock; the ticker
  thread is woken only when the new deadline is earlier than the one it is sleeping towards.
  With equal timeouts (the common case) a new deadline is never the earliest, so the hot path is
  a lock, a ``heappush`` and a dict insert: no thread switch, no clock thread ticking.
* The ticker sleeps until the earliest *live* deadline.  When it passes, it marks that call
  ``expired`` and increments the engine epoch **once**, however many calls expired together.
* Every store in flight then reaches its epoch deadline and wasmtime invokes the store's
  *deadline callback* (see ``_wasm_ffi``).  The callback looks up the call's ``Deadline``: an
  expired call is interrupted; any other call re-arms one epoch further and runs on.  A call is
  therefore never cut short by someone else's deadline, at the price of one cheap callback per
  call in flight per expiry.
* ``disarm`` (at the end of every call) marks the entry cancelled and leaves it in the heap
  (lazy deletion: removing from the middle of a heap is O(n)).  The ticker discards cancelled
  entries at the head whenever it wakes, so it wakes about once per timeout period, not once per
  call, and the heap is compacted when cancelled entries outnumber live ones.

Rules:

* Rule 1: ``arm`` happens *after* the store's epoch deadline is set, so an expiry can never
  slip in between and leave the store one epoch behind (it would then never trap).
* Rule 2: the ticker never calls into Python code of the capsule path; it only flips a flag and
  calls the ``increment`` it was given (``Engine.increment_epoch``, thread-safe in wasmtime).
* Rule 3: bounded: the heap holds at most the live calls plus the cancelled ones since the last
  compaction (``2 * live + _COMPACT_SLACK``).
"""

from __future__ import annotations

import heapq
import itertools
import logging
import math
import threading
import time
from collections.abc import Callable

__all__ = ["Deadline", "EpochTicker"]

log = logging.getLogger(__name__)

# Cancelled entries tolerated in the heap beyond the live ones before it is rebuilt.
_COMPACT_SLACK = 256


class Deadline:
    """One call's registration with the ticker.

    ``expired`` is set (by the ticker thread) before the epoch increment that announces it, and
    read by the deadline callback on the thread running the capsule.
    """

    __slots__ = ("cancelled", "expired", "key", "seconds", "when")

    def __init__(self, key: int, seconds: float, when: float) -> None:
        self.key = key
        self.seconds = seconds
        self.when = when
        self.expired = False
        self.cancelled = False

    def __lt__(self, other: Deadline) -> bool:
        return (self.when, self.key) < (other.when, other.key)


class EpochTicker:
    """A lazily started daemon thread that bumps an engine epoch when a deadline passes.

    Args:
        increment: called (on the ticker thread) once per batch of expired deadlines.
        clock: monotonic seconds; injectable for tests.

    Resource handling: the thread is a daemon started on the first ``arm``; it holds no
    resources besides the heap and lives as long as the process.
    """

    def __init__(self, increment: Callable[[], None], clock: Callable[[], float] = time.monotonic) -> None:
        self._increment = increment
        self._clock = clock
        self._cond = threading.Condition(threading.Lock())
        self._heap: list[Deadline] = []
        self._live = 0
        self._keys = itertools.count(1)
        # Armed, not yet disarmed: the deadline callback finds a call's entry here by its key.
        self.armed: dict[int, Deadline] = {}
        self._target = math.inf  # when the ticker thread will next wake by itself
        self._thread: threading.Thread | None = None
        self.epochs = 0  # increments made (statistics and tests)

    def arm(self, seconds: float) -> Deadline:
        """Register a deadline ``seconds`` from now; return the entry to pass to ``disarm``."""
        key = next(self._keys)
        d = Deadline(key, seconds, self._clock() + seconds)
        with self._cond:
            heapq.heappush(self._heap, d)
            self._live += 1
            self.armed[key] = d
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="inos-wasm-epoch", daemon=True)
                self._thread.start()
            elif d.when < self._target:
                self._cond.notify()
        return d

    def disarm(self, d: Deadline) -> None:
        """The call is over: forget its deadline (idempotent)."""
        with self._cond:
            if d.cancelled:
                return
            d.cancelled = True
            del self.armed[d.key]
            if not d.expired:
                self._live -= 1
            if len(self._heap) > 2 * self._live + _COMPACT_SLACK:
                self._heap = [e for e in self._heap if not e.cancelled]
                heapq.heapify(self._heap)

    def live(self) -> int:
        """Deadlines armed and neither expired nor disarmed."""
        with self._cond:
            return self._live

    def _run(self) -> None:
        heap = self._heap
        with self._cond:
            while True:
                heap = self._heap  # compaction may have replaced the list
                now = self._clock()
                fired = False
                while heap and (heap[0].cancelled or heap[0].when <= now):
                    d = heapq.heappop(heap)
                    if not d.cancelled:
                        d.expired = True
                        self._live -= 1
                        fired = True
                if fired:
                    self.epochs += 1
                    try:
                        self._increment()
                    except Exception:  # policy: log and keep ticking; a dead ticker would
                        # leave every later capsule bound by fuel alone
                        log.exception("wasm epoch increment failed")
                self._target = heap[0].when if heap else math.inf
                self._cond.wait(None if self._target == math.inf else self._target - now)
