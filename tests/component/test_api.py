"""The control API over a fake node: the real app, the real hypercorn server on 127.0.0.1:0, and
the real client (called through ``trio.to_thread``, since it is a blocking stdlib client).

``FakeService`` here implements ``NodeService``; ``tests/integration/test_client_cli.py`` serves it
from a subprocess for the CLI tests.
"""

from __future__ import annotations

import base64
import http.client
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import pytest
import trio

from inos_node.api import openapi
from inos_node.api.app import make_app
from inos_node.api.server import ACCESS_LOG_FORMAT, serve_api
from inos_node.api.service import JobRecord, NodeService, SubmitRequest
from inos_node.client import ApiError, Client
from inos_node.errors import ConfigError, UnknownUnit
from inos_node.types import Digest, JobRequest

TOKEN = "test-token-0123456789abcdef"
REMOTE_PEER = "12D3KooWFakeRemotePeer"
CAPSULES = ("compute.reverse", "test.describe", "test.fail", "test.fuel", "test.slow")


# ---------------------------------------------------------------------------------------- the fake
class FakeService:
    """An in-memory node.  Capsules:

    compute.reverse   output = input reversed
    test.describe     output = the SubmitRequest as JSON (what the node was asked for)
    test.fail         status failed, error "boom"
    test.fuel         status outOfFuel
    test.slow         stays "running" until ``finish(job_id)``
    """

    def __init__(self) -> None:
        self.records: dict[str, JobRecord] = {}
        self.requests: dict[str, SubmitRequest] = {}
        self._done: dict[str, trio.Event] = {}
        self._subscribers: set[trio.MemorySendChannel[dict[str, Any]]] = set()
        self._ids = 0
        self._new_job = trio.Event()
        self.ready = True

    # -- NodeService
    async def submit(self, req: SubmitRequest) -> str:
        await trio.lowlevel.checkpoint()
        if req.capsule not in CAPSULES:
            raise UnknownUnit(
                f"no capsule {req.capsule!r} (available: {', '.join(CAPSULES)})", available=list(CAPSULES)
            )
        self._ids += 1
        job_id = f"job-{self._ids}"
        self.requests[job_id] = req
        self._done[job_id] = trio.Event()
        self.records[job_id] = JobRecord(
            job_id=job_id, capsule=req.capsule, status="queued", submitted_ms=int(time.time() * 1000)
        )
        self._new_job.set()
        self._new_job = trio.Event()
        self._publish({"type": "submitted", "job_id": job_id, "capsule": req.capsule})
        self._set(job_id, status="running")
        self._publish({"type": "started", "job_id": job_id})
        if req.capsule == "compute.reverse":
            self.finish(job_id, output=req.input[::-1])
        elif req.capsule == "test.describe":
            self.finish(job_id, output=json.dumps(_describe(req), sort_keys=True).encode())
        elif req.capsule == "test.fail":
            self.finish(job_id, status="failed", error="boom")
        elif req.capsule == "test.fuel":
            self.finish(job_id, status="outOfFuel", error="all fuel consumed")
        return job_id

    def job(self, job_id: str) -> JobRecord | None:
        return self.records.get(job_id)

    def jobs(self, limit: int = 100) -> list[JobRecord]:
        return list(reversed(self.records.values()))[:limit]

    async def wait_job(self, job_id: str) -> JobRecord:
        await self._done[job_id].wait()
        return self.records[job_id]

    @asynccontextmanager
    async def subscribe_events(self) -> AsyncIterator[AsyncIterator[dict[str, Any]]]:
        tx, rx = trio.open_memory_channel[dict[str, Any]](16)  # bounded; a slow subscriber loses events
        self._subscribers.add(tx)
        try:
            async with rx:
                yield rx
        finally:
            self._subscribers.discard(tx)
            tx.close()

    def peers(self) -> list[dict[str, Any]]:
        return [
            {
                "peer_id": REMOTE_PEER,
                "addresses": ["/ip4/127.0.0.1/tcp/4001"],
                "name": "remote-1",
                "methods": ["compute.reverse", "test.describe"],
                "load": 0.25,
                "rtt_ms": 1.5,
                "price": 2,
                "reputation": 0.75,
            }
        ]

    def units(self) -> list[dict[str, Any]]:
        return [{"library": "compute", "summary": "fake", "methods": [{"name": "reverse", "params": []}]}]

    def info(self) -> dict[str, Any]:
        return {
            "peer_id": "12D3KooWFakeLocal",
            "did": "did:inos:fake",
            "addresses": [],
            "name": "fake",
            "version": "0.1.0",
            "uptime": 1.0,
        }

    def health(self) -> dict[str, Any]:
        return {"ready": self.ready, "peers": 1}

    # -- test controls
    async def wait_for_jobs(self, n: int) -> None:
        while len(self.records) < n:
            await self._new_job.wait()

    def finish(
        self, job_id: str, *, status: str = "success", output: bytes | None = None, error: str = ""
    ) -> None:
        req = self.requests[job_id]
        executor = (
            "local"
            if req.placement in ("auto", "local")
            else REMOTE_PEER
            if req.placement == "remote"
            else req.placement.removeprefix("peer:")
        )
        replicas = tuple({"executor": executor, "status": status, "index": i} for i in range(req.replicas))
        self._set(
            job_id,
            status=status,
            output=output,
            output_len=len(output or b""),
            executor=executor,
            cost=3,
            metrics={"wall_ns": 1000},
            error=error,
            replicas=replicas,
            receipt={"job_id": job_id, "executor": executor, "signature": "ab" * 32},
            finished_ms=int(time.time() * 1000),
        )
        self._done[job_id].set()
        self._publish({"type": "finished", "job_id": job_id, "status": status})

    def _set(self, job_id: str, **changes: Any) -> None:
        old = self.records[job_id]
        self.records[job_id] = JobRecord(
            **{**{f: getattr(old, f) for f in JobRecord.__dataclass_fields__}, **changes}
        )

    def _publish(self, event: dict[str, Any]) -> None:
        for tx in list(self._subscribers):
            try:
                tx.send_nowait(event)
            except trio.WouldBlock:
                pass  # the subscriber is too slow: it misses this one (bounded, by design)
            except trio.ClosedResourceError:
                self._subscribers.discard(tx)


def _describe(req: SubmitRequest) -> dict[str, Any]:
    return {
        "capsule": req.capsule,
        "input_len": len(req.input),
        "params": dict(req.params),
        "placement": req.placement,
        "replicas": req.replicas,
        "budget": req.budget,
        "timeout_s": req.timeout_s,
        "prefer": req.prefer,
        "module_len": None if req.module is None else len(req.module),
        "input_digest": None if req.input_digest is None else req.input_digest.hex(),
    }


def test_fake_service_implements_the_protocol() -> None:
    service: NodeService = FakeService()  # mypy checks this line structurally
    assert all(
        callable(getattr(service, name))
        for name in (
            "submit",
            "job",
            "jobs",
            "wait_job",
            "subscribe_events",
            "peers",
            "units",
            "info",
            "health",
        )
    )


# ---------------------------------------------------------------------------------------- fixtures
@dataclass
class Api:
    fake: FakeService
    url: str
    client: Client

    async def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await trio.to_thread.run_sync(fn, *args)

    async def raw(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
        token: str = TOKEN,
    ) -> Any:
        """One exchange, whatever the status (``Client.request``)."""
        client = Client(self.url, token, timeout=10)
        return await trio.to_thread.run_sync(client.request, method, path, body, headers)


async def _start(nursery: trio.Nursery, **kw: Any) -> Api:
    fake = FakeService()
    urls = await nursery.start(serve_api, make_app(fake, TOKEN, **kw), "127.0.0.1", 0)
    assert len(urls) == 1 and urls[0].startswith("http://127.0.0.1:")
    return Api(fake, urls[0], Client(urls[0], TOKEN, timeout=10))


@pytest.fixture
async def api(nursery: trio.Nursery) -> Api:
    return await _start(nursery)


# ---------------------------------------------------------------------------------------- auth
ROUTES = [
    ("POST", "/v1/jobs"),
    ("GET", "/v1/jobs"),
    ("GET", "/v1/jobs/job-1"),
    ("GET", "/v1/jobs/job-1/output"),
    ("GET", "/v1/events"),
    ("GET", "/v1/peers"),
    ("GET", "/v1/units"),
    ("GET", "/v1/node"),
    ("GET", "/v1/health"),
    ("GET", "/v1/openapi.json"),
    ("GET", "/v1/no-such-route"),
    ("DELETE", "/v1/jobs"),
    ("GET", "/"),
]


@pytest.mark.parametrize(("method", "path"), ROUTES)
@pytest.mark.parametrize(
    "auth", [None, "Bearer wrong-token-0123456789", "Basic dXNlcjpwYXNz", f"Bearer {TOKEN}x", "Bearer"]
)
async def test_every_route_refuses_a_missing_or_wrong_token(
    api: Api, method: str, path: str, auth: str | None
) -> None:
    def go() -> http.client.HTTPResponse:
        conn = http.client.HTTPConnection(api.client.host, api.client.port, timeout=10)
        headers = {"Content-Type": "application/json"}
        if auth is not None:
            headers["Authorization"] = auth
        conn.request(
            method,
            path,
            body=b'{"capsule": "compute.reverse"}' if method == "POST" else None,
            headers=headers,
        )
        resp = conn.getresponse()
        resp.body = resp.read()  # type: ignore[attr-defined]
        conn.close()
        return resp

    resp = await trio.to_thread.run_sync(go)
    assert resp.status == 401
    assert resp.getheader("WWW-Authenticate", "").startswith("Bearer")
    doc = json.loads(resp.body)  # type: ignore[attr-defined]
    assert "token" in doc["error"] and TOKEN not in resp.body.decode()  # type: ignore[attr-defined]
    assert api.fake.records == {}  # nothing was submitted


async def test_scheme_is_case_insensitive_and_unknown_routes_404_after_auth(api: Api) -> None:
    resp = await api.raw("GET", "/v1/node", headers={"Authorization": f"bearer {TOKEN}"})
    assert resp.status == 200
    resp = await api.raw("GET", "/v1/no-such-route")
    assert resp.status == 404 and "/v1/no-such-route" in resp.json()["error"]
    resp = await api.raw("DELETE", "/v1/jobs")
    assert resp.status == 405 and "error" in resp.json()


def test_make_app_refuses_a_short_token() -> None:
    with pytest.raises(ConfigError):
        make_app(FakeService(), "short")


# ---------------------------------------------------------------------------------------- jobs
async def test_submit_and_wait_returns_the_finished_record(api: Api) -> None:
    rec = await api.call(api.client.run, SubmitRequest("compute.reverse", input=b"hello", params={"k": 1}))
    assert rec.status == "success" and rec.output == b"olleh" and rec.output_len == 5
    assert rec.executor == "local" and rec.cost == 3 and rec.receipt["job_id"] == rec.job_id
    assert len(rec.replicas) == 1 and rec.finished_ms is not None
    assert api.fake.requests[rec.job_id].params == {"k": 1}


async def test_submit_without_wait_is_202_then_poll_and_fetch_output(api: Api) -> None:
    resp = await api.raw(
        "POST",
        "/v1/jobs",
        json.dumps({"capsule": "test.slow"}).encode(),
        {"Content-Type": "application/json"},
    )
    assert resp.status == 202
    job_id = resp.json()["job_id"]
    assert resp.headers["location"] == f"/v1/jobs/{job_id}" and resp.json()["status"] == "queued"
    rec = await api.call(api.client.job, job_id)
    assert rec.status == "running" and rec.output is None
    resp = await api.raw("GET", f"/v1/jobs/{job_id}/output")
    assert resp.status == 409 and "running" in resp.json()["error"]
    api.fake.finish(job_id, output=b"\x00\x01raw")
    assert await api.call(api.client.output, job_id) == b"\x00\x01raw"
    resp = await api.raw("GET", f"/v1/jobs/{job_id}/output")
    assert (
        resp.headers["content-type"] == "application/octet-stream"
        and resp.headers["x-inos-status"] == "success"
    )
    rec = await api.call(api.client.job, job_id)
    assert rec.status == "success" and rec.output == b"\x00\x01raw"


async def test_wait_holds_the_request_until_the_job_finishes(api: Api) -> None:
    async with trio.open_nursery() as nursery:
        result: list[JobRecord] = []

        async def waiter() -> None:
            result.append(await api.call(api.client.run, SubmitRequest("test.slow")))

        nursery.start_soon(waiter)
        await api.fake.wait_for_jobs(1)
        (job_id,) = api.fake.records
        assert not result
        api.fake.finish(job_id, output=b"late")
    assert result[0].output == b"late"


async def test_job_list_is_newest_first_without_outputs(api: Api) -> None:
    for word in (b"a", b"bb", b"ccc"):
        await api.call(api.client.run, SubmitRequest("compute.reverse", input=word))
    recs = await api.call(api.client.jobs)
    assert [r.output_len for r in recs] == [3, 2, 1]
    assert all(r.output is None for r in recs)
    resp = await api.raw("GET", "/v1/jobs?limit=2")
    assert [j["job_id"] for j in resp.json()["jobs"]] == ["job-3", "job-2"]
    assert "output_b64" not in resp.json()["jobs"][0]
    for bad in ("0", "1001", "x", "-1"):
        resp = await api.raw("GET", f"/v1/jobs?limit={bad}")
        assert resp.status == 400 and resp.json()["field"] == "limit"


async def test_unknown_job_is_404(api: Api) -> None:
    for path in ("/v1/jobs/nope", "/v1/jobs/nope/output"):
        resp = await api.raw("GET", path)
        assert resp.status == 404 and "nope" in resp.json()["error"]
    with pytest.raises(ApiError) as info:
        await api.call(api.client.job, "nope")
    assert info.value.status == 404


async def test_failed_job_has_no_output(api: Api) -> None:
    rec = await api.call(api.client.run, SubmitRequest("test.fail"))
    assert rec.status == "failed" and rec.error == "boom" and rec.output is None
    resp = await api.raw("GET", f"/v1/jobs/{rec.job_id}/output")
    assert resp.status == 404 and "failed" in resp.json()["error"]


async def test_submit_options_reach_the_service(api: Api) -> None:
    req = SubmitRequest(
        "test.describe",
        input=b"xy",
        params={"q": [1, 2]},
        module=b"(module)",
        placement=f"peer:{REMOTE_PEER}",
        replicas=3,
        budget=7,
        timeout_s=2.5,
        prefer="cheapest",
    )
    rec = await api.call(api.client.run, req)
    assert json.loads(rec.output) == {
        "capsule": "test.describe",
        "input_len": 2,
        "params": {"q": [1, 2]},
        "placement": f"peer:{REMOTE_PEER}",
        "replicas": 3,
        "budget": 7,
        "timeout_s": 2.5,
        "prefer": "cheapest",
        "module_len": 8,
        "input_digest": None,
    }
    assert rec.executor == REMOTE_PEER and len(rec.replicas) == 3
    rec = await api.call(api.client.run, SubmitRequest("test.describe", input_digest=b"\x01" * 32))
    assert json.loads(rec.output)["input_digest"] == "01" * 32


# ---------------------------------------------------------------------------------------- bad requests
def _post(doc: Any) -> bytes:
    return doc if isinstance(doc, bytes) else json.dumps(doc).encode()


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (b"{not json", "body"),
        (b"[1, 2]", "body"),
        ({}, "capsule"),
        ({"capsule": 5}, "capsule"),
        ({"capsule": "noDot"}, "capsule"),
        ({"capsule": "compute.reverse", "capsul": 1}, "capsul"),
        ({"capsule": "compute.reverse", "input_b64": "!!!"}, "input_b64"),
        ({"capsule": "compute.reverse", "input_b64": 12}, "input_b64"),
        ({"capsule": "compute.reverse", "input_digest": "abc"}, "input_digest"),
        ({"capsule": "compute.reverse", "input_digest": "00" * 32, "input_b64": "AA=="}, "input_digest"),
        ({"capsule": "compute.reverse", "params": [1]}, "params"),
        ({"capsule": "compute.reverse", "module_b64": "%%"}, "module_b64"),
        ({"capsule": "compute.reverse", "placement": "moon"}, "placement"),
        ({"capsule": "compute.reverse", "placement": "peer:"}, "placement"),
        ({"capsule": "compute.reverse", "replicas": 0}, "replicas"),
        ({"capsule": "compute.reverse", "replicas": 1.5}, "replicas"),
        ({"capsule": "compute.reverse", "replicas": True}, "replicas"),
        ({"capsule": "compute.reverse", "replicas": 17}, "replicas"),
        ({"capsule": "compute.reverse", "budget": -1}, "budget"),
        ({"capsule": "compute.reverse", "budget": "5"}, "budget"),
        ({"capsule": "compute.reverse", "timeout_s": 0}, "timeout_s"),
        ({"capsule": "compute.reverse", "timeout_s": "1"}, "timeout_s"),
        ({"capsule": "compute.reverse", "prefer": "slowest"}, "prefer"),
        ({"capsule": "compute.reverse", "wait": "maybe"}, "wait"),
    ],
)
async def test_bad_submissions_are_400_naming_the_field(api: Api, body: Any, field: str) -> None:
    resp = await api.raw("POST", "/v1/jobs", _post(body), {"Content-Type": "application/json"})
    assert resp.status == 400, resp.body
    doc = resp.json()
    assert doc["field"] == field and field in doc["error"]
    assert api.fake.records == {}


async def test_unknown_capsule_is_400_from_the_service(api: Api) -> None:
    resp = await api.raw(
        "POST", "/v1/jobs", _post({"capsule": "compute.md5"}), {"Content-Type": "application/json"}
    )
    assert resp.status == 400 and "compute.reverse" in resp.json()["error"]


async def test_unsupported_content_type_is_415(api: Api) -> None:
    resp = await api.raw(
        "POST", "/v1/jobs", b"capsule=x", {"Content-Type": "application/x-www-form-urlencoded"}
    )
    assert resp.status == 415 and resp.json()["field"] == "Content-Type"


async def test_body_limit_is_413_with_and_without_content_length(nursery: trio.Nursery) -> None:
    api = await _start(nursery, max_body_bytes=1024)
    big = _post({"capsule": "compute.reverse", "input_b64": base64.b64encode(b"x" * 2048).decode()})
    resp = await api.raw("POST", "/v1/jobs", big, {"Content-Type": "application/json"})
    assert resp.status == 413 and "1024" in resp.json()["error"]

    def chunked() -> tuple[int, dict[str, Any]]:  # no Content-Length: the limit holds while reading
        conn = http.client.HTTPConnection(api.client.host, api.client.port, timeout=10)
        conn.request(
            "POST",
            "/v1/jobs",
            body=iter([big[:600], big[600:]]),
            encode_chunked=True,
            headers={
                "Authorization": f"Bearer {TOKEN}",
                "Content-Type": "application/json",
                "Transfer-Encoding": "chunked",
            },
        )
        r = conn.getresponse()
        out = (r.status, json.loads(r.read()))
        conn.close()
        return out

    status, doc = await trio.to_thread.run_sync(chunked)
    assert status == 413 and "1024" in doc["error"]
    # far more than the socket buffers hold: the node answers 413 and stops reading mid-upload; the
    # client still reports the node's answer, not a broken pipe
    huge = SubmitRequest("compute.reverse", input=b"x" * (24 * 1024 * 1024))
    with pytest.raises(ApiError) as info:
        await api.call(api.client.run, huge)
    assert info.value.status == 413 and "1024-byte limit" in str(info.value)
    assert api.fake.records == {}
    small = SubmitRequest("compute.reverse", input=b"y" * 100)
    assert (await api.call(api.client.run, small)).output == b"y" * 100


# ---------------------------------------------------------------------------------------- capnp
async def test_capnp_submission(api: Api) -> None:
    from inos_node.wire.codec import encode_job_request

    data = encode_job_request(
        JobRequest(
            job_id="ignored",
            library="compute",
            method="reverse",
            input=b"capnp",
            params={"n": 3},
            budget=9,
            deadline_ms=1500,
            replicas=2,
        )
    )
    doc = await api.call(
        lambda: api.client.submit_capnp(data, wait=True, placement="local", prefer="fastest")
    )
    assert doc["status"] == "success" and base64.b64decode(doc["output_b64"]) == b"pnpac"
    req = api.fake.requests[doc["job_id"]]
    assert (req.params, req.budget, req.timeout_s, req.replicas, req.placement, req.prefer) == (
        {"n": 3},
        9,
        1.5,
        2,
        "local",
        "fastest",
    )

    doc = await api.call(lambda: api.client.submit_capnp(data))
    assert doc["status"] == "queued"

    digest = encode_job_request(
        JobRequest(job_id="", library="test", method="describe", input=Digest(b"\x02" * 32))
    )
    doc = await api.call(lambda: api.client.submit_capnp(digest, wait=True))
    assert json.loads(base64.b64decode(doc["output_b64"]))["input_digest"] == "02" * 32


@pytest.mark.parametrize(
    ("body", "query", "field"),
    [
        (b"\x00" * 7, "", "body"),  # not whole words
        (b"\xff" * 64, "", "body"),  # garbage
        (None, "?colour=red", "colour"),
        (None, "?placement=moon", "placement"),
        (None, "?wait=perhaps", "wait"),
    ],
)
async def test_bad_capnp_submissions_are_400(api: Api, body: bytes | None, query: str, field: str) -> None:
    from inos_node.wire.codec import encode_job_request

    if body is None:
        body = encode_job_request(JobRequest(job_id="", library="compute", method="reverse"))
    resp = await api.raw("POST", "/v1/jobs" + query, body, {"Content-Type": "application/x-capnp"})
    assert resp.status == 400 and resp.json()["field"] == field, resp.body


# ---------------------------------------------------------------------------------------- the rest
async def test_peers_units_node_health_openapi(api: Api) -> None:
    assert (await api.call(api.client.peers))[0]["peer_id"] == REMOTE_PEER
    assert (await api.call(api.client.units))[0]["library"] == "compute"
    assert (await api.call(api.client.node))["did"] == "did:inos:fake"
    assert (await api.call(api.client.health)) == {"ready": True, "peers": 1}
    api.fake.ready = False
    resp = await api.raw("GET", "/v1/health")
    assert resp.status == 503 and resp.json()["ready"] is False
    assert (await api.call(api.client.openapi)) == openapi.document()


def test_openapi_describes_exactly_the_routes_of_the_app() -> None:
    app = make_app(FakeService(), TOKEN)
    in_app = {(r.path, m.lower()) for r in app.routes for m in r.methods if m != "HEAD"}  # type: ignore[attr-defined]
    doc = openapi.document()
    in_doc = {(path, method) for path, ops in doc["paths"].items() for method in ops}
    assert in_app == in_doc
    assert doc["openapi"].startswith("3.1")
    # every $ref resolves
    refs = {s for s in json.dumps(doc).split('"') if s.startswith("#/components/schemas/")}
    assert {r.rsplit("/", 1)[1] for r in refs} <= set(doc["components"]["schemas"])


# ---------------------------------------------------------------------------------------- events
async def test_events_stream_a_submitted_job(api: Api) -> None:
    subscribed = trio.Event()
    token = trio.lowlevel.current_trio_token()

    def read_events() -> list[dict[str, Any]]:
        seen: list[dict[str, Any]] = []
        with api.client.events(timeout=10) as stream:
            for event in stream:
                seen.append(event)
                if event["type"] == "subscribed":
                    trio.from_thread.run_sync(subscribed.set, trio_token=token)
                if event["type"] == "finished":
                    return seen
        return seen

    async with trio.open_nursery() as nursery:
        got: list[list[dict[str, Any]]] = []

        async def reader() -> None:
            got.append(await trio.to_thread.run_sync(read_events))

        nursery.start_soon(reader)
        await subscribed.wait()  # the subscription is live: nothing submitted from here on is missed
        rec = await api.call(api.client.run, SubmitRequest("compute.reverse", input=b"ev"))
    events = got[0]
    assert [e["type"] for e in events] == ["subscribed", "submitted", "started", "finished"]
    assert {e["job_id"] for e in events[1:]} == {rec.job_id}
    assert events[-1]["status"] == "success"


async def test_idle_event_streams_get_pings_and_are_bounded(nursery: trio.Nursery) -> None:
    api = await _start(nursery, event_ping_s=0.05, max_event_streams=1)
    opened = trio.Event()
    token = trio.lowlevel.current_trio_token()

    def read_until_ping() -> list[bytes]:
        conn = http.client.HTTPConnection(api.client.host, api.client.port, timeout=10)
        conn.request("GET", "/v1/events", headers={"Authorization": f"Bearer {TOKEN}"})
        resp = conn.getresponse()
        assert resp.status == 200 and (resp.getheader("content-type") or "").startswith("text/event-stream")
        lines = [resp.readline(), resp.readline(), resp.readline()]  # event:, data:, blank
        trio.from_thread.run_sync(opened.set, trio_token=token)
        while (line := resp.readline()) != b": ping\n":
            lines.append(line)
        lines.append(line)
        conn.close()
        return lines

    async with trio.open_nursery() as inner:
        out: list[list[bytes]] = []

        async def reader() -> None:
            out.append(await trio.to_thread.run_sync(read_until_ping))

        inner.start_soon(reader)
        await opened.wait()
        resp = await api.raw("GET", "/v1/events")  # a second stream while the first is open
        assert resp.status == 503 and "limit 1" in resp.json()["error"]
    assert out[0][:2] == [b"event: subscribed\n", b'data: {"type":"subscribed"}\n']
    assert out[0][-1] == b": ping\n"


# ---------------------------------------------------------------------------------------- server
async def test_cancel_shuts_down_promptly_with_open_streams_and_waits(
    caplog: pytest.LogCaptureFixture,
) -> None:
    fake = FakeService()
    token = trio.lowlevel.current_trio_token()
    streaming = trio.Event()
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            (url,) = await nursery.start(serve_api, make_app(fake, TOKEN), "127.0.0.1", 0)
            client = Client(url, TOKEN, timeout=10)

            def hold_stream() -> None:
                try:
                    with client.events() as stream:
                        next(stream)
                        trio.from_thread.run_sync(streaming.set, trio_token=token)
                        for _ in stream:
                            pass
                except ApiError:
                    pass

            def hold_wait() -> None:
                try:
                    client.run(SubmitRequest("test.slow"))
                except ApiError:
                    pass

            nursery.start_soon(trio.to_thread.run_sync, hold_stream)
            nursery.start_soon(trio.to_thread.run_sync, hold_wait)
            await streaming.wait()
            await fake.wait_for_jobs(1)
            t0 = trio.current_time()
            nursery.cancel_scope.cancel()
    assert trio.current_time() - t0 < 5
    with pytest.raises(ApiError, match="no node answering"):
        await trio.to_thread.run_sync(client.node)


async def test_shutdown_event_stops_the_server() -> None:
    shutdown = trio.Event()
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            (url,) = await nursery.start(
                lambda task_status: serve_api(
                    make_app(FakeService(), TOKEN),
                    "127.0.0.1",
                    0,
                    shutdown=shutdown,
                    graceful_timeout_s=0.5,
                    task_status=task_status,
                )
            )
            client = Client(url, TOKEN, timeout=10)
            assert (await trio.to_thread.run_sync(client.health))["ready"]
            shutdown.set()
    with pytest.raises(ApiError, match="no node answering"):
        await trio.to_thread.run_sync(client.node)


async def test_access_log_never_carries_the_token(api: Api, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="inos_node.api.access"):
        await api.call(api.client.node)
        await api.raw("GET", "/v1/peers?x=1", token="wrong-token-0123456789")
        await api.call(api.client.run, SubmitRequest("compute.reverse", input=b"z"))
        # hypercorn logs a request just after sending its last byte: one more exchange makes sure
        # the server has moved past the three above
        await api.call(api.client.health)
    lines = [r.getMessage() for r in caplog.records if r.name == "inos_node.api.access"]
    # hypercorn may log a request twice (once with status "-" when the client closes first)
    for request_line in ('"GET /v1/node 1.1"', '"GET /v1/peers 1.1"', '"POST /v1/jobs 1.1"'):
        assert any(request_line in line for line in lines), (request_line, lines)
    assert any('"GET /v1/node 1.1" 200 ' in line for line in lines)
    assert not any(
        TOKEN in line or "wrong-token" in line or "Bearer" in line or "x=1" in line for line in lines
    )
    assert "}i" not in ACCESS_LOG_FORMAT and "}e" not in ACCESS_LOG_FORMAT  # no header or env atoms


async def test_binding_beyond_loopback_warns(nursery: trio.Nursery, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="inos_node.api"):
        urls = await nursery.start(serve_api, make_app(FakeService(), TOKEN), "0.0.0.0", 0)
    assert urls and any("not loopback" in r.getMessage() for r in caplog.records)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="inos_node.api"):
        await nursery.start(serve_api, make_app(FakeService(), TOKEN), "127.0.0.1", 0)
    assert not any("not loopback" in r.getMessage() for r in caplog.records)
