"""The economy across real node processes: escrow, settlement, gossip and sync of the ledger, fraud.

Every test builds its own credits network (``_economy.EcoNet``: identities, one genesis, nodes
started with ``--genesis``) and checks the ledger through the nodes' API: the same state hash
everywhere once gossip and sync have run, ``verify`` (every block re-checked from genesis), and
the supply (balances + escrow + staked == minted).  The job records are cross-checked against the
ledger: what a requester's jobs say they cost is what its balance lost, what they say was paid
is what the workers and the treasury gained.
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor, as_completed

import blake3
import pytest
from _economy import EcoNet, wait_for

from inos_node.api.service import SubmitRequest
from inos_node.economy.genesis import DEFAULT_FEE_BPS as FEE_BPS
from inos_node.economy.ledger import settle_fee

pytestmark = pytest.mark.integration

GOSSIP_HISTORY_MS = 6000  # gossipsub's message cache: 5 heartbeats of 1 s (net.gossip), and a margin
FINISHED_CLEANLY = {"success", "failed", "timeout"}


def _jobs(client, reqs, *, workers: int, after: int = 0, then=None) -> list:
    """Run ``reqs`` on ``client`` from ``workers`` threads; call ``then()`` once ``after`` have finished."""
    records = []
    with ThreadPoolExecutor(workers) as pool:
        futures = [pool.submit(client.run, r) for r in reqs]
        for done, fut in enumerate(as_completed(futures), 1):
            records.append(fut.result())
            if then is not None and done == after:
                then()
    return records


def _watch(node, name: str, subscribed: threading.Event, on_event) -> None:
    """Follow ``node``'s job events until JOBS jobs finished; ``on_event(name, ev)`` for each."""
    finished = 0
    with node.client().events(timeout=120) as events:
        for ev in events:
            if ev["type"] == "subscribed":
                subscribed.set()
            on_event(name, ev)
            finished += ev["type"] == "finished"
            if finished == JOBS:
                return


JOBS = 15  # per requester


def test_five_nodes_remote_workload_with_a_worker_killed_converge(tmp_path):
    """30 capsules from two requesters on 5 nodes; a worker is SIGKILLed with jobs in flight on it.

    w4 holds every capsule it accepts without answering (INOS_TEST_HANG), so jobs surely are in
    flight on it when it is killed: 4 are pinned to it (no fallback: they fail cleanly and their
    escrow is refunded), remote ones that the decider sent there are retried on another worker.
    """
    names = ["r0", "r1", "w2", "w3", "w4"]
    net = EcoNet(tmp_path, names)
    try:
        net.start("r0")
        net.start_many(names[1:], bootstrap=["r0"], env={"w4": {"INOS_TEST_HANG": "1"}})
        for n in names:
            assert net.nodes[n].client().wait_peers(serving="compute.blake3", count=4, timeout_s=60), n
        victim = net.nodes["w4"]
        did_of_peer = {net.nodes[n].peer_id: net.dids[n] for n in names}

        inputs = [f"job {i}".encode() * 100 for i in range(2 * JOBS)]
        plans = {"r0": inputs[:JOBS], "r1": inputs[JOBS:]}
        on_victim: dict[str, set[str]] = {"r0": set(), "r1": set()}  # job ids that ran on w4
        lock = threading.Lock()

        def on_event(name: str, ev: dict) -> None:
            if ev["type"] == "running" and victim.peer_id in ev.get("executor", ""):
                with lock:
                    on_victim[name].add(ev["job_id"])
                    if sum(map(len, on_victim.values())) >= 4 and victim.proc.poll() is None:
                        victim.kill()

        results: dict[str, list] = {}

        def requester(name: str) -> None:
            client = net.nodes[name].client()
            pin = f"peer:{victim.peer_id}"
            reqs = [SubmitRequest("compute.blake3", data, placement=pin if i < 2 else "remote", timeout_s=40)
                    for i, data in enumerate(plans[name])]
            results[name] = _jobs(client, reqs, workers=5)

        subscribed = {n: threading.Event() for n in plans}
        watchers = [threading.Thread(target=_watch, args=(net.nodes[n], n, subscribed[n], on_event))
                    for n in plans]
        for t in watchers:
            t.start()
        assert all(e.wait(30) for e in subscribed.values()), "both event streams are live"
        threads = [threading.Thread(target=requester, args=(n,)) for n in plans]
        for t in threads:
            t.start()
        for t in (*threads, *watchers):
            t.join()

        assert victim.proc.poll() is not None, "w4 was killed with jobs in flight on it"
        records = results["r0"] + results["r1"]
        assert len(records) == 2 * JOBS
        by_status = Counter(r.status for r in records)
        assert set(by_status) <= FINISHED_CLEANLY, by_status
        expected = {blake3.blake3(d).digest() for d in inputs}
        for rec in records:
            if rec.ok:
                assert rec.output in expected and rec.executor != victim.peer_id
                assert rec.settlement is not None, f"a remote success is settled: {rec}"
                assert rec.cost == rec.settlement["paid"] + rec.settlement["fee"] > 0
            else:
                assert rec.error, "a failure says why"
                assert rec.settlement is None and rec.cost == 0, "a failed job costs nothing"
        pinned = [r for r in records if r.executor == victim.peer_id]
        assert len(pinned) == 4 and not any(r.ok for r in pinned), "the jobs pinned to w4 failed cleanly"
        sent_to_victim = on_victim["r0"] | on_victim["r1"]
        retried = [r for r in records if r.job_id in sent_to_victim and r.executor != victim.peer_id]
        assert all(r.ok for r in retried), [r.error for r in retried if not r.ok]
        assert by_status["success"] == 2 * JOBS - 4, f"every remote job succeeded: {by_status}"

        survivors = names[:4]
        state = net.converge(survivors, timeout=60)
        for n in survivors:
            supply = net.check_ledger(n)
            assert supply["escrow"] == 0, f"{n}: no escrow left open once the jobs are done: {supply}"
            assert supply["stats"]["frozen"] == 0 and supply["stats"]["proofs"] == 0
        # the job records and the ledger agree: requesters lost what their jobs cost, every
        # worker gained what it was paid, the treasury the fees
        gained: Counter = Counter()
        for rec in records:
            if rec.ok:
                gained[did_of_peer[rec.executor]] += rec.settlement["paid"]
                gained[net.treasury] += rec.settlement["fee"]
        client = net.nodes["w2"].client()
        for n in plans:
            spent = sum(r.cost for r in results[n])
            assert client.balance(net.dids[n])["balance"] == net.alloc - spent + gained[net.dids[n]], n
        for n in names[2:]:
            assert client.balance(net.dids[n])["balance"] == net.alloc + gained[net.dids[n]], n
        assert client.balance(net.treasury)["balance"] == gained[net.treasury] > 0

        # the killed worker restarts (honest now) on its data dir and catches up: a late joiner
        net.start("w4", bootstrap=["w3"])
        assert net.converge(names, timeout=60) == state
        net.check_ledger("w4")
    finally:
        net.close()


def test_a_lying_worker_is_never_paid_and_is_slashed(tmp_path):
    """A requests sha256 with 2 replicas among B (corrupts outputs), C and D until B is a replica.

    The replicas disagree, the third peer breaks the tie, the majority is paid, and B's own signed
    receipt with the majority's two receipts is the evidence of a slash: B's stake is seized, half
    to A and half to the treasury, and B is frozen everywhere.
    """
    names = ["a", "b", "c", "d"]
    net = EcoNet(tmp_path, names)
    try:
        a = net.start("a")
        net.start_many(names[1:], bootstrap=["a"], env={"b": {"INOS_TEST_CORRUPT_OUTPUTS": "1"}})
        ca, cb = a.client(), net.nodes["b"].client()
        assert ca.wait_peers(serving="compute.sha256", count=3, timeout_s=60)
        peer = {n: net.nodes[n].peer_id for n in names}
        did_of_peer = {peer[n]: net.dids[n] for n in names}
        b_did = net.dids["b"]

        staked = cb.ledger_post("stake", {"amount": 100})
        assert staked["staked"] == 100 and staked["balance"] == net.alloc - 100
        wait_for(lambda: ca.balance(b_did)["staked"] == 100, 30, "A to see B's stake")

        records = []
        for i in range(12):  # each job picks 2 of B, C, D: B is among them 2 times in 3
            data = f"trust but verify {i}".encode()
            rec = ca.run(SubmitRequest("compute.sha256", data, replicas=2, placement="remote", timeout_s=40))
            records.append(rec)
            assert rec.ok, rec.error
            assert rec.output == hashlib.sha256(data).digest(), "the honest output is the one accepted"
            if any(r["executor"] == peer["b"] for r in rec.replicas):
                break
        else:
            pytest.fail("B was never chosen as a replica in 12 jobs")
        caught = records[-1]
        assert peer["b"] in caught.error and "disagreed" in caught.error
        assert {r["executor"] for r in caught.replicas} == {peer[n] for n in "bcd"}, "a tie-breaker ran"
        assert caught.settlement is not None and caught.settlement["paid"] > 0

        def slashed() -> dict | None:
            bal = ca.balance(b_did)
            return bal if bal["frozen"] else None

        b_seen = wait_for(slashed, 30, "B frozen on A")
        assert b_seen["staked"] == 0, b_seen
        assert b_seen["balance"] == net.alloc - 100, "B was paid nothing: its balance is what staking left"
        state = net.converge(names, timeout=60)
        for n in names:
            supply = net.check_ledger(n)
            assert (supply["escrow"], supply["staked"], supply["stats"]["frozen"]) == (0, 0, 1), (n, supply)
            assert net.nodes[n].client().balance(b_did)["frozen"], f"{n} sees B frozen"
        assert state

        # no settle block ever paid B; the slash shares its 100 staked credits between A and the treasury
        blocks = ca.history(net.dids["a"])["blocks"]
        settles = [blk for blk in blocks if blk["type"] == "settle"]
        assert len(settles) == len(records)
        assert all(p["did"] != b_did for blk in settles for p in blk["payments"])
        slashes = [blk for blk in blocks if blk["type"] == "slash"]
        assert len(slashes) == 1 and slashes[0]["counterparty"] == b_did and slashes[0]["amount"] == 100
        assert sorted((p["did"], p["amount"]) for p in slashes[0]["payments"]) == \
            sorted([(net.dids["a"], 50), (net.treasury, 50)])
        fees = sum(r.settlement["fee"] for r in records)
        assert ca.balance(net.treasury)["balance"] == fees + 50
        assert ca.balance()["balance"] == net.alloc - sum(r.cost for r in records) + 50
        paid: Counter = Counter()
        for blk in settles:
            for p in blk["payments"]:
                paid[p["did"]] += p["amount"]
        for n in ("c", "d"):
            assert ca.balance(net.dids[n])["balance"] == net.alloc + paid[net.dids[n]]
        assert set(paid) <= {did_of_peer[peer["c"]], did_of_peer[peer["d"]]}

        reputation = {p["peer_id"]: p["reputation"] for p in ca.peers()}
        honest = min(reputation[peer["c"]], reputation[peer["d"]])
        assert reputation[peer["b"]] == min(reputation.values()) < honest, reputation
    finally:
        net.close()


def test_a_cloned_identity_spending_twice_is_frozen_everywhere(tmp_path):
    """X and X2 run from copies of one data dir (one key, so one peer id); both spend X's whole
    balance at once, X to Y and X2 to Z: two signed blocks at X's height 1.

    libp2p keeps one connection per peer id, so a node talks to whichever of X and X2 reached it
    first (the other's hello never completes there).  The test therefore runs two islands,
    {Y, X} and {Z, X2}, that each apply one branch, and heals the partition with W, bootstrapped to
    Y and Z, once both transfers have left every gossip history (so only the ledger sync can bring
    the other branch across).  Then every node must hold the proof, cut X's chain before both
    spends (both transfers reverted), freeze X, and conserve the supply.
    """
    net = EcoNet(tmp_path, ["x", "y", "z", "w"], clones={"x2": "x"})
    try:
        net.start_many(["y", "z"])
        with ThreadPoolExecutor(2) as pool:
            list(pool.map(lambda nb: net.start(nb[0], bootstrap=[nb[1]]), [("x", "y"), ("x2", "z")]))
        x_did, y_did, z_did = net.dids["x"], net.dids["y"], net.dids["z"]
        x_peer = net.nodes["x"].peer_id
        assert x_peer == net.nodes["x2"].peer_id and net.nodes["x2"].info["did"] == x_did
        cy, cz = net.nodes["y"].client(), net.nodes["z"].client()
        assert cy.wait_peers(peer_id=x_peer, timeout_s=60) and cz.wait_peers(peer_id=x_peer, timeout_s=60)

        barrier = threading.Barrier(2)

        def spend(node: str, to: str) -> dict:
            client = net.nodes[node].client()
            barrier.wait(10)
            return client.ledger_post("transfer", {"to": to, "amount": net.alloc})["block"]

        with ThreadPoolExecutor(2) as pool:
            blocks = list(pool.map(spend, ["x", "x2"], [y_did, z_did]))
        assert [b["height"] for b in blocks] == [1, 1] and blocks[0]["hash"] != blocks[1]["hash"], blocks
        wait_for(lambda: cy.balance(y_did)["balance"] == 2 * net.alloc, 30, "Y credited by X's branch")
        wait_for(lambda: cz.balance(z_did)["balance"] == 2 * net.alloc, 30, "Z credited by X2's branch")
        spent_ms = max(b["timestamp_ms"] for b in blocks)

        def fresh_advert(client) -> bool:  # an advert X issued after the spends left gossip's history
            return any(p["peer_id"] == x_peer and p["advert_age_ms"] is not None
                       and time.time() * 1000 - p["advert_age_ms"] > spent_ms + GOSSIP_HISTORY_MS
                       for p in client.peers())

        wait_for(lambda: fresh_advert(cy) and fresh_advert(cz), 30, "a newer advert of X in both islands")
        net.start("w", bootstrap=["y", "z"])

        def frozen_everywhere() -> bool:
            return all(net.nodes[n].client().balance(x_did)["frozen"] for n in ("y", "z", "w"))

        wait_for(frozen_everywhere, 20, "X frozen on Y, Z and W")
        # the clones learn it too (from the proof's gossip, or at the latest from the periodic sync)
        wait_for(lambda: all(net.nodes[n].client().supply()["stats"]["proofs"] >= 1 for n in ("x", "x2")),
                 30, "the proof on X and X2 themselves")
        for n in net.nodes:
            client = net.nodes[n].client()
            supply = net.check_ledger(n)
            assert supply["stats"]["proofs"] >= 1 and supply["stats"]["frozen"] == 1, (n, supply)
            x, y, z = (client.balance(d) for d in (x_did, y_did, z_did))
            assert x["frozen"] and x["height"] == 0 and x["staked"] == 0, f"{n}: X's chain is cut at 0: {x}"
            assert (y["balance"], z["balance"]) == (net.alloc, net.alloc), \
                f"{n}: neither recipient keeps the double-spent credits: {y}, {z}"
            assert x["balance"] == net.alloc
        assert net.converge(net.nodes, timeout=30)
    finally:
        net.close()


def _open_locks(blocks: list[dict]) -> set[str]:
    """Jobs of an account's history locked in escrow and neither settled nor refunded."""
    locked = {b["job"] for b in blocks if b["type"] == "escrow_lock"}
    closed = Counter(b["job"] for b in blocks if b["type"] in ("settle", "refund"))
    assert all(n == 1 for n in closed.values()), f"an escrow closed twice: {closed}"
    return locked - set(closed)


def test_a_requester_killed_with_escrows_open_restarts_consistent(tmp_path):
    """A requester is SIGKILLed while its escrows are locked and not settled: three jobs pinned to
    B (which holds capsules without answering, INOS_TEST_HANG) and remote ones in flight to C.  On
    restart it refunds every open escrow (or settles what it had verified), and the network agrees."""
    names = ["a", "b", "c"]
    net = EcoNet(tmp_path, names)
    try:
        a = net.start("a")
        net.start("b", bootstrap=["a"], env={"INOS_TEST_HANG": "1"})
        net.start("c", bootstrap=["a", "b"])  # B and C stay connected while A is down
        ca, cc = a.client(), net.nodes["c"].client()
        assert ca.wait_peers(serving="compute.blake3", count=2, timeout_s=60)
        assert cc.wait_peers(peer_id=net.nodes["b"].peer_id, timeout_s=60)
        a_did = net.dids["a"]
        for i in range(9):
            placement = f"peer:{net.nodes['b'].peer_id}" if i < 3 else "remote"
            ca.submit(SubmitRequest("compute.blake3", b"in flight %d" % i, placement=placement, timeout_s=5))
        wait_for(lambda: len(_open_locks(ca.history(a_did)["blocks"])) >= 3, 30, "3 open escrows on A")
        a.kill()

        a = net.start("a", bootstrap=["c"])  # the same data dir and identity
        ca = a.client()
        # open escrows wait out their deadline (5 s) + the grace (2 s) for a worker's claim, then
        # are refunded (B hangs: it has no receipt to claim with)
        mine = wait_for(lambda: (m := ca.balance())["escrow"] == 0 and m or None, 60,
                        "A to resolve its open escrows after the restart")
        assert mine["escrow"] == 0
        blocks = ca.history(a_did)["blocks"]
        assert len({b["job"] for b in blocks if b["type"] == "escrow_lock"}) >= 3
        assert not _open_locks(blocks), "every lock is settled or refunded exactly once"
        assert any(b["type"] == "refund" for b in blocks), "the jobs pinned to B were refunded"
        state = net.converge(names, timeout=60)
        assert state == ca.supply()["state_hash"]
        for n in names:
            supply = net.check_ledger(n)
            assert supply["escrow"] == 0, (n, supply)
        paid = sum(b["amount"] for b in blocks if b["type"] == "settle")
        fees = sum(settle_fee(b["amount"], FEE_BPS) for b in blocks if b["type"] == "settle")
        assert cc.balance(a_did)["balance"] == net.alloc - paid - fees
        assert cc.balance(net.treasury)["balance"] == fees
        assert cc.balance(net.dids["b"])["balance"] == net.alloc, "B answered nothing and was paid nothing"
        assert cc.balance(net.dids["c"])["balance"] == net.alloc + paid
    finally:
        net.close()


def test_a_worker_claims_what_a_silent_requester_owes(tmp_path):
    """The requester gets its result but never settles (a test switch that acts like a crash at
    that moment): after the job's deadline the worker presents its receipt, and the requester's
    node settles it; nobody refunds, nothing is lost."""
    net = EcoNet(tmp_path, ["a", "b"])
    try:
        a = net.start("a", env={"INOS_TEST_NO_SETTLE": "1"})
        b = net.start("b", bootstrap=["a"])
        ca, cb = a.client(), b.client()
        assert ca.wait_peers(peer_id=b.peer_id, serving="compute.blake3", timeout_s=30)
        rec = ca.run(SubmitRequest("compute.blake3", b"pay me", placement=f"peer:{b.peer_id}", timeout_s=2))
        assert rec.status == "success" and rec.settlement is None and rec.escrow > 0
        b_did = cb.balance()["did"]
        assert ca.balance()["escrow"] == rec.escrow, "locked, not settled"
        # after the 2 s deadline the worker claims; the requester settles: the escrow is closed
        wait_for(lambda: ca.balance()["escrow"] == 0 or None, 30, "the requester to settle the claim")
        history = [b_["type"] for b_ in ca.history()["blocks"]]
        assert history == ["escrow_lock", "settle"], history
        paid = wait_for(lambda: (cb.balance(b_did)["balance"] > net.alloc) or None, 30, "the worker to be paid")
        assert paid
        net.converge(["a", "b"])
        for name in ("a", "b"):
            net.check_ledger(name)
    finally:
        net.close()


def test_paid_jobs_that_take_the_slow_path_are_paid_once(tmp_path):
    """The worker's task path with a ledger: a large input (pushed before the request, then read
    from the worker's blob store) and a capsule that runs on a thread, both paid; then a small
    inline one (the fast path) after them, so the worker holds the requester's chain as it grows."""
    net = EcoNet(tmp_path, ["a", "b"], alloc=100_000)
    try:
        a = net.start("a")
        b = net.start("b", bootstrap=["a"])
        ca, cb = a.client(), b.client()
        assert ca.wait_peers(peer_id=b.peer_id, serving="compute.sha256", timeout_s=30)
        big = os.urandom(3 * 1024 * 1024)
        jobs = [SubmitRequest("compute.sha256", big, placement=f"peer:{b.peer_id}", timeout_s=30),
                SubmitRequest("compute.brotli_compress", big[: 512 * 1024], placement=f"peer:{b.peer_id}",
                              timeout_s=30),
                SubmitRequest("compute.blake3", b"small", placement=f"peer:{b.peer_id}", timeout_s=30),
                SubmitRequest("compute.blake3", b"small 2", placement=f"peer:{b.peer_id}", timeout_s=30)]
        records = [ca.run(req) for req in jobs]
        for rec in records:
            assert rec.status == "success", rec.error
            assert rec.executor == b.peer_id and rec.settlement is not None and rec.cost > 0, rec
        assert records[0].output == hashlib.sha256(big).digest()
        history = [blk["type"] for blk in ca.history()["blocks"]]
        assert history == ["escrow_lock", "settle"] * 4, history
        assert ca.balance()["escrow"] == 0
        spent = sum(rec.cost for rec in records)
        assert ca.balance()["balance"] == net.alloc - spent
        paid = sum(rec.settlement["paid"] for rec in records)
        wait_for(lambda: cb.balance()["balance"] == net.alloc + paid or None, 30, "the worker to hold its pay")
        # the small jobs came from a requester b had checked already (the large ones): b took their
        # locks on trust (--escrow-credit, default 100), answered, then checked them; all passed
        credit = wait_for(lambda: (c := _escrow_credit(cb))["checked"] == c["trusted"] and c or None, 30,
                          "b to check the locks it took on trust")
        assert credit["trusted"] == 2 and credit["failed_later"] == 0, credit
        net.converge(["a", "b"])
        for name in ("a", "b"):
            net.check_ledger(name)
    finally:
        net.close()


def _escrow_credit(client) -> dict[str, int]:
    """The worker's ``inos_ledger_escrow_credit_total`` counters, from ``GET /metrics``."""
    text = client.request("GET", "/metrics").body.decode()
    found = re.findall(r'^inos_ledger_escrow_credit_total\{event="(\w+)"\} (\d+)', text, re.M)
    return {event: int(value) for event, value in found}


def test_a_budget_that_covers_the_executor_is_enough_whatever_the_spares(tmp_path):
    """``--peer B`` pins the executor (no retry elsewhere), so the escrow names B alone; an unpinned
    job's lock names spare workers (for a retry or a tie-breaker) only as far as its budget goes.
    Either way a budget that covers one worker's price and the fee is enough, however many other
    peers serve the capsule."""
    net = EcoNet(tmp_path, ["a", "b", "c"], alloc=100_000)
    try:
        a = net.start("a")
        b, c = net.start_many(["b", "c"], bootstrap=["a"])
        ca = a.client()
        assert ca.wait_peers(serving="system.echo", count=2, timeout_s=30)
        rec = ca.run(SubmitRequest("system.echo", b"pinned", placement=f"peer:{b.peer_id}", budget=2, timeout_s=30))
        assert rec.status == "success", rec.error
        assert rec.executor == b.peer_id and rec.escrow == 2 and rec.cost == 2, rec
        locks = [blk for blk in ca.history()["blocks"] if blk["type"] == "escrow_lock"]
        assert [p["did"] for p in locks[-1]["payments"]] == [b.client().balance()["did"]], locks[-1]
        # unpinned: the spare (the other peer) would need 2 credits more; the budget leaves it out
        rec = ca.run(SubmitRequest("system.echo", b"anywhere", placement="remote", budget=2, timeout_s=30))
        assert rec.status == "success", rec.error
        assert rec.executor in (b.peer_id, c.peer_id) and rec.escrow == 2 and rec.cost == 2, rec
        locks = [blk for blk in ca.history()["blocks"] if blk["type"] == "escrow_lock"]
        assert len(locks[-1]["payments"]) == 1, locks[-1]
        rec = ca.run(SubmitRequest("system.echo", b"with spare", placement="remote", budget=3, timeout_s=30))
        assert rec.status == "success" and rec.escrow == 3 and rec.cost == 2, rec  # room for the spare: named
        locks = [blk for blk in ca.history()["blocks"] if blk["type"] == "escrow_lock"]
        assert len(locks[-1]["payments"]) == 2, locks[-1]
    finally:
        net.close()


async def test_the_economy_steps_alone_lock_run_settle_and_refund_a_failure(tmp_path):
    """``NodeDaemon.run_remote_paid`` (what ``inos bench mesh`` times as the paid round trip): a
    requester daemon in this process, a worker process on the same genesis.  A success is locked,
    run and settled (the requester loses the job's cost, the worker gains its price); a job the
    worker fails is refunded whole; a node without a ledger refuses."""
    import trio

    from inos_node.daemon import DaemonConfig, NodeDaemon
    from inos_node.testing.procs import free_port

    net = EcoNet(tmp_path, ["a", "b"])
    try:
        b = net.start("b")
        a = NodeDaemon(DaemonConfig(data_dir=tmp_path / "a", listen=("/ip4/127.0.0.1/tcp/0",),
                                    bootstrap=(b.address,), api=f"127.0.0.1:{free_port()}", name="a",
                                    genesis=net.genesis))
        async with trio.open_nursery() as nursery:
            await nursery.start(a.run)
            with trio.fail_after(30):
                await a.net.wait_peers(peer_id=b.peer_id, serving="system.echo", count=1)
            start = a.economy.balance()["balance"]
            rec = await a.run_remote_paid("paid-1", SubmitRequest("system.echo", b"hello"), b.peer_id, 10_000)
            assert rec["status"] == "success" and rec["output"] == b"hello" and rec["receipt"]["worker"] == b.peer_id
            s = rec["settlement"]
            assert rec["cost"] == s["paid"] + s["fee"] > 0 and s["refunded"] == s["escrow"] - rec["cost"]
            assert s["fee"] == settle_fee(s["paid"], FEE_BPS)
            assert (a.economy.balance()["balance"], a.economy.balance()["escrow"]) == (start - rec["cost"], 0)
            # the worker fails this one (bad params): nothing is paid, the lock is refunded
            bad = SubmitRequest("math.dot", b"\0" * 3, params={"count": 1, "dim": 3})
            failed = await a.run_remote_paid("paid-2", bad, b.peer_id, 10_000)
            assert failed["status"] != "success" and "settlement" not in failed
            assert (a.economy.balance()["balance"], a.economy.balance()["escrow"]) == (start - rec["cost"], 0)
            history = [blk.type.name.lower() for blk in a.economy.ledger.history(a.economy.account)]
            assert history == ["escrow_lock", "settle", "escrow_lock", "refund"], history
            worker_did = b.client().balance()["did"]
            wait_for(lambda: b.client().balance(worker_did)["balance"] == net.alloc + s["paid"] or None, 30,
                     "the worker to see its payment")
            nursery.cancel_scope.cancel()
    finally:
        net.close()
