"""The append-only audit log: who did what, when, from where, and how it ended.

Append-only is enforced three ways:

* this API offers no update or delete;
* the database rejects UPDATE and DELETE on the table (a trigger on SQLite and PostgreSQL,
  also TRUNCATE on PostgreSQL; see :mod:`catalog.security.models`);
* each row carries ``row_hash = sha256(prev_hash || canonical(row))``, so someone with enough
  database rights to drop the trigger and rewrite or delete rows still leaves a break that
  :meth:`AuditLog.verify` reports. Removing the *newest* rows is only detectable against a
  head recorded elsewhere (:meth:`AuditLog.head`; see ``docs/security.md``).

Rows are numbered by ``seq`` (unique, gap-free): two writers that read the same head cannot
both append, the second gets a unique violation and retries on the new head, so the chain
never forks — on SQLite across processes too.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import random
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from catalog.security.errors import AuditError
from catalog.security.models import AuditAnchor, AuditEntry
from storage.sql import write_begin

_TABLE = cast(sa.Table, AuditEntry.__table__)
_ANCHOR = cast(sa.Table, AuditAnchor.__table__)
GENESIS_HASH = "0" * 64
MAX_TARGET_CHARS = 8192
_APPEND_ATTEMPTS = 20
# Any constant; serialises appends on PostgreSQL so writers rarely need the retry.
_PG_LOCK_KEY = 0x67726964_61756469  # "gridaudi"


@dataclass(frozen=True)
class Pruned:
    """What :meth:`AuditLog.prune` removed: how many rows, and the anchor's ``seq`` now."""

    rows: int
    through_seq: int


@dataclass(frozen=True)
class AuditRecord:
    """One row of the audit log."""

    seq: int
    at: dt.datetime
    actor: str
    action: str
    target: Mapping[str, Any]
    peer: str
    outcome: str
    prev_hash: str
    row_hash: str

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dictionary."""
        return {
            "seq": self.seq,
            "at": self.at.isoformat(),
            "actor": self.actor,
            "action": self.action,
            "target": dict(self.target),
            "peer": self.peer,
            "outcome": self.outcome,
            "prev_hash": self.prev_hash,
            "row_hash": self.row_hash,
        }


def canonical(
    seq: int,
    at: dt.datetime,
    actor: str,
    action: str,
    target: Mapping[str, Any],
    peer: str,
    outcome: str,
) -> str:
    """The exact text hashed for a row: sorted-key compact JSON, time in UTC to the µs."""
    return json.dumps(
        {
            "seq": seq,
            "at": _utc(at).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "actor": actor,
            "action": action,
            "target": target,
            "peer": peer,
            "outcome": outcome,
        },
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    )


def chain_hash(prev_hash: str, canonical_row: str) -> str:
    """``sha256(prev_hash || canonical_row)`` as hex."""
    return hashlib.sha256((prev_hash + canonical_row).encode("utf-8")).hexdigest()


class AuditLog:
    """Append to and read the audit table in the catalog database.

    The tables must exist (:func:`catalog.security.models.create_all` or the catalog's
    migrations). Every call runs in its own short transaction.
    """

    _lock = threading.Lock()  # one appender at a time per process

    def __init__(self, engine: sa.Engine) -> None:
        self._engine = engine
        self._listeners: list[Callable[[], None]] = []

    def on_append(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` after each row this process appends (an exporter's nudge)."""
        self._listeners.append(callback)

    def record(
        self,
        actor: str,
        action: str,
        target: Mapping[str, Any],
        peer: str,
        outcome: str,
    ) -> AuditRecord:
        """Append one event and return it with its place in the chain.

        ``target`` is a small JSON-able summary of what was acted on (never request bytes);
        one larger than :data:`MAX_TARGET_CHARS` is replaced by its digest.

        Raises
        ------
        AuditError
            The row could not be written (the caller decides whether to fail the request).
        """
        record = self._append_retrying(actor, action, _clean_target(target), peer, outcome)
        for listener in self._listeners:
            listener()
        return record

    def _append_retrying(
        self, actor: str, action: str, clean: dict[str, Any], peer: str, outcome: str
    ) -> AuditRecord:
        last_exc: Exception | None = None
        with self._lock:
            for _ in range(_APPEND_ATTEMPTS):
                try:
                    return self._append(actor[:200], action[:200], clean, peer[:200], outcome)
                except IntegrityError as exc:  # another process took the same seq
                    last_exc = exc
                    time.sleep(random.uniform(0.001, 0.01))  # let the winner move on
                except SQLAlchemyError as exc:
                    raise AuditError(f"cannot write the audit log: {exc}") from exc
        raise AuditError(f"cannot append to the audit log after retries: {last_exc}")

    def query(
        self,
        *,
        since: dt.datetime | None = None,
        actor: str | None = None,
        action: str | None = None,
        limit: int = 100,
    ) -> list[AuditRecord]:
        """Matching rows in chain order.

        With ``since``, the first ``limit`` rows at or after it; without, the newest
        ``limit`` rows. ``action`` matches exactly or, ending in ``*``, as a prefix.
        """
        table = _TABLE
        stmt = sa.select(table)
        if since is not None:
            stmt = stmt.where(table.c.at >= _utc(since))
        if actor is not None:
            stmt = stmt.where(table.c.actor == actor)
        if action is not None:
            if action.endswith("*"):
                prefix = _escape_like(action[:-1])
                stmt = stmt.where(table.c.action.like(prefix + "%", escape="\\"))
            else:
                stmt = stmt.where(table.c.action == action)
        order = table.c.seq.asc() if since is not None else table.c.seq.desc()
        stmt = stmt.order_by(order).limit(max(1, limit))
        try:
            with self._engine.connect() as conn:
                rows = [_record(r._mapping) for r in conn.execute(stmt)]
        except SQLAlchemyError as exc:
            raise AuditError(f"cannot read the audit log: {exc}") from exc
        return rows if since is not None else rows[::-1]

    def after(self, seq: int, limit: int) -> list[AuditRecord]:
        """The first ``limit`` rows with a ``seq`` greater than ``seq``, in chain order."""
        table = _TABLE
        stmt = sa.select(table).where(table.c.seq > seq).order_by(table.c.seq).limit(limit)
        try:
            with self._engine.connect() as conn:
                return [_record(r._mapping) for r in conn.execute(stmt)]
        except SQLAlchemyError as exc:
            raise AuditError(f"cannot read the audit log: {exc}") from exc

    @property
    def engine(self) -> sa.Engine:
        """The database the log lives in (exporters keep their cursor beside it)."""
        return self._engine

    def anchor(self) -> tuple[int, str]:
        """``(seq, row_hash)`` of the last pruned row, ``(0, GENESIS_HASH)`` if none was."""
        with self._engine.connect() as conn:
            return self._anchor(conn)

    def prune(self, *, before: dt.datetime, up_to_seq: int | None = None) -> Pruned:
        """Delete the rows written before ``before`` (and at most up to ``up_to_seq``: the
        rows an export still owes stay), and move the anchor to the last one deleted.

        One transaction: the anchor and the deletion land together or not at all. The
        chain stays verifiable from the anchor on (:meth:`verify`).
        """
        table = _TABLE
        try:
            with self._lock, self._engine.connect() as conn, write_begin(conn).begin():
                if conn.dialect.name == "postgresql":
                    conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"),
                                 {"k": _PG_LOCK_KEY})  # fmt: skip
                anchor_seq, _ = self._anchor(conn)
                stmt = sa.select(sa.func.max(table.c.seq)).where(table.c.at < _utc(before))
                if up_to_seq is not None:
                    stmt = stmt.where(table.c.seq <= up_to_seq)
                last = conn.execute(stmt).scalar_one_or_none()
                if last is None or int(last) <= anchor_seq:
                    return Pruned(0, anchor_seq)
                digest = conn.execute(
                    sa.select(table.c.row_hash).where(table.c.seq == last)
                ).scalar_one()
                now = dt.datetime.now(dt.UTC)
                values = {"seq": int(last), "row_hash": digest, "pruned_at": now}
                if anchor_seq == 0 and self._anchor_row_missing(conn):
                    conn.execute(sa.insert(_ANCHOR).values(id=1, **values))
                else:
                    conn.execute(sa.update(_ANCHOR).where(_ANCHOR.c.id == 1).values(**values))
                removed = conn.execute(sa.delete(table).where(table.c.seq <= last)).rowcount
        except SQLAlchemyError as exc:
            raise AuditError(f"cannot prune the audit log: {exc}") from exc
        return Pruned(int(removed or 0), int(last))

    @staticmethod
    def _anchor_row_missing(conn: sa.Connection) -> bool:
        return conn.execute(sa.select(_ANCHOR.c.id).where(_ANCHOR.c.id == 1)).first() is None

    def head(self) -> tuple[int, str]:
        """``(seq, row_hash)`` of the newest row, ``(0, GENESIS_HASH)`` when empty.

        Writing this down elsewhere from time to time lets :meth:`verify` detect the removal
        of the newest rows, which the chain alone cannot.
        """
        with self._engine.connect() as conn:
            return self._head(conn)

    def verify(self, *, expected_head: tuple[int, str] | None = None) -> list[str]:
        """Recompute the chain; an empty list means intact.

        Each problem names the ``seq`` where the chain breaks and why: a row altered in
        place, rows missing, or a row re-linked to the wrong predecessor.
        """
        problems: list[str] = []
        prev_seq, prev_hash = self.anchor()  # rows up to it were pruned on purpose
        anchor_seq, anchor_hash = prev_seq, prev_hash
        try:
            for rec in self._iter_all():
                if rec.seq != prev_seq + 1:
                    problems.append(
                        f"seq {rec.seq}: rows {prev_seq + 1}..{rec.seq - 1} are missing"
                    )
                if rec.prev_hash != prev_hash:
                    problems.append(f"seq {rec.seq}: prev_hash does not match the row before")
                expected = chain_hash(
                    rec.prev_hash,
                    canonical(
                        rec.seq, rec.at, rec.actor, rec.action, rec.target, rec.peer, rec.outcome
                    ),
                )
                if expected != rec.row_hash:
                    problems.append(f"seq {rec.seq}: row hash mismatch (row altered)")
                prev_seq, prev_hash = rec.seq, rec.row_hash
        except SQLAlchemyError as exc:
            raise AuditError(f"cannot read the audit log: {exc}") from exc
        if expected_head is not None:
            seq, digest = expected_head
            if prev_seq < seq:
                problems.append(f"log ends at seq {prev_seq} but seq {seq} was recorded earlier")
            else:  # a recorded head below the anchor was pruned since: nothing to compare
                recorded = anchor_hash if seq == anchor_seq else self._hash_at(seq)
                if seq >= anchor_seq and recorded != digest:
                    problems.append(f"seq {seq}: hash differs from the recorded head")
        return problems

    # -- internals ---------------------------------------------------------------------------

    def _append(
        self, actor: str, action: str, target: dict[str, Any], peer: str, outcome: str
    ) -> AuditRecord:
        # SQLite: take the write lock at BEGIN, so another writer of this database (an
        # exporter's cursor) makes us wait, not fail after we read the head
        with self._engine.connect() as conn, write_begin(conn).begin():
            if conn.dialect.name == "postgresql":
                conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_LOCK_KEY})
            seq, prev_hash = self._head(conn)
            seq += 1
            at = dt.datetime.now(dt.UTC)
            row_hash = chain_hash(
                prev_hash, canonical(seq, at, actor, action, target, peer, outcome)
            )
            record = AuditRecord(seq, at, actor, action, target, peer, outcome, prev_hash, row_hash)
            conn.execute(
                sa.insert(_TABLE).values(
                    seq=seq,
                    at=at,
                    actor=actor,
                    action=action,
                    target=target,
                    peer=peer,
                    outcome=outcome,
                    prev_hash=prev_hash,
                    row_hash=row_hash,
                )
            )
        return record

    @staticmethod
    def _head(conn: sa.Connection) -> tuple[int, str]:
        table = _TABLE
        row = conn.execute(
            sa.select(table.c.seq, table.c.row_hash).order_by(table.c.seq.desc()).limit(1)
        ).first()
        if row is None:  # empty: never written, or every row pruned (go on from the anchor)
            return AuditLog._anchor(conn)
        return int(row[0]), str(row[1])

    @staticmethod
    def _anchor(conn: sa.Connection) -> tuple[int, str]:
        if not _has_anchor_table(conn):
            return 0, GENESIS_HASH
        row = conn.execute(
            sa.select(_ANCHOR.c.seq, _ANCHOR.c.row_hash).where(_ANCHOR.c.id == 1)
        ).first()
        return (0, GENESIS_HASH) if row is None else (int(row[0]), str(row[1]))

    def _hash_at(self, seq: int) -> str | None:
        table = _TABLE
        with self._engine.connect() as conn:
            value = conn.execute(
                sa.select(table.c.row_hash).where(table.c.seq == seq)
            ).scalar_one_or_none()
        return None if value is None else str(value)

    def _iter_all(self) -> Iterator[AuditRecord]:
        table = _TABLE
        stmt = sa.select(table).order_by(table.c.seq).execution_options(yield_per=1000)
        with self._engine.connect() as conn:
            for row in conn.execute(stmt):
                yield _record(row._mapping)


def _record(m: sa.RowMapping) -> AuditRecord:
    target = m["target"]
    if isinstance(target, str):  # a driver that hands JSON back as text
        target = json.loads(target)
    return AuditRecord(
        seq=int(m["seq"]),
        at=_utc(m["at"]),
        actor=m["actor"],
        action=m["action"],
        target=target,
        peer=m["peer"],
        outcome=m["outcome"],
        prev_hash=m["prev_hash"],
        row_hash=m["row_hash"],
    )


def _clean_target(target: Mapping[str, Any]) -> dict[str, Any]:
    # Round-trip through JSON so what is hashed now is exactly what is read back later.
    text = json.dumps(dict(target), sort_keys=True, default=str, ensure_ascii=False)
    if len(text) > MAX_TARGET_CHARS:
        return {"truncated": True, "sha256": hashlib.sha256(text.encode()).hexdigest()}
    result: dict[str, Any] = json.loads(text)
    return result


def _has_anchor_table(conn: sa.Connection) -> bool:
    """Databases made before pruning existed have no anchor table until migrated."""
    return bool(sa.inspect(conn).has_table(_ANCHOR.name))


def _utc(value: dt.datetime) -> dt.datetime:
    if value.tzinfo is None:
        return value.replace(tzinfo=dt.UTC)
    return value.astimezone(dt.UTC)


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
