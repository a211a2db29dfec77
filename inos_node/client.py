"""A small client for a node's control API (``inos_node.api``), standard library only.

    client = Client(resolve_api(None), resolve_token(None, None))
    record = client.run(SubmitRequest("compute.blake3", input=b"hello"))   # waits for the result
    job_id = client.submit(SubmitRequest("compute.sha256", input=b"x"))   # returns at once
    with client.events() as stream:
        for event in stream: ...

Where the client looks (first hit wins):
  API address   --api  >  $INOS_API  >  127.0.0.1:5050
  token         --token  >  $INOS_TOKEN  >  --data-dir DIR (DIR/api.token)
                >  the default data dir ($INOS_DATA_DIR, else ~/.inos)

Every failure is an ``ApiError`` whose message says what to do: no node answering, token refused,
or the node's own ``{"error": ...}`` answer.  ``status`` is the HTTP status (None when no answer
came at all) and ``field`` the request field the node named.

The client is synchronous (``http.client``): one connection per call, so it is safe to share
between threads; from trio, call it through ``trio.to_thread.run_sync``.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import socket
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final
from urllib.parse import quote, urlencode, urlsplit

from inos_node.api.service import JobRecord, SubmitRequest
from inos_node.errors import ConfigError, InosError

__all__ = [
    "DEFAULT_API",
    "ApiError",
    "Client",
    "Response",
    "default_data_dir",
    "resolve_api",
    "resolve_token",
]

DEFAULT_API: Final = "127.0.0.1:5050"
TOKEN_FILE: Final = "api.token"  # == inos_node.identity.TOKEN_FILE (not imported: it pulls in nacl)
_TOKEN_HELP: Final = "the API token was refused (use --token, INOS_TOKEN or --data-dir)"


_PROGRESS_MIN = 4 * 1024 * 1024
_CHUNK = 1024 * 1024


def _chunks(body: bytes, progress: Any) -> Iterator[bytes]:
    """``body`` in 1 MiB pieces, reporting (sent, total) after each."""
    view = memoryview(body)
    for start in range(0, len(body), _CHUNK):
        piece = view[start:start + _CHUNK]
        yield bytes(piece)
        progress(min(start + _CHUNK, len(body)), len(body))


class ApiError(InosError):
    """The control API could not be reached, refused us, or answered an error."""

    def __init__(self, message: str, *, status: int | None = None, field: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.field = field


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    headers: Mapping[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def default_data_dir(env: Mapping[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    return Path(env.get("INOS_DATA_DIR") or "~/.inos").expanduser()


def resolve_api(api: str | None, env: Mapping[str, str] | None = None) -> str:
    env = os.environ if env is None else env
    return api or env.get("INOS_API") or DEFAULT_API


def resolve_token(
    token: str | None, data_dir: str | os.PathLike[str] | None, env: Mapping[str, str] | None = None
) -> str:
    """The bearer token, by the precedence in the module docstring.

    Raises:
        ConfigError: the token file it settled on cannot be read (it is never created here:
            only a node, or ``inos token``, creates one).
    """
    env = os.environ if env is None else env
    if token:
        return token
    if env.get("INOS_TOKEN"):
        return env["INOS_TOKEN"]
    path = (Path(data_dir).expanduser() if data_dir is not None else default_data_dir(env)) / TOKEN_FILE
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        raise ConfigError(
            f"no API token: {path} does not exist (pass --token, set INOS_TOKEN, or point "
            "--data-dir at the node's data dir)",
            key="token",
        ) from None
    except OSError as exc:
        raise ConfigError(f"cannot read the API token {path}: {exc.strerror}", key="token") from None


def _split_api(api: str) -> tuple[str, int]:
    parts = urlsplit(api if "//" in api else f"http://{api}")
    if parts.scheme != "http" or not parts.hostname or parts.path not in ("", "/"):
        raise ConfigError(f"--api expects HOST:PORT or http://HOST:PORT, got {api!r}", key="api")
    try:
        port = parts.port or 5050
    except ValueError:
        raise ConfigError(f"--api has a bad port: {api!r}", key="api") from None
    return parts.hostname, port


class Client:
    """One node's control API.  Methods mirror the routes of ``inos_node.api.app``.

    Args:
        api: ``HOST:PORT`` or ``http://HOST:PORT``.
        token: the bearer token.
        timeout: socket timeout in seconds for ordinary calls (a waiting submit uses the job's timeout
            plus a margin instead).
    """

    def __init__(self, api: str = DEFAULT_API, token: str = "", *, timeout: float = 30.0) -> None:
        self.host, self.port = _split_api(api)
        shown = f"[{self.host}]" if ":" in self.host else self.host
        self.url = f"http://{shown}:{self.port}"
        self._token = token
        self.timeout = timeout

    # ------------------------------------------------------------------ raw
    progress: Any = None  # callable(sent, total) for large uploads (the CLI draws a bar on a TTY)

    def _connect(self, timeout: float | None) -> http.client.HTTPConnection:
        return http.client.HTTPConnection(self.host, self.port, timeout=timeout)

    def _headers(self, extra: Mapping[str, str] | None) -> dict[str, str]:
        headers = {"Authorization": f"Bearer {self._token}", "Accept": "application/json"}
        headers.update(extra or {})
        return headers

    @contextlib.contextmanager
    def _exchange(
        self,
        method: str,
        path: str,
        body: bytes | None,
        headers: Mapping[str, str] | None,
        timeout: float | None,
    ) -> Iterator[http.client.HTTPResponse]:
        conn = self._connect(timeout)
        try:
            try:
                try:
                    hdrs = self._headers(headers)
                    payload: Any = body
                    if body is not None and self.progress is not None and len(body) >= _PROGRESS_MIN:
                        hdrs["Content-Length"] = str(len(body))
                        payload = _chunks(body, self.progress)
                    conn.request(method, path, body=payload, headers=hdrs)
                except (BrokenPipeError, ConnectionResetError):
                    if body is None:
                        raise
                    # The node may have answered (413, 401) and stopped reading before the body was
                    # all sent: its answer can still be waiting in our receive buffer.
                resp = conn.getresponse()
            except (ConnectionRefusedError, socket.gaierror) as exc:
                raise ApiError(f"no node answering at {self.url} (start one with `inos node run`)") from exc
            except TimeoutError as exc:
                raise ApiError(f"the node at {self.url} did not answer within {timeout} s") from exc
            except (http.client.HTTPException, OSError) as exc:
                raise ApiError(f"lost the connection to the node at {self.url}: {exc}") from exc
            yield resp
        finally:
            conn.close()

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        *,
        timeout: float | None = None,
    ) -> Response:
        """One HTTP exchange, whatever the status.  Raises ``ApiError`` only when no answer came."""
        with self._exchange(method, path, body, headers, timeout or self.timeout) as resp:
            try:
                data = resp.read()
            except (http.client.HTTPException, OSError) as exc:
                raise ApiError(f"lost the connection to the node at {self.url}: {exc}") from exc
            return Response(resp.status, {k.lower(): v for k, v in resp.getheaders()}, data)

    def _call(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        *,
        timeout: float | None = None,
        ok: tuple[int, ...] = (200,),
    ) -> Response:
        resp = self.request(method, path, body, headers, timeout=timeout)
        if resp.status in ok:
            return resp
        raise _error_of(resp)

    def _json(self, path: str, **kw: Any) -> Any:
        return self._call("GET", path, **kw).json()

    # ------------------------------------------------------------------ routes
    def submit(self, req: SubmitRequest) -> str:
        """``POST /v1/jobs``: queue the job and return its id."""
        body = json.dumps(req.to_json()).encode()
        return str(
            self._call("POST", "/v1/jobs", body, {"Content-Type": "application/json"}, ok=(202,)).json()[
                "job_id"
            ]
        )

    def run(self, req: SubmitRequest) -> JobRecord:
        """``POST /v1/jobs`` with ``wait``: the finished job."""
        body = json.dumps({**req.to_json(), "wait": True}).encode()
        # the node bounds the job by timeout_s (or its default deadline): wait a margin beyond it
        timeout = (req.timeout_s or 600.0) + 60.0
        resp = self._call("POST", "/v1/jobs", body, {"Content-Type": "application/json"}, timeout=timeout)
        return JobRecord.from_json(resp.json())

    def submit_capnp(
        self,
        data: bytes,
        *,
        wait: bool = False,
        placement: str | None = None,
        prefer: str | None = None,
        timeout: float | None = None,
    ) -> dict[str, Any]:
        """``POST /v1/jobs`` with a Cap'n Proto ``JobRequest`` body."""
        query = {"wait": "true" if wait else "false"}
        if placement:
            query["placement"] = placement
        if prefer:
            query["prefer"] = prefer
        resp = self._call(
            "POST",
            "/v1/jobs?" + urlencode(query),
            data,
            {"Content-Type": "application/x-capnp"},
            timeout=timeout,
            ok=(200, 202),
        )
        doc: dict[str, Any] = resp.json()
        return doc

    def jobs(self, limit: int = 100) -> list[JobRecord]:
        return [JobRecord.from_json(d) for d in self._json(f"/v1/jobs?limit={int(limit)}")["jobs"]]

    def job(self, job_id: str) -> JobRecord:
        return JobRecord.from_json(self._json(f"/v1/jobs/{quote(job_id, safe='')}"))

    def output(self, job_id: str) -> bytes:
        return self._call("GET", f"/v1/jobs/{quote(job_id, safe='')}/output").body

    def peers(self) -> list[dict[str, Any]]:
        return list(self._json("/v1/peers")["peers"])

    def wait_peers(self, *, peer_id: str | None = None, serving: str | None = None, count: int = 1,
                   timeout_s: float = 10.0) -> bool:
        """Long-poll the node until it holds ``peer_id``'s advert / ``count`` peers serve ``serving``."""
        from urllib.parse import urlencode

        q = {"count": count, "timeout_s": timeout_s}
        if peer_id:
            q["wait_for"] = peer_id
        if serving:
            q["serving"] = serving
        return bool(self._json("/v1/peers?" + urlencode(q))["condition_met"])

    def units(self) -> list[dict[str, Any]]:
        return list(self._json("/v1/units")["units"])

    def node(self) -> dict[str, Any]:
        return dict(self._json("/v1/node"))

    def health(self) -> dict[str, Any]:
        """The health document, ready or not (503 is an answer here, not an error)."""
        return dict(self._call("GET", "/v1/health", ok=(200, 503)).json())

    def openapi(self) -> dict[str, Any]:
        return dict(self._json("/v1/openapi.json"))

    # ------------------------------------------------------------------ ledger
    def balance(self, did: str | None = None) -> dict[str, Any]:
        return dict(self._json("/v1/ledger/balance" + (f"/{quote(did, safe=':')}" if did else "")))

    def supply(self) -> dict[str, Any]:
        return dict(self._json("/v1/ledger/supply"))

    def verify_ledger(self) -> dict[str, Any]:
        return dict(self._json("/v1/ledger/verify", timeout=600.0))

    def history(self, did: str | None = None) -> dict[str, Any]:
        return dict(self._json("/v1/ledger/history" + (f"/{quote(did, safe=':')}" if did else "")))

    def ledger_post(self, action: str, doc: dict[str, Any]) -> dict[str, Any]:
        """``POST /v1/ledger/{transfer|stake|unstake}``."""
        body = json.dumps(doc).encode()
        return dict(self._call("POST", f"/v1/ledger/{action}", body, {"Content-Type": "application/json"}).json())

    @contextlib.contextmanager
    def events(self, *, timeout: float | None = None) -> Iterator[Iterator[dict[str, Any]]]:
        """``GET /v1/events``: iterate job events (dicts) while the context is open.

        The first event is ``{"type": "subscribed"}``: after it, nothing submitted is missed.
        ``timeout`` bounds each wait for a line (None: wait forever; pings arrive every 15 s).
        """
        with self._exchange("GET", "/v1/events", None, {"Accept": "text/event-stream"}, timeout) as resp:
            if resp.status != 200:
                raise _error_of(
                    Response(resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read())
                )
            yield _parse_sse(resp)


def _parse_sse(resp: http.client.HTTPResponse) -> Iterator[dict[str, Any]]:
    data: list[str] = []
    while True:
        try:
            raw = resp.readline()
        except TimeoutError as exc:
            raise ApiError("no event (not even a ping) arrived in time") from exc
        except (http.client.HTTPException, OSError) as exc:
            raise ApiError(f"lost the event stream: {exc}") from exc
        if not raw:
            return
        line = raw.decode("utf-8").rstrip("\r\n")
        if not line:
            if data:
                yield json.loads("\n".join(data))
                data = []
        elif line.startswith("data:"):
            data.append(line[5:].lstrip(" "))
        # "event:", "id:", "retry:" and ": comments" need nothing: the data carries "type"


def _error_of(resp: Response) -> ApiError:
    if resp.status == 401:
        return ApiError(_TOKEN_HELP, status=401)
    message, field = "", None
    try:
        doc = resp.json()
        message, field = str(doc.get("error", "")), doc.get("field")
    except (ValueError, AttributeError):
        message = resp.body[:200].decode("utf-8", "replace")
    return ApiError(
        f"the node answered {resp.status}: {message or 'no details'}", status=resp.status, field=field
    )
