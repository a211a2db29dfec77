"""Kademlia DHT for the node: who provides the content named by a blake3 digest.

Theory of operation
-------------------
``Dht`` runs py-libp2p's ``KadDHT`` in server mode and adds what the library leaves out
(notes/py-libp2p.md, P11):

  * the routing table is *not* fed by connections: the node calls ``add_peer`` for peers it
    has verified (and ``run`` for the bootstrap peers), which adds them and refreshes;
  * refreshes are coalesced: callers that arrive while one runs share the next one, so a burst
    of ``add_peer`` calls costs two lookups, not one per call; ``run`` also refreshes every
    ``refresh_interval_s`` (the library's own loop waits 600 s);
  * content keys are blake3 multihashes (code 0x1e, length 32), passed to the library as the
    hex string it parses (``digest_key``); a 32-byte digest is the only accepted input;
  * ``find_providers`` deduplicates (the library returned the same provider 4 times);
  * every network operation is bounded by ``query_timeout_s``; libp2p failures become
    ``PeerError``.

The wire protocol is always ``/ipfs/kad/1.0.0`` whatever ``protocol_prefix`` says (P11), so the
DHT is not isolated from IPFS peers by protocol id; isolation must come from connection gating.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import multiaddr
import trio
from libp2p.kad_dht import DHTMode, KadDHT
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import info_from_p2p_addr
from libp2p.tools.anyio_service import background_trio_service

from inos_node.errors import ConfigError, PeerError

__all__ = ["BLAKE3_MULTIHASH_PREFIX", "Dht", "DhtConfig", "digest_key"]

log = logging.getLogger(__name__)

# multihash: varint code 0x1e (blake3), varint length 32
BLAKE3_MULTIHASH_PREFIX = bytes([0x1E, 0x20])
_ADDR_TTL_S = 24 * 3600


def digest_key(digest: bytes) -> str:
    """The DHT key for content named by a 32-byte blake3 digest: its multihash, as hex.

    Raises:
        ConfigError: ``digest`` is not 32 bytes.
    """
    if len(digest) != 32:
        raise ConfigError(f"a blake3 digest is 32 bytes, got {len(digest)}", key="digest")
    return (BLAKE3_MULTIHASH_PREFIX + bytes(digest)).hex()


@dataclass(frozen=True, slots=True)
class DhtConfig:
    refresh_interval_s: float = 60.0
    query_timeout_s: float = 10.0
    enable_random_walk: bool = False

    def __post_init__(self) -> None:
        if self.refresh_interval_s <= 0 or self.query_timeout_s <= 0:
            raise ConfigError("DHT intervals and timeouts must be positive", key="dht")


class Dht:
    """Kademlia (server mode) on ``host``.

    Args:
        host: a running libp2p host.
        bootstrap: full multiaddrs (``/ip4/.../tcp/.../p2p/<id>``) added to the routing table
            when ``run`` starts; they are dialled by the first refresh.
        config: refresh period and query timeout.
    """

    def __init__(self, host: Any, *, bootstrap: Sequence[str] = (), config: DhtConfig | None = None) -> None:
        self.config = config or DhtConfig()
        self._host = host
        self._bootstrap = []
        for addr in bootstrap:
            try:
                self._bootstrap.append(info_from_p2p_addr(multiaddr.Multiaddr(addr)))
            except Exception as exc:  # noqa: BLE001 - multiaddr raises assorted errors for bad text
                raise ConfigError(f"not a peer address: {addr!r}", key="dht.bootstrap") from exc
        # Constructed here (it only registers the /ipfs/kad/1.0.0 handler) so that add_peer works
        # as soon as the object exists; queries need ``run``.
        self._kad = KadDHT(host, DHTMode.SERVER, enable_random_walk=self.config.enable_random_walk)
        self._refresh_lock = trio.Lock()
        self._refresh_requested = 0
        self._refresh_done = 0
        self._running = False

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Start the DHT, add the bootstrap peers, refresh, then refresh periodically.

        ``task_status.started()`` comes after the first refresh (which may have found nobody:
        that is logged, not raised).
        """
        async with background_trio_service(self._kad):
            self._running = True
            try:
                store = self._host.get_peerstore()
                for info in self._bootstrap:
                    store.add_addrs(info.peer_id, info.addrs, _ADDR_TTL_S)
                    await self._kad.add_peer(info.peer_id)
                await self._refresh_logged()
                task_status.started()
                while True:
                    await trio.sleep(self.config.refresh_interval_s)
                    await self._refresh_logged()
            finally:
                self._running = False

    async def _refresh_logged(self) -> None:
        try:
            await self.refresh()
        except PeerError as exc:
            log.warning("DHT routing-table refresh failed: %s", exc)

    async def add_peer(self, peer_id: str, *, refresh: bool = True) -> bool:
        """Add a verified, connected peer to the routing table, then refresh (coalesced).

        Returns:
            False when the table refused the peer (not a DHT server, a full bucket, no address).
        """
        pid = _peer(peer_id)
        try:
            added = bool(await self._kad.add_peer(pid))
        except Exception as exc:  # noqa: BLE001 - libp2p raises many types; all mean "could not add"
            raise PeerError(f"cannot add {peer_id} to the DHT: {exc}") from exc
        if added and refresh and self._running:
            await self.refresh()
        return added

    async def refresh(self) -> None:
        """Refresh the routing table; concurrent callers share one refresh started after they called.

        Raises:
            PeerError: the refresh failed or took over ``query_timeout_s``.
        """
        self._refresh_requested += 1
        ticket = self._refresh_requested
        async with self._refresh_lock:
            if self._refresh_done >= ticket:
                return  # a refresh that started after we asked has completed
            covers = self._refresh_requested
            with trio.move_on_after(self.config.query_timeout_s) as scope:
                try:
                    await self._kad.refresh_routing_table()
                except Exception as exc:  # noqa: BLE001 - see add_peer
                    raise PeerError(f"DHT refresh failed: {exc}") from exc
            if scope.cancelled_caught:
                raise PeerError(f"DHT refresh took over {self.config.query_timeout_s} s")
            self._refresh_done = covers

    async def provide(self, digest: bytes) -> bool:
        """Announce that this node provides the content named by ``digest``.

        Returns:
            Whether the library reports the provider record stored.

        Raises:
            PeerError: the operation failed or timed out.
        """
        key = digest_key(digest)
        with trio.move_on_after(self.config.query_timeout_s) as scope:
            try:
                ok = bool(await self._kad.provide(key))
            except Exception as exc:  # noqa: BLE001 - see add_peer
                raise PeerError(f"DHT provide failed: {exc}") from exc
        if scope.cancelled_caught:
            raise PeerError(f"DHT provide took over {self.config.query_timeout_s} s")
        return ok

    async def find_providers(self, digest: bytes, count: int = 20) -> list[str]:
        """Peers (base58 ids, each once, in the library's order) providing ``digest``.

        Their addresses, when the answer carried any, are in the host's peerstore.

        Raises:
            PeerError: the lookup failed or timed out.
        """
        key = digest_key(digest)
        with trio.move_on_after(self.config.query_timeout_s) as scope:
            try:
                infos = await self._kad.find_providers(key, count)
            except Exception as exc:  # noqa: BLE001 - see add_peer
                raise PeerError(f"DHT find_providers failed: {exc}") from exc
        if scope.cancelled_caught:
            raise PeerError(f"DHT find_providers took over {self.config.query_timeout_s} s")
        seen: dict[str, None] = {}
        for info in infos:
            seen.setdefault(str(info.peer_id.to_base58()), None)
        return list(seen)[: max(0, count)]

    def routing_table_size(self) -> int:
        return int(self._kad.get_routing_table_size())

    def routing_table_peers(self) -> list[str]:
        return sorted(str(p.to_base58()) for p in self._kad.routing_table.get_peer_ids())


def _peer(peer_id: str) -> ID:
    try:
        return ID.from_base58(peer_id)
    except Exception as exc:  # noqa: BLE001 - base58/multihash raise assorted errors
        raise ConfigError(f"not a peer id: {peer_id!r}", key="peer_id") from exc
