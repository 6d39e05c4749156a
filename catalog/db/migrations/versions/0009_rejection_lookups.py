"""Indexes to ask whether anything of a study or series was rejected in a collection.

Study and series queries leave out a holder's row when every copy it has there was
rejected; rows of studies with no rejection at all answer with one probe here.

Revision ID: 0009
Revises: 0008
"""

from __future__ import annotations

from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index(
        "ix_catalog_rejections_study", "catalog_rejections", ["collection", "study_instance_uid"]
    )
    op.create_index(
        "ix_catalog_rejections_series", "catalog_rejections", ["collection", "series_instance_uid"]
    )


def downgrade() -> None:
    op.drop_index("ix_catalog_rejections_series", "catalog_rejections")
    op.drop_index("ix_catalog_rejections_study", "catalog_rejections")
