"""The math unit (inos_node/units/linalg.py) against numpy and geometric identities, both dtypes."""

from __future__ import annotations

import math
import tracemalloc
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from inos_node.engine.spec import Call, Output, UnitContext
from inos_node.errors import BudgetExceeded, InvalidParams
from inos_node.units import linalg

LIB = linalg.make(UnitContext())
DTYPES: dict[str, np.dtype[Any]] = {"float32": np.dtype("<f4"), "float64": np.dtype("<f8")}
TOL = {"float32": 1e-5, "float64": 1e-12}  # rtol = atol
Arr = npt.NDArray[Any]


def call_raw(short: str, data: bytes | memoryview = b"", **params: Any) -> bytes:
    method = LIB.method(short)
    assert method is not None, "unknown math method"
    out = method.fn(Call(input=memoryview(data), params=method.validate(params), ctx=UnitContext()))
    return bytes(out.data if isinstance(out, Output) else out)


def run(short: str, *arrays: npt.ArrayLike, dtype: str = "float32", **params: Any) -> Arr:
    """Concatenate the arrays in the documented layout, call, and read the output back."""
    dt = DTYPES[dtype]
    data = b"".join(np.ascontiguousarray(a, dtype=dt).tobytes() for a in arrays)
    return np.frombuffer(call_raw(short, data, dtype=dtype, **params), dtype=dt)


def arena_slice(data: bytes, offset: int = 3) -> memoryview:
    """A read-only, deliberately misaligned view into a larger buffer, as arena memory may be."""
    backing = bytearray(b"\x7f" * offset + data + b"\x7f" * 5)
    return memoryview(backing).toreadonly()[offset : offset + len(data)]


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def close(actual: npt.ArrayLike, expected: npt.ArrayLike, dtype: str) -> bool:
    return bool(np.allclose(actual, expected, rtol=TOL[dtype], atol=TOL[dtype]))


def rotation_matrix(axis: Arr, angle: float) -> Arr:
    """Rodrigues' formula, written independently of the unit."""
    x, y, z = axis / np.linalg.norm(axis)
    k = np.array([[0, -z, y], [z, 0, -x], [-y, x, 0]])
    matrix: Arr = np.eye(3) + math.sin(angle) * k + (1 - math.cos(angle)) * (k @ k)
    return matrix


def conjugate(q: Arr) -> Arr:
    flipped: Arr = q * np.array([-1, -1, -1, 1])
    return flipped


dtypes = pytest.mark.parametrize("dtype", ["float32", "float64"])


def test_library_shape() -> None:
    assert LIB.name == "math"
    assert [m.name.removeprefix("math.") for m in LIB.methods] == [
        "matmul",
        "dot",
        "cross",
        "normalize",
        "quat_multiply",
        "quat_from_axis_angle",
        "quat_rotate_vectors",
        "quat_slerp",
        "perspective",
        "orthographic",
        "look_at",
    ]
    for m in LIB.methods:
        assert m.executor == "inline"
        assert m.cost == "call"
        assert m.deterministic
        assert "Inline" in m.summary
        dtype = next(p for p in m.params if p.name == "dtype")
        assert dtype.default == "float32"
        assert dtype.choices == ("float32", "float64")


def test_bad_dtype() -> None:
    with pytest.raises(InvalidParams) as info:
        call_raw("cross", bytes(24), dtype="float16")
    assert info.value.param == "dtype"


# --- matmul and vectors -------------------------------------------------------------------------


@dtypes
@pytest.mark.parametrize(("m", "k", "n"), [(1, 1, 1), (3, 5, 2), (4, 4, 4), (17, 9, 33)])
def test_matmul_matches_numpy(dtype: str, m: int, k: int, n: int) -> None:
    dt = DTYPES[dtype]
    a = rng(m).standard_normal((m, k)).astype(dt)
    b = rng(n).standard_normal((k, n)).astype(dt)
    data = arena_slice(a.tobytes() + b.tobytes())
    out = np.frombuffer(call_raw("matmul", data, m=m, k=k, n=n, dtype=dtype), dtype=dt)
    assert out.shape == (m * n,)
    assert close(out.reshape(m, n), a @ b, dtype)


def test_matmul_exact_small_case() -> None:
    a = [[1, 2, 3], [4, 5, 6]]
    b = [[7, 8], [9, 10], [11, 12]]
    assert run("matmul", a, b, m=2, k=3, n=2).tolist() == [58, 64, 139, 154]


def test_matmul_params_are_required_and_positive() -> None:
    with pytest.raises(InvalidParams) as info:
        call_raw("matmul", bytes(16), m=2, k=2)
    assert info.value.param == "n"
    with pytest.raises(InvalidParams) as info:
        call_raw("matmul", b"", m=0, k=2, n=2)
    assert info.value.param == "m"


def test_matmul_refuses_a_huge_output_before_allocating() -> None:
    n = 100_000  # 2×n floats in, n×n = 40 GB out
    data = bytes(2 * n * 4)
    with pytest.raises(BudgetExceeded) as info:
        call_raw("matmul", data, m=n, k=1, n=n)
    assert info.value.kind == "memory"
    assert info.value.used == n * n * 4
    assert info.value.limit == UnitContext().max_input_bytes


@dtypes
def test_dot_cross(dtype: str) -> None:
    a = rng(1).standard_normal((6, 3))
    b = rng(2).standard_normal((6, 3))
    assert close(run("dot", a, b, dtype=dtype, count=6), np.einsum("ij,ij->i", a, b), dtype)
    assert close(run("cross", a, b, dtype=dtype, count=6).reshape(6, 3), np.cross(a, b), dtype)
    a5 = rng(3).standard_normal((4, 5))
    assert close(run("dot", a5, a5, dtype=dtype, count=4, dim=5), (a5 * a5).sum(axis=1), dtype)


def test_dot_defaults_to_one_pair_of_3_vectors() -> None:
    assert run("dot", [1, 2, 3], [4, 5, 6]).tolist() == [32]
    assert run("cross", [1, 0, 0], [0, 1, 0]).tolist() == [0, 0, 1]


def test_dot_reads_the_input_in_place() -> None:
    count = 1_000_000
    data = arena_slice(rng(4).standard_normal(2 * count * 3).astype("<f4").tobytes(), offset=4)
    method = LIB.method("dot")
    assert method is not None
    call = Call(input=data, params=method.validate({"count": count}), ctx=UnitContext())
    tracemalloc.start()
    try:
        out = method.fn(call)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(bytes(out.data if isinstance(out, Output) else out)) == count * 4
    assert peak < 2 * count * 4, "only the output is allocated, not a copy of the 24 MB input"


@dtypes
def test_normalize(dtype: str) -> None:
    v = rng(5).standard_normal((5, 4)) * 10
    v[2] = 0
    out = run("normalize", v, dtype=dtype, count=5, dim=4).reshape(5, 4)
    expected = v / np.where(
        np.linalg.norm(v, axis=1, keepdims=True) == 0, 1, np.linalg.norm(v, axis=1, keepdims=True)
    )
    assert close(out, expected, dtype)
    assert out[2].tolist() == [0, 0, 0, 0], "a zero vector stays zero"
    assert not np.isnan(out).any()


def test_normalize_huge_float32_values_do_not_overflow() -> None:
    out = run("normalize", [[3e30, 4e30, 0]])
    assert close(out, [0.6, 0.8, 0], "float32")


def test_normalize_keeps_nan_visible() -> None:
    out = run("normalize", [[np.nan, 1, 0]], dtype="float64")
    assert np.isnan(out).any(), "garbage in is not silently turned into a zero vector"


# --- quaternions --------------------------------------------------------------------------------


def random_quats(count: int, seed: int) -> Arr:
    q = rng(seed).standard_normal((count, 4))
    unit: Arr = q / np.linalg.norm(q, axis=1, keepdims=True)
    return unit


@dtypes
def test_quat_multiply_basis_and_identity(dtype: str) -> None:
    i, j, k, one = np.eye(4)  # x, y, z, w
    assert close(run("quat_multiply", i, j, dtype=dtype), k, dtype), "i j = k"
    assert close(run("quat_multiply", j, i, dtype=dtype), -k, dtype), "j i = -k"
    assert close(run("quat_multiply", i, i, dtype=dtype), -one, dtype), "i² = -1"
    q = random_quats(5, 6)
    ident = np.tile(one, (5, 1))
    assert close(run("quat_multiply", q, ident, dtype=dtype, count=5), q.reshape(-1), dtype)
    assert close(run("quat_multiply", ident, q, dtype=dtype, count=5), q.reshape(-1), dtype)


@dtypes
def test_quat_times_inverse_is_identity(dtype: str) -> None:
    q = rng(7).standard_normal((8, 4)) * 3  # not unit: inverse = conjugate / |q|²
    inverse = conjugate(q) / (q * q).sum(axis=1, keepdims=True)
    out = run("quat_multiply", q, inverse, dtype=dtype, count=8).reshape(8, 4)
    assert close(out, np.tile([0, 0, 0, 1], (8, 1)), dtype)


@dtypes
def test_axis_angle_rotation_matches_a_rotation_matrix(dtype: str) -> None:
    r = rng(8)
    vectors = r.standard_normal((10, 3))
    for _ in range(5):
        axis = r.standard_normal(3)
        angle = float(r.uniform(-2 * math.pi, 2 * math.pi))
        q = run("quat_from_axis_angle", np.append(axis, angle), dtype=dtype)
        assert close(np.linalg.norm(q), 1, dtype)
        rotated = run("quat_rotate_vectors", q, vectors, dtype=dtype, count=10).reshape(10, 3)
        assert close(rotated, vectors @ rotation_matrix(axis, angle).T, dtype)


def test_axis_angle_known_values() -> None:
    s = math.sqrt(0.5)
    out = run("quat_from_axis_angle", [[0.0, 0, 2, math.pi / 2], [1.0, 0, 0, 0]], count=2, dtype="float64")
    assert close(out, [0, 0, s, s, 0, 0, 0, 1], "float64")
    # Right-handed: +90° about z takes x to y.
    assert close(run("quat_rotate_vectors", out[:4], [1, 0, 0], dtype="float64"), [0, 1, 0], "float64")


def test_zero_axis_gives_identity() -> None:
    assert run("quat_from_axis_angle", [0, 0, 0, 1.3]).tolist() == [0, 0, 0, 1]


@dtypes
def test_rotation_composes_like_the_product(dtype: str) -> None:
    a, b = random_quats(1, 9)[0], random_quats(1, 10)[0]
    v = rng(11).standard_normal((4, 3))
    ab = run("quat_multiply", a, b, dtype=dtype)
    by_product = run("quat_rotate_vectors", ab, v, dtype=dtype, count=4)
    by_b = run("quat_rotate_vectors", b, v, dtype=dtype, count=4)
    by_b_then_a = run("quat_rotate_vectors", a, by_b, dtype=dtype, count=4)
    assert close(by_product, by_b_then_a, dtype), "rotating by a⊗b is rotating by b, then by a"


def test_rotate_uses_only_the_direction_of_q() -> None:
    q = random_quats(1, 12)[0]
    v = [[1, 2, 3]]
    assert close(run("quat_rotate_vectors", q * 5, v), run("quat_rotate_vectors", q, v), "float32")


def test_rotate_by_a_zero_quaternion_is_invalid() -> None:
    with pytest.raises(InvalidParams, match="zero length") as info:
        run("quat_rotate_vectors", [0, 0, 0, 0], [1, 2, 3])
    assert info.value.param == "input"


@dtypes
def test_slerp_endpoints_and_midpoint(dtype: str) -> None:
    a, b = random_quats(6, 13), random_quats(6, 14)
    at0 = run("quat_slerp", a, b, dtype=dtype, count=6, t=0).reshape(6, 4)
    at1 = run("quat_slerp", a, b, dtype=dtype, count=6, t=1).reshape(6, 4)
    assert close(at0, a, dtype)
    sign = np.sign(np.einsum("ij,ij->i", a, b))[:, None]
    assert close(at1, b * sign, dtype), "t=1 gives b, or -b (the same rotation) on the short path"
    # Halfway from identity to 90° about z is 45° about z.
    z90 = [0, 0, math.sin(math.pi / 4), math.cos(math.pi / 4)]
    half = run("quat_slerp", [0, 0, 0, 1], z90, dtype=dtype, t=0.5)
    assert close(half, [0, 0, math.sin(math.pi / 8), math.cos(math.pi / 8)], dtype)


def test_slerp_takes_the_shortest_path() -> None:
    a, b = random_quats(3, 15), random_quats(3, 16)
    plain = run("quat_slerp", a, b, count=3, t=0.3, dtype="float64")
    flipped = run("quat_slerp", a, -b, count=3, t=0.3, dtype="float64")
    assert close(plain, flipped, "float64")


def test_slerp_is_constant_speed() -> None:
    z120 = [0, 0, math.sin(math.pi / 3), math.cos(math.pi / 3)]  # 120° about z
    for t in (0.25, 0.5, 0.75):
        out = run("quat_slerp", [0, 0, 0, 1], z120, t=t, dtype="float64")
        angle = 2 * math.atan2(out[2], out[3])
        assert math.isclose(angle, t * 2 * math.pi / 3, rel_tol=1e-12)


@dtypes
def test_slerp_of_nearly_parallel_quaternions_is_nlerp(dtype: str) -> None:
    a = np.array([0, 0, 0, 1.0])
    b = np.array([0, 0, math.sin(1e-4), math.cos(1e-4)])  # cos θ ≈ 1 - 5e-9, well above 0.9995
    out = run("quat_slerp", a, b, dtype=dtype, t=0.5)
    expected = (a + b) / np.linalg.norm(a + b)
    assert close(out, expected, dtype)
    assert close(np.linalg.norm(out), 1, dtype)
    assert run("quat_slerp", a, a, dtype=dtype, t=0.7).tolist() == [0, 0, 0, 1]


@pytest.mark.parametrize("t", [-0.1, 1.1, "half"])
def test_slerp_t_out_of_range(t: object) -> None:
    with pytest.raises(InvalidParams) as info:
        run("quat_slerp", [0, 0, 0, 1], [0, 0, 0, 1], t=t)
    assert info.value.param == "t"


def test_slerp_requires_t_and_nonzero_quaternions() -> None:
    with pytest.raises(InvalidParams) as info:
        run("quat_slerp", [0, 0, 0, 1], [0, 0, 0, 1])
    assert info.value.param == "t"
    with pytest.raises(InvalidParams, match="B row 1 has zero length"):
        run("quat_slerp", [[0, 0, 0, 1], [0, 0, 0, 1]], [[0, 0, 0, 1], [0, 0, 0, 0]], count=2, t=0.5)


# --- projections --------------------------------------------------------------------------------


def apply(matrix: Arr, point: npt.ArrayLike) -> Arr:
    """Column-vector convention: clip = M @ [x, y, z, 1], then the perspective divide."""
    clip = matrix.reshape(4, 4) @ np.array([*np.asarray(point, dtype=float), 1.0])
    ndc: Arr = clip[:3] / clip[3]
    return ndc


@dtypes
def test_perspective(dtype: str) -> None:
    m = run("perspective", dtype=dtype, fovy_rad=math.pi / 2, aspect=2, near=1, far=3)
    # f = 1 / tan(45°) = 1; the gl-matrix values, stored row-major.
    expected = [[0.5, 0, 0, 0], [0, 1, 0, 0], [0, 0, -2, -3], [0, 0, -1, 0]]
    assert close(m, np.array(expected).reshape(-1), dtype)
    assert close(apply(m, [0, 0, -1]), [0, 0, -1], dtype), "near plane → z = -1"
    assert close(apply(m, [0, 0, -3]), [0, 0, 1], dtype), "far plane → z = +1"
    assert close(apply(m, [2, 1, -1]), [1, 1, -1], dtype), "top-right of the near plane"


@dtypes
def test_orthographic(dtype: str) -> None:
    m = run("orthographic", dtype=dtype, left=-2, right=6, bottom=-1, top=3, near=-1, far=9)
    assert close(apply(m, [-2, -1, 1]), [-1, -1, -1], dtype), "left-bottom-near corner"
    assert close(apply(m, [6, 3, -9]), [1, 1, 1], dtype), "right-top-far corner"
    assert m.reshape(4, 4)[3].tolist() == [0, 0, 0, 1]


@dtypes
def test_look_at(dtype: str) -> None:
    m = run("look_at", [0, 0, 5], [0, 0, 0], [0, 1, 0], dtype=dtype).reshape(4, 4)
    assert close(m, [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, -5], [0, 0, 0, 1]], dtype), (
        "translation at 3, 7, 11"
    )
    eye, center, up = np.array([3.0, -2, 7]), np.array([-1.0, 4, 0.5]), np.array([0.2, 1, 0.1])
    m = run("look_at", eye, center, up, dtype=dtype).reshape(4, 4)
    assert close(m @ [*eye, 1], [0, 0, 0, 1], dtype), "the eye is the origin of eye space"
    dist = float(np.linalg.norm(center - eye))
    assert close(m @ [*center, 1], [0, 0, -dist, 1], dtype), "the camera looks down -z"
    rot = m[:3, :3].astype(np.float64)
    assert close(rot @ rot.T, np.eye(3), dtype)
    assert close(np.linalg.det(rot), 1, dtype)
    assert (m[:3, :3] @ up)[1] > 0, "up stays up"


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({"fovy_rad": 0}, "fovy_rad"),
        ({"fovy_rad": math.pi}, "fovy_rad"),
        ({"fovy_rad": -1}, "fovy_rad"),
        ({"aspect": 0}, "aspect"),
        ({"aspect": -1.5}, "aspect"),
        ({"near": 0}, "near"),
        ({"near": -1}, "near"),
        ({"far": 0.1}, "far"),
        ({"near": 2, "far": 2}, "far"),
        ({"far": "inf"}, "far"),
    ],
)
def test_bad_perspective_params(params: dict[str, Any], param: str) -> None:
    good = {"fovy_rad": 1.0, "aspect": 1.5, "near": 0.5, "far": 100}
    with pytest.raises(InvalidParams) as info:
        call_raw("perspective", **{**good, **params})
    assert info.value.param == param


@pytest.mark.parametrize(
    ("params", "param"),
    [({"right": -1}, "right"), ({"top": -1}, "top"), ({"far": 0}, "far"), ({"left": "x"}, "left")],
)
def test_bad_orthographic_params(params: dict[str, Any], param: str) -> None:
    good = {"left": -1, "right": 1, "bottom": -1, "top": 1, "near": 0, "far": 1}
    with pytest.raises(InvalidParams) as info:
        call_raw("orthographic", **{**good, **params})
    assert info.value.param == param


def test_projection_params_are_required() -> None:
    with pytest.raises(InvalidParams) as info:
        call_raw("perspective", fovy_rad=1.0, aspect=1.0, near=1.0)
    assert info.value.param == "far"


@pytest.mark.parametrize(
    ("eye", "center", "up", "match"),
    [
        ([1, 2, 3], [1, 2, 3], [0, 1, 0], "eye equals center"),
        ([0, 0, 5], [0, 0, 0], [0, 0, 1], "parallel"),
        ([0, 0, 5], [0, 0, 0], [0, 0, 0], "zero"),
    ],
)
def test_degenerate_look_at(eye: list[float], center: list[float], up: list[float], match: str) -> None:
    with pytest.raises(InvalidParams, match=match) as info:
        run("look_at", eye, center, up)
    assert info.value.param == "input"


# --- the input length is checked for every method -----------------------------------------------

# (method, params, number of input elements those params imply)
SHAPES: list[tuple[str, dict[str, Any], int]] = [
    ("matmul", {"m": 2, "k": 3, "n": 4}, 2 * 3 + 3 * 4),
    ("dot", {"count": 2, "dim": 5}, 2 * 2 * 5),
    ("dot", {}, 6),
    ("cross", {"count": 3}, 3 * 3 * 2),
    ("normalize", {"count": 2, "dim": 7}, 14),
    ("quat_multiply", {"count": 2}, 16),
    ("quat_from_axis_angle", {"count": 3}, 12),
    ("quat_rotate_vectors", {"count": 2}, 4 + 6),
    ("quat_slerp", {"count": 2, "t": 0.5}, 16),
    ("perspective", {"fovy_rad": 1, "aspect": 1, "near": 1, "far": 2}, 0),
    ("orthographic", {"left": 0, "right": 1, "bottom": 0, "top": 1, "near": 0, "far": 1}, 0),
    ("look_at", {}, 9),
]


@pytest.mark.parametrize(("short", "params", "elements"), SHAPES)
@dtypes
def test_wrong_input_length(short: str, params: dict[str, Any], elements: int, dtype: str) -> None:
    size = DTYPES[dtype].itemsize
    expected = elements * size
    for observed in {expected + size, expected + 1, max(expected - size, 0), max(expected - 1, 0)} - {
        expected
    }:
        with pytest.raises(InvalidParams) as info:
            call_raw(short, bytes(observed), dtype=dtype, **params)
        assert info.value.param == "input"
        assert f"input is {observed} bytes, expected {expected} bytes" in str(info.value)
        assert info.value.allowed == f"exactly {expected} bytes"


@pytest.mark.parametrize(("short", "params", "elements"), SHAPES)
@dtypes
def test_right_input_length_gives_the_documented_output_size(
    short: str, params: dict[str, Any], elements: int, dtype: str
) -> None:
    size = DTYPES[dtype].itemsize
    # Values that are valid for every method: ones (non-zero quaternions, look_at needs distinct
    # eye/center/up, supplied below).
    data = np.ones(elements, dtype=DTYPES[dtype])
    if short == "look_at":
        data = np.array([0, 0, 5, 0, 0, 0, 0, 1, 0], dtype=DTYPES[dtype])
    out = call_raw(short, arena_slice(data.tobytes()), dtype=dtype, **params)
    count = params.get("count", 1)
    outputs = {
        "matmul": 2 * 4,
        "dot": count,
        "cross": count * 3,
        "normalize": count * params.get("dim", 3),
        "quat_multiply": count * 4,
        "quat_from_axis_angle": count * 4,
        "quat_rotate_vectors": count * 3,
        "quat_slerp": count * 4,
        "perspective": 16,
        "orthographic": 16,
        "look_at": 16,
    }
    assert len(out) == outputs[short] * size


def test_length_error_names_the_layout_and_the_params() -> None:
    with pytest.raises(InvalidParams) as info:
        call_raw("matmul", bytes(10), m=2, k=3, n=4, dtype="float64")
    message = str(info.value)
    assert "input is 10 bytes, expected 144 bytes" in message
    assert "A (2×3) then B (3×4)" in message
    assert "m=2, k=3, n=4, dtype=float64" in message
