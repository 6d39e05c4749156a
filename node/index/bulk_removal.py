"""Bulk removals: many instances out of the index in a few statements per patient, study
and series (a rejection note listing a whole study).

:func:`writes.remove` runs about eight statements per instance and updates the same
counter rows once per instance: most of the time of rejecting a 300-instance study. Here
the instances are grouped patient -> study -> series: each counter row is updated once
with the group's count, the instance rows go in one statement per chunk, and emptied
series, studies and patients are deleted as :func:`writes.remove` would. Counters end up
exactly as if the instances had been removed one by one.

Lock order matches :mod:`.writes` and :mod:`.bulk`: patients in sorted key order
(collection, patient ID), each patient's studies and series after it; the caller appends
the outbox rows last.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import groupby
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from .models import Instance, Patient, Series, Study, table_of
from .writes import bump, modalities

PT, ST, SE, IN = (table_of(m) for m in (Patient, Study, Series, Instance))
CHUNK = 500


_HELD = sa.select(
    IN.c.pk,
    IN.c.sop_instance_uid,
    SE.c.pk.label("series_pk"),
    ST.c.pk.label("study_pk"),
    PT.c.pk.label("patient_pk"),
    PT.c.collection,
    PT.c.patient_id,
).select_from(
    IN.join(SE, IN.c.series_pk == SE.c.pk)
    .join(ST, SE.c.study_pk == ST.c.pk)
    .join(PT, ST.c.patient_pk == PT.c.pk)
)


class RemovalRaced(Exception):
    """Another writer removed one of these instances meanwhile: roll back and redo."""


def remove_many(conn: Connection, sop_instance_uids: Sequence[str]) -> set[str]:
    """Remove the held ones among ``sop_instance_uids`` and prune emptied parents, without
    outbox rows (the caller appends them last); the UIDs removed.

    Raises
    ------
    RemovalRaced
        An instance went between the read and the delete; the caller rolls back.
    """
    rows: list[Any] = []
    for start in range(0, len(sop_instance_uids), CHUNK):
        chunk = list(sop_instance_uids[start : start + CHUNK])
        rows += conn.execute(_HELD.where(IN.c.sop_instance_uid.in_(chunk))).all()

    def patient_order(row: Any) -> tuple[str, str, int]:
        return (row.collection, row.patient_id or "", row.patient_pk)

    rows.sort(key=lambda r: (*patient_order(r), r.study_pk, r.series_pk))
    for (_, _, patient_pk), in_patient in groupby(rows, key=patient_order):
        _remove_patients_instances(conn, patient_pk, list(in_patient))
    return {row.sop_instance_uid for row in rows}


def _remove_patients_instances(conn: Connection, patient_pk: int, rows: list[Any]) -> None:
    patient_left = bump(conn, PT, patient_pk, num_instances=-len(rows))
    gone = 0
    for start in range(0, len(rows), CHUNK):
        pks = [row.pk for row in rows[start : start + CHUNK]]
        gone += conn.execute(sa.delete(IN).where(IN.c.pk.in_(pks))).rowcount
    if patient_left is None or gone != len(rows):
        raise RemovalRaced
    series_gone = studies_gone = 0
    for study_pk, study_rows in groupby(rows, key=lambda r: r.study_pk):
        in_study = list(study_rows)
        gone_here = 0
        for series_pk, in_series in groupby(in_study, key=lambda r: r.series_pk):
            if bump(conn, SE, series_pk, num_instances=-len(list(in_series))) == 0:
                conn.execute(sa.delete(SE).where(SE.c.pk == series_pk))
                gone_here += 1
        study_left = bump(conn, ST, study_pk, num_instances=-len(in_study), num_series=-gone_here)
        if study_left == 0:
            conn.execute(sa.delete(ST).where(ST.c.pk == study_pk))
            studies_gone += 1
        elif gone_here:
            bump(conn, ST, study_pk, modalities=modalities(conn, study_pk))
        series_gone += gone_here
    if series_gone:
        bump(conn, PT, patient_pk, num_series=-series_gone, num_studies=-studies_gone)
    if patient_left == 0:
        conn.execute(sa.delete(PT).where(PT.c.pk == patient_pk))
