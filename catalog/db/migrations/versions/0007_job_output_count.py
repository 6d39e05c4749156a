"""How many derived series a job stored, kept apart from their UIDs.

A job on a collection that may not leave its site reports the number of series it
derived but not their UIDs (identifiers of identified data stay at the site); existing
rows count the UIDs they list, which the store does when it reads them.

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "catalog_jobs",
        sa.Column("output_series_count", sa.Integer, nullable=False, server_default=sa.text("0")),
    )


def downgrade() -> None:
    op.drop_column("catalog_jobs", "output_series_count")
