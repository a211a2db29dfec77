"""Memory fences for the arena, without a C compiler.

Why fences at all
-----------------
The arena publishes with plain, aligned 8-byte stores and reads with plain loads.  Each access
is an opaque C call (memoryview / numpy), so the compiler keeps program order; what remains is
the hardware:

* **x86-64 (TSO)**: loads are not reordered with other loads, stores not with other stores, and
  a store never passes an earlier load; the one reordering allowed is that a *later load may
  pass an earlier store* (the store buffer).  A plain store is therefore already a release store
  and a plain load an acquire load (notes/arena.md §1.3).  ``full_fence()`` is a no-op there.
* **aarch64 and others**: plain accesses may be reordered in every direction, so
  ``full_fence()`` must be a real barrier.

The one pattern that needs a barrier on x86 too is "store X, then load Y" in one process while
another does "store Y, then load X" (Dekker, pitfall 3).  The arena has exactly one: a publisher
stores the epoch, then reads the process-table generation to find subscribers; a new
subscriber stores its interest mask and the generation, then reads the epoch.  Without a
store-load barrier on *both* sides both can read the old value and the wake-up is lost.

The asymmetric fence
--------------------
Publishing is hot and subscribing is rare, so the cost goes to the subscriber (the scheme of
liburcu): ``membarrier(MEMBARRIER_CMD_GLOBAL_EXPEDITED)`` makes every running thread of every
registered process execute a full barrier before it returns.  Whatever a publisher was doing,
either its epoch store happened before that barrier (and is visible to the subscriber's load
that follows the syscall) or its generation load happens after it (and sees the subscriber's
stores).  Each process registers once (``MEMBARRIER_CMD_REGISTER_GLOBAL_EXPEDITED``); then
``subscriber_fence()`` is the syscall and publishers need no fence at all.

Where membarrier is missing (old kernel, a seccomp profile that forbids it) the arena falls back
to the symmetric scheme: such a process sets the arena's ``hdrFenceMode`` flag, and every
publisher that sees the flag calls ``store_load_fence()`` after its epoch store.

``store_load_fence`` through ctypes
-----------------------------------
A private ``pthread_spinlock_t`` provides locked read-modify-writes from libc:

* x86-64: ``pthread_spin_trylock`` is ``lock cmpxchg`` whether or not it succeeds; a
  ``lock``-prefixed instruction is a full barrier.  The lock is kept held, so the call always
  fails harmlessly (one ctypes call).
* elsewhere: ``pthread_spin_unlock`` (a store-release) followed by ``pthread_spin_trylock`` (an
  acquire read-modify-write).  On ARMv8 a release followed by an acquire is RCsc-ordered, so
  every earlier access is ordered before every later one: a full barrier.  ``trylock`` rather
  than ``lock``: if two threads interleave, neither can spin forever, and the ordering holds
  whether the CAS succeeds or not.  This is also ``full_fence`` on those machines.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import platform
from collections.abc import Callable

from inos_node.errors import ArenaError

__all__ = [
    "Fences",
    "TSO",
    "Membarrier",
    "build_fences",
    "full_fence",
    "membarrier",
    "store_load_fence",
    "subscriber_fence",
]

_TSO_MACHINES = frozenset({"x86_64", "amd64", "i386", "i686", "x86"})
# membarrier(2) syscall numbers (asm-generic is used by aarch64 and riscv64).
_MEMBARRIER_NR = {"x86_64": 324, "amd64": 324, "aarch64": 283, "arm64": 283, "riscv64": 283}
_CMD_QUERY = 0
_CMD_GLOBAL_EXPEDITED = 1 << 1
_CMD_REGISTER_GLOBAL_EXPEDITED = 1 << 2


def _libc() -> ctypes.CDLL:
    name = ctypes.util.find_library("c")
    return ctypes.CDLL(name, use_errno=True) if name else ctypes.CDLL(None, use_errno=True)


class Fences:
    """``full`` and ``store_load`` for one architecture, backed by one private spinlock."""

    def __init__(self, machine: str) -> None:
        libc = _libc()
        # PYFUNCTYPE: call without releasing the GIL (the functions are a few instructions), and
        # pass the lock's address as a plain int: about half the cost of a default ctypes call.
        proto = ctypes.PYFUNCTYPE(ctypes.c_int, ctypes.c_void_p)
        init = ctypes.PYFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_int)(
            _address(libc.pthread_spin_init)
        )
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
        """The private lock is held between fences (a test hook: a fence leaves it as it was)."""
        return bool(self._trylock(ctypes.addressof(self._lock)) != 0)


class Membarrier:
    """``membarrier(MEMBARRIER_CMD_GLOBAL_EXPEDITED)``, if this kernel and sandbox allow it."""

    def __init__(self, machine: str, *, enable: bool = True) -> None:
        self.available = False
        self._nr = _MEMBARRIER_NR.get(machine.lower())
        self._registered_pid = 0
        self._syscall = _libc().syscall
        self._syscall.restype = ctypes.c_long
        if enable and self._nr is not None:
            mask = self._syscall(self._nr, _CMD_QUERY, 0)
            need = _CMD_GLOBAL_EXPEDITED | _CMD_REGISTER_GLOBAL_EXPEDITED
            self.available = mask >= 0 and mask & need == need
            self.register()

    def register(self) -> bool:
        """Register this process (again after a fork); False if that is not possible."""
        if not self.available:
            return False
        pid = os.getpid()
        if self._registered_pid != pid:
            if self._syscall(self._nr, _CMD_REGISTER_GLOBAL_EXPEDITED, 0) != 0:
                self.available = False
                return False
            self._registered_pid = pid
        return True

    def barrier(self) -> None:
        """Every running thread of every registered process executes a full barrier."""
        if self._syscall(self._nr, _CMD_GLOBAL_EXPEDITED, 0) != 0:
            err = ctypes.get_errno()
            raise ArenaError(f"membarrier(GLOBAL_EXPEDITED) failed: {os.strerror(err)}")


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
#: True on x86 (TSO): hot paths skip even the call to the no-op ``full_fence``.
TSO: bool = _fences.tso
#: This process's membarrier; ``membarrier.available`` decides the publishers' fence mode.
membarrier = Membarrier(platform.machine())


def subscriber_fence() -> None:
    """The subscriber's half of the handshake (after its mask/generation stores)."""
    if membarrier.available:
        membarrier.barrier()
    store_load_fence()
