"""Storage Commitment requests whose reports are owed (DICOM PS3.4 Annex J).

A modality deletes its copy only once the archive's N-EVENT-REPORT says the instances are
committed; the request is recorded here before the N-ACTION is answered, so the report
survives a crash of the node.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "storage_commitments",
        sa.Column("calling_ae", sa.String(), nullable=False),
        sa.Column("transaction_uid", sa.String(), nullable=False),
        sa.Column("called_ae", sa.String(), nullable=False),
        sa.Column("refs", sa.Text(), nullable=False),
        sa.Column("requested_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("state", sa.String(), nullable=False),
        sa.Column("due_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("last_error", sa.String(), nullable=True),
        sa.Column("reported_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("committed", sa.Integer(), nullable=True),
        sa.Column("failed", sa.Integer(), nullable=True),
        sa.PrimaryKeyConstraint(
            "calling_ae", "transaction_uid", name=op.f("pk_storage_commitments")
        ),
    )
    op.create_index(
        "ix_storage_commitments_state_due", "storage_commitments", ["state", "due_at"]
    )


def downgrade() -> None:
    op.drop_index("ix_storage_commitments_state_due", table_name="storage_commitments")
    op.drop_table("storage_commitments")
