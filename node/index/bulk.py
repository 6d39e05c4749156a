"""Bulk adds: many records in a few statements per patient, study and series.

`add_instance` runs about six statements per instance and updates the same counter
rows once per instance; for an import of thousands of instances that is slow (and on
PostgreSQL each update of a row in one transaction leaves a version behind). Here a chunk
of records is grouped by patient -> study -> series: each row is upserted once with the
group's instance count, the instances go in with one executemany, and the outbox rows
with one head update. Counters, attribute updates, conflicts and the outbox end up
exactly as if the records had been added one by one; an instance rejected here (IHE
IOCM) is not added again (:attr:`AddOutcome.REJECTED`).

Lock order matches :mod:`writes`: patients in sorted key order, each patient's studies
and series after it, the outbox head last.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from .changes import append_changes
from .models import Instance, Patient, Rejection, Series, Study, table_of
from .records import AddOutcome, ChangeKind, InstanceRecord, Level
from .uid_locks import lock_many
from .writes import (
    bump,
    insert_instances,
    instance_values,
    level_values,
    modalities,
    patient_key,
    study_values,
    upsert,
)

PT, ST, SE, IN, RJ = (table_of(m) for m in (Patient, Study, Series, Instance, Rejection))
K = TypeVar("K")


class RaceLost(Exception):
    """Another writer stored one of the chunk's instances meanwhile: redo one by one."""


def add_many(conn: Connection, records: list[InstanceRecord]) -> list[AddOutcome]:
    """Index ``records`` (already stamped) in ``conn``'s transaction.

    Raises
    ------
    RaceLost
        A concurrent writer inserted one of these SOP instances after the duplicate
        check; the caller rolls back (a savepoint) and adds the chunk record by record.
    RecordConflict
        A record contradicts the stored hierarchy.
    """
    uids = [r.sop_instance_uid for r in records]
    lock_many(conn, uids, exclusive=False)  # as one add does (see .uid_locks)
    stored = set(
        conn.execute(
            sa.select(IN.c.sop_instance_uid).where(IN.c.sop_instance_uid.in_(uids))
        ).scalars()
    )
    rejected = set(
        conn.execute(
            sa.select(RJ.c.sop_instance_uid).where(RJ.c.sop_instance_uid.in_(uids))
        ).scalars()
    )
    outcomes: list[AddOutcome] = []
    fresh: list[InstanceRecord] = []
    for record in records:
        if record.sop_instance_uid in rejected:
            outcomes.append(AddOutcome.REJECTED)  # as add() refuses it, one by one
        elif record.sop_instance_uid in stored:
            outcomes.append(AddOutcome.ALREADY_STORED)
        else:
            stored.add(record.sop_instance_uid)
            fresh.append(record)
            outcomes.append(AddOutcome.STORED)
    rows: list[dict[str, Any]] = []
    patients = _group(fresh, lambda r: tuple(patient_key(r).values()))
    for key in sorted(patients):
        rows += _add_patient(conn, patients[key])
    if rows and insert_instances(conn, rows) != len(rows):
        raise RaceLost
    append_changes(conn, ChangeKind.INSTANCE_ADDED, fresh)
    return outcomes


def _add_patient(conn: Connection, records: list[InstanceRecord]) -> list[dict[str, Any]]:
    """Upsert one patient's rows with the group's counts; its instance rows to insert."""
    values = _merged(records, lambda r: level_values(r, Level.PATIENT))
    patient_pk, _ = upsert(conn, PT, patient_key(records[0]), values, inc=len(records))
    rows: list[dict[str, Any]] = []
    new_series = new_studies = 0
    for study_uid, in_study in _group(records, lambda r: r.study_instance_uid).items():
        study_pk, study_is_new = upsert(
            conn,
            ST,
            {"study_instance_uid": study_uid},
            _merged(in_study, study_values),
            parent=patient_pk,
            inc=len(in_study),
        )
        added = 0
        for series_uid, in_series in _group(in_study, lambda r: r.series_instance_uid).items():
            series_pk, series_is_new = upsert(
                conn,
                SE,
                {"series_instance_uid": series_uid},
                _merged(in_series, lambda r: level_values(r, Level.SERIES)),
                parent=study_pk,
                inc=len(in_series),
            )
            added += int(series_is_new)
            rows += [instance_values(r, series_pk) for r in in_series]
        if added:
            bump(conn, ST, study_pk, num_series=added, modalities=modalities(conn, study_pk))
        new_series += added
        new_studies += int(study_is_new)
    if new_series or new_studies:
        bump(conn, PT, patient_pk, num_series=new_series, num_studies=new_studies)
    return rows


def _group(
    records: Iterable[InstanceRecord], key: Callable[[InstanceRecord], K]
) -> dict[K, list[InstanceRecord]]:
    groups: dict[K, list[InstanceRecord]] = {}
    for record in records:
        groups.setdefault(key(record), []).append(record)
    return groups


def _merged(
    records: list[InstanceRecord], values: Callable[[InstanceRecord], dict[str, Any]]
) -> dict[str, Any]:
    """Column values as the last record that has each one says (None never erases)."""
    merged: dict[str, Any] = {}
    for record in records:
        for column, value in values(record).items():
            if value is not None or column not in merged:
                merged[column] = value
    return merged
