"""The read behind replication planning: instances that may be under-replicated.

The database does the coarse filtering in one aggregate (collections with a factor > 1,
fewer live sites than the factor, at least one live holder, not held by the asking node)
that also lists every holder of what is left; the pure policy
(:mod:`catalog.placement.policy`) makes the exact decision on those groups.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator
from typing import Any

from sqlalchemy import Connection, and_, case, exists, func, literal, select
from sqlalchemy.sql.elements import ColumnElement

from catalog.db.models import InstanceRow, RejectionRow, SeriesRow, StudyRow
from catalog.placement.policy import Holding, PlannedRemoval, ReplicationPolicy

PAGE = 500
SEPARATOR = "\x1f"  # ASCII unit separator: never part of a node name


def _site(policy: ReplicationPolicy) -> Any:
    if not policy.sites:
        return InstanceRow.origin
    return case(
        *((InstanceRow.origin == node, literal(site)) for node, site in policy.sites.items()),
        else_=InstanceRow.origin,
    )


def _factor(policy: ReplicationPolicy) -> ColumnElement[Any]:
    if not policy.factors:
        return literal(policy.default_factor)
    return case(
        *((InstanceRow.collection == c, literal(f)) for c, f in policy.factors.items()),
        else_=literal(policy.default_factor),
    )


def under_replicated(
    conn: Connection,
    policy: ReplicationPolicy,
    *,
    live: Collection[str],
    asking: str,
    refused: Collection[str] = (),
) -> Iterator[Holding]:
    """Instances with fewer live sites than their factor that ``asking`` does not hold,
    with all their holders, in (collection, SOP Instance UID) order."""
    more, single = policy.replicated_collections()
    where: list[ColumnElement[bool]] = []
    if policy.default_factor <= 1:
        if not more:
            return
        where.append(InstanceRow.collection.in_(sorted(more)))
    elif single:
        where.append(InstanceRow.collection.not_in(sorted(single)))
    if refused:
        where.append(InstanceRow.collection.not_in(sorted(refused)))
    if not live:
        return
    where.append(~_rejected())  # a rejected instance is never copied again
    is_live = InstanceRow.origin.in_(sorted(live))
    live_sites = func.count(func.distinct(case((is_live, _site(policy)), else_=None)))
    # one pass: the aggregate carries the holders itself (joining its output back to the
    # instance rows made PostgreSQL misestimate it and nest loops: 9 s at 10^5 rows)
    stmt = (
        select(
            InstanceRow.collection,
            InstanceRow.sop_instance_uid,
            func.aggregate_strings(InstanceRow.origin, SEPARATOR).label("holders"),
            func.min(InstanceRow.sop_class_uid).label("sop_class_uid"),
            func.max(InstanceRow.size).label("size"),
            func.min(SeriesRow.series_instance_uid).label("series_instance_uid"),
            func.min(StudyRow.study_instance_uid).label("study_instance_uid"),
        )
        .join(SeriesRow, SeriesRow.id == InstanceRow.series_id)
        .join(StudyRow, StudyRow.id == SeriesRow.study_id)
        .where(*where)
        .group_by(InstanceRow.collection, InstanceRow.sop_instance_uid)
        .having(
            live_sites < _factor(policy),
            live_sites >= 1,
            func.sum(case((InstanceRow.origin == asking, 1), else_=0)) == 0,
        )
        .order_by(InstanceRow.collection, InstanceRow.sop_instance_uid)
    )
    for row in conn.execution_options(yield_per=PAGE).execute(stmt):
        yield Holding(
            collection=row.collection,
            sop_instance_uid=row.sop_instance_uid,
            holders=tuple(sorted(row.holders.split(SEPARATOR))),
            sop_class_uid=row.sop_class_uid,
            study_instance_uid=row.study_instance_uid,
            series_instance_uid=row.series_instance_uid,
            size=int(row.size),
        )


def _rejected() -> ColumnElement[bool]:
    """The instance row's (collection, UID) was rejected grid-wide."""
    return exists().where(
        and_(
            RejectionRow.collection == InstanceRow.collection,
            RejectionRow.sop_instance_uid == InstanceRow.sop_instance_uid,
        )
    )


def rejected_copies(conn: Connection, node: str, limit: int) -> list[PlannedRemoval]:
    """What ``node`` still holds (as far as this replica knows) of rejected instances."""
    stmt = (
        select(
            InstanceRow.sop_instance_uid,
            InstanceRow.collection,
            RejectionRow.study_instance_uid,
            RejectionRow.series_instance_uid,
            RejectionRow.reason,
            RejectionRow.origin,
        )
        .join(
            RejectionRow,
            (RejectionRow.collection == InstanceRow.collection)
            & (RejectionRow.sop_instance_uid == InstanceRow.sop_instance_uid),
        )
        .where(InstanceRow.origin == node)
        .order_by(InstanceRow.collection, InstanceRow.sop_instance_uid)
        .limit(limit)
    )
    return [
        PlannedRemoval(
            sop_instance_uid=row.sop_instance_uid,
            collection=row.collection,
            study_instance_uid=row.study_instance_uid,
            series_instance_uid=row.series_instance_uid,
            reason=row.reason,
            rejected_by=row.origin,
        )
        for row in conn.execute(stmt)
    ]
