"""``inos bench mesh``: the mesh figures, each beside a raw py-libp2p baseline from the same run.

Setup: node B runs as its own process (``inos node run`` with ``INOS_BENCH=1``, which adds a raw
echo and a raw bulk protocol next to the real ones); node A is a full ``NodeDaemon`` inside this
process, bootstrapped to B.  Every pair below is measured between exactly these two processes:

  remote_rtt_p50_us            system.echo (100 B) submitted on A, run on B, receipt verified on A
  libp2p_stream_rtt_p50_us     raw echo (100 B) over a persistent py-libp2p stream, A <-> B
  remote_throughput_per_s      the same capsule, 32 in flight
  libp2p_stream_throughput_per_s  raw echo, 32 in flight on one stream
  blob_mbps                    compute.blake3 of a 64 MiB input on B: the input moves A -> B as
                               the node moves it (pushed over /inos/blob-push, digest-checked),
                               B hashes it, A verifies the receipt
  libp2p_bulk_mbps             raw one-stream bulk A -> B, 64 MiB in 1 MiB writes
                               (each the median of 5, alternating, after one untimed of each)
  connect_ms                   a new connection A -> B (TCP + Noise + Yamux), median of 10 (between
                               two, the node's hello on the last one is let finish, untimed)
  gossip_p50_ms / gossip_p99_ms  an advert-sized message reaching all of 10 node processes
                               (and of 30 with --gossip-30)

The economy's cost is measured on a second pair, A' (in this process) and B' (a process), both on
a network with a genesis, alive at the same time as A and B, through the daemon's whole job path
(submit, decider, delegation, receipt check; the same path ``inos submit`` takes) on both sides:

  remote_rtt_econ_phase_p50_us remote_rtt again, in the same rounds as the three below (the
                               paid/unpaid ratio is taken against it: same minute, same machine)
  remote_paid_rtt_p50_us       remote_rtt with the economy around it, on A' -> B': A' locks the
                               price in escrow, runs the capsule on B' (Mesh.run_remote, as
                               remote_rtt) and settles once the receipt verifies
                               (``NodeDaemon.run_remote_paid``: the functions a paid job runs)
  remote_job_rtt_p50_us        system.echo submitted on A with --peer B (no ledger), through the
                               daemon's job path (job book, decider: what ``inos submit`` takes)
  remote_paid_job_rtt_p50_us   the same on A' with --peer B': the job path with escrow and settle
  B' runs with the default --escrow-credit (100): after the first job A' is a known payer, so B'
  answers first and checks each lock right after; with --escrow-credit 0 it checks every lock
  before running the job (``worker_escrow_credit`` in the report says which).  Ratios: the paid
  figure against the unpaid one measured the same way (mesh call against mesh call, job path
  against job path), and, for comparison with earlier reports, the paid job path against the
  mesh call (``remote_paid_job_rtt/remote_rtt``: it counts the job book as economy).

How the sides are compared: a machine with 2 cores drifts by tens of percent within a minute, so
each pair is measured in ROUNDS that alternate the two sides (baseline, ours, baseline, ours, ...)
and each figure pools its rounds (latencies: the median of all samples; rates: all the work over
all the time).  ``rounds`` in the report says how many.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

__all__ = ["run_mesh"]

_MIB = 1024 * 1024


async def _main(quick: bool, gossip_30: bool, escrow_credit: int | None, say: Any) -> dict[str, Any]:
    from inos_node.config import by_key
    from inos_node.daemon import DaemonConfig, NodeDaemon
    from inos_node.net.host import quiet_libp2p_logs
    from inos_node.testing.procs import free_port, start_node

    quiet_libp2p_logs()
    rounds = 3 if quick else 5
    report: dict[str, Any] = {"python": sys.version.split()[0], "cpus": os.cpu_count(), "rounds": rounds}
    base = Path(tempfile.mkdtemp(prefix="inos-bench-mesh-"))
    say("starting nodes B and B' (separate processes)")
    b = await trio.to_thread.run_sync(lambda: start_node(base, "b", env={"INOS_BENCH": "1"}))
    try:
        genesis = _paid_genesis(base)
        credit = () if escrow_credit is None else ("--escrow-credit", str(escrow_credit))
        report["worker_escrow_credit"] = by_key("escrow_credit").default if escrow_credit is None else escrow_credit
        pb = await trio.to_thread.run_sync(lambda: start_node(base, "pb", extra=("--genesis", str(genesis), *credit)))
        try:
            daemon = NodeDaemon(DaemonConfig(
                data_dir=base / "a", listen=("/ip4/127.0.0.1/tcp/0",), bootstrap=(b.address,),
                api=f"127.0.0.1:{free_port()}", name="a", arena_size=128 * _MIB))
            paid = NodeDaemon(DaemonConfig(
                data_dir=base / "pa", listen=("/ip4/127.0.0.1/tcp/0",), bootstrap=(pb.address,),
                api=f"127.0.0.1:{free_port()}", name="pa", genesis=genesis))
            async with trio.open_nursery() as nursery:
                await nursery.start(daemon.run)
                await nursery.start(paid.run)
                with trio.fail_after(30):
                    await daemon.net.wait_peers(peer_id=b.peer_id, serving="system.echo", count=1)
                    await paid.net.wait_peers(peer_id=pb.peer_id, serving="system.echo", count=1)
                await _mesh_pairs(report, daemon, b, rounds, quick, say)
                say("the economy: a paid job vs an unpaid one, through the daemon's job path")
                remote, paid_remote, job, paid_job = [], [], [], []
                per = 100 if quick else 200
                for r in range(rounds):
                    remote += await _remote_samples(daemon, b.peer_id, per, f"econ-{r}")
                    paid_remote += await _remote_samples(paid, pb.peer_id, per, f"paid-{r}", paid=True)
                    job += await _job_samples(daemon, b.peer_id, per)
                    paid_job += await _job_samples(paid, pb.peer_id, per)
                rec = paid.jobs(1)[0]
                assert rec.settlement is not None and rec.cost > 0, rec  # it really was paid
                report["remote_rtt_econ_phase_p50_us"] = _p50_us(remote)
                report["remote_paid_rtt_p50_us"] = _p50_us(paid_remote)
                report["remote_job_rtt_p50_us"] = _p50_us(job)
                report["remote_paid_job_rtt_p50_us"] = _p50_us(paid_job)
                nursery.cancel_scope.cancel()
        finally:
            pb.stop()
    finally:
        b.stop()
    from inos_node.net.gossip_bench import gossip_latency

    for count in (10, 30) if gossip_30 else (10,):
        say(f"gossip across {count} node processes")
        # 30 processes on 2 cores saturate near 10 msg/s (the bootstrap node is in every mesh): 5 msg/s
        g = await gossip_latency(count, 10 if quick else 30, interval_s=0.1 if count == 10 else 0.2)
        suffix = "" if count == 10 else f"_{count}"
        report[f"gossip_p50_ms{suffix}"] = g.get("gossip_p50_ms")
        report[f"gossip_p99_ms{suffix}"] = g.get("gossip_p99_ms")
        report[f"gossip_delivered{suffix}"] = g.get("delivered", g.get("delivered_all"))

    def ratio(a: str, b: str) -> float:
        return round(report[a] / report[b], 3)

    report["ratios"] = {
        "remote_rtt/libp2p_stream_rtt": ratio("remote_rtt_p50_us", "libp2p_stream_rtt_p50_us"),
        "remote_throughput/libp2p_stream_throughput": ratio("remote_throughput_per_s",
                                                            "libp2p_stream_throughput_per_s"),
        "blob/libp2p_bulk": ratio("blob_mbps", "libp2p_bulk_mbps"),
        "remote_paid_rtt/remote_rtt": ratio("remote_paid_rtt_p50_us", "remote_rtt_econ_phase_p50_us"),
        "remote_paid_job_rtt/remote_job_rtt": ratio("remote_paid_job_rtt_p50_us", "remote_job_rtt_p50_us"),
        "remote_paid_job_rtt/remote_rtt": ratio("remote_paid_job_rtt_p50_us", "remote_rtt_econ_phase_p50_us"),
    }
    return report


async def _mesh_pairs(report: dict[str, Any], daemon: Any, b: Any, rounds: int, quick: bool, say: Any) -> None:
    """The A <-> B figures, each pair in alternating rounds (see the module docstring)."""
    from inos_node.api.service import SubmitRequest
    from inos_node.net import bench as netbench
    from inos_node.net.host import connect, disconnect

    mesh = daemon.net
    n = (300 if quick else 2000) // rounds
    say("raw libp2p echo vs remote capsule, one at a time")
    raw: list[float] = []
    ours: list[float] = []
    req = SubmitRequest("system.echo", b"x" * 100)
    for r in range(rounds):
        raw += (await netbench.libp2p_stream_rtt_p50_us(mesh.host, b.peer_id, n=n))["samples_s"]
        ours += await _remote_samples(daemon, b.peer_id, n, f"bench-{r}")
    report["libp2p_stream_rtt_p50_us"] = _p50_us(raw)
    report["remote_rtt_p50_us"] = _p50_us(ours)

    say("throughput with 32 in flight")
    m = (1000 if quick else 5000) // rounds
    raw_time = ours_time = 0.0
    for r in range(rounds):
        raw_time += m / (await netbench.libp2p_stream_throughput_per_s(mesh.host, b.peer_id, n=m, in_flight=32))[
            "per_s"]
        counter = iter(range(m))

        async def worker(r: int = r, counter: Any = counter) -> None:
            for i in counter:
                rec = await mesh.run_remote(f"tp-{r}-{i}", req, b.peer_id, 30_000)
                assert rec["status"] == "success", rec

        t0 = time.perf_counter()
        async with trio.open_nursery() as n32:
            for _ in range(32):
                n32.start_soon(worker)
        ours_time += time.perf_counter() - t0
    report["libp2p_stream_throughput_per_s"] = round(rounds * m / raw_time, 1)
    report["remote_throughput_per_s"] = round(rounds * m / ours_time, 1)

    say("64 MiB: raw bulk vs a capsule whose input moves over /inos/blob")
    big = os.urandom(64 * _MIB)
    bulk_s, blob_s = [], []
    # untimed, as the round trips' first 20: the first 64 MiB each side handles (buffers, threads)
    await netbench.libp2p_bulk_mbps(mesh.host, b.peer_id, total=64 * _MIB, direction="push")
    await mesh.run_remote("blob-warm-up", SubmitRequest("compute.blake3", b"w" + big[1:]), b.peer_id, 120_000)
    for i in range(3 if quick else 5):
        bulk_s.append((await netbench.libp2p_bulk_mbps(mesh.host, b.peer_id, total=64 * _MIB,
                                                       direction="push"))["seconds"])
        # new content each run: the executor cannot have it already, so the bytes move again
        breq = SubmitRequest("compute.blake3", bytes([i]) + big[1:])
        t0 = time.perf_counter()
        rec = await mesh.run_remote(f"blob-{i}", breq, b.peer_id, 120_000)
        blob_s.append(time.perf_counter() - t0)
        assert rec["status"] == "success", rec
    report["libp2p_bulk_mbps"] = round(len(big) / statistics.median(bulk_s) / 1e6, 1)
    report["blob_mbps"] = round(len(big) / statistics.median(blob_s) / 1e6, 1)

    say("new connections")
    conns = []
    for _ in range(10):
        await disconnect(mesh.host, b.peer_id)
        t0 = time.perf_counter()
        await connect(mesh.host, b.address)
        conns.append(time.perf_counter() - t0)
        # untimed: the node's hello on the new connection (a signed exchange, both sides) runs
        # to its end, so that it is not measured as part of the next connection
        with trio.fail_after(30):
            await mesh.gate.wait_verified(b.peer_id)
    report["connect_ms"] = round(statistics.median(conns) * 1000, 2)


def _p50_us(samples_s: list[float]) -> float:
    return round(statistics.median(samples_s) * 1e6, 1)


def _paid_genesis(base: Path) -> Path:
    """A genesis funding A' and B' (their identities made now, in their data dirs)."""
    from inos_node.economy.genesis import create_genesis, write_genesis
    from inos_node.identity import DataDir

    dids = [DataDir(base / name).ensure().identity().did for name in ("pa", "pb")]
    doc, _ = create_genesis({d: 10_000_000 for d in dids}, name="bench")
    return write_genesis(base / "genesis.json", doc, force=True)


async def _timed(n: int, one: Any) -> list[float]:
    """Seconds of each of ``n`` calls of ``await one(i)``, one at a time, after 20 untimed."""
    samples = []
    for i in range(n + 20):
        t0 = time.perf_counter()
        await one(i)
        if i >= 20:  # warm-up
            samples.append(time.perf_counter() - t0)
    return samples


async def _remote_samples(daemon: Any, peer: str, n: int, prefix: str, *, paid: bool = False) -> list[float]:
    """Seconds of ``system.echo`` (100 B) run on ``peer`` through the mesh (``Mesh.run_remote``:
    request, answer, receipt verified), one at a time; ``paid``: with escrow and settlement around
    it (``NodeDaemon.run_remote_paid``)."""
    from inos_node.api.service import SubmitRequest

    req = SubmitRequest("system.echo", b"x" * 100)
    run = daemon.run_remote_paid if paid else daemon.net.run_remote

    async def one(i: int) -> None:
        rec = await run(f"{prefix}-{i}", req, peer, 10_000)
        assert rec["status"] == "success" and rec["receipt"] is not None, rec
        assert not paid or rec["settlement"], rec

    return await _timed(n, one)


async def _job_samples(daemon: Any, peer: str, n: int) -> list[float]:
    """Seconds of ``system.echo`` submitted to ``daemon`` with ``--peer peer``, one at a time."""
    from inos_node.api.service import SubmitRequest

    req = SubmitRequest("system.echo", b"x" * 100, placement=f"peer:{peer}")

    async def one(i: int) -> None:
        rec = await daemon.wait_job(await daemon.submit(req))
        assert rec.status == "success", rec

    return await _timed(n, one)


def run_mesh(quick: bool = False, gossip_30: bool = False, progress: bool = True,
             escrow_credit: int | None = None) -> dict[str, Any]:
    def say(msg: str) -> None:
        if progress:
            print(f"bench: {msg} ...", file=sys.stderr, flush=True)

    return trio.run(_main, quick, gossip_30, escrow_credit, say)
