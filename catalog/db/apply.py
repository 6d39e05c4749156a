"""Apply one origin's changes to the catalog tables, in bulk, inside the caller's transaction.

This is the single write path: PublishChanges (from nodes), replication (from peers) and
bulk loads all come through :func:`apply_batch`, so idempotency by (origin, seq) holds
everywhere. Changes are applied in seq order, grouped into runs of adds and deletes so a
batch of 500 costs a handful of statements, not 500 round trips.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, bindparam, delete, func, insert, select, update

from catalog.db.models import (
    ChangeRow,
    InstanceRow,
    RejectionRow,
    SeriesRow,
    StudyRow,
    WatermarkRow,
)
from catalog.errors import InvalidChange
from catalog.records import (
    PATIENT_ATTRIBUTES,
    SERIES_ATTRIBUTES,
    STUDY_ATTRIBUTES,
    Change,
    ChangeKind,
    InstanceRecord,
)

CHUNK = 500
_STUDY_KEYS = PATIENT_ATTRIBUTES | STUDY_ATTRIBUTES


def chunks(items: Sequence[Any], size: int = CHUNK) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def read_watermark(conn: Connection, origin: str, *, lock: bool) -> int:
    """The origin's high-water mark (0 when unknown); row-locked on PostgreSQL."""
    value = _watermark_row(conn, origin, lock=lock)
    return value if value is not None else 0


def _watermark_row(conn: Connection, origin: str, *, lock: bool) -> int | None:
    stmt = select(WatermarkRow.seq).where(WatermarkRow.origin == origin)
    if lock and conn.dialect.name == "postgresql":
        stmt = stmt.with_for_update()
    value = conn.execute(stmt).scalar_one_or_none()
    return int(value) if value is not None else None


def write_watermark(conn: Connection, origin: str, seq: int, *, existed: bool) -> None:
    if existed:
        conn.execute(update(WatermarkRow).where(WatermarkRow.origin == origin).values(seq=seq))
    else:
        conn.execute(insert(WatermarkRow).values(origin=origin, seq=seq))


def validate_changes(changes: Sequence[Change]) -> None:
    """Seqs strictly ascending and positive; every add/delete carries a usable record."""
    previous = 0
    for change in changes:
        if change.seq <= previous:
            raise InvalidChange(f"seq {change.seq} is not > {previous}: changes must ascend")
        previous = change.seq
        if change.kind in (ChangeKind.SUPERSEDED, ChangeKind.STORE_RESET):
            continue
        record = change.record
        if record is None or not record.sop_instance_uid:
            raise InvalidChange(f"change seq {change.seq} has no SOPInstanceUID")
        if change.kind is ChangeKind.INSTANCE_ADDED and not (
            record.study_instance_uid and record.series_instance_uid
        ):
            raise InvalidChange(f"change seq {change.seq}: study and series UIDs are required")


def apply_batch(conn: Connection, origin: str, changes: Sequence[Change]) -> tuple[int, int, int]:
    """Apply the changes above the origin's watermark; return (watermark, applied, skipped).

    The caller owns the transaction and serialises writers of one origin.
    """
    if not origin:
        raise InvalidChange("origin node name is required")
    validate_changes(changes)
    row = _watermark_row(conn, origin, lock=True)
    mark = row if row is not None else 0
    fresh = [c for c in changes if c.seq > mark]
    if not fresh:
        return mark, 0, len(changes)
    for kind, run in _runs(fresh):
        if kind is ChangeKind.INSTANCE_ADDED:
            _apply_adds(conn, origin, run)
        elif kind is ChangeKind.INSTANCE_DELETED:
            _apply_deletes(conn, origin, run)
        elif kind is ChangeKind.STORE_RESET:
            _apply_store_reset(conn, origin)
        elif kind is ChangeKind.INSTANCE_REJECTED:
            _apply_deletes(conn, origin, run)
            _record_rejections(conn, origin, run)
    conn.execute(insert(ChangeRow), [_log_row(origin, c) for c in fresh])
    write_watermark(conn, origin, fresh[-1].seq, existed=row is not None)
    return fresh[-1].seq, len(fresh), len(changes) - len(fresh)


def _runs(changes: Sequence[Change]) -> Iterator[tuple[ChangeKind, list[Change]]]:
    run: list[Change] = []
    for change in changes:
        if run and run[-1].kind is not change.kind:
            yield run[-1].kind, run
            run = []
        run.append(change)
    if run:
        yield run[-1].kind, run


def _log_row(origin: str, change: Change) -> dict[str, Any]:
    record = change.record
    if change.kind in (ChangeKind.SUPERSEDED, ChangeKind.STORE_RESET) or record is None:
        return {
            "origin": origin,
            "seq": change.seq,
            "kind": change.kind.value,
            "collection": "",
            "sop_instance_uid": "",
        }
    return {
        "origin": origin,
        "seq": change.seq,
        "kind": change.kind.value,
        "collection": record.collection,
        "sop_instance_uid": record.sop_instance_uid,
    }


def _split_attributes(
    record: InstanceRecord,
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    study: dict[str, Any] = {}
    series: dict[str, Any] = {}
    instance: dict[str, Any] = {}
    for key, value in record.attributes.items():
        if key in _STUDY_KEYS:
            study[key] = value
        elif key in SERIES_ATTRIBUTES:
            series[key] = value
        else:
            instance[key] = value
    return study, series, instance


def _text(value: Any) -> str:
    return "" if value is None else str(value)


def _study_values(record: InstanceRecord, attrs: dict[str, Any]) -> dict[str, Any]:
    name = _text(attrs.get("PatientName"))
    return {
        "patient_id": record.patient_id,
        "patient_name": name,
        "patient_name_key": name.upper(),
        "study_date": _text(attrs.get("StudyDate"))[:8],
        "accession_number": _text(attrs.get("AccessionNumber")),
        "study_description_key": _text(attrs.get("StudyDescription")).upper(),
        "attributes": attrs,
    }


def _apply_adds(conn: Connection, origin: str, changes: list[Change]) -> None:
    latest: dict[tuple[str, str], Change] = {}
    for change in changes:
        assert change.record is not None
        latest[(change.record.collection, change.record.sop_instance_uid)] = change
    touched_series = _delete_instances(conn, origin, list(latest))
    study_ids = _ensure_studies(conn, origin, [c.record for c in latest.values() if c.record])
    series_ids = _ensure_series(conn, study_ids, [c.record for c in latest.values() if c.record])
    rows = []
    for change in latest.values():
        record = change.record
        assert record is not None
        _, _, inst_attrs = _split_attributes(record)
        series_id = series_ids[
            (study_ids[(record.collection, record.study_instance_uid)], record.series_instance_uid)
        ]
        touched_series.add(series_id)
        rows.append(
            {
                "series_id": series_id,
                "origin": origin,
                "collection": record.collection,
                "sop_instance_uid": record.sop_instance_uid,
                "sop_class_uid": record.sop_class_uid,
                "transfer_syntax_uid": record.transfer_syntax_uid,
                "blob_key": record.blob_key,
                "size": record.size,
                "seq": change.seq,
                "received_at": record.received_at,
                "calling_ae": record.calling_ae,
                "attributes": inst_attrs,
            }
        )
    conn.execute(insert(InstanceRow), rows)
    refresh_counts(conn, touched_series)


def _apply_deletes(conn: Connection, origin: str, changes: list[Change]) -> None:
    keys = [(c.record.collection, c.record.sop_instance_uid) for c in changes if c.record]
    refresh_counts(conn, _delete_instances(conn, origin, keys))


def _record_rejections(conn: Connection, origin: str, changes: list[Change]) -> None:
    """Record each rejection grid-wide; an instance already rejected keeps its first row."""
    wanted: dict[tuple[str, str], Change] = {}
    for change in changes:
        if change.record is not None:
            wanted.setdefault((change.record.collection, change.record.sop_instance_uid), change)
    by_collection: dict[str, list[str]] = {}
    for collection, uid in wanted:
        by_collection.setdefault(collection, []).append(uid)
    known: set[tuple[str, str]] = set()
    for collection, uids in by_collection.items():
        for part in chunks(uids):
            found = conn.execute(
                select(RejectionRow.sop_instance_uid).where(
                    RejectionRow.collection == collection, RejectionRow.sop_instance_uid.in_(part)
                )
            ).scalars()
            known.update((collection, uid) for uid in found)
    now = datetime.now(UTC)
    rows = [
        {
            "collection": collection,
            "sop_instance_uid": uid,
            "study_instance_uid": change.record.study_instance_uid,
            "series_instance_uid": change.record.series_instance_uid,
            "reason": change.reason[:16],
            "origin": origin,
            "seq": change.seq,
            "rejected_at": now,
        }
        for (collection, uid), change in wanted.items()
        if (collection, uid) not in known and change.record is not None
    ]
    if rows:
        conn.execute(insert(RejectionRow), rows)


def _apply_store_reset(conn: Connection, origin: str) -> None:
    """The origin's store was emptied: drop every row it wrote so far (all have lower seqs,
    changes being applied in seq order). Its later ADDED changes fill it again."""
    studies = select(StudyRow.id).where(StudyRow.origin == origin).scalar_subquery()
    conn.execute(delete(InstanceRow).where(InstanceRow.origin == origin))
    conn.execute(delete(SeriesRow).where(SeriesRow.study_id.in_(studies)))
    conn.execute(delete(StudyRow).where(StudyRow.origin == origin))


def _delete_instances(conn: Connection, origin: str, keys: list[tuple[str, str]]) -> set[int]:
    """Delete the origin's instances with these (collection, uid); return their series ids."""
    by_collection: dict[str, list[str]] = {}
    for collection, uid in keys:
        by_collection.setdefault(collection, []).append(uid)
    touched: set[int] = set()
    for collection, uids in by_collection.items():
        for part in chunks(uids):
            where = (
                (InstanceRow.origin == origin)
                & (InstanceRow.collection == collection)
                & InstanceRow.sop_instance_uid.in_(part)
            )
            found = conn.execute(select(InstanceRow.id, InstanceRow.series_id).where(where)).all()
            if found:
                touched.update(row.series_id for row in found)
                conn.execute(delete(InstanceRow).where(InstanceRow.id.in_([r.id for r in found])))
    return touched


def _ensure_studies(
    conn: Connection, origin: str, records: Iterable[InstanceRecord]
) -> dict[tuple[str, str], int]:
    """Ids of the origin's study rows for these records, creating or refreshing them."""
    wanted: dict[tuple[str, str], InstanceRecord] = {}
    for record in records:
        wanted[(record.collection, record.study_instance_uid)] = record
    ids: dict[tuple[str, str], int] = {}
    current: dict[tuple[str, str], dict[str, Any]] = {}
    for part in chunks(sorted({uid for _, uid in wanted})):
        stmt = select(
            StudyRow.id, StudyRow.collection, StudyRow.study_instance_uid, StudyRow.attributes
        ).where(StudyRow.origin == origin, StudyRow.study_instance_uid.in_(part))
        for row in conn.execute(stmt):
            ids[(row.collection, row.study_instance_uid)] = row.id
            current[(row.collection, row.study_instance_uid)] = row.attributes
    new_keys: list[tuple[str, str]] = []
    new_rows: list[dict[str, Any]] = []
    changed: list[dict[str, Any]] = []
    for key, record in wanted.items():
        attrs, _, _ = _split_attributes(record)
        values = _study_values(record, attrs)
        if key not in ids:
            new_keys.append(key)
            new_rows.append(
                {
                    "origin": origin,
                    "collection": key[0],
                    "study_instance_uid": key[1],
                    "modalities": "",
                    "number_of_series": 0,
                    "number_of_instances": 0,
                    **values,
                }
            )
        elif current[key] != attrs:
            changed.append({"b_id": ids[key], **values})
    if new_rows:
        returning = insert(StudyRow).returning(StudyRow.id, sort_by_parameter_order=True)
        ids.update(zip(new_keys, conn.execute(returning, new_rows).scalars(), strict=True))
    if changed:
        conn.execute(update(StudyRow).where(StudyRow.id == bindparam("b_id")), changed)
    return ids


def _ensure_series(
    conn: Connection, study_ids: dict[tuple[str, str], int], records: Iterable[InstanceRecord]
) -> dict[tuple[int, str], int]:
    wanted: dict[tuple[int, str], InstanceRecord] = {}
    for record in records:
        study_id = study_ids[(record.collection, record.study_instance_uid)]
        wanted[(study_id, record.series_instance_uid)] = record
    ids: dict[tuple[int, str], int] = {}
    current: dict[tuple[int, str], dict[str, Any]] = {}
    for part in chunks(sorted({sid for sid, _ in wanted})):
        stmt = select(
            SeriesRow.id, SeriesRow.study_id, SeriesRow.series_instance_uid, SeriesRow.attributes
        ).where(SeriesRow.study_id.in_(part))
        for row in conn.execute(stmt):
            key = (row.study_id, row.series_instance_uid)
            if key in wanted:
                ids[key] = row.id
                current[key] = row.attributes
    new_keys: list[tuple[int, str]] = []
    new_rows: list[dict[str, Any]] = []
    changed: list[dict[str, Any]] = []
    for key, record in wanted.items():
        _, attrs, _ = _split_attributes(record)
        modality = _text(attrs.get("Modality"))
        if key not in ids:
            new_keys.append(key)
            new_rows.append(
                {
                    "study_id": key[0],
                    "series_instance_uid": key[1],
                    "modality": modality,
                    "number_of_instances": 0,
                    "attributes": attrs,
                }
            )
        elif current[key] != attrs:
            changed.append({"b_id": ids[key], "modality": modality, "attributes": attrs})
    if new_rows:
        returning = insert(SeriesRow).returning(SeriesRow.id, sort_by_parameter_order=True)
        ids.update(zip(new_keys, conn.execute(returning, new_rows).scalars(), strict=True))
    if changed:
        conn.execute(update(SeriesRow).where(SeriesRow.id == bindparam("b_id")), changed)
    return ids


def refresh_counts(conn: Connection, series_ids: set[int]) -> None:
    """Recount touched series and their studies; drop the ones left empty."""
    if not series_ids:
        return
    study_ids: set[int] = set()
    for part in chunks(sorted(series_ids)):
        counts = dict(
            conn.execute(
                select(InstanceRow.series_id, func.count())
                .where(InstanceRow.series_id.in_(part))
                .group_by(InstanceRow.series_id)
            ).all()
        )
        study_ids.update(
            conn.execute(select(SeriesRow.study_id).where(SeriesRow.id.in_(part))).scalars()
        )
        empty = [sid for sid in part if sid not in counts]
        if empty:
            conn.execute(delete(SeriesRow).where(SeriesRow.id.in_(empty)))
        if counts:
            conn.execute(
                update(SeriesRow).where(SeriesRow.id == bindparam("b_id")),
                [{"b_id": sid, "number_of_instances": n} for sid, n in counts.items()],
            )
    _refresh_studies(conn, study_ids)


def _refresh_studies(conn: Connection, study_ids: set[int]) -> None:
    for part in chunks(sorted(study_ids)):
        per_study: dict[int, tuple[int, int, set[str]]] = {}
        rows = conn.execute(
            select(SeriesRow.study_id, SeriesRow.modality, SeriesRow.number_of_instances).where(
                SeriesRow.study_id.in_(part)
            )
        )
        for row in rows:
            n_series, n_inst, modalities = per_study.get(row.study_id, (0, 0, set()))
            if row.modality:
                modalities.add(row.modality)
            per_study[row.study_id] = (n_series + 1, n_inst + row.number_of_instances, modalities)
        empty = [sid for sid in part if sid not in per_study]
        if empty:
            conn.execute(delete(StudyRow).where(StudyRow.id.in_(empty)))
        if per_study:
            conn.execute(
                update(StudyRow).where(StudyRow.id == bindparam("b_id")),
                [
                    {
                        "b_id": sid,
                        "number_of_series": n_series,
                        "number_of_instances": n_inst,
                        "modalities": "\\".join(sorted(modalities)),
                    }
                    for sid, (n_series, n_inst, modalities) in per_study.items()
                ],
            )
