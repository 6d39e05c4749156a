"""Reconciliation of image counts: what each node holds against what the catalog believes.

Pure values and set arithmetic, no I/O: the callers (``gridpacs reconcile``, a node's
anti-entropy pass) fetch the two listings — the node's through its InventoryService, the
catalog's through HoldingsService — and hand them here. A listing covers one period; an
instance is in it when its StudyDate or its UTC date received falls in the period, and is
counted separately under each.

Instances are keyed by (collection, SOPInstanceUID): a node holds an instance at most once,
the catalog keeps one row per (node, collection, SOPInstanceUID).
"""

from __future__ import annotations

import calendar
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

Key = tuple[str, str]
"""(collection, SOPInstanceUID)."""

_MONTH = re.compile(r"^(\d{4})-?(\d{2})$")
_DAY = re.compile(r"^(\d{4})-?(\d{2})-?(\d{2})$")


@dataclass(frozen=True, slots=True)
class Period:
    """Inclusive calendar dates; received times are compared by their UTC date."""

    start: date
    end: date

    @classmethod
    def parse(cls, text: str) -> Period:
        """``2024-06`` (a month), ``2024-06-03`` (a day) or ``20240601-20240615`` (a range)."""
        text = text.strip()
        if (month := _MONTH.match(text)) is not None:
            year, mon = int(month[1]), int(month[2])
            if not 1 <= mon <= 12:
                raise ValueError(f"period {text!r}: month must be 01..12")
            last = calendar.monthrange(year, mon)[1]
            return cls(date(year, mon, 1), date(year, mon, last))
        parts = text.split("..") if ".." in text else [text]
        if len(parts) == 1 and re.fullmatch(r"\d{8}-\d{8}", text):
            parts = text.split("-")
        try:
            days = [_day(p) for p in parts]
        except ValueError as exc:
            raise ValueError(
                f"period {text!r}: use YYYY-MM, YYYY-MM-DD, YYYYMMDD-YYYYMMDD "
                f"or YYYY-MM-DD..YYYY-MM-DD ({exc})"
            ) from None
        if len(days) == 1:
            return cls(days[0], days[0])
        if len(days) != 2 or days[0] > days[1]:
            raise ValueError(f"period {text!r}: give a start and an end, start first")
        return cls(days[0], days[1])

    @classmethod
    def months_back(cls, today: date, months: int) -> list[Period]:
        """The month of ``today`` and the ``months - 1`` before it, newest first."""
        out = []
        year, mon = today.year, today.month
        for _ in range(max(1, months)):
            out.append(cls.parse(f"{year:04d}-{mon:02d}"))
            year, mon = (year - 1, 12) if mon == 1 else (year, mon - 1)
        return out

    @property
    def start_text(self) -> str:
        return self.start.strftime("%Y%m%d")

    @property
    def end_text(self) -> str:
        return self.end.strftime("%Y%m%d")

    @property
    def label(self) -> str:
        last = calendar.monthrange(self.start.year, self.start.month)[1]
        if self.start.day == 1 and self.end == self.start.replace(day=last):
            return self.start.strftime("%Y-%m")
        if self.start == self.end:
            return self.start.isoformat()
        return f"{self.start.isoformat()}..{self.end.isoformat()}"

    @property
    def received_from(self) -> datetime:
        """First instant of the period (UTC)."""
        return datetime(self.start.year, self.start.month, self.start.day, tzinfo=UTC)

    @property
    def received_until(self) -> datetime:
        """First instant after the period (UTC), exclusive."""
        return self.received_from + timedelta(days=(self.end - self.start).days + 1)

    def has_study_date(self, study_date: str) -> bool:
        return bool(study_date) and self.start_text <= study_date[:8] <= self.end_text

    def has_received(self, received_at: datetime | None) -> bool:
        if received_at is None:
            return False
        moment = received_at if received_at.tzinfo else received_at.replace(tzinfo=UTC)
        return self.received_from <= moment < self.received_until


def _day(text: str) -> date:
    match = _DAY.match(text.strip())
    if match is None:
        raise ValueError(f"{text!r} is not a date")
    return date(int(match[1]), int(match[2]), int(match[3]))


@dataclass(frozen=True, slots=True)
class Held:
    """One instance in one listing (a node's inventory or the catalog's holdings)."""

    sop_instance_uid: str
    collection: str
    study_instance_uid: str = ""
    series_instance_uid: str = ""
    sop_class_uid: str = ""
    study_date: str = ""
    received_at: datetime | None = None

    @property
    def key(self) -> Key:
        return (self.collection, self.sop_instance_uid)

    def to_dict(self) -> dict[str, Any]:
        return {
            "sop_instance_uid": self.sop_instance_uid,
            "collection": self.collection,
            "study_instance_uid": self.study_instance_uid,
            "series_instance_uid": self.series_instance_uid,
            "sop_class_uid": self.sop_class_uid,
            "study_date": self.study_date,
            "received_at": None if self.received_at is None else self.received_at.isoformat(),
        }


@dataclass(frozen=True, slots=True)
class Counts:
    """Instances in the period by StudyDate and by UTC date received."""

    by_study_date: int = 0
    by_received: int = 0

    @classmethod
    def of(cls, items: Iterable[Held], period: Period) -> Counts:
        by_date = by_received = 0
        for item in items:
            by_date += period.has_study_date(item.study_date)
            by_received += period.has_received(item.received_at)
        return cls(by_date, by_received)


@dataclass(frozen=True)
class NodeReport:
    """One node: its counts against the catalog's, and what is missing on which side."""

    node: str
    catalog: Counts
    held: Counts | None
    """``None`` when the node could not be asked (see ``error``)."""
    unpublished: tuple[Held, ...] = ()
    """On the node, unknown to the catalog (a lost publish)."""
    lost: tuple[Held, ...] = ()
    """Attributed to the node by the catalog, absent from the node."""
    error: str = ""

    @property
    def discrepancies(self) -> int:
        return len(self.unpublished) + len(self.lost) + (1 if self.error else 0)

    def to_dict(self) -> dict[str, Any]:
        return {
            "node": self.node,
            "catalog": _counts_dict(self.catalog),
            "node_counts": None if self.held is None else _counts_dict(self.held),
            "missing_in_catalog": [h.to_dict() for h in self.unpublished],
            "missing_on_node": [h.to_dict() for h in self.lost],
            "error": self.error,
        }


def _counts_dict(counts: Counts) -> dict[str, int]:
    return {"by_study_date": counts.by_study_date, "by_received": counts.by_received}


@dataclass(frozen=True, slots=True)
class UnderReplicated:
    """An instance held by fewer nodes than its collection's replication factor."""

    item: Held
    holders: tuple[str, ...]
    factor: int

    def to_dict(self) -> dict[str, Any]:
        return {**self.item.to_dict(), "holders": list(self.holders), "factor": self.factor}


@dataclass(frozen=True)
class Reconciliation:
    """Every node's report for one period, plus grid-wide replication shortfalls."""

    period: Period
    reports: tuple[NodeReport, ...]
    under_replicated: tuple[UnderReplicated, ...] = ()
    holders: Mapping[Key, tuple[str, ...]] = field(default_factory=dict)
    """Who actually holds each instance (a node's own listing wins over the catalog's
    belief; for a node that could not be asked, the catalog's belief stands)."""

    @property
    def discrepancies(self) -> int:
        return sum(r.discrepancies for r in self.reports) + len(self.under_replicated)

    def to_dict(self) -> dict[str, Any]:
        return {
            "period": self.period.label,
            "start_date": self.period.start.isoformat(),
            "end_date": self.period.end.isoformat(),
            "discrepancies": self.discrepancies,
            "nodes": [r.to_dict() for r in self.reports],
            "under_replicated": [u.to_dict() for u in self.under_replicated],
        }


def compare_node(
    node: str, period: Period, on_node: Iterable[Held], in_catalog: Iterable[Held]
) -> NodeReport:
    """One node's listing against the catalog's listing of that node, for ``period``."""
    mine = {h.key: h for h in on_node}
    believed = {h.key: h for h in in_catalog}
    return NodeReport(
        node=node,
        catalog=Counts.of(believed.values(), period),
        held=Counts.of(mine.values(), period),
        unpublished=_sorted(h for k, h in mine.items() if k not in believed),
        lost=_sorted(h for k, h in believed.items() if k not in mine),
    )


def reconcile(
    period: Period,
    catalog: Iterable[tuple[str, Held]],
    nodes: Mapping[str, Iterable[Held] | str],
    *,
    factors: Mapping[str, int] | None = None,
    default_factor: int = 1,
) -> Reconciliation:
    """Compare every node with the catalog's view of it.

    ``catalog`` yields (node name, holding) for every node; ``nodes`` maps a node name to
    its own listing, or to an error message when it could not be asked. Nodes known to
    only one side are reported too. ``factors`` maps a collection to its replication
    factor (``default_factor`` for the rest).
    """
    believed: dict[str, list[Held]] = {}
    for name, held in catalog:
        believed.setdefault(name, []).append(held)
    reports: list[NodeReport] = []
    actual: dict[Key, set[str]] = {}
    items: dict[Key, Held] = {}
    for name in sorted(set(believed) | set(nodes)):
        claims = believed.get(name, [])
        listing = nodes.get(name, "node not asked")
        for held in claims:
            items.setdefault(held.key, held)
        if isinstance(listing, str):
            reports.append(NodeReport(name, Counts.of(claims, period), None, error=listing))
            for held in claims:
                actual.setdefault(held.key, set()).add(name)
            continue
        listed = list(listing)
        reports.append(compare_node(name, period, listed, claims))
        for held in listed:
            items[held.key] = held
            actual.setdefault(held.key, set()).add(name)
    holders = {key: tuple(sorted(actual.get(key, ()))) for key in items}
    factor_of = dict(factors or {})
    short = [
        UnderReplicated(item, holders[key], factor_of.get(key[0], default_factor))
        for key, item in sorted(items.items())
        if len(holders[key]) < factor_of.get(key[0], default_factor)
    ]
    return Reconciliation(period, tuple(reports), tuple(short), holders)


@dataclass(frozen=True)
class NodeRepair:
    """What to ask of one node so that it and the catalog agree."""

    node: str
    republish: tuple[Held, ...] = ()
    pull: tuple[tuple[Held, tuple[str, ...]], ...] = ()
    """Instances to copy, each with the nodes that hold it (try in order)."""
    retract: tuple[Held, ...] = ()
    """No node holds these any more: the node publishes their deletion."""

    @property
    def size(self) -> int:
        return len(self.republish) + len(self.pull) + len(self.retract)


def plan_repairs(result: Reconciliation) -> list[NodeRepair]:
    """Republish what the catalog lacks; copy what a node lacks from a node that has it,
    or retract the stale holding when none does. Unreachable nodes are left alone."""
    plans = []
    for report in result.reports:
        if report.held is None:
            continue
        pulls: list[tuple[Held, tuple[str, ...]]] = []
        retracts: list[Held] = []
        for held in report.lost:
            sources = tuple(n for n in result.holders.get(held.key, ()) if n != report.node)
            if sources:
                pulls.append((held, sources))
            else:
                retracts.append(held)
        plan = NodeRepair(report.node, report.unpublished, tuple(pulls), tuple(retracts))
        if plan.size:
            plans.append(plan)
    return plans


def _sorted(items: Iterable[Held]) -> tuple[Held, ...]:
    return tuple(sorted(items, key=lambda h: (h.study_date, h.study_instance_uid, h.key)))
