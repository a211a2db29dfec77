"""The hot path of ``wasm.run``: one capsule call on wasmtime's C API, without the Python wrappers.

Why not the public ``wasmtime`` classes?  Measured on this project's dev box (wasmtime 50.0.1,
CPython 3.11), a trivial echo call through ``Store``/``Instance``/``Func.__call__`` costs about
260 us, 60 % of it in ``Func.__call__`` re-reading the function type and boxing every argument
as a ``Val``.  The same steps made directly on the C functions cost about 45 us.  So this module
declares its own ``ctypes`` prototypes for the dozen C functions of the hot path, bound to the
library that the ``wasmtime`` package already loaded (``wasmtime._ffi.dll``), and reuses the
package's structure definitions so their layout always matches the library.  Everything cold
(compiling, inspecting imports and exports, serialising, turning a trap into a message) stays on
the public API in ``wasm.py``.

Soundness of ``wasmtime_func_call_unchecked``: it skips the type check of arguments and
results.  ``wasm.py`` admits a module only after checking that ``alloc`` is
``(i32) -> i32`` and ``run`` is ``(i32, i32, i32, i32) -> i64``, and modules cannot import
anything, so the exports found here always have exactly those types.

One call, in order (each step is one C call unless noted):

    store_new ─► set_fuel ─► limiter ─► epoch deadline = now + 1 ─► ticker.arm ─► deadline callback
        ─► instance_new ─► export_get ×3 ─► alloc(in_len) ─► alloc(params_len)
        ─► bounds check, memcpy ×2 ─► run(...) ─► bounds check, copy out ─► get_fuel
        ─► ticker.disarm ─► store_delete

Rules:

* Rule 1: every pointer or length that comes back from the capsule is checked against the
  memory's current ``data_size`` before the host touches memory, and the base address is read
  again after every call into the capsule (``memory.grow`` may move it).
* Rule 2: the store is deleted on every path (``try``/``finally``); traps and errors returned by
  the C API are wrapped in the package's owning classes at once, so they are freed too.
* Rule 3: the deadline callback never raises (an exception in a ``ctypes`` callback would be
  printed and swallowed, leaving the deadline in an undefined state).
"""

from __future__ import annotations

import ctypes
from ctypes import POINTER, byref, c_bool, c_char_p, c_int64, c_size_t, c_uint8, c_uint64, c_void_p
from dataclasses import dataclass
from typing import Any

import wasmtime
from wasmtime import _bindings as _b  # structure layouts of the loaded library
from wasmtime import _ffi

from inos_node.errors import BudgetExceeded, CapsuleFailed, CapsuleTimeout, InosInternalError
from inos_node.units._wasm_ticker import Deadline, EpochTicker

__all__ = ["DeadlineCallback", "Result", "address_of", "invoke", "make_deadline_callback"]

_WASM_PAGE = 65536
_U32 = 0xFFFFFFFF
_U64 = 0xFFFFFFFFFFFFFFFF

_Extern = _b.wasmtime_extern_t
_InstanceT = _b.wasmtime_instance_t
_FuncT = _b.wasmtime_func_t
_MemoryT = _b.wasmtime_memory_t
_RawArgs = _b.wasmtime_val_raw_t * 4  # run takes four i32; the same array carries its i64 result

# wasmtime_error_t *(*)(wasmtime_context_t *, void *data, uint64_t *delta, wasmtime_update_deadline_kind_t *)
# (declared returning size_t, as the package does, so that an error pointer can be returned as an int)
DeadlineCallback = ctypes.CFUNCTYPE(c_size_t, c_void_p, c_void_p, POINTER(c_uint64), POINTER(c_uint8))
_UPDATE_CONTINUE = 0  # WASMTIME_UPDATE_DEADLINE_CONTINUE


def _proto(name: str, restype: Any, *argtypes: Any) -> Any:
    """An independent foreign function for ``name`` that releases the GIL while it runs.

    For the calls that may execute wasm (which must let the ticker thread and other capsules
    run) or that may take long (creating and dropping a store maps and unmaps memory).
    """
    return ctypes.CFUNCTYPE(restype, *argtypes)((name, _ffi.dll))


def _quick(name: str, restype: Any, *argtypes: Any) -> Any:
    """Like ``_proto``, but keeps the GIL: for calls of nanoseconds that never run wasm.

    Releasing the GIL around them buys no parallelism, and each release lets a waiting thread
    (the event loop, another capsule) take the GIL, which this thread must then wait to get back.
    """
    return ctypes.PYFUNCTYPE(restype, *argtypes)((name, _ffi.dll))


_store_new = _proto("wasmtime_store_new", c_void_p, c_void_p, c_void_p, c_void_p)
_store_delete = _proto("wasmtime_store_delete", None, c_void_p)
_store_context = _quick("wasmtime_store_context", c_void_p, c_void_p)
_store_limiter = _quick("wasmtime_store_limiter", None, c_void_p, c_int64, c_int64, c_int64, c_int64, c_int64)
_set_fuel = _quick("wasmtime_context_set_fuel", c_void_p, c_void_p, c_uint64)
_get_fuel = _quick("wasmtime_context_get_fuel", c_void_p, c_void_p, POINTER(c_uint64))
_set_epoch_deadline = _quick("wasmtime_context_set_epoch_deadline", None, c_void_p, c_uint64)
_set_deadline_callback = _quick(
    "wasmtime_store_epoch_deadline_callback", None, c_void_p, DeadlineCallback, c_void_p, c_void_p
)
_instance_new = _proto(
    "wasmtime_instance_new",
    c_void_p,
    c_void_p,
    c_void_p,
    c_void_p,
    c_size_t,
    POINTER(_InstanceT),
    POINTER(c_void_p),
)
_export_get = _quick(
    "wasmtime_instance_export_get",
    c_bool,
    c_void_p,
    POINTER(_InstanceT),
    c_char_p,
    c_size_t,
    POINTER(_Extern),
)
_call = _proto(
    "wasmtime_func_call_unchecked",
    c_void_p,
    c_void_p,
    POINTER(_FuncT),
    POINTER(_b.wasmtime_val_raw_t),
    c_size_t,
    POINTER(c_void_p),
)
_memory_data = _quick("wasmtime_memory_data", c_void_p, c_void_p, POINTER(_MemoryT))
_memory_size = _quick("wasmtime_memory_data_size", c_size_t, c_void_p, POINTER(_MemoryT))
_error_new = _proto("wasmtime_error_new", c_void_p, c_char_p)

# A writable memoryview over C memory, without creating a ctypes array type per length (ctypes
# caches every ``c_ubyte * n`` type it makes, forever: one per distinct input size would leak).
_memoryview_at = ctypes.pythonapi.PyMemoryView_FromMemory
_memoryview_at.restype = ctypes.py_object
_memoryview_at.argtypes = (c_void_p, ctypes.c_ssize_t, ctypes.c_int)
_PYBUF_WRITE = 0x200

# Limits besides memory (instances, memories, tables, table elements): a capsule is one module
# with one exported memory.  A second memory would escape the per-memory byte cap, and a table
# holds 8 bytes per element outside linear memory, so both are bounded too.
_MAX_TABLES = 8
_MAX_TABLE_ELEMENTS = 1 << 20


def address_of(managed: Any) -> int:
    """The C address behind a ``wasmtime`` Engine or Module (they must outlive its use)."""
    addr = ctypes.cast(managed.ptr(), c_void_p).value
    if not addr:
        raise InosInternalError("wasmtime object has no pointer (closed?)")
    return addr


def make_deadline_callback(armed: dict[int, Deadline]) -> Any:
    """The per-process epoch-deadline callback (keep a reference: ctypes does not).

    wasmtime calls it on the thread running the capsule each time the store's epoch deadline is
    reached.  ``data`` is the key of the call's ``Deadline`` in ``armed``.  An expired (or
    unknown) call is interrupted by returning an error; any other call was reached by someone
    else's expiry and is given one more epoch.
    """

    def on_deadline(_ctx: int | None, data: int | None, delta: Any, kind: Any) -> int:
        d = armed.get(data or 0)
        if d is None or d.expired:
            return _error_new(b"inos: capsule deadline passed") or 0
        delta[0] = 1
        kind[0] = _UPDATE_CONTINUE
        return 0

    return DeadlineCallback(on_deadline)


@dataclass(frozen=True, slots=True)
class Result:
    output: bytes
    fuel_used: int
    memory_bytes: int


class _Run:
    """Failure reporting for one call: knows the call's limits and the store's state."""

    __slots__ = ("ctx", "deadline", "fuel", "label", "memory", "memory_limit")

    def __init__(self, ctx: int, deadline: Deadline, fuel: int, memory_limit: int, label: str) -> None:
        self.ctx = ctx
        self.deadline = deadline
        self.fuel = fuel
        self.memory_limit = memory_limit
        self.label = label
        self.memory: Any = None  # the memory extern, once the instance exists

    def fuel_used(self) -> int:
        left = c_uint64(0)
        err = _get_fuel(self.ctx, byref(left))
        if err:
            raise InosInternalError(f"wasmtime refused get_fuel: {_wrap_error(err)}")
        return self.fuel - left.value

    def memory_bytes(self) -> int:
        return 0 if self.memory is None else int(_memory_size(self.ctx, byref(self.memory.of.memory)))

    def fault(self, stage: str, err: int | None, trap: int | None, wanted: int = 0) -> Exception:
        """Translate what the C API returned for ``stage`` into the error to raise.

        ``wanted``: bytes the stage was asked to find room for (an ``alloc`` length), for the
        hint that a refused ``memory.grow`` is the likely cause of a trap.
        """
        error = _wrap_error(err) if err else None
        trap_obj = _wrap_trap(trap) if trap else None
        if self.deadline.expired:
            # No fuel figure here: after an interrupt wasmtime's fuel counter may not be synced.
            ms = round(self.deadline.seconds * 1000)
            return CapsuleTimeout(
                f"{self.label} passed its {ms} ms deadline in {stage}",
                deadline_s=self.deadline.seconds,
            )
        if trap_obj is not None:
            code = trap_obj.trap_code
            if code is wasmtime.TrapCode.OUT_OF_FUEL:
                return BudgetExceeded(
                    f"{self.label} ran out of fuel in {stage}: used all {self.fuel} fuel it was given "
                    f"(raise the fuel param)",
                    kind="fuel",
                    used=self.fuel,
                    limit=self.fuel,
                )
            if code is wasmtime.TrapCode.INTERRUPT:  # only our deadline interrupts; kept for safety
                return CapsuleTimeout(
                    f"{self.label} was interrupted in {stage}", deadline_s=self.deadline.seconds
                )
            reason = _reason(trap_obj.message)
            return CapsuleFailed(f"{self.label} trapped in {stage}: {reason}{self._memory_hint(wanted)}")
        detail = _reason(str(error)) if error is not None else "unknown error"
        return CapsuleFailed(f"{self.label} failed in {stage}: {detail}{self._memory_hint(wanted)}")

    def _memory_hint(self, wanted: int) -> str:
        size = self.memory_bytes()
        if size and size + max(wanted, _WASM_PAGE) > self.memory_limit:
            return (
                f" (its memory is at {size} of the {self.memory_limit} bytes max_memory_mb allows, "
                f"so a refused memory.grow is the likely cause)"
            )
        return ""

    def check_span(self, what: str, ptr: int, length: int) -> int:
        """Base address of memory after checking ``[ptr, ptr + length)`` lies inside it."""
        size = self.memory_bytes()
        if ptr + length > size:
            raise CapsuleFailed(
                f"{self.label} {what} [{ptr}, {ptr + length}) is out of bounds: its memory is {size} bytes"
            )
        base: int = _memory_data(self.ctx, byref(self.memory.of.memory)) or 0
        return base


def _wrap_error(err: int) -> wasmtime.WasmtimeError:
    return wasmtime.WasmtimeError._from_ptr(ctypes.cast(err, POINTER(_b.wasmtime_error_t)))


def _wrap_trap(trap: int) -> wasmtime.Trap:
    return wasmtime.Trap._from_ptr(ctypes.cast(trap, POINTER(_b.wasm_trap_t)))


def _reason(message: str) -> str:
    """The cause line of a wasmtime message (it also carries a multi-line wasm backtrace)."""
    lines = [ln.strip() for ln in message.splitlines() if ln.strip()]
    if not lines:
        return "no message"
    cause = lines[-1]
    return cause.removeprefix("wasm trap: ")


def _i32(v: int) -> int:
    return v - (1 << 32) if v & 0x80000000 else v


def invoke(
    *,
    engine: int,
    module: int,
    ticker: EpochTicker,
    callback: Any,
    data: bytes | memoryview,
    params: bytes,
    fuel: int,
    memory_limit: int,
    seconds: float,
    label: str,
) -> Result:
    """Run the ABI once in a fresh store and return the output, the fuel used and the memory size.

    Args:
        engine, module: C addresses (``address_of``) of the shared engine and a module admitted by
            ``wasm.py``'s checks; the caller keeps both alive during the call.
        data: the input (a C-contiguous buffer; copied into the capsule's memory).  The caller
            has checked that it and the params fit under ``memory_limit`` (so below 4 GiB).
        params: the params JSON, UTF-8.
        seconds: wall-clock budget, enforced through ``ticker`` and ``callback``.
        label: how messages name the capsule.

    Raises:
        BudgetExceeded: fuel ran out (``kind="fuel"``).
        CapsuleTimeout: the deadline passed.
        CapsuleFailed: a trap, an error, or a pointer/length from the capsule out of bounds.
    """
    store = _store_new(engine, None, None)
    if not store:
        raise InosInternalError("wasmtime_store_new returned NULL")
    deadline: Deadline | None = None
    try:
        ctx: int = _store_context(store)
        err = _set_fuel(ctx, fuel)
        if err:
            raise InosInternalError(f"wasmtime refused set_fuel: {_wrap_error(err)}")
        _store_limiter(store, memory_limit, _MAX_TABLE_ELEMENTS, 1, _MAX_TABLES, 1)
        _set_epoch_deadline(ctx, 1)  # before arming: see _wasm_ticker Rule 1
        deadline = ticker.arm(seconds)
        _set_deadline_callback(store, callback, deadline.key, None)
        run = _Run(ctx, deadline, fuel, memory_limit, label)

        trap = c_void_p()
        inst = _InstanceT()
        err = _instance_new(ctx, module, None, 0, byref(inst), byref(trap))
        if err or trap:
            raise run.fault("instantiation", err, trap.value)
        mem, alloc, main = _Extern(), _Extern(), _Extern()
        if not (
            _export_get(ctx, byref(inst), b"memory", 6, byref(mem))
            and _export_get(ctx, byref(inst), b"alloc", 5, byref(alloc))
            and _export_get(ctx, byref(inst), b"run", 3, byref(main))
        ):
            raise InosInternalError("an admitted capsule lacks an ABI export")
        run.memory = mem

        args = _RawArgs()
        in_len = len(data) if isinstance(data, bytes) else data.nbytes
        p_len = len(params)
        args[0].i32 = _i32(in_len)
        err = _call(ctx, byref(alloc.of.func), args, 4, byref(trap))
        if err or trap:
            raise run.fault(f"alloc({in_len}) for the input", err, trap.value, in_len)
        in_ptr = args[0].i32 & _U32
        args[0].i32 = _i32(p_len)
        err = _call(ctx, byref(alloc.of.func), args, 4, byref(trap))
        if err or trap:
            raise run.fault(f"alloc({p_len}) for the params", err, trap.value, p_len)
        p_ptr = args[0].i32 & _U32

        run.check_span("input buffer from alloc", in_ptr, in_len)
        base = run.check_span("params buffer from alloc", p_ptr, p_len)
        if in_len:
            if isinstance(data, memoryview) and (data.format != "B" or data.ndim != 1):
                data = data.cast("B")
            _memoryview_at(base + in_ptr, in_len, _PYBUF_WRITE)[:] = data
        if p_len:
            _memoryview_at(base + p_ptr, p_len, _PYBUF_WRITE)[:] = params

        args[0].i32 = _i32(in_ptr)
        args[1].i32 = _i32(in_len)
        args[2].i32 = _i32(p_ptr)
        args[3].i32 = _i32(p_len)
        err = _call(ctx, byref(main.of.func), args, 4, byref(trap))
        if err or trap:
            raise run.fault("run", err, trap.value)
        result = args[0].i64 & _U64
        out_ptr, out_len = result >> 32, result & _U32
        base = run.check_span("output (run's result)", out_ptr, out_len)
        output = ctypes.string_at(base + out_ptr, out_len) if out_len else b""
        return Result(output=output, fuel_used=run.fuel_used(), memory_bytes=run.memory_bytes())
    finally:
        if deadline is not None:
            ticker.disarm(deadline)
        _store_delete(store)
