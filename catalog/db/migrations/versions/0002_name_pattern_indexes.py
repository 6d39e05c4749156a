"""Prefix-wildcard indexes for PatientName and StudyDescription.

``SMI*`` becomes ``LIKE 'SMI%'`` on the upper-cased key columns. PostgreSQL uses a btree for
that only with ``varchar_pattern_ops``; SQLite only with a NOCASE index (its LIKE is
case-insensitive). Without them a wildcard query scans every study row.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

COLUMNS = {
    "ix_catalog_studies_name_key": "patient_name_key",
    "ix_catalog_studies_description_key": "study_description_key",
}


def upgrade() -> None:
    op.drop_index("ix_catalog_studies_name_key", table_name="catalog_studies")
    postgres = op.get_bind().dialect.name == "postgresql"
    for name, column in COLUMNS.items():
        if postgres:
            op.create_index(
                name,
                "catalog_studies",
                [column],
                postgresql_ops={column: "varchar_pattern_ops"},
            )
        else:
            op.execute(f"CREATE INDEX {name} ON catalog_studies ({column} COLLATE NOCASE)")


def downgrade() -> None:
    for name in COLUMNS:
        op.drop_index(name, table_name="catalog_studies")
    op.create_index("ix_catalog_studies_name_key", "catalog_studies", ["patient_name_key"])
