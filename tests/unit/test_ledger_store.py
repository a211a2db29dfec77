"""The ledger's SQLite store: round trips, group commit, reopen, network checks, settlements."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
import trio
import trio.testing

from inos_node.economy.genesis import Genesis, create_genesis
from inos_node.economy.model import ZERO_HASH, Block, BlockType, account_of_key, block_hash, sign_block
from inos_node.economy.store import FILE_NAME, LedgerStore, Owed, StoreError
from inos_node.identity import Identity
from inos_node.wire.ledger import encode_block

ALICE, BOB = Identity(b"a" * 32), Identity(b"b" * 32)
START = 1_000_000


def _genesis() -> Genesis:
    doc, _ = create_genesis({ALICE.did: START, BOB.did: START}, created_unix_ms=1)
    return Genesis.from_doc(doc)


@pytest.fixture(scope="module")
def genesis() -> Genesis:
    return _genesis()


def _chain(who: Identity, to: Identity, n: int, *, start: int = 1,
           previous: bytes = ZERO_HASH) -> list[Block]:
    """``n`` signed transfers of 1 credit from ``who`` to ``to``, heights start..start+n-1."""
    out = []
    for height in range(start, start + n):
        block = sign_block(Block(
            account=account_of_key(who.public_key), public_key=who.public_key, height=height,
            previous=previous,
            type=BlockType.TRANSFER, amount=1, counterparty=account_of_key(to.public_key), job="",
            timestamp_ms=height, credits=START, balance=START - height), who.sign)
        previous = block_hash(block)
        out.append(block)
    return out


def test_append_load_round_trip_in_order(tmp_path: Path, genesis: Genesis) -> None:
    blocks = _chain(ALICE, BOB, 5)
    with LedgerStore.open(tmp_path, genesis) as store:
        assert store.path == tmp_path / FILE_NAME
        assert [store.append_sync(b) for b in blocks[:3]] == [True, True, True]
        assert store.append_sync(encode_block(blocks[3])) is True  # encoded bytes are accepted too
        assert store.append_sync(blocks[4]) is True
        assert store.append_sync(blocks[2]) is False, "a block already stored is not stored twice"
        loaded, proofs = store.load()
        got = list(loaded)
    assert [block_hash(b) for b in got] == [block_hash(b) for b in blocks]
    assert got == blocks
    assert proofs == []
    assert (tmp_path / FILE_NAME).stat().st_mode & 0o777 == 0o600


def test_reopen_keeps_everything(tmp_path: Path, genesis: Genesis) -> None:
    blocks = _chain(ALICE, BOB, 4)
    fork = _chain(ALICE, ALICE, 1, start=4, previous=block_hash(blocks[2]))[0]  # same height 4, other block
    with LedgerStore.open(tmp_path, genesis) as store:
        for b in blocks:
            store.append_sync(b)
        assert store.append_sync(fork) is True, "both branches of a fork are stored until cut"
        assert store.append_proof_sync(blocks[3], fork) is True
        assert store.append_proof_sync(fork, blocks[3]) is False, "a proof is stored once, whatever its order"
        store.owe_sync("job-1", "locked", b"\x01")
    with LedgerStore.open(tmp_path / FILE_NAME, genesis, synchronous="full") as store:
        loaded, proofs = store.load()
        assert [block_hash(b) for b in loaded] == [block_hash(b) for b in [*blocks, fork]]
        pair = {block_hash(proofs[0][0]), block_hash(proofs[0][1])}
        assert pair == {block_hash(blocks[3]), block_hash(fork)}
        assert store.owed() == [Owed("job-1", "locked", b"\x01")]
        assert store.count() == 5


def test_foreign_network_is_refused_naming_both_ids(tmp_path: Path, genesis: Genesis) -> None:
    LedgerStore.open(tmp_path, genesis).close()
    other = _genesis()  # same allocations, fresh genesis key: another network
    with pytest.raises(StoreError) as info:
        LedgerStore.open(tmp_path, other)
    assert info.value.found == genesis.network_id.hex()
    assert info.value.expected == other.network_id.hex()
    assert genesis.network_id.hex() in str(info.value) and other.network_id.hex() in str(info.value)


def test_bad_options_and_bad_files(tmp_path: Path, genesis: Genesis) -> None:
    with pytest.raises(StoreError, match="synchronous must be 'normal' or 'full', got 'off'"):
        LedgerStore.open(tmp_path, genesis, synchronous="off")
    junk = tmp_path / "junk.sqlite3"
    junk.write_bytes(b"not a database at all" * 100)
    with pytest.raises(StoreError, match="junk.sqlite3.*file is not a database"):
        LedgerStore.open(junk, genesis)


def test_closed_store_refuses_writes(tmp_path: Path, genesis: Genesis) -> None:
    store = LedgerStore.open(tmp_path, genesis)
    store.close()
    store.close()  # idempotent
    with pytest.raises(StoreError, match="closed"):
        store.append_sync(_chain(ALICE, BOB, 1)[0])


def test_pending_settlements(tmp_path: Path, genesis: Genesis) -> None:
    lock, settle = _chain(ALICE, BOB, 2)
    with LedgerStore.open(tmp_path, genesis) as store:
        assert store.owed() == []
        store.append_sync(lock, owe=Owed("job-7", "locked", b"workers"))
        store.owe_sync("job-8", "locked")
        store.owe_sync("job-8", "settling", b"r")  # an update replaces the state
        assert store.owed() == [Owed("job-7", "locked", b"workers"), Owed("job-8", "settling", b"r")]
        store.append_sync(settle, clear="job-7")  # the block and the clear commit together
        assert store.clear_sync("job-8") is True
        assert store.clear_sync("job-8") is False
        assert store.owed() == []


async def test_trio_appends_are_group_committed(tmp_path: Path, genesis: Genesis) -> None:
    blocks = _chain(ALICE, BOB, 200)
    store = LedgerStore.open(tmp_path, genesis)
    # Another connection holds the write lock, so the writer's first transaction waits and every
    # other append queues behind it: the next transaction must take them all at once.
    blocker = sqlite3.connect(store.path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    results: list[bool] = []
    called: list[int] = []  # trio may start the tasks in any order: record the order of the calls

    async def one(block: Block) -> None:
        called.append(block.height)
        results.append(await store.append(block))

    async with trio.open_nursery() as nursery:
        for block in blocks:
            nursery.start_soon(one, block)
        await trio.testing.wait_all_tasks_blocked()
        blocker.execute("ROLLBACK")
        blocker.close()
    stats = store.statistics()
    await store.aclose()
    assert results == [True] * 200
    assert stats["writes"] == 200
    # The writer's first transaction took what was queued when it woke (at least one append) and
    # waited for the lock; everything else was queued by then and went into the second.
    assert stats["commits"] <= 2, "the 200 appends went into one or two transactions"
    with LedgerStore.open(tmp_path, genesis) as again:
        loaded, _ = again.load()
        assert [b.height for b in loaded] == called, "appends commit in call order"


async def test_trio_owe_clear_and_full_queue_keeps_order(tmp_path: Path, genesis: Genesis) -> None:
    blocks = _chain(ALICE, BOB, 50)
    store = LedgerStore.open(tmp_path, genesis, max_queue=4, max_batch=3)
    called: list[int] = []

    async def one(block: Block) -> None:
        called.append(block.height)
        assert await store.append(block) is True

    async with trio.open_nursery() as nursery:
        for block in blocks:  # 50 callers, room for 4: most wait for room, still in call order
            nursery.start_soon(one, block)
    await store.owe("job-1", "locked", b"x")
    assert store.owed() == [Owed("job-1", "locked", b"x")]
    assert await store.clear("job-1") is True
    assert store.statistics()["largest_batch"] <= 3
    await store.aclose()
    with LedgerStore.open(tmp_path, genesis) as again:
        loaded, _ = again.load()
        assert [b.height for b in loaded] == called


async def test_append_many_is_one_transaction_and_skips_what_is_stored(tmp_path: Path, genesis: Genesis) -> None:
    blocks = _chain(ALICE, BOB, 6)
    with LedgerStore.open(tmp_path, genesis) as store:
        await store.append(blocks[0])
        commits = store.statistics()["commits"]
        await store.append_many(blocks)  # the first is already stored: skipped, not an error
        assert store.statistics()["commits"] == commits + 1
        await store.append_many([])
        assert store.statistics()["commits"] == commits + 1
        loaded, _ = store.load()
        assert [block_hash(b) for b in loaded] == [block_hash(b) for b in blocks]
