"""End to end: the docker compose testnet (compose.yaml) as a newcomer runs it.

    pytest -m e2e tests/e2e          (needs a docker engine and Compose; `bash .ci/run` runs it)

One testnet per module, under a unique compose project name (and a free host port for node1's
API), so runs never collide with a developer's own `docker compose up`. The steps run in order:
build the image (deploy/build-image.sh; skipped when INOS_E2E_SKIP_BUILD=1 because .ci/run has
just built it), `up -d` and wait for every node to be healthy; capsules on node1 forced to node2
and node3; the three ledgers agree and conserve the supply; node2 is killed while capsules are in
flight and they finish on node3; node3 is cut off the network and healed, and the ledgers
converge; `down -v` leaves nothing behind.

Waiting is polling the containers' state or the nodes' CLI with a deadline (they are external
processes); nothing sleeps to synchronise.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1800)]  # the first test also builds the image

ROOT = Path(__file__).resolve().parents[2]
NODES = ("node1", "node2", "node3")
ALLOC = 1_000_000  # compose.yaml's init: --alloc
UP_DEADLINE_S = 240  # three nodes on a loaded 2-core machine
CONVERGE_DEADLINE_S = 120


def _compose_cmd() -> list[str]:
    """`docker compose` (v2) when present, else `docker-compose` (v1.29+, Debian bookworm's)."""
    if shutil.which("docker") is None:
        pytest.fail("the e2e tests need docker (a running engine and Compose)")
    if subprocess.run(["docker", "compose", "version"], capture_output=True, check=False).returncode == 0:
        return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    pytest.fail("the e2e tests need Docker Compose: `docker compose` or `docker-compose`")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def poll(what: str, check: Callable[[], Any], deadline_s: float, every_s: float = 1.0) -> Any:
    """Call ``check`` until it returns something truthy; fail naming ``what`` and the last value."""
    end = time.monotonic() + deadline_s
    last: Any = None
    while True:
        last = check()
        if last:
            return last
        if time.monotonic() > end:
            pytest.fail(f"timed out after {deadline_s:.0f} s waiting for {what}; last: {last!r}")
        time.sleep(every_s)  # polling an external process's state, with a deadline


@dataclass
class ComposeNet:
    project: str
    compose: list[str]
    env: dict[str, str]
    peer_ids: dict[str, str] = field(default_factory=dict)
    dids: dict[str, str] = field(default_factory=dict)
    _containers: dict[str, str] = field(default_factory=dict)

    def run(self, *args: str, input: bytes | None = None, check: bool = True,
            timeout: float = 300) -> subprocess.CompletedProcess[bytes]:
        proc = subprocess.run([*args], input=input, capture_output=True, env=self.env, cwd=ROOT,
                              timeout=timeout, check=False)
        if check and proc.returncode != 0:
            pytest.fail(f"{' '.join(args)} exited {proc.returncode}:\n{proc.stdout.decode()[-2000:]}\n"
                        f"{proc.stderr.decode()[-2000:]}")
        return proc

    def dc(self, *args: str, **kw: Any) -> subprocess.CompletedProcess[bytes]:
        return self.run(*self.compose, "-p", self.project, *args, **kw)

    def container(self, node: str) -> str:
        """The node's container id (kept: `kill` and `start` keep the container)."""
        if node not in self._containers:
            cid = self.dc("ps", "-q", node).stdout.decode().strip()
            if not cid:
                return ""
            self._containers[node] = cid
        return self._containers[node]

    def inos(self, node: str, *args: str, input: bytes | None = None, check: bool = True) -> Any:
        """`inos ARGS --json` inside ``node`` (docker exec: quicker than compose exec); its JSON."""
        flags = ["-i"] if input is not None else []
        proc = self.run("docker", "exec", *flags, self.container(node), "inos", *args, "--json",
                        input=input, check=check)
        return json.loads(proc.stdout) if proc.returncode == 0 else None

    def health(self) -> dict[str, str]:
        states = {}
        for node in NODES:
            cid = self.container(node)
            state = self.run("docker", "inspect", "-f", "{{.State.Status}}/{{.State.Health.Status}}", cid,
                             check=False) if cid else None
            states[node] = state.stdout.decode().strip() if state and state.returncode == 0 else "absent"
        return states

    def wait_healthy(self, nodes: tuple[str, ...] = NODES) -> None:
        poll(f"{', '.join(nodes)} healthy", lambda: all(self.health()[n] == "running/healthy" for n in nodes)
             or None, UP_DEADLINE_S)

    def logs(self) -> str:
        return self.dc("logs", "--no-color", "--tail", "60", check=False).stdout.decode(errors="replace")


@pytest.fixture(scope="module")
def testnet() -> Iterator[ComposeNet]:
    compose = _compose_cmd()
    env = {**os.environ, "INOS_API_PORT": str(_free_port())}
    net = ComposeNet(project=f"inos-e2e-{uuid.uuid4().hex[:8]}", compose=compose, env=env)
    if os.environ.get("INOS_E2E_SKIP_BUILD") != "1":  # the script shows its progress (pytest -s)
        built = subprocess.run(["bash", "deploy/build-image.sh"], cwd=ROOT, env=env, timeout=1800,
                               check=False)
        assert built.returncode == 0, "deploy/build-image.sh failed (its output is above)"
    try:
        t0 = time.monotonic()
        net.dc("up", "-d")
        net.wait_healthy()
        sys.stdout.write(f"\ne2e: `up -d` to all {len(NODES)} nodes healthy: {time.monotonic() - t0:.1f} s\n")
        for node in NODES:
            ident = net.inos(node, "id")
            net.peer_ids[node], net.dids[node] = ident["peer_id"], ident["did"]
        yield net
    except BaseException:
        sys.stdout.write(net.logs())
        raise
    finally:
        net.dc("down", "-v", "--remove-orphans", check=False)


def submit(net: ComposeNet, data: bytes, capsule: str, *placement: str, node: str = "node1",
           params: tuple[str, ...] = ()) -> dict[str, Any]:
    """`docker compose exec -T NODE inos submit CAPSULE --input - ... --json`, as the README shows."""
    args = [f"--param={p}" for p in params]
    proc = net.dc("exec", "-T", node, "inos", "submit", capsule, "--input", "-", *placement, *args, "--json",
                  input=data)
    return json.loads(proc.stdout)


def _ledgers(net: ComposeNet, nodes: tuple[str, ...] = NODES) -> dict[str, dict[str, Any]]:
    return {n: net.inos(n, "ledger", "verify") for n in nodes}


def _converged(net: ComposeNet, nodes: tuple[str, ...] = NODES) -> dict[str, dict[str, Any]] | None:
    docs = _ledgers(net, nodes)
    hashes = {d["state_hash"] for d in docs.values() if d and d.get("ok")}
    return docs if len(hashes) == 1 and all(d and d.get("ok") for d in docs.values()) else None


def _assert_conserved(net: ComposeNet, node: str) -> None:
    supply = net.inos(node, "ledger", "supply")
    parts = {k: v for k, v in supply.items()
             if k != "minted" and isinstance(v, int) and not isinstance(v, bool)}
    assert supply["minted"] == ALLOC * len(NODES), supply
    assert sum(parts.values()) == supply["minted"], f"{node}: supply not conserved: {supply}"


def test_capsules_forced_to_node2_and_node3(testnet: ComposeNet) -> None:
    net = testnet
    for node in ("node2", "node3"):
        data = f"hello {node} {uuid.uuid4()}".encode()
        echo = submit(net, data, "system.echo", "--peer", net.peer_ids[node])
        assert echo["status"] == "success", echo
        assert base64.b64decode(echo["output_b64"]) == data
        assert echo["executor"] == net.peer_ids[node]
        receipt = echo["receipt"]
        assert receipt["worker"] == net.peer_ids[node] and receipt["requester"] == net.peer_ids["node1"]
        assert receipt["capsule"] == "system.echo" and receipt["input_digest"] == receipt["output_digest"]

        blob = os.urandom(300_000)  # above the inline limit: travels by digest over /inos/blob
        digest = submit(net, blob, "compute.sha256", "--peer", net.peer_ids[node])
        assert digest["status"] == "success", digest
        assert base64.b64decode(digest["output_b64"]) == hashlib.sha256(blob).digest()
        assert digest["executor"] == digest["receipt"]["worker"] == net.peer_ids[node]


def test_ledgers_agree_and_workers_are_paid(testnet: ComposeNet) -> None:
    """Every node's ledger replays to the same state, the supply is conserved, node2 and node3 earned."""
    net = testnet
    docs = poll("the three ledgers to agree", lambda: _converged(net), CONVERGE_DEADLINE_S)
    assert all(d["ok"] for d in docs.values()), docs
    for node in NODES:
        _assert_conserved(net, node)

    def balances() -> dict[str, int] | None:
        got = {n: net.inos("node1", "ledger", "balance", net.dids[n])["balance"] for n in NODES}
        return got if got["node2"] > ALLOC and got["node3"] > ALLOC else None

    paid = poll("node2 and node3 to be paid for their capsules", balances, CONVERGE_DEADLINE_S)
    assert paid["node1"] < ALLOC, paid


def test_kill_node2_while_capsules_are_in_flight(testnet: ComposeNet) -> None:
    """Capsules placed by the decider (--remote) on node2 finish on node3 when node2 is killed.

    Two long capsules forced to node3 first make it the busier peer, so the decider places the
    --remote ones on node2; node2 is killed while they run, and node1 retries them on node3.
    """
    net = testnet
    slow = ("quality=11", "lgwin=24")  # brotli at quality 11: seconds per MiB

    def in_flight(count: int) -> Callable[[], bool]:
        return lambda: sum(1 for j in net.inos("node1", "jobs") if j["capsule"] == "compute.brotli_compress"
                           and j["status"] in ("queued", "running")) >= count

    with ThreadPoolExecutor(max_workers=6) as pool:
        blockers = [pool.submit(submit, net, os.urandom(6 << 20), "compute.brotli_compress", "--peer",
                                net.peer_ids["node3"], params=slow) for _ in range(2)]
        poll("two capsules running on node3", in_flight(2), 120, every_s=0.2)
        inputs = [os.urandom(3 << 20) for _ in range(4)]
        futures = [pool.submit(submit, net, data, "compute.brotli_compress", "--remote", params=slow)
                   for data in inputs]
        poll("the --remote capsules in flight", in_flight(2 + len(inputs)), 120, every_s=0.2)
        net.dc("kill", "node2")
        results = [f.result(timeout=600) for f in futures]
        assert all(b.result(timeout=600)["status"] == "success" for b in blockers)

    statuses = [(r["status"], r.get("error")) for r in results]
    assert [s for s, _ in statuses] == ["success"] * len(inputs), statuses
    executors = [r["executor"] for r in results]
    assert set(executors) <= {net.peer_ids["node2"], net.peer_ids["node3"]}, executors
    assert net.peer_ids["node3"] in executors, "no capsule was retried on node3 after node2 was killed"
    for r in results:
        assert r["receipt"]["worker"] == r["executor"]

    # The books stay consistent on the survivors; node2 comes back and catches up.
    poll("node1 and node3 ledgers to agree", lambda: _converged(net, ("node1", "node3")), CONVERGE_DEADLINE_S)
    _assert_conserved(net, "node1")
    net.dc("start", "node2")
    net.wait_healthy()
    poll("all three ledgers to agree after node2's restart", lambda: _converged(net), CONVERGE_DEADLINE_S)


def test_partitioned_node3_converges_after_healing(testnet: ComposeNet) -> None:
    net = testnet
    cid = net.container("node3")
    inspect = json.loads(net.run("docker", "inspect", cid).stdout)[0]
    network = next(iter(inspect["NetworkSettings"]["Networks"]))
    net.run("docker", "network", "disconnect", network, cid)
    try:
        # node1 and node2 trade while node3 cannot hear them.
        echo = submit(net, b"while node3 is away", "system.echo", "--peer", net.peer_ids["node2"])
        assert echo["status"] == "success", echo
        poll("node1 and node2 ledgers to agree", lambda: _converged(net, ("node1", "node2")),
             CONVERGE_DEADLINE_S)
        cut_off = net.inos("node3", "ledger", "verify")
        moved_on = net.inos("node1", "ledger", "verify")
        assert cut_off["ok"] and cut_off["state_hash"] != moved_on["state_hash"], (cut_off, moved_on)
    finally:
        # compose's service name is a network alias: give it back, or the others cannot find node3.
        net.run("docker", "network", "connect", "--alias", "node3", network, cid)
    docs = poll("node3's ledger to converge after healing", lambda: _converged(net), CONVERGE_DEADLINE_S)
    assert len({d["state_hash"] for d in docs.values()}) == 1
    for node in NODES:
        _assert_conserved(net, node)


def test_down_leaves_nothing_behind(testnet: ComposeNet) -> None:
    net = testnet
    net.dc("down", "-v", "--remove-orphans")
    label = f"label=com.docker.compose.project={net.project}"
    left = {
        "containers": net.run("docker", "ps", "-aq", "--filter", label).stdout.split(),
        "volumes": net.run("docker", "volume", "ls", "-q", "--filter", label).stdout.split(),
        "networks": net.run("docker", "network", "ls", "-q", "--filter", label).stdout.split(),
        "named": [v for v in net.run("docker", "volume", "ls", "-q").stdout.decode().split()
                  if v.startswith(net.project)],
    }
    assert left == {"containers": [], "volumes": [], "networks": [], "named": []}, left
