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

from .bulk_removal import remove_many
from .changes import append_changes
from .models import BlobRemoval, Rejection, table_of
from .records import ChangeKind, InstanceRecord, RejectedInstance, RejectionResult
from .uid_locks import lock_many

RJ, BR = table_of(Rejection), table_of(BlobRemoval)

RecordsOf = Callable[[Connection, Sequence[str]], dict[str, InstanceRecord]]
CHUNK = 500


def reject(
    conn: Connection, items: Sequence[RejectedInstance], records_of: RecordsOf
) -> RejectionResult:
    """Reject ``items``; an instance rejected before is left as it is (idempotent).

    A few statements per chunk of UIDs and per patient, study and series touched, not
    per instance (:mod:`.bulk_removal`): a note listing a 300-instance study is one pass.

    Raises
    ------
    RemovalRaced
        Another writer removed a listed instance meanwhile; the caller rolls back, redoes.
    """
    now = datetime.now(UTC)
    todo = _unique(items)
    lock_many(conn, [i.sop_instance_uid for i in todo], exclusive=True)  # before any row
    already = _present(conn, RJ.c.sop_instance_uid, [i.sop_instance_uid for i in todo])
    todo = [i for i in todo if i.sop_instance_uid not in already]
    held = records_of(conn, [i.sop_instance_uid for i in todo])
    rows: list[dict[str, object]] = []
    recorded: list[InstanceRecord] = []
    reasons: list[str] = []
    elsewhere: list[str] = []
    removing: list[str] = []
    for item in todo:
        uid = item.sop_instance_uid
        record = held.get(uid)
        if record is not None and record.collection != item.collection:
            elsewhere.append(uid)
            continue
        rows.append(_row(item, now))
        recorded.append(record or _minimal(item))
        reasons.append(item.reason)
        if record is not None:
            removing.append(uid)
    if rows:
        conn.execute(sa.insert(RJ), rows)
    gone = remove_many(conn, removing)
    removed = [uid for uid in removing if uid in gone]
    keys = [held[uid].blob_key for uid in removed]  # its own: the bytes hold the UID
    queued = _present(conn, BR.c.blob_key, keys)
    fresh = [{"blob_key": k, "queued_at": now} for k in dict.fromkeys(keys) if k not in queued]
    if fresh:
        conn.execute(sa.insert(BR), fresh)
    append_changes(conn, ChangeKind.INSTANCE_REJECTED, recorded, reasons)
    return RejectionResult(
        removed=tuple(removed),
        recorded=tuple(r.sop_instance_uid for r in recorded),
        elsewhere=tuple(elsewhere),
        blob_keys=tuple(keys),
    )


def _present(conn: Connection, column: sa.Column[str], values: Sequence[str]) -> set[str]:
    """Which of ``values`` are in ``column`` (one query per chunk)."""
    found: set[str] = set()
    for start in range(0, len(values), CHUNK):
        chunk = list(values[start : start + CHUNK])
        found.update(conn.execute(sa.select(column).where(column.in_(chunk))).scalars())
    return found


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
