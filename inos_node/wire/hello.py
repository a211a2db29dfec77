"""Cap'n Proto codecs for ``/inos/hello/1.0.0`` (schemas/p2p/v1/mesh.capnp): Hello and SignedHello.

A SignedHello carries the bytes of a Hello message, an Ed25519 signature over exactly those
bytes, and the signer's public key.  ``encode_hello`` builds the Hello deterministically (fields
in ordinal order, fresh single-segment message); verifiers check the signature over the bytes
they received and decode them only then (see ``net.hello``).

Every ``decode_*`` takes a byte limit and maps any failure to ``RemoteProtocolError``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from inos_node.errors import LocalProtocolError, RemoteProtocolError
from inos_node.wire import schemas
from inos_node.wire.codec import decode_struct, finish

__all__ = [
    "MAX_HELLO_BYTES",
    "NETWORK_ID_BYTES",
    "Hello",
    "SignedHello",
    "decode_hello",
    "decode_signed_hello",
    "encode_hello",
    "encode_signed_hello",
]

MAX_HELLO_BYTES = 4096
NETWORK_ID_BYTES = 32
_MAX_NONCE = 64
_WORD = 8


def _schema() -> Any:
    return schemas.load("p2p/v1/mesh.capnp")


@dataclass(frozen=True, slots=True)
class Hello:
    network_id: bytes  # 32 bytes
    peer_id: str  # the sender
    remote_peer_id: str  # the receiver: a hello is good for one connection's pair of peers only
    nonce: bytes
    protocol_version: int = 1
    name: str = ""


@dataclass(frozen=True, slots=True)
class SignedHello:
    hello: bytes  # the bytes of a Hello message: what ``signature`` covers
    signature: bytes
    public_key: bytes


_LIMITS = {"nesting_limit": 8, "traversal_extra": 256}  # hellos are tiny: tighter than the default


def encode_hello(hello: Hello, *, max_bytes: int = MAX_HELLO_BYTES) -> bytes:
    if len(hello.network_id) != NETWORK_ID_BYTES:
        raise LocalProtocolError(
            f"network id must be {NETWORK_ID_BYTES} bytes, got {len(hello.network_id)}",
            limit=NETWORK_ID_BYTES,
            observed=len(hello.network_id),
        )
    if not 0 <= hello.protocol_version < 2**32:
        raise LocalProtocolError(f"protocol version {hello.protocol_version} does not fit UInt32")
    m = _schema().Hello.new_message()
    m.networkId = hello.network_id
    m.peerId = hello.peer_id
    m.remotePeerId = hello.remote_peer_id
    m.protocolVersion = hello.protocol_version
    m.name = hello.name
    m.nonce = hello.nonce
    return finish(m, "hello", max_bytes)


def _read_hello(r: Any) -> Hello:
    network_id = bytes(r.networkId)
    if len(network_id) != NETWORK_ID_BYTES:
        raise RemoteProtocolError(
            f"network id must be {NETWORK_ID_BYTES} bytes, got {len(network_id)}",
            limit=NETWORK_ID_BYTES,
            observed=len(network_id),
        )
    nonce = bytes(r.nonce)
    if len(nonce) > _MAX_NONCE:
        raise RemoteProtocolError(
            f"nonce of {len(nonce)} bytes is over {_MAX_NONCE}", limit=_MAX_NONCE, observed=len(nonce)
        )
    return Hello(
        network_id=network_id,
        peer_id=r.peerId,
        remote_peer_id=r.remotePeerId,
        nonce=nonce,
        protocol_version=r.protocolVersion,
        name=r.name,
    )


def decode_hello(data: bytes | memoryview, *, max_bytes: int = MAX_HELLO_BYTES) -> Hello:
    result: Hello = decode_struct(_schema().Hello, data, max_bytes, "hello", _read_hello, **_LIMITS)
    return result


def encode_signed_hello(signed: SignedHello, *, max_bytes: int = MAX_HELLO_BYTES) -> bytes:
    m = _schema().SignedHello.new_message()
    m.hello = signed.hello
    m.signature = signed.signature
    m.publicKey = signed.public_key
    return finish(m, "signed hello", max_bytes)


def _read_signed_hello(r: Any) -> SignedHello:
    return SignedHello(hello=bytes(r.hello), signature=bytes(r.signature), public_key=bytes(r.publicKey))


def decode_signed_hello(data: bytes | memoryview, *, max_bytes: int = MAX_HELLO_BYTES) -> SignedHello:
    result: SignedHello = decode_struct(
        _schema().SignedHello, data, max_bytes, "signed hello", _read_signed_hello, **_LIMITS
    )
    return result
