"""A whole local node: real arena in /dev/shm, real worker processes, units under supervision."""

from __future__ import annotations

import glob
import os
import signal
import subprocess
import sys

import blake3
import pytest
import trio
import trio.testing

from inos_node.node import LocalNode, NodeConfig
from inos_node.types import ArenaSlice, Status

pytestmark = pytest.mark.integration

EVOLVE_LONG = {"population": 20, "generations": 50, "count": 200, "steps": 50, "seed": 3}  # ~a minute


def _config(tmp_path, **kw) -> NodeConfig:
    return NodeConfig(name=f"t{os.getpid()}", arena_size=32 * 1024 * 1024, **kw)


async def test_node_runs_capsules_on_every_executor(tmp_path):
    async with LocalNode(_config(tmp_path)).open() as node:
        r = await node.submit("system.echo", b"hi")
        assert r.ok and r.executor == "inline" and bytes(r.output) == b"hi"
        data = os.urandom(3 * 1024 * 1024)
        r = await node.submit("compute.blake3", data)
        assert r.ok and r.executor == "thread" and r.output == blake3.blake3(data).digest()
        r = await node.submit("boids.evolve", b"", {"population": 4, "generations": 2, "count": 64, "steps": 5})
        assert r.ok, r.error
        assert r.executor.startswith("process:") and int(r.executor.split(":")[1]) != os.getpid()


async def test_input_in_the_arena_is_passed_by_reference(tmp_path):
    async with LocalNode(_config(tmp_path)).open() as node:
        block = node.arena.allocate(8 * 1024 * 1024, name="test.input")
        block.view()[:] = os.urandom(block.size)
        want = blake3.blake3(block.view()).digest()
        r = await node.submit("compute.blake3", ArenaSlice(block.offset, block.size))
        assert r.ok and r.output == want and r.metrics.input_bytes == block.size
        # a worker process reads the same arena bytes by reference too
        r = await node.submit("boids.evolve", ArenaSlice(block.offset, 0), {"population": 4, "generations": 1,
                                                                           "count": 32, "steps": 2})
        assert r.ok, r.error
        node.arena.free(block)


async def test_registry_is_published_in_the_arena_and_readable_from_another_process(tmp_path):
    async with LocalNode(_config(tmp_path)).open() as node:
        units = node.read_registry()
        assert {u["library"] for u in units} == {lib.name for lib in node.engine.libraries}
        code = (
            "import sys, json; from inos_node.arena import Arena, MessageRegion;"
            "from inos_node.wire.registry import decode_registry;"
            f"a = Arena.attach({node.arena.name!r}, directory={node.arena.directory!r});"
            "r = decode_registry(MessageRegion(a, 'registry').read());"
            "print(json.dumps(sorted(m['name'] for u in r for m in u['methods'])))"
        )
        p = await trio.run_process([sys.executable, "-c", code], capture_stdout=True)
        import json

        assert json.loads(p.stdout) == node.engine.method_names()


async def test_boids_steps_publish_one_epoch_each_seen_by_another_process(tmp_path):
    async with LocalNode(_config(tmp_path)).open() as node:
        idx = node.layout["idxBoids"]
        before = node.arena.epoch(idx)
        # a plain process waits for the boids epoch to move 5 times, without polling
        code = (
            "from inos_node.arena import Arena, BlockingWaiter; import sys;"
            f"a = Arena.attach({node.arena.name!r}, directory={node.arena.directory!r});"
            f"w = BlockingWaiter(a, ({idx},)); print('ready', flush=True); seen = {before};"
            f"seen = w.wait({idx}, seen, timeout=60)\n"
            f"while seen < {before + 5}: seen = w.wait({idx}, seen, timeout=60)\n"
            "print(seen, flush=True)"
        )
        proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
        assert (await trio.to_thread.run_sync(proc.stdout.readline)).strip() == "ready"
        r = await node.submit("boids.step", b"", {"steps": 5, "count": 500})
        assert r.ok
        assert node.arena.epoch(idx) == before + 5
        out = await trio.to_thread.run_sync(proc.stdout.readline)
        assert int(out) >= before + 5
        assert proc.wait(timeout=30) == 0


async def test_killed_worker_fails_the_job_cleanly_and_is_replaced(tmp_path):
    async with LocalNode(_config(tmp_path)).open() as node:
        lane = node.pool.lanes[0]
        first_pid = lane.process.pid
        results = []

        async def long_job() -> None:
            results.append(await node.submit("boids.evolve", b"", EVOLVE_LONG))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(long_job)
            await trio.testing.wait_all_tasks_blocked()
            assert lane.pending is not None, "the job is in the worker"
            os.kill(first_pid, signal.SIGKILL)
        (r,) = results
        assert r.status is Status.FAILED and r.retryable
        assert f"worker process {first_pid} died" in r.error
        # the node stayed up and the lane has a new worker that serves
        r = await node.submit("boids.evolve", b"", {"population": 4, "generations": 1, "count": 32, "steps": 2})
        assert r.ok, r.error
        assert lane.process.pid != first_pid and lane.restarts == 1


async def test_worker_deadline_kills_and_replaces_the_worker(tmp_path):
    async with LocalNode(_config(tmp_path)).open() as node:
        lane = node.pool.lanes[0]
        pid = lane.process.pid
        r = await node.submit("boids.evolve", b"", EVOLVE_LONG, deadline_ms=300)
        assert r.status is Status.TIMEOUT and "300 ms deadline" in r.error
        r = await node.submit("boids.evolve", b"", {"population": 4, "generations": 1, "count": 32, "steps": 2})
        assert r.ok and lane.process.pid != pid


async def test_closing_the_node_leaves_nothing_in_shm(tmp_path):
    cfg = _config(tmp_path)
    async with LocalNode(cfg).open() as node:
        name, directory = node.arena.name, node.arena.directory
        pids = [lane.process.pid for lane in node.pool.lanes]
        assert glob.glob(os.path.join(directory, name + "*"))
    assert not glob.glob(os.path.join(directory, name + "*")), "arena and doorbells unlinked"
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


async def test_a_crashing_unit_is_restarted_and_the_arena_says_so(tmp_path):
    async with LocalNode(_config(tmp_path)).open() as node:
        actor = node.supervisor.actor("compute")
        real = actor.execute

        async def broken(req):
            raise RuntimeError("disk on fire")

        actor.execute = broken
        r = await node.submit("compute.blake3", b"x" * (1 << 20))
        assert r.status is Status.FAILED and "unit compute crashed" in r.error and r.retryable
        actor.execute = real
        with trio.fail_after(30):
            await actor.wait_started(2)  # restarted after its backoff
        diag = node.read_diagnostics()
        (entry,) = [u for u in diag["units"] if u["unit"] == "compute"]
        assert entry["restarts"] == 1 and "disk on fire" in entry["last_error"]
        (reg,) = [u for u in node.read_registry() if u["library"] == "compute"]
        assert reg["restarts"] == 1
        r = await node.submit("compute.blake3", b"x" * (1 << 20))
        assert r.ok, r.error
        assert diag["cores"] >= 1 and diag["arena_bytes"] == node.arena.size


async def test_inos_units_reads_the_live_registry_from_the_arena(tmp_path, inos_cmd):
    import json

    async with LocalNode(_config(tmp_path)).open() as node:
        p = await trio.run_process([*inos_cmd, "units", "--json", "--arena", node.arena.name,
                                    "--arena-dir", node.arena.directory], capture_stdout=True)
        units = json.loads(p.stdout)
        assert {u["library"] for u in units} == {lib.name for lib in node.engine.libraries}
        assert all(u["state"] == "running" and u["restarts"] == 0 for u in units)
        p = await trio.run_process([*inos_cmd, "units", "--arena", node.arena.name, "--arena-dir",
                                    node.arena.directory], capture_stdout=True)
        assert b"compute [running, 0 restarts]" in p.stdout
    p = await trio.run_process([*inos_cmd, "units", "--arena", "no-such-arena"], capture_stderr=True, check=False)
    assert p.returncode == 1 and b"no-such-arena" in p.stderr


def test_a_node_start_sweeps_arenas_of_killed_nodes(tmp_path):
    import sys

    from inos_node.arena import sweep_stale

    code = ("import os, sys; from inos_node.arena import Arena;"
            f"a = Arena.create('inos-victim-test', size=8 * 1024 * 1024, directory={str(tmp_path)!r});"
            "print('up', flush=True); sys.stdin.read()")
    child = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "up"
    assert sweep_stale(str(tmp_path), "inos-") == [], "a live owner's arena is left alone"
    child.kill()
    child.wait()
    assert (tmp_path / "inos-victim-test").exists()
    assert sweep_stale(str(tmp_path), "inos-") == ["inos-victim-test"]
    assert not list(tmp_path.glob("inos-victim-test*")), "arena and doorbells removed"


async def test_lazy_workers_start_with_the_first_job_that_needs_one(tmp_path):
    """The daemon's choice: an idle node runs no worker interpreter; the first process job
    starts it (and waits for it), later ones reuse it."""
    async with LocalNode(_config(tmp_path, lazy_workers=True, background_workers=True)).open() as node:
        lane = node.pool.lanes[0]
        r = await node.submit("system.echo", b"inline")  # inline capsules never need a worker
        assert r.ok
        await trio.testing.wait_all_tasks_blocked()
        assert lane.process is None and not lane.ready, "no worker before a job needs one"
        evolve = {"population": 4, "generations": 1, "count": 32, "steps": 2}
        r = await node.submit("boids.evolve", b"", evolve)
        assert r.ok, r.error
        assert r.executor.startswith("process:")
        pid = lane.process.pid
        r = await node.submit("boids.evolve", b"", evolve)
        assert r.ok and lane.process.pid == pid and lane.jobs == 2
