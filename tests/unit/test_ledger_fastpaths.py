"""The settle path's shortcuts stay safe: a block is trusted without a re-verify only when it is
the very object this ledger signed; a receipt is verified once, and only a valid one is
remembered; the store's leader commits keep group commit and call order."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from unittest import mock

import pytest
import trio

from inos_node import sigcache
from inos_node.economy import ledger as ledger_mod
from inos_node.economy.genesis import Genesis, create_genesis
from inos_node.economy.ledger import Ledger, Outcome, lock_required
from inos_node.economy.model import BlockType, account_of_key
from inos_node.economy.store import LedgerStore
from inos_node.identity import Identity
from inos_node.receipts import sign_body
from inos_node.types import Metrics
from inos_node.wire.delegation import ReceiptBody
from inos_node.wire.ledger import decode_block, encode_block, encode_receipt

A, B, W = (Identity(bytes([i]) * 32) for i in (41, 42, 43))
START = 1000


@pytest.fixture(scope="module")
def genesis() -> Genesis:
    doc, _ = create_genesis([(A.did, START), (B.did, START)], created_unix_ms=1)
    return Genesis.from_doc(doc)


def _receipt(job: str, *, signer: Identity = W) -> bytes:
    body = ReceiptBody(job_id=job, requester="r", worker="w", capsule="c", input_digest=b"i" * 32,
                       output_digest=b"o" * 32, cost=1, metrics=Metrics())
    return encode_receipt(sign_body(signer, body))


def _counting_verify(module):
    real = module.verify
    calls = []

    def counted(key, message, signature):
        calls.append(message)
        return real(key, message, signature)

    return mock.patch.object(module, "verify", counted), calls


def test_own_block_is_applied_without_reverifying_but_a_copy_is_verified(genesis):
    led = Ledger(genesis)
    patch, calls = _counting_verify(ledger_mod)
    with patch:
        own = led.next_block(A, BlockType.TRANSFER, amount=5, counterparty=B.did)
        assert led.offer(own).outcome is Outcome.APPLIED
        assert calls == [], "the block this ledger just signed is not verified again"
        other = Ledger(genesis)
        assert other.offer(decode_block(encode_block(own))).outcome is Outcome.APPLIED
        assert len(calls) == 1, "any other ledger (and any copy) verifies it"
        built = led.next_block(A, BlockType.TRANSFER, amount=5, counterparty=B.did)
        tampered = dataclasses.replace(built, signature=bytes(64))  # same body, not the object built
        res = led.offer(tampered)
        assert res.outcome is Outcome.REJECTED and res.reason == "bad signature"
        assert led.offer(built).outcome is Outcome.APPLIED


def test_built_blocks_never_offered_are_forgotten(genesis):
    led = Ledger(genesis)
    for i in range(ledger_mod._MAX_BUILT + 10):
        led.next_block(A, BlockType.TRANSFER, amount=1 + i, counterparty=B.did)
    assert len(led._built) == ledger_mod._MAX_BUILT


def test_a_receipt_is_verified_once_per_settle(genesis):
    led = Ledger(genesis)
    price = 10
    lock = led.next_block(A, BlockType.ESCROW_LOCK, amount=lock_required(price, genesis.fee_bps), job="j",
                          payments=[(account_of_key(W.public_key), price)], deadline_ms=10**13)
    assert led.offer(lock).outcome is Outcome.APPLIED
    patch, calls = _counting_verify(sigcache)
    with patch:
        settle = led.next_block(A, BlockType.SETTLE, job="j", payments=[(W.did, price)],
                                evidence=[_receipt("j")])
        assert led.offer(settle).outcome is Outcome.APPLIED
        replica = Ledger(genesis)
        assert replica.offer(decode_block(encode_block(lock))).outcome is Outcome.APPLIED
        assert replica.offer(decode_block(encode_block(settle))).outcome is Outcome.APPLIED
    assert len(calls) <= 1, "building, applying and a replica's check share one verification"


def test_only_valid_signatures_are_remembered_and_the_cache_is_bounded():
    cache = sigcache.VerifiedCache(size=3)
    message = b"m" * 32
    good = W.sign(message)
    bad = bytes(64)
    assert cache.verify(W.public_key, message, bad) is False
    assert cache.verify(W.public_key, message, bad) is False and len(cache) == 0
    assert cache.verify(W.public_key, message, good) is True and cache.misses == 3
    assert cache.verify(W.public_key, message, good) is True and cache.hits == 1
    # the same bytes split differently are another key: a shifted key/signature is not a hit
    assert cache.verify(W.public_key[:31], W.public_key[31:] + good[:63], good[63:] + message) is False
    for i in range(5):
        m = bytes([i]) * 32
        assert cache.verify(W.public_key, m, W.sign(m))
    assert len(cache) == 3
    with pytest.raises(ValueError, match="size"):
        sigcache.VerifiedCache(size=0)


def _blocks(genesis: Genesis, n: int) -> list:
    led = Ledger(genesis, verify_signatures=False)
    out = []
    for i in range(n):
        block = led.next_block(A, BlockType.TRANSFER, amount=1, counterparty=B.did, timestamp_ms=i)
        led.offer(block)
        out.append(block)
    return out


async def test_trio_leader_groups_ready_tasks_into_one_commit(tmp_path: Path, genesis: Genesis) -> None:
    blocks = _blocks(genesis, 40)
    store = LedgerStore.open(tmp_path, genesis)
    called: list[int] = []

    async def one(block) -> None:
        called.append(block.height)
        assert await store.append(block) is True

    async with trio.open_nursery() as nursery:
        for block in blocks:
            nursery.start_soon(one, block)
    stats = store.statistics()
    assert await store.append(blocks[0]) is False, "a stored block is not stored twice"
    await store.aclose()
    assert stats["writes"] == 40
    assert stats["commits"] < 40, "the tasks that were ready shared a transaction"
    with LedgerStore.open(tmp_path, genesis) as again:
        assert [b.height for b in again.load()[0]] == called


def test_threads_and_duplicates_with_a_reopened_store(tmp_path: Path, genesis: Genesis) -> None:
    blocks = _blocks(genesis, 6)
    with LedgerStore.open(tmp_path, genesis) as store:
        assert [store.append_sync(b) for b in blocks[:3]] == [True] * 3
    with LedgerStore.open(tmp_path, genesis) as store:  # the stored hashes are known after a reopen
        assert store.append_sync(blocks[1]) is False
        assert store.append_sync(blocks[3], clear="nothing") is True  # two statements: one transaction
        assert [store.append_sync(b) for b in blocks[4:]] == [True, True]
        assert store.count() == 6
