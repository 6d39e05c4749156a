"""`find` and `instances` stream: nothing runs before the first ``next``, rows arrive in
batches from a server-side cursor, and the connection is released when iteration ends."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import sqlalchemy as sa
from sqlalchemy.pool import QueuePool

from node.index import IndexQuery, Level, SqlIndex

from .conftest import record

ROWS = 5000


def test_find_over_5000_rows_is_lazy(index: SqlIndex) -> None:
    index.add_instances(
        record(f"1.{n}", series=f"9.{n // 100}", InstanceNumber=str(n)) for n in range(ROWS)
    )
    executed: list[tuple[str, Any]] = []

    def seen(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        executed.append((statement, cursor))

    sa.event.listen(index.engine, "after_cursor_execute", seen)
    try:
        pool = index.engine.pool
        assert isinstance(pool, QueuePool)
        query = IndexQuery(level=Level.IMAGE, requested=("InstanceNumber",))
        answers = index.find(query)
        assert isinstance(answers, Iterator)
        assert executed == []  # nothing ran yet
        first = next(answers)
        assert set(first) == {
            "StudyInstanceUID",
            "SeriesInstanceUID",
            "SOPInstanceUID",
            "InstanceNumber",
        }
        selects = [(s, c) for s, c in executed if s.lstrip().upper().startswith("SELECT")]
        assert len(selects) == 1
        if index.engine.dialect.name == "postgresql":
            # psycopg2 named cursor = server-side cursor, fetched in batches
            assert getattr(selects[0][1], "name", None)
        assert pool.checkedout() == 1  # the open cursor holds its connection
        rest = sum(1 for _ in answers)
        assert rest == ROWS - 1
        assert pool.checkedout() == 0  # exhausted: released

        partial = index.find(query)
        for _ in range(10):
            next(partial)
        partial.close()  # type: ignore[attr-defined]
        assert pool.checkedout() == 0  # abandoned early: released too

        stored = index.instances(IndexQuery(level=Level.STUDY))
        next(stored)
        assert pool.checkedout() == 1
        assert sum(1 for _ in stored) == ROWS - 1
        assert index.count_instances(IndexQuery(level=Level.STUDY)) == ROWS
    finally:
        sa.event.remove(index.engine, "after_cursor_execute", seen)
