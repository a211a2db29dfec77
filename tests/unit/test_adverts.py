"""The advert table core: every branch, synchronously, with time as an argument."""

from __future__ import annotations

import ast
import dataclasses
import math
import sys
from pathlib import Path

import pytest

from inos_node.protocols import adverts
from inos_node.protocols.adverts import Advert, AdvertTable, MethodPrice, OfferResult, next_sequence

NOW = 1_700_000_000_000


def ad(peer: str = "p1", seq: int = 1, *, issued: int = NOW, ttl: int = 30_000, **kw) -> Advert:
    return Advert(peer_id=peer, sequence=seq, issued_unix_ms=issued, ttl_ms=ttl, **kw)


def test_core_imports_only_stdlib_types_and_errors():
    tree = ast.parse(Path(adverts.__file__).read_text())
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.append(node.module)
    for name in names:
        top = name.split(".")[0]
        if top == "inos_node":
            assert name in {"inos_node.types", "inos_node.errors"}, "core imports another inos_node module"
        else:
            assert top in sys.stdlib_module_names or top == "__future__", "core imports a third-party module"
        assert top not in ("time", "random", "trio"), "core reads a clock or randomness"


def test_config_is_validated():
    with pytest.raises(ValueError):
        AdvertTable(max_peers=0)
    with pytest.raises(ValueError):
        AdvertTable(max_ttl_ms=0)
    with pytest.raises(ValueError):
        AdvertTable(max_skew_ms=-1)


def test_first_advert_is_accepted_and_held():
    t = AdvertTable()
    a = ad()
    assert t.offer(a, NOW) is OfferResult.ACCEPTED
    assert t.get("p1") == a
    assert "p1" in t and len(t) == 1
    assert t.get("nobody") is None


def test_newer_sequence_replaces_older_and_older_or_equal_is_stale():
    t = AdvertTable()
    assert t.offer(ad(seq=5, load=0.1), NOW) is OfferResult.ACCEPTED
    assert t.offer(ad(seq=4, load=0.9), NOW) is OfferResult.STALE
    assert t.offer(ad(seq=5, load=0.9), NOW) is OfferResult.STALE
    assert t.get("p1").load == 0.1
    assert t.offer(ad(seq=6, load=0.5), NOW) is OfferResult.ACCEPTED
    assert t.get("p1").sequence == 6 and t.get("p1").load == 0.5
    s = t.statistics()
    assert (s.accepted, s.stale, s.rejected, s.peers) == (2, 2, 0, 1)


@pytest.mark.parametrize(
    ("advert", "reason"),
    [
        (ad(peer=""), "no peer id"),
        (ad(ttl=0), "ttl"),
        (ad(ttl=10 * 60 * 1000 + 1), "ttl"),
        (ad(issued=NOW + 60_001), "future"),
        (ad(issued=NOW - 30_000), "expired"),
        (ad(issued=NOW - 40_000), "expired"),
        (ad(load=math.nan), "load"),
        (ad(load=-0.01), "load"),
        (ad(load=1.01), "load"),
        (ad(load=math.inf), "load"),
    ],
)
def test_bad_adverts_are_rejected_with_a_reason(advert, reason):
    t = AdvertTable()
    problem = t.problem(advert, NOW)
    assert problem is not None and reason in problem
    assert t.offer(advert, NOW) is OfferResult.REJECTED
    assert len(t) == 0 and t.statistics().rejected == 1


def test_edges_that_are_acceptable():
    t = AdvertTable()
    assert t.problem(ad(issued=NOW + 60_000), NOW) is None  # exactly at the skew limit
    assert t.problem(ad(issued=NOW - 29_999), NOW) is None  # one ms of life left
    assert t.problem(ad(ttl=10 * 60 * 1000), NOW) is None
    assert t.problem(ad(load=0.0), NOW) is None and t.problem(ad(load=1.0), NOW) is None


def test_a_rejected_newer_advert_does_not_displace_the_held_one():
    t = AdvertTable()
    t.offer(ad(seq=1), NOW)
    assert t.offer(ad(seq=2, ttl=0), NOW) is OfferResult.REJECTED
    assert t.get("p1").sequence == 1


def test_expire_drops_exactly_the_expired_sorted():
    t = AdvertTable()
    t.offer(ad("b", ttl=1000), NOW)
    t.offer(ad("a", ttl=1000), NOW)
    t.offer(ad("c", ttl=5000), NOW)
    assert t.expire(NOW + 999) == ()
    assert t.expire(NOW + 1000) == ("a", "b")
    assert [a.peer_id for a in t.snapshot()] == ["c"]
    assert t.statistics().expired == 2


def test_full_table_makes_room_by_expiring_first():
    t = AdvertTable(max_peers=2)
    t.offer(ad("a", ttl=1000), NOW)
    t.offer(ad("b", ttl=9000), NOW)
    # at NOW+1000 "a" has expired: the newcomer takes its place without an eviction
    assert t.offer(ad("c", issued=NOW + 1000, ttl=2000), NOW + 1000) is OfferResult.ACCEPTED
    assert [a.peer_id for a in t.snapshot()] == ["b", "c"]
    s = t.statistics()
    assert (s.expired, s.evicted) == (1, 0)


def test_full_table_evicts_the_soonest_expiring_for_a_longer_lived_newcomer():
    t = AdvertTable(max_peers=2)
    t.offer(ad("a", ttl=5000), NOW)
    t.offer(ad("b", ttl=9000), NOW)
    assert t.offer(ad("c", ttl=6000), NOW) is OfferResult.ACCEPTED
    assert [a.peer_id for a in t.snapshot()] == ["b", "c"]
    assert t.statistics().evicted == 1


def test_full_table_refuses_a_newcomer_that_would_expire_first():
    t = AdvertTable(max_peers=2)
    t.offer(ad("a", ttl=5000), NOW)
    t.offer(ad("b", ttl=9000), NOW)
    assert t.offer(ad("c", ttl=5000), NOW) is OfferResult.REJECTED  # ties keep the incumbent
    assert t.offer(ad("c", ttl=4000), NOW) is OfferResult.REJECTED
    assert [a.peer_id for a in t.snapshot()] == ["a", "b"]
    s = t.statistics()
    assert (s.rejected, s.evicted) == (2, 0)


def test_full_table_still_accepts_updates_from_known_peers():
    t = AdvertTable(max_peers=1)
    t.offer(ad("a", seq=1), NOW)
    assert t.offer(ad("a", seq=2), NOW) is OfferResult.ACCEPTED
    assert len(t) == 1


def test_eviction_ties_break_on_peer_id():
    t = AdvertTable(max_peers=2)
    t.offer(ad("b", ttl=5000), NOW)
    t.offer(ad("a", ttl=5000), NOW)
    assert t.offer(ad("c", ttl=6000), NOW) is OfferResult.ACCEPTED
    assert [a.peer_id for a in t.snapshot()] == ["b", "c"]


def test_peers_serving_orders_by_price_load_queue_then_peer_and_skips_expired():
    m = "linalg.matmul"
    t = AdvertTable()
    t.offer(ad("cheap-busy", methods=(MethodPrice(m, 1),), load=0.9), NOW)
    t.offer(ad("cheap-idle", methods=(MethodPrice(m, 1),), load=0.1, queue_depth=5), NOW)
    t.offer(ad("cheap-idle-2", methods=(MethodPrice(m, 1),), load=0.1, queue_depth=2), NOW)
    t.offer(ad("cheap-idle-3", methods=(MethodPrice(m, 1),), load=0.1, queue_depth=2), NOW)
    t.offer(ad("dear", methods=(MethodPrice("other.x", 0), MethodPrice(m, 7)), load=0.0), NOW)
    t.offer(ad("other", methods=(MethodPrice("other.x", 0),)), NOW)
    t.offer(ad("short", methods=(MethodPrice(m, 0),), ttl=1000), NOW)
    assert [a.peer_id for a in t.peers_serving(m, NOW)] == [
        "short",
        "cheap-idle-2",
        "cheap-idle-3",
        "cheap-idle",
        "cheap-busy",
        "dear",
    ]
    # "short" has expired at NOW+1000 even though expire() has not run
    assert [a.peer_id for a in t.peers_serving(m, NOW + 1000)][0] == "cheap-idle-2"
    assert "short" in t
    assert t.peers_serving("nobody.serves", NOW) == []


def test_advert_helpers():
    a = ad(issued=10, ttl=5, methods=(MethodPrice("x.y", 3, "mib"),))
    assert a.expires_unix_ms == 15
    assert a.price_of("x.y") == 3 and a.price_of("x.z") is None
    assert MethodPrice("m").cost_model == "call"
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.sequence = 2  # type: ignore[misc]


def test_next_sequence_increases_and_survives_restarts():
    assert next_sequence(0, NOW) == NOW
    assert next_sequence(NOW, NOW) == NOW + 1  # two adverts in the same millisecond
    assert next_sequence(NOW + 5, NOW) == NOW + 6  # clock stepped back: still increasing
    # a restarted node (last forgotten = 0) still outranks its previous life's adverts
    assert next_sequence(0, NOW + 1) > NOW
