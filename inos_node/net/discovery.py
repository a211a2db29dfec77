"""Finding peers: bootstrap peers kept connected, and the hook that feeds the DHT.

Theory of operation
-------------------
``Bootstrapper`` keeps one task per bootstrap multiaddr:

    ┌──────────► dial ──ok──► on_connected(peer) ──► wait for "disconnected" event ──┐
    │              │                                                                   │
    │            fails ──► sleep(backoff), backoff = min(2 x backoff, max) ──► dial    │
    └──────────────────────────────────────────────────────────────────────────────────┘

A success resets the backoff, so a peer that drops is redialled at once; one that is down is
retried at 0.5 s, 1 s, 2 s ... up to ``max_backoff_s`` (with +-20 % jitter, so a restarted
bootstrap node is not hit by every peer in the same instant).  Each dial first lifts the
swarm's "negative cache" for the peer: after one failed dial py-libp2p refuses to dial a peer
again for 60 s, which would override this backoff.  Disconnections arrive as events
from a network notifee: nothing polls.

``on_connected`` is the routing-table hook: the node passes ``dht.add_peer`` (or a function
that verifies the peer first and then calls it), so every (re)connection to a bootstrap peer
refreshes the DHT's routing table (the DHT does not learn peers from connections, P11).

mDNS (``DiscoveryConfig.enable_mdns``) is a flag for the host builder
(``host_options(config)`` gives the ``new_host`` keyword).  It is OFF by default and UNTESTED:
py-libp2p's mDNS (zeroconf) multicasts off the loopback interface, so no test enables it.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import multiaddr
import trio
from libp2p.peer.peerinfo import info_from_p2p_addr

from inos_node.errors import ConfigError, InosError
from inos_node.net.host import ConnectionEvents, connect

__all__ = ["Bootstrapper", "DiscoveryConfig", "host_options"]

log = logging.getLogger(__name__)

OnConnected = Callable[[str], Awaitable[Any]]


@dataclass(frozen=True, slots=True)
class DiscoveryConfig:
    bootstrap: tuple[str, ...] = ()
    initial_backoff_s: float = 0.5
    max_backoff_s: float = 30.0
    enable_mdns: bool = False  # UNTESTED: multicasts off-loopback; see the module docstring

    def __post_init__(self) -> None:
        if not 0 < self.initial_backoff_s <= self.max_backoff_s:
            raise ConfigError("need 0 < initial_backoff_s <= max_backoff_s", key="discovery.backoff")


def host_options(config: DiscoveryConfig) -> dict[str, Any]:
    """Keyword arguments for ``libp2p.new_host`` that discovery owns (mDNS: untested)."""
    return {"enable_mDNS": config.enable_mdns}


@dataclass(slots=True)
class _PeerState:
    address: str
    peer_id: str
    libp2p_id: Any
    dials: int = 0
    failures: int = 0
    connects: int = 0


class Bootstrapper:
    """Dials each bootstrap multiaddr and redials it with backoff whenever it drops.

    Args:
        host: a running libp2p host.
        addrs: full multiaddrs ending in ``/p2p/<peer id>``.
        on_connected: awaited with the peer id after every successful (re)connection; an
            ``InosError`` it raises is logged (the connection stays).
        initial_backoff_s, max_backoff_s: retry delays after failed dials.
        rng: jitter source (seed it in tests that care).

    Raises:
        ConfigError: an address is not a full peer multiaddr.
    """

    def __init__(
        self,
        host: Any,
        addrs: Sequence[str],
        on_connected: OnConnected | None = None,
        *,
        initial_backoff_s: float = 0.5,
        max_backoff_s: float = 30.0,
        rng: random.Random | None = None,
    ) -> None:
        DiscoveryConfig(initial_backoff_s=initial_backoff_s, max_backoff_s=max_backoff_s)  # validates
        self._host = host
        self._on_connected = on_connected
        self._initial = initial_backoff_s
        self._max = max_backoff_s
        self._rng = rng or random.Random()
        self._peers: list[_PeerState] = []
        for addr in addrs:
            try:
                pid = info_from_p2p_addr(multiaddr.Multiaddr(addr)).peer_id
            except Exception as exc:  # noqa: BLE001 - multiaddr raises assorted errors for bad text
                raise ConfigError(
                    f"not a bootstrap peer address (want .../p2p/<id>): {addr!r}", key="bootstrap"
                ) from exc
            self._peers.append(_PeerState(addr, str(pid.to_base58()), pid))
        self._down: dict[str, trio.Event] = {}
        self._up: dict[str, trio.Event] = {}

    @property
    def peer_ids(self) -> list[str]:
        return [p.peer_id for p in self._peers]

    def is_connected(self, peer_id: str) -> bool:
        return any(str(p.to_base58()) == peer_id for p in self._host.get_connected_peers())

    def statistics(self) -> dict[str, dict[str, int]]:
        return {
            p.peer_id: {"dials": p.dials, "failures": p.failures, "connects": p.connects} for p in self._peers
        }

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Keep every bootstrap peer connected until cancelled.

        ``task_status.started()`` comes once every address has had its first dial (successful
        or not), so the caller knows which bootstrap peers answered at start-up.
        """
        watcher = ConnectionEvents(on_disconnected=self._disconnected)
        network = self._host.get_network()
        network.register_notifee(watcher)
        try:
            async with trio.open_nursery() as nursery:
                for state in self._peers:
                    await nursery.start(self._keep, state)
                task_status.started()
        finally:
            network.remove_notifee(watcher)

    def _disconnected(self, peer_id: str) -> None:
        if self.is_connected(peer_id):
            return  # another connection to the peer is still up
        event = self._down.pop(peer_id, None)
        if event is not None:
            event.set()

    async def wait_connected(self, peer_id: str) -> None:
        """Wait (event-based) until the bootstrapper has (re)connected ``peer_id``."""
        while not self.is_connected(peer_id):
            await self._up.setdefault(peer_id, trio.Event()).wait()

    async def _keep(self, state: _PeerState, *, task_status: trio.TaskStatus[None]) -> None:
        backoff = self._initial
        started = False
        while True:
            down = self._down.setdefault(state.peer_id, trio.Event())
            if not self.is_connected(state.peer_id):
                state.dials += 1
                # The swarm refuses to dial a peer for 60 s after all its addresses failed
                # ("negative cache"); our backoff decides when to retry a bootstrap peer.
                self._host.get_network().unblock_peer(state.libp2p_id)
                try:
                    await connect(self._host, state.address)
                except InosError as exc:
                    state.failures += 1
                    log.debug(
                        "bootstrap dial to %s failed (retry in %.2f s): %s", state.address, backoff, exc
                    )
                    if not started:
                        started = True
                        task_status.started()
                    await trio.sleep(backoff * self._rng.uniform(0.8, 1.2))
                    backoff = min(backoff * 2, self._max)
                    continue
                backoff = self._initial
                state.connects += 1
                await self._connected(state.peer_id)
                down = self._down.setdefault(state.peer_id, trio.Event())
            if not started:
                started = True
                task_status.started()
            if self.is_connected(state.peer_id):
                await down.wait()

    async def _connected(self, peer_id: str) -> None:
        up = self._up.pop(peer_id, None)
        if up is not None:
            up.set()
        if self._on_connected is not None:
            try:
                await self._on_connected(peer_id)
            except InosError as exc:
                log.warning("bootstrap on_connected(%s) failed: %s", peer_id, exc)
