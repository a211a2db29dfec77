"""The unit registry as published in the arena's registry region (capnp ``UnitRegistry``)."""

from __future__ import annotations

import json
from typing import Any

from inos_node.errors import RemoteProtocolError
from inos_node.wire import schemas

__all__ = ["decode_registry", "encode_registry"]


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
