"""The replication policy as pure functions: factors, distinct sites, lost nodes, spread."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta

from catalog.placement.policy import (
    Holding,
    NodeState,
    ReplicationPolicy,
    copies,
    plan_for,
    sources,
    targets,
)

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def _nodes(*names: str, seen: timedelta = timedelta(seconds=1)) -> list[NodeState]:
    return [NodeState(n, f"{n}.example:50061", NOW - seen) for n in names]


def _live(policy: ReplicationPolicy, nodes: list[NodeState]) -> dict[str, NodeState]:
    return policy.live_nodes(nodes, NOW)


def _holding(uid: str, *holders: str, collection: str = "lung") -> Holding:
    return Holding(collection=collection, sop_instance_uid=uid, holders=holders)


def test_an_instance_below_its_factor_gets_exactly_the_missing_copies() -> None:
    policy = ReplicationPolicy(factors={"lung": 3})
    live = _live(policy, _nodes("a", "b", "c", "d"))
    chosen = targets(_holding("1.2.3", "a"), live, policy)
    assert len(chosen) == 2 and "a" not in chosen and len(set(chosen)) == 2
    assert targets(_holding("1.2.3", "a", "b", "c"), live, policy) == ()


def test_default_factor_applies_to_unlisted_collections_and_one_needs_nothing() -> None:
    policy = ReplicationPolicy(default_factor=2, factors={"scratch": 1})
    live = _live(policy, _nodes("a", "b"))
    assert targets(_holding("1.1", "a", collection="other"), live, policy) == ("b",)
    assert targets(_holding("1.1", "a", collection="scratch"), live, policy) == ()
    assert ReplicationPolicy().factor_for("anything") == 1


def test_copies_count_distinct_sites_and_targets_are_on_new_sites() -> None:
    sites = {"a1": "hospital-a", "a2": "hospital-a", "b1": "hospital-b", "c1": "hospital-c"}
    policy = ReplicationPolicy(factors={"lung": 2}, sites=sites)
    live = _live(policy, _nodes(*sites))
    holding = _holding("1.2.3", "a1", "a2")  # two nodes, one site: one copy
    assert copies(holding, live, policy) == 1
    (target,) = targets(holding, live, policy)
    assert target in {"b1", "c1"}
    assert targets(_holding("1.2.3", "a1", "b1"), live, policy) == ()


def test_fewer_sites_than_the_factor_places_what_it_can() -> None:
    policy = ReplicationPolicy(factors={"lung": 5})
    live = _live(policy, _nodes("a", "b", "c"))
    assert sorted(targets(_holding("9.9", "a"), live, policy)) == ["b", "c"]


def test_a_lost_node_neither_counts_nor_receives_and_its_data_is_copied_elsewhere() -> None:
    policy = ReplicationPolicy(factors={"lung": 2}, lost_after=timedelta(seconds=30))
    nodes = _nodes("a", "b", "c") + _nodes("gone", seen=timedelta(seconds=31))
    live = _live(policy, nodes)
    assert "gone" not in live
    holding = _holding("5.5", "a", "gone")
    (target,) = targets(holding, live, policy)
    assert target in {"b", "c"}
    assert [s.node for s in sources(holding, live)] == ["a"]


def test_no_live_holder_means_no_pull() -> None:
    policy = ReplicationPolicy(factors={"lung": 2}, lost_after=timedelta(seconds=30))
    live = _live(policy, _nodes("a", "b") + _nodes("gone", seen=timedelta(hours=1)))
    assert targets(_holding("5.5", "gone"), live, policy) == ()
    assert list(plan_for("a", [_holding("5.5", "gone")], live, policy)) == []


def test_the_asking_node_counts_as_live_even_if_its_heartbeat_lags() -> None:
    policy = ReplicationPolicy(factors={"lung": 2}, lost_after=timedelta(seconds=30))
    nodes = _nodes("a") + _nodes("late", seen=timedelta(minutes=5))
    live = policy.live_nodes(nodes, NOW, also="late")
    assert [p.holding.sop_instance_uid for p in plan_for("late", [_holding("1", "a")], live,
                                                          policy)] == ["1"]  # fmt: skip


def test_targets_are_deterministic_and_spread_evenly() -> None:
    policy = ReplicationPolicy(factors={"lung": 2})
    live = _live(policy, _nodes("a", "b", "c", "d"))
    holdings = [_holding(f"1.2.840.{n}", "a") for n in range(3000)]
    first = [targets(h, live, policy) for h in holdings]
    assert first == [targets(h, dict(reversed(live.items())), policy) for h in holdings]
    load = Counter(t for chosen in first for t in chosen)
    assert set(load) == {"b", "c", "d"}
    assert all(800 <= n <= 1200 for n in load.values()), load


def test_each_node_is_planned_only_its_own_share() -> None:
    policy = ReplicationPolicy(factors={"lung": 2})
    live = _live(policy, _nodes("a", "b", "c"))
    holdings = [_holding(f"7.{n}", "a") for n in range(200)]
    plans = {n: {p.holding.sop_instance_uid for p in plan_for(n, holdings, live, policy)}
             for n in ("a", "b", "c")}  # fmt: skip
    assert plans["a"] == set()
    assert plans["b"].isdisjoint(plans["c"])
    assert plans["b"] | plans["c"] == {h.sop_instance_uid for h in holdings}
    assert len(list(plan_for("b", holdings, live, policy, limit=5))) == 5


def test_a_node_refusing_a_collection_is_skipped_for_the_next_ranked() -> None:
    policy = ReplicationPolicy(factors={"local": 2})
    live = _live(policy, _nodes("a", "b", "c"))
    holding = _holding("3.3", "a", collection="local")
    (first,) = targets(holding, live, policy)
    other = ({"b", "c"} - {first}).pop()
    assert targets(holding, live, policy, {first: frozenset({"local"})}) == (other,)
    both = {"b": frozenset({"local"}), "c": frozenset({"local"})}
    assert targets(holding, live, policy, both) == ()


def test_sources_are_live_holders_most_recently_seen_first() -> None:
    policy = ReplicationPolicy(factors={"lung": 3})
    nodes = [
        NodeState("old", "old:1", NOW - timedelta(seconds=20)),
        NodeState("new", "new:1", NOW - timedelta(seconds=1)),
        NodeState("noaddr", "", NOW),
    ]
    live = _live(policy, nodes)
    found = sources(_holding("4.4", "old", "new", "noaddr"), live)
    assert [(s.node, s.peer_address) for s in found] == [("new", "new:1"), ("old", "old:1")]
