"""u32-LE framing (pure decoder + async reader) and the correlated request core, without sockets."""

from __future__ import annotations

import math

import pytest
import trio
import trio.testing
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from inos_node.errors import LocalProtocolError, PeerError, RemoteProtocolError
from inos_node.net import framing
from inos_node.net.framing import CorrelatedClient, FrameDecoder, FrameReader, encode_frame

LIMIT = 4096

frames_st = st.lists(st.binary(min_size=1, max_size=600), max_size=30)


def _cut(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in zip(points, points[1:], strict=False)]


@settings(max_examples=300, deadline=None)
@given(frames=frames_st, cuts=st.lists(st.integers(0, 10**6), max_size=40))
def test_any_chunking_reassembles_the_frames_exactly(frames, cuts):
    stream = b"".join(encode_frame(f, limit=LIMIT) for f in frames)
    dec = FrameDecoder(limit=LIMIT)
    out = []
    for piece in _cut(stream, cuts):
        dec.feed(piece)
        while (f := dec.next_frame()) is not None:
            out.append(f)
    assert out == frames
    assert dec.buffered == 0
    dec.check_eof()  # a clean end between frames


@settings(max_examples=200, deadline=None)
@given(
    frames=st.lists(st.binary(min_size=1, max_size=300), min_size=1, max_size=10),
    drop=st.integers(1, 10**6),
    cuts=st.lists(st.integers(0, 10**6), max_size=10),
)
def test_eof_inside_a_frame_is_a_remote_error(frames, drop, cuts):
    encoded = [encode_frame(f, limit=LIMIT) for f in frames]
    stream = b"".join(encoded)
    boundaries = {0}
    for e in encoded:
        boundaries.add(max(boundaries) + len(e))
    end = drop % len(stream)
    assume(end not in boundaries)  # a cut between frames is a clean end
    stream = stream[:end]
    dec = FrameDecoder(limit=LIMIT)
    for piece in _cut(stream, cuts):
        dec.feed(piece)
        while dec.next_frame() is not None:
            pass
    with pytest.raises(RemoteProtocolError, match="stream ended inside a frame"):
        dec.check_eof()


def test_frame_over_the_limit_is_refused_on_its_prefix():
    dec = FrameDecoder(limit=100)
    dec.feed((101).to_bytes(4, "little"))  # no payload yet: refused before buffering any
    with pytest.raises(RemoteProtocolError, match="over the 100-byte limit") as info:
        dec.next_frame()
    assert (info.value.limit, info.value.observed) == (100, 101)


def test_zero_length_frame_is_refused():
    dec = FrameDecoder(limit=100)
    dec.feed(b"\0\0\0\0")
    with pytest.raises(RemoteProtocolError, match="zero-length"):
        dec.next_frame()


def test_we_never_encode_what_the_peer_must_refuse():
    with pytest.raises(LocalProtocolError):
        encode_frame(b"", limit=10)
    with pytest.raises(LocalProtocolError) as info:
        encode_frame(b"x" * 11, limit=10)
    assert (info.value.limit, info.value.observed) == (10, 11)
    assert framing.decode_header(framing.encode_header(10, limit=10), limit=10) == 10


class FakeStream:
    """``read(n)`` hands out at most ``step`` bytes at a time, then EOF (as py-libp2p: EOFError)."""

    def __init__(self, data: bytes, step: int, *, eof: type[BaseException] | None = EOFError) -> None:
        self.data = data
        self.step = step
        self.eof = eof

    async def read(self, n: int | None = None) -> bytes:
        await trio.lowlevel.checkpoint()
        if not self.data:
            if self.eof is None:
                return b""
            raise self.eof()
        take = min(self.step, n or self.step)
        out, self.data = self.data[:take], self.data[take:]
        return out


@pytest.mark.parametrize("eof", [EOFError, None])
async def test_reader_loops_over_short_reads_until_a_frame_is_whole(eof):
    frames = [b"a" * 1000, b"b", b"c" * 3000]
    stream = FakeStream(b"".join(encode_frame(f, limit=LIMIT) for f in frames), step=7, eof=eof)
    reader = FrameReader(stream, limit=LIMIT)
    assert [await reader.read_frame() for _ in frames] == frames
    assert await reader.read_frame() is None


async def test_reader_reports_eof_mid_frame():
    reader = FrameReader(FakeStream(encode_frame(b"x" * 100, limit=LIMIT)[:50], step=9), limit=LIMIT)
    with pytest.raises(RemoteProtocolError, match="inside a frame"):
        await reader.read_frame()


# ------------------------------------------------------------------ CorrelatedClient, no sockets


class PipeEnd:
    """One end of an in-memory duplex byte pipe with py-libp2p's stream surface."""

    def __init__(
        self, inbox: trio.MemoryReceiveChannel[bytes], outbox: trio.MemorySendChannel[bytes]
    ) -> None:
        self.inbox = inbox
        self.outbox = outbox
        self.reset_called = trio.Event()
        self.written: list[bytes] = []

    async def read(self, n: int | None = None) -> bytes:
        try:
            return await self.inbox.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            raise EOFError from None

    async def write(self, data: bytes) -> None:
        self.written.append(bytes(data))
        await self.outbox.send(bytes(data))

    async def reset(self) -> None:
        self.reset_called.set()
        await self.outbox.aclose()
        await self.inbox.aclose()


def pipe() -> tuple[PipeEnd, PipeEnd]:
    a_send, b_recv = trio.open_memory_channel[bytes](math.inf)
    b_send, a_recv = trio.open_memory_channel[bytes](math.inf)
    return PipeEnd(a_recv, a_send), PipeEnd(b_recv, b_send)


def _req(rid: int, body: bytes) -> bytes:
    return rid.to_bytes(8, "little") + body


def _parse(frame: bytes) -> tuple[int, bytes]:
    if len(frame) < 8:
        raise RemoteProtocolError("short")
    return int.from_bytes(frame[:8], "little"), frame[8:]


class FakePeer:
    """A server on the far end of a pipe: records requests; the test decides what to answer."""

    def __init__(self) -> None:
        self.ends: list[PipeEnd] = []
        self.requests: trio.MemorySendChannel[tuple[int, bytes]]
        self.requests, self.received = trio.open_memory_channel[tuple[int, bytes]](math.inf)
        self.opened = 0

    async def open_stream(self, peer_id: str) -> PipeEnd:
        if peer_id == "nobody":
            raise PeerError("cannot open")
        near, far = pipe()
        self.ends.append(far)
        self.opened += 1
        return near

    async def serve(self, far: PipeEnd) -> None:
        reader = FrameReader(far, limit=LIMIT)
        while (frame := await reader.read_frame()) is not None:
            self.requests.send_nowait(_parse(frame))

    async def answer(self, rid: int, body: bytes, end: int = -1) -> None:
        await self.ends[end].write(encode_frame(_req(rid, body), limit=LIMIT))


def client_for(peer: FakePeer, **kw) -> CorrelatedClient[tuple[int, bytes]]:
    return CorrelatedClient(
        name="test",
        open_stream=peer.open_stream,
        decode=_parse,
        response_id=lambda r: r[0],
        max_frame=LIMIT,
        **kw,
    )


async def test_answers_are_matched_by_request_id_not_by_order(nursery):
    peer = FakePeer()
    client = client_for(peer)
    await nursery.start(client.run)
    results: dict[int, bytes] = {}

    async def call(rid: int) -> None:
        results[rid] = (await client.call("p", rid, _req(rid, b"q")))[1]

    async with trio.open_nursery() as callers:
        for rid in range(1, 33):
            callers.start_soon(call, rid)
        await trio.testing.wait_all_tasks_blocked()
        assert peer.opened == 1, "32 concurrent calls must share one stream"
        nursery.start_soon(peer.serve, peer.ends[0])
        seen = [(await peer.received.receive())[0] for _ in range(32)]
        assert sorted(seen) == list(range(1, 33))
        for rid in reversed(seen):
            await peer.answer(rid, b"answer-%d" % rid)
    assert results == {rid: b"answer-%d" % rid for rid in range(1, 33)}
    assert client.in_flight("p") == 0


async def test_in_flight_limit_fails_fast_with_a_clear_error(nursery):
    peer = FakePeer()
    client = client_for(peer, max_in_flight=2)
    await nursery.start(client.run)
    for rid in (1, 2):
        nursery.start_soon(client.call, "p", rid, _req(rid, b""))
    await trio.testing.wait_all_tasks_blocked()
    with pytest.raises(LocalProtocolError, match="limit 2") as info:
        await client.call("p", 3, _req(3, b""))
    assert (info.value.limit, info.value.observed) == (2, 2)


async def test_a_broken_stream_fails_every_pending_call_and_is_replaced(nursery):
    peer = FakePeer()
    client = client_for(peer)
    await nursery.start(client.run)
    errors: list[BaseException] = []

    async def call(rid: int) -> None:
        try:
            await client.call("p", rid, _req(rid, b""))
        except PeerError as exc:
            errors.append(exc)

    async with trio.open_nursery() as callers:
        for rid in range(1, 6):
            callers.start_soon(call, rid)
        await trio.testing.wait_all_tasks_blocked()
        await peer.ends[0].reset()  # the peer resets (or dies): our reader sees EOF (P10)
    assert len(errors) == 5
    # the next call opens a fresh stream
    async with trio.open_nursery() as callers:
        callers.start_soon(call, 9)
        await trio.testing.wait_all_tasks_blocked()
        assert peer.opened == 2
        await peer.answer(9, b"ok")
    assert len(errors) == 5


async def test_a_garbage_answer_breaks_the_stream_with_peer_error(nursery):
    peer = FakePeer()
    client = client_for(peer)
    await nursery.start(client.run)
    async with trio.open_nursery() as callers:

        async def call() -> None:
            with pytest.raises(PeerError, match="bad frame"):
                await client.call("p", 1, _req(1, b""))

        callers.start_soon(call)
        await trio.testing.wait_all_tasks_blocked()
        await peer.ends[0].write(encode_frame(b"xx", limit=LIMIT))  # too short for _parse


async def test_a_cancelled_caller_sends_the_cancel_frame_and_drops_the_late_answer(nursery):
    peer = FakePeer()
    client = client_for(peer)
    await nursery.start(client.run)
    with trio.CancelScope() as scope:

        async def cancel_soon() -> None:
            await trio.testing.wait_all_tasks_blocked()
            scope.cancel()

        nursery.start_soon(cancel_soon)
        await client.call("p", 7, _req(7, b"work"), cancel_payload=lambda: _req(7, b"CANCEL"))
    assert scope.cancelled_caught
    nursery.start_soon(peer.serve, peer.ends[0])
    assert await peer.received.receive() == (7, b"work")
    assert await peer.received.receive() == (7, b"CANCEL")
    await peer.answer(7, b"too late")  # dropped, no error
    await trio.testing.wait_all_tasks_blocked()
    assert client.in_flight("p") == 0


async def test_deadline_without_answer_is_a_peer_error(nursery, autojump_clock):
    peer = FakePeer()
    client = client_for(peer)
    await nursery.start(client.run)
    with pytest.raises(PeerError, match="no answer"):
        await client.call("p", 1, _req(1, b""), deadline=trio.current_time() + 5)


async def test_unreachable_peer_is_a_peer_error(nursery):
    client = client_for(FakePeer())
    await nursery.start(client.run)
    with pytest.raises(PeerError, match="cannot open"):
        await client.call("nobody", 1, _req(1, b""))


class _SlowStream:
    """Records each ``write``; every write yields, so other writers pile up meanwhile."""

    def __init__(self, fail_on: int = -1) -> None:
        self.writes: list[bytes] = []
        self.fail_on = fail_on

    async def write(self, data: bytes) -> None:
        await trio.sleep(0.01)
        if len(self.writes) == self.fail_on:
            raise OSError("boom")
        self.writes.append(data)


async def test_frame_writer_coalesces_concurrent_frames_in_order_and_never_splits_one():
    stream = _SlowStream()
    writer = framing.FrameWriter(stream)
    frames = [encode_frame(bytes([i]) * (i + 1), limit=LIMIT) for i in range(20)]
    async with trio.open_nursery() as nursery:
        for f in frames:
            nursery.start_soon(writer.write, f)
            await trio.sleep(0)  # start order = hand-in order
    assert b"".join(stream.writes) == b"".join(frames)
    assert len(stream.writes) < len(frames)  # coalesced
    dec = FrameDecoder(limit=LIMIT)
    for w in stream.writes:  # each write holds whole frames only
        dec.feed(w)
        while dec.next_frame() is not None:
            pass
        assert dec.buffered == 0


async def test_frame_writer_failure_reaches_every_waiting_and_later_writer():
    writer = framing.FrameWriter(_SlowStream(fail_on=0))
    errors: list[BaseException] = []

    async def one() -> None:
        try:
            await writer.write(encode_frame(b"x", limit=LIMIT))
        except Exception as exc:  # noqa: BLE001 - collected for the assertions
            errors.append(exc)

    async with trio.open_nursery() as nursery:
        for _ in range(5):
            nursery.start_soon(one)
    assert len(errors) == 5
    assert sum(isinstance(e, OSError) for e in errors) == 1  # the task whose write failed
    assert sum(isinstance(e, trio.BrokenResourceError) for e in errors) == 4
    with pytest.raises(trio.BrokenResourceError):
        await writer.write(encode_frame(b"y", limit=LIMIT))
