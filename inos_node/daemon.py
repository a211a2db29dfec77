"""``inos node run``: the node daemon, composing the local node, the mesh and the control API.

    NodeDaemon.run ─► lock the data dir, load identity and token
                   ─► LocalNode (arena, units, worker processes)
                   ─► libp2p host (Noise, Yamux) ─► hello gate (same network only)
                   ─► gossip (adverts) ─► DHT (providers) ─► delegation + blob servers/clients
                   ─► control API on 127.0.0.1 ─► ready (printed as one JSON line on stdout)

Jobs submitted through the API run in the daemon's job nursery: the decider picks executors
(local or peers), remote runs go over /inos/delegate/1.0.0, receipts are verified before a result
is accepted, failed executors are retried on the next candidate within the job's deadline, and
``replicas`` > 1 accepts a result only when the outputs' digests agree.
"""

from __future__ import annotations

import json
import logging
import math
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import blake3
import trio

from inos_node import __version__
from inos_node.api.service import JobRecord, SubmitRequest
from inos_node.errors import ConfigError, InosError, InvalidParams, PeerError, RemoteProtocolError
from inos_node.identity import DataDir, Identity
from inos_node.jobs import JobBook
from inos_node.node import LocalNode, NodeConfig
from inos_node.protocols import decider
from inos_node.receipts import receipt_json
from inos_node.types import Digest, JobRequest, JobResult, Status

__all__ = ["DaemonConfig", "NodeDaemon", "run_node"]

log = logging.getLogger(__name__)

INLINE_INPUT_MAX = 256 * 1024  # larger inputs travel by digest over /inos/blob
DEV_NETWORK_ID = blake3.blake3(b"inos-dev-network-v1").digest()


@dataclass(frozen=True, slots=True)
class DaemonConfig:
    data_dir: Path
    listen: tuple[str, ...] = ("/ip4/0.0.0.0/tcp/4001",)
    announce: tuple[str, ...] = ()
    bootstrap: tuple[str, ...] = ()
    api: str = "127.0.0.1:5050"
    name: str = ""
    prefer: str = "fastest"
    process_workers: int = 1
    max_jobs: int = 64
    default_timeout_s: float = 60.0
    network_id: bytes = DEV_NETWORK_ID
    mdns: bool = False
    advert_interval_s: float = 5.0
    arena_size: int = 64 * 1024 * 1024
    hedge_after: float = 0.5  # fraction of a job's time after which a silent peer gets a backup
    test_corrupt_outputs: bool = False  # a test-only switch: this worker lies about outputs
    test_hang: bool = False  # a test-only switch: this worker accepts capsules and never answers
    genesis: Path | None = None  # a genesis file (economy); None: the free dev network, no ledger
    log_format: str = "text"  # text | json

    def __post_init__(self) -> None:
        host, _, port = self.api.rpartition(":")
        if not host or not port.isdigit() or not 0 <= int(port) < 65536:
            raise ConfigError(f"--api must be HOST:PORT, got {self.api!r}", key="api")
        if self.prefer not in decider.POLICIES:
            raise ConfigError(f"--prefer must be one of {', '.join(decider.POLICIES)}", key="prefer")

    @property
    def api_host(self) -> str:
        return self.api.rpartition(":")[0]

    @property
    def api_port(self) -> int:
        return int(self.api.rpartition(":")[2])


@dataclass
class _PeerState:
    peer_id: str
    addresses: list[str] = field(default_factory=list)
    rtt_ms: float = 5.0
    failures: int = 0
    successes: int = 0


class NodeDaemon:
    """One node.  ``run`` owns everything; the NodeService methods serve the control API."""

    def __init__(self, config: DaemonConfig) -> None:
        self.config = config
        self.data = DataDir(config.data_dir)
        self.identity: Identity = None  # type: ignore[assignment]
        self.peer_id = ""
        self.local: LocalNode = None  # type: ignore[assignment]
        self.host: Any = None
        self.book = JobBook()
        self.started_at = time.time()
        self.ready = False
        self.api_urls: list[str] = []
        self._jobs_nursery: trio.Nursery | None = None
        self._job_limiter = trio.CapacityLimiter(config.max_jobs)
        self._peer_state: dict[str, _PeerState] = {}
        self.net: Any = None  # the mesh pieces (set in run)

    # ------------------------------------------------------------------ lifetime
    async def run(self, *, task_status: trio.TaskStatus[dict[str, Any]] = trio.TASK_STATUS_IGNORED) -> None:
        from inos_node.api.app import make_app
        from inos_node.api.server import serve_api
        from inos_node.mesh import Mesh

        cfg = self.config
        self.data.ensure()
        self.data.lock()
        try:
            self.identity = self.data.identity()
            token = self.data.token()
            node_cfg = NodeConfig(name=f"inos-{cfg.name or 'node'}", process_workers=cfg.process_workers,
                                  arena_size=cfg.arena_size)
            async with LocalNode(node_cfg).open() as local:
                self.local = local
                async with Mesh(self).open() as mesh:
                    self.net = mesh
                    self.peer_id = mesh.peer_id
                    async with trio.open_nursery() as nursery:
                        self._jobs_nursery = nursery
                        self.api_urls = await nursery.start(serve_api, make_app(self, token), cfg.api_host,
                                                            cfg.api_port)
                        self.ready = True
                        info = self.info()
                        log.info("node %s ready: peer id %s, addresses %s, api %s", cfg.name, self.peer_id,
                                 info["addresses"], self.api_urls)
                        task_status.started(info)
        finally:
            self.ready = False
            self.data.unlock()

    # ------------------------------------------------------------------ NodeService
    async def submit(self, req: SubmitRequest) -> str:
        if self._jobs_nursery is None:
            raise InvalidParams("the node is not ready yet", param="node")
        method = self.local.engine._methods.get(req.capsule)
        served_locally = method is not None
        if method is not None and req.replicas > 1 and not method.deterministic:
            raise InvalidParams(f"{req.capsule} is not deterministic: replicas cannot be compared; use --replicas 1",
                                param="replicas")
        if not served_locally and req.placement == "local":
            self.local.engine.resolve(req.library, req.method)  # raises UnknownUnit listing what exists
        job_id = self.book.new_id()
        self.book.add(job_id, req.capsule)
        self._jobs_nursery.start_soon(self._run_job, job_id, req)
        return job_id

    def job(self, job_id: str) -> JobRecord | None:
        return self.book.get(job_id)

    def jobs(self, limit: int = 100) -> list[JobRecord]:
        return self.book.recent(limit)

    async def wait_job(self, job_id: str) -> JobRecord:
        return await self.book.wait(job_id)

    def subscribe_events(self) -> Any:
        return self.book.subscribe()

    def peers(self) -> list[dict[str, Any]]:
        return self.net.peers() if self.net is not None else []

    async def wait_peers(self, *, peer_id: str | None, serving: str | None, count: int, timeout_s: float) -> bool:
        with trio.move_on_after(timeout_s):
            await self.net.wait_peers(peer_id=peer_id, serving=serving, count=count)
            return True
        return False

    def units(self) -> list[dict[str, Any]]:
        return self.local.engine.catalog()

    def info(self) -> dict[str, Any]:
        return {
            "peer_id": self.peer_id,
            "did": self.identity.did if self.identity else "",
            "name": self.config.name,
            "addresses": self.net.addresses() if self.net is not None else [],
            "api": self.api_urls,
            "version": __version__,
            "uptime_s": round(time.time() - self.started_at, 3),
            "arena": self.local.arena.name if self.local else "",
        }

    def health(self) -> dict[str, Any]:
        return {"ready": self.ready, "peers": len(self.peers()), "peer_id": self.peer_id}

    # ------------------------------------------------------------------ jobs
    async def _run_job(self, job_id: str, req: SubmitRequest) -> None:
        async with self._job_limiter:
            timeout = req.timeout_s or self.config.default_timeout_s
            deadline = trio.current_time() + timeout
            try:
                with trio.fail_after(timeout):
                    await self._run_job_within(job_id, req, deadline)
            except trio.TooSlowError:
                self.book.update(job_id, status=Status.TIMEOUT.value,
                                 error=f"{req.capsule} did not finish within {timeout:g} s on any executor")
            except InosError as exc:
                status = getattr(exc, "status", Status.FAILED.value)
                self.book.update(job_id, status=status if isinstance(status, str) else Status.FAILED.value,
                                 error=str(exc))

    def _job_request(self, job_id: str, req: SubmitRequest, deadline_ms: int) -> JobRequest:
        payload: Any = Digest(req.input_digest) if req.input_digest is not None else req.input
        return JobRequest(job_id=job_id, library=req.library, method=req.method, input=payload,
                          params=dict(req.params), budget=req.budget, deadline_ms=deadline_ms,
                          replicas=req.replicas, module=req.module)

    def _cost_units(self, req: SubmitRequest) -> int:
        m = self.local.engine._methods.get(req.capsule)
        if m is None or m.cost == "call":
            return 1
        if m.cost == "mib":
            return max(1, math.ceil(len(req.input) / (1024 * 1024)))
        return int(req.params.get("fuel", 1_000_000) or 1)

    async def _run_job_within(self, job_id: str, req: SubmitRequest, deadline: float) -> None:
        served = req.capsule in self.local.engine._methods
        placement = req.placement if req.placement in ("local", "remote") or req.placement.startswith("peer:") \
            else "auto"
        excluded: set[str] = set()
        attempts: list[str] = []
        while True:
            task = decider.Task(
                capsule=req.capsule, cost_units=self._cost_units(req), placement=placement,
                prefer=req.prefer or self.config.prefer, replicas=req.replicas, budget=req.budget,
                served_locally=served, local_load=self._local_load(), exclude=frozenset(excluded),
            )
            plan = decider.decide(task, self.net.peer_views(req.capsule))
            self.book.update(job_id, status="running", executor=",".join(plan.executors))
            left_ms = max(1, int((deadline - trio.current_time()) * 1000))
            if req.replicas > 1:
                await self._run_replicas(job_id, req, plan, left_ms)
                return
            target = plan.executors[0]
            method = self.local.engine._methods.get(req.capsule)
            hedge = (target != decider.LOCAL and plan.fallbacks and not req.placement.startswith("peer:")
                     and method is not None and method.deterministic and self.config.hedge_after > 0)
            try:
                if hedge:
                    target, rec = await self._run_hedged(job_id, req, target, plan.fallbacks[0], left_ms,
                                                         excluded, attempts)
                else:
                    rec = await self._run_on(job_id, req, target, left_ms)
            except (PeerError, RemoteProtocolError) as exc:
                attempts.append(f"{target}: {exc}")
                log.warning("job=%s: executor %s failed (%s); retrying elsewhere", job_id, target, exc)
                self.net.record_failure(target)
                excluded.add(target)
                if req.placement.startswith("peer:"):
                    raise PeerError("; ".join(attempts)) from exc
                continue
            if rec["status"] == Status.CAPACITY_EXCEEDED.value and target != decider.LOCAL \
                    and not req.placement.startswith("peer:"):
                excluded.add(target)
                attempts.append(f"{target}: busy")
                continue
            self.book.update(job_id, **rec)
            return

    async def _run_hedged(self, job_id: str, req: SubmitRequest, primary: str, backup: str, left_ms: int,
                          excluded: set[str], attempts: list[str]) -> tuple[str, dict[str, Any]]:
        """Run on ``primary``; if it has not answered after ``hedge_after`` of the time left (or
        fails sooner), also run on ``backup``, and take the first answer.

        This is how a peer that hangs without dying is left behind within the job's deadline: a
        dead or reset peer is noticed in milliseconds, a silent one only by time.  Only for
        deterministic capsules, where either answer is as good as the other.
        """
        send, recv = trio.open_memory_channel[tuple[str, Any]](2)
        go_backup = trio.Event()
        started = trio.current_time()

        async def attempt(target: str, delay_s: float) -> None:
            if delay_s:
                with trio.move_on_after(delay_s):
                    await go_backup.wait()
                log.info("job=%s: %s has not answered; also running it on %s", job_id, primary, target)
                self.book.update(job_id, status="running", executor=f"{primary},{target}")
            left = max(1, left_ms - int((trio.current_time() - started) * 1000))
            try:
                result: Any = await self._run_on(job_id, req, target, left)
            except (PeerError, RemoteProtocolError) as exc:
                result = exc
            await send.send((target, result))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(attempt, primary, 0)
            nursery.start_soon(attempt, backup, left_ms / 1000 * self.config.hedge_after)
            last_exc: Exception | None = None
            for _ in range(2):
                target, result = await recv.receive()
                if isinstance(result, Exception):
                    last_exc = result
                    attempts.append(f"{target}: {result}")
                    self.net.record_failure(target)
                    excluded.add(target)
                    go_backup.set()
                    continue
                nursery.cancel_scope.cancel()  # the other attempt is no longer needed
                if target == backup:
                    self.net.record_failure(primary)  # it was too slow to answer
                return target, result
        assert last_exc is not None
        raise last_exc

    async def _run_replicas(self, job_id: str, req: SubmitRequest, plan: decider.Plan, left_ms: int) -> None:
        results: dict[str, dict[str, Any]] = {}

        async def one(target: str) -> None:
            try:
                results[target] = await self._run_on(job_id, req, target, left_ms)
            except (PeerError, RemoteProtocolError) as exc:
                results[target] = {"status": Status.FAILED.value, "error": str(exc), "executor": target}

        async with trio.open_nursery() as n:
            for target in plan.executors:
                n.start_soon(one, target)
        replicas = tuple(
            {"executor": r.get("executor", t), "status": r["status"], "cost": r.get("cost", 0),
             "output_digest": blake3.blake3(r["output"]).hexdigest() if r.get("output") is not None else None,
             "receipt": r.get("receipt"), "error": r.get("error", "")}
            for t, r in results.items()
        )
        ok = [r for r in results.values() if r["status"] == Status.SUCCESS.value]
        digests = {blake3.blake3(r["output"]).digest() for r in ok}
        if len(ok) == len(plan.executors) and len(digests) == 1:
            first = ok[0]
            self.book.update(job_id, **{**first, "cost": sum(r.get("cost", 0) for r in ok), "replicas": replicas,
                                        "executor": ",".join(r["executor"] for r in ok)})
            return
        if len(digests) > 1:
            error = (f"replicas disagree: {len(digests)} different outputs from "
                     f"{', '.join(r['executor'] for r in ok)}; receipts attached")
        else:
            error = "; ".join(f"{r['executor']}: {r.get('error') or r['status']}" for r in results.values()
                              if r["status"] != Status.SUCCESS.value)
        self.book.update(job_id, status=Status.FAILED.value, error=error, replicas=replicas)

    async def _run_on(self, job_id: str, req: SubmitRequest, target: str, left_ms: int) -> dict[str, Any]:
        if target == decider.LOCAL:
            result = await self.local.execute(self._job_request(job_id, req, left_ms))
            return self._record_from(result, "local", None)
        return await self.net.run_remote(job_id, req, target, left_ms)

    def _record_from(self, result: JobResult, executor: str, receipt: Any) -> dict[str, Any]:
        output = bytes(result.output) if isinstance(result.output, bytes | bytearray | memoryview) else b""
        return {
            "status": result.status.value,
            "output": output if result.ok else None,
            "output_len": len(output),
            "executor": executor,
            "cost": result.cost if executor != "local" else 0,
            "metrics": result.metrics.as_dict(),
            "receipt": receipt_json(receipt) if receipt is not None else None,
            "error": result.error,
        }

    def _local_load(self) -> float:
        limiter = self.local.engine._thread_limiter
        return limiter.borrowed_tokens / max(1, limiter.total_tokens)


async def run_node(config: DaemonConfig) -> int:
    """Run until SIGINT/SIGTERM; print one JSON line when ready (for scripts and tests)."""
    daemon = NodeDaemon(config)
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            info = await nursery.start(daemon.run)
            print(json.dumps({"event": "ready", **info}), flush=True)
            async for signum in signals:
                log.info("got %s: shutting down", signal.Signals(signum).name)
                break
            nursery.cancel_scope.cancel()  # every component's cleanup is shielded and time-bounded
    return 0
