"""wire._fastread, the hand-written reader of DelegateRequest, DelegateResponse and ReceiptBody,
against pycapnp itself: whatever bytes it is given, it reads them exactly as pycapnp does, or
declines and lets pycapnp read them."""

from __future__ import annotations

import random
from typing import Any

import pytest
from _mutate import MUTATIONS, mutate
from hypothesis import given, settings
from hypothesis import strategies as st

from inos_node.errors import RemoteProtocolError
from inos_node.types import ArenaSlice, Digest, JobRequest, JobResult, Metrics, Status
from inos_node.wire import _fastread, delegation
from inos_node.wire.codec import decode_struct, traversal_words
from inos_node.wire.delegation import (
    DelegateCancel,
    DelegateResponse,
    DelegateRun,
    Receipt,
    ReceiptBody,
    _read_delegate_request,
    _read_delegate_response,
    _read_receipt_body,
    _schema,
    decode_delegate_request,
    decode_delegate_response,
    decode_receipt_body,
    encode_delegate_request,
    encode_delegate_response,
    encode_receipt_body,
)

U64 = st.integers(0, 2**64 - 1)
TEXT = st.text(max_size=20)  # any unicode, NUL included
PARAM = st.one_of(st.integers(-(2**40), 2**40), st.text(max_size=10), st.booleans(), st.none(),
                  st.lists(st.integers(0, 9), max_size=3))
PAYLOAD = st.one_of(st.binary(max_size=200), st.binary(min_size=32, max_size=32).map(Digest),
                    st.builds(ArenaSlice, U64, U64))
METRICS = st.builds(Metrics, U64, U64, U64, U64, U64, U64)


def _requests() -> st.SearchStrategy[Any]:
    job = st.builds(
        JobRequest, job_id=TEXT, library=TEXT, method=TEXT, input=PAYLOAD,
        params=st.dictionaries(st.text(max_size=8), PARAM, max_size=4), budget=U64,
        priority=st.integers(-(2**31), 2**31 - 1), deadline_ms=U64, replicas=st.integers(0, 2**32 - 1),
        module=st.none() | st.binary(max_size=50), module_digest=st.none() | st.binary(max_size=40),
    )
    run = st.builds(DelegateRun, request_id=U64, job=job, input_digest=st.binary(min_size=32, max_size=32),
                    requester=TEXT, deadline_unix_ms=U64, escrow=st.binary(max_size=100),
                    escrow_chain=st.lists(st.binary(max_size=60), max_size=4).map(tuple))
    return st.one_of(run, st.builds(DelegateCancel, request_id=U64, requester=TEXT))


def _responses() -> st.SearchStrategy[DelegateResponse]:
    result = st.builds(JobResult, job_id=TEXT, status=st.sampled_from(list(Status)), output=PAYLOAD, cost=U64,
                       metrics=METRICS, error=TEXT, retryable=st.booleans(), executor=TEXT)
    receipt = st.none() | st.builds(Receipt, body=st.binary(max_size=300), signature=st.binary(max_size=70),
                                    public_key=st.binary(max_size=40))
    return st.builds(DelegateResponse, request_id=U64, result=result, receipt=receipt)


BODIES = st.builds(ReceiptBody, job_id=TEXT, requester=TEXT, worker=TEXT, capsule=TEXT,
                   input_digest=st.binary(max_size=40), output_digest=st.binary(max_size=40), cost=U64,
                   metrics=METRICS, finished_unix_ms=U64)

# (fast reader, pycapnp type name, pycapnp read) for each message
KINDS = {
    "request": (_fastread.read_delegate_request, "DelegateRequest", _read_delegate_request),
    "response": (_fastread.read_delegate_response, "DelegateResponse", _read_delegate_response),
    "body": (_fastread.read_receipt_body, "ReceiptBody", _read_receipt_body),
}


def _pycapnp(kind: str, data: bytes) -> Any:
    """What pycapnp alone reads from ``data`` (the decoders before wire._fastread), or "refused"."""
    _, name, read = KINDS[kind]
    try:
        return decode_struct(getattr(_schema(), name), data, 2**22, kind, read)
    except RemoteProtocolError:
        return "refused"


def _fast(kind: str, data: bytes) -> Any:
    return KINDS[kind][0](data, traversal_words(data))


def test_the_layout_is_the_schemas_and_a_wrong_one_is_noticed(monkeypatch: pytest.MonkeyPatch) -> None:
    assert _fastread.layout_matches_schema()
    monkeypatch.setitem(_fastread._LAYOUT, "Metrics", {**_fastread._LAYOUT["Metrics"], "fuel": ("u64", 24)})
    assert not _fastread.layout_matches_schema()


@settings(max_examples=300, deadline=None)
@given(_requests())
def test_requests_pycapnp_writes_are_read_by_the_fast_path_as_pycapnp_reads_them(req: Any) -> None:
    wire = encode_delegate_request(req)
    fast = _fast("request", wire)
    assert fast is not None, "what pycapnp writes is in the subset the fast path reads"
    assert fast == _pycapnp("request", wire) == decode_delegate_request(wire)
    if isinstance(req, DelegateRun):  # params round-trip through JSON (codec's rule)
        assert fast.job.params == req.job.params and fast.escrow_chain == req.escrow_chain


@settings(max_examples=300, deadline=None)
@given(_responses())
def test_responses_pycapnp_writes_are_read_by_the_fast_path_as_pycapnp_reads_them(resp: Any) -> None:
    wire = encode_delegate_response(resp)
    fast = _fast("response", wire)
    assert fast is not None
    assert fast == _pycapnp("response", wire) == decode_delegate_response(wire) == resp


@settings(max_examples=300, deadline=None)
@given(BODIES)
def test_receipt_bodies_pycapnp_writes_are_read_by_the_fast_path_as_pycapnp_reads_them(body: Any) -> None:
    wire = encode_receipt_body(body)
    fast = _fast("body", wire)
    assert fast is not None
    delegation._BODIES.clear()
    assert fast == _pycapnp("body", wire) == decode_receipt_body(wire) == body


def _samples() -> dict[str, bytes]:
    m = Metrics(1, 2, 3, 4, 5, 6)
    job = JobRequest("job-1", "system", "echo", b"x" * 100, {"n": 5, "s": "abc", "l": [1, 2]}, budget=7,
                     priority=-3, deadline_ms=9000, replicas=2, module=b"\0asm", module_digest=None)
    run = DelegateRun(77, job, b"d" * 32, "12D3KooWA", 1_790_000_000_000, b"e" * 120, (b"c1" * 20, b"c2" * 9))
    body = ReceiptBody("job-1", "12D3KooWA", "12D3KooWB", "system.echo", b"i" * 32, b"o" * 32, 1, m, 5)
    resp = DelegateResponse(77, JobResult("job-1", Status.SUCCESS, b"y" * 100, 1, m, "", False, "inline"),
                            Receipt(encode_receipt_body(body), b"s" * 64, b"k" * 32))
    return {"request": encode_delegate_request(run), "response": encode_delegate_response(resp),
            "body": encode_receipt_body(body)}


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_every_mutation_is_read_as_pycapnp_reads_it(kind: str) -> None:
    """Flip bits and bytes, overwrite words, truncate, extend: the fast path gives pycapnp's answer
    or declines, every time; and the public decoder gives pycapnp's answer (or refuses) always."""
    rng = random.Random(11)
    original = _samples()[kind]
    decode = {"request": decode_delegate_request, "response": decode_delegate_response,
              "body": decode_receipt_body}[kind]
    fast_hits = changed_hits = 0
    for i in range(4000):
        how = i % MUTATIONS
        data = mutate(rng, original, how)
        want = _pycapnp(kind, data)
        fast = _fast(kind, data)
        if fast is not None:
            assert fast == want, (i, how)
            fast_hits += 1
            changed_hits += data != original
        delegation._BODIES.clear()
        try:
            got = decode(data)
        except RemoteProtocolError:
            got = "refused"
        assert got == want, (i, how)
    assert fast_hits > 100 and changed_hits > 50, (fast_hits, changed_hits)


def test_other_layouts_are_read_by_the_fast_path_too() -> None:
    """Fields set out of ordinal order, a struct from an older writer with fewer words: the same
    values as pycapnp."""
    m = _schema().ReceiptBody.new_message()  # out of order: another layout than encode_receipt_body's
    m.finishedUnixMs = 9
    mt = m.init("metrics")
    mt.fuel = 3
    m.capsule = "wasm.run"
    m.jobId = "j"
    data = bytes(m.to_bytes())
    fast = _fast("body", data)
    assert fast is not None and fast == _pycapnp("body", data)
    seen = (fast.capsule, fast.job_id, fast.metrics.fuel, fast.finished_unix_ms, fast.worker)
    assert seen == ("wasm.run", "j", 3, 9, "")
    # the root struct cut short (an older, smaller ReceiptBody: 2 data words and 2 pointers, or
    # 1 data word and none): the missing fields read as their defaults
    wire = bytearray(_samples()["body"])
    root = int.from_bytes(wire[8:16], "little")
    for dw, pc, seen in ((2, 2, (1, "job-1", "12D3KooWA", 5, "")), (1, 0, (1, "", "", 0, ""))):
        wire[8:16] = ((root & 0xFFFFFFFF) | dw << 32 | pc << 48).to_bytes(8, "little")
        data = bytes(wire)
        want = _pycapnp("body", data)
        assert want != "refused" and _fast("body", data) == want
        assert (want.cost, want.job_id, want.requester, want.finished_unix_ms, want.worker) == seen


def test_aliased_pointers_are_charged_and_decline_past_the_traversal_limit() -> None:
    """An escrow chain of many pointers to one big blob: pycapnp refuses it (traversal limit);
    the fast path declines rather than copy the blob again and again."""
    m = _schema().DelegateRequest.new_message()
    m.requestId = 1
    m.inputDigest = b"d" * 32
    m.init("run")
    chain = m.init("escrowChain", 64)
    chain[0] = b"b" * 4096
    data = bytearray(m.to_bytes())
    # every element of the pointer list re-aimed at element 0's bytes
    first = data.index(b"b" * 64) // 8  # word of the blob
    lst = None
    for w in range(2, len(data) // 8):
        word = int.from_bytes(data[w * 8:w * 8 + 8], "little")
        if word & 3 == 1 and (word >> 32) & 7 == 2 and word >> 35 == 4096:
            lst = w
            break
    assert lst is not None
    for i in range(64):
        at = lst + i
        off = first - at - 1
        data[at * 8:at * 8 + 8] = ((off & 0x3FFFFFFF) << 2 | 1 | (2 | 4096 << 3) << 32).to_bytes(8, "little")
    data = bytes(data)
    assert _pycapnp("request", data) == "refused"
    assert _fast("request", data) is None
    with pytest.raises(RemoteProtocolError, match="malformed delegate request"):
        decode_delegate_request(data)


def test_size_limits_are_checked_before_either_reader() -> None:
    wire = _samples()["response"]
    with pytest.raises(RemoteProtocolError, match="over the 64-byte limit"):
        decode_delegate_response(wire, max_bytes=64)
    with pytest.raises(RemoteProtocolError, match="whole number of 8-byte words"):
        decode_delegate_response(wire + b"x")


def test_a_schema_mismatch_sends_everything_through_pycapnp(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    monkeypatch.setattr(delegation, "_fast_ok", lambda: False)
    monkeypatch.setattr(_fastread, "read_delegate_response", lambda *a: calls.append(a))
    wire = _samples()["response"]
    assert decode_delegate_response(wire) == _pycapnp("response", wire)
    assert calls == []
