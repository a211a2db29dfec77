"""``inos bench deploy``: what it costs to start nodes, keep them idle and bring up a testnet,
each figure beside a baseline measured in the same run.

Start (``runs`` = 5, 3 with --quick; each run spawns, waits, stops, then checks for leftovers):
  node_start_to_api_ready_ms    median wall time from spawning ``python -m inos_node node run --data-dir D
                                --listen /ip4/127.0.0.1/tcp/0 --api 127.0.0.1:PORT`` (D fresh and empty, so
                                identity and token creation are included; PORT free; default settings:
                                64 MiB arena, one worker process) to the first HTTP 200 from
                                ``GET /v1/health`` with the bearer token from D/api.token
  node_start_to_api_ready_max_ms   the slowest of those runs
  node_ready_line_ms            median time to the node's ``{"event": "ready"}`` line on stdout (same runs)
  node_stop_ms                  median time from SIGTERM to the node's exit (same runs)
  python_start_ms               baseline: spawning ``python -c pass`` (same interpreter) until it exits
  python_import_node_ms         baseline: spawning ``python -c "import inos_node.daemon"`` until it exits
  python_import_node_full_ms    baseline: the same importing every module a node loads before it is
                                ready (cli, cli_node, daemon, mesh, api.app, api.server)
                                (baselines: median of ``runs``, interleaved with the node starts; "until
                                it exits" includes the interpreter's teardown, ~0.1 s after these
                                imports, which a node's start does not)

Idle memory, measured on the testnet nodes below (``inos testnet up`` settings: a genesis, so a
ledger; 16 MiB arena; one worker process) once all are up, after ~2 s idle:
  idle_rss_mb_per_node          median over nodes of VmRSS (/proc/PID/status) of the node process plus
                                the VmRSS of every descendant process (its capsule worker processes).
                                RSS counts shared pages (libraries, the shared-memory arena mapped by the
                                node and its workers) once per process, so this is an upper bound
  idle_rss_mb_per_node_max      the largest node
  idle_rss_node_mb / idle_rss_workers_mb   median of the node process alone / of its descendants
  workers_per_node              descendant processes per node (the fewest any node had): 0 on an
                                idle node, whose worker processes start with the first job that
                                needs one (``engine.workers``, lazy in the daemon)
  idle_pss_mb_per_node          median of the same processes' Pss (/proc/PID/smaps_rollup): shared pages
                                split among the processes that map them, so nodes sum to the machine's
  python_idle_rss_mb            baseline: VmRSS of an idle ``python -c`` blocked on stdin
  python_import_node_rss_mb     baseline: the same after ``import inos_node.daemon``

Testnet (``--nodes N``, default 10, 3 with --quick; ``inos_node.testnet``, as ``inos testnet up`` runs it,
in a temp dir, base port below the kernel's ephemeral range):
  testnet_nodes                 N
  testnet_up_s                  wall time of ``testnet.up``: identities, genesis, N node processes, until
                                every node is healthy and holds the adverts of all N-1 others
  testnet_healthy / testnet_peers_min   after the idle period: nodes answering healthy, the fewest peers
                                any node reports (N-1 when fully connected)
  testnet_down_s                ``testnet.down``: SIGTERM to every node, until none of their processes
                                and arenas is left

  left_processes / left_shm     processes (of the sessions this bench started) and /dev/shm arenas still
                                there after every stop: both empty, or the bench cleaned up after a bug

``targets`` holds the issue's targets, ``meets_targets`` the verdict (start: the median; memory: the
largest node; testnet: only for 10 nodes, else null), ``ratios`` each figure over its baseline.

The node processes get this process's environment without ``INOS_*`` variables (the defaults);
the testnet nodes inherit it whole, as they do from ``inos testnet up``.
"""

from __future__ import annotations

import io
import json
import os
import random
import selectors
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from inos_node.errors import InosError
from inos_node.testnet import (
    API_OFFSET,
    arena_files,
    log_tail,
    port_free,
    proc_stat,
    session_members,
    start_time,
)

__all__ = ["DeployBenchError", "run_deploy"]

TARGETS = {"node_start_to_api_ready_ms": 1500, "idle_rss_mb_per_node": 150, "testnet_up_s_10_nodes": 30}
IDLE_S = 2.0  # the measured condition "idle for a while", not a synchronisation
POLL_S = 0.01  # an external process has no event to wait on: poll it, with a deadline
START_DEADLINE_S = 60.0
SHM_DIR = "/dev/shm"
_FULL_IMPORTS = ("inos_node.cli", "inos_node.cli_node", "inos_node.daemon", "inos_node.mesh",
                 "inos_node.api.app", "inos_node.api.server")


class DeployBenchError(InosError):
    """A node or testnet of the bench did not start, answer or stop; the message says which and why."""


# --------------------------------------------------------------------------- /proc
def _proc_entry(pid: int) -> tuple[int, int, int] | None:
    """(ppid, session id, start time in clock ticks) of a live process; None if gone or a zombie."""
    fields = proc_stat(pid)  # fields[0] is the state, field 3 of stat(5)
    if fields is None or fields[0] in ("Z", "X"):
        return None
    return int(fields[1]), int(fields[3]), int(fields[19])


def _proc_table() -> dict[int, tuple[int, int, int]]:
    """pid -> ``_proc_entry`` of every live process."""
    table = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (row := _proc_entry(int(entry))) is not None:
            table[int(entry)] = row
    return table


def _descendants(pid: int, table: dict[int, tuple[int, int, int]]) -> list[int]:
    out, frontier = [], [pid]
    while frontier:
        parent = frontier.pop()
        kids = [p for p, (ppid, _, _) in table.items() if ppid == parent]
        out += kids
        frontier += kids
    return out


def _sessions_of(leaders: dict[int, int | None]) -> list[int]:
    """Live members of the sessions these leaders (pid -> start time) opened.  A session is ours
    while its leader is gone or still the process we started: a pid in use as a session id is
    never recycled, so members of a gone leader's session are its workers (testnet.down's rule)."""
    sids = {pid for pid, started in leaders.items() if (row := _proc_entry(pid)) is None or row[2] == started}
    return sorted(session_members(sids))


def _kb(pid: int, path: str, key: str) -> int:
    """The ``key:`` line of /proc/PID/<path> in kB (0 when the process is gone)."""
    try:
        for line in Path(f"/proc/{pid}/{path}").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


def _mb(kb: float) -> float:
    return round(kb / 1024.0, 1)


def _arenas(prefixes: list[str]) -> list[str]:
    """Arena files (and their doorbells) of these prefixes (``testnet.arena_files``)."""
    return sorted(path for prefix in prefixes for path in arena_files(prefix))


def _leftovers(leaders: dict[int, int | None], prefixes: list[str],
               deadline: float) -> tuple[list[int], list[str]]:
    """Processes of these leaders' sessions and arenas with these prefixes still there at ``deadline``;
    what is found is killed or swept (the bench leaves nothing behind) and returned for the report."""
    while (procs := _sessions_of(leaders)) and time.monotonic() < deadline:
        time.sleep(POLL_S)  # a node's workers exit just after it
    for pid in procs:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    shm = _arenas(prefixes)
    if shm:
        from inos_node.arena import sweep_stale

        for prefix in prefixes:
            sweep_stale(SHM_DIR, prefix)  # only arenas whose owner is gone
    return procs, shm


# --------------------------------------------------------------------------- spawning
def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("INOS_")}


def _spawn_ms(argv: list[str], env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    done = subprocess.run(argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, timeout=120)
    elapsed = time.perf_counter() - t0
    if done.returncode != 0:
        raise DeployBenchError(f"the baseline {argv[1:]} exited with {done.returncode}: "
                               f"{done.stderr.decode(errors='replace')[-2000:]}")
    return elapsed * 1000.0


def _idle_python_rss_kb(code: str, env: dict[str, str]) -> int:
    """VmRSS of a python that ran ``code`` and now blocks on stdin."""
    script = code + "; import sys; sys.stdout.write('up\\n'); sys.stdout.flush(); sys.stdin.read()"
    with subprocess.Popen([sys.executable, "-c", script], env=env, stdin=subprocess.PIPE,
                          stdout=subprocess.PIPE) as proc:
        assert proc.stdout is not None and proc.stdin is not None
        if proc.stdout.readline() != b"up\n":
            raise DeployBenchError(f"the baseline python ({code!r}) exited with {proc.wait()} "
                                   "before it was up")
        rss = _kb(proc.pid, "status", "VmRSS")
        proc.stdin.close()
        proc.wait(timeout=30)
    return rss


def _read_token(data_dir: Path) -> str | None:
    try:
        token = (data_dir / "api.token").read_text().strip()
    except FileNotFoundError:
        return None
    return token if len(token) >= 16 else None  # created but not written yet


def _is_ready_line(line: bytes) -> bool:
    try:
        doc = json.loads(line)
    except ValueError:
        return False
    return isinstance(doc, dict) and doc.get("event") == "ready"


def _start_once(base: Path, i: int, env: dict[str, str]) -> dict[str, Any]:
    """Spawn a node on a fresh data dir, wait for health 200, stop it, check it left nothing."""
    from inos_node.client import ApiError, Client
    from inos_node.testing.procs import free_port

    name = f"start{i}"
    data_dir, log_path = base / name, base / f"{name}.log"
    api = f"127.0.0.1:{free_port()}"
    argv = [sys.executable, "-m", "inos_node", "node", "run", "--data-dir", str(data_dir),
            "--listen", "/ip4/127.0.0.1/tcp/0", "--api", api]
    with log_path.open("wb") as log:
        t0 = time.perf_counter()
        proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log,
                                start_new_session=True)
    started = start_time(proc.pid)
    assert proc.stdout is not None
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    ready_line_s: float | None = None
    eof = False
    status: int | None = None
    try:
        deadline = t0 + START_DEADLINE_S
        while True:
            token = _read_token(data_dir)
            if token is not None:
                try:
                    status = Client(api, token, timeout=2.0).request("GET", "/v1/health").status
                except ApiError:
                    status = None  # not listening yet
                if status == 200:
                    api_ready_s = time.perf_counter() - t0
                    break
            if proc.poll() is not None:
                raise DeployBenchError(f"node {name} exited ({proc.returncode}) before its API was ready; "
                                       f"the end of its log:\n{log_tail(log_path)}")
            if time.perf_counter() >= deadline:
                raise DeployBenchError(f"node {name} did not answer /v1/health with 200 within "
                                       f"{START_DEADLINE_S:.0f} s (last answer: {status}); "
                                       f"the end of its log:\n{log_tail(log_path)}")
            if ready_line_s is None and not eof:
                if sel.select(POLL_S):  # the ready line, or the poll interval
                    line = proc.stdout.readline()
                    eof = not line
                    if line and _is_ready_line(line):
                        ready_line_s = time.perf_counter() - t0
            else:
                time.sleep(POLL_S)
    finally:
        sel.close()
        t_stop = time.perf_counter()
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        stop_s = time.perf_counter() - t_stop
        proc.stdout.close()
        left_procs, left_shm = _leftovers({proc.pid: started}, [f"inos-{name}-{proc.pid}"],
                                          time.monotonic() + 10)
    return {"api_ready_ms": api_ready_s * 1000.0,
            "ready_line_ms": None if ready_line_s is None else ready_line_s * 1000.0,
            "stop_ms": stop_s * 1000.0, "left_processes": left_procs, "left_shm": left_shm}


def _bench_start(report: dict[str, Any], runs: int, base: Path, say: Callable[[str], None]) -> None:
    env = _env()
    full = "import " + ", ".join(_FULL_IMPORTS)
    py, imp, imp_full, starts = [], [], [], []
    for i in range(runs):  # interleaved, so drift hits the node and its baselines alike
        say(f"node start {i + 1}/{runs} beside python start and imports")
        py.append(_spawn_ms([sys.executable, "-c", "pass"], env))
        imp.append(_spawn_ms([sys.executable, "-c", "import inos_node.daemon"], env))
        imp_full.append(_spawn_ms([sys.executable, "-c", full], env))
        starts.append(_start_once(base, i, env))
    api_ready = [s["api_ready_ms"] for s in starts]
    lines = [s["ready_line_ms"] for s in starts if s["ready_line_ms"] is not None]
    report["runs"] = runs
    report["node_start_to_api_ready_ms"] = round(statistics.median(api_ready), 1)
    report["node_start_to_api_ready_max_ms"] = round(max(api_ready), 1)
    report["node_ready_line_ms"] = round(statistics.median(lines), 1) if lines else None
    report["node_stop_ms"] = round(statistics.median(s["stop_ms"] for s in starts), 1)
    report["python_start_ms"] = round(statistics.median(py), 1)
    report["python_import_node_ms"] = round(statistics.median(imp), 1)
    report["python_import_node_full_ms"] = round(statistics.median(imp_full), 1)
    report["left_processes"] += [p for s in starts for p in s["left_processes"]]
    report["left_shm"] += [p for s in starts for p in s["left_shm"]]


# --------------------------------------------------------------------------- testnet
def _ports_free(base_port: int, nodes: int) -> bool:
    ports = [base_port + k for k in range(nodes)] + [base_port + API_OFFSET + k for k in range(nodes)]
    return all(port_free(port) for port in ports)


def _pick_base_port(nodes: int) -> int:
    """A base port whose 2N ports are free, below the kernel's ephemeral port range, where
    outgoing connections take their ports."""
    rng = random.Random()
    for _ in range(50):
        base = rng.randrange(20000, 30000)
        if _ports_free(base, nodes):
            return base
    raise DeployBenchError(f"found no free run of {nodes} ports (and their API ports) in 20000-31100")


def _node_memory(pid: int, table: dict[int, tuple[int, int, int]]) -> dict[str, float]:
    kids = _descendants(pid, table)
    node_kb = _kb(pid, "status", "VmRSS")
    kids_kb = sum(_kb(k, "status", "VmRSS") for k in kids)
    pss_kb = sum(_kb(p, "smaps_rollup", "Pss") for p in [pid, *kids])
    return {"rss_kb": node_kb + kids_kb, "node_kb": node_kb, "kids_kb": kids_kb, "pss_kb": pss_kb,
            "workers": len(kids)}


def _bench_testnet(report: dict[str, Any], nodes: int, base: Path, say: Callable[[str], None],
                   out: IO[str]) -> None:
    from inos_node import testnet

    env = _env()
    say("baseline RSS: an idle python, and one that imported inos_node.daemon")
    report["python_idle_rss_mb"] = _mb(_idle_python_rss_kb("pass", env))
    report["python_import_node_rss_mb"] = _mb(_idle_python_rss_kb("import inos_node.daemon", env))

    attempts = 5
    for attempt in range(attempts):
        root = base / f"testnet{attempt}"  # fresh: identities and genesis are part of the figure
        base_port = _pick_base_port(nodes)
        say(f"testnet up: {nodes} nodes, base port {base_port}")
        t0 = time.perf_counter()
        try:
            state = testnet.up(root, nodes, base_port=base_port, progress=out)
        except testnet.TestnetError:
            # `up` stopped what it started.  Another program took one of our ports between our check
            # and the node's bind: try another base; anything else is the node's failure.
            if attempt + 1 < attempts and not _ports_free(base_port, nodes):
                say("a port was taken meanwhile: another base port")
                continue
            raise
        break
    report["testnet_nodes"] = nodes
    report["testnet_up_s"] = round(time.perf_counter() - t0, 2)
    try:
        say(f"idle {IDLE_S:.0f} s, then memory of every node and its workers")
        time.sleep(IDLE_S)
        table = _proc_table()
        mem = [_node_memory(int(n["pid"]), table) for n in state["nodes"]]
        rss = [m["rss_kb"] for m in mem]
        report["idle_rss_mb_per_node"] = _mb(statistics.median(rss))
        report["idle_rss_mb_per_node_max"] = _mb(max(rss))
        report["idle_rss_node_mb"] = _mb(statistics.median(m["node_kb"] for m in mem))
        report["idle_rss_workers_mb"] = _mb(statistics.median(m["kids_kb"] for m in mem))
        report["workers_per_node"] = int(min(m["workers"] for m in mem))
        report["idle_pss_mb_per_node"] = _mb(statistics.median(m["pss_kb"] for m in mem))
        st = testnet.status(root)
        report["testnet_healthy"] = sum(1 for n in st if n["healthy"])
        report["testnet_peers_min"] = min((n["peers"] or 0) for n in st)
    finally:
        say("testnet down")
        t0 = time.perf_counter()
        try:
            testnet.down(root, progress=out)
            report["testnet_down_s"] = round(time.perf_counter() - t0, 2)
        finally:  # down's own check, made again independently (and a clean-up if down failed)
            final = testnet.nodes(root)
            leaders = {int(pid): int(st) for n in final for pid, st in n["history"]}
            prefixes = [f"inos-{n['name']}-{pid}" for n in final for pid, _ in n["history"]]
            procs, shm = _leftovers(leaders, prefixes, time.monotonic() + 10)
            report["left_processes"] += procs
            report["left_shm"] += shm


# --------------------------------------------------------------------------- report
def _judge(r: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    def ratio(a: float | None, b: float | None) -> float | None:
        return round(a / b, 2) if a is not None and b else None

    meets = {
        "node_start_to_api_ready_ms": (r["node_start_to_api_ready_ms"]
                                       <= TARGETS["node_start_to_api_ready_ms"]),
        "idle_rss_mb_per_node": r["idle_rss_mb_per_node_max"] <= TARGETS["idle_rss_mb_per_node"],
        "testnet_up_s_10_nodes": (r["testnet_up_s"] <= TARGETS["testnet_up_s_10_nodes"]
                                  if r["testnet_nodes"] == 10 else None),
    }
    ratios = {
        "node_start_to_api_ready/python_import_node_full": ratio(r["node_start_to_api_ready_ms"],
                                                                 r["python_import_node_full_ms"]),
        "node_start_to_api_ready/python_start": ratio(r["node_start_to_api_ready_ms"], r["python_start_ms"]),
        "idle_rss_per_node/python_import_node_rss": ratio(r["idle_rss_mb_per_node"],
                                                          r["python_import_node_rss_mb"]),
        "testnet_up/node_start_to_api_ready": ratio(r["testnet_up_s"] * 1000.0,
                                                    r["node_start_to_api_ready_ms"]),
    }
    return meets, ratios


def run_deploy(quick: bool = False, nodes: int | None = None, progress: bool = True, *,
               workdir: Path | None = None) -> dict[str, Any]:
    """Every figure of the module docstring, in one dict (``targets``, ``meets_targets``, ``ratios`` last).

    Args:
        quick: 3 node starts and a 3-node testnet instead of 5 and 10 (a smoke run, noisier).
        nodes: the testnet's size (default 10, or 3 with ``quick``).
        progress: progress lines (and the testnet's own) on stderr.
        workdir: where data dirs, logs and the testnet go (default a temp dir, removed at the end;
            a given one is left as it is, logs included).

    Raises:
        DeployBenchError: a node did not become ready or could not be spawned (its log's tail is in
            the message); ``nodes`` is out of range.
        TestnetError: the testnet did not come up or go down cleanly.
    """
    if nodes is None:
        nodes = 3 if quick else 10
    if not 1 <= nodes <= 100:
        raise DeployBenchError(f"--nodes must be in [1, 100], got {nodes}")

    def say(msg: str) -> None:
        if progress:
            sys.stderr.write(f"bench: {msg} ...\n")
            sys.stderr.flush()

    out: IO[str] = sys.stderr if progress else io.StringIO()
    base = workdir if workdir is not None else Path(tempfile.mkdtemp(prefix="inos-bench-deploy-"))
    report: dict[str, Any] = {"python": sys.version.split()[0], "cpus": os.cpu_count(),
                              "left_processes": [], "left_shm": []}
    try:
        _bench_start(report, 3 if quick else 5, base, say)
        _bench_testnet(report, nodes, base, say, out)
    finally:
        if workdir is None:
            shutil.rmtree(base, ignore_errors=True)
    report["left_processes"] = report.pop("left_processes")  # after the figures, before the verdicts
    report["left_shm"] = report.pop("left_shm")
    report["targets"] = dict(TARGETS)
    report["meets_targets"], report["ratios"] = _judge(report)
    return report
