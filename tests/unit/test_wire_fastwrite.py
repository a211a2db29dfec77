"""wire._fastwrite, the hand-written writer of DelegateRequest, DelegateResponse and ReceiptBody,
against pycapnp itself: for every message it writes the very bytes pycapnp writes (a receipt's
signature covers them), and whatever it declines, pycapnp writes or refuses as before."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from test_wire_fastread import BODIES, _requests, _responses

from inos_node.errors import LocalProtocolError
from inos_node.types import Digest, JobRequest, JobResult, Metrics, Status
from inos_node.wire import _fastwrite, delegation
from inos_node.wire.delegation import (
    DelegateCancel,
    DelegateResponse,
    DelegateRun,
    Receipt,
    ReceiptBody,
    encode_delegate_request,
    encode_delegate_response,
    encode_receipt_body,
)

BIG = 2**22


@settings(max_examples=300, deadline=None)
@given(_requests())
def test_requests_are_written_byte_for_byte_as_pycapnp_writes_them(req: Any) -> None:
    fast = _fastwrite.write_delegate_request(req)
    assert fast == delegation._encode_delegate_request(req, BIG) == encode_delegate_request(req)


@settings(max_examples=300, deadline=None)
@given(_responses())
def test_responses_are_written_byte_for_byte_as_pycapnp_writes_them(resp: Any) -> None:
    fast = _fastwrite.write_delegate_response(resp)
    assert fast == delegation._encode_delegate_response(resp, BIG) == encode_delegate_response(resp)


@settings(max_examples=300, deadline=None)
@given(BODIES)
def test_receipt_bodies_are_written_byte_for_byte_as_pycapnp_writes_them(body: Any) -> None:
    fast = _fastwrite.write_receipt_body(body)
    assert fast == delegation._encode_receipt_body(body, BIG) == encode_receipt_body(body)


def _job(**kw: Any) -> JobRequest:
    return JobRequest(**{"job_id": "j", "library": "system", "method": "echo", "input": b"x", **kw})


def _result(**kw: Any) -> JobResult:
    return JobResult(**{"job_id": "j", "status": Status.SUCCESS, "output": b"y", "metrics": Metrics(), **kw})


@pytest.mark.parametrize(("message", "error"), [
    (DelegateRun(2**64, _job(), b"d" * 32), "requestId"),
    (DelegateRun(1, _job(), b"d" * 32, deadline_unix_ms=-1), "deadlineUnixMs"),
    (DelegateCancel(2**64), "requestId"),
    (DelegateResponse(2**64, _result()), "requestId"),
    (ReceiptBody("j", "a", "b", "c", b"", b"", cost=2**64), "cost"),
])
def test_a_value_out_of_range_is_declined_and_refused_as_before(message: Any, error: str) -> None:
    write = {DelegateRun: _fastwrite.write_delegate_request, DelegateCancel: _fastwrite.write_delegate_request,
             DelegateResponse: _fastwrite.write_delegate_response,
             ReceiptBody: _fastwrite.write_receipt_body}[type(message)]
    encode = {DelegateRun: encode_delegate_request, DelegateCancel: encode_delegate_request,
              DelegateResponse: encode_delegate_response, ReceiptBody: encode_receipt_body}[type(message)]
    with pytest.raises(_fastwrite._Decline):
        write(message)
    with pytest.raises(LocalProtocolError, match=error):
        encode(message)


@pytest.mark.parametrize("message", [
    DelegateRun(1, _job(params={"k": object()}), b"d" * 32),  # not JSON
    DelegateRun(1, _job(priority=2**31), b"d" * 32),  # over Int32: pycapnp's own range check
    DelegateRun(1, _job(), b"d" * 32, requester="\udc80"),  # not encodable as UTF-8
    DelegateResponse(1, _result(status="success")),  # not a Status
])
def test_what_the_writer_declines_pycapnp_writes_or_refuses_as_before(message: Any) -> None:
    write = _fastwrite.write_delegate_request if isinstance(message, DelegateRun) else \
        _fastwrite.write_delegate_response
    old = delegation._encode_delegate_request if isinstance(message, DelegateRun) else \
        delegation._encode_delegate_response
    new = encode_delegate_request if isinstance(message, DelegateRun) else encode_delegate_response
    with pytest.raises(_fastwrite._Decline):
        write(message)
    try:
        want: Any = old(message, BIG)
    except Exception as exc:  # noqa: BLE001 - whatever pycapnp raises, the public encoder raises too
        with pytest.raises(type(exc)):
            new(message)
    else:
        assert new(message) == want


def test_the_size_limit_holds_for_both_writers() -> None:
    run = DelegateRun(1, _job(input=b"x" * 5000), b"d" * 32)
    with pytest.raises(LocalProtocolError, match="over the 4096-byte limit"):
        encode_delegate_request(run, max_bytes=4096)
    with pytest.raises(LocalProtocolError, match="over the 4096-byte limit"):
        delegation._encode_delegate_request(run, 4096)


def test_with_the_layout_check_failing_everything_goes_through_pycapnp(monkeypatch: pytest.MonkeyPatch) -> None:
    body = ReceiptBody("j", "a", "b", "system.echo", b"i" * 32, b"o" * 32, 1, Metrics(1, 2, 3, 4, 5, 6), 7)
    resp = DelegateResponse(3, _result(output=Digest(b"z" * 32)), Receipt(b"b", b"s", b"k"))
    want = (encode_receipt_body(body), encode_delegate_response(resp))
    monkeypatch.setattr(delegation, "_fast_ok", lambda: False)

    def refuse(message: Any) -> bytes:
        raise AssertionError("the fast writer was used with the layout check failing")

    for name in ("write_receipt_body", "write_delegate_response", "write_delegate_request"):
        monkeypatch.setattr(_fastwrite, name, refuse)
    assert (encode_receipt_body(body), encode_delegate_response(resp)) == want
    encode_delegate_request(DelegateRun(1, _job(), b"d" * 32))
