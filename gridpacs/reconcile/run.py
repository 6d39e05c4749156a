"""Gather both sides of a reconciliation and carry out the repairs it plans.

The catalog lists what it believes every node holds (``HoldingsService``) and where each
node's InventoryService is (the peer address a node registers); each node lists what it
actually holds. :func:`catalog.reconcile.reconcile` compares them; :func:`repair` asks each
node to republish, pull or retract, reporting progress through a callback.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol

from catalog.reconcile import (
    Held,
    NodeRepair,
    Period,
    Reconciliation,
    plan_repairs,
    reconcile,
)
from catalog.records import Watermarks
from gridpacs.reconcile.nodes import NodeUnreachable, Pulled


class CatalogSide(Protocol):
    def get_watermarks(self) -> Watermarks: ...

    def list_holdings(
        self, period: Period, *, node: str = "", collections: Sequence[str] = ()
    ) -> Iterator[tuple[str, Held]]: ...


class NodeSide(Protocol):
    def list_instances(
        self, address: str, period: Period, collections: Sequence[str] = ()
    ) -> list[Held]: ...

    def republish(self, address: str, uids: Sequence[str]) -> tuple[int, list[str]]: ...

    def retract(self, address: str, items: Sequence[Held]) -> tuple[int, list[str]]: ...

    def pull(
        self, address: str, items: Sequence[tuple[Held, Sequence[str]]]
    ) -> Iterator[Pulled]: ...


@dataclass(frozen=True)
class Gathered:
    """A reconciliation and the peer address of every node the catalog knows."""

    result: Reconciliation
    addresses: Mapping[str, str]


def gather(
    catalog: CatalogSide,
    nodes: NodeSide,
    period: Period,
    *,
    collections: Sequence[str] = (),
    only: Sequence[str] = (),
    factors: Mapping[str, int] | None = None,
    default_factor: int = 1,
    listed: Callable[[str], None] = lambda _name: None,
) -> Gathered:
    """Both listings for ``period``, compared. ``only`` restricts the report to some nodes
    (the others' holdings still count as holders, as the catalog believes them)."""
    addresses = {n.name: n.peer_address for n in catalog.get_watermarks().nodes}
    holdings = list(catalog.list_holdings(period, collections=collections))
    names = sorted(set(addresses) | {name for name, _ in holdings})
    listings: dict[str, list[Held] | str] = {}
    for name in names:
        if only and name not in only:
            continue
        address = addresses.get(name)
        if not address:
            listings[name] = "the node registered no peer address"
        else:
            try:
                listings[name] = nodes.list_instances(address, period, collections)
            except NodeUnreachable as exc:
                listings[name] = f"unreachable: {exc}"
        listed(name)
    result = reconcile(period, holdings, listings, factors=factors, default_factor=default_factor)
    if only:
        wanted = set(only)
        result = replace(result, reports=tuple(r for r in result.reports if r.node in wanted))
    return Gathered(result, addresses)


@dataclass
class RepairOutcome:
    """What the nodes accepted; ``failures`` names every instance or node that was not."""

    republished: int = 0
    pulled: int = 0
    retracted: int = 0
    failures: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, object]:
        return {
            "republished": self.republished,
            "pulled": self.pulled,
            "retracted": self.retracted,
            "failures": list(self.failures),
        }


def repair(
    plans: Sequence[NodeRepair],
    addresses: Mapping[str, str],
    nodes: NodeSide,
    *,
    advance: Callable[[int], None] = lambda _n: None,
) -> RepairOutcome:
    """Ask every node for its share of the repairs; a node that fails is reported and the
    others still repaired."""
    outcome = RepairOutcome()
    for plan in plans:
        address = addresses[plan.node]
        try:
            _repair_node(plan, address, addresses, nodes, outcome, advance)
        except NodeUnreachable as exc:
            outcome.failures.append(f"{plan.node}: {exc}")
    return outcome


def _repair_node(
    plan: NodeRepair,
    address: str,
    addresses: Mapping[str, str],
    nodes: NodeSide,
    outcome: RepairOutcome,
    advance: Callable[[int], None],
) -> None:
    if plan.republish:
        uids = [h.sop_instance_uid for h in plan.republish]
        enqueued, missing = nodes.republish(address, uids)
        outcome.republished += enqueued
        outcome.failures += [f"{plan.node}: {uid} not held, not republished" for uid in missing]
        advance(len(uids))
    if plan.pull:
        items = [
            (held, [addresses[s] for s in sources if addresses.get(s)])
            for held, sources in plan.pull
        ]
        for done in nodes.pull(address, items):
            if done.ok:
                outcome.pulled += 1
            else:
                outcome.failures.append(f"{plan.node}: {done.sop_instance_uid}: {done.error}")
            advance(1)
    if plan.retract:
        enqueued, held = nodes.retract(address, list(plan.retract))
        outcome.retracted += enqueued
        outcome.failures += [f"{plan.node}: {uid} is held after all" for uid in held]
        advance(len(plan.retract))


__all__ = ["Gathered", "RepairOutcome", "gather", "plan_repairs", "repair"]
