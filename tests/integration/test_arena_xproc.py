"""The arena across real processes (multiprocessing "spawn": fresh interpreters, no inherited state).

Children report through a Pipe and their exit code; the parent waits on pipes, epochs and process
exit, never on sleeps.  Every wait is bounded.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import shutil
import signal
import time
import uuid
from collections.abc import Callable, Iterator
from multiprocessing.connection import Connection
from typing import Any

import numpy as np
import pytest
import trio

from inos_node.arena import Arena, BlockingWaiter, EpochWatcher, PingPong, Ring, layout
from inos_node.errors import ArenaError, ArenaExhausted, ArenaLayoutMismatch

pytestmark = pytest.mark.integration

SMALL = layout.min_arena_size
CTX = multiprocessing.get_context("spawn")
TIMEOUT = 30.0


@pytest.fixture
def shm_dir() -> Iterator[str]:
    path = os.path.join("/dev/shm", f"inos-test-{uuid.uuid4().hex[:12]}")
    os.mkdir(path)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


class Child:
    """A spawned process with a duplex pipe to it; always reaped."""

    def __init__(self, target: Callable[..., None], *args: Any) -> None:
        self.conn, child_end = CTX.Pipe()
        self.proc = CTX.Process(target=target, args=(child_end, *args), daemon=True)
        self.proc.start()
        child_end.close()

    def recv(self, timeout: float = TIMEOUT) -> Any:
        assert self.conn.poll(timeout), "the child answered in time"
        return self.conn.recv()

    async def arecv(self) -> Any:
        ready = await trio.to_thread.run_sync(self.conn.poll, TIMEOUT)
        assert ready, "the child answered in time"
        return self.conn.recv()

    def join(self, timeout: float = TIMEOUT) -> int | None:
        self.proc.join(timeout)
        return self.proc.exitcode

    def __enter__(self) -> Child:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc.is_alive():
            self.proc.kill()
        self.proc.join(TIMEOUT)
        self.conn.close()


# ---------------------------------------------------------------------- children
def child_attach_and_echo(conn: Connection, name: str, directory: str) -> None:
    with Arena.attach(name, directory=directory) as arena:
        src = arena.find_block("from.parent")
        dst = arena.find_block("from.child")
        assert src is not None and dst is not None
        data = bytes(src.view())
        dst.view()[:] = data[::-1]
        conn.send(data)
        del src, dst


def child_try_attach(conn: Connection, name: str, directory: str) -> None:
    while (msg := conn.recv()) != "done":
        try:
            with Arena.attach(name, directory=directory):
                conn.send(("ok", msg))
        except ArenaLayoutMismatch as exc:
            conn.send(("mismatch", exc.field, exc.expected, exc.observed, str(exc)))


def child_create_and_hang(conn: Connection, name: str, directory: str) -> None:
    arena = Arena.create(name, size=SMALL, directory=directory)
    waiter = BlockingWaiter(arena, [layout.idx_control])  # leaves a doorbell FIFO behind too
    conn.send((os.getpid(), waiter._live().path))
    conn.recv()  # blocks until killed


def child_publish(conn: Connection, name: str, directory: str, index: int) -> None:
    with Arena.attach(name, directory=directory) as arena:
        conn.recv()  # "go"
        conn.send(arena.publish(index))


def child_blocking_wait(conn: Connection, name: str, directory: str, index: int) -> None:
    with Arena.attach(name, directory=directory) as arena, BlockingWaiter(arena, [index]) as waiter:
        conn.send("ready")
        conn.send(waiter.wait(index, 0, timeout=TIMEOUT))


def child_subscribe_then_die(conn: Connection, name: str, directory: str, index: int) -> None:
    arena = Arena.attach(name, directory=directory)
    BlockingWaiter(arena, [index])
    conn.send("subscribed")
    conn.recv()


def child_pingpong_writer(
    conn: Connection, name: str, directory: str, max_frames: int, seconds: float
) -> None:
    with Arena.attach(name, directory=directory) as arena:
        pp = PingPong.open(arena, "stress")
        done = arena.find_epoch("stress.done")
        assert done is not None
        conn.recv()  # "go"
        deadline = time.monotonic() + seconds
        frames = 0
        while frames < max_frames and time.monotonic() < deadline:
            slot = pp.begin()
            slot.fill(pp.frame + 1)  # every element carries the frame number
            frames = pp.commit()
        del slot
        arena.publish(done)
        conn.send(frames)
        pp.close()


# A lap costs the writer at least one frame, so a copy-out read allowed more retries than the writer
# has frames can never be starved; a compute-in-place read slower than a frame period can be (the
# documented limit of PingPong.read(fn)), and then falls back to copying out, as the docs advise.
STRESS_FRAMES = 20_000
FN_RETRIES = 50


def validated_read(pp: PingPong, out: np.ndarray, in_place: bool) -> tuple[int, float, float, int] | None:
    """``(frame, min, max, starved)`` of the latest frame; ``starved`` is 1 if ``fn`` gave up."""
    starved = 0
    if in_place:
        try:
            got = pp.read(lambda a: (float(a.min()), float(a.max())), max_retries=FN_RETRIES)
        except ArenaError as exc:
            assert "lapped by the writer" in str(exc)
            starved = 1
        else:
            if got is None:
                return None
            frame, (lo, hi) = got
            return frame, lo, hi, 0
    got = pp.read(out=out, max_retries=STRESS_FRAMES + 1)
    if got is None:
        return None
    frame, value = got
    return frame, float(value.min()), float(value.max()), starved


def child_pingpong_reader(conn: Connection, name: str, directory: str) -> None:
    with Arena.attach(name, directory=directory) as arena:
        pp = PingPong.open(arena, "stress")
        done = arena.find_epoch("stress.done")
        assert done is not None
        out = np.empty(pp.shape, pp.dtype)
        reads = tears = starved = 0
        last = 0
        with BlockingWaiter(arena, [pp.epoch_index, done]) as waiter:
            conn.send("ready")
            deadline = time.monotonic() + TIMEOUT
            while time.monotonic() < deadline:
                finished = arena.epoch(done) > 0
                got = validated_read(pp, out, in_place=reads % 2 == 0)
                if got is not None:
                    frame, lo, hi, gave_up = got
                    reads += 1
                    starved += gave_up
                    tears += not (lo == hi == frame)
                    last = frame
                if finished and last == pp.frame:
                    break
                waiter.wait(pp.epoch_index, last, timeout=0.2)
        conn.send((reads, tears, pp.laps, last, starved))
        del out
        pp.close()


def _record(seq: int) -> bytes:
    n = (seq * 7919) % 6000
    return seq.to_bytes(4, "little") + bytes((seq + k) % 256 for k in range(n))


def child_ring_consumer(conn: Connection, name: str, directory: str, count: int, ack: int) -> None:
    with Arena.attach(name, directory=directory) as arena:
        ring = Ring(arena, "inbox", 1, 4)
        got = bad = 0
        with BlockingWaiter(arena, [layout.idx_inbox]) as waiter:
            conn.send("ready")
            seen = 0
            deadline = time.monotonic() + TIMEOUT
            while got < count and time.monotonic() < deadline:
                while (rec := ring.try_get()) is not None:
                    bad += rec != _record(got)
                    got += 1
                arena.publish(ack)  # room was made
                seen = waiter.wait(layout.idx_inbox, seen, timeout=1.0)
        conn.send((got, bad))
        ring.close()


# ---------------------------------------------------------------------- tests
def test_attach_sees_the_same_bytes_and_its_exit_does_not_unlink(shm_dir: str) -> None:
    with Arena.create(size=SMALL, directory=shm_dir) as arena:
        src = arena.allocate(1000, name="from.parent")
        dst = arena.allocate(1000, name="from.child")
        payload = os.urandom(1000)
        src.view()[:] = payload
        with Child(child_attach_and_echo, arena.name, shm_dir) as child:
            assert child.recv() == payload, "the child read what the parent wrote"
            assert child.join() == 0
        assert bytes(dst.view()) == payload[::-1], "the parent sees what the child wrote"
        assert os.path.exists(arena.path), "the attacher's exit did not unlink the arena"
        assert arena.statistics().processes == 0
    assert not os.path.exists(os.path.join(shm_dir, arena.name)), "the owner did"


def test_attach_refuses_another_magic_version_or_size(shm_dir: str) -> None:
    with (
        Arena.create(size=SMALL, directory=shm_dir) as arena,
        Child(child_try_attach, arena.name, shm_dir) as child,
    ):
        header = arena.view(0, layout.header_size)
        cases = [
            ("magic", layout.hdr_magic, 8, 0x1234),
            ("version", layout.hdr_version, 4, layout.layout_version + 1),
            ("size", layout.hdr_total_size, 8, arena.size * 2),
        ]
        for field, offset, width, bogus in cases:
            saved = bytes(header[offset : offset + width])
            header[offset : offset + width] = bogus.to_bytes(width, "little")
            child.conn.send(field)
            answer = child.recv()
            header[offset : offset + width] = saved
            assert answer[0] == "mismatch" and answer[1] == field, field
            assert answer[3] == bogus, "observed is what the file says"
            assert field in answer[4] or str(bogus) in answer[4] or hex(bogus) in answer[4]
        child.conn.send("intact")
        assert child.recv() == ("ok", "intact"), "the restored header attaches"
        child.conn.send("done")
        assert child.join() == 0
        del header


def test_a_crashed_owner_is_cleaned_up_at_the_next_create(
    shm_dir: str, caplog: pytest.LogCaptureFixture
) -> None:
    name = "crashy"
    with Child(child_create_and_hang, name, shm_dir) as child:
        pid, bell = child.recv()
        assert os.path.exists(bell)
        with pytest.raises(ArenaError, match=f"in use by pid {pid}"):
            Arena.create(name, size=SMALL, directory=shm_dir)
        with Arena.attach(name, directory=shm_dir) as peek:
            assert peek.statistics().processes == 1
        os.kill(pid, signal.SIGKILL)
        assert child.join() == -signal.SIGKILL
    with pytest.raises(ArenaError, match="gone"):
        Arena.attach(name, directory=shm_dir)
    with caplog.at_level(logging.WARNING), Arena.create(name, size=SMALL, directory=shm_dir) as arena:
        assert any("left by pid" in r.getMessage() for r in caplog.records), "the clean-up is logged"
        assert not os.path.exists(bell), "the dead owner's doorbell was removed"
        assert arena.statistics().processes == 0 and arena.epoch(layout.idx_control) == 0, "a fresh arena"


def test_too_big_a_create_fails_at_once_naming_the_size(shm_dir: str) -> None:
    st = os.statvfs(shm_dir)
    huge = (st.f_bavail * st.f_frsize // layout.page_size + 1) * layout.page_size
    with pytest.raises(ArenaExhausted) as info:
        Arena.create("huge", size=huge, directory=shm_dir)
    assert info.value.requested == huge and str(huge) in str(info.value)
    assert info.value.available <= st.f_bavail * st.f_frsize
    assert os.listdir(shm_dir) == []


async def test_a_child_publish_wakes_a_trio_waiter(shm_dir: str) -> None:
    with Arena.create(size=SMALL, directory=shm_dir) as arena:
        index = arena.reserve_epoch("xproc.up")
        watcher = EpochWatcher(arena, [index])
        async with trio.open_nursery() as nursery:
            await nursery.start(watcher.run)
            with Child(child_publish, arena.name, shm_dir, index) as child:
                child.conn.send("go")
                with trio.fail_after(TIMEOUT):
                    assert await watcher.wait(index, 0) == 1, "woken by the child's doorbell byte"
                assert await child.arecv() == 1
            nursery.cancel_scope.cancel()


def test_a_parent_publish_wakes_a_blocking_child(shm_dir: str) -> None:
    with Arena.create(size=SMALL, directory=shm_dir) as arena:
        index = arena.reserve_epoch("xproc.down")
        with Child(child_blocking_wait, arena.name, shm_dir, index) as child:
            assert child.recv() == "ready"
            arena.publish(index)
            assert child.recv() == 1, "the child's BlockingWaiter woke with the new epoch"
            assert child.join() == 0


def test_a_dead_subscriber_is_dropped_by_the_next_publish(shm_dir: str) -> None:
    with Arena.create(size=SMALL, directory=shm_dir) as arena:
        index = arena.reserve_epoch("xproc.dead")
        with Child(child_subscribe_then_die, arena.name, shm_dir, index) as child:
            assert child.recv() == "subscribed"
            arena.publish(index)  # opens and caches the child's doorbell
            assert arena.statistics().processes == 1
            child.proc.kill()
            assert child.join() == -signal.SIGKILL
        arena.publish(index)  # EPIPE: the slot's liveness lock is gone, so it is reaped
        assert arena.statistics().processes == 0, "the dead subscriber's slot was freed"
        assert [f for f in os.listdir(shm_dir) if ".bell." in f] == [], "and its FIFO removed"


async def test_pingpong_stress_across_processes_has_no_undetected_tears(shm_dir: str) -> None:
    """A writer fills whole (6, 10000) float32 frames with the frame number as fast as it can;
    a reader process and this process validate every read (min == max == frame)."""
    with Arena.create(size=SMALL, directory=shm_dir) as arena:
        index = arena.reserve_epoch("stress.frames")
        done = arena.reserve_epoch("stress.done")
        pp = PingPong.create(arena, "stress", (6, 10_000), np.float32, index)
        watcher = EpochWatcher(arena, [index, done])
        out = np.empty(pp.shape, pp.dtype)
        reads = tears = starved = 0
        async with trio.open_nursery() as nursery:
            await nursery.start(watcher.run)
            with (
                Child(child_pingpong_reader, arena.name, shm_dir) as reader,
                Child(child_pingpong_writer, arena.name, shm_dir, STRESS_FRAMES, 3.0) as writer,
            ):
                assert await reader.arecv() == "ready"
                writer.conn.send("go")
                last = 0
                current_wait = [trio.CancelScope()]

                async def until_done() -> None:
                    await watcher.wait(done, 0)
                    current_wait[0].cancel()  # the frame index will not move again

                nursery.start_soon(until_done)
                with trio.fail_after(TIMEOUT):
                    while True:
                        finished = arena.epoch(done) > 0
                        got = validated_read(pp, out, in_place=True)
                        if got is not None:
                            frame, lo, hi, gave_up = got
                            reads += 1
                            starved += gave_up
                            tears += not (lo == hi == frame)
                            last = frame
                        if finished and last == pp.frame:
                            break
                        with trio.CancelScope() as current_wait[0]:
                            await watcher.wait(index, last)
                frames = await writer.arecv()
                child_reads, child_tears, child_laps, child_last, child_starved = await reader.arecv()
            nursery.cancel_scope.cancel()
        del out
        pp.close()
    assert frames > 100, "the writer ran"
    assert last == frames and child_last == frames, "both readers saw the final frame"
    assert reads > 10 and child_reads > 10, "reads happened in both processes"
    assert tears == 0 and child_tears == 0, "no read returned a torn frame"
    # laps and starved reads are allowed (the writer never waits for readers); both are counted
    # in the -rP output for whoever tunes this, and neither may hide a tear
    print(f"laps {pp.laps}/{child_laps}, starved in-place reads {starved}/{child_starved}")


def test_spsc_ring_across_processes_keeps_order_and_content(shm_dir: str) -> None:
    count = 3000
    with Arena.create(size=SMALL, directory=shm_dir) as arena:
        ack = arena.reserve_epoch("ring.ack")
        ring = Ring(arena, "inbox", 1, 4)
        with (
            BlockingWaiter(arena, [ack]) as waiter,
            Child(child_ring_consumer, arena.name, shm_dir, count, ack) as child,
        ):
            assert child.recv() == "ready"
            seen_ack = 0
            full = 0
            deadline = time.monotonic() + TIMEOUT
            for seq in range(count):
                rec = _record(seq)
                while not ring.try_put(rec):
                    full += 1
                    assert time.monotonic() < deadline, "the consumer kept up"
                    seen_ack = waiter.wait(ack, seen_ack, timeout=1.0)
                arena.publish(layout.idx_inbox)
            assert child.recv() == (count, 0), "every record arrived, in order, intact"
            assert child.join() == 0
        ring.close()
    assert full >= 0
