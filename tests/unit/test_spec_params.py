from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from inos_node.engine.spec import Method, Param
from inos_node.errors import InvalidParams

Q = Param("quality", "int", 5, minimum=0, maximum=11)


def m(*params: Param) -> Method:
    return Method("x.y", lambda call: b"", params=params)


@given(st.integers(0, 11))
def test_int_accepts_typed_and_string_values(v):
    assert Q.coerce(v) == v
    assert Q.coerce(str(v)) == v


@pytest.mark.parametrize("bad", [-1, 12, "x", "1.5", True, None, 3.5])
def test_int_errors_name_the_param_and_what_is_allowed(bad):
    with pytest.raises(InvalidParams) as info:
        Q.coerce(bad)
    assert info.value.param == "quality"
    assert "quality" in str(info.value)
    assert "[0, 11]" in str(info.value)


def test_unknown_and_missing_params():
    meth = m(Param("key_hex", "str"), Q)
    with pytest.raises(InvalidParams, match="missing required param 'key_hex'"):
        meth.validate({})
    with pytest.raises(InvalidParams, match="unknown param 'qualty'.*key_hex, quality"):
        meth.validate({"key_hex": "00", "qualty": 3})
    assert meth.validate({"key_hex": "ab"}) == {"key_hex": "ab", "quality": 5}


def test_enum_bool_float():
    e = Param("dtype", "enum", "float32", choices=("float32", "float64"))
    assert e.coerce("float64") == "float64"
    with pytest.raises(InvalidParams, match="one of float32, float64"):
        e.coerce("int8")
    b = Param("reset", "bool", False)
    assert b.coerce("true") is True and b.coerce("0") is False and b.coerce(True) is True
    with pytest.raises(InvalidParams):
        b.coerce("maybe")
    f = Param("t", "float", 0.5, minimum=0, maximum=1)
    assert f.coerce("0.25") == 0.25
    with pytest.raises(InvalidParams, match="above the maximum"):
        f.coerce(2)
    with pytest.raises(InvalidParams):
        f.coerce("nan")
