"""Tables of the job scheduler (schema owned by alembic revisions 0004 and 0007).

They share the catalog's declarative base so one metadata describes the database; the
scheduler's rows are local to the replica that schedules (jobs are not replicated).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from catalog.db.models import NAME, UID, Base


class JobRow(Base):
    """One job: its current state, the running attempt's lease, the last outcome."""

    __tablename__ = "catalog_jobs"
    __table_args__ = (
        Index("ix_catalog_jobs_queue", "state", "priority", "created_at"),
        Index("ix_catalog_jobs_node", "node", "state"),
        Index("ix_catalog_jobs_study", "study_instance_uid"),
        Index(
            "uq_catalog_jobs_request",
            "request_id",
            "study_instance_uid",
            unique=True,
            postgresql_where=text("request_id <> ''"),
            sqlite_where=text("request_id <> ''"),
        ),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    stream: Mapped[str] = mapped_column(NAME)
    study_instance_uid: Mapped[str] = mapped_column(UID)
    collection: Mapped[str] = mapped_column(NAME, default="")
    state: Mapped[str] = mapped_column(String(16))
    priority: Mapped[int] = mapped_column(Integer)
    node: Mapped[str] = mapped_column(NAME, default="")
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer, default=1)
    attempt_budget: Mapped[int] = mapped_column(Integer, default=1)
    time_limit_seconds: Mapped[int] = mapped_column(Integer, default=0)
    origin_node: Mapped[str] = mapped_column(NAME, default="")
    reply_ae_title: Mapped[str] = mapped_column(String(16), default="")
    submitted_by: Mapped[str] = mapped_column(String(200), default="")
    request_id: Mapped[str] = mapped_column(String(64), default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    queued_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    placed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    error: Mapped[str] = mapped_column(Text, default="")
    exit_code: Mapped[int] = mapped_column(Integer, default=0)
    output_series: Mapped[list[str]] = mapped_column(JSON, default=list)
    output_series_count: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    input_holders: Mapped[list[str]] = mapped_column(JSON, default=list)
    lease_token: Mapped[str] = mapped_column(String(64), default="")
    lease_expires_at: Mapped[datetime | None] = mapped_column(
        DateTime(timezone=True), nullable=True
    )
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)


class JobAttemptRow(Base):
    """One attempt of a job on one node: its times, outcome and (bounded) logs."""

    __tablename__ = "catalog_job_attempts"

    job_id: Mapped[int] = mapped_column(
        ForeignKey("catalog_jobs.id", ondelete="CASCADE"), primary_key=True
    )
    attempt: Mapped[int] = mapped_column(Integer, primary_key=True)
    node: Mapped[str] = mapped_column(NAME)
    lease_token: Mapped[str] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(16))
    placed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    exit_code: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str] = mapped_column(Text, default="")
    logs: Mapped[bytes] = mapped_column(LargeBinary, default=b"")


class WorkerRow(Base):
    """A node worker's latest report: load, limits and the streams it offers."""

    __tablename__ = "catalog_workers"

    node: Mapped[str] = mapped_column(NAME, primary_key=True)
    reported_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    cpu_percent: Mapped[float] = mapped_column(Float, default=0.0)
    memory_available_mb: Mapped[int] = mapped_column(Integer, default=0)
    running_jobs: Mapped[int] = mapped_column(Integer, default=0)
    max_jobs: Mapped[int] = mapped_column(Integer, default=0)
    max_cpu_percent: Mapped[float] = mapped_column(Float, default=0.0)
    min_memory_available_mb: Mapped[int] = mapped_column(Integer, default=0)
    streams: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
