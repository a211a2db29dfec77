"""/inos/delegate and /inos/blob over real py-libp2p hosts on 127.0.0.1 (in-process and cross-process)."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import blake3
import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from libp2p.peer.id import ID

from inos_node.errors import LocalProtocolError, PeerError, RemoteProtocolError
from inos_node.identity import Identity
from inos_node.net import bench, delegation
from inos_node.net.blobs import (
    PUSH_PROTOCOL,
    BlobClient,
    BlobPusher,
    BlobPushServer,
    BlobServer,
    MemoryBlobStore,
)
from inos_node.net.delegation import PROTOCOL, DelegationClient, DelegationServer, verify_receipt
from inos_node.net.framing import FrameDecoder, FrameReader, FrameWriter, encode_frame
from inos_node.net.host import HostConfig, addresses, connect, open_host, quiet_libp2p_logs
from inos_node.types import JobRequest, JobResult, Status
from inos_node.wire.delegation import (
    DEFAULT_MAX_FRAME,
    DelegateResponse,
    DelegateRun,
    decode_delegate_request,
    decode_delegate_response,
    encode_delegate_request,
)

pytestmark = pytest.mark.integration
quiet_libp2p_logs()


@dataclass
class Pair:
    a: Any  # requesting host
    b: Any  # worker host
    peer: str  # b's peer id
    server: DelegationServer
    client: DelegationClient
    nursery: trio.Nursery


@asynccontextmanager
async def open_pair(handler: Any = None, **server_kw: Any) -> AsyncIterator[Pair]:
    b_id = Identity(os.urandom(32))
    async with (
        open_host(Identity(os.urandom(32)), HostConfig()) as a,
        open_host(b_id, HostConfig()) as b,
        trio.open_nursery() as nursery,
    ):
        server = DelegationServer(b, handler or bench.echo_handler(b_id), **server_kw)
        await nursery.start(server.run)
        peer = await connect(a, addresses(b)[0])
        client = DelegationClient(a)
        await nursery.start(client.run)
        yield Pair(a, b, peer, server, client, nursery)
        nursery.cancel_scope.cancel()


def _deadline(seconds: float = 10.0) -> int:
    return int((time.time() + seconds) * 1000)


async def _run(
    client: DelegationClient,
    peer: str,
    method: str,
    data: bytes = b"",
    *,
    job_id: str = "j",
    seconds: float = 10.0,
) -> DelegateResponse:
    return await client.request(
        peer,
        JobRequest(job_id, "system", method, data),
        input_digest=blake3.blake3(data).digest(),
        deadline_unix_ms=_deadline(seconds),
    )


class Gate:
    """A handler whose jobs block until released; records starts and cancellations."""

    def __init__(self) -> None:
        self.started: list[int] = []
        self.cancelled: list[int] = []
        self.release = trio.Event()
        self.some_started = trio.Event()
        self.some_cancelled = trio.Event()
        self._changed = trio.Event()

    async def wait_started(self, n: int) -> None:
        while len(self.started) < n:
            await self._changed.wait()

    async def __call__(self, run: DelegateRun, peer_id: str) -> DelegateResponse:
        self.started.append(run.request_id)
        self.some_started.set()
        self._changed.set()
        self._changed = trio.Event()
        try:
            await self.release.wait()
        except trio.Cancelled:
            self.cancelled.append(run.request_id)
            self.some_cancelled.set()
            raise
        return DelegateResponse(run.request_id, JobResult(run.job.job_id, Status.SUCCESS, b"released"))


# ------------------------------------------------------------------------------- in-process


async def test_request_response_with_a_verified_receipt():
    async with open_pair() as p:
        r = await _run(p.client, p.peer, "upper", b"hello", job_id="j1")
        assert r.result.ok and r.result.output == b"HELLO" and r.result.job_id == "j1"
        body = verify_receipt(r.receipt, worker_peer_id=p.peer)
        assert body.requester == str(p.a.get_id().to_base58())
        assert body.input_digest == blake3.blake3(b"hello").digest()
        assert body.output_digest == blake3.blake3(b"HELLO").digest()


async def test_32_concurrent_requests_share_one_stream_and_are_correlated_by_id():
    arrived: list[int] = []
    all_in = trio.Event()
    b_id = Identity(os.urandom(32))
    echo = bench.echo_handler(b_id)
    order: dict[int, trio.Event] = {}

    async def handler(run: DelegateRun, peer_id: str) -> DelegateResponse:
        arrived.append(run.request_id)
        order[run.request_id] = trio.Event()
        if len(arrived) == 32:
            all_in.set()
        await all_in.wait()
        # answer in reverse arrival order: correlation must not rely on order
        idx = arrived.index(run.request_id)
        if idx < 31:
            await order[arrived[idx + 1]].wait()
        resp = await echo(run, peer_id)
        order[run.request_id].set()
        return resp

    async with open_pair(handler) as p:
        got: dict[int, bytes] = {}

        async def one(i: int) -> None:
            r = await _run(p.client, p.peer, "upper", b"payload-%d" % i, job_id=f"j{i}")
            assert r.result.job_id == f"j{i}"
            got[i] = bytes(r.result.output)

        async with trio.open_nursery() as n:
            for i in range(32):
                n.start_soon(one, i)
        assert got == {i: b"PAYLOAD-%d" % i for i in range(32)}
        assert p.server.statistics().accepted == 32
        assert p.server.statistics().streams == 1


async def test_cancelling_the_caller_cancels_the_job_on_the_worker():
    gate = Gate()
    async with open_pair(gate) as p:
        with trio.CancelScope() as scope:

            async def cancel_when_started() -> None:
                await gate.some_started.wait()
                scope.cancel()

            p.nursery.start_soon(cancel_when_started)
            await _run(p.client, p.peer, "anything")
        assert scope.cancelled_caught
        with trio.fail_after(5):
            await gate.some_cancelled.wait()
        assert gate.cancelled == gate.started
        gate.release.set()
        r = await _run(p.client, p.peer, "upper", b"after")  # the stream is still good
        assert r.result.output == b"released"


async def test_the_deadline_stops_the_job_and_answers_timeout():
    gate = Gate()
    async with open_pair(gate) as p:
        r = await _run(p.client, p.peer, "anything", seconds=0.3)
        assert r.result.status is Status.TIMEOUT and r.result.retryable
        assert gate.cancelled == gate.started


async def test_a_full_worker_answers_capacity_exceeded_at_once():
    gate = Gate()
    async with open_pair(gate, max_concurrent=1) as p:
        first: list[DelegateResponse] = []
        first_done = trio.Event()

        async def run_first() -> None:
            first.append(await _run(p.client, p.peer, "block"))
            first_done.set()

        p.nursery.start_soon(run_first)
        await gate.some_started.wait()
        r = await _run(p.client, p.peer, "second")
        assert r.result.status is Status.CAPACITY_EXCEEDED and r.result.retryable
        assert "busy" in r.result.error
        gate.release.set()
        with trio.fail_after(5):
            await first_done.wait()
        assert first[0].result.ok
        assert p.server.statistics().rejected_capacity == 1


async def test_a_raising_handler_fails_that_request_only():
    async with open_pair() as p:
        r = await _run(p.client, p.peer, "fail")
        assert r.result.status is Status.FAILED and "asked to fail" in r.result.error
        r = await _run(p.client, p.peer, "upper", b"next")
        assert r.result.ok and r.result.output == b"NEXT"


async def test_the_fast_path_answers_at_once_and_hands_over_what_it_cannot():
    """Rule 1a: a synchronous ``fast`` handler answers in the stream's reader; None goes to the
    task path (the awaited handler); an exception fails that request only."""
    b_id = Identity(os.urandom(32))
    slow = bench.echo_handler(b_id)
    seen: list[str] = []

    def fast(run: DelegateRun, peer_id: str) -> DelegateResponse | None:
        seen.append(run.job.method)
        if run.job.method == "boom":
            raise RuntimeError("fast path broke")
        if run.job.method == "echo":
            return DelegateResponse(0, JobResult(run.job.job_id, Status.SUCCESS, b"fast:" + bytes(run.job.input)))
        return None  # anything else: the awaited handler

    async with open_pair(slow, fast=fast) as p:
        r = await _run(p.client, p.peer, "echo", b"hi")
        assert r.result.ok and r.result.output == b"fast:hi"
        assert r.request_id != 0  # the server puts the request's id on the fast answer
        r = await _run(p.client, p.peer, "upper", b"slow")
        assert r.result.ok and r.result.output == b"SLOW" and r.receipt is not None
        r = await _run(p.client, p.peer, "boom")
        assert r.result.status is Status.FAILED and "fast path broke" in r.result.error
        r = await _run(p.client, p.peer, "echo", b"still")
        assert r.result.output == b"fast:still"
        r = await _run(p.client, p.peer, "echo", b"late", seconds=-1)  # past its deadline: task path
        assert r.result.output != b"fast:late"
        assert seen == ["echo", "upper", "boom", "echo"]
        assert p.server.statistics().accepted == 5


async def test_answered_follows_each_fast_answer_and_its_failures_stay_in_the_log(caplog):
    """``answered`` runs after a fast answer is written (what the node puts off until the requester
    has its answer: the check of an escrow taken on trust), never for the task path; if it raises,
    the stream serves on."""
    events: list[str] = []

    def fast(run: DelegateRun, peer_id: str) -> DelegateResponse | None:
        if run.job.method != "echo":
            return None
        events.append(f"fast:{run.job.job_id}")
        return DelegateResponse(0, JobResult(run.job.job_id, Status.SUCCESS, bytes(run.job.input)))

    def answered(run: DelegateRun, peer_id: str) -> None:
        events.append(f"answered:{run.job.job_id}")
        if run.job.job_id == "bad":
            raise RuntimeError("after-answer work broke")

    async with open_pair(fast=fast, answered=answered) as p:
        r = await _run(p.client, p.peer, "echo", b"one", job_id="j1")
        assert r.result.output == b"one"
        r = await _run(p.client, p.peer, "upper", b"slow", job_id="j2")  # the task path: no answered
        assert r.result.output == b"SLOW"
        r = await _run(p.client, p.peer, "echo", b"two", job_id="bad")
        assert r.result.output == b"two"
        r = await _run(p.client, p.peer, "echo", b"three", job_id="j3")
        assert r.result.output == b"three"
    assert events == ["fast:j1", "answered:j1", "fast:bad", "answered:bad", "fast:j3", "answered:j3"]
    assert "after-answer work broke" in caplog.text


def _request_frame(i: int, method: str = "echo") -> bytes:
    run = DelegateRun(request_id=i + 1, job=JobRequest(f"b{i}", "system", method, b"x%d" % i),
                      input_digest=blake3.blake3(b"x%d" % i).digest(), deadline_unix_ms=_deadline())
    return encode_frame(encode_delegate_request(run), limit=DEFAULT_MAX_FRAME)


async def _read_answers(stream: Any, n: int) -> list[DelegateResponse]:
    reader = FrameReader(stream, limit=DEFAULT_MAX_FRAME)
    out = []
    with trio.fail_after(10):
        for _ in range(n):
            frame = await reader.read_frame()
            assert frame is not None
            out.append(decode_delegate_response(frame))
    return out


@pytest.mark.parametrize("count, writes", [(5, [5]), (20, [16, 4])])
async def test_requests_read_together_are_answered_together(monkeypatch, count, writes):
    """Rule 1a: fast answers to the frames of one read go out in one write (at most 16), then
    ``answered`` runs for each; a request read alone is answered alone."""
    events: list[str] = []
    written: list[int] = []  # answers per write of the server

    class CountingWriter(FrameWriter):
        async def write(self, frame: bytes) -> None:
            written.append(len(_frames_in(frame)))
            await super().write(frame)

    monkeypatch.setattr(delegation, "FrameWriter", CountingWriter)

    def fast(run: DelegateRun, peer_id: str) -> DelegateResponse | None:
        events.append("fast")
        return DelegateResponse(0, JobResult(run.job.job_id, Status.SUCCESS, bytes(run.job.input)))

    def answered(run: DelegateRun, peer_id: str) -> None:
        events.append(f"answered after {len(written)} write(s)")

    async with open_pair(fast=fast, answered=answered) as p:
        raw = await p.a.new_stream(ID.from_base58(p.peer), [PROTOCOL])
        await raw.write(b"".join(_request_frame(i) for i in range(count)))  # one write: one read there
        answers = await _read_answers(raw, count)
        assert [(a.request_id, a.result.output) for a in answers] == [(i + 1, b"x%d" % i) for i in range(count)]
        assert written == writes
        assert events[:writes[0]] == ["fast"] * writes[0]
        assert events[writes[0]:2 * writes[0]] == ["answered after 1 write(s)"] * writes[0]
        await raw.write(_request_frame(99))  # alone
        (one,) = await _read_answers(raw, 1)
        assert one.request_id == 100 and written[-1] == 1
        await raw.reset()


async def test_answers_made_before_a_bad_frame_still_go_out():
    """Three good requests and a malformed frame in one read: the three are answered (in one
    write), then the stream is reset; ``answered`` runs for each."""
    done: list[str] = []

    def fast(run: DelegateRun, peer_id: str) -> DelegateResponse | None:
        return DelegateResponse(0, JobResult(run.job.job_id, Status.SUCCESS, bytes(run.job.input)))

    async with open_pair(fast=fast, answered=lambda run, peer: done.append(run.job.job_id)) as p:
        raw = await p.a.new_stream(ID.from_base58(p.peer), [PROTOCOL])
        await raw.write(b"".join(_request_frame(i) for i in range(3)) + encode_frame(b"garbage!", limit=64))
        answers = await _read_answers(raw, 3)
        assert [a.result.output for a in answers] == [b"x0", b"x1", b"x2"]
        with trio.fail_after(5):
            try:
                rest = await raw.read(100)
            except Exception:  # noqa: BLE001 - StreamReset or StreamEOF: the server dropped it
                rest = b""
        assert rest == b""
        assert p.server.statistics().streams_reset == 1 and done == ["b0", "b1", "b2"]


def _frames_in(data: bytes) -> list[bytes]:
    """The frames in ``data`` (whole frames only)."""
    dec = FrameDecoder(limit=DEFAULT_MAX_FRAME)
    dec.feed(data)
    out = []
    while (frame := dec.next_frame()) is not None:
        out.append(frame)
    return out


MAX_FRAME = 64 * 1024
bad_frames = st.one_of(
    st.binary(max_size=40).map(lambda tail: b"\0\0\0\0" + tail),  # zero-length frame
    st.tuples(st.integers(MAX_FRAME + 1, 2**32 - 1), st.binary(max_size=64)).map(
        lambda t: t[0].to_bytes(4, "little") + t[1]
    ),  # over the limit
    st.binary(min_size=1, max_size=300).map(lambda p: encode_frame(p, limit=MAX_FRAME)),  # not a request
)


def _is_bad(frame: bytes) -> bool:
    n = int.from_bytes(frame[:4], "little")
    if n == 0 or n > MAX_FRAME:
        return True
    try:
        decode_delegate_request(frame[4:], max_bytes=MAX_FRAME)
    except RemoteProtocolError:
        return True
    return False


@settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck))
@given(garbage=bad_frames)
async def test_malformed_or_oversized_frames_reset_that_stream_only(garbage):
    assume(_is_bad(garbage))
    async with open_pair(max_frame=MAX_FRAME) as p:
        assert (await _run(p.client, p.peer, "upper", b"before")).result.ok  # the client's stream is open
        raw = await p.a.new_stream(ID.from_base58(p.peer), [PROTOCOL])
        await raw.write(garbage)
        with trio.fail_after(5):
            try:
                got = await raw.read(100)
            except Exception:  # noqa: BLE001 - StreamReset or StreamEOF: either way the server dropped it
                got = b""
        assert got == b""
        assert p.server.statistics().streams_reset == 1
        # the worker and the client's older stream are unharmed, and a new stream is served
        r = await _run(p.client, p.peer, "upper", b"after")
        assert r.result.ok and r.result.output == b"AFTER"
        fresh = DelegationClient(p.a)
        await p.nursery.start(fresh.run)
        assert (await _run(fresh, p.peer, "upper", b"new")).result.output == b"NEW"


async def test_client_in_flight_limit_is_a_clear_error():
    gate = Gate()
    async with open_pair(gate) as p:
        client = DelegationClient(p.a, max_in_flight_per_peer=2)
        await p.nursery.start(client.run)
        for _ in range(2):
            p.nursery.start_soon(_run, client, p.peer, "block")
        with trio.fail_after(5):
            await gate.wait_started(2)
        with pytest.raises(LocalProtocolError, match="limit 2"):
            await _run(client, p.peer, "third")
        gate.release.set()


# ----------------------------------------------------------------------------- cross-process


async def test_cross_process_requests_are_correlated():
    async with (
        bench.open_server_process() as server,
        open_host(Identity(os.urandom(32)), HostConfig()) as host,
        trio.open_nursery() as nursery,
    ):
        peer = await connect(host, server.address)
        client = DelegationClient(host)
        await nursery.start(client.run)
        got: dict[int, bytes] = {}

        async def one(i: int) -> None:
            r = await _run(client, peer, "upper", b"x%d" % i, job_id=f"j{i}")
            verify_receipt(r.receipt, worker_peer_id=peer)
            got[i] = bytes(r.result.output)

        async with trio.open_nursery() as n:
            for i in range(32):
                n.start_soon(one, i)
        assert got == {i: b"X%d" % i for i in range(32)}
        nursery.cancel_scope.cancel()


async def test_killing_the_worker_mid_request_fails_the_request_promptly():
    async with (
        bench.open_server_process() as server,
        open_host(Identity(os.urandom(32)), HostConfig()) as host,
        trio.open_nursery() as nursery,
    ):
        peer = await connect(host, server.address)
        client = DelegationClient(host)
        await nursery.start(client.run)
        failures: list[BaseException] = []
        both_failed = trio.Event()

        async def doomed() -> None:
            try:
                await _run(client, peer, "sleep", seconds=60)
            except PeerError as exc:
                failures.append(exc)
                if len(failures) == 2:
                    both_failed.set()

        async with trio.open_nursery() as n:
            n.start_soon(doomed)
            n.start_soon(doomed)
            with trio.fail_after(10):
                for _ in range(2):
                    line = await server.lines.receive()
                    assert line.startswith("STARTED ")
            os.kill(server.process.pid, signal.SIGKILL)
            with trio.fail_after(5):  # "promptly": EOF arrives in milliseconds (P10)
                await both_failed.wait()
        assert all(isinstance(f, PeerError) for f in failures)
        nursery.cancel_scope.cancel()


# ------------------------------------------------------------------------------------- blobs


class FlippingStore(MemoryBlobStore):
    """Serves every blob with one byte flipped, ``where`` along it (a lying or broken server)."""

    def __init__(self, where: float = 0.5, flip: int = 0xFF) -> None:
        super().__init__()
        self.where, self.flip = where, flip

    def get(self, digest: bytes) -> bytes | None:
        data = super().get(digest)
        if data is None:
            return None
        bad = bytearray(data)
        bad[int(len(bad) * self.where)] ^= self.flip
        return bytes(bad)


@asynccontextmanager
async def open_blob_pair(store: MemoryBlobStore) -> AsyncIterator[tuple[BlobClient, str]]:
    async with (
        open_host(Identity(os.urandom(32)), HostConfig()) as a,
        open_host(Identity(os.urandom(32)), HostConfig()) as b,
        trio.open_nursery() as nursery,
    ):
        await nursery.start(BlobServer(b, store).run)
        peer = await connect(a, addresses(b)[0])
        client = BlobClient(a)
        await nursery.start(client.run)
        yield client, peer
        nursery.cancel_scope.cancel()


async def test_blob_fetch_of_8_mib_is_verified():
    store = MemoryBlobStore()
    data = os.urandom(8 * 1024 * 1024 + 12345)  # not a whole number of chunks
    small = b"tiny"
    digest, small_digest, empty_digest = store.put(data), store.put(small), store.put(b"")
    async with open_blob_pair(store) as (client, peer):
        assert await client.fetch(peer, digest, max_bytes=len(data)) == data
        assert await client.fetch(peer, small_digest, max_bytes=100) == small
        assert await client.fetch(peer, empty_digest, max_bytes=100) == b""
        with pytest.raises(RemoteProtocolError, match="over the 1000-byte limit"):
            await client.fetch(peer, digest, max_bytes=1000)


async def test_a_large_input_is_fetched_into_a_populated_buffer_and_hashed_whole():
    store = MemoryBlobStore()
    data = os.urandom(24 * 1024 * 1024 + 777)  # large: a prepared buffer, hashed at the end on a worker thread
    digest = store.put(data)
    async with open_blob_pair(store) as (client, peer):
        got = await client.fetch_input(peer, digest, max_bytes=len(data))
        assert len(got) == len(data) and bytes(got) == data
        assert memoryview(got).readonly is False
        small_digest = store.put(b"small")
        assert bytes(await client.fetch_input(peer, small_digest, max_bytes=100)) == b"small"


@pytest.mark.parametrize("where", [0.05, 0.5, 0.999])
async def test_a_large_corrupted_blob_is_refused_wherever_the_flip_is(where):
    """A flipped byte near the start, in the middle or at the end: the whole is checked."""
    store = FlippingStore(where, flip=0x01)
    digest = store.put(os.urandom(12 * 1024 * 1024))
    async with open_blob_pair(store) as (client, peer):
        with pytest.raises(RemoteProtocolError, match="does not hash"):
            await client.fetch_input(peer, digest, max_bytes=16 * 1024 * 1024)


@asynccontextmanager
async def open_push_pair(store: MemoryBlobStore, *, max_bytes: int = 64 * 1024 * 1024
                         ) -> AsyncIterator[tuple[BlobPusher, str, BlobPushServer, Any]]:
    async with (
        open_host(Identity(os.urandom(32)), HostConfig()) as a,
        open_host(Identity(os.urandom(32)), HostConfig()) as b,
        trio.open_nursery() as nursery,
    ):
        server = BlobPushServer(b, store, max_bytes=max_bytes)
        await nursery.start(server.run)
        peer = await connect(a, addresses(b)[0])
        yield BlobPusher(a), peer, server, a
        nursery.cancel_scope.cancel()


async def test_a_pushed_blob_is_verified_and_stored_and_a_second_push_sends_nothing():
    store = MemoryBlobStore()
    async with open_push_pair(store) as (pusher, peer, server, _):
        for size in (0, 1000, 9 * 1024 * 1024 + 3):  # empty, small, large (hashed on a worker thread)
            data = os.urandom(size)
            digest = blake3.blake3(data).digest()
            assert await pusher.push(peer, digest, data) == "stored"
            assert bytes(store.get(digest)) == data
            assert await pusher.push(peer, digest, data) == "have"
        assert server.stored == 3
        # two pushes of the last blob (stored, then "have"): two jobs are coming for it
        server.claim(digest)
        server.claim(digest)
        server.used(digest)
        assert bytes(store.get(digest)) == data, "kept while a job still holds it"
        server.used(digest)  # the last job it was pushed for ran: it leaves the store
        assert store.get(digest) is None
        mine = store.put(b"made here")
        server.claim(mine)
        server.used(mine)  # only what was pushed is dropped
        assert store.get(mine) == b"made here"


async def test_the_next_large_push_reuses_the_last_ones_buffer_and_reads_right():
    store = MemoryBlobStore()
    async with open_push_pair(store) as (pusher, peer, server, _):
        first = os.urandom(20 * 1024 * 1024)
        d1 = blake3.blake3(first).digest()
        assert await pusher.push(peer, d1, first) == "stored"
        server.claim(d1)
        server.used(d1)
        spare = server._spare
        assert spare is not None and len(spare) == len(first) and store.get(d1) is None
        second = os.urandom(9 * 1024 * 1024)  # smaller: lands in the start of the same buffer
        d2 = blake3.blake3(second).digest()
        assert await pusher.push(peer, d2, second) == "stored"
        held = store.get(d2)
        assert held.obj is spare and len(held) == len(second) and bytes(held) == second
        third = os.urandom(10 * 1024 * 1024)  # while the second is held: a buffer of its own
        d3 = blake3.blake3(third).digest()
        assert await pusher.push(peer, d3, third) == "stored"
        assert bytes(store.get(d2)) == second and bytes(store.get(d3)) == third
        server.claim(d2)
        server.used(d2)
        assert server._spare is spare  # back again
        since = server._spare_since
        assert not server.drop_idle_spare(since + server.spare_idle_s / 2)
        assert server.drop_idle_spare(since + server.spare_idle_s + 1) and server._spare is None


async def test_a_push_over_the_limit_is_refused_before_any_byte_moves():
    store = MemoryBlobStore()
    async with open_push_pair(store, max_bytes=1024) as (pusher, peer, server, _):
        data = os.urandom(4096)
        with pytest.raises(PeerError, match="refused .*over this node's 1024-byte limit"):
            await pusher.push(peer, blake3.blake3(data).digest(), data)
        assert server.refused == 1 and store.statistics().blobs == 0


@pytest.mark.parametrize("size", [5000, 10 * 1024 * 1024])
async def test_pushed_bytes_that_do_not_match_their_digest_are_not_stored(size):
    store = MemoryBlobStore()
    async with open_push_pair(store) as (pusher, peer, server, _):
        data = os.urandom(size)
        wrong = blake3.blake3(data + b"!").digest()
        with pytest.raises(RemoteProtocolError, match="do not hash"):
            await pusher.push(peer, wrong, data)
        assert server.corrupt == 1 and store.get(wrong) is None


async def test_a_push_cut_short_stores_nothing_and_the_server_serves_on():
    store = MemoryBlobStore()
    async with open_push_pair(store) as (pusher, peer, server, a):
        data = os.urandom(3 * 1024 * 1024)
        digest = blake3.blake3(data).digest()
        stream = await a.new_stream(ID.from_base58(peer), [PUSH_PROTOCOL])
        from inos_node.net.framing import FrameReader
        from inos_node.wire.delegation import BlobOffer, decode_blob_offer_answer, encode_blob_offer

        await stream.write(encode_frame(encode_blob_offer(BlobOffer(digest, len(data))), limit=4096))
        answer = decode_blob_offer_answer(await FrameReader(stream, limit=4096).read_frame())
        assert answer.kind == "send"
        await stream.write(data[: len(data) // 2])
        await stream.close()  # half the bytes, then EOF
        with trio.fail_after(10):
            await trio.testing.wait_all_tasks_blocked(cushion=0.05)  # the server has dropped it
        assert len(server._inbound) == 0 and server.stored == 0
        assert store.get(digest) is None
        assert await pusher.push(peer, digest, data) == "stored"  # and takes the next push


async def test_a_fetch_into_a_wrong_buffer_is_a_plain_value_error():
    store = MemoryBlobStore()
    data = os.urandom(3 * 1024 * 1024)
    digest = store.put(data)
    async with open_blob_pair(store) as (client, peer):
        with pytest.raises(ValueError, match="writable buffer"):
            await client.fetch_into(peer, digest, max_bytes=len(data), allocate=lambda n: bytearray(n - 1))
        assert await client.fetch(peer, digest, max_bytes=len(data)) == data  # the client goes on


async def test_blob_not_found_is_a_peer_error():
    async with open_blob_pair(MemoryBlobStore()) as (client, peer):
        with pytest.raises(PeerError, match="does not have"):
            await client.fetch(peer, bytes(32), max_bytes=100)


async def test_a_corrupted_blob_is_refused():
    store = FlippingStore()
    digest = store.put(os.urandom(3 * 1024 * 1024))
    async with open_blob_pair(store) as (client, peer):
        with pytest.raises(RemoteProtocolError, match="does not hash"):
            await client.fetch(peer, digest, max_bytes=10 * 1024 * 1024)


def test_memory_store_evicts_least_recently_used_by_bytes():
    store = MemoryBlobStore(capacity_bytes=300)
    a, b = store.put(b"a" * 100), store.put(b"b" * 100)
    store.get(a)  # a is now the most recently used
    c = store.put(b"c" * 150)
    assert store.get(b) is None and store.get(a) == b"a" * 100 and store.get(c) == b"c" * 150
    assert store.statistics().bytes_used == 250
