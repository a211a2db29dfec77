"""``/inos/blob/1.0.0``: content-addressed bytes (blake3) fetched from a peer in chunks.

Theory of operation
-------------------
A fetcher keeps one long-lived blob stream per peer (``net.framing.CorrelatedClient``, the same
machinery as delegation) and asks for ``(digest, offset, length <= 1 MiB)`` chunks, several at
once: the first chunk tells the total length, then ``pipeline`` chunk requests stay in flight
until the blob is complete, so the stream never idles waiting for a round trip.  Chunks land in
one preallocated buffer; the blake3 of the whole is checked at the end (a mismatch is the
server's fault: ``RemoteProtocolError``), so a server cannot feed us other content.

The server answers each request on the stream in order, inline in the stream's reader (a
lookup and a slice: there is nothing slow to overlap, and the requester's few small, pipelined
requests never stall its writes).  Answers: ``chunk`` (+ totalLength), ``notFound``, or
``error`` (a bad offset/length, a store failure).

``/inos/blob-push/1.0.0`` (``BlobPushServer`` / ``BlobPusher``, at the end of this module) is the
other direction: a requester writes a large input to the worker it is about to delegate to, as
raw bytes on a stream of its own; the worker checks their blake3 once they are all in and stores
them for the job.  It is an optimisation only: whatever is not pushed is fetched as above.

Rules:
  1. Everything is bounded: a request frame is <= 4 KiB, an answer <= 1 MiB + 4 KiB, a fetch
     <= ``max_bytes`` (checked on the first answer, before the buffer is allocated).
  2. ``BlobStore`` is the interface the node provides; ``MemoryBlobStore`` is a bounded LRU (by
     bytes) kept in memory.  The node may back it by its arena later.
"""

from __future__ import annotations

import logging
import math
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, Protocol, TypeVar

import blake3
import trio
from libp2p.custom_types import TProtocol

from inos_node.arena.buffers import POPULATE_FROM, populated_buffer
from inos_node.errors import InputTooLarge, PeerError, RemoteProtocolError
from inos_node.net.delegation import open_protocol_stream
from inos_node.net.framing import (
    Admit,
    CorrelatedClient,
    FrameReader,
    InboundStreams,
    encode_frame,
    encode_header,
    reset_quietly,
    serve_frames,
)
from inos_node.wire.delegation import (
    DIGEST_BYTES,
    MAX_BLOB_CHUNK,
    BlobChunk,
    BlobFailed,
    BlobNotFound,
    BlobOffer,
    BlobOfferAnswer,
    BlobRequest,
    BlobResponse,
    decode_blob_offer,
    decode_blob_offer_answer,
    decode_blob_request,
    decode_blob_response,
    encode_blob_chunk_parts,
    encode_blob_offer,
    encode_blob_offer_answer,
    encode_blob_request,
    encode_blob_response,
)

__all__ = [
    "CHUNK",
    "PROTOCOL",
    "PUSH_PROTOCOL",
    "BlobClient",
    "BlobPushServer",
    "BlobPusher",
    "BlobServer",
    "BlobStore",
    "MemoryBlobStore",
    "digest_of",
]

W = TypeVar("W", bytearray, memoryview)
PROTOCOL = TProtocol("/inos/blob/1.0.0")
PUSH_PROTOCOL = TProtocol("/inos/blob-push/1.0.0")
CHUNK = MAX_BLOB_CHUNK
_MAX_REQUEST_FRAME = 4096
_MAX_RESPONSE_FRAME = MAX_BLOB_CHUNK + 4096
log = logging.getLogger(__name__)


_ALL_CORES_FROM = 8 * 1024 * 1024  # blobs this big are hashed on all cores (and off the event loop)


def digest_of(data: bytes | bytearray | memoryview) -> bytes:
    # Large blobs are hashed on all cores (blake3 splits the tree); small ones are not worth a thread.
    threads = blake3.blake3.AUTO if len(data) >= _ALL_CORES_FROM else 1
    return blake3.blake3(data, max_threads=threads).digest()


class BlobStore(Protocol):
    def get(self, digest: bytes) -> bytes | memoryview | None: ...

    def put(self, data: bytes | bytearray | memoryview) -> bytes: ...


@dataclass(frozen=True, slots=True)
class StoreStatistics:
    blobs: int
    bytes_used: int
    capacity_bytes: int
    evicted: int


class MemoryBlobStore:
    """Blobs in memory, least recently used evicted first once over ``capacity_bytes``."""

    def __init__(self, capacity_bytes: int = 512 * 1024 * 1024) -> None:
        if capacity_bytes < 1:
            raise ValueError("capacity_bytes must be >= 1")
        self.capacity_bytes = capacity_bytes
        self._blobs: OrderedDict[bytes, bytes] = OrderedDict()
        self._used = 0
        self._evicted = 0

    def get(self, digest: bytes) -> bytes | None:
        data = self._blobs.get(digest)
        if data is not None:
            self._blobs.move_to_end(digest)
        return data

    def put(self, data: bytes | bytearray | memoryview) -> bytes:
        """Store ``data`` (a copy, unless it is ``bytes``); returns its blake3 digest.

        Raises:
            InputTooLarge: ``data`` alone is over the store's capacity.
        """
        self._check_size(len(data))  # before hashing it
        digest = digest_of(data)
        self.put_verified(digest, data if digest in self._blobs else bytes(data))
        return digest

    def put_verified(self, digest: bytes, data: Any) -> None:
        """Keep ``data`` (any bytes-like; not copied, so nobody may write to it any more) under
        ``digest``, which the caller has checked is its blake3.

        Raises:
            InputTooLarge: ``data`` alone is over the store's capacity.
        """
        n = len(data)
        self._check_size(n)
        if digest in self._blobs:
            self._blobs.move_to_end(digest)
            return
        self._blobs[digest] = data
        self._used += n
        while self._used > self.capacity_bytes:
            _, old = self._blobs.popitem(last=False)
            self._used -= len(old)
            self._evicted += 1

    def _check_size(self, n: int) -> None:
        if n > self.capacity_bytes:
            raise InputTooLarge(f"blob of {n} bytes is over the store's {self.capacity_bytes} bytes",
                                limit=self.capacity_bytes, observed=n)

    def discard(self, digest: bytes) -> None:
        """Forget ``digest`` if held."""
        data = self._blobs.pop(digest, None)
        if data is not None:
            self._used -= len(data)

    def statistics(self) -> StoreStatistics:
        return StoreStatistics(len(self._blobs), self._used, self.capacity_bytes, self._evicted)


# -------------------------------------------------------------------------------------- server


class BlobServer:
    """Serve ``store``'s blobs over ``/inos/blob/1.0.0``.  Start with ``nursery.start(server.run)``."""

    def __init__(
        self,
        host: Any,
        store: BlobStore,
        *,
        max_streams: int = 256,
        max_streams_per_peer: int = 4,
        admit: Admit | None = None,
    ) -> None:
        self._host = host
        self._store = store
        self._inbound = InboundStreams(
            "blob", max_streams=max_streams, max_per_peer=max_streams_per_peer, admit=admit
        )
        self.streams_reset = 0

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        await self._inbound.run(self._host, PROTOCOL, self._serve, task_status=task_status)

    async def _serve(self, stream: Any, peer_id: str) -> None:
        async def on_frame(frame: bytes) -> None:
            answer = self._answer(decode_blob_request(frame, max_bytes=_MAX_REQUEST_FRAME))
            if isinstance(answer, BlobChunk):
                # The chunk goes out as it lies in the store: no copy on our side.
                head, chunk, pad = encode_blob_chunk_parts(answer, max_bytes=_MAX_RESPONSE_FRAME)
                size = len(head) + len(chunk) + len(pad)
                await stream.write(encode_header(size, limit=_MAX_RESPONSE_FRAME) + head)
                await stream.write(chunk)
                if pad:
                    await stream.write(pad)
            else:
                payload = encode_blob_response(answer, max_bytes=_MAX_RESPONSE_FRAME)
                await stream.write(encode_frame(payload, limit=_MAX_RESPONSE_FRAME))

        if await serve_frames(stream, peer_id, name="blob", limit=_MAX_REQUEST_FRAME, on_frame=on_frame):
            self.streams_reset += 1

    def _answer(self, req: BlobRequest) -> BlobResponse:
        if len(req.digest) != DIGEST_BYTES:
            return BlobFailed(req.request_id, f"a digest is {DIGEST_BYTES} bytes, got {len(req.digest)}")
        if not 0 < req.length <= CHUNK:
            return BlobFailed(req.request_id, f"chunk length must be 1..{CHUNK}, got {req.length}")
        try:
            data = self._store.get(req.digest)
        except Exception as exc:  # noqa: BLE001 - a store failure is answered, not fatal
            log.warning("blob: store failed for %s: %r", req.digest.hex(), exc)
            return BlobFailed(req.request_id, f"store error: {type(exc).__name__}")
        if data is None:
            return BlobNotFound(req.request_id)
        total = len(data)
        if req.offset > total:
            return BlobFailed(req.request_id, f"offset {req.offset} is past the end ({total} bytes)")
        view = memoryview(data)[req.offset : req.offset + req.length]
        return BlobChunk(req.request_id, view, total)


# -------------------------------------------------------------------------------------- client


class BlobClient:
    """Fetch blobs from peers.  Start with ``nursery.start(client.run)``.

    Args:
        pipeline: chunk requests in flight per fetch.
        chunk_size: bytes per chunk request (<= 1 MiB).
    """

    def __init__(
        self,
        host: Any,
        *,
        pipeline: int = 4,
        chunk_size: int = CHUNK,
        max_in_flight_per_peer: int = 64,
    ) -> None:
        if not 0 < chunk_size <= CHUNK or pipeline < 1:
            raise ValueError(f"chunk_size must be 1..{CHUNK} and pipeline >= 1")
        self._pipeline = pipeline
        self._chunk = chunk_size
        self._core: CorrelatedClient[BlobResponse] = CorrelatedClient(
            name="blob",
            open_stream=partial(open_protocol_stream, host, PROTOCOL),
            decode=partial(decode_blob_response, max_bytes=_MAX_RESPONSE_FRAME),
            response_id=_response_id,
            max_frame=_MAX_RESPONSE_FRAME,
            max_in_flight=max_in_flight_per_peer,
        )

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        await self._core.run(task_status=task_status)

    async def _chunk_at(self, peer_id: str, digest: bytes, offset: int, length: int) -> BlobChunk:
        rid = self._core.next_request_id()
        resp = await self._core.call(
            peer_id, rid, encode_blob_request(BlobRequest(rid, digest, offset, length))
        )
        if isinstance(resp, BlobNotFound):
            raise PeerError(f"peer {peer_id} does not have blob {digest.hex()}")
        if isinstance(resp, BlobFailed):
            raise PeerError(f"peer {peer_id} failed to serve blob {digest.hex()}: {resp.error}")
        return resp

    async def fetch(
        self, peer_id: str, digest: bytes, *, max_bytes: int, deadline: float = math.inf
    ) -> bytearray:
        """The blob named ``digest`` from ``peer_id``, verified, in a fresh ``bytearray``.

        Why a bytearray and not bytes: the chunks are copied once, straight into the one buffer
        that is returned.  Turning it into ``bytes`` would cost a second allocation and copy of
        the whole blob (for 64 MiB that is ~15% of the transfer time here, mostly page faults).
        Use ``fetch_into`` to land the bytes in memory of your own (an arena block), or
        ``fetch_input`` for a capsule's input.

        Raises: see ``fetch_into``.
        """
        return await self.fetch_into(
            peer_id, digest, max_bytes=max_bytes, allocate=bytearray, deadline=deadline
        )

    async def fetch_input(
        self, peer_id: str, digest: bytes, *, max_bytes: int, deadline: float = math.inf
    ) -> bytearray | Any:
        """``fetch`` for a capsule's input: a large blob lands in an anonymous mapping whose pages
        the kernel makes on a worker thread (``MAP_POPULATE``) while the first chunks arrive,
        instead of 16k page faults on the event loop as the chunks are copied in.  A bytes-like,
        writable buffer of exactly the blob's length.

        Raises: see ``fetch_into``.
        """
        return await self.fetch_into(peer_id, digest, max_bytes=max_bytes, allocate=populated_buffer,
                                     deadline=deadline, allocate_in_thread=True)

    async def fetch_into(
        self,
        peer_id: str,
        digest: bytes,
        *,
        max_bytes: int,
        allocate: Callable[[int], W],
        deadline: float = math.inf,
        allocate_in_thread: bool = False,
    ) -> W:
        """Fetch the blob named ``digest`` into ``allocate(total_length)``, verified.

        The whole is hashed once it is in (see ``_Fill``).

        Args:
            max_bytes: refuse blobs larger than this (checked before ``allocate`` is called).
            allocate: returns a writable buffer of exactly the given size.
            deadline: trio time; chunk requests still pending then fail with ``PeerError``.
            allocate_in_thread: call ``allocate`` on a worker thread for a large blob (it must be
                thread-safe), while the chunk requests are already in flight.

        Raises:
            PeerError: the peer does not have it (notFound), answered an error, the stream
                broke, or the deadline passed.  Try another peer.
            RemoteProtocolError: the blob is over ``max_bytes``, a chunk is inconsistent, or the
                whole does not hash to ``digest`` (the buffer then holds unverified bytes).

        Cancellation: pending chunk requests are abandoned (their late answers are dropped);
            the stream stays usable.
        """
        if len(digest) != DIGEST_BYTES:
            raise ValueError(f"a digest is {DIGEST_BYTES} bytes")
        with trio.move_on_at(deadline) as scope:
            first = await self._chunk_at(peer_id, digest, 0, self._chunk)
            total = first.total_length
            if total > max_bytes:
                raise RemoteProtocolError(
                    f"blob {digest.hex()} is {total} bytes, over the {max_bytes}-byte limit",
                    limit=max_bytes,
                    observed=total,
                )
            big = total >= _BIG_BYTES
            fill = _Fill()
            offsets = iter(range(self._chunk, total, self._chunk))
            errors: list[Exception] = []

            async def prepare(cancel: trio.CancelScope) -> None:
                if big and allocate_in_thread:
                    out = await trio.to_thread.run_sync(allocate, total)
                else:
                    out = allocate(total)
                view = memoryview(out)
                if len(view) != total or view.readonly:
                    errors.append(ValueError(f"allocate({total}) must return a writable buffer of that size"))
                    cancel.cancel()
                    return
                fill.ready(out, view)
                self._place(view, first, 0, total, min(self._chunk, total))

            async def worker(cancel: trio.CancelScope) -> None:
                try:
                    for offset in offsets:  # shared iterator: each offset is taken once
                        n = min(self._chunk, total - offset)
                        chunk = await self._chunk_at(peer_id, digest, offset, n)
                        await fill.buffer_ready.wait()
                        self._place(fill.view, chunk, offset, total, n)
                except (PeerError, RemoteProtocolError) as exc:
                    errors.append(exc)
                    cancel.cancel()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(prepare, nursery.cancel_scope)
                async with trio.open_nursery() as fetchers:
                    for _ in range(self._pipeline):
                        fetchers.start_soon(worker, fetchers.cancel_scope)
                if errors:
                    nursery.cancel_scope.cancel()
            if errors:
                raise errors[0]
        if scope.cancelled_caught:
            raise PeerError(f"blob {digest.hex()} from {peer_id} not complete by the deadline")
        if await fill.digest() != digest:
            raise RemoteProtocolError(f"blob from {peer_id} does not hash to {digest.hex()}")
        return fill.out  # type: ignore[no-any-return]

    @staticmethod
    def _place(view: memoryview, chunk: BlobChunk, offset: int, total: int, expected: int) -> None:
        n = len(chunk.chunk)
        if chunk.total_length != total or n != expected:
            raise RemoteProtocolError(
                f"inconsistent chunk at {offset}: {n} bytes of a {chunk.total_length}-byte blob "
                f"(expected {expected} bytes of {total})"
            )
        view[offset : offset + n] = chunk.chunk


def _response_id(response: BlobResponse) -> int:
    return response.request_id


_BIG_BYTES = POPULATE_FROM  # blobs this big get a prepared buffer (made on a worker thread)


class _Fill:
    """One transfer's buffer as it fills; its blake3 is taken once it is whole.

    Why not hash the chunks as they arrive, on a worker thread, to have the digest the moment the
    last byte lands?  That is what this did until measured: hashing runs at about 9 GB/s (64 MiB in
    about 7 ms on one core here), while the transfer's two event loops (sender and receiver) keep
    the cores busy for 200 ms; the hashing thread then competes with them for a core and for the
    GIL, and a 64 MiB push took about 20 ms longer with it than with one hash of the whole at the
    end, on all cores (``digest_of``), on a worker thread (blake3 releases the GIL).  On a machine
    with idle cores the overlap would save a few milliseconds at most."""

    def __init__(self) -> None:
        self.out: Any = None
        self.view: memoryview = memoryview(b"")
        self.buffer_ready = trio.Event()

    def ready(self, out: Any, view: memoryview) -> None:
        self.out, self.view = out, view
        self.buffer_ready.set()

    async def digest(self) -> bytes:
        """The blake3 of the whole buffer (on a worker thread for a large one)."""
        if len(self.view) >= _ALL_CORES_FROM:
            return await trio.to_thread.run_sync(digest_of, self.view)
        return digest_of(self.view)


# ------------------------------------------------------------------------------------- push
#
# /inos/blob-push/1.0.0: a requester that is about to delegate a capsule with a large input
# writes the input to the worker first, on a stream of its own, the way a raw bulk transfer
# would, instead of the worker pulling it in chunk requests afterwards:
#
#   requester: BlobOffer{digest, length}  ─►  worker: have | refused | send
#   (send)  requester: exactly `length` raw bytes  ─►  worker: hashes them once all are in (a
#           worker thread, all cores), then stored | corrupt
#
# The worker bounds everything: the offer frame (4 KiB), the length (its input limit and store
# capacity), pushes at once (per peer and in all), and the time a push may take.  Anything it
# does not take is simply fetched over /inos/blob as before: a push is an optimisation.

_PUSH_FRAME = 4096
_PUSH_WRITE = 1024 * 1024
_PUSH_MIN_RATE = 4 * 1024 * 1024  # bytes/s below which a push is given up (plus a fixed allowance)


class BlobPushServer:
    """Take blobs pushed over ``/inos/blob-push/1.0.0`` into ``store``.

    Args:
        max_bytes: the largest blob taken (the node passes its capsule input limit).
        max_streams / max_streams_per_peer: pushes at once: at worst ``max_streams * max_bytes``
            bytes are held while they arrive.
        admit: as ``BlobServer``.
    """

    def __init__(self, host: Any, store: MemoryBlobStore, *, max_bytes: int, max_streams: int = 4,
                 max_streams_per_peer: int = 1, admit: Admit | None = None) -> None:
        self._host = host
        self._store = store
        self._max_bytes = max_bytes
        self._inbound = InboundStreams("blob-push", max_streams=max_streams, max_per_peer=max_streams_per_peer,
                                       admit=admit)
        self.stored = 0
        self.refused = 0
        self.corrupt = 0
        # digest -> [pushes whose job has not come yet, jobs running on it], for pushed blobs
        self._pushed: OrderedDict[bytes, list[int]] = OrderedDict()
        # The buffer of the last push used, kept for the next one (its pages already exist: a
        # fresh 64 MiB buffer costs the kernel ~20 ms of zeroing, a tenth of the transfer), and
        # let go after ``spare_idle_s`` without a push (an idle node keeps no such memory).
        self._spare: Any = None
        self._spare_since = 0.0
        self.spare_idle_s = 30.0

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._let_spare_go)
            await nursery.start(partial(self._inbound.run, self._host, PUSH_PROTOCOL, self._serve))
            task_status.started()

    async def _let_spare_go(self) -> None:
        while True:
            await trio.sleep(self.spare_idle_s / 2)
            self.drop_idle_spare(trio.current_time())

    def drop_idle_spare(self, now: float) -> bool:
        """Let the spare buffer go if no push took it for ``spare_idle_s`` (True if it went)."""
        if self._spare is not None and now - self._spare_since > self.spare_idle_s:
            self._spare = None
            return True
        return False

    def claim(self, digest: bytes) -> None:
        """A job is about to run on ``digest`` (call before reading it; pair with ``used``).  A
        pushed blob's buffer is not reused while any job holds it."""
        uses = self._pushed.get(digest)
        if uses is not None:
            uses[0] = max(0, uses[0] - 1)  # the push it came with (if any) is spoken for
            uses[1] += 1

    def used(self, digest: bytes) -> None:
        """A job that claimed ``digest`` has run.  When no job holds a pushed blob and no push of
        it waits for its job, it leaves the store (it was pushed for those jobs; what the store
        keeps for longer is what this node made itself) and its buffer is kept for the next push.
        A job abandoned on its thread after its deadline may then read the next push's bytes: its
        result is dropped anyway.  A chunk of it being served to a peer may be cut the same way:
        the peer checks the digest and fetches elsewhere."""
        uses = self._pushed.get(digest)
        if uses is None:
            return  # not a push of ours (or long forgotten)
        uses[1] = max(0, uses[1] - 1)
        if uses[0] or uses[1]:
            return
        del self._pushed[digest]
        held = self._store.get(digest)
        self._store.discard(digest)
        buffer = held.obj if isinstance(held, memoryview) else held  # a view's whole buffer
        if buffer is not None and not isinstance(buffer, bytes) and len(buffer) >= _BIG_BYTES \
                and (self._spare is None or len(buffer) >= len(self._spare)):
            self._spare, self._spare_since = buffer, trio.current_time()

    def _expect_job(self, digest: bytes) -> None:
        """A push of ``digest`` was stored or found held: its job is coming."""
        uses = self._pushed.get(digest)
        if uses is None:
            self._pushed[digest] = [1, 0]
            while len(self._pushed) > 1024:  # pushes whose jobs never came: the store evicts them
                self._pushed.popitem(last=False)
        else:
            uses[0] += 1

    async def _answer(self, stream: Any, kind: str, reason: str = "") -> None:
        await stream.write(encode_frame(encode_blob_offer_answer(BlobOfferAnswer(kind, reason)), limit=_PUSH_FRAME))

    async def _serve(self, stream: Any, peer_id: str) -> None:
        try:
            reader = FrameReader(stream, limit=_PUSH_FRAME)
            with trio.fail_after(10):
                frame = await reader.read_frame()
            if frame is None:
                return
            offer = decode_blob_offer(frame, max_bytes=_PUSH_FRAME)
            if self._store.get(offer.digest) is not None:
                if offer.digest in self._pushed:
                    self._expect_job(offer.digest)  # pushed before, for another job: keep it for this one too
                await self._answer(stream, "have")
                return
            limit = min(self._max_bytes, self._store.capacity_bytes)
            if offer.length > limit:
                self.refused += 1
                await self._answer(stream, "refused", f"{offer.length} bytes is over this node's {limit}-byte limit")
                return
            with trio.fail_after(10 + offer.length / _PUSH_MIN_RATE):
                out, digest = await self._receive(stream, reader, offer)
            if digest != offer.digest:
                self.corrupt += 1
                log.warning("blob-push: %d bytes from peer %s do not hash to %s", offer.length, peer_id,
                            offer.digest.hex()[:16])
                await self._answer(stream, "corrupt", "the bytes do not hash to the offered digest")
                return
            view = memoryview(out)[: offer.length] if len(out) != offer.length else out
            self._store.put_verified(digest, view)
            self._expect_job(digest)
            self.stored += 1
            await self._answer(stream, "stored")
        except trio.TooSlowError:
            log.info("blob-push: peer %s too slow, push dropped", peer_id)
        except RemoteProtocolError as exc:
            log.warning("blob-push: resetting stream from peer %s: %s", peer_id, exc)
        except Exception as exc:  # noqa: BLE001 - StreamReset/EOF & co: the push is gone, the node is not
            log.debug("blob-push: stream from peer %s ended: %r", peer_id, exc)
        finally:
            await reset_quietly(stream)

    async def _receive(self, stream: Any, reader: FrameReader, offer: BlobOffer) -> tuple[Any, bytes]:
        """``send``, then the offered bytes into a fresh buffer (made on a worker thread while the
        first bytes queue up), hashed once whole (see ``_Fill``)."""
        if reader.buffered:
            raise RemoteProtocolError("blob-push: bytes before the answer to the offer")
        total = offer.length
        fill = _Fill()
        await self._answer(stream, "send")
        early: list[bytes] = []  # what arrives before the buffer exists (its pages are made meanwhile)

        async def prepare() -> None:
            spare = self._spare
            if spare is not None and total >= _BIG_BYTES and len(spare) >= total:
                self._spare = None
                out = spare
            else:
                out = await trio.to_thread.run_sync(populated_buffer, total)
            fill.ready(out, memoryview(out)[:total])

        got = 0
        cut: list[RemoteProtocolError] = []  # raised after the nursery (not as an exception group)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(prepare)
            while got < total:
                data = await stream.read(min(total - got, _PUSH_WRITE))
                if not data:
                    cut.append(RemoteProtocolError(f"blob-push: stream ended after {got} of {total} bytes"))
                    nursery.cancel_scope.cancel()
                    break
                if not fill.buffer_ready.is_set():
                    early.append(data)
                    got += len(data)
                    continue
                if early:
                    self._place_early(fill, early)
                fill.view[got:got + len(data)] = data
                got += len(data)
            else:
                await fill.buffer_ready.wait()
                if early:
                    self._place_early(fill, early)
        if cut:
            raise cut[0]
        return fill.out, await fill.digest()

    @staticmethod
    def _place_early(fill: _Fill, early: list[bytes]) -> None:
        """Copy the bytes that came before the buffer existed to its start."""
        at = 0
        for piece in early:
            fill.view[at:at + len(piece)] = piece
            at += len(piece)
        early.clear()


class BlobPusher:
    """The requester's side of ``/inos/blob-push/1.0.0``."""

    def __init__(self, host: Any) -> None:
        self._host = host

    async def push(self, peer_id: str, digest: bytes, data: bytes | bytearray | memoryview) -> str:
        """Hand ``data`` (whose blake3 is ``digest``) to ``peer_id``; "stored" or "have".

        Raises:
            PeerError: the peer cannot be reached, does not take pushes, refused this one, or
                the stream broke.  Nothing is lost: the peer can still fetch the blob.
            RemoteProtocolError: the peer answered garbage, or says the bytes did not match.
        """
        stream = await open_protocol_stream(self._host, PUSH_PROTOCOL, peer_id)
        try:
            reader = FrameReader(stream, limit=_PUSH_FRAME)
            try:
                await stream.write(encode_frame(encode_blob_offer(BlobOffer(digest, len(data))), limit=_PUSH_FRAME))
                answer = await self._answer(reader, peer_id)
                if answer.kind == "have":
                    return "have"
                if answer.kind != "send":
                    raise PeerError(f"peer {peer_id} did not take the push: {answer.kind} {answer.reason}".strip())
                view = memoryview(data)
                for offset in range(0, len(view), _PUSH_WRITE):
                    await stream.write(bytes(view[offset:offset + _PUSH_WRITE]))
                answer = await self._answer(reader, peer_id)
            except (RemoteProtocolError, PeerError):
                raise
            except Exception as exc:  # noqa: BLE001 - py-libp2p stream errors: the push failed
                raise PeerError(f"blob push to {peer_id} broke: {type(exc).__name__}: {exc}") from exc
            if answer.kind == "corrupt":
                raise RemoteProtocolError(f"peer {peer_id}: the pushed bytes do not hash to {digest.hex()[:16]}")
            if answer.kind != "stored":
                raise RemoteProtocolError(f"peer {peer_id} answered {answer.kind!r} to a finished push")
            return "stored"
        finally:
            await reset_quietly(stream)

    @staticmethod
    async def _answer(reader: FrameReader, peer_id: str) -> BlobOfferAnswer:
        frame = await reader.read_frame()
        if frame is None:
            raise PeerError(f"peer {peer_id} closed the push stream")
        return decode_blob_offer_answer(frame, max_bytes=_PUSH_FRAME)
