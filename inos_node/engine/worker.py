"""A worker process: attaches to the node's arena and serves one lane (see ``workers.py``).

Run by the node as ``python -m inos_node.engine.worker --arena NAME --dir DIR --lane I --lanes N``.
It is a plain (non-trio) process: it blocks on its doorbell, never polls, and exits when the
node's arena goes away or the node closes the control epoch.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import time

from inos_node.engine.spec import Call, Output, UnitContext
from inos_node.errors import CapsuleError, InosError
from inos_node.types import ArenaSlice, JobRequest, JobResult, Metrics, Status
from inos_node.wire import codec
from inos_node.wire.layout import layout_constants

log = logging.getLogger("inos_node.worker")


def _execute(methods: dict[str, object], arena: object, req: JobRequest, ctx: UnitContext) -> JobResult:
    from inos_node.engine.engine import cost_of

    t0 = time.perf_counter_ns()
    c0 = time.process_time_ns()
    executor = f"process:{os.getpid()}"
    method = methods.get(f"{req.library}.{req.method}")
    try:
        if method is None:
            raise CapsuleError(f"worker has no method {req.library}.{req.method}")
        if isinstance(req.input, ArenaSlice):
            view = arena.view(req.input.offset, req.input.length).toreadonly()  # type: ignore[attr-defined]
        else:
            view = memoryview(req.input).toreadonly()  # type: ignore[arg-type]
        params = method.validate(req.params)  # type: ignore[attr-defined]
        out = method.fn(Call(input=view, params=params, ctx=ctx, job_id=req.job_id, module=req.module,  # type: ignore[attr-defined]
                             deadline_s=req.deadline_ms / 1000 if req.deadline_ms else None))
        n_in = len(view)
        del view
    except CapsuleError as exc:
        return JobResult(req.job_id, Status(exc.status), error=str(exc), retryable=exc.retryable, executor=executor,
                         metrics=Metrics(wall_ns=time.perf_counter_ns() - t0, cpu_ns=time.process_time_ns() - c0))
    data, fuel = (out.data, out.fuel) if isinstance(out, Output) else (out, 0)
    return JobResult(req.job_id, Status.SUCCESS, bytes(data), cost_of(method, n_in, fuel),  # type: ignore[arg-type]
                     Metrics(wall_ns=time.perf_counter_ns() - t0, cpu_ns=time.process_time_ns() - c0, fuel=fuel,
                             input_bytes=n_in, output_bytes=len(data)), executor=executor)


def serve(name: str, directory: str, lane: int, lanes: int) -> int:
    from inos_node.arena import Arena, BlockingWaiter, Ring
    from inos_node.units import load_libraries

    layout = layout_constants()
    arena = Arena.attach(name, directory=directory)
    ctx = UnitContext(arena=arena)
    methods = {m.name: m for lib in load_libraries(ctx) for m in lib.methods}
    inbox = Ring(arena, "inbox", lane, lanes)
    outbox = Ring(arena, "outbox", lane, lanes)
    idx_in, idx_ctl, idx_out = layout["idxInbox"], layout["idxControl"], layout["idxOutbox"] + lane
    waiter = BlockingWaiter(arena, (idx_in, idx_ctl))
    control = arena.epoch(idx_ctl)
    seen = arena.epoch(idx_in)
    parent = os.getppid()  # in a container the node may be pid 1: compare, do not test for 1
    while inbox.try_get() is not None:  # requests left by a predecessor that died: their callers were failed
        pass
    ready_fd = os.environ.get("INOS_READY_FD")
    if ready_fd:
        os.write(int(ready_fd), b"R")
        os.close(int(ready_fd))
    while True:
        while (raw := inbox.try_get()) is not None:
            try:
                req = codec.decode_job_request(raw)
            except InosError as exc:
                log.error("lane %d: undecodable request dropped: %s", lane, exc)
                continue
            result = _execute(methods, arena, req, ctx)
            encoded = codec.encode_job_result(result)
            if len(encoded) > outbox.capacity // 2:
                data = result.output
                assert isinstance(data, bytes)
                block = arena.allocate(len(data), name=f"result:{req.job_id}")
                block.view()[:] = data
                result = JobResult(result.job_id, result.status, ArenaSlice(block.offset, len(data)), result.cost,
                                   result.metrics, result.error, result.retryable, result.executor)
                encoded = codec.encode_job_result(result)
            while not outbox.try_put(encoded):  # the node drains the outbox continuously
                waiter.wait(idx_in, arena.epoch(idx_in), timeout=0.05)
            arena.publish(idx_out)
        if arena.epoch(idx_ctl) != control:
            return 0
        seen = waiter.wait(idx_in, seen, timeout=1.0)
        if os.getppid() != parent:  # the node died without closing us (we were re-parented)
            return 0


def main() -> int:
    p = argparse.ArgumentParser(prog="inos-worker")
    p.add_argument("--arena", required=True)
    p.add_argument("--dir", required=True)
    p.add_argument("--lane", type=int, required=True)
    p.add_argument("--lanes", type=int, required=True)
    a = p.parse_args()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the node stops us through the control epoch or SIGTERM
    logging.basicConfig(level=logging.WARNING)
    return serve(a.arena, a.dir, a.lane, a.lanes)


if __name__ == "__main__":
    raise SystemExit(main())
