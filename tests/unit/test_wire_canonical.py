"""wire._canonical, the hand-written reader of BlockBody and Block, against pycapnp itself: it
must take what pycapnp writes and read every input exactly as pycapnp does, or decline and let
pycapnp read it."""

from __future__ import annotations

import random
import struct

import pytest
from _mutate import mutate
from hypothesis import given, settings
from hypothesis import strategies as st

from inos_node.economy.model import Block, BlockType, Payment, block_hash
from inos_node.errors import RemoteProtocolError
from inos_node.wire import _canonical
from inos_node.wire.codec import decode_struct
from inos_node.wire.ledger import (
    _block_of,
    _read_body,
    _schema,
    decode_block,
    encode_block,
    encode_block_body,
)

U64 = st.integers(0, 2**64 - 1)


def _blocks() -> st.SearchStrategy[Block]:
    data = st.binary(max_size=40)
    return st.builds(
        Block, account=data, public_key=data, height=U64, previous=data,
        type=st.sampled_from(list(BlockType)), amount=U64, counterparty=data,
        job=st.text(max_size=30), timestamp_ms=U64, credits=U64, balance=U64,
        payments=st.lists(st.builds(Payment, data, U64), max_size=4).map(tuple),
        deadline_ms=U64, ref_height=U64,
        evidence=st.lists(st.binary(max_size=600), max_size=4).map(tuple),
        signature=st.binary(max_size=70),
    )


def _capnp_wrapper(body: bytes, signature: bytes) -> bytes:
    m = _schema().Block.new_message()
    m.body = body
    m.signature = signature
    return bytes(m.to_bytes())


def _capnp_decode(data: bytes) -> Block:
    """decode_block as it was before wire._canonical: pycapnp reads everything."""
    body, signature = decode_struct(_schema().Block, data, 2**20, "block",
                                    lambda r: (bytes(r.body), bytes(r.signature)))
    return decode_struct(_schema().BlockBody, body, 2**20, "block body",
                         lambda r: _block_of(_read_body(r), signature))


@settings(max_examples=400, deadline=None)
@given(_blocks())
def test_what_pycapnp_writes_is_read_by_the_fast_path_as_pycapnp_reads_it(block: Block) -> None:
    body = encode_block_body(block)
    wire = encode_block(block)
    assert _canonical.read_block_wrapper(wire) == (body, block.signature)
    assert _canonical.read_block_body(body) is not None, "the canonical form is read by the fast path"
    back = decode_block(wire)
    assert back == block == _capnp_decode(wire) and back._body == body and block_hash(back) == block_hash(block)


def test_bodies_around_the_one_segment_boundary() -> None:
    """Bodies around 1024 words (pycapnp's first segment): one segment is read by the fast path,
    several by pycapnp; both give the block back."""
    seen = set()
    for extra in range(0, 8 * 40, 3):
        block = Block(b"a" * 32, b"p" * 32, 1, bytes(32), BlockType.SETTLE, 1, b"", "j", 0, 0, 0,
                      evidence=(b"x" * 4000, b"z" * 3000, b"y" * (750 + extra)))
        body = encode_block_body(block)
        one_segment = struct.unpack_from("<I", body)[0] == 0
        assert (_canonical.read_block_body(body) is not None) == one_segment
        assert decode_block(encode_block(block)) == block
        seen.add(one_segment)
    assert seen == {True, False}, "the sweep crossed the boundary"


def test_every_mutation_of_a_block_reads_as_pycapnp_reads_it() -> None:
    """Flip bits and bytes, truncate, extend: decode_block gives pycapnp's answer every time (the
    same block, or a RemoteProtocolError where pycapnp refuses)."""
    rng = random.Random(7)
    receipt = b"r" * 300
    block = Block(b"a" * 32, b"p" * 32, 9, b"v" * 32, BlockType.SETTLE, 40, b"", "job-1", 5, 6, 7,
                  (Payment(b"w" * 32, 40),), 0, 0, (receipt,), b"s" * 64)
    wire = encode_block(block)
    body = encode_block_body(block)
    fast_hits = 0
    for i in range(3000):
        how = i % 5
        target = mutate(rng, wire if i % 2 else body, how, first_word=0)
        data = target if i % 2 else _capnp_wrapper(target, block.signature)
        try:
            want: Block | str = _capnp_decode(data)
        except RemoteProtocolError:
            want = "refused"
        try:
            got: Block | str = decode_block(data, max_bytes=2**20)
        except RemoteProtocolError:
            got = "refused"
        assert got == want, (i, how)
        if isinstance(got, Block):
            assert got._body == decode_struct(_schema().Block, data, 2**20, "b", lambda r: bytes(r.body))
            fast_hits += _canonical.read_block_body(got._body) is not None
    assert fast_hits > 0


def test_a_valid_but_non_canonical_encoding_is_read_by_pycapnp_and_hashed_as_received() -> None:
    m = _schema().BlockBody.new_message()  # fields set out of ordinal order: another layout
    m.job = "job-2"
    m.evidence = [b"e" * 10]
    m.account = b"a" * 32
    m.publicKey = b"p" * 32
    m.previous = bytes(32)
    m.counterparty = b""
    m.height = 1
    m.type = int(BlockType.SETTLE)
    body = bytes(m.to_bytes())
    assert _canonical.read_block_body(body) is None
    block = decode_block(_capnp_wrapper(body, b"s" * 64))
    assert block.job == "job-2" and block.evidence == (b"e" * 10,) and block.account == b"a" * 32
    assert block._body == body and encode_block_body(block) != body, "the hash is over the bytes received"


def test_size_limits_are_checked_before_reading() -> None:
    block = Block(b"a" * 32, b"p" * 32, 1, bytes(32), BlockType.TRANSFER, 1, b"c" * 32, "", 0, 0, 0)
    wire = encode_block(block)
    with pytest.raises(RemoteProtocolError, match="over the 64-byte limit"):
        decode_block(wire, max_bytes=64)
    with pytest.raises(RemoteProtocolError, match="whole number of 8-byte words"):
        decode_block(wire + b"x")
