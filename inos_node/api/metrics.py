"""Prometheus metrics for ``GET /metrics``: the text exposition format (0.0.4), written by hand.

    scrape ─► app ─► JobCounters.observe(service.jobs())    counters of finished capsule jobs
                  ─► RateWindow.observe(now, epochs)         epoch rates over the last seconds
                  ─► families(snapshot, counters, rates)     the node's gauges and counters
                  ─► Registry providers (the ledger...)      extra samples, wired by the daemon
                  ─► render(families)                        text/plain; version=0.0.4

Everything here is pure (no I/O, no clock: the shell passes ``now``), so tests feed it records and
snapshots directly.

Rules this module lives by:
  1. Every family is declared once (``# HELP``, ``# TYPE``) and its samples follow it together;
     metric and label names are checked against Prometheus' grammar, label values are escaped.
  2. Counters only grow.  Job counters come from the node's job book, which keeps the last N
     records: a finished job is counted the first time a scrape sees it, and remembered only while
     the book still holds it (so the memory is bounded by the book).  A job that finishes *and*
     leaves the book between two scrapes (more than N jobs finished in one scrape interval) is not
     counted; scrape more often than that.
  3. Rates are a convenience for people (the dashboard, ``inos_arena_epoch_rate``); Prometheus
     computes its own with ``rate(inos_arena_epochs_total[1m])``.
"""

from __future__ import annotations

import math
import re
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from inos_node.api.service import JobRecord
from inos_node.errors import InosInternalError

__all__ = [
    "CONTENT_TYPE",
    "LATENCY_BUCKETS_S",
    "Family",
    "JobCounters",
    "Provider",
    "RateWindow",
    "Registry",
    "Sample",
    "families",
    "locality",
    "render",
]

CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"
LATENCY_BUCKETS_S: Final = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
Kind = Literal["counter", "gauge", "histogram"]
_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
Labels = tuple[tuple[str, str], ...]


def _labels(labels: Mapping[str, Any] | Labels) -> Labels:
    items = labels.items() if isinstance(labels, Mapping) else labels
    out = tuple((str(k), str(v)) for k, v in items)
    for k, _ in out:
        if not _LABEL.fullmatch(k) or k.startswith("__"):
            raise InosInternalError(f"metric label name {k!r} is not a Prometheus label name")
    return out


@dataclass(frozen=True, slots=True)
class Sample:
    """One value a provider contributes: ``inos_ledger_blocks_total{...} 42``.

    Samples of the same ``name`` form one family; its ``kind`` and ``help`` come from the first.
    """

    name: str
    value: float
    labels: Mapping[str, str] = field(default_factory=dict)
    kind: Literal["counter", "gauge"] = "gauge"
    help: str = ""


Provider = Callable[[], Iterable[Sample]]


@dataclass(slots=True)
class Family:
    """A metric family: ``name``, its type and help, and ``(suffix, labels, value)`` samples
    (``suffix`` is "" or, for histograms, "_bucket", "_sum", "_count")."""

    name: str
    kind: Kind
    help: str
    samples: list[tuple[str, Labels, float]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not _NAME.fullmatch(self.name):
            raise InosInternalError(f"metric name {self.name!r} is not a Prometheus metric name")

    def add(self, value: float, labels: Mapping[str, Any] | Labels = (), suffix: str = "") -> Family:
        self.samples.append((suffix, _labels(labels), float(value)))
        return self


class Registry:
    """Extra metric providers (the ledger, ...), called on every scrape.

    The daemon makes one and passes it to ``make_app(..., metrics=registry)``.  A provider is a
    cheap, non-blocking function returning ``Sample``\\ s; it must not raise (a scrape that fails
    is a 500, and Prometheus marks the node down).
    """

    def __init__(self) -> None:
        self._providers: list[Provider] = []

    def register_provider(self, fn: Provider) -> None:
        self._providers.append(fn)

    def collect(self) -> list[Family]:
        out: dict[str, Family] = {}
        for provider in self._providers:
            for s in provider():
                fam = out.get(s.name)
                if fam is None:
                    fam = out[s.name] = Family(s.name, s.kind, s.help or s.name)
                fam.add(s.value, s.labels)
        return list(out.values())


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _escape_value(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return str(int(value)) if value.is_integer() and abs(value) < 2**53 else repr(value)


def render(fams: Iterable[Family]) -> str:
    """The text exposition of ``fams``.

    Raises:
        InosInternalError: two families share a name (each must be declared once).
    """
    lines: list[str] = []
    seen: set[str] = set()
    for fam in fams:
        if fam.name in seen:
            raise InosInternalError(f"metric family {fam.name!r} is declared twice")
        seen.add(fam.name)
        lines.append(f"# HELP {fam.name} {_escape_help(fam.help)}")
        lines.append(f"# TYPE {fam.name} {fam.kind}")
        for suffix, labels, value in fam.samples:
            text = ",".join(f'{k}="{_escape_value(v)}"' for k, v in labels)
            lines.append(f"{fam.name}{suffix}{{{text}}} {_number(value)}" if text else
                         f"{fam.name}{suffix} {_number(value)}")
    return "\n".join(lines) + "\n"


def locality(executor: str) -> str:
    """``local``, ``remote`` (one peer), ``replicated`` (several executors) or ``none`` (never placed)."""
    if not executor:
        return "none"
    if "," in executor:
        return "replicated"
    return "local" if executor == "local" else "remote"


class JobCounters:
    """Counters and a latency histogram over finished jobs, fed with the job book's records.

    ``observe`` counts each finished record once (see rule 2 of the module).  Labels: the capsule's
    library and method, the final status, and the locality (``locality``).
    """

    def __init__(self, buckets: Sequence[float] = LATENCY_BUCKETS_S) -> None:
        self.buckets = tuple(sorted(buckets))
        self.capsules: Counter[tuple[str, str, str, str]] = Counter()
        self.payload_bytes: Counter[tuple[str, str]] = Counter()  # (direction, locality)
        self._hist: dict[str, list[int]] = {}  # locality -> per-bucket counts (+Inf last), not cumulative
        self._sum: Counter[str] = Counter()
        self._counted: set[str] = set()

    def observe(self, records: Iterable[JobRecord]) -> None:
        still_held: set[str] = set()
        for rec in records:
            if not rec.finished:
                continue
            still_held.add(rec.job_id)
            if rec.job_id in self._counted:
                continue
            where = locality(rec.executor)
            library, _, method = rec.capsule.partition(".")
            self.capsules[(library, method, rec.status, where)] += 1
            self.payload_bytes[("in", where)] += int(rec.metrics.get("input_bytes", 0))
            self.payload_bytes[("out", where)] += rec.output_len
            if rec.finished_ms is not None and rec.submitted_ms:
                seconds = max(0, rec.finished_ms - rec.submitted_ms) / 1000
                counts = self._hist.setdefault(where, [0] * (len(self.buckets) + 1))
                counts[next((i for i, b in enumerate(self.buckets) if seconds <= b), len(self.buckets))] += 1
                self._sum[where] += seconds
        self._counted = still_held

    def families(self) -> list[Family]:
        caps = Family("inos_capsules_total", "counter",
                      "Capsule jobs submitted to this node that finished, by library, method, status and "
                      "locality (local, remote, replicated, none).")
        for (library, method, status, where), n in sorted(self.capsules.items()):
            caps.add(n, {"library": library, "method": method, "status": status, "locality": where})
        payload = Family("inos_capsule_payload_bytes_total", "counter",
                         "Input (direction=in) and output (direction=out) bytes of finished capsule jobs.")
        for (direction, where), n in sorted(self.payload_bytes.items()):
            payload.add(n, {"direction": direction, "locality": where})
        hist = Family("inos_job_latency_seconds", "histogram",
                      "Submission to finish of capsule jobs submitted to this node, by locality.")
        for where, counts in sorted(self._hist.items()):
            running = 0
            for bound, n in zip((*self.buckets, math.inf), counts, strict=True):
                running += n
                hist.add(running, {"locality": where, "le": _number(bound)}, "_bucket")
            hist.add(self._sum[where], {"locality": where}, "_sum")
            hist.add(running, {"locality": where}, "_count")
        return [caps, hist, payload]


class RateWindow:
    """Per-second rates of monotonic counters over (about) the last ``window_s`` seconds.

    Samples are kept at most every ``min_spacing_s`` and for ``window_s``, so several viewers
    asking at once share one base; the rate is measured against the oldest sample kept.  A
    counter with no earlier sample has no rate yet (it is left out).
    """

    def __init__(self, window_s: float = 10.0, min_spacing_s: float = 0.5) -> None:
        self.window_s = window_s
        self.min_spacing_s = min_spacing_s
        # bounded: at most window_s / min_spacing_s + 1 samples are ever kept
        self._samples: deque[tuple[float, dict[str, int]]] = deque(maxlen=int(window_s / min_spacing_s) + 2)

    def observe(self, now: float, counters: Mapping[str, int]) -> dict[str, float]:
        while len(self._samples) > 1 and now - self._samples[1][0] >= self.window_s:
            self._samples.popleft()
        rates: dict[str, float] = {}
        if self._samples:
            t0, base = self._samples[0]
            if now > t0:
                for name, value in counters.items():
                    if name in base:
                        rates[name] = max(0, value - base[name]) / (now - t0)
        if not self._samples or now - self._samples[-1][0] >= self.min_spacing_s:
            self._samples.append((now, dict(counters)))
        return rates


def families(snapshot: Mapping[str, Any], epoch_rates: Mapping[str, float]) -> list[Family]:
    """The node's own families from ``NodeService.metrics_snapshot()`` (keys it lacks are skipped)."""
    out: list[Family] = []

    def fam(name: str, kind: Kind, help_text: str) -> Family:
        out.append(Family(name, kind, help_text))
        return out[-1]

    node = snapshot.get("node") or {}
    if node:
        fam("inos_node_info", "gauge", "This node (always 1).").add(
            1, {k: node.get(k, "") for k in ("peer_id", "name", "version")})
    if "uptime_s" in snapshot:
        fam("inos_uptime_seconds", "gauge", "Seconds since the node started.").add(snapshot["uptime_s"])
    if "load" in snapshot:
        fam("inos_load", "gauge", "Busy share of the local executor's threads (0..1).").add(snapshot["load"])
    jobs = snapshot.get("jobs") or {}
    if jobs:
        f = fam("inos_jobs", "gauge", "Jobs this node is running for its clients, by state.")
        for state in ("running", "waiting"):
            f.add(jobs.get(state, 0), {"state": state})
        f = fam("inos_engine_capsules_total", "counter",
                "Capsules the local engine ran (for clients, peers and the boids showcase), by outcome.")
        for outcome in ("completed", "failed"):
            f.add(jobs.get(outcome, 0), {"outcome": outcome})
    served = snapshot.get("served") or {}
    if served:
        fam("inos_capsules_served_total", "counter", "Capsules this node ran for other peers.").add(
            served.get("total", 0))
        fam("inos_capsules_serving", "gauge", "Capsules running now for other peers.").add(
            served.get("running", 0))
    pushes = snapshot.get("pushes") or {}
    if pushes:
        f = fam("inos_blob_pushes_total", "counter",
                "Large inputs requesters pushed to this node before delegating, by outcome.")
        for outcome in ("stored", "refused", "corrupt"):
            f.add(pushes.get(outcome, 0), {"outcome": outcome})
    peers = snapshot.get("peers") or {}
    if peers:
        f = fam("inos_peers", "gauge", "Peers this node knows, by state (known, connected, verified).")
        for state in ("known", "connected", "verified"):
            f.add(peers.get(state, 0), {"state": state})
    gossip = snapshot.get("gossip") or {}
    if gossip:
        fam("inos_gossip_published_total", "counter", "Gossip messages this node published.").add(
            gossip.get("published", 0))
        f = fam("inos_gossip_delivered_total", "counter", "Gossip messages delivered to this node, by topic.")
        for topic, n in sorted((gossip.get("delivered") or {}).items()):
            f.add(n, {"topic": topic})
        f = fam("inos_gossip_errors_total", "counter", "Gossip failures, by kind.")
        for kind, n in sorted((gossip.get("errors") or {}).items()):
            f.add(n, {"kind": kind})
    arena = snapshot.get("arena") or {}
    if arena:
        f = fam("inos_arena_bytes", "gauge", "The shared-memory arena: size, heap used and free.")
        for kind in ("size", "used", "free"):
            f.add(arena.get(kind, 0), {"kind": kind})
    epochs = snapshot.get("epochs") or {}
    if epochs:
        f = fam("inos_arena_epochs_total", "counter", "Arena epoch counters (publications), by epoch name.")
        for name, value in sorted(epochs.items()):
            f.add(value, {"epoch": name})
        f = fam("inos_arena_epoch_rate", "gauge", "Arena epoch publications per second, recently.")
        for name, rate in sorted(epoch_rates.items()):
            f.add(round(rate, 3), {"epoch": name})
    units = snapshot.get("units") or []
    if units:
        state_f = fam("inos_unit_state", "gauge", "1 per unit (capsule library), labelled with its state.")
        restarts = fam("inos_unit_restarts_total", "counter", "Restarts of each unit after a crash.")
        for u in units:
            state_f.add(1, {"unit": u.get("unit", ""), "state": u.get("state", "")})
            restarts.add(u.get("restarts", 0), {"unit": u.get("unit", "")})
    return out
