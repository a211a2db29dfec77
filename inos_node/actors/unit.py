"""Units as trio actors: a bounded mailbox plus epoch subscriptions, under one supervisor.

A ``UnitActor`` serves one library.  It owns a bounded mailbox of capsule jobs (a full mailbox
answers ``capacityExceeded`` at once: nothing queues without bound) and reacts to the epoch
indices it subscribes to by calling its ``on_epoch`` hook with the new value (coalesced: a burst
of bumps is one reaction with the latest epoch).

The ``Supervisor`` owns the actors' nursery.  An actor that raises is logged, counted in its
``Backoff`` (shown in diagnostics and ``inos units``) and restarted after a growing delay.
Cancelling the supervisor stops every actor; each actor's cleanup is shielded and bounded.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import trio

from inos_node.actors.supervision import Backoff, Crash, RestartPolicy
from inos_node.types import JobRequest, JobResult, Status

__all__ = ["Supervisor", "UnitActor"]

log = logging.getLogger(__name__)

Execute = Callable[[JobRequest], Awaitable[JobResult]]
EpochHook = Callable[[int, int], Awaitable[None]]


class EpochSource:
    """What an actor needs of the arena's watcher (``inos_node.arena.EpochWatcher``)."""

    async def wait(self, index: int, seen: int) -> int:  # pragma: no cover - protocol
        raise NotImplementedError

    def epoch(self, index: int) -> int:  # pragma: no cover - protocol
        raise NotImplementedError


@dataclass(slots=True)
class _Job:
    request: JobRequest
    reply: trio.MemorySendChannel[JobResult]


@dataclass
class UnitActor:
    name: str
    execute: Execute
    subscriptions: tuple[int, ...] = ()
    on_epoch: EpochHook | None = None
    mailbox_size: int = 64  # bounded: a burst of submissions, not a backlog
    concurrency: int = 4
    state: str = "created"
    handled: int = 0
    reactions: int = 0
    starts: int = 0
    _send: trio.MemorySendChannel[_Job] | None = field(default=None, init=False, repr=False)
    _lot: trio.lowlevel.ParkingLot = field(default_factory=trio.lowlevel.ParkingLot, init=False, repr=False)

    async def wait_started(self, count: int) -> None:
        """Wait until the actor has started ``count`` times in all (1 + its restarts)."""
        while self.starts < count:
            await self._lot.park()

    async def submit(self, request: JobRequest) -> JobResult:
        """Put a job in the mailbox and wait for its result (capacityExceeded if full)."""
        send = self._send
        if send is None or self.state != "running":
            return JobResult(request.job_id, Status.CAPACITY_EXCEEDED, error=f"unit {self.name} is {self.state}",
                             retryable=True)
        reply_send, reply_recv = trio.open_memory_channel[JobResult](1)
        try:
            send.send_nowait(_Job(request, reply_send))
        except trio.WouldBlock:
            return JobResult(request.job_id, Status.CAPACITY_EXCEEDED,
                             error=f"unit {self.name}: mailbox full ({self.mailbox_size} jobs)", retryable=True)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return JobResult(request.job_id, Status.CAPACITY_EXCEEDED, error=f"unit {self.name} is restarting",
                             retryable=True)
        async with reply_recv:
            try:
                return await reply_recv.receive()
            except trio.EndOfChannel:
                return JobResult(request.job_id, Status.FAILED, retryable=True,
                                 error=f"unit {self.name} crashed while running the job; it is being restarted")

    async def run(self, source: EpochSource | None, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        send, recv = trio.open_memory_channel[_Job](self.mailbox_size)
        limiter = trio.Semaphore(self.concurrency)
        self._send = send
        self.state = "running"
        self.starts += 1
        self._lot.unpark_all()
        # started() before any nursery opens: trio cannot move a task that has child nurseries.
        task_status.started()
        try:
            async with send, recv, trio.open_nursery() as nursery:
                if source is not None:
                    for index in self.subscriptions:
                        nursery.start_soon(self._watch, source, index)
                async for job in recv:
                    await limiter.acquire()
                    nursery.start_soon(self._handle, job, limiter)
        finally:
            self._send = None

    async def _handle(self, job: _Job, limiter: trio.Semaphore) -> None:
        try:
            result = await self.execute(job.request)
            self.handled += 1
            job.reply.send_nowait(result)
        finally:
            limiter.release()
            job.reply.close()

    async def _watch(self, source: EpochSource, index: int) -> None:
        seen = source.epoch(index)
        while True:
            seen = await source.wait(index, seen)
            self.reactions += 1
            if self.on_epoch is not None:
                await self.on_epoch(index, seen)


@dataclass
class Supervisor:
    """Owns the actors' nursery; restarts crashed actors with backoff."""

    actors: list[UnitActor]
    source: EpochSource | None = None
    policy: RestartPolicy = field(default_factory=RestartPolicy)
    on_crash: Callable[[UnitActor, Backoff], None] | None = None
    backoffs: dict[str, Backoff] = field(default_factory=dict)

    def actor(self, name: str) -> UnitActor | None:
        for a in self.actors:
            if a.name == name:
                return a
        return None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            for actor in self.actors:
                self.backoffs[actor.name] = Backoff(self.policy)
                await nursery.start(self._supervise, actor)
            task_status.started()

    async def _supervise(self, actor: UnitActor, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        backoff = self.backoffs[actor.name]
        once = _StartedOnce(task_status)
        while True:
            backoff.started(trio.current_time())
            try:
                await actor.run(self.source, task_status=once)  # type: ignore[arg-type]
                actor.state = "stopped"
                return
            except Exception as exc:  # noqa: BLE001 - supervisor policy: log, count, restart with backoff
                why = _describe(exc)
                delay = backoff.crashed(Crash(actor.name, why, trio.current_time()))
                actor.state = "restarting"
                log.warning("unit %s crashed (%s); restart #%d in %.2fs", actor.name, why, backoff.restarts, delay,
                            exc_info=True)
                if self.on_crash is not None:
                    self.on_crash(actor, backoff)
                once.started()
                await trio.sleep(delay)

    def statistics(self) -> list[dict[str, Any]]:
        return [
            {
                "unit": a.name,
                "state": a.state,
                "restarts": self.backoffs.get(a.name, Backoff()).restarts,
                "last_error": self.backoffs.get(a.name, Backoff()).last_error,
                "handled": a.handled,
                "reactions": a.reactions,
            }
            for a in self.actors
        ]


class _StartedOnce:
    """A task_status that forwards only the first ``started()`` (restarts call it again)."""

    def __init__(self, inner: trio.TaskStatus[None]) -> None:
        self._inner = inner
        self._done = False

    def started(self, value: None = None) -> None:
        if not self._done:
            self._done = True
            self._inner.started(value)


def _describe(exc: BaseException) -> str:
    """The innermost error of a crash, without the nursery's ExceptionGroup wrapping."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return f"{type(exc).__name__}: {exc}"
