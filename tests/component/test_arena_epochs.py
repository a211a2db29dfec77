"""The arena inside one process: epochs and wake-ups, plus the single-process API.

Real shared memory (a private directory under /dev/shm), no other process.  Synchronisation is by
``wait_all_tasks_blocked``, events and epochs; the only ``trio.sleep`` is the idle period the
idle-CPU test measures.
"""

from __future__ import annotations

import errno
import gc
import os
import shutil
import time
import uuid
from collections.abc import Iterator

import numpy as np
import pytest
import trio
import trio.testing

from inos_node.arena import (
    Arena,
    BlockingWaiter,
    EpochWatcher,
    MessageRegion,
    PingPong,
    Ring,
    layout,
    open_arena,
)
from inos_node.errors import ArenaError, ArenaExhausted

SMALL = layout.min_arena_size


@pytest.fixture
def shm_dir() -> Iterator[str]:
    path = os.path.join("/dev/shm", f"inos-test-{uuid.uuid4().hex[:12]}")
    os.mkdir(path)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def arena(shm_dir: str) -> Iterator[Arena]:
    with Arena.create(size=SMALL, directory=shm_dir) as a:
        yield a


# ---------------------------------------------------------------------- epochs, in-process
async def test_publish_wakes_a_parked_waiter(arena: Arena) -> None:
    index = arena.reserve_epoch("t.wake")
    watcher = EpochWatcher(arena)
    got: list[int] = []
    async with trio.open_nursery() as nursery:
        await nursery.start(watcher.run)

        async def waiter() -> None:
            got.append(await watcher.wait(index, 0))

        nursery.start_soon(waiter)
        await trio.testing.wait_all_tasks_blocked()
        assert got == [], "nothing moved yet: the waiter sleeps"
        assert arena.publish(index) == 1
        await trio.testing.wait_all_tasks_blocked()
        assert got == [1], "publish woke it with the new epoch"
        nursery.cancel_scope.cancel()


async def test_many_subscribers_and_only_the_bumped_index_wakes(arena: Arena) -> None:
    a, b = arena.reserve_epoch("t.a"), arena.reserve_epoch("t.b")
    watcher = EpochWatcher(arena)
    woke: dict[int, list[int]] = {a: [], b: []}
    async with trio.open_nursery() as nursery:
        await nursery.start(watcher.run)

        async def waiter(index: int) -> None:
            woke[index].append(await watcher.wait(index, 0))

        for _ in range(40):
            nursery.start_soon(waiter, a)
        for _ in range(10):
            nursery.start_soon(waiter, b)
        await trio.testing.wait_all_tasks_blocked()
        arena.publish(a)
        await trio.testing.wait_all_tasks_blocked()
        assert woke[a] == [1] * 40, "every subscriber of a woke once"
        assert woke[b] == [], "subscribers of b slept on"
        arena.publish(b)
        await trio.testing.wait_all_tasks_blocked()
        assert woke[b] == [1] * 10
        nursery.cancel_scope.cancel()


async def test_wait_returns_at_once_if_already_moved(arena: Arena) -> None:
    index = arena.reserve_epoch("t.moved")
    watcher = EpochWatcher(arena)
    async with trio.open_nursery() as nursery:
        await nursery.start(watcher.run)
        arena.publish(index)
        arena.publish(index)
        with trio.fail_after(5):
            assert await watcher.wait(index, 0) == 2, "the latest value, coalesced"
            assert await watcher.wait(index, 1) == 2
        with trio.CancelScope() as scope:
            scope.cancel()
            await watcher.wait(index, 0)  # the fast path is still a checkpoint
        assert scope.cancelled_caught, "wait() checkpoints even when it returns at once"
        nursery.cancel_scope.cancel()


async def test_another_arena_object_wakes_through_the_doorbell(arena: Arena, shm_dir: str) -> None:
    """A second Arena object in this process stands in for another process: it rings our FIFO.
    One waiter leads the doorbell, the others park; cancelling the leader hands the doorbell back
    to run(), so the parked ones still wake."""
    i, j = arena.reserve_epoch("t.remote.i"), arena.reserve_epoch("t.remote.j")
    watcher = EpochWatcher(arena)
    woke: list[tuple[str, int]] = []
    with Arena.attach(arena.name, directory=shm_dir) as other:
        async with trio.open_nursery() as nursery:
            await nursery.start(watcher.run)
            leader_scope = trio.CancelScope()

            async def leader() -> None:
                with leader_scope:
                    woke.append(("leader", await watcher.wait(i, 0)))

            async def parked(name: str, index: int) -> None:
                woke.append((name, await watcher.wait(index, 0)))

            nursery.start_soon(leader)
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(parked, "j1", j)
            nursery.start_soon(parked, "j2", j)
            nursery.start_soon(parked, "i2", i)
            await trio.testing.wait_all_tasks_blocked()
            assert watcher._leading is not None, "one task leads the doorbell"
            other.publish(i)
            with trio.fail_after(5):
                while len(woke) < 2:
                    await trio.testing.wait_all_tasks_blocked()
                    await trio.lowlevel.checkpoint()
            assert sorted(woke) == [("i2", 1), ("leader", 1)], "both waiters of i woke, j slept"
            # a new leader on j, then cancel it: the other j waiter must still wake
            scope = trio.CancelScope()

            async def cancelled_leader() -> None:
                with scope:
                    await watcher.wait(j, 5)

            nursery.start_soon(cancelled_leader)
            await trio.testing.wait_all_tasks_blocked()
            scope.cancel()
            await trio.testing.wait_all_tasks_blocked()
            other.publish(j)
            with trio.fail_after(5):
                while len(woke) < 4:
                    await trio.testing.wait_all_tasks_blocked()
                    await trio.lowlevel.checkpoint()
            assert sorted(woke) == [("i2", 1), ("j1", 1), ("j2", 1), ("leader", 1)], (
                "run() took the doorbell back"
            )
            nursery.cancel_scope.cancel()


async def test_publish_from_a_thread_wakes_trio_waiters(arena: Arena) -> None:
    index = arena.reserve_epoch("t.thread")
    watcher = EpochWatcher(arena)
    async with trio.open_nursery() as nursery:
        await nursery.start(watcher.run)
        arena.publish(index)  # this object writes the index: its waiters park in the lot
        got: list[int] = []

        async def waiter() -> None:
            got.append(await watcher.wait(index, 1))

        nursery.start_soon(waiter)
        await trio.testing.wait_all_tasks_blocked()
        await trio.to_thread.run_sync(arena.publish, index)
        with trio.fail_after(5):
            while not got:
                await trio.testing.wait_all_tasks_blocked()
                await trio.lowlevel.checkpoint()
        assert got == [2]
        nursery.cancel_scope.cancel()


async def test_watcher_misuse_and_shutdown_are_clear_errors(arena: Arena) -> None:
    index = arena.reserve_epoch("t.misuse")
    watcher = EpochWatcher(arena)
    with pytest.raises(ArenaError, match="running"):
        await watcher.wait(index, 0)
    errors: list[Exception] = []
    async with trio.open_nursery() as nursery:
        run_scope = trio.CancelScope()

        async def run_watcher(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
            with run_scope:
                await watcher.run(task_status=task_status)

        await nursery.start(run_watcher)
        with pytest.raises(ArenaError, match="already running"):
            await EpochWatcher(arena).run()

        async def waiter() -> None:
            try:
                await watcher.wait(index, 0)
            except ArenaError as exc:
                errors.append(exc)

        nursery.start_soon(waiter)
        await trio.testing.wait_all_tasks_blocked()
        run_scope.cancel()
    assert len(errors) == 1 and "stopped" in str(errors[0]), "a waiter learns that the watcher stopped"
    assert arena.statistics().processes == 0, "the doorbell slot was given back"


async def test_an_idle_watcher_uses_no_cpu(arena: Arena) -> None:
    indices = [arena.reserve_epoch(f"t.idle.{k}") for k in range(4)]
    watcher = EpochWatcher(arena, indices)
    async with trio.open_nursery() as nursery:
        await nursery.start(watcher.run)
        for k in range(10):
            nursery.start_soon(watcher.wait, indices[k % 4], 0)
        await trio.testing.wait_all_tasks_blocked()
        gc.collect()
        cpu0 = time.process_time()
        await trio.sleep(1.0)  # the idle period being measured, not synchronisation
        used = time.process_time() - cpu0
        assert used < 0.05, "an idle watcher with 10 parked waiters stays below 5 % of a core"
        nursery.cancel_scope.cancel()


def test_blocking_waiter_times_out_and_wakes(arena: Arena) -> None:
    index = arena.reserve_epoch("t.block")
    with BlockingWaiter(arena, [index]) as waiter:
        t0 = time.monotonic()
        assert waiter.wait(index, 0, timeout=0.05) == 0, "a timeout returns the unchanged epoch"
        assert time.monotonic() - t0 >= 0.04
        arena.publish(index)  # same arena object: a BlockingWaiter is still rung through its FIFO
        assert waiter.wait(index, 0, timeout=5) == 1
    with pytest.raises(ArenaError):
        waiter.wait(index, 1, timeout=0)


# ---------------------------------------------------------------------- arena API, in-process
def test_epoch_indices_are_checked_and_reserved_by_name(arena: Arena) -> None:
    with pytest.raises(ArenaError):
        arena.publish(layout.epoch_count)
    with pytest.raises(ArenaError):
        arena.epoch(-1)
    first = arena.reserve_epoch("unit.a")
    assert first == layout.idx_first_dynamic
    assert arena.reserve_epoch("unit.a") == first, "reserving is idempotent"
    assert arena.find_epoch("unit.a") == first and arena.find_epoch("boids") == layout.idx_boids
    for k in range(layout.epoch_count - layout.idx_first_dynamic - 1):
        arena.reserve_epoch(f"e{k}")
    with pytest.raises(ArenaExhausted):
        arena.reserve_epoch("one.too.many")
    names = {e.name for e in arena.statistics().epochs}
    assert {"control", "inbox", "registry", "unit.a"} <= names


def test_blocks_views_and_statistics(arena: Arena, shm_dir: str) -> None:
    s0 = arena.statistics()
    block = arena.allocate(10_000, name="data")
    assert block.offset % layout.alloc_align == 0
    arr = block.ndarray(np.float32, (2, 1250))
    arr[:] = 7.0
    assert np.shares_memory(arr, block.ndarray(np.float32)), "views alias the arena"
    with Arena.attach(arena.name, directory=shm_dir) as other:
        found = other.find_block("data")
        assert found is not None and found.size == 10_000
        assert np.all(found.ndarray(np.float32) == 7.0), "another mapping sees the same bytes"
        del found
    s1 = arena.statistics()
    assert s1.blocks == s0.blocks + 1 and s1.named_blocks == 1 and s1.free < s0.free
    with pytest.raises(ArenaError, match="already"):
        arena.allocate(8, name="data")
    with pytest.raises(ArenaError):
        arena.view(arena.size - 4, 8)
    with pytest.raises(ArenaError):
        arena.ndarray(block.offset + 2, np.float32, 4)  # misaligned
    del arr
    arena.free(block)
    assert arena.find_block("data") is None
    assert arena.statistics().free == s0.free, "freeing coalesced the heap back"
    with pytest.raises(ArenaExhausted) as info:
        arena.allocate(arena.size)
    assert info.value.requested == arena.size
    arena.check_heap()


def test_region_directory_fills_up_cleanly(arena: Arena) -> None:
    blocks = []
    with pytest.raises(ArenaExhausted, match="directory is full"):
        for k in range(layout.max_regions):
            blocks.append(arena.allocate(64, name=f"b{k}"))
    assert len(blocks) == layout.max_regions - len(layout.fixed_regions) - 1
    names = [r.name for r in arena.regions()]
    assert names[:5] == ["inbox", "outbox", "registry", "diagnostics", "dynamic"]
    for b in blocks:
        arena.free_at(b.offset)


def test_close_with_a_live_view_is_a_clear_error(shm_dir: str) -> None:
    a = Arena.create(size=SMALL, directory=shm_dir)
    view = a.region("registry")
    with pytest.raises(ArenaError, match="views of its memory are still alive"):
        a.close()
    assert not os.path.exists(a.path), "the owner unlinked the file anyway"
    assert view[0] == 0, "the view stays valid (no segfault)"
    del view
    a.close()  # idempotent
    with pytest.raises(ArenaError, match="closed"):
        a.publish(0)


def test_message_region_round_trip(arena: Arena) -> None:
    registry = MessageRegion(arena, "registry")
    assert registry.read() == b"", "never written"
    assert registry.write(b"hello units") == 1, "write publishes the region's epoch"
    assert arena.epoch(layout.idx_registry) == 1
    assert MessageRegion(arena, "registry").read() == b"hello units"
    registry.write(b"x" * registry.capacity)
    with pytest.raises(ArenaExhausted) as info:
        registry.write(b"x" * (registry.capacity + 1))
    assert info.value.available == registry.capacity
    assert registry.seq % 2 == 0, "the seqlock is even between writes"
    with pytest.raises(ArenaError):
        MessageRegion(arena, "inbox")


def test_ring_keeps_order_wraps_and_refuses_oversize(arena: Arena) -> None:
    producer, consumer = Ring(arena, "outbox", 1, 4), Ring(arena, "outbox", 1, 4)
    other_lane = Ring(arena, "outbox", 2, 4)
    assert consumer.try_get() is None
    sent, got = 0, []
    for round_ in range(6):  # several laps of the lane
        k = 0
        while producer.try_put(bytes([sent % 256]) * (1000 + sent % 37)):
            sent += 1
            k += 1
        assert k > 0, "an empty lane takes records"
        while (rec := consumer.try_get()) is not None:
            got.append(rec)
        assert round_ >= 0
    assert [len(r) for r in got] == [1000 + n % 37 for n in range(sent)], "order and lengths kept"
    assert all(r == bytes([n % 256]) * len(r) for n, r in enumerate(got)), "contents kept"
    assert other_lane.try_get() is None, "lanes are separate"
    with pytest.raises(ArenaExhausted) as info:
        producer.try_put(b"\0" * (producer.max_payload + 1))
    assert str(producer.max_payload) in str(info.value), "the error names the limit"
    assert producer.try_put(b"\0" * producer.max_payload), "the largest record fits an empty lane"


def test_pingpong_in_one_process(arena: Arena) -> None:
    index = arena.reserve_epoch("boids.test")
    writer = PingPong.create(arena, "pp.test", (6, 100), np.float32, index)
    reader = PingPong.open(arena, "pp.test")
    assert (reader.shape, reader.dtype) == ((6, 100), np.dtype(np.float32))
    assert reader.read() is None, "no frame yet"
    for frame in (1, 2, 3):
        slot = writer.begin()
        slot[:] = frame
        with pytest.raises(ArenaError):
            writer.begin()
        assert writer.commit() == frame
        got = reader.read()
        assert got is not None and got[0] == frame and np.all(got[1] == frame)
        got = reader.read(lambda a: (float(a.min()), float(a.max())))
        assert got == (frame, (frame, frame))
    del slot
    with pytest.raises(ArenaError):
        writer.commit()
    writer.free()


def test_creating_a_taken_name_fails_and_too_big_is_clear(arena: Arena, shm_dir: str) -> None:
    with pytest.raises(ArenaError, match=f"in use by pid {os.getpid()}"):
        Arena.create(arena.name, size=SMALL, directory=shm_dir)
    with pytest.raises(ArenaError, match="invalid arena name"):
        Arena.create("../etc", size=SMALL, directory=shm_dir)
    free = os.statvfs(shm_dir).f_bavail * os.statvfs(shm_dir).f_frsize
    huge = (free // layout.page_size + 1024) * layout.page_size
    with pytest.raises(ArenaExhausted) as info:
        Arena.create("huge", size=huge, directory=shm_dir)
    assert info.value.requested == huge and str(huge) in str(info.value), "the error names the size"
    assert os.listdir(shm_dir) == [arena.name], "nothing was left behind"


def test_enospc_from_fallocate_becomes_arena_exhausted(shm_dir: str, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_space(fd: int, offset: int, length: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "posix_fallocate", no_space)
    with pytest.raises(ArenaExhausted, match=str(SMALL)):
        Arena.create("nospace", size=SMALL, directory=shm_dir)
    assert os.listdir(shm_dir) == [], "the half-made file was removed"


async def test_open_arena_creates_and_removes(shm_dir: str) -> None:
    async with open_arena("trio-owned", size=SMALL, directory=shm_dir) as a:
        assert a.is_owner
        assert "trio-owned" in os.listdir(shm_dir)  # noqa: ASYNC240 - a test's look at the directory
    assert "trio-owned" not in os.listdir(shm_dir)  # noqa: ASYNC240


async def test_closing_the_arena_under_a_watcher_stops_it_cleanly(shm_dir: str) -> None:
    a = Arena.create(size=SMALL, directory=shm_dir)
    index = a.reserve_epoch("t.closing")
    watcher = EpochWatcher(a)
    errors: list[Exception] = []

    async def waiter() -> None:
        try:
            await watcher.wait(index, 0)
        except ArenaError as exc:
            errors.append(exc)

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            await nursery.start(watcher.run)
            nursery.start_soon(waiter)
            await trio.testing.wait_all_tasks_blocked()
            a.close()  # run() returns, the waiter gets an ArenaError: nothing hangs
    assert len(errors) == 1
