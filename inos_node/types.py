"""Small value types shared by every layer: jobs, results, metrics.

These are plain frozen dataclasses.  The capnp forms (``schemas/compute/v1/capsule.capnp``)
exist only at the wire edge (``inos_node.wire.codec``).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, NewType

__all__ = [
    "ArenaSlice",
    "Digest",
    "JobId",
    "JobRequest",
    "JobResult",
    "Metrics",
    "Status",
]

JobId = NewType("JobId", str)


@dataclass(frozen=True, slots=True)
class ArenaSlice:
    """Bytes that already live in the local arena: passed by reference, never copied."""

    offset: int
    length: int


@dataclass(frozen=True, slots=True)
class Digest:
    """Content named by its 32-byte blake3 digest (held in a store, not inline)."""

    value: bytes

    def hex(self) -> str:
        return self.value.hex()


Payload = bytes | bytearray | memoryview | ArenaSlice | Digest


class Status(enum.Enum):
    SUCCESS = "success"
    FAILED = "failed"
    INVALID_PARAMS = "invalidParams"
    BUDGET_EXCEEDED = "budgetExceeded"
    TIMEOUT = "timeout"
    OUT_OF_FUEL = "outOfFuel"
    CAPACITY_EXCEEDED = "capacityExceeded"
    CANCELLED = "cancelled"


@dataclass(frozen=True, slots=True)
class JobRequest:
    job_id: str
    library: str
    method: str
    input: Payload = b""
    params: dict[str, Any] = field(default_factory=dict)
    budget: int = 0
    priority: int = 0
    deadline_ms: int = 0
    replicas: int = 1
    module: bytes | None = None
    module_digest: bytes | None = None

    @property
    def name(self) -> str:
        return f"{self.library}.{self.method}"


@dataclass(frozen=True, slots=True)
class Metrics:
    wall_ns: int = 0
    cpu_ns: int = 0
    fuel: int = 0
    peak_memory_bytes: int = 0
    input_bytes: int = 0
    output_bytes: int = 0

    def as_dict(self) -> dict[str, int]:
        return {
            "wall_ns": self.wall_ns,
            "cpu_ns": self.cpu_ns,
            "fuel": self.fuel,
            "peak_memory_bytes": self.peak_memory_bytes,
            "input_bytes": self.input_bytes,
            "output_bytes": self.output_bytes,
        }


@dataclass(frozen=True, slots=True)
class JobResult:
    job_id: str
    status: Status
    output: Payload = b""
    cost: int = 0
    metrics: Metrics = Metrics()
    error: str = ""
    retryable: bool = False
    executor: str = ""

    @property
    def ok(self) -> bool:
        return self.status is Status.SUCCESS
