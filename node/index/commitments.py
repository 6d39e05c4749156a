"""The Storage Commitment queue inside the caller's connection: record, due, settle, prune.

A request is a row from the moment it is recorded (before the N-ACTION is answered) until
its report has been delivered, so a crash never loses a report the node promised. A sender
may repeat a transaction (it heard nothing, or asks again later): the row is replaced and
its report owed again. Settling is conditional on ``requested_at``, so a report evaluated
for an older copy of a repeated transaction never settles the newer one.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from .models import StorageCommitment, table_of
from .records import CommitmentEntry, CommitmentRequest, PendingCommitment

SC = table_of(StorageCommitment)

PENDING, REPORTED, ABANDONED = "pending", "reported", "abandoned"


def record(conn: Connection, request: CommitmentRequest, now: datetime) -> None:
    """Record ``request`` as owed a report now (replacing an earlier one of that key)."""
    key = _key(request.calling_ae, request.transaction_uid)
    conn.execute(SC.delete().where(key))
    conn.execute(
        SC.insert().values(
            calling_ae=request.calling_ae,
            transaction_uid=request.transaction_uid,
            called_ae=request.called_ae,
            refs=json.dumps([list(pair) for pair in request.references]),
            requested_at=now,
            state=PENDING,
            due_at=now,
            attempts=0,
        )
    )


def due(conn: Connection, now: datetime, limit: int) -> list[PendingCommitment]:
    """Pending requests whose (next) report is due, oldest due first."""
    rows = conn.execute(
        sa.select(
            SC.c.calling_ae,
            SC.c.transaction_uid,
            SC.c.called_ae,
            SC.c.refs,
            SC.c.requested_at,
            SC.c.attempts,
        )
        .where(SC.c.state == PENDING, SC.c.due_at <= now)
        .order_by(SC.c.due_at)
        .limit(limit)
    )
    return [
        PendingCommitment(
            request=CommitmentRequest(
                calling_ae=row.calling_ae,
                transaction_uid=row.transaction_uid,
                called_ae=row.called_ae,
                references=tuple((str(c), str(i)) for c, i in json.loads(row.refs)),
            ),
            requested_at=row.requested_at,
            attempts=row.attempts,
        )
        for row in rows
    ]


def next_due(conn: Connection) -> datetime | None:
    """When the earliest pending report is due (UTC), or None when none is owed."""
    value = conn.execute(sa.select(sa.func.min(SC.c.due_at)).where(SC.c.state == PENDING))
    found = value.scalar_one_or_none()
    if found is None:
        return None
    return found if found.tzinfo else found.replace(tzinfo=UTC)


def reported(
    conn: Connection, pending: PendingCommitment, committed: int, failed: int, now: datetime
) -> bool:
    """The report was delivered; False when the request was repeated meanwhile."""
    result = conn.execute(
        SC.update()
        .where(*_current(pending))
        .values(
            state=REPORTED,
            reported_at=now,
            committed=committed,
            failed=failed,
            attempts=SC.c.attempts + 1,
            last_error=None,
        )
    )
    return result.rowcount == 1


def not_delivered(
    conn: Connection, pending: PendingCommitment, error: str, retry_at: datetime | None
) -> bool:
    """The report could not be delivered: try again at ``retry_at``, or give up (None)."""
    values: dict[str, object] = {"attempts": SC.c.attempts + 1, "last_error": error[:500]}
    if retry_at is None:
        values["state"] = ABANDONED
    else:
        values["due_at"] = retry_at
    result = conn.execute(SC.update().where(*_current(pending)).values(**values))
    return result.rowcount == 1


def prune(conn: Connection, settled_before: datetime) -> int:
    """Forget reported and abandoned requests settled before ``settled_before``."""
    result = conn.execute(
        SC.delete().where(
            SC.c.state != PENDING,
            sa.func.coalesce(SC.c.reported_at, SC.c.due_at) < settled_before,
        )
    )
    return result.rowcount


def listed(conn: Connection, states: Sequence[str], limit: int) -> list[CommitmentEntry]:
    """Requests in ``states`` (all when empty), newest first, at most ``limit``."""
    stmt = sa.select(SC).order_by(SC.c.requested_at.desc()).limit(limit)
    if states:
        stmt = stmt.where(SC.c.state.in_(list(states)))
    return [
        CommitmentEntry(
            calling_ae=row.calling_ae,
            transaction_uid=row.transaction_uid,
            called_ae=row.called_ae,
            instances=len(json.loads(row.refs)),
            state=row.state,
            requested_at=_utc(row.requested_at),
            attempts=row.attempts,
            due_at=_utc(row.due_at) if row.state == PENDING else None,
            last_error=row.last_error,
            reported_at=_utc(row.reported_at) if row.reported_at else None,
            committed=row.committed,
            failed=row.failed,
        )
        for row in conn.execute(stmt)
    ]


def _utc(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def counts(conn: Connection) -> dict[str, int]:
    """How many requests are in each state (states with none are 0)."""
    rows = conn.execute(sa.select(SC.c.state, sa.func.count()).group_by(SC.c.state))
    found: dict[str, int] = {str(state): int(n) for state, n in rows}
    return {state: int(found.get(state, 0)) for state in (PENDING, REPORTED, ABANDONED)}


def _key(calling_ae: str, transaction_uid: str) -> sa.ColumnElement[bool]:
    return sa.and_(SC.c.calling_ae == calling_ae, SC.c.transaction_uid == transaction_uid)


def _current(pending: PendingCommitment) -> tuple[sa.ColumnElement[bool], ...]:
    request = pending.request
    return (
        _key(request.calling_ae, request.transaction_uid),
        SC.c.state == PENDING,
        SC.c.requested_at == pending.requested_at,
    )
