from __future__ import annotations

import pytest

from inos_node.errors import InvalidParams
from inos_node.protocols.decider import LOCAL, PeerView, Task, decide

A = PeerView("A", price_per_unit=3, rtt_ms=1.0)
B = PeerView("B", price_per_unit=1, rtt_ms=4.0)
C = PeerView("C", price_per_unit=2, rtt_ms=2.0, load=0.9)
PEERS = [A, B, C]


def t(**kw) -> Task:
    return Task("compute.blake3", **kw)


def test_fastest_runs_locally_while_there_is_room():
    plan = decide(t(), PEERS)
    assert plan.executors == (LOCAL,)
    assert plan.fallbacks[0] == "A", "fallbacks are ranked fastest first"


def test_fastest_offloads_when_busy():
    plan = decide(t(local_load=0.95), PEERS)
    assert plan.executors == ("A",) and plan.fallbacks[-1] == LOCAL


def test_busy_but_every_peer_slower_stays_local():
    slow = [PeerView("S", rtt_ms=500.0)]
    assert decide(t(local_load=0.8), slow).executors == (LOCAL,)


def test_remote_and_local_placements():
    assert decide(t(placement="remote"), PEERS).executors == ("A",)
    assert decide(t(placement="local"), PEERS).executors == (LOCAL,)
    with pytest.raises(InvalidParams, match="does not serve"):
        decide(t(placement="local", served_locally=False), PEERS)
    with pytest.raises(InvalidParams, match="no peer serves"):
        decide(t(placement="remote"), [])


def test_pinned_peer_has_no_fallbacks():
    plan = decide(t(placement="peer:Z"), PEERS)
    assert plan.executors == ("Z",) and plan.fallbacks == ()
    with pytest.raises(InvalidParams, match="needs a peer id"):
        decide(t(placement="peer:"), PEERS)
    with pytest.raises(InvalidParams, match="more than the budget"):
        decide(t(placement="peer:A", budget=2), PEERS)


def test_cheapest():
    assert decide(t(prefer="cheapest"), PEERS).executors == (LOCAL,)
    plan = decide(t(prefer="cheapest", served_locally=False), PEERS)
    assert plan.executors == ("B",) and plan.fallbacks == ("C", "A")
    with pytest.raises(InvalidParams, match="nothing serves"):
        decide(t(prefer="cheapest", served_locally=False), [])


def test_budget_excludes_expensive_peers():
    plan = decide(t(placement="remote", budget=2, cost_units=1), PEERS)
    assert set(plan.executors + plan.fallbacks) == {"B", "C"}
    assert plan.estimated_cost == {"B": 1, "C": 2}
    plan = decide(t(placement="remote", budget=5, cost_units=3), PEERS)
    assert plan.executors == ("B",), "3 units at price 1 fits a budget of 5, price 2 does not"


def test_excluded_and_disreputable_peers_are_avoided():
    bad = PeerView("X", rtt_ms=0.1, reputation=0.1)
    plan = decide(t(placement="remote", exclude=frozenset({"A"})), [*PEERS, bad])
    assert "A" not in plan.executors + plan.fallbacks and "X" not in plan.executors + plan.fallbacks
    low = PeerView("L", rtt_ms=0.5, reputation=0.3)
    assert decide(t(placement="remote"), [A, low]).executors == ("A",), "reputation stretches the score"


def test_replicas_pick_distinct_executors():
    plan = decide(t(replicas=2), PEERS)
    assert plan.executors == ("A", "B") and plan.fallbacks == ("C",), "C is loaded: ranked last"
    plan = decide(t(replicas=2, prefer="cheapest"), PEERS)
    assert plan.executors == ("B", "C")
    plan = decide(t(replicas=2), [A])
    assert plan.executors == ("A", LOCAL)
    with pytest.raises(InvalidParams, match="need 3 distinct executors"):
        decide(t(replicas=3, placement="remote"), [A, B])
    with pytest.raises(InvalidParams, match="replicas must be"):
        decide(t(replicas=0), PEERS)


def test_unknown_policy_and_nothing_anywhere():
    with pytest.raises(InvalidParams, match="unknown policy"):
        decide(t(prefer="random"), PEERS)
    with pytest.raises(InvalidParams, match="nothing serves"):
        decide(t(served_locally=False), [])
    assert decide(t(served_locally=False), PEERS).executors == ("A",)
    assert decide(t(exclude=frozenset({LOCAL})), PEERS).executors == ("A",)
