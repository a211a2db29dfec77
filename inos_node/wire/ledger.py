"""Cap'n Proto codecs for the ledger (schemas/economy/v1/ledger.capnp): blocks, equivocation
proofs, ``/inos/ledger-sync/1.0.0`` messages, and standalone receipts (block evidence).

Rules this module lives by (the same as ``wire.codec``):
  1. capnp readers and builders never leave this module: decoding returns
     ``inos_node.economy.model`` dataclasses or the small ones below.
  2. Every ``decode_*`` takes a byte limit, checked before capnp sees the bytes, and a
     traversal limit proportional to the size; any failure at all is a ``RemoteProtocolError``.
  3. Encoding over the limit is a ``LocalProtocolError``.
  4. A block's hash covers the canonical bytes of its ``BlockBody`` (fields set in ordinal order
     into a fresh message).  ``decode_block`` keeps the body bytes it received and their blake3 on
     the returned block, so verifying it never re-encodes and ``encode_block`` gives back the
     same bytes.  Decoding checks shapes and limits only; the ledger checks meaning.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import blake3

from inos_node.economy.model import (
    MAX_BLOCK_BYTES,
    MAX_EVIDENCE,
    MAX_EVIDENCE_BYTES,
    MAX_JOB_CHARS,
    MAX_PAYMENTS,
    Block,
    BlockType,
    Payment,
    _attach,
    block_body,
)
from inos_node.errors import LocalProtocolError, RemoteProtocolError
from inos_node.wire import _canonical, schemas
from inos_node.wire.codec import _check_size, decode_struct, finish
from inos_node.wire.delegation import Receipt

__all__ = [
    "MAX_SYNC_BYTES",
    "SyncBlocks",
    "SyncHead",
    "SyncHeads",
    "SyncRequest",
    "SyncResponse",
    "decode_block",
    "decode_proof",
    "decode_receipt",
    "decode_sync_request",
    "decode_sync_response",
    "encode_block",
    "encode_block_body",
    "encode_proof",
    "encode_receipt",
    "encode_sync_request",
    "encode_sync_response",
]

MAX_SYNC_BYTES = 4 * 1024 * 1024
_MAX_RECEIPT_BYTES = MAX_EVIDENCE_BYTES
_TYPES = {int(t): t for t in BlockType}


def _schema() -> Any:
    return schemas.load("economy/v1/ledger.capnp")


def _delegation() -> Any:
    return schemas.load("p2p/v1/delegation.capnp")


def _u64(value: int, what: str) -> int:
    if not 0 <= value < 2**64:
        raise LocalProtocolError(f"block {what} {value} does not fit an unsigned 64-bit field")
    return value


# --------------------------------------------------------------------------------------- blocks


def encode_block_body(block: Block) -> bytes:
    """The canonical bytes that ``block_hash`` hashes (every field but the signature)."""
    if len(block.payments) > MAX_PAYMENTS:
        raise LocalProtocolError(f"a block has at most {MAX_PAYMENTS} payments, got {len(block.payments)}",
                                 limit=MAX_PAYMENTS, observed=len(block.payments))
    if len(block.evidence) > MAX_EVIDENCE:
        raise LocalProtocolError(f"a block has at most {MAX_EVIDENCE} evidence items, "
                                 f"got {len(block.evidence)}",
                                 limit=MAX_EVIDENCE, observed=len(block.evidence))
    m = _schema().BlockBody.new_message()
    m.account = block.account
    m.publicKey = block.public_key
    m.height = _u64(block.height, "height")
    m.previous = block.previous
    m.type = int(block.type)
    m.amount = _u64(block.amount, "amount")
    m.counterparty = block.counterparty
    m.job = block.job
    m.timestampMs = _u64(block.timestamp_ms, "timestampMs")
    m.credits = _u64(block.credits, "credits")
    m.balance = _u64(block.balance, "balance")
    if block.payments:
        ps = m.init("payments", len(block.payments))
        for i, p in enumerate(block.payments):
            ps[i].account = p.account
            ps[i].amount = _u64(p.amount, "payment amount")
    m.deadlineMs = _u64(block.deadline_ms, "deadlineMs")
    m.refHeight = _u64(block.ref_height, "refHeight")
    if block.evidence:
        ev = m.init("evidence", len(block.evidence))
        for i, item in enumerate(block.evidence):
            ev[i] = item
    return finish(m, "block body", MAX_BLOCK_BYTES)


def encode_block(block: Block, *, max_bytes: int = MAX_BLOCK_BYTES) -> bytes:
    """The wire bytes of a signed block (built once per block object, then cached on it)."""
    wire = block._wire
    if wire and len(wire) <= max_bytes:
        return wire
    m = _schema().Block.new_message()
    m.body = block_body(block)
    m.signature = block.signature
    wire = finish(m, "block", max_bytes)
    if block.signature:
        object.__setattr__(block, "_wire", wire)
    return wire


def _at_most(observed: int, limit: int, what: str) -> None:
    if observed > limit:
        raise RemoteProtocolError(f"{observed} {what}: at most {limit}", limit=limit, observed=observed)


def _read_body(r: Any) -> tuple[Any, ...]:
    """A capnp ``BlockBody`` reader -> its fields, in ``_canonical.read_block_body``'s order."""
    return (bytes(r.account), bytes(r.publicKey), r.height, bytes(r.previous), r.type, r.amount,
            bytes(r.counterparty), r.job, r.timestampMs, r.credits, r.balance,
            [(bytes(p.account), p.amount) for p in r.payments], r.deadlineMs, r.refHeight, r.evidence)


def _block_of(fields: tuple[Any, ...], signature: bytes) -> Block:
    """Check the decoded fields' shapes and limits; the Block (both readers end here)."""
    (account, public_key, height, previous, type_, amount, counterparty, job, timestamp_ms, credits,
     balance, payments, deadline_ms, ref_height, evidence) = fields
    t = _TYPES.get(type_)
    if t is None:
        raise RemoteProtocolError(f"unknown block type {type_}")
    _at_most(len(payments), MAX_PAYMENTS, "payments in a block")
    _at_most(len(evidence), MAX_EVIDENCE, "evidence items in a block")
    ev = tuple(bytes(e) for e in evidence)
    for e in ev:
        _at_most(len(e), MAX_EVIDENCE_BYTES, "bytes in an evidence item")
    _at_most(len(job), MAX_JOB_CHARS, "characters in a job id")
    return Block(account, public_key, height, previous, t, amount, counterparty, job, timestamp_ms, credits,
                 balance, tuple(Payment(acct, amt) for acct, amt in payments), deadline_ms,
                 ref_height, ev, signature)


def decode_block(data: bytes | memoryview, *, max_bytes: int = MAX_BLOCK_BYTES) -> Block:
    """An encoded ``Block`` -> a ``Block`` carrying its body bytes and hash (not yet verified).

    Canonical bytes (what ``encode_block`` makes, here and on every peer) are read by
    ``wire._canonical`` in about half pycapnp's time; anything else by pycapnp, with the same
    checks and errors."""
    _check_size(data, max_bytes, "block")
    data = bytes(data)
    parts = _canonical.read_block_wrapper(data)
    if parts is None:
        parts = decode_struct(_schema().Block, data, max_bytes, "block",
                              lambda r: (bytes(r.body), bytes(r.signature)))
    body, signature = parts
    fields = _canonical.read_block_body(body)
    if fields is not None:
        block = _block_of(fields, signature)
    else:
        block = decode_struct(_schema().BlockBody, body, max_bytes, "block body",
                              lambda r: _block_of(_read_body(r), signature))
    block = _attach(block, body, blake3.blake3(body).digest())
    object.__setattr__(block, "_wire", data)
    return block


# --------------------------------------------------------------------------------------- proofs


def encode_proof(a: Block, b: Block, *, max_bytes: int = 2 * MAX_BLOCK_BYTES + 64) -> bytes:
    m = _schema().EquivocationProof.new_message()
    m.a = encode_block(a)
    m.b = encode_block(b)
    return finish(m, "equivocation proof", max_bytes)


def decode_proof(
    data: bytes | memoryview, *, max_bytes: int = 2 * MAX_BLOCK_BYTES + 64
) -> tuple[Block, Block]:
    a, b = decode_struct(_schema().EquivocationProof, data, max_bytes, "equivocation proof",
                         lambda r: (bytes(r.a), bytes(r.b)))
    return decode_block(a), decode_block(b)


# ------------------------------------------------------------------------------------- receipts


def encode_receipt(receipt: Receipt, *, max_bytes: int = _MAX_RECEIPT_BYTES) -> bytes:
    """A ``Receipt`` message (p2p/v1/delegation.capnp) on its own: one evidence item of a block."""
    m = _delegation().Receipt.new_message()
    m.body = receipt.body
    m.signature = receipt.signature
    m.publicKey = receipt.public_key
    return finish(m, "receipt", max_bytes)


def decode_receipt(data: bytes | memoryview, *, max_bytes: int = _MAX_RECEIPT_BYTES) -> Receipt:
    result: Receipt = decode_struct(
        _delegation().Receipt, data, max_bytes, "receipt",
        lambda r: Receipt(body=bytes(r.body), signature=bytes(r.signature), public_key=bytes(r.publicKey)),
    )
    return result


# ----------------------------------------------------------------------------------------- sync


@dataclass(frozen=True, slots=True)
class SyncHeads:
    """Ask for every account's (height, head)."""

    request_id: int


@dataclass(frozen=True, slots=True)
class SyncBlocks:
    """Ask for ``account``'s blocks from ``from_height`` on, at most ``limit``."""

    request_id: int
    account: bytes
    from_height: int
    limit: int


@dataclass(frozen=True, slots=True)
class SyncClaim:
    """A worker's receipt for ``job``, presented to the requester for settlement."""

    request_id: int
    job: str
    receipt: bytes


SyncRequest = SyncHeads | SyncBlocks | SyncClaim


@dataclass(frozen=True, slots=True)
class SyncHead:
    account: bytes
    height: int
    head: bytes


@dataclass(frozen=True, slots=True)
class SyncResponse:
    request_id: int
    heads: tuple[SyncHead, ...] = ()
    blocks: tuple[bytes, ...] = ()  # encoded blocks (decode each with decode_block)
    proofs: tuple[tuple[bytes, bytes], ...] = ()  # encoded (a, b) block pairs
    error: str = ""


def encode_sync_request(req: SyncRequest, *, max_bytes: int = 4096) -> bytes:
    m = _schema().SyncRequest.new_message()
    m.requestId = _u64(req.request_id, "requestId")
    if isinstance(req, SyncHeads):
        m.heads = None
    elif isinstance(req, SyncClaim):
        g = m.init("claim")
        g.job = req.job
        g.receipt = req.receipt
    else:
        if not 0 <= req.limit < 2**32:
            raise LocalProtocolError(f"sync limit {req.limit} does not fit UInt32")
        g = m.init("blocks")
        g.account = req.account
        g.fromHeight = _u64(req.from_height, "fromHeight")
        g.limit = req.limit
    return finish(m, "sync request", max_bytes)


def _read_sync_request(r: Any) -> SyncRequest:
    if r.which() == "heads":
        return SyncHeads(request_id=r.requestId)
    if r.which() == "claim":
        return SyncClaim(request_id=r.requestId, job=r.claim.job, receipt=bytes(r.claim.receipt))
    g = r.blocks
    return SyncBlocks(request_id=r.requestId, account=bytes(g.account), from_height=g.fromHeight,
                      limit=g.limit)


def decode_sync_request(data: bytes | memoryview, *, max_bytes: int = 4096) -> SyncRequest:
    result: SyncRequest = decode_struct(_schema().SyncRequest, data, max_bytes, "sync request",
                                        _read_sync_request)
    return result


def encode_sync_response(resp: SyncResponse, *, max_bytes: int = MAX_SYNC_BYTES) -> bytes:
    m = _schema().SyncResponse.new_message()
    m.requestId = _u64(resp.request_id, "requestId")
    if resp.heads:
        hs = m.init("heads", len(resp.heads))
        for i, h in enumerate(resp.heads):
            hs[i].account = h.account
            hs[i].height = _u64(h.height, "height")
            hs[i].head = h.head
    if resp.blocks:
        bs = m.init("blocks", len(resp.blocks))
        for i, b in enumerate(resp.blocks):
            bs[i] = b
    if resp.proofs:
        ps = m.init("proofs", len(resp.proofs))
        for i, (a, b) in enumerate(resp.proofs):
            ps[i].a = a
            ps[i].b = b
    m.error = resp.error
    return finish(m, "sync response", max_bytes)


def _read_sync_response(r: Any) -> SyncResponse:
    return SyncResponse(
        request_id=r.requestId,
        heads=tuple(SyncHead(bytes(h.account), h.height, bytes(h.head)) for h in r.heads),
        blocks=tuple(bytes(b) for b in r.blocks),
        proofs=tuple((bytes(p.a), bytes(p.b)) for p in r.proofs),
        error=r.error,
    )


def decode_sync_response(data: bytes | memoryview, *, max_bytes: int = MAX_SYNC_BYTES) -> SyncResponse:
    result: SyncResponse = decode_struct(_schema().SyncResponse, data, max_bytes, "sync response",
                                         _read_sync_response)
    return result
