"""Worker processes attached to the arena: the executor for CPU-bound Python capsules.

Theory of operation
-------------------
Each worker owns one *lane*: an SPSC request ring in the arena's inbox region (the node
writes, the worker reads) and an SPSC result ring in the outbox region (the worker writes, the
node reads).  Nothing else travels between them: no pipes, no pickling.

    node: encode JobRequest ─► inbox lane i ─► publish(idxInbox)          (the node is its one writer)
    worker i: wakes on its doorbell ─► runs the method on an arena view of the input
              ─► encode JobResult ─► outbox lane i ─► publish(idxOutbox + i) (worker i is its one writer)
    node: its lane-i reader wakes on idxOutbox + i ─► hands the result to the waiting caller

Inputs larger than what fits in the ring are copied once into an arena block and passed by
reference (``ArenaSlice``); inputs already in the arena are passed by reference as they are.
Outputs too big for the ring come back the same way, in a block the worker allocates.

With ``lazy`` (the daemon's choice) no worker starts until the first job that needs one: an idle
node costs no worker interpreter (about 55 MB of RSS each); that first job waits for the start.

A lane runs one job at a time (free lanes wait in a bounded channel, so callers queue with
backpressure).  A worker that dies or passes a job's deadline is killed and restarted, and the
job fails with a retryable error that says so.
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass, field
from typing import Any

import trio

from inos_node.engine.spec import Call
from inos_node.types import ArenaSlice, JobRequest, JobResult, Metrics, Status
from inos_node.wire import codec

__all__ = ["ProcessPool"]

log = logging.getLogger(__name__)


@dataclass
class _Lane:
    index: int
    inbox: Any
    outbox: Any
    process: trio.Process | None = None
    pending: tuple[str, trio.MemorySendChannel[JobResult]] | None = None
    started: trio.Event = field(default_factory=trio.Event)
    jobs: int = 0
    restarts: int = 0
    ready: bool = False  # a live worker is attached and listening
    parked: bool = True  # the lane is out of the free channel, waiting for its worker


class ProcessPool:
    """The node side of the worker processes: ``run`` owns them, ``execute`` uses one."""

    def __init__(self, arena: Any, watcher: Any, workers: int, layout: dict[str, int], *,
                 lazy: bool = False) -> None:
        from inos_node.arena import Ring

        if not 1 <= workers <= layout["maxWorkerLanes"]:
            raise ValueError(f"workers must be in 1..{layout['maxWorkerLanes']}")
        self.arena = arena
        self.watcher = watcher
        self.layout = layout
        self.lanes = [
            _Lane(i, Ring(arena, "inbox", i, workers), Ring(arena, "outbox", i, workers)) for i in range(workers)
        ]
        self._free_send, self._free_recv = trio.open_memory_channel[_Lane](workers)
        self._wanted = trio.Event()  # a job needs a worker (lazy: none starts before)
        if not lazy:
            self._wanted.set()

    # ------------------------------------------------------------------ lifetime
    async def run(self, *, wait_ready: bool = True,
                  task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Keep the worker processes running.  ``wait_ready``: report started only once every
        worker is attached (else at once; jobs wait for a free, ready lane either way).  A lazy
        pool reports started at once: its workers start with the first job."""
        async with trio.open_nursery() as nursery:
            for lane in self.lanes:
                nursery.start_soon(self._keep_worker, lane)
                nursery.start_soon(self._read_results, lane)
            if wait_ready and self._wanted.is_set():
                for lane in self.lanes:
                    await lane.started.wait()
            task_status.started()

    async def _keep_worker(self, lane: _Lane) -> None:
        await self._wanted.wait()
        while True:
            cmd = [
                sys.executable, "-m", "inos_node.engine.worker",
                "--arena", self.arena.name, "--dir", self.arena.directory,
                "--lane", str(lane.index), "--lanes", str(len(self.lanes)),
            ]
            ready_r, ready_w = os.pipe()
            try:
                proc = await trio.lowlevel.open_process(cmd, pass_fds=(ready_w,), env={**os.environ, "INOS_READY_FD": str(ready_w)})
            finally:
                os.close(ready_w)
            lane.process = proc
            try:
                async with trio.lowlevel.FdStream(ready_r) as ready:
                    await ready.receive_some(1)  # the worker writes one byte once attached and listening
                lane.ready = True
                lane.started.set()
                if lane.parked:
                    lane.parked = False
                    self._free_send.send_nowait(lane)
                code = await proc.wait()
            finally:
                with trio.CancelScope(shield=True):
                    if proc.returncode is None:
                        proc.kill()
                        with trio.move_on_after(2):
                            await proc.wait()
            lane.ready = False
            lane.restarts += 1
            log.warning("worker process %d (lane %d) exited with %s; restarting", proc.pid, lane.index, code)
            self._fail_pending(lane, f"worker process {proc.pid} died (exit code {code}) while running the job")

    def _fail_pending(self, lane: _Lane, why: str, status: Status = Status.FAILED) -> None:
        if lane.pending is not None:
            job_id, reply = lane.pending
            lane.pending = None
            reply.send_nowait(JobResult(job_id, status, error=why, retryable=True, executor=f"process:{lane.index}"))

    async def _read_results(self, lane: _Lane) -> None:
        index = self.layout["idxOutbox"] + lane.index
        seen = self.arena.epoch(index)
        while True:
            while (raw := lane.outbox.try_get()) is not None:
                result = codec.decode_job_result(raw)
                if isinstance(result.output, ArenaSlice):
                    block_view = self.arena.view(result.output.offset, result.output.length)
                    data = bytes(block_view)
                    del block_view
                    self.arena.free_at(result.output.offset)
                    result = JobResult(result.job_id, result.status, data, result.cost, result.metrics,
                                       result.error, result.retryable, result.executor)
                if lane.pending is not None and lane.pending[0] == result.job_id:
                    _, reply = lane.pending
                    lane.pending = None
                    reply.send_nowait(result)
                else:
                    log.info("job=%s: late result from lane %d dropped", result.job_id, lane.index)
            seen = await self.watcher.wait(index, seen)

    # ------------------------------------------------------------------ use
    async def execute(self, req: JobRequest, call: Call, deadline_ms: int) -> JobResult:
        if not self._wanted.is_set():
            log.info("job=%s: starting the worker processes (the first job that needs one)", req.job_id)
            self._wanted.set()
        lane = await self._free_recv.receive()
        block = None
        try:
            payload: Any = req.input
            if not isinstance(payload, ArenaSlice) and len(call.input) > lane.inbox.capacity // 2:
                block = self.arena.allocate(len(call.input), name=f"job:{req.job_id}")
                block.view()[:] = call.input
                payload = ArenaSlice(block.offset, len(call.input))
            params = {k: v for k, v in call.params.items() if k != "_extra"}
            params.update(call.params.get("_extra", {}))
            wire_req = JobRequest(req.job_id, req.library, req.method, payload, params, req.budget,
                                  req.priority, deadline_ms, req.replicas, req.module, req.module_digest)
            raw = codec.encode_job_request(wire_req)
            reply_send, reply_recv = trio.open_memory_channel[JobResult](1)
            lane.pending = (req.job_id, reply_send)
            if not lane.inbox.try_put(raw):
                lane.pending = None
                return JobResult(req.job_id, Status.CAPACITY_EXCEEDED, error="worker lane is full", retryable=True)
            self.arena.publish(self.layout["idxInbox"])
            lane.jobs += 1
            with trio.move_on_after(deadline_ms / 1000.0) as scope:
                result = await reply_recv.receive()
            if scope.cancelled_caught:
                lane.pending = None
                if lane.process is not None:
                    lane.ready = False
                    lane.process.kill()  # a stuck worker is replaced; its late result is dropped
                return JobResult(req.job_id, Status.TIMEOUT, error=f"{req.library}.{req.method} passed its "
                                 f"{deadline_ms} ms deadline in a worker process (worker restarted)",
                                 retryable=True, metrics=Metrics(), executor=f"process:{lane.index}")
            return result
        finally:
            if block is not None:
                self.arena.free(block)
            if lane.ready:
                self._free_send.send_nowait(lane)
            else:
                lane.parked = True  # back in the free channel once its new worker is ready

    def statistics(self) -> list[dict[str, Any]]:
        return [
            {"lane": lane.index, "pid": lane.process.pid if lane.process else None, "jobs": lane.jobs,
             "restarts": lane.restarts}
            for lane in self.lanes
        ]
