"""The dashboard: a static page at ``/dashboard`` and the data routes only it needs.

    browser ──GET /dashboard (no token: the page holds no data)──► dashboard.html, .js, .css
       │  token from the URL fragment (#token=..., never sent to the server) or a login form,
       │  kept in sessionStorage; every call below carries Authorization: Bearer <token>
       ├── GET /v1/peers, /v1/node, /v1/jobs        peer graph, this node, recent jobs (app.py)
       ├── GET /v1/events (read with fetch())       the live job stream (SSE, app.py)
       ├── GET /v1/ledger/supply, /balance/{did}     balances and supply (404: dev network)
       ├── GET /v1/vitals                           load, jobs, arena, epochs (+ rates), units
       └── GET /v1/boids/stream (read with fetch()) the boids showcase, one binary frame per step

The boids showcase
------------------
``BoidsShow`` runs one flock for all viewers, and only while at least one is connected.  Each
viewer's response starts a ``drive`` task next to its writer; the drivers queue on one lock, so
exactly one steps the flock (``boids.step`` through the node's engine, ``steps=1``: the unit
writes the next slot of the arena ping-pong buffer ``"boids.flock"`` and publishes the boids
epoch) and reads the committed frame back *in place* from the arena (``PingPong.read`` with a
quantising function: compute, then validate the slot was not overwritten).  When the driving
viewer leaves, its driver is cancelled and the next viewer's takes the lock; when the last one
leaves, nothing steps.  Each viewer holds only the latest frame (a slow viewer skips frames; no
queue grows), and frames are paced to ``fps``.

Frame format (little-endian), ``16 + 6·n`` bytes for ``n`` boids::

    "BOID" | u32 frame (the boids epoch) | u32 n | u32 reserved (0)
    u16[n] x | u16[n] y        position in the world cube, scaled to 0..65535
    u8[n]  z                   depth, scaled to 0..255
    u8[n]  heading             atan2(vy, vx) from -pi..pi scaled to 0..255
"""

from __future__ import annotations

import logging
import math
import struct
from functools import cache
from importlib import resources
from typing import Any, Final

import numpy as np
import trio
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from inos_node.api import metrics
from inos_node.api.service import FlockHost, NodeService
from inos_node.errors import ConfigError

__all__ = ["FRAME_HEADER", "OPENAPI_PATHS", "PUBLIC_PATHS", "BoidsShow", "encode_frame", "routes"]

log = logging.getLogger(__name__)

FRAME_HEADER: Final = struct.Struct("<4sIII")
FRAME_MAGIC: Final = b"BOID"
_ASSETS: Final = {
    "dashboard.js": "text/javascript; charset=utf-8",
    "dashboard.css": "text/css; charset=utf-8",
}
PUBLIC_PATHS: Final = frozenset({"/dashboard", *(f"/dashboard/{name}" for name in _ASSETS)})
# The page runs no inline script and talks only to its own origin.
_PAGE_HEADERS: Final = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; "
    "img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
}


@cache
def _asset(name: str) -> bytes:
    return resources.files("inos_node.api").joinpath("static", name).read_bytes()


def _payload(state: np.ndarray, world: float) -> bytes:
    xy = np.clip(state[0:2] * (65535.0 / world), 0, 65535).astype("<u2")
    z = np.clip(state[2] * (255.0 / world), 0, 255).astype(np.uint8)
    heading = ((np.arctan2(state[4], state[3]) + math.pi) * (255.0 / (2 * math.pi))).astype(np.uint8)
    return b"".join((xy.tobytes(), z.tobytes(), heading.tobytes()))


def encode_frame(frame: int, state: np.ndarray, world: float) -> bytes:
    """One showcase frame from a flock state (6 x n float32 rows: x, y, z, vx, vy, vz)."""
    return FRAME_HEADER.pack(FRAME_MAGIC, frame, state.shape[1], 0) + _payload(state, world)


class _Viewer:
    """One connection's mailbox: the latest frame only (None ends the stream)."""

    def __init__(self) -> None:
        self._frame: bytes | None = None
        self._ready = trio.Event()

    def offer(self, frame: bytes | None) -> None:
        self._frame = frame
        self._ready.set()

    async def take(self) -> bytes | None:
        await self._ready.wait()
        self._ready = trio.Event()
        return self._frame


class BoidsShow:
    """The showcase flock, stepped while viewers are connected (see the module's docstring).

    Args:
        count: boids in the flock (bounded: 16..20000).
        fps: frames per second at most (1..60).
        max_viewers: concurrent streams; more are answered 503.
    """

    def __init__(self, count: int = 1500, fps: float = 25.0, max_viewers: int = 8) -> None:
        if not (16 <= count <= 20_000 and 1 <= fps <= 60 and max_viewers >= 1):
            raise ConfigError("the boids showcase needs 16 <= count <= 20000, 1 <= fps <= 60 and "
                              "max_viewers >= 1", key="boids")
        self.count = count
        self.fps = fps
        self.max_viewers = max_viewers
        self.frames_sent = 0
        self._viewers: set[_Viewer] = set()
        self._drive = trio.Lock()
        self._idle = trio.Event()
        self._idle.set()

    @property
    def viewers(self) -> int:
        return len(self._viewers)

    @property
    def driving(self) -> bool:
        """Whether a driver is stepping the flock now."""
        return self._drive.locked()

    async def wait_idle(self) -> None:
        """Wait until no viewer is connected and no driver runs (the flock is still)."""
        await self._idle.wait()

    def _read_frame(self, arena: Any) -> bytes | None:
        from inos_node.arena import PingPong
        from inos_node.units.boids import BUFFER_NAME, flock_params

        pp = PingPong.open(arena, BUFFER_NAME)  # reopened per frame: a job may resize the flock
        try:
            count = pp.shape[1]
            world = flock_params(count).world_size
            got = pp.read(lambda view: _payload(view, world))  # quantise in place, then validate
        finally:
            pp.close()
        if got is None:
            return None
        return FRAME_HEADER.pack(FRAME_MAGIC, got[0], count, 0) + got[1]

    async def drive(self, host: FlockHost) -> None:
        """Step and broadcast while any viewer is connected; only one driver runs at a time.

        Cancellation: safe at every await; a step in progress completes inside the engine.
        """
        async with self._drive:
            period = 1.0 / self.fps
            due = trio.current_time()
            while self._viewers:
                result = await host.submit("boids.step", b"", {"steps": 1, "count": self.count, "seed": 1})
                frame = self._read_frame(host.arena) if result.ok else None
                if frame is None:
                    log.warning("the boids showcase stopped: boids.step answered %s %s",
                                result.status.value, result.error)
                for viewer in self._viewers:
                    viewer.offer(frame)
                if frame is None:
                    return
                # pace to fps, but never burst to catch up after a slow step
                due = max(due + period, trio.current_time())
                await trio.sleep_until(due)

    async def stream(self, host: FlockHost, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve one viewer: a chunked ``application/octet-stream`` of frames until it leaves."""
        viewer = _Viewer()
        self._viewers.add(viewer)
        if self._idle.is_set():
            self._idle = trio.Event()
        try:
            await send({"type": "http.response.start", "status": 200, "headers": [
                (b"content-type", b"application/octet-stream"), (b"cache-control", b"no-store"),
                (b"x-accel-buffering", b"no")]})
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self.drive, host)
                nursery.start_soon(_cancel_on_disconnect, receive, nursery.cancel_scope)
                while (frame := await viewer.take()) is not None:
                    await send({"type": "http.response.body", "body": frame, "more_body": True})
                    self.frames_sent += 1
                nursery.cancel_scope.cancel()
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            self._viewers.discard(viewer)
            if not self._viewers:  # this viewer's driver (if it drove) was cancelled with its nursery
                self._idle.set()


async def _cancel_on_disconnect(receive: Receive, scope: trio.CancelScope) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
    scope.cancel()


class _BoidsResponse(Response):
    def __init__(self, show: BoidsShow, service: NodeService) -> None:
        super().__init__(status_code=200, media_type="application/octet-stream")
        self._show = show
        self._service = service

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        host = self._service.local
        if host is None:
            answer: Response = JSONResponse({"error": "the node's engine is not up yet"}, status_code=503)
        elif self._show.viewers >= self._show.max_viewers:
            answer = JSONResponse({"error": f"too many boids viewers (limit {self._show.max_viewers})"},
                                  status_code=503)
        else:
            await self._show.stream(host, scope, receive, send)
            return
        await answer(scope, receive, send)


def _ok(media: str, description: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"description": description, "content": {media: {"schema": schema or {"type": "string"}}}}


_UNAUTHORIZED: Final = {"401": _ok("application/json", "Missing or wrong bearer token.",
                                   {"$ref": "#/components/schemas/Error"})}
# The OpenAPI description of the routes below and of GET /metrics (``openapi.document()`` merges it).
OPENAPI_PATHS: Final[dict[str, Any]] = {
    "/dashboard": {"get": {
        "operationId": "dashboard", "summary": "The dashboard page (no token: it asks for one)",
        "security": [], "responses": {"200": _ok("text/html", "the page")}}},
    "/dashboard/{asset}": {"get": {
        "operationId": "dashboardAsset", "summary": "The page's script and stylesheet (no token)",
        "security": [], "parameters": [{"name": "asset", "in": "path", "required": True,
                                        "schema": {"enum": sorted(_ASSETS)}}],
        "responses": {"200": _ok("text/plain", "the asset"), **_UNAUTHORIZED}}},
    "/v1/vitals": {"get": {
        "operationId": "vitals", "summary": "Load, jobs, arena, epoch counters and rates, units",
        "responses": {"200": _ok("application/json", "vital signs", {"type": "object"}), **_UNAUTHORIZED}}},
    "/v1/boids/stream": {"get": {
        "operationId": "boidsStream", "summary": "The boids showcase: a binary frame per step, while watched",
        "description": "Frames: 'BOID', u32 frame, u32 n, u32 0, then u16 x[n], u16 y[n], u8 z[n], "
                       "u8 heading[n] (little-endian; positions scaled to 0..65535 of the world cube).",
        "responses": {"200": _ok("application/octet-stream", "an endless stream of frames"),
                      "503": _ok("application/json", "no engine yet, or too many viewers",
                                 {"$ref": "#/components/schemas/Error"}), **_UNAUTHORIZED}}},
    "/metrics": {"get": {
        "operationId": "metrics", "summary": "Prometheus metrics (text exposition format 0.0.4)",
        "responses": {"200": _ok("text/plain", "the metrics"), **_UNAUTHORIZED}}},
}


def routes(service: NodeService, show: BoidsShow, rates: metrics.RateWindow) -> list[Route]:
    """The dashboard's routes: the page and its assets (public), ``/v1/vitals`` and ``/v1/boids/stream``."""

    async def page(request: Request) -> Response:
        html = _asset("dashboard.html")
        return Response(html, media_type="text/html; charset=utf-8", headers=_PAGE_HEADERS)

    async def asset(request: Request) -> Response:
        name = request.path_params["asset"]
        if name not in _ASSETS:
            return JSONResponse({"error": f"no dashboard asset {name!r}"}, status_code=404)
        return Response(_asset(name), media_type=_ASSETS[name], headers=_PAGE_HEADERS)

    async def vitals(request: Request) -> Response:
        doc = service.vitals()
        epochs = doc.get("epochs") or {}
        doc["epoch_rates"] = {k: round(v, 3) for k, v in rates.observe(trio.current_time(), epochs).items()}
        doc["boids"] = {"viewers": show.viewers, "frames_sent": show.frames_sent, "count": show.count,
                        "fps": show.fps}
        return JSONResponse(doc)

    async def boids_stream(request: Request) -> Response:
        return _BoidsResponse(show, service)

    return [
        Route("/dashboard", page, methods=["GET"]),
        Route("/dashboard/{asset}", asset, methods=["GET"]),
        Route("/v1/vitals", vitals, methods=["GET"]),
        Route("/v1/boids/stream", boids_stream, methods=["GET"]),
    ]
