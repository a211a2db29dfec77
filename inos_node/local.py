"""In-process entry points used by the CLI: one capsule, the catalog, the local demo.

``inos exec`` runs without a node and without shared memory: units that keep state in the
arena (boids) fall back to private memory, which is what a one-shot command wants.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

import trio

from inos_node.engine.engine import Engine, EngineConfig
from inos_node.engine.spec import UnitContext
from inos_node.types import JobResult
from inos_node.units import load_libraries

__all__ = ["build_engine", "catalog", "demo", "live_registry", "run_capsule", "viewer_main"]


def build_engine(ctx: UnitContext | None = None, config: EngineConfig | None = None, process_pool: Any = None) -> Engine:
    ctx = ctx or UnitContext()
    return Engine(ctx, load_libraries(ctx), config, process_pool=process_pool)


def catalog() -> list[dict[str, Any]]:
    return build_engine().catalog()


def live_registry(arena_name: str, directory: str) -> list[dict[str, Any]]:
    """The unit registry a running node published in its arena's registry region."""
    from inos_node.arena import Arena, MessageRegion
    from inos_node.wire.registry import decode_registry

    with Arena.attach(arena_name, directory=directory) as arena:
        region = MessageRegion(arena, "registry")
        try:
            return decode_registry(region.read())
        finally:
            region.close()


async def run_capsule(
    name: str, data: bytes, params: dict[str, Any], module: bytes | None, timeout_ms: int = 0
) -> JobResult:
    engine = build_engine()
    return await engine.call(name, data, params, module=module, deadline_ms=timeout_ms)


def viewer_main(arena_name: str, directory: str, until_frame: int) -> None:
    """A separate process that reacts to the boids epoch and reads each frame without tearing.

    This is the seed's "shared reality" in one function: no message carries the flock; the
    viewer is woken by the epoch and reads the ping-pong buffer in place.
    """
    import numpy as np

    from inos_node.arena import Arena, BlockingWaiter, PingPong
    from inos_node.wire.layout import layout_constants

    idx = layout_constants()["idxBoids"]
    arena = Arena.attach(arena_name, directory=directory)
    waiter = BlockingWaiter(arena, (idx,))
    print("viewer ready", flush=True)
    seen, woken, read, last = arena.epoch(idx), 0, 0, None
    while seen < until_frame:
        seen = waiter.wait(idx, seen, timeout=30)
        woken += 1
        block = arena.find_block("boids.flock")
        if block is None:
            continue
        pp = PingPong.open(arena, "boids.flock")
        got = pp.read(lambda v: (float(np.mean(v[3:6] ** 2, dtype=np.float64)) ** 0.5))
        pp.close()
        if got is not None:
            read += 1
            last = got
    print(f"viewer (pid {os.getpid()}): woken {woken} times by the boids epoch, read {read} whole frames in place "
          f"(bursts coalesce: a reader takes the latest frame); last frame {last[0] if last else '-'}, rms speed {last[1] if last else 0:.3f}", flush=True)
    waiter.close()
    arena.close()


async def demo(boids: int, steps: int) -> int:
    """A local node: arena, units, worker processes; the boids showcase and a few capsules."""
    from inos_node.bench._capsules import ECHO_WAT
    from inos_node.node import LocalNode, NodeConfig

    cfg = NodeConfig()
    async with LocalNode(cfg).open() as node:
        arena = node.arena
        print(f"node up: arena {arena.name} ({arena.size // (1024 * 1024)} MiB at {arena.path}), "
              f"{len(node.engine.method_names())} capsule methods, {cfg.process_workers} worker process(es)")
        await node.submit("boids.step", b"", {"steps": 1, "count": boids, "seed": 1})
        until = arena.epoch(node.layout["idxBoids"]) + steps
        code = f"from inos_node.local import viewer_main; viewer_main({arena.name!r}, {arena.directory!r}, {until})"
        async with trio.open_nursery() as nursery:
            viewer = await nursery.start(_run_viewer, code)
            t0 = time.perf_counter()
            res = await node.submit("boids.step", b"", {"steps": steps, "count": boids})
            dt = time.perf_counter() - t0
            await viewer.wait()
            print(f"boids.step x{steps} for {boids} boids: {res.status.value}, {steps / dt:.1f} steps/s, "
                  f"boids epoch now {arena.epoch(node.layout['idxBoids'])}")
            await viewer.wait()
        text = (b"INOS: mutate, signal, react. " * 40_000)
        key = "11" * 32
        for name, data, params in [
            ("compute.blake3", text, {}),
            ("compute.brotli_compress", text, {"quality": 5}),
            ("crypto.encrypt", b"credits are next", {"key_hex": key}),
            ("math.matmul", bytes(4 * 4 * 4 * 2), {"m": 4, "k": 4, "n": 4}),
            ("wasm.run", b"a sandboxed capsule", {"fuel": 100_000}),
            ("boids.evolve", b"", {"population": 6, "generations": 2, "count": 200, "steps": 20, "seed": 7}),
        ]:
            r = await node.submit(name, data, params, module=ECHO_WAT.encode() if name == "wasm.run" else None)
            out = bytes(r.output) if isinstance(r.output, bytes | bytearray | memoryview) else b""
            shown = out.hex()[:32] if not name.endswith("evolve") else json.loads(out)["fitness"] if r.ok else ""
            print(f"{name:26} {r.status.value:8} executor={r.executor:12} in={len(data):>8}B out={len(out):>8}B "
                  f"{r.metrics.wall_ns / 1000:9.0f} us  {shown}")
        await trio.lowlevel.checkpoint()
    return 0


async def _run_viewer(code: str, *, task_status: trio.TaskStatus[trio.Process] = trio.TASK_STATUS_IGNORED) -> None:
    proc = await trio.lowlevel.open_process([sys.executable, "-c", code], stdout=__import__("subprocess").PIPE)
    assert proc.stdout is not None
    buf = b""
    try:
        while b"viewer ready" not in buf:
            chunk = await proc.stdout.receive_some()
            if not chunk:
                break
            buf += chunk
        task_status.started(proc)
        async for chunk in proc.stdout:
            buf += chunk
        await proc.wait()
    finally:
        if proc.returncode is None:
            proc.kill()
    for line in buf.decode().splitlines():
        if not line.startswith("viewer ready"):
            print(line)
