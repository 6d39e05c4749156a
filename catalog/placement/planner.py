"""PullPlanner: answers a node's "what should I copy?" from this replica's catalog.

Liveness comes from the nodes' ``last_seen`` (heartbeats, merged between replicas), holdings
from the instance rows; the decision is :func:`catalog.placement.policy.plan_for`. Nothing is
reserved or written: the plan is recomputed on every call, so a node that dies mid-copy
simply leaves the instance under-replicated for the next plan.

Refused collections are what each node said in its requests (kept in memory, per replica;
nodes announce them to every replica each round, see ``announce_only`` in
replication.proto): a node that refuses a collection is never chosen as its target, so
that copy goes to the next-ranked node instead.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Collection, Iterator, Sequence
from datetime import UTC, datetime
from typing import Protocol

from catalog.placement.policy import (
    Holding,
    NodeState,
    PlannedPull,
    PlannedRemoval,
    ReplicationPolicy,
    copies,
    plan_for,
)
from catalog.records import NodeInfo

log = logging.getLogger("catalog.placement")

DEFAULT_LIMIT = 200
MAX_LIMIT = 5_000


class HoldingsSource(Protocol):
    def nodes(self) -> list[NodeInfo]: ...

    def watermarks(self) -> dict[str, int]: ...

    def under_replicated(
        self,
        policy: ReplicationPolicy,
        *,
        live: Collection[str],
        asking: str,
        refused: Collection[str] = (),
    ) -> Iterator[Holding]: ...

    def rejected_copies(self, node: str, limit: int) -> list[PlannedRemoval]: ...

    def holders_of(
        self, collection: str, sop_instance_uids: Sequence[str]
    ) -> dict[str, tuple[str, ...]]: ...


def _utcnow() -> datetime:
    return datetime.now(UTC)


class PullPlanner:
    """The catalog side of replication: one per replica, thread-safe."""

    def __init__(
        self,
        repository: HoldingsSource,
        policy: ReplicationPolicy,
        *,
        clock: Callable[[], datetime] = _utcnow,
    ) -> None:
        self._repository = repository
        self.policy = policy
        self._clock = clock
        self._refused: dict[str, frozenset[str]] = {}
        self._nothing_at: dict[str, object] = {}  # node -> state in which it had nothing
        self._lock = threading.Lock()

    def note_refusals(self, node: str, refused_collections: Collection[str]) -> None:
        """Remember which collections ``node`` will not take copies of."""
        with self._lock:
            self._refused[node] = frozenset(refused_collections)

    def plan(
        self, node: str, *, refused_collections: Collection[str] = (), limit: int = 0
    ) -> list[PlannedPull]:
        """At most ``limit`` pulls for ``node`` (an unknown node gets none)."""
        limit = min(limit or DEFAULT_LIMIT, MAX_LIMIT)
        refused_here = frozenset(refused_collections)
        self.note_refusals(node, refused_here)
        with self._lock:
            refused = dict(self._refused)
        nodes = [NodeState(n.name, n.peer_address, n.last_seen) for n in self._repository.nodes()]
        if node not in {n.name for n in nodes}:
            return []
        live = self.policy.live_nodes(nodes, self._clock(), also=node)
        # steady state: nothing was published and no node came or went since this node last
        # had nothing to copy, so it still has nothing (skips the aggregate over all holdings)
        state = (sorted(self._repository.watermarks().items()), sorted(live),
                 sorted(refused.items()))  # fmt: skip
        with self._lock:
            if self._nothing_at.get(node) == state:
                return []
        holdings = self._repository.under_replicated(
            self.policy, live=list(live), asking=node, refused=refused_here
        )
        try:
            pulls = list(plan_for(node, holdings, live, self.policy, refused, limit=limit))
        finally:
            close = getattr(holdings, "close", None)
            if close is not None:
                close()  # release the streaming read when the limit stopped us early
        with self._lock:
            if pulls:
                self._nothing_at.pop(node, None)
            else:
                self._nothing_at[node] = state
        if pulls:
            log.info(
                "event=pulls_planned node=%s pulls=%d live_nodes=%d",
                node,
                len(pulls),
                len(live),
            )
        return pulls

    def copies_of(self, collection: str, sop_instance_uids: Sequence[str]) -> dict[str, int]:
        """Distinct sites holding a live copy of each instance in ``collection``: the count
        :meth:`plan` compares with the factor (0 for an instance nobody holds)."""
        nodes = [NodeState(n.name, n.peer_address, n.last_seen) for n in self._repository.nodes()]
        live = self.policy.live_nodes(nodes, self._clock())
        held = self._repository.holders_of(collection, sop_instance_uids)
        return {
            uid: copies(Holding(collection, uid, held.get(uid, ())), live, self.policy)
            for uid in sop_instance_uids
        }

    def removals(self, node: str, *, limit: int = 0) -> list[PlannedRemoval]:
        """At most ``limit`` copies ``node`` holds of instances rejected grid-wide."""
        removals = self._repository.rejected_copies(node, min(limit or DEFAULT_LIMIT, MAX_LIMIT))
        if removals:
            log.info("event=removals_planned node=%s removals=%d", node, len(removals))
        return removals
