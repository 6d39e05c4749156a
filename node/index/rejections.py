"""Reject instances inside the caller's transaction: record, remove, queue blobs, publish.

One transaction per rejection note (or per batch of the grid's removals) so the index
never shows a rejected instance as held, a removed instance without its rejection row, or
a removal the catalog will not hear of. Lock order as in :mod:`.writes`: every removal
first, the outbox head last (one bulk append for all the changes).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from . import writes
from .changes import append_changes
from .models import BlobRemoval, Rejection, table_of
from .records import ChangeKind, InstanceRecord, RejectedInstance, RejectionResult

RJ, BR = table_of(Rejection), table_of(BlobRemoval)

RecordOf = Callable[[Connection, str], InstanceRecord | None]


def reject(
    conn: Connection, items: Sequence[RejectedInstance], record_of: RecordOf
) -> RejectionResult:
    """Reject ``items``; an instance rejected before is left as it is (idempotent)."""
    now = datetime.now(UTC)
    removed: list[str] = []
    recorded: list[InstanceRecord] = []
    reasons: list[str] = []
    elsewhere: list[str] = []
    keys: list[str] = []
    for item in _unique(items):
        uid = item.sop_instance_uid
        if conn.execute(sa.select(RJ.c.reason).where(RJ.c.sop_instance_uid == uid)).first():
            continue
        held = record_of(conn, uid)
        if held is not None and held.collection != item.collection:
            elsewhere.append(uid)
            continue
        conn.execute(sa.insert(RJ).values(_row(item, now)))
        if held is not None and writes.remove(conn, uid):
            removed.append(uid)
            keys.append(held.blob_key)  # its own: the bytes hold the UID (unique here)
        recorded.append(held or _minimal(item))
        reasons.append(item.reason)
    for key in keys:
        if conn.execute(sa.select(BR.c.blob_key).where(BR.c.blob_key == key)).first() is None:
            conn.execute(sa.insert(BR).values(blob_key=key, queued_at=now))
    append_changes(conn, ChangeKind.INSTANCE_REJECTED, recorded, reasons)
    return RejectionResult(
        removed=tuple(removed),
        recorded=tuple(r.sop_instance_uid for r in recorded),
        elsewhere=tuple(elsewhere),
        blob_keys=tuple(keys),
    )


def queued_blobs(conn: Connection) -> list[str]:
    """Blobs queued for removal, oldest first."""
    return list(conn.execute(sa.select(BR.c.blob_key).order_by(BR.c.queued_at)).scalars())


def forget_blobs(conn: Connection, keys: Sequence[str]) -> None:
    """Drop queue rows once their blobs are deleted."""
    for start in range(0, len(keys), 500):
        conn.execute(sa.delete(BR).where(BR.c.blob_key.in_(keys[start : start + 500])))


def rejection_of(conn: Connection, sop_instance_uid: str) -> RejectedInstance | None:
    """The rejection recorded for ``sop_instance_uid``, if any."""
    row = conn.execute(sa.select(RJ).where(RJ.c.sop_instance_uid == sop_instance_uid)).first()
    if row is None:
        return None
    return RejectedInstance(
        sop_instance_uid=row.sop_instance_uid,
        collection=row.collection,
        study_instance_uid=row.study_instance_uid,
        series_instance_uid=row.series_instance_uid,
        reason=row.reason,
        note_uid=row.note_uid,
        rejected_by=row.rejected_by,
    )


def _unique(items: Sequence[RejectedInstance]) -> list[RejectedInstance]:
    seen: dict[str, RejectedInstance] = {}
    for item in items:
        seen.setdefault(item.sop_instance_uid, item)
    return list(seen.values())


def _row(item: RejectedInstance, now: datetime) -> dict[str, object]:
    return {
        "sop_instance_uid": item.sop_instance_uid,
        "collection": item.collection,
        "study_instance_uid": item.study_instance_uid,
        "series_instance_uid": item.series_instance_uid,
        "reason": item.reason,
        "note_uid": item.note_uid,
        "rejected_by": item.rejected_by,
        "rejected_at": now,
    }


def _minimal(item: RejectedInstance) -> InstanceRecord:
    """The outbox record of a rejection of an instance not held here."""
    return InstanceRecord(
        sop_instance_uid=item.sop_instance_uid,
        sop_class_uid="",
        study_instance_uid=item.study_instance_uid,
        series_instance_uid=item.series_instance_uid,
        patient_id="",
        transfer_syntax_uid="",
        blob_key="",
        size=0,
        collection=item.collection,
    )
