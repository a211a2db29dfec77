"""Signed receipts: a worker's statement of what it ran, checked by the requester before it
accepts a result.

The worker signs the canonical capnp bytes of a ``ReceiptBody`` (job id, requester, worker,
library.method, input digest, output digest, cost, metrics) with its Ed25519 key, and attaches its
public key.  The requester accepts the result only if every check below holds; each failure is a
``ReceiptInvalid`` that says which.

  1. the signature verifies under the attached public key (remembered in ``sigcache``, so the
     ledger does not verify the same receipt again when it settles with it);
  2. that public key *is* the worker: its libp2p peer id equals the peer that answered;
  3. the body names this job, this requester, this capsule and the input digest we sent;
  4. the output digest in the body is the blake3 of the output we received.
"""

from __future__ import annotations

import base64
import time
from typing import Any

import blake3

from inos_node import sigcache
from inos_node.errors import RemoteProtocolError
from inos_node.identity import Identity
from inos_node.net.host import peer_id_from_public_key
from inos_node.sigcache import verify_once
from inos_node.types import Metrics
from inos_node.wire.delegation import Receipt, ReceiptBody, decode_receipt_body, encode_receipt_body

__all__ = ["ReceiptInvalid", "open_receipt", "receipt_json", "sign_body", "sign_receipt", "verify_receipt"]


class ReceiptInvalid(RemoteProtocolError):
    """A worker's receipt does not prove what it claims."""


def sign_body(identity: Identity, body: ReceiptBody) -> Receipt:
    """Sign ``body``'s canonical bytes with the worker's key (its peer id derives from the key)."""
    raw = encode_receipt_body(body)
    signature = identity.sign(raw)
    sigcache.remember_own(identity.public_key, raw, signature)  # our settle carrying it comes back
    return Receipt(body=raw, signature=signature, public_key=identity.public_key, checked=body)


def open_receipt(receipt: Receipt, *, worker_peer_id: str | None = None) -> ReceiptBody:
    """Checks 1 and 2 of the module docstring; returns the signed body.

    Raises:
        ReceiptInvalid: a bad signature, an undecodable body, or a key that does not derive the
            body's ``worker`` (or ``worker_peer_id`` when given).
    """
    if not verify_once(receipt.public_key, receipt.body, receipt.signature):
        raise ReceiptInvalid("receipt signature does not verify")
    body = decode_receipt_body(receipt.body)
    signer = peer_id_from_public_key(receipt.public_key)
    if signer != body.worker or (worker_peer_id is not None and signer != worker_peer_id):
        raise ReceiptInvalid(
            f"receipt signed by {signer} for worker {body.worker} (expected {worker_peer_id or body.worker}): "
            "signed by another key"
        )
    object.__setattr__(receipt, "checked", body)  # see Receipt.checked: its signature verified
    return body


def sign_receipt(identity: Identity, *, job_id: str, requester: str, worker: str, capsule: str,
                 input_digest: bytes, output: bytes, cost: int, metrics: Metrics) -> Receipt:
    body = ReceiptBody(job_id=job_id, requester=requester, worker=worker, capsule=capsule,
                       input_digest=input_digest, output_digest=blake3.blake3(output).digest(), cost=cost,
                       metrics=metrics, finished_unix_ms=int(time.time() * 1000))
    return sign_body(identity, body)


def verify_receipt(receipt: Receipt | None, *, worker: str, job_id: str, requester: str, capsule: str,
                   input_digest: bytes, output: bytes) -> ReceiptBody:
    """Every check of the module docstring; returns the verified body."""
    if receipt is None:
        raise ReceiptInvalid(f"worker {worker} returned a result without a receipt")
    try:
        body = open_receipt(receipt, worker_peer_id=worker)
    except ReceiptInvalid as exc:
        raise ReceiptInvalid(f"receipt from {worker}: {exc}") from None
    except RemoteProtocolError as exc:  # an undecodable body or a malformed key
        raise ReceiptInvalid(f"receipt from {worker}: {exc}") from exc
    checks = (
        ("job id", body.job_id, job_id),
        ("requester", body.requester, requester),
        ("worker", body.worker, worker),
        ("capsule", body.capsule, capsule),
        ("input digest", body.input_digest, input_digest),
        ("output digest", body.output_digest, blake3.blake3(output).digest()),
    )
    for what, got, want in checks:
        if got != want:
            shown = (got.hex()[:16], want.hex()[:16]) if isinstance(got, bytes) else (got, want)
            raise ReceiptInvalid(f"receipt from {worker}: {what} is {shown[0]!r}, expected {shown[1]!r}")
    return body


def receipt_json(receipt: Receipt, body: ReceiptBody | None = None) -> dict[str, Any]:
    """JSON-ready form; pass the already verified ``body`` to skip decoding it again."""
    body = body if body is not None else decode_receipt_body(receipt.body)
    return {
        "job_id": body.job_id,
        "requester": body.requester,
        "worker": body.worker,
        "capsule": body.capsule,
        "input_digest": body.input_digest.hex(),
        "output_digest": body.output_digest.hex(),
        "cost": body.cost,
        "finished_unix_ms": body.finished_unix_ms,
        "body_b64": base64.b64encode(receipt.body).decode("ascii"),
        "signature": receipt.signature.hex(),
        "public_key": receipt.public_key.hex(),
    }
