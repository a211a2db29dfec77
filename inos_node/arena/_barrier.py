"""Memory fences for the arena, without a C compiler.

Why two fences
--------------
The arena publishes with plain, aligned 8-byte numpy stores and reads with plain loads.  Each
numpy access is an opaque C call, so the compiler keeps program order; what remains is the
hardware:

* **x86-64 (TSO)**: loads are not reordered with other loads, stores not with other stores, and
  a store never passes an earlier load; the one reordering allowed is that a *later load may
  pass an earlier store* (the store buffer).  A plain store is therefore already a release store
  and a plain load an acquire load (notes/arena.md §1.3).  ``full_fence()`` is a no-op there.
* **aarch64 and others**: plain accesses may be reordered in every direction, so
  ``full_fence()`` must be a real barrier.

The one pattern that needs a barrier on x86 too is "store X, then load Y" when another process
does "store Y, then load X" (Dekker, pitfall 3): a publisher stores the epoch and then reads the
process-table generation to find subscribers, while a new subscriber stores its interest mask
and generation and then reads the epoch.  Without a store-load barrier on both sides both can
read the old value and the wake-up is lost.  ``store_load_fence()`` is that barrier on every
architecture.

How, through ctypes
-------------------
A private ``pthread_spinlock_t`` provides locked read-modify-writes from libc:

* x86-64: ``pthread_spin_trylock`` is ``lock cmpxchg`` whether or not it succeeds; a
  ``lock``-prefixed instruction is a full barrier.  We keep the lock held so the call always
  fails harmlessly (one ctypes call, about 0.1 us).
* elsewhere: ``pthread_spin_unlock`` (a store-release) followed by ``pthread_spin_trylock`` (an
  acquire read-modify-write).  On ARMv8 a release followed by an acquire is RCsc-ordered, so
  every earlier access is ordered before every later one: a full barrier.  ``trylock`` rather
  than ``lock``: if two threads interleave, neither can spin forever, and the ordering holds
  whether the CAS succeeds or not.
"""

from __future__ import annotations

import ctypes
import functools
import ctypes.util
import platform
from collections.abc import Callable

from inos_node.errors import ArenaError

__all__ = ["Fences", "build_fences", "full_fence", "store_load_fence"]

_TSO_MACHINES = frozenset({"x86_64", "amd64", "i386", "i686", "x86"})


class Fences:
    """The two fence functions for one architecture, backed by one private spinlock."""

    def __init__(self, machine: str) -> None:
        name = ctypes.util.find_library("c")
        libc = ctypes.CDLL(name) if name else ctypes.CDLL(None)
        # PYFUNCTYPE: call without releasing the GIL (the functions are a few instructions), and
        # pass the lock's address as a plain int: about 0.13 us per call instead of 0.25.
        proto = ctypes.PYFUNCTYPE(ctypes.c_int, ctypes.c_void_p)
        init = ctypes.PYFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_int)(_address(libc.pthread_spin_init))
        trylock = proto(_address(libc.pthread_spin_trylock))
        unlock = proto(_address(libc.pthread_spin_unlock))
        self.machine = machine
        self.tso = machine.lower() in _TSO_MACHINES
        self._lock = ctypes.c_int(0)  # pthread_spinlock_t is an int on Linux
        addr = ctypes.addressof(self._lock)
        if init(addr, 0) != 0:
            raise ArenaError("pthread_spin_init failed: no memory fence available")
        if trylock(addr) != 0:  # hold it: on x86 every later trylock then fails (and still fences)
            raise ArenaError("pthread_spin_trylock failed on a fresh lock")
        self._trylock = trylock
        self._unlock = unlock
        if self.tso:
            self.store_load: Callable[[], object] = functools.partial(trylock, addr)
            self.full: Callable[[], object] = _noop
        else:

            def release_acquire() -> None:
                unlock(addr)
                trylock(addr)

            self.store_load = release_acquire
            self.full = release_acquire

    def is_locked(self) -> bool:
        """The private lock is held between fences (a test hook: the fence leaves it as it was)."""
        return bool(self._trylock(ctypes.addressof(self._lock)) != 0)


def _noop() -> None:
    """``full_fence`` on x86: TSO already gives the store-store and load-load order it stands for."""


def _address(fn: object) -> int:
    value = ctypes.cast(fn, ctypes.c_void_p).value  # type: ignore[arg-type]
    if value is None:
        raise ArenaError("libc function has no address")
    return value


def build_fences(machine: str | None = None) -> Fences:
    """Fences for ``machine`` (``platform.machine()`` by default); tests force "aarch64"."""
    return Fences(machine if machine is not None else platform.machine())


_fences = build_fences()
#: Orders data stores before a later epoch store and an epoch load before later data loads.
full_fence: Callable[[], object] = _fences.full
#: Orders a store before a later load (Dekker handshakes); real on every architecture.
store_load_fence: Callable[[], object] = _fences.store_load
