"""Unit actors and their supervisor, under trio's mock clock (no real time passes)."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from inos_node.actors.supervision import Backoff, Crash, RestartPolicy
from inos_node.actors.unit import Supervisor, UnitActor
from inos_node.types import JobRequest, JobResult, Status


def test_backoff_doubles_and_resets_after_a_stable_run():
    b = Backoff(RestartPolicy(initial_s=0.1, max_s=0.5, stable_s=10))
    b.started(0.0)
    assert [b.crashed(Crash("u", "e", t)) for t in (1, 2, 3, 4)] == [0.1, 0.2, 0.4, 0.5]
    b.started(5.0)
    assert b.crashed(Crash("u", "e", 20.0)) == 0.1, "a run of >= stable_s resets the delay"
    assert b.restarts == 5 and b.last_error == "e"


class FakeEpochs:
    """Epoch source for actors: bump() wakes waiters (the real one is arena.EpochWatcher)."""

    def __init__(self) -> None:
        self.values: dict[int, int] = {}
        self.lot = trio.lowlevel.ParkingLot()

    def epoch(self, index: int) -> int:
        return self.values.get(index, 0)

    def bump(self, index: int) -> None:
        self.values[index] = self.epoch(index) + 1
        self.lot.unpark_all()

    async def wait(self, index: int, seen: int) -> int:
        while self.epoch(index) == seen:
            await self.lot.park()
        return self.epoch(index)


async def echo(req: JobRequest) -> JobResult:
    return JobResult(req.job_id, Status.SUCCESS, req.input)


async def test_actor_serves_its_mailbox_and_reacts_to_epochs(autojump_clock):
    epochs = FakeEpochs()
    seen: list[tuple[int, int]] = []
    reacted = trio.Event()

    async def on_epoch(index: int, value: int) -> None:
        seen.append((index, value))
        if value == 3:
            reacted.set()

    actor = UnitActor("echo", echo, subscriptions=(7,), on_epoch=on_epoch)
    async with trio.open_nursery() as nursery:
        await nursery.start(Supervisor([actor], source=epochs).run)
        res = await actor.submit(JobRequest("j1", "echo", "x", b"hi"))
        assert res.ok and res.output == b"hi"
        for _ in range(3):
            epochs.bump(7)
            await trio.testing.wait_all_tasks_blocked()
        await reacted.wait()
        nursery.cancel_scope.cancel()
    assert seen[-1] == (7, 3)
    assert actor.handled == 1


async def test_full_mailbox_answers_capacity_exceeded(autojump_clock):
    gate = trio.Event()

    async def stuck(req: JobRequest) -> JobResult:
        await gate.wait()
        return JobResult(req.job_id, Status.SUCCESS)

    actor = UnitActor("slow", stuck, mailbox_size=1, concurrency=1)
    results: list[JobResult] = []

    async def submit(i: int) -> None:
        results.append(await actor.submit(JobRequest(f"j{i}", "slow", "x")))

    async with trio.open_nursery() as nursery:
        await nursery.start(Supervisor([actor]).run)
        for i in range(4):
            nursery.start_soon(submit, i)
            await trio.testing.wait_all_tasks_blocked()
        refused = [r for r in results if r.status is Status.CAPACITY_EXCEEDED]
        assert refused and "mailbox full" in refused[0].error
        gate.set()
        await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()
    # concurrency 1: one job runs, one waits for the slot, one waits in the 1-slot mailbox
    assert sum(r.ok for r in results) == 3
    assert len(refused) == 1


async def test_crashed_actor_is_restarted_with_backoff_and_reported(autojump_clock):
    epochs = FakeEpochs()
    crashes = 0

    async def on_epoch(index: int, value: int) -> None:
        nonlocal crashes
        crashes += 1
        raise RuntimeError(f"bad epoch {value}")

    actor = UnitActor("fragile", echo, subscriptions=(1,), on_epoch=on_epoch)
    sup = Supervisor([actor], source=epochs, policy=RestartPolicy(initial_s=1.0, max_s=4.0))
    reports: list[int] = []
    sup.on_crash = lambda a, b: reports.append(b.restarts)
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        t0 = trio.current_time()
        for _ in range(3):
            epochs.bump(1)
            await trio.testing.wait_all_tasks_blocked()
            while actor.state != "running":
                await trio.sleep(0.5)
            await trio.testing.wait_all_tasks_blocked()  # the restarted watcher has read its epoch
        elapsed = trio.current_time() - t0
        res = await actor.submit(JobRequest("j", "fragile", "x", b"still"))
        nursery.cancel_scope.cancel()
    assert reports == [1, 2, 3]
    assert elapsed >= 1.0 + 2.0, "restarts waited 1 s, then 2 s (and 4 s for the third)"
    assert res.ok, "the restarted actor serves again"
    stats = sup.statistics()[0]
    assert stats["restarts"] == 3 and "bad epoch" in stats["last_error"]


async def test_shutdown_is_bounded(autojump_clock):
    async def forever(req: JobRequest) -> JobResult:
        await trio.sleep_forever()
        raise AssertionError

    actors = [UnitActor(f"a{i}", forever) for i in range(10)]
    with trio.fail_after(1):
        async with trio.open_nursery() as nursery:
            await nursery.start(Supervisor(actors).run)
            for a in actors:
                nursery.start_soon(a.submit, JobRequest("j", a.name, "x"))
            await trio.testing.wait_all_tasks_blocked()
            nursery.cancel_scope.cancel()
    assert all(a.state in ("running", "stopped") for a in actors)


@pytest.mark.parametrize("state", ["created"])
async def test_submit_to_a_stopped_actor_is_refused(state):
    actor = UnitActor("idle", echo)
    res = await actor.submit(JobRequest("j", "idle", "x"))
    assert res.status is Status.CAPACITY_EXCEEDED and f"is {state}" in res.error
