"""``inos testnet`` as an operator runs it: up, status, a capsule sent to another node, kill,
restart, down, and nothing left behind (processes, /dev/shm arenas)."""

from __future__ import annotations

import base64
import json
import os
import subprocess
from pathlib import Path

import pytest

from inos_node.testing.procs import free_port

pytestmark = pytest.mark.integration


def _inos(inos_cmd: list[str], *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("INOS_")}
    return subprocess.run([*inos_cmd, *args], capture_output=True, text=True, timeout=timeout, env=env)


def _status(inos_cmd: list[str], root: Path) -> dict[str, dict[str, object]]:
    p = _inos(inos_cmd, "testnet", "status", "--dir", str(root), "--json")
    return {n["name"]: n for n in json.loads(p.stdout)}


def _leftovers(state: dict[str, object]) -> tuple[list[int], list[str]]:
    pids = [pid for n in state["nodes"] for pid, _ in n["history"]]  # type: ignore[index,union-attr]
    sessions = set(pids)
    alive = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                raw = Path(f"/proc/{entry}/stat").read_text()
            except (FileNotFoundError, ProcessLookupError):
                continue
            fields = raw[raw.rindex(")") + 2:].split()
            if int(fields[3]) in sessions and fields[0] != "Z":
                alive.append(int(entry))
    names = [f"inos-{n['name']}-{pid}" for n in state["nodes"] for pid, _ in n["history"]]  # type: ignore[index,union-attr]
    shm = [f for f in os.listdir("/dev/shm") if any(f == x or f.startswith(x + ".") for x in names)]
    return alive, shm


def test_testnet_lifecycle(inos_cmd: list[str], tmp_path: Path) -> None:
    root = tmp_path / "tn"
    # Below the kernel's ephemeral range (32768+), where outgoing connections take their ports;
    # a port some other program holds by chance is refused clearly by `up`: try another base.
    for _ in range(5):
        base = 20000 + free_port() % 10000
        up = _inos(inos_cmd, "testnet", "up", "--nodes", "3", "--dir", str(root), "--base-port", str(base))
        if "are in use" not in up.stderr:
            break
    try:
        assert up.returncode == 0, up.stderr
        assert "healthy and fully connected" in up.stderr and up.stdout == ""
        state = json.loads((root / "testnet.json").read_text())
        nodes = _status(inos_cmd, root)
        assert sorted(nodes) == ["node1", "node2", "node3"]
        for n in nodes.values():
            assert n["healthy"] is True and n["peers"] == 2 and n["jobs"] == 0, n
            assert isinstance(n["pid"], int) and str(n["peer_id"]).startswith("12D3KooW")
        assert nodes["node1"]["api"] == f"127.0.0.1:{base + 1000}"
        assert (root / "node2" / "node.log").stat().st_size > 0 and (root / "genesis.json").exists()

        # a capsule submitted on node1, forced onto node2
        api1, node2 = str(nodes["node1"]["api"]), str(nodes["node2"]["peer_id"])
        sub = subprocess.run(
            [*inos_cmd, "submit", "compute.blake3", "--input", "-", "--json", "--api", api1,
             "--data-dir", str(root / "node1"), "--peer", node2],
            input="testnet", capture_output=True, text=True, timeout=60,
            env={k: v for k, v in os.environ.items() if not k.startswith("INOS_")})
        assert sub.returncode == 0, sub.stderr
        doc = json.loads(sub.stdout)
        assert doc["status"] == "success" and doc["executor"] == nodes["node2"]["peer_id"]
        assert len(base64.b64decode(doc["output_b64"])) == 32

        killed = _inos(inos_cmd, "testnet", "kill", "node3", "--dir", str(root))
        assert killed.returncode == 0, killed.stderr
        after = _status(inos_cmd, root)
        assert after["node3"]["healthy"] is False and after["node3"]["pid"] is None
        assert after["node1"]["healthy"] is True and after["node1"]["jobs"] == 1

        again = _inos(inos_cmd, "testnet", "restart", "node3", "--dir", str(root))
        assert again.returncode == 0, again.stderr
        restarted = _status(inos_cmd, root)["node3"]
        assert restarted["healthy"] is True and restarted["pid"] not in (None, nodes["node3"]["pid"])
        assert restarted["peer_id"] == nodes["node3"]["peer_id"]  # same data dir, same identity

        logs = _inos(inos_cmd, "testnet", "logs", "node3", "--dir", str(root), "-n", "5")
        assert logs.returncode == 0 and 0 < len(logs.stdout.splitlines()) <= 5
    finally:
        down = _inos(inos_cmd, "testnet", "down", "--dir", str(root))
    assert down.returncode == 0, down.stderr
    state = json.loads((root / "testnet.json").read_text())
    assert len(state["nodes"][2]["history"]) == 2  # node3 ran twice: both generations were checked
    assert _leftovers(state) == ([], [])
    second = _inos(inos_cmd, "testnet", "down", "--dir", str(root))
    assert second.returncode == 0 and "stopped 0 node(s)" in second.stderr


def test_up_refuses_a_taken_port_and_bad_node_names(inos_cmd: list[str], tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        p = _inos(inos_cmd, "testnet", "up", "--nodes", "1", "--dir", str(tmp_path), "--base-port", str(port),
                  "--no-genesis")
    assert p.returncode == 1 and f"port(s) {port} on 127.0.0.1 are in use" in p.stderr
    assert not (tmp_path / "testnet.json").exists()
    p = _inos(inos_cmd, "testnet", "status", "--dir", str(tmp_path / "none"))
    assert p.returncode == 1 and "no testnet in" in p.stderr
