"""Tables of the security package: API tokens, their grants, and the append-only audit log.

They live in the catalog's database but on their own ``MetaData`` so this package has no
dependency on the catalog's models. Until the catalog's alembic migrations include them,
:func:`create_all` creates them (idempotently) together with the append-only triggers;
:func:`append_only_ddl` gives the trigger statements for a migration to ``op.execute``.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


class SecurityBase(DeclarativeBase):
    """Declarative base with the security package's own metadata."""

    metadata = sa.MetaData(
        naming_convention={
            "pk": "pk_%(table_name)s",
            "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
            "ix": "ix_%(table_name)s_%(column_0_name)s",
            "uq": "uq_%(table_name)s_%(column_0_name)s",
            "ck": "ck_%(table_name)s_%(constraint_name)s",
        }
    )


class ApiToken(SecurityBase):
    """A researcher's API token; only the keyed hash of its secret is kept."""

    __tablename__ = "security_api_token"

    id: Mapped[str] = mapped_column(sa.String(32), primary_key=True)
    user: Mapped[str] = mapped_column(sa.String(200), index=True)
    secret_hash: Mapped[str] = mapped_column(sa.String(64))
    created_at: Mapped[dt.datetime] = mapped_column(sa.DateTime(timezone=True))
    expires_at: Mapped[dt.datetime | None] = mapped_column(sa.DateTime(timezone=True))
    revoked_at: Mapped[dt.datetime | None] = mapped_column(sa.DateTime(timezone=True))
    description: Mapped[str] = mapped_column(sa.String(200), default="")
    grants: Mapped[list[TokenGrant]] = relationship(
        back_populates="token", cascade="all, delete-orphan", lazy="selectin"
    )


class TokenGrant(SecurityBase):
    """One (collection, role) grant of a token; ``*`` stands for every collection."""

    __tablename__ = "security_token_grant"
    __table_args__ = (sa.CheckConstraint("role IN ('reader', 'admin')", name="role"),)

    token_id: Mapped[str] = mapped_column(
        sa.ForeignKey("security_api_token.id", ondelete="CASCADE"), primary_key=True
    )
    collection: Mapped[str] = mapped_column(sa.String(200), primary_key=True)
    role: Mapped[str] = mapped_column(sa.String(16))
    token: Mapped[ApiToken] = relationship(back_populates="grants")


class AuditEntry(SecurityBase):
    """One audited event. Rows are only ever inserted; ``row_hash`` chains them."""

    __tablename__ = "security_audit_log"
    # AUTOINCREMENT on SQLite: a deleted id is never handed out again.
    __table_args__ = ({"sqlite_autoincrement": True},)

    id: Mapped[int] = mapped_column(
        sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    seq: Mapped[int] = mapped_column(sa.BigInteger, unique=True)
    at: Mapped[dt.datetime] = mapped_column(sa.DateTime(timezone=True), index=True)
    actor: Mapped[str] = mapped_column(sa.String(200), index=True)
    action: Mapped[str] = mapped_column(sa.String(200), index=True)
    target: Mapped[dict[str, Any]] = mapped_column(sa.JSON)
    peer: Mapped[str] = mapped_column(sa.String(200))
    outcome: Mapped[str] = mapped_column(sa.String(64))
    prev_hash: Mapped[str] = mapped_column(sa.String(64))
    row_hash: Mapped[str] = mapped_column(sa.String(64))


class AuditExportCursor(SecurityBase):
    """How far the audit log has been handed to one collector (``audit_export``): rows
    with a greater ``seq`` are still owed to it. Not part of the chain; updated in place."""

    __tablename__ = "security_audit_export"

    name: Mapped[str] = mapped_column(sa.String(200), primary_key=True)
    seq: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    updated_at: Mapped[dt.datetime] = mapped_column(sa.DateTime(timezone=True))


class AuditAnchor(SecurityBase):
    """Where the kept chain starts once old rows were pruned (``gridpacs audit prune``): the
    ``seq`` and ``row_hash`` of the last row removed. One row (``id`` 1); the database lets
    it move forward only, and lets only rows at or below it be deleted."""

    __tablename__ = "security_audit_anchor"

    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True)
    seq: Mapped[int] = mapped_column(sa.BigInteger)
    row_hash: Mapped[str] = mapped_column(sa.String(64))
    pruned_at: Mapped[dt.datetime] = mapped_column(sa.DateTime(timezone=True))


AUDIT_TABLE = AuditEntry.__tablename__
ANCHOR_TABLE = AuditAnchor.__tablename__
_ANCHOR_SEQ = f"COALESCE((SELECT seq FROM {ANCHOR_TABLE} WHERE id = 1), 0)"

_SQLITE_DDL = [
    f"""CREATE TRIGGER IF NOT EXISTS {AUDIT_TABLE}_no_update BEFORE UPDATE ON {AUDIT_TABLE}
    BEGIN SELECT RAISE(ABORT, 'audit log is append-only'); END""",
    # replaced, not kept: before pruning existed it refused every DELETE
    f"DROP TRIGGER IF EXISTS {AUDIT_TABLE}_no_delete",
    f"""CREATE TRIGGER {AUDIT_TABLE}_no_delete BEFORE DELETE ON {AUDIT_TABLE}
    WHEN OLD.seq > {_ANCHOR_SEQ}
    BEGIN SELECT RAISE(ABORT, 'audit log is append-only'); END""",
    f"""CREATE TRIGGER IF NOT EXISTS {ANCHOR_TABLE}_forward BEFORE UPDATE ON {ANCHOR_TABLE}
    WHEN NEW.seq < OLD.seq OR NEW.id != OLD.id
    BEGIN SELECT RAISE(ABORT, 'audit log is append-only (the anchor only moves forward)'); END""",
    f"""CREATE TRIGGER IF NOT EXISTS {ANCHOR_TABLE}_no_delete BEFORE DELETE ON {ANCHOR_TABLE}
    BEGIN SELECT RAISE(ABORT, 'audit log is append-only (the anchor only moves forward)'); END""",
]

_PG_DDL = [
    f"""CREATE OR REPLACE FUNCTION gridpacs_audit_append_only() RETURNS trigger
    LANGUAGE plpgsql AS $$
    BEGIN
        IF TG_OP = 'DELETE' AND OLD.seq <= {_ANCHOR_SEQ} THEN
            RETURN OLD;  -- pruned: at or below the anchor
        END IF;
        RAISE EXCEPTION USING
            MESSAGE = 'audit log is append-only (' || TG_OP || ' rejected)',
            ERRCODE = 'insufficient_privilege';
    END $$""",
    f"""DROP TRIGGER IF EXISTS {AUDIT_TABLE}_no_change ON {AUDIT_TABLE}""",
    f"""CREATE TRIGGER {AUDIT_TABLE}_no_change BEFORE UPDATE OR DELETE ON {AUDIT_TABLE}
    FOR EACH ROW EXECUTE FUNCTION gridpacs_audit_append_only()""",
    f"""DROP TRIGGER IF EXISTS {AUDIT_TABLE}_no_truncate ON {AUDIT_TABLE}""",
    f"""CREATE TRIGGER {AUDIT_TABLE}_no_truncate BEFORE TRUNCATE ON {AUDIT_TABLE}
    FOR EACH STATEMENT EXECUTE FUNCTION gridpacs_audit_append_only()""",
    """CREATE OR REPLACE FUNCTION gridpacs_audit_anchor_forward() RETURNS trigger
    LANGUAGE plpgsql AS $$
    BEGIN
        IF TG_OP = 'UPDATE' AND NEW.seq >= OLD.seq AND NEW.id = OLD.id THEN
            RETURN NEW;
        END IF;
        RAISE EXCEPTION USING
            MESSAGE = 'audit log is append-only (the anchor only moves forward)',
            ERRCODE = 'insufficient_privilege';
    END $$""",
    f"""DROP TRIGGER IF EXISTS {ANCHOR_TABLE}_forward ON {ANCHOR_TABLE}""",
    f"""CREATE TRIGGER {ANCHOR_TABLE}_forward BEFORE UPDATE OR DELETE ON {ANCHOR_TABLE}
    FOR EACH ROW EXECUTE FUNCTION gridpacs_audit_anchor_forward()""",
    f"""DROP TRIGGER IF EXISTS {ANCHOR_TABLE}_no_truncate ON {ANCHOR_TABLE}""",
    f"""CREATE TRIGGER {ANCHOR_TABLE}_no_truncate BEFORE TRUNCATE ON {ANCHOR_TABLE}
    FOR EACH STATEMENT EXECUTE FUNCTION gridpacs_audit_anchor_forward()""",
]


def append_only_ddl(dialect_name: str) -> list[str]:
    """The statements that make the audit table reject UPDATE and DELETE on ``dialect_name``
    (DELETE of rows at or below the pruning anchor excepted), and the anchor move forward
    only. Idempotent; the audit and anchor tables must exist.

    Raises ``ValueError`` for a dialect without an implementation, so a new back-end cannot
    silently get a mutable audit log.
    """
    if dialect_name == "sqlite":
        return list(_SQLITE_DDL)
    if dialect_name == "postgresql":
        return list(_PG_DDL)
    raise ValueError(f"no append-only triggers for dialect {dialect_name!r}")


def create_all(engine: sa.Engine) -> None:
    """Create the security tables if missing and (re)install the audit triggers.

    Idempotent. A catalog database gets them from migration 0003; this serves the
    operator CLI on a database the catalog has not migrated yet.
    """
    ddl = append_only_ddl(engine.dialect.name)
    with engine.begin() as conn:
        SecurityBase.metadata.create_all(conn, checkfirst=True)
        for statement in ddl:
            conn.exec_driver_sql(statement)
