"""The read behind replication planning: instances that may be under-replicated.

The database does the coarse filtering in one aggregate (collections with a factor > 1,
fewer live sites than the factor, at least one live holder, not held by the asking node) and
returns every holder of what is left, grouped per instance; the pure policy
(:mod:`catalog.placement.policy`) makes the exact decision on those groups.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator
from typing import Any

from sqlalchemy import Connection, and_, case, func, literal, select
from sqlalchemy.sql.elements import ColumnElement

from catalog.db.models import InstanceRow, SeriesRow, StudyRow
from catalog.placement.policy import Holding, ReplicationPolicy

PAGE = 500


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
    is_live = InstanceRow.origin.in_(sorted(live))
    live_site = case((is_live, _site(policy)), else_=None)
    keys = (
        select(InstanceRow.collection, InstanceRow.sop_instance_uid)
        .where(*where)
        .group_by(InstanceRow.collection, InstanceRow.sop_instance_uid)
        .having(
            func.count(func.distinct(live_site)) < _factor(policy),
            func.count(func.distinct(live_site)) >= 1,
            func.sum(case((InstanceRow.origin == asking, 1), else_=0)) == 0,
        )
    ).subquery()
    stmt = (
        select(
            InstanceRow.collection,
            InstanceRow.sop_instance_uid,
            InstanceRow.origin,
            InstanceRow.sop_class_uid,
            InstanceRow.size,
            SeriesRow.series_instance_uid,
            StudyRow.study_instance_uid,
        )
        .join(
            keys,
            and_(
                InstanceRow.collection == keys.c.collection,
                InstanceRow.sop_instance_uid == keys.c.sop_instance_uid,
            ),
        )
        .join(SeriesRow, SeriesRow.id == InstanceRow.series_id)
        .join(StudyRow, StudyRow.id == SeriesRow.study_id)
        .order_by(InstanceRow.collection, InstanceRow.sop_instance_uid, InstanceRow.origin)
    )
    group: list[Any] = []
    for row in conn.execution_options(yield_per=PAGE).execute(stmt):
        if group and (group[0].collection, group[0].sop_instance_uid) != (
            row.collection,
            row.sop_instance_uid,
        ):
            yield _holding(group)
            group = []
        group.append(row)
    if group:
        yield _holding(group)


def _holding(rows: list[Any]) -> Holding:
    first = rows[0]
    return Holding(
        collection=first.collection,
        sop_instance_uid=first.sop_instance_uid,
        holders=tuple(r.origin for r in rows),
        sop_class_uid=first.sop_class_uid,
        study_instance_uid=first.study_instance_uid,
        series_instance_uid=first.series_instance_uid,
        size=first.size,
    )
