"""Initial catalog schema: nodes, watermarks, change log, studies, series, instances.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

UID = sa.String(64)
NAME = sa.String(128)


def upgrade() -> None:
    op.create_table(
        "catalog_nodes",
        sa.Column("name", NAME, primary_key=True),
        sa.Column("ae_title", sa.String(16), nullable=False),
        sa.Column("dicom_host", sa.String(255), nullable=False),
        sa.Column("dicom_port", sa.Integer, nullable=False),
        sa.Column("peer_address", sa.String(255), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_seen", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "catalog_watermarks",
        sa.Column("origin", NAME, primary_key=True),
        sa.Column("seq", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "catalog_changes",
        sa.Column("origin", NAME, primary_key=True),
        sa.Column("seq", sa.BigInteger, primary_key=True),
        sa.Column("kind", sa.String(20), nullable=False),
        sa.Column("collection", NAME, nullable=False),
        sa.Column("sop_instance_uid", UID, nullable=False),
    )
    op.create_table(
        "catalog_studies",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("origin", NAME, nullable=False),
        sa.Column("collection", NAME, nullable=False),
        sa.Column("study_instance_uid", UID, nullable=False),
        sa.Column("patient_id", sa.String(64), nullable=False),
        sa.Column("patient_name", sa.String(324), nullable=False),
        sa.Column("patient_name_key", sa.String(324), nullable=False),
        sa.Column("study_date", sa.String(8), nullable=False),
        sa.Column("accession_number", sa.String(64), nullable=False),
        sa.Column("study_description_key", sa.String(324), nullable=False),
        sa.Column("modalities", sa.String(255), nullable=False),
        sa.Column("number_of_series", sa.Integer, nullable=False),
        sa.Column("number_of_instances", sa.Integer, nullable=False),
        sa.Column("attributes", sa.JSON, nullable=False),
    )
    op.create_index(
        "uq_catalog_studies_holder",
        "catalog_studies",
        ["origin", "collection", "study_instance_uid"],
        unique=True,
    )
    op.create_index("ix_catalog_studies_uid", "catalog_studies", ["study_instance_uid"])
    op.create_index("ix_catalog_studies_patient_id", "catalog_studies", ["patient_id"])
    op.create_index("ix_catalog_studies_study_date", "catalog_studies", ["study_date"])
    op.create_index("ix_catalog_studies_accession", "catalog_studies", ["accession_number"])
    op.create_index("ix_catalog_studies_name_key", "catalog_studies", ["patient_name_key"])
    op.create_table(
        "catalog_series",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column(
            "study_id",
            sa.Integer,
            sa.ForeignKey("catalog_studies.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("series_instance_uid", UID, nullable=False),
        sa.Column("modality", sa.String(16), nullable=False),
        sa.Column("number_of_instances", sa.Integer, nullable=False),
        sa.Column("attributes", sa.JSON, nullable=False),
    )
    op.create_index(
        "uq_catalog_series_study",
        "catalog_series",
        ["study_id", "series_instance_uid"],
        unique=True,
    )
    op.create_index("ix_catalog_series_uid", "catalog_series", ["series_instance_uid"])
    op.create_index("ix_catalog_series_modality", "catalog_series", ["study_id", "modality"])
    op.create_table(
        "catalog_instances",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column(
            "series_id",
            sa.Integer,
            sa.ForeignKey("catalog_series.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("origin", NAME, nullable=False),
        sa.Column("collection", NAME, nullable=False),
        sa.Column("sop_instance_uid", UID, nullable=False),
        sa.Column("sop_class_uid", UID, nullable=False),
        sa.Column("transfer_syntax_uid", UID, nullable=False),
        sa.Column("blob_key", sa.String(128), nullable=False),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("seq", sa.BigInteger, nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("calling_ae", sa.String(16), nullable=False),
        sa.Column("attributes", sa.JSON, nullable=False),
    )
    op.create_index(
        "uq_catalog_instances_holder",
        "catalog_instances",
        ["origin", "collection", "sop_instance_uid"],
        unique=True,
    )
    op.create_index("ix_catalog_instances_uid", "catalog_instances", ["sop_instance_uid"])
    op.create_index("ix_catalog_instances_series", "catalog_instances", ["series_id"])


def downgrade() -> None:
    for table in (
        "catalog_instances",
        "catalog_series",
        "catalog_studies",
        "catalog_changes",
        "catalog_watermarks",
        "catalog_nodes",
    ):
        op.drop_table(table)
