"""The unit registry as published in the arena's registry region (capnp ``UnitRegistry``)."""

from __future__ import annotations

import json
from typing import Any

from inos_node.errors import RemoteProtocolError
from inos_node.wire import schemas

__all__ = ["decode_diagnostics", "decode_registry", "encode_diagnostics", "encode_registry"]


def encode_registry(units: list[dict[str, Any]], generation: int) -> bytes:
    rt = schemas.load("system/v1/runtime.capnp")
    m = rt.UnitRegistry.new_message()
    m.generation = generation
    lst = m.init("units", len(units))
    for i, u in enumerate(units):
        lst[i].library = u["library"]
        lst[i].state = u.get("state", "running")
        lst[i].restarts = int(u.get("restarts", 0))
        methods = lst[i].init("methods", len(u["methods"]))
        for j, md in enumerate(u["methods"]):
            methods[j].name = md["name"]
            methods[j].executor = md["executor"]
            methods[j].deterministic = bool(md["deterministic"])
            methods[j].cost = md["cost"]
            methods[j].params = json.dumps(md["params"])
            methods[j].summary = md.get("summary", "")
    out: bytes = m.to_bytes()
    return out


def decode_registry(data: bytes) -> list[dict[str, Any]]:
    rt = schemas.load("system/v1/runtime.capnp")
    try:
        with rt.UnitRegistry.from_bytes(data, traversal_limit_in_words=len(data) // 8 * 4 + 1024) as r:
            return [
                {
                    "library": u.library,
                    "state": u.state,
                    "restarts": u.restarts,
                    "methods": [
                        {"name": md.name, "executor": md.executor, "deterministic": md.deterministic, "cost": md.cost,
                         "params": json.loads(md.params), "summary": md.summary}
                        for md in u.methods
                    ],
                }
                for u in r.units
            ]
    except Exception as exc:  # noqa: BLE001 - capnp/json failures all mean "malformed"
        raise RemoteProtocolError(f"malformed unit registry: {exc}") from exc


def encode_diagnostics(info: dict[str, Any]) -> bytes:
    """``Diagnostics`` from a plain dict (see ``LocalNode.diagnostics``)."""
    rt = schemas.load("system/v1/runtime.capnp")
    m = rt.Diagnostics.new_message()
    caps = m.init("capabilities")
    caps.role = info.get("role", "light")
    caps.cores = info["cores"]
    caps.memoryBytes = info["memory_bytes"]
    caps.arenaBytes = info["arena_bytes"]
    hw = caps.init("hardware")
    hw.avx2, hw.avx512, hw.neon, hw.gpu = info["avx2"], info["avx512"], info["neon"], info.get("gpu", False)
    hw.arch = info["arch"]
    caps.pythonVersion = info["python"]
    caps.nodeVersion = info["version"]
    restarts = m.init("unitRestarts", len(info["units"]))
    for i, u in enumerate(info["units"]):
        restarts[i].library = u["unit"]
        restarts[i].restarts = u["restarts"]
        restarts[i].lastError = u["last_error"][:500]
    m.jobsCompleted = info["jobs_completed"]
    m.jobsFailed = info["jobs_failed"]
    m.arenaUsedBytes = info["arena_used"]
    m.arenaFreeBytes = info["arena_free"]
    out: bytes = m.to_bytes()
    return out


def decode_diagnostics(data: bytes) -> dict[str, Any]:
    rt = schemas.load("system/v1/runtime.capnp")
    try:
        with rt.Diagnostics.from_bytes(data, traversal_limit_in_words=len(data) // 8 * 4 + 1024) as r:
            c = r.capabilities
            return {
                "role": str(c.role),
                "cores": c.cores,
                "memory_bytes": c.memoryBytes,
                "arena_bytes": c.arenaBytes,
                "arch": c.hardware.arch,
                "avx2": c.hardware.avx2,
                "avx512": c.hardware.avx512,
                "neon": c.hardware.neon,
                "gpu": c.hardware.gpu,
                "python": c.pythonVersion,
                "version": c.nodeVersion,
                "units": [{"unit": u.library, "restarts": u.restarts, "last_error": u.lastError}
                          for u in r.unitRestarts],
                "jobs_completed": r.jobsCompleted,
                "jobs_failed": r.jobsFailed,
                "arena_used": r.arenaUsedBytes,
                "arena_free": r.arenaFreeBytes,
            }
    except Exception as exc:  # noqa: BLE001 - capnp failures all mean "malformed"
        raise RemoteProtocolError(f"malformed diagnostics: {exc}") from exc
