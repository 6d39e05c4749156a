"""The replication policy as pure functions: who should copy which instance from whom.

Inputs are plain values (holdings, node states, the policy); nothing here touches a database
or the network, so every rule is unit-tested directly (tests/catalog/test_replication_policy.py).

Rules:

- an instance of collection *c* should exist on ``factor(c)`` distinct **sites** (a node's
  site defaults to its name, so by default: on that many nodes);
- only **live** nodes count: a node whose last heartbeat is older than ``lost_after`` is
  lost, its copies no longer count and it is never a target (its instances are copied
  elsewhere); it counts again as soon as it heartbeats;
- a copy is planned only when a live holder can serve it;
- targets are live nodes on sites without a live copy, that do not refuse the collection;
  the sites, then the node within each site, are chosen by rendezvous hashing of the SOP
  Instance UID, so every replica computes the same targets and the load spreads evenly.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta


@dataclass(frozen=True, slots=True)
class NodeState:
    """What placement needs of a registered node."""

    name: str
    peer_address: str = ""
    last_seen: datetime | None = None


@dataclass(frozen=True, slots=True)
class PlannedRemoval:
    """A copy a node holds of an instance the grid rejected: the node removes it."""

    sop_instance_uid: str
    collection: str
    study_instance_uid: str = ""
    series_instance_uid: str = ""
    reason: str = ""
    rejected_by: str = ""


@dataclass(frozen=True, slots=True)
class Holding:
    """One instance in one collection and every node the catalog says holds it."""

    collection: str
    sop_instance_uid: str
    holders: tuple[str, ...]
    sop_class_uid: str = ""
    study_instance_uid: str = ""
    series_instance_uid: str = ""
    size: int = 0


@dataclass(frozen=True, slots=True)
class PullSource:
    node: str
    peer_address: str


@dataclass(frozen=True, slots=True)
class PlannedPull:
    """``holding`` should be copied by the asking node from one of ``sources`` (in order)."""

    holding: Holding
    sources: tuple[PullSource, ...]
    factor: int
    copies: int


@dataclass(frozen=True, slots=True)
class ReplicationPolicy:
    """Per-collection replication factors, node sites, and when a silent node is lost."""

    default_factor: int = 1
    factors: Mapping[str, int] = field(default_factory=dict)
    sites: Mapping[str, str] = field(default_factory=dict)
    lost_after: timedelta = timedelta(hours=1)

    def factor_for(self, collection: str) -> int:
        return self.factors.get(collection, self.default_factor)

    def site_of(self, node: str) -> str:
        return self.sites.get(node, node)

    def replicated_collections(self) -> tuple[frozenset[str], frozenset[str]]:
        """(collections with factor > 1, collections with factor <= 1): what may need copies.

        A factor of 1 never needs a pull: if no live node holds the instance there is no
        live source to copy from either.
        """
        more = frozenset(c for c, f in self.factors.items() if f > 1)
        single = frozenset(c for c, f in self.factors.items() if f <= 1)
        return more, single

    def live_nodes(
        self, nodes: Iterable[NodeState], now: datetime, *, also: str = ""
    ) -> dict[str, NodeState]:
        """Nodes heard from within ``lost_after`` (plus ``also``, the node asking right now)."""
        live: dict[str, NodeState] = {}
        for node in nodes:
            fresh = node.last_seen is not None and now - node.last_seen <= self.lost_after
            if fresh or node.name == also:
                live[node.name] = node
        return live


def rendezvous(key: str, candidate: str) -> int:
    """Highest-random-weight score: stable across processes (unlike ``hash``)."""
    digest = hashlib.sha256(f"{key}\0{candidate}".encode()).digest()
    return int.from_bytes(digest[:8], "big")


def copies(holding: Holding, live: Mapping[str, NodeState], policy: ReplicationPolicy) -> int:
    """Distinct sites with a live copy."""
    return len({policy.site_of(h) for h in holding.holders if h in live})


def targets(
    holding: Holding,
    live: Mapping[str, NodeState],
    policy: ReplicationPolicy,
    refused: Mapping[str, frozenset[str]] | None = None,
) -> tuple[str, ...]:
    """The nodes that should each pull one more copy of ``holding`` (empty when enough)."""
    refused = refused or {}
    live_holders = [h for h in holding.holders if h in live]
    if not live_holders:
        return ()
    held_sites = {policy.site_of(h) for h in live_holders}
    missing = policy.factor_for(holding.collection) - len(held_sites)
    if missing <= 0:
        return ()
    by_site: dict[str, list[str]] = {}
    for name in live:
        site = policy.site_of(name)
        if site in held_sites or name in holding.holders:
            continue
        if holding.collection in refused.get(name, frozenset()):
            continue
        by_site.setdefault(site, []).append(name)
    key = holding.sop_instance_uid
    sites = sorted(by_site, key=lambda s: (rendezvous(key, s), s), reverse=True)[:missing]
    return tuple(max(by_site[site], key=lambda n: (rendezvous(key, n), n)) for site in sites)


def sources(holding: Holding, live: Mapping[str, NodeState]) -> tuple[PullSource, ...]:
    """Live holders with a peer address, most recently seen first."""
    found = [live[h] for h in holding.holders if h in live and live[h].peer_address]

    def seen(node: NodeState) -> float:
        if node.last_seen is None:
            return float("-inf")
        return node.last_seen.timestamp()

    found.sort(key=lambda n: (-seen(n), n.name))
    return tuple(PullSource(n.name, n.peer_address) for n in found)


def plan_for(
    node: str,
    holdings: Iterable[Holding],
    live: Mapping[str, NodeState],
    policy: ReplicationPolicy,
    refused: Mapping[str, frozenset[str]] | None = None,
    *,
    limit: int = 0,
) -> Iterator[PlannedPull]:
    """The pulls ``node`` should make, at most ``limit`` (0 = all)."""
    if node not in live:
        return
    planned = 0
    for holding in holdings:
        if node not in targets(holding, live, policy, refused):
            continue
        found = sources(holding, live)
        if not found:
            continue
        yield PlannedPull(
            holding=holding,
            sources=found,
            factor=policy.factor_for(holding.collection),
            copies=copies(holding, live, policy),
        )
        planned += 1
        if limit and planned >= limit:
            return
