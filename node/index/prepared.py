"""Core statements compiled once per dialect and run straight on the DBAPI cursor.

Ingest runs the same few statements for every instance it receives. Through
``Connection.execute`` each one pays for a cache key walk, an execution context and a
result wrapper: on SQLite about five times what the database spends running it, and
most of the time a C-STORE spends in the index. A :class:`Prepared` statement is compiled
from the same Core construct, with SQLAlchemy's own bind processors (datetimes, JSON), so
the rows are byte for byte what Core would write; DBAPI errors are wrapped in
SQLAlchemy's exceptions (and a dropped connection is invalidated), so callers see and
handle failures exactly as on the Core path.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Dialect, Engine
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.schema import ScalarElementColumnDefault

_Processor = Callable[[Any], Any]


class Prepared:
    """One statement: its SQL for one dialect and how to turn named values into its
    parameters."""

    __slots__ = ("_defaults", "_named", "_names", "_processors", "sql")

    def __init__(self, statement: sa.ClauseElement, dialect: Dialect) -> None:
        compiled = statement.compile(dialect=dialect)
        assert isinstance(compiled, SQLCompiler)
        self.sql = compiled.string
        rendered = {name: bind for bind, name in compiled.bind_names.items()}
        positional = compiled.positiontup
        self._named = positional is None
        self._names: tuple[str, ...] = tuple(positional or rendered)
        processors: dict[str, _Processor] = {}
        # Literals in the statement (``last_seq + 1``) are binds with a value; columns it
        # leaves out but that have a Python-side default are computed by Core per
        # execution ("prefetch"): only constant defaults are supported here.
        defaults: dict[str, Any] = {}
        for name, bind in rendered.items():
            processor = bind.type.dialect_impl(dialect).bind_processor(dialect)
            if processor is not None:
                processors[name] = processor
            if not bind.required:
                defaults[name] = bind.effective_value
        for column in (*compiled.insert_prefetch, *compiled.update_prefetch):
            default = column.default
            if not isinstance(default, ScalarElementColumnDefault):
                raise ValueError(f"{column} has a default a prepared statement cannot apply")
            defaults[column.key] = default.arg
        self._processors = processors
        self._defaults = defaults

    def parameters(self, values: Mapping[str, Any]) -> tuple[Any, ...] | dict[str, Any]:
        """The DBAPI parameters of ``values`` (keys the statement does not use are
        ignored; a key it needs but ``values`` lacks is a KeyError, as it is a bug)."""
        processors = self._processors
        if self._defaults:
            values = {**self._defaults, **values}
        if self._named:
            return {
                n: processors[n](values[n]) if n in processors else values[n] for n in self._names
            }
        return tuple(
            processors[n](values[n]) if n in processors else values[n] for n in self._names
        )


_COMPILED: dict[tuple[sa.ClauseElement, str, str], Prepared] = {}


def prepared(statement: sa.ClauseElement, dialect: Dialect) -> Prepared:
    """``statement`` compiled for ``dialect``'s database and driver, once per process.

    Only for statements built once at import time: the cache keeps them alive. A race
    between two first uses compiles twice and keeps either; both are the same.
    """
    key = (statement, dialect.name, dialect.driver)
    found = _COMPILED.get(key)
    if found is None:
        found = _COMPILED[key] = Prepared(statement, dialect)
    return found


class Runner:
    """Runs prepared statements on one DBAPI cursor, inside whatever transaction its
    connection has open."""

    __slots__ = ("_cursor", "_dialect", "dialect_name")

    def __init__(self, dialect: Dialect, cursor: Any) -> None:
        self._dialect = dialect
        self._cursor = cursor
        self.dialect_name: str = dialect.name

    def run(self, statement: sa.ClauseElement, values: Mapping[str, Any]) -> None:
        """Run ``statement``, which returns no rows."""
        stmt = prepared(statement, self._dialect)
        self._cursor.execute(stmt.sql, stmt.parameters(values))

    def one(self, statement: sa.ClauseElement, values: Mapping[str, Any]) -> Any:
        """Run ``statement``; its first row (a tuple), or ``None`` when it returned none."""
        stmt = prepared(statement, self._dialect)
        cursor = self._cursor
        cursor.execute(stmt.sql, stmt.parameters(values))
        return cursor.fetchone()

    def scalar(self, statement: sa.ClauseElement, values: Mapping[str, Any]) -> Any:
        """The first column of the first row, or ``None``."""
        row = self.one(statement, values)
        return None if row is None else row[0]

    def scalars(self, statement: sa.ClauseElement, values: Mapping[str, Any]) -> list[Any]:
        """The first column of every row."""
        stmt = prepared(statement, self._dialect)
        cursor = self._cursor
        cursor.execute(stmt.sql, stmt.parameters(values))
        return [row[0] for row in cursor.fetchall()]


@contextmanager
def runner(conn: Connection) -> Iterator[Runner]:
    """A :class:`Runner` on ``conn``, in the transaction ``conn`` has open.

    DBAPI errors raised inside leave as SQLAlchemy's :class:`~sqlalchemy.exc.DBAPIError`
    subclasses (OperationalError, IntegrityError ...), which is what
    :class:`~node.index.repository.SqlIndex` turns into the index's own errors; a
    connection the dialect sees as dropped is invalidated so the pool does not hand it
    out again.
    """
    dbapi_conn = conn.connection.dbapi_connection
    with _wrapped(conn.dialect, dbapi_conn, conn.invalidate) as cursor:
        yield Runner(conn.dialect, cursor)


@contextmanager
def transaction(engine: Engine) -> Iterator[Runner]:
    """A write transaction on a pooled connection, all of it on the DBAPI connection.

    On SQLite it starts with ``BEGIN IMMEDIATE`` (the write lock up front, so the busy
    timeout applies, as :func:`storage.sql.write_begin` does for Core); PostgreSQL's
    driver opens the transaction with the first statement. It commits when the block
    ends and rolls back when it raises; errors leave as with :func:`runner`.
    """
    dialect = engine.dialect
    try:
        pooled = engine.raw_connection()
    except dialect.loaded_dbapi.Error as exc:  # Engine.connect wraps these; this does not
        raise sa.exc.DBAPIError.instance(
            None, None, exc, dialect.loaded_dbapi.Error, dialect=dialect
        ) from exc
    try:
        dbapi_conn = pooled.dbapi_connection
        with _wrapped(dialect, dbapi_conn, pooled.invalidate) as cursor:
            try:
                if dialect.name == "sqlite":
                    cursor.execute("BEGIN IMMEDIATE")
                yield Runner(dialect, cursor)
                dbapi_conn.commit()  # type: ignore[union-attr]
            except BaseException:
                with suppress(dialect.loaded_dbapi.Error):
                    dbapi_conn.rollback()  # type: ignore[union-attr]
                raise
    finally:
        pooled.close()


@contextmanager
def _wrapped(
    dialect: Dialect, dbapi_conn: Any, invalidate: Callable[[BaseException], None]
) -> Iterator[Any]:
    dbapi = dialect.loaded_dbapi
    cursor = dbapi_conn.cursor()
    try:
        yield cursor
    except dbapi.Error as exc:
        dropped = bool(dialect.is_disconnect(exc, dbapi_conn, cursor))
        if dropped:
            invalidate(exc)
        raise sa.exc.DBAPIError.instance(
            None, None, exc, dbapi.Error, connection_invalidated=dropped, dialect=dialect
        ) from exc
    finally:
        with suppress(dbapi.Error):  # the connection is gone already: nothing to release
            cursor.close()
