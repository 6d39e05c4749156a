"""`storage.sql.engine_from_url` settings, and database failures reported, not leaked."""

from __future__ import annotations

import sqlite3

import pytest
import sqlalchemy as sa

from node.index import IndexQuery, IndexUnavailable, Level, SqlIndex
from storage.sql import (
    SQLITE_BUSY_TIMEOUT_MS,
    DatabaseUnavailable,
    InvalidDatabaseUrl,
    engine_from_url,
    write_begin,
)
from tests.conftest import PG_ADMIN_URL

from .conftest import record


def test_sqlite_gets_durable_concurrent_settings(sqlite_url: str) -> None:
    engine = engine_from_url(sqlite_url)
    try:
        with engine.connect() as conn:
            pragma = {
                name: conn.exec_driver_sql(f"PRAGMA {name}").scalar()
                for name in ("journal_mode", "synchronous", "foreign_keys", "busy_timeout")
            }
            assert pragma == {
                "journal_mode": "wal",
                "synchronous": 2,  # FULL
                "foreign_keys": 1,
                "busy_timeout": SQLITE_BUSY_TIMEOUT_MS,
            }
            assert conn.exec_driver_sql("SELECT 'a' LIKE 'A'").scalar() == 0
    finally:
        engine.dispose()


def test_write_begin_takes_the_sqlite_write_lock_up_front(sqlite_url: str) -> None:
    engine = engine_from_url(sqlite_url)
    try:
        with engine.connect() as raw, write_begin(raw).begin():
            other = sqlite3.connect(sqlite_url.removeprefix("sqlite:///"), timeout=0)
            try:
                with pytest.raises(sqlite3.OperationalError, match="locked"):
                    other.execute("BEGIN IMMEDIATE")
            finally:
                other.close()
        with engine.connect() as conn, conn.begin():  # a reader does not take it
            other = sqlite3.connect(sqlite_url.removeprefix("sqlite:///"), timeout=0)
            other.execute("BEGIN IMMEDIATE")
            other.rollback()
            other.close()
    finally:
        engine.dispose()


def test_postgresql_gets_a_checked_pool(pg_url: str) -> None:
    engine = engine_from_url(pg_url, pool_size=3)
    try:
        assert engine.pool._pre_ping is True
        assert engine.pool.size() == 3  # type: ignore[attr-defined]
    finally:
        engine.dispose()


def test_unreachable_database_is_a_clear_error_without_the_password() -> None:
    url = "postgresql+psycopg2://gridpacs:s3cret@127.0.0.1:1/index"
    with pytest.raises(DatabaseUnavailable) as caught:
        engine_from_url(url)
    message = str(caught.value)
    assert "127.0.0.1:1/index" in message
    assert "unavailable" in message
    assert "s3cret" not in message
    with pytest.raises(IndexUnavailable, match="unavailable"):
        SqlIndex.open(url)


def test_bad_urls_are_refused(tmp_path: object) -> None:
    with pytest.raises(InvalidDatabaseUrl):
        engine_from_url("not a url")
    with pytest.raises(InvalidDatabaseUrl, match="unsupported"):
        engine_from_url("mysql://user@localhost/db")
    with pytest.raises(DatabaseUnavailable):
        engine_from_url(f"sqlite:///{tmp_path}/no/such/dir/index.sqlite")


def test_a_database_lost_mid_life_surfaces_as_index_unavailable(pg_url: str) -> None:
    index = SqlIndex.open(pg_url)
    try:
        index.add_instance(record("1.1"))
        name = pg_url.rsplit("/", 1)[1]
        admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
        try:
            with admin.connect() as conn:
                conn.execute(sa.text(f'DROP DATABASE "{name}" WITH (FORCE)'))
        finally:
            admin.dispose()
        with pytest.raises(IndexUnavailable):
            list(index.find(IndexQuery(level=Level.STUDY)))
        with pytest.raises(IndexUnavailable):
            index.add_instance(record("1.2"))
    finally:
        index.close()
