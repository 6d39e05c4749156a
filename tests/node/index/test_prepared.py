"""Prepared statements on the DBAPI connection: the same rows, errors and transactions as
Core's execute path."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
import sqlalchemy as sa

from node.index import SqlIndex
from node.index.changes import _APPEND_ONE, _NEXT_SEQ
from node.index.models import ChangeRow, table_of
from node.index.prepared import Prepared, transaction

CHANGES = table_of(ChangeRow)
AT = datetime(2026, 11, 24, 1, 2, 3, 456789, tzinfo=UTC)


def _row(seq: int) -> dict[str, object]:
    return {"seq": seq, "kind": "instance_added", "payload": {"a": [1, "é"]}, "created_at": AT}


def test_rows_written_read_back_as_core_writes_them(index: SqlIndex) -> None:
    engine = index.engine
    with engine.begin() as conn:
        conn.execute(sa.insert(CHANGES), [_row(1)])
    with transaction(engine) as run:
        run.run(_APPEND_ONE, _row(2))
    with engine.connect() as conn:
        core, prepared = conn.execute(sa.select(CHANGES).order_by(CHANGES.c.seq)).all()
        raw = conn.execute(sa.text("SELECT payload, created_at FROM changes ORDER BY seq")).all()
    assert core[1:] == prepared[1:]
    assert prepared.payload == {"a": [1, "é"]}
    assert prepared.created_at.replace(tzinfo=UTC) == AT  # SQLite gives it back naive
    assert raw[0] == raw[1]  # byte for byte the same stored form


def test_a_failing_statement_raises_sqlalchemys_error_and_rolls_everything_back(
    index: SqlIndex,
) -> None:
    engine = index.engine
    with transaction(engine) as run:
        run.run(_APPEND_ONE, _row(1))
    with pytest.raises(sa.exc.IntegrityError), transaction(engine) as run:
        assert run.scalar(_NEXT_SEQ, {}) == 1
        run.run(_APPEND_ONE, _row(2))
        run.run(_APPEND_ONE, _row(1))  # the primary key again
    with engine.connect() as conn:
        assert conn.execute(sa.select(CHANGES.c.seq)).scalars().all() == [1]
        assert conn.execute(sa.text("SELECT last_seq FROM change_head")).scalar() == 0
    with transaction(engine) as run:  # the connection went back to the pool usable
        assert run.scalar(_NEXT_SEQ, {}) == 1


def test_an_exception_of_the_caller_rolls_back_too(index: SqlIndex) -> None:
    engine = index.engine
    with pytest.raises(KeyError), transaction(engine) as run:
        run.run(_APPEND_ONE, _row(1))
        raise KeyError("the caller's own failure")
    assert index.changes_since(0, 10) == []


def test_a_default_computed_per_row_cannot_be_prepared(index: SqlIndex) -> None:
    table = sa.Table(
        "t",
        sa.MetaData(),
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("at", sa.DateTime, default=lambda: datetime.now(UTC)),
    )
    with pytest.raises(ValueError, match="default"):
        Prepared(sa.insert(table).values(id=sa.bindparam("id")), index.engine.dialect)
