"""The ``math`` library: small linear algebra, vector, quaternion and projection kernels (numpy).

(The module is ``linalg.py`` so that it is never confused with the standard library's ``math``;
the library and its methods are named ``math``.)

Data convention, shared by every method:

* **Arrays are raw bytes**: little-endian IEEE floats, C order (row-major), no header.  Shapes
  are not in the data; they come from the params (``m``, ``k``, ``n``, ``count``, ``dim``).
* **dtype**: every method takes ``dtype`` = ``"float32"`` (default) or ``"float64"``.  Inputs are
  read as that dtype and the output is written in it.
* **Several input arrays are concatenated** in the input in the order listed below, each in C
  order, with no padding.  The input length must be exactly the sum of the element counts times
  the item size (4 or 8); anything else is ``InvalidParams`` (``param="input"``) naming the
  expected and observed byte counts and the params they were derived from.
* **The output is one C-order array** of the same dtype.
* Inputs are read in place (``np.frombuffer`` on the input view, no copy).

Methods (all cost ``call``, deterministic, ``inline`` executor: meant for small arrays):

=========================  ==========================  ===========================  ===========
method (``math.``)         params (besides ``dtype``)  input, in order              output
=========================  ==========================  ===========================  ===========
``matmul``                 ``m``, ``k``, ``n``         A m×k, B k×n                 m×n: A @ B
``dot``                    ``count``=1, ``dim``=3      A count×dim, B count×dim     count
``cross``                  ``count``=1                 A count×3, B count×3         count×3
``normalize``              ``count``=1, ``dim``=3      V count×dim                  count×dim
``quat_multiply``          ``count``=1                 A count×4, B count×4         count×4: A⊗B
``quat_from_axis_angle``   ``count``=1                 count×4 (ax, ay, az, angle)  count×4
``quat_rotate_vectors``    ``count``=1                 q 4, then V count×3          count×3
``quat_slerp``             ``count``=1, ``t``          A count×4, B count×4         count×4
``perspective``            ``fovy_rad``, ``aspect``,   none (empty)                 4×4
                           ``near``, ``far``
``orthographic``           ``left``, ``right``,        none (empty)                 4×4
                           ``bottom``, ``top``,
                           ``near``, ``far``
``look_at``                none                        eye 3, center 3, up 3        4×4
=========================  ==========================  ===========================  ===========

Params without a default (``m``, ``k``, ``n``, ``t``, the projection params) are required.

Semantics:

* ``normalize``: each row divided by its Euclidean length; **a zero vector stays zero** (no NaN).
  Rows are pre-scaled by their largest component so big float32 values do not overflow.
* **Quaternions are (x, y, z, w)**: vector part first, scalar last (the gl-matrix, Unity and
  Eigen-storage order).  Products are Hamilton products: ``i² = j² = k² = ijk = -1``, and
  rotating by ``A⊗B`` is rotating by B, then by A.  ``quat_multiply`` does not normalize.
* ``quat_from_axis_angle``: angle in radians, right-handed; the axis is normalized first; a zero
  axis gives the identity (0, 0, 0, 1).
* ``quat_rotate_vectors``: one quaternion, applied to every vector (v' = q v q⁻¹).  The
  quaternion is normalized first, so only its direction matters; a zero quaternion is
  ``InvalidParams``.
* ``quat_slerp``: both inputs normalized, then spherical interpolation along the shortest path
  (B is negated when A·B < 0, so the result at ``t=1`` may be -B, the same rotation).  When the
  two are nearly parallel (|A·B| > 0.9995) it falls back to a normalized lerp.  Output is unit.
* **Projection matrices** follow the OpenGL / gl-matrix math: right-handed eye space, the camera
  looks down -z, clip-space z in [-1, 1], and matrices act on **column vectors**
  (``clip = M @ [x, y, z, 1]``).  They are **stored row-major** (``M[row][col]``; the
  translation of ``look_at`` is at indices 3, 7, 11).  gl-matrix's ``Float32Array``s are
  column-major, i.e. the transpose of these bytes: transpose before ``glUniformMatrix4fv`` (or
  pass ``transpose=GL_TRUE`` where allowed: desktop GL, WebGL 2).
  - ``perspective``: ``fovy_rad`` in (0, π), ``aspect`` > 0, 0 < ``near`` < ``far``.
  - ``orthographic``: ``left`` ≠ ``right``, ``bottom`` ≠ ``top``, ``near`` ≠ ``far`` (a negative
    near plane is allowed, as in OpenGL's ``glOrtho``).
  - ``look_at``: like gl-matrix ``mat4.lookAt``; ``eye`` = ``center`` or ``up`` parallel to the
    view direction (or zero) is ``InvalidParams``.
  Projection maths runs in float64 and is rounded to ``dtype`` at the end.

Other limits: ``matmul``'s output (m×n) may not exceed the node's input limit
(``UnitContext.max_input_bytes``), so small inputs cannot ask for a huge output; that is refused
with ``BudgetExceeded(kind="memory")`` before anything is allocated.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from inos_node.engine.spec import REQUIRED, Call, Library, Method, Param, UnitContext
from inos_node.errors import BudgetExceeded, InvalidParams

__all__ = ["make"]

Array = npt.NDArray[np.floating[Any]]

_DTYPES: dict[str, np.dtype[np.floating[Any]]] = {"float32": np.dtype("<f4"), "float64": np.dtype("<f8")}
_NLERP_ABOVE = 0.9995  # |cos θ| above which slerp divides by ~0; nlerp is then exact enough
_PARALLEL_BELOW = 1e-6  # |up × forward| (unit vectors) below which look_at has no defined "right"


# --- the data convention ------------------------------------------------------------------------


def _arrays(call: Call, parts: Sequence[tuple[str, tuple[int, ...]]], derived_from: str) -> list[Array]:
    """Read-only views of the input's arrays, after checking the input length.

    ``parts`` are ``(label, shape)`` in input order; ``derived_from`` names the params the shapes
    came from, for the error message.
    """
    dt = _DTYPES[call.params["dtype"]]
    sizes = [math.prod(shape) for _, shape in parts]
    expected = sum(sizes) * dt.itemsize
    observed = call.input.nbytes
    if observed != expected:
        layout = (
            " then ".join(f"{label} ({'×'.join(map(str, shape))})" for label, shape in parts) or "no input"
        )
        raise InvalidParams(
            f"input is {observed} bytes, expected {expected} bytes: {layout} of {call.params['dtype']} "
            f"({dt.itemsize} bytes each), from {derived_from}",
            param="input",
            allowed=f"exactly {expected} bytes",
        )
    out: list[Array] = []
    offset = 0
    for (_, shape), size in zip(parts, sizes, strict=True):
        out.append(np.frombuffer(call.input, dtype=dt, count=size, offset=offset).reshape(shape))
        offset += size * dt.itemsize
    return out


def _output(call: Call, result: npt.ArrayLike) -> memoryview:
    """The result as bytes in the call's dtype, C order, without a copy when it already is."""
    arr = np.ascontiguousarray(result, dtype=_DTYPES[call.params["dtype"]])
    return arr.reshape(-1).view(np.uint8).data


def _shape_desc(call: Call, *names: str) -> str:
    return ", ".join(f"{name}={call.params[name]}" for name in (*names, "dtype"))


def _unit_rows(q: Array, what: str) -> Array:
    """Rows scaled to unit length; a zero row is an error (it has no direction)."""
    norms = np.linalg.norm(q, axis=-1, keepdims=True)
    zero = np.flatnonzero(norms.reshape(-1) == 0)
    if zero.size:
        raise InvalidParams(
            f"{what} {int(zero[0])} has zero length and no direction",
            param="input",
            allowed="non-zero quaternions",
        )
    unit: Array = q / norms
    return unit


# --- linear algebra and vectors -----------------------------------------------------------------


def _matmul(call: Call) -> memoryview:
    m, k, n = call.params["m"], call.params["k"], call.params["n"]
    a, b = _arrays(call, [("A", (m, k)), ("B", (k, n))], _shape_desc(call, "m", "k", "n"))
    # A small input can still ask for a huge output (k=1): refuse before numpy allocates it.
    out_bytes = m * n * a.itemsize
    limit = call.ctx.max_input_bytes
    if out_bytes > limit:
        raise BudgetExceeded(
            f"math.matmul: the {m}×{n} output would be {out_bytes} bytes, over the node's {limit}-byte limit",
            kind="memory",
            used=out_bytes,
            limit=limit,
        )
    return _output(call, a @ b)


def _dot(call: Call) -> memoryview:
    count, dim = call.params["count"], call.params["dim"]
    a, b = _arrays(call, [("A", (count, dim)), ("B", (count, dim))], _shape_desc(call, "count", "dim"))
    return _output(call, np.einsum("ij,ij->i", a, b))


def _cross(call: Call) -> memoryview:
    count = call.params["count"]
    a, b = _arrays(call, [("A", (count, 3)), ("B", (count, 3))], _shape_desc(call, "count"))
    return _output(call, np.cross(a, b))


def _normalize(call: Call) -> memoryview:
    count, dim = call.params["count"], call.params["dim"]
    (v,) = _arrays(call, [("V", (count, dim))], _shape_desc(call, "count", "dim"))
    # Pre-scale by the largest |component| so the squares cannot overflow (float32 tops out near
    # 1.8e19 when squared).  `!= 0` rather than `> 0` lets NaN rows stay NaN instead of becoming 0.
    scale = np.max(np.abs(v), axis=1, keepdims=True)
    out = np.zeros_like(v)
    np.divide(v, scale, out=out, where=scale != 0)
    norm = np.linalg.norm(out, axis=1, keepdims=True)
    np.divide(out, norm, out=out, where=norm != 0)
    return _output(call, out)


# --- quaternions (x, y, z, w) -------------------------------------------------------------------


def _hamilton(a: Array, b: Array) -> Array:
    ax, ay, az, aw = a[:, 0], a[:, 1], a[:, 2], a[:, 3]
    bx, by, bz, bw = b[:, 0], b[:, 1], b[:, 2], b[:, 3]
    return np.stack(
        (
            aw * bx + ax * bw + ay * bz - az * by,
            aw * by - ax * bz + ay * bw + az * bx,
            aw * bz + ax * by - ay * bx + az * bw,
            aw * bw - ax * bx - ay * by - az * bz,
        ),
        axis=1,
    )


def _quat_multiply(call: Call) -> memoryview:
    count = call.params["count"]
    a, b = _arrays(call, [("A", (count, 4)), ("B", (count, 4))], _shape_desc(call, "count"))
    return _output(call, _hamilton(a, b))


def _quat_from_axis_angle(call: Call) -> memoryview:
    count = call.params["count"]
    (rows,) = _arrays(call, [("axis-angle rows", (count, 4))], _shape_desc(call, "count"))
    axis, half = rows[:, :3], rows[:, 3:] / 2
    length = np.linalg.norm(axis, axis=1, keepdims=True)
    out = np.zeros_like(rows)
    out[:, 3] = 1  # a zero axis gives the identity
    has_axis = length[:, 0] != 0
    out[has_axis, :3] = axis[has_axis] / length[has_axis] * np.sin(half[has_axis])
    out[has_axis, 3] = np.cos(half[has_axis, 0])
    return _output(call, out)


def _quat_rotate_vectors(call: Call) -> memoryview:
    count = call.params["count"]
    q, v = _arrays(call, [("q", (4,)), ("V", (count, 3))], _shape_desc(call, "count"))
    q = _unit_rows(q, "quaternion")
    u, w = q[:3], q[3]
    # v' = v + w t + u × t with t = 2 u × v: q v q⁻¹ expanded for a unit q, without a matrix.
    t = 2 * np.cross(u, v)
    return _output(call, v + w * t + np.cross(u, t))


def _quat_slerp(call: Call) -> memoryview:
    count, t = call.params["count"], call.params["t"]
    a, b = _arrays(call, [("A", (count, 4)), ("B", (count, 4))], _shape_desc(call, "count"))
    a = _unit_rows(a, "quaternion A row")
    b = _unit_rows(b, "quaternion B row")
    cos = np.einsum("ij,ij->i", a, b)[:, None]
    b = np.where(cos < 0, -b, b)  # q and -q are the same rotation: take the shorter arc
    cos = np.minimum(np.abs(cos), 1)
    near = cos > _NLERP_ABOVE
    theta = np.arccos(cos)
    sin = np.sin(theta)
    safe_sin = np.where(near, 1, sin)  # the slerp weights are discarded on the `near` rows
    wa = np.where(near, 1 - t, np.sin((1 - t) * theta) / safe_sin)
    wb = np.where(near, t, np.sin(t * theta) / safe_sin)
    out = wa * a + wb * b
    return _output(call, out / np.linalg.norm(out, axis=1, keepdims=True))


# --- projections (row-major storage, column-vector convention) ----------------------------------


def _bad(name: str, why: str, allowed: str) -> InvalidParams:
    return InvalidParams(f"param {name!r}: {why}; allowed: {allowed}", param=name, allowed=allowed)


def _perspective(call: Call) -> memoryview:
    p = call.params
    _arrays(call, [], "no input (the matrix comes from the params)")
    fovy, aspect, near, far = p["fovy_rad"], p["aspect"], p["near"], p["far"]
    if not 0 < fovy < math.pi:
        raise _bad("fovy_rad", f"{fovy!r} is not a vertical field of view", "a number in (0, pi) (radians)")
    if not aspect > 0:
        raise _bad("aspect", f"{aspect!r} is not a width/height ratio", "a number > 0")
    if not near > 0:
        raise _bad("near", f"{near!r} is not in front of the camera", "a number > 0")
    if not far > near:
        raise _bad("far", f"{far!r} is not beyond near={near!r}", f"a number > near ({near!r})")
    f = 1 / math.tan(fovy / 2)
    depth = near - far
    return _output(
        call,
        [
            [f / aspect, 0, 0, 0],
            [0, f, 0, 0],
            [0, 0, (far + near) / depth, 2 * far * near / depth],
            [0, 0, -1, 0],
        ],
    )


def _orthographic(call: Call) -> memoryview:
    p = call.params
    _arrays(call, [], "no input (the matrix comes from the params)")
    left, right, bottom, top, near, far = (p[k] for k in _ORTHO_PLANES)
    for lo_name, lo, hi_name, hi in (
        ("left", left, "right", right),
        ("bottom", bottom, "top", top),
        ("near", near, "far", far),
    ):
        if lo == hi:
            raise _bad(hi_name, f"{hi!r} equals {lo_name}", f"a number other than {lo_name} ({lo!r})")
    return _output(
        call,
        [
            [2 / (right - left), 0, 0, -(right + left) / (right - left)],
            [0, 2 / (top - bottom), 0, -(top + bottom) / (top - bottom)],
            [0, 0, -2 / (far - near), -(far + near) / (far - near)],
            [0, 0, 0, 1],
        ],
    )


def _look_at(call: Call) -> memoryview:
    eye, center, up = (
        x.astype(np.float64)
        for x in _arrays(call, [("eye", (3,)), ("center", (3,)), ("up", (3,))], _shape_desc(call))
    )
    z = eye - center  # the camera looks down -z, so +z points from the target back to the eye
    z_len = np.linalg.norm(z)
    if z_len == 0:
        raise InvalidParams("eye equals center: no view direction", param="input", allowed="eye != center")
    z /= z_len
    x = np.cross(up, z)
    up_len = np.linalg.norm(up)
    x_len = np.linalg.norm(x)
    if up_len == 0 or x_len / up_len < _PARALLEL_BELOW:
        raise InvalidParams(
            "up is zero or parallel to the view direction (eye - center): no defined right vector",
            param="input",
            allowed="an up vector not parallel to eye - center",
        )
    x /= x_len
    y = np.cross(z, x)
    return _output(
        call,
        [
            [*x, -x @ eye],
            [*y, -y @ eye],
            [*z, -z @ eye],
            [0, 0, 0, 1],
        ],
    )


# --- the library --------------------------------------------------------------------------------

_DTYPE = Param(
    "dtype", "enum", default="float32", choices=tuple(_DTYPES), doc="element type of input and output"
)
_COUNT = Param("count", "int", default=1, minimum=1, doc="number of rows (vectors / quaternions) per array")
_ORTHO_PLANES = ("left", "right", "bottom", "top", "near", "far")
_DIM = Param("dim", "int", default=3, minimum=1, doc="vector length")


def _size(name: str, doc: str) -> Param:
    return Param(name, "int", default=REQUIRED, minimum=1, doc=doc)


def _real(name: str, doc: str) -> Param:
    return Param(name, "float", default=REQUIRED, doc=doc)


def _method(short: str, fn: Callable[[Call], memoryview], params: tuple[Param, ...], summary: str) -> Method:
    return Method(
        name=f"math.{short}",
        fn=fn,
        executor="inline",
        params=(*params, _DTYPE),
        deterministic=True,
        cost="call",
        summary=summary + " Inline: meant for small arrays.",
    )


def make(ctx: UnitContext) -> Library:
    del ctx  # limits are read per call from call.ctx
    return Library(
        name="math",
        summary="Matrices, vector batches, (x, y, z, w) quaternions and OpenGL-style projections on raw "
        "little-endian float32/float64 arrays.",
        methods=(
            _method(
                "matmul",
                _matmul,
                (_size("m", "rows of A"), _size("k", "columns of A = rows of B"), _size("n", "columns of B")),
                "A (m×k) then B (k×n) → A @ B (m×n).",
            ),
            _method("dot", _dot, (_COUNT, _DIM), "A then B (count×dim each) → count dot products."),
            _method("cross", _cross, (_COUNT,), "A then B (count×3 each) → count×3 cross products."),
            _method("normalize", _normalize, (_COUNT, _DIM), "count×dim → unit rows; zero rows stay zero."),
            _method(
                "quat_multiply",
                _quat_multiply,
                (_COUNT,),
                "A then B (count×4, xyzw) → Hamilton products A⊗B.",
            ),
            _method(
                "quat_from_axis_angle",
                _quat_from_axis_angle,
                (_COUNT,),
                "count rows (axis x, y, z, angle rad) → count×4 unit quaternions (xyzw).",
            ),
            _method(
                "quat_rotate_vectors",
                _quat_rotate_vectors,
                (_COUNT,),
                "one quaternion (4, xyzw) then count×3 vectors → the rotated vectors (count×3).",
            ),
            _method(
                "quat_slerp",
                _quat_slerp,
                (
                    _COUNT,
                    Param("t", "float", default=REQUIRED, minimum=0, maximum=1, doc="0 gives A, 1 gives B"),
                ),
                "A then B (count×4, xyzw) → shortest-path slerp at t (count×4).",
            ),
            _method(
                "perspective",
                _perspective,
                (
                    _real("fovy_rad", "vertical field of view in radians, in (0, pi)"),
                    _real("aspect", "width / height, > 0"),
                    _real("near", "near plane distance, > 0"),
                    _real("far", "far plane distance, > near"),
                ),
                "no input → 4×4 OpenGL perspective matrix (row-major, column vectors).",
            ),
            _method(
                "orthographic",
                _orthographic,
                tuple(_real(name, f"{name} clipping plane") for name in _ORTHO_PLANES),
                "no input → 4×4 OpenGL orthographic matrix (row-major, column vectors).",
            ),
            _method(
                "look_at",
                _look_at,
                (),
                "eye, center, up (3 each) → 4×4 view matrix (gl-matrix lookAt) (row-major, column vectors).",
            ),
        ),
    )
