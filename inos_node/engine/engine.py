"""The capsule engine: the seed's library proxy ``compute_execute(library, method, input, params)``.

Theory of operation
-------------------
Every capsule, local or (later) delegated, goes through ``Engine.execute(JobRequest)``:

    resolve library.method ──► validate params ──► resolve input ──► pick executor ──► run ──► JobResult
        (UnknownUnit lists        (InvalidParams       (inline bytes,     inline: in the trio loop
         what exists)              names the param)     arena slice by     thread: trio.to_thread (GIL-releasing)
                                                        reference)         process: a worker attached to the arena

``execute`` never raises for a capsule's own failure: every ``CapsuleError`` becomes a
``JobResult`` whose status says what happened (invalidParams, outOfFuel, timeout, ...).  Only
cancellation and real bugs propagate.

Cost (what a capsule would be charged; prices come with the economy): ``call`` = 1,
``mib`` = ceil(input bytes / MiB) with a minimum of 1, ``fuel`` = the WASM fuel used.
"""

from __future__ import annotations

import itertools
import logging
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import trio

from inos_node.engine.spec import Call, Library, Method, Output, UnitContext
from inos_node.errors import (
    CapsuleError,
    CapsuleFailed,
    CapsuleTimeout,
    InputTooLarge,
    InvalidParams,
    UnknownUnit,
)
from inos_node.types import ArenaSlice, Digest, JobRequest, JobResult, Metrics, Status

__all__ = ["Engine", "EngineConfig", "cost_of"]

log = logging.getLogger(__name__)
_MIB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class EngineConfig:
    max_input_bytes: int = 256 * _MIB
    default_deadline_ms: int = 60_000
    max_threads: int = 2
    process_workers: int = 1

    def __post_init__(self) -> None:
        if self.max_input_bytes < 1:
            raise ValueError("max_input_bytes must be >= 1")
        if self.max_threads < 1:
            raise ValueError("max_threads must be >= 1")


def cost_of(method: Method, input_bytes: int, fuel: int) -> int:
    if method.cost == "fuel":
        return fuel
    if method.cost == "mib":
        return max(1, math.ceil(input_bytes / _MIB))
    return 1


class Engine:
    """Routes capsules to units.  Build one per node (or per ``inos exec``)."""

    def __init__(
        self,
        ctx: UnitContext,
        libraries: list[Library],
        config: EngineConfig | None = None,
        process_pool: Any = None,
    ) -> None:
        self.ctx = ctx
        self.config = config or EngineConfig()
        self._libraries = {lib.name: lib for lib in libraries}
        self._methods: dict[str, Method] = {m.name: m for lib in libraries for m in lib.methods}
        self._thread_limiter = trio.CapacityLimiter(self.config.max_threads)
        self._ids = itertools.count(1)
        self.process_pool = process_pool
        self.completed = 0
        self.failed = 0

    # ------------------------------------------------------------------ catalog
    @property
    def libraries(self) -> list[Library]:
        return list(self._libraries.values())

    def method_names(self) -> list[str]:
        return sorted(self._methods)

    def resolve(self, library: str, method: str) -> Method:
        lib = self._libraries.get(library)
        if lib is None:
            raise UnknownUnit(
                f"unknown library {library!r}; libraries: {', '.join(sorted(self._libraries))}",
                available=sorted(self._libraries),
            )
        m = self._methods.get(f"{library}.{method}")
        if m is None:
            names = sorted(x.name for x in lib.methods)
            raise UnknownUnit(f"unknown method {library}.{method}; {library} has: {', '.join(names)}", available=names)
        return m

    def catalog(self) -> list[dict[str, Any]]:
        return [
            {"library": lib.name, "summary": lib.summary, "methods": [m.describe() for m in lib.methods]}
            for lib in self._libraries.values()
        ]

    # ------------------------------------------------------------------ execute
    def new_job_id(self) -> str:
        return f"local-{next(self._ids)}"

    async def call(
        self,
        name: str,
        input: bytes | bytearray | memoryview | ArenaSlice = b"",
        params: Mapping[str, Any] | None = None,
        *,
        module: bytes | None = None,
        deadline_ms: int = 0,
    ) -> JobResult:
        """``compute_execute("library.method", input, params)``, the short form."""
        library, _, method = name.partition(".")
        return await self.execute(
            JobRequest(
                job_id=self.new_job_id(),
                library=library,
                method=method,
                input=input,
                params=dict(params or {}),
                module=module,
                deadline_ms=deadline_ms,
            )
        )

    async def execute(self, req: JobRequest) -> JobResult:
        t0 = time.perf_counter_ns()
        c0 = time.thread_time_ns()
        job = _Attempt()
        try:
            method, call, deadline_ms = self._prepare(req, job)
            try:
                out, executor = await self._run(method, call, req, deadline_ms)
            except (CapsuleError, trio.Cancelled):
                raise
            except Exception as exc:  # noqa: BLE001 - policy: a unit's bug fails its job, never the node
                raise self._unit_bug(req, method, exc) from exc
        except CapsuleError as exc:
            return self._failure(req, exc, t0, c0, job.input_len)
        return self._success(req, method, out, executor, t0, c0, job.input_len)

    def execute_now(self, req: JobRequest) -> JobResult | None:
        """``execute`` without awaiting: the result of a method that runs inline (no thread, no
        worker process; the trivial and small capsules), or None when it would not run inline
        (then ``await execute`` it).  Used by the delegation server's fast path.  The job runs
        on this thread without yielding, so its CPU time is its wall time (reported as such: the
        thread-CPU clock is a system call, a tenth of a trivial capsule's cost)."""
        t0 = time.perf_counter_ns()
        c0 = _CPU_IS_WALL
        job = _Attempt()
        try:
            method, call, _ = self._prepare(req, job)
            if not method.runs_inline(len(call.input), call.params):
                return None
            try:
                out = method.fn(call)
            except CapsuleError:
                raise
            except Exception as exc:  # noqa: BLE001 - policy: a unit's bug fails its job, never the node
                raise self._unit_bug(req, method, exc) from exc
        except CapsuleError as exc:
            return self._failure(req, exc, t0, c0, job.input_len)
        return self._success(req, method, out, "inline", t0, c0, job.input_len)

    def _prepare(self, req: JobRequest, job: _Attempt) -> tuple[Method, Call, int]:
        method = self.resolve(req.library, req.method)
        params = self._validate(method, req.params)
        view = self._input_view(req.input)
        job.input_len = len(view)
        deadline_ms = req.deadline_ms or self.config.default_deadline_ms
        call = Call(
            input=view,
            params=params,
            ctx=self.ctx,
            job_id=req.job_id,
            module=req.module,
            deadline_s=deadline_ms / 1000.0,
        )
        if method.needs_module and req.module is None:
            raise InvalidParams(f"{method.name} needs a module: pass --module PATH", param="module")
        return method, call, deadline_ms

    @staticmethod
    def _unit_bug(req: JobRequest, method: Method, exc: Exception) -> CapsuleFailed:
        log.exception("job=%s: unit %s raised", req.job_id, method.name)
        return CapsuleFailed(f"{method.name} raised {type(exc).__name__}: {exc}")

    def _failure(self, req: JobRequest, exc: CapsuleError, t0: int, c0: int, input_len: int) -> JobResult:
        self.failed += 1
        status = Status(exc.status)
        log.info("job=%s %s.%s failed: %s: %s", req.job_id, req.library, req.method, status.value, exc)
        return JobResult(
            job_id=req.job_id,
            status=status,
            cost=0,
            metrics=Metrics(
                wall_ns=(wall := time.perf_counter_ns() - t0),
                cpu_ns=wall if c0 == _CPU_IS_WALL else time.thread_time_ns() - c0,
                fuel=int(getattr(exc, "used", 0) or 0) if getattr(exc, "kind", "") == "fuel" else 0,
                input_bytes=input_len,
            ),
            error=str(exc),
            retryable=bool(getattr(exc, "retryable", False)),
            executor=getattr(exc, "executor", "local"),
        )

    def _success(self, req: JobRequest, method: Method, out: Any, executor: str, t0: int, c0: int,
                 input_len: int) -> JobResult:
        if isinstance(out, Output):
            data, fuel, peak = out.data, out.fuel, out.peak_memory_bytes
        else:
            data, fuel, peak = out, 0, 0
        self.completed += 1
        return JobResult(
            job_id=req.job_id,
            status=Status.SUCCESS,
            output=data,
            cost=cost_of(method, input_len, fuel),
            metrics=Metrics(
                wall_ns=(wall := time.perf_counter_ns() - t0),
                cpu_ns=wall if c0 == _CPU_IS_WALL else time.thread_time_ns() - c0,
                fuel=fuel,
                peak_memory_bytes=peak,
                input_bytes=input_len,
                output_bytes=len(data),
            ),
            executor=executor,
        )

    def _validate(self, method: Method, raw: Mapping[str, Any]) -> dict[str, Any]:
        if not method.needs_module:
            return method.validate(raw)
        # WASM capsules: the method's own params are validated; every other param is the
        # capsule's and travels to it untouched in "_extra".
        own = {p.name for p in method.params}
        params = method.validate({k: v for k, v in raw.items() if k in own})
        params["_extra"] = {k: v for k, v in raw.items() if k not in own}
        return params

    def _input_view(self, payload: Any) -> memoryview:
        if isinstance(payload, ArenaSlice):
            if self.ctx.arena is None:
                raise CapsuleError("input refers to an arena slice, but this engine has no arena")
            n = payload.length
            self._check_input(n)
            view: memoryview = self.ctx.arena.view(payload.offset, n)
            return view.toreadonly()
        if isinstance(payload, Digest):
            raise CapsuleError(
                f"input by digest {payload.hex()[:16]}... is not available locally (the content store comes with the mesh)"
            )
        self._check_input(len(payload))
        view = payload if isinstance(payload, memoryview) else memoryview(payload)
        return view.toreadonly()

    def _check_input(self, n: int) -> None:
        limit = self.config.max_input_bytes
        if n > limit:
            raise InputTooLarge(f"input of {n} bytes is over the {limit}-byte limit", limit=limit, observed=n)

    async def _run(
        self, method: Method, call: Call, req: JobRequest, deadline_ms: int
    ) -> tuple[bytes | bytearray | memoryview | Output, str]:
        if method.runs_inline(len(call.input), call.params):
            return method.fn(call), "inline"
        if method.executor == "thread":
            with trio.move_on_after(deadline_ms / 1000.0) as scope:
                out = await trio.to_thread.run_sync(
                    method.fn, call, limiter=self._thread_limiter, abandon_on_cancel=True
                )
            if scope.cancelled_caught:
                raise CapsuleTimeout(f"{method.name} passed its {deadline_ms} ms deadline", deadline_s=deadline_ms / 1000)
            return out, "thread"
        if self.process_pool is None:
            # No worker processes (``inos exec``, tests): a thread keeps the loop responsive.
            out = await trio.to_thread.run_sync(method.fn, call, limiter=self._thread_limiter)
            return out, "thread"
        result: JobResult = await self.process_pool.execute(req, call, deadline_ms)
        if not result.ok:
            raise _WorkerFailure(result)
        assert isinstance(result.output, bytes | bytearray | memoryview)
        return Output(data=result.output, fuel=result.metrics.fuel), result.executor


class _WorkerFailure(CapsuleError):
    """A worker process answered with a failed JobResult: keep its status and message."""

    def __init__(self, result: JobResult) -> None:
        super().__init__(result.error or result.status.value)
        self.status = result.status.value
        self.retryable = result.retryable
        self.executor = result.executor


_CPU_IS_WALL = -1  # ``c0`` of a job run inline by ``execute_now``


class _Attempt:
    """What ``execute`` has learnt of a job when it fails (the input's size, for the metrics)."""

    __slots__ = ("input_len",)

    def __init__(self) -> None:
        self.input_len = 0
