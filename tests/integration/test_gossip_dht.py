"""Gossip, adverts, DHT and bootstrap discovery between real libp2p hosts on 127.0.0.1.

Every wait is an event (``wait_for_advert``, ``wait_until``, ``wait_for_mesh``, callbacks),
bounded by ``trio.fail_after``; nothing sleeps to synchronise.
"""

from __future__ import annotations

import dataclasses
import hashlib
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import blake3
import pytest
import trio

from inos_node.errors import ConfigError, LocalProtocolError
from inos_node.identity import Identity
from inos_node.net.dht import Dht, DhtConfig, digest_key
from inos_node.net.discovery import Bootstrapper, DiscoveryConfig, host_options
from inos_node.net.gossip import (
    ADVERTS_TOPIC,
    AdvertBook,
    AdvertPublisher,
    Gossip,
    GossipConfig,
    GossipMessage,
    Topic,
    adverts_topic,
    unix_ms,
)
from inos_node.net.host import HostConfig, connect, open_host, peer_id_of, quiet_libp2p_logs
from inos_node.protocols.adverts import Advert, MethodPrice
from inos_node.wire.adverts import (
    ADVERT_SIGNING_CONTEXT,
    SignedAdvert,
    encode_advert,
    encode_signed_advert,
    sign_advert,
)

pytestmark = pytest.mark.integration

WAIT = 15  # seconds: a generous bound; the waits below finish in well under a second each


def identity(n: int) -> Identity:
    return Identity(hashlib.sha256(b"gossip-dht-test-%d" % n).digest())


def content(name: str) -> Callable[[], Advert]:
    def make() -> Advert:
        return Advert(
            name=name,
            methods=(MethodPrice("compute.blake3", 1, "mib"), MethodPrice(f"{name}.special", 5)),
            load=0.25,
            queue_depth=1,
            cores=4,
            features=("avx2",),
            addresses=(),
            api_version="1",
        )

    return make


@dataclass
class Clock:
    """A wall clock a test can move: real time plus an offset."""

    offset_ms: int = 0

    def __call__(self) -> int:
        return unix_ms() + self.offset_ms


@dataclass
class Node:
    identity: Identity
    host: Any
    gossip: Gossip
    dht: Dht
    book: AdvertBook | None
    publisher: AdvertPublisher | None
    nursery: trio.Nursery
    received: list[GossipMessage] = field(default_factory=list)

    @property
    def peer_id(self) -> str:
        return self.gossip.peer_id

    @property
    def addr(self) -> str:
        return str(self.host.get_addrs()[0])


@pytest.fixture(autouse=True)
def _quiet() -> None:
    quiet_libp2p_logs()


@asynccontextmanager
async def open_node(
    n: int,
    *,
    adverts: bool = True,
    advert_interval_s: float = 1.0,
    clock: Callable[[], int] = unix_ms,
    extra_topics: tuple[Topic, ...] = (),
    raw_adverts_topic: bool = False,
    listen: str = "/ip4/127.0.0.1/tcp/0",
    gossip_config: GossipConfig | None = None,
) -> AsyncIterator[Node]:
    ident = identity(n)
    async with open_host(ident, HostConfig(listen=(listen,))) as host:
        book = publisher = None
        topics = list(extra_topics)
        if adverts:
            book = AdvertBook(clock=clock)
            publisher = AdvertPublisher(ident, content(f"n{n}"), interval_s=advert_interval_s, clock=clock)
            topics.append(adverts_topic(book, publisher))
        elif raw_adverts_topic:
            topics.append(Topic(ADVERTS_TOPIC))  # no validator: can publish anything (a forger)
        gossip = Gossip(host, ident, topics=topics, config=gossip_config)
        dht = Dht(host, config=DhtConfig(refresh_interval_s=60, query_timeout_s=10))
        async with trio.open_nursery() as nursery:
            await nursery.start(gossip.run)
            await nursery.start(dht.run)
            if book is not None and publisher is not None:
                await nursery.start(book.run)
                await nursery.start(publisher.run, gossip)
            yield Node(ident, host, gossip, dht, book, publisher, nursery)
            nursery.cancel_scope.cancel()


async def link(a: Node, b: Node) -> None:
    """What the node does for a verified peer: connect, and feed both DHT routing tables."""
    await connect(a.host, b.addr)
    await a.dht.add_peer(b.peer_id)
    await b.dht.add_peer(a.peer_id)


async def wait_all_adverts(nodes: list[Node], of: list[Node]) -> None:
    for n in nodes:
        assert n.book is not None
        for other in of:
            await n.book.wait_for_advert(other.peer_id)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- adverts ---------------------------------------------------------------------------------


async def test_adverts_propagate_to_every_node_along_a_line():
    async with open_node(1) as a, open_node(2) as b, open_node(3) as c, open_node(4) as d:
        nodes = [a, b, c, d]
        for x, y in zip(nodes, nodes[1:], strict=False):
            await link(x, y)  # a line (the hosts' auto-connector may add shortcuts later)
        with trio.fail_after(WAIT):
            await wait_all_adverts(nodes, nodes)
        got = d.book.table.get(a.peer_id)
        assert got.name == "n1" and got.price_of("n1.special") == 5 and got.cores == 4
        assert got.ttl_ms == 6000 and got.issued_unix_ms <= unix_ms()
        assert [x.peer_id for x in d.book.table.peers_serving("n2.special", unix_ms())] == [b.peer_id]
        assert {x.peer_id for x in d.book.table.peers_serving("compute.blake3", unix_ms())} == {
            n.peer_id for n in nodes
        }
        for n in nodes:
            assert n.book.rejected == 0
            assert n.gossip.statistics().validator_errors == 0


async def test_forged_adverts_are_rejected_and_never_enter_the_table():
    # b's penalty per invalid message is small here so that all five forgeries reach its
    # validator; with the default weight the forger is gated after two (publish threshold).
    lenient = GossipConfig(invalid_message_weight=1.0)
    async with (
        open_node(11) as a,
        open_node(12, gossip_config=lenient) as b,
        open_node(13, adverts=False, raw_adverts_topic=True) as f,
    ):
        await link(a, b)
        await link(f, b)
        with trio.fail_after(WAIT):
            await wait_all_adverts([b], [a, b])
            await f.gossip.wait_for_mesh(b.peer_id, ADVERTS_TOPIC)
        now = unix_ms()
        forged_seq = 2**62

        def advert(peer: str) -> Advert:
            return dataclasses.replace(
                content("forged")(), peer_id=peer, sequence=forged_seq, issued_unix_ms=now, ttl_ms=60_000
            )

        body_f = encode_advert(advert(f.peer_id))
        bad_signature = encode_signed_advert(SignedAdvert(body_f, bytes(64), f.identity.public_key))
        a_claims_a_sent_by_f = sign_advert(advert(a.peer_id), a.identity)  # replayed/relayed by f
        f_claims_b = sign_advert(advert(b.peer_id), f.identity)  # key f, claimed peer b
        a_key_claims_f = encode_signed_advert(  # key a, claimed peer f (the sender)
            SignedAdvert(body_f, a.identity.sign(ADVERT_SIGNING_CONTEXT + body_f), a.identity.public_key)
        )
        garbage = b"\x00" * 24
        forged = [bad_signature, a_claims_a_sent_by_f, f_claims_b, a_key_claims_f, garbage]
        for data in forged:
            await f.gossip.publish(ADVERTS_TOPIC, data)
        with trio.fail_after(WAIT):
            await b.book.wait_until(lambda: b.book.rejected >= len(forged))
        reasons = [r for _, r in b.book.rejections]
        assert any("signature does not verify" in r for r in reasons)
        assert any("not the gossip message's sender" in r for r in reasons)
        assert sum("does not derive" in r for r in reasons) == 2
        assert any("malformed" in r for r in reasons)
        assert b.book.table.get(f.peer_id) is None
        assert all(x.sequence != forged_seq for x in b.book.table.snapshot())
        # nor in a's (the host's auto-connector may have linked f and a directly by now)
        assert a.book.table.get(f.peer_id) is None
        assert all(x.sequence != forged_seq for x in a.book.table.snapshot())
        # and the forger is penalised by b's router (P4 with a positive weight, P6)
        assert b.gossip.score(f.peer_id, ADVERTS_TOPIC) < 0


async def test_an_older_sequence_does_not_replace_a_newer_one():
    async with open_node(21, advert_interval_s=3600) as a, open_node(22) as b:
        await link(a, b)
        with trio.fail_after(WAIT):
            first = await b.book.wait_for_advert(a.peer_id)
        newer = dataclasses.replace(
            first, sequence=first.sequence + 1000, issued_unix_ms=unix_ms(), name="newer"
        )
        older = dataclasses.replace(newer, sequence=first.sequence + 500, name="older")
        await a.gossip.publish(ADVERTS_TOPIC, sign_advert(newer, a.identity))
        with trio.fail_after(WAIT):
            await b.book.wait_for_advert(a.peer_id, min_sequence=newer.sequence)
        stale_before = b.book.table.statistics().stale
        await a.gossip.publish(ADVERTS_TOPIC, sign_advert(older, a.identity))
        with trio.fail_after(WAIT):
            await b.book.wait_until(lambda: b.book.table.statistics().stale > stale_before)
        held = b.book.table.get(a.peer_id)
        assert held.name == "newer" and held.sequence == newer.sequence
        assert b.book.rejected == 0


async def test_adverts_expire_and_expired_adverts_are_refused():
    clock_b = Clock()
    async with open_node(31, advert_interval_s=3600) as a, open_node(32, clock=clock_b) as b:
        await link(a, b)
        with trio.fail_after(WAIT):
            held = await b.book.wait_for_advert(a.peer_id)
        assert held.ttl_ms == 10 * 60 * 1000  # 6 periods, capped at what receivers accept
        # b's wall clock jumps past the advert's end of life
        clock_b.offset_ms = held.ttl_ms + 1000
        b.book.expire()  # (b's own expiry task may have been first)
        assert b.book.table.get(a.peer_id) is None
        assert b.book.table.statistics().expired >= 1
        # a re-advertises; to b's clock it is already expired: refused by the validator
        rejected_before = b.book.rejected
        a.publisher.changed()
        with trio.fail_after(WAIT):
            await b.book.wait_until(lambda: b.book.rejected > rejected_before)
        assert b.book.rejections[-1] == (a.peer_id, "expired")
        assert b.book.table.get(a.peer_id) is None


async def test_a_raising_validator_does_not_kill_the_node():
    got_ok = trio.Event()
    seen: list[bytes] = []

    def validate(msg: GossipMessage) -> bool:
        if msg.data == b"boom":
            raise ValueError("validator bug")
        return True

    def on_message(msg: GossipMessage) -> None:
        seen.append(msg.data)
        if msg.data == b"ok":
            got_ok.set()

    def on_message_raising(msg: GossipMessage) -> None:
        raise RuntimeError("handler bug")

    topic = "test/raise"
    async with (
        open_node(41, adverts=False, extra_topics=(Topic(topic), Topic("test/handler"))) as x,
        open_node(
            42,
            adverts=False,
            extra_topics=(
                Topic(topic, on_message=on_message, validate=validate),
                Topic("test/handler", on_message=on_message_raising),
            ),
        ) as y,
    ):
        await link(x, y)
        with trio.fail_after(WAIT):
            await x.gossip.wait_for_mesh(y.peer_id, topic)
            await x.gossip.wait_for_mesh(y.peer_id, "test/handler")
        await x.gossip.publish("test/handler", b"h")
        await x.gossip.publish(topic, b"boom")
        await x.gossip.publish(topic, b"ok")
        with trio.fail_after(WAIT):
            await got_ok.wait()
        assert seen == [b"ok"]
        stats = y.gossip.statistics()
        assert stats.validator_errors == 1 and stats.handler_errors == 1
        assert y.gossip.running and x.gossip.statistics().published == 3


# -- DHT and discovery -----------------------------------------------------------------------


async def test_dht_provider_on_a_is_found_from_c_through_b():
    async with (
        open_node(51, adverts=False) as a,
        open_node(52, adverts=False) as b,
        open_node(53, adverts=False) as c,
    ):
        await connect(a.host, b.addr)
        await connect(c.host, b.addr)
        assert {p.to_base58() for p in c.host.get_connected_peers()} == {b.peer_id}
        for x, y in ((a, b), (b, a), (c, b), (b, c)):
            await x.dht.add_peer(y.peer_id)
        digest = blake3.blake3(b"content on a").digest()
        with trio.fail_after(WAIT):
            assert await a.dht.provide(digest)
            found = await c.dht.find_providers(digest)
        assert found == [a.peer_id]  # once, although the library may report it several times
        with trio.fail_after(WAIT):
            assert await c.dht.find_providers(blake3.blake3(b"nobody has this").digest()) == []


async def test_a_late_joiner_via_bootstrap_gets_adverts_and_finds_providers():
    async with open_node(61) as a, open_node(62) as boot, open_node(63) as c:
        await link(a, boot)
        await link(c, boot)
        digest = blake3.blake3(b"provided by c").digest()
        with trio.fail_after(WAIT):
            await wait_all_adverts([a, boot, c], [a, boot, c])
            assert await c.dht.provide(digest)
        async with open_node(64) as late:
            connected = trio.Event()

            async def on_connected(peer: str) -> None:
                await late.dht.add_peer(peer)
                connected.set()

            bootstrapper = Bootstrapper(late.host, [boot.addr], on_connected)
            with trio.fail_after(WAIT):
                await late.nursery.start(bootstrapper.run)
                await connected.wait()
                await wait_all_adverts([late], [a, boot, c, late])
                assert await late.dht.find_providers(digest) == [c.peer_id]
            assert bootstrapper.statistics()[boot.peer_id] == {"dials": 1, "failures": 0, "connects": 1}


async def test_bootstrapper_redials_a_dropped_peer_and_retries_one_that_is_down():
    port = free_port()
    boot_id = identity(72)
    boot_addr = f"/ip4/127.0.0.1/tcp/{port}/p2p/{peer_id_of(boot_id)}"
    connects: list[str] = []
    changed = trio.Event()

    async def on_connected(peer: str) -> None:
        nonlocal changed
        connects.append(peer)
        changed.set()
        changed = trio.Event()

    async def wait_connects(n: int) -> None:
        while len(connects) < n:
            await changed.wait()

    async with open_node(71, adverts=False) as x:
        bootstrapper = Bootstrapper(
            x.host, [boot_addr], on_connected, initial_backoff_s=0.05, max_backoff_s=0.2
        )
        with trio.fail_after(WAIT):
            await x.nursery.start(bootstrapper.run)  # the first dial has failed: nothing listens yet
        assert connects == [] and bootstrapper.statistics()[peer_id_of(boot_id)]["failures"] >= 1
        async with open_node(72, adverts=False, listen=f"/ip4/127.0.0.1/tcp/{port}") as boot:
            with trio.fail_after(WAIT):
                await wait_connects(1)
                await bootstrapper.wait_connected(boot.peer_id)
            await x.host.disconnect(boot.host.get_id())
            with trio.fail_after(WAIT):
                await wait_connects(2)  # redialled at once after the drop
            assert connects == [boot.peer_id, boot.peer_id]
            assert bootstrapper.is_connected(boot.peer_id)


# -- configuration and local limits ----------------------------------------------------------


def test_configuration_is_validated():
    for bad in (
        {"degree_low": 7},
        {"degree_high": 5},
        {"heartbeat_interval_s": 0},
        {"send_queue": 0},
        {"min_publish_interval_s": -1},
        {"publish_threshold": -100.0},
        {"gossip_threshold": 1.0},
    ):
        with pytest.raises(ConfigError):
            GossipConfig(**bad)
    with pytest.raises(ConfigError):
        DhtConfig(refresh_interval_s=0)
    with pytest.raises(ConfigError):
        DiscoveryConfig(initial_backoff_s=2, max_backoff_s=1)
    with pytest.raises(ConfigError):
        Bootstrapper(None, ["/ip4/127.0.0.1/tcp/1"])  # no /p2p/<id>
    with pytest.raises(ConfigError):
        AdvertPublisher(identity(1), content("x"), interval_s=0)
    with pytest.raises(ConfigError):
        digest_key(b"\x00" * 31)
    assert digest_key(bytes(32)) == "1e20" + "00" * 32  # blake3 multihash, hex
    assert host_options(DiscoveryConfig()) == {"enable_mDNS": False}  # mDNS is off unless asked


async def test_gossip_refuses_a_foreign_identity_duplicate_topics_and_oversized_messages():
    async with open_node(81, advert_interval_s=3600) as x:
        with pytest.raises(ConfigError):
            Gossip(x.host, identity(82))
        with pytest.raises(ConfigError):
            Gossip(x.host, x.identity, topics=[Topic("t"), Topic("t")])
        with pytest.raises(LocalProtocolError):
            await x.gossip.publish("t", bytes(x.gossip.config.max_message_bytes + 1))
        too_big = AdvertPublisher(x.identity, lambda: Advert(features=("x" * 1000,) * 80), interval_s=3600)
        assert await too_big.publish_once(x.gossip) is None  # logged and skipped, not raised
