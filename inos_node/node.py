"""The composition root of one node: arena, epoch watcher, engine, worker processes, unit actors.

``LocalNode(config).open()`` is an async context manager that owns the node's root nursery:

    open() ─► create arena ─► start EpochWatcher ─► start ProcessPool (workers attach)
           ─► build Engine ─► start Supervisor(UnitActor per library) ─► publish registry
           ─► yield node ─► (caller submits capsules) ─► cancel ─► workers stopped ─► arena unlinked

``submit`` is the library proxy: inline methods run in the caller's task (no mailbox hop, the
cheapest path); everything else goes through the owning unit's bounded mailbox.
"""

from __future__ import annotations

import logging
import os
import platform
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any

import trio

from inos_node.actors.unit import Supervisor, UnitActor
from inos_node.engine.engine import Engine, EngineConfig
from inos_node.engine.spec import UnitContext
from inos_node.errors import ConfigError
from inos_node.types import JobRequest, JobResult
from inos_node.units import load_libraries
from inos_node.wire import registry as registry_codec
from inos_node.wire.layout import layout_constants

__all__ = ["LocalNode", "NodeConfig"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class NodeConfig:
    name: str = "inos"
    arena_size: int = 0  # 0: the layout's default
    arena_dir: str = "/dev/shm"
    process_workers: int = 1
    max_threads: int = 2
    max_input_bytes: int = 256 * 1024 * 1024
    shutdown_grace_s: float = 3.0
    # False: open() returns once the worker processes are attached.  True (the daemon): it returns
    # at once and the workers attach in the background (a job for them waits for the first one),
    # so a node is ready without paying for their interpreter start-up and imports.
    background_workers: bool = False
    # True (the daemon): no worker process starts before the first job that needs one.
    lazy_workers: bool = False

    def __post_init__(self) -> None:
        lanes = layout_constants()["maxWorkerLanes"]
        if not 0 <= self.process_workers <= lanes:
            raise ConfigError(f"process_workers must be in 0..{lanes}, got {self.process_workers}", key="process_workers")
        if self.arena_size and self.arena_size < layout_constants()["minArenaSize"]:
            raise ConfigError(f"arena_size must be at least {layout_constants()['minArenaSize']} bytes",
                              key="arena_size")


class LocalNode:
    def __init__(self, config: NodeConfig | None = None) -> None:
        self.config = config or NodeConfig()
        self.layout = layout_constants()
        self.arena: Any = None
        self.watcher: Any = None
        self.engine: Engine = None  # type: ignore[assignment]
        self.pool: Any = None
        self.supervisor: Supervisor = None  # type: ignore[assignment]

    @asynccontextmanager
    async def open(self) -> AsyncIterator[LocalNode]:
        from inos_node.arena import Arena, EpochWatcher, MessageRegion, sweep_stale

        cfg = self.config
        swept = sweep_stale(cfg.arena_dir, "inos-")
        if swept:
            log.warning("removed %d arena(s) left by nodes that died: %s", len(swept), ", ".join(swept))
        size = cfg.arena_size or self.layout["defaultArenaSize"]
        name = f"{cfg.name}-{os.getpid()}" if cfg.name.startswith("inos") else f"inos-{cfg.name}-{os.getpid()}"
        with Arena.create(name=name, size=size, directory=cfg.arena_dir) as arena:
            self.arena = arena
            async with trio.open_nursery() as nursery:
                self.watcher = EpochWatcher(arena)
                await nursery.start(self.watcher.run)
                if cfg.process_workers:
                    from inos_node.engine.workers import ProcessPool

                    self.pool = ProcessPool(arena, self.watcher, cfg.process_workers, self.layout,
                                            lazy=cfg.lazy_workers)
                    await nursery.start(partial(self.pool.run, wait_ready=not cfg.background_workers))
                ctx = UnitContext(arena=arena, max_input_bytes=cfg.max_input_bytes)
                libraries = load_libraries(ctx)
                self.engine = Engine(
                    ctx,
                    libraries,
                    EngineConfig(max_input_bytes=cfg.max_input_bytes, max_threads=cfg.max_threads,
                                 process_workers=cfg.process_workers),
                    process_pool=self.pool,
                )
                actors = [UnitActor(lib.name, self.engine.execute) for lib in libraries]
                self.supervisor = Supervisor(actors, source=self.watcher, on_crash=self._unit_crashed)
                self._registry = MessageRegion(arena, "registry", self.layout["idxRegistry"])
                self._diagnostics = MessageRegion(arena, "diagnostics", self.layout["idxDiagnostics"])
                await nursery.start(self.supervisor.run)
                self.publish_registry()
                self.publish_diagnostics()
                try:
                    yield self
                finally:
                    arena.publish(self.layout["idxControl"])  # workers exit on a control-epoch change
                    nursery.cancel_scope.cancel()

    # ------------------------------------------------------------------ registry
    def publish_registry(self) -> None:
        units = []
        stats = {s["unit"]: s for s in self.supervisor.statistics()}
        for lib in self.engine.libraries:
            s = stats.get(lib.name, {})
            units.append({"library": lib.name, "state": s.get("state", "running"),
                          "restarts": s.get("restarts", 0), "methods": [m.describe() for m in lib.methods]})
        self._registry.write(registry_codec.encode_registry(units, generation=self.arena.epoch(self.layout["idxRegistry"]) + 1))

    def read_registry(self) -> list[dict[str, Any]]:
        return registry_codec.decode_registry(self._registry.read())

    def _unit_crashed(self, actor: Any, backoff: Any) -> None:
        # A crash is news for anyone watching the arena: republish the registry (unit state and
        # restart count) and the diagnostics (the last error).
        self.publish_registry()
        self.publish_diagnostics()

    def diagnostics(self) -> dict[str, Any]:
        from inos_node import __version__

        stats = self.arena.statistics()
        info = self.runtime_info()
        info.update(
            role="light",
            memory_bytes=os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"),
            python=platform.python_version(),
            version=__version__,
            units=self.supervisor.statistics(),
            jobs_completed=self.engine.completed,
            jobs_failed=self.engine.failed,
            arena_used=stats.used,
            arena_free=stats.free,
        )
        return info

    def publish_diagnostics(self) -> None:
        self._diagnostics.write(registry_codec.encode_diagnostics(self.diagnostics()))

    def read_diagnostics(self) -> dict[str, Any]:
        return registry_codec.decode_diagnostics(self._diagnostics.read())

    # ------------------------------------------------------------------ submit
    async def submit(self, name: str, data: Any = b"", params: dict[str, Any] | None = None, *,
                     module: bytes | None = None, deadline_ms: int = 0) -> JobResult:
        library, _, method = name.partition(".")
        req = JobRequest(self.engine.new_job_id(), library, method, data, dict(params or {}), module=module,
                         deadline_ms=deadline_ms)
        return await self.execute(req)

    async def execute(self, req: JobRequest) -> JobResult:
        m = self.engine._methods.get(f"{req.library}.{req.method}")
        actor = self.supervisor.actor(req.library)
        if m is None or actor is None or m.runs_inline(_input_len(req.input), req.params):
            return await self.engine.execute(req)
        return await actor.submit(req)

    def runs_now(self, req: JobRequest) -> bool:
        """Whether ``execute_now`` can run ``req`` (a known capsule that runs inline)."""
        m = self.engine._methods.get(f"{req.library}.{req.method}")
        return m is not None and m.runs_inline(_input_len(req.input), req.params)

    def execute_now(self, req: JobRequest) -> JobResult | None:
        """The result at once for a capsule that runs inline, else None (``await execute`` it)."""
        return self.engine.execute_now(req)

    def runtime_info(self) -> dict[str, Any]:
        flags = _cpu_flags()
        return {
            "cores": os.cpu_count() or 1,
            "arch": platform.machine(),
            "avx2": "avx2" in flags,
            "avx512": any(f.startswith("avx512") for f in flags),
            "neon": platform.machine() in ("aarch64", "arm64"),
            "arena_bytes": self.arena.size if self.arena else 0,
        }


def _input_len(payload: Any) -> int:
    return payload.length if hasattr(payload, "length") else len(payload) if hasattr(payload, "__len__") else 0


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()
