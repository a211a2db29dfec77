"""Length-prefixed frames over a py-libp2p stream: a pure decoder and a thin async shell.

    frame := u32 little-endian length N (1 <= N <= limit) || N bytes of payload

Rules this module lives by:
  1. ``FrameDecoder`` is pure: bytes in (``feed``), whole frames out (``next_frame``).  However a
     byte stream is cut into reads, the frames come out exactly as they were written; the unit
     tests check this with arbitrary chunkings.
  2. The limit is checked on the 4-byte prefix, before any payload is buffered: a peer cannot
     make us hold more than ``limit`` bytes (+ one read) per stream.  Over the limit, a zero
     length, or EOF in the middle of a frame are ``RemoteProtocolError`` (the caller resets the
     stream; there is no way to resynchronise a length-prefixed stream).
  3. We read our own way: ``stream.read(n)`` may return fewer than ``n`` bytes and
     py-libp2p's ``read_exactly`` gives up after 100 partial reads (notes P8), so the shell loops
     until a frame is complete, however many reads that takes.
  4. Reads ask for at least ``READ_SIZE`` bytes, so many small frames come out of one read and a
     large frame needs few reads; the reads are kept as they came and a frame is cut out of them
     with one copy (a 1 MiB blob chunk arrives in ~16 Yamux pieces).

Why not the library's varint framing: see rule 3; and a fixed 4-byte prefix is what the schema
files specify (``schemas/p2p/v1/delegation.capnp``).

Two stream helpers shared by the ``/inos/delegate`` and ``/inos/blob`` adapters follow.

``InboundStreams`` guards a server's stream handler: stream limits (total, per peer), an
optional admission check (the hello gate), cancel-all on stop, and the rule that nothing may
escape a py-libp2p handler (notes P7).

``CorrelatedClient`` is the requesting side of a long-lived,
multiplexed request/response stream (``/inos/delegate`` and ``/inos/blob`` both use it).  It knows
nothing of libp2p (it gets an ``open_stream(peer_id)`` callable) nor of capnp (it gets a
``decode`` callable), so it runs as well over an in-memory fake stream.

    call(peer, id, frame) ──► pending[id] = slot ──► [FrameWriter, shielded write] ──► stream
                                    ▲                                                   │
    caller wakes ◄── slot.event ◄── reader task: decode, pending.pop(response id) ◄─────┘

  * one stream per peer, opened lazily by the first call, replaced after it breaks;
  * responses are matched by request id, never by order;
  * at most ``max_in_flight`` pending calls per peer: the next call fails at once
    (``LocalProtocolError`` naming the limit), it does not queue;
  * a reset, EOF, write failure or undecodable frame breaks the stream: every pending call on
    it fails with ``PeerError`` (the caller may retry elsewhere) and the stream is reset;
  * the caller writes its own request frame through the stream's ``FrameWriter`` (no task hop;
    frames handed in during a write go out together in the next one); the write is shielded,
    so a cancelled caller never leaves half a frame on the wire;
  * a caller that is cancelled (or whose deadline passes) removes its slot and queues the
    protocol's cancel frame if one was given, for the stream's writer task (best effort:
    dropped if the queue is full).
"""

from __future__ import annotations

import logging
import math
import struct
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, Generic, Protocol, TypeVar

import trio

from inos_node.errors import InosInternalError, LocalProtocolError, PeerError, RemoteProtocolError

__all__ = [
    "HEADER",
    "READ_SIZE",
    "Admit",
    "CorrelatedClient",
    "FrameDecoder",
    "FrameReader",
    "FrameWriter",
    "InboundStreams",
    "ReadableStream",
    "decode_header",
    "encode_frame",
    "encode_header",
    "reset_quietly",
    "serve_frames",
    "write_frame",
]

HEADER = 4
READ_SIZE = 256 * 1024
WRITE_TIMEOUT_S = 30.0  # a CorrelatedClient request write (shielded) stuck longer breaks the stream
_U32 = struct.Struct("<I")
R = TypeVar("R")
log = logging.getLogger(__name__)


class ReadableStream(Protocol):
    async def read(self, n: int | None = None) -> bytes: ...


def encode_header(length: int, *, limit: int) -> bytes:
    """The 4-byte prefix for a payload of ``length`` bytes.

    Raises:
        LocalProtocolError: ``length`` is 0 or over ``limit`` (we would send a frame the peer must
            refuse).
    """
    if length <= 0 or length > limit:
        raise LocalProtocolError(
            f"frame of {length} bytes is outside 1..{limit}", limit=limit, observed=length
        )
    return _U32.pack(length)


def decode_header(prefix: bytes | bytearray | memoryview, *, limit: int) -> int:
    """The payload length announced by a 4-byte prefix.

    Raises:
        RemoteProtocolError: a zero length, or a length over ``limit``.
    """
    (length,) = _U32.unpack_from(prefix)
    if length == 0:
        raise RemoteProtocolError("zero-length frame", limit=limit, observed=0)
    if length > limit:
        raise RemoteProtocolError(
            f"frame of {length} bytes is over the {limit}-byte limit", limit=limit, observed=length
        )
    return int(length)


def encode_frame(payload: bytes | bytearray | memoryview, *, limit: int) -> bytes:
    """Prefix and payload as one buffer (one ``stream.write``: fewer, larger Yamux frames)."""
    return encode_header(len(payload), limit=limit) + payload


class FrameDecoder:
    """Reassembles frames from arbitrary chunks of a byte stream.

    The chunks are kept as they came (no copy on ``feed``); a frame is cut out of them with one
    copy when it is complete (or none, when a chunk is exactly one frame's payload).

    Resource handling: holds at most one partial frame (<= ``limit`` + 4 bytes) plus whatever
    complete frames the last ``feed`` brought and the caller has not yet taken.
    """

    __slots__ = ("_chunks", "_expect", "_off", "_size", "limit")

    def __init__(self, *, limit: int) -> None:
        if limit < 1:
            raise ValueError("limit must be >= 1")
        self.limit = limit
        self._chunks: deque[bytes] = deque()
        self._off = 0  # bytes of _chunks[0] already consumed
        self._size = 0  # bytes buffered and not consumed
        self._expect = -1  # payload length of the frame being assembled; -1 = prefix not read yet

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        if data:
            self._chunks.append(data if isinstance(data, bytes) else bytes(data))
            self._size += len(data)

    def _take(self, n: int) -> bytes:
        first = self._chunks[0]
        off = self._off
        if len(first) - off >= n:
            out = first if (off == 0 and len(first) == n) else first[off : off + n]
            off += n
            if off == len(first):
                self._chunks.popleft()
                off = 0
            self._off = off
        else:
            parts = []
            need = n
            while need:
                first = self._chunks[0]
                piece = first[off : off + need] if (off or len(first) > need) else first
                parts.append(piece)
                need -= len(piece)
                off += len(piece)
                if off == len(first):
                    self._chunks.popleft()
                    off = 0
            self._off = off
            out = b"".join(parts)
        self._size -= n
        return out

    def next_frame(self) -> bytes | None:
        """The next complete frame's payload, or None when more bytes are needed.

        Raises:
            RemoteProtocolError: the next prefix announces 0 bytes or more than the limit.
        """
        if self._expect < 0:
            if self._size < HEADER:
                return None
            self._expect = decode_header(self._take(HEADER), limit=self.limit)
        if self._size < self._expect:
            return None
        payload = self._take(self._expect)
        self._expect = -1
        return payload

    def wanted(self) -> int:
        """Bytes still missing for the frame being assembled (>= 1)."""
        if self._expect < 0:
            return max(1, HEADER - self._size)
        return max(1, self._expect - self._size)

    @property
    def buffered(self) -> int:
        return self._size

    def check_eof(self) -> None:
        """Call at end of stream: a partial frame left over is the peer's fault.

        Raises:
            RemoteProtocolError: EOF inside a frame (``observed`` = bytes of it we got).
        """
        if self._size or self._expect >= 0:
            got = self._size + (HEADER if self._expect >= 0 else 0)
            want = HEADER + self._expect if self._expect >= 0 else HEADER
            raise RemoteProtocolError(
                f"stream ended inside a frame ({got} of {want} bytes)", limit=want, observed=got
            )


class FrameReader:
    """Reads whole frames from a stream (anything with ``async read(n) -> bytes``).

    The stream's own EOF exception (py-libp2p raises ``StreamEOF``, an ``EOFError``; a remote reset
    also shows up as EOF, notes P10) ends a clean stream: ``read_frame`` then returns None.
    """

    __slots__ = ("_decoder", "_eof", "_stream")

    def __init__(self, stream: Any, *, limit: int) -> None:
        self._stream = stream
        self._decoder = FrameDecoder(limit=limit)
        self._eof = False

    @property
    def buffered(self) -> int:
        """Bytes read from the stream and not yet handed out as a frame."""
        return self._decoder.buffered

    def next_buffered(self) -> bytes | None:
        """The next frame if the bytes already read hold it whole, else None (no I/O).

        Raises:
            RemoteProtocolError: as ``read_frame``.
        """
        return self._decoder.next_frame()

    async def read_frame(self) -> bytes | None:
        """The next frame, or None at a clean end of stream (between frames).

        Raises:
            RemoteProtocolError: over-limit or zero-length frame, or EOF inside a frame.
            Whatever ``stream.read`` raises other than EOF (for py-libp2p: ``StreamReset``,
            ``StreamError``): the caller maps it.

        Cancellation: safe at any await; bytes already read stay buffered for the next call.
        """
        dec = self._decoder
        while True:
            frame = dec.next_frame()
            if frame is not None:
                return frame
            if self._eof:
                dec.check_eof()
                return None
            try:
                data = await self._stream.read(max(dec.wanted(), READ_SIZE))
            except EOFError:
                data = b""
            if not data:
                self._eof = True
                continue
            dec.feed(data)


async def write_frame(stream: Any, payload: bytes | bytearray | memoryview, *, limit: int) -> None:
    """Write one frame.  Not safe to interleave: callers serialise writes per stream.

    Cancellation: a cancel in the middle of the write can leave half a frame on the wire; the
    callers in this package either write from one task that is cancelled only when the stream
    is abandoned, or reset the stream after a cancelled write.
    """
    await stream.write(encode_frame(payload, limit=limit))


class _Batch:
    __slots__ = ("done", "error", "frames")

    def __init__(self) -> None:
        self.frames: list[bytes] = []
        self.done = trio.Event()
        self.error: BaseException | None = None


class FrameWriter:
    """Writes whole frames to one stream from many tasks, never interleaved, coalescing.

    The first writer writes its frame at once; frames that other tasks hand in meanwhile are
    collected and the same task writes them together in its next ``stream.write`` (one Yamux
    frame, one Noise encryption, one send for many small frames), while their writers wait for
    that write to finish.  A frame is either written whole or not at all (it is only ever part
    of one ``stream.write``); the order is the order of the ``write`` calls.

    Resource handling: each waiting writer holds its own frame only; nothing is buffered once
    every ``write`` has returned.

    Cancellation: a task cancelled while waiting for its batch returns without knowing whether
    its frame went out (it will, whole, unless the stream breaks).  A write that fails or is
    cancelled in the middle breaks the writer: every later ``write`` raises
    ``trio.BrokenResourceError`` (the caller resets the stream).
    """

    __slots__ = ("_next", "_stream", "_writing", "broken")

    def __init__(self, stream: Any) -> None:
        self._stream = stream
        self._next: _Batch | None = None
        self._writing = False
        self.broken: BaseException | None = None

    def _broken_error(self) -> trio.BrokenResourceError:
        err = trio.BrokenResourceError(f"stream write failed: {self.broken!r}")
        err.__cause__ = self.broken if isinstance(self.broken, Exception) else None
        return err

    async def write(self, frame: bytes) -> None:
        """Write ``frame`` (a whole encoded frame); returns once it is written.

        Raises:
            Whatever ``stream.write`` raised, for the task that called it; for the others whose
            frames were in that write or are handed in later: ``trio.BrokenResourceError``.
        """
        if self.broken is not None:
            raise self._broken_error()
        if self._writing:
            batch = self._next
            if batch is None:
                batch = self._next = _Batch()
            batch.frames.append(frame)
            await batch.done.wait()
            if batch.error is not None:
                raise self._broken_error()
            return
        self._writing = True
        batch = None
        try:
            await self._stream.write(frame)
            while (batch := self._next) is not None:
                self._next = None
                frames = batch.frames
                await self._stream.write(frames[0] if len(frames) == 1 else b"".join(frames))
                batch.done.set()
        except BaseException as exc:
            self.broken = exc
            for failed in (batch, self._next):
                if failed is not None:
                    failed.error = exc
                    failed.done.set()
            self._next = None
            raise
        finally:
            self._writing = False


async def reset_quietly(stream: Any, *, timeout_s: float = 1.0) -> None:
    """Reset ``stream``, shielded and time-bounded; a stream that is already gone is fine.

    Why the blind except: py-libp2p raises assorted errors from ``reset`` on a dead connection,
    and a stream we are abandoning anyway must never take its caller down with it.
    """
    with trio.CancelScope(shield=True) as scope:
        scope.deadline = trio.current_time() + timeout_s
        try:
            await stream.reset()
        except Exception:  # noqa: BLE001 - see the docstring
            log.debug("reset of an abandoned stream failed", exc_info=True)


async def serve_frames(
    stream: Any, peer_id: str, *, name: str, limit: int, on_frame: Callable[[bytes], Awaitable[None]]
) -> bool:
    """A request/answer server's loop on one stream: hand each frame (<= ``limit``) to
    ``on_frame``, which writes its answer, until the peer ends the stream; then reset it.

    A ``RemoteProtocolError`` (a malformed or over-limit frame, or a request ``on_frame``
    refuses) is the peer's fault: one warning naming the peer, and True is returned.  Any other
    failure (StreamReset & co) means the stream is gone: a debug line, False.
    """
    reader = FrameReader(stream, limit=limit)
    reset = False
    try:
        while (frame := await reader.read_frame()) is not None:
            await on_frame(frame)
    except RemoteProtocolError as exc:
        reset = True
        log.warning("%s: resetting stream from peer %s: %s", name, peer_id, exc)
    except Exception as exc:  # noqa: BLE001 - StreamReset/StreamError & co: the stream is gone
        log.debug("%s: stream from peer %s ended: %r", name, peer_id, exc)
    await reset_quietly(stream)
    return reset


# ------------------------------------------------------------------------- inbound streams

Admit = Callable[[str], Awaitable[bool]]


class InboundStreams:
    """What every server-side stream handler needs, in one place.

    * Streams are refused (reset) when the server is not running, when ``max_streams`` are open,
      when the peer already has ``max_per_peer`` open, or when ``admit(peer_id)`` says no (the
      node passes ``HelloGate.admit``: only peers of our network are served).
    * Each stream's work runs under a cancel scope that ``stop()`` cancels.
    * Nothing escapes (py-libp2p calls handlers in its own tasks; one exception there kills the
      node, notes P7): a failure is logged with the peer id and the stream is reset.

    Resource handling: a stream holds at most one partial frame, so the worst case buffered by a
    server is ``max_streams * max_frame`` bytes.
    """

    def __init__(self, name: str, *, max_streams: int, max_per_peer: int, admit: Admit | None = None) -> None:
        if max_streams < 1 or max_per_peer < 1:
            raise ValueError("max_streams and max_per_peer must be >= 1")
        self.name = name
        self.max_streams = max_streams
        self.max_per_peer = max_per_peer
        self._admit = admit
        self._scopes: set[trio.CancelScope] = set()
        self._per_peer: dict[str, int] = {}
        self.running = False
        self.refused = 0

    def __len__(self) -> int:
        return len(self._scopes)

    def stop(self) -> None:
        self.running = False
        for scope in list(self._scopes):
            scope.cancel()

    async def run(self, host: Any, protocol: Any, serve: Callable[[Any, str], Awaitable[None]], *,
                  task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """A server's whole lifetime: register ``protocol`` on ``host`` (each stream goes to
        ``serve`` through ``self.serve``), run until cancelled, then tear every stream down and
        unregister."""

        async def on_stream(stream: Any) -> None:
            await self.serve(stream, serve)

        self.running = True
        host.set_stream_handler(protocol, on_stream)
        try:
            task_status.started()
            await trio.sleep_forever()
        finally:
            self.stop()
            try:
                host.remove_stream_handler(protocol)
            except Exception:  # noqa: BLE001 - a host already shut down has no handlers to remove
                log.debug("%s: remove_stream_handler failed", self.name, exc_info=True)

    async def serve(self, stream: Any, serve: Callable[[Any, str], Awaitable[None]]) -> None:
        """Run ``serve(stream, peer_id)`` for one inbound stream, guarded as described above."""
        peer_id = "?"
        try:
            peer_id = str(stream.muxed_conn.peer_id.to_base58())
            if (
                not self.running
                or len(self._scopes) >= self.max_streams
                or self._per_peer.get(peer_id, 0) >= self.max_per_peer
                or (self._admit is not None and not await self._admit(peer_id))
            ):
                self.refused += 1
                log.info("%s: refusing a stream from peer %s", self.name, peer_id)
                await reset_quietly(stream)
                return
            scope = trio.CancelScope()
            self._scopes.add(scope)
            self._per_peer[peer_id] = self._per_peer.get(peer_id, 0) + 1
            try:
                with scope:
                    await serve(stream, peer_id)
            finally:
                self._scopes.discard(scope)
                left = self._per_peer.pop(peer_id) - 1
                if left:
                    self._per_peer[peer_id] = left
        except Exception:  # noqa: BLE001 - supervisor: a failing stream must not take the node down (P7)
            log.exception("%s: stream from peer %s failed", self.name, peer_id)
            await reset_quietly(stream)


# ------------------------------------------------------------------- correlated request streams


class _Pending(Generic[R]):
    __slots__ = ("error", "event", "response")

    def __init__(self) -> None:
        self.event = trio.Event()
        self.response: R | None = None
        self.error: PeerError | None = None


class _PeerStream(Generic[R]):
    __slots__ = ("broken", "peer_id", "pending", "recv", "scope", "send", "stream", "writer")

    def __init__(self, peer_id: str, stream: Any, max_in_flight: int) -> None:
        self.peer_id = peer_id
        self.stream = stream
        self.pending: dict[int, _Pending[R]] = {}
        # Requests are written by their callers through ``writer``; only cancel frames (queued
        # from a caller that is giving up) go through this queue to the writer task.  Bound: one
        # per in-flight call; best effort, dropped when the queue is full.
        self.send, self.recv = trio.open_memory_channel[bytes](max_in_flight)
        self.writer = FrameWriter(stream)
        self.scope = trio.CancelScope()  # the stream's reader and writer tasks; cancel = break
        self.broken: PeerError | None = None

    def break_on_write(self, name: str, exc: BaseException) -> PeerError:
        if self.broken is None:
            self.broken = PeerError(
                f"{name} stream to {self.peer_id} broke on write: {type(exc).__name__}: {exc}"
            )
        self.scope.cancel()
        return self.broken

    def fail(self, error: PeerError) -> None:
        if self.broken is None:
            self.broken = error
        for slot in self.pending.values():
            slot.error = self.broken
            slot.event.set()
        self.pending.clear()


class CorrelatedClient(Generic[R]):
    """The requesting side of a multiplexed request/response protocol (see the module docstring).

    Args:
        name: the protocol's name, for errors and logs.
        open_stream: ``async (peer_id) -> stream``; raises ``PeerError`` when it cannot.
        decode: payload bytes -> response; raises ``RemoteProtocolError`` on garbage.
        response_id: the request id a response answers.
        max_frame: the largest frame accepted or sent.
        max_in_flight: pending calls per peer.
        max_peers: peers with an open stream at once.

    Resource handling: streams and their reader/writer tasks live in ``run``'s nursery; leaving
    ``run`` fails every pending call with ``PeerError`` and resets every stream.
    """

    def __init__(
        self,
        *,
        name: str,
        open_stream: Callable[[str], Awaitable[Any]],
        decode: Callable[[bytes], R],
        response_id: Callable[[R], int],
        max_frame: int,
        max_in_flight: int = 256,
        max_peers: int = 1024,
    ) -> None:
        if max_in_flight < 1 or max_peers < 1 or max_frame < 1:
            raise ValueError("max_in_flight, max_peers and max_frame must be >= 1")
        self.name = name
        self.max_frame = max_frame
        self.max_in_flight = max_in_flight
        self.max_peers = max_peers
        self._open_stream = open_stream
        self._decode = decode
        self._response_id = response_id
        self._peers: dict[str, _PeerStream[R]] = {}
        self._opening: dict[str, trio.Event] = {}
        self._nursery: trio.Nursery | None = None
        self._next_id = 0

    # ------------------------------------------------------------------------------- lifecycle

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Own the per-peer streams until cancelled."""
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                task_status.started()
                await trio.sleep_forever()
        finally:
            self._nursery = None
            for ps in list(self._peers.values()):
                ps.fail(PeerError(f"{self.name} client stopped"))

    def next_request_id(self) -> int:
        self._next_id = (self._next_id + 1) % 2**64
        return self._next_id

    def in_flight(self, peer_id: str) -> int:
        ps = self._peers.get(peer_id)
        return len(ps.pending) if ps is not None else 0

    def connected_streams(self) -> int:
        return len(self._peers)

    # ------------------------------------------------------------------------------------ call

    async def call(
        self,
        peer_id: str,
        request_id: int,
        payload: bytes,
        *,
        cancel_payload: Callable[[], bytes] | None = None,
        deadline: float = math.inf,
    ) -> R:
        """Send one request frame and wait for the response with the same request id.

        Args:
            cancel_payload: makes the protocol's cancel frame for this request; called only if
                the caller gives up before the answer (so most requests never build one).
            deadline: trio time after which we stop waiting (``PeerError``: the peer did not
                answer in time) and send the cancel frame.

        Raises:
            PeerError: the stream could not be opened, broke while we waited (reset, EOF, a bad
                frame from the peer), or the deadline passed.
            LocalProtocolError: ``max_in_flight`` calls already pending for this peer, or the
                frame is over ``max_frame``.

        Cancellation: the slot is removed and ``cancel_payload`` queued (best effort); a
            response that arrives later is dropped.
        """
        frame = encode_frame(payload, limit=self.max_frame)
        ps = await self._stream_for(peer_id)
        if len(ps.pending) >= self.max_in_flight:
            raise LocalProtocolError(
                f"{self.name}: {len(ps.pending)} requests already in flight to {peer_id} "
                f"(limit {self.max_in_flight}); retry later or elsewhere",
                limit=self.max_in_flight,
                observed=len(ps.pending),
            )
        if request_id in ps.pending:
            raise InosInternalError(f"{self.name}: request id {request_id} reused while pending")
        slot: _Pending[R] = _Pending()
        ps.pending[request_id] = slot
        sent = False
        try:
            if ps.broken is not None:
                raise ps.broken
            # Shielded: a caller cancelled here must not leave half a frame on the wire.  Bounded:
            # a write stuck for WRITE_TIMEOUT_S (a dead peer) breaks the stream instead.
            with trio.CancelScope(shield=True, deadline=trio.current_time() + WRITE_TIMEOUT_S) as scope:
                try:
                    await ps.writer.write(frame)
                except Exception as exc:  # noqa: BLE001 - any write failure breaks this stream only
                    raise ps.break_on_write(self.name, exc) from None
            if scope.cancelled_caught:
                raise ps.break_on_write(self.name, TimeoutError(f"write stuck for {WRITE_TIMEOUT_S} s"))
            sent = True
            with trio.move_on_at(deadline):
                await slot.event.wait()
        finally:
            if ps.pending.get(request_id) is slot:
                del ps.pending[request_id]
            if sent and not slot.event.is_set() and cancel_payload is not None:
                try:
                    ps.send.send_nowait(encode_frame(cancel_payload(), limit=self.max_frame))
                except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
                    pass  # best effort: the peer stops at its own deadline anyway
        if slot.error is not None:
            raise slot.error
        if not slot.event.is_set():
            raise PeerError(f"{self.name}: no answer from {peer_id} to request {request_id} by its deadline")
        assert slot.response is not None
        return slot.response

    # --------------------------------------------------------------------------------- streams

    async def _stream_for(self, peer_id: str) -> _PeerStream[R]:
        while True:
            ps = self._peers.get(peer_id)
            if ps is not None and ps.broken is None:
                return ps
            if self._nursery is None:
                raise InosInternalError(f"{self.name} client used outside its run()")
            opening = self._opening.get(peer_id)
            if opening is not None:
                await opening.wait()
                continue
            if len(self._peers) + len(self._opening) >= self.max_peers:
                raise LocalProtocolError(
                    f"{self.name}: streams to {self.max_peers} peers already open",
                    limit=self.max_peers,
                    observed=len(self._peers),
                )
            opening = self._opening[peer_id] = trio.Event()
            try:
                started: _PeerStream[R] = await self._nursery.start(self._drive, peer_id)
                return started
            finally:
                del self._opening[peer_id]
                opening.set()

    async def _drive(self, peer_id: str, *, task_status: trio.TaskStatus[_PeerStream[R]]) -> None:
        stream = await self._open_stream(peer_id)
        ps: _PeerStream[R] = _PeerStream(peer_id, stream, self.max_in_flight)
        self._peers[peer_id] = ps
        task_status.started(ps)
        try:
            with ps.scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._write_loop, ps)
                    await self._read_loop(ps)
                    nursery.cancel_scope.cancel()
        finally:
            ps.fail(ps.broken or PeerError(f"{self.name} stream to {peer_id} closed"))
            if self._peers.get(peer_id) is ps:
                del self._peers[peer_id]
            ps.recv.close()
            await reset_quietly(stream)

    async def _read_loop(self, ps: _PeerStream[R]) -> None:
        reader = FrameReader(ps.stream, limit=self.max_frame)
        try:
            while True:
                frame = await reader.read_frame()
                if frame is None:
                    ps.broken = PeerError(
                        f"{self.name} stream to {ps.peer_id} ended (peer closed, reset or died)"
                    )
                    return
                response = self._decode(frame)
                slot = ps.pending.pop(self._response_id(response), None)
                if slot is not None:  # else: the caller gave up (cancelled); drop the late answer
                    slot.response = response
                    slot.event.set()
        except RemoteProtocolError as exc:
            log.warning("%s: bad frame from peer %s, resetting the stream: %s", self.name, ps.peer_id, exc)
            ps.broken = PeerError(f"{self.name}: peer {ps.peer_id} sent a bad frame: {exc}")
        except Exception as exc:  # noqa: BLE001 - supervisor: any stream failure breaks this stream only
            ps.broken = PeerError(f"{self.name} stream to {ps.peer_id} broke: {type(exc).__name__}: {exc}")

    async def _write_loop(self, ps: _PeerStream[R]) -> None:
        """Writes the queued cancel frames (requests are written by their callers)."""
        try:
            async for frame in ps.recv:
                await ps.writer.write(frame)
        except Exception as exc:  # noqa: BLE001 - supervisor: any stream failure breaks this stream only
            ps.break_on_write(self.name, exc)
