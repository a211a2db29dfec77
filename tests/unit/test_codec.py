from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from inos_node.errors import LocalProtocolError, RemoteProtocolError
from inos_node.types import ArenaSlice, Digest, JobRequest, JobResult, Metrics, Status
from inos_node.wire import codec

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=20)
    | st.floats(allow_nan=False, allow_infinity=False),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=8,
)
payloads = st.one_of(
    st.binary(max_size=2048),
    st.builds(Digest, st.binary(min_size=32, max_size=32)),
    st.builds(ArenaSlice, st.integers(0, 2**40), st.integers(0, 2**40)),
)
u64 = st.integers(0, 2**64 - 1)


@settings(max_examples=200, deadline=None)
@given(
    job_id=st.text(max_size=40),
    library=st.text(max_size=20),
    method=st.text(max_size=20),
    payload=payloads,
    params=st.dictionaries(st.text(min_size=1, max_size=10), json_values, max_size=6),
    budget=u64,
    priority=st.integers(-(2**31), 2**31 - 1),
    deadline=u64,
    replicas=st.integers(0, 2**32 - 1),
    module=st.none() | st.binary(max_size=64),
)
def test_job_request_round_trip(job_id, library, method, payload, params, budget, priority, deadline, replicas, module):
    req = JobRequest(job_id, library, method, payload, params, budget, priority, deadline, replicas, module, None)
    assert codec.decode_job_request(codec.encode_job_request(req)) == req


@settings(max_examples=200, deadline=None)
@given(
    status=st.sampled_from(list(Status)),
    payload=payloads,
    cost=u64,
    metrics=st.builds(Metrics, u64, u64, u64, u64, u64, u64),
    error=st.text(max_size=100),
    retryable=st.booleans(),
    executor=st.text(max_size=20),
)
def test_job_result_round_trip(status, payload, cost, metrics, error, retryable, executor):
    res = JobResult("j", status, payload, cost, metrics, error, retryable, executor)
    assert codec.decode_job_result(codec.encode_job_result(res)) == res


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=512))
def test_garbage_is_a_clear_protocol_error_never_a_crash(data):
    for decode in (codec.decode_job_request, codec.decode_job_result):
        try:
            decode(data)
        except RemoteProtocolError as exc:
            assert str(exc), "the error must say what was wrong"


def test_oversized_message_is_refused_before_decoding():
    req = JobRequest("j", "compute", "blake3", b"x" * 4096)
    data = codec.encode_job_request(req)
    with pytest.raises(RemoteProtocolError, match="over the 1024-byte limit") as info:
        codec.decode_job_request(data, max_bytes=1024)
    assert info.value.limit == 1024
    assert info.value.observed == len(data)


def test_encoding_over_the_limit_is_a_local_error():
    with pytest.raises(LocalProtocolError, match="over the"):
        codec.encode_job_request(JobRequest("j", "a", "b", b"x" * 10_000), max_bytes=1000)


def test_truncated_message_names_the_problem():
    data = codec.encode_job_request(JobRequest("j", "compute", "blake3", b"x" * 100))
    with pytest.raises(RemoteProtocolError, match="malformed job request"):
        codec.decode_job_request(data[: len(data) - 64])


def test_digest_of_wrong_length_is_rejected():
    # build a result whose digest is 5 bytes by going through capnp directly
    from inos_node.wire import schemas

    m = schemas.load("compute/v1/capsule.capnp").JobResult.new_message()
    m.jobId = "j"
    m.output.digest = b"short"
    with pytest.raises(RemoteProtocolError, match="digest must be 32 bytes"):
        codec.decode_job_result(m.to_bytes())


def test_params_keep_strings_from_the_command_line():
    req = JobRequest("j", "wasm", "run", b"", {"k": "v", "n": "5", "x": 5})
    back = codec.decode_job_request(codec.encode_job_request(req))
    assert back.params == {"k": "v", "n": "5", "x": 5}
