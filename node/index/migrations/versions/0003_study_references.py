"""Study references of processing-stream jobs: reference -> StudyInstanceUID.

A study in a collection that may not leave the site is named to the catalog's scheduler
by an opaque keyed reference instead of its UID (DICOM PS3.15 counts UIDs as
identifiers). The node that made the reference keeps the mapping here, next to the
studies it maps to, so its worker can resolve the job and nobody else can.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "study_references",
        sa.Column("reference", sa.String(), nullable=False),
        sa.Column("study_instance_uid", sa.String(), nullable=False),
        sa.Column("collection", sa.String(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("reference", name=op.f("pk_study_references")),
    )


def downgrade() -> None:
    op.drop_table("study_references")
