"""Making, checking and removing arena files, and the region-directory encoding.

The steps of ``Arena.create`` and ``Arena.attach`` that touch the file before it is mapped as an
``Arena``: formatting a fresh file (magic last, so a half-made file never looks valid),
validating a header (``ArenaLayoutMismatch`` names the field), and recognising a file left by a
dead owner (its OFD liveness lock is free) so that the next create can remove it.
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import logging
import os
import re
import struct
import time
from typing import Any

from inos_node.arena import _shm
from inos_node.arena._barrier import full_fence
from inos_node.arena.alloc import Heap, HeapLayout
from inos_node.arena.layout import layout
from inos_node.errors import ArenaError, ArenaLayoutMismatch

__all__ = [
    "check_header",
    "check_name",
    "decode_name",
    "encode_name",
    "format_file",
    "remove_if_stale",
    "remove_stale_tmp",
    "write_entry",
]

log = logging.getLogger(__name__)

_NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,99}")
U32 = struct.Struct("<I")
U64 = struct.Struct("<Q")


def check_name(name: str) -> None:
    if not _NAME_RE.fullmatch(name):
        raise ArenaError(
            f"invalid arena name {name!r}: use 1-100 of A-Z a-z 0-9 . _ - (not starting with . or -)"
        )


def encode_name(name: str, limit: int, what: str) -> bytes:
    try:
        raw = name.encode("ascii")
    except UnicodeEncodeError:
        raise ArenaError(f"{what} {name!r} must be ASCII") from None
    if not raw or len(raw) > limit or b"\0" in raw:
        raise ArenaError(f"{what} {name!r} must be 1-{limit} ASCII characters (no NUL)")
    return raw.ljust(limit, b"\0")


def decode_name(raw: memoryview | bytes) -> str:
    return bytes(raw).split(b"\0", 1)[0].decode("ascii", "replace")


def write_entry(
    buf: Any, i: int, raw_name: bytes, offset: int, size: int, epoch: int | None, kind: int
) -> None:
    base = layout.region_entry(i)
    U64.pack_into(buf, base + layout.region_offset, offset)
    U64.pack_into(buf, base + layout.region_size, size)
    U32.pack_into(buf, base + layout.region_epoch, layout.no_epoch if epoch is None else epoch)
    U32.pack_into(buf, base + layout.region_kind, kind)
    full_fence()
    buf[base + layout.region_name : base + layout.region_name + layout.region_name_len] = (
        raw_name  # name last
    )


def format_file(fd: int, size: int) -> None:
    """Lay out a fresh (all-zero) arena file; the magic is written last."""
    mm = _shm.map_file(fd, size)
    buf = memoryview(mm)
    try:
        U32.pack_into(buf, layout.hdr_version, layout.layout_version)
        U64.pack_into(buf, layout.hdr_total_size, size)
        U64.pack_into(buf, layout.hdr_creator_pid, os.getpid())
        U64.pack_into(buf, layout.hdr_created_ns, time.time_ns())
        U32.pack_into(buf, layout.hdr_epoch_count, layout.epoch_count)
        entries: list[tuple[str, int, int, int | None, int]] = [
            (r.name, r.offset, r.size, r.epoch_index, r.kind) for r in layout.fixed_regions
        ]
        entries.append(
            ("dynamic", layout.dynamic_offset, size - layout.dynamic_offset, None, layout.kind_dynamic)
        )
        for i, (name, offset, rsize, epoch, kind) in enumerate(entries):
            write_entry(
                buf, i, encode_name(name, layout.region_name_len, "region name"), offset, rsize, epoch, kind
            )
        U32.pack_into(buf, layout.hdr_region_count, len(entries))
        for index, name in layout.fixed_epoch_names.items():
            off = layout.epoch_line(index) + layout.epoch_name
            buf[off : off + layout.epoch_name_len] = encode_name(name, layout.epoch_name_len, "epoch name")
        heap = Heap.format(buf[layout.dynamic_offset : size], HeapLayout.from_layout(layout))
        heap.release()
        full_fence()
        U64.pack_into(buf, layout.hdr_magic, layout.magic)
    finally:
        buf.release()
        mm.close()


def check_header(fd: int, path: str) -> int:
    """Validate an existing arena file's header; returns its size."""
    size = os.fstat(fd).st_size
    if size < layout.header_size:
        raise ArenaLayoutMismatch(
            f"{path} has {size} bytes, less than an arena header ({layout.header_size})",
            field="size",
            expected=layout.header_size,
            observed=size,
        )
    header = os.pread(fd, layout.header_size, 0)
    magic = U64.unpack_from(header, layout.hdr_magic)[0]
    if magic != layout.magic:
        raise ArenaLayoutMismatch(
            f"{path} is not an inos arena: magic {magic:#x}, expected {layout.magic:#x}",
            field="magic",
            expected=layout.magic,
            observed=magic,
        )
    version = U32.unpack_from(header, layout.hdr_version)[0]
    if version != layout.layout_version:
        raise ArenaLayoutMismatch(
            f"{path} has arena layout version {version}, this node speaks version {layout.layout_version} "
            "(node and workers must come from the same release)",
            field="version",
            expected=layout.layout_version,
            observed=version,
        )
    total = U64.unpack_from(header, layout.hdr_total_size)[0]
    if total != size:
        raise ArenaLayoutMismatch(
            f"{path}: the header says {total} bytes but the file has {size}",
            field="size",
            expected=size,
            observed=total,
        )
    count = U32.unpack_from(header, layout.hdr_epoch_count)[0]
    if count != layout.epoch_count:
        raise ArenaLayoutMismatch(
            f"{path} has {count} epoch indices, this node expects {layout.epoch_count}",
            field="epochCount",
            expected=layout.epoch_count,
            observed=count,
        )
    if not _shm.lock_is_held(fd, layout.hdr_owner_lock):
        pid = U64.unpack_from(header, layout.hdr_creator_pid)[0]
        raise ArenaError(
            f"arena {path} was left by pid {pid}, which is gone; the next create() of that name removes it"
        )
    return size


def remove_if_stale(path: str, directory: str, name: str) -> None:
    """Remove ``path`` if it is an arena whose owner is gone; refuse if it is alive or foreign."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise ArenaError(f"arena {path} exists and cannot be opened: {exc}") from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # one cleaner at a time
        try:
            if os.stat(path).st_ino != os.fstat(fd).st_ino:
                return  # replaced meanwhile: the caller's next round looks again
        except FileNotFoundError:
            return
        header = os.pread(fd, layout.header_size, 0)
        pid = U64.unpack_from(header, layout.hdr_creator_pid)[0] if len(header) >= layout.header_size else 0
        if _shm.lock_is_held(fd, layout.hdr_owner_lock):
            raise ArenaError(f"arena {path} is in use by pid {pid}")
        magic = U64.unpack_from(header, layout.hdr_magic)[0] if len(header) >= 8 else 0
        if magic not in (0, layout.magic):
            raise ArenaError(
                f"{path} exists and is not an inos arena (magic {magic:#x}); remove it or use another "
                "arena name"
            )
        log.warning(
            "arena %s was left by pid %d, which is gone (%s); removing it and its doorbells",
            path,
            pid,
            "still running but not holding it" if _shm.pid_alive(pid) else "crashed?",
        )
        os.unlink(path)
        for bell in glob.glob(os.path.join(glob.escape(directory), glob.escape(name) + ".bell.*")):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(bell)
    finally:
        os.close(fd)


def remove_stale_tmp(directory: str, name: str) -> None:
    """Half-made files of creators that died between O_EXCL and link()."""
    for tmp in glob.glob(os.path.join(glob.escape(directory), "." + glob.escape(name) + ".tmp.*")):
        try:
            pid = int(tmp.rsplit(".tmp.", 1)[1].split(".", 1)[0])
        except (IndexError, ValueError):
            continue
        if not _shm.pid_alive(pid):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)


def sweep_stale(directory: str, prefix: str) -> list[str]:
    """Remove every arena named ``prefix*`` in ``directory`` whose owner is gone.

    Arenas whose owner is alive, and files that are not arenas, are left alone.  Returns the
    names removed.  A node calls this at start so that nodes killed with SIGKILL (whose arena
    names, carrying their pid, are never created again) do not fill /dev/shm.
    """
    removed = []
    for path in glob.glob(os.path.join(glob.escape(directory), glob.escape(prefix) + "*")):
        name = os.path.basename(path)
        if ".bell." in name or name.startswith("."):
            continue
        try:
            remove_if_stale(path, directory, name)
        except ArenaError:
            continue
        if not os.path.exists(path):
            removed.append(name)
    return removed
