"""``inos bench local``: every project figure beside a baseline measured in the same run.

Keys (microseconds unless the name says otherwise):
  dispatch_inline_p50_us      system.echo through Engine.execute, inline
  trio_channel_rtt_p50_us     baseline: a bare trio memory-channel request and reply
  dispatch_thread_p50_us      compute.blake3 of 64 KiB on a worker thread, through the engine
  to_thread_rtt_p50_us        baseline: trio.to_thread.run_sync of a no-op
  epoch_wake_inproc_p50_us    arena publish -> in-process subscriber running
  trio_event_wake_p50_us      baseline: trio.Event.set -> waiter running
  epoch_wake_xproc_p50_us     publish in another process -> trio subscriber here running
  eventfd_wake_p50_us         baseline: raw eventfd written by another process + trio wait_readable
  blake3_engine_gbps          compute.blake3 through the engine on a 64 MiB arena region (by reference)
  blake3_raw_gbps             baseline: blake3 over the same region, same thread settings
  brotli_engine_mbps          compute.brotli_compress q5 through the engine, 16 MiB arena region
  brotli_raw_mbps             baseline: brotli.compress over the same region
  wasm_trivial_p50_us         wasm.run of a cached echo module, 8-byte input, fuel 100k (runs inline)
  wasm_trivial_default_fuel_thread_p50_us   the same with the default 1e9 fuel (runs on a thread)
  boids_10k_steps_per_s       boids.step through the engine, 10k boids (and 50k)
  idle_cpu_percent            a node with 100 subscribed unit actors, idle for 5 s (node + workers)
  ray_task_rtt_p50_us         with --with-ray: ray.get(f.remote()) in a loopback-only namespace
"""

from __future__ import annotations

import gc
import os
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import trio

__all__ = ["run_local"]

_MIB = 1024 * 1024


def _p50(samples: list[int]) -> float:
    return round(statistics.median(samples) / 1000.0, 2)


async def _timed(fn: Callable[[], Awaitable[Any]], n: int, warmup: int = 50) -> list[int]:
    for _ in range(warmup):
        await fn()
    out = []
    for _ in range(n):
        t0 = time.perf_counter_ns()
        await fn()
        out.append(time.perf_counter_ns() - t0)
    return out


async def _channel_rtt(n: int) -> float:
    req_s, req_r = trio.open_memory_channel[Any](0)
    rep_s, rep_r = trio.open_memory_channel[Any](0)

    async def server() -> None:
        async for msg in req_r:
            await rep_s.send(msg)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(server)

        async def once() -> None:
            await req_s.send(b"x")
            await rep_r.receive()

        samples = await _timed(once, n)
        nursery.cancel_scope.cancel()
    return _p50(samples)


async def _bench_engine(report: dict[str, Any], quick: bool, progress: Callable[[str], None]) -> None:
    from inos_node.node import LocalNode, NodeConfig

    n = 2000 if quick else 20000
    node_cfg = NodeConfig(name="bench", process_workers=1, arena_size=256 * _MIB)
    async with LocalNode(node_cfg).open() as node:
        engine = node.engine
        progress("dispatch inline vs trio channel")
        rtts, dispatch = [], []
        for _ in range(3):  # interleave the two sides so drift hits both
            rtts.append(await _channel_rtt(n // 3))
            dispatch.append(_p50(await _timed(lambda: engine.call("system.echo", b"x"), n // 3)))
        report["dispatch_inline_p50_us"] = statistics.median(dispatch)
        report["trio_channel_rtt_p50_us"] = statistics.median(rtts)

        progress("dispatch thread vs to_thread")
        m = n // 10
        payload = os.urandom(64 * 1024)
        report["dispatch_thread_p50_us"] = _p50(await _timed(lambda: engine.call("compute.blake3", payload), m))
        report["to_thread_rtt_p50_us"] = _p50(await _timed(lambda: trio.to_thread.run_sync(int), m))

        progress("blake3 / brotli on arena regions")
        await _bench_hash_compress(report, node, quick)

        progress("wasm trivial")
        from inos_node.bench import _capsules

        module = _capsules.ECHO_WAT.encode()
        await engine.call("wasm.run", b"warm", module=module)
        # A capsule whose fuel budget bounds it under ~1 ms runs inline; with the default budget
        # (1e9 fuel, seconds of work) it runs on a thread. Both are reported.
        report["wasm_trivial_p50_us"] = _p50(
            await _timed(lambda: engine.call("wasm.run", b"12345678", {"fuel": 100_000}, module=module), n // 10)
        )
        report["wasm_trivial_default_fuel_thread_p50_us"] = _p50(
            await _timed(lambda: engine.call("wasm.run", b"12345678", module=module), n // 10)
        )

        progress("boids")
        for count, key in ((10_000, "boids_10k_steps_per_s"), (50_000, "boids_50k_steps_per_s")):
            steps = 20 if quick else 100
            await node.submit("boids.step", b"", {"steps": 2, "count": count, "seed": 1})
            t0 = time.perf_counter()
            res = await node.submit("boids.step", b"", {"steps": steps, "count": count, "seed": 1})
            dt = time.perf_counter() - t0
            report[key] = round(steps / dt, 1) if res.ok else f"error: {res.error}"


async def _bench_hash_compress(report: dict[str, Any], node: Any, quick: bool) -> None:

    from inos_node.types import ArenaSlice

    engine = node.engine
    arena = node.arena
    size = 64 * _MIB
    block = arena.allocate(size, name="bench.blake3")
    view = block.view()
    rng = __import__("numpy").random.default_rng(1)
    view[:] = rng.integers(0, 256, size, dtype="uint8").tobytes()
    reps = 3 if quick else 7
    threads = _blake3_threads(size)
    raw, eng = [], []
    for _ in range(reps):
        t0 = time.perf_counter_ns()
        await trio.to_thread.run_sync(_blake3_digest, view, threads)
        raw.append(time.perf_counter_ns() - t0)
        t0 = time.perf_counter_ns()
        res = await engine.call("compute.blake3", ArenaSlice(block.offset, size))
        eng.append(time.perf_counter_ns() - t0)
        assert res.ok, res.error
    report["blake3_engine_gbps"] = round(size / statistics.median(eng), 3)
    report["blake3_raw_gbps"] = round(size / statistics.median(raw), 3)
    report["blake3_threads"] = "auto" if threads != 1 else 1
    del view
    arena.free(block)

    csize = 16 * _MIB
    block = arena.allocate(csize, name="bench.brotli")
    view = block.view()
    view[:] = _semi_compressible(csize)
    raw, eng = [], []
    for _ in range(1 if quick else 3):
        t0 = time.perf_counter_ns()
        await trio.to_thread.run_sync(_brotli_q5, view)
        raw.append(time.perf_counter_ns() - t0)
        t0 = time.perf_counter_ns()
        res = await engine.call("compute.brotli_compress", ArenaSlice(block.offset, csize), {"quality": 5})
        eng.append(time.perf_counter_ns() - t0)
        assert res.ok, res.error
    report["brotli_engine_mbps"] = round(csize / statistics.median(eng) * 1000, 1)
    report["brotli_raw_mbps"] = round(csize / statistics.median(raw) * 1000, 1)
    del view
    arena.free(block)


def _blake3_digest(view: memoryview, threads: int) -> bytes:
    import blake3

    return blake3.blake3(view, max_threads=threads).digest()


def _brotli_q5(view: memoryview) -> bytes:
    import brotli

    return bytes(brotli.compress(view, quality=5))


def _blake3_threads(size: int) -> int:
    try:
        from inos_node.units import compute

        fn = getattr(compute, "blake3_threads", None)
        if fn is not None:
            return int(fn(size))
    except ImportError:
        pass
    return 1


def _semi_compressible(size: int) -> bytes:
    """Zipf-distributed words with every 8th 4 KiB block random (the anchors' test data)."""
    import numpy as np

    rng = np.random.default_rng(7)
    vocab = [bytes(rng.integers(97, 123, int(rng.integers(2, 10)), dtype="uint8")) + b" " for _ in range(4000)]
    ranks = rng.zipf(1.3, size // 4)
    ranks = ranks[ranks <= 4000] - 1
    text = b"".join(vocab[i] for i in ranks.tolist())
    while len(text) < size:
        text += text
    buf = bytearray(text[:size])
    for off in range(0, size, 8 * 4096):
        buf[off:off + 4096] = rng.integers(0, 256, min(4096, size - off), dtype="uint8").tobytes()
    return bytes(buf)


async def _bench_idle(report: dict[str, Any], quick: bool, progress: Callable[[str], None]) -> None:
    from inos_node.actors.unit import Supervisor, UnitActor
    from inos_node.node import LocalNode, NodeConfig

    progress("idle CPU of a node with 100 subscribed units")
    async with LocalNode(NodeConfig(name="idle", process_workers=1)).open() as node:
        first = node.arena.reserve_epoch("bench.idle.0")
        indices = [first] + [node.arena.reserve_epoch(f"bench.idle.{i}") for i in range(1, 8)]
        node.watcher.subscribe(indices)

        async def nop(_req: Any) -> Any:
            raise AssertionError("not used")

        actors = [UnitActor(f"idle{i}", nop, subscriptions=(indices[i % len(indices)],)) for i in range(100)]
        sup = Supervisor(actors, source=node.watcher)
        async with trio.open_nursery() as nursery:
            await nursery.start(sup.run)
            gc.collect()
            pids = [lane["pid"] for lane in node.pool.statistics()] if node.pool else []
            span = 2.0 if quick else 5.0
            c0 = _cpu_seconds(pids)
            t0 = time.perf_counter()
            await trio.sleep(span)
            cpu = _cpu_seconds(pids) - c0
            wall = time.perf_counter() - t0
            report["idle_cpu_percent"] = round(100.0 * cpu / wall, 3)
            report["idle_units"] = len(actors)
            nursery.cancel_scope.cancel()


def _cpu_seconds(child_pids: list[int]) -> float:
    total = time.process_time()
    tick = os.sysconf("SC_CLK_TCK")
    for pid in child_pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
        except (OSError, IndexError, ValueError):
            pass
    return total


async def _main(quick: bool, with_ray: bool, progress: Callable[[str], None]) -> dict[str, Any]:
    report: dict[str, Any] = {"python": sys.version.split()[0], "cpus": os.cpu_count()}
    await _bench_engine(report, quick, progress)
    progress("epoch wake-ups (in-process, cross-process)")
    from inos_node.arena import bench as arena_bench

    n = 1000 if quick else 3000
    report.update(await arena_bench.measure_epoch_wake_inproc(n) if _is_async(arena_bench.measure_epoch_wake_inproc)
                  else arena_bench.measure_epoch_wake_inproc(n))
    report.update(await arena_bench.measure_epoch_wake_xproc(n) if _is_async(arena_bench.measure_epoch_wake_xproc)
                  else arena_bench.measure_epoch_wake_xproc(n))
    await _bench_idle(report, quick, progress)
    if with_ray:
        progress("ray (loopback-only namespace)")
        from inos_node.bench import ray_anchor

        report.update(ray_anchor.measure(quick))
    report["ratios"] = _ratios(report)
    return report


def _is_async(fn: Any) -> bool:
    import inspect

    return inspect.iscoroutinefunction(fn)


def _ratios(r: dict[str, Any]) -> dict[str, Any]:
    def ratio(a: str, b: str) -> float | None:
        x, y = r.get(a), r.get(b)
        if isinstance(x, int | float) and isinstance(y, int | float) and y:
            return round(x / y, 3)
        return None

    out = {
        "dispatch_inline/trio_channel_rtt": ratio("dispatch_inline_p50_us", "trio_channel_rtt_p50_us"),
        "dispatch_thread/to_thread_rtt": ratio("dispatch_thread_p50_us", "to_thread_rtt_p50_us"),
        "epoch_wake_inproc/trio_event_wake": ratio("epoch_wake_inproc_p50_us", "trio_event_wake_p50_us"),
        "epoch_wake_xproc/eventfd_wake": ratio("epoch_wake_xproc_p50_us", "eventfd_wake_p50_us"),
        "blake3_engine/raw": ratio("blake3_engine_gbps", "blake3_raw_gbps"),
        "brotli_engine/raw": ratio("brotli_engine_mbps", "brotli_raw_mbps"),
    }
    if "ray_task_rtt_p50_us" in r:
        out["dispatch_inline/ray_task_rtt"] = ratio("dispatch_inline_p50_us", "ray_task_rtt_p50_us")
    return out


def run_local(quick: bool = False, with_ray: bool = False, progress: bool = True) -> dict[str, Any]:
    def say(msg: str) -> None:
        if progress:
            print(f"bench: {msg} ...", file=sys.stderr, flush=True)

    return trio.run(_main, quick, with_ray, say)
