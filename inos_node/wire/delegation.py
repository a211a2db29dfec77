"""Cap'n Proto codecs for ``/inos/delegate/1.0.0`` and ``/inos/blob/1.0.0`` (schemas/p2p/v1/delegation.capnp).

Rules this module lives by (the same as ``wire.codec``):
  1. capnp readers and builders never leave this module: decoding returns the frozen dataclasses
     below (and ``inos_node.types`` for the embedded JobRequest / JobResult).
  2. Every ``decode_*`` takes a byte limit, checked before capnp sees the bytes, and a traversal
     limit proportional to the size; any failure at all is a ``RemoteProtocolError``.
  3. Encoding over the limit is a ``LocalProtocolError``.
  4. A receipt is signed over the bytes of a ``ReceiptBody`` message built by
     ``encode_receipt_body`` (fields set in ordinal order into a fresh single-segment message, so
     the same body always gives the same bytes).  Verifiers check the signature over the bytes
     they *received* and only then decode them; nobody re-encodes to verify.

The two unions of the schema are unions of dataclasses here:
``DelegateRequest = DelegateRun | DelegateCancel`` and
``BlobResponse = BlobChunk | BlobNotFound | BlobFailed``.
"""

from __future__ import annotations

import functools
import logging
import struct
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from inos_node.errors import LocalProtocolError, RemoteProtocolError
from inos_node.types import JobRequest, JobResult, Metrics
from inos_node.wire import _fastread, _fastwrite, schemas
from inos_node.wire.codec import _check_size, decode_struct, finish, traversal_words, within_limit
from inos_node.wire.codec import fill_job_request as _fill_job_request
from inos_node.wire.codec import fill_job_result as _fill_job_result
from inos_node.wire.codec import fill_metrics as _fill_metrics
from inos_node.wire.codec import read_job_request as _read_job_request
from inos_node.wire.codec import read_job_result as _read_job_result
from inos_node.wire.codec import read_metrics as _read_metrics

__all__ = [
    "DEFAULT_MAX_FRAME",
    "DIGEST_BYTES",
    "MAX_BLOB_CHUNK",
    "BlobOffer",
    "BlobOfferAnswer",
    "decode_blob_offer",
    "decode_blob_offer_answer",
    "encode_blob_offer",
    "encode_blob_offer_answer",
    "BlobChunk",
    "BlobFailed",
    "BlobNotFound",
    "BlobRequest",
    "BlobResponse",
    "DelegateCancel",
    "DelegateRequest",
    "DelegateResponse",
    "DelegateRun",
    "Receipt",
    "ReceiptBody",
    "decode_blob_request",
    "decode_blob_response",
    "decode_delegate_request",
    "decode_delegate_response",
    "decode_receipt_body",
    "encode_blob_chunk_parts",
    "encode_blob_request",
    "encode_blob_response",
    "encode_delegate_request",
    "encode_delegate_response",
    "encode_receipt_body",
]

# Inline inputs up to a few MiB (notes P8/P9); larger ones travel by digest over /inos/blob.
DEFAULT_MAX_FRAME = 4 * 1024 * 1024
MAX_BLOB_CHUNK = 1024 * 1024
_U16 = struct.Struct("<H")
_U64 = struct.Struct("<Q")
_U32X2 = struct.Struct("<II")
DIGEST_BYTES = 32
_WORD = 8


def _schema() -> Any:
    return schemas.load("p2p/v1/delegation.capnp")


@functools.cache
def _fast_ok() -> bool:
    """Whether the hand-written reader's and writer's field positions (``_fastread._LAYOUT``) are
    those of the loaded schemas."""
    ok = _fastread.layout_matches_schema()
    if not ok:  # a schema changed without them: every message goes through pycapnp
        logging.getLogger(__name__).warning("wire: the fast delegation codec does not match the schemas; "
                                            "reading and writing through pycapnp only")
    return ok


def _fast(read: Any, data: bytes | memoryview, max_bytes: int, what: str) -> Any:
    """``read`` (a ``_fastread`` reader) under the limits ``decode_struct`` gives pycapnp, or None
    when it declines (or cannot be used): the caller then decodes through pycapnp."""
    if not _fast_ok():
        return None
    _check_size(data, max_bytes, what)
    return read(data if isinstance(data, bytes) else bytes(data), traversal_words(data))


# ---------------------------------------------------------------------------------- dataclasses


@dataclass(frozen=True, slots=True)
class DelegateRun:
    """Run ``job`` for ``requester`` before ``deadline_unix_ms`` (0: the worker's default)."""

    request_id: int
    job: JobRequest
    input_digest: bytes  # blake3 of the input bytes (32), however the input travels
    requester: str = ""
    deadline_unix_ms: int = 0
    escrow: bytes = b""  # the encoded escrow_lock block paying for this job (networks with a ledger)
    escrow_chain: tuple[bytes, ...] = ()  # the requester's encoded blocks just before the lock


@dataclass(frozen=True, slots=True)
class DelegateCancel:
    """Stop the request ``request_id`` sent earlier on this stream."""

    request_id: int
    requester: str = ""


DelegateRequest = DelegateRun | DelegateCancel


@dataclass(frozen=True, slots=True)
class Receipt:
    body: bytes  # the canonical bytes of a ReceiptBody message (what the signature covers)
    signature: bytes
    public_key: bytes
    # The decoded ``body``, set only once the signature is known good: made by this process
    # (``receipts.sign_body``) or verified here (``receipts.open_receipt``).  Not on the wire.
    checked: ReceiptBody | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class ReceiptBody:
    job_id: str
    requester: str
    worker: str
    capsule: str
    input_digest: bytes
    output_digest: bytes
    cost: int = 0
    metrics: Metrics = field(default_factory=Metrics)
    finished_unix_ms: int = 0


@dataclass(frozen=True, slots=True)
class DelegateResponse:
    request_id: int
    result: JobResult
    receipt: Receipt | None = None


@dataclass(frozen=True, slots=True)
class BlobRequest:
    request_id: int
    digest: bytes
    offset: int
    length: int


@dataclass(frozen=True, slots=True)
class BlobChunk:
    request_id: int
    chunk: bytes | memoryview
    total_length: int


@dataclass(frozen=True, slots=True)
class BlobNotFound:
    request_id: int


@dataclass(frozen=True, slots=True)
class BlobFailed:
    request_id: int
    error: str


BlobResponse = BlobChunk | BlobNotFound | BlobFailed


# ------------------------------------------------------------------------------------- helpers


def _u64(value: int, what: str) -> int:
    if not 0 <= value < 2**64:
        raise LocalProtocolError(f"{what} {value} does not fit an unsigned 64-bit field")
    return value


# ---------------------------------------------------------------------------- delegate request


def _encoded(write: Any, build: Any, message: Any, what: str, max_bytes: int) -> bytes:
    """``message`` encoded by ``write`` (a ``_fastwrite`` writer), or by ``build`` (the pycapnp
    path: ``(message, max_bytes) -> bytes``) when the writer declines or cannot be used; the
    same size limit either way."""
    if _fast_ok():
        try:
            return within_limit(write(message), what, max_bytes)
        except _fastwrite._Decline:
            pass
    out: bytes = build(message, max_bytes)
    return out


def encode_delegate_request(req: DelegateRequest, *, max_bytes: int = DEFAULT_MAX_FRAME) -> bytes:
    if isinstance(req, DelegateRun) and len(req.input_digest) != DIGEST_BYTES:
        raise LocalProtocolError(
            f"inputDigest must be a {DIGEST_BYTES}-byte blake3 digest, got {len(req.input_digest)} bytes",
            limit=DIGEST_BYTES,
            observed=len(req.input_digest),
        )
    return _encoded(_fastwrite.write_delegate_request, _encode_delegate_request, req, "delegate request",
                    max_bytes)


def _encode_delegate_request(req: DelegateRequest, max_bytes: int) -> bytes:
    """``encode_delegate_request`` through pycapnp."""
    m = _schema().DelegateRequest.new_message()
    m.requestId = _u64(req.request_id, "requestId")
    m.requester = req.requester
    if isinstance(req, DelegateRun):
        _fill_job_request(m.init("run"), req.job)
        m.deadlineUnixMs = _u64(req.deadline_unix_ms, "deadlineUnixMs")
        m.inputDigest = req.input_digest
        if req.escrow:
            m.escrow = req.escrow
        if req.escrow_chain:
            chain = m.init("escrowChain", len(req.escrow_chain))
            for i, raw in enumerate(req.escrow_chain):
                chain[i] = raw
    else:
        m.cancel = None
    return finish(m, "delegate request", max_bytes)


def _read_delegate_request(r: Any) -> DelegateRequest:
    if r.which() == "cancel":
        return DelegateCancel(request_id=r.requestId, requester=r.requester)
    digest = bytes(r.inputDigest)
    if len(digest) != DIGEST_BYTES:
        raise RemoteProtocolError(
            f"inputDigest must be {DIGEST_BYTES} bytes, got {len(digest)}",
            limit=DIGEST_BYTES,
            observed=len(digest),
        )
    return DelegateRun(
        request_id=r.requestId,
        job=_read_job_request(r.run),
        requester=r.requester,
        deadline_unix_ms=r.deadlineUnixMs,
        input_digest=digest,
        escrow=bytes(r.escrow),
        escrow_chain=tuple(bytes(x) for x in r.escrowChain),
    )


def decode_delegate_request(
    data: bytes | memoryview, *, max_bytes: int = DEFAULT_MAX_FRAME
) -> DelegateRequest:
    fast = _fast(_fastread.read_delegate_request, data, max_bytes, "delegate request")
    if fast is not None:
        return fast  # type: ignore[no-any-return]
    result: DelegateRequest = decode_struct(
        _schema().DelegateRequest, data, max_bytes, "delegate request", _read_delegate_request
    )
    return result


# --------------------------------------------------------------------------- delegate response


def encode_delegate_response(resp: DelegateResponse, *, max_bytes: int = DEFAULT_MAX_FRAME) -> bytes:
    return _encoded(_fastwrite.write_delegate_response, _encode_delegate_response, resp, "delegate response",
                    max_bytes)


def _encode_delegate_response(resp: DelegateResponse, max_bytes: int) -> bytes:
    """``encode_delegate_response`` through pycapnp."""
    m = _schema().DelegateResponse.new_message()
    m.requestId = _u64(resp.request_id, "requestId")
    _fill_job_result(m.init("result"), resp.result)
    if resp.receipt is not None:
        rc = m.init("receipt")
        rc.body = resp.receipt.body
        rc.signature = resp.receipt.signature
        rc.publicKey = resp.receipt.public_key
    return finish(m, "delegate response", max_bytes)


def _read_delegate_response(r: Any) -> DelegateResponse:
    receipt = None
    if r._has("receipt"):
        rc = r.receipt
        receipt = Receipt(body=bytes(rc.body), signature=bytes(rc.signature), public_key=bytes(rc.publicKey))
    return DelegateResponse(request_id=r.requestId, result=_read_job_result(r.result), receipt=receipt)


def decode_delegate_response(
    data: bytes | memoryview, *, max_bytes: int = DEFAULT_MAX_FRAME
) -> DelegateResponse:
    fast = _fast(_fastread.read_delegate_response, data, max_bytes, "delegate response")
    if fast is not None:
        return fast  # type: ignore[no-any-return]
    result: DelegateResponse = decode_struct(
        _schema().DelegateResponse, data, max_bytes, "delegate response", _read_delegate_response
    )
    return result


# ------------------------------------------------------------------------------ receipt body


def encode_receipt_body(body: ReceiptBody, *, max_bytes: int = 64 * 1024) -> bytes:
    """The canonical bytes a worker signs (rule 4)."""
    return _encoded(_fastwrite.write_receipt_body, _encode_receipt_body, body, "receipt body", max_bytes)


def _encode_receipt_body(body: ReceiptBody, max_bytes: int) -> bytes:
    """``encode_receipt_body`` through pycapnp."""
    m = _schema().ReceiptBody.new_message()
    m.jobId = body.job_id
    m.requester = body.requester
    m.worker = body.worker
    m.capsule = body.capsule
    m.inputDigest = body.input_digest
    m.outputDigest = body.output_digest
    m.cost = _u64(body.cost, "cost")
    _fill_metrics(m.init("metrics"), body.metrics)
    m.finishedUnixMs = _u64(body.finished_unix_ms, "finishedUnixMs")
    return finish(m, "receipt body", max_bytes)


def _read_receipt_body(r: Any) -> ReceiptBody:
    return ReceiptBody(
        job_id=r.jobId,
        requester=r.requester,
        worker=r.worker,
        capsule=r.capsule,
        input_digest=bytes(r.inputDigest),
        output_digest=bytes(r.outputDigest),
        cost=r.cost,
        metrics=_read_metrics(r.metrics),
        finished_unix_ms=r.finishedUnixMs,
    )


_BODIES: OrderedDict[bytes, ReceiptBody] = OrderedDict()  # recently decoded receipt bodies
_MAX_BODIES = 1024


def decode_receipt_body(data: bytes | memoryview, *, max_bytes: int = 64 * 1024) -> ReceiptBody:
    """Decode a receipt body (memoized: a paid job's receipt body is read when the requester
    verifies it and again when its ledger checks the settle that carries it; decoding is pure
    and ``ReceiptBody`` is frozen, so the same bytes may share one result)."""
    key = bytes(data)
    hit = _BODIES.get(key) if len(key) <= max_bytes else None  # over the limit: decode (and fail)
    if hit is not None:
        _BODIES.move_to_end(key)
        return hit
    result: ReceiptBody | None = _fast(_fastread.read_receipt_body, key, max_bytes, "receipt body")
    if result is None:
        result = decode_struct(_schema().ReceiptBody, key, max_bytes, "receipt body", _read_receipt_body)
    _BODIES[key] = result
    if len(_BODIES) > _MAX_BODIES:
        _BODIES.popitem(last=False)
    return result


# ------------------------------------------------------------------------------------- blobs


def encode_blob_request(req: BlobRequest, *, max_bytes: int = 4096) -> bytes:
    if not 0 <= req.length < 2**32:
        raise LocalProtocolError(f"blob chunk length {req.length} does not fit UInt32")
    m = _schema().BlobRequest.new_message()
    m.requestId = _u64(req.request_id, "requestId")
    m.digest = req.digest
    m.offset = _u64(req.offset, "offset")
    m.length = req.length
    return finish(m, "blob request", max_bytes)


def _read_blob_request(r: Any) -> BlobRequest:
    return BlobRequest(request_id=r.requestId, digest=bytes(r.digest), offset=r.offset, length=r.length)


def decode_blob_request(data: bytes | memoryview, *, max_bytes: int = 4096) -> BlobRequest:
    result: BlobRequest = decode_struct(
        _schema().BlobRequest, data, max_bytes, "blob request", _read_blob_request
    )
    return result


def encode_blob_response(resp: BlobResponse, *, max_bytes: int = MAX_BLOB_CHUNK + 4096) -> bytes:
    m = _schema().BlobResponse.new_message()
    m.requestId = _u64(resp.request_id, "requestId")
    if isinstance(resp, BlobChunk):
        m.totalLength = _u64(resp.total_length, "totalLength")
        n = len(resp.chunk)
        if n > max_bytes:  # refuse before copying a huge chunk into the builder
            raise LocalProtocolError(
                f"blob chunk of {n} bytes is over the {max_bytes}-byte limit", limit=max_bytes, observed=n
            )
        m.init("chunk", n)
        m.get_data_as_view("chunk")[:] = resp.chunk  # one copy, straight into the message
    elif isinstance(resp, BlobNotFound):
        m.notFound = None
    else:
        m.error = resp.error
    return finish(m, "blob response", max_bytes)


@functools.cache
def _chunk_layout() -> tuple[int, int, int, int, int, int, int]:
    """Where BlobResponse keeps its fields, read from the schema (never hard-coded)."""
    node = _schema().BlobResponse.schema.node
    fields = {f.name: f for f in node.struct.fields}
    return (
        node.struct.dataWordCount,
        node.struct.pointerCount,
        fields["requestId"].slot.offset * 8,  # UInt64 slots count in 8-byte units
        fields["totalLength"].slot.offset * 8,
        node.struct.discriminantOffset * 2,  # in 2-byte units
        fields["chunk"].discriminantValue,
        fields["chunk"].slot.offset,  # index in the pointer section
    )


def encode_blob_chunk_parts(
    resp: BlobChunk, *, max_bytes: int = MAX_BLOB_CHUNK + 4096
) -> tuple[bytes, bytes | memoryview, bytes]:
    """``(head, chunk, padding)``: concatenated, a single-segment BlobResponse message.

    Why: a blob server sends megabytes of chunks, and the builder path copies each chunk three
    times (into the builder, out of it, into the frame).  This writes the few header words of
    the message by hand, from the layout the schema declares, and leaves the chunk where it is.
    The unit tests check that it decodes to ``resp``, and that it is byte-identical to
    ``encode_blob_response`` whenever the builder also produces a single segment (small chunks;
    for large ones the builder spills into a second segment, which the framing rule at the top
    of delegation.capnp does not want anyway).
    """
    n = len(resp.chunk)
    data_words, pointers, rid_at, total_at, disc_at, disc_chunk, ptr_index = _chunk_layout()
    body_words = (n + 7) // 8
    size = 8 * (2 + data_words + pointers + body_words)
    if size > max_bytes:
        raise LocalProtocolError(
            f"blob response of {size} bytes is over the {max_bytes}-byte limit",
            limit=max_bytes,
            observed=size,
        )
    head = bytearray(8 * (2 + data_words + pointers))
    struct.pack_into("<II", head, 0, 0, 1 + data_words + pointers + body_words)  # one segment; its words
    struct.pack_into("<IHH", head, 8, 0, data_words, pointers)  # root: struct pointer, offset 0
    data = 16
    struct.pack_into("<Q", head, data + rid_at, _u64(resp.request_id, "requestId"))
    struct.pack_into("<Q", head, data + total_at, _u64(resp.total_length, "totalLength"))
    struct.pack_into("<H", head, data + disc_at, disc_chunk)
    # list pointer to bytes placed right after the pointer section: kind 1, element size 2 (byte)
    ptr = data + 8 * data_words + 8 * ptr_index
    struct.pack_into("<II", head, ptr, ((pointers - 1 - ptr_index) << 2) | 1, (n << 3) | 2)
    return bytes(head), resp.chunk, bytes(body_words * 8 - n)


def _read_blob_response(r: Any) -> BlobResponse:
    which = r.which()
    if which == "chunk":
        return BlobChunk(request_id=r.requestId, chunk=bytes(r.chunk), total_length=r.totalLength)
    if which == "notFound":
        return BlobNotFound(request_id=r.requestId)
    return BlobFailed(request_id=r.requestId, error=r.error)


def _signed30(v: int) -> int:
    return v - (1 << 30) if v & (1 << 29) else v


def _fast_chunk(data: bytes | memoryview) -> BlobChunk | None:
    """A ``chunk`` answer laid out the usual way (one segment, struct, then the bytes), read
    without copying: the chunk is a memoryview into ``data``.  Anything else -> None, and the
    caller decodes with capnp.  Every offset is bounds-checked; the tests check that whatever
    this accepts, capnp decodes to the same value."""
    mv = memoryview(data)
    size = len(mv)
    if size < 16:
        return None
    segs, seg_words = _U32X2.unpack_from(mv, 0)
    if segs != 0 or 8 + 8 * seg_words != size:
        return None
    root_lo, root_hi = _U32X2.unpack_from(mv, 8)
    data_words, pointers, rid_at, total_at, disc_at, disc_chunk, ptr_index = _chunk_layout()
    dw, pc = root_hi & 0xFFFF, root_hi >> 16
    if root_lo & 3 or dw < data_words or pc < pointers:
        return None
    start = 16 + 8 * _signed30(root_lo >> 2)
    if start < 16 or start + 8 * (dw + pc) > size:
        return None
    if _U16.unpack_from(mv, start + disc_at)[0] != disc_chunk:
        return None
    (rid,) = _U64.unpack_from(mv, start + rid_at)
    (total,) = _U64.unpack_from(mv, start + total_at)
    ptr = start + 8 * dw + 8 * ptr_index
    lo, hi = _U32X2.unpack_from(mv, ptr)
    if lo == 0 and hi == 0:
        return BlobChunk(rid, b"", total)  # a null pointer reads as empty Data
    if lo & 3 != 1 or hi & 7 != 2:
        return None
    begin = ptr + 8 + 8 * _signed30(lo >> 2)
    count = hi >> 3
    if begin < 16 or begin + count > size:
        return None
    return BlobChunk(rid, mv[begin : begin + count], total)


def decode_blob_response(data: bytes | memoryview, *, max_bytes: int = MAX_BLOB_CHUNK + 4096) -> BlobResponse:
    """Decode an answer.  A chunk in the usual layout comes back as a memoryview into ``data``
    (no copy; it keeps ``data`` alive); anything else goes through capnp."""
    _check_size(data, max_bytes, "blob response")
    fast = _fast_chunk(data)
    if fast is not None:
        return fast
    result: BlobResponse = decode_struct(
        _schema().BlobResponse, data, max_bytes, "blob response", _read_blob_response
    )
    return result


# ------------------------------------------------------------------------------- blob push


@dataclass(frozen=True, slots=True)
class BlobOffer:
    digest: bytes
    length: int


@dataclass(frozen=True, slots=True)
class BlobOfferAnswer:
    kind: str  # "send" | "have" | "refused" | "stored" | "corrupt"
    reason: str = ""


_OFFER_KINDS = ("send", "have", "refused", "stored", "corrupt")


def encode_blob_offer(offer: BlobOffer, *, max_bytes: int = 4096) -> bytes:
    m = _schema().BlobOffer.new_message()
    m.digest = offer.digest
    m.length = _u64(offer.length, "length")
    return finish(m, "blob offer", max_bytes)


def _read_blob_offer(r: Any) -> BlobOffer:
    digest = bytes(r.digest)
    if len(digest) != DIGEST_BYTES:
        raise RemoteProtocolError(f"a blob offer's digest must be {DIGEST_BYTES} bytes, got {len(digest)}",
                                  limit=DIGEST_BYTES, observed=len(digest))
    return BlobOffer(digest=digest, length=r.length)


def decode_blob_offer(data: bytes | memoryview, *, max_bytes: int = 4096) -> BlobOffer:
    result: BlobOffer = decode_struct(_schema().BlobOffer, data, max_bytes, "blob offer", _read_blob_offer)
    return result


def encode_blob_offer_answer(answer: BlobOfferAnswer, *, max_bytes: int = 4096) -> bytes:
    if answer.kind not in _OFFER_KINDS:
        raise LocalProtocolError(f"unknown blob offer answer {answer.kind!r}")
    m = _schema().BlobOfferAnswer.new_message()
    if answer.kind in ("refused", "corrupt"):
        setattr(m, answer.kind, answer.reason[:1024])
    else:
        setattr(m, answer.kind, None)
    return finish(m, "blob offer answer", max_bytes)


def _read_blob_offer_answer(r: Any) -> BlobOfferAnswer:
    kind = r.which()
    if kind in ("refused", "corrupt"):
        return BlobOfferAnswer(kind, str(getattr(r, kind)))
    return BlobOfferAnswer(str(kind))


def decode_blob_offer_answer(data: bytes | memoryview, *, max_bytes: int = 4096) -> BlobOfferAnswer:
    result: BlobOfferAnswer = decode_struct(
        _schema().BlobOfferAnswer, data, max_bytes, "blob offer answer", _read_blob_offer_answer
    )
    return result
