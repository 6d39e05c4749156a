"""Bring an index database to the newest schema with alembic, programmatically.

The migration scripts live in ``node/index/migrations``; the revision is kept in the
table ``node_index_alembic_version`` so a database shared with another alembic-managed
component (the catalog) cannot mix the two histories up.
"""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection, Engine

from storage.sql import write_begin

MIGRATIONS_DIR = Path(__file__).with_name("migrations")
VERSION_TABLE = "node_index_alembic_version"
_PG_MIGRATION_LOCK = 0x6E6F6465  # "node": serialises concurrent upgrades on PostgreSQL


def alembic_config(connection: Connection | None = None) -> Config:
    """An alembic :class:`Config` for our scripts, bound to ``connection`` if given."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR).replace("%", "%%"))
    config.attributes["connection"] = connection
    return config


def head_revision() -> str:
    """The newest revision the scripts know."""
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    return head


def current_revision(engine: Engine) -> str | None:
    """The revision the database is at, ``None`` for an empty database."""
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE})
        return context.get_current_revision()


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Upgrade the database to ``revision`` in one transaction.

    Concurrent callers (several processes starting at once) are serialised: SQLite by
    ``BEGIN IMMEDIATE``, PostgreSQL by a transaction-scoped advisory lock.
    """
    with engine.connect() as raw:
        conn = write_begin(raw)
        with conn.begin():
            if conn.dialect.name == "postgresql":
                conn.execute(sa.select(sa.func.pg_advisory_xact_lock(_PG_MIGRATION_LOCK)))
            command.upgrade(alembic_config(conn), revision)
