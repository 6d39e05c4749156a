"""An index on instances.received_at, for reconciliation by date received.

The inventory listing selects a period's instances by StudyDate (indexed on studies) or by
when they were received; this keeps the second half from scanning every instance row.
``received_at`` itself exists since 0001 (stamped by ingest), so nothing needs backfilling.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_instances_received_at", "instances", ["received_at"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_instances_received_at", table_name="instances")
