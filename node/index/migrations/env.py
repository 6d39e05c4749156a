"""Alembic environment for the node index: runs on the connection the caller passes.

:func:`node.index.migrate.upgrade` hands in a connection inside a transaction; the
``alembic`` command line (``alembic -x url=...``) is supported for developers.
"""

from __future__ import annotations

from alembic import context

from node.index.migrate import VERSION_TABLE
from node.index.models import Base
from storage.sql import engine_from_url

config = context.config
target_metadata = Base.metadata


def _configure(**kwargs: object) -> None:
    context.configure(
        target_metadata=target_metadata,
        version_table=VERSION_TABLE,
        render_as_batch=True,
        compare_type=True,
        **kwargs,  # type: ignore[arg-type]
    )


def run_migrations() -> None:
    """Online migrations on the given connection, or on ``-x url=...``."""
    connection = config.attributes.get("connection")
    if connection is not None:
        _configure(connection=connection)
        with context.begin_transaction():
            context.run_migrations()
        return
    url = context.get_x_argument(as_dictionary=True).get("url")
    if not url:
        raise SystemExit("pass the database as: alembic -x url=sqlite:///index.sqlite ...")
    engine = engine_from_url(url)
    try:
        with engine.connect() as conn:
            _configure(connection=conn)
            with context.begin_transaction():
                context.run_migrations()
            conn.commit()
    finally:
        engine.dispose()


if context.is_offline_mode():
    raise SystemExit("offline (SQL script) migrations are not supported for the node index")
run_migrations()
