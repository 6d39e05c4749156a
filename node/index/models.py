"""The index's tables: Patient -> Study -> Series -> Instance, the change outbox, and the
study references of processing-stream jobs.

Counters (instances per series/study/patient, series per study/patient, studies per
patient) and the study's modalities are maintained on insert and delete, so a STUDY-level
C-FIND reads one row per study instead of aggregating its instances.

A patient is keyed by (collection, PatientID): collections are separate trust domains
(a de-identified collection has its own pseudonymous IDs), so counters and PATIENT-level
answers never mix collections. Person names are kept as received plus an upper-cased
copy used for case-insensitive matching; PostgreSQL indexes that copy with
``text_pattern_ops`` so ``LIKE 'DOE%'`` uses it whatever the database collation, and
SQLite's ``case_sensitive_like`` (set by :mod:`storage.sql`) lets its plain index serve
the same pattern.

:data:`ATTRIBUTES` maps each DICOM keyword of ``LEVEL_KEYS`` to its column and VR; the
repository and the matching code read it instead of spelling columns out again.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from .records import Level

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
}


class Base(DeclarativeBase):
    """Declarative base with deterministic constraint names (alembic needs them)."""

    metadata = sa.MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {str: sa.String(), datetime: sa.DateTime(timezone=True)}


class Patient(Base):
    """One patient within one collection."""

    __tablename__ = "patients"

    pk: Mapped[int] = mapped_column(primary_key=True)
    collection: Mapped[str]
    patient_id: Mapped[str]
    patient_name: Mapped[str | None]
    patient_name_norm: Mapped[str | None]
    issuer_of_patient_id: Mapped[str | None]
    patient_birth_date: Mapped[str | None]
    patient_sex: Mapped[str | None]
    num_studies: Mapped[int] = mapped_column(default=0)
    num_series: Mapped[int] = mapped_column(default=0)
    num_instances: Mapped[int] = mapped_column(default=0)

    __table_args__ = (
        sa.UniqueConstraint("collection", "patient_id"),
        sa.Index("ix_patients_patient_id", "patient_id"),
        sa.Index(
            "ix_patients_patient_name_norm",
            "patient_name_norm",
            postgresql_ops={"patient_name_norm": "text_pattern_ops"},
        ),
    )


class Study(Base):
    """One study; it belongs to exactly one patient and one collection."""

    __tablename__ = "studies"

    pk: Mapped[int] = mapped_column(primary_key=True)
    patient_pk: Mapped[int] = mapped_column(sa.ForeignKey("patients.pk"))
    study_instance_uid: Mapped[str] = mapped_column(unique=True)
    collection: Mapped[str]
    study_date: Mapped[str | None]
    study_time: Mapped[str | None]
    accession_number: Mapped[str | None]
    study_id: Mapped[str | None]
    study_description: Mapped[str | None]
    referring_physician_name: Mapped[str | None]
    referring_physician_name_norm: Mapped[str | None]
    modalities: Mapped[str | None]
    """Distinct modalities of the study's series, sorted, backslash-separated."""
    num_series: Mapped[int] = mapped_column(default=0)
    num_instances: Mapped[int] = mapped_column(default=0)

    __table_args__ = (
        sa.Index("ix_studies_patient_pk", "patient_pk"),
        sa.Index("ix_studies_study_date", "study_date"),
        sa.Index("ix_studies_accession_number", "accession_number"),
        sa.Index("ix_studies_collection", "collection"),
    )


class Series(Base):
    """One series of one study."""

    __tablename__ = "series"

    pk: Mapped[int] = mapped_column(primary_key=True)
    study_pk: Mapped[int] = mapped_column(sa.ForeignKey("studies.pk"))
    series_instance_uid: Mapped[str] = mapped_column(unique=True)
    modality: Mapped[str | None]
    series_number: Mapped[int | None]
    series_description: Mapped[str | None]
    body_part_examined: Mapped[str | None]
    series_date: Mapped[str | None]
    series_time: Mapped[str | None]
    num_instances: Mapped[int] = mapped_column(default=0)

    __table_args__ = (sa.Index("ix_series_study_pk_modality", "study_pk", "modality"),)


class Instance(Base):
    """One stored SOP instance and where its bytes are."""

    __tablename__ = "instances"

    pk: Mapped[int] = mapped_column(primary_key=True)
    series_pk: Mapped[int] = mapped_column(sa.ForeignKey("series.pk"))
    sop_instance_uid: Mapped[str] = mapped_column(unique=True)
    sop_class_uid: Mapped[str]
    instance_number: Mapped[int | None]
    content_date: Mapped[str | None]
    content_time: Mapped[str | None]
    number_of_frames: Mapped[int | None]
    image_rows: Mapped[int | None]
    image_columns: Mapped[int | None]
    transfer_syntax_uid: Mapped[str]
    blob_key: Mapped[str]
    size: Mapped[int] = mapped_column(sa.BigInteger)
    received_at: Mapped[datetime]
    calling_ae: Mapped[str]

    __table_args__ = (
        sa.Index("ix_instances_series_pk", "series_pk"),
        sa.Index("ix_instances_received_at", "received_at"),
    )


class ChangeRow(Base):
    """Outbox: one row per index change, written in the transaction that made it.

    ``seq`` is assigned from :class:`ChangeHead` under its row lock rather than by a
    sequence: sequence values are handed out at insert time but become visible at commit
    time, so a reader polling ``seq > n`` could skip a slower transaction's lower number
    for ever. Taking the head row last in every writing transaction makes ``seq`` gapless
    and committed in order.
    """

    __tablename__ = "changes"

    seq: Mapped[int] = mapped_column(sa.BigInteger, primary_key=True, autoincrement=False)
    kind: Mapped[str] = mapped_column(sa.String(32))
    payload: Mapped[dict[str, Any]] = mapped_column(sa.JSON)
    created_at: Mapped[datetime]


class ChangeHead(Base):
    """The single row holding the last assigned outbox sequence number."""

    __tablename__ = "change_head"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    last_seq: Mapped[int] = mapped_column(sa.BigInteger)


class StudyReference(Base):
    """A study reference this node's stream trigger sent the catalog instead of the UID.

    For a collection that may not leave the site the catalog's job names the study by a
    keyed hash; only this table maps it back, so only this node can run the job. Rows are
    never removed: a job may be retried long after it was submitted.
    """

    __tablename__ = "study_references"

    reference: Mapped[str] = mapped_column(primary_key=True)
    study_instance_uid: Mapped[str]
    collection: Mapped[str]
    created_at: Mapped[datetime]


class Rejection(Base):
    """An instance rejected here (IHE IOCM rejection note, or the grid's PlanRemovals).

    Kept for ever: a rejected instance is refused when sent again, and the row says who
    rejected it, why (the note's title code) and when.
    """

    __tablename__ = "rejections"

    sop_instance_uid: Mapped[str] = mapped_column(primary_key=True)
    collection: Mapped[str]
    study_instance_uid: Mapped[str]
    series_instance_uid: Mapped[str]
    reason: Mapped[str]
    note_uid: Mapped[str]
    """The rejection note's SOP Instance UID ('' when the grid asked for the removal)."""
    rejected_by: Mapped[str]
    """The calling AE title of the note, or the catalog's word for another node's."""
    rejected_at: Mapped[datetime]


class BlobRemoval(Base):
    """A blob whose last instance was removed, queued in the same transaction so a crash
    between that commit and the blob's deletion leaves no orphan behind (done at start)."""

    __tablename__ = "blob_removals"

    blob_key: Mapped[str] = mapped_column(primary_key=True)
    queued_at: Mapped[datetime]


class StorageCommitment(Base):
    """A Storage Commitment request (N-ACTION) whose report is owed or was sent.

    Recorded before the N-ACTION is answered, so a report promised to a modality survives
    a crash: the reporter sends every pending row after a restart. ``refs`` is the request's
    list of ``[SOP Class UID, SOP Instance UID]`` pairs as JSON.
    """

    __tablename__ = "storage_commitments"
    __table_args__ = (sa.Index("ix_storage_commitments_state_due", "state", "due_at"),)

    calling_ae: Mapped[str] = mapped_column(primary_key=True)
    transaction_uid: Mapped[str] = mapped_column(primary_key=True)
    called_ae: Mapped[str]
    refs: Mapped[str] = mapped_column(sa.Text)
    requested_at: Mapped[datetime]
    state: Mapped[str]
    """``pending`` (a report is owed), ``reported`` or ``abandoned`` (never delivered)."""
    due_at: Mapped[datetime]
    attempts: Mapped[int]
    last_error: Mapped[str | None]
    reported_at: Mapped[datetime | None]
    committed: Mapped[int | None]
    failed: Mapped[int | None]


def table_of(model: type[Base]) -> sa.Table:
    """The :class:`~sqlalchemy.Table` behind ``model``, typed as one (for Core statements)."""
    return cast(sa.Table, model.__table__)


@dataclass(frozen=True, slots=True)
class Attribute:
    """Where a DICOM keyword lives and how it matches."""

    keyword: str
    level: Level
    column: sa.ColumnElement[Any]
    vr: str
    norm: sa.ColumnElement[Any] | None = None
    """The upper-cased copy used for matching (PN only)."""


def _attrs() -> dict[str, Attribute]:
    p, st, se, i = Patient, Study, Series, Instance
    rows: list[tuple[str, Level, Any, str, Any]] = [
        ("PatientName", Level.PATIENT, p.patient_name, "PN", p.patient_name_norm),
        ("PatientID", Level.PATIENT, p.patient_id, "LO", None),
        ("IssuerOfPatientID", Level.PATIENT, p.issuer_of_patient_id, "LO", None),
        ("PatientBirthDate", Level.PATIENT, p.patient_birth_date, "DA", None),
        ("PatientSex", Level.PATIENT, p.patient_sex, "CS", None),
        ("NumberOfPatientRelatedStudies", Level.PATIENT, p.num_studies, "COUNT", None),
        ("NumberOfPatientRelatedSeries", Level.PATIENT, p.num_series, "COUNT", None),
        ("NumberOfPatientRelatedInstances", Level.PATIENT, p.num_instances, "COUNT", None),
        ("StudyInstanceUID", Level.STUDY, st.study_instance_uid, "UI", None),
        ("StudyDate", Level.STUDY, st.study_date, "DA", None),
        ("StudyTime", Level.STUDY, st.study_time, "TM", None),
        ("AccessionNumber", Level.STUDY, st.accession_number, "SH", None),
        ("StudyID", Level.STUDY, st.study_id, "SH", None),
        ("StudyDescription", Level.STUDY, st.study_description, "LO", None),
        (
            "ReferringPhysicianName",
            Level.STUDY,
            st.referring_physician_name,
            "PN",
            st.referring_physician_name_norm,
        ),
        ("ModalitiesInStudy", Level.STUDY, st.modalities, "MODALITIES", None),
        ("NumberOfStudyRelatedSeries", Level.STUDY, st.num_series, "COUNT", None),
        ("NumberOfStudyRelatedInstances", Level.STUDY, st.num_instances, "COUNT", None),
        ("SeriesInstanceUID", Level.SERIES, se.series_instance_uid, "UI", None),
        ("Modality", Level.SERIES, se.modality, "CS", None),
        ("SeriesNumber", Level.SERIES, se.series_number, "IS", None),
        ("SeriesDescription", Level.SERIES, se.series_description, "LO", None),
        ("BodyPartExamined", Level.SERIES, se.body_part_examined, "CS", None),
        ("SeriesDate", Level.SERIES, se.series_date, "DA", None),
        ("SeriesTime", Level.SERIES, se.series_time, "TM", None),
        ("NumberOfSeriesRelatedInstances", Level.SERIES, se.num_instances, "COUNT", None),
        ("SOPInstanceUID", Level.IMAGE, i.sop_instance_uid, "UI", None),
        ("SOPClassUID", Level.IMAGE, i.sop_class_uid, "UI", None),
        ("InstanceNumber", Level.IMAGE, i.instance_number, "IS", None),
        ("ContentDate", Level.IMAGE, i.content_date, "DA", None),
        ("ContentTime", Level.IMAGE, i.content_time, "TM", None),
        ("NumberOfFrames", Level.IMAGE, i.number_of_frames, "IS", None),
        ("Rows", Level.IMAGE, i.image_rows, "US", None),
        ("Columns", Level.IMAGE, i.image_columns, "US", None),
    ]
    return {
        kw: Attribute(kw, level, col.expression, vr, None if norm is None else norm.expression)
        for kw, level, col, vr, norm in rows
    }


ATTRIBUTES: dict[str, Attribute] = _attrs()
"""Every keyword of ``LEVEL_KEYS``, with its column and VR (COUNT/MODALITIES: computed)."""

COMPUTED_VRS = frozenset({"COUNT", "MODALITIES"})
"""Pseudo-VRs of attributes the index maintains itself and never takes from a record."""
