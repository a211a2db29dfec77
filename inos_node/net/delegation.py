"""``/inos/delegate/1.0.0``: run capsules on a peer over one long-lived, multiplexed stream.

Theory of operation
-------------------
A requester keeps ONE stream per worker peer and sends ``DelegateRequest`` frames on it
(``run`` or ``cancel``, each with a requestId it chose); the worker answers each run with one
``DelegateResponse`` carrying the same requestId, in whatever order the jobs finish.  Framing is
``net.framing`` (u32 LE length + one capnp message); the codecs are ``wire.delegation``.

Worker side (``DelegationServer``), per stream::

    reader task ── frame ──► decode ──┬─ run:    limiter slot? ─ no ──► answer capacityExceeded now
     (never blocks on a job:          │                          └ yes ─► job task (handler, deadline)
      notes P9)                       └─ cancel: cancel that job task ───► it answers `cancelled`
    job task ── response ──► [FrameWriter] ──► stream   (frames never interleave; answers
                                                         ready together go out in one write)

Rules:
  1. The reader never waits for a job: it reads eagerly and starts one task per request, so a
     requester's writes never stall (Yamux resets a writer stalled > 5 s, P9).
  1a. The fast path: a ``fast`` handler may answer a request at once, without awaiting (a small
     capsule that runs inline: microseconds).  The reader then writes that answer itself; a
     request it does not answer (None) takes the task path below.  This saves a task and a
     scheduler round per small job; the reader still never waits for a job.  Answers made from
     the frames one read brought in go out together, in one write, before the reader waits for
     more (at most 16 answers or 256 KiB in one write): one Yamux frame, one Noise message and
     one send for many small answers.  A request read alone is answered alone, at once.
     (``capacityExceeded`` answers go out the same way.)
  2. Work is bounded by ONE ``trio.CapacityLimiter`` shared by all streams (``max_concurrent``);
     when it is full the request is answered at once with ``capacityExceeded`` (retryable),
     never queued.  A job holds its slot until its answer is written (a slow reader slows only
     itself, and answers waiting to be written are bounded too).
  3. Each job runs under the request's absolute deadline (``timeout`` when it passes); a cancel
     frame cancels it (``cancelled``).  A handler exception fails that request (``failed`` +
     message), never the stream or the node (P7).
  4. A malformed or over-limit frame, or a duplicate requestId, is the peer's fault: the stream is
     reset (one log line with the peer id); other streams and the node are untouched.
  5. End of stream means the requester is gone (py-libp2p shows a remote reset as EOF, P10; our
     client never half-closes a live stream): its jobs are cancelled, nobody would read answers.
  6. The handler sees the *authenticated* peer id of the connection (Noise), and the run's
     ``requester`` is overwritten with it, whatever the frame said.

Requester side (``DelegationClient``) is ``net.framing.CorrelatedClient``: a reader task per
stream dispatches answers by requestId; a cancelled caller sends a cancel frame; a broken stream
fails every request in flight on it with ``PeerError`` (retry elsewhere); a stream is reopened
lazily by the next request.

Receipts: ``sign_receipt`` / ``verify_receipt`` sign and check a ``ReceiptBody`` with the worker's
Ed25519 key; the key must derive the worker's peer id.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import trio
from libp2p.custom_types import TProtocol
from libp2p.peer.id import ID

from inos_node import receipts as _receipts
from inos_node.errors import LocalProtocolError, PeerError, RemoteProtocolError
from inos_node.net.framing import (
    Admit,
    CorrelatedClient,
    FrameReader,
    FrameWriter,
    InboundStreams,
    encode_frame,
    reset_quietly,
)
from inos_node.types import JobRequest, JobResult, Status
from inos_node.wire.delegation import (
    DEFAULT_MAX_FRAME,
    DelegateCancel,
    DelegateResponse,
    DelegateRun,
    decode_delegate_request,
    decode_delegate_response,
    encode_delegate_request,
    encode_delegate_response,
)

__all__ = [
    "PROTOCOL",
    "DelegationClient",
    "DelegationServer",
    "Handler",
    "ServerStatistics",
    "open_protocol_stream",
    "sign_receipt",
    "verify_receipt",
]

PROTOCOL = TProtocol("/inos/delegate/1.0.0")
log = logging.getLogger(__name__)

Handler = Callable[[DelegateRun, str], Awaitable[DelegateResponse]]
FastHandler = Callable[[DelegateRun, str], "DelegateResponse | None"]
Answered = Callable[[DelegateRun, str], None]


async def open_protocol_stream(host: Any, protocol: TProtocol, peer_id: str) -> Any:
    """A new stream to ``peer_id`` speaking ``protocol``.

    Raises:
        PeerError: not connected and not dialable, or the peer does not speak ``protocol``.
    """
    try:
        return await host.new_stream(ID.from_base58(peer_id), [protocol])
    except Exception as exc:  # noqa: BLE001 - py-libp2p raises many types here; all mean "cannot reach"
        raise PeerError(f"cannot open {protocol} to {peer_id}: {type(exc).__name__}: {exc}") from exc


def _unix_ms_to_trio(deadline_unix_ms: int) -> float:
    return trio.current_time() + (deadline_unix_ms / 1000.0 - time.time())


def _answer(run: DelegateRun, status: Status, error: str, *, retryable: bool = False) -> DelegateResponse:
    return DelegateResponse(
        request_id=run.request_id,
        result=JobResult(job_id=run.job.job_id, status=status, error=error, retryable=retryable),
    )


# ------------------------------------------------------------------------------------ receipts


# Receipts are signed and opened by inos_node.receipts (one implementation for the node and the
# protocol); re-exported here for the protocol's users.
sign_receipt = _receipts.sign_body
verify_receipt = _receipts.open_receipt


# -------------------------------------------------------------------------------------- server


@dataclass(frozen=True, slots=True)
class ServerStatistics:
    streams: int
    running: int  # jobs holding a limiter slot
    max_concurrent: int
    accepted: int
    rejected_capacity: int
    streams_reset: int  # streams reset for a protocol violation
    streams_refused: int  # not admitted: stopped, over a stream limit, or refused by ``admit``


class _ServerStream:
    __slots__ = ("active", "peer_id", "scope", "stream", "writer")

    def __init__(self, stream: Any, peer_id: str, scope: trio.CancelScope) -> None:
        self.stream = stream
        self.peer_id = peer_id
        self.scope = scope  # cancels everything on this stream
        self.writer = FrameWriter(stream)  # answers never interleave; concurrent ones coalesce
        self.active: dict[int, _Job] = {}


class _Answers:
    """Answers made by the reader (rule 1a) and not written yet: frames, and the runs they answer
    (for the ``answered`` hook).  Bounded: ``full()`` says when to write them out anyway."""

    __slots__ = ("frames", "runs", "size")
    MAX_FRAMES = 16
    MAX_BYTES = 256 * 1024

    def __init__(self) -> None:
        self.frames: list[bytes] = []
        self.runs: list[DelegateRun] = []
        self.size = 0

    def add(self, frame: bytes, run: DelegateRun | None = None) -> None:
        self.frames.append(frame)
        self.size += len(frame)
        if run is not None:
            self.runs.append(run)

    def full(self) -> bool:
        return len(self.frames) >= self.MAX_FRAMES or self.size >= self.MAX_BYTES


class _Job:
    __slots__ = ("cancelled_by_peer", "scope")

    def __init__(self, scope: trio.CancelScope) -> None:
        self.scope = scope
        self.cancelled_by_peer = False


class DelegationServer:
    """Serve ``/inos/delegate/1.0.0`` with ``handler`` (see the module docstring).

    Args:
        handler: ``async (run, peer_id) -> DelegateResponse``; runs the capsule and signs the
            receipt.  May raise: the request then fails with the message.
        max_concurrent: jobs at once, all streams together.
        max_frame: the largest request frame accepted (and answer frame sent).
        max_streams / max_streams_per_peer: delegate streams served at once (each holds up to
            one partial frame: at worst ``max_streams * max_frame`` bytes buffered).
        admit: ``async (peer_id) -> bool``; streams of peers it refuses are reset (the node passes
            ``HelloGate.admit``).
        fast: ``(run, peer_id) -> DelegateResponse | None``, synchronous: answers a request at
            once, or None to run ``handler`` in a task (rule 1a).  May raise like ``handler``.
        answered: ``(run, peer_id) -> None``, synchronous: called once ``fast``'s answer is
            written, or its write failed (work the handler put off until the requester has its
            answer).  An exception it raises is logged.
        default_timeout_s: the deadline of a run whose ``deadline_unix_ms`` is 0.
        max_timeout_s: no job runs longer than this, whatever its deadline says.
    """

    def __init__(
        self,
        host: Any,
        handler: Handler,
        *,
        max_concurrent: int = 64,
        max_frame: int = DEFAULT_MAX_FRAME,
        max_streams: int = 256,
        max_streams_per_peer: int = 4,
        admit: Admit | None = None,
        default_timeout_s: float = 300.0,
        max_timeout_s: float = 3600.0,
        fast: FastHandler | None = None,
        answered: Answered | None = None,
    ) -> None:
        if max_concurrent < 1:
            raise ValueError("max_concurrent must be >= 1")
        self._host = host
        self._handler = handler
        self._fast = fast
        self._answered = answered
        self._limiter = trio.CapacityLimiter(max_concurrent)
        self._max_frame = max_frame
        self._inbound = InboundStreams(
            "delegate", max_streams=max_streams, max_per_peer=max_streams_per_peer, admit=admit
        )
        self._default_timeout_s = default_timeout_s
        self._max_timeout_s = max_timeout_s
        self._accepted = 0
        self._rejected = 0
        self._resets = 0

    def statistics(self) -> ServerStatistics:
        return ServerStatistics(
            streams=len(self._inbound),
            running=int(self._limiter.borrowed_tokens),
            max_concurrent=int(self._limiter.total_tokens),
            accepted=self._accepted,
            rejected_capacity=self._rejected,
            streams_reset=self._resets,
            streams_refused=self._inbound.refused,
        )

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Register the protocol and serve until cancelled; then every stream is torn down."""
        await self._inbound.run(self._host, PROTOCOL, self._serve, task_status=task_status)

    async def _serve(self, stream: Any, peer_id: str) -> None:
        reader = FrameReader(stream, limit=self._max_frame)
        async with trio.open_nursery() as nursery:
            conn = _ServerStream(stream, peer_id, nursery.cancel_scope)
            batch = _Answers()  # rule 1a: fast answers not written yet
            try:
                while True:
                    frame = reader.next_buffered()
                    if frame is None:  # every request read so far is answered or running: flush
                        await self._flush(conn, batch)
                        frame = await reader.read_frame()
                        if frame is None:
                            break  # rule 5: the requester is gone
                    req = decode_delegate_request(frame, max_bytes=self._max_frame)
                    if isinstance(req, DelegateCancel):
                        job = conn.active.get(req.request_id)
                        if job is not None:
                            job.cancelled_by_peer = True
                            job.scope.cancel()
                        continue
                    if req.request_id in conn.active:
                        raise RemoteProtocolError(
                            f"requestId {req.request_id} is already running on this stream"
                        )
                    # rule 6 (an honest requester names itself already: no copy then)
                    run = req if req.requester == peer_id else dataclasses.replace(req, requester=peer_id)
                    if self._fast is not None and (response := self._answer_now(run, peer_id)) is not None:
                        self._accepted += 1
                        batch.add(self._encode(response), run)
                        if batch.full():
                            await self._flush(conn, batch)
                        continue
                    token = object()
                    try:
                        self._limiter.acquire_on_behalf_of_nowait(token)
                    except trio.WouldBlock:
                        self._rejected += 1
                        busy = f"worker busy: {int(self._limiter.total_tokens)} jobs running"
                        batch.add(self._encode(_answer(run, Status.CAPACITY_EXCEEDED, busy, retryable=True)))
                        continue
                    self._accepted += 1
                    job = _Job(trio.CancelScope(deadline=self._deadline_of(run)))
                    conn.active[run.request_id] = job
                    nursery.start_soon(self._run_job, conn, run, job, token)
            except RemoteProtocolError as exc:
                self._resets += 1
                log.warning("delegate: resetting stream from peer %s: %s", peer_id, exc)
                with trio.move_on_after(1):  # what was answered before the bad frame still goes out
                    await self._flush(conn, batch, quiet=True)
            except Exception as exc:  # noqa: BLE001 - StreamReset/StreamError & co: the stream is gone
                log.debug("delegate: stream from peer %s ended: %r", peer_id, exc)
            finally:
                self._answered_all(batch, peer_id)  # answers never written count as failed writes
            nursery.cancel_scope.cancel()
        await reset_quietly(stream)

    async def _flush(self, conn: _ServerStream, batch: _Answers, *, quiet: bool = False) -> None:
        """Write the batch's answers in one write, then call ``answered`` for their runs."""
        if not batch.frames:
            return
        frames = batch.frames
        batch.frames, batch.size = [], 0
        try:
            await conn.writer.write(frames[0] if len(frames) == 1 else b"".join(frames))
        except Exception as exc:  # noqa: BLE001 - the stream is gone: see _serve
            if not quiet:
                raise
            log.debug("delegate: cannot answer peer %s: %r", conn.peer_id, exc)
        finally:
            self._answered_all(batch, conn.peer_id)

    def _answered_all(self, batch: _Answers, peer_id: str) -> None:
        runs, batch.runs = batch.runs, []
        if self._answered is not None:
            for run in runs:
                self._after_answer(run, peer_id)

    def _answer_now(self, run: DelegateRun, peer_id: str) -> DelegateResponse | None:
        """Rule 1a: the fast handler's answer, or None (past its deadline, or not answerable now)."""
        assert self._fast is not None
        if run.deadline_unix_ms and run.deadline_unix_ms <= time.time() * 1000:
            return None  # the task path answers `timeout`
        try:
            response = self._fast(run, peer_id)
        except Exception as exc:  # noqa: BLE001 - rule 3: a handler bug fails its request only
            log.warning("delegate: handler failed request %d (job %s) from peer %s: %r",
                        run.request_id, run.job.job_id, peer_id, exc)
            return _answer(run, Status.FAILED, f"{type(exc).__name__}: {exc}")
        if response is not None and response.request_id != run.request_id:
            response = dataclasses.replace(response, request_id=run.request_id)
        return response

    def _after_answer(self, run: DelegateRun, peer_id: str) -> None:
        assert self._answered is not None
        try:
            self._answered(run, peer_id)
        except Exception as exc:  # noqa: BLE001 - rule 3: a handler bug fails its request only
            log.warning("delegate: after answering request %d (job %s) from peer %s: %r",
                        run.request_id, run.job.job_id, peer_id, exc)

    def _deadline_of(self, run: DelegateRun) -> float:
        now = trio.current_time()
        cap = now + self._max_timeout_s
        if run.deadline_unix_ms == 0:
            return min(cap, now + self._default_timeout_s)
        return min(cap, _unix_ms_to_trio(run.deadline_unix_ms))

    async def _run_job(self, conn: _ServerStream, run: DelegateRun, job: _Job, token: object) -> None:
        try:
            response: DelegateResponse | None = None
            with job.scope:
                try:
                    response = await self._handler(run, conn.peer_id)
                except Exception as exc:  # noqa: BLE001 - rule 3: a handler bug fails its request only
                    log.warning(
                        "delegate: handler failed request %d (job %s) from peer %s: %r",
                        run.request_id,
                        run.job.job_id,
                        conn.peer_id,
                        exc,
                    )
                    response = _answer(run, Status.FAILED, f"{type(exc).__name__}: {exc}")
            conn.active.pop(run.request_id, None)
            if response is None:  # the scope was cancelled: by the peer, or by the deadline
                if job.cancelled_by_peer:
                    response = _answer(run, Status.CANCELLED, "cancelled by the requester")
                else:
                    response = _answer(run, Status.TIMEOUT, "deadline passed", retryable=True)
            elif response.request_id != run.request_id:
                response = dataclasses.replace(response, request_id=run.request_id)
            try:
                await self._write(conn, response)
            except Exception as exc:  # noqa: BLE001 - StreamReset/StreamClosed & co: the requester is gone
                log.debug("delegate: cannot answer peer %s: %r", conn.peer_id, exc)
                conn.scope.cancel()
        finally:
            conn.active.pop(run.request_id, None)
            self._limiter.release_on_behalf_of(token)

    async def _write(self, conn: _ServerStream, response: DelegateResponse) -> None:
        await conn.writer.write(self._encode(response))

    def _encode(self, response: DelegateResponse) -> bytes:
        """``response`` as a frame; one too big to send becomes a ``failed`` answer saying so."""
        try:
            payload = encode_delegate_response(response, max_bytes=self._max_frame)
        except LocalProtocolError as exc:
            log.warning("delegate: answer to request %d is unsendable: %s", response.request_id, exc)
            payload = encode_delegate_response(
                DelegateResponse(
                    request_id=response.request_id,
                    result=JobResult(
                        job_id=response.result.job_id,
                        status=Status.FAILED,
                        error=f"answer not sendable: {exc}",
                    ),
                )
            )
        return encode_frame(payload, limit=self._max_frame)


# -------------------------------------------------------------------------------------- client


class DelegationClient:
    """Send capsules to peers over one long-lived ``/inos/delegate`` stream per peer.

    Start it with ``await nursery.start(client.run)``; ``request`` may then be called from any
    task.

    Args:
        max_in_flight_per_peer: requests waiting for an answer from one peer; one more fails at
            once with ``LocalProtocolError`` (limit/observed set).
        answer_grace_s: how long after the run's deadline we still wait for the worker's
            ``timeout`` answer before giving up on the peer (``PeerError``).
    """

    def __init__(
        self,
        host: Any,
        *,
        max_in_flight_per_peer: int = 256,
        max_frame: int = DEFAULT_MAX_FRAME,
        answer_grace_s: float = 10.0,
        default_timeout_s: float = 300.0,
    ) -> None:
        self._local = str(host.get_id().to_base58())
        self._max_frame = max_frame
        self._grace = answer_grace_s
        self._default_timeout_s = default_timeout_s
        self._core: CorrelatedClient[DelegateResponse] = CorrelatedClient(
            name="delegate",
            open_stream=partial(open_protocol_stream, host, PROTOCOL),
            decode=partial(decode_delegate_response, max_bytes=max_frame),
            response_id=_response_id,
            max_frame=max_frame,
            max_in_flight=max_in_flight_per_peer,
        )

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        await self._core.run(task_status=task_status)

    def in_flight(self, peer_id: str) -> int:
        return self._core.in_flight(peer_id)

    async def request(
        self, peer_id: str, run: JobRequest, *, input_digest: bytes, deadline_unix_ms: int, escrow: bytes = b"",
        escrow_chain: tuple[bytes, ...] = (),
    ) -> DelegateResponse:
        """Run ``run`` on ``peer_id`` and return its answer (any status: check ``result.status``).

        Args:
            input_digest: blake3 (32 bytes) of the input, however it travels.
            deadline_unix_ms: absolute; the worker stops the job then and answers ``timeout``.
                0 = the worker's default.
            escrow: the encoded escrow_lock block that pays for the job (networks with a ledger).

        Raises:
            PeerError: no stream to the peer, the stream broke (reset, EOF, peer died, bad
                frame), or no answer by the deadline + ``answer_grace_s``.  Retry elsewhere.
            LocalProtocolError: too many requests in flight to this peer, or the request does
                not fit ``max_frame`` (send large inputs by digest).

        Cancellation: a cancel frame goes to the worker, which stops the job; its late answer
            is dropped.
        """
        rid = self._core.next_request_id()
        payload = encode_delegate_request(
            DelegateRun(rid, run, input_digest, self._local, deadline_unix_ms, escrow, escrow_chain),
            max_bytes=self._max_frame
        )
        local = self._local

        def cancel() -> bytes:
            return encode_delegate_request(DelegateCancel(rid, local))

        if deadline_unix_ms:
            give_up = _unix_ms_to_trio(deadline_unix_ms) + self._grace
        else:
            give_up = trio.current_time() + self._default_timeout_s + self._grace
        return await self._core.call(
            peer_id,
            rid,
            payload,
            cancel_payload=cancel,
            deadline=give_up if math.isfinite(give_up) else math.inf,
        )


def _response_id(response: DelegateResponse) -> int:
    return response.request_id
