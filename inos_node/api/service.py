"""What the control API serves: the ``NodeService`` interface and the values it speaks in.

The HTTP layer (``inos_node.api.app``) is a thin translation of routes onto this interface; the
node daemon implements it, tests implement it with an in-memory fake.  Nothing here does I/O, and
nothing here imports starlette, so the CLI's client can share these types cheaply.

Rules this module lives by:
  1. ``SubmitRequest`` validates itself on construction: whoever holds one holds a request that
     names a capsule, has a sane placement, replica count, budget and timeout.  Every failure is an
     ``InvalidParams`` whose ``param`` is the request field at fault (the API answers it as 400).
  2. ``JobRecord`` is a snapshot, never updated in place: the service hands out a new one each time.
  3. JSON forms carry bytes as base64 (``input_b64``, ``module_b64``, ``output_b64``) and digests as
     hex, so that one ``json.loads`` gets everything back.
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any, Final, Literal, Protocol, get_args

from inos_node.errors import InvalidParams
from inos_node.types import JobResult, Status

__all__ = [
    "FINISHED_STATUSES",
    "FlockHost",
    "MAX_REPLICAS",
    "MAX_TIMEOUT_S",
    "PLACEMENTS",
    "PREFERENCES",
    "JobRecord",
    "NodeService",
    "Prefer",
    "SubmitRequest",
]

Prefer = Literal["local", "remote", "fastest", "cheapest"]
PREFERENCES: Final = frozenset(get_args(Prefer))
PLACEMENTS: Final = ("auto", "local", "remote", "peer:<id>")
FINISHED_STATUSES: Final = frozenset(s.value for s in Status)
# Bound everything (STYLE C6): a request cannot ask for a fleet or a week.
MAX_REPLICAS: Final = 16
MAX_TIMEOUT_S: Final = 24 * 3600.0


def _bad(param: str, message: str, allowed: str | None = None) -> InvalidParams:
    return InvalidParams(f"{param}: {message}", param=param, allowed=allowed)


@dataclass(frozen=True, slots=True)
class SubmitRequest:
    """One capsule job as a client asks for it.

    ``placement``: ``"auto"`` lets the node choose, ``"local"`` runs here, ``"remote"`` on some
    other peer, ``"peer:<peer id>"`` on that peer.  ``replicas`` > 1 runs the job on that many
    executors and compares outputs.  ``budget`` is the most the job may cost, in the smallest
    credit unit (0 = no limit).  ``timeout_s`` None means the node's default deadline.  ``prefer``
    tunes "auto" peer selection.

    Input is either ``input`` (bytes) or ``input_digest`` (the 32-byte blake3 digest of content
    the node can fetch), never both.

    Raises:
        InvalidParams: ``param`` names the field at fault.
    """

    capsule: str
    input: bytes = b""
    input_digest: bytes | None = None
    params: Mapping[str, Any] = field(default_factory=dict)
    module: bytes | None = None
    placement: str = "auto"
    replicas: int = 1
    budget: int = 0
    timeout_s: float | None = None
    prefer: Prefer | None = None

    def __post_init__(self) -> None:
        lib, dot, method = self.capsule.partition(".") if isinstance(self.capsule, str) else ("", "", "")
        if not (lib and dot and method):
            raise _bad(
                "capsule", f"expected LIBRARY.METHOD (for example compute.blake3), got {self.capsule!r}"
            )
        if not isinstance(self.input, bytes):
            raise _bad("input", "must be bytes")
        if self.input_digest is not None:
            if not isinstance(self.input_digest, bytes) or len(self.input_digest) != 32:
                raise _bad("input_digest", "must be a 32-byte blake3 digest (64 hex characters)")
            if self.input:
                raise _bad("input_digest", "give input bytes or an input digest, not both")
        if not isinstance(self.params, Mapping) or not all(isinstance(k, str) for k in self.params):
            raise _bad("params", "must be an object of string keys")
        if self.module is not None and not isinstance(self.module, bytes):
            raise _bad("module", "must be bytes")
        p = self.placement
        if not isinstance(p, str) or not (
            p in ("auto", "local", "remote") or (p.startswith("peer:") and len(p) > 5)
        ):
            raise _bad("placement", f"got {p!r}", allowed=", ".join(PLACEMENTS))
        if type(self.replicas) is not int or not 1 <= self.replicas <= MAX_REPLICAS:
            raise _bad("replicas", f"must be an integer in [1, {MAX_REPLICAS}], got {self.replicas!r}")
        if type(self.budget) is not int or self.budget < 0:
            raise _bad("budget", f"must be an integer >= 0 (0 = no limit), got {self.budget!r}")
        t = self.timeout_s
        if t is not None and (
            isinstance(t, bool) or not isinstance(t, int | float) or not 0 < t <= MAX_TIMEOUT_S
        ):
            raise _bad("timeout_s", f"must be a number of seconds in (0, {MAX_TIMEOUT_S:g}], got {t!r}")
        if self.prefer is not None and self.prefer not in PREFERENCES:
            raise _bad("prefer", f"got {self.prefer!r}", allowed=", ".join(sorted(PREFERENCES)))

    @property
    def library(self) -> str:
        return self.capsule.partition(".")[0]

    @property
    def method(self) -> str:
        return self.capsule.partition(".")[2]

    def to_json(self) -> dict[str, Any]:
        """The ``POST /v1/jobs`` body for this request (without ``wait``)."""
        out: dict[str, Any] = {
            "capsule": self.capsule,
            "params": dict(self.params),
            "placement": self.placement,
            "replicas": self.replicas,
            "budget": self.budget,
        }
        if self.input_digest is not None:
            out["input_digest"] = self.input_digest.hex()
        else:
            out["input_b64"] = base64.b64encode(self.input).decode("ascii")
        if self.module is not None:
            out["module_b64"] = base64.b64encode(self.module).decode("ascii")
        if self.timeout_s is not None:
            out["timeout_s"] = self.timeout_s
        if self.prefer is not None:
            out["prefer"] = self.prefer
        return out


@dataclass(frozen=True, slots=True)
class JobRecord:
    """A snapshot of one job as the node knows it.

    ``status`` is "queued" or "running" while the job is in flight, then one of the
    ``JobResult`` status values ("success", "failed", "invalidParams", ...).  ``executor`` is the
    peer id that ran it, or "local".  ``receipt`` is the executor's signed receipt with bytes as
    hex or base64 strings (None until finished, or when there is none).  ``replicas`` holds one
    dict per replica (executor, status, cost, output digest...).  Times are unix milliseconds.
    """

    job_id: str
    capsule: str
    status: str
    output: bytes | None = None
    output_len: int = 0
    executor: str = ""
    cost: int = 0
    metrics: Mapping[str, int] = field(default_factory=dict)
    receipt: Mapping[str, Any] | None = None
    replicas: tuple[Mapping[str, Any], ...] = ()
    error: str = ""
    submitted_ms: int = 0
    finished_ms: int | None = None
    escrow: int = 0  # credits locked for the job (networks with a ledger; 0 for local jobs)
    settlement: Mapping[str, Any] | None = None  # paid, fee, refunded, escrow, block (once settled)

    @property
    def finished(self) -> bool:
        return self.status in FINISHED_STATUSES

    @property
    def ok(self) -> bool:
        return self.status == Status.SUCCESS.value

    def to_json(self, *, include_output: bool = True) -> dict[str, Any]:
        """JSON-ready dict.  ``output_b64`` is None while there is no output, and left out when
        ``include_output`` is false (job listings)."""
        out: dict[str, Any] = {
            "job_id": self.job_id,
            "capsule": self.capsule,
            "status": self.status,
            "output_len": self.output_len,
            "executor": self.executor,
            "cost": self.cost,
            "metrics": dict(self.metrics),
            "receipt": dict(self.receipt) if self.receipt is not None else None,
            "replicas": [dict(r) for r in self.replicas],
            "error": self.error,
            "submitted_ms": self.submitted_ms,
            "finished_ms": self.finished_ms,
            "escrow": self.escrow,
            "settlement": dict(self.settlement) if self.settlement is not None else None,
        }
        if include_output:
            out["output_b64"] = None if self.output is None else base64.b64encode(self.output).decode("ascii")
        return out

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> JobRecord:
        """The inverse of ``to_json`` (a listing's record comes back with ``output`` None)."""
        b64 = doc.get("output_b64")
        return cls(
            job_id=str(doc["job_id"]),
            capsule=str(doc.get("capsule", "")),
            status=str(doc["status"]),
            output=None if b64 is None else base64.b64decode(b64),
            output_len=int(doc.get("output_len", 0)),
            executor=str(doc.get("executor", "")),
            cost=int(doc.get("cost", 0)),
            metrics=dict(doc.get("metrics") or {}),
            receipt=doc.get("receipt"),
            replicas=tuple(doc.get("replicas") or ()),
            error=str(doc.get("error", "")),
            submitted_ms=int(doc.get("submitted_ms", 0)),
            finished_ms=doc.get("finished_ms"),
            escrow=int(doc.get("escrow") or 0),
            settlement=doc.get("settlement"),
        )


class FlockHost(Protocol):
    """What the dashboard's boids showcase needs of the local node (``LocalNode`` is one).

    It steps the flock with ``submit("boids.step", ...)`` through the node's engine, and reads
    each frame in place from the arena's ``"boids.flock"`` ping-pong buffer.
    """

    arena: Any

    async def submit(self, name: str, data: Any = b"", params: dict[str, Any] | None = None, *,
                     module: bytes | None = None, deadline_ms: int = 0) -> JobResult: ...


class NodeService(Protocol):
    """What a running node offers its control API.  The daemon implements it.

    Sync methods must not block (they read in-memory state); async ones may wait.
    ``local`` is the node's engine and arena (None until they are up), for the boids showcase.
    """

    local: FlockHost | None

    async def submit(self, req: SubmitRequest) -> str:
        """Accept a job and return its id at once; the job runs in the background.

        Raises:
            InvalidParams / UnknownUnit: the request cannot run here (the API answers 400).
            PeerError: the asked-for peer cannot be reached (503).
        """
        ...

    def job(self, job_id: str) -> JobRecord | None: ...

    def jobs(self, limit: int = 100) -> list[JobRecord]:
        """The most recent jobs, newest first."""
        ...

    async def wait_job(self, job_id: str) -> JobRecord:
        """Wait until the job has finished and return its final record.

        Raises:
            KeyError: no such job.
        Cancellation: safe; the job itself keeps running.
        """
        ...

    def subscribe_events(self) -> AbstractAsyncContextManager[AsyncIterator[dict[str, Any]]]:
        """A subscription to job events, live from the moment the context is entered.

        Each event is a JSON-ready dict with at least ``"type"`` ("submitted", "started",
        "finished", ...) and ``"job_id"``.  The service bounds each subscription's queue (it may
        drop events for a subscriber that does not keep up); iteration must be cancel-safe.
        """
        ...

    def peers(self) -> list[dict[str, Any]]:
        """Known peers: peer_id, addresses, name, methods, load, rtt_ms, price..."""
        ...

    async def wait_peers(self, *, peer_id: str | None, serving: str | None, count: int, timeout_s: float) -> bool:
        """Wait (without polling) until the node holds ``peer_id``'s advert and ``count`` peers
        advertise ``serving``; False if ``timeout_s`` passed first."""
        ...

    def units(self) -> list[dict[str, Any]]:
        """The capsule catalog, in ``Engine.catalog()`` format."""
        ...

    def info(self) -> dict[str, Any]:
        """This node: peer_id, did, addresses, name, version, uptime..."""
        ...

    def health(self) -> dict[str, Any]:
        """At least ``{"ready": bool}``; the API answers 503 while not ready."""
        ...

    def vitals(self) -> dict[str, Any]:
        """Vital signs for the dashboard (``GET /v1/vitals``): ``name``, ``peer_id``, ``uptime_s``,
        ``load`` (0..1), ``jobs`` {running, waiting, limit, completed, failed}, ``served``
        {running, total}, ``arena`` {name, size, used, free, blocks, processes}, ``epochs``
        {epoch name: counter}, ``units`` [{unit, state, restarts, ...}].  The API adds rates."""
        ...

    def metrics_snapshot(self) -> dict[str, Any]:
        """``vitals()`` plus ``node`` {peer_id, name, version}, ``peers`` {known, connected,
        verified} and ``gossip`` {published, delivered: {topic: n}, errors: {kind: n}}, for
        ``GET /metrics`` (``inos_node.api.metrics.families`` reads it; missing keys are skipped)."""
        ...
