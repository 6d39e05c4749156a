"""Instances rejected grid-wide (IHE IOCM rejection notes), per collection.

A node that accepts a rejection note publishes INSTANCE_REJECTED; every replica records
it here so no node keeps or copies the instance again (PlanRemovals, PlanPulls).

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "catalog_rejections",
        sa.Column("collection", sa.String(128), primary_key=True),
        sa.Column("sop_instance_uid", sa.String(64), primary_key=True),
        sa.Column("study_instance_uid", sa.String(64), nullable=False, server_default=""),
        sa.Column("series_instance_uid", sa.String(64), nullable=False, server_default=""),
        sa.Column("reason", sa.String(16), nullable=False, server_default=""),
        sa.Column("origin", sa.String(128), nullable=False),
        sa.Column("seq", sa.BigInteger, nullable=False),
        sa.Column("rejected_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("catalog_rejections")
