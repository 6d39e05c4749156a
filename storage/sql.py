"""Create SQLAlchemy engines with the settings our durability and concurrency story needs.

SQLite vs PostgreSQL is a URL, not a code path: callers get an :class:`~sqlalchemy.Engine`
that behaves the same way for what they rely on.

SQLite
    ``journal_mode=WAL`` (readers never block the writer), ``synchronous=FULL`` (a commit
    has reached the disk when it returns, so a C-STORE success is only sent for a durable
    index row), ``foreign_keys=ON``, ``busy_timeout`` (several associations write from
    several threads) and ``case_sensitive_like=ON`` (``LIKE`` compares bytes exactly as it
    does on PostgreSQL, and can use a plain index for a literal prefix). The driver's own
    implicit transaction handling is switched off and SQLAlchemy emits ``BEGIN`` itself, so
    savepoints work and a writer can ask for ``BEGIN IMMEDIATE`` (see :func:`write_begin`):
    taking the write lock up front makes the busy timeout apply, instead of failing with
    ``SQLITE_BUSY`` when a read transaction later tries to write.
PostgreSQL
    A bounded pool with ``pool_pre_ping`` (connections dropped by a restart are replaced,
    not handed out) and a connect timeout.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.engine.interfaces import DBAPIConnection
from sqlalchemy.pool import ConnectionPoolEntry

SQLITE_BUSY_TIMEOUT_MS = 30_000
"""How long a SQLite writer waits for the write lock before giving up."""

PG_CONNECT_TIMEOUT_S = 10
"""How long connecting to PostgreSQL may take before it counts as unavailable."""

_BEGIN_OPTION = "gridpacs_begin"


class DatabaseError(Exception):
    """Root of the errors raised by :mod:`storage.sql`."""


class InvalidDatabaseUrl(DatabaseError, ValueError):
    """The URL cannot be parsed or names a database we do not support."""


class DatabaseUnavailable(DatabaseError):
    """The database could not be reached or opened; the message is fit to show a user."""


def engine_from_url(
    url: str,
    *,
    pool_size: int = 5,
    max_overflow: int = 10,
    check: bool = True,
) -> Engine:
    """Build an engine for a SQLite or PostgreSQL URL.

    Parameters
    ----------
    url
        ``sqlite:///path/to/file.sqlite`` or ``postgresql+psycopg2://user@host/db``.
    pool_size, max_overflow
        Connection pool bounds. A streaming C-FIND holds a connection while the peer
        reads its answers, so size them for the concurrent associations expected.
    check
        Connect once now, so that a wrong URL or a database that is down is reported
        at start-up (as :class:`DatabaseUnavailable`) rather than on the first request.

    Raises
    ------
    InvalidDatabaseUrl
        The URL cannot be parsed or its backend is neither SQLite nor PostgreSQL.
    DatabaseUnavailable
        ``check`` is true and connecting failed.
    """
    try:
        parsed = sa.make_url(url)
    except sa.exc.ArgumentError as exc:
        raise InvalidDatabaseUrl(f"cannot parse database URL {url!r}: {exc}") from exc
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        engine = _sqlite_engine(parsed, pool_size, max_overflow)
    elif backend == "postgresql":
        engine = sa.create_engine(
            parsed,
            pool_size=pool_size,
            max_overflow=max_overflow,
            pool_pre_ping=True,
            pool_recycle=3600,
            connect_args={
                "connect_timeout": PG_CONNECT_TIMEOUT_S,
                # Streamed queries are read to the end (a C-FIND answers every match):
                # plan server-side cursors for all rows, not for the first 10 %.
                "options": "-c cursor_tuple_fraction=1.0",
            },
        )
    else:
        raise InvalidDatabaseUrl(
            f"unsupported database {backend!r} in {safe_url(url)}; use sqlite or postgresql"
        )
    if check:
        try:
            with engine.connect():
                pass
        except sa.exc.OperationalError as exc:
            engine.dispose()
            raise DatabaseUnavailable(describe_unavailable(engine, exc)) from exc
    return engine


def write_begin(conn: Connection) -> Connection:
    """Mark ``conn`` so its next transaction takes the SQLite write lock at ``BEGIN``.

    A no-op on PostgreSQL, whose row locks need nothing of the kind.
    """
    return conn.execution_options(**{_BEGIN_OPTION: "IMMEDIATE"})


def safe_url(url: str | sa.URL) -> str:
    """The URL with any password hidden, for messages and logs."""
    try:
        parsed = sa.make_url(url)
    except sa.exc.ArgumentError:
        return "<unparsable database URL>"
    return parsed.render_as_string(hide_password=True)


def describe_unavailable(engine: Engine, exc: sa.exc.DBAPIError) -> str:
    """One line that says which database failed and why, without its password."""
    reason = str(exc.orig).strip().splitlines()[0] if exc.orig is not None else str(exc)
    return f"database {safe_url(engine.url)} is unavailable: {reason}"


def _sqlite_engine(parsed: sa.URL, pool_size: int, max_overflow: int) -> Engine:
    pool: dict[str, Any] = {}
    if parsed.database not in (None, "", ":memory:"):  # file databases get a QueuePool
        pool = {"pool_size": pool_size, "max_overflow": max_overflow}
    engine = sa.create_engine(
        parsed, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000}, **pool
    )

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: DBAPIConnection, _record: ConnectionPoolEntry) -> None:
        # Autocommit at the driver level: SQLAlchemy's "begin" hook below emits BEGIN.
        dbapi_conn.isolation_level = None
        cursor = dbapi_conn.cursor()
        try:
            for pragma in (
                "PRAGMA journal_mode=WAL",
                "PRAGMA synchronous=FULL",
                "PRAGMA foreign_keys=ON",
                f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}",
                "PRAGMA case_sensitive_like=ON",
            ):
                cursor.execute(pragma)
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        mode: Any = conn.get_execution_options().get(_BEGIN_OPTION, "DEFERRED")
        conn.exec_driver_sql(f"BEGIN {'IMMEDIATE' if mode == 'IMMEDIATE' else 'DEFERRED'}")

    return engine
