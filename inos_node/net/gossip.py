"""GossipSub for the node: a guarded pubsub, and the signed capability adverts on top of it.

Theory of operation
-------------------
``Gossip`` owns one py-libp2p ``Pubsub`` + ``GossipSub`` router per host.  Everything the
library does not do safely by default is done here (notes/py-libp2p.md):

  * the router advertises ``/meshsub/1.1.0`` and ``/meshsub/1.0.0`` only: 1.2's IDONTWANT on
    every message doubles per-message RPCs, latency and CPU (P4);
  * heartbeat 1 s (default 120 s), spam / adaptive / eclipse protection off: the first caps
    *our own* publishes at 10 msg/s, the second stretches the heartbeat to >= 60 s, the third
    wants 3 distinct IPs (P3);
  * scoring: a positive P4 weight *is* a penalty in this library (P6), with real thresholds so
    that a peer forwarding invalid messages is gated, then graylisted;
  * validators are wrapped so that they never raise: an exception escaping a validator takes
    the node down (P7).  A raising validator rejects the message and is logged once per topic;
  * publishes go through a small bounded queue and a pacer: ``pubsub.publish`` never blocks
    and the per-peer 32-RPC queue drops silently on bursts (P5);
  * each subscription is drained by a dedicated task into the topic's (synchronous) handler:
    a slow consumer would otherwise lose messages at the 32-slot subscription channel (P5).

    publish() ──► send queue (bounded) ──► pacer ──► pubsub.publish ──► router ──► peers
    peers ──► pubsub ──► wrapped validator ──► subscription ──► drain task ──► on_message

Adverts ride on topic ``inos/adverts/1`` (``ADVERTS_TOPIC``):

  * ``AdvertPublisher`` signs and publishes the node's advert every ``interval_s`` and at once
    on ``changed()`` (also when a peer joins our mesh for the topic), at most every
    ``min_interval_s``.  Content comes from the node's ``make_advert()``; the publisher stamps
    the peer id, sequence, issue time and TTL.
  * ``AdvertBook`` validates received adverts (signature; the key derives the claimed peer id;
    the claimed peer id is the gossip message's signed ``from`` id; not expired) and offers
    the valid ones to an ``AdvertTable`` (``inos_node.protocols.adverts``).  Waiting is
    event-based (``wait_for_advert``, ``wait_until``).

Cancellation: ``run`` methods run until cancelled; leaving them stops pubsub and the router.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import blake3
import trio
from libp2p.peer.id import ID
from libp2p.pubsub.gossipsub import PROTOCOL_ID, PROTOCOL_ID_V11, GossipSub
from libp2p.pubsub.pubsub import Pubsub
from libp2p.pubsub.score import ScoreParams, TopicScoreParams
from libp2p.tools.anyio_service import background_trio_service

from inos_node.errors import ConfigError, LocalProtocolError, RemoteProtocolError
from inos_node.identity import Identity
from inos_node.net.host import ConnectionEvents, peer_id_from_public_key, peer_id_of
from inos_node.protocols.adverts import DEFAULT_MAX_TTL_MS, Advert, AdvertTable, next_sequence
from inos_node.wire.adverts import decode_advert, decode_signed_advert, open_signed_advert, sign_advert

__all__ = [
    "ADVERTS_TOPIC",
    "AdvertBook",
    "AdvertPublisher",
    "Gossip",
    "GossipConfig",
    "GossipMessage",
    "GossipStatistics",
    "Topic",
    "adverts_topic",
    "unix_ms",
]

log = logging.getLogger(__name__)

ADVERTS_TOPIC = "inos/adverts/1"


def unix_ms() -> int:
    """Wall-clock Unix milliseconds: adverts carry absolute times compared across nodes."""
    return time.time_ns() // 1_000_000


@dataclass(frozen=True, slots=True)
class GossipMessage:
    """A message as validators and handlers see it.

    ``from_peer`` is the originator, covered by the libp2p message signature (strict signing);
    ``forwarder`` is the neighbour that handed it to us (known to validators only; "" in handlers).
    """

    topic: str
    data: bytes
    from_peer: str
    seqno: bytes
    forwarder: str = ""


Validator = Callable[[GossipMessage], bool]
Handler = Callable[[GossipMessage], None]
PeerHook = Callable[[str], None]


@dataclass(frozen=True, slots=True)
class Topic:
    """A topic the node subscribes to.

    Args:
        name: the topic string.
        on_message: called (synchronously, from the topic's drain task) for every delivered
            message; it must be quick.  Exceptions are logged and the message dropped.
        validate: called by pubsub before a message is delivered or forwarded; False rejects it
            (and counts against the forwarder's score).  Exceptions count as False.
        on_peer_joined: called with a peer id when a newly connected peer enters our mesh for
            this topic (e.g. to publish state it should see at once).
    """

    name: str
    on_message: Handler | None = None
    validate: Validator | None = None
    on_peer_joined: PeerHook | None = None


@dataclass(frozen=True, slots=True)
class GossipConfig:
    degree: int = 6
    degree_low: int = 4
    degree_high: int = 12
    heartbeat_interval_s: int = 1  # GossipSub takes whole seconds
    heartbeat_initial_delay_s: float = 0.1
    # Publishes wait here for the pacer.  64 absorbs a burst of a few hundred ms at the pace
    # below; a fuller queue makes publish() wait, which is the backpressure pubsub lacks.
    send_queue: int = 64
    # 5 ms between publishes: back-to-back publishes overflow the per-peer 32-RPC queue and
    # are dropped (32/50 delivered); 5 ms gave 50/50 (notes §3.5).
    min_publish_interval_s: float = 0.005
    max_message_bytes: int = 1024 * 1024
    seen_ttl_s: int = 120
    # Scoring (P6: this library subtracts weight x count, so the penalty weight is positive).
    invalid_message_weight: float = 10.0
    invalid_message_cap: float = 100.0
    invalid_message_decay: float = 0.9  # per heartbeat
    gossip_threshold: float = -10.0
    publish_threshold: float = -20.0
    graylist_threshold: float = -50.0
    # How long to wait for a newly connected peer to enter the mesh (Topic.on_peer_joined).
    mesh_join_timeout_s: float = 10.0
    max_join_watchers: int = 32

    def __post_init__(self) -> None:
        if not 0 < self.degree_low <= self.degree <= self.degree_high:
            raise ConfigError("need 0 < degree_low <= degree <= degree_high", key="gossip.degree")
        if self.heartbeat_interval_s < 1:
            raise ConfigError("heartbeat_interval_s must be >= 1", key="gossip.heartbeat_interval_s")
        if self.send_queue < 1 or self.max_join_watchers < 1:
            raise ConfigError("queues must hold at least 1", key="gossip.send_queue")
        if self.min_publish_interval_s < 0:
            raise ConfigError("min_publish_interval_s must be >= 0", key="gossip.min_publish_interval_s")
        if not self.graylist_threshold <= self.publish_threshold <= self.gossip_threshold <= 0:
            raise ConfigError("need graylist <= publish <= gossip threshold <= 0", key="gossip.thresholds")


@dataclass(frozen=True, slots=True)
class GossipStatistics:
    published: int
    delivered: dict[str, int]
    validator_errors: int
    handler_errors: int
    publish_errors: int


def message_id(msg: Any) -> bytes:
    """GossipSub's message id: sender, sequence number AND a digest of the content.

    py-libp2p's default (sender + seqno, the seqno starting at the clock's seconds) makes two
    publishers with one identity (a cloned data dir, started in the same second) produce equal
    ids for different messages, and relays would drop the second as already seen: exactly the
    equivocation the ledger must hear about.
    """
    return bytes(msg.from_id) + bytes(msg.seqno) + blake3.blake3(bytes(msg.data)).digest()[:16]


def _guarded_stream_handler(handler: Callable[[Any], Any]) -> Callable[[Any], Any]:
    async def guarded(stream: Any) -> None:
        try:
            await handler(stream)
        except Exception as exc:  # noqa: BLE001 - P7: policy: reset this stream, keep the host alive
            log.debug("pubsub stream handler failed (%r); resetting the stream", exc)
            with trio.move_on_after(1):
                try:
                    await stream.reset()
                except Exception:  # noqa: BLE001 - the stream may be gone already; nothing to do
                    pass

    return guarded


class Gossip:
    """GossipSub v1.1 on ``host``, configured and guarded per the module docstring.

    Args:
        host: a running libp2p host (``inos_node.net.host.open_host``).
        identity: the node's identity; must be the host's key.
        topics: the topics to subscribe to, with their handlers and validators.
        config: router and pacing settings.

    Start it with ``await nursery.start(gossip.run)`` before dialling peers if you can; peers
    already connected when ``run`` starts are picked up too.
    """

    def __init__(
        self,
        host: Any,
        identity: Identity,
        *,
        topics: Sequence[Topic] = (),
        config: GossipConfig | None = None,
    ) -> None:
        self.peer_id = str(host.get_id().to_base58())
        if peer_id_of(identity) != self.peer_id:
            raise ConfigError("the gossip identity is not the host's key", key="identity")
        names = [t.name for t in topics]
        if len(set(names)) != len(names):
            raise ConfigError(f"duplicate topics in {names}", key="gossip.topics")
        self._host = host
        self._topics = {t.name: t for t in topics}
        self.config = config or GossipConfig()
        self._send, self._receive = trio.open_memory_channel[tuple[str, bytes]](self.config.send_queue)
        self._pubsub: Any = None
        self._router: Any = None
        self._published = 0
        self._delivered = dict.fromkeys(self._topics, 0)
        self._validator_errors = 0
        self._handler_errors = 0
        self._publish_errors = 0
        self._logged: set[str] = set()

    # -- lifecycle ------------------------------------------------------------------------

    def _make_router(self) -> Any:
        c = self.config
        return GossipSub(
            protocols=[PROTOCOL_ID_V11, PROTOCOL_ID],
            degree=c.degree,
            degree_low=c.degree_low,
            degree_high=c.degree_high,
            heartbeat_initial_delay=c.heartbeat_initial_delay_s,
            heartbeat_interval=c.heartbeat_interval_s,
            score_params=ScoreParams(
                p4_invalid_messages=TopicScoreParams(
                    weight=c.invalid_message_weight, cap=c.invalid_message_cap, decay=c.invalid_message_decay
                ),
                gossip_threshold=c.gossip_threshold,
                publish_threshold=c.publish_threshold,
                graylist_threshold=c.graylist_threshold,
            ),
            spam_protection_enabled=False,
            adaptive_gossip_enabled=False,
            eclipse_protection_enabled=False,
        )

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Start pubsub and the router, subscribe, and serve until cancelled.

        ``task_status.started()`` is called once every topic is subscribed and its drain task
        is running.  Resource handling: pubsub, the router and every task of this object stop
        when ``run`` returns; the send queue survives, so ``publish`` may be called before
        ``run`` (it waits for room).
        """
        router = self._make_router()
        pubsub = Pubsub(self._host, router, strict_signing=True, seen_ttl=self.config.seen_ttl_s,
                        msg_id_constructor=message_id)
        # Pubsub's inbound stream handler runs in the swarm, not in pubsub's service: an error
        # there (e.g. a message arriving while pubsub stops: "Nursery is closed to new
        # arrivals") would take the host down (P7).  Guard it, and unregister it on exit.
        for proto in router.get_protocols():
            self._host.set_stream_handler(proto, _guarded_stream_handler(pubsub.stream_handler))
        for topic in self._topics.values():
            if topic.validate is not None:
                pubsub.set_topic_validator(topic.name, self._guarded_validator(topic), False)
        joined_send, joined_receive = trio.open_memory_channel[str](self.config.max_join_watchers)
        watcher = ConnectionEvents(on_connected=partial(_forward_nowait, joined_send))
        # Strict nesting (notes §1.10): host, then pubsub, then router, then our nursery.
        async with background_trio_service(pubsub), background_trio_service(router):
            await pubsub.wait_until_ready()
            try:
                async with trio.open_nursery() as nursery:
                    for topic in self._topics.values():
                        sub = await pubsub.subscribe(topic.name)
                        nursery.start_soon(self._drain, topic, sub)
                    nursery.start_soon(self._pace, pubsub)
                    if any(t.on_peer_joined for t in self._topics.values()):
                        self._host.get_network().register_notifee(watcher)
                        nursery.start_soon(self._watch_joins, router, joined_receive)
                    # Pubsub learns peers from connection events; peers that connected before
                    # it existed would never get a pubsub stream.  Registration is idempotent.
                    for pid in self._host.get_connected_peers():
                        pubsub.manager.run_task(pubsub._handle_new_peer_with_retry, pid)
                    self._pubsub, self._router = pubsub, router
                    task_status.started()
            finally:
                self._pubsub = self._router = None
                for proto in router.get_protocols():
                    self._host.remove_stream_handler(proto)
                self._host.get_network().remove_notifee(watcher)
                joined_send.close()

    # -- publishing ------------------------------------------------------------------------

    async def publish(self, topic: str, data: bytes) -> None:
        """Queue ``data`` for ``topic``; waits while the send queue is full.

        Raises:
            LocalProtocolError: ``data`` is over ``config.max_message_bytes``.
        """
        if len(data) > self.config.max_message_bytes:
            raise LocalProtocolError(
                f"gossip message of {len(data)} bytes is over the {self.config.max_message_bytes}-byte limit",
                limit=self.config.max_message_bytes,
                observed=len(data),
            )
        await self._send.send((topic, bytes(data)))

    async def _pace(self, pubsub: Any) -> None:
        next_at = -math.inf
        async for topic, data in self._receive:
            await trio.sleep_until(next_at)
            try:
                await pubsub.publish(topic, data)
                self._published += 1
            except Exception:  # noqa: BLE001 - policy: a failed publish is logged and dropped, the node goes on
                self._publish_errors += 1
                log.exception("gossip publish on topic=%s failed", topic)
            next_at = trio.current_time() + self.config.min_publish_interval_s

    # -- receiving -------------------------------------------------------------------------

    def _guarded_validator(self, topic: Topic) -> Callable[[Any, Any], bool]:
        validate = topic.validate
        assert validate is not None

        def validator(forwarder: Any, msg: Any) -> bool:
            try:
                return bool(
                    validate(
                        GossipMessage(
                            topic=topic.name,
                            data=bytes(msg.data),
                            from_peer=str(ID(msg.from_id).to_base58()),
                            seqno=bytes(msg.seqno),
                            forwarder=str(forwarder.to_base58()),
                        )
                    )
                )
            except Exception:  # noqa: BLE001 - P7: an exception escaping a validator kills the node; policy: reject, log once per topic
                self._validator_errors += 1
                if topic.name not in self._logged:
                    self._logged.add(topic.name)
                    log.exception("validator of topic=%s raised; rejecting (logged once)", topic.name)
                return False

        return validator

    async def _drain(self, topic: Topic, sub: Any) -> None:
        async for msg in sub:
            self._delivered[topic.name] += 1
            if topic.on_message is None:
                continue
            try:
                topic.on_message(
                    GossipMessage(
                        topic=topic.name,
                        data=bytes(msg.data),
                        from_peer=str(ID(msg.from_id).to_base58()),
                        seqno=bytes(msg.seqno),
                    )
                )
            except Exception:  # noqa: BLE001 - policy: a raising handler loses that message only, logged
                self._handler_errors += 1
                log.exception("handler of topic=%s raised; message dropped", topic.name)

    async def _watch_joins(self, router: Any, joined: trio.MemoryReceiveChannel[str]) -> None:
        limit = trio.Semaphore(self.config.max_join_watchers)
        hooks = [t for t in self._topics.values() if t.on_peer_joined is not None]
        async with trio.open_nursery() as nursery:
            async for peer in joined:
                await limit.acquire()
                nursery.start_soon(self._watch_join, router, peer, hooks, limit)

    async def _watch_join(self, router: Any, peer: str, hooks: list[Topic], limit: trio.Semaphore) -> None:
        try:
            pid = ID.from_base58(peer)
            for topic in hooks:
                try:
                    await router.wait_for_mesh(pid, topic.name, timeout=self.config.mesh_join_timeout_s)
                except trio.TooSlowError:
                    continue
                assert topic.on_peer_joined is not None
                topic.on_peer_joined(peer)
        finally:
            limit.release()

    # -- introspection ---------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._pubsub is not None

    def mesh_peers(self, topic: str) -> list[str]:
        if self._router is None:
            return []
        return sorted(str(p.to_base58()) for p in self._router.mesh.get(topic, ()))

    def topic_peers(self, topic: str) -> list[str]:
        """Connected peers known to be subscribed to ``topic``."""
        if self._pubsub is None:
            return []
        return sorted(str(p.to_base58()) for p in self._pubsub.peer_topics.get(topic, ()))

    def score(self, peer_id: str, topic: str) -> float:
        """The router's score of ``peer_id`` on ``topic`` (0 before ``run``)."""
        if self._router is None or self._router.scorer is None:
            return 0.0
        return float(self._router.scorer.score(ID.from_base58(peer_id), [topic]))

    async def wait_for_subscriber(self, peer_id: str, topic: str) -> None:
        """Wait (event-based, unbounded: wrap it in ``trio.fail_after``) until the connected
        peer ``peer_id`` is subscribed to ``topic``."""
        if self._pubsub is None:
            raise trio.ClosedResourceError("gossip is not running")
        await self._pubsub.wait_for_subscription(ID.from_base58(peer_id), topic, timeout=math.inf)

    async def wait_for_mesh(self, peer_id: str, topic: str) -> None:
        """Wait (event-based, unbounded: wrap it in ``trio.fail_after``) until ``peer_id`` is in
        our mesh for ``topic``."""
        if self._router is None:
            raise trio.ClosedResourceError("gossip is not running")
        await self._router.wait_for_mesh(ID.from_base58(peer_id), topic, timeout=math.inf)

    def statistics(self) -> GossipStatistics:
        return GossipStatistics(
            published=self._published,
            delivered=dict(self._delivered),
            validator_errors=self._validator_errors,
            handler_errors=self._handler_errors,
            publish_errors=self._publish_errors,
        )


# -- adverts ---------------------------------------------------------------------------------


class AdvertBook:
    """The receive side of adverts: validator, table and waiters.

    Args:
        table: where accepted adverts go (a fresh ``AdvertTable()`` if None).
        clock: Unix milliseconds; injectable so tests can move one node's wall clock.
        expire_interval_s: how often ``run`` drops expired adverts.
    """

    def __init__(
        self,
        table: AdvertTable | None = None,
        *,
        clock: Callable[[], int] = unix_ms,
        expire_interval_s: float = 1.0,
    ) -> None:
        self.table = table if table is not None else AdvertTable()
        self._clock = clock
        self._expire_interval_s = expire_interval_s
        self._changed = trio.Event()
        self.rejections: deque[tuple[str, str]] = deque(maxlen=64)  # (claimed peer id, reason)
        self.rejected = 0

    def _check(self, msg: GossipMessage) -> Advert | str:
        try:
            advert, key = open_signed_advert(msg.data)
        except RemoteProtocolError as exc:
            return str(exc)
        if peer_id_from_public_key(key) != advert.peer_id:
            return "the signing key does not derive the advert's peer id"
        if advert.peer_id != msg.from_peer:
            return "the advert's peer id is not the gossip message's sender"
        problem = self.table.problem(advert, self._clock())
        return advert if problem is None else problem

    def validate(self, msg: GossipMessage) -> bool:
        """Gossip validator: only authentic, unexpired adverts are delivered and forwarded."""
        verdict = self._check(msg)
        if isinstance(verdict, Advert):
            return True
        self.rejected += 1
        self.rejections.append((self._claimed_peer(msg.data), verdict))
        log.debug("rejected advert from=%s: %s", msg.from_peer, verdict)
        self._notify()
        return False

    @staticmethod
    def _claimed_peer(data: bytes) -> str:
        try:
            return decode_advert(decode_signed_advert(data).advert).peer_id
        except RemoteProtocolError:
            return ""

    def on_message(self, msg: GossipMessage) -> None:
        """Gossip handler: offer a delivered (hence validated) advert to the table."""
        verdict = self._check(msg)  # re-checked: cheap (~0.1 ms), and the clock has moved
        if not isinstance(verdict, Advert):
            return
        self.table.offer(verdict, self._clock())
        self._notify()  # stale and rejected offers too: waiters may be counting them

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    def expire(self) -> tuple[str, ...]:
        gone = self.table.expire(self._clock())
        if gone:
            self._notify()
        return gone

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Drop expired adverts every ``expire_interval_s`` until cancelled."""
        task_status.started()
        while True:
            await trio.sleep(self._expire_interval_s)
            self.expire()

    async def wait_until(self, predicate: Callable[[], bool]) -> None:
        """Wait until ``predicate()`` holds, re-checking after every change (no polling)."""
        while True:
            changed = self._changed
            if predicate():
                return
            await changed.wait()

    async def wait_for_advert(self, peer_id: str, *, min_sequence: int = 0) -> Advert:
        """Wait until the table holds an advert of ``peer_id`` with at least ``min_sequence``."""
        await self.wait_until(lambda: self._held(peer_id, min_sequence) is not None)
        advert = self._held(peer_id, min_sequence)
        assert advert is not None
        return advert

    def _held(self, peer_id: str, min_sequence: int) -> Advert | None:
        a = self.table.get(peer_id)
        return a if a is not None and a.sequence >= min_sequence else None


_DEFAULT_TABLE = AdvertTable()  # only its (stateless) problem() is used, to warn about our own adverts


class AdvertPublisher:
    """Publishes this node's signed advert periodically and on ``changed()``.

    Args:
        identity: the node's key; signs the adverts and gives their peer id.
        make_advert: the node's content (methods and prices, load, queue depth, cores,
            features, protocol version, addresses); called just before each publish.
        interval_s: the period between adverts.
        ttl_ms: how long receivers keep an advert (default: 6 periods, at most the 10 minutes
            receivers accept by default).
        min_interval_s: ``changed()`` calls closer than this are coalesced.
        clock: Unix milliseconds (issue times and sequences).
    """

    def __init__(
        self,
        identity: Identity,
        make_advert: Callable[[], Advert],
        *,
        interval_s: float = 5.0,
        ttl_ms: int | None = None,
        min_interval_s: float = 0.25,
        clock: Callable[[], int] = unix_ms,
    ) -> None:
        if interval_s <= 0 or min_interval_s < 0:
            raise ConfigError("advert intervals must be positive", key="adverts.interval_s")
        self.identity = identity
        self.peer_id = peer_id_of(identity)
        self._make_advert = make_advert
        self.interval_s = interval_s
        self.ttl_ms = ttl_ms if ttl_ms is not None else min(int(interval_s * 6000), DEFAULT_MAX_TTL_MS)
        self.min_interval_s = min_interval_s
        self._clock = clock
        self._sequence = 0
        self._wake = trio.Event()
        self.last: Advert | None = None

    def changed(self) -> None:
        """Publish again soon (within ``min_interval_s``), e.g. after prices or load changed."""
        self._wake.set()

    def next_advert(self) -> Advert:
        now = self._clock()
        self._sequence = next_sequence(self._sequence, now)
        return dataclasses.replace(
            self._make_advert(),
            peer_id=self.peer_id,
            sequence=self._sequence,
            issued_unix_ms=now,
            ttl_ms=self.ttl_ms,
        )

    async def publish_once(self, gossip: Gossip) -> Advert | None:
        """Sign and queue one advert now; returns it (None if it could not be encoded)."""
        advert = self.next_advert()
        problem = _DEFAULT_TABLE.problem(advert, advert.issued_unix_ms)
        if problem is not None:
            log.warning("our advert will be refused by peers with default limits: %s", problem)
        try:
            data = sign_advert(advert, self.identity)
        except LocalProtocolError:
            log.exception("cannot encode our advert; skipped this round")
            return None
        await gossip.publish(ADVERTS_TOPIC, data)
        self.last = advert
        return advert

    async def run(
        self, gossip: Gossip, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Publish at once, then every ``interval_s`` or on ``changed()``, until cancelled."""
        task_status.started()
        while True:
            self._wake = trio.Event()
            await self.publish_once(gossip)
            earliest = trio.current_time() + self.min_interval_s
            with trio.move_on_after(self.interval_s):
                await self._wake.wait()
            await trio.sleep_until(earliest)


def adverts_topic(book: AdvertBook, publisher: AdvertPublisher | None = None) -> Topic:
    """The ``inos/adverts/1`` topic wired to ``book`` (and ``publisher``'s join hook)."""
    hook: PeerHook | None = None
    if publisher is not None:
        changed = publisher.changed

        def hook(_peer: str) -> None:
            changed()

    return Topic(ADVERTS_TOPIC, on_message=book.on_message, validate=book.validate, on_peer_joined=hook)


def _forward_nowait(send: trio.MemorySendChannel[str], peer_id: str) -> None:
    """'Peer connected' into a bounded channel; dropped when full (a missed hook only delays a
    republish until the next period)."""
    try:
        send.send_nowait(peer_id)
    except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
        pass
