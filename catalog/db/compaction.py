"""Pruning the change log: entries no replica can still need.

Why: every change a replica applies stays in ``catalog_changes`` so peers can pull it,
and nothing took entries out. A grid that re-publishes (a node's store reset), deletes or
rejects grows the log by entries that carry no state any more.

Two kinds of entry go:

* an ``instance_added`` entry whose instance row no longer has that seq (re-added later,
  deleted, rejected or reset), and any ``superseded`` entry: PullChanges already serves
  these as SUPERSEDED stubs without a record, so a puller that gets the later entry alone
  ends in the same state. Always safe, for existing and for new replicas.
* an ``instance_deleted`` entry at or below *deletes_through*: the caller's proof that every
  replica that could still hold the instance has applied it (the lowest mark its peers
  report for the origin; everything when it has no peers). A replica that starts empty
  later never had the instance (its add entry is gone with it), so it needs no delete.

Rejections and store resets are kept: they are state (a rejection refuses re-adds; a
reset empties a peer that is behind). The newest entry of each origin is always kept, so
every peer can still pull up to the origin's watermark.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Connection, and_, case, delete, exists, func, or_, select

from catalog.db.models import ChangeRow, InstanceRow
from catalog.records import ChangeKind

_ADDED = ChangeKind.INSTANCE_ADDED.value
_DELETED = ChangeKind.INSTANCE_DELETED.value
_SUPERSEDED = ChangeKind.SUPERSEDED.value


@dataclass(frozen=True, slots=True)
class Pruned:
    """Entries taken out of one origin's log in one batch."""

    superseded: int = 0
    deleted: int = 0

    @property
    def total(self) -> int:
        return self.superseded + self.deleted


def prune_page(
    conn: Connection, origin: str, *, after: int, below: int, deletes_through: int, limit: int
) -> tuple[Pruned, int | None]:
    """Look at the next *limit* entries of *origin* after seq *after* and below *below* (its
    newest entry's seq); remove the prunable ones, in the caller's transaction.

    Returns what went and the seq to continue after (None: the log is done). Paging over
    entries, not over matches, bounds each call's work however sparse the matches are.
    """
    current = exists().where(
        InstanceRow.origin == ChangeRow.origin,
        InstanceRow.collection == ChangeRow.collection,
        InstanceRow.sop_instance_uid == ChangeRow.sop_instance_uid,
        InstanceRow.seq == ChangeRow.seq,
    )
    prunable = or_(
        ChangeRow.kind == _SUPERSEDED,
        and_(ChangeRow.kind == _ADDED, ~current),
        and_(ChangeRow.kind == _DELETED, ChangeRow.seq <= deletes_through),
    )
    rows = conn.execute(
        select(ChangeRow.seq, ChangeRow.kind, case((prunable, 1), else_=0).label("prunable"))
        .where(ChangeRow.origin == origin, ChangeRow.seq > after, ChangeRow.seq < below)
        .order_by(ChangeRow.seq)
        .limit(limit)
    ).all()
    if not rows:
        return Pruned(), None
    gone = [row for row in rows if row.prunable]
    if gone:
        seqs = [row.seq for row in gone]
        conn.execute(delete(ChangeRow).where(ChangeRow.origin == origin, ChangeRow.seq.in_(seqs)))
    deleted = sum(1 for row in gone if row.kind == _DELETED)
    pruned = Pruned(superseded=len(gone) - deleted, deleted=deleted)
    return pruned, (rows[-1].seq if len(rows) == limit else None)


def newest_seq(conn: Connection, origin: str) -> int:
    """The seq of the origin's newest log entry (0 when it has none)."""
    value = conn.execute(
        select(func.max(ChangeRow.seq)).where(ChangeRow.origin == origin)
    ).scalar_one_or_none()
    return int(value or 0)
