"""A running LedgerNode (real SQLite store, its trio tasks) checks the signature of every block a
peer hands it: by gossip, and with an escrow lock.  Its own store is replayed without
re-checking; that must not switch the checks off for what arrives afterwards."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import trio

from inos_node.economy.genesis import Genesis, create_genesis
from inos_node.economy.ledger import Ledger, Outcome
from inos_node.economy.model import BlockType, account_of_key
from inos_node.economy.node import LedgerNode
from inos_node.errors import LedgerError
from inos_node.identity import Identity
from inos_node.wire.ledger import encode_block

ME, WORKER = Identity(b"\x01" * 32), Identity(b"\x02" * 32)


def _forged(block):  # the same block, one bit of its signature flipped
    sig = bytearray(block.signature)
    sig[0] ^= 1
    return dataclasses.replace(block, signature=bytes(sig))


def _requester_chain(transfer_amount: int) -> tuple[Genesis, Ledger, bytes, object, object]:
    """A network funding ME and WORKER, and ME's first two blocks built on a ledger of its own:
    a transfer to WORKER, then an escrow_lock for job-1 naming WORKER (max pay 100)."""
    doc, _ = create_genesis({ME.did: 1_000_000, WORKER.did: 1_000}, created_unix_ms=1)
    genesis = Genesis.from_doc(doc)
    mine = Ledger(genesis)  # the requester's side: builds and signs ME's blocks
    transfer = mine.next_block(ME, BlockType.TRANSFER, amount=transfer_amount, counterparty=WORKER.did,
                               timestamp_ms=1)
    assert mine.offer(transfer).outcome is Outcome.APPLIED
    lock = mine.next_block(ME, BlockType.ESCROW_LOCK, amount=200, job="job-1",
                           payments=[(account_of_key(WORKER.public_key), 100)], deadline_ms=2**40)
    assert mine.offer(lock).outcome is Outcome.APPLIED
    return genesis, mine, account_of_key(ME.public_key), transfer, lock


async def _wait_height(node: LedgerNode, account: bytes, height: int) -> None:
    with trio.fail_after(10):
        while node.ledger.height_of(account) < height:
            await node.changed.wait()


@pytest.mark.trio
async def test_forged_blocks_from_peers_are_rejected_after_a_restart_too(tmp_path: Path) -> None:
    genesis, mine, me, transfer, lock = _requester_chain(500_000)

    for attempt in range(2):  # a fresh data dir, then the same one reopened (replayed from SQLite)
        node = LedgerNode(genesis, WORKER, tmp_path)
        async with node.open(), trio.open_nursery() as nursery:
            await nursery.start(node.run)
            if attempt == 0:
                # by gossip: the forged copy first, then the real block; once the real one is
                # applied, the forged one has been dealt with (one inbox, in order)
                node.on_message(b"B" + encode_block(_forged(transfer)), "peer-x")
                node.on_message(b"B" + encode_block(transfer), "peer-x")
                await _wait_height(node, me, 1)
                assert node.stats["rejected"] == 1
                assert node.balance(WORKER.did)["balance"] == 501_000
                # with a request: a forged lock is refused, the real one opens the escrow
                with pytest.raises(LedgerError, match="bad signature"):
                    node.accept_escrow_now(encode_block(_forged(lock)), requester_key_account=me,
                                           job="job-1", peer="peer-x")
                assert node.ledger.height_of(me) == 1
                escrow = node.accept_escrow_now(encode_block(lock), requester_key_account=me, job="job-1",
                                                peer="peer-x")
                assert escrow is not None and escrow["state"] == "open" and escrow["max_pay"] == 100
                await node.flush()
            else:
                assert node.ledger.height_of(me) == 2, "the accepted blocks were stored"
                assert node.ledger.verify_signatures
                refund = mine.next_block(ME, BlockType.REFUND, job="job-1")
                node.on_message(b"B" + encode_block(_forged(refund)), "peer-x")
                node.on_message(b"B" + encode_block(refund), "peer-x")
                await _wait_height(node, me, 3)
                assert node.stats["rejected"] == 1
            nursery.cancel_scope.cancel()


@pytest.mark.trio
async def test_an_escrow_with_earlier_blocks_checks_every_signature(tmp_path: Path) -> None:
    """The blocks sent before a lock are checked like the lock: a forged one among them is
    refused, and says why; the real ones are taken."""
    genesis, _, me, transfer, lock = _requester_chain(10)

    def accept(node: LedgerNode, lock_block, prior):
        return node.accept_escrow_now(encode_block(lock_block), requester_key_account=me, job="job-1",
                                      peer="peer-x", chain=(encode_block(prior),))

    for case in ("forged earlier block", "forged lock", "both real"):
        node = LedgerNode(genesis, WORKER, tmp_path / case.replace(" ", "-"))  # a fresh worker each time
        async with node.open(), trio.open_nursery() as nursery:
            await nursery.start(node.run)
            if case == "forged earlier block":  # refused, so the lock waits for the real one (None: fetch it)
                assert accept(node, lock, _forged(transfer)) is None
                assert node.stats["rejected"] == 1 and node.ledger.height_of(me) == 0
            elif case == "forged lock":  # the earlier block is taken, the lock refused
                with pytest.raises(LedgerError, match="bad signature"):
                    accept(node, _forged(lock), transfer)
                assert node.ledger.height_of(me) == 1
            else:
                escrow = accept(node, lock, transfer)
                assert escrow is not None and escrow["state"] == "open"
                assert node.ledger.height_of(me) == 2
            nursery.cancel_scope.cancel()


@pytest.mark.trio
async def test_own_blocks_left_in_the_journal_are_stored_on_the_next_start(tmp_path: Path) -> None:
    """A crash after a block was journaled (so it may have left the node) but before its SQLite
    commit: the next start applies and stores it, so the node never signs that height again."""
    from inos_node.economy.journal import JOURNAL_NAME, OwnJournal

    doc, _ = create_genesis({ME.did: 1_000_000, WORKER.did: 1_000}, created_unix_ms=1)
    genesis = Genesis.from_doc(doc)
    node = LedgerNode(genesis, ME, tmp_path)
    async with node.open(), trio.open_nursery() as nursery:  # one block stored the normal way
        await nursery.start(node.run)
        first = await node.transfer(WORKER.did, 5)
        await node.flush()
        nursery.cancel_scope.cancel()
    assert OwnJournal(tmp_path / JOURNAL_NAME).recover() == [], "emptied once stored"

    # the crash: two more blocks of ours journaled, never committed to SQLite
    mine = Ledger(genesis)
    assert mine.offer(first).outcome is Outcome.APPLIED
    lost = []
    for amount in (6, 7):
        block = mine.next_block(ME, BlockType.TRANSFER, amount=amount, counterparty=WORKER.did, timestamp_ms=2)
        assert mine.offer(block).outcome is Outcome.APPLIED
        lost.append(block)
    journal = OwnJournal(tmp_path / JOURNAL_NAME)
    for raw in (encode_block(first), *(encode_block(b) for b in lost)):  # the stored one may be there too
        journal.append(raw)
    journal.close()

    node = LedgerNode(genesis, ME, tmp_path)
    async with node.open(), trio.open_nursery() as nursery:
        me = account_of_key(ME.public_key)
        assert node.ledger.height_of(me) == 3
        assert node.balance(WORKER.did)["balance"] == 1_000 + 5 + 6 + 7
        assert OwnJournal(tmp_path / JOURNAL_NAME).recover() == []
        await nursery.start(node.run)
        nxt = await node.transfer(WORKER.did, 1)  # the next height, not a second block at 2 or 3
        assert nxt.height == 4
        nursery.cancel_scope.cancel()
    again = await trio.to_thread.run_sync(lambda: __import__("inos_node.economy.store", fromlist=["x"])
                                          .LedgerStore.open(tmp_path / "ledger.sqlite3", genesis))
    try:
        assert again.replay(genesis).height_of(me) == 4, "all four are in SQLite"
    finally:
        again.close()


@pytest.mark.trio
async def test_journal_records_out_of_order_are_all_recovered(tmp_path: Path) -> None:
    """Two tasks committing at once may journal in the other order (one waited for room): the
    start applies both anyway, the later one once the earlier one is in, and stores both."""
    from inos_node.economy.journal import JOURNAL_NAME, OwnJournal
    from inos_node.economy.store import LedgerStore

    doc, _ = create_genesis({ME.did: 1_000_000, WORKER.did: 1_000}, created_unix_ms=1)
    genesis = Genesis.from_doc(doc)
    mine = Ledger(genesis)
    blocks = []
    for amount in (1, 2, 3):
        block = mine.next_block(ME, BlockType.TRANSFER, amount=amount, counterparty=WORKER.did, timestamp_ms=1)
        assert mine.offer(block).outcome is Outcome.APPLIED
        blocks.append(block)
    journal = OwnJournal(tmp_path / JOURNAL_NAME)
    for block in (blocks[0], blocks[2], blocks[1]):
        journal.append(encode_block(block))
    journal.close()

    node = LedgerNode(genesis, ME, tmp_path)
    async with node.open():
        assert node.ledger.height_of(account_of_key(ME.public_key)) == 3
    assert OwnJournal(tmp_path / JOURNAL_NAME).recover() == [], "all applied: emptied"
    with LedgerStore.open(tmp_path / "ledger.sqlite3", genesis) as store:
        assert store.count() == 3


async def test_own_blocks_are_gossiped_in_batches_of_at_most_64_and_a_lone_one_after_the_window(
        tmp_path: Path, autojump_clock: trio.abc.Clock) -> None:
    """The publisher coalesces our blocks: 150 made at once go out as 64 + 64 + 22 (a full batch
    at once), one made alone goes out by itself once the batching window has passed; every
    message decodes to our blocks, in order."""
    from inos_node.economy import node as node_module

    doc, _ = create_genesis({ME.did: 1_000_000, WORKER.did: 1_000}, created_unix_ms=1)
    genesis = Genesis.from_doc(doc)
    sent: list[tuple[float, list[bytes]]] = []
    got_one = trio.Event()

    class Gossip:
        async def publish(self, topic: str, message: bytes) -> None:
            items = node_module.decode_batch(message) if message[:1] == node_module._BATCH else [message]
            sent.append((trio.current_time(), items))
            got_one.set()

    node = LedgerNode(genesis, ME, tmp_path)
    async with node.open(), trio.open_nursery() as nursery:
        node.attach(Gossip(), None, list)
        await nursery.start(node.run)
        blocks = [await node.transfer(WORKER.did, 1) for _ in range(150)]
        with trio.fail_after(1):
            while sum(len(items) for _, items in sent) < 150:
                got_one = trio.Event()
                await got_one.wait()
        assert [len(items) for _, items in sent] == [64, 64, 22]
        assert [i for _, items in sent for i in items] == [node_module._BLOCK + encode_block(b) for b in blocks]
        assert sent[0][0] < node_module._BATCH_WINDOW_S, "a full batch does not wait for the window"
        start = trio.current_time()
        sent.clear()
        got_one = trio.Event()
        lone = await node.transfer(WORKER.did, 1)
        with trio.fail_after(1):
            await got_one.wait()
        assert sent == [(sent[0][0], [node_module._BLOCK + encode_block(lone)])]
        assert sent[0][0] - start >= node_module._BATCH_WINDOW_S
        nursery.cancel_scope.cancel()
