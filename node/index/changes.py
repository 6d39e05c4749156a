"""The outbox: append a change in the caller's transaction, read changes by sequence.

The payload is the :class:`InstanceRecord` as JSON, so the catalog publisher can replay a
change without reading the index again (the instance may be deleted by then).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from .models import ChangeHead, ChangeRow, table_of
from .prepared import Runner, runner
from .records import Change, ChangeKind, InstanceRecord

HEAD_ID = 1
REASON = "rejection_reason"
"""The payload key of a rejection's code (the rest of the payload is the record)."""
MAX_CHANGES_PER_READ = 10_000


def record_to_json(record: InstanceRecord) -> dict[str, Any]:
    """A JSON-ready form of ``record``."""
    received = record.received_at
    return {
        "sop_instance_uid": record.sop_instance_uid,
        "sop_class_uid": record.sop_class_uid,
        "study_instance_uid": record.study_instance_uid,
        "series_instance_uid": record.series_instance_uid,
        "patient_id": record.patient_id,
        "transfer_syntax_uid": record.transfer_syntax_uid,
        "blob_key": record.blob_key,
        "size": record.size,
        "collection": record.collection,
        "attributes": dict(record.attributes),
        "received_at": None if received is None else received.isoformat(),
        "calling_ae": record.calling_ae,
    }


def record_from_json(data: dict[str, Any]) -> InstanceRecord:
    """The inverse of :func:`record_to_json`."""
    fields = dict(data)
    received = fields.get("received_at")
    fields["received_at"] = None if received is None else datetime.fromisoformat(received)
    fields["attributes"] = dict(fields.get("attributes") or {})
    return InstanceRecord(**fields)


def append_change(
    conn: Connection, kind: ChangeKind, record: InstanceRecord, *, reason: str = ""
) -> int:
    """Append one change in ``conn``'s transaction and return its sequence number.

    Must be the last write of the transaction: it takes the head row's lock, which
    serialises the end of concurrent writers so sequence numbers commit in order.
    ``reason``: a rejection's code (kept in the payload beside the record).
    """
    with runner(conn) as run:
        return append_change_with(run, kind, record, reason=reason)


def append_change_with(
    run: Runner, kind: ChangeKind, record: InstanceRecord, *, reason: str = ""
) -> int:
    """:func:`append_change` on a :class:`Runner` (ingest's prepared-statement path).

    PostgreSQL takes the head row and inserts the change in one statement (one round trip
    less per C-STORE); SQLite, which has no data-modifying CTEs, in two.
    """
    payload = record_to_json(record)
    if reason:
        payload[REASON] = reason
    values: dict[str, Any] = {
        "kind": kind.value,
        "payload": payload,
        "created_at": datetime.now(UTC),
    }
    if run.dialect_name == "postgresql":
        return int(run.scalar(_APPEND_NEXT, values))
    values["seq"] = seq = run.scalar(_NEXT_SEQ, _NO_VALUES)
    run.run(_APPEND_ONE, values)
    return int(seq)


def append_changes(
    conn: Connection,
    kind: ChangeKind,
    records: list[InstanceRecord],
    reasons: list[str] | None = None,
) -> None:
    """Append one change per record, in order, with one head update (bulk adds);
    ``reasons``: a rejection code per record."""
    if not records:
        return
    head = table_of(ChangeHead)
    last = conn.execute(
        sa.update(head)
        .where(head.c.id == HEAD_ID)
        .values(last_seq=head.c.last_seq + len(records))
        .returning(head.c.last_seq)
    ).scalar_one()
    now = datetime.now(UTC)
    first = int(last) - len(records) + 1
    payloads = [record_to_json(r) for r in records]
    for payload, reason in zip(payloads, reasons or (), strict=False):
        if reason:
            payload[REASON] = reason
    rows = [
        {"seq": first + n, "kind": kind.value, "payload": payload, "created_at": now}
        for n, payload in enumerate(payloads)
    ]
    conn.execute(_APPEND, rows)


_HEAD = table_of(ChangeHead)
_NEXT_SEQ = (
    sa.update(_HEAD)
    .where(_HEAD.c.id == HEAD_ID)
    .values(last_seq=_HEAD.c.last_seq + 1)
    .returning(_HEAD.c.last_seq)
)
_APPEND = sa.insert(table_of(ChangeRow))
_APPEND_ONE = sa.insert(table_of(ChangeRow)).values(
    {c: sa.bindparam(c.key, type_=c.type) for c in table_of(ChangeRow).c}
)
_NO_VALUES: dict[str, Any] = {}
_NEXT_SEQ_CTE = _NEXT_SEQ.cte("next_seq")
_APPEND_NEXT = (
    sa.insert(table_of(ChangeRow))
    .from_select(
        ["seq", "kind", "payload", "created_at"],
        sa.select(
            _NEXT_SEQ_CTE.c.last_seq,
            *(
                sa.bindparam(name, type_=table_of(ChangeRow).c[name].type)
                for name in ("kind", "payload", "created_at")
            ),
        ),
    )
    .returning(table_of(ChangeRow).c.seq)
)
"""The head update and the change insert as one statement (PostgreSQL)."""


EMPTY_RECORD = InstanceRecord(
    sop_instance_uid="",
    sop_class_uid="",
    study_instance_uid="",
    series_instance_uid="",
    patient_id="",
    transfer_syntax_uid="",
    blob_key="",
    size=0,
    collection="",
)
"""The record of a :attr:`ChangeKind.STORE_RESET` change (it is about no instance)."""


def rebase(conn: Connection, above_seq: int, held: list[InstanceRecord]) -> int:
    """Number the next changes above ``above_seq``, then append a STORE_RESET followed by an
    INSTANCE_ADDED for every record in ``held``; return the reset's seq."""
    head = table_of(ChangeHead)
    conn.execute(
        sa.update(head)
        .where(head.c.id == HEAD_ID, head.c.last_seq < above_seq)
        .values(last_seq=above_seq)
    )
    reset = append_change(conn, ChangeKind.STORE_RESET, EMPTY_RECORD)
    append_changes(conn, ChangeKind.INSTANCE_ADDED, held)
    return reset


def changes_since(conn: Connection, after_seq: int, limit: int) -> list[Change]:
    """Up to ``limit`` changes with ``seq > after_seq``, oldest first."""
    limit = max(0, min(limit, MAX_CHANGES_PER_READ))
    table = table_of(ChangeRow)
    rows = conn.execute(
        sa.select(table.c.seq, table.c.kind, table.c.payload)
        .where(table.c.seq > after_seq)
        .order_by(table.c.seq)
        .limit(limit)
    )
    changes = []
    for seq, kind, payload in rows:
        fields = dict(payload)
        reason = str(fields.pop(REASON, ""))
        record = record_from_json(fields)
        changes.append(Change(seq=int(seq), kind=ChangeKind(kind), record=record, reason=reason))
    return changes


def prune_changes(conn: Connection, up_to_seq: int) -> int:
    """Delete changes with ``seq <= up_to_seq`` (acknowledged by the catalog); how many."""
    table = table_of(ChangeRow)
    result = conn.execute(sa.delete(table).where(table.c.seq <= up_to_seq))
    return int(result.rowcount)


def last_change_seq(conn: Connection) -> int:
    """The sequence number of the newest change, 0 when there is none."""
    head = table_of(ChangeHead)
    value = conn.execute(sa.select(head.c.last_seq).where(head.c.id == HEAD_ID)).scalar()
    return int(value or 0)
