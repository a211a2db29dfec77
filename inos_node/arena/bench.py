"""Wake-up latency of the arena's epochs, each against its raw primitive in the same run.

``inos bench local`` awaits these from inside its trio run (they are ``async``), and reports
the ratios:

* ``measure_epoch_wake_inproc(n)``: ``publish(i)`` -> a trio task in ``EpochWatcher.wait``
  running, against a bare ``trio.Event.set()`` -> ``Event.wait()`` task running.
* ``measure_epoch_wake_xproc(n)``: a child process publishes -> a trio task of this process
  running, against the child writing an ``eventfd`` -> ``wait_readable`` + read in trio.

Method: the publisher waits a random 0.2-0.6 ms between events (so the waiter really sleeps;
the gaps come from one seeded generator and are the same for both sides), records
``time.perf_counter_ns()`` (CLOCK_MONOTONIC, system-wide, so comparable across processes) just
before the signal, and the waiter records it when it runs.  Cross-process timestamps travel
through arena memory, one slot per event.  The two mechanisms alternate in rounds, so machine
noise hits both alike.  Nothing is printed.
"""

from __future__ import annotations

import math
import os
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import trio

from inos_node.arena.arena import Arena
from inos_node.arena.epochs import BlockingWaiter, EpochWatcher
from inos_node.arena.layout import layout
from inos_node.errors import ArenaError

__all__ = ["measure_epoch_wake_inproc", "measure_epoch_wake_xproc"]

_ROUNDS = 4
_SLOTS = 64  # timestamp slots in the arena (event k uses slot k % 64)
_GAP_S = (0.0002, 0.0006)


def _summary(prefix: str, samples_ns: list[int]) -> dict[str, Any]:
    if not samples_ns:
        return {f"{prefix}_p50_us": None, f"{prefix}_n": 0}
    s = sorted(samples_ns)
    return {
        f"{prefix}_p50_us": round(statistics.median(s) / 1000, 2),
        f"{prefix}_p90_us": round(s[int(0.9 * (len(s) - 1))] / 1000, 2),
        f"{prefix}_p99_us": round(s[int(0.99 * (len(s) - 1))] / 1000, 2),
        f"{prefix}_n": len(s),
    }


# ---------------------------------------------------------------------- in-process
async def measure_epoch_wake_inproc(
    n: int = 2000, *, directory: str = "/dev/shm", seed: int = 1
) -> dict[str, Any]:
    """p50 of publish -> subscriber running, and of trio.Event set -> waiter running (us)."""
    rng = random.Random(seed)
    per = max(1, math.ceil(n / _ROUNDS))
    arena = await trio.to_thread.run_sync(lambda: Arena.create(None, layout.min_arena_size, directory))
    epoch_ns: list[int] = []
    event_ns: list[int] = []
    try:
        index = arena.reserve_epoch("bench.wake.inproc")
        watcher = EpochWatcher(arena, (index,))
        async with trio.open_nursery() as nursery:
            await nursery.start(watcher.run)
            for _ in range(_ROUNDS):
                gaps = [rng.uniform(*_GAP_S) for _ in range(per)]
                epoch_ns += await _inproc_epoch(arena, watcher, index, gaps)
                event_ns += await _inproc_event(gaps)
            nursery.cancel_scope.cancel()
    finally:
        arena.close()
    return {**_summary("epoch_wake_inproc", epoch_ns), **_summary("trio_event_wake", event_ns)}


async def _inproc_epoch(arena: Arena, watcher: EpochWatcher, index: int, gaps: list[float]) -> list[int]:
    out: list[int] = []
    stamp = [0]
    progress = _Progress()

    async def subscriber(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        seen = arena.epoch(index)
        target = seen + len(gaps)
        task_status.started()
        while seen < target:
            value = await watcher.wait(index, seen)
            if value == seen + 1:
                out.append(time.perf_counter_ns() - stamp[0])
            seen = value
            progress.advance()

    async with trio.open_nursery() as nursery:
        await nursery.start(subscriber)
        for k, gap in enumerate(gaps):
            await progress.wait_for(k)  # the subscriber is back in wait() before the gap starts
            await trio.sleep(gap)
            stamp[0] = time.perf_counter_ns()
            arena.publish(index)
    return out


async def _inproc_event(gaps: list[float]) -> list[int]:
    out: list[int] = []
    stamp = [0]
    current = [trio.Event()]
    progress = _Progress()

    async def waiter(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        for _ in gaps:
            await current[0].wait()
            out.append(time.perf_counter_ns() - stamp[0])
            progress.advance()

    async with trio.open_nursery() as nursery:
        await nursery.start(waiter)
        for k, gap in enumerate(gaps):
            await progress.wait_for(k)
            following = trio.Event()  # made before the gap: after it, only set() is timed
            await trio.sleep(gap)
            event, current[0] = current[0], following
            stamp[0] = time.perf_counter_ns()
            event.set()
    return out


class _Progress:
    """How many events the waiter has handled, so the publisher never runs ahead of it.

    trio shuffles the tasks of one scheduler batch, so on a loaded machine the publisher's next
    timer can fire before the woken waiter ran; without this the waiter would miss events.
    """

    def __init__(self) -> None:
        self.count = 0
        self._lot = trio.lowlevel.ParkingLot()

    def advance(self) -> None:
        self.count += 1
        self._lot.unpark_all()

    async def wait_for(self, count: int) -> None:
        while self.count < count:
            await self._lot.park()


# ---------------------------------------------------------------------- cross-process
_ROOT = str(Path(__file__).resolve().parents[2])  # so the child imports this checkout
_CHILD = "import sys; from inos_node.arena.bench import _child_main; sys.exit(_child_main(sys.argv[1:]))"


async def measure_epoch_wake_xproc(
    n: int = 2000, *, directory: str = "/dev/shm", seed: int = 1
) -> dict[str, Any]:
    """p50 of a child's publish -> trio subscriber running here, and of a child's eventfd
    write -> trio ``wait_readable`` + read here (us)."""
    per = max(1, math.ceil(n / _ROUNDS))
    arena = await trio.to_thread.run_sync(lambda: Arena.create(None, layout.min_arena_size, directory))
    efd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
    epoch_ns: list[int] = []
    eventfd_ns: list[int] = []
    try:
        await _xproc(arena, efd, per, seed, epoch_ns, eventfd_ns)
    finally:
        os.close(efd)
        arena.close()
    return {**_summary("epoch_wake_xproc", epoch_ns), **_summary("eventfd_wake", eventfd_ns)}


async def _xproc(
    arena: Arena, efd: int, per: int, seed: int, epoch_ns: list[int], eventfd_ns: list[int]
) -> None:
    bench = arena.reserve_epoch("bench.wake.xproc")  # the child writes it
    go = arena.reserve_epoch("bench.wake.go")  # we write it: "ready for the next block"
    block = arena.allocate(_SLOTS * 8, "bench.wake.t0")
    stamps = block.ndarray(np.uint64)
    watcher = EpochWatcher(arena, (bench,))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [_ROOT, os.environ.get("PYTHONPATH")]))}
    args = [arena.name, arena.directory, *(str(x) for x in (bench, go, efd, per, _ROUNDS, seed))]
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(watcher.run)
            proc = await trio.lowlevel.open_process(
                [sys.executable, "-c", _CHILD, *args], pass_fds=(efd,), env=env
            )
            try:
                seq = 0  # eventfd events seen so far
                for _ in range(_ROUNDS):
                    with trio.fail_after(30):
                        seen = arena.epoch(bench)  # before releasing the child, which then publishes
                        target = seen + per
                        arena.publish(go)
                        while seen < target:
                            value = await watcher.wait(bench, seen)
                            t1 = time.perf_counter_ns()
                            if value == seen + 1:
                                epoch_ns.append(t1 - int(stamps[value % _SLOTS]))
                            seen = value
                        arena.publish(go)
                        target = seq + per
                        while seq < target:
                            await trio.lowlevel.wait_readable(efd)
                            try:
                                got = os.eventfd_read(efd)
                            except BlockingIOError:
                                continue
                            t1 = time.perf_counter_ns()
                            if got == 1:
                                eventfd_ns.append(t1 - int(stamps[(seq + 1) % _SLOTS]))
                            seq += got
                with trio.fail_after(30):
                    code = await proc.wait()
                if code != 0:
                    raise ArenaError(f"wake benchmark child exited with {code}")
            finally:
                if proc.returncode is None:
                    proc.kill()
                    with trio.CancelScope(shield=True), trio.move_on_after(5):
                        await proc.wait()
            nursery.cancel_scope.cancel()
    finally:
        del stamps  # even when failing: a live view would make arena.close() fail too
    arena.free(block)


def _child_main(argv: list[str]) -> int:
    """The publishing side of ``measure_epoch_wake_xproc`` (a plain process)."""
    name, directory = argv[0], argv[1]
    bench, go, efd, per, rounds, seed = (int(x) for x in argv[2:8])
    rng = random.Random(seed)
    arena = Arena.attach(name, directory)
    waiter = BlockingWaiter(arena, (go,))
    block = arena.find_block("bench.wake.t0")
    if block is None:
        return 3
    stamps = block.ndarray(np.uint64)
    seen_go = 0
    try:
        seq = 0
        for _ in range(rounds):
            for mode in ("epoch", "eventfd"):
                value = waiter.wait(go, seen_go, timeout=30)
                if value <= seen_go:
                    return 2  # the parent went away
                seen_go = value
                for _ in range(per):
                    time.sleep(rng.uniform(*_GAP_S))
                    if mode == "epoch":
                        frame = arena.epoch(bench) + 1
                        stamps[frame % _SLOTS] = time.perf_counter_ns()
                        arena.publish(bench)
                    else:
                        seq += 1
                        stamps[seq % _SLOTS] = time.perf_counter_ns()
                        os.eventfd_write(efd, 1)
    finally:
        del stamps
        waiter.close()
        arena.close()
    return 0
