"""Where a capsule runs: a pure decision core (no I/O, no clock, no randomness).

Inputs are facts the shell gathers: the capsule, the submitter's placement and policy, its budget,
the local load, and a view of each peer that advertises the method (price, load, queue depth,
measured round-trip time, reputation).  The output is a ``Plan``: the executors to use now (one,
or N distinct ones for replicas) and the ordered fallbacks to retry on when one fails.

Policies (``prefer``):
  * ``local``:    run here; fail if this node does not serve the method.
  * ``remote``:   run on the best peer (by the ``fastest`` score); never here.
  * ``fastest``:  the default. Here unless the local executors are busy (load >= ``busy_load``)
                  and a peer would finish sooner; peers ranked by rtt + queue and load penalties.
  * ``cheapest``: here when served locally (a local capsule costs nothing); else the cheapest peer.
A placement of ``peer:<id>`` pins the executor (with no fallbacks).  Peers whose estimated cost is
over the budget are never chosen; a low reputation makes a peer rank lower (and below
``min_reputation`` it is avoided).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from inos_node.errors import InvalidParams

__all__ = ["LOCAL", "DeciderConfig", "PeerView", "Plan", "Task", "decide"]

LOCAL = "local"
POLICIES = ("local", "remote", "fastest", "cheapest")


@dataclass(frozen=True, slots=True)
class PeerView:
    peer_id: str
    price_per_unit: int = 0  # credits per cost unit of this method at this peer
    load: float = 0.0  # 0..1
    queue_depth: int = 0
    rtt_ms: float = 5.0
    reputation: float = 1.0  # 0..1 (the economy fills it in; 1 = no evidence against)


@dataclass(frozen=True, slots=True)
class Task:
    capsule: str
    cost_units: int = 1  # the estimated units: 1 call, MiB of input, or the fuel budget
    placement: str = "auto"  # "auto" | "local" | "remote" | "peer:<id>"
    prefer: str = "fastest"
    replicas: int = 1
    budget: int = 0  # 0 = no limit
    served_locally: bool = True
    local_load: float = 0.0
    exclude: frozenset[str] = frozenset()  # executors that already failed this job


@dataclass(frozen=True, slots=True)
class DeciderConfig:
    busy_load: float = 0.75
    queue_penalty_ms: float = 2.0
    load_penalty_ms: float = 20.0
    min_reputation: float = 0.2
    local_estimate_ms: float = 1.0


@dataclass(frozen=True, slots=True)
class Plan:
    executors: tuple[str, ...]
    fallbacks: tuple[str, ...] = ()
    reason: str = ""
    estimated_cost: dict[str, int] = field(default_factory=dict)


def _score(p: PeerView, cfg: DeciderConfig) -> float:
    base = p.rtt_ms + p.queue_depth * cfg.queue_penalty_ms + p.load * cfg.load_penalty_ms
    return base / max(p.reputation, 0.05)


def decide(task: Task, peers: list[PeerView], cfg: DeciderConfig | None = None) -> Plan:
    """Choose executors for ``task``.  Raises ``InvalidParams`` when nothing can run it."""
    cfg = cfg or DeciderConfig()
    prefer = "remote" if task.placement == "remote" else "local" if task.placement == "local" else task.prefer
    if prefer not in POLICIES:
        raise InvalidParams(
            f"unknown policy {prefer!r}; one of {', '.join(POLICIES)}",
            param="prefer",
            allowed=", ".join(POLICIES),
        )
    if task.replicas < 1:
        raise InvalidParams("replicas must be >= 1", param="replicas", allowed=">= 1")

    def cost(p: PeerView) -> int:
        return p.price_per_unit * max(task.cost_units, 1)

    affordable = [p for p in peers if (task.budget == 0 or cost(p) <= task.budget)]
    usable = [p for p in affordable if p.peer_id not in task.exclude and p.reputation >= cfg.min_reputation]
    costs = {p.peer_id: cost(p) for p in usable}

    if task.placement.startswith("peer:"):
        pid = task.placement[5:]
        if not pid:
            raise InvalidParams("placement peer: needs a peer id", param="placement")
        if task.budget and any(p.peer_id == pid and cost(p) > task.budget for p in peers):
            raise InvalidParams(f"peer {pid} asks more than the budget of {task.budget}", param="budget")
        return Plan((pid,), (), "pinned by the submitter", {pid: costs.get(pid, 0)})

    by_speed = sorted(usable, key=lambda p: (_score(p, cfg), p.peer_id))
    by_price = sorted(usable, key=lambda p: (cost(p), _score(p, cfg), p.peer_id))
    local_ok = task.served_locally and LOCAL not in task.exclude

    if task.replicas > 1:
        ranked = by_price if prefer == "cheapest" else by_speed
        chosen = [p.peer_id for p in ranked[: task.replicas]]
        if len(chosen) < task.replicas and local_ok and prefer != "remote":
            chosen.append(LOCAL)
        if len(chosen) < task.replicas:
            raise InvalidParams(
                f"{task.replicas} replicas of {task.capsule} need {task.replicas} distinct executors; "
                f"{len(chosen)} are available within the budget",
                param="replicas",
            )
        rest = tuple(p.peer_id for p in ranked if p.peer_id not in chosen)
        return Plan(tuple(chosen), rest, f"{task.replicas} replicas, {prefer}", costs)

    if prefer == "local":
        if not local_ok:
            raise InvalidParams(f"this node does not serve {task.capsule}", param="placement")
        return Plan((LOCAL,), (), "the submitter asked for local")
    if prefer == "remote":
        if not by_speed:
            raise InvalidParams(f"no peer serves {task.capsule} within the budget", param="placement")
        ids = tuple(p.peer_id for p in by_speed)
        return Plan(ids[:1], ids[1:], "remote: best peer by rtt, queue, load, reputation", costs)
    if prefer == "cheapest":
        if local_ok:
            return Plan((LOCAL,), tuple(p.peer_id for p in by_price), "cheapest: local capsules are free")
        if not by_price:
            raise InvalidParams(f"nothing serves {task.capsule} within the budget", param="placement")
        ids = tuple(p.peer_id for p in by_price)
        return Plan(ids[:1], ids[1:], "cheapest peer", costs)
    # fastest
    remote_ids = tuple(p.peer_id for p in by_speed)
    if local_ok and (task.local_load < cfg.busy_load or not by_speed):
        return Plan((LOCAL,), remote_ids, "fastest: local executors have room", costs)
    if by_speed:
        best = by_speed[0]
        if local_ok and _score(best, cfg) > cfg.local_estimate_ms / max(1e-3, 1 - task.local_load):
            return Plan((LOCAL,), remote_ids, "fastest: busy here but still sooner than any peer", costs)
        fallbacks = remote_ids[1:] + ((LOCAL,) if local_ok else ())
        return Plan(remote_ids[:1], fallbacks, "fastest: local executors busy", costs)
    raise InvalidParams(
        f"nothing serves {task.capsule}: not this node, and no peer advertises it", param="placement"
    )
