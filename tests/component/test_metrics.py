"""``GET /metrics`` and the dashboard's routes over a fake node: the real app, the real hypercorn
server on 127.0.0.1:0, a stdlib client in a thread; plus the pure parts of ``inos_node.api.metrics``.

The exposition is checked with a small parser of the Prometheus text format (0.0.4) written here
from the format's rules, so that a scrape that Prometheus would reject fails the test.
"""

from __future__ import annotations

import http.client
import math
import re
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest
import trio

from inos_node.api import dashboard, metrics
from inos_node.api.app import make_app
from inos_node.api.server import serve_api
from inos_node.api.service import JobRecord
from inos_node.errors import InosInternalError

TOKEN = "metrics-token-0123456789abcdef"


# ---------------------------------------------------------------------------------------- the parser
_SAMPLE = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"(,|$)')


@dataclass
class Parsed:
    types: dict[str, str] = field(default_factory=dict)
    helps: dict[str, str] = field(default_factory=dict)
    samples: list[tuple[str, dict[str, str], float]] = field(default_factory=list)

    def value(self, name: str, **labels: str) -> float:
        found = [v for n, lab, v in self.samples if n == name and lab == labels]
        assert len(found) == 1, "expected exactly one sample with these labels"
        return found[0]

    def of(self, name: str) -> list[tuple[dict[str, str], float]]:
        return [(lab, v) for n, lab, v in self.samples if n == name]


def _unescape(text: str) -> str:
    return re.sub(r"\\(.)", lambda m: {"n": "\n", "\\": "\\", '"': '"'}[m.group(1)], text)


def parse_exposition(text: str) -> Parsed:
    """Parse text format 0.0.4 strictly: HELP/TYPE once per family and before its samples, the
    samples of a family together, valid names, labels and values, histogram invariants."""
    assert text.endswith("\n"), "the exposition must end with a newline"
    out = Parsed()
    current = ""
    closed: set[str] = set()
    for line in text.splitlines():
        if line.startswith("# HELP ") or line.startswith("# TYPE "):
            kind, name, rest = line[2:6], *line[7:].split(" ", 1)
            table = out.helps if kind == "HELP" else out.types
            assert name not in table, "a family is declared twice"
            table[name] = _unescape(rest)
            if kind == "TYPE":
                assert rest in ("counter", "gauge", "histogram", "summary", "untyped"), "unknown metric type"
            if name != current:
                assert name not in closed, "a family's lines are not together"
                if current:
                    closed.add(current)
                current = name
            continue
        assert not line.startswith("#"), "only HELP and TYPE comments are written"
        m = _SAMPLE.fullmatch(line)
        assert m is not None, "a sample line does not parse"
        name, raw_labels, raw_value = m.groups()
        family = name
        if out.types.get(current) == "histogram":
            family = re.sub(r"_(bucket|sum|count)$", "", name)
        assert family == current, "a sample outside its family (or before its TYPE)"
        labels: dict[str, str] = {}
        pos = 0
        while raw_labels and pos < len(raw_labels):
            lm = _LABEL.match(raw_labels, pos)
            assert lm is not None, "a label does not parse"
            assert lm.group(1) not in labels, "a label is repeated"
            labels[lm.group(1)] = _unescape(lm.group(2))
            pos = lm.end()
        value = float(raw_value.replace("+Inf", "inf").replace("-Inf", "-inf"))
        if out.types[current] == "counter":
            assert value >= 0 and name.endswith("_total"), "counters are non-negative and end in _total"
        out.samples.append((name, labels, value))
    for name, kind in out.types.items():
        if kind == "histogram":
            _check_histogram(out, name)
    return out


def _check_histogram(p: Parsed, name: str) -> None:
    series: dict[tuple[tuple[str, str], ...], list[tuple[float, float]]] = {}
    for labels, value in p.of(f"{name}_bucket"):
        key = tuple(sorted((k, v) for k, v in labels.items() if k != "le"))
        series.setdefault(key, []).append((float(labels["le"].replace("+Inf", "inf")), value))
    for key, buckets in series.items():
        bounds = [b for b, _ in buckets]
        assert bounds == sorted(bounds) and bounds[-1] == math.inf, "buckets ascend and end with +Inf"
        counts = [c for _, c in buckets]
        assert counts == sorted(counts), "bucket counts are cumulative"
        assert p.value(f"{name}_count", **dict(key)) == counts[-1], "_count equals the +Inf bucket"


# ---------------------------------------------------------------------------------------- the fake
def _record(job_id: str, capsule: str, status: str, executor: str, *, ms: int = 40) -> JobRecord:
    now = int(time.time() * 1000)
    finished = status not in ("queued", "running")
    return JobRecord(job_id=job_id, capsule=capsule, status=status, executor=executor, output_len=8,
                     metrics={"input_bytes": 100}, submitted_ms=now - ms,
                     finished_ms=now if finished else None)


class FakeNode:
    """Enough of a NodeService for /metrics, /v1/vitals and the dashboard page."""

    local = None  # no engine: the boids stream answers 503

    def __init__(self) -> None:
        self.records: list[JobRecord] = []
        self.epochs = {"boids": 0, "registry": 1}

    def jobs(self, limit: int = 100) -> list[JobRecord]:
        return list(reversed(self.records))[:limit]

    def vitals(self) -> dict[str, Any]:
        return {"name": "fake", "peer_id": "12D3KooWFake", "load": 0.25, "uptime_s": 3.5,
                "jobs": {"running": 1, "waiting": 0, "limit": 64, "completed": 7, "failed": 1},
                "served": {"running": 0, "total": 2},
                "arena": {"name": "inos-fake", "size": 1 << 24, "used": 4096, "free": (1 << 24) - 8192,
                          "blocks": 1, "processes": 2},
                "epochs": dict(self.epochs),
                "units": [{"unit": "boids", "state": "running", "restarts": 1, "handled": 3}]}

    def metrics_snapshot(self) -> dict[str, Any]:
        return {**self.vitals(), "node": {"peer_id": "12D3KooWFake", "name": 'fa"ke\\', "version": "0.1.0"},
                "peers": {"known": 3, "connected": 2, "verified": 2},
                "gossip": {"published": 5, "delivered": {"inos/adverts/1": 9}, "errors": {"validator": 1}}}


Answer = tuple[int, dict[str, str], bytes]


@dataclass
class Api:
    node: FakeNode
    host: str
    port: int

    async def get(self, path: str, token: str | None = TOKEN, method: str = "GET") -> Answer:
        def go() -> Answer:
            conn = http.client.HTTPConnection(self.host, self.port, timeout=10)
            conn.request(method, path, headers={"Authorization": f"Bearer {token}"} if token else {})
            resp = conn.getresponse()
            body = resp.read()
            conn.close()
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, body

        return await trio.to_thread.run_sync(go)


@asynccontextmanager
async def open_api(registry: metrics.Registry | None = None) -> AsyncIterator[Api]:
    node = FakeNode()
    async with trio.open_nursery() as nursery:
        app = make_app(node, TOKEN, metrics_registry=registry)  # type: ignore[arg-type]  # a partial fake
        (url,) = await nursery.start(serve_api, app, "127.0.0.1", 0)
        host, port = url.removeprefix("http://").rsplit(":", 1)
        yield Api(node, host, int(port))
        nursery.cancel_scope.cancel()


# ---------------------------------------------------------------------------------------- /metrics
async def test_metrics_need_the_token_and_parse_as_prometheus_text() -> None:
    async with open_api() as api:
        status, _, _ = await api.get("/metrics", token=None)
        assert status == 401
        status, _, _ = await api.get("/metrics", token="wrong-token-0123456789abcdef")
        assert status == 401
        api.node.records += [
            _record("j1", "compute.blake3", "success", "local", ms=3),
            _record("j2", "compute.blake3", "success", "12D3KooWPeerB", ms=120),
            _record("j3", "math.matmul", "failed", "12D3KooWPeerB,12D3KooWPeerC", ms=70_000),
            _record("j4", "compute.blake3", "running", "local"),
        ]
        status, headers, body = await api.get("/metrics")
        assert status == 200 and headers["content-type"] == metrics.CONTENT_TYPE
        p = parse_exposition(body.decode())
        assert p.value("inos_capsules_total", library="compute", method="blake3", status="success",
                       locality="local") == 1
        assert p.value("inos_capsules_total", library="compute", method="blake3", status="success",
                       locality="remote") == 1
        assert p.value("inos_capsules_total", library="math", method="matmul", status="failed",
                       locality="replicated") == 1
        assert len(p.of("inos_capsules_total")) == 3  # the running job is not counted yet
        assert p.value("inos_job_latency_seconds_bucket", locality="local", le="0.005") == 1
        assert p.value("inos_job_latency_seconds_bucket", locality="remote", le="0.1") == 0
        assert p.value("inos_job_latency_seconds_bucket", locality="remote", le="0.25") == 1
        assert p.value("inos_job_latency_seconds_bucket", locality="replicated", le="60") == 0
        assert p.value("inos_job_latency_seconds_bucket", locality="replicated", le="+Inf") == 1
        assert p.value("inos_job_latency_seconds_sum", locality="remote") == pytest.approx(0.12)
        assert p.value("inos_capsule_payload_bytes_total", direction="out", locality="local") == 8
        assert p.value("inos_peers", state="connected") == 2
        assert p.value("inos_gossip_delivered_total", topic="inos/adverts/1") == 9
        assert p.value("inos_arena_bytes", kind="used") == 4096
        assert p.value("inos_arena_epochs_total", epoch="registry") == 1
        assert p.value("inos_unit_restarts_total", unit="boids") == 1
        info = {"peer_id": "12D3KooWFake", "name": 'fa"ke\\', "version": "0.1.0"}  # escaped and back
        assert p.of("inos_node_info") == [(info, 1)]
        assert p.types["inos_job_latency_seconds"] == "histogram"
        assert all(p.helps[name] for name in p.types)

        # counters only grow: j4 finishes, and j1..j3 are not counted a second time
        api.node.records[3] = _record("j4", "compute.blake3", "success", "local", ms=3)
        api.node.epochs["boids"] = 50
        p = parse_exposition((await api.get("/metrics"))[2].decode())
        assert p.value("inos_capsules_total", library="compute", method="blake3", status="success",
                       locality="local") == 2
        assert p.value("inos_job_latency_seconds_count", locality="local") == 2
        assert p.value("inos_arena_epochs_total", epoch="boids") == 50


async def test_ledger_samples_come_from_a_registered_provider() -> None:
    registry = metrics.Registry()
    registry.register_provider(lambda: [
        metrics.Sample("inos_ledger_blocks_total", 12, kind="counter", help="Blocks in the local ledger."),
        metrics.Sample("inos_ledger_balance", 700, {"did": "did:inos:a"}, help="Balances."),
        metrics.Sample("inos_ledger_balance", 300, {"did": "did:inos:b"}),
    ])
    async with open_api(registry) as api:
        p = parse_exposition((await api.get("/metrics"))[2].decode())
    assert p.types["inos_ledger_blocks_total"] == "counter" and p.value("inos_ledger_blocks_total") == 12
    assert p.types["inos_ledger_balance"] == "gauge"
    assert {lab["did"]: v for lab, v in p.of("inos_ledger_balance")} == {"did:inos:a": 700, "did:inos:b": 300}


def test_job_counters_forget_only_jobs_the_book_no_longer_holds() -> None:
    counters = metrics.JobCounters()
    book = [_record(f"j{i}", "system.echo", "success", "local") for i in range(5)]
    counters.observe(book)
    counters.observe(book)
    assert counters.capsules[("system", "echo", "success", "local")] == 5
    book = book[3:] + [_record("j5", "system.echo", "timeout", "")]  # j0..j2 evicted, j5 new
    counters.observe(book)
    assert counters.capsules[("system", "echo", "success", "local")] == 5
    assert counters.capsules[("system", "echo", "timeout", "none")] == 1
    assert counters._counted == {"j3", "j4", "j5"}  # memory bounded by the book


def test_render_escapes_and_refuses_bad_names() -> None:
    fam = metrics.Family("inos_x", "gauge", "a help\nwith \\ and a newline").add(1.5, {"v": 'a"b\\c\nd'})
    text = metrics.render([fam])
    p = parse_exposition(text)
    assert p.helps["inos_x"] == "a help\nwith \\ and a newline"
    assert p.value("inos_x", v='a"b\\c\nd') == 1.5
    with pytest.raises(InosInternalError, match="declared twice"):
        metrics.render([fam, metrics.Family("inos_x", "gauge", "again")])
    with pytest.raises(InosInternalError, match="metric name"):
        metrics.Family("inos-bad", "gauge", "x")
    with pytest.raises(InosInternalError, match="label name"):
        metrics.Family("inos_y", "gauge", "x").add(1, {"bad-label": "v"})
    odd = metrics.Family("inos_z", "gauge", "z").add(math.inf).add(math.nan, {"k": "v"})
    assert metrics.render([odd]) == '# HELP inos_z z\n# TYPE inos_z gauge\ninos_z +Inf\ninos_z{k="v"} NaN\n'


def test_rate_window_measures_against_the_oldest_kept_sample() -> None:
    w = metrics.RateWindow(window_s=10.0, min_spacing_s=0.5)
    assert w.observe(100.0, {"boids": 0}) == {}  # nothing to compare with yet
    assert w.observe(102.0, {"boids": 50}) == {"boids": 25.0}
    assert w.observe(102.1, {"boids": 52}) == {"boids": pytest.approx(52 / 2.1)}  # not kept: too close
    assert w.observe(104.0, {"boids": 100, "new": 1}) == {"boids": 25.0}  # "new" has no base yet
    assert w.observe(112.5, {"boids": 300}) == {"boids": pytest.approx(250 / 10.5)}  # 100.0 dropped
    assert len(w._samples) <= w._samples.maxlen  # type: ignore[operator]


# ---------------------------------------------------------------------------------------- dashboard
async def test_dashboard_page_is_public_but_its_data_is_not() -> None:
    async with open_api() as api:
        status, headers, body = await api.get("/dashboard", token=None)
        assert status == 200 and headers["content-type"].startswith("text/html")
        assert b'<script src="/dashboard/dashboard.js"' in body
        assert "script-src 'self'" in headers["content-security-policy"]
        assert headers["referrer-policy"] == "no-referrer" and headers["cache-control"] == "no-store"
        for asset, media in (("dashboard.js", "text/javascript"), ("dashboard.css", "text/css")):
            status, headers, body = await api.get(f"/dashboard/{asset}", token=None)
            assert status == 200 and headers["content-type"].startswith(media) and body
        # only the exact page and assets, and only GET, skip the token check
        for path, method in (("/dashboard/other.js", "GET"), ("/dashboard/", "GET"), ("/dashboard", "POST"),
                             ("/v1/vitals", "GET"), ("/v1/boids/stream", "GET"), ("/metrics", "GET")):
            status, _, _ = await api.get(path, token=None, method=method)
            assert status == 401
        status, _, body = await api.get("/dashboard/other.js")
        assert status == 404


async def test_vitals_add_epoch_rates_and_the_showcase() -> None:
    async with open_api() as api:
        import json

        first = json.loads((await api.get("/v1/vitals"))[2])
        assert first["arena"]["name"] == "inos-fake" and first["epoch_rates"] == {}
        assert first["boids"] == {"viewers": 0, "frames_sent": 0, "count": 1500, "fps": 25.0}
        status, _, body = await api.get("/v1/boids/stream")  # the fake has no engine
        assert status == 503 and b"not up" in body


def test_boids_frames_quantise_positions_depth_and_heading() -> None:
    import numpy as np

    state = np.zeros((6, 3), np.float32)
    state[0] = [0.0, 5.0, 9.999]  # x
    state[1] = [10.0, 2.5, 0.0]  # y (10.0 == the world size: clipped)
    state[2] = [0.0, 5.0, 10.0]  # z
    state[3] = [1.0, 0.0, -1.0]  # vx
    state[4] = [0.0, 1.0, 0.0]  # vy
    frame = dashboard.encode_frame(7, state, 10.0)
    magic, number, n, reserved = dashboard.FRAME_HEADER.unpack_from(frame)
    assert (magic, number, n, reserved) == (b"BOID", 7, 3, 0) and len(frame) == 16 + 6 * 3
    x = np.frombuffer(frame, "<u2", 3, 16)
    y = np.frombuffer(frame, "<u2", 3, 22)
    z = np.frombuffer(frame, "u1", 3, 28)
    heading = np.frombuffer(frame, "u1", 3, 31)
    assert x.tolist() == [0, 32767, 65528] and y.tolist() == [65535, 16383, 0]
    assert z.tolist() == [0, 127, 255]
    assert heading.tolist() == [127, 191, 255]  # east, south (+y), west
