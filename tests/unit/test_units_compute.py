"""The compute unit against the raw libraries: blake3, hashlib and brotli."""

from __future__ import annotations

import hashlib
import tracemalloc
from typing import Any

import blake3
import brotli  # type: ignore[import-untyped]
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from inos_node.engine.spec import Call, Output, UnitContext
from inos_node.errors import BudgetExceeded, CapsuleFailed, InvalidParams
from inos_node.units import compute

MIB = 1024 * 1024
LIB = compute.make(UnitContext())


def run(short: str, data: bytes | memoryview = b"", **params: Any) -> bytes:
    method = LIB.method(short)
    assert method is not None, "unknown compute method"
    out = method.fn(Call(input=memoryview(data), params=method.validate(params), ctx=UnitContext()))
    return bytes(out.data if isinstance(out, Output) else out)


def arena_slice(size: int, *, offset: int = 4093, seed: int = 7) -> memoryview:
    """A read-only view into the middle of a larger buffer, as arena memory would be."""
    backing = bytearray(np.random.default_rng(seed).bytes(size + 2 * offset))
    return memoryview(backing).toreadonly()[offset : offset + size]


def _digest_blake3(data: bytes | memoryview) -> bytes:
    return blake3.blake3(data).digest()


def test_library_shape() -> None:
    assert LIB.name == "compute"
    names = [m.name for m in LIB.methods]
    assert names == [
        "compute.blake3",
        "compute.sha256",
        "compute.brotli_compress",
        "compute.brotli_decompress",
    ]
    for m in LIB.methods:
        assert m.executor == "thread", "big inputs: work that releases the GIL runs on a thread"
        assert m.cost == "mib"
        assert m.deterministic


# --- hashes -------------------------------------------------------------------------------------


def test_known_vectors() -> None:
    assert run("blake3", b"").hex() == "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"
    assert run("sha256", b"abc").hex() == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    assert run("sha256", b"").hex() == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


@pytest.mark.parametrize(
    "size",
    [0, 1, 1023, 1024, 1025, compute.BLAKE3_THREADS_FROM - 1, compute.BLAKE3_THREADS_FROM, 3 * MIB + 5],
)
def test_hashes_match_libraries(size: int) -> None:
    view = arena_slice(size)
    assert run("blake3", view) == blake3.blake3(view.tobytes()).digest()
    assert run("sha256", view) == hashlib.sha256(view.tobytes()).digest()
    assert len(run("blake3", view)) == 32


@pytest.fixture(scope="module")
def big_view() -> memoryview:
    return arena_slice(64 * MIB, offset=12345)


@pytest.mark.parametrize(("short", "ref"), [("blake3", _digest_blake3), ("sha256", hashlib.sha256)])
def test_64mib_slice_is_hashed_in_place(big_view: memoryview, short: str, ref: Any) -> None:
    method = LIB.method(short)
    assert method is not None
    call = Call(input=big_view, params=method.validate({}), ctx=UnitContext())
    tracemalloc.start()
    try:
        digest = method.fn(call)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < MIB, "hashing must not copy the input view"
    expected = ref(big_view).digest() if short == "sha256" else ref(big_view)
    assert digest == expected


def test_hashes_take_no_params() -> None:
    method = LIB.method("blake3")
    assert method is not None
    with pytest.raises(InvalidParams) as info:
        method.validate({"quality": 5})
    assert info.value.param == "quality"


# --- brotli -------------------------------------------------------------------------------------

TEXT = b"the quick brown fox jumps over the lazy dog; " * 2000


@pytest.mark.parametrize(("quality", "lgwin"), [(0, 10), (5, 22), (11, 24), (1, 16)])
def test_compress_matches_brotli(quality: int, lgwin: int) -> None:
    out = run("brotli_compress", TEXT, quality=quality, lgwin=lgwin)
    assert out == brotli.compress(TEXT, quality=quality, lgwin=lgwin)
    assert brotli.decompress(out) == TEXT


def test_compress_defaults_to_quality_5_lgwin_22() -> None:
    assert run("brotli_compress", TEXT) == brotli.compress(TEXT, quality=5, lgwin=22)


def test_compress_accepts_string_params() -> None:
    # Params from the command line arrive as strings.
    assert run("brotli_compress", TEXT, quality="3") == brotli.compress(TEXT, quality=3)


@given(data=st.binary(max_size=4096), quality=st.integers(0, 11), lgwin=st.integers(10, 24))
@settings(max_examples=60, deadline=None)
def test_round_trip(data: bytes, quality: int, lgwin: int) -> None:
    packed = run("brotli_compress", data, quality=quality, lgwin=lgwin)
    assert run("brotli_decompress", packed) == data


def test_round_trip_of_a_multi_step_stream_from_an_arena_slice() -> None:
    # Random bytes then zeros: the compressed stream is several _IN_STEPs long and the output
    # several _OUT_STEPs, so every branch of the incremental loop runs.
    original = np.random.default_rng(3).bytes(3 * MIB) + bytes(20 * MIB)
    packed = brotli.compress(original, quality=1)
    assert len(packed) > 2 * MIB
    backing = bytearray(b"\xee" * 100 + packed + b"\xee" * 100)
    view = memoryview(backing).toreadonly()[100 : 100 + len(packed)]
    assert run("brotli_decompress", view) == original


def test_empty_round_trip() -> None:
    assert run("brotli_decompress", run("brotli_compress", b"")) == b""


@pytest.mark.parametrize("quality", [-1, 12, "x", 2.5, True])
def test_bad_quality(quality: object) -> None:
    with pytest.raises(InvalidParams) as info:
        run("brotli_compress", TEXT, quality=quality)
    assert info.value.param == "quality"
    assert info.value.allowed == "an integer in [0, 11]"


@pytest.mark.parametrize("lgwin", [9, 25])
def test_bad_lgwin(lgwin: int) -> None:
    with pytest.raises(InvalidParams) as info:
        run("brotli_compress", TEXT, lgwin=lgwin)
    assert info.value.param == "lgwin"


@pytest.mark.parametrize(
    ("what", "data"),
    [
        ("garbage", b"this is not brotli at all"),
        ("empty", b""),
        ("truncated", brotli.compress(TEXT)[:-5]),
        ("trailing bytes", brotli.compress(TEXT) + b"\x00\x01"),
        ("flipped byte", bytes([brotli.compress(TEXT)[0] ^ 0xFF]) + brotli.compress(TEXT)[1:]),
    ],
)
def test_corrupt_stream_is_capsule_failed(what: str, data: bytes) -> None:
    with pytest.raises(CapsuleFailed, match="not a valid brotli stream"):
        run("brotli_decompress", data)


def test_trailing_bytes_after_a_stream_ending_on_an_input_step(monkeypatch: pytest.MonkeyPatch) -> None:
    # The stream ends exactly where a feed step ends, so the decoder never sees the trailing
    # byte; the method must still notice it.
    packed = brotli.compress(TEXT)
    monkeypatch.setattr(compute, "_IN_STEP", len(packed))
    with pytest.raises(CapsuleFailed, match="1 trailing bytes"):
        run("brotli_decompress", packed + b"x")
    assert run("brotli_decompress", packed) == TEXT


def test_decompression_bomb_is_refused() -> None:
    bomb = brotli.compress(bytes(64 * MIB), quality=5)
    assert len(bomb) < 1024
    with pytest.raises(BudgetExceeded) as info:
        run("brotli_decompress", bomb, max_output_mb=1)
    assert info.value.kind == "memory"
    assert info.value.limit == MIB
    assert info.value.used is not None
    assert MIB < info.value.used <= MIB + 2 * compute._OUT_STEP, "stops soon after the limit"
    assert "max_output_mb=1" in str(info.value)


def test_output_exactly_at_the_limit_is_allowed() -> None:
    assert run("brotli_decompress", brotli.compress(bytes(MIB)), max_output_mb=1) == bytes(MIB)


def test_default_limit_is_1024_mib() -> None:
    method = LIB.method("brotli_decompress")
    assert method is not None
    assert method.validate({}) == {"max_output_mb": 1024}


@pytest.mark.parametrize("value", [0, -3, "many"])
def test_bad_max_output_mb(value: object) -> None:
    with pytest.raises(InvalidParams) as info:
        run("brotli_decompress", brotli.compress(b"x"), max_output_mb=value)
    assert info.value.param == "max_output_mb"
