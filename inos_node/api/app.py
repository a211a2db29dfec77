"""The control API: an ASGI (Starlette) app that translates HTTP onto a ``NodeService``.

    client ──HTTP──► bearer auth ──► router ──► handler ──► NodeService (the node daemon)
                     (every path,      (404/405      (validates into a SubmitRequest;
                      before routing)   as JSON)      errors become JSON 4xx naming the field)

Rules this module lives by:
  1. Every request, including one for a path that does not exist, must carry
     ``Authorization: Bearer <token>``; the token is compared in constant time.  A wrong or
     missing token is 401 before the router sees the path, so probing learns nothing.  The one
     exception is ``GET`` of the dashboard's static page and assets (``dashboard.PUBLIC_PATHS``,
     exact paths): a browser cannot send a header when it navigates, and they hold no data: the
     page asks for the token and sends it on every data call.
  2. Every error answer is JSON ``{"error": "<what was wrong>"}``, plus ``"field"`` when one
     request field is at fault.  Nothing echoes the token.
  3. Request bodies are bounded while they are read (``max_body_bytes``, 413 beyond): a client
     that lies about, or omits, Content-Length cannot make the node buffer more.
  4. No I/O at import or in ``make_app``; the app holds no nursery.  Long-lived responses (the
     event stream) open their own nursery inside the response and end with the connection.

The app runs under hypercorn's trio backend (``inos_node.api.server``), so handlers may use trio.
The OpenAPI document (``inos_node.api.openapi``) describes these routes; a test keeps the two equal.
The dashboard's routes live in ``inos_node.api.dashboard``, the Prometheus exposition in
``inos_node.api.metrics``.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import logging
import math
import re
from collections.abc import Mapping
from typing import Any, Final

import trio
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from inos_node.api import dashboard, ledger_routes, metrics, openapi
from inos_node.api.service import JobRecord, NodeService, SubmitRequest
from inos_node.errors import CapsuleError, ConfigError, InosError, PeerError, RemoteProtocolError
from inos_node.types import ArenaSlice, Digest
from inos_node.wire.codec import DEFAULT_MAX_MESSAGE_BYTES, decode_job_request

__all__ = ["DEFAULT_MAX_BODY_BYTES", "make_app"]

log = logging.getLogger(__name__)

DEFAULT_MAX_BODY_BYTES: Final = 128 * 1024 * 1024
DEFAULT_MAX_EVENT_STREAMS: Final = 32
DEFAULT_EVENT_PING_S: Final = 15.0
MAX_LIST_LIMIT: Final = 1000
CAPNP_MEDIA_TYPE: Final = "application/x-capnp"
_JSON_FIELDS: Final = frozenset(
    {
        "capsule",
        "input_b64",
        "input_digest",
        "params",
        "module_b64",
        "placement",
        "replicas",
        "budget",
        "timeout_s",
        "prefer",
        "wait",
    }
)
_CAPNP_QUERY: Final = frozenset({"wait", "placement", "prefer"})
_EVENT_NAME = re.compile(r"[A-Za-z0-9_.\-]{1,64}")


class _ApiError(Exception):
    """An answer other than 2xx, raised anywhere below the router and rendered as JSON."""

    def __init__(
        self, status: int, message: str, *, field: str | None = None, headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.field = field
        self.headers = headers


def _error_response(
    status: int, message: str, field: str | None = None, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    body: dict[str, Any] = {"error": message}
    if field is not None:
        body["field"] = field
    return JSONResponse(body, status_code=status, headers=headers)


class _BearerAuth:
    """Pure ASGI middleware: 401 unless ``Authorization: Bearer <token>`` matches (or the request
    is a GET of one of the ``public`` paths, matched exactly)."""

    def __init__(self, app: ASGIApp, token: str, public: frozenset[str] = frozenset()) -> None:
        self._app = app
        self._token = token.encode()
        self._public = public

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or (scope["method"] in ("GET", "HEAD") and scope["path"] in self._public):
            # lifespan (no websockets are routed), or the dashboard's static page and assets
            await self._app(scope, receive, send)
            return
        value = b""
        for name, raw in scope["headers"]:
            if name == b"authorization":
                value = raw
                break
        scheme, _, credential = value.partition(b" ")
        # compare_digest does not leak where the strings differ (only, at most, their lengths).
        if scheme.lower() == b"bearer" and hmac.compare_digest(credential.strip(), self._token):
            await self._app(scope, receive, send)
            return
        message = "missing Authorization header" if not value else "the bearer token was refused"
        response = _error_response(
            401,
            message + " (send Authorization: Bearer <token> from the node's api.token)",
            headers={"WWW-Authenticate": 'Bearer realm="inos"'},
        )
        await response(scope, receive, send)


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise _ApiError(400, f"Content-Length {declared!r} is not a number", field="Content-Length")
        if int(declared) > limit:
            raise _ApiError(413, f"request body of {declared} bytes is over the {limit}-byte limit")
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise _ApiError(413, f"request body is over the {limit}-byte limit")
            chunks.append(chunk)
    except ClientDisconnect:
        raise _ApiError(400, "the client went away while sending the body") from None
    return b"".join(chunks)


def _b64(doc: Mapping[str, Any], name: str) -> bytes | None:
    value = doc.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise _ApiError(400, f"{name} must be a base64 string", field=name)
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise _ApiError(400, f"{name} is not valid base64: {exc}", field=name) from None


def _bool(value: Any, name: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "1", "yes", "false", "0", "no"):
        return value.lower() in ("true", "1", "yes")
    raise _ApiError(400, f"{name} must be true or false, got {value!r}", field=name)


def _submit_from_json(body: bytes) -> tuple[SubmitRequest, bool]:
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise _ApiError(400, f"the body is not valid JSON: {exc}", field="body") from None
    if not isinstance(doc, dict):
        raise _ApiError(400, "the body must be a JSON object", field="body")
    unknown = sorted(set(doc) - _JSON_FIELDS)
    if unknown:
        raise _ApiError(
            400, f"unknown field {unknown[0]!r} (known: {', '.join(sorted(_JSON_FIELDS))})", field=unknown[0]
        )
    if "capsule" not in doc:
        raise _ApiError(400, "capsule is required (LIBRARY.METHOD)", field="capsule")
    if not isinstance(doc["capsule"], str):
        raise _ApiError(400, "capsule must be a string LIBRARY.METHOD", field="capsule")
    digest: bytes | None = None
    if doc.get("input_digest") is not None:
        hexd = doc["input_digest"]
        try:
            digest = bytes.fromhex(hexd) if isinstance(hexd, str) else None
        except ValueError:
            digest = None
        if digest is None or len(digest) != 32:
            raise _ApiError(
                400, "input_digest must be 64 hex characters (a blake3 digest)", field="input_digest"
            )
        if doc.get("input_b64") is not None:
            raise _ApiError(400, "give input_b64 or input_digest, not both", field="input_digest")
    params = doc.get("params", {})
    if params is None:
        params = {}
    if not isinstance(params, dict):
        raise _ApiError(400, "params must be a JSON object", field="params")
    timeout = doc.get("timeout_s")
    if isinstance(timeout, float) and not math.isfinite(timeout):
        raise _ApiError(400, "timeout_s must be finite", field="timeout_s")
    req = SubmitRequest(  # validates the rest; InvalidParams names the field (see _on_inos_error)
        capsule=doc["capsule"],
        input=_b64(doc, "input_b64") or b"",
        input_digest=digest,
        params=params,
        module=_b64(doc, "module_b64"),
        placement=doc.get("placement") or "auto",
        replicas=1 if doc.get("replicas") is None else doc["replicas"],
        budget=0 if doc.get("budget") is None else doc["budget"],
        timeout_s=timeout,
        prefer=doc.get("prefer"),
    )
    return req, _bool(False if doc.get("wait") is None else doc["wait"], "wait")


def _submit_from_capnp(body: bytes, query: Mapping[str, str], limit: int) -> tuple[SubmitRequest, bool]:
    unknown = sorted(set(query) - _CAPNP_QUERY)
    if unknown:
        raise _ApiError(
            400, f"unknown query parameter {unknown[0]!r} (known: wait, placement, prefer)", field=unknown[0]
        )
    try:
        jr = decode_job_request(body, max_bytes=min(limit, DEFAULT_MAX_MESSAGE_BYTES))
    except RemoteProtocolError as exc:
        raise _ApiError(400, str(exc), field="body") from None
    data, digest = b"", None
    if isinstance(jr.input, Digest):
        digest = jr.input.value
    elif isinstance(jr.input, ArenaSlice):
        raise _ApiError(400, "an arena slice cannot cross the API; send the input inline", field="input")
    else:
        data = bytes(jr.input)
    if jr.module_digest is not None:
        raise _ApiError(
            400, "moduleDigest is not supported over the API; send the module bytes", field="moduleDigest"
        )
    req = SubmitRequest(
        capsule=f"{jr.library}.{jr.method}",
        input=data,
        input_digest=digest,
        params=jr.params,
        module=jr.module,
        placement=query.get("placement", "auto"),
        replicas=max(1, jr.replicas),  # capnp's 0 is "unset"
        budget=jr.budget,
        timeout_s=jr.deadline_ms / 1000 if jr.deadline_ms else None,
        prefer=query.get("prefer"),  # type: ignore[arg-type]  # validated by SubmitRequest
    )
    return req, _bool(query.get("wait", "false"), "wait")


class _EventStream(Response):
    """``text/event-stream`` of the service's job events, until the client goes away.

    The first event is ``subscribed`` (sent once the subscription is live, so a client can
    submit afterwards without missing anything).  A comment line every ``ping_s`` seconds keeps
    proxies from closing an idle stream and notices dead clients.

    Resource handling: one task pumps the service's iterator into an unbuffered channel; this
    task alone writes to the connection (ASGI ``send`` must not be called concurrently); a third
    waits for ``http.disconnect`` and cancels the lot.
    """

    def __init__(self, service: NodeService, ping_s: float, slots: list[int], max_streams: int) -> None:
        super().__init__(status_code=200, media_type="text/event-stream")
        self._service = service
        self._ping_s = ping_s
        self._slots = slots
        self._max = max_streams

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self._slots[0] >= self._max:
            await _error_response(503, f"too many event streams open (limit {self._max})")(
                scope, receive, send
            )
            return
        self._slots[0] += 1  # no checkpoint since the check: atomic under trio
        try:
            async with self._service.subscribe_events() as events:
                await send(
                    {
                        "type": "http.response.start",
                        "status": 200,
                        "headers": [
                            (b"content-type", b"text/event-stream; charset=utf-8"),
                            (b"cache-control", b"no-cache"),
                            (b"x-accel-buffering", b"no"),
                        ],
                    }
                )
                await self._send_event(send, {"type": "subscribed"})
                async with trio.open_nursery() as nursery:
                    # 0-capacity: the pump never runs ahead of the connection (STYLE C6).
                    tx, rx = trio.open_memory_channel[dict[str, Any]](0)
                    nursery.start_soon(self._pump, events, tx)
                    nursery.start_soon(self._watch_disconnect, receive, nursery.cancel_scope)
                    async with rx:
                        while True:
                            event: dict[str, Any] = {}
                            with trio.move_on_after(self._ping_s) as idle:
                                try:
                                    event = await rx.receive()
                                except trio.EndOfChannel:
                                    break
                            if idle.cancelled_caught:
                                await send(
                                    {"type": "http.response.body", "body": b": ping\n\n", "more_body": True}
                                )
                            else:
                                await self._send_event(send, event)
                    nursery.cancel_scope.cancel()
                await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            self._slots[0] -= 1

    @staticmethod
    async def _pump(events: Any, tx: trio.MemorySendChannel[dict[str, Any]]) -> None:
        async with tx:
            async for event in events:
                await tx.send(event)

    @staticmethod
    async def _watch_disconnect(receive: Receive, scope: trio.CancelScope) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        scope.cancel()

    @staticmethod
    async def _send_event(send: Send, event: Mapping[str, Any]) -> None:
        name = event.get("type")
        name = name if isinstance(name, str) and _EVENT_NAME.fullmatch(name) else "message"
        data = json.dumps(event, separators=(",", ":"), default=str)  # one line: json never emits "\n" here
        body = f"event: {name}\ndata: {data}\n\n".encode()
        await send({"type": "http.response.body", "body": body, "more_body": True})


def make_app(
    service: NodeService,
    token: str,
    *,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    max_event_streams: int = DEFAULT_MAX_EVENT_STREAMS,
    event_ping_s: float = DEFAULT_EVENT_PING_S,
    metrics_registry: metrics.Registry | None = None,
    boids: dashboard.BoidsShow | None = None,
) -> Starlette:
    """Build the control API over ``service``.  Pure: no I/O, no tasks started.

    Args:
        service: the node (or a fake) answering the routes.
        token: the bearer token every request must carry (at least 16 characters).
        max_body_bytes: request bodies over this are refused with 413 while being read.
        max_event_streams: concurrent ``GET /v1/events`` streams; more get 503.
        event_ping_s: idle seconds between keep-alive comments on event streams.
        metrics_registry: extra ``GET /metrics`` providers (the ledger's); None: the node's own only.
        boids: the dashboard's boids showcase (its flock size, frame rate and viewer limit).

    Raises:
        ConfigError: the token is too short or a limit is not positive.
    """
    if len(token) < 16:
        raise ConfigError("the API token must be at least 16 characters", key="token")
    if max_body_bytes < 1 or max_event_streams < 1 or event_ping_s <= 0:
        raise ConfigError("API limits must be positive", key="api")
    stream_slots = [0]
    registry = metrics_registry or metrics.Registry()
    job_counters = metrics.JobCounters()
    epoch_rates = metrics.RateWindow()

    async def submit(request: Request) -> Response:
        body = await _read_body(request, max_body_bytes)
        media = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
        if media == CAPNP_MEDIA_TYPE:
            req, wait = _submit_from_capnp(body, request.query_params, max_body_bytes)
        elif media == "application/json":
            if request.query_params:
                raise _ApiError(
                    400,
                    "JSON submissions take no query parameters (put them in the body)",
                    field=next(iter(request.query_params)),
                )
            req, wait = _submit_from_json(body)
        else:
            raise _ApiError(
                415,
                f"unsupported Content-Type {media!r} (use application/json or {CAPNP_MEDIA_TYPE})",
                field="Content-Type",
            )
        job_id = await service.submit(req)
        if not wait:
            return JSONResponse(
                {"job_id": job_id, "status": "queued", "href": f"/v1/jobs/{job_id}"},
                status_code=202,
                headers={"Location": f"/v1/jobs/{job_id}"},
            )
        record = await service.wait_job(job_id)
        return JSONResponse(record.to_json())

    async def list_jobs(request: Request) -> Response:
        raw = request.query_params.get("limit", "100")
        if not raw.isdigit() or not 1 <= int(raw) <= MAX_LIST_LIMIT:
            raise _ApiError(
                400, f"limit must be an integer in [1, {MAX_LIST_LIMIT}], got {raw!r}", field="limit"
            )
        return JSONResponse({"jobs": [r.to_json(include_output=False) for r in service.jobs(int(raw))]})

    def _record(request: Request) -> JobRecord:
        job_id = request.path_params["job_id"]
        record = service.job(job_id)
        if record is None:
            raise _ApiError(404, f"no job {job_id!r} on this node", field="job_id")
        return record

    async def get_job(request: Request) -> Response:
        return JSONResponse(_record(request).to_json())

    async def get_output(request: Request) -> Response:
        record = _record(request)
        if not record.finished:
            raise _ApiError(409, f"job {record.job_id} is {record.status}; its output is not ready yet")
        if record.output is None:
            raise _ApiError(404, f"job {record.job_id} has no output (status {record.status})")
        return Response(
            record.output, media_type="application/octet-stream", headers={"X-Inos-Status": record.status}
        )

    async def events(request: Request) -> Response:
        return _EventStream(service, event_ping_s, stream_slots, max_event_streams)

    async def peers(request: Request) -> Response:
        q = request.query_params
        if "wait_for" in q or "serving" in q:
            # Long poll: answer once the node holds an advert of `wait_for` and/or `count` peers
            # advertise `serving` (event-driven on the node side), or when timeout_s passes.
            try:
                count = int(q.get("count", "1"))
                timeout_s = float(q.get("timeout_s", "10"))
            except ValueError:
                raise _ApiError(400, "count and timeout_s must be numbers", field="count") from None
            if not (1 <= count <= 1000 and 0 < timeout_s <= 120):
                raise _ApiError(400, "count must be in [1, 1000] and timeout_s in (0, 120]", field="timeout_s")
            met = await service.wait_peers(peer_id=q.get("wait_for"), serving=q.get("serving"), count=count,
                                           timeout_s=timeout_s)
            return JSONResponse({"peers": service.peers(), "condition_met": met})
        return JSONResponse({"peers": service.peers()})

    async def units(request: Request) -> Response:
        return JSONResponse({"units": service.units()})

    async def node(request: Request) -> Response:
        return JSONResponse(service.info())

    async def health(request: Request) -> Response:
        doc = service.health()
        return JSONResponse(doc, status_code=200 if doc.get("ready") else 503)

    async def openapi_doc(request: Request) -> Response:
        return JSONResponse(openapi.document())

    async def prometheus(request: Request) -> Response:
        snapshot = service.metrics_snapshot()
        job_counters.observe(service.jobs(MAX_LIST_LIMIT))
        rates = epoch_rates.observe(trio.current_time(), snapshot.get("epochs") or {})
        fams = [*metrics.families(snapshot, rates), *job_counters.families(), *registry.collect()]
        return Response(metrics.render(fams), media_type=metrics.CONTENT_TYPE)

    routes = [
        Route("/v1/jobs", submit, methods=["POST"]),
        Route("/v1/jobs", list_jobs, methods=["GET"]),
        Route("/v1/jobs/{job_id}", get_job, methods=["GET"]),
        Route("/v1/jobs/{job_id}/output", get_output, methods=["GET"]),
        Route("/v1/events", events, methods=["GET"]),
        Route("/v1/peers", peers, methods=["GET"]),
        Route("/v1/units", units, methods=["GET"]),
        Route("/v1/node", node, methods=["GET"]),
        Route("/v1/health", health, methods=["GET"]),
        Route("/v1/openapi.json", openapi_doc, methods=["GET"]),
        Route("/metrics", prometheus, methods=["GET"]),
        *dashboard.routes(service, boids or dashboard.BoidsShow(), epoch_rates),
        *ledger_routes.routes(service, lambda request: _read_body(request, max_body_bytes)),
    ]
    return Starlette(
        routes=routes,
        middleware=[Middleware(_BearerAuth, token=token, public=dashboard.PUBLIC_PATHS)],
        exception_handlers={
            _ApiError: _on_api_error,
            InosError: _on_inos_error,
            HTTPException: _on_http_exception,
            Exception: _on_unexpected,
        },
    )


async def _on_api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, _ApiError)
    return _error_response(exc.status, str(exc), exc.field, exc.headers)


async def _on_inos_error(request: Request, exc: Exception) -> Response:
    """The service's (or SubmitRequest's) refusals: whose fault decides the status code."""
    if isinstance(exc, CapsuleError) and exc.status == "invalidParams":
        return _error_response(400, str(exc), getattr(exc, "param", None))
    if isinstance(exc, ConfigError):
        return _error_response(400, str(exc), exc.key)
    if isinstance(exc, PeerError):
        return _error_response(503, str(exc))
    log.error("the node refused a request: %s", exc, exc_info=exc)
    return _error_response(500, str(exc))


async def _on_http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        return _error_response(404, f"no route {request.url.path} (see GET /v1/openapi.json)")
    return _error_response(exc.status_code, str(exc.detail), headers=exc.headers)


async def _on_unexpected(request: Request, exc: Exception) -> Response:
    # Starlette's ServerErrorMiddleware calls this for anything unhandled, then re-raises it so
    # hypercorn logs the traceback; we only make sure the client gets JSON, not a stack.
    return _error_response(500, f"internal error ({type(exc).__name__}); see the node's log")
