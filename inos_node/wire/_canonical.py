"""A hand-written reader for the two ledger messages a worker decodes on every paid job,
``BlockBody`` and ``Block`` (schemas/economy/v1/ledger.capnp), in their canonical form only.

Why: pycapnp reads a message field by field, about 2 us per field.  Measured on the project
machine, ``decode_block`` of one settle block with a 400-byte receipt took 36 to 42 us through
pycapnp alone and 17 to 22 us with this reader (both including building the ``Block``).  (A
hand-written encoder was tried too and measured no faster than pycapnp's: encoding stays with
pycapnp.)  Private to ``wire.ledger``, which falls back to pycapnp whenever this declines (None).

What "canonical" means here: the bytes pycapnp's ``to_bytes()`` gives when the fields are set in
ordinal order into a fresh message (what ``wire.ledger.encode_block_body`` does) and one segment
holds them.  Layout (words of 8 bytes; pointer offsets count from the word after the pointer):

    segment table   u32 segment count - 1 (= 0), u32 segment words
    word 0          root struct pointer (BlockBody: 8 data words, 7 pointers)
    words 1-8       data: height, type (u8, rest zero), amount, timestampMs, credits, balance,
                    deadlineMs, refHeight
    words 9-15      pointers: account, publicKey, previous, counterparty, job, payments, evidence
    then            the objects, in the order the fields were set: account, publicKey, previous,
                    counterparty, job (Text, NUL-terminated), payments (tag word, elements of 1 data
                    + 1 pointer word, then each payment's account), evidence (a pointer list, then
                    each item).  Empty Data points at the next free word; empty lists are null.

The reader accepts only that form: every pointer must be exactly the word pycapnp writes there
(its target the next free word, its kind and size), padding must be zero, and the segment must end
where the last object does.  Such bytes are the canonical encoding of the fields read, so pycapnp
would read the same values from them.  Anything else (another layout, several segments,
malformed data) gets None, and pycapnp decides.  tests/unit/test_wire_canonical.py checks both
against pycapnp, on generated and on mutated messages.
"""

from __future__ import annotations

import struct
from typing import Any

__all__ = ["read_block_body", "read_block_wrapper"]

_BODY_FIXED = struct.Struct("<II" + "Q" * 16)  # segment table, root pointer, 8 data words, 7 pointers
_BODY_ROOT = (8 | 7 << 16) << 32  # struct pointer: offset 0, 8 data words, 7 pointers
_WRAPPER_FIXED = struct.Struct("<IIQQQ")  # segment table, root pointer, body and signature pointers
_WRAPPER_ROOT = (2 << 16) << 32  # struct pointer: 0 data words, 2 pointers
_PAYMENT_TAG_SIZES = (1 | 1 << 16) << 32  # a Payment: 1 data word, 1 pointer
_TYPE_WORD_MASK = ~0xFF & 0xFFFFFFFFFFFFFFFF
_Q = struct.Struct("<Q")
_PAD = [bytes(n) for n in range(9)]

# Positions below are in words of the whole buffer (the segment table is word 0, so word w of the
# segment is word w + 1 here); a pointer's offset is relative, so the same formula holds.


def _blob(data: bytes, word: int, at: int, pos: int, limit: int) -> tuple[bytes, int] | None:
    """The Data the pointer ``word`` (stored in word ``at``) names, if it is canonical with the next
    free word ``pos``: (the bytes, the next free word after them)."""
    n = word >> 35
    if word != ((pos - at - 1) << 2 | 1 | (2 | n << 3) << 32):
        return None
    end = pos + ((n + 7) >> 3)
    if end > limit:
        return None
    start = 8 * pos
    if n & 7 and data[start + n: 8 * end] != _PAD[-n & 7]:
        return None
    return data[start: start + n], end


def read_block_body(data: bytes) -> tuple[Any, ...] | None:
    """The fields of canonical ``BlockBody`` bytes in ordinal order (account, publicKey, height,
    previous, type, amount, counterparty, job, timestampMs, credits, balance, payments as
    (account, amount) pairs, deadlineMs, refHeight, evidence), or None when not canonical."""
    size = len(data)
    if size < 8 * 17 or size & 7:
        return None
    fixed = _BODY_FIXED.unpack_from(data, 0)
    if fixed[0] != 0 or fixed[2] != _BODY_ROOT:
        return None
    limit = fixed[1] + 1  # words, the segment table included (object words count from there)
    if 8 * limit != size:
        return None
    _, _, _, height, type_word, amount, ts, credits, balance, deadline, ref = fixed[:11]
    if type_word & _TYPE_WORD_MASK:
        return None
    pos = 17
    got = []
    for i in range(4):
        res = _blob(data, fixed[11 + i], 10 + i, pos, limit)
        if res is None:
            return None
        got.append(res[0])
        pos = res[1]
    word = fixed[15]
    n = word >> 35
    if n == 0 or word != ((pos - 15) << 2 | 1 | (2 | n << 3) << 32) or pos + ((n + 7) >> 3) > limit:
        return None
    start = 8 * pos
    pos += (n + 7) >> 3
    if data[start + n - 1: 8 * pos] != _PAD[(-n & 7) + 1]:  # the NUL, then zero padding
        return None
    try:
        job = data[start: start + n - 1].decode("utf-8")
    except UnicodeDecodeError:
        return None
    payments: list[tuple[bytes, int]] = []
    word = fixed[16]
    if word:
        words = word >> 35
        count = words >> 1
        if count == 0 or words & 1 or word != ((pos - 16) << 2 | 1 | (7 | words << 3) << 32):
            return None
        tag = pos
        pos += 1 + words
        if pos > limit or _Q.unpack_from(data, 8 * tag)[0] != (count << 2 | _PAYMENT_TAG_SIZES):
            return None
        elements = struct.unpack_from(f"<{words}Q", data, 8 * tag + 8)
        for i in range(count):
            res = _blob(data, elements[2 * i + 1], tag + 2 + 2 * i, pos, limit)
            if res is None:
                return None
            payments.append((res[0], elements[2 * i]))
            pos = res[1]
    evidence: list[bytes] = []
    word = fixed[17]
    if word:
        count = word >> 35
        if count == 0 or word != ((pos - 17) << 2 | 1 | (6 | count << 3) << 32):
            return None
        first = pos
        pos += count
        if pos > limit:
            return None
        pointers = struct.unpack_from(f"<{count}Q", data, 8 * first)
        for i in range(count):
            res = _blob(data, pointers[i], first + i, pos, limit)
            if res is None:
                return None
            evidence.append(res[0])
            pos = res[1]
    if pos != limit:
        return None
    account, public_key, previous, counterparty = got
    return (account, public_key, height, previous, type_word, amount, counterparty, job, ts, credits, balance,
            payments, deadline, ref, evidence)


def read_block_wrapper(data: bytes) -> tuple[bytes, bytes] | None:
    """(body, signature) of canonical ``Block`` bytes, or None when not canonical."""
    if len(data) < 32 or len(data) & 7:
        return None
    count, words, root, body_ptr, sig_ptr = _WRAPPER_FIXED.unpack_from(data, 0)
    limit = words + 1
    if count != 0 or root != _WRAPPER_ROOT or 8 * limit != len(data):
        return None
    body = _blob(data, body_ptr, 2, 4, limit)
    if body is None:
        return None
    sig = _blob(data, sig_ptr, 3, body[1], limit)
    if sig is None or sig[1] != limit:
        return None
    return body[0], sig[0]
