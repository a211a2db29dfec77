"""The ``wasm`` unit: the capsule ABI, its failures, metering, deadlines and the module caches.

The capsules are the WAT fixtures in ``tests/capsules/``.  Method functions are called directly
with params shaped as the engine shapes them (validated own params plus ``_extra``).
"""

from __future__ import annotations

import os
import select
import signal
import stat
import struct
import threading
import uuid
from pathlib import Path
from typing import Any

import blake3
import pytest
import wasmtime

from inos_node.engine.spec import Call, Method, Output, UnitContext
from inos_node.errors import BudgetExceeded, CapsuleFailed, CapsuleTimeout, InvalidParams
from inos_node.units import wasm
from inos_node.units._wasm_ticker import EpochTicker

CAPSULES = Path(__file__).resolve().parents[1] / "capsules"
METHOD: Method = wasm.make(UnitContext()).methods[0]
ABI_RUN = "(i32, i32, i32, i32) -> i64"
# Pieces of minimal modules for the ABI checks.
MEMORY = '(memory (export "memory") 1)'
ALLOC0 = '(func (export "alloc") (param i32) (result i32) (i32.const 0))'
RUN0 = '(func (export "run") (param i32 i32 i32 i32) (result i64) (i64.const 0))'


def capsule(name: str) -> bytes:
    return (CAPSULES / name).read_bytes()


def module_of(*parts: str) -> bytes:
    return f"(module {' '.join(parts)})".encode()


def fresh(name: str) -> bytes:
    """The fixture with a unique comment appended: same behaviour, a digest no cache has seen."""
    return capsule(name) + f"\n;; {uuid.uuid4()}\n".encode()


def run(
    module: bytes | None,
    data: bytes | bytearray | memoryview = b"hello",
    *,
    extra: dict[str, Any] | None = None,
    deadline_s: float | None = None,
    cache_dir: str | None = None,
    **params: Any,
) -> Output:
    validated = METHOD.validate(params)
    validated["_extra"] = {} if extra is None else extra
    view = data if isinstance(data, memoryview) else memoryview(data).toreadonly()
    call = Call(
        input=view,
        params=validated,
        ctx=UnitContext(cache_dir=cache_dir),
        module=module,
        deadline_s=deadline_s,
    )
    out = METHOD.fn(call)
    assert isinstance(out, Output)
    return out


# -- the library ------------------------------------------------------------------------------


def test_library_shape() -> None:
    lib = wasm.make(UnitContext())
    assert lib.name == "wasm"
    assert [m.name for m in lib.methods] == ["wasm.run"]
    m = lib.method("run")
    assert m is not None
    assert m.needs_module and m.deterministic and m.cost == "fuel"
    assert {p.name: p.default for p in m.params} == {
        "fuel": 1_000_000_000,
        "max_memory_mb": 256,
        "timeout_ms": 10_000,
    }


@pytest.mark.parametrize(
    ("params", "bad"),
    [
        ({"fuel": 0}, "fuel"),
        ({"fuel": 10**12 + 1}, "fuel"),
        ({"max_memory_mb": 0}, "max_memory_mb"),
        ({"max_memory_mb": 4097}, "max_memory_mb"),
        ({"timeout_ms": 0}, "timeout_ms"),
        ({"timeout_ms": 600_001}, "timeout_ms"),
    ],
)
def test_own_params_are_bounded(params: dict[str, int], bad: str) -> None:
    with pytest.raises(InvalidParams) as info:
        METHOD.validate(params)
    assert info.value.param == bad


def test_module_digest_is_blake3_hex() -> None:
    data = capsule("echo.wat")
    assert wasm.module_digest(data) == blake3.blake3(data).hexdigest()
    assert len(wasm.module_digest(b"")) == 64


# -- the ABI ----------------------------------------------------------------------------------


def test_echo_returns_its_input() -> None:
    out = run(capsule("echo.wat"), b"hello, capsule")
    assert bytes(out.data) == b"hello, capsule"
    assert out.fuel > 0
    assert out.peak_memory_bytes == 65536


def test_empty_input() -> None:
    assert bytes(run(capsule("echo.wat"), b"").data) == b""
    assert bytes(run(capsule("reverse.wat"), b"").data) == b""


def test_large_input_grows_memory_and_round_trips() -> None:
    data = os.urandom(3 * 1024 * 1024 + 17)
    out = run(capsule("echo.wat"), bytearray(data))
    assert bytes(out.data) == data
    assert out.peak_memory_bytes >= len(data)


def test_reverse_does_real_work() -> None:
    data = bytes(range(256)) * 8
    out = run(capsule("reverse.wat"), data)
    assert bytes(out.data) == data[::-1]


def test_fuel_is_deterministic_and_grows_with_work() -> None:
    module = capsule("reverse.wat")
    small = run(module, b"x" * 10)
    again = run(module, b"x" * 10)
    other_bytes = run(module, b"y" * 10)
    large = run(module, b"x" * 1000)
    assert small.fuel == again.fuel == other_bytes.fuel
    assert large.fuel > small.fuel + 990  # at least one fuel per byte moved
    # The same work costs the same however the input is handed over.
    assert run(module, memoryview(bytearray(b"x" * 1000))).fuel == large.fuel


def test_params_are_an_empty_object_when_there_are_none() -> None:
    assert bytes(run(capsule("params.wat")).data) == b"{}"
    assert bytes(run(capsule("params.wat"), extra={}).data) == b"{}"


def test_params_encoding_is_canonical_json() -> None:
    # A command-line "--param name=v" arrives as the string "v" and stays a string.
    out = run(capsule("params.wat"), extra={"name": "v", "count": "3"})
    assert bytes(out.data) == b'{"count":"3","name":"v"}'
    # Typed values (JSON API) keep their type; keys sorted, no whitespace, UTF-8.
    out = run(capsule("params.wat"), extra={"z": [1, 2.5, None], "a": True, "é": "ü"})
    assert bytes(out.data) == '{"a":true,"z":[1,2.5,null],"é":"ü"}'.encode()
    # wasm.run's own params are not the capsule's.
    out = run(capsule("params.wat"), extra={"k": "v"}, fuel=10_000_000, timeout_ms=5000)
    assert bytes(out.data) == b'{"k":"v"}'


def test_params_that_are_not_json_are_refused() -> None:
    with pytest.raises(InvalidParams, match="capsule param 'x' cannot be encoded as JSON") as info:
        run(capsule("params.wat"), extra={"ok": 1, "x": float("nan")})
    assert info.value.param == "x"
    with pytest.raises(InvalidParams, match="capsule param 'y' cannot be encoded as JSON"):
        run(capsule("params.wat"), extra={"y": object()})


def test_wasm_binary_form_is_accepted() -> None:
    text = capsule("reverse.wat")
    binary = bytes(wasmtime.wat2wasm(text.decode()))
    assert binary[:4] == b"\0asm"
    assert wasm.module_digest(binary) != wasm.module_digest(text)
    from_binary = run(binary, b"abc")
    from_text = run(text, b"abc")
    assert bytes(from_binary.data) == b"cba"
    assert from_binary.fuel == from_text.fuel


def test_nan_bits_are_canonical() -> None:
    first = bytes(run(capsule("nan.wat")).data)
    assert first == bytes(run(capsule("nan.wat")).data)
    f32_a, f32_b, f32_c, f64_a, f64_b = struct.unpack("<IIIQQ", first)
    assert (f32_a, f32_b, f32_c) == (0x7FC00000,) * 3
    assert (f64_a, f64_b) == (0x7FF8000000000000,) * 2


# -- failures ---------------------------------------------------------------------------------


def test_missing_module() -> None:
    for module in (None, b""):
        with pytest.raises(InvalidParams) as info:
            run(module)
        assert str(info.value) == "wasm.run needs a module: pass --module PATH"
        assert info.value.param == "module"


def test_module_that_is_neither_wasm_nor_utf8_wat() -> None:
    with pytest.raises(InvalidParams, match="neither a WebAssembly binary"):
        run(b"\xff\xfe\x00garbage")


def test_module_that_does_not_compile() -> None:
    with pytest.raises(InvalidParams, match="does not compile as WAT text") as info:
        run(b"(module (func $f (result i32)))")
    assert info.value.status == "invalidParams"
    with pytest.raises(InvalidParams, match="does not compile as WebAssembly binary"):
        run(b"\0asm\x01\x00\x00\x00\xff")


def test_trap_is_capsule_failed() -> None:
    with pytest.raises(CapsuleFailed) as info:
        run(capsule("trap.wat"))
    message = str(info.value)
    assert "trapped in run" in message
    assert "unreachable" in message
    assert info.value.status == "failed"


def test_running_out_of_fuel_says_how_much_was_used() -> None:
    with pytest.raises(BudgetExceeded) as info:
        run(capsule("loop.wat"), fuel=123_457)
    exc = info.value
    assert exc.kind == "fuel"
    assert exc.used == exc.limit == 123_457
    assert exc.status == "outOfFuel"
    assert "123457 fuel" in str(exc)
    assert "in run" in str(exc)


def test_deadline_stops_an_endless_loop_with_ample_fuel() -> None:
    with pytest.raises(CapsuleTimeout) as info:
        run(capsule("loop.wat"), fuel=10**12, timeout_ms=30)
    assert info.value.deadline_s == pytest.approx(0.030)
    assert "30 ms deadline" in str(info.value)
    assert info.value.status == "timeout"


def test_the_sooner_of_timeout_and_job_deadline_applies() -> None:
    with pytest.raises(CapsuleTimeout) as info:
        run(capsule("loop.wat"), fuel=10**12, deadline_s=0.025)
    assert info.value.deadline_s == pytest.approx(0.025)
    with pytest.raises(CapsuleTimeout):
        run(capsule("echo.wat"), deadline_s=0.0)


def test_another_calls_deadline_does_not_interrupt_a_call() -> None:
    """A deadline bumps the shared engine epoch; calls in flight re-arm and finish unchanged."""
    module = capsule("reverse.wat")
    data = bytes(range(256)) * 4096  # 1 MiB: tens of milliseconds of work
    baseline = run(module, data)
    ticker = wasm._runtime().ticker
    before = wasm.statistics().epoch_increments
    foreign = ticker.arm(0.001)  # someone else's deadline, passing while the call runs
    try:
        out = run(module, data)
    finally:
        ticker.disarm(foreign)
    assert bytes(out.data) == bytes(baseline.data)
    assert out.fuel == baseline.fuel
    if foreign.expired:  # the normal case: it expired during the call
        assert wasm.statistics().epoch_increments > before
    # Fuel, not the foreign deadline, stops an endless loop.
    foreign = ticker.arm(0.001)
    try:
        with pytest.raises(BudgetExceeded):
            run(capsule("loop.wat"), fuel=20_000_000)
    finally:
        ticker.disarm(foreign)


def test_concurrent_calls_time_out_independently() -> None:
    module = capsule("reverse.wat")
    data = bytes(range(256)) * 4096
    baseline = run(module, data)
    results: dict[str, Any] = {}

    def long_call() -> None:
        results["long"] = run(module, data)

    def short_call() -> None:
        try:
            run(capsule("loop.wat"), fuel=10**12, timeout_ms=5)
        except CapsuleTimeout as exc:
            results["short"] = exc

    threads = [threading.Thread(target=long_call), threading.Thread(target=short_call)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert isinstance(results["short"], CapsuleTimeout)
    assert bytes(results["long"].data) == bytes(baseline.data)
    assert results["long"].fuel == baseline.fuel


def test_start_function_is_metered_and_deadline_bound_too() -> None:
    spin = capsule("echo.wat").replace(
        b'(memory (export "memory") 1)',
        b'(memory (export "memory") 1) (func $spin (loop $l (br $l))) (start $spin)',
    )
    with pytest.raises(BudgetExceeded, match="in instantiation"):
        run(spin, fuel=100_000)
    with pytest.raises(CapsuleTimeout, match="in instantiation"):
        run(spin, fuel=10**12, timeout_ms=20)


def test_trap_in_alloc_names_the_stage() -> None:
    divide_by_zero = (
        '(func (export "alloc") (param i32) (result i32) (i32.div_u (i32.const 1) (i32.const 0)))'
    )
    with pytest.raises(CapsuleFailed, match=r"trapped in alloc\(5\) for the input: .*divide by zero"):
        run(module_of(MEMORY, divide_by_zero, RUN0), b"hello")


def test_bad_export_signature_names_the_export() -> None:
    with pytest.raises(InvalidParams) as info:
        run(capsule("bad_export.wat"))
    message = str(info.value)
    assert "'run' is func(i32) -> i32" in message
    assert ABI_RUN in message
    assert info.value.param == "module"


@pytest.mark.parametrize(
    ("parts", "named"),
    [
        ((MEMORY, RUN0), "alloc"),
        (("(memory 1)", ALLOC0), "memory, run"),
        (('(memory (export "mem") 1)', ALLOC0, RUN0), "memory"),
    ],
)
def test_missing_exports_are_named(parts: tuple[str, ...], named: str) -> None:
    with pytest.raises(InvalidParams) as info:
        run(module_of(*parts))
    assert f"missing the export(s) {named};" in str(info.value)


def test_export_of_the_wrong_kind() -> None:
    global_named_memory = '(memory 1) (global (export "memory") i32 (i32.const 0))'
    with pytest.raises(InvalidParams, match="'memory' is a global, not a memory"):
        run(module_of(global_named_memory, ALLOC0, RUN0))


def test_imports_are_refused_before_instantiation() -> None:
    with pytest.raises(InvalidParams) as info:
        run(capsule("imports.wat"), fuel=1)
    assert "env.log" in str(info.value)
    assert "import nothing" in str(info.value)


def test_output_past_the_end_of_memory() -> None:
    with pytest.raises(CapsuleFailed) as info:
        run(capsule("oob.wat"))
    message = str(info.value)
    assert "[65000, 66000) is out of bounds" in message
    assert "65536 bytes" in message


def test_alloc_returning_a_pointer_past_memory() -> None:
    near_the_top = '(func (export "alloc") (param i32) (result i32) (i32.const -16))'
    span = r"input buffer from alloc \[4294967280, 4294967285\) is out of bounds"
    with pytest.raises(CapsuleFailed, match=span):
        run(module_of(MEMORY, near_the_top, RUN0), b"hello")


def test_memory_grow_past_the_cap_returns_minus_one_inside_the_capsule() -> None:
    grown = run(capsule("grow.wat"))
    assert struct.unpack("<i", grown.data) == (1,)  # the old size in pages
    assert grown.peak_memory_bytes == 65 * 65536
    refused = run(capsule("grow.wat"), max_memory_mb=1)
    assert struct.unpack("<i", refused.data) == (-1,)
    assert refused.peak_memory_bytes == 65536


def test_allocator_that_traps_on_a_refused_grow_is_told_about_the_cap() -> None:
    with pytest.raises(CapsuleFailed) as info:
        run(capsule("echo.wat"), b"x" * (1024 * 1024 - 100), max_memory_mb=1)
    message = str(info.value)
    assert "trapped in alloc(1048476) for the input" in message
    assert "max_memory_mb" in message


def test_initial_memory_over_the_cap() -> None:
    wat = capsule("echo.wat").replace(b'(memory (export "memory") 1)', b'(memory (export "memory") 32)')
    assert run(wat, max_memory_mb=2).peak_memory_bytes == 32 * 65536
    with pytest.raises(BudgetExceeded) as info:
        run(wat, max_memory_mb=1)
    exc = info.value
    assert exc.kind == "memory"
    assert exc.used == 32 * 65536
    assert exc.limit == 1024 * 1024
    assert "max_memory_mb" in str(exc)
    assert exc.status == "budgetExceeded"


def test_input_that_cannot_fit_under_the_cap_is_refused_before_running() -> None:
    with pytest.raises(BudgetExceeded) as info:
        run(capsule("echo.wat"), b"x" * (1024 * 1024), max_memory_mb=1)
    assert info.value.kind == "memory"
    assert info.value.used == 1024 * 1024 + 2  # the input and "{}"
    assert "cannot fit" in str(info.value)


def test_input_in_any_contiguous_buffer_format() -> None:
    words = memoryview(bytearray(b"abcdefgh")).cast("I")  # format "I", 2 items of 4 bytes
    assert bytes(run(capsule("echo.wat"), words).data) == b"abcdefgh"


def test_no_state_survives_between_calls() -> None:
    # The bump allocator starts at 1024 in every call: a fresh store each time.
    module = capsule("params.wat")
    first = run(module, b"abc", extra={"k": "v"})
    second = run(module, b"abc", extra={"k": "v"})
    assert first.fuel == second.fuel
    assert first.peak_memory_bytes == second.peak_memory_bytes == 65536


# -- caches -----------------------------------------------------------------------------------


def test_module_cache_hit_does_not_recompile() -> None:
    module = fresh("echo.wat")
    before = wasm.statistics()
    run(module)
    middle = wasm.statistics()
    run(module)
    run(module)
    after = wasm.statistics()
    assert middle.compiles == before.compiles + 1
    assert after.compiles == middle.compiles
    assert after.memory_hits >= middle.memory_hits + 2


def test_refused_modules_are_remembered_too() -> None:
    module = fresh("imports.wat")
    with pytest.raises(InvalidParams):
        run(module)
    before = wasm.statistics().compiles
    with pytest.raises(InvalidParams, match="env.log"):
        run(module)
    assert wasm.statistics().compiles == before


def test_memory_cache_is_bounded() -> None:
    cache = wasm.new_cache(capacity=2)
    modules = [fresh("echo.wat") for _ in range(3)]
    for m in modules:
        cache.load(m)
    assert len(cache) == 2
    assert cache.evictions == 1
    cache.load(modules[2])
    assert cache.compiles == 3
    cache.load(modules[0])  # evicted: compiled again
    assert cache.compiles == 4


def test_disk_cache_round_trip(tmp_path: Path) -> None:
    module = fresh("reverse.wat")
    digest = wasm.module_digest(module)
    first = wasm.new_cache()
    capsule_a = first.load(module, str(tmp_path))
    assert (first.compiles, first.disk_writes, first.disk_hits) == (1, 1, 0)
    directory = tmp_path / "wasm"
    files = list(directory.glob(f"{digest}.*.cwasm"))
    assert len(files) == 1
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert stat.S_IMODE(files[0].stat().st_mode) == 0o600
    assert not [p for p in directory.iterdir() if p.name.startswith(".tmp-")]

    second = wasm.new_cache()  # a new process, in effect: nothing in memory
    capsule_b = second.load(module, str(tmp_path))
    assert (second.compiles, second.disk_hits) == (0, 1)
    assert capsule_b.digest == capsule_a.digest
    assert capsule_b.initial_memory_bytes == capsule_a.initial_memory_bytes

    # And through the method: a memory miss is served from disk, with the same results.
    wasm.clear_cache()
    before = wasm.statistics()
    out = run(module, b"disk", cache_dir=str(tmp_path))
    after = wasm.statistics()
    assert bytes(out.data) == b"ksid"
    assert after.compiles == before.compiles
    assert after.disk_hits == before.disk_hits + 1


def test_disk_cache_rejects_damaged_files(tmp_path: Path) -> None:
    module = fresh("echo.wat")
    wasm.new_cache().load(module, str(tmp_path))
    (path,) = (tmp_path / "wasm").glob("*.cwasm")
    blob = bytearray(path.read_bytes())
    blob[-1] ^= 0xFF  # a flipped bit in the compiled code
    path.write_bytes(bytes(blob))
    cache = wasm.new_cache()
    cache.load(module, str(tmp_path))
    assert (cache.compiles, cache.disk_hits) == (1, 0)  # recompiled, and the good copy rewritten
    assert cache.disk_writes == 1
    assert wasm.new_cache().load(module, str(tmp_path)) is not None


def test_disk_cache_ignores_files_others_could_have_written(tmp_path: Path) -> None:
    module = fresh("echo.wat")
    wasm.new_cache().load(module, str(tmp_path))
    (path,) = (tmp_path / "wasm").glob("*.cwasm")
    path.chmod(0o644)
    cache = wasm.new_cache()
    cache.load(module, str(tmp_path))
    assert (cache.compiles, cache.disk_hits) == (1, 0)


def test_disk_cache_in_an_unusable_directory_only_loses_the_cache(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_bytes(b"")
    cache = wasm.new_cache()
    assert cache.load(fresh("echo.wat"), str(blocker)) is not None  # <file>/wasm cannot be made
    assert (cache.compiles, cache.disk_writes) == (1, 0)


# -- processes --------------------------------------------------------------------------------


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_builds_its_own_runtime() -> None:
    """Compiling in a forked child must not wait on the parent's (absent) compile threads."""
    run(capsule("reverse.wat"), b"parent")  # the parent's runtime exists and has compiled
    module = fresh("reverse.wat")  # so the child must compile
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report through the pipe, never return into pytest
        code = 1
        try:
            os.write(w, bytes(run(module, b"child").data))
            code = 0
        finally:
            os._exit(code)
    os.close(w)
    try:
        ready, _, _ = select.select([r], [], [], 30)
        got = os.read(r, 100) if ready else b"(child hung)"
    finally:
        os.close(r)
        if not ready:
            os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
    assert got == b"dlihc"
    assert os.waitstatus_to_exitcode(status) == 0


# -- the ticker -------------------------------------------------------------------------------


def test_ticker_increments_once_a_deadline_passes() -> None:
    fired = threading.Event()
    ticker = EpochTicker(fired.set)
    d = ticker.arm(0.001)
    assert fired.wait(timeout=10)
    assert d.expired
    assert ticker.live() == 0
    ticker.disarm(d)
    ticker.disarm(d)  # idempotent
    assert ticker.armed == {}


def test_ticker_heap_stays_bounded_under_churn() -> None:
    ticker = EpochTicker(lambda: None)
    for _ in range(5000):
        ticker.disarm(ticker.arm(3600))
    assert ticker.live() == 0
    assert len(ticker._heap) <= 2 * 0 + 256 + 1
    assert ticker.armed == {}
