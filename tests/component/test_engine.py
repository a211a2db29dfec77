"""The engine with small test libraries: routing, errors, executors, cost and metrics."""

from __future__ import annotations

import threading

import trio
import trio.testing

from inos_node.engine.engine import Engine, EngineConfig
from inos_node.engine.spec import Call, Library, Method, Output, Param, UnitContext
from inos_node.errors import BudgetExceeded, CapsuleFailed
from inos_node.types import ArenaSlice, Digest, Status


def _upper(call: Call) -> bytes:
    return bytes(call.input).upper()


def _thread_name(call: Call) -> bytes:
    return threading.current_thread().name.encode()


def _boom(call: Call) -> bytes:
    raise CapsuleFailed("it broke on purpose")


def _fuel(call: Call) -> Output:
    if call.params["n"] > 10:
        raise BudgetExceeded("all fuel consumed (used 10)", kind="fuel", used=10, limit=10)
    return Output(b"ok", fuel=call.params["n"])


def _slow(call: Call) -> bytes:
    threading.Event().wait(2.0)  # a method that overruns its deadline (runs on a thread)
    return b"late"


LIB = Library(
    "t",
    (
        Method("t.upper", _upper, "inline"),
        Method("t.where", _thread_name, "thread", inline_below=4),
        Method("t.boom", _boom, "inline"),
        Method("t.fuel", _fuel, "inline", params=(Param("n", "int", 1, minimum=0),), cost="fuel"),
        Method("t.size", _upper, "thread", cost="mib"),
        Method("t.slow", _slow, "thread"),
    ),
)


def engine(**cfg) -> Engine:
    return Engine(UnitContext(), [LIB], EngineConfig(**cfg))


async def test_inline_call_and_metrics():
    res = await engine().call("t.upper", b"abc")
    assert res.status is Status.SUCCESS
    assert bytes(res.output) == b"ABC"
    assert res.executor == "inline"
    assert res.cost == 1
    assert res.metrics.input_bytes == 3 and res.metrics.output_bytes == 3
    assert res.metrics.wall_ns > 0


async def test_unknown_library_and_method_list_what_exists():
    e = engine()
    res = await e.call("nope.x")
    assert res.status is Status.INVALID_PARAMS
    assert "unknown library 'nope'" in res.error and "t" in res.error
    res = await e.call("t.nope")
    assert res.status is Status.INVALID_PARAMS
    assert "t.upper" in res.error and "t.where" in res.error


async def test_thread_executor_and_inline_below():
    e = engine()
    small = await e.call("t.where", b"ab")
    big = await e.call("t.where", b"abcdef")
    assert small.executor == "inline"
    assert bytes(small.output) == threading.current_thread().name.encode()
    assert big.executor == "thread"
    assert bytes(big.output) != threading.current_thread().name.encode()


async def test_failures_become_results_with_status():
    e = engine()
    res = await e.call("t.boom")
    assert res.status is Status.FAILED and "on purpose" in res.error and res.cost == 0
    res = await e.call("t.fuel", params={"n": 11})
    assert res.status is Status.OUT_OF_FUEL and res.metrics.fuel == 10
    res = await e.call("t.fuel", params={"n": "x"})
    assert res.status is Status.INVALID_PARAMS and "'n'" in res.error
    res = await e.call("t.fuel", params={"n": 7})
    assert res.ok and res.cost == 7 and res.metrics.fuel == 7
    assert e.completed == 1 and e.failed == 3


async def test_input_limit_is_a_clear_error():
    res = await engine(max_input_bytes=8).call("t.upper", b"123456789")
    assert res.status is Status.INVALID_PARAMS
    assert "9 bytes is over the 8-byte limit" in res.error


async def test_mib_cost():
    res = await engine().call("t.size", b"x" * (3 * 1024 * 1024 + 1))
    assert res.cost == 4


async def test_thread_deadline():
    res = await engine().call("t.slow", deadline_ms=50)
    assert res.status is Status.TIMEOUT and "50 ms deadline" in res.error and res.retryable


async def test_arena_and_digest_inputs_without_an_arena_are_clear_errors():
    e = engine()
    res = await e.call("t.upper", ArenaSlice(0, 4))
    assert res.status is Status.FAILED and "no arena" in res.error
    from inos_node.types import JobRequest

    res = await e.execute(JobRequest("j", "t", "upper", Digest(b"\x01" * 32)))
    assert res.status is Status.FAILED and "by digest" in res.error


async def test_concurrent_thread_calls_are_bounded():
    e = engine(max_threads=1)
    peak = 0
    running = 0
    lock = threading.Lock()
    release = threading.Event()

    def gated(call: Call) -> bytes:
        nonlocal peak, running
        with lock:
            running += 1
            peak = max(peak, running)
        release.wait(5)
        with lock:
            running -= 1
        return b"ok"

    e._methods["t.size"] = Method("t.size", gated, "thread")
    results = []

    async def one() -> None:
        results.append(await e.call("t.size", b"abcd"))

    async with trio.open_nursery() as n:
        for _ in range(4):
            n.start_soon(one)
        await trio.testing.wait_all_tasks_blocked()
        release.set()
    assert [r.ok for r in results] == [True] * 4
    assert peak == 1, "max_threads=1 runs one thread-executor job at a time"


async def test_a_unit_bug_fails_the_job_not_the_engine():
    def mutate(call: Call) -> bytes:
        call.input[0:1] = b"z"  # inputs are read-only views
        return b""

    lib = Library("m", (Method("m.mut", mutate, "inline"),))
    data = bytearray(b"abc")
    res = await Engine(UnitContext(), [lib]).call("m.mut", data)
    assert res.status is Status.FAILED
    assert "m.mut raised TypeError" in res.error
    assert data == b"abc"


async def test_inline_if_lets_a_bounded_call_skip_the_thread_hop():
    lib = Library("b", (Method("b.where", _thread_name, "thread", params=(Param("fuel", "int", 10**9),),
                               inline_if=lambda p: p["fuel"] <= 1000),))
    e = Engine(UnitContext(), [lib])
    assert (await e.call("b.where", b"x", {"fuel": 500})).executor == "inline"
    assert (await e.call("b.where", b"x")).executor == "thread"


async def test_wasm_with_a_small_fuel_budget_runs_inline(capsules):
    from inos_node.local import build_engine

    e = build_engine()
    module = (capsules / "echo.wat").read_bytes()
    small = await e.call("wasm.run", b"hi", {"fuel": 100_000}, module=module)
    big = await e.call("wasm.run", b"hi", module=module)
    assert small.ok and big.ok and bytes(small.output) == bytes(big.output) == b"hi"
    assert (small.executor, big.executor) == ("inline", "thread")
    assert small.cost == big.cost == small.metrics.fuel > 0, "same fuel either way: metering is deterministic"
