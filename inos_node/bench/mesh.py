"""``inos bench mesh``: the mesh figures, each beside a raw py-libp2p baseline from the same run.

Setup: node B runs as its own process (``inos node run`` with ``INOS_BENCH=1``, which adds a raw
echo and a raw bulk protocol next to the real ones); node A is a full ``NodeDaemon`` inside this
process, bootstrapped to B.  Every pair below is measured between exactly these two processes:

  remote_rtt_p50_us            system.echo (100 B) submitted on A, run on B, receipt verified on A
  libp2p_stream_rtt_p50_us     raw echo (100 B) over a persistent py-libp2p stream, A <-> B
  remote_throughput_per_s      the same capsule, 32 in flight
  libp2p_stream_throughput_per_s  raw echo, 32 in flight on one stream
  blob_mbps                    compute.blake3 of a 64 MiB input on B: the input moves A -> B over
                               /inos/blob (digest-checked), B hashes it, A verifies the receipt
  libp2p_bulk_mbps             raw one-stream bulk A -> B, 64 MiB in 1 MiB writes
  connect_ms                   a new connection A -> B (TCP + Noise + Yamux), median of 10
  gossip_p50_ms / gossip_p99_ms  an advert-sized message reaching all of 10 node processes
                               (and of 30 with --gossip-30)

The economy's cost is measured on a second pair, A' (in this process) and B' (a process), both on
a network with a genesis, against A and B above, through the daemon's whole job path (submit,
decider, delegation, receipt check; the same path ``inos submit`` takes) on both sides:

  remote_job_rtt_p50_us        system.echo submitted on A with --peer B (no ledger)
  remote_paid_rtt_p50_us       the same on A' with --peer B': escrow lock before the request
                               (B' checks it before running), settle after the receipt verifies
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


async def _main(quick: bool, gossip_30: bool, say: Any) -> dict[str, Any]:
    from inos_node.api.service import SubmitRequest
    from inos_node.daemon import DaemonConfig, NodeDaemon
    from inos_node.net import bench as netbench
    from inos_node.net.host import quiet_libp2p_logs
    from inos_node.testing.procs import free_port, start_node

    quiet_libp2p_logs()
    report: dict[str, Any] = {"python": sys.version.split()[0], "cpus": os.cpu_count()}
    base = Path(tempfile.mkdtemp(prefix="inos-bench-mesh-"))
    say("starting node B (a separate process)")
    b = await trio.to_thread.run_sync(lambda: start_node(base, "b", env={"INOS_BENCH": "1"}))
    try:
        cfg = DaemonConfig(data_dir=base / "a", listen=("/ip4/127.0.0.1/tcp/0",), bootstrap=(b.address,),
                           api=f"127.0.0.1:{free_port()}", name="a", arena_size=128 * _MIB)
        daemon = NodeDaemon(cfg)
        async with trio.open_nursery() as nursery:
            await nursery.start(daemon.run)
            mesh = daemon.net
            with trio.fail_after(30):
                await mesh.wait_peers(peer_id=b.peer_id, serving="system.echo", count=1)
            n = 300 if quick else 2000

            say("raw libp2p echo vs remote capsule, one at a time")
            raw = await netbench.libp2p_stream_rtt_p50_us(mesh.host, b.peer_id, n=n)
            report["libp2p_stream_rtt_p50_us"] = round(raw["p50_us"], 1)
            samples = []
            req = SubmitRequest("system.echo", b"x" * 100)
            for i in range(n + 50):
                t0 = time.perf_counter()
                rec = await mesh.run_remote(f"bench-{i}", req, b.peer_id, 10_000)
                if i >= 50:
                    samples.append(time.perf_counter() - t0)
                assert rec["status"] == "success" and rec["receipt"] is not None, rec
            report["remote_rtt_p50_us"] = round(statistics.median(samples) * 1e6, 1)

            say("throughput with 32 in flight")
            m = 1000 if quick else 5000
            raw_tp = await netbench.libp2p_stream_throughput_per_s(mesh.host, b.peer_id, n=m, in_flight=32)
            report["libp2p_stream_throughput_per_s"] = round(raw_tp["per_s"], 1)
            counter = iter(range(m))
            t0 = time.perf_counter()

            async def worker() -> None:
                for i in counter:
                    rec = await mesh.run_remote(f"tp-{i}", req, b.peer_id, 30_000)
                    assert rec["status"] == "success", rec

            async with trio.open_nursery() as n32:
                for _ in range(32):
                    n32.start_soon(worker)
            report["remote_throughput_per_s"] = round(m / (time.perf_counter() - t0), 1)

            say("64 MiB: raw bulk vs a capsule whose input moves over /inos/blob")
            bulk = await netbench.libp2p_bulk_mbps(mesh.host, b.peer_id, total=64 * _MIB, direction="push")
            report["libp2p_bulk_mbps"] = round(bulk["mb_per_s"], 1)
            big = os.urandom(64 * _MIB)
            runs = []
            for i in range(1 if quick else 3):
                # new content each run: the executor cannot have it already, so the bytes move again
                breq = SubmitRequest("compute.blake3", bytes([i]) + big[1:])
                t0 = time.perf_counter()
                rec = await mesh.run_remote(f"blob-{i}", breq, b.peer_id, 120_000)
                runs.append(time.perf_counter() - t0)
                assert rec["status"] == "success", rec
            report["blob_mbps"] = round(len(big) / statistics.median(runs) / 1e6, 1)

            say("new connections")
            from inos_node.net.host import connect, disconnect

            conns = []
            for _ in range(10):
                await disconnect(mesh.host, b.peer_id)
                t0 = time.perf_counter()
                await connect(mesh.host, b.address)
                conns.append(time.perf_counter() - t0)
            report["connect_ms"] = round(statistics.median(conns) * 1000, 2)

            say("the economy: a paid job vs an unpaid one, through the daemon's job path")
            report["remote_job_rtt_p50_us"] = await _job_rtt(daemon, b.peer_id, 100 if quick else 500)
            report["remote_paid_rtt_p50_us"] = await _paid_rtt(base, 100 if quick else 500)
            nursery.cancel_scope.cancel()
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
    report["ratios"] = {
        "remote_rtt/libp2p_stream_rtt": round(report["remote_rtt_p50_us"] / report["libp2p_stream_rtt_p50_us"], 3),
        "remote_throughput/libp2p_stream_throughput": round(
            report["remote_throughput_per_s"] / report["libp2p_stream_throughput_per_s"], 3),
        "blob/libp2p_bulk": round(report["blob_mbps"] / report["libp2p_bulk_mbps"], 3),
        "remote_paid_rtt/remote_job_rtt": round(report["remote_paid_rtt_p50_us"] / report["remote_job_rtt_p50_us"], 3),
        "remote_paid_rtt/remote_rtt": round(report["remote_paid_rtt_p50_us"] / report["remote_rtt_p50_us"], 3),
    }
    return report


async def _job_rtt(daemon: Any, peer: str, n: int) -> float:
    """Median µs of ``system.echo`` submitted to ``daemon`` with ``--peer peer``, one at a time."""
    from inos_node.api.service import SubmitRequest

    req = SubmitRequest("system.echo", b"x" * 100, placement=f"peer:{peer}")
    samples = []
    for i in range(n + 30):
        t0 = time.perf_counter()
        rec = await daemon.wait_job(await daemon.submit(req))
        if i >= 30:
            samples.append(time.perf_counter() - t0)
        assert rec.status == "success", rec
    return round(statistics.median(samples) * 1e6, 1)


async def _paid_rtt(base: Path, n: int) -> float:
    from inos_node.daemon import DaemonConfig, NodeDaemon
    from inos_node.economy.genesis import create_genesis, write_genesis
    from inos_node.identity import DataDir
    from inos_node.testing.procs import free_port, start_node

    dids = {name: DataDir(base / name).ensure().identity().did for name in ("pa", "pb")}
    doc, _ = create_genesis({d: 10_000_000 for d in dids.values()}, name="bench")
    genesis = write_genesis(base / "genesis.json", doc, force=True)
    pb = await trio.to_thread.run_sync(lambda: start_node(base, "pb", extra=("--genesis", str(genesis))))
    try:
        cfg = DaemonConfig(data_dir=base / "pa", listen=("/ip4/127.0.0.1/tcp/0",), bootstrap=(pb.address,),
                           api=f"127.0.0.1:{free_port()}", name="pa", genesis=genesis)
        daemon = NodeDaemon(cfg)
        async with trio.open_nursery() as nursery:
            await nursery.start(daemon.run)
            with trio.fail_after(30):
                await daemon.net.wait_peers(peer_id=pb.peer_id, serving="system.echo", count=1)
            result = await _job_rtt(daemon, pb.peer_id, n)
            rec = daemon.jobs(1)[0]
            assert rec.settlement is not None and rec.cost > 0, rec  # it really was paid
            nursery.cancel_scope.cancel()
        return result
    finally:
        pb.stop()


def run_mesh(quick: bool = False, gossip_30: bool = False, progress: bool = True) -> dict[str, Any]:
    def say(msg: str) -> None:
        if progress:
            print(f"bench: {msg} ...", file=sys.stderr, flush=True)

    return trio.run(_main, quick, gossip_30, say)
