"""Build and run the node's libp2p host: TCP + Noise (only) + Yamux, Ed25519 identity.

Why each setting (measured in notes/py-libp2p.md):
  * ``sec_opt`` names Noise alone: the library default also offers ``/plaintext/2.0.0`` and
    secio, and a plaintext-only peer got an unencrypted session from a default host (P2).
  * ``max_connections_per_peer=1``: the dial path otherwise waits a fixed 250 ms after a success
    (P1); with one connection per peer a connect takes 5-10 ms.
  * Yamux, not mplex: mplex is 5-20x slower for bulk data (P13).
  * Connection limits bound what a crowd of peers can make us hold.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import multiaddr
from libp2p import new_host
from libp2p.abc import INotifee
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.crypto.x25519 import create_new_key_pair as x25519_key_pair
from libp2p.custom_types import TProtocol
from libp2p.network.config import ConnectionConfig
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import info_from_p2p_addr
from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_PROTOCOL_ID
from libp2p.security.noise.transport import Transport as NoiseTransport
from libp2p.stream_muxer.yamux.yamux import PROTOCOL_ID as YAMUX_PROTOCOL_ID
from libp2p.stream_muxer.yamux.yamux import Yamux

from inos_node.errors import ConfigError, PeerError, RemoteProtocolError
from inos_node.identity import Identity

__all__ = ["ConnectionEvents", "HostConfig", "connect", "open_host", "peer_id_from_public_key", "peer_id_of", "public_key_of_peer_id", "quiet_libp2p_logs"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class HostConfig:
    listen: tuple[str, ...] = ("/ip4/127.0.0.1/tcp/0",)
    announce: tuple[str, ...] = ()
    max_connections: int = 256
    mdns: bool = False  # off by default: it multicasts beyond loopback (untested here)

    def __post_init__(self) -> None:
        for addr in (*self.listen, *self.announce):
            try:
                multiaddr.Multiaddr(addr)
            except Exception as exc:  # noqa: BLE001 - multiaddr raises assorted errors for bad text
                raise ConfigError(f"not a multiaddr: {addr!r} ({exc})", key="listen") from exc
        if self.max_connections < 1:
            raise ConfigError("max_connections must be >= 1", key="max_connections")


def peer_id_of(identity: Identity) -> str:
    return ID.from_pubkey(create_new_key_pair(identity.seed).public_key).to_base58()


def quiet_libp2p_logs(level: int = logging.CRITICAL) -> None:
    """py-libp2p logs multi-line ERRORs for ordinary events (P16): keep them out of ours."""
    logging.getLogger("libp2p").setLevel(level)


@asynccontextmanager
async def open_host(identity: Identity, config: HostConfig) -> AsyncIterator[Any]:
    """A running libp2p host listening on ``config.listen``; stopped when the block exits."""
    kp = create_new_key_pair(identity.seed)
    host = new_host(
        key_pair=kp,
        sec_opt={TProtocol(NOISE_PROTOCOL_ID): NoiseTransport(kp, noise_privkey=x25519_key_pair().private_key)},
        muxer_opt={TProtocol(YAMUX_PROTOCOL_ID): Yamux},
        connection_config=ConnectionConfig(
            max_connections_per_peer=1,
            max_connections=config.max_connections,
            high_watermark=config.max_connections,
            low_watermark=min(100, config.max_connections),
            min_connections=min(50, config.max_connections),
            dial_timeout=5.0,
        ),
        announce_addrs=[multiaddr.Multiaddr(a) for a in config.announce] or None,
        enable_mDNS=config.mdns,
    )
    async with host.run(listen_addrs=[multiaddr.Multiaddr(a) for a in config.listen]):
        yield host


async def connect(host: Any, address: str) -> str:
    """Dial a full multiaddr ending in /p2p/<peer id>; returns the peer id."""
    try:
        info = info_from_p2p_addr(multiaddr.Multiaddr(address))
    except Exception as exc:  # noqa: BLE001 - bad user input in assorted forms
        raise ConfigError(f"not a peer address (want /ip4/.../tcp/.../p2p/<peer id>): {address!r}",
                          key="bootstrap") from exc
    try:
        await host.connect(info)
    except Exception as exc:  # noqa: BLE001 - libp2p dial errors are many types; all mean unreachable
        raise PeerError(f"cannot connect to {address}: {exc}") from exc
    return str(info.peer_id.to_base58())


def addresses(host: Any) -> list[str]:
    return [str(a) for a in host.get_addrs()]


def listen_addresses(addrs: Sequence[Any]) -> list[str]:
    return [str(a) for a in addrs]


@functools.lru_cache(maxsize=4096)
def peer_id_from_public_key(public_key: bytes) -> str:
    """The libp2p peer id of a raw 32-byte Ed25519 public key (cached: peers repeat)."""
    from libp2p.crypto.ed25519 import Ed25519PublicKey

    try:
        return str(ID.from_pubkey(Ed25519PublicKey.from_bytes(bytes(public_key))).to_base58())
    except Exception as exc:  # noqa: BLE001 - nacl raises several types for a bad key
        raise RemoteProtocolError(f"not an Ed25519 public key ({len(public_key)} bytes)") from exc


_ED25519_PROTO_PREFIX = b"\x08\x01\x12\x20"  # protobuf PublicKey{Type: Ed25519, Data: 32 bytes}


@functools.lru_cache(maxsize=4096)
def public_key_of_peer_id(peer_id: str) -> bytes:
    """The raw Ed25519 key inside an Ed25519 peer id (an identity multihash holds the key itself).

    A node's peer id and its ledger account are one key: this is how a peer id becomes an account.

    Raises:
        RemoteProtocolError: not the peer id of an Ed25519 key.
    """
    try:
        raw = ID.from_base58(peer_id).to_bytes()
    except Exception as exc:  # noqa: BLE001 - base58/multihash errors come in several types
        raise RemoteProtocolError(f"not a peer id: {peer_id!r}") from exc
    if len(raw) != 38 or raw[:2] != b"\x00\x24" or raw[2:6] != _ED25519_PROTO_PREFIX:
        raise RemoteProtocolError(f"peer id {peer_id} does not embed an Ed25519 key")
    key = raw[6:]
    if peer_id_from_public_key(key) != peer_id:
        raise RemoteProtocolError(f"peer id {peer_id} does not round-trip through its key")
    return key


async def disconnect(host: Any, peer_id: str) -> None:
    await host.disconnect(ID.from_base58(peer_id))


class ConnectionEvents(INotifee):  # type: ignore[misc]
    """py-libp2p's network notifee reduced to the two facts we use: a peer (dis)connected.

    The callbacks are synchronous and must not block: py-libp2p runs the notifee inline on its
    connection path.  Register with ``host.get_network().register_notifee(...)``.
    """

    def __init__(self, on_connected: Callable[[str], None] | None = None,
                 on_disconnected: Callable[[str], None] | None = None) -> None:
        self._on_connected = on_connected
        self._on_disconnected = on_disconnected

    async def connected(self, network: Any, conn: Any) -> None:
        if self._on_connected is not None:
            self._on_connected(str(conn.muxed_conn.peer_id.to_base58()))

    async def disconnected(self, network: Any, conn: Any) -> None:
        if self._on_disconnected is not None:
            self._on_disconnected(str(conn.muxed_conn.peer_id.to_base58()))

    async def opened_stream(self, network: Any, stream: Any) -> None:
        return None

    async def closed_stream(self, network: Any, stream: Any) -> None:
        return None

    async def listen(self, network: Any, multiaddr: Any) -> None:
        return None

    async def listen_close(self, network: Any, multiaddr: Any) -> None:
        return None
