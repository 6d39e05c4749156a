"""Fixtures shared by the whole suite: database URLs and DICOM data made in code.

PostgreSQL is a real server (the test command starts one where none answers); when it
cannot be reached the tests that need it *fail*, they are never skipped.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest

PG_ADMIN_URL = os.environ.get(
    "GRIDPACS_TEST_PG", "postgresql+psycopg2://postgres@127.0.0.1:5432/test"
)


def _create_pg_database() -> tuple[str, str]:
    import sqlalchemy as sa

    name = f"gridpacs_t_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    except sa.exc.OperationalError as exc:  # pragma: no cover - environment failure
        pytest.fail(
            f"PostgreSQL at {PG_ADMIN_URL} is not reachable ({exc.orig}); "
            "run scripts/run-tests, which starts one",
            pytrace=False,
        )
    finally:
        admin.dispose()
    base = PG_ADMIN_URL.rsplit("/", 1)[0]
    return name, f"{base}/{name}"


def _drop_pg_database(name: str) -> None:
    import sqlalchemy as sa

    admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        admin.dispose()


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh, empty PostgreSQL database for one test, dropped afterwards."""
    name, url = _create_pg_database()
    try:
        yield url
    finally:
        _drop_pg_database(name)


@pytest.fixture
def sqlite_url(tmp_path: os.PathLike[str]) -> str:
    """A fresh SQLite database file for one test."""
    return f"sqlite:///{os.fspath(tmp_path)}/index.sqlite"


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: os.PathLike[str]) -> Iterator[str]:
    """Every database-backed contract test runs on SQLite and on PostgreSQL."""
    if request.param == "sqlite":
        yield f"sqlite:///{os.fspath(tmp_path)}/index.sqlite"
        return
    name, url = _create_pg_database()
    try:
        yield url
    finally:
        _drop_pg_database(name)
