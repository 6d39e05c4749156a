"""The alembic migrations create exactly what the models describe, on both backends."""

from __future__ import annotations

import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from node.index import SqlIndex, current_revision, head_revision
from node.index.migrate import VERSION_TABLE
from node.index.models import Base


def test_models_and_migrations_agree(db_url: str) -> None:
    index = SqlIndex.open(db_url)
    try:
        with index.engine.connect() as conn:
            context = MigrationContext.configure(
                conn, opts={"compare_type": True, "version_table": VERSION_TABLE}
            )
            diff = compare_metadata(context, Base.metadata)
        assert diff == []
        assert current_revision(index.engine) == head_revision() == "0005"
        tables = set(sa.inspect(index.engine).get_table_names())
        assert {
            "patients",
            "studies",
            "series",
            "instances",
            "changes",
            "study_references",
            VERSION_TABLE,
        } <= tables
    finally:
        index.close()


def test_opening_again_is_a_no_op(db_url: str) -> None:
    first = SqlIndex.open(db_url)
    first.close()
    again = SqlIndex.open(db_url)
    try:
        assert current_revision(again.engine) == head_revision()
        assert again.last_change_seq() == 0
    finally:
        again.close()


def test_pattern_index_on_postgresql_serves_prefix_like(pg_url: str) -> None:
    """`LIKE 'DOE%'` on the normalised name uses its text_pattern_ops index."""
    index = SqlIndex.open(pg_url)
    try:
        with index.engine.connect() as conn:
            conn.execute(sa.text("SET enable_seqscan = off"))
            plan = "\n".join(
                conn.execute(
                    sa.text(
                        "EXPLAIN SELECT pk FROM patients "
                        "WHERE patient_name_norm LIKE 'DOE!%%' ESCAPE '!'"
                    )
                ).scalars()
            )
            assert "ix_patients_patient_name_norm" in plan, plan
            assert "Filter" not in plan or "~>=~" in plan, plan
    finally:
        index.close()


def test_sqlite_prefix_like_uses_an_index(sqlite_url: str) -> None:
    index = SqlIndex.open(sqlite_url)
    try:
        with index.engine.connect() as conn:
            plan = " ".join(
                str(row[-1])
                for row in conn.execute(
                    sa.text(
                        "EXPLAIN QUERY PLAN SELECT pk FROM patients "
                        "WHERE patient_name_norm LIKE :p ESCAPE '!'"
                    ),
                    {"p": "DOE%"},
                )
            )
        assert "ix_patients_patient_name_norm" in plan, plan
    finally:
        index.close()
