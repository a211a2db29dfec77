"""Cap'n Proto codecs for capsule jobs: ``JobRequest`` / ``JobResult`` <-> bytes.

Rules this module lives by:
  1. capnp readers and builders never leave this module; decoding returns the frozen
     dataclasses of ``inos_node.types``.
  2. Anything decoded from outside goes through ``decode_*`` with a byte limit (checked before
     capnp sees the bytes) and a traversal limit (checked by capnp while reading); every failure
     becomes ``RemoteProtocolError`` saying what was wrong.
  3. Encoding something over the limit is a ``LocalProtocolError`` (we would be sending garbage).

Params travel as ``List(Param)`` of (key, JSON text) so that typed values survive the trip;
a value that is not valid JSON on decode is kept as the raw string (``--param k=v`` semantics).
"""

from __future__ import annotations

import json
from typing import Any

from inos_node.errors import LocalProtocolError, RemoteProtocolError
from inos_node.types import ArenaSlice, Digest, JobRequest, JobResult, Metrics, Status
from inos_node.wire import schemas

__all__ = [
    "DEFAULT_MAX_MESSAGE_BYTES",
    "decode_job_request",
    "decode_job_result",
    "encode_job_request",
    "encode_job_result",
]

DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024 + 64 * 1024
_WORD = 8


def _capsule() -> Any:
    return schemas.load("compute/v1/capsule.capnp")


def _set_payload(builder: Any, group: str, payload: Any) -> None:
    target = getattr(builder, group)
    if isinstance(payload, ArenaSlice):
        a = target.init("arena")
        a.offset = payload.offset
        a.length = payload.length
    elif isinstance(payload, Digest):
        target.digest = payload.value
    else:
        target.inline = bytes(payload)


def _get_payload(reader: Any) -> Any:
    which = reader.which()
    if which == "inline":
        return bytes(reader.inline)
    if which == "digest":
        d = bytes(reader.digest)
        if len(d) != 32:
            raise RemoteProtocolError(f"a digest must be 32 bytes, got {len(d)}", limit=32, observed=len(d))
        return Digest(d)
    a = reader.arena
    return ArenaSlice(a.offset, a.length)


def _check_size(data: bytes | memoryview, limit: int, what: str) -> None:
    n = len(data)
    if n > limit:
        raise RemoteProtocolError(
            f"{what} of {n} bytes is over the {limit}-byte limit", limit=limit, observed=n
        )
    if n % _WORD:
        raise RemoteProtocolError(f"{what} of {n} bytes is not a whole number of 8-byte words", observed=n)


def fill_job_request(m: Any, req: JobRequest) -> None:
    """Fill a capnp ``JobRequest`` builder (shared with the p2p codecs that embed one)."""
    m.jobId = req.job_id
    m.library = req.library
    m.method = req.method
    _set_payload(m, "input", req.input)
    params = m.init("params", len(req.params))
    for i, (k, v) in enumerate(req.params.items()):
        params[i].key = k
        try:
            params[i].value = json.dumps(v)
        except (TypeError, ValueError) as exc:
            raise LocalProtocolError(f"param {k!r} is not JSON-serialisable: {exc}") from exc
    m.budget = req.budget
    m.priority = req.priority
    m.deadlineMs = req.deadline_ms
    m.replicas = req.replicas
    if req.module is not None:
        m.module = req.module
    if req.module_digest is not None:
        m.moduleDigest = req.module_digest


def param_value(raw: str) -> Any:
    """A param's JSON text decoded; text that is not JSON stays the raw string (``--param k=v``)."""
    try:
        return json.loads(raw)
    except ValueError:
        return raw


def read_job_request(r: Any) -> JobRequest:
    params = {p.key: param_value(p.value) for p in r.params}
    return JobRequest(
        job_id=r.jobId,
        library=r.library,
        method=r.method,
        input=_get_payload(r.input),
        params=params,
        budget=r.budget,
        priority=r.priority,
        deadline_ms=r.deadlineMs,
        replicas=r.replicas,
        module=bytes(r.module) if r._has("module") else None,
        module_digest=bytes(r.moduleDigest) if r._has("moduleDigest") else None,
    )


def fill_metrics(mt: Any, metrics: Metrics) -> None:
    mt.wallNs = metrics.wall_ns
    mt.cpuNs = metrics.cpu_ns
    mt.fuel = metrics.fuel
    mt.peakMemoryBytes = metrics.peak_memory_bytes
    mt.inputBytes = metrics.input_bytes
    mt.outputBytes = metrics.output_bytes


def read_metrics(mt: Any) -> Metrics:
    return Metrics(
        wall_ns=mt.wallNs,
        cpu_ns=mt.cpuNs,
        fuel=mt.fuel,
        peak_memory_bytes=mt.peakMemoryBytes,
        input_bytes=mt.inputBytes,
        output_bytes=mt.outputBytes,
    )


def fill_job_result(m: Any, res: JobResult) -> None:
    m.jobId = res.job_id
    m.status = res.status.value
    _set_payload(m, "output", res.output)
    m.cost = res.cost
    fill_metrics(m.init("metrics"), res.metrics)
    m.error = res.error
    m.retryable = res.retryable
    m.executor = res.executor


def read_job_result(r: Any) -> JobResult:
    return JobResult(
        job_id=r.jobId,
        status=Status(str(r.status)),
        output=_get_payload(r.output),
        cost=r.cost,
        metrics=read_metrics(r.metrics),
        error=r.error,
        retryable=r.retryable,
        executor=r.executor,
    )


def finish(m: Any, what: str, max_bytes: int) -> bytes:
    """``m.to_bytes()``, refused with ``LocalProtocolError`` when over ``max_bytes`` (every codec)."""
    return within_limit(m.to_bytes(), what, max_bytes)


def within_limit(out: bytes, what: str, max_bytes: int) -> bytes:
    """``out`` (an encoded message), refused with ``LocalProtocolError`` when over ``max_bytes``."""
    if len(out) > max_bytes:
        raise LocalProtocolError(
            f"{what} of {len(out)} bytes is over the {max_bytes}-byte limit",
            limit=max_bytes,
            observed=len(out),
        )
    return out


def traversal_words(data: bytes | memoryview, extra: int = 1024) -> int:
    """The traversal limit a decoder reads ``data`` under: 4 x its words, plus ``extra``."""
    return len(data) // _WORD * 4 + extra


def decode_struct(
    struct_type: Any,
    data: bytes | memoryview,
    max_bytes: int,
    what: str,
    read: Any,
    *,
    nesting_limit: int = 16,
    traversal_extra: int = 1024,
) -> Any:
    """Decode untrusted ``data`` as ``struct_type`` and ``read`` it into a dataclass (every codec).

    The size is checked before capnp sees the bytes, the traversal limit is proportional to the
    size, and any capnp failure becomes a ``RemoteProtocolError`` that says what was malformed.
    """
    _check_size(data, max_bytes, what)
    try:
        with struct_type.from_bytes(
            data,
            traversal_limit_in_words=traversal_words(data, traversal_extra),
            nesting_limit=nesting_limit,
        ) as r:
            return read(r)
    except RemoteProtocolError:
        raise
    except Exception as exc:  # noqa: BLE001 - capnp raises KjException/ValueError/UnicodeError: all mean "malformed"
        raise RemoteProtocolError(f"malformed {what}: {_short(exc)}") from exc


def encode_job_request(req: JobRequest, *, max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> bytes:
    m = _capsule().JobRequest.new_message()
    fill_job_request(m, req)
    return finish(m, "job request", max_bytes)


def decode_job_request(data: bytes | memoryview, *, max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> JobRequest:
    return decode_struct(_capsule().JobRequest, data, max_bytes, "job request", read_job_request)  # type: ignore[no-any-return]


def encode_job_result(res: JobResult, *, max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> bytes:
    m = _capsule().JobResult.new_message()
    fill_job_result(m, res)
    return finish(m, "job result", max_bytes)


def decode_job_result(data: bytes | memoryview, *, max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> JobResult:
    return decode_struct(_capsule().JobResult, data, max_bytes, "job result", read_job_result)  # type: ignore[no-any-return]


def _short(exc: BaseException) -> str:
    # capnp messages look like "src/capnp/x.c++:123: failed: <why>\nstack: ..."; keep <why>.
    lines = [ln for ln in str(exc).strip().splitlines() if ln and not ln.startswith("stack:")]
    line = lines[0] if lines else type(exc).__name__
    if ": failed: " in line:
        line = line.split(": failed: ", 1)[1]
    return line[:300]
