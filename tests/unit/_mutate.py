"""Byte-level mutations of an encoded message, for checking a hand-written reader against pycapnp."""

from __future__ import annotations

import random

MUTATIONS = 6  # the mutations ``mutate`` knows, numbered 0..5


def mutate(rng: random.Random, data: bytes, how: int, *, first_word: int = 1) -> bytes:
    """``data`` with one mutation: 0 a bit flipped, 1 a byte overwritten, 2 cut at a word
    boundary, 3 extended by zero words, 4 a word (from ``first_word`` on) replaced by random bits
    (often an out-of-range pointer), 5 a pointer's offset nudged (aliasing, overlapping and
    out-of-bounds targets)."""
    target = bytearray(data)
    if how == 0:
        target[rng.randrange(len(target))] ^= 1 << rng.randrange(8)
    elif how == 1:
        target[rng.randrange(len(target))] = rng.randrange(256)
    elif how == 2:
        del target[rng.randrange(8, len(target)) // 8 * 8:]
    elif how == 3:
        target += bytes(8 * rng.randrange(1, 3))
    elif how == 4:
        at = rng.randrange(first_word, len(target) // 8) * 8
        target[at:at + 8] = rng.randbytes(8)
    else:
        at = rng.randrange(first_word, len(target) // 8) * 8
        target[at] = (target[at] + 4 * rng.choice((-2, -1, 1, 2))) % 256
    return bytes(target)
