"""A pure numpy 3D boids kernel: separation, alignment and cohesion on a uniform grid.

State layout (structure of arrays, as the arena notes recommend): one ``float32`` array of
shape ``(6, N)``; rows are ``x, y, z, vx, vy, vz``.  The world is a periodic cube
``[0, world_size)³``: positions wrap and every distance is the minimum-image distance.

One step (``step(state, out, params)``), for every boid *i*:

* neighbours: the boids *j ≠ i* with ``0 < |d_ij| < perception_radius``, ``d_ij`` the
  minimum-image displacement from *i* to *j*;
* ``cohesion``   = mean of ``d_ij`` over the neighbours (the offset to their centre of mass);
* ``alignment``  = mean of ``v_j`` over the neighbours, minus ``v_i``;
* ``separation`` = ``-Σ d_ij / |d_ij|²`` over the neighbours closer than ``separation_radius``
  (a push away with strength 1/distance);
* ``a = separation_weight·separation + alignment_weight·alignment + cohesion_weight·cohesion``
  (a boid without neighbours gets ``a = 0``);
* ``v' = v + dt·a``, then its length is clamped to ``[min_speed, max_speed]`` (a zero velocity
  is given the heading +x first); ``x' = x + dt·v'``, wrapped into ``[0, world_size)``.

Neighbour search (no all-pairs): the world is cut into ``G³`` cells, ``G = floor(world_size /
perception_radius)`` (so a cell is at least one perception radius wide and every neighbour is in
one of the 27 cells around a boid's own).  Per step:

1. cell ids (float64, exact for float32 positions), a stable ``argsort`` by cell id, and cell
   starts/counts from a ``bincount`` table over the ``G³`` cells (or, when ``G³`` would be much
   larger than the flock, a ``searchsorted`` over the occupied cells);
2. each occupied cell's candidate count (its 27 neighbour cells' members, under the cap) by a
   periodic 3x3x3 box sum over the count table;
3. the occupied cells, sorted by candidate count, are cut into chunks of about
   ``_CHUNK_PAIRS`` padded pairs.  A chunk gathers its cells' candidate lists (27 ``start,
   length`` segments per cell, expanded with one ``repeat``/``arange``; the few cells on a face of
   the world add ±world_size to the candidates that come through it, so no pair needs wrap
   arithmetic), pads every list to the chunk's longest with +inf, and compares each member boid
   with its cell's padded list as one dense ``(3, boids, width)`` block (a row gather and a
   broadcast subtraction);
4. pairs with ``0 < d² < r²`` are kept (``flatnonzero``; they come out grouped by boid) and the
   per-boid sums are one ``np.add.reduceat`` over the kept pairs.

Memory is bounded by the chunk, not by N; the big scratch arrays live in a ``Workspace`` reused
from step to step (fresh megabyte arrays per chunk cost more in page faults than in arithmetic).

**Cap** (``max_per_cell``, default 16): only the first ``max_per_cell`` boids of each cell
(lowest index first, the stable sort's order) are *candidates* for other boids, so one boid looks
at no more than ``27·max_per_cell`` candidates however dense a cluster gets.  Every boid is still
updated.  While no cell holds more than ``max_per_cell`` boids the result equals the exact,
all-pairs definition above (the unit tests check this against an O(N²) reference).

Everything is deterministic: no randomness inside ``step``; ``init_state`` uses numpy's PCG64
seeded generator.  float32 throughout except cell ids (computed in float64 so a boid's cell is
exact to its float32 position).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

__all__ = [
    "FlockParams",
    "StepStats",
    "Workspace",
    "accelerations",
    "auto_world_size",
    "grid_size",
    "init_state",
    "neighbour_pairs",
    "polarisation",
    "step",
]

# Padded candidate pairs per chunk of the pair stage (whole cells; at least one cell).  A chunk's
# float arrays are then about 0.5 MiB each, cache-sized on the 2 MiB-L2 machine measured.
_CHUNK_PAIRS = 1 << 17
# Occupied cells per pass when counting candidates (bounds that pass's memory).
_SEGMENT_CELLS = 1 << 15
# Use a dense G³ count table while it is at most this many times the flock size (plus a floor).
_TABLE_FACTOR = 16
_TABLE_FLOOR = 1 << 16
# The cell width is world_size / G with G = floor(world_size / r · (1 - _CELL_SLACK)): a hair
# over r, so float rounding at a cell boundary never hides a neighbour two cells away.
_CELL_SLACK = 1e-6


@dataclass(frozen=True, slots=True)
class FlockParams:
    """The flocking rule and its world; validated on construction (``ValueError`` naming the field)."""

    separation_weight: float = 1.5
    alignment_weight: float = 1.0
    cohesion_weight: float = 1.0
    perception_radius: float = 1.0
    separation_radius: float = 0.4
    max_speed: float = 2.0
    min_speed: float = 0.5
    dt: float = 0.1
    world_size: float = 24.0
    max_per_cell: int = 16

    def __post_init__(self) -> None:
        for name in ("separation_weight", "alignment_weight", "cohesion_weight"):
            if not math.isfinite(getattr(self, name)):
                raise ValueError(f"{name} must be finite, got {getattr(self, name)!r}")
        if not (self.perception_radius > 0 and math.isfinite(self.perception_radius)):
            raise ValueError(f"perception_radius must be > 0, got {self.perception_radius!r}")
        if not (0 < self.separation_radius <= self.perception_radius):
            raise ValueError(
                f"separation_radius must be in (0, perception_radius={self.perception_radius}], "
                f"got {self.separation_radius!r}"
            )
        if not (0 <= self.min_speed <= self.max_speed and 0 < self.max_speed < math.inf):
            raise ValueError(
                f"need 0 <= min_speed <= max_speed and max_speed > 0, got min_speed={self.min_speed!r}, "
                f"max_speed={self.max_speed!r}"
            )
        if not (0 < self.dt < math.inf):
            raise ValueError(f"dt must be > 0, got {self.dt!r}")
        if not (3 * self.perception_radius <= self.world_size < math.inf):
            raise ValueError(
                f"world_size must be at least 3 * perception_radius = {3 * self.perception_radius}, "
                f"got {self.world_size!r}"
            )
        if not (isinstance(self.max_per_cell, int) and self.max_per_cell >= 1):
            raise ValueError(f"max_per_cell must be an integer >= 1, got {self.max_per_cell!r}")


@dataclass(frozen=True, slots=True)
class StepStats:
    """What one step saw (on the state it read), counted under the cap.

    ``neighbours``: ordered pairs (i, j) within the perception radius;
    ``close_pairs``: ordered pairs within the separation radius (each close pair counts twice
    when the cap does not bind).
    """

    neighbours: int
    close_pairs: int


def auto_world_size(count: int, perception_radius: float = 1.0, density: float = 1.0) -> float:
    """A world edge giving ``density`` boids per perception-radius cube (never under 3 radii)."""
    return float(max(3.0, (count / density) ** (1.0 / 3.0)) * perception_radius)


def grid_size(params: FlockParams) -> int:
    """Cells per axis, G >= 3; every cell is at least one perception radius wide."""
    return max(3, int(params.world_size / params.perception_radius * (1.0 - _CELL_SLACK)))


def init_state(count: int, params: FlockParams, seed: int) -> np.ndarray:
    """A fresh flock: positions uniform in the world, headings uniform on the sphere, speeds
    uniform in ``[min_speed, max_speed]``.  Deterministic for ``(count, params, seed)``."""
    rng = np.random.default_rng(seed)
    state = np.empty((6, count), np.float32)
    state[:3] = rng.random((3, count)) * params.world_size
    state[:3][state[:3] >= np.float32(params.world_size)] = 0.0
    heading = rng.normal(size=(3, count))
    norm = np.linalg.norm(heading, axis=0)
    norm[norm == 0] = 1.0
    speed = rng.uniform(params.min_speed, params.max_speed, count)
    state[3:] = heading / norm * speed
    return state


def polarisation(state: np.ndarray) -> float:
    """The order parameter ``|mean of unit velocities|``: 1 when every boid heads the same way."""
    v = state[3:].astype(np.float64)
    speed = np.sqrt((v * v).sum(axis=0))
    speed[speed == 0] = 1.0
    return float(np.linalg.norm((v / speed).mean(axis=1))) if state.shape[1] else 0.0


@dataclass(slots=True)
class _Grid:
    """The boids sorted by cell and the cell lookup, for one state."""

    order: np.ndarray  # original index of the k-th boid in cell order
    pos: np.ndarray  # (3, N) positions in cell order
    vel: np.ndarray  # (3, N) velocities in cell order
    first: np.ndarray  # (U + 1,) start of each occupied cell in sorted order, then N
    ucell: np.ndarray  # (U,) linear id of each occupied cell, ascending
    ucoord: np.ndarray  # (3, U) its cell coordinates
    table_count: np.ndarray | None  # (G³,) boids per cell (None: use searchsorted on ucell)
    table_start: np.ndarray | None


def _build_grid(state: np.ndarray, params: FlockParams) -> _Grid:
    n = state.shape[1]
    g = grid_size(params)
    coord = np.floor(state[:3].astype(np.float64) * (g / params.world_size)).astype(np.int64)
    np.clip(coord, 0, g - 1, out=coord)
    lin = (coord[0] * g + coord[1]) * g + coord[2]
    order = np.argsort(lin, kind="stable")
    lin_s = lin[order]
    is_first = np.empty(n, bool)
    is_first[0] = True
    np.not_equal(lin_s[1:], lin_s[:-1], out=is_first[1:])
    first_idx = np.flatnonzero(is_first)
    first = np.append(first_idx, n)
    ucell = lin_s[first_idx]
    ucoord = np.take(coord, order[first_idx], axis=1)
    table_count = table_start = None
    if g**3 <= _TABLE_FACTOR * n + _TABLE_FLOOR:
        table_count = np.bincount(lin_s, minlength=g**3)
        table_start = np.cumsum(table_count) - table_count
    pos = np.take(state[:3], order, axis=1)
    vel = np.take(state[3:], order, axis=1)
    return _Grid(order, pos, vel, first, ucell, ucoord, table_count, table_start)


def _ragged_arange(starts: np.ndarray, lengths: np.ndarray, total: int) -> np.ndarray:
    """``concatenate([arange(s, s + l) for s, l in zip(starts, lengths)])`` without the loop."""
    offsets = np.cumsum(lengths) - lengths
    out = np.repeat(starts - offsets, lengths)
    out += np.arange(total)
    return out


class Workspace:
    """Scratch buffers kept between steps, so that the pair stage does not allocate (and page
    fault) megabytes per chunk.  Not thread-safe: one per flock, used by one step at a time."""

    __slots__ = ("_buffers",)

    def __init__(self) -> None:
        self._buffers: dict[str, np.ndarray] = {}

    def get(self, name: str, shape: tuple[int, ...], dtype: type = np.float32) -> np.ndarray:
        size = math.prod(shape)
        buf = self._buffers.get(name)
        if buf is None or buf.dtype != dtype or buf.size < size:
            grown = max(size, (buf.size * 5 // 4) if buf is not None and buf.dtype == dtype else 0)
            buf = np.empty(grown, dtype)
            self._buffers[name] = buf
        return buf[:size].reshape(shape)

    @property
    def nbytes(self) -> int:
        return sum(b.nbytes for b in self._buffers.values())


@dataclass(slots=True)
class _Chunk:
    """The kept pairs of one chunk of boids, grouped by boid.  Arrays may be workspace views,
    valid until the next chunk."""

    boids: np.ndarray  # (nb,) sorted-order index of each boid of the chunk
    count: np.ndarray  # (nb,) neighbours per boid
    starts: np.ndarray  # (nb,) index of each boid's first kept pair (clipped to the last one)
    d: np.ndarray  # (3, nb, width) displacements to the padded candidates
    sel: np.ndarray  # (M,) kept pairs, flat indices into d[k] / d2
    d2: np.ndarray  # (M,) squared distance of the kept pairs
    j: np.ndarray  # (M,) neighbour index in sorted order


_OFFS = np.array([-1, 0, 1], np.int64)


@dataclass(slots=True)
class _Segments:
    """The 27 neighbour segments of some occupied cells, cell-major (segment ``27·c + o``,
    offset ``o = 9·(dx+1) + 3·(dy+1) + (dz+1)``)."""

    start: np.ndarray  # (27·nc,) first candidate, in sorted order
    length: np.ndarray  # (27·nc,) candidates under the cap
    edge: np.ndarray  # (ne,) the cells (0..nc-1) on a face of the world: only they wrap
    shift: np.ndarray  # (3, 27·ne) the x/y/z shift (0 or ±world_size) that unwraps each edge segment


def _segments(grid: _Grid, cells: np.ndarray, params: FlockParams) -> _Segments:
    """The neighbour segments of occupied cells ``cells`` (indices into ``grid.ucell``)."""
    g = grid_size(params)
    nc = cells.shape[0]
    lin_offs = ((_OFFS[:, None, None] * g + _OFFS[None, :, None]) * g + _OFFS[None, None, :]).reshape(-1)
    ids = np.take(grid.ucell, cells)[:, None] + lin_offs  # right for every cell not on a face
    coord = np.take(grid.ucoord, cells, axis=1)
    edge = np.flatnonzero(((coord == 0) | (coord == g - 1)).any(axis=0))
    world = np.float32(params.world_size)
    shift = np.zeros((3, edge.shape[0], 3, 3, 3), np.float32)
    if edge.shape[0]:
        ax, ay, az = (coord[k, edge, None] + _OFFS for k in range(3))  # (ne, 3) each
        for k, a in enumerate((ax, ay, az)):
            sh = np.where(a < 0, -world, np.where(a >= g, world, np.float32(0)))
            view = [slice(None), None, None, None]
            view[k + 1] = slice(None)
            shift[k] = sh[tuple(view)]
            a %= g
        ids[edge] = ((ax[:, :, None, None] * g + ay[:, None, :, None]) * g + az[:, None, None, :]).reshape(
            -1, 27
        )
    ids = ids.reshape(-1)
    cap = params.max_per_cell
    if grid.table_count is not None and grid.table_start is not None:
        length = np.minimum(grid.table_count[ids], cap)
        start = grid.table_start[ids]
    else:
        u = grid.ucell.shape[0]
        at = np.minimum(np.searchsorted(grid.ucell, ids), u - 1)
        length = np.where(grid.ucell[at] == ids, np.minimum(grid.first[at + 1] - grid.first[at], cap), 0)
        start = grid.first[at]
    del nc
    return _Segments(start, length, edge, shift.reshape(3, -1))


def _candidates_per_cell(grid: _Grid, params: FlockParams) -> np.ndarray:
    """Candidates (under the cap) in the 27 cells around each occupied cell."""
    cap = params.max_per_cell
    if grid.table_count is not None:
        # a 3x3x3 box sum over the periodic grid, one axis at a time
        g = grid_size(params)
        box = np.minimum(grid.table_count, cap).reshape(g, g, g)
        for axis in range(3):
            box = box + np.roll(box, 1, axis) + np.roll(box, -1, axis)
        per_cell: np.ndarray = box.reshape(-1)[grid.ucell]
        return per_cell
    u = grid.ucell.shape[0]
    out = np.empty(u, np.int64)
    for c0 in range(0, u, _SEGMENT_CELLS):
        cells = np.arange(c0, min(u, c0 + _SEGMENT_CELLS))
        out[c0 : c0 + cells.shape[0]] = _segments(grid, cells, params).length.reshape(-1, 27).sum(axis=1)
    return out


def _chunks(grid: _Grid, params: FlockParams, ws: Workspace) -> Iterator[_Chunk]:
    """The neighbour pairs, chunk by chunk.

    Cells are visited in order of their candidate count, so that the cells of one chunk have
    nearly the same count.  A chunk gathers its cells' candidate lists (27 segments each, shifted
    by ±world_size where a neighbour cell wrapped), pads each to the chunk's longest with +inf
    (never within range) and compares every member boid with its cell's padded list as one
    dense ``(3, boids, width)`` block: a row gather and a broadcast subtraction, no per-pair
    index arithmetic.
    """
    r2 = np.float32(params.perception_radius) ** 2
    members = np.diff(grid.first)
    per_cell = _candidates_per_cell(grid, params)
    # (a stable sort of 16-bit keys is a radix sort)
    keys = per_cell.astype(np.uint16) if per_cell.max(initial=0) < 1 << 16 else per_cell
    by_width = np.argsort(keys, kind="stable")
    # cut where the padded pairs (members x widest list so far) pass the budget
    work = np.cumsum(members[by_width] * per_cell[by_width])
    u = by_width.shape[0]
    c0 = 0
    while c0 < u:
        done = int(work[c0 - 1]) if c0 else 0
        c1 = min(u, max(c0 + 1, int(np.searchsorted(work, done + _CHUNK_PAIRS, side="right"))))
        cells = by_width[c0:c1]
        c0 = c1
        nc = cells.shape[0]
        width = int(per_cell[cells[-1]])
        # the chunk's candidate lists, one after the other: cpos[k, i] and cand[i] (sorted index)
        segs = _segments(grid, cells, params)
        seg_len = segs.length
        n_cand = int(seg_len.sum())
        seg_off = np.cumsum(seg_len) - seg_len
        cand = np.repeat(segs.start - seg_off, seg_len)
        cand += np.arange(n_cand)
        cpos = ws.get("cpos", (3, n_cand))
        for k in range(3):
            np.take(grid.pos[k], cand, out=cpos[k])
        if segs.edge.shape[0]:  # unwrap the candidates that come through a face of the world
            edge_seg = (segs.edge[:, None] * 27 + np.arange(27)).reshape(-1)
            for k in range(3):
                moved = np.flatnonzero(segs.shift[k] * (seg_len[edge_seg] > 0))
                if moved.shape[0]:
                    lens = seg_len[edge_seg[moved]]
                    at = _ragged_arange(seg_off[edge_seg[moved]], lens, int(lens.sum()))
                    cpos[k][at] += np.repeat(segs.shift[k][moved], lens)
        # each list padded to `width` with +inf (never in range); every member boid against its
        # cell's padded list
        n_members = members[cells]
        nb = int(n_members.sum())
        boids = _ragged_arange(grid.first[cells], n_members, nb)
        list_start = seg_off[::27]
        row_start = np.repeat(list_start, n_members)
        slot = np.repeat(np.arange(nc) * width - list_start, per_cell[cells])
        slot += np.arange(n_cand)
        pad = ws.get("pad", (3, nc * width))
        pad.fill(np.inf)
        for k in range(3):
            pad[k][slot] = cpos[k]
        d = ws.get("d", (3, nb, width))
        np.take(pad.reshape(3, nc, width), np.repeat(np.arange(nc), n_members), axis=1, out=d)
        d -= np.take(grid.pos, boids, axis=1)[:, :, None]
        d2 = ws.get("d2", (nb, width))
        tmp = ws.get("tmp", (nb, width))
        np.multiply(d[0], d[0], out=d2)
        np.multiply(d[1], d[1], out=tmp)
        d2 += tmp
        np.multiply(d[2], d[2], out=tmp)
        d2 += tmp
        keep = ws.get("keep", (nb, width), np.bool_)
        apart = ws.get("apart", (nb, width), np.bool_)
        np.less(d2, r2, out=keep)
        np.greater(d2, 0, out=apart)  # a boid is in its own list at distance 0 (as is an exact twin)
        keep &= apart
        sel = np.flatnonzero(keep)
        count = np.count_nonzero(keep, axis=1)
        starts = np.cumsum(count) - count
        np.minimum(starts, max(sel.shape[0] - 1, 0), out=starts)
        # index into cand: the row's list start plus the column (sel - row * width)
        at = np.repeat(row_start - np.arange(nb) * width, count)
        at += sel
        j = cand[at]
        d2_sel = d2.reshape(-1)[sel]
        yield _Chunk(boids, count, starts, d, sel, d2_sel, j)


def _accelerations_sorted(grid: _Grid, params: FlockParams, ws: Workspace) -> tuple[np.ndarray, StepStats]:
    n = grid.pos.shape[1]
    acc = np.empty((3, n), np.float32)
    sr2 = np.float32(params.separation_radius) ** 2
    wsep = np.float32(params.separation_weight)
    wali = np.float32(params.alignment_weight)
    wcoh = np.float32(params.cohesion_weight)
    neighbours = close = 0
    for ch in _chunks(grid, params, ws):
        cnt = ch.count
        has = cnt > 0
        m = ch.sel.shape[0]
        neighbours += m
        if m == 0:
            acc[:, ch.boids] = 0
            continue
        vi = np.take(grid.vel, ch.boids, axis=1)
        # rows 0-2: separation terms, 3-5: displacements, 6-8: neighbour velocities
        vals = ws.get("vals", (9, m))
        np.take(ch.d.reshape(3, -1), ch.sel, axis=1, out=vals[3:6])
        np.take(grid.vel, ch.j, axis=1, out=vals[6:9])
        near = ch.d2 < sr2
        close += int(np.count_nonzero(near))
        w = np.zeros(m, np.float32)
        np.divide(np.float32(1), ch.d2, out=w, where=near)
        np.multiply(vals[3:6], w, out=vals[0:3])
        sums = np.add.reduceat(vals, ch.starts, axis=1)  # (9, nb)
        sums[:, ~has] = 0
        inv = np.zeros(cnt.shape, np.float32)
        np.divide(np.float32(1), cnt, out=inv, where=has, casting="unsafe")
        a = wcoh * (sums[3:6] * inv)
        a += wali * (sums[6:9] * inv - vi * has)
        a -= wsep * sums[0:3]
        for k in range(3):  # (row by row: numpy's mixed slice/fancy assignment is slow)
            acc[k][ch.boids] = a[k]
    return acc, StepStats(neighbours, close)


def accelerations(state: np.ndarray, params: FlockParams, workspace: Workspace | None = None) -> np.ndarray:
    """The steering acceleration of every boid, ``(3, N)`` float32, in the state's order."""
    _check_state(state)
    if state.shape[1] == 0:
        return np.zeros((3, 0), np.float32)
    grid = _build_grid(state, params)
    acc_sorted, _ = _accelerations_sorted(grid, params, workspace or Workspace())
    acc = np.empty_like(acc_sorted)
    acc[:, grid.order] = acc_sorted
    return acc


def neighbour_pairs(state: np.ndarray, params: FlockParams) -> tuple[np.ndarray, np.ndarray]:
    """The ordered neighbour pairs ``(i, j)`` the grid finds (original indices, under the cap)."""
    _check_state(state)
    if state.shape[1] == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    grid = _build_grid(state, params)
    ii, jj = [], []
    for ch in _chunks(grid, params, Workspace()):
        ii.append(grid.order[np.repeat(ch.boids, ch.count)])
        jj.append(grid.order[ch.j])
    return np.concatenate(ii), np.concatenate(jj)


def step(
    state: np.ndarray, out: np.ndarray, params: FlockParams, workspace: Workspace | None = None
) -> StepStats:
    """Advance ``state`` by one ``dt`` into ``out`` (both ``(6, N)`` float32; must not overlap).

    Positions must lie in ``[0, world_size)`` (``init_state`` and every step keep them there).

    Pass the same ``workspace`` to every step of a flock to reuse its scratch memory.
    """
    _check_state(state)
    if out.shape != state.shape or out.dtype != np.float32:
        raise ValueError(f"out must be float32 {state.shape}, got {out.dtype} {out.shape}")
    if np.shares_memory(state, out):
        raise ValueError("state and out must not overlap (step reads one slot and writes the other)")
    n = state.shape[1]
    if n == 0:
        return StepStats(0, 0)
    grid = _build_grid(state, params)
    acc_sorted, stats = _accelerations_sorted(grid, params, workspace or Workspace())
    dt = np.float32(params.dt)
    v = out[3:]
    for k in range(3):  # back to the state's order
        v[k][grid.order] = acc_sorted[k]
    v *= dt
    v += state[3:]
    speed = np.sqrt(v[0] * v[0] + v[1] * v[1] + v[2] * v[2])
    stopped = speed == 0
    if stopped.any():
        v[:, stopped] = 0
        v[0, stopped] = 1
        speed[stopped] = 1
    target = np.clip(speed, np.float32(params.min_speed), np.float32(params.max_speed))
    target /= speed
    v *= target
    p = out[:3]
    np.multiply(v, dt, out=p)
    p += state[:3]
    world = np.float32(params.world_size)
    np.mod(p, world, out=p)
    p[p >= world] = 0  # -tiny % world rounds up to world in float32
    return stats


def _check_state(state: np.ndarray) -> None:
    if state.ndim != 2 or state.shape[0] != 6 or state.dtype != np.float32:
        raise ValueError(f"state must be float32 (6, N), got {state.dtype} {state.shape}")
