"""The operating-system side of the arena: the tmpfs file, its mapping, locks and doorbell FIFOs.

Rules this module lives by (notes/arena.md §3.3, §6, §8):

* Never ``multiprocessing.shared_memory``: on Python < 3.13 an *attaching* process unlinks the
  segment at exit through its resource tracker.  Files are opened with ``os.open`` and mapped
  with ``mmap``; only the owner unlinks.
* ``posix_fallocate`` the whole size at creation: a tmpfs that is too small (Docker's 64 MiB
  /dev/shm) then fails at once with ENOSPC instead of killing a process with SIGBUS on first
  touch.  ``statvfs`` is checked first so the error can say what *is* available.
* Liveness is a lock, not a pid: an open-file-description (OFD) lock is dropped by the kernel
  when its holder dies, so a crashed owner or subscriber is recognised even after its pid was
  reused (a node restarted as pid 1 in a container would otherwise look alive forever).
* Exclusive sections (slot claims, allocation, epoch reservation) take ``flock`` on the arena
  file; flock and OFD locks do not interact on Linux.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import mmap
import os
import struct
import threading
from collections.abc import Iterator

from inos_node.errors import ArenaError, ArenaExhausted

__all__ = [
    "FileLock",
    "check_space",
    "fallocate",
    "lock_byte_shared",
    "lock_is_held",
    "map_file",
    "open_fifo_reader",
    "open_fifo_writer",
    "pid_alive",
    "unlock_byte",
]

# struct flock on Linux (x86-64 and aarch64): short l_type, short l_whence, [pad 4],
# off_t l_start, off_t l_len, pid_t l_pid, [pad 4].
_FLOCK = struct.Struct("=hh4xqqi4x")
_F_OFD_GETLK = getattr(fcntl, "F_OFD_GETLK", 36)
_F_OFD_SETLK = getattr(fcntl, "F_OFD_SETLK", 37)


def _ofd(fd: int, cmd: int, kind: int, start: int) -> int:
    out = fcntl.fcntl(fd, cmd, _FLOCK.pack(kind, os.SEEK_SET, start, 1, 0))
    return int(_FLOCK.unpack(out)[0])


def lock_byte_shared(fd: int, start: int) -> bool:
    """Take a shared OFD lock on byte ``start``; False if another holder has it exclusively."""
    try:
        _ofd(fd, _F_OFD_SETLK, fcntl.F_RDLCK, start)
    except OSError as exc:
        if exc.errno in (errno.EAGAIN, errno.EACCES):
            return False
        raise ArenaError(f"cannot take the liveness lock on byte {start}: {exc}") from exc
    return True


def unlock_byte(fd: int, start: int) -> None:
    with contextlib.suppress(OSError):
        _ofd(fd, _F_OFD_SETLK, fcntl.F_UNLCK, start)


def lock_is_held(fd: int, start: int) -> bool:
    """Whether some *other* open file description holds a lock on byte ``start``."""
    try:
        return _ofd(fd, _F_OFD_GETLK, fcntl.F_WRLCK, start) != fcntl.F_UNLCK
    except OSError as exc:
        raise ArenaError(f"cannot probe the liveness lock on byte {start}: {exc}") from exc


class FileLock:
    """``flock(LOCK_EX)`` on the arena file, re-entrant within a process.

    flock excludes other open file descriptions (other processes, other ``Arena`` objects); the
    RLock excludes other threads sharing this one and makes nested use (publish inside an
    allocation) safe.
    """

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._rlock = threading.RLock()
        self._depth = 0

    @contextlib.contextmanager
    def hold(self) -> Iterator[None]:
        with self._rlock:
            if self._depth == 0:
                fcntl.flock(self._fd, fcntl.LOCK_EX)
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
                if self._depth == 0:
                    fcntl.flock(self._fd, fcntl.LOCK_UN)


def available_bytes(directory: str) -> int:
    st = os.statvfs(directory)
    return st.f_bavail * st.f_frsize


def check_space(directory: str, size: int) -> None:
    """Refuse early, and say why, when ``directory``'s filesystem cannot hold ``size`` bytes."""
    free = available_bytes(directory)
    if size > free:
        raise ArenaExhausted(
            f"an arena of {size} bytes ({size / 2**20:.1f} MiB) does not fit in {directory}: only "
            f"{free} bytes ({free / 2**20:.1f} MiB) are available there (in Docker raise --shm-size / "
            "compose shm_size, or pass a smaller size)",
            requested=size,
            available=free,
        )


def fallocate(fd: int, size: int, directory: str) -> None:
    """Reserve every page now, so that running out of tmpfs is an error here, not a SIGBUS later."""
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EFBIG, errno.ENOMEM):
            free = available_bytes(directory)
            raise ArenaExhausted(
                f"cannot reserve an arena of {size} bytes ({size / 2**20:.1f} MiB) in {directory}: "
                f"{os.strerror(exc.errno)}; {free} bytes ({free / 2**20:.1f} MiB) are available there",
                requested=size,
                available=free,
            ) from exc
        raise ArenaError(f"posix_fallocate of {size} bytes in {directory} failed: {exc}") from exc


def map_file(fd: int, size: int) -> mmap.mmap:
    return mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)


def pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def open_fifo_reader(path: str) -> int:
    """Create the FIFO and open its read end ``O_RDWR | O_NONBLOCK`` (pitfall 9).

    With ``O_RDONLY`` the fd would report end-of-file, i.e. "readable", forever once the last
    writer closed, and a ``wait_readable`` loop would spin at 100 % CPU.  Holding a write
    reference ourselves keeps the FIFO open, and it also means publishers never see ENXIO while
    we are alive.
    """
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)  # a leftover of a crashed process that had our pid and slot
    os.mkfifo(path, 0o600)
    return os.open(path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)


def open_fifo_writer(path: str) -> int | None:
    """The publisher's end of a doorbell, or None when nobody reads it (gone or never there)."""
    try:
        return os.open(path, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno in (errno.ENXIO, errno.ENOENT):
            return None
        raise ArenaError(f"cannot open doorbell {path}: {exc}") from exc
