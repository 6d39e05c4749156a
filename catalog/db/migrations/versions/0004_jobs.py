"""Processing streams' jobs: the queue, each attempt (with bounded logs), worker reports.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

UID = sa.String(64)
NAME = sa.String(128)
WHEN = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "catalog_jobs",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("stream", NAME, nullable=False),
        sa.Column("study_instance_uid", UID, nullable=False),
        sa.Column("collection", NAME, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("priority", sa.Integer, nullable=False),
        sa.Column("node", NAME, nullable=False),
        sa.Column("attempt", sa.Integer, nullable=False),
        sa.Column("max_attempts", sa.Integer, nullable=False),
        sa.Column("attempt_budget", sa.Integer, nullable=False),
        sa.Column("time_limit_seconds", sa.Integer, nullable=False),
        sa.Column("origin_node", NAME, nullable=False),
        sa.Column("reply_ae_title", sa.String(16), nullable=False),
        sa.Column("submitted_by", sa.String(200), nullable=False),
        sa.Column("request_id", sa.String(64), nullable=False),
        sa.Column("created_at", WHEN, nullable=False),
        sa.Column("queued_at", WHEN, nullable=False),
        sa.Column("placed_at", WHEN, nullable=True),
        sa.Column("started_at", WHEN, nullable=True),
        sa.Column("finished_at", WHEN, nullable=True),
        sa.Column("error", sa.Text, nullable=False),
        sa.Column("exit_code", sa.Integer, nullable=False),
        sa.Column("output_series", sa.JSON, nullable=False),
        sa.Column("input_holders", sa.JSON, nullable=False),
        sa.Column("lease_token", sa.String(64), nullable=False),
        sa.Column("lease_expires_at", WHEN, nullable=True),
        sa.Column("cancel_requested", sa.Boolean, nullable=False),
    )
    op.create_index("ix_catalog_jobs_queue", "catalog_jobs", ["state", "priority", "created_at"])
    op.create_index("ix_catalog_jobs_node", "catalog_jobs", ["node", "state"])
    op.create_index("ix_catalog_jobs_study", "catalog_jobs", ["study_instance_uid"])
    op.create_index(
        "uq_catalog_jobs_request",
        "catalog_jobs",
        ["request_id", "study_instance_uid"],
        unique=True,
        postgresql_where=sa.text("request_id <> ''"),
        sqlite_where=sa.text("request_id <> ''"),
    )
    op.create_table(
        "catalog_job_attempts",
        sa.Column(
            "job_id",
            sa.Integer,
            sa.ForeignKey("catalog_jobs.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("attempt", sa.Integer, primary_key=True),
        sa.Column("node", NAME, nullable=False),
        sa.Column("lease_token", sa.String(64), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("placed_at", WHEN, nullable=True),
        sa.Column("started_at", WHEN, nullable=False),
        sa.Column("finished_at", WHEN, nullable=True),
        sa.Column("exit_code", sa.Integer, nullable=False),
        sa.Column("error", sa.Text, nullable=False),
        sa.Column("logs", sa.LargeBinary, nullable=False),
    )
    op.create_table(
        "catalog_workers",
        sa.Column("node", NAME, primary_key=True),
        sa.Column("reported_at", WHEN, nullable=False),
        sa.Column("cpu_percent", sa.Float, nullable=False),
        sa.Column("memory_available_mb", sa.Integer, nullable=False),
        sa.Column("running_jobs", sa.Integer, nullable=False),
        sa.Column("max_jobs", sa.Integer, nullable=False),
        sa.Column("max_cpu_percent", sa.Float, nullable=False),
        sa.Column("min_memory_available_mb", sa.Integer, nullable=False),
        sa.Column("streams", sa.JSON, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("catalog_workers")
    op.drop_table("catalog_job_attempts")
    op.drop_index("uq_catalog_jobs_request", table_name="catalog_jobs")
    op.drop_index("ix_catalog_jobs_study", table_name="catalog_jobs")
    op.drop_index("ix_catalog_jobs_node", table_name="catalog_jobs")
    op.drop_index("ix_catalog_jobs_queue", table_name="catalog_jobs")
    op.drop_table("catalog_jobs")
