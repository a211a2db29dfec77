"""The node's job book: records, events and the bounded history the control API serves.

Pure bookkeeping (no I/O): the daemon tells it what happened; it keeps one immutable
``JobRecord`` per job (replaced on every change), wakes whoever waits for a job to finish, and
fans events out to subscribers through bounded channels (a subscriber that does not keep up
loses events rather than growing a queue).
"""

from __future__ import annotations

import itertools
import secrets
import time
from collections import OrderedDict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import Any

import trio

from inos_node.api.service import FINISHED_STATUSES, JobRecord

__all__ = ["JobBook"]


class JobBook:
    def __init__(self, *, keep: int = 1000, subscriber_buffer: int = 256) -> None:
        self._records: OrderedDict[str, JobRecord] = OrderedDict()
        self._done: dict[str, trio.Event] = {}
        self._keep = keep
        self._subs: set[trio.MemorySendChannel[dict[str, Any]]] = set()
        self._sub_buffer = subscriber_buffer
        self._seq = itertools.count(1)
        self._prefix = secrets.token_hex(3)

    def new_id(self) -> str:
        return f"job-{self._prefix}-{next(self._seq)}"

    def add(self, job_id: str, capsule: str) -> JobRecord:
        rec = JobRecord(job_id=job_id, capsule=capsule, status="queued", submitted_ms=_now_ms())
        self._records[job_id] = rec
        self._done[job_id] = trio.Event()
        while len(self._records) > self._keep:
            old, _ = self._records.popitem(last=False)
            self._done.pop(old, None)
        self.emit({"type": "submitted", "job_id": job_id, "capsule": capsule})
        return rec

    def update(self, job_id: str, **changes: Any) -> JobRecord | None:
        rec = self._records.get(job_id)
        if rec is None:
            return None
        if changes.get("status", rec.status) in FINISHED_STATUSES and not changes.get("finished_ms",
                                                                                      rec.finished_ms):
            changes["finished_ms"] = _now_ms()
        rec = replace(rec, **changes)
        self._records[job_id] = rec
        if rec.finished:
            self._done[job_id].set()
            self.emit({"type": "finished", "job_id": job_id, "status": rec.status, "executor": rec.executor,
                       "cost": rec.cost, "error": rec.error,
                       "latency_ms": (rec.finished_ms or 0) - rec.submitted_ms,
                       "verified": rec.receipt is not None})
        else:
            self.emit({"type": rec.status, "job_id": job_id, "executor": rec.executor})
        return rec

    def get(self, job_id: str) -> JobRecord | None:
        return self._records.get(job_id)

    def recent(self, limit: int) -> list[JobRecord]:
        return list(reversed(self._records.values()))[:limit]

    async def wait(self, job_id: str) -> JobRecord:
        event = self._done.get(job_id)
        if event is None:
            raise KeyError(job_id)
        await event.wait()
        return self._records[job_id]

    def emit(self, event: dict[str, Any]) -> None:
        if not self._subs:  # nobody listens (the common case): not even a timestamp
            return
        event.setdefault("ts_ms", _now_ms())
        for send in list(self._subs):
            try:
                send.send_nowait(event)
            except trio.WouldBlock:
                pass  # a slow subscriber loses events; it never grows a queue
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self._subs.discard(send)

    @asynccontextmanager
    async def subscribe(self) -> AsyncIterator[AsyncIterator[dict[str, Any]]]:
        send, recv = trio.open_memory_channel[dict[str, Any]](self._sub_buffer)
        self._subs.add(send)
        try:
            async with recv:
                yield recv
        finally:
            self._subs.discard(send)
            send.close()


def _now_ms() -> int:
    return int(time.time() * 1000)
