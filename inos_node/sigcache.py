"""Ed25519 verifications already done: a small bounded cache, so a receipt is verified once.

A paid job's receipt is checked by the requester when the result arrives
(``receipts.verify_receipt``), then again by its ledger when it builds the settle that carries
the receipt as evidence, and again when it applies that settle.  ``verify_once`` answers the
second and third checks from memory.

Why this is safe: an entry is made only after ``identity.verify`` returned True, and it is
keyed by blake3 over the exact (public key, signature, message) bytes, lengths included, so a
hit means these very bytes verified before.  Ed25519 verification is a pure function of those
bytes, so the remembered answer is the answer a fresh check would give.  Failures are not
remembered (nothing an attacker sends can add an entry without a valid signature), and the
cache is a bounded LRU: flooding it only evicts, which costs a re-verification, never a wrong
answer.  Thread-safe (one lock around the dict).
"""

from __future__ import annotations

import struct
import threading
from collections import OrderedDict

import blake3

from inos_node.identity import verify

__all__ = ["VerifiedCache", "forget_all", "remember_own", "verify_once"]

_LENGTHS = struct.Struct("<HH")


class VerifiedCache:
    """The last ``size`` (public key, message, signature) triples that verified."""

    def __init__(self, size: int = 4096) -> None:
        if size < 1:
            raise ValueError(f"VerifiedCache size must be >= 1, got {size}")
        self.size = size
        self._seen: OrderedDict[bytes, None] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    @staticmethod
    def _key(public_key: bytes, message: bytes, signature: bytes) -> bytes:
        return blake3.blake3(_LENGTHS.pack(len(public_key), len(signature)) + public_key + signature
                             + message).digest()

    def remember(self, public_key: bytes, message: bytes, signature: bytes) -> None:
        """Record a signature this process just MADE with the key's secret half (valid by
        construction: a worker's own receipt need not be verified when its settle comes back)."""
        if len(public_key) > 0xFFFF or len(signature) > 0xFFFF:
            return
        key = self._key(public_key, message, signature)
        with self._lock:
            self._seen[key] = None
            if len(self._seen) > self.size:
                self._seen.popitem(last=False)

    def verify(self, public_key: bytes, message: bytes, signature: bytes) -> bool:
        """``identity.verify``, answered from memory when these bytes verified before."""
        if len(public_key) > 0xFFFF or len(signature) > 0xFFFF:
            return False
        key = self._key(public_key, message, signature)
        with self._lock:
            if key in self._seen:
                self._seen.move_to_end(key)
                self.hits += 1
                return True
            self.misses += 1
        if not verify(public_key, message, signature):
            return False
        with self._lock:
            self._seen[key] = None
            if len(self._seen) > self.size:
                self._seen.popitem(last=False)
        return True

    def __len__(self) -> int:
        return len(self._seen)


_RECEIPTS = VerifiedCache(4096)


def verify_once(public_key: bytes, message: bytes, signature: bytes) -> bool:
    """Verify through the process-wide cache of receipt signatures."""
    return _RECEIPTS.verify(public_key, message, signature)


def remember_own(public_key: bytes, message: bytes, signature: bytes) -> None:
    """See ``VerifiedCache.remember``: only for signatures made by this process."""
    _RECEIPTS.remember(public_key, message, signature)


def forget_all() -> None:
    """Empty the process-wide cache (benchmarks: a requester has not verified its worker's
    receipts before; tests)."""
    with _RECEIPTS._lock:
        _RECEIPTS._seen.clear()
