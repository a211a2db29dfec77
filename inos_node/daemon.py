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

import contextlib
import json
import logging
import math
import random
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
from inos_node.logs import job_context
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
    test_no_settle: bool = False  # a test-only switch: this requester neither settles nor refunds (a crash)
    genesis: Path | None = None  # a genesis file (economy); None: the free dev network, no ledger
    verify_sample: float = 0.0  # probability of re-running a remote result locally before accepting it
    escrow_credit: int = 100  # worker: credits of one known payer's lock answered before the check (0: none)
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
        self.economy: Any = None  # the LedgerNode on a network with a genesis (set in run)
        self.network_id = config.network_id  # the genesis's hash when there is one

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
            genesis = None
            if cfg.genesis is not None:
                from inos_node.economy.genesis import Genesis

                genesis = Genesis.load(cfg.genesis)
                self.network_id = genesis.network_id  # nodes of another genesis are not our peers
            node_cfg = NodeConfig(name=f"inos-{cfg.name or 'node'}", process_workers=cfg.process_workers,
                                  arena_size=cfg.arena_size, background_workers=True, lazy_workers=True)
            async with LocalNode(node_cfg).open() as local, contextlib.AsyncExitStack() as stack:
                self.local = local
                if genesis is not None:
                    from inos_node.economy.node import LedgerNode

                    self.economy = LedgerNode(genesis, self.identity, self.data.path,
                                              escrow_credit=cfg.escrow_credit)
                    await stack.enter_async_context(self.economy.open())
                async with Mesh(self).open() as mesh:
                    self.net = mesh
                    self.peer_id = mesh.peer_id
                    if self.economy is not None:
                        await self.economy.resolve_pending()  # escrows a crash left open
                    async with trio.open_nursery() as nursery:
                        self._jobs_nursery = nursery
                        app = make_app(self, token, metrics_registry=self._metrics_registry())
                        self.api_urls = await nursery.start(serve_api, app, cfg.api_host, cfg.api_port)
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
            "network_id": self.network_id.hex(),
            "ledger": self.economy is not None,
        }

    def health(self) -> dict[str, Any]:
        return {"ready": self.ready, "peers": len(self.peers()), "peer_id": self.peer_id}

    def _metrics_registry(self) -> Any:
        """``/metrics`` providers beyond the node's own: the ledger's blocks, balances and supply."""
        from inos_node.api import metrics

        registry = metrics.Registry()
        economy = self.economy
        if economy is None:
            return registry

        def ledger_samples() -> list[Any]:
            supply, own = economy.supply(), economy.balance()
            stats = supply["stats"]
            out = [metrics.Sample("inos_ledger_blocks", stats["blocks"], help="blocks applied to this node's ledger"),
                   metrics.Sample("inos_ledger_held_blocks", stats["held"], help="blocks waiting for a predecessor"),
                   metrics.Sample("inos_ledger_frozen_accounts", stats["frozen"], help="accounts frozen for cheating"),
                   metrics.Sample("inos_ledger_equivocation_proofs", stats["proofs"], help="equivocation proofs held")]
            for part in ("minted", "balances", "escrow", "staked"):
                out.append(metrics.Sample("inos_ledger_supply_credits", supply[part], {"part": part},
                                          help="credits by where they are; minted = balances + escrow + staked"))
            for part in ("balance", "escrow", "staked"):
                out.append(metrics.Sample("inos_ledger_account_credits", own[part], {"part": part, "did": own["did"]},
                                          help="this node's own account"))
            for key, value in economy.stats.items():
                if key.startswith("escrows_"):
                    out.append(metrics.Sample("inos_ledger_escrow_credit_total", value, {"event": key[8:]},
                                              kind="counter", help="escrow locks this worker took on trust "
                                              "(--escrow-credit), checked since, and failed that check"))
                    continue
                out.append(metrics.Sample("inos_ledger_messages_total", value, {"outcome": key}, kind="counter",
                                          help="ledger blocks received from peers, by outcome"))
            return out

        registry.register_provider(ledger_samples)
        return registry

    def ledger(self) -> Any:
        """The node's ``LedgerNode`` (None on the free dev network)."""
        return self.economy

    def vitals(self) -> dict[str, Any]:
        arena, jobs = self.local.arena.statistics(), self._job_limiter.statistics()
        return {
            "name": self.config.name, "peer_id": self.peer_id, "load": round(self._local_load(), 4),
            "uptime_s": round(time.time() - self.started_at, 3),
            "jobs": {"running": jobs.borrowed_tokens, "waiting": jobs.tasks_waiting,
                     "limit": jobs.total_tokens, "completed": self.local.engine.completed,
                     "failed": self.local.engine.failed},
            "served": {"running": self.net.server.statistics().running, "total": self.net.served},
            "pushes": {"stored": self.net.push_server.stored, "refused": self.net.push_server.refused,
                       "corrupt": self.net.push_server.corrupt},
            "arena": {"name": arena.name, "size": arena.size, "used": arena.used, "free": arena.free,
                      "blocks": arena.blocks, "processes": arena.processes},
            "epochs": {e.name: e.value for e in arena.epochs},
            "units": [{k: u[k] for k in ("unit", "state", "restarts", "handled")} for u in
                      self.local.supervisor.statistics()],
        }

    def metrics_snapshot(self) -> dict[str, Any]:
        peers, gossip = self.peers(), self.net.gossip.statistics()
        return {
            **self.vitals(),
            "node": {"peer_id": self.peer_id, "name": self.config.name, "version": __version__},
            "peers": {"known": len(peers), "connected": sum(p["connected"] for p in peers),
                      "verified": sum(p["verified"] for p in peers)},
            "gossip": {"published": gossip.published, "delivered": gossip.delivered,
                       "errors": {"validator": gossip.validator_errors, "handler": gossip.handler_errors,
                                  "publish": gossip.publish_errors}},
        }

    # ------------------------------------------------------------------ jobs
    async def _run_job(self, job_id: str, req: SubmitRequest) -> None:
        with job_context(job_id):  # every log line about the job carries its id (tasks inherit it)
            await self._run_job_limited(job_id, req)

    async def _run_job_limited(self, job_id: str, req: SubmitRequest) -> None:
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

    def _cost_model(self, req: SubmitRequest) -> str:
        m = self.local.engine._methods.get(req.capsule)
        return m.cost if m is not None else "call"

    def _cost_units(self, req: SubmitRequest) -> int:
        """Billable units the job may use (the price model of ``mesh.PRICES``): 1 call, the input's
        MiB, or the fuel budget in millions."""
        from inos_node.mesh import price_units

        model = self._cost_model(req)
        if model == "mib":
            return max(1, math.ceil(len(req.input) / (1024 * 1024)))
        if model == "fuel":
            return price_units("fuel", int(req.params.get("fuel", 1_000_000) or 1))
        return 1

    async def _run_job_within(self, job_id: str, req: SubmitRequest, deadline: float) -> None:
        escrow = _Escrow() if self.economy is not None else None
        try:
            await self._run_job_attempts(job_id, req, deadline, escrow)
        finally:
            await self._refund_unsettled(job_id, escrow)

    async def _refund_unsettled(self, job_id: str, escrow: _Escrow | None) -> None:
        """A job that locked credits and did not settle gets them back (shielded: also when cancelled)."""
        if escrow is not None and escrow.block and not escrow.settled:
            with trio.CancelScope(shield=True), trio.move_on_after(10):
                try:
                    await self.economy.refund(job_id)
                    log.info("job=%s: escrow refunded", job_id)
                except InosError as exc:
                    log.error("job=%s: refund failed (it is retried at the next start): %s", job_id, exc)

    async def run_remote_paid(self, job_id: str, req: SubmitRequest, target: str, left_ms: int) -> dict[str, Any]:
        """One capsule on ``target`` with the economy around it and nothing else: lock its price
        in escrow, run it there (``Mesh.run_remote``: the request, the answer, the receipt
        checked), settle; an escrow not settled is refunded.  These are the steps, and the same
        functions, that a paid job takes in ``_run_job_attempts``, without the job book, the
        decider and the retries around them (which an unpaid job takes too): ``inos bench mesh``
        times this against ``Mesh.run_remote`` to measure what the economy adds.

        Raises:
            InosError: no ledger on this node, a budget or balance too small, or a peer failure.
        """
        if self.economy is None:
            raise InvalidParams("this node has no ledger: nothing to pay with", param="genesis")
        escrow = _Escrow()
        views = [v for v in self.net.peer_views(req.capsule) if v.peer_id == target]
        try:
            await self._open_escrow(job_id, req, trio.current_time() + left_ms / 1000, escrow,
                                    decider.Plan(executors=(target,)), views)
            rec = await self._run_on(job_id, req, target, left_ms, escrow)
            if rec["status"] == Status.SUCCESS.value:
                rec.update(await self._settle(job_id, req, escrow, [(target, rec)]))
            return rec
        finally:
            await self._refund_unsettled(job_id, escrow)

    async def _run_job_attempts(self, job_id: str, req: SubmitRequest, deadline: float,
                                escrow: _Escrow | None) -> None:
        served = req.capsule in self.local.engine._methods
        placement = req.placement if req.placement in ("local", "remote") or req.placement.startswith("peer:") \
            else "auto"
        excluded: set[str] = set()
        attempts: list[str] = []
        while True:
            views = self.net.peer_views(req.capsule)
            if escrow is not None and escrow.block:  # a retry goes only to a worker the lock names
                excluded.update(v.peer_id for v in views if not escrow.pays(v.peer_id))
            task = decider.Task(
                capsule=req.capsule, cost_units=self._cost_units(req), placement=placement,
                prefer=req.prefer or self.config.prefer, replicas=req.replicas, budget=req.budget,
                served_locally=served, local_load=self._local_load(), exclude=frozenset(excluded),
            )
            plan = decider.decide(task, views)
            if escrow is not None and not escrow.block and any(t != decider.LOCAL for t in plan.executors):
                await self._open_escrow(job_id, req, deadline, escrow, plan, views)
            self.book.update(job_id, status="running", executor=",".join(plan.executors),
                             escrow=escrow.amount if escrow is not None else 0)
            left_ms = max(1, int((deadline - trio.current_time()) * 1000))
            if req.replicas > 1:
                await self._run_replicas(job_id, req, plan, left_ms, escrow)
                return
            target = plan.executors[0]
            method = self.local.engine._methods.get(req.capsule)
            hedge = (target != decider.LOCAL and plan.fallbacks and not req.placement.startswith("peer:")
                     and method is not None and method.deterministic and self.config.hedge_after > 0
                     and (escrow is None or escrow.pays(plan.fallbacks[0])))
            try:
                if hedge:
                    target, rec = await self._run_hedged(job_id, req, target, plan.fallbacks[0], left_ms,
                                                         excluded, attempts, escrow)
                else:
                    rec = await self._run_on(job_id, req, target, left_ms, escrow)
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
            if target != decider.LOCAL and rec["status"] == Status.SUCCESS.value and \
                    not await self._sample_agrees(job_id, req, target, rec, deadline):
                self.book.update(job_id, status=Status.FAILED.value, executor=target, receipt=rec.get("receipt"),
                                 error=f"the output from {target} differs from this node's re-execution: "
                                       "rejected and not paid")
                return
            if escrow is not None and target != decider.LOCAL and rec["status"] == Status.SUCCESS.value:
                if self.config.test_no_settle:  # test-only: behave as if we died right here
                    escrow.settled = True
                    self.book.update(job_id, **_public(rec))
                    return
                rec.update(await self._settle(job_id, req, escrow, [(target, rec)]))
            self.book.update(job_id, **_public(rec))
            return

    async def _run_hedged(self, job_id: str, req: SubmitRequest, primary: str, backup: str, left_ms: int,
                          excluded: set[str], attempts: list[str], escrow: _Escrow | None
                          ) -> tuple[str, dict[str, Any]]:
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
                result: Any = await self._run_on(job_id, req, target, left, escrow)
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

    async def _run_replicas(self, job_id: str, req: SubmitRequest, plan: decider.Plan, left_ms: int,
                            escrow: _Escrow | None) -> None:
        """Run on every executor of ``plan`` and accept an output only when the digests agree.

        When two outputs disagree, one more executor breaks the tie (the next fallback peer, else
        this node itself): the majority's output is accepted and its workers paid; every
        minority worker is a proven liar (receipts of the majority and its own signed receipt):
        its reputation drops and, on a network with a ledger, its stake is slashed.  Without a
        majority the job fails with every receipt attached, and the escrow is refunded.
        """
        results: dict[str, dict[str, Any]] = {}
        started = trio.current_time()

        async def one(target: str) -> None:
            left = max(1, left_ms - int((trio.current_time() - started) * 1000))
            try:
                rec = await self._run_on(job_id, req, target, left, escrow)
                if target == decider.LOCAL and rec["status"] == Status.SUCCESS.value:
                    rec["_receipt"] = self._own_receipt(job_id, req, rec)
                results[target] = rec
            except (PeerError, RemoteProtocolError) as exc:
                results[target] = {"status": Status.FAILED.value, "error": str(exc), "executor": target}

        async with trio.open_nursery() as n:
            for target in plan.executors:
                n.start_soon(one, target)
        groups = self._digest_groups(results)
        if len(groups) > 1:  # a disagreement: one more execution breaks the tie
            spare = [t for t in plan.fallbacks if t not in results and (escrow is None or escrow.pays(t))]
            if not spare and req.capsule in self.local.engine._methods and decider.LOCAL not in results:
                spare = [decider.LOCAL]
            if spare:
                log.warning("job=%s: replicas disagree; asking %s to break the tie", job_id, spare[0])
                await one(spare[0])
                groups = self._digest_groups(results)
        ok = [r for r in results.values() if r["status"] == Status.SUCCESS.value]
        replicas = tuple(
            {"executor": r.get("executor", t), "status": r["status"], "cost": r.get("cost", 0),
             "output_digest": blake3.blake3(r["output"]).hexdigest() if r.get("output") is not None else None,
             "receipt": r.get("receipt"), "error": r.get("error", "")}
            for t, r in results.items()
        )
        ranked = sorted(groups.values(), key=len, reverse=True)
        majority = ranked[0] if ranked and len(ranked[0]) >= 2 and (len(ranked) == 1 or len(ranked[0]) > len(ranked[1])) \
            else None
        unanimous = len(groups) == 1 and len(ok) == len(plan.executors)
        if majority is not None and (unanimous or len(groups) > 1):
            liars = [t for g in ranked[1:] for t in g]
            first = results[majority[0]]
            rec = {**first, "cost": 0, "replicas": replicas,
                   "executor": ",".join(results[t].get("executor", t) for t in majority)}
            if escrow is not None:
                paid = [(t, results[t]) for t in majority if t != decider.LOCAL]
                if paid:
                    rec.update(await self._settle(job_id, req, escrow, paid))
            for liar in liars:
                await self._punish(job_id, liar, majority, results, escrow)
            if liars:
                rec["error"] = f"replicas disagreed; the majority's output was accepted; liar(s): {', '.join(liars)}"
            self.book.update(job_id, **_public(rec))
            return
        if len(groups) > 1:
            error = (f"replicas disagree: {len(groups)} different outputs from "
                     f"{', '.join(r['executor'] for r in ok)}; receipts attached")
        else:
            error = "; ".join(f"{r['executor']}: {r.get('error') or r['status']}" for r in results.values()
                              if r["status"] != Status.SUCCESS.value)
        self.book.update(job_id, status=Status.FAILED.value, error=error, replicas=replicas)

    async def _sample_agrees(self, job_id: str, req: SubmitRequest, target: str, rec: dict[str, Any],
                             deadline: float) -> bool:
        """With probability ``verify_sample``, re-run a remote result of a deterministic capsule
        here and compare digests (BOINC's spot checks): a worker cannot know which results are
        checked, so lying costs it the payment and its reputation at that rate."""
        p = self.config.verify_sample
        method = self.local.engine._methods.get(req.capsule)
        if p <= 0 or method is None or not method.deterministic or random.random() >= p:
            return True
        left_ms = max(1, int((deadline - trio.current_time()) * 1000))
        mine = await self._run_on(job_id, req, decider.LOCAL, left_ms)
        if mine["status"] != Status.SUCCESS.value:
            return True  # we could not check: no evidence either way
        if blake3.blake3(mine["output"]).digest() == blake3.blake3(rec["output"]).digest():
            return True
        log.warning("job=%s: %s returned an output this node's re-execution contradicts", job_id, target)
        self.net.record_mismatch(target)
        return False

    @staticmethod
    def _digest_groups(results: dict[str, dict[str, Any]]) -> dict[bytes, list[str]]:
        groups: dict[bytes, list[str]] = {}
        for target, r in results.items():
            if r["status"] == Status.SUCCESS.value and r.get("output") is not None:
                groups.setdefault(blake3.blake3(r["output"]).digest(), []).append(target)
        return groups

    def _own_receipt(self, job_id: str, req: SubmitRequest, rec: dict[str, Any]) -> Any:
        """This node's signed receipt for a tie-breaking execution of its own."""
        from inos_node.receipts import sign_receipt
        from inos_node.types import Metrics

        data = req.input
        return sign_receipt(self.identity, job_id=job_id, requester=self.peer_id, worker=self.peer_id,
                            capsule=req.capsule, input_digest=blake3.blake3(data).digest(), output=rec["output"],
                            cost=0, metrics=Metrics())

    async def _punish(self, job_id: str, liar: str, majority: list[str], results: dict[str, dict[str, Any]],
                      escrow: _Escrow | None) -> None:
        log.warning("job=%s: %s returned an output the majority contradicts", job_id, liar)
        self.net.record_mismatch(liar)
        if self.economy is None or liar == decider.LOCAL:
            return
        from inos_node.economy.node import account_of_peer
        from inos_node.wire.ledger import encode_receipt

        evidence = [encode_receipt(results[t]["_receipt"]) for t in majority[:2] if results[t].get("_receipt")]
        if len(evidence) < 2 or results[liar].get("_receipt") is None:
            return
        evidence.append(encode_receipt(results[liar]["_receipt"]))
        try:
            block = await self.economy.slash(job_id, account_of_peer(liar), evidence)
        except InosError as exc:
            log.error("job=%s: could not slash %s: %s", job_id, liar, exc)
            return
        if block is not None:
            log.warning("job=%s: slashed %s: %d credits seized", job_id, liar, block.amount)

    # ------------------------------------------------------------------ escrow
    async def _open_escrow(self, job_id: str, req: SubmitRequest, deadline: float, escrow: _Escrow,
                           plan: decider.Plan, peer_views: list[decider.PeerView]) -> None:
        """Lock the job's price in escrow before any capsule leaves, payable to the candidate peers
        (the plan's executors, then its fallbacks: ``replicas`` + 2 of them, for a retry or a
        tie-breaker; a job pinned with ``peer:`` names that peer only, as it runs nowhere else;
        with a budget, the spares it cannot cover are left out), each up to its advertised price
        x the job's billable units, plus the
        protocol fee on all of it (the ledger insists: a settle can always pay every named
        worker).  What is not paid out is refunded when the job settles."""
        from inos_node.economy.model import MAX_PAYMENTS
        from inos_node.economy.node import account_of_peer
        from inos_node.errors import BlockRejected, BudgetExceeded
        from inos_node.wire.ledger import encode_block

        units = self._cost_units(req)
        views = {v.peer_id: v for v in peer_views}  # what the plan was made from
        order = [t for t in (*plan.executors, *plan.fallbacks) if t != decider.LOCAL]
        if not req.placement.startswith("peer:"):  # a pinned job runs there or nowhere: no spares
            order += [p for p in sorted(views) if p not in order]
        required = sum(1 for t in plan.executors if t != decider.LOCAL)
        workers: list[tuple[bytes, int]] = []
        for i, peer in enumerate(order[:min(MAX_PAYMENTS, req.replicas + 2)]):
            max_pay = (views[peer].price_per_unit if peer in views else 1) * units
            if i >= required and req.budget and \
                    self.economy.lock_amount([m for _, m in workers] + [max_pay]) > req.budget:
                continue  # a spare the budget cannot cover is left out (it is then not asked to run the job)
            escrow.max_pay[peer] = max_pay
            escrow.account[peer] = account_of_peer(peer)
            workers.append((escrow.account[peer], max_pay))
        amount = self.economy.lock_amount([m for _, m in workers])
        if req.budget and amount > req.budget:
            raise BudgetExceeded(f"the escrow for {req.capsule} needs {amount} credits ({units} unit(s) at up to "
                                 f"{max(m for _, m in workers) // max(1, units)} per unit for {len(workers)} "
                                 f"worker(s), plus the fee) but the budget is {req.budget}",
                                 kind="budget", used=amount, limit=req.budget)
        deadline_ms = int(time.time() * 1000 + max(0.0, deadline - trio.current_time()) * 1000)
        try:
            block = await self.economy.lock(job_id, amount, workers, deadline_ms)
        except BlockRejected as exc:
            bal = self.economy.balance()["balance"]
            raise BudgetExceeded(f"cannot lock {amount} credits in escrow for {req.capsule}: {exc.reason} "
                                 f"(balance {bal})", kind="budget", used=amount, limit=bal) from None
        escrow.block = encode_block(block)
        escrow.lock = block
        escrow.amount = amount

    async def _settle(self, job_id: str, req: SubmitRequest, escrow: _Escrow,
                      paid: list[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
        """Pay the workers of verified results (their receipt's cost at their price, capped by the
        escrow), the fee to the treasury, and refund the rest; returns what the job record shows."""
        from inos_node.mesh import price_units

        model = self._cost_model(req)
        payments, receipts = [], []
        for peer, rec in paid:
            cap = escrow.max_pay.get(peer, 0)
            units = price_units(model, int(rec.get("_cost_units") or 1))
            per_unit = cap // max(1, self._cost_units(req))
            payments.append((escrow.account[peer], min(cap, per_unit * units)))
            receipts.append(self.economy.know_receipt(rec["_receipt"]))
        block = await self.economy.settle(job_id, payments, receipts)
        escrow.settled = True
        paid_total = sum(p for _, p in payments)
        fee = self.economy.fee_of(paid_total)
        return {"cost": paid_total + fee,
                "settlement": {"paid": paid_total, "fee": fee, "refunded": escrow.amount - paid_total - fee,
                               "escrow": escrow.amount, "block": block_hash_hex(block)}}

    async def _run_on(self, job_id: str, req: SubmitRequest, target: str, left_ms: int,
                      escrow: _Escrow | None = None) -> dict[str, Any]:
        if target == decider.LOCAL:
            result = await self.local.execute(self._job_request(job_id, req, left_ms))
            return self._record_from(result, "local", None)
        if escrow is None:
            return await self.net.run_remote(job_id, req, target, left_ms)
        assert self.economy is not None
        # the worker needs our chain up to the lock: send what it is not known to hold yet
        chain = self.economy.chain_before(escrow.lock, peer=target)
        rec = await self.net.run_remote(job_id, req, target, left_ms, escrow.block, chain)
        if rec["status"] == Status.SUCCESS.value:
            self.economy.peer_holds(target, escrow.lock.height)  # it ran the job: it took the lock
        return rec

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


@dataclass
class _Escrow:
    """A job's escrow, as its requester tracks it."""

    block: bytes = b""  # the encoded escrow_lock block (sent with every delegate request)
    lock: Any = None  # the same block, decoded
    amount: int = 0
    settled: bool = False
    max_pay: dict[str, int] = field(default_factory=dict)  # peer id -> max pay
    account: dict[str, bytes] = field(default_factory=dict)  # peer id -> account id

    def pays(self, target: str) -> bool:
        """Whether ``target`` may run the job: this node (free), or a peer the lock names (a peer
        it does not name would refuse the job as unpaid)."""
        return target == decider.LOCAL or target in self.max_pay


def _public(rec: dict[str, Any]) -> dict[str, Any]:
    """A record without its private ("_") keys, for the job book."""
    return {k: v for k, v in rec.items() if not k.startswith("_")}


def block_hash_hex(block: Any) -> str:
    from inos_node.economy.model import block_hash

    return block_hash(block).hex()


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
