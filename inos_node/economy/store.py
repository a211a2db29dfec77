"""The ledger on disk: one SQLite file in WAL mode, written by one thread with group commit.

This is the only module of inos-node that imports ``sqlite3``.

Theory of operation
-------------------
``DATA_DIR/ledger.sqlite3`` (mode 0600) holds every block this node accepted, in the order it
accepted them, plus the equivocation proofs it knows and the requester's unfinished settlements::

    meta(key PRIMARY KEY, value)             network_id (hex): a file of another network is refused
    blocks(seq PRIMARY KEY, hash UNIQUE,     the encoded, signed block (wire.ledger.encode_block);
           account, height, type, job, body) seq is the append order.  (account, height) is NOT
                                             unique: both branches of a fork are kept until cut.
                                             No other index: queries are answered by the in-memory
                                             Ledger, and every index is one more page per commit
    proofs(seq PRIMARY KEY, a, b)            equivocation proofs: the two encoded blocks
    settlements(job PRIMARY KEY, state, data)  jobs whose escrow this node still has to settle or
                                             refund; a restarted node finishes them

Rule 1: the in-memory ``Ledger`` is derived state.  On open the node replays the blocks in append
order into a fresh ``Ledger`` (signatures are not re-verified for this local, trusted file;
``inos ledger verify`` re-verifies everything), so a block is "applied with all its effects"
exactly when its row is committed.  One row per block and one transaction per batch make a crash
leave either the whole block or nothing: no lost, duplicated or half-applied block.

Rule 2: one writer thread owns the write connection.  Callers enqueue requests on a bounded queue
and wait until the transaction holding theirs has committed.  The writer takes everything queued
at that moment (up to ``max_batch``) into ONE transaction: group commit.  While one commit is in
flight the next batch gathers, so under load the cost of a commit (an fsync with
``synchronous="full"``) is shared by every waiter, and a lone append pays one commit.

    trio task ──append()──▶ bounded queue ──▶ writer thread: BEGIN; INSERT ×k; COMMIT
        ▲                                            │
        └───────── token.run_sync_soon(event.set) ◀──┘  (one wake-up per trio run per batch)

Durability: WAL with ``synchronous="normal"`` (the default) makes a committed append survive the
process being killed at any moment (SIGKILL, OOM); a power cut may lose the last commits but never
corrupts the file.  ``synchronous="full"`` fsyncs the WAL on every commit, so a committed append
also survives a power cut, at the price of one fsync per batch.

Order: writes commit in the order they reach the queue.  From one trio run that is the order of
the ``append`` calls, even while the queue is full, so a block is never durable before a block
it depends on that was appended earlier (its own predecessor, a transfer that credits it).

Readers (``load``, ``owed``, ``blocks_raw``) open their own connections: WAL lets them read a
consistent snapshot while the writer appends.
"""

from __future__ import annotations

import _thread
import contextlib
import logging
import os
import queue
import sqlite3
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, cast

import trio

from inos_node.economy.model import MAX_BLOCK_BYTES, Block, block_hash
from inos_node.errors import LedgerError
from inos_node.wire.ledger import decode_block, encode_block

if TYPE_CHECKING:
    from inos_node.economy.ledger import Ledger

__all__ = ["FILE_NAME", "LedgerStore", "Owed", "StoreError", "raw_commit_samples"]

log = logging.getLogger(__name__)

FILE_NAME = "ledger.sqlite3"
SCHEMA_VERSION = 1
Synchronous = Literal["normal", "full"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS blocks(
    seq INTEGER PRIMARY KEY, hash BLOB NOT NULL UNIQUE, account BLOB NOT NULL,
    height INTEGER NOT NULL, type INTEGER NOT NULL, job TEXT NOT NULL, body BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS proofs(seq INTEGER PRIMARY KEY, a BLOB NOT NULL, b BLOB NOT NULL, UNIQUE(a, b));
CREATE TABLE IF NOT EXISTS settlements(job TEXT PRIMARY KEY, state TEXT NOT NULL, data BLOB NOT NULL);
"""
_INSERT_BLOCK = ("INSERT OR IGNORE INTO blocks(hash, account, height, type, job, body) "
                 "VALUES (?, ?, ?, ?, ?, ?)")
_INSERT_PROOF = "INSERT OR IGNORE INTO proofs(a, b) VALUES (?, ?)"
_OWE = "INSERT OR REPLACE INTO settlements(job, state, data) VALUES (?, ?, ?)"
_CLEAR = "DELETE FROM settlements WHERE job = ?"


class StoreError(LedgerError):
    """The ledger file cannot be opened, is of another network, or a write failed.

    ``path`` names the file; ``expected``/``found`` carry the two network ids of a mismatch.
    """

    def __init__(self, message: str, *, path: str, expected: str | None = None,
                 found: str | None = None) -> None:
        super().__init__(message)
        self.path = path
        self.expected = expected
        self.found = found


@dataclass(frozen=True, slots=True)
class Owed:
    """A settlement this node (as requester) still owes: ``state`` and ``data`` are the caller's."""

    job: str
    state: str
    data: bytes


# A write is a list of (sql, params); its result is the rowcount of its first statement.
_Statements = tuple[tuple[str, tuple[Any, ...]], ...]


class _Request:
    """One caller's write, and how to wake it: a pre-locked lock (threads) or a trio event."""

    __slots__ = ("error", "event", "lock", "result", "statements", "token")

    def __init__(self, statements: _Statements) -> None:
        self.statements = statements
        self.result = 0
        self.error: BaseException | None = None
        self.lock: Any = None
        self.token: trio.lowlevel.TrioToken | None = None
        self.event: trio.Event | None = None


_CLOSE = _Request(())


def _set_all(events: list[trio.Event]) -> None:
    for event in events:
        event.set()


class LedgerStore:
    """The ledger file of one node.  Use as a context manager, or call ``close()``.

    Args of ``open``:
        path: the SQLite file, or a data dir (then ``DATA_DIR/ledger.sqlite3``).
        genesis: the network's ``Genesis``; a new file records its network id, an existing one
            must carry the same.
        synchronous: "normal" (default; survives a process crash) or "full" (survives a power cut).
        max_queue: how many writes may wait for the writer before callers block (backpressure).
        max_batch: the most writes committed in one transaction.

    Raises:
        StoreError: the file is unreadable, not a ledger file, or of another network.
    """

    def __init__(self, path: Path, network_id: str, synchronous: Synchronous, max_queue: int,
                 max_batch: int) -> None:
        self.path = path
        self.network_id = network_id
        self.synchronous = synchronous
        self._max_batch = max_batch
        self._queue: queue.SimpleQueue[_Request] = queue.SimpleQueue()
        self._slots = threading.BoundedSemaphore(max_queue)
        self._room = trio.Lock()
        self._closed = False
        self._close_lock = threading.Lock()
        self._commits = 0
        self._writes = 0
        self._largest_batch = 0
        self._conn = _connect(path, synchronous, check_same_thread=False)
        self._thread = threading.Thread(target=self._writer, name=f"ledger-store:{path.name}", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ opening
    @classmethod
    def open(cls, path: str | os.PathLike[str], genesis: Any, *, synchronous: str = "normal",
             max_queue: int = 4096, max_batch: int = 1024) -> LedgerStore:
        sync = synchronous.lower()
        if sync not in ("normal", "full"):
            raise StoreError(f"synchronous must be 'normal' or 'full', got {synchronous!r}", path=str(path))
        if max_queue < 1 or max_batch < 1:
            raise StoreError(f"max_queue and max_batch must be >= 1 (got {max_queue}, {max_batch})",
                             path=str(path))
        file = Path(path)
        if file.is_dir():
            file = file / FILE_NAME
        network_id = _network_hex(genesis)
        _create_private(file)
        try:
            conn = _connect(file, sync, check_same_thread=True)
            try:
                with conn:
                    conn.executescript("BEGIN IMMEDIATE;" + _SCHEMA)
                    rows = dict(conn.execute("SELECT key, value FROM meta").fetchall())
                    if not rows:
                        conn.executemany("INSERT INTO meta(key, value) VALUES (?, ?)",
                                         [("network_id", network_id), ("schema", str(SCHEMA_VERSION))])
                    conn.execute("COMMIT")
            finally:
                conn.close()
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"{file}: not a usable ledger file ({exc})", path=str(file)) from exc
        found = rows.get("network_id", network_id)
        if found != network_id:
            raise StoreError(
                f"{file} belongs to network {found}, but the genesis given is network {network_id}: "
                "use that network's genesis file, or another data dir",
                path=str(file), expected=network_id, found=found)
        if rows.get("schema", str(SCHEMA_VERSION)) != str(SCHEMA_VERSION):
            raise StoreError(f"{file}: schema {rows['schema']}, this node reads {SCHEMA_VERSION}",
                             path=str(file))
        return cls(file, network_id, cast(Synchronous, sync), max_queue, max_batch)

    def __enter__(self) -> LedgerStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ writes
    async def append(self, block: Block | bytes, *, owe: Owed | None = None,
                     clear: str | None = None) -> bool:
        """Append ``block`` and return once it is durable: True if new, False if already stored.

        ``owe`` / ``clear`` record or clear a pending settlement in the SAME transaction (an
        escrow_lock with the job it opens, a settle or refund with the job it closes), so a crash
        never leaves one without the other.

        Cancellation: cancelling the wait does not cancel the write; it may still commit.
        Raises:
            StoreError: the store is closed or the commit failed.
        """
        return bool(await self._await(_block_statements(block, owe, clear)))

    def append_sync(self, block: Block | bytes, *, owe: Owed | None = None, clear: str | None = None) -> bool:
        """``append`` for threads (benchmarks, tests, tools); blocks until durable."""
        return bool(self._wait(_block_statements(block, owe, clear)))

    async def append_proof(self, a: Block | bytes, b: Block | bytes) -> bool:
        """Record an equivocation proof (two blocks of one account at one height); durable on return."""
        return bool(await self._await(_proof_statements(a, b)))

    def append_proof_sync(self, a: Block | bytes, b: Block | bytes) -> bool:
        return bool(self._wait(_proof_statements(a, b)))

    async def owe(self, job_id: str, state: str, data: bytes = b"") -> None:
        """Record (or update) a settlement still to be made for ``job_id``; durable on return."""
        await self._await(((_OWE, (job_id, state, bytes(data))),))

    def owe_sync(self, job_id: str, state: str, data: bytes = b"") -> None:
        self._wait(((_OWE, (job_id, state, bytes(data))),))

    async def clear(self, job_id: str) -> bool:
        """Forget a pending settlement; True if there was one."""
        return bool(await self._await(((_CLEAR, (job_id,)),)))

    def clear_sync(self, job_id: str) -> bool:
        return bool(self._wait(((_CLEAR, (job_id,)),)))

    def _wait(self, statements: _Statements) -> int:
        req = _Request(statements)
        req.lock = _thread.allocate_lock()
        req.lock.acquire()
        self._slots.acquire()
        self._enqueue(req)
        req.lock.acquire()
        if req.error is not None:
            raise req.error
        return req.result

    async def _await(self, statements: _Statements) -> int:
        req = _Request(statements)
        req.token = trio.lowlevel.current_trio_token()
        req.event = trio.Event()
        if self._room.locked() or not self._slots.acquire(blocking=False):
            # The queue is full: wait for room on a thread, not on the event loop.  trio.Lock is
            # FIFO, so the writes of this trio run still reach the queue in call order.
            async with self._room:
                await trio.to_thread.run_sync(self._slots.acquire, abandon_on_cancel=False)
                self._enqueue(req)
        else:
            self._enqueue(req)
        await req.event.wait()
        if req.error is not None:
            raise req.error
        return req.result

    def _enqueue(self, req: _Request) -> None:
        # Under the close lock, so that the close marker is the last request the writer ever sees.
        with self._close_lock:
            if self._closed:
                self._slots.release()
                raise StoreError(f"{self.path}: the ledger store is closed", path=str(self.path))
            self._queue.put(req)

    # ------------------------------------------------------------------ the writer thread
    def _writer(self) -> None:
        try:
            while True:
                batch = [self._queue.get()]
                while len(batch) < self._max_batch:
                    try:
                        batch.append(self._queue.get_nowait())
                    except queue.Empty:
                        break
                closing = batch[-1] is _CLOSE  # the close marker is always the last request
                work = batch[:-1] if closing else batch
                if work:
                    self._commit(work)
                    self._wake(work)
                    self._slots.release(len(work))
                if closing:
                    return
        except BaseException as exc:
            # A bug in the writer: fail every waiter instead of leaving it hanging, then re-raise.
            with self._close_lock:
                self._closed = True
            err = StoreError(f"{self.path}: the ledger writer stopped: {exc!r}", path=str(self.path))
            leftovers = []
            with contextlib.suppress(queue.Empty):
                while True:
                    leftovers.append(self._queue.get_nowait())
            for req in leftovers:
                req.error = err
            self._wake([r for r in leftovers if r is not _CLOSE])
            raise
        finally:
            self._conn.close()

    def _commit(self, batch: list[_Request]) -> None:
        conn = self._conn
        try:
            conn.execute("BEGIN IMMEDIATE")
            for req in batch:
                req.result = _execute(conn, req.statements)
            conn.execute("COMMIT")
            self._commits += 1
        except sqlite3.Error:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            if len(batch) > 1:  # isolate the bad write: commit each on its own
                for req in batch:
                    self._commit([req])
                return
            self._fail(batch[0])
            return
        self._writes += len(batch)
        self._largest_batch = max(self._largest_batch, len(batch))

    def _fail(self, req: _Request) -> None:
        try:
            with self._conn:
                req.result = _execute(self._conn, req.statements)
            self._commits += 1
            self._writes += 1
        except sqlite3.Error as exc:
            log.error("ledger store write failed: %s", exc)
            req.error = StoreError(f"{self.path}: write failed: {exc}", path=str(self.path))

    @staticmethod
    def _wake(batch: list[_Request]) -> None:
        by_token: dict[trio.lowlevel.TrioToken, list[trio.Event]] = {}
        for req in batch:
            if req.token is not None and req.event is not None:
                by_token.setdefault(req.token, []).append(req.event)
            else:
                req.lock.release()
        for token, events in by_token.items():
            with contextlib.suppress(trio.RunFinishedError):
                token.run_sync_soon(_set_all, events)

    # ------------------------------------------------------------------ close
    def close(self) -> None:
        """Commit everything queued, then stop the writer and close the file (idempotent).

        Blocks until the queue is flushed: from trio, call ``await store.aclose()``.
        """
        with self._close_lock:
            if self._closed:
                self._thread.join()
                return
            self._closed = True
            if self._thread.is_alive():
                self._queue.put(_CLOSE)
        self._thread.join()

    async def aclose(self) -> None:
        await trio.to_thread.run_sync(self.close, abandon_on_cancel=False)

    # ------------------------------------------------------------------ reads
    def blocks_raw(self) -> Iterator[bytes]:
        """The encoded blocks in append order, read from a snapshot on a fresh connection."""
        conn = _connect(self.path, self.synchronous, check_same_thread=True)
        try:
            cursor = conn.execute("SELECT body FROM blocks ORDER BY seq")
            while rows := cursor.fetchmany(512):
                for (body,) in rows:
                    yield bytes(body)
        finally:
            conn.close()

    def load(self) -> tuple[Iterator[Block], list[tuple[Block, Block]]]:
        """The blocks in append order (decoded lazily) and the equivocation proofs."""
        blocks = (decode_block(body, max_bytes=MAX_BLOCK_BYTES) for body in self.blocks_raw())
        return blocks, self.proofs()

    def proofs(self) -> list[tuple[Block, Block]]:
        rows = self._read("SELECT a, b FROM proofs ORDER BY seq")
        return [(decode_block(a, max_bytes=MAX_BLOCK_BYTES), decode_block(b, max_bytes=MAX_BLOCK_BYTES))
                for a, b in rows]

    def owed(self) -> list[Owed]:
        """Pending settlements, by job id."""
        return [Owed(job, state, bytes(data))
                for job, state, data in self._read("SELECT job, state, data FROM settlements ORDER BY job")]

    def count(self) -> int:
        return int(self._read("SELECT count(*) FROM blocks")[0][0])

    def replay(self, genesis: Any) -> Ledger:
        """A fresh ``Ledger`` holding every stored block and proof (signatures not re-verified)."""
        from inos_node.economy.ledger import Ledger

        blocks, proofs = self.load()
        return Ledger.replay(genesis, blocks, proofs, verify_signatures=False)

    def statistics(self) -> dict[str, int | str]:
        """Commits, writes, the largest batch so far: how well group commit is grouping."""
        return {"path": str(self.path), "synchronous": self.synchronous, "commits": self._commits,
                "writes": self._writes, "largest_batch": self._largest_batch}

    def _read(self, sql: str) -> list[tuple[Any, ...]]:
        conn = _connect(self.path, self.synchronous, check_same_thread=True)
        try:
            return conn.execute(sql).fetchall()
        finally:
            conn.close()


# ---------------------------------------------------------------------- helpers
def _block_statements(block: Block | bytes, owe: Owed | None, clear: str | None) -> _Statements:
    if isinstance(block, bytes | bytearray | memoryview):
        body = bytes(block)
        decoded = decode_block(body, max_bytes=MAX_BLOCK_BYTES)
    else:
        decoded, body = block, encode_block(block)
    stmts: list[tuple[str, tuple[Any, ...]]] = [(_INSERT_BLOCK, (
        block_hash(decoded), decoded.account, decoded.height, int(decoded.type), decoded.job, body))]
    if owe is not None:
        stmts.append((_OWE, (owe.job, owe.state, bytes(owe.data))))
    if clear is not None:
        stmts.append((_CLEAR, (clear,)))
    return tuple(stmts)


def _proof_statements(a: Block | bytes, b: Block | bytes) -> _Statements:
    raw = sorted(bytes(x) if isinstance(x, bytes | bytearray | memoryview) else encode_block(x)
                 for x in (a, b))
    return ((_INSERT_PROOF, (raw[0], raw[1])),)


def _execute(conn: sqlite3.Connection, statements: _Statements) -> int:
    result = -1
    for sql, params in statements:
        rowcount = conn.execute(sql, params).rowcount
        if result < 0:
            result = rowcount
    return max(result, 0)


def _connect(path: Path, synchronous: str, *, check_same_thread: bool) -> sqlite3.Connection:
    try:
        # isolation_level=None: we issue BEGIN/COMMIT ourselves (one transaction per batch).
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=check_same_thread, timeout=30.0)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={synchronous.upper()}")
    except sqlite3.Error as exc:
        raise StoreError(f"cannot open ledger file {path}: {exc}", path=str(path)) from exc
    return conn


def _create_private(path: Path) -> None:
    """Create the file 0600 before SQLite does (its -wal and -shm files copy the mode)."""
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        os.close(fd)
        if path.stat().st_mode & 0o077:
            path.chmod(0o600)
    except OSError as exc:
        raise StoreError(f"cannot create ledger file {path}: {exc.strerror}", path=str(path)) from exc


def _network_hex(genesis: Any) -> str:
    network_id = genesis.network_id
    return network_id.hex() if isinstance(network_id, bytes) else str(network_id)


# ---------------------------------------------------------------------- the bench's baseline
def raw_commit_samples(path: str | os.PathLike[str], *, row_bytes: int, n: int,
                       synchronous: str = "normal", clock: Callable[[], int] | None = None) -> list[int]:
    """Baseline for ``inos bench ledger``: ``n`` single-row INSERT + COMMIT on a bare WAL connection.

    The same pragmas as the store, a fresh file at ``path`` (removed afterwards), a row of
    ``row_bytes`` (a 32-byte key plus the payload).  Returns each commit's time in ns.
    """
    import time

    now = clock or time.perf_counter_ns
    file = Path(path)
    conn = _connect(file, synchronous, check_same_thread=True)
    try:
        conn.execute("CREATE TABLE IF NOT EXISTS t(seq INTEGER PRIMARY KEY, k BLOB NOT NULL, "
                     "v BLOB NOT NULL)")
        payload = os.urandom(max(row_bytes - 32, 0))
        samples = []
        for i in range(n):
            key = i.to_bytes(32, "big")
            t0 = now()
            conn.execute("BEGIN")
            conn.execute("INSERT INTO t(k, v) VALUES (?, ?)", (key, payload))
            conn.execute("COMMIT")
            samples.append(now() - t0)
        return samples
    finally:
        conn.close()
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(f"{file}{suffix}")
