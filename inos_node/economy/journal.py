"""The own-block journal: this node's blocks, written down before they leave the node.

A node must never sign two blocks at one height, so each block it signs must survive a crash
from the moment anyone could see it.  Committing it to SQLite first works (one WAL commit), but
on the request path of every paid job that commit, twice, is most of what the ledger costs.
Instead the block's bytes are appended here with one ``write`` (as durable as a WAL commit with
``synchronous=normal``: it survives the process, not the machine), and the SQLite commit follows
on the store's writer thread, off the request path.

When every journaled block is in SQLite the journal is emptied (``reset``).  On start, the node
reads what is left (``recover``), applies any block SQLite lacks and stores it, then resets.

Record: ``b"IJ"`` + u32 length (little-endian) + blake3(payload) (32 bytes) + payload.  A record
cut short or whose digest does not match ends the recovery: it was being written when the
process died, so the block it holds never left the node.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

import blake3

from inos_node.economy.store import StoreError

__all__ = ["JOURNAL_NAME", "OwnJournal"]

JOURNAL_NAME = "ledger.journal"  # beside ledger.sqlite3 in the data dir
_MAGIC = b"IJ"
_HEAD = struct.Struct("<2sI32s")
MAX_RECORD = 1 << 20


class OwnJournal:
    """An append-only file of this node's not-yet-stored blocks (see the module docstring)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        try:
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
        except OSError as exc:
            raise StoreError(f"cannot open the ledger journal {self.path}: {exc.strerror}",
                             path=str(self.path)) from exc
        if os.fstat(self._fd).st_mode & 0o077:
            os.fchmod(self._fd, 0o600)
        self.appended = 0  # records since the last reset

    def recover(self) -> list[bytes]:
        """The payloads of the whole records, oldest first (a torn tail is left out)."""
        data = self.path.read_bytes()
        out, pos = [], 0
        while pos + _HEAD.size <= len(data):
            magic, length, digest = _HEAD.unpack_from(data, pos)
            end = pos + _HEAD.size + length
            if magic != _MAGIC or length > MAX_RECORD or end > len(data):
                break
            payload = data[pos + _HEAD.size:end]
            if blake3.blake3(payload).digest() != digest:
                break
            out.append(payload)
            pos = end
        return out

    def append(self, payload: bytes) -> None:
        """Write one record; on return it survives the process (not a power cut)."""
        if len(payload) > MAX_RECORD:
            raise StoreError(f"a journal record of {len(payload)} bytes is over {MAX_RECORD}",
                             path=str(self.path))
        record = _HEAD.pack(_MAGIC, len(payload), blake3.blake3(payload).digest()) + payload
        view = memoryview(record)
        try:
            while view:
                view = view[os.write(self._fd, view):]
        except OSError as exc:
            raise StoreError(f"cannot write the ledger journal {self.path}: {exc.strerror}",
                             path=str(self.path)) from exc
        self.appended += 1

    def reset(self) -> None:
        """Empty the journal (every record in it is stored elsewhere now)."""
        os.ftruncate(self._fd, 0)
        self.appended = 0

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
