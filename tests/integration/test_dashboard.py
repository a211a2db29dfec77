"""The dashboard for real: the boids showcase over a real arena, and the page in headless Chromium
against three real nodes.

Chromium is driven over the DevTools protocol (CDP) with ``trio-websocket``: the test navigates to
``/dashboard#token=...``, then waits for the page to show what it should with ``Runtime.evaluate``
of a promise that a ``MutationObserver`` resolves (event-driven: no polling, no sleeps), under a
deadline.  Debian's ``chromium`` package is needed; without it these tests are skipped
(``.ci/run`` installs it).
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import struct
import subprocess
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

from inos_node.api import dashboard
from inos_node.api.app import make_app
from inos_node.api.server import serve_api
from inos_node.api.service import SubmitRequest
from inos_node.node import LocalNode, NodeConfig
from inos_node.testing.procs import NodeProc, start_node

pytestmark = pytest.mark.integration

TOKEN = "dashboard-token-0123456789abcdef"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="Debian's chromium is not installed (apt-get install -y chromium)"
)


# ---------------------------------------------------------------------------------------- boids
class _Viewer:
    """A blocking boids-stream client (run its methods in a thread)."""

    def __init__(self, host: str, port: int) -> None:
        self.conn = http.client.HTTPConnection(host, port, timeout=20)
        self.conn.request("GET", "/v1/boids/stream", headers={"Authorization": f"Bearer {TOKEN}"})
        self.resp = self.conn.getresponse()
        assert self.resp.status == 200 and self.resp.getheader("content-type") == "application/octet-stream"

    def frame(self) -> tuple[int, int]:
        magic, number, n, _ = dashboard.FRAME_HEADER.unpack(self.resp.read(dashboard.FRAME_HEADER.size))
        assert magic == b"BOID"
        assert len(self.resp.read(6 * n)) == 6 * n
        return number, n

    def frames(self, k: int) -> list[int]:
        return [self.frame()[0] for _ in range(k)]

    def close(self) -> None:
        self.conn.close()


class _LocalOnly:
    """A NodeService reduced to what the boids stream uses: the local node."""

    def __init__(self, local: LocalNode) -> None:
        self.local = local


async def test_boids_showcase_runs_while_watched_and_hands_over_between_viewers() -> None:
    show = dashboard.BoidsShow(count=300, fps=30)
    config = NodeConfig(name=f"dash{os.getpid()}", process_workers=0, arena_size=16 * 1024 * 1024)
    async with LocalNode(config).open() as local, trio.open_nursery() as nursery:
        app = make_app(_LocalOnly(local), TOKEN, boids=show)  # type: ignore[arg-type]  # a partial service
        (url,) = await nursery.start(serve_api, app, "127.0.0.1", 0)
        host, port = url.removeprefix("http://").rsplit(":", 1)
        idx = local.layout["idxBoids"]
        run = trio.to_thread.run_sync
        with trio.fail_after(60):
            a = await run(_Viewer, host, int(port))
            first_a = await run(a.frames, 3)
            b = await run(_Viewer, host, int(port))
            first_b = await run(b.frames, 3)
            assert show.viewers == 2 and show.driving
            await run(a.close)  # the viewer whose driver steps the flock leaves: b's driver takes over
            more_b = await run(b.frames, 5)
            await run(b.close)
            await show.wait_idle()
        assert not show.driving and show.viewers == 0
        for seq in (first_a, first_b + more_b):
            assert seq == sorted(seq) and len(set(seq)) == len(seq), "frame numbers only grow"
        assert first_b[0] > first_a[0], "the second viewer joins the same flock, it does not restart it"
        assert 0 < max(more_b) <= local.arena.epoch(idx), "frames are the arena's boids epochs"
        c = await run(_Viewer, host, int(port))  # watching again resumes it
        assert (await run(c.frame))[1] == 300
        await run(c.close)
        with trio.fail_after(30):
            await show.wait_idle()
        nursery.cancel_scope.cancel()


# ---------------------------------------------------------------------------------------- chromium
class Cdp:
    """A minimal DevTools-protocol client on one page target."""

    def __init__(self, ws: Any) -> None:
        self._ws = ws
        self._id = 0

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        self._id += 1
        await self._ws.send_message(json.dumps({"id": self._id, "method": method, "params": params}))
        while True:
            msg = json.loads(await self._ws.get_message())
            if msg.get("id") == self._id:
                if "error" in msg:
                    raise AssertionError(f"CDP {method} failed: {msg['error']}")
                return dict(msg["result"])
            # events (we subscribed to none that matter) are skipped

    async def wait_for(self, expression: str, deadline_s: float = 60.0) -> Any:
        """The value of a page ``expression`` once it is truthy, re-evaluated on every DOM change."""
        script = f"""new Promise((resolve) => {{
            const check = () => {{ let v; try {{ v = ({expression}); }} catch (e) {{ v = null; }}
                                  if (v) {{ observer.disconnect(); resolve(v); }} }};
            const observer = new MutationObserver(check);
            observer.observe(document, {{subtree: true, childList: true, attributes: true,
                                         characterData: true}});
            check();
        }})"""
        with trio.fail_after(deadline_s):
            result = await self.call("Runtime.evaluate", expression=script, awaitPromise=True,
                                     returnByValue=True)
        assert "exceptionDetails" not in result, "the page expression threw"
        return result["result"].get("value")

    async def value(self, expression: str) -> Any:
        result = await self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        return result["result"].get("value")


async def _pump_lines(stream: Any, lines: deque[str], found: trio.Event, holder: list[str]) -> None:
    """Drain chromium's stderr (so it never blocks on a full pipe); note the DevTools URL."""
    buf = b""
    async for chunk in stream:
        buf += chunk
        *complete, buf = buf.split(b"\n")
        for raw in complete:
            line = raw.decode(errors="replace")
            lines.append(line)
            if line.startswith("DevTools listening on ") and not found.is_set():
                holder.append(line.removeprefix("DevTools listening on ").strip())
                found.set()


@asynccontextmanager
async def open_chromium(profile: Path) -> AsyncIterator[Cdp]:
    from trio_websocket import open_websocket_url

    cmd = [CHROMIUM, "--headless", "--disable-gpu", "--no-first-run", "--no-default-browser-check",
           "--remote-debugging-port=0", f"--user-data-dir={profile}", "--window-size=1400,1100",
           "--hide-scrollbars", "about:blank"]
    if os.geteuid() == 0:
        cmd.insert(1, "--no-sandbox")  # chromium refuses to run its sandbox as root
    lines: deque[str] = deque(maxlen=200)
    found, holder = trio.Event(), []
    async with trio.open_nursery() as nursery:
        proc = await trio.lowlevel.open_process(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                                stderr=subprocess.PIPE)
        try:
            nursery.start_soon(_pump_lines, proc.stderr, lines, found, holder)
            with trio.fail_after(60):
                await found.wait()
            port = int(holder[0].split("/")[2].rsplit(":", 1)[1])

            def targets() -> list[dict[str, Any]]:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
                conn.request("GET", "/json/list")
                doc = json.loads(conn.getresponse().read())
                conn.close()
                return [t for t in doc if t.get("type") == "page"]

            (page,) = await trio.to_thread.run_sync(targets)
            url = page["webSocketDebuggerUrl"]
            async with open_websocket_url(url, max_message_size=64 * 1024 * 1024) as ws:
                yield Cdp(ws)
        except BaseException:
            print("\n".join(lines))  # noqa: T201 - chromium's own log, to explain a failure
            raise
        finally:
            proc.terminate()
            with trio.move_on_after(10) as waited:
                await proc.wait()
            if waited.cancelled_caught:
                proc.kill()
                await proc.wait()
            nursery.cancel_scope.cancel()


@pytest.fixture
def testnet(tmp_path: Path) -> Any:
    nodes: list[NodeProc] = []
    try:
        nodes.append(start_node(tmp_path / "nodes", "node1"))
        for name in ("node2", "node3"):
            nodes.append(start_node(tmp_path / "nodes", name, bootstrap=(nodes[0].address,)))
        client = nodes[0].client()
        for other in nodes[1:]:  # node1 holds both adverts (a long poll on the node, no sleeps)
            assert client.wait_peers(peer_id=other.peer_id, serving="compute.blake3", count=2, timeout_s=60.0)
        yield nodes
    finally:
        for node in nodes:
            node.stop()


def _js(value: str) -> str:
    return json.dumps(value)


@needs_chromium
async def test_dashboard_in_chromium_shows_peers_jobs_vitals_and_boids(testnet: list[NodeProc],
                                                                       tmp_path: Path) -> None:
    node1, node2, node3 = testnet
    async with open_chromium(tmp_path / "chromium") as cdp:
        await cdp.call("Page.enable")
        # without a token the page asks for one; a wrong one is refused by the node
        await cdp.call("Page.navigate", url=f"http://{node1.api}/dashboard")
        assert await cdp.wait_for("!document.querySelector('#login').hidden && "
                                  "document.querySelector('#status').dataset.state === 'login'") is True
        await cdp.value("document.querySelector('#token-input').value = 'wrong-token-0123456789abcdef';"
                        "document.querySelector('#login-form').requestSubmit()")
        error = await cdp.wait_for("!document.querySelector('#login-error').hidden && "
                                   "document.querySelector('#login-error').textContent")
        assert "refused" in error
        # the token in the fragment (never sent to the server) opens the dashboard
        await cdp.call("Page.navigate", url=f"http://{node1.api}/dashboard#token={node1.token}")

        # the token left the URL for session storage, and the live job stream is subscribed
        assert await cdp.wait_for("!!document.querySelector('#status[data-state=live]')") is True
        assert await cdp.value("location.hash") == ""
        assert await cdp.value("sessionStorage.getItem('inos.dashboard.token')") == node1.token

        # the peer graph and table name both peers with the last 6 characters of their ids
        for peer in (node2, node3):
            label = f"{peer.name} …{peer.peer_id[-6:]}"
            graph = f"document.querySelector('#graph g[data-peer-id={_js(peer.peer_id)}] text')?.textContent"
            assert await cdp.wait_for(f"{graph} === {_js(label)} && {graph}")
            row = f"document.querySelector('#peers tr[data-peer-id={_js(peer.peer_id)}]')?.textContent || ''"
            text = await cdp.wait_for(f"({row}).includes('connected') && {row}")
            assert peer.name in text and peer.peer_id[-6:] in text
        me = f"document.querySelector('#graph g[data-peer-id={_js(node1.peer_id)}] text')?.textContent"
        assert await cdp.value(me) == f"node1 …{node1.peer_id[-6:]}"

        # a capsule submitted now, run on node2, shows up live with its executor and receipt
        req = SubmitRequest("compute.blake3", b"seen on the dashboard", placement=f"peer:{node2.peer_id}")
        record = await trio.to_thread.run_sync(node1.client().run, req)
        assert record.ok and record.executor == node2.peer_id
        row = f"document.querySelector('#jobs tr[data-job-id={_js(record.job_id)}]')?.textContent || ''"
        text = await cdp.wait_for(f"({row}).includes('success') && ({row}).includes('receipt') && {row}")
        assert "compute.blake3" in text and f"node2 …{node2.peer_id[-6:]}" in text and "remote" in text

        # boids frames drawn on the canvas, vital signs with the boids epoch's rate, the dev ledger
        frames = await cdp.wait_for("Number(document.querySelector('#boids').dataset.frames) >= 10 && "
                                    "Number(document.querySelector('#boids').dataset.frames)")
        assert frames >= 10
        boids_rate = "Number(document.querySelector('#vitals tr[data-epoch=boids]')?.dataset.rate)"
        rate = await cdp.wait_for(f"{boids_rate} > 0 && {boids_rate}")
        assert 0 < rate <= 60
        vitals = await cdp.value("document.querySelector('#vitals').textContent")
        assert "arena" in vitals and "inos-node1" in vitals and "boids: running" in vitals
        assert await cdp.wait_for("document.querySelector('[data-ledger=none]')?.textContent")  \
            == "no ledger (dev network)"

        shot = await cdp.call("Page.captureScreenshot", format="png", captureBeyondViewport=True)
        png = __import__("base64").b64decode(shot["data"])
        assert png.startswith(b"\x89PNG") and struct.unpack(">II", png[16:24])[0] >= 1000
        await trio.Path(tmp_path / "dashboard.png").write_bytes(png)
        if os.environ.get("INOS_DASHBOARD_SCREENSHOT"):  # keep a copy for people to look at
            await trio.Path(os.environ["INOS_DASHBOARD_SCREENSHOT"]).write_bytes(png)
