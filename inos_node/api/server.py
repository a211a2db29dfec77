"""Serve the control API with hypercorn's trio backend, inside the caller's nursery.

    async with trio.open_nursery() as nursery:
        urls = await nursery.start(serve_api, make_app(service, token), "127.0.0.1", 5050)
        ...                                  # urls == ["http://127.0.0.1:5050"]
        nursery.cancel_scope.cancel()        # or set `shutdown` for a graceful stop

Logging: hypercorn's error log goes to the ``inos_node.api`` logger and its access log to
``inos_node.api.access`` (quiet unless that logger is enabled at INFO).  The access-log format
names no header, so the bearer token never reaches a log.
"""

from __future__ import annotations

import ipaddress
import logging
from typing import Final

import hypercorn.trio
import trio
from hypercorn.config import Config
from starlette.types import ASGIApp

__all__ = ["ACCESS_LOG_FORMAT", "serve_api"]

log = logging.getLogger("inos_node.api")
access_log = logging.getLogger("inos_node.api.access")

# peer address, request line (path without query), status, response bytes, seconds.  No headers:
# %({authorization}i)s would print the token, so no %({...}i)s atom may ever appear here.
ACCESS_LOG_FORMAT: Final = '%(h)s "%(r)s" %(s)s %(b)s %(L)ss'


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _bind(host: str, port: int) -> str:
    host = host.strip("[]")
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def serve_api(
    app: ASGIApp,
    host: str = "127.0.0.1",
    port: int = 5050,
    *,
    shutdown: trio.Event | None = None,
    graceful_timeout_s: float = 2.0,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Listen on ``host:port`` and serve ``app`` until cancelled or ``shutdown`` is set.

    Args:
        app: the ASGI app (``make_app(...)``).
        host, port: where to listen; port 0 picks a free one.  Anything but loopback logs a
            warning: the API can run jobs and spend credits, guarded only by the bearer token
            over plain HTTP.
        shutdown: when set, stop accepting connections and give in-flight requests
            ``graceful_timeout_s`` to finish, then return.
        task_status: ``started(urls)`` with the bound URLs (``["http://127.0.0.1:40123"]``) once
            the socket is listening.

    Raises:
        OSError: the address cannot be bound (in use, not ours).

    Cancellation: cancelling the caller's scope closes the listener and every connection at once
        (open event streams included); the function returns as soon as trio has unwound them.
    """
    if not _is_loopback(host):
        log.warning(
            "the control API listens on %s, not loopback: anyone who can reach it and has the "
            "token controls this node, over unencrypted HTTP",
            host,
        )
    config = Config()
    config.bind = [_bind(host, port)]
    config.accesslog = access_log
    config.access_log_format = ACCESS_LOG_FORMAT
    config.errorlog = log
    config.graceful_timeout = graceful_timeout_s
    config.include_server_header = False
    trigger = shutdown.wait if shutdown is not None else None
    await hypercorn.trio.serve(app, config, shutdown_trigger=trigger, task_status=task_status)  # type: ignore[arg-type]
