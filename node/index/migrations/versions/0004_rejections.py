"""Rejected instances (IHE IOCM) and blobs queued for removal.

A rejection note removes the instances it lists from the index and the blob store; the
``rejections`` rows make the node refuse them from then on, and ``blob_removals`` carries
the blobs to delete across a crash.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "rejections",
        sa.Column("sop_instance_uid", sa.String(), nullable=False),
        sa.Column("collection", sa.String(), nullable=False),
        sa.Column("study_instance_uid", sa.String(), nullable=False),
        sa.Column("series_instance_uid", sa.String(), nullable=False),
        sa.Column("reason", sa.String(), nullable=False),
        sa.Column("note_uid", sa.String(), nullable=False),
        sa.Column("rejected_by", sa.String(), nullable=False),
        sa.Column("rejected_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("sop_instance_uid", name=op.f("pk_rejections")),
    )
    op.create_table(
        "blob_removals",
        sa.Column("blob_key", sa.String(), nullable=False),
        sa.Column("queued_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("blob_key", name=op.f("pk_blob_removals")),
    )


def downgrade() -> None:
    op.drop_table("blob_removals")
    op.drop_table("rejections")
