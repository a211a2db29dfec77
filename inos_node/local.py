"""In-process entry points used by the CLI: one capsule, the catalog, the local demo.

``inos exec`` runs without a node and without shared memory: units that keep state in the
arena (boids) fall back to private memory, which is what a one-shot command wants.
"""

from __future__ import annotations

import json
import time
from typing import Any

import trio

from inos_node.engine.engine import Engine, EngineConfig
from inos_node.engine.spec import UnitContext
from inos_node.types import JobResult
from inos_node.units import load_libraries

__all__ = ["build_engine", "catalog", "demo", "run_capsule"]


def build_engine(ctx: UnitContext | None = None, config: EngineConfig | None = None, process_pool: Any = None) -> Engine:
    ctx = ctx or UnitContext()
    return Engine(ctx, load_libraries(ctx), config, process_pool=process_pool)


def catalog() -> list[dict[str, Any]]:
    return build_engine().catalog()


async def run_capsule(
    name: str, data: bytes, params: dict[str, Any], module: bytes | None, timeout_ms: int = 0
) -> JobResult:
    engine = build_engine()
    return await engine.call(name, data, params, module=module, deadline_ms=timeout_ms)


async def demo(boids: int, steps: int) -> int:
    """A local node: arena, units, worker processes; the boids showcase and a few capsules."""
    from inos_node.node import LocalNode, NodeConfig

    cfg = NodeConfig()
    async with LocalNode(cfg).open() as node:
        arena = node.arena
        print(f"node up: arena {arena.name} ({arena.size // (1024 * 1024)} MiB at {arena.path}), "
              f"{len(node.engine.method_names())} capsule methods, {cfg.process_workers} worker process(es)")
        t0 = time.perf_counter()
        res = await node.submit("boids.step", b"", {"steps": steps, "count": boids, "seed": 1})
        dt = time.perf_counter() - t0
        print(f"boids.step x{steps} for {boids} boids: {res.status.value}, {steps / dt:.1f} steps/s, "
              f"boids epoch now {arena.epoch(node.layout['idxBoids'])}")
        text = (b"INOS: mutate, signal, react. " * 40_000)
        for name, data, params in [
            ("compute.blake3", text, {}),
            ("compute.brotli_compress", text, {"quality": 5}),
            ("math.matmul", bytes(4 * 4 * 4 * 2), {"m": 4, "k": 4, "n": 4}),
            ("boids.evolve", b"", {"population": 6, "generations": 2, "count": 200, "steps": 20, "seed": 7}),
        ]:
            r = await node.submit(name, data, params)
            out = bytes(r.output) if isinstance(r.output, bytes | bytearray | memoryview) else b""
            shown = out.hex()[:32] if not name.endswith("evolve") else json.loads(out)["fitness"] if r.ok else ""
            print(f"{name:26} {r.status.value:8} executor={r.executor:12} in={len(data):>8}B out={len(out):>8}B "
                  f"{r.metrics.wall_ns / 1000:9.0f} us  {shown}")
        await trio.lowlevel.checkpoint()
    return 0
