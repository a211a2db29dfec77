"""The node's mesh side: libp2p host, hello gate, gossip adverts, DHT, delegation and blobs.

``Mesh(daemon).open()`` starts, in this order, so that no peer is served before it is checked:

    host ─► DHT ─► gossip (+ advert book and publisher) ─► hello gate ─► delegation and blob
    servers and clients ─► bootstrap dials

Serving a peer's capsule (``_serve``): fetch the input (inline, or by digest from the requester
over /inos/blob), run it through the node's engine exactly as a local capsule, put a large output
in the blob store, and sign a receipt over (job, requester, capsule, input digest, output digest,
cost, metrics).

Running a capsule on a peer (``run_remote``): small inputs inline, large ones by digest (pushed
to the worker first over /inos/blob-push, and offered from our blob store and announced in the DHT
for a worker that did not take the push); on the answer, fetch the output if it came by digest
and verify the receipt before the result is accepted.

A worker answers a small job that runs inline without a task of its own (``_serve_now``: the
delegation server's fast path); anything that would wait (a blob to fetch, a ledger gap, a
thread or worker-process capsule) takes ``_serve``.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import Any

import blake3
import trio

from inos_node import __version__
from inos_node.economy.node import account_of_peer
from inos_node.errors import InvalidParams, LedgerError, PeerError, RemoteProtocolError
from inos_node.logs import job_context
from inos_node.net.blobs import BlobClient, BlobPusher, BlobPushServer, BlobServer, MemoryBlobStore
from inos_node.net.delegation import DelegationClient, DelegationServer
from inos_node.net.dht import Dht
from inos_node.net.discovery import Bootstrapper
from inos_node.net.gossip import AdvertBook, AdvertPublisher, Gossip, Topic, adverts_topic, unix_ms
from inos_node.net.hello import HelloGate
from inos_node.net.host import HostConfig, connect, open_host, public_key_of_peer_id
from inos_node.protocols.adverts import Advert, MethodPrice
from inos_node.protocols.decider import PeerView
from inos_node.receipts import receipt_json, sign_receipt, verify_receipt
from inos_node.types import Digest, JobRequest, JobResult, Status
from inos_node.wire.delegation import DelegateResponse, DelegateRun

__all__ = ["Mesh"]

log = logging.getLogger(__name__)

INLINE_MAX = 256 * 1024
# The price model (credits per cost unit, by the method's cost model): a call, a MiB of input, or
# a million units of WASM fuel.  ``price_units`` turns an engine cost into those units.
PRICES = {"call": 1, "mib": 1, "fuel": 1}
FUEL_PER_UNIT = 1_000_000
NONPAYER_LIMIT = 2  # a requester that refunded this many jobs we delivered gets no more work from us


_MAX_TO_CLAIM = 4096


def price_units(cost_model: str, cost: int) -> int:
    """Billable units of an engine ``cost`` (calls, MiB, or fuel) under ``cost_model``."""
    if cost_model == "fuel":
        return max(1, -(-int(cost) // FUEL_PER_UNIT))
    return max(1, int(cost))


class Mesh:
    def __init__(self, daemon: Any) -> None:
        self.daemon = daemon
        self.peer_id = ""
        self.host: Any = None
        self.blobs = MemoryBlobStore()
        self._rtt_ms: dict[str, float] = {}
        self._fail: dict[str, int] = {}
        self._ok: dict[str, int] = {}
        # fast answers' receipts for a claim, until the answer is written (see ``_answered``)
        self._to_claim: dict[tuple[str, str], tuple[Any, int]] = {}
        self._mismatch: dict[str, int] = {}
        self.served = 0
        self._nursery: trio.Nursery | None = None
        self._provided: set[bytes] = set()

    # ------------------------------------------------------------------ lifetime
    @asynccontextmanager
    async def open(self) -> AsyncIterator[Mesh]:
        d = self.daemon
        cfg = d.config
        async with open_host(d.identity, HostConfig(listen=cfg.listen, announce=cfg.announce, mdns=cfg.mdns)) as host:
            self.host = host
            self.peer_id = str(host.get_id().to_base58())
            async with trio.open_nursery() as n:
                self.dht = Dht(host)
                await n.start(self.dht.run)
                self.book = AdvertBook()
                self.publisher = AdvertPublisher(d.identity, self._make_advert, interval_s=cfg.advert_interval_s)
                topics = [adverts_topic(self.book, self.publisher)]
                economy = d.economy
                if economy is not None:
                    topics.append(Topic(economy.topic_name,
                                        on_message=lambda msg: economy.on_message(msg.data, msg.from_peer),
                                        validate=lambda msg: economy.validate(msg.data)))
                self.gossip = Gossip(host, d.identity, topics=topics)
                await n.start(self.gossip.run)
                await n.start(self.book.run)
                await n.start(self.publisher.run, self.gossip)
                self.gate = HelloGate(host, d.identity, d.network_id, name=cfg.name, on_verified=self._verified)
                await n.start(self.gate.run)
                if economy is not None:
                    from inos_node.net.ledger_sync import LedgerSyncClient, LedgerSyncServer

                    await n.start(LedgerSyncServer(host, economy.sync_source(), admit=self.gate.admit).run)
                    self.ledger_sync = LedgerSyncClient(host)
                    await n.start(self.ledger_sync.run)
                    economy.attach(self.gossip, self.ledger_sync,
                                   lambda: sorted(self.connected() & set(self.gate.verified_peers())),
                                   self_peer=self.peer_id)
                    await n.start(economy.run)
                self.server = DelegationServer(host, self._serve, max_concurrent=cfg.max_jobs, admit=self.gate.admit,
                                               fast=self._serve_now,
                                               answered=self._answered)
                await n.start(self.server.run)
                self.client = DelegationClient(host)
                await n.start(self.client.run)
                self.blob_server = BlobServer(host, self.blobs, admit=self.gate.admit)
                await n.start(self.blob_server.run)
                self.blob_client = BlobClient(host)
                await n.start(self.blob_client.run)
                self.push_server = BlobPushServer(host, self.blobs, max_bytes=d.local.engine.config.max_input_bytes,
                                                  admit=self.gate.admit)
                await n.start(self.push_server.run)
                self.pusher = BlobPusher(host)
                if os.environ.get("INOS_BENCH") == "1":  # raw baselines for `inos bench mesh` only
                    from inos_node.net import bench as netbench

                    netbench.register_raw_handlers(host)
                if cfg.bootstrap:
                    self.boot = Bootstrapper(host, list(cfg.bootstrap))
                    await n.start(self.boot.run)
                self._nursery = n
                try:
                    yield self
                finally:
                    self._nursery = None
                    n.cancel_scope.cancel()

    async def _verified(self, peer_id: str) -> None:
        log.info("peer %s verified (same network)", peer_id)
        await self.dht.add_peer(peer_id)
        self.publisher.changed()
        if self.daemon.economy is not None and self._nursery is not None:
            self._nursery.start_soon(self.daemon.economy.sync_with, peer_id)  # a late joiner catches up

    # ------------------------------------------------------------------ views
    def addresses(self) -> list[str]:
        return [str(a) for a in self.host.get_addrs()] if self.host is not None else []

    def connected(self) -> set[str]:
        return {str(p.to_base58()) for p in self.host.get_connected_peers()}

    def peers(self) -> list[dict[str, Any]]:
        now = unix_ms()
        connected = self.connected()
        out = []
        known = set(self.gate.verified_peers()) | {a.peer_id for a in self.book.table.snapshot()}
        for pid in sorted(known - {self.peer_id}):
            advert = self.book.table.get(pid)
            out.append({
                "peer_id": pid,
                "name": advert.name if advert else "",
                "connected": pid in connected,
                "verified": self.gate.verified(pid),
                "addresses": list(advert.addresses) if advert else [],
                "methods": [m.method for m in advert.methods] if advert else [],
                "prices": {m.method: m.price_per_unit for m in advert.methods} if advert else {},
                "load": advert.load if advert else None,
                "queue_depth": advert.queue_depth if advert else None,
                "rtt_ms": round(self._rtt_ms[pid], 3) if pid in self._rtt_ms else None,
                "advert_age_ms": now - advert.issued_unix_ms if advert else None,
                "failures": self._fail.get(pid, 0),
                "successes": self._ok.get(pid, 0),
                "mismatches": self._mismatch.get(pid, 0),
                "unpaid_jobs": self.daemon.economy.nonpayers.get(pid, 0) if self.daemon.economy else 0,
                "reputation": round(self.reputation(pid), 3),
            })
        return out

    def reputation(self, peer_id: str) -> float:
        """0..1 from what this node saw: verified receipts raise it; failures, timeouts and (three
        times as much) replica mismatches lower it; a peer whose account is frozen or was slashed
        on the ledger scores 0.  The decider avoids peers under its ``min_reputation`` and ranks
        the others by cost / reputation."""
        ok, bad, lies = self._ok.get(peer_id, 0), self._fail.get(peer_id, 0), self._mismatch.get(peer_id, 0)
        economy = self.daemon.economy
        if economy is not None:
            try:
                if economy.frozen_key(public_key_of_peer_id(peer_id)):
                    return 0.0
            except RemoteProtocolError:
                return 0.0
        return (ok + 1) / (ok + bad + 3 * lies + 1)

    def record_mismatch(self, peer_id: str) -> None:
        self._mismatch[peer_id] = self._mismatch.get(peer_id, 0) + 1

    def peer_views(self, capsule: str) -> list[PeerView]:
        now = unix_ms()
        connected = self.connected()
        views = []
        for advert in self.book.table.peers_serving(capsule, now):
            if advert.peer_id == self.peer_id or advert.peer_id not in connected:
                continue
            views.append(PeerView(
                peer_id=advert.peer_id, price_per_unit=advert.price_of(capsule) or 0, load=advert.load,
                queue_depth=advert.queue_depth, rtt_ms=self._rtt_ms.get(advert.peer_id, 5.0),
                reputation=self.reputation(advert.peer_id),
            ))
        return views

    async def wait_peers(self, *, peer_id: str | None, serving: str | None, count: int) -> None:
        def met() -> bool:
            if peer_id and self.book.table.get(peer_id) is None:
                return False
            if serving:
                others = [a for a in self.book.table.peers_serving(serving, unix_ms()) if a.peer_id != self.peer_id]
                return len(others) >= count
            return True

        await self.book.wait_until(met)

    def record_failure(self, peer_id: str) -> None:
        self._fail[peer_id] = self._fail.get(peer_id, 0) + 1

    def _make_advert(self) -> Advert:
        d = self.daemon
        info = d.local.runtime_info()
        methods = tuple(
            MethodPrice(m.name, PRICES[m.cost], m.cost) for lib in d.local.engine.libraries for m in lib.methods
        )
        return Advert(
            name=d.config.name, protocol_version=1, methods=methods, load=d._local_load(),
            queue_depth=self.server.statistics().running if hasattr(self, "server") else 0,
            cores=info["cores"], features=tuple(f for f in ("avx2", "avx512", "neon") if info.get(f)),
            addresses=tuple(self.addresses()), api_version=__version__,
        )

    # ------------------------------------------------------------------ requester side
    async def run_remote(self, job_id: str, req: Any, target: str, left_ms: int, escrow: bytes = b"",
                         escrow_chain: tuple[bytes, ...] = ()) -> dict[str, Any]:
        data = req.input
        if req.input_digest is not None:
            raise InvalidParams("input by digest can only run where the content is", param="input_digest")
        payload: Any = data
        held: list[bytes] = []  # what this node now holds for the job: announced in the DHT after it
        try:
            if len(data) > INLINE_MAX:
                digest = self.blobs.put(data)  # hashes once (on all cores for big inputs)
                payload = Digest(digest)
                held.append(digest)
                await self._push(target, digest, data, left_ms)
            else:
                digest = blake3.blake3(data).digest()
            module, module_digest = req.module, None
            if module is not None and len(module) > INLINE_MAX:
                module_digest = self.blobs.put(module)
                held.append(module_digest)
                module = None
            job = JobRequest(job_id=job_id, library=req.library, method=req.method, input=payload,
                             params=dict(req.params), budget=req.budget, deadline_ms=left_ms, replicas=1,
                             module=module, module_digest=module_digest)
            t0 = time.perf_counter()
            try:
                resp: DelegateResponse = await self.client.request(
                    target, job, input_digest=digest, deadline_unix_ms=unix_ms() + left_ms, escrow=escrow,
                    escrow_chain=escrow_chain)
            except PeerError:
                if target in self.connected():
                    raise
                # a peer we know from its advert but have no connection to (yet): dial it, ask again
                await self._ensure_connected(target)
                t0 = time.perf_counter()
                resp = await self.client.request(target, job, input_digest=digest,
                                                 deadline_unix_ms=unix_ms() + left_ms, escrow=escrow,
                                                 escrow_chain=escrow_chain)
            result = resp.result
            output = b""
            body = None
            if result.ok:
                if isinstance(result.output, Digest):
                    output = await self.blob_client.fetch(target, result.output.value,
                                                          max_bytes=self.daemon.local.engine.config.max_input_bytes)
                else:
                    output = bytes(result.output)  # type: ignore[arg-type]
                body = verify_receipt(resp.receipt, worker=target, job_id=job_id, requester=self.peer_id,
                                      capsule=req.capsule, input_digest=digest, output=output)
                self._ok[target] = self._ok.get(target, 0) + 1
            elapsed_ms = (time.perf_counter() - t0) * 1000
            network_ms = max(0.0, elapsed_ms - result.metrics.wall_ns / 1e6)
            self._rtt_ms[target] = 0.8 * self._rtt_ms.get(target, network_ms) + 0.2 * network_ms
            return {
                "status": result.status.value,
                "output": output if result.ok else None,
                "output_len": len(output),
                "executor": target,
                "cost": result.cost,
                "metrics": result.metrics.as_dict(),
                "receipt": receipt_json(resp.receipt, body) if result.ok and resp.receipt is not None else None,
                "error": result.error,
                "_receipt": resp.receipt if result.ok else None,  # for settlement (the daemon strips "_" keys)
                "_cost_units": body.cost if body is not None else 0,
            }
        finally:
            # After the job, not before: the worker gets the bytes from us (pushed, or fetched from
            # us), so a record naming us helps only others, later; made during the push, the
            # announcement would compete with it for the CPU (measured: about 1 % of a 64 MiB job)
            for d in held:
                self._announce(d)

    async def _push(self, target: str, digest: bytes, data: Any, left_ms: int) -> None:
        """Hand a large input to the worker before the request (``/inos/blob-push``): one stream
        of raw bytes instead of the worker pulling chunks.  Best effort: if the push does not
        happen, the worker fetches the input over /inos/blob as before."""
        try:
            with trio.move_on_after(left_ms / 1000.0):
                await self.pusher.push(target, digest, data)
        except (PeerError, RemoteProtocolError) as exc:
            log.info("input %s not pushed to %s (it will fetch it): %s", digest.hex()[:16], target, exc)

    def _announce(self, digest: bytes) -> None:
        """Provide ``digest`` in the DHT in the background (a peer lacking it can find us)."""
        if self._nursery is not None and digest not in self._provided:
            self._provided.add(digest)
            self._nursery.start_soon(self._provide, digest)

    async def _provide(self, digest: bytes) -> None:
        try:
            await self.dht.provide(digest)
        except PeerError as exc:
            log.info("could not announce %s in the DHT: %s", digest.hex()[:16], exc)

    async def _ensure_connected(self, peer_id: str) -> None:
        """Dial a peer we know of (from its advert) but are not connected to yet."""
        if peer_id in self.connected():
            return
        advert = self.book.table.get(peer_id)
        tried = []
        for addr in advert.addresses if advert else ():
            try:
                await connect(self.host, addr)
            except PeerError as exc:
                tried.append(str(exc))
                continue
            with trio.move_on_after(5):
                await self.gate.wait_verified(peer_id)
            return
        if not tried and advert is None:
            raise PeerError(f"peer {peer_id} is not connected and has advertised no address")
        if tried:
            raise PeerError(f"cannot reach peer {peer_id}: {'; '.join(tried)}")

    # ------------------------------------------------------------------ worker side
    async def _serve(self, run: DelegateRun, peer_id: str) -> DelegateResponse:
        with job_context(run.job.job_id, peer_id=peer_id):
            return await self._serve_job(run, peer_id)

    def _serve_now(self, run: DelegateRun, peer_id: str) -> DelegateResponse | None:
        """``_serve`` without awaiting, for the common small job: an inline input, a capsule that
        runs inline, and an escrow that applies without fetching anything.  None when any step
        would have to wait (the delegation server then runs ``_serve`` in a task of its own).
        The same checks, in the same order, as ``_serve_job``."""
        job = run.job
        d = self.daemon
        if d.config.test_hang or job.module_digest or not isinstance(job.input, bytes | bytearray | memoryview):
            return None
        if not d.local.runs_now(job):
            return None
        with job_context(job.job_id, peer_id=peer_id):
            refused = self._refuse_nonpayer(run, peer_id)
            if refused is not None:
                return refused
            escrow: dict[str, Any] | None = None
            if d.economy is not None:
                try:
                    kw: dict[str, Any] = {"requester_key_account": account_of_peer(peer_id), "job": job.job_id,
                                          "peer": peer_id, "chain": run.escrow_chain}
                    escrow = (d.economy.trust_escrow_now(run.escrow, **kw)
                              or d.economy.accept_escrow_now(run.escrow, **kw))
                except (LedgerError, RemoteProtocolError) as exc:
                    return self._unpaid(run, peer_id, exc)
                if escrow is None:
                    return None  # the lock waits for blocks to fetch: the slow path does it
            data = job.input if isinstance(job.input, bytes) else bytes(job.input)
            try:
                _check_inline(data, run.input_digest)
            except RemoteProtocolError as exc:
                return DelegateResponse(run.request_id, JobResult(job.job_id, Status.FAILED, error=str(exc),
                                                                  retryable=True))
            result = d.local.execute_now(job if data is job.input else replace(job, input=data))
            if result is None:  # (the escrow, if any, is applied or checked now; the slow path finds it open)
                if d.economy is not None:
                    d.economy.check_later(peer_id)
                return None
            response = self._answer(run, peer_id, result)
            if escrow is not None and response.receipt is not None:  # recorded once the answer is out
                self._to_claim[(peer_id, job.job_id)] = (response.receipt, int(escrow["deadline_ms"]))
                if len(self._to_claim) > _MAX_TO_CLAIM:  # (never: every fast answer is followed by _answered)
                    del self._to_claim[next(iter(self._to_claim))]
            return response

    def _answered(self, run: DelegateRun, peer_id: str) -> None:
        """The delegation server wrote ``_serve_now``'s answer (or failed to): remember its
        receipt for a claim, then check the lock if it was taken on trust."""
        economy = self.daemon.economy
        if economy is not None:
            owed = self._to_claim.pop((peer_id, run.job.job_id), None)
            if owed is not None:
                economy.expect_payment(peer_id, run.job.job_id, *owed)
            economy.check_later(peer_id)

    def _refuse_nonpayer(self, run: DelegateRun, peer_id: str) -> DelegateResponse | None:
        economy = self.daemon.economy
        if economy is None or economy.nonpayers.get(peer_id, 0) < NONPAYER_LIMIT:
            return None
        return DelegateResponse(run.request_id, JobResult(
            run.job.job_id, Status.FAILED, retryable=False,
            error=f"unpaid: you refunded {economy.nonpayers[peer_id]} jobs this node delivered"))

    @staticmethod
    def _unpaid(run: DelegateRun, peer_id: str, exc: Exception) -> DelegateResponse:
        log.info("job=%s: refused for %s: %s", run.job.job_id, peer_id, exc)
        return DelegateResponse(run.request_id, JobResult(run.job.job_id, Status.FAILED,
                                                          error=f"unpaid: {exc}", retryable=False))

    async def _serve_job(self, run: DelegateRun, peer_id: str) -> DelegateResponse:
        job = run.job
        if self.daemon.config.test_hang:
            await trio.sleep_forever()  # test-only: a peer that is alive but never answers
        refused = self._refuse_nonpayer(run, peer_id)
        if refused is not None:
            return refused
        escrow: dict[str, Any] | None = None
        if self.daemon.economy is not None:
            try:  # escrow before execution: no valid lock naming us, no work
                escrow = await self.daemon.economy.accept_escrow(
                    run.escrow, requester_key_account=account_of_peer(peer_id),
                    job=job.job_id, peer=peer_id, chain=run.escrow_chain)
            except (LedgerError, RemoteProtocolError) as exc:
                return self._unpaid(run, peer_id, exc)
        try:
            data = await self._input_of(job.input, run.input_digest, peer_id)
            module = job.module
            if module is None and job.module_digest:
                module = await self._blob(job.module_digest, peer_id)
        except (PeerError, RemoteProtocolError) as exc:
            if isinstance(job.input, Digest):
                self.push_server.used(job.input.value)  # (claimed if its input was held)
            return DelegateResponse(run.request_id, JobResult(job.job_id, Status.FAILED, error=str(exc),
                                                              retryable=True))
        local_req = replace(job, input=data, module=module, module_digest=None)
        try:
            result = await self.daemon.local.execute(local_req)
        finally:
            if isinstance(job.input, Digest):
                self.push_server.used(job.input.value)
        response = self._answer(run, peer_id, result)
        if escrow is not None and response.receipt is not None:  # if the requester never settles, we claim
            self.daemon.economy.expect_payment(peer_id, job.job_id, response.receipt, int(escrow["deadline_ms"]))
        return response

    def _answer(self, run: DelegateRun, peer_id: str, result: JobResult) -> DelegateResponse:
        """The response to a job that ran: the result and, on success, the signed receipt."""
        job = run.job
        self.served += 1
        self.daemon.book.emit({"type": "served", "job_id": job.job_id, "requester": peer_id,
                               "capsule": f"{job.library}.{job.method}", "status": result.status.value})
        if not result.ok:
            return DelegateResponse(run.request_id, replace(result, executor=self.peer_id))
        output = bytes(result.output)  # type: ignore[arg-type]
        if self.daemon.config.test_corrupt_outputs and output:
            output = bytes([output[0] ^ 0xFF]) + output[1:]
        receipt = sign_receipt(self.daemon.identity, job_id=job.job_id, requester=peer_id, worker=self.peer_id,
                               capsule=f"{job.library}.{job.method}", input_digest=run.input_digest, output=output,
                               cost=result.cost, metrics=result.metrics)
        out_payload: Any = output
        if len(output) > INLINE_MAX:
            out_payload = Digest(self.blobs.put(output))
        return DelegateResponse(run.request_id, replace(result, output=out_payload, executor=self.peer_id),
                                receipt)

    async def _input_of(self, payload: Any, digest: bytes, requester: str) -> Any:
        """The input's bytes (bytes-like: a large fetched one is a populated mapping, see
        ``BlobClient.fetch_input``), checked against ``digest``."""
        if isinstance(payload, Digest):
            return await self._blob(payload.value, requester, as_input=True)
        data = bytes(payload)
        _check_inline(data, digest)
        return data

    async def _blob(self, digest: bytes, requester: str, *, as_input: bool = False) -> Any:
        """The blob named ``digest``: ours, or fetched from the requester, or from a provider the
        DHT knows.  ``as_input``: any bytes-like will do (a capsule's input), else ``bytes``."""
        held = self.blobs.get(digest)
        if held is not None:  # ours, or pushed to us by the requester
            if not as_input:
                return bytes(held)
            self.push_server.claim(digest)  # released by ``used`` once the job has run
            return held
        limit = self.daemon.local.engine.config.max_input_bytes
        fetch = self.blob_client.fetch_input if as_input else self.blob_client.fetch
        try:
            got = await fetch(requester, digest, max_bytes=limit)
        except PeerError:
            for provider in await self.dht.find_providers(digest):
                if provider not in (requester, self.peer_id):
                    try:
                        got = await fetch(provider, digest, max_bytes=limit)
                        break
                    except PeerError:
                        continue
            else:
                raise
        return got if as_input else bytes(got)


def _check_inline(data: bytes, digest: bytes) -> None:
    """An inline input must hash to the digest its request names (the receipt signs that digest)."""
    if blake3.blake3(data).digest() != digest:
        raise RemoteProtocolError("the inline input does not match its digest")
