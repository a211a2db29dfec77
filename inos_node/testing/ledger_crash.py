"""A ledger writer to be killed: the child process of the store's crash test.

    python -m inos_node.testing.ledger_crash --data-dir D --genesis FILE --seed HEX [--seed HEX ...]

It opens ``D/ledger.sqlite3``, replays it (as a restarted node does), prints one line
``{"event": "ready", "blocks": N, "state_hash": HEX}``, then runs one trio task per seed: each
builds its account's next transfer (1 credit to the next account), applies it to the in-memory
ledger, appends it to the store (all tasks share the writer, so their appends are group
committed) and, once the append returned (durable), prints ``durable <block hash hex>``.  It
runs until killed, or until ``--max-blocks`` have been written.

Transfers credit the next account, whose own next block declares the credits it has seen:
blocks depend on each other across accounts, which is what makes commit order matter.

With ``--node`` it is a running ``LedgerNode`` instead (the first seed's account; its blocks are
journaled, then committed to SQLite in batches): ``durable`` is printed when ``commit`` returns,
which is when the block may leave the node.  Its ``ready`` line comes after the journal's
recovery.
"""

from __future__ import annotations

import argparse
import json
import sys

import trio

from inos_node.economy.genesis import Genesis
from inos_node.economy.model import BlockType, account_of_key, block_hash
from inos_node.economy.store import LedgerStore
from inos_node.identity import Identity

__all__ = ["main"]


async def _run_node(args: argparse.Namespace) -> None:
    from pathlib import Path

    from inos_node.economy.node import LedgerNode

    genesis = Genesis.load(args.genesis)
    identities = [Identity(bytes.fromhex(seed)) for seed in args.seed]
    node = LedgerNode(genesis, identities[0], Path(args.data_dir))
    async with node.open(), trio.open_nursery() as nursery:
        await nursery.start(node.run)
        _say({"event": "ready", "blocks": node.ledger.block_count, "state_hash": node.ledger.state_hash().hex()})
        to = account_of_key(identities[1 % len(identities)].public_key)
        for _ in range(args.max_blocks):
            block = await node.transfer(to, 1)
            sys.stdout.write(f"durable {block_hash(block).hex()}\n")
            sys.stdout.flush()
        nursery.cancel_scope.cancel()


async def _run(args: argparse.Namespace) -> None:
    if args.node:
        await _run_node(args)
        return
    genesis = Genesis.load(args.genesis)
    identities = [Identity(bytes.fromhex(seed)) for seed in args.seed]
    store = LedgerStore.open(args.data_dir, genesis, synchronous=args.synchronous)
    try:
        ledger = store.replay(genesis)
        _say({"event": "ready", "blocks": store.count(), "state_hash": ledger.state_hash().hex()})
        budget = [args.max_blocks]

        async def writer(i: int) -> None:
            me = identities[i]
            to = account_of_key(identities[(i + 1) % len(identities)].public_key)
            while budget[0] > 0:
                budget[0] -= 1
                block = ledger.next_block(me, BlockType.TRANSFER, amount=1, counterparty=to)
                offer = ledger.offer(block)
                if offer.outcome.name != "APPLIED":
                    raise SystemExit(f"own block not applied: {offer.outcome.name} {offer.reason}")
                await store.append(block)
                sys.stdout.write(f"durable {block_hash(block).hex()}\n")
                sys.stdout.flush()

        async with trio.open_nursery() as nursery:
            for i in range(len(identities)):
                nursery.start_soon(writer, i)
    finally:
        await store.aclose()


def _say(obj: dict[str, object]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m inos_node.testing.ledger_crash", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", required=True, help="where ledger.sqlite3 lives")
    p.add_argument("--genesis", required=True, help="the genesis file whose allocations fund the seeds")
    p.add_argument("--seed", action="append", required=True, help="a 32-byte Ed25519 seed in hex (repeat)")
    p.add_argument("--synchronous", default="normal", choices=("normal", "full"))
    p.add_argument("--max-blocks", type=int, default=10**9, help="stop after this many blocks")
    p.add_argument("--node", action="store_true", help="write through a running LedgerNode (its journal)")
    trio.run(_run, p.parse_args(argv))


if __name__ == "__main__":
    main()
