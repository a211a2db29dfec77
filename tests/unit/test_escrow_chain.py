"""What a requester sends along with an escrow lock: its blocks the worker is not known to hold."""

from __future__ import annotations

from pathlib import Path

from inos_node.economy.genesis import Genesis, create_genesis
from inos_node.economy.ledger import Ledger, Outcome
from inos_node.economy.model import BlockType
from inos_node.economy.node import LedgerNode
from inos_node.identity import Identity
from inos_node.wire.ledger import decode_block

ME, WORKER = Identity(b"\x01" * 32), Identity(b"\x02" * 32)


def _node(tmp_path: Path, blocks: int) -> tuple[LedgerNode, list]:
    doc, _ = create_genesis({ME.did: 1_000_000, WORKER.did: 1_000}, created_unix_ms=1)
    genesis = Genesis.from_doc(doc)
    node = LedgerNode(genesis, ME, tmp_path)
    node.ledger = Ledger(genesis)  # the pure core is all chain_before reads
    made = []
    for i in range(blocks):
        block = node.ledger.next_block(ME, BlockType.TRANSFER, amount=1, counterparty=WORKER.did, timestamp_ms=i)
        assert node.ledger.offer(block).outcome is Outcome.APPLIED
        made.append(block)
    return node, made


def _heights(chain: tuple[bytes, ...]) -> list[int]:
    return [decode_block(raw).height for raw in chain]


def test_a_worker_gets_at_most_8_blocks_then_only_what_came_after_its_last_lock(tmp_path: Path) -> None:
    node, made = _node(tmp_path, 12)
    lock = made[-1]  # stands for the escrow_lock at height 12
    assert _heights(node.chain_before(lock)) == list(range(4, 12))
    assert _heights(node.chain_before(lock, peer="w")) == list(range(4, 12)), "an unknown peer: up to 8"
    node.peer_holds("w", 10)  # it ran a job whose lock was at height 10
    assert _heights(node.chain_before(lock, peer="w")) == [11]
    node.peer_holds("w", 7)  # an older acknowledgement never moves it back
    assert _heights(node.chain_before(lock, peer="w")) == [11]
    node.peer_holds("w", 11)
    assert node.chain_before(lock, peer="w") == ()
    assert _heights(node.chain_before(lock, peer="other")) == list(range(4, 12))


def test_the_first_blocks_of_a_chain(tmp_path: Path) -> None:
    node, made = _node(tmp_path, 3)
    assert _heights(node.chain_before(made[0])) == []
    assert _heights(node.chain_before(made[2], peer="w")) == [1, 2]
