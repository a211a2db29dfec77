"""Codecs of /inos/delegate, /inos/blob and /inos/hello: round trips, garbage, limits, receipts."""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from inos_node.errors import LocalProtocolError, RemoteProtocolError
from inos_node.identity import Identity
from inos_node.net.delegation import sign_receipt, verify_receipt
from inos_node.net.host import peer_id_of
from inos_node.types import ArenaSlice, Digest, JobRequest, JobResult, Metrics, Status
from inos_node.wire import delegation as wd
from inos_node.wire import hello as wh

u64 = st.integers(0, 2**64 - 1)
text = st.text(max_size=30)
payloads = st.one_of(
    st.binary(max_size=512),
    st.builds(Digest, st.binary(min_size=32, max_size=32)),
    st.builds(ArenaSlice, u64, u64),
)
json_values = st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=10)
jobs = st.builds(
    JobRequest,
    job_id=text,
    library=text,
    method=text,
    input=payloads,
    params=st.dictionaries(st.text(min_size=1, max_size=8), json_values, max_size=4),
    budget=u64,
    priority=st.integers(-(2**31), 2**31 - 1),
    deadline_ms=u64,
    replicas=st.integers(0, 2**32 - 1),
    module=st.none() | st.binary(max_size=32),
    module_digest=st.none() | st.binary(min_size=32, max_size=32),
)
metrics = st.builds(Metrics, u64, u64, u64, u64, u64, u64)
results = st.builds(
    JobResult,
    job_id=text,
    status=st.sampled_from(list(Status)),
    output=payloads,
    cost=u64,
    metrics=metrics,
    error=text,
    retryable=st.booleans(),
    executor=text,
)
digests = st.binary(min_size=32, max_size=32)
receipts = st.none() | st.builds(
    wd.Receipt, st.binary(max_size=200), st.binary(max_size=64), st.binary(max_size=32)
)

runs = st.builds(
    wd.DelegateRun, request_id=u64, job=jobs, input_digest=digests, requester=text, deadline_unix_ms=u64
)
cancels = st.builds(wd.DelegateCancel, request_id=u64, requester=text)
responses = st.builds(wd.DelegateResponse, request_id=u64, result=results, receipt=receipts)
bodies = st.builds(
    wd.ReceiptBody,
    job_id=text,
    requester=text,
    worker=text,
    capsule=text,
    input_digest=st.binary(max_size=32),
    output_digest=st.binary(max_size=32),
    cost=u64,
    metrics=metrics,
    finished_unix_ms=u64,
)
blob_requests = st.builds(
    wd.BlobRequest,
    request_id=u64,
    digest=st.binary(max_size=40),
    offset=u64,
    length=st.integers(0, 2**32 - 1),
)
blob_responses = st.one_of(
    st.builds(wd.BlobChunk, request_id=u64, chunk=st.binary(max_size=3000), total_length=u64),
    st.builds(wd.BlobNotFound, request_id=u64),
    st.builds(wd.BlobFailed, request_id=u64, error=text),
)
hellos = st.builds(
    wh.Hello,
    network_id=st.binary(min_size=32, max_size=32),
    peer_id=text,
    remote_peer_id=text,
    nonce=st.binary(max_size=64),
    protocol_version=st.integers(0, 2**32 - 1),
    name=text,
)
signed_hellos = st.builds(
    wh.SignedHello, st.binary(max_size=300), st.binary(max_size=64), st.binary(max_size=32)
)

CODECS = [
    ("delegate request", st.one_of(runs, cancels), wd.encode_delegate_request, wd.decode_delegate_request),
    ("delegate response", responses, wd.encode_delegate_response, wd.decode_delegate_response),
    ("receipt body", bodies, wd.encode_receipt_body, wd.decode_receipt_body),
    ("blob request", blob_requests, wd.encode_blob_request, wd.decode_blob_request),
    ("blob response", blob_responses, wd.encode_blob_response, wd.decode_blob_response),
    ("hello", hellos, wh.encode_hello, wh.decode_hello),
    ("signed hello", signed_hellos, wh.encode_signed_hello, wh.decode_signed_hello),
]
DECODERS = [c[3] for c in CODECS]


@pytest.mark.parametrize(("name", "values", "encode", "decode"), CODECS, ids=[c[0] for c in CODECS])
@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_round_trip(name, values, encode, decode, data):
    value = data.draw(values)
    assert decode(encode(value)) == value


@settings(max_examples=400, deadline=None)
@given(garbage=st.binary(max_size=600))
def test_garbage_is_a_remote_protocol_error_and_nothing_else(garbage):
    for decode in DECODERS:
        try:
            decode(garbage)
        except RemoteProtocolError as exc:
            assert str(exc), "the error must say what was wrong"


@settings(max_examples=300, deadline=None)
@given(
    value=st.one_of(runs, responses, blob_responses),
    flips=st.lists(st.tuples(st.integers(0, 10**6), st.integers(1, 255)), max_size=6),
)
def test_corrupted_messages_decode_or_fail_cleanly(value, flips):
    """Near-valid messages reach deeper into capnp than random bytes do."""
    encoders = {wd.DelegateRun: wd.encode_delegate_request, wd.DelegateResponse: wd.encode_delegate_response}
    encode = encoders.get(type(value), wd.encode_blob_response)
    raw = bytearray(encode(value))
    for at, xor in flips:
        raw[at % len(raw)] ^= xor
    for decode in DECODERS:
        try:
            decode(bytes(raw))
        except RemoteProtocolError:
            pass


def test_oversized_input_is_refused_before_decoding():
    data = wd.encode_delegate_request(wd.DelegateRun(1, JobRequest("j", "a", "b", b"x" * 5000), bytes(32)))
    with pytest.raises(RemoteProtocolError, match="over the 1024-byte limit") as info:
        wd.decode_delegate_request(data, max_bytes=1024)
    assert (info.value.limit, info.value.observed) == (1024, len(data))
    with pytest.raises(LocalProtocolError, match="over the"):
        wd.encode_delegate_request(
            wd.DelegateRun(1, JobRequest("j", "a", "b", b"x" * 5000), bytes(32)), max_bytes=1024
        )


def test_a_run_needs_a_32_byte_input_digest():
    with pytest.raises(LocalProtocolError, match="inputDigest"):
        wd.encode_delegate_request(wd.DelegateRun(1, JobRequest("j", "a", "b"), b"short"))


def test_receipt_body_bytes_are_canonical():
    body = wd.ReceiptBody("j", "r", "w", "system.echo", bytes(32), bytes(range(32)), 7, Metrics(1, 2, 3), 99)
    assert wd.encode_receipt_body(body) == wd.encode_receipt_body(
        wd.decode_receipt_body(wd.encode_receipt_body(body))
    )


def test_signed_receipt_verifies_and_names_its_worker():
    worker = Identity(os.urandom(32))
    body = wd.ReceiptBody("j", "req", peer_id_of(worker), "system.echo", bytes(32), bytes(32), 1)
    receipt = sign_receipt(worker, body)
    assert verify_receipt(receipt, worker_peer_id=peer_id_of(worker)) == body
    with pytest.raises(RemoteProtocolError, match="does not verify"):
        verify_receipt(wd.Receipt(receipt.body + b"x", receipt.signature, receipt.public_key))
    impostor = Identity(os.urandom(32))
    with pytest.raises(RemoteProtocolError, match="signed by"):
        verify_receipt(sign_receipt(impostor, body))  # a valid signature, but not the worker's key


@settings(max_examples=200, deadline=None)
@given(rid=u64, total=u64, chunk=st.binary(max_size=5000))
def test_blob_chunk_parts_decode_like_the_builder(rid, total, chunk):
    resp = wd.BlobChunk(rid, chunk, total)
    head, body, pad = wd.encode_blob_chunk_parts(resp)
    message = head + bytes(body) + pad
    assert message == wd.encode_blob_response(resp)  # small chunks: the builder uses one segment too
    assert wd.decode_blob_response(message) == resp


def test_blob_chunk_parts_for_a_full_chunk():
    resp = wd.BlobChunk(3, os.urandom(wd.MAX_BLOB_CHUNK), 10 * wd.MAX_BLOB_CHUNK)
    head, body, pad = wd.encode_blob_chunk_parts(resp)
    assert body is resp.chunk and pad == b""
    got = wd.decode_blob_response(head + body + pad)
    assert isinstance(got.chunk, memoryview), "the fast path must not copy the chunk"
    assert got == resp
    assert wd.decode_blob_response(wd.encode_blob_response(resp)) == resp  # two-segment builder form


@settings(max_examples=400, deadline=None)
@given(
    resp=st.builds(wd.BlobChunk, request_id=u64, chunk=st.binary(max_size=64), total_length=u64),
    flips=st.lists(st.tuples(st.integers(0, 10**6), st.integers(1, 255)), min_size=1, max_size=4),
)
def test_blob_fast_path_accepts_only_what_capnp_reads_the_same_way(resp, flips):
    raw = bytearray(wd.encode_blob_response(resp))
    for at, xor in flips:
        raw[at % len(raw)] ^= xor
    fast = wd._fast_chunk(bytes(raw))
    if fast is None:
        return
    slow = wd.decode_struct(wd._schema().BlobResponse, bytes(raw), 10**6, "blob response", wd._read_blob_response)
    assert slow == fast


def test_hello_needs_a_32_byte_network_id():
    with pytest.raises(LocalProtocolError):
        wh.encode_hello(wh.Hello(b"short", "a", "b", b"n"))
    bad = wh.encode_signed_hello(wh.SignedHello(b"x", b"y", b"z"))
    with pytest.raises(RemoteProtocolError):
        wh.decode_hello(bad)  # a SignedHello is not a Hello with a 32-byte network id
