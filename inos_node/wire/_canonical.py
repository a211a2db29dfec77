"""Hand-written Cap'n Proto codecs for the two hottest ledger messages, ``BlockBody`` and ``Block``
(schemas/economy/v1/ledger.capnp), in their canonical form only.

Why: a paid job builds two blocks on the requester and decodes two on the worker, on the job's
critical path.  Measured on the project machine (one settle block with a 400-byte receipt):
decoding took 36 to 42 us through pycapnp and 17 to 22 us here (both including building the
``Block``); encoding gains less, 7 to 10 us against 10 to 12.  These functions are private to
``wire.ledger``, which falls back to pycapnp whenever they decline (return None).

What "canonical" means here: exactly the bytes pycapnp's ``to_bytes()`` gives when the fields are
set in ordinal order into a fresh message (what ``wire.ledger.encode_block_body`` does), and
which a single segment holds.  Layout (words of 8 bytes; pointer offsets count from the word after
the pointer):

    segment table   u32 segment count - 1 (= 0), u32 segment words
    word 0          root struct pointer (BlockBody: 8 data words, 7 pointers)
    words 1-8       data: height, type (u8, rest zero), amount, timestampMs, credits, balance,
                    deadlineMs, refHeight
    words 9-15      pointers: account, publicKey, previous, counterparty, job, payments, evidence
    then            the objects, in the order the fields were set: account, publicKey, previous,
                    counterparty, job (Text, NUL-terminated), payments (tag word, elements of 1 data
                    + 1 pointer word, then each payment's account), evidence (a pointer list, then
                    each item).  Empty Data points at the next free word; empty lists are null.

The encoder is tested byte for byte against pycapnp (tests/unit/test_wire_canonical.py).  The
reader accepts only the canonical form: every pointer must be exactly the word the encoder would
write (its target the next free word, its kind and size), padding zero, and the segment must end
where the last object does.  Such bytes are the canonical encoding of the fields read, so pycapnp
would read the same values from them.  Anything else (another layout, several segments,
malformed data) gets None, and pycapnp decides.
"""

from __future__ import annotations

import struct
from typing import Any

__all__ = ["encode_block_body", "encode_block_wrapper", "read_block_body", "read_block_wrapper"]

_MAX_SEGMENT_WORDS = 1024  # pycapnp's first segment (SUGGESTED_FIRST_SEGMENT_WORDS): one segment up to this
_BODY_FIXED = struct.Struct("<II" + "Q" * 16)  # segment table, root pointer, 8 data words, 7 pointers
_BODY_ROOT = (8 | 7 << 16) << 32  # struct pointer: offset 0, 8 data words, 7 pointers
_WRAPPER_ROOT = (2 << 16) << 32  # struct pointer: 0 data words, 2 pointers
_PAYMENT_TAG_SIZES = (1 | 1 << 16) << 32  # a Payment: 1 data word, 1 pointer
_TYPE_WORD_MASK = ~0xFF & 0xFFFFFFFFFFFFFFFF
_Q = struct.Struct("<Q")
_QQ = struct.Struct("<QQ")
_HEADER = struct.Struct("<II")
_PAD = [bytes(n) for n in range(9)]


def encode_block_body(account: bytes, public_key: bytes, height: int, previous: bytes, type_: int,
                      amount: int, counterparty: bytes, job: str, timestamp_ms: int, credits: int,
                      balance: int, payments: Any, deadline_ms: int, ref_height: int,
                      evidence: Any) -> bytes | None:
    """The canonical ``BlockBody`` bytes, or None when they would not fit one segment.  The
    caller checks value ranges (unsigned 64-bit, a u8 type) and list limits first."""
    text = job.encode("utf-8")
    parts: list[bytes] = []
    ptrs = [0] * 7
    pos = 16  # the next free word: after the root pointer (0), data (1-8) and pointers (9-15)
    for i, blob in enumerate((account, public_key, previous, counterparty)):
        n = len(blob)
        ptrs[i] = (pos - 10 - i) << 2 | 1 | (2 | n << 3) << 32
        if n:
            parts.append(blob)
            parts.append(_PAD[-n & 7])
            pos += (n + 7) >> 3
    n = len(text) + 1
    ptrs[4] = (pos - 14) << 2 | 1 | (2 | n << 3) << 32
    parts.append(text)
    parts.append(_PAD[-n & 7] + b"\0")
    pos += (n + 7) >> 3
    if payments:
        count = len(payments)
        ptrs[5] = (pos - 15) << 2 | 1 | (7 | (2 * count) << 3) << 32
        tag = pos
        elements = [count << 2 | _PAYMENT_TAG_SIZES]
        pos += 1 + 2 * count
        accounts: list[bytes] = []
        for i, pay in enumerate(payments):
            at = tag + 2 + 2 * i  # the element's pointer word
            acct = pay.account
            k = len(acct)
            elements.append(pay.amount)
            elements.append((pos - at - 1) << 2 | 1 | (2 | k << 3) << 32)
            if k:
                accounts.append(acct)
                accounts.append(_PAD[-k & 7])
                pos += (k + 7) >> 3
        parts.append(struct.pack(f"<{len(elements)}Q", *elements))
        parts += accounts
    if evidence:
        count = len(evidence)
        ptrs[6] = (pos - 16) << 2 | 1 | (6 | count << 3) << 32
        first = pos
        pos += count
        words = []
        items: list[bytes] = []
        for i, item in enumerate(evidence):
            k = len(item)
            words.append((pos - first - i - 1) << 2 | 1 | (2 | k << 3) << 32)
            if k:
                items.append(item)
                items.append(_PAD[-k & 7])
                pos += (k + 7) >> 3
        parts.append(struct.pack(f"<{count}Q", *words))
        parts += items
    if pos > _MAX_SEGMENT_WORDS:
        return None  # pycapnp would use a second segment: let it
    fixed = _BODY_FIXED.pack(0, pos, _BODY_ROOT, height, type_, amount, timestamp_ms, credits, balance,
                             deadline_ms, ref_height, *ptrs)
    return fixed + b"".join(parts)


def encode_block_wrapper(body: bytes, signature: bytes) -> bytes | None:
    """The canonical ``Block`` bytes (body, signature), or None past one segment."""
    n, k = len(body), len(signature)
    body_words = (n + 7) >> 3
    end = 3 + body_words + ((k + 7) >> 3)
    if end > _MAX_SEGMENT_WORDS:
        return None
    return b"".join((
        _HEADER.pack(0, end),
        _Q.pack(_WRAPPER_ROOT),
        _QQ.pack(1 << 2 | 1 | (2 | n << 3) << 32, body_words << 2 | 1 | (2 | k << 3) << 32),
        body, _PAD[-n & 7], signature, _PAD[-k & 7],
    ))


# ------------------------------------------------------------------------------------- reading
#
# Each pointer must hold exactly the word the canonical encoder would write there (the target at
# the next free word, the kind, the size), padding must be zero, and the segment must end where
# the last object does.  Then the bytes are the canonical encoding of what was read, so pycapnp
# would read the same values from them.


class _Payment:
    __slots__ = ("account", "amount")

    def __init__(self, account: bytes, amount: int) -> None:
        self.account = account
        self.amount = amount


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
    """The fields of canonical ``BlockBody`` bytes, in ``encode_block_body``'s argument order
    (payments as objects with .account and .amount), or None when ``data`` is not canonical."""
    size = len(data)
    if size < 8 * 17 or size & 7:
        return None
    fixed = _BODY_FIXED.unpack_from(data, 0)
    if fixed[0] != 0 or fixed[2] != _BODY_ROOT:
        return None
    limit = fixed[1] + 1  # words, the segment table included (object words count from there)
    if 8 * limit != size or limit - 1 > _MAX_SEGMENT_WORDS:
        return None
    _, _, _, height, type_word, amount, ts, credits, balance, deadline, ref = fixed[:11]
    if type_word & _TYPE_WORD_MASK:
        return None
    # positions below are in words of the whole buffer: word w of the segment is word w + 1 here
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
    payments: list[_Payment] = []
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
            payments.append(_Payment(res[0], elements[2 * i]))
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
    count, words, root, body_ptr, sig_ptr = struct.unpack_from("<IIQQQ", data, 0)
    limit = words + 1
    if count != 0 or root != _WRAPPER_ROOT or 8 * limit != len(data) or words > _MAX_SEGMENT_WORDS:
        return None
    body = _blob(data, body_ptr, 2, 4, limit)
    if body is None:
        return None
    sig = _blob(data, sig_ptr, 3, body[1], limit)
    if sig is None or sig[1] != limit:
        return None
    return body[0], sig[0]
