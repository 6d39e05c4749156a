"""Read paths: the change log served to peers, grid-wide queries and instance location.

All of them stream: rows are fetched in pages (``yield_per``) and consecutive rows of the
same UID are merged into one match with several holders, so memory stays bounded by the
page size whatever the result size.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any, TypeVar

from sqlalchemy import Connection, Row, Select, exists, or_, select, true, union

from catalog.db.filters import (
    Scope,
    effective_collections,
    instance_level_where,
    series_level_where,
    study_level_where,
)
from catalog.db.models import ChangeRow, InstanceRow, NodeRow, RejectionRow, SeriesRow, StudyRow
from catalog.reconcile import Held, Period
from catalog.records import (
    Change,
    ChangeKind,
    Holder,
    InstanceLocation,
    InstanceMatch,
    InstanceRecord,
    QueryFilter,
    SeriesMatch,
    StudyMatch,
)

PAGE = 500
T = TypeVar("T")


def as_utc(value: datetime | None) -> datetime | None:
    """SQLite returns naive datetimes: they were stored as UTC."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)


def pull_changes(conn: Connection, origin: str, after_seq: int, limit: int) -> Iterator[Change]:
    """The origin's logged changes after ``after_seq``, in seq order, at most ``limit``.

    An ADDED entry whose instance row was since rewritten by a later seq (or deleted) is
    served as SUPERSEDED: the later change carries the state.
    """
    stmt = (
        select(
            ChangeRow.seq,
            ChangeRow.kind,
            ChangeRow.collection.label("log_collection"),
            ChangeRow.sop_instance_uid.label("log_uid"),
            InstanceRow.id.label("instance_id"),
            InstanceRow.sop_instance_uid,
            InstanceRow.sop_class_uid,
            InstanceRow.transfer_syntax_uid,
            InstanceRow.blob_key,
            InstanceRow.size,
            InstanceRow.collection,
            InstanceRow.received_at,
            InstanceRow.calling_ae,
            InstanceRow.attributes.label("instance_attributes"),
            SeriesRow.series_instance_uid,
            SeriesRow.attributes.label("series_attributes"),
            StudyRow.study_instance_uid,
            StudyRow.patient_id,
            StudyRow.attributes.label("study_attributes"),
            RejectionRow.reason.label("rejection_reason"),
            RejectionRow.study_instance_uid.label("rejected_study"),
            RejectionRow.series_instance_uid.label("rejected_series"),
        )
        .select_from(ChangeRow)
        .outerjoin(
            InstanceRow,
            (InstanceRow.origin == ChangeRow.origin)
            & (InstanceRow.collection == ChangeRow.collection)
            & (InstanceRow.sop_instance_uid == ChangeRow.sop_instance_uid)
            & (InstanceRow.seq == ChangeRow.seq),
        )
        .outerjoin(SeriesRow, SeriesRow.id == InstanceRow.series_id)
        .outerjoin(StudyRow, StudyRow.id == SeriesRow.study_id)
        .outerjoin(
            RejectionRow,
            (ChangeRow.kind == ChangeKind.INSTANCE_REJECTED.value)
            & (RejectionRow.collection == ChangeRow.collection)
            & (RejectionRow.sop_instance_uid == ChangeRow.sop_instance_uid),
        )
        .where(ChangeRow.origin == origin, ChangeRow.seq > after_seq)
        .order_by(ChangeRow.seq)
        .limit(limit)
    )
    for row in conn.execution_options(yield_per=PAGE).execute(stmt):
        yield _change_from_row(row)


def _change_from_row(row: Any) -> Change:
    kind = ChangeKind(row.kind)
    if kind in (ChangeKind.INSTANCE_DELETED, ChangeKind.INSTANCE_REJECTED):
        rejected = kind is ChangeKind.INSTANCE_REJECTED
        return Change(
            seq=row.seq,
            kind=kind,
            record=InstanceRecord(
                sop_instance_uid=row.log_uid,
                sop_class_uid="",
                study_instance_uid=(rejected and row.rejected_study) or "",
                series_instance_uid=(rejected and row.rejected_series) or "",
                patient_id="",
                transfer_syntax_uid="",
                blob_key="",
                size=0,
                collection=row.log_collection,
            ),
            reason=(rejected and row.rejection_reason) or "",
        )
    if kind is ChangeKind.STORE_RESET:
        return Change(seq=row.seq, kind=kind, record=None)
    if kind is ChangeKind.SUPERSEDED or row.instance_id is None:
        return Change(seq=row.seq, kind=ChangeKind.SUPERSEDED, record=None)
    attributes = {**row.study_attributes, **row.series_attributes, **row.instance_attributes}
    record = InstanceRecord(
        sop_instance_uid=row.sop_instance_uid,
        sop_class_uid=row.sop_class_uid,
        study_instance_uid=row.study_instance_uid,
        series_instance_uid=row.series_instance_uid,
        patient_id=row.patient_id,
        transfer_syntax_uid=row.transfer_syntax_uid,
        blob_key=row.blob_key,
        size=row.size,
        collection=row.collection,
        attributes=attributes,
        received_at=as_utc(row.received_at),
        calling_ae=row.calling_ae,
    )
    return Change(seq=row.seq, kind=kind, record=record)


def _merged(
    rows: Iterator[Row[Any]],
    key: Callable[[Row[Any]], str],
    build: Callable[[list[Row[Any]]], T],
    limit: int,
) -> Iterator[T]:
    """Group consecutive rows with the same key (one per holder) into one match."""
    group: list[Row[Any]] = []
    emitted = 0
    for row in rows:
        if group and key(group[0]) != key(row):
            yield build(group)
            emitted += 1
            if limit and emitted >= limit:
                return
            group = []
        group.append(row)
    if group:
        yield build(group)


def _holders(rows: list[Row[Any]]) -> tuple[Holder, ...]:
    seen: dict[tuple[str, str], Holder] = {}
    for row in rows:
        seen.setdefault(
            (row.origin, row.collection),
            Holder(node=row.origin, ae_title=row.ae_title or "", collection=row.collection),
        )
    return tuple(seen.values())


def _stream(conn: Connection, stmt: Select[Any]) -> Iterator[Row[Any]]:
    yield from conn.execution_options(yield_per=PAGE).execute(stmt)


def _not_rejected(instance: Any = InstanceRow) -> Any:
    """The instance row's copy is not of an instance rejected in its collection."""
    return ~exists().where(
        RejectionRow.collection == instance.collection,
        RejectionRow.sop_instance_uid == instance.sop_instance_uid,
    )


def _unless_none_rejected(conn: Connection, condition: Callable[[], Any]) -> Any:
    """``condition()``, or nothing to check while the grid has never rejected anything.

    Why: the rejection filters are correlated subqueries run for every row a query returns;
    on SQLite that cost study queries 30 % at 10⁶ instances even with no rejection at all
    (bench/catalog_query.py). One probe of the rejections table per query avoids it.
    """
    if conn.execute(select(RejectionRow.collection).limit(1)).first() is None:
        return true()
    return condition()


def _shown_study() -> Any:
    """A holder's study row is shown unless something of its study was rejected in its
    collection and it holds no copy nobody rejected (most rows: one index probe)."""
    touched = exists().where(
        RejectionRow.collection == StudyRow.collection,
        RejectionRow.study_instance_uid == StudyRow.study_instance_uid,
    )
    return or_(~touched, _holds_unrejected_study())


def _shown_series() -> Any:
    """As :func:`_shown_study`, for a holder's series row."""
    touched = exists().where(
        RejectionRow.collection == StudyRow.collection,
        RejectionRow.series_instance_uid == SeriesRow.series_instance_uid,
    )
    return or_(~touched, _holds_unrejected_series())


def _holds_unrejected_study() -> Any:
    """The holder's study row still has a copy of an instance nobody rejected.

    Why: after a rejection the other holders' rows stay until those holders remove their
    copies (their next PlanRemovals, or later if one is down); a study rejected whole
    (the wrong patient) must not be found under that patient meanwhile. Asked only of
    rows whose study had a rejection (:func:`_shown_study`).
    """
    return (
        select(InstanceRow.id)
        .join(SeriesRow, SeriesRow.id == InstanceRow.series_id)
        .where(SeriesRow.study_id == StudyRow.id, _not_rejected())
        .exists()
    )


def _holds_unrejected_series() -> Any:
    """As :func:`_holds_unrejected_study`, for a holder's series row."""
    return select(InstanceRow.id).where(InstanceRow.series_id == SeriesRow.id,
                                        _not_rejected()).exists()  # fmt: skip


def query_studies(conn: Connection, query: QueryFilter, scope: Scope) -> Iterator[StudyMatch]:
    stmt = (
        select(*StudyRow.__table__.c, NodeRow.ae_title)
        .outerjoin(NodeRow, NodeRow.name == StudyRow.origin)
        .where(study_level_where(query, scope), _unless_none_rejected(conn, _shown_study))
        .order_by(StudyRow.study_instance_uid, StudyRow.origin, StudyRow.collection)
    )

    def build(rows: list[Row[Any]]) -> StudyMatch:
        first = rows[0]
        modalities: set[str] = set()
        for row in rows:
            modalities.update(m for m in row.modalities.split("\\") if m)
        attributes = dict(first.attributes)
        attributes.update(PatientID=first.patient_id, StudyInstanceUID=first.study_instance_uid)
        return StudyMatch(
            study_instance_uid=first.study_instance_uid,
            attributes=attributes,
            modalities_in_study=tuple(sorted(modalities)),
            number_of_series=max(r.number_of_series for r in rows),
            number_of_instances=max(r.number_of_instances for r in rows),
            holders=_holders(rows),
        )

    return _merged(_stream(conn, stmt), lambda r: r.study_instance_uid, build, query.limit)


def query_series(conn: Connection, query: QueryFilter, scope: Scope) -> Iterator[SeriesMatch]:
    stmt = (
        select(
            SeriesRow.series_instance_uid,
            SeriesRow.attributes,
            SeriesRow.number_of_instances,
            StudyRow.study_instance_uid,
            StudyRow.patient_id,
            StudyRow.patient_name,
            StudyRow.origin,
            StudyRow.collection,
            NodeRow.ae_title,
        )
        .join(StudyRow, StudyRow.id == SeriesRow.study_id)
        .outerjoin(NodeRow, NodeRow.name == StudyRow.origin)
        .where(series_level_where(query, scope), _unless_none_rejected(conn, _shown_series))
        .order_by(SeriesRow.series_instance_uid, StudyRow.origin, StudyRow.collection)
    )

    def build(rows: list[Row[Any]]) -> SeriesMatch:
        first = rows[0]
        attributes = dict(first.attributes)
        attributes.update(
            PatientID=first.patient_id,
            PatientName=first.patient_name,
            SeriesInstanceUID=first.series_instance_uid,
        )
        return SeriesMatch(
            study_instance_uid=first.study_instance_uid,
            series_instance_uid=first.series_instance_uid,
            attributes=attributes,
            number_of_instances=max(r.number_of_instances for r in rows),
            holders=_holders(rows),
        )

    return _merged(_stream(conn, stmt), lambda r: r.series_instance_uid, build, query.limit)


def _instance_select(conn: Connection, where: Any) -> Select[Any]:
    """Instance rows matching ``where``, except copies of rejected instances: a holder that
    has not removed its copy yet (it does at its next PlanRemovals) must not be found or
    retrieved from through the catalog meanwhile."""
    return (
        select(
            InstanceRow.sop_instance_uid,
            InstanceRow.sop_class_uid,
            InstanceRow.transfer_syntax_uid,
            InstanceRow.size,
            InstanceRow.blob_key,
            InstanceRow.attributes,
            InstanceRow.origin,
            InstanceRow.collection,
            SeriesRow.series_instance_uid,
            StudyRow.study_instance_uid,
            NodeRow.ae_title,
            NodeRow.peer_address,
        )
        .join(SeriesRow, SeriesRow.id == InstanceRow.series_id)
        .join(StudyRow, StudyRow.id == SeriesRow.study_id)
        .outerjoin(NodeRow, NodeRow.name == InstanceRow.origin)
        .where(where, _unless_none_rejected(conn, _not_rejected))
        .order_by(
            StudyRow.study_instance_uid,
            SeriesRow.series_instance_uid,
            InstanceRow.sop_instance_uid,
            InstanceRow.origin,
            InstanceRow.collection,
        )
    )


def query_instances(conn: Connection, query: QueryFilter, scope: Scope) -> Iterator[InstanceMatch]:
    stmt = _instance_select(conn, instance_level_where(query, scope))

    def build(rows: list[Row[Any]]) -> InstanceMatch:
        first = rows[0]
        return InstanceMatch(
            study_instance_uid=first.study_instance_uid,
            series_instance_uid=first.series_instance_uid,
            sop_instance_uid=first.sop_instance_uid,
            sop_class_uid=first.sop_class_uid,
            attributes=dict(first.attributes),
            holders=_holders(rows),
        )

    return _merged(_stream(conn, stmt), lambda r: r.sop_instance_uid, build, query.limit)


def locate_instances(
    conn: Connection, query: QueryFilter, scope: Scope
) -> Iterator[InstanceLocation]:
    """Every holder of every instance selected by study / series / instance UIDs."""
    where = instance_level_where(
        QueryFilter(
            study_instance_uids=query.study_instance_uids,
            series_instance_uids=query.series_instance_uids,
            sop_instance_uids=query.sop_instance_uids,
            collections=query.collections,
        ),
        scope,
    )

    def build(rows: list[Row[Any]]) -> InstanceLocation:
        first = rows[0]
        holders = _holders(rows)
        peers = {(r.origin, r.collection): r.peer_address or "" for r in rows}
        keys = {(r.origin, r.collection): r.blob_key or "" for r in rows}
        return InstanceLocation(
            study_instance_uid=first.study_instance_uid,
            series_instance_uid=first.series_instance_uid,
            sop_instance_uid=first.sop_instance_uid,
            sop_class_uid=first.sop_class_uid,
            transfer_syntax_uid=first.transfer_syntax_uid,
            size=first.size,
            holders=holders,
            peer_addresses=tuple(peers[(h.node, h.collection)] for h in holders),
            blob_keys=tuple(keys[(h.node, h.collection)] for h in holders),
        )

    rows = _stream(conn, _instance_select(conn, where))
    return _merged(rows, lambda r: r.sop_instance_uid, build, 0)


def list_holdings(
    conn: Connection, period: Period, node: str, collections: tuple[str, ...], scope: Scope
) -> Iterator[tuple[str, Held]]:
    """Every (node, instance) whose StudyDate or UTC date received falls in ``period``.

    Two index-driven selects (studies by StudyDate; instances by received_at) and their
    UNION, rather than one OR that no index serves (a scan of every instance row).
    """
    wanted = effective_collections(QueryFilter(collections=collections), scope)
    columns: list[Any] = [
        InstanceRow.origin,
        InstanceRow.collection,
        InstanceRow.sop_instance_uid,
        InstanceRow.sop_class_uid,
        InstanceRow.received_at,
        SeriesRow.series_instance_uid,
        StudyRow.study_instance_uid,
        StudyRow.study_date,
    ]
    by_date = (
        select(*columns)
        .select_from(StudyRow)
        .join(SeriesRow, SeriesRow.study_id == StudyRow.id)
        .join(InstanceRow, InstanceRow.series_id == SeriesRow.id)
        .where(StudyRow.study_date.between(period.start_text, period.end_text))
    )
    by_received = (
        select(*columns)
        .select_from(InstanceRow)
        .join(SeriesRow, SeriesRow.id == InstanceRow.series_id)
        .join(StudyRow, StudyRow.id == SeriesRow.study_id)
        .where(
            InstanceRow.received_at >= period.received_from,
            InstanceRow.received_at < period.received_until,
        )
    )
    if node:
        by_date = by_date.where(StudyRow.origin == node)
        by_received = by_received.where(InstanceRow.origin == node)
    if wanted is not None:
        by_date = by_date.where(StudyRow.collection.in_(wanted))
        by_received = by_received.where(InstanceRow.collection.in_(wanted))
    stmt: Any = union(by_date, by_received)
    for row in _stream(conn, stmt):
        yield (
            row.origin,
            Held(
                sop_instance_uid=row.sop_instance_uid,
                collection=row.collection,
                study_instance_uid=row.study_instance_uid,
                series_instance_uid=row.series_instance_uid,
                sop_class_uid=row.sop_class_uid,
                study_date=row.study_date or "",
                received_at=as_utc(row.received_at),
            ),
        )
