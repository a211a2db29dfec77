"""The ledger's values: accounts, blocks and payments (frozen dataclasses), and how a block is
hashed and signed.

An account is an Ed25519 key; its id is blake3(public key) (32 bytes) and its DID is
``did:inos:<base58btc(id)>``.  Every account has its own chain of blocks, heights 1, 2, 3 ...,
each naming the hash of its predecessor.

    hash      = blake3(encode_block_body(block))      every field but the signature
    signature = Ed25519(account key, hash)

A block decoded from the wire keeps the body bytes it arrived with and their hash (hidden
fields, filled by the codec), so validating it never re-encodes; a block built here is encoded
once, on the first ``block_hash``.  The cache fields are ``init=False``: ``dataclasses.replace``
of a block makes a new block whose hash is computed afresh (a forged copy cannot keep the old
hash and so the old signature).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

import base58
import blake3

from inos_node.errors import LedgerError

__all__ = [
    "DID_PREFIX",
    "MAX_BLOCK_BYTES",
    "MAX_EVIDENCE",
    "MAX_EVIDENCE_BYTES",
    "MAX_JOB_CHARS",
    "MAX_PAYMENTS",
    "ZERO_HASH",
    "Block",
    "BlockType",
    "Payment",
    "account_of_did",
    "account_of_key",
    "block_body",
    "block_hash",
    "did_of_account",
    "sign_block",
]

DID_PREFIX = "did:inos:"
ZERO_HASH = bytes(32)
MAX_PAYMENTS = 16
MAX_EVIDENCE = 16
MAX_EVIDENCE_BYTES = 4096
MAX_JOB_CHARS = 128
MAX_BLOCK_BYTES = 64 * 1024


class BlockType(enum.IntEnum):
    TRANSFER = 1
    ESCROW_LOCK = 2
    SETTLE = 3
    REFUND = 4
    STAKE = 5
    UNSTAKE = 6
    SLASH = 7


@dataclass(frozen=True, slots=True)
class Payment:
    account: bytes
    amount: int


@dataclass(frozen=True, slots=True)
class Block:
    """One signed block of ``account``'s chain (field meanings: docs/ECONOMY contract, and the
    comments of schemas/economy/v1/ledger.capnp)."""

    account: bytes
    public_key: bytes
    height: int
    previous: bytes
    type: BlockType
    amount: int
    counterparty: bytes
    job: str
    timestamp_ms: int
    credits: int
    balance: int
    payments: tuple[Payment, ...] = ()
    deadline_ms: int = 0
    ref_height: int = 0
    evidence: tuple[bytes, ...] = ()
    signature: bytes = b""
    _body: bytes = field(default=b"", init=False, repr=False, compare=False)
    _hash: bytes = field(default=b"", init=False, repr=False, compare=False)
    _wire: bytes = field(default=b"", init=False, repr=False, compare=False)  # the encoded Block, once made


_encode_body: Any = None


def block_body(block: Block) -> bytes:
    """The canonical body bytes (encoded once per block, then cached on it)."""
    body = block._body
    if not body:
        global _encode_body
        if _encode_body is None:  # wire.ledger imports this module: bind its encoder lazily
            from inos_node.wire.ledger import encode_block_body

            _encode_body = encode_block_body
        body = _encode_body(block)
        object.__setattr__(block, "_body", body)
    return body


def block_hash(block: Block) -> bytes:
    """blake3 of the block's body, computed once per block object."""
    h = block._hash
    if not h:
        h = blake3.blake3(block_body(block)).digest()
        object.__setattr__(block, "_hash", h)
    return h


def _attach(block: Block, body: bytes, digest: bytes) -> Block:
    """Codec use: remember the body bytes a block was decoded from, and their hash."""
    object.__setattr__(block, "_body", body)
    object.__setattr__(block, "_hash", digest)
    return block


def sign_block(block: Block, sign: Any) -> Block:
    """A copy of ``block`` signed by ``sign(message) -> signature`` (e.g. ``Identity.sign``)."""
    digest = block_hash(block)  # the body leaves the signature out: any copy of the fields will do
    signed = Block(*[getattr(block, f) for f in _INIT_FIELDS[:-1]], sign(digest))  # a new object: empty caches
    return _attach(signed, block._body, digest)


_INIT_FIELDS = tuple(f for f in Block.__dataclass_fields__ if not f.startswith("_"))


def account_of_key(public_key: bytes) -> bytes:
    return blake3.blake3(public_key).digest()


def did_of_account(account: bytes) -> str:
    return DID_PREFIX + base58.b58encode(account).decode("ascii")


def account_of_did(did: str) -> bytes:
    """Parse ``did:inos:<base58btc of 32 bytes>``; a ``LedgerError`` says what is wrong."""
    if not isinstance(did, str) or not did.startswith(DID_PREFIX):
        raise LedgerError(f"{did!r} is not an inos DID (expected did:inos:<base58 account id>)")
    try:
        raw = base58.b58decode(did[len(DID_PREFIX):])
    except ValueError as exc:
        raise LedgerError(f"{did!r} is not an inos DID: bad base58 ({exc})") from None
    if len(raw) != 32:
        raise LedgerError(f"{did!r} is not an inos DID: the account id is {len(raw)} bytes, not 32")
    return raw
