"""Where each audit collector has got to: rows after a cursor's ``seq`` are still owed.

A database made fresh gets the table from 0003 (it creates the security package's tables as
they are now); one migrated before this revision gets it here.

Revision ID: 0010
Revises: 0009
"""

from __future__ import annotations

from typing import cast

import sqlalchemy as sa
from alembic import op

from catalog.security.models import AuditExportCursor

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    cast(sa.Table, AuditExportCursor.__table__).create(op.get_bind(), checkfirst=True)


def downgrade() -> None:
    cast(sa.Table, AuditExportCursor.__table__).drop(op.get_bind(), checkfirst=True)
