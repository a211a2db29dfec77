"""The boids kernel (``units/_flock.py``) against an O(N²) reference, and the ``boids`` unit on a
real arena (and on its private fallback)."""

from __future__ import annotations

import json
import pickle
from collections.abc import Iterator, Mapping

import numpy as np
import pytest

from inos_node.arena import Arena, PingPong
from inos_node.engine.spec import Call, Library, Method, UnitContext
from inos_node.errors import CapsuleTimeout, InvalidParams
from inos_node.units import _flock, boids
from inos_node.units._flock import FlockParams
from inos_node.wire.layout import layout_constants

IDX_BOIDS = layout_constants()["idxBoids"]
NO_CAP = 1 << 30


# --- the O(N²) reference ---------------------------------------------------------------------


def brute_force(state: np.ndarray, p: FlockParams) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(neighbour matrix, squared distances, accelerations) by the definition, in float64."""
    pos = state[:3].astype(np.float64)
    vel = state[3:].astype(np.float64)
    world = p.world_size
    d = pos[:, None, :] - pos[:, :, None]  # d[:, i, j] = x_j - x_i
    d -= world * np.round(d / world)  # minimum image
    d2 = (d * d).sum(axis=0)
    nb = (d2 > 0) & (d2 < p.perception_radius**2)
    acc = np.zeros((3, state.shape[1]))
    for i in range(state.shape[1]):
        js = np.flatnonzero(nb[i])
        if js.size == 0:
            continue
        di = d[:, i, js]
        close = d2[i, js] < p.separation_radius**2
        sep = -(di[:, close] / d2[i, js][close]).sum(axis=1)
        ali = vel[:, js].mean(axis=1) - vel[:, i]
        coh = di.mean(axis=1)
        acc[:, i] = p.separation_weight * sep + p.alignment_weight * ali + p.cohesion_weight * coh
    return nb, d2, acc


def ambiguous(d2: np.ndarray, p: FlockParams) -> np.ndarray:
    """Boids with a pair within float rounding of a radius (float32 may decide either way)."""
    near = np.zeros(d2.shape, bool)
    for r in (p.perception_radius, p.separation_radius):
        near |= np.abs(d2 - r * r) < 1e-4
    out: np.ndarray = np.asarray(near.any(axis=1))
    return out


CASES = [
    # (count, world, seed): integer and fractional cell counts, the smallest grid (G = 3),
    # and a crowded world where every boid has many neighbours
    (300, 6.0, 1),
    (400, 7.3, 2),
    (120, 3.0, 3),
    (500, 4.5, 4),
]


@pytest.mark.parametrize(("count", "world", "seed"), CASES)
def test_grid_neighbours_equal_all_pairs(count: int, world: float, seed: int) -> None:
    p = FlockParams(world_size=world, max_per_cell=NO_CAP)
    state = _flock.init_state(count, p, seed)
    nb, d2, _ = brute_force(state, p)
    i, j = _flock.neighbour_pairs(state, p)
    found = np.zeros_like(nb)
    found[i, j] = True
    assert len(set(zip(i.tolist(), j.tolist(), strict=True))) == i.shape[0], "a pair was found twice"
    differ = found != nb
    near_radius = np.abs(d2 - p.perception_radius**2) < 1e-4
    assert not (differ & ~near_radius).any()
    assert nb.sum() > count  # the case really has neighbours


@pytest.mark.parametrize(("count", "world", "seed"), CASES)
def test_grid_forces_equal_all_pairs(count: int, world: float, seed: int) -> None:
    p = FlockParams(
        world_size=world,
        max_per_cell=NO_CAP,
        separation_weight=1.3,
        alignment_weight=0.7,
        cohesion_weight=1.1,
    )
    state = _flock.init_state(count, p, seed)
    _, d2, ref = brute_force(state, p)
    got = _flock.accelerations(state, p)
    ok = ~ambiguous(d2, p)
    scale = np.abs(ref).max()
    np.testing.assert_allclose(got[:, ok], ref[:, ok], rtol=1e-4, atol=1e-5 * scale)


def test_small_chunks_and_the_sparse_lookup_give_the_same_pairs(monkeypatch: pytest.MonkeyPatch) -> None:
    # many chunks and counting passes (the sizes a 50k flock gets), on a dense case ...
    p = FlockParams(world_size=6.0, max_per_cell=NO_CAP)
    state = _flock.init_state(500, p, 10)
    whole = _flock.accelerations(state, p)
    monkeypatch.setattr(_flock, "_CHUNK_PAIRS", 3000)
    monkeypatch.setattr(_flock, "_SEGMENT_CELLS", 7)
    np.testing.assert_array_equal(_flock.accelerations(state, p), whole)
    # ... and a small flock in a huge world (no G³ table: searchsorted on the occupied cells),
    # clustered around a corner so that it straddles the wrap on every axis
    big = FlockParams(world_size=300.0, max_per_cell=NO_CAP)
    cluster = _flock.init_state(300, big, 11)
    cluster[:3] = np.mod(np.random.default_rng(0).uniform(-2.5, 2.5, (3, 300)), 300.0).astype(np.float32)
    cluster[:3][cluster[:3] >= np.float32(300.0)] = 0
    assert 300**3 > 16 * 300 + (1 << 16)
    nb, d2, ref = brute_force(cluster, big)
    i, j = _flock.neighbour_pairs(cluster, big)
    found = np.zeros_like(nb)
    found[i, j] = True
    assert nb.sum() > 300
    assert not ((found != nb) & (np.abs(d2 - 1.0) >= 1e-4)).any()
    ok = ~ambiguous(d2, big)
    got = _flock.accelerations(cluster, big)
    np.testing.assert_allclose(got[:, ok], ref[:, ok], rtol=1e-4, atol=1e-5 * np.abs(ref).max())


def test_tiny_flocks() -> None:
    for count in (1, 2, 3):
        p = FlockParams(world_size=3.0)
        state = _flock.init_state(count, p, 0)
        out = np.empty_like(state)
        _flock.step(state, out, p)
        assert np.isfinite(out).all()


def test_cap_limits_candidates_to_the_first_boids_of_each_cell() -> None:
    p = FlockParams(world_size=6.0, max_per_cell=4)
    state = _flock.init_state(40, p, 5)
    # every boid in the cell [3.6, 4.8)³ (G = 5), spread along its diagonal
    state[:3] = np.linspace(3.7, 4.0, 40, dtype=np.float32)
    i, j = _flock.neighbour_pairs(state, p)
    assert set(j.tolist()) <= {0, 1, 2, 3}  # only the first 4 (by index) are anyone's candidates
    assert set(i.tolist()) == set(range(40))  # but every boid sees some


def test_cap_is_exact_while_it_does_not_bind() -> None:
    p_capped = FlockParams(world_size=12.0, max_per_cell=64)
    p_free = FlockParams(world_size=12.0, max_per_cell=NO_CAP)
    state = _flock.init_state(1000, p_free, 6)
    np.testing.assert_array_equal(_flock.accelerations(state, p_capped), _flock.accelerations(state, p_free))


def test_speeds_stay_within_bounds() -> None:
    p = FlockParams(world_size=8.0, min_speed=0.5, max_speed=2.0, separation_weight=4.0)
    state = _flock.init_state(600, p, 7)
    state[3:, 0] = 0.0  # stopped
    state[3:, 1] = [50.0, -40.0, 30.0]  # far too fast
    state[3:, 2] = [1e-4, 0.0, 0.0]  # too slow
    out = np.empty_like(state)
    ws = _flock.Workspace()
    for _ in range(30):
        _flock.step(state, out, p, ws)
        state, out = out, state
        speed = np.linalg.norm(state[3:].astype(np.float64), axis=0)
        assert speed.min() >= p.min_speed * (1 - 1e-5)
        assert speed.max() <= p.max_speed * (1 + 1e-5)


def test_positions_stay_in_the_world() -> None:
    p = FlockParams(world_size=5.0, max_speed=3.0, dt=0.5)
    state = _flock.init_state(300, p, 8)
    state[:3, :3] = [[0.0, 4.9999995, 2.0], [0.0, 2.0, 4.9999995], [2.0, 0.0, 0.0]]
    state[3:, :3] = [[-3.0, 3.0, 0.0], [0.0, 0.0, 3.0], [0.0, -3.0, -3.0]]  # heading out through faces
    out = np.empty_like(state)
    for _ in range(40):
        _flock.step(state, out, p)
        state, out = out, state
        assert (state[:3] >= 0).all()
        assert (state[:3] < np.float32(p.world_size)).all()
        assert np.isfinite(state).all()


def test_neighbours_across_the_wrap() -> None:
    p = FlockParams(world_size=10.0)
    state = np.zeros((6, 2), np.float32)
    state[:3, 0] = [0.1, 5.0, 5.0]
    state[:3, 1] = [9.8, 5.0, 5.0]  # 0.3 away through the x = 0 face
    state[3, :] = 1.0
    i, j = _flock.neighbour_pairs(state, p)
    assert sorted(zip(i.tolist(), j.tolist(), strict=True)) == [(0, 1), (1, 0)]
    acc = _flock.accelerations(state, FlockParams(world_size=10.0, alignment_weight=0, cohesion_weight=0))
    assert acc[0, 0] > 0 > acc[0, 1]  # pushed apart, each away through the face


def test_step_is_deterministic_for_a_seed() -> None:
    p = FlockParams(world_size=9.0)

    def run(seed: int) -> bytes:
        state = _flock.init_state(700, p, seed)
        out = np.empty_like(state)
        for _ in range(15):
            _flock.step(state, out, p)
            state, out = out, state
        return state.tobytes()

    assert run(11) == run(11)
    assert run(11) != run(12)
    np.testing.assert_array_equal(_flock.init_state(50, p, 3), _flock.init_state(50, p, 3))


def test_separation_pushes_close_boids_apart() -> None:
    p = FlockParams(world_size=10.0, alignment_weight=0.0, cohesion_weight=0.0, separation_radius=0.4)
    state = np.zeros((6, 2), np.float32)
    state[:3, 0] = [5.0, 5.0, 5.0]
    state[:3, 1] = [5.2, 5.0, 5.0]  # 0.2 apart, closer than the separation radius
    state[4, :] = 1.0  # both head +y, side by side
    out = np.empty_like(state)
    _flock.step(state, out, p)
    acc = _flock.accelerations(state, p)
    assert acc[0, 0] < 0 < acc[0, 1]
    np.testing.assert_allclose(acc[0], [-p.separation_weight / 0.2, p.separation_weight / 0.2], rtol=1e-4)
    assert out[0, 1] - out[0, 0] > state[0, 1] - state[0, 0]


def test_alignment_aligns_velocities() -> None:
    p = FlockParams(world_size=10.0, separation_weight=0.0, cohesion_weight=0.0, alignment_weight=2.0)
    state = np.zeros((6, 2), np.float32)
    state[:3, 0] = [5.0, 5.0, 5.0]
    state[:3, 1] = [5.6, 5.0, 5.0]  # neighbours, outside the separation radius
    state[3:, 0] = [1.0, 0.0, 0.0]
    state[3:, 1] = [0.0, 1.0, 0.0]  # 90 degrees apart

    def angle(s: np.ndarray) -> float:
        a, b = s[3:, 0].astype(np.float64), s[3:, 1].astype(np.float64)
        return float(np.arccos(a @ b / np.linalg.norm(a) / np.linalg.norm(b)))

    out = np.empty_like(state)
    before = angle(state)
    for _ in range(3):
        _flock.step(state, out, p)
        assert angle(out) < before
        before = angle(out)
        state, out = out, state
    # and a whole flock orders itself
    flock_p = FlockParams(world_size=6.0, separation_weight=0.0, cohesion_weight=0.0, alignment_weight=2.0)
    flock = _flock.init_state(400, flock_p, 9)
    start = _flock.polarisation(flock)
    buf = np.empty_like(flock)
    for _ in range(40):
        _flock.step(flock, buf, flock_p)
        flock, buf = buf, flock
    assert start < 0.1
    assert _flock.polarisation(flock) > 0.5


def test_kernel_rejects_bad_arguments() -> None:
    p = FlockParams()
    state = _flock.init_state(10, p, 0)
    with pytest.raises(ValueError, match="overlap"):
        _flock.step(state, state, p)
    with pytest.raises(ValueError, match="float32"):
        _flock.step(state, np.empty((6, 10), np.float64), p)
    with pytest.raises(ValueError, match="world_size"):
        FlockParams(world_size=2.0)
    with pytest.raises(ValueError, match="separation_radius"):
        FlockParams(separation_radius=2.0)
    with pytest.raises(ValueError, match="min_speed"):
        FlockParams(min_speed=3.0, max_speed=2.0)
    empty = np.zeros((6, 0), np.float32)
    assert _flock.step(empty, np.zeros((6, 0), np.float32), p) == _flock.StepStats(0, 0)


# --- the unit --------------------------------------------------------------------------------


@pytest.fixture
def arena(shm_dir: str) -> Iterator[Arena]:
    with Arena.create(size=layout_constants()["minArenaSize"], directory=shm_dir) as a:
        yield a


def _lib(arena: Arena | None) -> tuple[Library, UnitContext]:
    ctx = UnitContext(arena=arena)
    return boids.make(ctx), ctx


def _call(
    lib: Library, ctx: UnitContext, short: str, params: Mapping[str, object] | None = None, data: bytes = b""
) -> bytes:
    method = lib.method(short)
    assert method is not None
    out = method.fn(Call(memoryview(data), method.validate(params or {}), ctx))
    assert isinstance(out, bytes)
    return out


def test_library_shape() -> None:
    lib, _ = _lib(None)
    methods = {m.name: m for m in lib.methods}
    assert set(methods) == {"boids.step", "boids.snapshot", "boids.evolve"}
    assert methods["boids.step"].executor == "thread"
    assert methods["boids.snapshot"].executor == "inline"
    assert methods["boids.evolve"].executor == "process"
    assert all(m.cost == "call" for m in lib.methods)
    # a worker process gets the function by reference
    assert pickle.loads(pickle.dumps(methods["boids.evolve"].fn)) is methods["boids.evolve"].fn


def test_step_publishes_one_epoch_per_step(arena: Arena) -> None:
    lib, ctx = _lib(arena)
    before = arena.epoch(IDX_BOIDS)
    out = _call(lib, ctx, "step", {"count": 500, "steps": 7, "seed": 3})
    assert arena.epoch(IDX_BOIDS) == before + 7
    assert len(out) == 6 * 4 * 500
    _call(lib, ctx, "step", {"count": 500, "steps": 1})
    assert arena.epoch(IDX_BOIDS) == before + 8
    # the frame is in the arena for any reader, under the layout's index
    reader = PingPong.open(arena, boids.BUFFER_NAME)
    assert reader.epoch_index == IDX_BOIDS
    assert reader.shape == (6, 500)
    got = reader.read()
    assert got is not None
    assert got[0] == arena.epoch(IDX_BOIDS)
    np.testing.assert_array_equal(got[1], np.frombuffer(_call(lib, ctx, "snapshot"), "<f4").reshape(6, 500))
    reader.close()
    del got


@pytest.mark.parametrize("with_arena", [True, False])
def test_snapshot_equals_step_output(with_arena: bool, arena: Arena) -> None:
    lib, ctx = _lib(arena if with_arena else None)
    out = _call(lib, ctx, "step", {"count": 300, "steps": 4, "seed": 1})
    assert _call(lib, ctx, "snapshot") == out
    state = np.frombuffer(out, "<f4").reshape(6, 300)
    assert np.isfinite(state).all()


@pytest.mark.parametrize("with_arena", [True, False])
def test_snapshot_without_a_flock_is_a_clear_error(with_arena: bool, arena: Arena) -> None:
    lib, ctx = _lib(arena if with_arena else None)
    with pytest.raises(InvalidParams, match="run boids.step first"):
        _call(lib, ctx, "snapshot")


def test_step_matches_the_kernel_and_the_private_fallback(arena: Arena) -> None:
    params = {"count": 400, "steps": 5, "seed": 42, "alignment_weight": 1.7}
    lib_a, ctx_a = _lib(arena)
    lib_p, ctx_p = _lib(None)
    out = _call(lib_a, ctx_a, "step", params)
    assert _call(lib_p, ctx_p, "step", params) == out
    p = boids.flock_params(400, alignment_weight=1.7)
    state = _flock.init_state(400, p, 42)
    buf = np.empty_like(state)
    for _ in range(5):
        _flock.step(state, buf, p)
        state, buf = buf, state
    assert state.astype("<f4").tobytes() == out


def test_steps_continue_from_the_last_frame(arena: Arena) -> None:
    lib, ctx = _lib(arena)
    _call(lib, ctx, "step", {"count": 200, "steps": 3, "seed": 5})
    split = _call(lib, ctx, "step", {"count": 200, "steps": 3, "seed": 999})  # seed unused: flock exists
    lib2, ctx2 = _lib(None)
    whole = _call(lib2, ctx2, "step", {"count": 200, "steps": 6, "seed": 5})
    assert split == whole


def test_reset_and_count_change_reinitialise(arena: Arena) -> None:
    lib, ctx = _lib(arena)
    first = _call(lib, ctx, "step", {"count": 200, "steps": 2, "seed": 5})
    _call(lib, ctx, "step", {"count": 200, "steps": 2})
    assert _call(lib, ctx, "step", {"count": 200, "steps": 2, "seed": 5, "reset": True}) == first
    before = arena.epoch(IDX_BOIDS)
    other = _call(lib, ctx, "step", {"count": 333, "steps": 2, "seed": 5})
    assert len(other) == 6 * 4 * 333
    assert arena.epoch(IDX_BOIDS) == before + 2  # same index: the dashboard keeps watching it
    assert PingPong.open(arena, boids.BUFFER_NAME).shape == (6, 333)
    lib2, ctx2 = _lib(None)
    assert _call(lib2, ctx2, "step", {"count": 333, "steps": 2, "seed": 5}) == other
    assert arena.statistics() is not None


@pytest.mark.parametrize("with_arena", [True, False])
def test_step_loads_a_state_from_the_input(with_arena: bool, arena: Arena) -> None:
    lib, ctx = _lib(arena if with_arena else None)
    count = 250
    p = boids.flock_params(count)
    state = _flock.init_state(count, p, 77)
    state[0, 0] += np.float32(p.world_size)  # outside the world: wrapped on load
    out = _call(lib, ctx, "step", {"count": count, "steps": 1}, data=state.astype("<f4").tobytes())
    state[0, 0] -= np.float32(p.world_size)
    expect = np.empty_like(state)
    _flock.step(state, expect, p)
    np.testing.assert_allclose(np.frombuffer(out, "<f4").reshape(6, count), expect, atol=1e-5)
    # and the loaded flock is now the node's flock
    assert _call(lib, ctx, "snapshot") == out


def test_step_rejects_a_wrong_input_length(arena: Arena) -> None:
    lib, ctx = _lib(arena)
    with pytest.raises(InvalidParams, match="expected 2400 bytes") as info:
        _call(lib, ctx, "step", {"count": 100}, data=bytes(2396))
    assert info.value.param == "input"
    nan_state = np.full((6, 100), np.nan, np.float32).tobytes()
    with pytest.raises(InvalidParams, match="NaN") as info:
        _call(lib, ctx, "step", {"count": 100}, data=nan_state)
    assert info.value.param == "input"


def test_step_params_are_validated() -> None:
    lib, _ = _lib(None)
    method = lib.method("step")
    assert isinstance(method, Method)
    for bad in ({"steps": 0}, {"count": 0}, {"count": 1_000_001}, {"separation_weight": -1}, {"speed": 1}):
        with pytest.raises(InvalidParams):
            method.validate(bad)
    defaults = method.validate({})
    assert defaults == {
        "steps": 1,
        "count": 1000,
        "seed": 0,
        "reset": False,
        "separation_weight": 1.5,
        "alignment_weight": 1.0,
        "cohesion_weight": 1.0,
    }


def test_evolve_returns_deterministic_json_with_a_monotone_history() -> None:
    lib, ctx = _lib(None)
    params = {"population": 6, "generations": 4, "count": 80, "steps": 12, "seed": 3}
    out = _call(lib, ctx, "evolve", params)
    assert _call(lib, ctx, "evolve", params) == out
    doc = json.loads(out)
    assert set(doc) == {"best", "fitness", "history", "evaluations"}
    assert set(doc["best"]) == {"separation_weight", "alignment_weight", "cohesion_weight"}
    assert all(0.0 <= v <= 4.0 for v in doc["best"].values())
    history = doc["history"]
    assert len(history) == 4
    assert all(b >= a for a, b in zip(history, history[1:], strict=False))
    assert doc["fitness"] == history[-1]
    # the best weights really score that fitness
    weights = tuple(doc["best"][w] for w in ("separation_weight", "alignment_weight", "cohesion_weight"))
    assert boids.flock_fitness(weights, 80, 12, 3) == doc["fitness"]
    # elites are not re-scored: fewer evaluations than population x generations
    assert doc["evaluations"] < 6 * 4
    assert _call(lib, ctx, "evolve", {**params, "seed": 4}) != out


def test_evolve_refuses_too_much_work() -> None:
    lib, ctx = _lib(None)
    with pytest.raises(InvalidParams, match="boid-steps") as info:
        _call(lib, ctx, "evolve", {"population": 256, "generations": 1000, "count": 100_000, "steps": 10_000})
    assert info.value.param == "population"


def test_fitness_prefers_order_without_collisions() -> None:
    aligned = boids.flock_fitness((1.0, 3.0, 0.5), 150, 30, 1)
    inert = boids.flock_fitness((0.0, 0.0, 0.0), 150, 30, 1)
    crowded = boids.flock_fitness((0.0, 0.0, 4.0), 150, 30, 1)
    assert aligned > inert > crowded


def test_bench_measures_the_arena_path(arena: Arena) -> None:
    before = arena.epoch(IDX_BOIDS)
    rate = boids.bench_steps_per_s(300, steps=3, arena=arena, warmup=1)
    assert rate > 0
    assert arena.epoch(IDX_BOIDS) == before  # the bench has its own buffer and epoch
    assert arena.epoch(arena.reserve_epoch("boids.bench")) == 4
    assert arena.find_block("boids.bench") is None  # freed afterwards


async def test_through_the_engine(arena: Arena) -> None:
    from inos_node.engine.engine import Engine

    ctx = UnitContext(arena=arena)
    engine = Engine(ctx, [boids.make(ctx)])
    res = await engine.call("boids.step", b"", {"count": 200, "steps": 3, "seed": 2})
    assert res.ok, res.error
    assert (res.executor, res.cost) == ("thread", 1)
    snap = await engine.call("boids.snapshot")
    assert snap.ok
    assert bytes(snap.output) == bytes(res.output)  # type: ignore[arg-type]
    bad = await engine.call("boids.step", bytes(10), {"count": 200})
    assert bad.status.value == "invalidParams"
    assert "expected 4800 bytes" in bad.error
    neg = await engine.call("boids.step", b"", {"seed": -1})
    assert neg.status.value == "invalidParams"
    # without worker processes the engine runs a "process" method in a thread
    evo = await engine.call("boids.evolve", b"", {"population": 3, "generations": 2, "count": 40, "steps": 4})
    assert evo.ok, evo.error
    assert set(json.loads(bytes(evo.output))) == {"best", "fitness", "history", "evaluations"}  # type: ignore[arg-type]


def test_deadlines_stop_long_calls_between_steps(arena: Arena) -> None:
    lib, ctx = _lib(arena)
    step = lib.method("step")
    assert step is not None
    before = arena.epoch(IDX_BOIDS)
    call = Call(memoryview(b""), step.validate({"count": 2000, "steps": 100_000}), ctx, deadline_s=0.0)
    with pytest.raises(CapsuleTimeout, match="0 ms deadline after") as info:
        step.fn(call)
    done = int(str(info.value).split(" after ")[1].split(" of ")[0])
    assert done >= 1
    assert arena.epoch(IDX_BOIDS) == before + done  # what was committed stays published
    assert len(_call(lib, ctx, "snapshot")) == 6 * 4 * 2000
    evolve = lib.method("evolve")
    assert evolve is not None
    params = evolve.validate({"population": 256, "generations": 1000, "count": 32, "steps": 2})
    with pytest.raises(CapsuleTimeout, match="boids.evolve passed its 0 ms deadline"):
        evolve.fn(Call(memoryview(b""), params, ctx, deadline_s=0.0))
