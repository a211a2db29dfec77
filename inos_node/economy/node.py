"""The ledger in a running node: the trio shell around the pure ``Ledger`` and its SQLite store.

    own block:   next_block ─► offer (applied in memory) ─► journal (one write: durable) ─► returned,
                 sent, gossip publish                    (nothing leaves before it is durable: a node
                                                          that crashes never re-signs a height)
                 ... 20 ms later, with the others made meanwhile: store append (one transaction),
                 then the journal is emptied; a start stores what the journal still holds
    peer block:  gossip ─► inbox (bounded) ─► offer ─► applied: store append
                                                   ├─ held: fetch the gap over /inos/ledger-sync
                                                   └─ equivocation: store + gossip the proof
    late join:   on every verified peer, and every ``sync_interval_s`` with one peer: compare
                 heads, fetch what is missing (and the peer's equivocation proofs)

Between ``next_block`` and the journal's append there is no checkpoint, so concurrent tasks
journal their own blocks in the order the ledger applied them (the store takes any order).

Escrow flows for the daemon (requester side): ``lock`` before a capsule leaves, ``settle`` on a
verified receipt, ``refund`` when the job fails; the pending settlement is recorded in the same
transaction as the lock, so a node killed at any moment finishes or refunds it when it restarts
(``resolve_pending``).  Worker side: ``accept_escrow`` checks the lock that comes with a request.

Escrow credit (worker side, ``escrow_credit`` > 0).  A requester whose escrow this node has
already checked and taken once (a known payer) may have ONE more lock taken on trust, when it
names this node for at most ``escrow_credit`` credits: ``trust_escrow_now`` reads the lock (its
job, its account, its worker list: no signature check, nothing applied) and the small job runs
and is answered; ``check_later`` then checks that lock exactly as ``accept_escrow`` would, the
moment the answer is written.  The requester still locks before anything leaves it; what moves
is when the worker checks (a few hundred microseconds later, off the answer's path), and what it
risks is one job of at most ``escrow_credit`` credits per requester: a lock that fails its check
is logged, the requester stops being a known payer, its failure counts as a non-payment, and the
claim for that job is dropped (no credit moves: the ledger never applied that lock).

Who may do what when a requester does not settle (it crashed between the result and the settle,
say).  Only the requester's chain can close its escrow, so nothing ever races:
  * the worker keeps its receipt (``expect_payment``); once the job's deadline has passed with
    the escrow still open on its ledger, it presents the receipt to the requester over
    /inos/ledger-sync (a claim), again every few seconds until the deadline + the genesis's grace;
  * the requester settles a valid claim for an open escrow it locked (the receipt verifies, names
    this job and this requester, and the worker is one the lock named): the worker is paid the
    most the lock allowed it, the treasury its fee;
  * a restarted requester refunds an escrow it cannot settle only after deadline + grace, so a
    worker's claim gets there first; a live requester refunds at once when a job fails;
  * a claim that meets a refunded escrow is refused, and the worker marks the requester a
    non-payer (its reputation, on that worker).
Credits are never lost: until the requester's node settles or refunds, the escrow is counted
(locked, in ``supply``).
"""

from __future__ import annotations

import functools
import logging
import math
import random
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import blake3
import trio

from inos_node.economy.genesis import Genesis
from inos_node.economy.journal import JOURNAL_NAME, OwnJournal
from inos_node.economy.ledger import Ledger, Offer, Outcome, lock_required, settle_fee
from inos_node.economy.model import Block, BlockType, account_of_key, block_hash, did_of_account
from inos_node.economy.store import LedgerStore
from inos_node.errors import BlockRejected, LedgerError, PeerError, RemoteProtocolError
from inos_node.wire.ledger import decode_block, decode_proof, encode_block, encode_proof

__all__ = ["LedgerNode", "ledger_topic_name", "unix_ms"]

log = logging.getLogger(__name__)

_BLOCK, _PROOF, _BATCH = b"B", b"P", b"M"
_BATCH_WINDOW_S = 0.1  # own blocks made within this window go out in one gossip message
_BATCH_MAX = 64
_PERSIST_DELAY_S = 0.05  # peers' blocks wait this long to be stored together (see _persister)
_PERSIST_BATCH = 256
_OWN_DELAY_S = 0.02  # our journaled blocks wait this long to be committed to SQLite together
_JOURNAL_MAX = 4096  # records; past this, commit() waits for the store to catch up
_MAX_KNOWN_PAYERS = 4096  # requesters whose escrow this node checked and took (escrow credit)
_MAX_UNCHECKED = 256  # escrows taken on trust, not yet checked (one per requester at most)


def encode_batch(items: list[bytes]) -> bytes:
    """One gossip message carrying several items (each ``B`` + block or ``P`` + proof)."""
    return _BATCH + b"".join(len(i).to_bytes(4, "little") + i for i in items)


def decode_batch(data: bytes, *, max_items: int = _BATCH_MAX) -> list[bytes]:
    """The items of a gossip message (a batch or a single item).

    Raises:
        RemoteProtocolError: a malformed batch (truncated, or more than ``max_items``).
    """
    if data[:1] != _BATCH:
        return [data]
    items, pos = [], 1
    while pos < len(data):
        if len(items) >= max_items or pos + 4 > len(data):
            raise RemoteProtocolError(f"ledger batch: malformed or over {max_items} items")
        size = int.from_bytes(data[pos : pos + 4], "little")
        pos += 4
        if size < 1 or pos + size > len(data):
            raise RemoteProtocolError("ledger batch: an item overruns the message")
        items.append(data[pos : pos + size])
        pos += size
    return items


@functools.lru_cache(maxsize=4096)
def account_of_peer(peer_id: str) -> bytes:
    """The ledger account of a libp2p peer: its peer id derives from the same Ed25519 key, so
    this never changes (cached: a worker asks it for every paid request).

    Raises:
        RemoteProtocolError: ``peer_id`` is not the id of an Ed25519 key.
    """
    from inos_node.net.host import public_key_of_peer_id

    return account_of_key(public_key_of_peer_id(peer_id))


def unix_ms() -> int:
    return time.time_ns() // 1_000_000


def ledger_topic_name(genesis: Genesis) -> str:
    return f"inos/ledger/{genesis.network_id.hex()[:16]}/1"


class LedgerNode:
    def __init__(
        self,
        genesis: Genesis,
        identity: Any,
        data_dir: Path,
        *,
        sync_interval_s: float = 10.0,
        inbox: int = 4096,
        escrow_credit: int = 0,
    ) -> None:
        self.genesis = genesis
        self.identity = identity
        self.account = account_of_key(identity.public_key)
        self.did = did_of_account(self.account)
        self.path = Path(data_dir) / "ledger.sqlite3"
        self.sync_interval_s = sync_interval_s
        self.topic_name = ledger_topic_name(genesis)
        self.ledger: Ledger = None  # type: ignore[assignment]
        self.store: LedgerStore = None  # type: ignore[assignment]
        self._inbox_send, self._inbox_recv = trio.open_memory_channel[tuple[bytes, str]](inbox)
        self._persist_send, self._persist_recv = trio.open_memory_channel[Block](inbox)
        self._unpersisted = 0  # peers' blocks applied in memory, not yet stored
        self._drained = trio.Event()
        self._drained.set()
        self._to_publish: list[bytes] = []  # own blocks (or proofs) for the next gossip message(s)
        self._publish_limit = inbox
        self._publish_ready = trio.Event()  # set while _to_publish holds something
        self._publish_full = trio.Event()  # set once it holds a whole message's worth
        self._sync_send, self._sync_recv = trio.open_memory_channel[tuple[str, bytes, int]](256)
        self._gossip: Any = None
        self._sync_client: Any = None
        self._peers: Callable[[], list[str]] = list
        self._self_peer = ""
        self._published: OrderedDict[bytes, None] = OrderedDict()  # digests of our last messages
        self._wire_seen: OrderedDict[bytes, None] = OrderedDict()  # digests of applied blocks' wire bytes
        self.changed = trio.Event()  # set (and replaced) whenever the ledger changes
        self.stats = {
            "applied": 0,
            "held": 0,
            "rejected": 0,
            "duplicates": 0,
            "equivocations": 0,
            "dropped": 0,
            "synced": 0,
            "claims_made": 0,
            "claims_settled": 0,
            "escrows_trusted": 0,  # locks taken on trust (escrow credit)
            "escrows_checked": 0,  # of those, checked since (passed or failed)
            "escrows_failed_later": 0,
        }
        self._nursery: trio.Nursery | None = None
        self._journal: OwnJournal | None = None
        self._own_send: trio.MemorySendChannel[None] | None = None  # set by run()
        self._own_recv: trio.MemoryReceiveChannel[None] | None = None
        self._own_batch: list[Block] = []  # our blocks journaled, waiting for _own_persister
        self._own_pending = 0  # our blocks journaled, their SQLite commit not done yet
        self._own_stored = trio.Event()
        self._own_stored.set()
        self._own_failed = False
        self._owed_to_me: OrderedDict[str, tuple[str, bytes, bytes, int]] = OrderedDict()  # job -> claim
        self._peer_holds: OrderedDict[str, int] = OrderedDict()  # peer id -> height of ours it holds
        self._claiming: set[str] = set()
        # requester peer id -> jobs we delivered and will not be paid for: refunded although we held a
        # receipt, or answered on a lock taken on trust that failed its check
        self.nonpayers: dict[str, int] = {}
        self.escrow_credit = escrow_credit  # see the module docstring; 0: every lock checked first
        self._known_payers: OrderedDict[str, None] = OrderedDict()  # peer ids whose escrow we took
        self._unchecked: dict[str, tuple[Block, str, tuple[bytes, ...]]] = {}  # peer -> its lock, job, chain
        self._check_send, self._check_recv = trio.open_memory_channel[str](_MAX_UNCHECKED)
        self._check_queued: set[str] = set()  # peers in the check queue (once each: it never fills)

    # ------------------------------------------------------------------ lifetime
    @asynccontextmanager
    async def open(self) -> AsyncIterator[LedgerNode]:
        self.store = await trio.to_thread.run_sync(LedgerStore.open, self.path, self.genesis)
        try:
            self.ledger = await trio.to_thread.run_sync(self.store.replay, self.genesis)
            # Our own store was replayed without re-checking signatures (it holds only blocks
            # that were checked before they were stored); from here on every block comes from
            # a peer, and each signature is verified.
            self.ledger.verify_signatures = True
            if self.store.synchronous == "normal":  # as durable as a commit: see OwnJournal
                self._journal = OwnJournal(self.path.with_name(JOURNAL_NAME))
                try:
                    await self._recover_journal()
                except BaseException:
                    self._own_failed = True  # keep the journal for the next start
                    raise
            log.info(
                "ledger %s: %d blocks replayed, state %s",
                self.genesis.name,
                self.ledger.block_count,
                self.ledger.state_hash().hex()[:16],
            )
            yield self
        finally:
            with trio.CancelScope(shield=True):  # a clean stop leaves nothing to the journal
                await self._store_own_batch()
                await self.store.aclose()  # commits every queued write first
            if self._journal is not None:
                if not (self._own_failed or self._own_pending):  # else: the next start sorts it out
                    self._journal.reset()
                self._journal.close()

    async def _recover_journal(self) -> None:
        """Store the own blocks a crash left in the journal only (see OwnJournal), then empty it."""
        assert self._journal is not None
        recovered = 0
        journaled: list[Block] = []
        for raw in self._journal.recover():
            try:
                block = decode_block(raw)
            except RemoteProtocolError as exc:
                self._own_failed = True
                log.error("ledger journal %s: an unreadable record (%s); the journal is kept",
                          self._journal.path, exc)
                continue
            journaled.append(block)
            offer = self.ledger.offer(block)  # (out of order, one is held until the one before it comes)
            if offer.applied:
                await self.store.append_many(offer.applied)
                recovered += len(offer.applied)
        for block in journaled:
            if self._hash_at(block.account, block.height) != block_hash(block):
                self._own_failed = True
                log.error("ledger journal %s: our block at height %d does not apply; the journal is kept",
                          self._journal.path, block.height)
        if recovered:
            log.warning("ledger: %d own block(s) recovered from the journal", recovered)
        if not self._own_failed:
            self._journal.reset()

    def attach(
        self, gossip: Any, sync_client: Any, peers: Callable[[], list[str]], self_peer: str = ""
    ) -> None:
        self._gossip, self._sync_client, self._peers = gossip, sync_client, peers
        self._self_peer = self_peer

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        own_send, self._own_recv = trio.open_memory_channel[None](math.inf)
        try:
            async with trio.open_nursery() as n:
                self._nursery = n
                n.start_soon(self._claimer)
                n.start_soon(self._checker)
                n.start_soon(self._consume)
                n.start_soon(self._persister)
                n.start_soon(self._own_persister)
                n.start_soon(self._publisher)
                n.start_soon(self._syncer)
                n.start_soon(self._sync_periodically)
                self._own_send = own_send  # our blocks may skip the wait for SQLite from now on
                task_status.started()
        finally:
            self._own_send = None  # no keeper any more: commit() waits for the store again

    # ------------------------------------------------------------------ gossip topic
    def validate(self, data: bytes) -> bool:
        """Cheap shape check for gossip: a batch of well-framed items of known kinds (the ledger
        decodes them and checks signatures and rules on offer)."""
        try:
            items = decode_batch(data)
        except RemoteProtocolError:
            return False
        return bool(items) and all(i[:1] in (_BLOCK, _PROOF) and len(i) > 1 for i in items)

    def on_message(self, data: bytes, from_peer: str) -> None:
        if from_peer == self._self_peer and blake3.blake3(data).digest() in self._published:
            return  # our own publication delivered back to us (a clone of our key publishes others)
        try:
            self._inbox_send.send_nowait((data, from_peer))
        except trio.WouldBlock:
            self.stats["dropped"] += 1  # the periodic sync repairs what gossip loses
            log.warning("ledger inbox full: dropped a gossiped block from %s (sync will fetch it)", from_peer)

    async def _consume(self) -> None:
        async for data, peer in self._inbox_recv:
            try:
                items = decode_batch(data)
            except RemoteProtocolError as exc:
                self.stats["rejected"] += 1
                log.warning("ledger: a message from %s was not usable: %s", peer, exc)
                continue
            for item in items:
                if item[:1] == _BLOCK and self._seen_wire(item[1:]):
                    self.stats["duplicates"] += 1  # already applied (e.g. it came with a request)
                    continue
                try:
                    if item[:1] == _PROOF:
                        a, b = decode_proof(item[1:])
                        await self._take(self.ledger.offer_proof(a, b), peer)
                    else:
                        await self._take(self.ledger.offer(decode_block(item[1:])), peer)
                except (RemoteProtocolError, LedgerError) as exc:
                    self.stats["rejected"] += 1
                    log.warning("ledger: a message from %s was not usable: %s", peer, exc)

    async def _persister(self) -> None:
        """Store peers' blocks in the order they were applied, off the caller's path (a worker
        checking an escrow need not wait for the disk: a block lost in a crash is fetched again
        from its author or any peer; our OWN blocks are always durable before anyone sees them).
        The first block waits ``_PERSIST_DELAY_S`` for those that follow it (a paid job brings
        two): one transaction for all, and none of it in the way of the answer being written."""
        async for first in self._persist_recv:
            await trio.sleep(_PERSIST_DELAY_S)
            batch = [first]
            while len(batch) < _PERSIST_BATCH:
                try:
                    batch.append(self._persist_recv.receive_nowait())
                except trio.WouldBlock:
                    break
            try:
                await self.store.append_many(batch)
            except LedgerError as exc:
                log.error("ledger: could not store %d peers' block(s) (sync will fetch them again): %s",
                          len(batch), exc)
            finally:
                self._unpersisted -= len(batch)
                if not self._unpersisted:
                    self._drained.set()

    async def flush(self) -> None:
        """Wait until every block applied so far is in the store (``verify`` reads the store)."""
        await self._drained.wait()
        await self._own_stored.wait()

    async def _take(self, offer: Offer, peer: str, *, durable: bool = False) -> None:
        """Persist what an offer applied (now, or in the background when not ``durable``);
        follow up gaps and equivocations."""
        for block in offer.applied:
            self._note_wire(block)
            if durable:
                await self.store.append(block)
            elif not self._persist_later(block):
                await self.store.append(block)  # the persister is full: wait for the disk (backpressure)
        self._account(offer, peer)
        if offer.outcome is Outcome.EQUIVOCATION and offer.proof is not None:
            await self._record_equivocation(*offer.proof)

    def _take_now(self, offer: Offer, peer: str) -> None:
        """``_take`` (not durable) for a caller that cannot await (a worker's fast path): peers'
        blocks go to the persister, or with its queue full straight to the store (the loop blocks
        for one commit); an equivocation is recorded by a background task."""
        for block in offer.applied:
            self._note_wire(block)
            if not self._persist_later(block):
                self.store.append_sync(block)
        self._account(offer, peer)
        if offer.outcome is Outcome.EQUIVOCATION and offer.proof is not None and self._nursery is not None:
            self._nursery.start_soon(self._record_equivocation, *offer.proof)

    def _persist_later(self, block: Block) -> bool:
        """Hand a peer's applied block to the persister; False when its queue is full."""
        try:
            self._persist_send.send_nowait(block)
        except trio.WouldBlock:
            return False
        if not self._unpersisted:
            self._drained = trio.Event()
        self._unpersisted += 1
        return True

    def _account(self, offer: Offer, peer: str) -> None:
        """The statistics, wake-ups and follow-ups (a gap to fetch) of one offer."""
        out = offer.outcome
        if offer.applied:
            self.stats["applied"] += len(offer.applied)
            self._changed()
        if out is Outcome.DUPLICATE:
            self.stats["duplicates"] += 1
        elif out is Outcome.HELD:
            self.stats["held"] += 1
            if offer.missing is not None and peer:
                self._want(peer, *offer.missing)
        elif out is Outcome.REJECTED:
            self.stats["rejected"] += 1
            log.warning("ledger: rejected a block from %s: %s", peer or "the store", offer.reason)
        elif out is Outcome.EQUIVOCATION:
            self.stats["equivocations"] += 1

    async def _record_equivocation(self, a: Block, b: Block) -> None:
        """Store an equivocation proof durably; the first time, say so and gossip it."""
        if await self.store.append_proof(a, b):
            log.warning(
                "ledger: EQUIVOCATION by %s at height %d: account frozen, stake slashed",
                did_of_account(a.account),
                a.height,
            )
            self._queue_publish(_PROOF + encode_proof(a, b))
        self._changed()

    def _note_wire(self, block: Block) -> None:
        """Remember the wire bytes of an applied block, so a gossiped copy is skipped undecoded."""
        if block._wire:
            self._wire_seen[blake3.blake3(block._wire).digest()] = None
            while len(self._wire_seen) > 8192:
                self._wire_seen.popitem(last=False)

    def _seen_wire(self, wire: bytes) -> bool:
        return blake3.blake3(wire).digest() in self._wire_seen

    def _changed(self) -> None:
        self.changed.set()
        self.changed = trio.Event()

    def _queue_publish(self, data: bytes) -> None:
        """Hand an item to ``_publisher``: only the first of a batch wakes it (a paid job makes
        two blocks; waking the publisher for each cost the requester's loop a task switch apiece,
        on the job's critical path)."""
        pending = self._to_publish
        if len(pending) >= self._publish_limit:
            log.warning("ledger publish queue full: a block goes out by sync instead of gossip")
            return
        pending.append(data)
        if len(pending) == 1:
            self._publish_ready.set()
        elif len(pending) == _BATCH_MAX:
            self._publish_full.set()

    async def _publisher(self) -> None:
        """Publish own blocks, coalescing those made within ``_BATCH_WINDOW_S`` of the first one
        into one message of up to ``_BATCH_MAX`` (a paid job makes two blocks a millisecond apart:
        one message instead of two halves the gossip work on every node; replication a few ms
        later costs nothing, since a worker gets the requester's latest blocks with the request
        itself).  A batch that fills up goes out at once."""
        while True:
            await self._publish_ready.wait()
            with trio.move_on_after(_BATCH_WINDOW_S):
                await self._publish_full.wait()
            batch, self._to_publish = self._to_publish[:_BATCH_MAX], self._to_publish[_BATCH_MAX:]
            if not self._to_publish:
                self._publish_ready = trio.Event()
            self._publish_full = trio.Event()
            if len(self._to_publish) >= _BATCH_MAX:
                self._publish_full.set()
            if self._gossip is None:
                continue
            message = batch[0] if len(batch) == 1 else encode_batch(batch)
            self._published[blake3.blake3(message).digest()] = None
            while len(self._published) > 256:
                self._published.popitem(last=False)
            try:
                await self._gossip.publish(self.topic_name, message)
            except Exception as exc:  # noqa: BLE001 - publishing is best effort; sync repairs
                log.info("ledger: publish failed: %r", exc)

    # ------------------------------------------------------------------ sync
    def _want(self, peer: str, account: bytes, from_height: int) -> None:
        try:
            self._sync_send.send_nowait((peer, account, from_height))
        except trio.WouldBlock:
            pass  # the periodic sync covers it

    async def _syncer(self) -> None:
        async for peer, account, from_height in self._sync_recv:
            await self._fetch_chain(peer, account, from_height)

    async def _fetch_chain(self, peer: str, account: bytes, from_height: int) -> None:
        if self._sync_client is None:
            return
        height = from_height
        while True:
            try:
                raws = await self._sync_client.blocks(peer, account, height)
            except (PeerError, RemoteProtocolError) as exc:
                log.info("ledger sync of %s from %s failed: %s", did_of_account(account), peer, exc)
                return
            if not raws:
                return
            for raw in raws:
                try:
                    await self._take(self.ledger.offer(decode_block(raw)), peer)
                except RemoteProtocolError as exc:
                    log.warning("ledger sync: peer %s sent a bad block: %s", peer, exc)
                    return
            self.stats["synced"] += len(raws)
            height += len(raws)
            if len(raws) < 64:  # a short page: that was the end of the chain
                return

    async def sync_with(self, peer: str) -> None:
        """Compare heads with ``peer`` and fetch every chain where it is ahead (and its proofs)."""
        if self._sync_client is None:
            return
        try:
            resp = await self._sync_client.heads(peer)
        except (PeerError, RemoteProtocolError) as exc:
            log.info("ledger sync with %s failed: %s", peer, exc)
            return
        for a_raw, b_raw in resp.proofs:
            try:
                await self._take(self.ledger.offer_proof(decode_block(a_raw), decode_block(b_raw)), peer)
            except (RemoteProtocolError, LedgerError) as exc:
                log.warning("ledger sync: bad proof from %s: %s", peer, exc)
        ours = self.ledger.heads()
        for head in resp.heads:
            mine, my_head = ours.get(head.account, (0, b""))
            if head.height > mine:
                await self._fetch_chain(peer, head.account, mine + 1)
            elif head.height and head.head != self._hash_at(head.account, head.height):
                # a different block at a height we both have: a fork (a healed partition, a cloned
                # identity).  Fetch theirs from that height: the offer finds the equivocation.
                await self._fetch_chain(peer, head.account, head.height)

    async def _sync_periodically(self) -> None:
        while True:
            await trio.sleep(self.sync_interval_s * (0.5 + random.random()))
            peers = self._peers()
            if peers:
                await self.sync_with(random.choice(peers))

    def _hash_at(self, account: bytes, height: int) -> bytes:
        blocks = self.ledger.blocks_from(account, height, 1)
        return block_hash(blocks[0]) if blocks else b""

    def sync_source(self) -> Any:
        from inos_node.net.ledger_sync import SyncSource

        def heads() -> list[tuple[bytes, int, bytes]]:
            return [(a, h, head) for a, (h, head) in self.ledger.heads().items()]

        def blocks(account: bytes, from_height: int, limit: int) -> list[bytes]:
            return [encode_block(b) for b in self.ledger.blocks_from(account, from_height, limit)]

        def proofs() -> list[tuple[bytes, bytes]]:
            return [(encode_block(a), encode_block(b)) for a, b in self.ledger.proofs()]

        return SyncSource(heads=heads, blocks=blocks, proofs=proofs, claim=self._on_claim)

    def know_receipt(self, receipt: Any) -> bytes:
        """The evidence bytes of ``receipt`` (what a settle carries).  When its signature is
        known good (``Receipt.checked``: we signed it, or verified it), the ledger is told its
        body too, so checking the settle that carries it decodes nothing again."""
        from inos_node.wire.ledger import encode_receipt

        item = encode_receipt(receipt)
        if receipt.checked is not None:
            self.ledger.know_receipt(item, receipt.public_key, receipt.checked)
        return item

    # ------------------------------------------------------------------ claims
    def expect_payment(self, requester: str, job: str, receipt: Any, deadline_ms: int) -> None:
        """Worker side: remember a receipt we signed for ``requester``'s escrow of ``job``."""
        try:
            account = account_of_peer(requester)
        except RemoteProtocolError:
            return
        self._owed_to_me[job] = (requester, account, self.know_receipt(receipt), deadline_ms)
        while len(self._owed_to_me) > 4096:
            self._owed_to_me.popitem(last=False)

    async def _claimer(self) -> None:
        """Present receipts whose escrow is still open after the job's deadline (see the module
        docstring); forget them once settled, refunded, or past deadline + grace."""
        while True:
            await trio.sleep(2.0)
            now = unix_ms()
            for job, (requester, account, receipt, deadline_ms) in list(self._owed_to_me.items()):
                esc = self.ledger.escrow(account, job)
                state = esc["state"] if esc is not None else "open"  # a lock not yet seen: ask anyway
                if state != "open" or now > deadline_ms + self.genesis.grace_ms:
                    self._owed_to_me.pop(job, None)
                    if state == "refunded":
                        self.nonpayers[requester] = self.nonpayers.get(requester, 0) + 1
                        log.warning(
                            "job=%s: requester %s refunded a job we delivered (a non-payer)", job, requester
                        )
                    elif state == "open":
                        log.warning(
                            "job=%s: requester %s never settled nor answered our claim", job, requester
                        )
                    continue
                if now <= deadline_ms or self._sync_client is None:
                    continue
                self.stats["claims_made"] += 1
                try:
                    await self._sync_client.claim(requester, job, receipt)
                    log.info("job=%s: requester %s accepted our claim", job, requester)
                except (PeerError, RemoteProtocolError) as exc:
                    log.info("job=%s: claim to %s not accepted yet: %s", job, requester, exc)

    def _on_claim(self, job: str, receipt_bytes: bytes, peer: str) -> str:
        """Requester side: check a worker's claim; settle it in the background.  "" = accepted."""
        from inos_node.receipts import ReceiptInvalid, open_receipt
        from inos_node.wire.ledger import decode_receipt

        esc = self.ledger.escrow(self.account, job)
        if esc is None:
            return f"no escrow of mine for job {job}"
        if esc["state"] != "open":
            return f"the escrow for {job} is already {esc['state']}"
        try:
            receipt = decode_receipt(receipt_bytes)
            body = open_receipt(receipt, worker_peer_id=peer)
        except (ReceiptInvalid, RemoteProtocolError) as exc:
            return f"receipt refused: {exc}"
        if body.job_id != job or body.requester != self._self_peer:
            return "the receipt is for another job or another requester"
        worker = account_of_key(receipt.public_key)
        cap = esc["workers"].get(did_of_account(worker))
        if cap is None:
            return "the escrow does not name this worker"
        if job in self._claiming or self._nursery is None:
            return "" if job in self._claiming else "not ready"
        self._claiming.add(job)
        self._nursery.start_soon(self._settle_claim, job, worker, cap, receipt_bytes)
        return ""

    async def _settle_claim(self, job: str, worker: bytes, pay: int, receipt: bytes) -> None:
        try:
            await self.settle(job, [(worker, pay)], [receipt])
            self.stats["claims_settled"] += 1
            log.info(
                "job=%s: settled on the worker's claim: %d credits to %s", job, pay, did_of_account(worker)
            )
        except LedgerError as exc:
            log.warning("job=%s: could not settle a claim: %s", job, exc)
        finally:
            self._claiming.discard(job)

    # ------------------------------------------------------------------ own blocks
    async def commit(
        self, type_: BlockType, **fields: Any
    ) -> Block:
        """Sign, apply, persist (durably: journaled, see ``_persist_own``) and publish this node's
        next block.

        Raises:
            BlockRejected: the ledger refuses it (the reason says why: balance, frozen, ...).
        """
        block = self.ledger.next_block(self.identity, type_, timestamp_ms=unix_ms(), **fields)
        offer = self.ledger.offer(block)
        if offer.outcome is not Outcome.APPLIED:
            raise BlockRejected(
                f"{type_.name.lower()} refused: {offer.reason or offer.outcome.value}", reason=offer.reason
            )
        # no checkpoint between the offer and the journal unless the journal is full (then a later
        # block may be journaled first: recovery and the store take any order)
        await self._persist_own(block)
        self.stats["applied"] += len(offer.applied)
        self._changed()
        self._queue_publish(_BLOCK + encode_block(block))
        return block

    async def _persist_own(self, block: Block) -> None:
        """Make our new block survive a crash before anyone can see it: journal it (one write);
        ``_own_persister`` commits it to SQLite a little later, off the request path, with
        whatever else came meanwhile.  Without a running persister, commit it here and wait."""
        if self._own_send is None or self._journal is None:
            await self.store.append(block)
            return
        if self._journal.appended >= _JOURNAL_MAX:  # the disk is behind: wait for it (backpressure)
            await self._own_stored.wait()
        self._journal.append(encode_block(block))
        if not self._own_pending:
            self._own_stored = trio.Event()
            self._own_send.send_nowait(None)  # wake the persister (one wake-up per batch)
        self._own_pending += 1
        self._own_batch.append(block)

    async def _own_persister(self) -> None:
        """Commit our journaled blocks to SQLite, ``_OWN_DELAY_S`` after the first of a batch
        (a paid job makes two, a busy requester many: one transaction for all of them, in the
        time the node spends waiting for its workers).  Once all are stored the journal is
        emptied; a failed commit keeps it (the next start stores what it holds)."""
        assert self._own_recv is not None
        async for _ in self._own_recv:
            await trio.sleep(_OWN_DELAY_S)
            await self._store_own_batch()
            if self._own_pending and self._own_send is not None:
                self._own_send.send_nowait(None)  # more came during the commit: another round

    async def _store_own_batch(self) -> None:
        """Commit the journaled blocks waiting in ``_own_batch``; empty the journal when none is
        left pending (and no commit ever failed)."""
        batch, self._own_batch = self._own_batch, []
        if batch:
            try:
                await self.store.append_many(batch)
            except LedgerError as exc:
                self._own_failed = True
                log.error("ledger: storing %d of our blocks failed (they stay in the journal): %s",
                          len(batch), exc)
            self._own_pending -= len(batch)
        if not self._own_pending:
            if not self._own_failed and self._journal is not None:
                self._journal.reset()
            self._own_stored.set()

    async def transfer(self, to: str | bytes, amount: int) -> Block:
        return await self.commit(BlockType.TRANSFER, amount=amount, counterparty=to)

    async def stake(self, amount: int) -> Block:
        return await self.commit(BlockType.STAKE, amount=amount)

    async def unstake(self, amount: int) -> Block:
        return await self.commit(BlockType.UNSTAKE, amount=amount)

    # ------------------------------------------------------------------ escrow (requester side)
    def fee_of(self, paid: int) -> int:
        return settle_fee(paid, self.genesis.fee_bps)

    def lock_amount(self, max_pays: list[int]) -> int:
        """Enough to pay every named worker its max and the fee on it all (the ledger's rule)."""
        return lock_required(sum(max_pays), self.genesis.fee_bps)

    async def lock(self, job: str, amount: int, workers: list[tuple[bytes, int]], deadline_ms: int) -> Block:
        """Lock ``amount`` for ``job`` payable to ``workers`` (account, max pay).  The open escrow
        is itself the record of what is pending: a restart finds it in the ledger and resolves it."""
        return await self.commit(
            BlockType.ESCROW_LOCK, job=job, amount=amount, payments=workers, deadline_ms=deadline_ms
        )

    async def settle(self, job: str, payments: list[tuple[bytes, int]], receipts: list[bytes]) -> Block:
        return await self.commit(
            BlockType.SETTLE,
            job=job,
            payments=payments,
            evidence=receipts,
        )

    async def refund(self, job: str) -> Block | None:
        esc = self.ledger.escrow(self.account, job)
        if esc is None or esc["state"] != "open":
            await self.store.clear(job)
            return None
        return await self.commit(BlockType.REFUND, job=job)

    async def _refund_later(self, job: str, wait_s: float) -> None:
        await trio.sleep(wait_s)
        try:
            if await self.refund(job) is not None:
                log.info("job=%s: refunded after its deadline and grace (no claim came)", job)
        except LedgerError as exc:
            log.error("job=%s: refund failed: %s", job, exc)

    async def slash(self, job: str, offender: bytes, evidence: list[bytes]) -> Block | None:
        """Slash ``offender`` with receipts proving its replica lie (None if it has nothing staked)."""
        if self.ledger.account(offender)["staked"] <= 0 or self.ledger.frozen(offender):
            return None
        height = self.ledger.account(offender)["height"]
        return await self.commit(
            BlockType.SLASH, job=job, counterparty=offender, ref_height=height, evidence=evidence
        )

    async def resolve_pending(self) -> list[str]:
        """After a restart: every open escrow of ours is refunded once its deadline + grace has
        passed (until then a worker holding a receipt may claim it, and the claim settles it).
        Rows of the store's pending-settlement table, which older versions wrote, are cleared."""
        for stale in self.store.owed():
            await self.store.clear(stale.job)
        done = []
        for esc in self.ledger.open_escrows(self.account):
            job = esc["job"]
            wait_s = (int(esc["deadline_ms"]) + self.genesis.grace_ms - unix_ms()) / 1000
            if wait_s > 0 and self._nursery is not None:
                self._nursery.start_soon(self._refund_later, job, wait_s)
                continue
            try:
                await self.refund(job)
                done.append(job)
            except LedgerError as exc:
                log.error("ledger: could not refund pending job %s: %s", job, exc)
        if done:
            log.info("ledger: refunded %d escrow(s) left open before the restart", len(done))
        return done

    # ------------------------------------------------------------------ escrow (worker side)
    def chain_before(self, block: Block, count: int = 8, *, peer: str | None = None) -> tuple[bytes, ...]:
        """Our blocks before ``block`` (encoded, oldest first, at most ``count``): sent with a
        request so a worker that has not yet heard them by gossip need not fetch them.  With
        ``peer``, only those after the height that peer is known to hold (``peer_holds``): a
        worker that ran our last job needs just the settle made since."""
        start = max(1, block.height - count, self._peer_holds.get(peer, 0) + 1 if peer else 0)
        return tuple(
            encode_block(b) for b in self.ledger.blocks_from(self.account, start, block.height - start)
        )

    def peer_holds(self, peer: str, height: int) -> None:
        """``peer`` holds our chain up to ``height`` (it accepted our escrow_lock at that height)."""
        if height > self._peer_holds.get(peer, 0):
            self._peer_holds[peer] = height
            self._peer_holds.move_to_end(peer)
            while len(self._peer_holds) > 4096:
                self._peer_holds.popitem(last=False)

    async def accept_escrow(
        self, raw: bytes, *, requester_key_account: bytes, job: str, peer: str, chain: tuple[bytes, ...] = ()
    ) -> dict[str, Any]:
        """Check the escrow lock that came with a request; returns the open escrow.

        Raises:
            LedgerError: no valid lock for this job that names this node.
        """
        block = self._escrow_block(raw, requester_key_account, job)
        offer = await self._offer_lock(block, peer, chain)
        return self._escrow_accepted(block, offer, job, peer)

    async def _offer_lock(self, block: Block, peer: str, chain: tuple[bytes, ...]) -> Offer:
        """Offer a decoded lock (after its chain), fetching from ``peer`` what it waits for."""
        offer = self._offer_escrow(block, chain, peer)
        if offer.outcome is Outcome.HELD and offer.missing is not None:
            await self._fetch_chain(peer, *offer.missing)
            offer = self.ledger.offer(block)
        return offer

    def accept_escrow_now(
        self, raw: bytes, *, requester_key_account: bytes, job: str, peer: str, chain: tuple[bytes, ...] = ()
    ) -> dict[str, Any] | None:
        """``accept_escrow`` without awaiting (a worker's fast path), or None when the lock waits
        for blocks that must be fetched first (then ``await accept_escrow``)."""
        block = self._escrow_block(raw, requester_key_account, job)
        offer = self._offer_escrow(block, chain, peer)
        if offer.outcome is Outcome.HELD and offer.missing is not None:
            return None
        return self._escrow_accepted(block, offer, job, peer)

    def trust_escrow_now(
        self, raw: bytes, *, requester_key_account: bytes, job: str, peer: str, chain: tuple[bytes, ...] = ()
    ) -> dict[str, Any] | None:
        """The escrow terms of a lock taken on trust (escrow credit, see the module docstring), or
        None when this one must be checked first (``accept_escrow_now``): credit off, ``peer`` not
        a known payer or with a lock still unchecked, a max pay over the credit, or a lock this
        node already holds (checking that one costs nothing).  The caller answers the job, then
        calls ``check_later(peer)`` (always: it also frees the peer's credit).

        Raises:
            LedgerError: no lock, or not an escrow_lock of this job by this requester naming us.
        """
        if (self.escrow_credit <= 0 or peer not in self._known_payers or peer in self._unchecked
                or len(self._unchecked) >= _MAX_UNCHECKED):
            return None
        block = self._escrow_block(raw, requester_key_account, job)
        max_pay = next((p.amount for p in block.payments if p.account == self.account), None)
        if max_pay is None:
            raise LedgerError("the escrow does not name this node as a worker")
        if max_pay > self.escrow_credit or block.height <= self.ledger.height_of(block.account):
            return None
        self._unchecked[peer] = (block, job, chain)  # decoded once: the check reuses it
        self.stats["escrows_trusted"] += 1
        return {"state": "open", "amount": block.amount, "deadline_ms": block.deadline_ms, "max_pay": max_pay}

    def check_later(self, peer: str) -> None:
        """Check ``peer``'s lock taken on trust, if any (call it once the job's answer is out)."""
        if peer in self._unchecked and peer not in self._check_queued:
            self._check_queued.add(peer)
            self._check_send.send_nowait(peer)  # room: at most _MAX_UNCHECKED are ever unchecked

    async def _checker(self) -> None:
        """Check the locks taken on trust, as ``accept_escrow`` checks any lock."""
        async for peer in self._check_recv:
            self._check_queued.discard(peer)
            item = self._unchecked.get(peer)
            if item is None:
                continue
            try:
                await self._check_trusted(peer, *item)
            except Exception as exc:  # noqa: BLE001 - a bug here must not take the ledger down
                self._trust_lapsed(peer, item[1], f"the check broke: {exc!r}")
            finally:
                self._unchecked.pop(peer, None)
                self.stats["escrows_checked"] += 1
                self._changed()

    async def _check_trusted(self, peer: str, block: Block, job: str, chain: tuple[bytes, ...]) -> None:
        """The check ``accept_escrow`` makes, on a lock already answered (and decoded, and found
        to be this requester's lock of this job naming us, by ``trust_escrow_now``): it asks
        whether the lock is valid, not whether it is still open (the requester may have settled
        it since, and its next request may have brought the lock first)."""
        try:
            offer = await self._offer_lock(block, peer, chain)
            if offer.outcome is Outcome.HELD:  # its predecessors could not be had (yet): no verdict
                self._take_now(offer, peer)
                self._trust_lapsed(peer, job, offer.reason or "held")
                return
            self._escrow_accepted(block, offer, job, peer, must_be_open=False)
        except (LedgerError, RemoteProtocolError) as exc:
            self._trust_failed(peer, job, exc)

    def _trust_failed(self, peer: str, job: str, exc: Exception) -> None:
        """A lock taken on trust is invalid: it never entered the ledger, so no credit moved."""
        self.stats["escrows_failed_later"] += 1
        self._known_payers.pop(peer, None)
        self._owed_to_me.pop(job, None)  # no escrow to claim from
        self.nonpayers[peer] = self.nonpayers.get(peer, 0) + 1
        log.warning("job=%s: the escrow lock of %s, taken on trust, failed its check after the answer: %s "
                    "(a non-payment; its locks are checked first from now on)", job, peer, exc)

    def _trust_lapsed(self, peer: str, job: str, why: str) -> None:
        """No verdict on a lock taken on trust (its earlier blocks could not be fetched): not
        counted against the requester, but its next locks are checked first."""
        self._known_payers.pop(peer, None)
        log.info("job=%s: the escrow lock of %s, taken on trust, could not be checked yet (%s); its locks "
                 "are checked first from now on", job, peer, why)

    @staticmethod
    def _escrow_block(raw: bytes, requester_key_account: bytes, job: str) -> Block:
        if not raw:
            raise LedgerError(
                "this network has a ledger: a capsule needs an escrow_lock block; none was sent"
            )
        try:
            block = decode_block(raw)
        except RemoteProtocolError as exc:
            raise LedgerError(f"escrow block: {exc}") from None
        if (
            block.type is not BlockType.ESCROW_LOCK
            or block.job != job
            or block.account != requester_key_account
        ):
            raise LedgerError("escrow block is not an escrow_lock of this job by this requester")
        return block

    def _offer_escrow(self, block: Block, chain: tuple[bytes, ...], peer: str) -> Offer:
        """Offer the lock, after the requester's blocks sent along that we do not hold yet (the
        chain is the blocks just before the lock, oldest first; those we have are skipped
        undecoded).  A block of another account in the chain is ignored."""
        known = self.ledger.height_of(block.account)
        first_height = block.height - len(chain)
        if chain and block.height > known + 1:
            for i, prior in enumerate(chain[:16]):
                if first_height + i <= known:
                    continue  # we have it: skip without decoding
                try:
                    prior_block = decode_block(prior)
                except RemoteProtocolError:
                    break
                if prior_block.account == block.account:
                    self._take_now(self.ledger.offer(prior_block), peer)
        return self.ledger.offer(block)

    def _escrow_accepted(self, block: Block, offer: Offer, job: str, peer: str, *,
                         must_be_open: bool = True) -> dict[str, Any]:
        if offer.outcome in (Outcome.APPLIED, Outcome.HELD, Outcome.EQUIVOCATION):
            self._take_now(offer, peer)
        if offer.outcome not in (Outcome.APPLIED, Outcome.DUPLICATE):
            raise LedgerError(f"escrow lock not accepted: {offer.reason or offer.outcome.value}")
        terms = self.ledger.escrow_terms(block.account, job)
        if terms is None or (must_be_open and terms[0] != "open"):
            raise LedgerError(f"escrow for {job} is {terms[0] if terms else 'missing'}")
        state, amount, deadline_ms, workers = terms
        if self.account not in workers:
            raise LedgerError("the escrow does not name this node as a worker")
        if peer:
            self._known_payers[peer] = None
            self._known_payers.move_to_end(peer)
            while len(self._known_payers) > _MAX_KNOWN_PAYERS:
                self._known_payers.popitem(last=False)
        return {
            "state": state,
            "amount": amount,
            "deadline_ms": deadline_ms,
            "max_pay": workers[self.account],
        }

    # ------------------------------------------------------------------ views
    def frozen_key(self, public_key: bytes) -> bool:
        return self.ledger.frozen(account_of_key(public_key))

    def balance(self, did: str | None = None) -> dict[str, Any]:
        return self.ledger.account(did or self.account)

    def supply(self) -> dict[str, Any]:
        return self.ledger.supply()

    def state_hash(self) -> str:
        return self.ledger.state_hash().hex()

    async def audit(self) -> dict[str, Any]:
        """``verify``, once every block applied so far has reached the store."""
        await self.flush()
        live = self.state_hash()  # the live state now, when the store holds exactly what it applied
        return {**await trio.to_thread.run_sync(self.verify), "live_state_hash": live}

    def verify(self) -> dict[str, Any]:
        """Re-validate every stored block from genesis, signatures included (blocking: it reads
        the store on its own connection and builds a separate ledger; from trio use ``audit``)."""
        fresh = Ledger(self.genesis, verify_signatures=True, max_held=10_000_000)
        problems: list[str] = []
        blocks, proofs = self.store.load()
        for a, b in proofs:
            fresh.offer_proof(a, b)
        count = 0
        for block in blocks:
            count += 1
            offer = fresh.offer(block)
            if offer.outcome is Outcome.REJECTED and "frozen" not in offer.reason:
                problems.append(f"{did_of_account(block.account)}#{block.height}: {offer.reason}")
        if fresh.held():
            problems.append(f"{len(fresh.held())} stored block(s) still wait for a predecessor")
        replayed = fresh.state_hash().hex()
        supply = fresh.supply()
        if supply["balances"] + supply["escrow"] + supply["staked"] != supply["minted"]:
            problems.append("supply is not conserved")
        return {
            "ok": not problems,
            "state_hash": replayed,
            "blocks": count,
            "problems": problems[:20],
        }
