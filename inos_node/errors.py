"""The one exception hierarchy of inos-node.

Rule: every error the node raises on purpose is an ``InosError``.  Errors are split by whose
fault they are, carry structured attributes (never information to be parsed out of the
message), and third-party exceptions are translated at the adapter that owns the library with
``raise New(...) from exc``.

    InosError
    ├── ConfigError                      bad configuration or command-line value
    ├── ProtocolError                    a frame or message that cannot be decoded
    │   ├── LocalProtocolError           ... that we produced (a bug or a limit on our side)
    │   └── RemoteProtocolError          ... that came from outside
    ├── PeerError                        (mesh issue)
    ├── CapsuleError                     a capsule could not run as asked
    │   ├── UnknownUnit                  no such library or method (lists what exists)
    │   ├── InvalidParams                a bad parameter (names it and what is allowed)
    │   ├── InputTooLarge                input over the configured limit
    │   ├── BudgetExceeded               fuel / memory / cost budget exhausted
    │   └── CapsuleTimeout               wall-clock deadline passed
    ├── ArenaError                       shared-memory problems
    │   ├── ArenaLayoutMismatch          attaching to a segment of another layout
    │   └── ArenaExhausted               no room left (allocator, /dev/shm)
    └── InosInternalError                "this is a bug"
"""

from __future__ import annotations

__all__ = [
    "ArenaError",
    "ArenaExhausted",
    "ArenaLayoutMismatch",
    "BudgetExceeded",
    "CapsuleError",
    "CapsuleFailed",
    "CapsuleTimeout",
    "ConfigError",
    "InosError",
    "InosInternalError",
    "InputTooLarge",
    "InvalidParams",
    "LocalProtocolError",
    "PeerError",
    "ProtocolError",
    "RemoteProtocolError",
    "UnknownUnit",
]


class InosError(Exception):
    """Root of every error inos-node raises on purpose."""


class ConfigError(InosError):
    def __init__(self, message: str, *, key: str | None = None) -> None:
        super().__init__(message)
        self.key = key


class ProtocolError(InosError):
    def __init__(self, message: str, *, limit: int | None = None, observed: int | None = None) -> None:
        super().__init__(message)
        self.limit = limit
        self.observed = observed


class LocalProtocolError(ProtocolError):
    """We produced something we cannot send (too large, unencodable)."""


class RemoteProtocolError(ProtocolError):
    """Something that came from outside is malformed or over a limit."""


class PeerError(InosError):
    """A peer could not be reached or broke the connection."""


class CapsuleError(InosError):
    """A capsule could not run as asked.  ``status`` is the JobResult status it maps to."""

    status = "failed"
    retryable = False


class CapsuleFailed(CapsuleError):
    """The capsule ran and failed (a trap, a decryption failure, a worker that died)."""

    def __init__(self, message: str, *, retryable: bool = False) -> None:
        super().__init__(message)
        self.retryable = retryable


class UnknownUnit(CapsuleError):
    status = "invalidParams"

    def __init__(self, message: str, *, available: list[str]) -> None:
        super().__init__(message)
        self.available = available


class InvalidParams(CapsuleError):
    status = "invalidParams"

    def __init__(self, message: str, *, param: str | None = None, allowed: str | None = None) -> None:
        super().__init__(message)
        self.param = param
        self.allowed = allowed


class InputTooLarge(CapsuleError):
    status = "invalidParams"

    def __init__(self, message: str, *, limit: int, observed: int) -> None:
        super().__init__(message)
        self.limit = limit
        self.observed = observed


class BudgetExceeded(CapsuleError):
    """A resource budget ran out.  ``kind`` is "fuel", "memory" or "budget"."""

    def __init__(self, message: str, *, kind: str, used: int | None = None, limit: int | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.used = used
        self.limit = limit

    @property
    def status(self) -> str:  # type: ignore[override]
        return "outOfFuel" if self.kind == "fuel" else "budgetExceeded"


class CapsuleTimeout(CapsuleError):
    status = "timeout"
    retryable = True

    def __init__(self, message: str, *, deadline_s: float) -> None:
        super().__init__(message)
        self.deadline_s = deadline_s


class ArenaError(InosError):
    """A shared-memory arena problem."""


class ArenaLayoutMismatch(ArenaError):
    def __init__(self, message: str, *, field: str, expected: int, observed: int) -> None:
        super().__init__(message)
        self.field = field
        self.expected = expected
        self.observed = observed


class ArenaExhausted(ArenaError):
    def __init__(self, message: str, *, requested: int, available: int) -> None:
        super().__init__(message)
        self.requested = requested
        self.available = available


class InosInternalError(InosError):
    """An invariant of inos-node itself was broken: a bug, please report it."""


# economy
class LedgerError(InosError):
    """A ledger value or operation is invalid (a bad DID, an amount, a block that cannot be built)."""


class GenesisError(LedgerError):
    """A genesis file is unreadable, badly signed or invalid; ``key`` names the field."""

    def __init__(self, message: str, *, key: str | None = None) -> None:
        super().__init__(message)
        self.key = key


class BlockRejected(LedgerError):
    """``Ledger.next_block`` refused to sign a block the ledger would reject; ``reason`` says why."""

    def __init__(self, message: str, *, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


__all__ += ["BlockRejected", "GenesisError", "LedgerError"]
