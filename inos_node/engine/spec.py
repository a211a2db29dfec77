"""How a unit describes itself to the capsule engine.

A *unit* is one module under ``inos_node/units/`` that defines ``make(ctx) -> Library``.  A
``Library`` has ``Method``s; each method declares its executor, its parameters (validated and
defaulted by the engine before the method runs), whether it is deterministic, and how its cost
is measured.  Adding a unit is adding one module and naming it in ``inos_node/units/__init__.py``.

A method function is synchronous: ``fn(call: Call) -> bytes | memoryview | Output``.  It must
not keep ``call.input`` past its return (the bytes may be arena memory that is reused).

Cost models (the price per unit comes with the economy):
  * ``call``: 1 per call;
  * ``mib``: ceil(input bytes / MiB), at least 1;
  * ``fuel``: the fuel the WASM capsule used.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from inos_node.errors import InvalidParams

__all__ = ["REQUIRED", "Call", "Library", "Method", "Output", "Param", "UnitContext"]

Executor = Literal["inline", "thread", "process"]
CostModel = Literal["call", "mib", "fuel"]
ParamKind = Literal["int", "float", "str", "bool", "enum", "json"]


class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED: Any = _Required()


@dataclass(frozen=True, slots=True)
class Param:
    """One capsule parameter.

    Values arrive either typed (from JSON, from capnp ``Param.value`` JSON text) or as strings
    (``--param k=v`` on the command line); ``coerce`` accepts both and raises ``InvalidParams``
    naming the parameter and what is allowed.
    """

    name: str
    kind: ParamKind
    default: Any = REQUIRED
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[str, ...] = ()
    doc: str = ""

    def allowed(self) -> str:
        if self.kind == "enum":
            return "one of " + ", ".join(self.choices)
        if self.kind in ("int", "float"):
            lo = "-inf" if self.minimum is None else _fmt(self.minimum)
            hi = "inf" if self.maximum is None else _fmt(self.maximum)
            return f"{'an integer' if self.kind == 'int' else 'a number'} in [{lo}, {hi}]"
        if self.kind == "bool":
            return "true or false"
        if self.kind == "json":
            return "a JSON value"
        return "a string"

    def coerce(self, raw: Any) -> Any:
        def bad(why: str) -> InvalidParams:
            return InvalidParams(
                f"param {self.name!r}: {why}; allowed: {self.allowed()}", param=self.name, allowed=self.allowed()
            )

        kind = self.kind
        if kind == "int":
            if isinstance(raw, bool):
                raise bad(f"got {raw!r}")
            if isinstance(raw, str):
                try:
                    raw = int(raw.strip(), 0)
                except ValueError:
                    raise bad(f"{raw!r} is not an integer") from None
            elif isinstance(raw, float) and raw.is_integer():
                raw = int(raw)
            if not isinstance(raw, int):
                raise bad(f"got {type(raw).__name__} {raw!r}")
            self._check_range(raw, bad)
            return raw
        if kind == "float":
            if isinstance(raw, bool):
                raise bad(f"got {raw!r}")
            if isinstance(raw, str):
                try:
                    raw = float(raw.strip())
                except ValueError:
                    raise bad(f"{raw!r} is not a number") from None
            if not isinstance(raw, int | float) or not math.isfinite(raw):
                raise bad(f"got {raw!r}")
            self._check_range(raw, bad)
            return float(raw)
        if kind == "bool":
            if isinstance(raw, bool):
                return raw
            if isinstance(raw, str) and raw.strip().lower() in ("true", "1", "yes", "on"):
                return True
            if isinstance(raw, str) and raw.strip().lower() in ("false", "0", "no", "off"):
                return False
            raise bad(f"got {raw!r}")
        if kind == "enum":
            if not isinstance(raw, str) or raw not in self.choices:
                raise bad(f"got {raw!r}")
            return raw
        if kind == "json":
            if isinstance(raw, str):
                try:
                    return json.loads(raw)
                except ValueError:
                    return raw
            return raw
        if not isinstance(raw, str):
            raise bad(f"got {type(raw).__name__}")
        return raw

    def _check_range(self, value: float, bad: Callable[[str], InvalidParams]) -> None:
        if self.minimum is not None and value < self.minimum:
            raise bad(f"{value!r} is below the minimum")
        if self.maximum is not None and value > self.maximum:
            raise bad(f"{value!r} is above the maximum")

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "type": self.kind, "allowed": self.allowed()}
        if self.default is not REQUIRED:
            out["default"] = self.default
        else:
            out["required"] = True
        if self.doc:
            out["doc"] = self.doc
        return out


def _fmt(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(x)


@dataclass(slots=True)
class Output:
    """A method's result with the metrics only the method knows."""

    data: bytes | bytearray | memoryview
    fuel: int = 0
    peak_memory_bytes: int = 0


@dataclass(slots=True)
class Call:
    """What a method function receives."""

    input: memoryview
    params: dict[str, Any]
    ctx: UnitContext
    job_id: str = ""
    module: bytes | None = None
    deadline_s: float | None = None  # seconds of wall-clock time left when the call started


@dataclass(slots=True)
class UnitContext:
    """What a unit may use of its node: the arena (or None when running without one) and limits.

    ``arena`` is an ``inos_node.arena.Arena``; typed loosely so that units stay importable in
    worker processes and in tools that run without shared memory.
    """

    arena: Any = None
    max_input_bytes: int = 256 * 1024 * 1024
    cache_dir: str | None = None
    extras: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Method:
    name: str
    fn: Callable[[Call], bytes | bytearray | memoryview | Output]
    executor: Executor = "inline"
    params: tuple[Param, ...] = ()
    deterministic: bool = True
    cost: CostModel = "call"
    summary: str = ""
    needs_module: bool = False
    inline_below: int = 0  # a "thread" method runs inline when its input is smaller than this
    # A "thread" method also runs inline when this says the call is bounded to be tiny (e.g. a
    # WASM capsule whose fuel budget caps it well under a millisecond).
    inline_if: Callable[[dict[str, Any]], bool] | None = None

    def runs_inline(self, input_len: int, params: dict[str, Any]) -> bool:
        if self.executor == "inline" or input_len < self.inline_below:
            return True
        return self.inline_if is not None and self.inline_if(params)

    def validate(self, raw: Mapping[str, Any]) -> dict[str, Any]:
        """Defaults filled in, every value coerced; unknown or missing params are errors."""
        known = {p.name: p for p in self.params}
        for key in raw:
            if key not in known:
                names = ", ".join(sorted(known)) or "none"
                raise InvalidParams(
                    f"unknown param {key!r} for {self.name}; params it takes: {names}", param=key, allowed=names
                )
        out: dict[str, Any] = {}
        for p in self.params:
            if p.name in raw:
                out[p.name] = p.coerce(raw[p.name])
            elif p.default is REQUIRED:
                raise InvalidParams(
                    f"missing required param {p.name!r} for {self.name}; allowed: {p.allowed()}",
                    param=p.name,
                    allowed=p.allowed(),
                )
            else:
                out[p.name] = p.default
        return out

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "executor": self.executor,
            "inline_below": self.inline_below,
            "deterministic": self.deterministic,
            "cost": self.cost,
            "params": [p.describe() for p in self.params],
            "summary": self.summary,
        }


@dataclass(frozen=True, slots=True)
class Library:
    name: str
    methods: tuple[Method, ...]
    summary: str = ""

    def method(self, short: str) -> Method | None:
        for m in self.methods:
            if m.name == f"{self.name}.{short}":
                return m
        return None
