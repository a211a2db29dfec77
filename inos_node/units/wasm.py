"""The ``wasm`` library: sandboxed WebAssembly capsules, run with wasmtime.

This is the Python-hosted form of the seed's Rust WASM modules and their plain C ABI.  One
method, ``wasm.run``: the job's ``module`` (WebAssembly binary, or WAT text) is run on the job's
input, under a fuel budget, a memory cap and a wall-clock deadline.

The ABI (other tools build capsules for it; followed exactly)
--------------------------------------------------------------
A capsule is a module that imports nothing and exports:

* ``memory``: its linear memory (32-bit, not shared);
* ``alloc(len: i32) -> i32``: a pointer to ``len`` writable bytes;
* ``run(in_ptr: i32, in_len: i32, params_ptr: i32, params_len: i32) -> i64``.

The host calls ``alloc(len(input))`` and ``alloc(len(params))``, copies the input and the params
in, calls ``run``, and reads the output from ``memory[ptr : ptr + len]`` where, taking the result
as an unsigned 64-bit ``r``, ``ptr = r >> 32`` and ``len = r & 0xffffffff``.  The params are the
capsule's params as one UTF-8 JSON object: every job param that is not one of ``wasm.run``'s own
(``fuel``, ``max_memory_mb``, ``timeout_ms``), which the engine hands over in
``call.params["_extra"]``.  Values keep their type (``--param k=v`` on the command line gives the
string ``"v"``); the encoding is canonical (keys sorted, no whitespace, no NaN), ``{}`` when there
are none.

What each failure is
--------------------
* module missing, neither wasm nor UTF-8 WAT, or not compiling: ``InvalidParams`` (``module``);
* module importing anything: ``InvalidParams`` listing ``module.name`` of each import, raised
  before instantiation;
* export missing or of the wrong kind or signature: ``InvalidParams`` naming each export and the
  type the ABI needs;
* initial memory over ``max_memory_mb``, or input and params that could not fit under it:
  ``BudgetExceeded(kind="memory")``;
* fuel ran out: ``BudgetExceeded(kind="fuel", used=limit, limit=limit)``, saying how much;
* deadline passed: ``CapsuleTimeout``;
* a trap (``unreachable``, out-of-bounds access, ...): ``CapsuleFailed`` naming the stage
  (instantiation, alloc for the input or params, run) and the trap;
* a pointer or length from the capsule (from ``alloc`` or ``run``) outside its memory:
  ``CapsuleFailed`` naming the span and the memory size.

``memory.grow`` past the cap is not a host error: as the WebAssembly spec says, it returns -1
inside the capsule, which decides what to do.  Capsules whose allocator then aborts trap; that
``CapsuleFailed`` message adds that the memory sits at the cap.

Determinism
-----------
One ``wasmtime.Engine`` per process, configured for it: fuel metering (``consume_fuel``: the
same module, input and params use the same fuel on every machine running the same wasmtime),
NaN canonicalisation (float results carry the canonical NaN bits, not the CPU's), deterministic
relaxed SIMD, and no threads, shared memory, 64-bit memory or GC heap.  Each call gets a fresh
``Store``: nothing survives between calls.  Fuel used is the fuel set minus the fuel left; it is
the capsule's cost.

Wall-clock deadline
-------------------
``min(timeout_ms, call.deadline_s)``, enforced by epoch interruption.  One daemon ticker thread
per process keeps a heap of deadlines and bumps the engine epoch only when one passes; stores
reached by someone else's bump re-arm from a deadline callback (see ``_wasm_ticker``).  The hot
path pays a heap push, never a thread per call, never a periodic tick.

Caching
-------
Modules are content-addressed: the id is the BLAKE3 of the module bytes, as sent.  Admitted
(compiled and checked) modules are kept in a bounded in-memory LRU (``CACHE_CAPACITY``); with a
``ctx.cache_dir``, compiled code is also kept on disk (``<cache_dir>/wasm``), keyed by digest,
wasmtime version and engine settings.  Rules for the disk cache, because deserialising is
loading native code: only files this user wrote are read (a private 0700 directory, regular
0600 files owned by us, opened without following links), every file carries the module digest
and a BLAKE3 checksum of its payload that are checked before ``Module.deserialize``, files are
written atomically (temporary file + ``os.replace``).  A damaged or stale file is deleted, one
that is not private is ignored; either way the module is recompiled and the file rewritten.  At
most ``DISK_CAPACITY`` files are kept (oldest removed first).

Processes
---------
Everything above is per process and built on first use.  A process forked from one that had
already used the unit builds its own (the parent's ticker thread does not exist in the child),
and compiles on the calling thread there: wasmtime's parallel compilation uses a process-wide
thread pool whose threads a forked child does not have.

Rules this module lives by:

* Rule 1: a module is run only after ``_admit`` has checked its imports (none) and the three
  ABI exports; the hot path (``_wasm_ffi``) relies on it to call the exports unchecked.
* Rule 2: this unit owns wasmtime: nothing else in inos_node imports it.
* Rule 3: everything is bounded: the LRU, the disk cache, fuel, memory, tables, time.
"""

from __future__ import annotations

import json
import logging
import os
import stat
import tempfile
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import blake3
import wasmtime

from inos_node.engine.spec import Call, Library, Method, Output, Param, UnitContext
from inos_node.errors import BudgetExceeded, CapsuleTimeout, InvalidParams
from inos_node.units import _wasm_ffi
from inos_node.units._wasm_ticker import EpochTicker

__all__ = [
    "CACHE_CAPACITY",
    "DISK_CAPACITY",
    "ModuleCache",
    "WasmStats",
    "clear_cache",
    "make",
    "module_digest",
    "new_cache",
    "run_capsule",
    "statistics",
]

log = logging.getLogger(__name__)

CACHE_CAPACITY = 64
"""Compiled modules kept in memory per process."""
DISK_CAPACITY = 256
"""Compiled modules kept on disk per cache directory."""

DEFAULT_FUEL = 1_000_000_000
INLINE_FUEL = 400_000  # at most ~1 ms of wasm: such a capsule runs inline in the trio loop
MAX_FUEL = 10**12
_MIB = 1024 * 1024
_WASM_MAGIC = b"\0asm"
_DISK_MAGIC = b"INOS-CWASM\x01\n"
_ABI = (
    "the ABI needs exports memory, alloc(len: i32) -> i32 and "
    "run(in_ptr: i32, in_len: i32, params_ptr: i32, params_len: i32) -> i64"
)


def module_digest(data: bytes | bytearray | memoryview) -> str:
    """The content id of a module: BLAKE3 of its bytes (binary or WAT, as sent), hex."""
    return blake3.blake3(data).hexdigest()


# -- the per-process runtime ------------------------------------------------------------------


def _engine_config(parallel_compilation: bool = True) -> tuple[wasmtime.Config, str]:
    """The engine settings, and a text naming those that shape compiled code (disk-cache key).

    ``parallel_compilation`` uses wasmtime's process-wide thread pool, which a forked child
    inherits without its threads: compiling there would wait forever (seen), so a runtime built
    after a fork compiles on the calling thread.
    """
    cfg = wasmtime.Config()
    cfg.parallel_compilation = parallel_compilation
    settings: dict[str, bool] = {
        "consume_fuel": True,
        "epoch_interruption": True,
        "cranelift_nan_canonicalization": True,
        "wasm_relaxed_simd_deterministic": True,
        "wasm_threads": False,  # no shared memory or atomics: nothing to race with anyway
        "wasm_memory64": False,  # the ABI is 32-bit
        "wasm_gc": False,  # a GC heap would live outside the linear-memory cap
    }
    applied = []
    for name, value in settings.items():
        if not hasattr(type(cfg), name):  # a wasmtime without this knob
            if name in ("consume_fuel", "epoch_interruption"):
                raise ImportError(f"wasmtime {_wasmtime_version()} lacks Config.{name}, which wasm.run needs")
            continue
        setattr(cfg, name, value)
        applied.append(f"{name}={value}")
    return cfg, ";".join(applied)


class _Runtime:
    """What one process shares between calls: the engine, the deadline ticker, the module cache."""

    def __init__(self, parallel_compilation: bool = True) -> None:
        cfg, settings = _engine_config(parallel_compilation)
        self.engine = wasmtime.Engine(cfg)
        self.engine_address = _wasm_ffi.address_of(self.engine)
        self.ticker = EpochTicker(self.engine.increment_epoch)
        self.callback = _wasm_ffi.make_deadline_callback(self.ticker.armed)
        version = _wasmtime_version()
        self.cache_tag = blake3.blake3(f"wasmtime={version};{settings}".encode()).hexdigest()[:16]
        self.cache = ModuleCache(self, CACHE_CAPACITY)


_RUNTIME: _Runtime | None = None
_RUNTIME_LOCK = threading.Lock()


def _runtime() -> _Runtime:
    global _RUNTIME
    rt = _RUNTIME
    if rt is None:
        with _RUNTIME_LOCK:
            if _RUNTIME is None:
                _RUNTIME = _Runtime(parallel_compilation=not _FORKED_AWAY)
            rt = _RUNTIME
    return rt


def _after_fork_in_child() -> None:
    # The child has no ticker thread and must not share an engine with its parent: it builds its
    # own runtime on first use.  The parent's is kept referenced, never dropped: tearing down a
    # wasmtime engine copied in mid-flight by fork is not something to do on purpose.
    global _RUNTIME, _RUNTIME_LOCK
    _FORKED_AWAY.append(_RUNTIME)
    _RUNTIME = None
    _RUNTIME_LOCK = threading.Lock()  # in case the fork happened while another thread held it


_FORKED_AWAY: list[_Runtime | None] = []  # non-empty in a process forked from another
os.register_at_fork(after_in_child=_after_fork_in_child)


def _wasmtime_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("wasmtime")
    except PackageNotFoundError:  # vendored or renamed: fall back to the module's own claim
        return str(getattr(wasmtime, "__version__", "unknown"))


# -- admitting and caching modules ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Capsule:
    """A compiled module that passed ``_admit``."""

    digest: str
    module: wasmtime.Module
    address: int  # C address of ``module``, for the hot path; valid while ``module`` lives
    initial_memory_bytes: int


@dataclass(frozen=True, slots=True)
class _Refusal:
    """A module that compiled but is not a capsule: remembered so it is not compiled again."""

    message: str


@dataclass(frozen=True, slots=True)
class WasmStats:
    """Counters of this process's wasm unit (``statistics()``)."""

    compiles: int
    memory_hits: int
    disk_hits: int
    disk_writes: int
    evictions: int
    cached_modules: int
    epoch_increments: int
    live_deadlines: int


def _signature(ty: wasmtime.FuncType) -> str:
    params = ", ".join(str(p) for p in ty.params)
    results = ", ".join(str(r) for r in ty.results)
    return f"func({params}) -> {results or '()'}"


def _describe(ty: Any) -> str:
    if isinstance(ty, wasmtime.FuncType):
        return _signature(ty)
    return type(ty).__name__.removesuffix("Type").lower()


def _admit(module: wasmtime.Module) -> int | _Refusal:
    """Check a compiled module against the ABI; the initial memory size in bytes, or why not."""
    imports = module.imports
    if imports:
        names = ", ".join(f"{imp.module}.{imp.name}" for imp in imports)
        return _Refusal(
            f"capsule imports {names}: capsules get no host functions, so a module may import nothing"
        )
    exports = {exp.name: exp.type for exp in module.exports}
    missing = [name for name in ("memory", "alloc", "run") if name not in exports]
    if missing:
        return _Refusal(f"capsule is missing the export(s) {', '.join(missing)}; {_ABI}")
    wrong = []
    memory = exports["memory"]
    if not isinstance(memory, wasmtime.MemoryType):
        wrong.append(f"'memory' is a {_describe(memory)}, not a memory")
    elif memory.is_64 or memory.is_shared:
        wrong.append("'memory' must be a 32-bit, unshared memory")
    for name, params, results in (("alloc", ["i32"], ["i32"]), ("run", ["i32"] * 4, ["i64"])):
        ty = exports[name]
        if (
            not isinstance(ty, wasmtime.FuncType)
            or [str(p) for p in ty.params] != params
            or [str(r) for r in ty.results] != results
        ):
            want = f"func({', '.join(params)}) -> {results[0]}"
            wrong.append(f"'{name}' is {_describe(ty)}, the ABI needs {want}")
    if wrong:
        return _Refusal(f"capsule export {'; export '.join(wrong)}")
    assert isinstance(memory, wasmtime.MemoryType)
    return int(memory.limits.min) * int(memory.page_size)


class ModuleCache:
    """Admitted modules by digest: a bounded in-memory LRU over an optional disk cache.

    Thread-safe.  Two threads missing on the same module at once both compile it (the second
    result replaces the first); compiling is never done under the lock.
    """

    def __init__(self, runtime: _Runtime, capacity: int = CACHE_CAPACITY) -> None:
        if capacity < 1:
            raise ValueError("capacity must be >= 1")
        self._rt = runtime
        self._capacity = capacity
        self._lock = threading.Lock()
        self._entries: OrderedDict[str, _Capsule | _Refusal] = OrderedDict()
        self.compiles = 0
        self.memory_hits = 0
        self.disk_hits = 0
        self.disk_writes = 0
        self.evictions = 0

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def load(self, data: bytes, cache_dir: str | None = None) -> _Capsule:
        """The admitted module for ``data`` (the digest is always computed here, never trusted).

        Raises:
            InvalidParams: ``data`` is not a module, does not compile, or is not a capsule.
        """
        digest = module_digest(data)
        with self._lock:
            entry = self._entries.get(digest)
            if entry is not None:
                self._entries.move_to_end(digest)
                self.memory_hits += 1
        if entry is None:
            entry = self._from_disk(digest, cache_dir) if cache_dir else None
            if entry is None:
                entry = self._compile(data, digest, cache_dir)
            with self._lock:
                self._entries[digest] = entry
                self._entries.move_to_end(digest)
                while len(self._entries) > self._capacity:
                    self._entries.popitem(last=False)
                    self.evictions += 1
        if isinstance(entry, _Refusal):
            raise InvalidParams(entry.message, param="module", allowed=_ABI)
        return entry

    def _compile(self, data: bytes, digest: str, cache_dir: str | None) -> _Capsule | _Refusal:
        source: str | bytes
        if data[:4] == _WASM_MAGIC:
            source = bytes(data)
        else:
            try:
                source = bytes(data).decode("utf-8")
            except UnicodeDecodeError:
                raise InvalidParams(
                    "module is neither a WebAssembly binary (no \\0asm magic) nor UTF-8 WAT text",
                    param="module",
                ) from None
            if not source.strip():
                raise InvalidParams("module is empty", param="module")
        with self._lock:
            self.compiles += 1
        try:
            module = wasmtime.Module(self._rt.engine, source)
        except wasmtime.WasmtimeError as exc:
            kind = "WebAssembly binary" if isinstance(source, bytes) else "WAT text"
            raise InvalidParams(f"module does not compile as {kind}: {exc}", param="module") from exc
        capsule = self._capsule(module, digest)
        if cache_dir and isinstance(capsule, _Capsule):
            self._to_disk(capsule, cache_dir)
        return capsule

    def _capsule(self, module: wasmtime.Module, digest: str) -> _Capsule | _Refusal:
        verdict = _admit(module)
        if isinstance(verdict, _Refusal):
            return verdict
        return _Capsule(digest, module, _wasm_ffi.address_of(module), verdict)

    # The disk cache.  Any OSError only loses the cache, never the call.

    def _dir(self, cache_dir: str) -> str | None:
        path = os.path.join(cache_dir, "wasm")
        try:
            os.makedirs(path, mode=0o700, exist_ok=True)
            st = os.lstat(path)
        except OSError as exc:
            log.warning("wasm disk cache unavailable at %s: %s", path, exc)
            return None
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o022:
            log.warning("wasm disk cache %s is not a private directory of ours: not used", path)
            return None
        return path

    def _file(self, directory: str, digest: str) -> str:
        return os.path.join(directory, f"{digest}.{self._rt.cache_tag}.cwasm")

    def _from_disk(self, digest: str, cache_dir: str) -> _Capsule | None:
        directory = self._dir(cache_dir)
        if directory is None:
            return None
        path = self._file(directory, digest)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        except OSError as exc:
            log.warning("wasm disk cache: cannot open %s: %s", path, exc)
            return None
        with os.fdopen(fd, "rb") as f:
            st = os.fstat(f.fileno())
            if not stat.S_ISREG(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o077:
                log.warning("wasm disk cache: %s is not a private file of ours: ignored", path)
                return None
            blob = f.read()
        head = len(_DISK_MAGIC)
        payload = blob[head + 64 :]
        ok = (
            blob[:head] == _DISK_MAGIC
            and blob[head : head + 32] == bytes.fromhex(digest)
            and blob[head + 32 : head + 64] == blake3.blake3(payload).digest()
        )
        module = None
        if ok:
            try:
                module = wasmtime.Module.deserialize(self._rt.engine, payload)
            except wasmtime.WasmtimeError as exc:
                log.warning("wasm disk cache: %s does not deserialize: %s", path, exc)
        if module is None:
            log.warning("wasm disk cache: %s is damaged or stale: removed", path)
            try:
                os.unlink(path)
            except OSError:
                pass  # another process may have replaced or removed it already
            return None
        capsule = self._capsule(module, digest)
        if not isinstance(capsule, _Capsule):  # we only write admitted modules
            return None
        with self._lock:
            self.disk_hits += 1
        return capsule

    def _to_disk(self, capsule: _Capsule, cache_dir: str) -> None:
        directory = self._dir(cache_dir)
        if directory is None:
            return
        payload = bytes(capsule.module.serialize())
        blob = _DISK_MAGIC + bytes.fromhex(capsule.digest) + blake3.blake3(payload).digest() + payload
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=".cwasm")  # mode 0600
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(blob)
            os.replace(tmp, self._file(directory, capsule.digest))
        except OSError as exc:
            log.warning("wasm disk cache: cannot write %s: %s", directory, exc)
            try:
                os.unlink(tmp)
            except OSError:
                pass  # already gone
            return
        with self._lock:
            self.disk_writes += 1
        self._prune(directory)

    def _prune(self, directory: str) -> None:
        try:
            with os.scandir(directory) as it:
                files = [e for e in it if e.name.endswith(".cwasm") and not e.name.startswith(".")]
            if len(files) <= DISK_CAPACITY:
                return
            files.sort(key=lambda e: e.stat().st_mtime)
            for e in files[: len(files) - DISK_CAPACITY]:
                os.unlink(e.path)
        except OSError as exc:
            log.warning("wasm disk cache: cannot prune %s: %s", directory, exc)


def statistics() -> WasmStats:
    rt = _runtime()
    c = rt.cache
    return WasmStats(
        compiles=c.compiles,
        memory_hits=c.memory_hits,
        disk_hits=c.disk_hits,
        disk_writes=c.disk_writes,
        evictions=c.evictions,
        cached_modules=len(c),
        epoch_increments=rt.ticker.epochs,
        live_deadlines=rt.ticker.live(),
    )


def clear_cache() -> None:
    """Forget every compiled module held in memory (the disk cache stays)."""
    _runtime().cache.clear()


def new_cache(capacity: int = CACHE_CAPACITY) -> ModuleCache:
    """A separate cache on the shared engine (tools and tests)."""
    return ModuleCache(_runtime(), capacity)


# -- the method -------------------------------------------------------------------------------


def _encode_params(extra: Any) -> bytes:
    """The capsule's params as canonical JSON (keys sorted, no whitespace, UTF-8, no NaN)."""
    if not extra:
        return b"{}"
    if not isinstance(extra, dict):
        raise InvalidParams(f"capsule params must be an object, got {type(extra).__name__}", param="_extra")
    try:
        return _json(extra)
    except (TypeError, ValueError):
        pass
    for key, value in extra.items():  # name the culprit
        try:
            _json({str(key): value})
        except (TypeError, ValueError) as exc:
            raise InvalidParams(
                f"capsule param {key!r} cannot be encoded as JSON: {exc}",
                param=str(key),
                allowed="a JSON value",
            ) from None
    raise InvalidParams("capsule params cannot be encoded as JSON (mixed key types?)", param="_extra")


def _json(value: Any) -> bytes:
    text = json.dumps(value, ensure_ascii=False, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return text.encode("utf-8")


def run_capsule(call: Call) -> Output:
    """``wasm.run``: run ``call.module`` on ``call.input`` following the ABI (module docstring).

    Returns:
        ``Output`` with the capsule's output, the fuel it used and its final memory size.

    Raises:
        InvalidParams, BudgetExceeded, CapsuleTimeout, CapsuleFailed: see the module docstring.

    Cancellation: the call is synchronous; it ends by the deadline at the latest.
    """
    data = call.module
    if not data:
        raise InvalidParams("wasm.run needs a module: pass --module PATH", param="module")
    p = call.params
    fuel: int = p["fuel"]
    memory_limit: int = p["max_memory_mb"] * _MIB
    seconds: float = p["timeout_ms"] / 1000
    if call.deadline_s is not None and call.deadline_s < seconds:
        seconds = call.deadline_s
    params = _encode_params(p.get("_extra"))
    rt = _runtime()
    capsule = rt.cache.load(data, call.ctx.cache_dir if call.ctx is not None else None)
    label = f"capsule {capsule.digest[:12]}"
    if capsule.initial_memory_bytes > memory_limit:
        raise BudgetExceeded(
            f"{label} starts with {capsule.initial_memory_bytes} bytes of memory, over the "
            f"max_memory_mb cap of {p['max_memory_mb']} MiB ({memory_limit} bytes)",
            kind="memory",
            used=capsule.initial_memory_bytes,
            limit=memory_limit,
        )
    needed = call.input.nbytes + len(params)
    if needed > memory_limit:
        raise BudgetExceeded(
            f"{label}: the input and params ({needed} bytes) cannot fit under the max_memory_mb cap of "
            f"{p['max_memory_mb']} MiB",
            kind="memory",
            used=needed,
            limit=memory_limit,
        )
    if seconds <= 0:
        raise CapsuleTimeout(f"{label}: no time left before its deadline", deadline_s=max(seconds, 0.0))
    result = _wasm_ffi.invoke(
        engine=rt.engine_address,
        module=capsule.address,
        ticker=rt.ticker,
        callback=rt.callback,
        data=call.input,
        params=params,
        fuel=fuel,
        memory_limit=memory_limit,
        seconds=seconds,
        label=label,
    )
    return Output(result.output, fuel=result.fuel_used, peak_memory_bytes=result.memory_bytes)


_PARAMS = (
    Param(
        "fuel",
        "int",
        default=DEFAULT_FUEL,
        minimum=1,
        maximum=MAX_FUEL,
        doc="fuel budget (deterministic instruction metering); the fuel used is the cost",
    ),
    Param(
        "max_memory_mb", "int", default=256, minimum=1, maximum=4096, doc="cap on the capsule's linear memory"
    ),
    Param(
        "timeout_ms",
        "int",
        default=10_000,
        minimum=1,
        maximum=600_000,
        doc="wall-clock limit (the job's deadline applies too, whichever is sooner)",
    ),
)


def _fuel_bounded_tiny(params: dict[str, Any]) -> bool:
    fuel = params.get("fuel", DEFAULT_FUEL)
    try:
        return 0 < int(fuel) <= INLINE_FUEL
    except (TypeError, ValueError):
        return False


def make(ctx: UnitContext) -> Library:
    """The ``wasm`` library (the engine and caches are per process, shared by every context)."""
    del ctx  # the cache directory is read from each call's context
    return Library(
        name="wasm",
        summary="sandboxed WebAssembly capsules (wasmtime): fuel-metered, memory-capped, deadline-bound",
        methods=(
            Method(
                name="wasm.run",
                fn=run_capsule,
                # Capsules run up to timeout_ms; wasmtime releases the GIL while wasm runs, so a
                # thread keeps the trio loop responsive and lets capsules run in parallel.
                executor="thread",
                # ... unless the fuel budget itself bounds the run under ~1 ms (an empty loop burns
                # 1e9 fuel in about 2.2 s here): then the thread hop would cost more than the call.
                inline_if=_fuel_bounded_tiny,
                params=_PARAMS,
                deterministic=True,
                cost="fuel",
                summary=(
                    "run the job's module (wasm or WAT) on the input: exports memory, alloc(len) -> ptr and "
                    "run(in_ptr, in_len, params_ptr, params_len) -> (ptr << 32 | len); every param other "
                    "than fuel, max_memory_mb and timeout_ms is passed to the capsule as a JSON object"
                ),
                needs_module=True,
            ),
        ),
    )
