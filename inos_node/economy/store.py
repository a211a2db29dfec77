"""The ledger on disk: one SQLite file in WAL mode, written by one thread with group commit.

This is the only module of inos-node that imports ``sqlite3``.

Theory of operation
-------------------
``DATA_DIR/ledger.sqlite3`` (mode 0600) holds every block this node accepted, in the order it
accepted them, plus the equivocation proofs it knows and the requester's unfinished settlements::

    meta(key PRIMARY KEY, value)             network_id (hex): a file of another network is refused
    blocks(seq PRIMARY KEY, hash,            the encoded, signed block (wire.ledger.encode_block);
           account, height, type, job, body) seq is the append order.  (account, height) is NOT
                                             unique: both branches of a fork are kept until cut.
                                             No index, not even on hash (Rule 3): queries are
                                             answered by the in-memory Ledger, and every index
                                             is one more page per commit
    proofs(seq PRIMARY KEY, a, b)            equivocation proofs: the two encoded blocks
    settlements(job PRIMARY KEY, state, data)  jobs whose escrow this node still has to settle or
                                             refund; a restarted node finishes them

Rule 1: the in-memory ``Ledger`` is derived state.  On open the node replays the blocks in append
order into a fresh ``Ledger`` (signatures are not re-verified for this local, trusted file;
``inos ledger verify`` re-verifies everything), so a block is "applied with all its effects"
exactly when its row is committed.  One row per block and one transaction per batch make a crash
leave either the whole block or nothing: no lost, duplicated or half-applied block.

Rule 2: group commit with a leader.  Whoever commits holds ``_busy``; the others queue (FIFO,
bounded) and wait until the transaction holding their write has committed.

  * Idle store (nothing queued, nobody committing): the caller commits its write itself, on its
    own thread, with no hand-off.  A thread does so at once.  A trio task (``synchronous=
    "normal"`` only) first yields once, so that the tasks that are ready queue their writes
    behind it, then commits them all in ONE transaction on the event loop.  A WAL commit
    without fsync costs about as much as a thread hand-off (tens of microseconds), so the
    loop is blocked no longer than a round trip to a writer thread would take.
  * Busy store: the write queues; the writer thread takes everything queued (up to
    ``max_batch``) into one transaction when the current commit ends: group commit under load.
  * ``synchronous="full"`` (an fsync per commit): trio tasks never commit on the loop; their
    writes always go to the writer thread.
  * Another connection holds the file's write lock: a trio leader does not wait on the loop; its
    batch goes back to the head of the queue and the writer thread waits for the lock.

    idle:  append() ─▶ [yield once] ─▶ BEGIN; INSERT ×k; COMMIT (caller's thread) ─▶ wake the k
    busy:  append() ─▶ bounded queue ─▶ writer thread: BEGIN; INSERT ×k; COMMIT
              ▲                                            │
              └──── token.run_sync_soon(event.set) ◀───────┘  (one wake-up per trio run per batch)

SQLite's automatic checkpoint (which fsyncs the database file) is off on the write connection,
so no commit, on the loop or not, runs one; the writer thread checkpoints every
``_CHECKPOINT_EVERY`` commits, between commits.

A lone write of one statement runs in SQLite's implicit transaction (one call instead of
BEGIN, INSERT, COMMIT); it is just as atomic and durable.

Rule 3: the store remembers the hashes it holds (a set loaded on open), so a block already
stored is skipped without a UNIQUE index on ``hash``: that index would write a second b-tree
page on every commit.  Files written with the index (before this rule) keep it and still work.

Durability: WAL with ``synchronous="normal"`` (the default) makes a committed append survive the
process being killed at any moment (SIGKILL, OOM); a power cut may lose the last commits but never
corrupts the file.  ``synchronous="full"`` fsyncs the WAL on every commit, so a committed append
also survives a power cut, at the price of one fsync per batch.

Order: writes commit in the order they reach the queue, and a caller leads only when the queue
is empty and nobody commits, so every earlier write has committed.  From one trio run that is
the order of the ``append`` calls, even while the queue is full, so a block is never durable
before a block it depends on that was appended earlier (its predecessor, a credit it spends).

Readers (``load``, ``owed``, ``blocks_raw``) open their own connections: WAL lets them read a
consistent snapshot while the writer appends.
"""

from __future__ import annotations

import _thread
import collections
import contextlib
import logging
import os
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
_LOCK_WAIT_MS = 30_000  # how long a write waits for another connection's write lock
_CHECKPOINT_EVERY = 256  # commits between WAL checkpoints (run by the writer thread)
Synchronous = Literal["normal", "full"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS blocks(
    seq INTEGER PRIMARY KEY, hash BLOB NOT NULL, account BLOB NOT NULL,
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
    """One caller's write, and how to wake it: a pre-locked lock (threads) or a trio event.
    ``slot``: it holds one of the queue's slots (released when it commits)."""

    __slots__ = ("error", "event", "lock", "result", "slot", "statements", "token")

    def __init__(self, statements: _Statements) -> None:
        self.statements = statements
        self.result = 0
        self.error: BaseException | None = None
        self.lock: Any = None
        self.token: trio.lowlevel.TrioToken | None = None
        self.event: trio.Event | None = None
        self.slot = False


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
        # Trio callers may commit on the event loop only when a commit costs no fsync.
        self._trio_leads = synchronous == "normal"
        self._cond = threading.Condition(threading.Lock())  # guards the four fields below
        self._pending: collections.deque[_Request] = collections.deque()
        self._busy = False  # a leader or the writer thread holds the connection
        self._closed = False
        self._slots = threading.BoundedSemaphore(max_queue)
        self._room = trio.Lock()
        self._commits = 0
        self._writes = 0
        self._largest_batch = 0
        # busy_timeout 0: a leader never waits on another connection's lock; the writer thread does
        self._conn = _connect(path, synchronous, check_same_thread=False)
        self._conn.execute("PRAGMA busy_timeout = 0")
        # No checkpoint inside a commit (with it, a commit on the event loop could fsync):
        # the writer thread checkpoints every _CHECKPOINT_EVERY commits instead.
        self._conn.execute("PRAGMA wal_autocheckpoint = 0")
        self._checkpoint_due = False
        self._checkpointed_at = 0
        # The hashes stored, to skip duplicates (Rule 3).  Only the committing thread uses it.
        self._stored = {bytes(h) for (h,) in self._conn.execute("SELECT hash FROM blocks")}
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

        With ``synchronous="normal"`` an idle store commits on the event loop (Rule 2): the
        loop is blocked for one WAL commit, about as long as a few context switches.

        Cancellation: a caller cancelled before this call writes nothing; cancelling the wait
        does not cancel the write, it may still commit.
        Raises:
            StoreError: the store is closed or the commit failed.
        """
        return bool(await self._await(_block_statements(block, owe, clear)))

    async def append_many(self, blocks: list[Block] | list[bytes]) -> None:
        """Append ``blocks`` in one transaction (those already stored are skipped); durable on
        return.  For peers' blocks, which need no pending-settlement rows."""
        if blocks:
            await self._await(tuple(s for b in blocks for s in _block_statements(b, None, None)))

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
        with self._cond:
            self._check_open()
            lead = not (self._busy or self._pending or self._checkpoint_due)
            if lead:
                self._busy = True
        if lead:  # idle: commit it on this thread, no hand-off (it may wait for the file's lock)
            try:
                self._commit([req], wait=True)
            finally:
                self._release()
        else:
            req.lock = _thread.allocate_lock()
            req.lock.acquire()
            self._slots.acquire()
            req.slot = True
            self._enqueue(req)
            req.lock.acquire()
        if req.error is not None:
            raise req.error
        return req.result

    async def _await(self, statements: _Statements) -> int:
        await trio.lowlevel.checkpoint_if_cancelled()
        req = _Request(statements)
        req.token = token = trio.lowlevel.current_trio_token()
        req.event = trio.Event()
        if self._room.locked() or not self._slots.acquire(blocking=False):
            # The queue is full: wait for room on a thread, not on the event loop.  trio.Lock is
            # FIFO (and stays locked while it has waiters), so the writes of this trio run still
            # reach the queue in call order, and no later call leads past them.
            async with self._room:
                await trio.to_thread.run_sync(self._slots.acquire, abandon_on_cancel=False)
                req.slot = True
                self._enqueue(req)
        else:
            req.slot = True
            with self._cond:
                self._check_open(req)
                lead = self._trio_leads and not (self._busy or self._pending or self._checkpoint_due)
                self._busy = self._busy or lead
                self._pending.append(req)
                if not self._busy:
                    self._cond.notify()
            if lead:
                # Let the tasks that are ready run first: their appends queue behind this one and
                # go into the same transaction (group commit on the loop, no thread hand-off).
                try:
                    await trio.lowlevel.cancel_shielded_checkpoint()
                except BaseException:  # KeyboardInterrupt: leave the queue to the writer thread
                    with self._cond:
                        self._busy = False
                        self._cond.notify()
                    raise
                with self._cond:
                    batch = [self._pending.popleft() for _ in range(min(len(self._pending), self._max_batch))]
                self._lead(batch, wait=False, here=token)
                if req.event.is_set():
                    if req.error is not None:
                        raise req.error
                    return req.result
        await req.event.wait()
        if req.error is not None:
            raise req.error
        return req.result

    def _check_open(self, req: _Request | None = None) -> None:
        """Under ``_cond``: refuse a write to a closed store."""
        if self._closed:
            if req is not None and req.slot:
                self._slots.release()
            raise StoreError(f"{self.path}: the ledger store is closed", path=str(self.path))

    def _enqueue(self, req: _Request) -> None:
        with self._cond:
            self._check_open(req)
            self._pending.append(req)
            if not self._busy:
                self._cond.notify()

    def _lead(self, batch: list[_Request], *, wait: bool, here: trio.lowlevel.TrioToken | None) -> None:
        """Commit ``batch`` (the oldest pending writes) on the calling thread; this caller has
        set ``_busy``.  When the file is locked by another connection and ``wait`` is False, the
        batch goes back to the head of the queue and the writer thread waits for the lock."""
        try:
            done = self._commit(batch, wait=wait)
        except BaseException as exc:  # e.g. KeyboardInterrupt on the loop: fail the batch, not hang it
            for req in batch:
                req.error = StoreError(f"{self.path}: write interrupted: {exc!r}", path=str(self.path))
            self._finish(batch, here)
            raise
        if done:
            self._finish(batch, here)
            return
        with self._cond:
            self._pending.extendleft(reversed(batch))
            self._busy = False
            self._cond.notify()

    def _finish(self, batch: list[_Request], here: trio.lowlevel.TrioToken | None) -> None:
        """Release the connection, then wake the batch and free its queue slots."""
        self._release()
        self._wake(batch, here)
        slots = sum(1 for req in batch if req.slot)
        if slots:
            self._slots.release(slots)

    def _release(self) -> None:
        """Clear ``_busy``; call the writer thread if writes queued meanwhile or a checkpoint is due."""
        with self._cond:
            self._busy = False
            if self._commits - self._checkpointed_at >= _CHECKPOINT_EVERY:
                self._checkpoint_due = True
            if self._pending or self._closed or self._checkpoint_due:
                self._cond.notify()

    # ------------------------------------------------------------------ the writer thread
    def _writer(self) -> None:
        """Commits what queued while someone else was committing (group commit under load), and
        every write of a trio caller with ``synchronous="full"``."""
        try:
            while True:
                with self._cond:
                    while self._busy or not (self._pending or self._closed or self._checkpoint_due):
                        self._cond.wait()
                    checkpoint = self._checkpoint_due  # first, then what queued behind it
                    if not (checkpoint or self._pending):  # closed, and everything committed
                        return
                    self._busy = True
                    n = 0 if checkpoint else min(len(self._pending), self._max_batch)
                    batch = [self._pending.popleft() for _ in range(n)]
                if checkpoint:
                    self._checkpoint()
                    continue
                self._commit(batch, wait=True)
                self._finish(batch, None)
        except BaseException as exc:
            # A bug in the writer: fail every waiter instead of leaving it hanging, then re-raise.
            err = StoreError(f"{self.path}: the ledger writer stopped: {exc!r}", path=str(self.path))
            with self._cond:
                self._closed = True
                leftovers = list(self._pending)
                self._pending.clear()
            for req in leftovers:
                req.error = err
            self._wake(leftovers, None)
            raise
        finally:
            self._conn.close()

    def _checkpoint(self) -> None:
        """Copy the WAL into the database file (PASSIVE: never waits for readers); holds _busy."""
        try:
            self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
        except sqlite3.Error as exc:
            log.warning("ledger store checkpoint failed (retried later): %s", exc)
        finally:
            with self._cond:
                self._checkpoint_due = False
                self._checkpointed_at = self._commits
                self._busy = False  # (the writer loop then commits what queued meanwhile)

    def _locked(self, step: Callable[[], object], wait: bool) -> bool:
        """Run ``step`` (the transaction's first write); False if another connection holds the
        file's write lock and not ``wait``, else wait for it (up to ``_LOCK_WAIT_MS``)."""
        try:
            step()
            return True
        except sqlite3.OperationalError as exc:
            if exc.sqlite_errorcode != sqlite3.SQLITE_BUSY:
                raise
            if not wait:
                return False
        self._conn.execute(f"PRAGMA busy_timeout = {_LOCK_WAIT_MS}")
        try:
            step()
        finally:
            self._conn.execute("PRAGMA busy_timeout = 0")
        # No checkpoint inside a commit (with it, a commit on the event loop could fsync):
        # the writer thread checkpoints every _CHECKPOINT_EVERY commits instead.
        self._conn.execute("PRAGMA wal_autocheckpoint = 0")
        self._checkpoint_due = False
        self._checkpointed_at = 0
        return True

    def _commit(self, batch: list[_Request], *, wait: bool = True) -> bool:
        """One transaction for ``batch``; False (nothing done) if the file is locked and not ``wait``."""
        conn = self._conn
        added: list[bytes] = []
        try:
            if len(batch) == 1 and len(batch[0].statements) == 1:
                # One statement (a lone append): SQLite's implicit transaction commits it; one
                # call into SQLite instead of three.
                req = batch[0]

                def lone() -> None:
                    req.result = self._execute(req.statements, added)

                if not self._locked(lone, wait):
                    return False
            else:
                if not self._locked(lambda: conn.execute("BEGIN IMMEDIATE"), wait):
                    return False
                for req in batch:
                    req.result = self._execute(req.statements, added)
                conn.execute("COMMIT")
            self._commits += 1
        except sqlite3.Error:
            self._stored.difference_update(added)
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            if len(batch) > 1:  # isolate the bad write: commit each on its own
                for req in batch:
                    self._commit([req])
                return True
            self._fail(batch[0])
            return True
        except BaseException:
            self._stored.difference_update(added)
            if conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            raise
        self._writes += len(batch)
        self._largest_batch = max(self._largest_batch, len(batch))
        return True

    def _fail(self, req: _Request) -> None:
        added: list[bytes] = []
        try:
            with self._conn:
                req.result = self._execute(req.statements, added)
            self._commits += 1
            self._writes += 1
        except sqlite3.Error as exc:
            self._stored.difference_update(added)
            log.error("ledger store write failed: %s", exc)
            req.error = StoreError(f"{self.path}: write failed: {exc}", path=str(self.path))

    def _execute(self, statements: _Statements, added: list[bytes]) -> int:
        """Run one write's statements; a block already stored is skipped (rowcount 0).  The
        hashes inserted go into ``added`` (taken out of ``_stored`` again on a rollback)."""
        result = -1
        for sql, params in statements:
            if sql is _INSERT_BLOCK:
                if params[0] in self._stored:
                    rowcount = 0
                else:
                    rowcount = self._conn.execute(sql, params).rowcount
                    self._stored.add(params[0])
                    added.append(params[0])
            else:
                rowcount = self._conn.execute(sql, params).rowcount
            if result < 0:
                result = rowcount
        return max(result, 0)

    @staticmethod
    def _wake(batch: list[_Request], here: trio.lowlevel.TrioToken | None) -> None:
        """Wake each waiter: release a thread's lock; set a trio task's event directly when this
        is its trio thread (``here``), else through its run's token (one call per run)."""
        by_token: dict[trio.lowlevel.TrioToken, list[trio.Event]] = {}
        for req in batch:
            if req.event is not None:
                if req.token is here:
                    req.event.set()
                else:
                    by_token.setdefault(cast(trio.lowlevel.TrioToken, req.token), []).append(req.event)
            elif req.lock is not None:
                req.lock.release()
        for token, events in by_token.items():
            with contextlib.suppress(trio.RunFinishedError):
                token.run_sync_soon(_set_all, events)

    # ------------------------------------------------------------------ close
    def close(self) -> None:
        """Commit everything queued, then stop the writer and close the file (idempotent).

        Blocks until the queue is flushed: from trio, call ``await store.aclose()``.
        """
        with self._cond:
            self._closed = True
            self._cond.notify()
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




def _connect(path: Path, synchronous: str, *, check_same_thread: bool) -> sqlite3.Connection:
    try:
        # isolation_level=None: we issue BEGIN/COMMIT ourselves (one transaction per batch).
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=check_same_thread,
                               timeout=_LOCK_WAIT_MS / 1000)
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
