"""Cap'n Proto codec for capability adverts: ``Advert`` / ``SignedAdvert`` <-> bytes.

A gossip message on ``inos/adverts/1`` carries one ``SignedAdvert``:

    SignedAdvert { advert: Data      the Advert's bytes exactly as the signer encoded them
                   signature: Data   Ed25519 over ADVERT_SIGNING_CONTEXT + advert
                   publicKey: Data } the signer's raw 32-byte Ed25519 public key

Rules this module lives by:
  1. The signature covers the *carried bytes*: receivers verify over ``advert`` as received and
     only then decode it, so no re-encoding (and no capnp canonicalisation) is ever needed.
     ``encode_advert`` is deterministic anyway (single segment, fixed field order).
  2. The signed bytes are prefixed with ``ADVERT_SIGNING_CONTEXT`` (domain separation): the same
     key signs libp2p pubsub messages, receipts and hellos, and a signature made for one of
     those must never verify as an advert.
  3. Size limits are checked before capnp sees the bytes (``MAX_SIGNED_ADVERT_BYTES`` for the
     envelope, ``MAX_ADVERT_BYTES`` for the advert) and traversal limits while it reads.
     Anything wrong with bytes from outside is a ``RemoteProtocolError``; an advert of ours
     that cannot be encoded within the limits is a ``LocalProtocolError``.
  4. This module checks that the signature is valid for the carried public key.  That the key
     derives the advert's claimed peer id (and the gossip sender's) needs libp2p's peer-id
     rules, so ``inos_node.net.gossip`` checks it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from inos_node.errors import LocalProtocolError, RemoteProtocolError
from inos_node.identity import Identity, verify
from inos_node.protocols.adverts import Advert, MethodPrice
from inos_node.wire import schemas
from inos_node.wire.codec import _short

__all__ = [
    "ADVERT_SIGNING_CONTEXT",
    "MAX_ADVERT_BYTES",
    "MAX_SIGNED_ADVERT_BYTES",
    "SignedAdvert",
    "decode_advert",
    "decode_signed_advert",
    "encode_advert",
    "encode_signed_advert",
    "open_signed_advert",
    "sign_advert",
]

MAX_ADVERT_BYTES = 64 * 1024
# the envelope adds a signature (64 B), a key (32 B) and a few words of framing
MAX_SIGNED_ADVERT_BYTES = MAX_ADVERT_BYTES + 256
ADVERT_SIGNING_CONTEXT = b"inos/advert/1\x00"
_WORD = 8
_ED25519_KEY = 32
_ED25519_SIG = 64


def _gossip() -> Any:
    return schemas.load("p2p/v1/gossip.capnp")


@dataclass(frozen=True, slots=True)
class SignedAdvert:
    advert: bytes
    signature: bytes
    public_key: bytes


def _check_size(data: bytes | memoryview, limit: int, what: str) -> None:
    n = len(data)
    if n > limit:
        raise RemoteProtocolError(
            f"{what} of {n} bytes is over the {limit}-byte limit", limit=limit, observed=n
        )
    if n == 0 or n % _WORD:
        raise RemoteProtocolError(f"{what} of {n} bytes is not a whole number of 8-byte words", observed=n)


def _from_bytes(struct: Any, data: bytes | memoryview) -> Any:
    return struct.from_bytes(
        bytes(data), traversal_limit_in_words=len(data) // _WORD * 4 + 64, nesting_limit=8
    )


def encode_advert(advert: Advert) -> bytes:
    """The advert's bytes (deterministic for a given ``Advert``).

    Raises:
        LocalProtocolError: a field out of its capnp range, or the result over MAX_ADVERT_BYTES.
    """
    try:
        m = _gossip().Advert.new_message()
        m.peerId = advert.peer_id
        m.name = advert.name
        m.protocolVersion = advert.protocol_version
        m.sequence = advert.sequence
        m.issuedUnixMs = advert.issued_unix_ms
        m.ttlMs = advert.ttl_ms
        methods = m.init("methods", len(advert.methods))
        for i, mp in enumerate(advert.methods):
            methods[i].method = mp.method
            methods[i].pricePerUnit = mp.price_per_unit
            methods[i].costModel = mp.cost_model
        m.load = advert.load
        m.queueDepth = advert.queue_depth
        m.cores = advert.cores
        features = m.init("features", len(advert.features))
        for i, f in enumerate(advert.features):
            features[i] = f
        addresses = m.init("addresses", len(advert.addresses))
        for i, a in enumerate(advert.addresses):
            addresses[i] = a
        m.apiVersion = advert.api_version
        out: bytes = m.to_bytes()
    except Exception as exc:  # noqa: BLE001 - capnp raises ValueError/OverflowError/KjException for bad fields
        raise LocalProtocolError(f"cannot encode advert: {_short(exc)}") from exc
    if len(out) > MAX_ADVERT_BYTES:
        raise LocalProtocolError(
            f"advert of {len(out)} bytes is over the {MAX_ADVERT_BYTES}-byte limit",
            limit=MAX_ADVERT_BYTES,
            observed=len(out),
        )
    return out


def decode_advert(data: bytes | memoryview) -> Advert:
    """Decode advert bytes from outside.

    Raises:
        RemoteProtocolError: over MAX_ADVERT_BYTES, not whole words, or malformed.
    """
    _check_size(data, MAX_ADVERT_BYTES, "advert")
    try:
        with _from_bytes(_gossip().Advert, data) as r:
            return Advert(
                peer_id=r.peerId,
                name=r.name,
                protocol_version=r.protocolVersion,
                sequence=r.sequence,
                issued_unix_ms=r.issuedUnixMs,
                ttl_ms=r.ttlMs,
                methods=tuple(MethodPrice(m.method, m.pricePerUnit, m.costModel) for m in r.methods),
                load=r.load,
                queue_depth=r.queueDepth,
                cores=r.cores,
                features=tuple(r.features),
                addresses=tuple(r.addresses),
                api_version=r.apiVersion,
            )
    except Exception as exc:  # noqa: BLE001 - capnp raises KjException/ValueError/UnicodeError: all mean "malformed"
        raise RemoteProtocolError(f"malformed advert: {_short(exc)}") from exc


def encode_signed_advert(signed: SignedAdvert) -> bytes:
    try:
        m = _gossip().SignedAdvert.new_message()
        m.advert = signed.advert
        m.signature = signed.signature
        m.publicKey = signed.public_key
        out: bytes = m.to_bytes()
    except Exception as exc:  # noqa: BLE001 - see encode_advert
        raise LocalProtocolError(f"cannot encode signed advert: {_short(exc)}") from exc
    if len(out) > MAX_SIGNED_ADVERT_BYTES:
        raise LocalProtocolError(
            f"signed advert of {len(out)} bytes is over the {MAX_SIGNED_ADVERT_BYTES}-byte limit",
            limit=MAX_SIGNED_ADVERT_BYTES,
            observed=len(out),
        )
    return out


def decode_signed_advert(data: bytes | memoryview) -> SignedAdvert:
    """Decode the envelope only (no signature check; see ``open_signed_advert``).

    Raises:
        RemoteProtocolError: over the size limit or malformed.
    """
    _check_size(data, MAX_SIGNED_ADVERT_BYTES, "signed advert")
    try:
        with _from_bytes(_gossip().SignedAdvert, data) as r:
            return SignedAdvert(bytes(r.advert), bytes(r.signature), bytes(r.publicKey))
    except Exception as exc:  # noqa: BLE001 - see decode_advert
        raise RemoteProtocolError(f"malformed signed advert: {_short(exc)}") from exc


def sign_advert(advert: Advert, identity: Identity) -> bytes:
    """Encode ``advert`` and wrap it in a ``SignedAdvert`` signed by ``identity``."""
    body = encode_advert(advert)
    return encode_signed_advert(
        SignedAdvert(body, identity.sign(ADVERT_SIGNING_CONTEXT + body), identity.public_key)
    )


def open_signed_advert(data: bytes | memoryview) -> tuple[Advert, bytes]:
    """Decode a ``SignedAdvert`` from outside and check its signature.

    Returns:
        The advert and the raw Ed25519 public key that signed it.  The caller still has to
        check that the key derives ``advert.peer_id``.

    Raises:
        RemoteProtocolError: malformed, over a limit, or the signature does not verify.
    """
    signed = decode_signed_advert(data)
    if len(signed.public_key) != _ED25519_KEY:
        raise RemoteProtocolError(
            f"advert public key is {len(signed.public_key)} bytes, not {_ED25519_KEY}",
            limit=_ED25519_KEY,
            observed=len(signed.public_key),
        )
    if len(signed.signature) != _ED25519_SIG or not verify(
        signed.public_key, ADVERT_SIGNING_CONTEXT + signed.advert, signed.signature
    ):
        raise RemoteProtocolError("advert signature does not verify")
    return decode_advert(signed.advert), signed.public_key
