"""Researcher tokens and the append-only audit log live in the catalog's database.

The tables are those of :mod:`catalog.security.models` at this revision; the audit table
gets the dialect's triggers that reject UPDATE and DELETE (and TRUNCATE on PostgreSQL), so
a catalog is never without its tamper guard, whichever command created the database.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

from alembic import op

from catalog.security.models import SecurityBase, append_only_ddl

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    bind = op.get_bind()
    SecurityBase.metadata.create_all(bind, checkfirst=True)
    for statement in append_only_ddl(bind.dialect.name):
        bind.exec_driver_sql(statement)


def downgrade() -> None:
    bind = op.get_bind()
    SecurityBase.metadata.drop_all(bind, checkfirst=True)
