"""Advert codec: round trips, garbage from outside, limits and signatures."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from inos_node.errors import LocalProtocolError, RemoteProtocolError
from inos_node.identity import Identity
from inos_node.protocols.adverts import Advert, MethodPrice
from inos_node.wire import adverts as wa

u32 = st.integers(0, 2**32 - 1)
u64 = st.integers(0, 2**64 - 1)
text = st.text(max_size=24)
adverts = st.builds(
    Advert,
    peer_id=text,
    name=text,
    protocol_version=u32,
    sequence=u64,
    issued_unix_ms=u64,
    ttl_ms=u32,
    methods=st.lists(st.builds(MethodPrice, text, u64, text), max_size=6).map(tuple),
    load=st.floats(width=32, allow_nan=False),
    queue_depth=u32,
    cores=u32,
    features=st.lists(text, max_size=5).map(tuple),
    addresses=st.lists(text, max_size=4).map(tuple),
    api_version=text,
)


def _identity(n: int) -> Identity:
    return Identity(hashlib.sha256(b"advert-test-%d" % n).digest())


A, B = _identity(1), _identity(2)
SAMPLE = Advert(
    peer_id="12D3KooWsample",
    name="node-a",
    sequence=7,
    issued_unix_ms=1_700_000_000_000,
    ttl_ms=30_000,
    methods=(MethodPrice("linalg.matmul", 12, "call"), MethodPrice("compute.blake3", 1, "mib")),
    load=0.25,
    queue_depth=3,
    cores=8,
    features=("avx2",),
    addresses=("/ip4/127.0.0.1/tcp/4001",),
    api_version="1.0",
)


@settings(max_examples=300, deadline=None)
@given(adverts)
def test_advert_round_trip(advert):
    data = wa.encode_advert(advert)
    assert wa.decode_advert(data) == advert
    assert wa.encode_advert(advert) == data  # deterministic: the same advert, the same bytes


@settings(max_examples=100, deadline=None)
@given(adverts)
def test_signed_advert_round_trip(advert):
    advert_back, key = wa.open_signed_advert(wa.sign_advert(advert, A))
    assert advert_back == advert and key == A.public_key


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=512))
def test_garbage_is_a_remote_protocol_error(data):
    for decode in (wa.decode_advert, wa.decode_signed_advert, wa.open_signed_advert):
        try:
            decode(data)
        except RemoteProtocolError:
            pass


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_corrupted_signed_adverts_never_verify_silently(data):
    signed = bytearray(wa.sign_advert(SAMPLE, A))
    i = data.draw(st.integers(0, len(signed) - 1))
    signed[i] ^= data.draw(st.integers(1, 255))
    try:
        advert, key = wa.open_signed_advert(bytes(signed))
    except RemoteProtocolError:
        return
    # a flip in framing padding may leave the signed content intact; then nothing changed
    assert (advert, key) == (SAMPLE, A.public_key)


def test_empty_and_unaligned_input_is_refused_before_capnp():
    with pytest.raises(RemoteProtocolError, match="8-byte words"):
        wa.decode_advert(b"")
    with pytest.raises(RemoteProtocolError, match="8-byte words"):
        wa.decode_signed_advert(b"\x00" * 12)


def test_size_limits():
    big = Advert(peer_id="p", features=("x" * 1000,) * 70)
    with pytest.raises(LocalProtocolError) as err:
        wa.encode_advert(big)
    assert err.value.limit == wa.MAX_ADVERT_BYTES
    with pytest.raises(RemoteProtocolError) as err2:
        wa.decode_advert(b"\x00" * (wa.MAX_ADVERT_BYTES + 8))
    assert err2.value.limit == wa.MAX_ADVERT_BYTES and err2.value.observed == wa.MAX_ADVERT_BYTES + 8
    with pytest.raises(RemoteProtocolError):
        wa.decode_signed_advert(b"\x00" * (wa.MAX_SIGNED_ADVERT_BYTES + 8))
    with pytest.raises(LocalProtocolError):
        wa.encode_signed_advert(wa.SignedAdvert(b"\x00" * (wa.MAX_SIGNED_ADVERT_BYTES + 8), b"", b""))
    # just under the limit still encodes and decodes
    fits = Advert(peer_id="p", features=("x" * 1000,) * 60)
    assert wa.decode_advert(wa.encode_advert(fits)) == fits


def test_out_of_range_fields_are_local_errors():
    with pytest.raises(LocalProtocolError):
        wa.encode_advert(Advert(peer_id="p", ttl_ms=2**32))
    with pytest.raises(LocalProtocolError):
        wa.encode_advert(Advert(peer_id="p", sequence=-1))


def _resign(
    advert_bytes: bytes,
    signer: Identity,
    *,
    context: bytes = wa.ADVERT_SIGNING_CONTEXT,
    key: bytes | None = None,
) -> bytes:
    return wa.encode_signed_advert(
        wa.SignedAdvert(
            advert_bytes, signer.sign(context + advert_bytes), key if key is not None else signer.public_key
        )
    )


def test_signature_by_another_key_than_the_carried_one_is_refused():
    body = wa.encode_advert(SAMPLE)
    with pytest.raises(RemoteProtocolError, match="signature"):
        wa.open_signed_advert(_resign(body, A, key=B.public_key))


def test_signature_over_other_bytes_is_refused():
    signed = wa.decode_signed_advert(wa.sign_advert(SAMPLE, A))
    other = wa.encode_advert(Advert(peer_id=SAMPLE.peer_id, sequence=SAMPLE.sequence + 1))
    forged = wa.encode_signed_advert(wa.SignedAdvert(other, signed.signature, signed.public_key))
    with pytest.raises(RemoteProtocolError, match="signature"):
        wa.open_signed_advert(forged)


def test_signature_without_the_domain_prefix_is_refused():
    body = wa.encode_advert(SAMPLE)
    with pytest.raises(RemoteProtocolError, match="signature"):
        wa.open_signed_advert(_resign(body, A, context=b""))
    assert wa.open_signed_advert(_resign(body, A))[0] == SAMPLE


def test_malformed_keys_and_signatures_are_refused():
    body = wa.encode_advert(SAMPLE)
    good = wa.decode_signed_advert(_resign(body, A))
    for sa in (
        wa.SignedAdvert(body, good.signature, b""),
        wa.SignedAdvert(body, good.signature, good.public_key[:31]),
        wa.SignedAdvert(body, b"", good.public_key),
        wa.SignedAdvert(body, good.signature[:63], good.public_key),
        wa.SignedAdvert(body, good.signature + b"\x00", good.public_key),
    ):
        with pytest.raises(RemoteProtocolError):
            wa.open_signed_advert(wa.encode_signed_advert(sa))


def test_a_valid_signature_over_garbage_advert_bytes_is_still_malformed():
    garbage = b"\x01" * 64
    with pytest.raises(RemoteProtocolError, match="advert"):
        wa.open_signed_advert(_resign(garbage, A))


def test_unencodable_envelope_is_a_local_error():
    with pytest.raises(LocalProtocolError):
        wa.encode_signed_advert(wa.SignedAdvert(object(), b"", b""))  # type: ignore[arg-type]
