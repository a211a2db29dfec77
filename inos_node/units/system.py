"""The ``system`` library: trivial capsules for health checks and overhead measurements."""

from __future__ import annotations

import json
import os
import platform

from inos_node.engine.spec import Call, Library, Method, UnitContext

__all__ = ["make"]


def _echo(call: Call) -> memoryview:
    return call.input


def _info(call: Call) -> bytes:
    arena = call.ctx.arena
    return json.dumps(
        {
            "pid": os.getpid(),
            "arch": platform.machine(),
            "cores": os.cpu_count(),
            "python": platform.python_version(),
            "arena": None if arena is None else {"name": arena.name, "size": arena.size},
        }
    ).encode()


def make(ctx: UnitContext) -> Library:
    return Library(
        name="system",
        summary="trivial capsules: echo the input, describe the runtime",
        methods=(
            Method("system.echo", _echo, "inline", summary="returns its input unchanged (the trivial capsule)"),
            Method("system.info", _info, "inline", deterministic=False,
                   summary="JSON: pid, arch, cores, python version, arena"),
        ),
    )
