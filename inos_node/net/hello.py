"""``/inos/hello/1.0.0``: admit only peers of our INOS network (schemas/p2p/v1/mesh.capnp).

Why: py-libp2p's DHT speaks ``/ipfs/kad/1.0.0`` whatever its protocol prefix (notes P11), so a
foreign libp2p node that dials us would otherwise land in our routing table and gossip mesh.

Theory of operation
-------------------
On every new connection (both directions; we learn of it from the swarm's notifee hook
``connected``), each side opens a hello stream and writes ONE frame: a SignedHello over

    Hello { networkId, peerId = me, remotePeerId = you, protocolVersion, name, nonce }

signed by its Ed25519 key.  The receiving side's stream handler checks, in this order:

  1. the signature verifies over the received Hello bytes with the included public key;
  2. that key derives the connection's remote peer id (``ID.from_pubkey``), which Noise has
     already authenticated: nobody can send a hello for another peer;
  3. ``peerId`` is that peer, ``remotePeerId`` is us (a hello is not replayable to a third
     peer), ``networkId`` is ours.

A connection is gated by one task (``_gate``): it sends our hello and waits up to ``timeout_s``
for the remote's to verify.  Verified: the peer is marked and ``on_verified(peer_id)`` runs (the
node adds only such peers to its DHT and gossip).  A bad hello, a peer that does not speak the
protocol, or silence past the timeout: the peer is disconnected (``on_rejected`` runs).

     connected ──► _gate: send our hello ─┬─ their hello verifies ──► VERIFIED ──► on_verified
                                          ├─ bad hello / no protocol ─► REJECTED ─► disconnect
                                          └─ timeout_s passes ────────► REJECTED ─► disconnect
     disconnected ──► state forgotten (a reconnect is gated afresh)

The notifee callback runs inline on py-libp2p's connection path, so it only queues the peer id
(``send_nowait`` into a bounded channel) and returns; the gate tasks live in ``run``'s nursery.
"""

from __future__ import annotations

import inspect
import logging
import secrets
from collections.abc import Awaitable, Callable
from typing import Any

import trio
from libp2p.custom_types import TProtocol
from libp2p.peer.id import ID

from inos_node.errors import PeerError, RemoteProtocolError
from inos_node.identity import Identity, verify
from inos_node.net.framing import FrameReader, reset_quietly, write_frame
from inos_node.net.host import ConnectionEvents, peer_id_from_public_key
from inos_node.wire.hello import (
    MAX_HELLO_BYTES,
    NETWORK_ID_BYTES,
    Hello,
    SignedHello,
    decode_hello,
    decode_signed_hello,
    encode_hello,
    encode_signed_hello,
)

__all__ = ["PROTOCOL", "PROTOCOL_VERSION", "HelloGate", "peer_id_from_public_key"]

PROTOCOL = TProtocol("/inos/hello/1.0.0")
PROTOCOL_VERSION = 1
log = logging.getLogger(__name__)

PeerCallback = Callable[[str], Awaitable[None] | None]


class _PeerState:
    __slots__ = ("done", "reason", "verified")

    def __init__(self) -> None:
        self.done = trio.Event()  # set once verified or rejected
        self.verified = False
        self.reason = ""


class HelloGate:
    """Verify every connected peer's network membership; disconnect the others.

    Args:
        identity: our Ed25519 identity (the host's key).
        network_id: 32 bytes naming the network.
        timeout_s: how long a new connection may take to present a valid hello.
        on_verified / on_rejected: ``(peer_id) -> None`` or an async function; called once per
            connection from the gate's task; exceptions are logged and swallowed.
        max_pending: connections being gated at once (a flood beyond it is disconnected).
    """

    def __init__(
        self,
        host: Any,
        identity: Identity,
        network_id: bytes,
        *,
        timeout_s: float = 5.0,
        name: str = "",
        on_verified: PeerCallback | None = None,
        on_rejected: PeerCallback | None = None,
        max_pending: int = 1024,
    ) -> None:
        if len(network_id) != NETWORK_ID_BYTES:
            raise ValueError(f"network id must be {NETWORK_ID_BYTES} bytes")
        self._host = host
        self._identity = identity
        self._network_id = network_id
        self._timeout_s = timeout_s
        self._name = name
        self._on_verified = on_verified
        self._on_rejected = on_rejected
        self._local = str(host.get_id().to_base58())
        # Fail here, not in a gate task, if our own hello cannot be encoded (a name too long).
        encode_hello(Hello(network_id, self._local, self._local, bytes(16), PROTOCOL_VERSION, name))
        self._peers: dict[str, _PeerState] = {}
        self._gating: set[str] = set()
        self._again: set[str] = set()  # reconnected while their last gate was still finishing
        # Bound: one queued id per connection not yet picked up by the gate loop.
        self._send, self._recv = trio.open_memory_channel[str](max_pending)
        self._max_pending = max_pending
        self._notifee = ConnectionEvents(on_connected=self._queue_peer, on_disconnected=self._forget)

    # ----------------------------------------------------------------------------------- query

    def verified(self, peer_id: str) -> bool:
        st = self._peers.get(peer_id)
        return st is not None and st.verified

    def verified_peers(self) -> list[str]:
        return [p for p, st in self._peers.items() if st.verified]

    async def wait_verified(self, peer_id: str) -> None:
        """Return once ``peer_id`` is verified on its current connection.

        Raises:
            PeerError: the peer was rejected (bad hello, no hello in time).
        """
        st = self._state(peer_id)
        await st.done.wait()
        if not st.verified:
            raise PeerError(f"peer {peer_id} failed the hello: {st.reason}")

    async def admit(self, peer_id: str) -> bool:
        """For a server's ``admit``: True if the peer is verified, waiting (at most ``timeout_s``)
        for a hello still in progress; False if it fails or does not come."""
        if self.verified(peer_id):
            return True
        with trio.move_on_after(self._timeout_s):
            try:
                await self.wait_verified(peer_id)
            except PeerError:
                return False
            return True
        return False

    # ------------------------------------------------------------------------------- lifecycle

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        network = self._host.get_network()
        self._host.set_stream_handler(PROTOCOL, self._on_stream)
        network.register_notifee(self._notifee)
        try:
            async with trio.open_nursery() as nursery:
                for peer in list(network.connections):  # connections made before we started
                    self._queue_peer(str(peer.to_base58()))
                task_status.started()
                async for peer_id in self._recv:
                    if peer_id in self._gating:
                        self._again.add(peer_id)  # gated again once the running gate ends
                        continue
                    self._gating.add(peer_id)
                    nursery.start_soon(self._gate, peer_id)
        finally:
            try:
                network.remove_notifee(self._notifee)
                self._host.remove_stream_handler(PROTOCOL)
            except Exception:  # noqa: BLE001 - a host already shut down has nothing to remove
                log.debug("hello: unregistering failed", exc_info=True)

    def _queue_peer(self, peer_id: str) -> None:
        try:
            self._send.send_nowait(peer_id)
        except trio.WouldBlock:
            # A connection flood: this connection is not gated now.  It stays unverified, so it
            # never reaches the DHT or gossip and ``admit`` refuses its streams; if it sends a
            # hello later, the handler queues it again.
            log.warning(
                "hello: %d connections waiting for the gate; peer %s not gated", self._max_pending, peer_id
            )
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            pass  # the gate is not running

    def _forget(self, peer_id: str) -> None:
        try:
            if self._host.get_network().connections.get(ID.from_base58(peer_id)):
                return  # another connection to the peer lives on (a trimmed duplicate closed)
        except Exception:  # noqa: BLE001 - a swarm shutting down: forget the peer
            pass
        st = self._peers.pop(peer_id, None)
        if st is not None and not st.done.is_set():
            st.reason = "disconnected before the hello completed"
            st.done.set()

    def _state(self, peer_id: str) -> _PeerState:
        st = self._peers.get(peer_id)
        if st is None:
            st = self._peers[peer_id] = _PeerState()
        return st

    # ------------------------------------------------------------------------------------ gate

    async def _gate(self, peer_id: str) -> None:
        try:
            st = self._state(peer_id)
            with trio.move_on_after(self._timeout_s):
                async with trio.open_nursery() as nursery:
                    # Ours goes out on every connection, even when theirs came first: the peer's
                    # gate waits for it.  The nursery ends when both are done (or at the timeout).
                    nursery.start_soon(self._send_hello, peer_id, st)
                    await st.done.wait()
            if self._peers.get(peer_id) is not st:
                # The connection closed meanwhile (the peer may have rejected us first); a new
                # connection gets its own gate.  Unverified, it counts as rejected.
                if not st.verified:
                    await self._call(self._on_rejected, peer_id)
                return
            if st.verified:
                log.debug("hello: peer %s verified", peer_id)
                await self._call(self._on_verified, peer_id)
                return
            if not st.done.is_set():
                st.reason = f"no valid hello within {self._timeout_s} s"
                st.done.set()
            log.info("hello: disconnecting peer %s: %s", peer_id, st.reason)
            self._peers.pop(peer_id, None)
            await self._disconnect(peer_id)
            await self._call(self._on_rejected, peer_id)
        finally:
            self._gating.discard(peer_id)
            if peer_id in self._again:  # a new connection came while this gate ran: gate it too
                self._again.discard(peer_id)
                self._queue_peer(peer_id)

    async def _send_hello(self, peer_id: str, st: _PeerState) -> None:
        hello = encode_hello(
            Hello(
                network_id=self._network_id,
                peer_id=self._local,
                remote_peer_id=peer_id,
                nonce=secrets.token_bytes(16),
                protocol_version=PROTOCOL_VERSION,
                name=self._name,
            )
        )
        signed = encode_signed_hello(
            SignedHello(hello, self._identity.sign(hello), self._identity.public_key)
        )
        try:
            stream = await self._host.new_stream(ID.from_base58(peer_id), [PROTOCOL])
        except Exception as exc:  # noqa: BLE001 - any failure to open means "not an INOS peer"
            self._reject(st, f"cannot open {PROTOCOL}: {type(exc).__name__}")
            return
        try:
            await write_frame(stream, signed, limit=MAX_HELLO_BYTES)
            await stream.close()
        except Exception as exc:  # noqa: BLE001 - the connection died or the peer reset the stream
            self._reject(st, f"hello write failed: {type(exc).__name__}")
            await reset_quietly(stream)

    @staticmethod
    def _reject(st: _PeerState, reason: str) -> None:
        if not st.done.is_set():
            st.reason = reason
            st.done.set()

    async def _on_stream(self, stream: Any) -> None:
        """py-libp2p's handler for the remote's hello; nothing may escape it (P7)."""
        peer_id = "?"
        try:
            peer_id = str(stream.muxed_conn.peer_id.to_base58())
            st = self._state(peer_id)
            if peer_id not in self._gating:
                self._queue_peer(peer_id)  # a connection the notifee did not report (yet)
            try:
                with trio.fail_after(self._timeout_s):
                    frame = await FrameReader(stream, limit=MAX_HELLO_BYTES).read_frame()
                if frame is None:
                    raise RemoteProtocolError("hello stream closed before the hello")
                self._check(peer_id, frame)
            except (RemoteProtocolError, trio.TooSlowError) as exc:
                self._reject(
                    st, f"bad hello: {exc}" if isinstance(exc, RemoteProtocolError) else "hello too slow"
                )
                await reset_quietly(stream)
                return
            if not st.done.is_set():
                st.verified = True
                st.done.set()
            await stream.close()
        except Exception:  # noqa: BLE001 - supervisor: never let a hello take the node down (P7)
            log.exception("hello: stream from peer %s failed", peer_id)
            await reset_quietly(stream)

    def _check(self, peer_id: str, frame: bytes) -> None:
        signed = decode_signed_hello(frame)
        if not verify(signed.public_key, signed.hello, signed.signature):
            raise RemoteProtocolError("signature does not verify")
        signer = peer_id_from_public_key(signed.public_key)
        if signer != peer_id:
            raise RemoteProtocolError(f"signed by {signer}, but the connection is from {peer_id}")
        hello = decode_hello(signed.hello)
        if hello.peer_id != peer_id:
            raise RemoteProtocolError(f"hello claims peer {hello.peer_id}")
        if hello.remote_peer_id != self._local:
            raise RemoteProtocolError(f"hello is addressed to {hello.remote_peer_id}, not to us")
        if hello.network_id != self._network_id:
            raise RemoteProtocolError(f"network id {hello.network_id.hex()[:16]}... is not ours")

    async def _disconnect(self, peer_id: str) -> None:
        with trio.move_on_after(2.0):
            try:
                await self._host.disconnect(ID.from_base58(peer_id))
            except Exception:  # noqa: BLE001 - already gone is fine
                log.debug("hello: disconnect of %s failed", peer_id, exc_info=True)

    @staticmethod
    async def _call(callback: PeerCallback | None, peer_id: str) -> None:
        if callback is None:
            return
        try:
            result = callback(peer_id)
            if inspect.isawaitable(result):
                await result
        except Exception:  # noqa: BLE001 - supervisor: a node callback bug must not break the gate
            log.exception("hello: callback for peer %s failed", peer_id)
