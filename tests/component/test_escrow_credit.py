"""Escrow credit, on a running LedgerNode (real SQLite store, its trio tasks): a requester whose
escrow the worker already checked may have one more small lock taken on trust, answered first
and checked right after; a lock that fails that check costs the requester the trust, and the
ledger never holds it."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio

from inos_node.economy.genesis import Genesis, create_genesis
from inos_node.economy.ledger import Ledger, Outcome, lock_required
from inos_node.economy.model import Block, BlockType, account_of_key
from inos_node.economy.node import LedgerNode
from inos_node.errors import LedgerError
from inos_node.identity import Identity
from inos_node.net.host import peer_id_from_public_key
from inos_node.receipts import sign_receipt
from inos_node.types import Metrics
from inos_node.wire.ledger import encode_block

ME, WORKER, OTHER = Identity(b"\x01" * 32), Identity(b"\x02" * 32), Identity(b"\x03" * 32)
PEER = peer_id_from_public_key(ME.public_key)  # the requester, as the worker sees it
ACCOUNT = account_of_key(ME.public_key)

pytestmark = pytest.mark.trio


class Requester:
    """ME's side: builds and signs its blocks on a ledger of its own."""

    def __init__(self, genesis: Genesis) -> None:
        self.genesis = genesis
        self.ledger = Ledger(genesis)

    def _made(self, block: Block) -> Block:
        assert self.ledger.offer(block).outcome is Outcome.APPLIED
        return block

    def lock(self, job: str, max_pay: int = 1, worker: Identity = WORKER) -> Block:
        return self._made(self.ledger.next_block(
            ME, BlockType.ESCROW_LOCK, amount=lock_required(max_pay, self.genesis.fee_bps), job=job,
            payments=[(account_of_key(worker.public_key), max_pay)], deadline_ms=2**40))

    def refund(self, job: str) -> Block:
        return self._made(self.ledger.next_block(ME, BlockType.REFUND, job=job))


def _network() -> Genesis:
    doc, _ = create_genesis({ME.did: 1_000_000}, created_unix_ms=1)
    return Genesis.from_doc(doc)


def _forged(block: Block) -> Block:  # the same block, one bit of its signature flipped
    sig = bytearray(block.signature)
    sig[0] ^= 1
    return dataclasses.replace(block, signature=bytes(sig))


def _trust(node: LedgerNode, block: Block) -> dict | None:
    return node.trust_escrow_now(encode_block(block), requester_key_account=ACCOUNT, job=block.job, peer=PEER)


def _accept(node: LedgerNode, block: Block) -> dict | None:
    return node.accept_escrow_now(encode_block(block), requester_key_account=ACCOUNT, job=block.job, peer=PEER)


@asynccontextmanager
async def _worker(tmp_path: Path, credit: int = 10) -> AsyncIterator[tuple[LedgerNode, Requester]]:
    """A running worker (WORKER, ``escrow_credit=credit``) that has checked and taken ME's first
    lock (job-1): ME is a known payer (with credit 0 that changes nothing).  Yields (the worker,
    ME's side)."""
    genesis = _network()
    req = Requester(genesis)
    node = LedgerNode(genesis, WORKER, tmp_path, escrow_credit=credit)
    async with node.open(), trio.open_nursery() as nursery:
        await nursery.start(node.run)
        first = req.lock("job-1")
        assert _trust(node, first) is None, "a requester never checked before is checked first"
        assert _accept(node, first)["state"] == "open"
        yield node, req
        nursery.cancel_scope.cancel()


async def _checked(node: LedgerNode) -> None:
    """Run the check of PEER's lock taken on trust, and wait for its verdict."""
    node.check_later(PEER)
    with trio.fail_after(10):
        while node.stats["escrows_trusted"] > node.stats["escrows_checked"]:
            await node.changed.wait()


async def test_a_known_payer_is_answered_before_its_lock_is_checked_and_the_check_follows(tmp_path: Path):
    async with _worker(tmp_path) as (node, req):
        second = req.lock("job-2")
        terms = _trust(node, second)
        assert terms == {"state": "open", "amount": second.amount, "deadline_ms": 2**40, "max_pay": 1}
        assert node.ledger.height_of(ACCOUNT) == 1, "taken on trust: nothing applied yet"
        assert _trust(node, second) is None, "one lock at a time on trust per requester"
        await _checked(node)
        assert node.ledger.height_of(ACCOUNT) == 2
        assert node.ledger.escrow(ACCOUNT, "job-2")["state"] == "open"
        assert (node.stats["escrows_trusted"], node.stats["escrows_failed_later"]) == (1, 0)

        third = req.lock("job-3", max_pay=11)
        assert _trust(node, third) is None, "over the credit: checked first"
        assert _accept(node, third)["max_pay"] == 11
        assert _trust(node, req.lock("job-4")) is not None, "still a known payer"
        await _checked(node)
        with pytest.raises(LedgerError, match="does not name this node"):
            _trust(node, req.lock("job-5", worker=OTHER))


async def test_without_credit_every_lock_is_checked_first(tmp_path: Path):
    async with _worker(tmp_path, credit=0) as (node, req):
        assert _trust(node, req.lock("job-2")) is None


async def test_a_lock_that_fails_its_check_costs_the_requester_its_trust(tmp_path: Path):
    async with _worker(tmp_path) as (node, req):
        supply = node.supply()
        real = req.lock("job-2")
        assert _trust(node, _forged(real)) is not None  # answered on trust...
        receipt = sign_receipt(WORKER, job_id="job-2", requester=PEER, worker=peer_id_from_public_key(
            WORKER.public_key), capsule="system.echo", input_digest=bytes(32), output=b"x", cost=1,
            metrics=Metrics())
        node.expect_payment(PEER, "job-2", receipt, 2**40)
        await _checked(node)  # ...and then the signature does not verify
        assert node.stats["escrows_failed_later"] == 1
        assert node.ledger.height_of(ACCOUNT) == 1, "the forged lock never entered the ledger"
        assert node.supply() == supply
        assert node.nonpayers[PEER] == 1
        assert "job-2" not in node._owed_to_me, "no claim on an escrow that does not exist"
        assert _trust(node, real) is None, "no longer trusted: the real lock is checked first"
        assert _accept(node, real)["state"] == "open"


async def test_a_lock_settled_or_refunded_before_its_check_passes_it(tmp_path: Path):
    """By the time the check runs, the lock may be in the ledger already and closed (the requester
    refunded or settled it, and its next request or gossip brought those blocks first): the
    check asks whether the lock is valid, not whether it is still open."""
    async with _worker(tmp_path) as (node, req):
        lock = req.lock("job-2")
        assert _trust(node, lock) is not None
        refund = req.refund("job-2")
        node.on_message(b"B" + encode_block(lock), "peer-x")
        node.on_message(b"B" + encode_block(refund), "peer-x")
        with trio.fail_after(10):
            while node.ledger.height_of(ACCOUNT) < 3:
                await node.changed.wait()
        await _checked(node)
        assert node.stats["escrows_failed_later"] == 0
        assert _trust(node, req.lock("job-3")) is not None, "still a known payer"


async def test_a_lock_whose_earlier_blocks_cannot_be_had_gets_no_verdict_and_no_more_trust(tmp_path: Path):
    """Checked after the answer, a lock may wait for blocks the worker cannot fetch (the requester
    went away): that proves nothing against the requester (no non-payment), but its next locks are
    checked first."""
    async with _worker(tmp_path) as (node, req):  # not attached: no peer to fetch from
        req.refund("job-1")  # height 2: never sent to the worker
        lock = req.lock("job-2")
        assert _trust(node, lock) is not None
        await _checked(node)
        assert node.stats["escrows_failed_later"] == 0 and PEER not in node.nonpayers
        assert node.ledger.height_of(ACCOUNT) == 1, "the lock waits for height 2"
        assert _trust(node, req.lock("job-3")) is None, "checked first from now on"
