"""An index on catalog_instances.received_at, for reconciliation by date received.

``ListHoldings`` selects a period's instances by StudyDate (already indexed on the study
rows) or by the date the node received them; without this index the second half scans
every instance row of the catalog once per node and month.

Revision ID: 0006
Revises: 0004 (0005, from another branch, goes between on merge)
"""

from __future__ import annotations

from alembic import op

revision = "0006"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index(
        "ix_catalog_instances_received_at", "catalog_instances", ["received_at"], unique=False
    )


def downgrade() -> None:
    op.drop_index("ix_catalog_instances_received_at", table_name="catalog_instances")
