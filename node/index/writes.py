"""Add and delete instances inside a caller's transaction, keeping counters exact.

Lock order, the same in every writer so PostgreSQL never deadlocks between them: the
patient row first (every add and delete updates it before anything else, which also
serialises writers of one patient), then study, series, instance, and the outbox head
last (:func:`changes.append_change`). On SQLite the whole transaction holds the database
write lock from ``BEGIN IMMEDIATE``.

Duplicates raise :class:`Duplicate`; the caller rolls the transaction (or savepoint)
back, so a duplicate leaves no trace: no counter change, no outbox row.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from functools import cache
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection

from .changes import append_change, append_change_with
from .errors import InstanceRejected, RecordConflict
from .matching import normalise_date, normalise_pn, normalise_time
from .models import (
    ATTRIBUTES,
    COMPUTED_VRS,
    Instance,
    Patient,
    Rejection,
    Series,
    Study,
    table_of,
)
from .prepared import Runner, runner
from .records import LEVEL_KEYS, ChangeKind, InstanceRecord, Level
from .uid_locks import rejection_of_stored

PT, ST, SE, IN = (table_of(m) for m in (Patient, Study, Series, Instance))


class Duplicate(Exception):
    """Internal: the SOP instance is already indexed."""


def add(run: Runner, record: InstanceRecord) -> None:
    """Index ``record`` and append its outbox row; raises :class:`Duplicate`.

    The statements run through :mod:`.prepared` (this is the per-C-STORE path). There is
    no duplicate check up front: the instance insert (``ON CONFLICT DO NOTHING``) is the
    check, and a duplicate's counter updates go with the rolled-back transaction. A
    duplicate whose parents changed meanwhile stays a duplicate, not a conflict. A
    rejected instance raises :class:`InstanceRejected` (one primary-key read, after a
    shared lock on the UID on PostgreSQL: :mod:`.uid_locks`).
    """
    # a rejection of the same UID waits for this store, or this store for it
    rejected = rejection_of_stored(run, _REJECTED, record.sop_instance_uid)
    if rejected is not None:
        raise InstanceRejected(record.sop_instance_uid, str(rejected[0]))
    try:
        patient_pk, _ = upsert(run, PT, patient_key(record), level_values(record, Level.PATIENT))
        study_pk, new_study = upsert(
            run,
            ST,
            {"study_instance_uid": record.study_instance_uid},
            study_values(record),
            parent=patient_pk,
        )
        series_pk, new_series = upsert(
            run,
            SE,
            {"series_instance_uid": record.series_instance_uid},
            level_values(record, Level.SERIES),
            parent=study_pk,
        )
    except RecordConflict:
        if run.one(_FIND_INSTANCE, {"uid": record.sop_instance_uid}) is not None:
            raise Duplicate from None
        raise
    values = instance_values(record, series_pk)
    if run.one(_statements(run.dialect_name, IN).insert, values) is None:
        raise Duplicate
    if new_series:
        listed = "\\".join(sorted(run.scalars(_MODALITIES, {"study_pk": study_pk})))
        run.run(_NEW_SERIES_OF_STUDY, {"pk": study_pk, "modalities": listed})
        run.run(_NEW_SERIES_OF_PATIENT, {"pk": patient_pk, "new_study": int(new_study)})
    append_change_with(run, ChangeKind.INSTANCE_ADDED, record)


def instance_values(record: InstanceRecord, series_pk: int) -> dict[str, Any]:
    """The instance row of ``record``, filed under ``series_pk``."""
    return {
        "series_pk": series_pk,
        "sop_instance_uid": record.sop_instance_uid,
        "sop_class_uid": record.sop_class_uid,
        "transfer_syntax_uid": record.transfer_syntax_uid,
        "blob_key": record.blob_key,
        "size": record.size,
        "received_at": record.received_at,
        "calling_ae": record.calling_ae,
        **level_values(record, Level.IMAGE),
    }


def insert_instances(conn: Connection, rows: list[dict[str, Any]]) -> int:
    """Insert instance rows (executemany); how many were new (the rest already existed)."""
    result = conn.execute(_statements(conn.dialect.name, IN).insert, rows)
    return len(result.all())


def patient_key(record: InstanceRecord) -> dict[str, str]:
    """What identifies the record's patient row."""
    return {"collection": record.collection, "patient_id": _text(record.patient_id) or ""}


def delete(conn: Connection, sop_instance_uid: str, record: InstanceRecord) -> bool:
    """Remove an instance, prune emptied parents, append the outbox row."""
    if not remove(conn, sop_instance_uid):
        return False
    append_change(conn, ChangeKind.INSTANCE_DELETED, record)
    return True


def remove(conn: Connection, sop_instance_uid: str) -> bool:
    """Remove an instance and prune emptied parents, without an outbox row (the caller
    appends it last: see the lock order above); ``False`` if not held or raced away."""
    row = conn.execute(
        sa.select(IN.c.pk, SE.c.pk, ST.c.pk, ST.c.patient_pk)
        .select_from(IN.join(SE, IN.c.series_pk == SE.c.pk).join(ST, SE.c.study_pk == ST.c.pk))
        .where(IN.c.sop_instance_uid == sop_instance_uid)
    ).first()
    if row is None:
        return False
    instance_pk, series_pk, study_pk, patient_pk = row
    patient_left = bump(conn, PT, patient_pk, num_instances=-1)
    gone = conn.execute(sa.delete(IN).where(IN.c.pk == instance_pk).returning(IN.c.pk)).first()
    if patient_left is None or gone is None:
        return False  # deleted meanwhile by another writer; the caller rolls back
    series_left = bump(conn, SE, series_pk, num_instances=-1)
    series_gone = series_left == 0
    study_left = bump(conn, ST, study_pk, num_instances=-1, num_series=-int(series_gone))
    if series_gone:
        conn.execute(sa.delete(SE).where(SE.c.pk == series_pk))
        if study_left:
            bump(conn, ST, study_pk, modalities=modalities(conn, study_pk))
    if study_left == 0:
        conn.execute(sa.delete(ST).where(ST.c.pk == study_pk))
    if series_gone:
        bump(conn, PT, patient_pk, num_series=-1, num_studies=-int(study_left == 0))
    if patient_left == 0:
        conn.execute(sa.delete(PT).where(PT.c.pk == patient_pk))
    return True


def stamped(record: InstanceRecord) -> InstanceRecord:
    """``record`` with ``received_at`` in UTC, set to now when the caller left it empty."""
    received = record.received_at
    if received is None:
        return replace(record, received_at=datetime.now(UTC))
    return replace(record, received_at=as_utc(received))


def as_utc(moment: datetime) -> datetime:
    """``moment`` in UTC; a naive value is taken to be UTC already (SQLite returns those)."""
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


_FIND_INSTANCE = sa.select(IN.c.pk).where(IN.c.sop_instance_uid == sa.bindparam("uid"))
_RJ = table_of(Rejection)
_REJECTED = sa.select(_RJ.c.reason).where(_RJ.c.sop_instance_uid == sa.bindparam("uid"))
_MODALITIES = (
    sa.select(SE.c.modality)
    .where(SE.c.study_pk == sa.bindparam("study_pk"), SE.c.modality.is_not(None))
    .distinct()
)
_NEW_SERIES_OF_STUDY = (
    sa.update(ST)
    .where(ST.c.pk == sa.bindparam("pk"))
    .values(num_series=ST.c.num_series + 1, modalities=sa.bindparam("modalities"))
)
_NEW_SERIES_OF_PATIENT = (
    sa.update(PT)
    .where(PT.c.pk == sa.bindparam("pk"))
    .values(
        num_series=PT.c.num_series + 1,
        num_studies=PT.c.num_studies + sa.bindparam("new_study", type_=sa.Integer),
    )
)
_PARENT = {"studies": "patient_pk", "series": "study_pk"}
_KEYS = {
    "patients": ("collection", "patient_id"),
    "studies": ("study_instance_uid",),
    "series": ("series_instance_uid",),
}


@dataclass(frozen=True, slots=True)
class _Upsert:
    """Prebuilt statements of one table: building them per call costs more than running."""

    update: Any
    insert: Any


@cache
def _statements(dialect: str, table: sa.Table) -> _Upsert:
    """The upsert statements of ``table`` (or the instance insert), for one dialect."""
    target = _KEYS.get(table.name, ("sop_instance_uid",))
    insert = (postgresql if dialect == "postgresql" else sqlite).insert(table)
    insert = insert.on_conflict_do_nothing(index_elements=list(target))
    if table is IN:
        columns = [c for c in IN.c if c.key != "pk"]
        stmt = insert.values({c: sa.bindparam(c.key, type_=c.type) for c in columns})
        return _Upsert(None, stmt.returning(IN.c.pk))
    keys = _KEYS[table.name]
    parent = _PARENT.get(table.name)
    maintained = {"pk", "modalities", parent, *keys}
    values = [c for c in table.c if c.key not in maintained and not c.key.startswith("num_")]
    update = (
        sa.update(table)
        .where(*(table.c[k] == sa.bindparam(f"k_{k}") for k in keys))
        .values(
            {
                table.c.num_instances: table.c.num_instances + sa.bindparam("inc"),
                **{
                    c: sa.func.coalesce(sa.bindparam(f"v_{c.key}", type_=c.type), c) for c in values
                },
            }
        )
        .returning(table.c.pk, *([table.c[parent]] if parent else []))
    )
    inserted = {
        **{table.c[k]: sa.bindparam(f"k_{k}") for k in keys},
        **{c: _value(c) for c in values},
        table.c.num_instances: sa.bindparam("inc"),
    }
    if parent:
        inserted[table.c[parent]] = sa.bindparam("parent")
    return _Upsert(update, insert.values(inserted).returning(table.c.pk))


def _value(column: sa.Column[Any]) -> Any:
    return sa.bindparam(f"v_{column.key}", type_=column.type)


def upsert(
    target: Connection | Runner,
    table: sa.Table,
    key: Mapping[str, Any],
    values: Mapping[str, Any],
    parent: int | None = None,
    inc: int = 1,
) -> tuple[int, bool]:
    """Update-or-insert one row, counting ``inc`` more instances; ``(pk, inserted)``.

    Attributes the record lacks (``None``) never erase stored ones; a stored row that
    hangs under another parent than ``parent`` is a :class:`RecordConflict`.
    """
    if isinstance(target, Connection):
        with runner(target) as run:
            return upsert(run, table, key, values, parent, inc)
    statements = _statements(target.dialect_name, table)
    params = {
        **{f"k_{k}": v for k, v in key.items()},
        **{f"v_{k}": v for k, v in values.items()},
        "parent": parent,
        "inc": inc,
    }
    for _attempt in range(3):
        row = target.one(statements.update, params)
        if row is not None:
            if parent is not None and row[1] != parent:
                raise RecordConflict(_conflict_message(table, key))
            return int(row[0]), False
        pk = target.scalar(statements.insert, params)
        if pk is not None:
            return int(pk), True
    raise RecordConflict(f"could not file {dict(key)} in {table.name}")  # pragma: no cover


def _conflict_message(table: sa.Table, key: Mapping[str, Any]) -> str:
    ((name, value),) = key.items()
    parent = "patient (PatientID, collection)" if table is ST else "study"
    return f"{name} {value} is already filed under another {parent}"


def bump(conn: Connection, table: sa.Table, pk: int, **changes: Any) -> int | None:
    """Apply counter deltas (ints) and plain values; return the new ``num_instances``."""
    values = {
        k: table.c[k] + v if k.startswith("num_") else v
        for k, v in changes.items()
        if not (k.startswith("num_") and v == 0)
    }
    stmt = sa.update(table).where(table.c.pk == pk).returning(table.c.num_instances)
    return conn.execute(stmt.values(**values)).scalar()


def modalities(conn: Connection, study_pk: int) -> str:
    found = conn.execute(
        sa.select(SE.c.modality)
        .where(SE.c.study_pk == study_pk, SE.c.modality.is_not(None))
        .distinct()
    ).scalars()
    return "\\".join(sorted(found))


def study_values(record: InstanceRecord) -> dict[str, Any]:
    """The study row's values (its collection included)."""
    return {**level_values(record, Level.STUDY), "collection": record.collection}


def level_values(record: InstanceRecord, level: Level) -> dict[str, Any]:
    """The record's attributes of ``level`` as column values, cleaned for storage."""
    out: dict[str, Any] = {}
    for keyword in LEVEL_KEYS[level]:
        attr = ATTRIBUTES[keyword]
        if attr.vr in COMPUTED_VRS or keyword in _RECORD_FIELDS:
            continue
        value = _stored_value(attr.vr, record.attributes.get(keyword))
        out[str(attr.column.key)] = value
        if attr.norm is not None:
            out[str(attr.norm.key)] = None if value is None else normalise_pn(str(value))
    return out


_RECORD_FIELDS = frozenset(
    {"PatientID", "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID"}
)


def _stored_value(vr: str, value: object) -> object:
    if value is None:
        return None
    if vr in ("IS", "US"):
        try:
            return int(str(value).strip())
        except ValueError:
            return None
    text = _text(value)
    if text is None:
        return None
    if vr == "DA":
        return normalise_date(text)
    if vr == "TM":
        return normalise_time(text)
    return text


def _text(value: object) -> str | None:
    """A string as PostgreSQL and SQLite both accept it: no NULs, no DICOM padding."""
    text = str(value).replace("\x00", "").strip()
    return text or None
