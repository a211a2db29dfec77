"""Restart policy for crashed unit actors: a pure core (no trio, no clock reads).

    running ──crash──► backoff(delay) ──delay elapsed──► running
       ▲                                                    │
       └──────── ran stably for ``stable_s`` resets the delay ┘

The shell feeds it facts with the time they happened (``trio.current_time()``); it answers
with the delay to wait before the restart.  Delays double from ``initial_s`` up to ``max_s``.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

__all__ = ["Backoff", "Crash", "RestartPolicy"]


@dataclass(frozen=True, slots=True)
class Crash:
    unit: str
    error: str
    at: float


@dataclass(frozen=True, slots=True)
class RestartPolicy:
    initial_s: float = 0.05
    max_s: float = 5.0
    stable_s: float = 10.0

    def __post_init__(self) -> None:
        if not 0 < self.initial_s <= self.max_s:
            raise ValueError("need 0 < initial_s <= max_s")


@dataclass(slots=True)
class Backoff:
    """The restart state of one unit."""

    policy: RestartPolicy = field(default_factory=RestartPolicy)
    restarts: int = 0
    next_delay: float = 0.0
    last_start: float = 0.0
    story: deque[Crash] = field(default_factory=lambda: deque(maxlen=16))

    def started(self, at: float) -> None:
        self.last_start = at

    def crashed(self, crash: Crash) -> float:
        """Record a crash; returns how long to wait before restarting."""
        if crash.at - self.last_start >= self.policy.stable_s:
            self.next_delay = 0.0
        self.next_delay = self.policy.initial_s if self.next_delay == 0.0 else min(self.policy.max_s, self.next_delay * 2)
        self.restarts += 1
        self.story.append(crash)
        return self.next_delay

    @property
    def last_error(self) -> str:
        return self.story[-1].error if self.story else ""
