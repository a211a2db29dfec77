"""``inos testnet``: a testnet of local node processes, no docker.

    DIR/                      (default ./.inos-testnet)
      testnet.json            the state: nodes, their argv, pid + start time, peer ids
      genesis.json            the allocation shared by all nodes (unless --no-genesis)
      node1/ … nodeN/         each node's data dir (identity, token, lock), node.log, node.pid

Ports: nodeK listens for libp2p on 127.0.0.1:(P + K - 1) and serves its API on
127.0.0.1:(P + 1000 + K - 1), P = --base-port (default 4101: node1 is 4101 / 5101).

``up`` creates the identities (``identity.DataDir``), the genesis (``inos genesis create``),
starts node1, then the others with ``--bootstrap`` node1's address, each detached in its own
session (``start_new_session``: a node and its worker processes share a session id, which is how
``down`` finds every process of the testnet).  It returns once every node answers
``/v1/health`` and holds the adverts of all N-1 others (``GET /v1/peers`` long-poll).

A pid is signalled only while ``/proc/PID/stat`` still shows the start time recorded when we
started it: a recycled pid is never ours.  Every pid a node ever had is kept, so that ``down``
can check that no process and no ``/dev/shm/inos-NAME-PID*`` arena of any of them is left.

Waiting on another process (a node becoming healthy, a pid going away) polls it with a
deadline: these are external processes with no event to wait on.

Progress goes to ``progress`` (stderr from the CLI); results are returned to the caller.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from inos_node.errors import InosError

__all__ = ["DEFAULT_ALLOC", "DEFAULT_BASE_PORT", "DEFAULT_DIR", "NodeSpec", "TestnetError", "down", "kill",
           "log_tail", "nodes", "plan", "restart", "status", "up"]

DEFAULT_DIR = Path(".inos-testnet")
DEFAULT_BASE_PORT = 4101
DEFAULT_ALLOC = 1_000_000
API_OFFSET = 1000
STATE_FILE = "testnet.json"
SHM_DIR = "/dev/shm"
SERVED_BY_ALL = "compute.blake3"  # every node serves it: "holds an advert serving it" == "sees the peer"
POLL_S = 0.05


class TestnetError(InosError):
    """A testnet could not be brought up, found, or taken down; the message says which node and why."""


# --------------------------------------------------------------------------- the plan (pure)
@dataclass(frozen=True, slots=True)
class NodeSpec:
    name: str
    data_dir: Path
    p2p_port: int
    api_port: int

    @property
    def api(self) -> str:
        return f"127.0.0.1:{self.api_port}"

    def argv(self, *, bootstrap: tuple[str, ...], genesis: Path | None, arena_mb: int) -> list[str]:
        cmd = [sys.executable, "-m", "inos_node", "node", "run", "--data-dir", str(self.data_dir),
               "--name", self.name, "--listen", f"/ip4/127.0.0.1/tcp/{self.p2p_port}", "--api", self.api,
               "--arena-mb", str(arena_mb)]
        for b in bootstrap:
            cmd += ["--bootstrap", b]
        if genesis is not None:
            cmd += ["--genesis", str(genesis)]
        return cmd


def plan(root: Path, nodes: int, base_port: int) -> list[NodeSpec]:
    """node1..nodeN, their data dirs under ``root`` and their ports (see the module docstring)."""
    if not 1 <= nodes <= 100:
        raise TestnetError(f"--nodes must be in [1, 100], got {nodes}")
    if not (1024 <= base_port and base_port + API_OFFSET + nodes <= 65535):
        raise TestnetError(f"--base-port must leave room for {nodes} nodes and their API ports, "
                           f"got {base_port}")
    return [NodeSpec(f"node{k}", root / f"node{k}", base_port + k - 1, base_port + API_OFFSET + k - 1)
            for k in range(1, nodes + 1)]


# --------------------------------------------------------------------------- processes
def proc_stat(pid: int) -> list[str] | None:
    """The fields of /proc/PID/stat after the command name (index 0 is field 3, the state)."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return raw[raw.rindex(")") + 2:].split()


def start_time(pid: int) -> int | None:
    fields = proc_stat(pid)
    return int(fields[19]) if fields else None


def _ours(pid: int | None, started: int | None) -> bool:
    """Is ``pid`` still the process we started (same start time) and not a zombie?"""
    if not pid:
        return False
    fields = proc_stat(pid)
    return fields is not None and int(fields[19]) == started and fields[0] not in ("Z", "X")


def session_members(sids: set[int]) -> list[int]:
    """Live processes whose session id is one of ``sids`` (a node and its workers)."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = proc_stat(int(entry))
            if fields and int(fields[3]) in sids and fields[0] not in ("Z", "X"):
                out.append(int(entry))
    return out


def _wait_gone(pids: list[int], deadline: float) -> list[int]:
    while True:
        alive = [p for p in pids if (f := proc_stat(p)) is not None and f[0] not in ("Z", "X")]
        if not alive or time.monotonic() >= deadline:
            return alive
        time.sleep(POLL_S)


def port_free(port: int) -> bool:
    """Whether a listener could bind 127.0.0.1:``port`` now."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _say(out: IO[str], line: str) -> None:
    out.write(line + "\n")
    out.flush()


def log_tail(path: Path, lines: int = 30) -> str:
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 64 * 1024))
            data = f.read().decode("utf-8", "replace")
    except FileNotFoundError:
        return "(no log)"
    return "\n".join(data.splitlines()[-lines:])


# --------------------------------------------------------------------------- state
def _load(root: Path) -> dict[str, Any]:
    try:
        return dict(json.loads((root / STATE_FILE).read_text()))
    except FileNotFoundError:
        raise TestnetError(f"no testnet in {root} (start one with `inos testnet up --dir {root}`)") from None
    except (OSError, ValueError) as exc:
        raise TestnetError(f"{root / STATE_FILE} cannot be read: {exc}") from None


def _save(root: Path, state: dict[str, Any]) -> None:
    tmp = root / (STATE_FILE + ".tmp")
    tmp.write_text(json.dumps(state, indent=2))
    os.replace(tmp, root / STATE_FILE)


def _node(state: dict[str, Any], name: str) -> dict[str, Any]:
    for n in state["nodes"]:
        if n["name"] == name:
            return n
    names = ", ".join(n["name"] for n in state["nodes"])
    raise TestnetError(f"no node {name!r} in this testnet (nodes: {names})")


def _client(node: dict[str, Any], timeout: float = 5.0) -> Any:
    from inos_node.client import Client

    return Client(node["api"], (Path(node["data_dir"]) / "api.token").read_text().strip(), timeout=timeout)


def _spawn(node: dict[str, Any]) -> subprocess.Popen[bytes]:
    data_dir = Path(node["data_dir"])
    with (data_dir / "node.log").open("ab") as log:
        proc = subprocess.Popen(node["argv"], stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                start_new_session=True)
    node["pid"], node["start_time"] = proc.pid, start_time(proc.pid)
    node.setdefault("history", []).append([proc.pid, node["start_time"]])
    (data_dir / "node.pid").write_text(f"{proc.pid}\n")
    return proc


def _health(node: dict[str, Any]) -> dict[str, Any] | None:
    from inos_node.client import ApiError

    try:
        return _client(node, timeout=2.0).health()
    except (ApiError, OSError, ValueError):  # not answering (yet): the caller decides what that means
        return None


def _wait_ready(nodes: list[tuple[dict[str, Any], subprocess.Popen[bytes] | None, float]], deadline: float,
                say: Callable[[str], None]) -> None:
    """Wait until each node answers /v1/health ready; fill in its peer id and addresses."""
    pending = list(nodes)
    while pending:
        for item in list(pending):
            node, proc, t0 = item
            exited = proc.poll() if proc is not None else None
            if exited is not None:
                raise TestnetError(f"{node['name']} exited ({exited}) before it was ready; "
                                   "the end of its log:\n" + log_tail(Path(node["data_dir"]) / "node.log"))
            doc = _health(node)
            if doc and doc.get("ready"):
                info = _client(node).node()
                node["peer_id"], node["addresses"] = info["peer_id"], info["addresses"]
                say(f"{node['name']:<8} ready in {time.monotonic() - t0:4.1f} s  "
                    f"peer …{node['peer_id'][-6:]}  api {node['api']}  pid {node['pid']}")
                pending.remove(item)
        if pending and time.monotonic() >= deadline:
            node = pending[0][0]
            raise TestnetError(f"{node['name']} was not healthy in time; the end of its log:\n"
                               + log_tail(Path(node["data_dir"]) / "node.log"))
        if pending:
            time.sleep(POLL_S)


def _wait_connected(nodes: list[dict[str, Any]], deadline: float, say: Callable[[str], None]) -> None:
    want = len(nodes) - 1
    for node in nodes:
        if want == 0:
            break
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TestnetError(f"{node['name']} did not see all {want} peers in time; "
                                   "the end of its log:\n" + log_tail(Path(node["data_dir"]) / "node.log"))
            if _client(node, timeout=left + 10).wait_peers(serving=SERVED_BY_ALL, count=want,
                                                          timeout_s=min(left, 120.0)):
                break
        say(f"{node['name']:<8} sees all {want} peers")


def _genesis(root: Path, dids: list[str], alloc: int, say: Callable[[str], None]) -> Path:
    """Create DIR/genesis.json: ``economy.genesis.create_genesis`` when this installation has the
    economy, else ``inos genesis create`` (the same contract, as a command)."""
    out = root / "genesis.json"
    try:
        from inos_node.economy.genesis import create_genesis, write_genesis
    except ImportError:
        cmd = [sys.executable, "-m", "inos_node", "genesis", "create", "--out", str(out), "--name", root.name,
               "--json", *[a for d in dids for a in ("--alloc", f"{d}={alloc}")]]
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        if p.returncode != 0:
            hint = " (no `inos genesis` here: use --no-genesis)" if "invalid choice" in p.stderr else ""
            raise TestnetError(f"inos genesis create failed{hint}: {p.stderr.strip()[-2000:]}") from None
        network = str(json.loads(p.stdout).get("network_id", "?"))
    else:
        doc, network_id = create_genesis({d: alloc for d in dids}, name=f"testnet-{root.name}")
        write_genesis(out, doc)
        network = network_id.hex()
    say(f"genesis  {alloc} credits to each of {len(dids)} nodes, network {network[:16]}  ({out})")
    return out


# --------------------------------------------------------------------------- commands
def up(root: Path, nodes: int, *, base_port: int = DEFAULT_BASE_PORT, alloc: int = DEFAULT_ALLOC,
       genesis: bool = True, arena_mb: int = 16, timeout_s: float = 120.0,
       progress: IO[str] | None = None) -> dict[str, Any]:
    """Bring up ``nodes`` nodes in ``root``; return the state once all are healthy and connected.

    Raises:
        TestnetError: a port is taken, a testnet already runs in ``root``, the genesis could not be
            made, or a node failed to start or connect (its log's tail is in the message).  What
            was started is stopped again first.
    """
    out = progress or sys.stderr

    def say(line: str) -> None:
        _say(out, line)

    t_start = time.monotonic()
    deadline = t_start + timeout_s
    root = root.resolve()
    specs = plan(root, nodes, base_port)
    if (root / STATE_FILE).exists():
        old = _load(root)
        live = [n["name"] for n in old["nodes"] if _ours(n.get("pid"), n.get("start_time"))]
        if live:
            raise TestnetError(f"a testnet is already running in {root} ({', '.join(live)}): "
                               f"`inos testnet down --dir {root}` first")
        if len(old["nodes"]) != nodes:
            raise TestnetError(f"{root} holds a stopped testnet of {len(old['nodes'])} nodes: use --nodes "
                               f"{len(old['nodes'])}, another --dir, or remove {root}")
    taken = [p for s in specs for p in (s.p2p_port, s.api_port) if not port_free(p)]
    if taken:
        raise TestnetError(f"port(s) {', '.join(map(str, taken))} on 127.0.0.1 are in use "
                           "(another testnet?): choose another --base-port")
    say(f"testnet  {nodes} nodes in {root}: libp2p ports {specs[0].p2p_port}-{specs[-1].p2p_port}, "
        f"API ports {specs[0].api_port}-{specs[-1].api_port}")

    from inos_node.identity import DataDir

    root.mkdir(parents=True, exist_ok=True)
    dids = []
    for s in specs:
        data = DataDir(s.data_dir)
        dids.append(data.identity().did)
        data.token()
    genesis_path: Path | None = None
    if genesis:
        genesis_path = root / "genesis.json"
        if not genesis_path.exists():
            genesis_path = _genesis(root, dids, alloc, say)
    else:
        say("genesis  none (--no-genesis): the free dev network, no ledger")
    state: dict[str, Any] = {"version": 1, "dir": str(root), "base_port": base_port,
                             "genesis": str(genesis_path) if genesis_path else None, "nodes": []}
    for s, did in zip(specs, dids, strict=True):
        state["nodes"].append({"name": s.name, "data_dir": str(s.data_dir), "api": s.api, "did": did,
                               "listen": f"/ip4/127.0.0.1/tcp/{s.p2p_port}", "peer_id": None, "addresses": [],
                               "pid": None, "start_time": None, "history": [], "argv": []})
    try:
        first = state["nodes"][0]
        first["argv"] = specs[0].argv(bootstrap=(), genesis=genesis_path, arena_mb=arena_mb)
        proc = _spawn(first)
        _save(root, state)
        _wait_ready([(first, proc, time.monotonic())], deadline, say)
        boot = next((a for a in first["addresses"] if a.startswith("/ip4/127.0.0.1/")), first["addresses"][0])
        started = []
        for s, node in zip(specs[1:], state["nodes"][1:], strict=True):
            node["argv"] = s.argv(bootstrap=(boot,), genesis=genesis_path, arena_mb=arena_mb)
            started.append((node, _spawn(node), time.monotonic()))
        _save(root, state)
        _wait_ready(started, deadline, say)
        _save(root, state)
        _wait_connected(state["nodes"], deadline, say)
    except (InosError, OSError) as exc:
        _save(root, state)
        say(f"testnet  failed: {exc}\ntestnet  stopping what was started")
        with contextlib.suppress(InosError):
            down(root, progress=out)
        if isinstance(exc, TestnetError):
            raise
        raise TestnetError(f"testnet up failed: {exc}") from exc
    elapsed = time.monotonic() - t_start
    state["up_seconds"] = round(elapsed, 3)
    _save(root, state)
    first = state["nodes"][0]
    say(f"testnet  up: {nodes} nodes healthy and fully connected in {elapsed:.1f} s\n"
        f"         try: inos peers --api {first['api']} --data-dir {first['data_dir']}\n"
        f"              inos testnet status --dir {root}")
    return state


def nodes(root: Path) -> list[dict[str, Any]]:
    """The nodes as recorded in DIR/testnet.json (no process is asked anything)."""
    return list(_load(root.resolve())["nodes"])


def status(root: Path) -> list[dict[str, Any]]:
    """One entry per node: {"name", "pid", "peer_id", "addresses", "api", "data_dir", "healthy",
    "peers", "balance", "jobs"}; pid, peers, jobs and balance are None when unknown."""
    from inos_node.client import ApiError

    state = _load(root.resolve())
    out = []
    for n in state["nodes"]:
        alive = _ours(n.get("pid"), n.get("start_time"))
        entry = {"name": n["name"], "pid": n["pid"] if alive else None, "peer_id": n.get("peer_id"),
                 "addresses": n.get("addresses", []), "api": n["api"], "data_dir": n["data_dir"],
                 "healthy": False, "peers": None, "balance": None, "jobs": None}
        doc = _health(n) if alive else None
        if doc is not None:
            entry["healthy"], entry["peers"] = bool(doc.get("ready")), doc.get("peers")
            client = _client(n)
            with contextlib.suppress(ApiError):
                entry["jobs"] = len(client.jobs(limit=1000))
                resp = client.request("GET", f"/v1/ledger/balance/{n['did']}")
                if resp.status == 200:  # 404: a node without the economy (or on the free dev network)
                    entry["balance"] = resp.json().get("balance")
        out.append(entry)
    return out


def kill(root: Path, name: str) -> int:
    """SIGKILL one node (chaos).  Returns its pid.  Its arena is left behind, as after a crash."""
    root = root.resolve()
    state = _load(root)
    node = _node(state, name)
    if not _ours(node.get("pid"), node.get("start_time")):
        raise TestnetError(f"{name} is not running")
    pid = int(node["pid"])
    os.kill(pid, signal.SIGKILL)
    if _wait_gone([pid], time.monotonic() + 10):
        raise TestnetError(f"{name} (pid {pid}) survived SIGKILL for 10 s")
    node["pid"] = node["start_time"] = None
    _save(root, state)
    return pid


def restart(root: Path, name: str, *, timeout_s: float = 60.0,
            progress: IO[str] | None = None) -> dict[str, Any]:
    """Stop ``name`` if it runs (SIGTERM), start it again with the same dir and flags, wait healthy."""
    out = progress or sys.stderr
    root = root.resolve()
    state = _load(root)
    node = _node(state, name)
    if _ours(node.get("pid"), node.get("start_time")):
        _stop([node], timeout_s=10.0)
    proc = _spawn(node)
    _save(root, state)
    try:
        _wait_ready([(node, proc, time.monotonic())], time.monotonic() + timeout_s,
                    lambda line: _say(out, line))
    finally:
        _save(root, state)
    return node


def _stop(nodes: list[dict[str, Any]], timeout_s: float) -> list[str]:
    """SIGTERM the live nodes, wait, SIGKILL stragglers; returns the names that needed SIGKILL."""
    live = [n for n in nodes if _ours(n.get("pid"), n.get("start_time"))]
    for n in live:
        with contextlib.suppress(ProcessLookupError):
            os.kill(n["pid"], signal.SIGTERM)
    left = set(_wait_gone([n["pid"] for n in live], time.monotonic() + timeout_s))
    killed = []
    for n in live:
        if n["pid"] in left and _ours(n["pid"], n["start_time"]):
            with contextlib.suppress(ProcessLookupError):
                os.kill(n["pid"], signal.SIGKILL)
            killed.append(n["name"])
        n["pid"] = n["start_time"] = None
    _wait_gone(list(left), time.monotonic() + 10)
    return killed


def arena_files(prefix: str) -> list[str]:
    """The arena file named exactly ``prefix`` in /dev/shm and its doorbells (``prefix.bell.*``),
    not those of a longer name (inos-node1-12 must not match inos-node1-123)."""
    out = []
    for path in glob.glob(os.path.join(SHM_DIR, glob.escape(prefix) + "*")):
        rest = os.path.basename(path)[len(prefix):]
        if rest == "" or rest.startswith(".bell."):
            out.append(path)
    return out


def _arenas(nodes: list[dict[str, Any]]) -> Iterator[tuple[str, str]]:
    """(prefix, path) of every arena file (and doorbell) any pid of these nodes ever had."""
    for n in nodes:
        for pid, _ in n.get("history", []):
            prefix = f"inos-{n['name']}-{pid}"
            for path in arena_files(prefix):
                yield prefix, path


def down(root: Path, *, timeout_s: float = 15.0, progress: IO[str] | None = None) -> dict[str, Any]:
    """Stop every node (SIGTERM, then SIGKILL after ``timeout_s``), then make sure that no process
    of any of their sessions and no arena of theirs is left.  Idempotent.

    Raises:
        TestnetError: something of the testnet's could not be removed (named in the message).
    """
    out = progress or sys.stderr
    root = root.resolve()
    state = _load(root)
    nodes = state["nodes"]
    live = [n["name"] for n in nodes if _ours(n.get("pid"), n.get("start_time"))]
    killed = _stop(nodes, timeout_s)
    _save(root, state)
    # a session id is ours while its leader is gone or still the process we started (a pid in use
    # as a session id is never recycled, so members of a gone leader's session are its workers)
    sids = {pid for n in nodes for pid, st in n.get("history", [])
            if (f := proc_stat(pid)) is None or f[0] in ("Z", "X") or int(f[19]) == st}
    stray = session_members(sids)  # worker processes of nodes that were SIGKILLed
    for pid in stray:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    _wait_gone(stray, time.monotonic() + 10)
    from inos_node.arena import sweep_stale

    for prefix, _ in list(_arenas(nodes)):
        sweep_stale(SHM_DIR, prefix)  # removes only arenas whose owner is gone
    left_procs = session_members(sids)
    left_shm = sorted({path for _, path in _arenas(nodes)})
    if left_procs or left_shm:
        raise TestnetError(f"down left processes {left_procs} and shared memory {left_shm} behind")
    summary = {"stopped": live, "sigkilled": killed, "strays_killed": stray}
    _say(out, f"testnet  down: stopped {len(live)} node(s)"
         + (f", SIGKILLed {', '.join(killed)}" if killed else "")
         + (f", killed {len(stray)} stray worker(s)" if stray else "")
         + "; no processes or shared memory left")
    return summary
