"""Typed SQLAlchemy models of the catalog (schema owned by the alembic migrations).

Rows are per *holder*: a study held by two nodes is two ``catalog_studies`` rows (one per
origin and collection), merged into one match with two holders at query time. That keeps
every row written by exactly one origin, which is why replication needs no conflict rules.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, DateTime, ForeignKey, Index, Integer, String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

UID = String(64)
NAME = String(128)


class Base(DeclarativeBase):
    """Declarative base of the catalog schema."""


class NodeRow(Base):
    """A registered node: how its DICOM AE and PeerService are reached."""

    __tablename__ = "catalog_nodes"

    name: Mapped[str] = mapped_column(NAME, primary_key=True)
    ae_title: Mapped[str] = mapped_column(String(16))
    dicom_host: Mapped[str] = mapped_column(String(255), default="")
    dicom_port: Mapped[int] = mapped_column(Integer, default=0)
    peer_address: Mapped[str] = mapped_column(String(255), default="")
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    last_seen: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class WatermarkRow(Base):
    """Highest seq of one origin this replica has applied."""

    __tablename__ = "catalog_watermarks"

    origin: Mapped[str] = mapped_column(NAME, primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger)


class ChangeRow(Base):
    """One applied change, keyed (origin, seq): what PullChanges serves to peers.

    It points at the instance instead of copying it; the instance row's ``seq`` tells
    whether this change is still the latest for that instance (else it is served as
    SUPERSEDED), so the log stays a few dozen bytes per change.
    """

    __tablename__ = "catalog_changes"

    origin: Mapped[str] = mapped_column(NAME, primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    kind: Mapped[str] = mapped_column(String(20))
    collection: Mapped[str] = mapped_column(NAME, default="")
    sop_instance_uid: Mapped[str] = mapped_column(UID, default="")


class StudyRow(Base):
    """One study as held by one origin in one collection."""

    __tablename__ = "catalog_studies"
    __table_args__ = (
        Index(
            "uq_catalog_studies_holder", "origin", "collection", "study_instance_uid", unique=True
        ),
        Index("ix_catalog_studies_uid", "study_instance_uid"),
        Index("ix_catalog_studies_patient_id", "patient_id"),
        Index("ix_catalog_studies_study_date", "study_date"),
        Index("ix_catalog_studies_accession", "accession_number"),
        # prefix wildcards: varchar_pattern_ops on PostgreSQL, COLLATE NOCASE on SQLite
        # (migration 0002 writes the SQLite form, which SQLAlchemy cannot express portably)
        Index(
            "ix_catalog_studies_name_key",
            "patient_name_key",
            postgresql_ops={"patient_name_key": "varchar_pattern_ops"},
        ),
        Index(
            "ix_catalog_studies_description_key",
            "study_description_key",
            postgresql_ops={"study_description_key": "varchar_pattern_ops"},
        ),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    origin: Mapped[str] = mapped_column(NAME)
    collection: Mapped[str] = mapped_column(NAME)
    study_instance_uid: Mapped[str] = mapped_column(UID)
    patient_id: Mapped[str] = mapped_column(String(64), default="")
    patient_name: Mapped[str] = mapped_column(String(324), default="")
    patient_name_key: Mapped[str] = mapped_column(String(324), default="")
    study_date: Mapped[str] = mapped_column(String(8), default="")
    accession_number: Mapped[str] = mapped_column(String(64), default="")
    study_description_key: Mapped[str] = mapped_column(String(324), default="")
    modalities: Mapped[str] = mapped_column(String(255), default="")
    number_of_series: Mapped[int] = mapped_column(Integer, default=0)
    number_of_instances: Mapped[int] = mapped_column(Integer, default=0)
    attributes: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class SeriesRow(Base):
    """One series of a :class:`StudyRow`."""

    __tablename__ = "catalog_series"
    __table_args__ = (
        Index("uq_catalog_series_study", "study_id", "series_instance_uid", unique=True),
        Index("ix_catalog_series_uid", "series_instance_uid"),
        Index("ix_catalog_series_modality", "study_id", "modality"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("catalog_studies.id", ondelete="CASCADE"))
    series_instance_uid: Mapped[str] = mapped_column(UID)
    modality: Mapped[str] = mapped_column(String(16), default="")
    number_of_instances: Mapped[int] = mapped_column(Integer, default=0)
    attributes: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class InstanceRow(Base):
    """One instance held by one origin in one collection; ``seq`` is the change that wrote it."""

    __tablename__ = "catalog_instances"
    __table_args__ = (
        Index(
            "uq_catalog_instances_holder", "origin", "collection", "sop_instance_uid", unique=True
        ),
        Index("ix_catalog_instances_uid", "sop_instance_uid"),
        Index("ix_catalog_instances_series", "series_id"),
        Index("ix_catalog_instances_received_at", "received_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    series_id: Mapped[int] = mapped_column(ForeignKey("catalog_series.id", ondelete="CASCADE"))
    origin: Mapped[str] = mapped_column(NAME)
    collection: Mapped[str] = mapped_column(NAME)
    sop_instance_uid: Mapped[str] = mapped_column(UID)
    sop_class_uid: Mapped[str] = mapped_column(UID, default="")
    transfer_syntax_uid: Mapped[str] = mapped_column(UID, default="")
    blob_key: Mapped[str] = mapped_column(String(128), default="")
    size: Mapped[int] = mapped_column(BigInteger, default=0)
    seq: Mapped[int] = mapped_column(BigInteger)
    received_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    calling_ae: Mapped[str] = mapped_column(String(16), default="")
    attributes: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class RejectionRow(Base):
    """An instance rejected in one collection (IHE IOCM), by whichever origin rejected it.

    Unlike every other row this one is about the grid, not one holder: no node may keep or
    copy the instance in that collection any more (PlanRemovals, PlanPulls). Rows are
    never removed; a second rejection of the same instance keeps the first row.
    """

    __tablename__ = "catalog_rejections"
    __table_args__ = (
        # queries ask "is anything of this study / series rejected?" for every row they
        # return (catalog.db.reads); these make the answer one probe (migration 0009)
        Index("ix_catalog_rejections_study", "collection", "study_instance_uid"),
        Index("ix_catalog_rejections_series", "collection", "series_instance_uid"),
    )

    collection: Mapped[str] = mapped_column(NAME, primary_key=True)
    sop_instance_uid: Mapped[str] = mapped_column(UID, primary_key=True)
    study_instance_uid: Mapped[str] = mapped_column(UID, default="")
    series_instance_uid: Mapped[str] = mapped_column(UID, default="")
    reason: Mapped[str] = mapped_column(String(16), default="")
    origin: Mapped[str] = mapped_column(NAME)
    seq: Mapped[int] = mapped_column(BigInteger)
    rejected_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
