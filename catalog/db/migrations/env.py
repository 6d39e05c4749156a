"""Alembic environment: run with the connection handed over by ``catalog.db.engine``."""

from __future__ import annotations

from alembic import context

from catalog.db.models import Base

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
