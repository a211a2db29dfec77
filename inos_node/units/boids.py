"""The ``boids`` library: the seed's flocking showcase (3D boids in a periodic cube) and its
"evolutionary scaling" (a small genetic algorithm that tunes the flocking weights).

Data convention
---------------
A flock state is **raw little-endian float32, shape (6, count), C order**: six rows of ``count``
values, ``x, y, z, vx, vy, vz`` (so bytes ``[0, 4·count)`` are every boid's x, the next
``4·count`` every y, and so on; boid *i* is column *i*).  ``6 · 4 · count`` bytes in all.

The world is the periodic cube ``[0, W)³`` with ``W = max(3, cbrt(count))`` (one boid per unit
cube on average, perception radius 1), so the showcase looks the same at every flock size.  The
flocking rule, its defaults and the neighbour grid (with its per-cell cap) are documented in
``inos_node.units._flock``.

Methods (cost ``call``)
-----------------------
``boids.step`` (``inline``; deterministic for a seed, see below)
    Params: ``steps`` (1..100000, default 1), ``count`` (1..1000000, default 1000), ``seed``
    (default 0), ``reset`` (default false), ``separation_weight`` / ``alignment_weight`` /
    ``cohesion_weight`` (default 1.5 / 1.0 / 1.0, used for this call's steps).
    Input: empty, or a state to load (exactly ``24 · count`` bytes; anything else is
    ``InvalidParams(param="input")`` saying the expected bytes; non-finite values are refused;
    positions are wrapped into the world).
    The flock starts from, in order: the loaded input; a fresh flock from ``seed`` when
    ``reset`` is true, when there is no flock yet, or when ``count`` differs from the current
    flock's (``seed`` is read only then); otherwise the flock's last frame.  It then advances
    ``steps`` steps, **publishing one epoch per step**, and outputs the final state.
    Deterministic: the same starting state and params give the same bytes on any node (a
    verifier should pass ``reset=true`` or the input state, since the node's flock is state).
``boids.snapshot`` (``inline``; not deterministic: it reads the node's flock)
    No params, empty input.  Output: the current frame (a validated ping-pong read).  Without a
    flock it is ``InvalidParams``: "run boids.step first".
``boids.evolve`` (``process``; deterministic for a seed)
    Params: ``population`` (2..256, default 12), ``generations`` (1..1000, default 5),
    ``count`` (2..100000, default 300), ``steps`` (2..10000, default 60), ``seed`` (default 0).
    ``population · generations · count · steps`` may not exceed ``EVOLVE_MAX_BOID_STEPS``.
    Output: JSON ``{"best": {"separation_weight": .., "alignment_weight": ..,
    "cohesion_weight": ..}, "fitness": f, "history": [best fitness after each generation],
    "evaluations": n}``.  See ``evolve_weights`` for the fitness and the algorithm.

Where the flock lives
---------------------
With an arena (``call.ctx.arena``), the flock is the arena ping-pong buffer ``"boids.flock"``
published on epoch ``idxBoids`` (``sab_layout.capnp``): each step reads the last frame, writes
the other slot (``begin()``) and ``commit()``s it, so the dashboard and any subscriber can render
every frame without tearing.  A node holds one flock; a step with another ``count`` frees the
old buffer and makes one of the new size under the same name and epoch index (readers see the
shape change with the next epoch).  Without an arena (``inos exec``, tools), the flock lives in
a private two-slot numpy double buffer with the same begin/commit/read semantics, kept for the
life of the library object.

A step with another ``count`` frees the old block while a reader in another process may still
hold a ``PingPong`` on it: readers should re-open ``"boids.flock"`` when
``arena.find_block("boids.flock").offset`` (or the shape) changes.

The executors are ``inline`` as asked for now; a long ``boids.step`` then holds the trio loop
(about 15-25 ms per step at 10,000 boids and 60-90 ms at 50,000 on the 2-core dev machine), so
``step`` honours ``call.deadline_s`` between steps (``CapsuleTimeout``; the frames already
committed stay published).  ``thread`` works too: one lock serialises the flock's writer and
``snapshot`` (which then waits for a running step).
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from inos_node.engine.spec import Call, Library, Method, Param, UnitContext
from inos_node.errors import ArenaError, ArenaExhausted, BudgetExceeded, CapsuleTimeout, InvalidParams
from inos_node.units import _flock
from inos_node.units._flock import FlockParams

__all__ = [
    "BUFFER_NAME",
    "COLLISION_PENALTY",
    "EVOLVE_MAX_BOID_STEPS",
    "EvolveResult",
    "bench_steps_per_s",
    "evolve_weights",
    "flock_fitness",
    "flock_params",
    "make",
]

BUFFER_NAME = "boids.flock"
EVOLVE_MAX_BOID_STEPS = 200_000_000  # about 5-10 minutes of one core: beyond that, split the job
_ROWS = 6
_ITEM = 4  # float32
_WEIGHTS = ("separation_weight", "alignment_weight", "cohesion_weight")
_DEFAULTS = FlockParams()
_GENE_LOW, _GENE_HIGH = 0.0, 4.0  # the GA searches each weight in this range
COLLISION_PENALTY = 1.0


def flock_params(
    count: int,
    separation_weight: float = _DEFAULTS.separation_weight,
    alignment_weight: float = _DEFAULTS.alignment_weight,
    cohesion_weight: float = _DEFAULTS.cohesion_weight,
) -> FlockParams:
    """The unit's flocking rule for a flock of ``count``: the kernel's defaults, an auto-sized
    world (``_flock.auto_world_size``), and the given weights."""
    return replace(
        _DEFAULTS,
        world_size=_flock.auto_world_size(count, _DEFAULTS.perception_radius),
        separation_weight=separation_weight,
        alignment_weight=alignment_weight,
        cohesion_weight=cohesion_weight,
    )


# --- the flock's double buffer ---------------------------------------------------------------


class _PrivatePingPong:
    """Two private numpy slots with the arena ping-pong's writer/reader semantics.

    Frame ``f`` (``f >= 1``) lives in slot ``f & 1``; ``begin()`` hands out the slot the next
    frame goes to, ``commit()`` makes it the current frame.  Used when there is no arena.
    """

    def __init__(self, shape: tuple[int, int]) -> None:
        self._slots = np.zeros((2, *shape), np.float32)
        self.frame = 0

    def begin(self) -> np.ndarray:
        slot: np.ndarray = self._slots[(self.frame + 1) & 1]
        return slot

    def commit(self) -> int:
        self.frame += 1
        return self.frame

    def read(self, fn: Any = None) -> tuple[int, Any] | None:
        """``(frame, copy of the frame)`` (or ``fn(view)``), None before the first frame."""
        if self.frame == 0:
            return None
        view = self._slots[self.frame & 1]
        return self.frame, (view.copy() if fn is None else fn(view))

    def free(self) -> None:
        self._slots = np.zeros((2, 0, 0), np.float32)


@dataclass(slots=True)
class _Flock:
    count: int
    buffer: Any  # arena PingPong or _PrivatePingPong
    workspace: _flock.Workspace
    frames: int = 0  # frames this object committed to the buffer (0: nothing to continue from)


class _Boids:
    """The flock of one library instance (one node or one tool), and the step/snapshot methods."""

    def __init__(self, ctx: UnitContext, name: str = BUFFER_NAME, epoch_name: str | None = None) -> None:
        self._arena = ctx.arena
        self._name = name
        self._epoch_name = epoch_name  # None: the layout's idxBoids; else a reserved dynamic index
        self._lock = threading.Lock()
        self._flock: _Flock | None = None

    def close(self) -> None:
        """Free the flock's buffer (the arena block, or the private slots)."""
        with self._lock:
            flock, self._flock = self._flock, None
            if flock is not None:
                flock.buffer.free()

    # -- buffer management (under the lock) --

    def _flock_of(self, count: int) -> _Flock:
        """The flock buffer for ``count`` boids (freeing a buffer of another size first)."""
        flock = self._flock
        if flock is not None and flock.count == count:
            return flock
        if flock is not None:
            self._flock = None
            flock.buffer.free()
        self._flock = _Flock(count, self._new_buffer(count), _flock.Workspace())
        return self._flock

    def _new_buffer(self, count: int) -> Any:
        if self._arena is None:
            return _PrivatePingPong((_ROWS, count))
        from inos_node.arena import PingPong

        arena = self._arena
        if arena.find_block(self._name) is not None:
            # left by an earlier library object on this arena: this one takes over (a new flock)
            PingPong.open(arena, self._name).free()
        if self._epoch_name is None:
            from inos_node.wire.layout import layout_constants

            index = layout_constants()["idxBoids"]
        else:
            index = arena.reserve_epoch(self._epoch_name)
        try:
            return PingPong.create(arena, self._name, (_ROWS, count), np.float32, index)
        except ArenaExhausted as exc:
            need = 2 * _ROWS * _ITEM * count
            raise BudgetExceeded(
                f"the arena has no room for a flock of {count} boids ({need} bytes for two slots): {exc}",
                kind="memory",
                used=need,
            ) from exc

    # -- methods --

    def step(self, call: Call) -> bytes:
        p = call.params
        count: int = p["count"]
        params = flock_params(count, **{w: p[w] for w in _WEIGHTS})
        loaded = _load_state(call.input, count, params)
        deadline = _deadline(call.deadline_s)
        with self._lock:
            flock = self._flock_of(count)
            src = loaded
            if src is None and flock.frames and not p["reset"]:
                got = flock.buffer.read()  # a private copy of the last frame: no view outlives the call
                assert got is not None
                src = got[1]
            if src is None:
                src = _flock.init_state(count, params, p["seed"])
            buffer = flock.buffer
            for i in range(p["steps"]):
                if deadline is not None and i and time.perf_counter() > deadline:
                    raise CapsuleTimeout(
                        f"boids.step passed its {_ms(call.deadline_s)} ms deadline after {i} of "
                        f"{p['steps']} steps (frames up to there are published)",
                        deadline_s=call.deadline_s or 0.0,
                    )
                dst = buffer.begin()
                try:
                    _flock.step(src, dst, params, flock.workspace)
                except Exception:
                    # a half-written slot cannot be given back: drop the flock, the next call starts afresh
                    self._flock = None
                    flock.buffer.free()
                    raise
                buffer.commit()
                flock.frames += 1
                src = dst
            return _to_bytes(src)

    def snapshot(self, call: Call) -> bytes:
        del call
        with self._lock:
            got = None
            if self._flock is not None:
                if self._flock.frames:
                    got = self._flock.buffer.read()
            elif self._arena is not None and self._arena.find_block(self._name) is not None:
                from inos_node.arena import PingPong

                reader = PingPong.open(self._arena, self._name)  # written by another library object
                try:
                    got = reader.read()
                except ArenaError:
                    got = None  # never written since it was made: no frame to show
                finally:
                    reader.close()
            if got is not None:
                return _to_bytes(got[1])
        raise InvalidParams(
            "there is no flock on this node yet: run boids.step first",
            param=None,
            allowed="call boids.step before boids.snapshot",
        )


def _deadline(deadline_s: float | None) -> float | None:
    """The ``perf_counter`` time past which a method gives up by itself.

    The engine enforces deadlines first (it kills a worker process, or stops waiting for a
    thread); this is the backstop for threads and inline calls it cannot stop, so it allows a
    grace of 10 % + 50 ms rather than race the engine's own timeout.
    """
    if deadline_s is None:
        return None
    return time.perf_counter() + deadline_s * 1.1 + 0.05


def _ms(deadline_s: float | None) -> int:
    return round((deadline_s or 0.0) * 1000)


def _load_state(data: memoryview, count: int, params: FlockParams) -> np.ndarray | None:
    """The state in ``data`` (a private, validated copy), or None for an empty input."""
    n = data.nbytes
    if n == 0:
        return None
    expected = _ROWS * _ITEM * count
    if n != expected:
        raise InvalidParams(
            f"input is {n} bytes, expected {expected} bytes: a flock state of 6 x count={count} float32 "
            f"(rows x, y, z, vx, vy, vz), or no input",
            param="input",
            allowed=f"0 or exactly {expected} bytes",
        )
    state = np.frombuffer(data, "<f4").astype(np.float32).reshape(_ROWS, count)
    if not np.isfinite(state).all():
        raise InvalidParams(
            "input state has NaN or infinite values", param="input", allowed="finite float32 values"
        )
    world = np.float32(params.world_size)
    pos = state[:3]
    np.mod(pos, world, out=pos)
    pos[pos >= world] = 0
    return state


def _to_bytes(state: np.ndarray) -> bytes:
    return state.astype("<f4", copy=False).tobytes()


# --- evolution -------------------------------------------------------------------------------


def flock_fitness(weights: tuple[float, float, float], count: int, steps: int, seed: int) -> float:
    """How well a flock with these weights flocks: ``order − COLLISION_PENALTY · collisions``.

    A flock of ``count`` boids starts from ``init_state(seed)`` and runs ``steps`` steps.  Over
    the frames read by the last ``ceil(steps / 2)`` steps (the first half is the transient):

    * ``order``: the mean polarisation ``|mean of unit velocities|`` (1: all boids head the same
      way; about ``1/sqrt(count)`` for random headings);
    * ``collisions``: the mean number of boids closer than the separation radius to a boid
      (ordered close pairs / count, counted by the kernel's grid pass at no extra cost).

    Deterministic for its arguments.
    """
    params = flock_params(count, **dict(zip(_WEIGHTS, weights, strict=True)))
    src = _flock.init_state(count, params, seed)
    dst = np.empty_like(src)
    ws = _flock.Workspace()
    measured = steps - steps // 2
    order = collisions = 0.0
    for i in range(steps):
        stats = _flock.step(src, dst, params, ws)
        if i >= steps - measured:
            order += _flock.polarisation(src)
            collisions += stats.close_pairs / count
        src, dst = dst, src
    return (order - COLLISION_PENALTY * collisions) / measured


@dataclass(frozen=True, slots=True)
class EvolveResult:
    best: dict[str, float]
    fitness: float
    history: list[float]
    evaluations: int

    def to_json(self) -> bytes:
        return json.dumps(
            {
                "best": self.best,
                "fitness": self.fitness,
                "history": self.history,
                "evaluations": self.evaluations,
            },
            sort_keys=True,
        ).encode()


def evolve_weights(
    population: int, generations: int, count: int, steps: int, seed: int, *, deadline_s: float | None = None
) -> EvolveResult:
    """A generational GA over ``(separation, alignment, cohesion)`` weights in ``[0, 4]³``.

    * Generation 0: the kernel's default weights plus ``population − 1`` uniform random ones.
    * Each individual is scored once by ``flock_fitness(weights, count, steps, seed)``; every
      individual sees the same initial flock (common random numbers), so scores compare weights.
    * Next generation: the best ``max(1, population // 6)`` are kept unchanged (elitism, their
      scores are reused); the rest are children of two parents, each picked by a size-3
      tournament, mixed by blend crossover (BLX-0.5: each weight uniform in the parents'
      interval widened by half its length on both sides), then gaussian mutation (each weight
      with probability 0.3 gets ``N(0, 0.3²)``), clipped to ``[0, 4]``.
    * ``history[g]`` is the best fitness after generation ``g`` is scored; with elitism and
      deterministic scores it never decreases.

    Deterministic for its arguments (numpy PCG64 seeded with ``seed``).  Past ``deadline_s``
    seconds of wall-clock time (plus a grace, ``_deadline``) it raises ``CapsuleTimeout``,
    checked between evaluations.
    """
    deadline = _deadline(deadline_s)
    rng = np.random.default_rng(seed)
    low, high = _GENE_LOW, _GENE_HIGH
    genes = rng.uniform(low, high, (population, 3))
    genes[0] = [getattr(_DEFAULTS, w) for w in _WEIGHTS]
    scores = np.full(population, np.nan)
    elite = max(1, population // 6)
    history: list[float] = []
    evaluations = 0
    for gen in range(generations):
        for i in range(population):
            if np.isnan(scores[i]):
                if deadline is not None and time.perf_counter() > deadline:
                    raise CapsuleTimeout(
                        f"boids.evolve passed its {_ms(deadline_s)} ms deadline in generation {gen} "
                        f"after {evaluations} evaluations",
                        deadline_s=deadline_s or 0.0,
                    )
                sep, ali, coh = (float(x) for x in genes[i])
                scores[i] = flock_fitness((sep, ali, coh), count, steps, seed)
                evaluations += 1
        ranked = np.argsort(-scores, kind="stable")
        history.append(float(scores[ranked[0]]))
        if gen == generations - 1:
            break
        children = np.empty_like(genes)
        child_scores = np.full(population, np.nan)
        children[:elite] = genes[ranked[:elite]]
        child_scores[:elite] = scores[ranked[:elite]]
        for c in range(elite, population):
            a = genes[_tournament(rng, scores, 3)]
            b = genes[_tournament(rng, scores, 3)]
            lo, hi = np.minimum(a, b), np.maximum(a, b)
            span = hi - lo
            child = rng.uniform(lo - 0.5 * span, hi + 0.5 * span)
            mutate = rng.random(3) < 0.3
            child += mutate * rng.normal(0.0, 0.3, 3)
            children[c] = np.clip(child, low, high)
        genes, scores = children, child_scores
    best = int(np.argsort(-scores, kind="stable")[0])
    return EvolveResult(
        best={w: float(genes[best, k]) for k, w in enumerate(_WEIGHTS)},
        fitness=float(scores[best]),
        history=history,
        evaluations=evaluations,
    )


def _tournament(rng: np.random.Generator, scores: np.ndarray, size: int) -> int:
    picks = rng.integers(0, scores.shape[0], size)
    return int(picks[np.argmax(scores[picks])])


def _evolve(call: Call) -> bytes:
    """``boids.evolve``: module level and trio-free, so a worker process can run it."""
    p = call.params
    work = p["population"] * p["generations"] * p["count"] * p["steps"]
    if work > EVOLVE_MAX_BOID_STEPS:
        raise InvalidParams(
            f"population x generations x count x steps = {work} boid-steps is over the limit of "
            f"{EVOLVE_MAX_BOID_STEPS}; use a smaller population, fewer generations, boids or steps",
            param="population",
            allowed=f"population*generations*count*steps <= {EVOLVE_MAX_BOID_STEPS}",
        )
    result = evolve_weights(
        p["population"], p["generations"], p["count"], p["steps"], p["seed"], deadline_s=call.deadline_s
    )
    return result.to_json()


# --- benchmark ---------------------------------------------------------------------------------


def bench_steps_per_s(
    count: int, steps: int = 50, *, arena: Any = None, seed: int = 1, warmup: int = 2
) -> float:
    """Steps per second of the real ``boids.step`` path (kernel + ping-pong commit, one epoch per
    step) for a fresh flock of ``count`` from ``seed``, after ``warmup`` untimed steps.

    ``arena``: an ``inos_node.arena.Arena`` to publish in (buffer ``"boids.bench"`` on a reserved
    dynamic epoch, so a node's own flock is left alone; freed afterwards); None makes a temporary
    arena in ``/dev/shm`` just big enough, closed afterwards.
    """
    if arena is None:
        from inos_node.arena import Arena
        from inos_node.wire.layout import layout_constants

        size = max(layout_constants()["minArenaSize"], 4 * _ROWS * _ITEM * count + (8 << 20))
        with Arena.create(size=size) as temp:
            return bench_steps_per_s(count, steps, arena=temp, seed=seed, warmup=warmup)
    ctx = UnitContext(arena=arena)
    boids = _Boids(ctx, name="boids.bench", epoch_name="boids.bench")
    method = _step_method(boids.step)
    first = {"count": count, "seed": seed, "steps": max(1, warmup), "reset": True}
    try:
        boids.step(Call(memoryview(b""), method.validate(first), ctx))
        call = Call(memoryview(b""), method.validate({"count": count, "steps": steps}), ctx)
        t0 = time.perf_counter()
        boids.step(call)
        elapsed = time.perf_counter() - t0
    finally:
        boids.close()
    return steps / elapsed


# --- the library -------------------------------------------------------------------------------


def _weight_param(name: str) -> Param:
    return Param(
        name,
        "float",
        default=getattr(_DEFAULTS, name),
        minimum=0.0,
        maximum=100.0,
        doc=f"flocking weight (kernel default {getattr(_DEFAULTS, name)})",
    )


def _step_method(fn: Any) -> Method:
    return Method(
        "boids.step",
        fn,
        "thread",  # 15-25 ms per 10k step: off the trio loop (numpy releases the GIL in places)
        params=(
            Param(
                "steps", "int", default=1, minimum=1, maximum=100_000, doc="steps to advance (one epoch each)"
            ),
            Param(
                "count",
                "int",
                default=1000,
                minimum=1,
                maximum=1_000_000,
                doc="flock size; a different size than the current flock re-initialises it",
            ),
            Param(
                "seed",
                "int",
                default=0,
                minimum=0,
                doc="seed of a fresh flock (read only when one is made)",
            ),
            Param("reset", "bool", default=False, doc="start a fresh flock from seed"),
            *(_weight_param(w) for w in _WEIGHTS),
        ),
        deterministic=True,
        cost="call",
        summary="Advance the node's flock (or a loaded state) and publish every frame; output the final "
        "state, float32 LE (6, count): rows x, y, z, vx, vy, vz.",
    )


def make(ctx: UnitContext) -> Library:
    boids = _Boids(ctx)
    return Library(
        name="boids",
        summary="The flocking showcase: 3D boids in a periodic cube on the arena's ping-pong buffer, "
        "and a GA that evolves the flocking weights.",
        methods=(
            _step_method(boids.step),
            Method(
                "boids.snapshot",
                boids.snapshot,
                "inline",
                params=(),
                deterministic=False,
                cost="call",
                summary="The current frame of the node's flock, float32 LE (6, count).",
            ),
            Method(
                "boids.evolve",
                _evolve,
                "process",
                params=(
                    Param(
                        "population",
                        "int",
                        default=12,
                        minimum=2,
                        maximum=256,
                        doc="individuals per generation",
                    ),
                    Param("generations", "int", default=5, minimum=1, maximum=1000, doc="generations scored"),
                    Param(
                        "count", "int", default=300, minimum=2, maximum=100_000, doc="boids per trial flock"
                    ),
                    Param("steps", "int", default=60, minimum=2, maximum=10_000, doc="steps per trial"),
                    Param(
                        "seed",
                        "int",
                        default=0,
                        minimum=0,
                        doc="seeds the GA and the trial flock",
                    ),
                ),
                deterministic=True,
                cost="call",
                summary="Evolve (separation, alignment, cohesion) weights for order minus collisions; "
                "JSON result.",
            ),
        ),
    )
