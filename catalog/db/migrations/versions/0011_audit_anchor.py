"""Old audit rows can be pruned: the chain then starts at an anchor (the last removed row's
seq and hash), and the triggers let only rows at or below it be deleted.

A database made fresh gets the table and triggers from 0003 (it creates the security
package's tables as they are now); one migrated before this revision gets them here.

Revision ID: 0011
Revises: 0010
"""

from __future__ import annotations

from typing import cast

import sqlalchemy as sa
from alembic import op

from catalog.security.models import AuditAnchor, append_only_ddl

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    bind = op.get_bind()
    cast(sa.Table, AuditAnchor.__table__).create(bind, checkfirst=True)
    for statement in append_only_ddl(bind.dialect.name):
        bind.exec_driver_sql(statement)


def downgrade() -> None:
    """Without the anchor the delete trigger's lookup fails, so every DELETE is refused
    again, as before this revision."""
    cast(sa.Table, AuditAnchor.__table__).drop(op.get_bind(), checkfirst=True)
