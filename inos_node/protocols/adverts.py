"""Capability adverts: which peer serves which methods, at what price, and how busy it is.

Theory of operation
-------------------
Every node periodically gossips a signed ``Advert`` on topic ``inos/adverts/1``.  The network
adapter (``inos_node.net.gossip``) checks signatures and identities; this core only decides
what the node *remembers*: at most one advert per peer, the one with the highest sequence,
for as long as it has not expired, and at most ``max_peers`` peers in all.

    offer(advert, now_ms)
       │
       ├─ problem(advert, now_ms) is not None  ─────────────────────────────► REJECTED
       │     (no peer id, ttl 0 or over max_ttl_ms, issued more than
       │      max_skew_ms in the future, already expired, load not in [0, 1])
       ├─ peer known, sequence <= the one held  ────────────────────────────► STALE
       ├─ peer known, newer sequence  ───────────── replaces the old one ───► ACCEPTED
       ├─ new peer, table not full  ────────────────────────────────────────► ACCEPTED
       └─ new peer, table full ── expire(now_ms) ── room now? ─────────────► ACCEPTED
                                                 └─ evict the advert that expires soonest,
                                                    if it expires before the newcomer ──► ACCEPTED
                                                    else  ──────────────────────────────► REJECTED

Rules this module lives by:
  1. Time is an argument (``now_ms``, Unix milliseconds: adverts carry absolute issue times
     that every node compares with its own wall clock).  The core never reads a clock.
  2. Everything is bounded: ``max_peers`` entries; a TTL cap so that no advert lives forever;
     a skew cap so that an advert issued "in the future" cannot stretch its own life.
  3. A rejected or stale offer changes nothing but the counters.
  4. An expired advert is never returned by ``peers_serving``, even before ``expire`` ran.

Sequences are per peer and strictly increasing; the publisher uses ``max(last + 1, now_ms)`` so
that they keep increasing across restarts (see ``next_sequence``).
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field

__all__ = [
    "Advert",
    "AdvertTable",
    "DEFAULT_MAX_TTL_MS",
    "MethodPrice",
    "OfferResult",
    "TableStatistics",
    "next_sequence",
]


DEFAULT_MAX_TTL_MS = 10 * 60 * 1000


@dataclass(frozen=True, slots=True)
class MethodPrice:
    """One method a peer serves.  ``price_per_unit`` is in credits' smallest unit."""

    method: str
    price_per_unit: int = 0
    cost_model: str = "call"  # "call", "mib" or "fuel"


@dataclass(frozen=True, slots=True)
class Advert:
    """What a peer says about itself (mirrors ``Advert`` in ``schemas/p2p/v1/gossip.capnp``).

    The node's ``make_advert()`` fills in the content (methods, load, ...); the publisher stamps
    ``peer_id``, ``sequence``, ``issued_unix_ms`` and ``ttl_ms``.
    """

    peer_id: str = ""
    name: str = ""
    protocol_version: int = 1
    sequence: int = 0
    issued_unix_ms: int = 0
    ttl_ms: int = 0
    methods: tuple[MethodPrice, ...] = ()
    load: float = 0.0
    queue_depth: int = 0
    cores: int = 0
    features: tuple[str, ...] = ()
    addresses: tuple[str, ...] = ()
    api_version: str = ""

    @property
    def expires_unix_ms(self) -> int:
        return self.issued_unix_ms + self.ttl_ms

    def price_of(self, method: str) -> int | None:
        """The advertised price of ``method``, or None when the peer does not serve it."""
        for m in self.methods:
            if m.method == method:
                return m.price_per_unit
        return None


class OfferResult(enum.Enum):
    ACCEPTED = "accepted"
    STALE = "stale"
    REJECTED = "rejected"


@dataclass(frozen=True, slots=True)
class TableStatistics:
    peers: int
    accepted: int
    stale: int
    rejected: int
    evicted: int
    expired: int


def next_sequence(last: int, now_ms: int) -> int:
    """The sequence of a node's next advert: above ``last``, and at least the wall-clock time.

    Using the clock as a floor keeps sequences increasing across restarts (a restarted node
    has forgotten ``last``, but its clock has moved on), so peers do not hold on to the advert
    of the node's previous life as "newer".
    """
    return max(last + 1, now_ms)


@dataclass(slots=True)
class AdvertTable:
    """The adverts this node has heard, newest per peer, bounded and expiring.

    Args:
        max_peers: the most peers held; a newcomer to a full table evicts the advert that
            expires soonest, if that expires before the newcomer's.
        max_ttl_ms: adverts claiming a longer life are rejected.
        max_skew_ms: adverts issued more than this after ``now_ms`` are rejected.
    """

    max_peers: int = 1024
    max_ttl_ms: int = DEFAULT_MAX_TTL_MS
    max_skew_ms: int = 60 * 1000
    _by_peer: dict[str, Advert] = field(default_factory=dict, init=False, repr=False)
    _accepted: int = field(default=0, init=False, repr=False)
    _stale: int = field(default=0, init=False, repr=False)
    _rejected: int = field(default=0, init=False, repr=False)
    _evicted: int = field(default=0, init=False, repr=False)
    _expired: int = field(default=0, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.max_peers < 1:
            raise ValueError("max_peers must be >= 1")
        if self.max_ttl_ms < 1:
            raise ValueError("max_ttl_ms must be >= 1")
        if self.max_skew_ms < 0:
            raise ValueError("max_skew_ms must be >= 0")

    def __len__(self) -> int:
        return len(self._by_peer)

    def __contains__(self, peer_id: object) -> bool:
        return peer_id in self._by_peer

    def problem(self, advert: Advert, now_ms: int) -> str | None:
        """Why ``advert`` would be rejected at ``now_ms``, or None if it is acceptable.

        The network adapter calls this from its gossip validator too, so that adverts this
        table would refuse are not forwarded either.
        """
        if not advert.peer_id:
            return "no peer id"
        if not 0 < advert.ttl_ms <= self.max_ttl_ms:
            return f"ttl {advert.ttl_ms} ms is not in 1..{self.max_ttl_ms}"
        if advert.issued_unix_ms > now_ms + self.max_skew_ms:
            return "issued in the future"
        if advert.expires_unix_ms <= now_ms:
            return "expired"
        if not (math.isfinite(advert.load) and 0.0 <= advert.load <= 1.0):
            return "load is not in [0, 1]"
        return None

    def offer(self, advert: Advert, now_ms: int) -> OfferResult:
        """Consider ``advert`` heard at ``now_ms``; see the module docstring for the rules."""
        if self.problem(advert, now_ms) is not None:
            self._rejected += 1
            return OfferResult.REJECTED
        held = self._by_peer.get(advert.peer_id)
        if held is not None:
            if advert.sequence <= held.sequence:
                self._stale += 1
                return OfferResult.STALE
        elif len(self._by_peer) >= self.max_peers and not self._make_room(advert, now_ms):
            self._rejected += 1
            return OfferResult.REJECTED
        self._by_peer[advert.peer_id] = advert
        self._accepted += 1
        return OfferResult.ACCEPTED

    def _make_room(self, newcomer: Advert, now_ms: int) -> bool:
        self.expire(now_ms)
        if len(self._by_peer) < self.max_peers:
            return True
        victim = min(self._by_peer.values(), key=lambda a: (a.expires_unix_ms, a.peer_id))
        if victim.expires_unix_ms >= newcomer.expires_unix_ms:
            return False
        del self._by_peer[victim.peer_id]
        self._evicted += 1
        return True

    def expire(self, now_ms: int) -> tuple[str, ...]:
        """Drop every advert expired at ``now_ms``; returns their peer ids, sorted."""
        gone = sorted(p for p, a in self._by_peer.items() if a.expires_unix_ms <= now_ms)
        for p in gone:
            del self._by_peer[p]
        self._expired += len(gone)
        return tuple(gone)

    def get(self, peer_id: str) -> Advert | None:
        """The advert held for ``peer_id`` (possibly expired if ``expire`` has not run since)."""
        return self._by_peer.get(peer_id)

    def peers_serving(self, method: str, now_ms: int) -> list[Advert]:
        """Unexpired adverts offering ``method``, cheapest first, then least loaded.

        Ties break on queue depth, then peer id, so the order is deterministic.
        """
        found: list[tuple[int, float, int, str, Advert]] = []
        for a in self._by_peer.values():
            price = a.price_of(method)
            if price is not None and a.expires_unix_ms > now_ms:
                found.append((price, a.load, a.queue_depth, a.peer_id, a))
        found.sort(key=lambda t: t[:4])
        return [t[4] for t in found]

    def snapshot(self) -> tuple[Advert, ...]:
        """Every advert held, ordered by peer id."""
        return tuple(self._by_peer[p] for p in sorted(self._by_peer))

    def statistics(self) -> TableStatistics:
        return TableStatistics(
            peers=len(self._by_peer),
            accepted=self._accepted,
            stale=self._stale,
            rejected=self._rejected,
            evicted=self._evicted,
            expired=self._expired,
        )
