"""/inos/hello gating over real py-libp2p hosts on 127.0.0.1."""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import blake3
import pytest
import trio
import trio.testing
from libp2p.peer.id import ID

from inos_node.errors import PeerError
from inos_node.identity import Identity
from inos_node.net import bench
from inos_node.net.delegation import DelegationClient, DelegationServer
from inos_node.net.hello import PROTOCOL, HelloGate
from inos_node.net.host import HostConfig, addresses, connect, open_host, quiet_libp2p_logs
from inos_node.types import JobRequest

pytestmark = pytest.mark.integration
quiet_libp2p_logs()

NET = bytes(range(32))
OTHER_NET = bytes(32)


@dataclass
class Node:
    host: Any
    gate: HelloGate | None
    peer_id: str
    verified: list[str] = field(default_factory=list)
    rejected: list[str] = field(default_factory=list)
    rejected_event: trio.Event = field(default_factory=trio.Event)
    verified_event: trio.Event = field(default_factory=trio.Event)
    identity: Identity | None = None
    client: Any = None


@asynccontextmanager
async def open_node(network_id: bytes | None, *, timeout_s: float = 5.0) -> AsyncIterator[Node]:
    """A host with a HelloGate on ``network_id`` (None: a foreign libp2p node, no gate)."""
    identity = Identity(os.urandom(32))
    async with open_host(identity, HostConfig()) as host, trio.open_nursery() as nursery:
        node = Node(host, None, str(host.get_id().to_base58()), identity=identity)
        if network_id is not None:

            def rejected(peer_id: str) -> None:
                node.rejected.append(peer_id)
                node.rejected_event.set()

            async def verified(peer_id: str) -> None:  # callbacks may be async too
                node.verified.append(peer_id)
                node.verified_event.set()

            node.gate = HelloGate(
                host, identity, network_id, timeout_s=timeout_s, on_verified=verified, on_rejected=rejected
            )
            await nursery.start(node.gate.run)
        yield node
        nursery.cancel_scope.cancel()


def _connected(host: Any, peer_id: str) -> bool:
    return bool(host.get_network().connections.get(ID.from_base58(peer_id)))


async def test_same_network_peers_verify_each_other():
    async with open_node(NET) as a, open_node(NET) as b:
        await connect(a.host, addresses(b.host)[0])
        with trio.fail_after(5):
            await a.gate.wait_verified(b.peer_id)
            await b.gate.wait_verified(a.peer_id)
        assert a.gate.verified(b.peer_id) and b.gate.verified(a.peer_id)
        # on_verified runs from the gate task right after verification
        with trio.fail_after(5):
            await a.verified_event.wait()
            await b.verified_event.wait()
        assert a.verified == [b.peer_id] and b.verified == [a.peer_id]
        assert _connected(a.host, b.peer_id)


async def test_a_node_of_another_network_is_disconnected():
    async with open_node(NET) as a, open_node(OTHER_NET) as stranger:
        waiter_saw: list[BaseException] = []

        async def wait_for_stranger() -> None:
            try:
                await a.gate.wait_verified(stranger.peer_id)
            except PeerError as exc:
                waiter_saw.append(exc)

        async with trio.open_nursery() as n:
            n.start_soon(wait_for_stranger)
            await trio.testing.wait_all_tasks_blocked()
            await connect(stranger.host, addresses(a.host)[0])
            with trio.fail_after(5):
                await a.rejected_event.wait()
        assert a.rejected == [stranger.peer_id]
        # whichever side checks first drops the connection: the reason is ours or "disconnected"
        assert len(waiter_saw) == 1 and (
            "network id" in str(waiter_saw[0]) or "disconnected" in str(waiter_saw[0])
        )
        assert not a.gate.verified(stranger.peer_id)
        assert not _connected(a.host, stranger.peer_id)
        assert a.verified == []


async def test_a_foreign_libp2p_node_without_the_protocol_is_disconnected():
    async with open_node(NET) as a, open_node(None) as foreign:
        await connect(foreign.host, addresses(a.host)[0])
        with trio.fail_after(5):  # at once: the hello stream cannot even be opened
            await a.rejected_event.wait()
        assert a.rejected == [foreign.peer_id]
        assert not _connected(a.host, foreign.peer_id)


async def test_a_silent_node_is_disconnected_after_the_timeout():
    async with open_node(NET, timeout_s=0.5) as a, open_node(None) as silent:
        opened = trio.Event()

        async def swallow(stream: Any) -> None:  # speaks the protocol, never says hello
            opened.set()
            try:
                await stream.read(100)
            except Exception:  # noqa: BLE001 - our stream gets reset when we are dropped
                pass

        silent.host.set_stream_handler(PROTOCOL, swallow)
        start = trio.current_time()
        await connect(silent.host, addresses(a.host)[0])
        with trio.fail_after(5):
            await a.rejected_event.wait()
        assert opened.is_set(), "our hello reached the silent node"
        assert trio.current_time() - start >= 0.5
        assert a.rejected == [silent.peer_id]
        assert not _connected(a.host, silent.peer_id)


async def test_servers_admit_only_verified_peers():
    async with (
        open_node(NET, timeout_s=1.0) as worker,
        open_node(NET) as member,
        open_node(None) as silent,
        trio.open_nursery() as nursery,
    ):
        silent.host.set_stream_handler(PROTOCOL, _swallow)  # speaks hello, never says it
        server = DelegationServer(worker.host, bench.echo_handler(worker.identity), admit=worker.gate.admit)
        await nursery.start(server.run)
        for node in (member, silent):
            node.client = DelegationClient(node.host)
            await nursery.start(node.client.run)
            await connect(node.host, addresses(worker.host)[0])

        job = JobRequest("j", "system", "upper", b"hi")
        digest = blake3.blake3(b"hi").digest()
        deadline = int((time.time() + 10) * 1000)
        # The first request may race the hello exchange: ``admit`` waits for it.
        r = await member.client.request(worker.peer_id, job, input_digest=digest, deadline_unix_ms=deadline)
        assert r.result.output == b"HI"
        # The silent peer's stream waits in ``admit`` until its hello times out, then is reset.
        with trio.fail_after(10), pytest.raises(PeerError):
            await silent.client.request(worker.peer_id, job, input_digest=digest, deadline_unix_ms=deadline)
        assert server.statistics().streams_refused == 1
        assert server.statistics().accepted == 1
        nursery.cancel_scope.cancel()


async def _swallow(stream: Any) -> None:
    try:
        await stream.read(100)
    except Exception:  # noqa: BLE001 - reset when the peer drops us
        pass


async def test_a_peer_reconnected_while_its_last_gate_is_finishing_is_gated_again():
    """A new connection that arrives while the gate of the last one is still running (here: its
    on_verified callback is slow, as a node's is) gets a gate of its own: we send our hello on
    it, so the peer verifies us, and nobody is rejected."""
    from inos_node.net.host import ConnectionEvents, disconnect

    release, entered = trio.Event(), trio.Event()
    calls = []

    async def slow_verified(peer_id: str) -> None:
        calls.append(peer_id)
        if len(calls) == 1:
            entered.set()
            await release.wait()

    identity = Identity(os.urandom(32))
    async with open_host(identity, HostConfig()) as host, trio.open_nursery() as nursery, \
            open_node(NET, timeout_s=3.0) as b:
        gate = HelloGate(host, identity, NET, timeout_s=3.0, on_verified=slow_verified)
        await nursery.start(gate.run)
        me = str(host.get_id().to_base58())
        address = addresses(b.host)[0]
        await connect(host, address)
        with trio.fail_after(2):
            await entered.wait()  # our gate for the first connection is in its callback
            await b.gate.wait_verified(me)
        gone = trio.Event()
        b.host.get_network().register_notifee(ConnectionEvents(on_disconnected=lambda p: gone.set()))
        await disconnect(host, b.peer_id)
        with trio.fail_after(2):
            await gone.wait()  # the peer saw the first connection go
        await connect(host, address)  # the second connection, while the first gate still runs
        release.set()
        with trio.fail_after(2):  # under the gates' timeout: a hello never sent would show here
            await b.gate.wait_verified(me)
            await gate.wait_verified(b.peer_id)
        assert b.rejected == []
        assert _connected(host, b.peer_id)
        nursery.cancel_scope.cancel()


async def test_a_peer_reconnected_at_once_is_verified_on_every_connection():
    """Disconnect and dial again at once, ten times: each new connection is gated (also one that
    arrives while the last one's gate is still finishing) and verified on both sides, well
    within the gate's timeout; nobody is rejected."""
    from inos_node.net.host import disconnect

    async with open_node(NET, timeout_s=3.0) as a, open_node(NET, timeout_s=3.0) as b:
        address = addresses(b.host)[0]
        for _ in range(10):
            await connect(a.host, address)
            with trio.fail_after(2):  # less than the timeout: a missed hello would show as a hang
                await a.gate.wait_verified(b.peer_id)
                await b.gate.wait_verified(a.peer_id)
            await disconnect(a.host, b.peer_id)
        await connect(a.host, address)
        with trio.fail_after(2):
            await a.gate.wait_verified(b.peer_id)
            await b.gate.wait_verified(a.peer_id)
        assert a.rejected == [] and b.rejected == []
        assert _connected(a.host, b.peer_id)
