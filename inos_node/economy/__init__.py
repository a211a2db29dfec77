"""The economy (issue 4): accounts, the genesis file, signed blocks and the ledger that
validates and applies them.

    model.py    Block, BlockType, Payment; DIDs <-> account ids; block hashing and signing
    genesis.py  the signed genesis file that names a network (network_id) and mints its credits
    ledger.py   Ledger: the pure state machine (offer blocks and proofs, query balances, supply,
                state hash); no I/O, no clock

The capnp codec is ``inos_node.wire.ledger``; persistence is ``economy/store.py``.
"""

from __future__ import annotations

from inos_node.economy.genesis import Genesis, create_genesis
from inos_node.economy.ledger import Ledger, Offer, Outcome
from inos_node.economy.model import Block, BlockType, Payment, account_of_did, block_hash, did_of_account

__all__ = [
    "Block",
    "BlockType",
    "Genesis",
    "Ledger",
    "Offer",
    "Outcome",
    "Payment",
    "account_of_did",
    "block_hash",
    "create_genesis",
    "did_of_account",
]
