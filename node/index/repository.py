"""`SqlIndex`: the node-local index on SQLite or PostgreSQL, behind one interface.

Each call is its own unit of work on a pooled connection: writes commit before they
return (durably: see :mod:`storage.sql`), reads stream from a server-side cursor and hold
their connection only while the caller iterates. Database failures surface as
:class:`IndexUnavailable`, never as SQLAlchemy exceptions.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from itertools import islice
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from storage.sql import (
    DatabaseUnavailable,
    InvalidDatabaseUrl,
    describe_unavailable,
    engine_from_url,
    write_begin,
)

from . import bulk, commitments, rejections, writes
from . import changes as outbox
from .bulk_removal import RemovalRaced
from .errors import IndexFailure, IndexUnavailable, InstanceRejected, RecordConflict
from .inventory import InventoryEntry, Requeued, inventory_statement, tombstone
from .migrate import upgrade
from .models import ATTRIBUTES, Instance, Patient, Series, Study, StudyReference, table_of
from .prepared import runner, transaction
from .queries import count_statement, find_plan, instances_statement
from .records import (
    AddOutcome,
    Change,
    ChangeKind,
    CommitmentEntry,
    CommitmentRequest,
    IndexQuery,
    InstanceRecord,
    PendingCommitment,
    RejectedInstance,
    RejectionResult,
    StoredInstance,
)

log = logging.getLogger(__name__)

STREAM_BATCH = 500
"""Rows fetched per round trip while streaming answers."""
BULK_CHUNK = 500
"""Records per transaction in :meth:`SqlIndex.add_instances`."""

PT, ST, SE, IN = (table_of(m) for m in (Patient, Study, Series, Instance))
SR = table_of(StudyReference)


class SqlIndex:
    """The index repository. Thread-safe: share one per process."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    @classmethod
    def open(
        cls, url: str, *, migrate: bool = True, pool_size: int = 5, max_overflow: int = 10
    ) -> SqlIndex:
        """Connect to ``url`` and bring its schema to the newest revision.

        Raises
        ------
        IndexUnavailable
            The URL is invalid, the database cannot be reached, or migrating failed.
        """
        try:
            engine = engine_from_url(url, pool_size=pool_size, max_overflow=max_overflow)
        except (DatabaseUnavailable, InvalidDatabaseUrl) as exc:
            raise IndexUnavailable(str(exc)) from exc
        index = cls(engine)
        if migrate:
            with index._guard():
                upgrade(engine)
        return index

    @property
    def engine(self) -> Engine:
        """The engine, for tools (benchmarks, migration checks)."""
        return self._engine

    def close(self) -> None:
        """Release every pooled connection."""
        self._engine.dispose()

    # -- writes ---------------------------------------------------------------------

    def add_instance(
        self, record: InstanceRecord, *, before_commit: Callable[[], object] | None = None
    ) -> AddOutcome:
        """Index one instance and record the change, in one durable transaction.

        ``before_commit`` runs inside the transaction, after its statements and before
        ``COMMIT``; if it raises, nothing is committed and the exception propagates.
        Ingest waits there for the instance's bytes to be durable: the statements run
        while the blob is being fsynced, yet no row ever commits before its blob.

        The same SOPInstanceUID again (even concurrently, from another thread or
        process) is ``ALREADY_STORED`` and changes nothing. Newer attribute values of an
        existing patient, study or series replace the stored ones.

        Raises
        ------
        RecordConflict
            The record's study or series is filed under another patient or study.
        IndexUnavailable
            The database failed.
        """
        record = writes.stamped(record)
        with self._guard():
            try:
                # On the DBAPI connection (see .prepared): this runs once per C-STORE.
                with transaction(self._engine) as run:
                    writes.add(run, record)
                    if before_commit is not None:
                        before_commit()
            except writes.Duplicate:
                return AddOutcome.ALREADY_STORED
        return AddOutcome.STORED

    def add_instances(self, records: Iterable[InstanceRecord]) -> list[AddOutcome]:
        """Index many instances, committing every :data:`BULK_CHUNK` (bulk import).

        Within a chunk each patient, study and series row is written once (see
        :mod:`node.index.bulk`); the result is the same as adding the records one by
        one, duplicates included. A failure (e.g. :class:`RecordConflict`) rolls back
        the chunk it happened in, outbox rows included; earlier chunks stay committed.
        An instance rejected here is not added (:attr:`AddOutcome.REJECTED`), where
        :meth:`add_instance` raises :class:`InstanceRejected`.
        """
        outcomes: list[AddOutcome] = []
        pending = iter(records)
        with self._guard(), self._write() as conn:
            while chunk := [writes.stamped(r) for r in islice(pending, BULK_CHUNK)]:
                with conn.begin():
                    try:
                        with conn.begin_nested():
                            outcomes += bulk.add_many(conn, chunk)
                    except bulk.RaceLost:
                        outcomes += self._add_one_by_one(conn, chunk)
        return outcomes

    @staticmethod
    def _add_one_by_one(conn: Connection, chunk: list[InstanceRecord]) -> list[AddOutcome]:
        outcomes = []
        for record in chunk:
            try:
                with conn.begin_nested(), runner(conn) as run:
                    writes.add(run, record)
                outcomes.append(AddOutcome.STORED)
            except writes.Duplicate:
                outcomes.append(AddOutcome.ALREADY_STORED)
            except InstanceRejected:
                outcomes.append(AddOutcome.REJECTED)
        return outcomes

    def delete_instance(self, sop_instance_uid: str) -> bool:
        """Remove an instance from the index (not its blob); ``False`` if unknown."""
        with self._guard(), self._write() as conn:
            tx = conn.begin()
            try:
                record = self._record(conn, sop_instance_uid)
                deleted = record is not None and writes.delete(conn, sop_instance_uid, record)
            except BaseException:
                tx.rollback()
                raise
            if deleted:
                tx.commit()
            else:
                tx.rollback()
            return deleted

    def reject(self, items: Sequence[RejectedInstance]) -> RejectionResult:
        """Reject ``items`` in one durable transaction: each is recorded (and refused from
        then on), removed if held in the item's collection, its blob queued for removal
        (:meth:`queued_blob_removals`), and an INSTANCE_REJECTED change appended."""
        for _ in range(3):
            try:
                with self._guard(), self._write() as conn, conn.begin():
                    return rejections.reject(conn, items, self._records)
            except RemovalRaced:
                continue  # rolled back: read what is held again
        raise IndexFailure("instances kept being removed by another writer")

    def rejection(self, sop_instance_uid: str) -> RejectedInstance | None:
        """The rejection recorded for ``sop_instance_uid``, if any."""
        with self._guard(), self._engine.connect() as conn:
            return rejections.rejection_of(conn, sop_instance_uid)

    def queued_blob_removals(self) -> list[str]:
        """Blob keys whose instances were removed, not yet deleted from the store."""
        with self._guard(), self._engine.connect() as conn:
            return rejections.queued_blobs(conn)

    def blobs_removed(self, keys: Sequence[str]) -> None:
        """The store no longer holds these blobs: drop them from the queue."""
        if keys:
            with self._guard(), self._write() as conn, conn.begin():
                rejections.forget_blobs(conn, list(keys))

    # -- storage commitment ---------------------------------------------------------

    def record_commitment(self, request: CommitmentRequest) -> None:
        """Durably owe ``request`` a report (a repeated transaction is owed one again)."""
        with self._guard(), self._write() as conn, conn.begin():
            commitments.record(conn, request, datetime.now(UTC))

    def due_commitments(self, limit: int = 16) -> list[PendingCommitment]:
        """Requests whose report is due now, oldest due first."""
        with self._guard(), self._engine.connect() as conn:
            return commitments.due(conn, datetime.now(UTC), limit)

    def next_commitment_due(self) -> datetime | None:
        """When the next owed report is due, or None."""
        with self._guard(), self._engine.connect() as conn:
            return commitments.next_due(conn)

    def commitment_reported(
        self, pending: PendingCommitment, *, committed: int, failed: int
    ) -> bool:
        """Settle a delivered report; False if the request was repeated meanwhile."""
        with self._guard(), self._write() as conn, conn.begin():
            return commitments.reported(conn, pending, committed, failed, datetime.now(UTC))

    def commitment_not_delivered(
        self, pending: PendingCommitment, error: str, retry_at: datetime | None
    ) -> bool:
        """Try the report again at ``retry_at``, or abandon it (None)."""
        with self._guard(), self._write() as conn, conn.begin():
            return commitments.not_delivered(conn, pending, error, retry_at)

    def prune_commitments(self, settled_before: datetime) -> int:
        """Forget requests reported or abandoned before ``settled_before``."""
        with self._guard(), self._write() as conn, conn.begin():
            return commitments.prune(conn, settled_before)

    def commitments(self, states: Sequence[str] = (), limit: int = 100) -> list[CommitmentEntry]:
        """Recorded requests (in ``states``, all when empty), newest first."""
        with self._guard(), self._engine.connect() as conn:
            return commitments.listed(conn, states, limit)

    def commitment_counts(self) -> dict[str, int]:
        """Storage Commitment requests by state: pending, reported, abandoned."""
        with self._guard(), self._engine.connect() as conn:
            return commitments.counts(conn)

    # -- reads ----------------------------------------------------------------------

    def find(self, query: IndexQuery) -> Iterator[dict[str, object]]:
        """Stream C-FIND answers for ``query``, one dict of keyword -> value each.

        The query is validated now (:class:`InvalidQuery`, :class:`QueryRejected`);
        rows are fetched as the caller iterates, in batches, from a server-side cursor.
        Close the iterator (or exhaust it) to release its connection.
        """
        plan = find_plan(query)
        converters = [_converter(k) for k in plan.selected]

        def rows() -> Iterator[dict[str, object]]:
            for row in self._stream(plan.statement):
                answer: dict[str, object] = dict.fromkeys(plan.keys)
                for key, convert, value in zip(plan.selected, converters, row, strict=True):
                    answer[key] = convert(value)
                yield answer

        return rows()

    def instances(self, query: IndexQuery) -> Iterator[StoredInstance]:
        """Stream every instance under the entities ``query`` matches (C-MOVE/C-GET)."""
        stmt = instances_statement(query)

        def rows() -> Iterator[StoredInstance]:
            for row in self._stream(stmt):
                yield StoredInstance(*row)

        return rows()

    def count_instances(self, query: IndexQuery) -> int:
        """How many instances :meth:`instances` would yield (sub-operation count)."""
        stmt = count_statement(query)
        with self._guard(), self._engine.connect() as conn:
            return int(conn.execute(stmt).scalar_one())

    def get_instance(self, sop_instance_uid: str) -> StoredInstance | None:
        """One instance by SOPInstanceUID, or ``None``."""
        stmt = instances_statement_for_uid().where(IN.c.sop_instance_uid == sop_instance_uid)
        with self._guard(), self._engine.connect() as conn:
            row = conn.execute(stmt).first()
        return None if row is None else StoredInstance(*row)

    def get_record(self, sop_instance_uid: str) -> InstanceRecord | None:
        """Everything indexed about one instance, as the record ingest gave it."""
        with self._guard(), self._engine.connect() as conn:
            return self._record(conn, sop_instance_uid)

    def get_records(self, sop_instance_uids: Sequence[str]) -> dict[str, InstanceRecord]:
        """The records of those instances held here, by UID, in one statement (a peer's
        batch fetch); UIDs not held are absent from the result."""
        if not sop_instance_uids:
            return {}
        with self._guard(), self._engine.connect() as conn:
            return self._records(conn, list(dict.fromkeys(sop_instance_uids)))

    def changes_since(self, after_seq: int, limit: int = 1000) -> list[Change]:
        """Outbox changes with ``seq > after_seq``, oldest first, at most ``limit``."""
        with self._guard(), self._engine.connect() as conn:
            return outbox.changes_since(conn, after_seq, limit)

    def prune_changes(self, up_to_seq: int) -> int:
        """Forget outbox changes up to ``up_to_seq`` once the catalog has them.

        Sequence numbers are never reused: the next change still gets
        ``last_change_seq() + 1``.
        """
        with self._guard(), self._write() as conn, conn.begin():
            return outbox.prune_changes(conn, up_to_seq)

    def rebase_outbox(self, above_seq: int) -> int:
        """The catalog holds changes of this node up to ``above_seq`` that this index never
        made: the store was emptied (a wiped disk) or restored from an older copy.

        Numbering continues above ``above_seq`` with a STORE_RESET (the catalog forgets what
        it believed this node held) and an INSTANCE_ADDED for every instance really held, all
        in one transaction, so the catalog's view is rebuilt from what is here. Returns the
        reset's seq.
        """
        with self._guard(), self._write() as conn, conn.begin():
            rows = conn.execute(_RECORD_SELECT.order_by(IN.c.pk)).mappings()
            held = [_record_from_row(row) for row in rows]
            return outbox.rebase(conn, above_seq, held)

    def inventory(
        self,
        start_date: str,
        end_date: str,
        received_from: datetime,
        received_until: datetime,
        collections: Collection[str] | None = None,
    ) -> Iterator[InventoryEntry]:
        """Stream instances by StudyDate or date received (see :mod:`.inventory`)."""
        stmt = inventory_statement(start_date, end_date, received_from, received_until,
                                   collections)  # fmt: skip

        def rows() -> Iterator[InventoryEntry]:
            for row in self._stream(stmt):
                uid, study, series, sop_class, collection, study_date, received = row
                at = None if received is None else writes.as_utc(received)
                yield InventoryEntry(uid, study, series, sop_class, collection,
                                     study_date or "", at)  # fmt: skip

        return rows()

    def republish(
        self, sop_instance_uids: Sequence[str], allowed: Callable[[str], bool]
    ) -> Requeued:
        """Append a fresh INSTANCE_ADDED outbox row for each held instance whose collection
        is ``allowed``; the rest are skipped (not held, or may not leave the site)."""
        with self._guard(), self._write() as conn, conn.begin():
            records = [self._record(conn, uid) for uid in dict.fromkeys(sop_instance_uids)]
            found = [r for r in records if r is not None and allowed(r.collection)]
            outbox.append_changes(conn, ChangeKind.INSTANCE_ADDED, found)
        done = {r.sop_instance_uid for r in found}
        return Requeued([r.sop_instance_uid for r in found],
                        [u for u in sop_instance_uids if u not in done])  # fmt: skip

    def retract(self, instances: Sequence[tuple[str, str]]) -> Requeued:
        """Append an INSTANCE_DELETED outbox row for each (UID, collection) not held here."""
        with self._guard(), self._write() as conn, conn.begin():
            held = set(
                conn.execute(
                    sa.select(IN.c.sop_instance_uid).where(
                        IN.c.sop_instance_uid.in_([uid for uid, _ in instances])
                    )
                ).scalars()
            )
            gone = [tombstone(uid, coll) for uid, coll in dict.fromkeys(instances)
                    if uid not in held]  # fmt: skip
            outbox.append_changes(conn, ChangeKind.INSTANCE_DELETED, gone)
        return Requeued([r.sop_instance_uid for r in gone],
                        [uid for uid, _ in instances if uid in held])  # fmt: skip

    # -- study references of stream jobs ---------------------------------------------

    def remember_study_reference(
        self, reference: str, study_instance_uid: str, collection: str
    ) -> None:
        """Keep ``reference`` -> study durably before the reference leaves the node.

        The same pair again changes nothing (a resubmission, a resent study).

        Raises
        ------
        RecordConflict
            ``reference`` already names another study (a hash collision: refused rather
            than let a job run on the wrong patient's study).
        IndexUnavailable
            The database failed.
        """
        with self._guard():
            for _ in range(2):  # a concurrent insert of the same pair: read it back once
                try:
                    with self._write() as conn, conn.begin():
                        known = conn.execute(
                            sa.select(SR.c.study_instance_uid).where(SR.c.reference == reference)
                        ).scalar()
                        if known is None:
                            conn.execute(
                                sa.insert(SR).values(
                                    reference=reference,
                                    study_instance_uid=study_instance_uid,
                                    collection=collection,
                                    created_at=datetime.now(UTC),
                                )
                            )
                            return
                except sa.exc.IntegrityError:
                    continue
                if known != study_instance_uid:
                    raise RecordConflict(f"study reference {reference} names another study")
                return
        raise IndexFailure(f"study reference {reference} could not be recorded")

    def study_of_reference(self, reference: str) -> str | None:
        """The StudyInstanceUID ``reference`` stands for, None when this node did not make it."""
        with self._guard(), self._engine.connect() as conn:
            found = conn.execute(
                sa.select(SR.c.study_instance_uid).where(SR.c.reference == reference)
            ).scalar()
        return None if found is None else str(found)

    def last_change_seq(self) -> int:
        """The newest outbox sequence number (0 for an empty outbox)."""
        with self._guard(), self._engine.connect() as conn:
            return outbox.last_change_seq(conn)

    def stats(self) -> dict[str, int]:
        """Counts of patients, studies, series, instances, bytes and the last change."""
        with self._guard(), self._engine.connect() as conn:
            counts = conn.execute(
                sa.select(
                    sa.select(sa.func.count()).select_from(PT).scalar_subquery(),
                    sa.select(sa.func.count()).select_from(ST).scalar_subquery(),
                    sa.select(sa.func.count()).select_from(SE).scalar_subquery(),
                    sa.select(sa.func.count()).select_from(IN).scalar_subquery(),
                    sa.select(sa.func.coalesce(sa.func.sum(IN.c.size), 0)).scalar_subquery(),
                )
            ).one()
            last = outbox.last_change_seq(conn)
        names = ("patients", "studies", "series", "instances", "bytes")
        return {**{n: int(v) for n, v in zip(names, counts, strict=True)}, "last_change_seq": last}

    def removal_counts(self) -> dict[str, int]:
        """Instances rejected here (for ever) and blobs still queued for deletion."""
        with self._guard(), self._engine.connect() as conn:
            rejected, queued = conn.execute(
                sa.select(
                    sa.select(sa.func.count()).select_from(rejections.RJ).scalar_subquery(),
                    sa.select(sa.func.count()).select_from(rejections.BR).scalar_subquery(),
                )
            ).one()
        return {"rejected": int(rejected), "blobs_queued_for_removal": int(queued)}

    # -- plumbing -------------------------------------------------------------------

    @contextmanager
    def _write(self) -> Iterator[Connection]:
        with self._engine.connect() as conn:
            yield write_begin(conn)

    def _stream(self, stmt: sa.Select[Any]) -> Iterator[tuple[Any, ...]]:
        with self._guard(), self._engine.connect() as conn:
            # yield_per: a server-side cursor read in fixed batches from the first
            # fetch (stream_results alone starts at one row and grows, costing round trips)
            result = conn.execution_options(yield_per=STREAM_BATCH).execute(stmt)
            for row in result:
                yield tuple(row)

    def _records(self, conn: Connection, uids: Sequence[str]) -> dict[str, InstanceRecord]:
        """The held records among ``uids``, by UID (one query per chunk of 500)."""
        found: dict[str, InstanceRecord] = {}
        for start in range(0, len(uids), 500):
            chunk = list(uids[start : start + 500])
            rows = conn.execute(_RECORD_SELECT.where(IN.c.sop_instance_uid.in_(chunk)))
            found.update((r["sop_instance_uid"], _record_from_row(r)) for r in rows.mappings())
        return found

    def _record(self, conn: Connection, sop_instance_uid: str) -> InstanceRecord | None:
        row = (
            conn.execute(_RECORD_SELECT.where(IN.c.sop_instance_uid == sop_instance_uid))
            .mappings()
            .first()
        )
        return None if row is None else _record_from_row(row)

    @contextmanager
    def _guard(self) -> Iterator[None]:
        """Turn database failures into the index's own errors (logged once, here)."""
        try:
            yield
        except (sa.exc.OperationalError, sa.exc.InterfaceError) as exc:
            message = describe_unavailable(self._engine, exc)
            log.error("event=index_unavailable error=%r", message)
            raise IndexUnavailable(message) from exc
        except sa.exc.TimeoutError as exc:  # every pooled connection is busy
            message = f"no free database connection: {exc}"
            log.error("event=index_unavailable error=%r", message)
            raise IndexUnavailable(message) from exc
        except sa.exc.DBAPIError as exc:
            reason = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
            log.error("event=index_failure error=%r", reason)
            raise IndexFailure(f"index database refused the operation: {reason}") from exc


def open_index(url: str, *, migrate: bool = True) -> SqlIndex:
    """Shorthand for :meth:`SqlIndex.open`."""
    return SqlIndex.open(url, migrate=migrate)


def instances_statement_for_uid() -> sa.Select[Any]:
    """The :class:`StoredInstance` columns of one instance, to be filtered by UID."""
    return sa.select(
        IN.c.sop_instance_uid,
        IN.c.sop_class_uid,
        IN.c.transfer_syntax_uid,
        IN.c.blob_key,
        IN.c.size,
        ST.c.study_instance_uid,
        SE.c.series_instance_uid,
    ).select_from(IN.join(SE, IN.c.series_pk == SE.c.pk).join(ST, SE.c.study_pk == ST.c.pk))


_STORED_KEYWORDS = [
    kw
    for kw, attr in ATTRIBUTES.items()
    if attr.vr not in ("COUNT", "MODALITIES")
    and kw not in ("PatientID", "StudyInstanceUID", "SeriesInstanceUID")
    and kw not in ("SOPInstanceUID", "SOPClassUID")
]
_RECORD_SELECT = sa.select(
    IN.c.sop_instance_uid,
    IN.c.sop_class_uid,
    ST.c.study_instance_uid,
    SE.c.series_instance_uid,
    PT.c.patient_id,
    IN.c.transfer_syntax_uid,
    IN.c.blob_key,
    IN.c.size,
    ST.c.collection,
    IN.c.received_at,
    IN.c.calling_ae,
    *[ATTRIBUTES[kw].column.label(f"attr_{kw}") for kw in _STORED_KEYWORDS],
).select_from(
    IN.join(SE, IN.c.series_pk == SE.c.pk)
    .join(ST, SE.c.study_pk == ST.c.pk)
    .join(PT, ST.c.patient_pk == PT.c.pk)
)


def _record_from_row(row: Any) -> InstanceRecord:
    attributes = {kw: row[f"attr_{kw}"] for kw in _STORED_KEYWORDS if row[f"attr_{kw}"] is not None}
    return InstanceRecord(
        sop_instance_uid=row["sop_instance_uid"],
        sop_class_uid=row["sop_class_uid"],
        study_instance_uid=row["study_instance_uid"],
        series_instance_uid=row["series_instance_uid"],
        patient_id=row["patient_id"],
        transfer_syntax_uid=row["transfer_syntax_uid"],
        blob_key=row["blob_key"],
        size=int(row["size"]),
        collection=row["collection"],
        attributes=attributes,
        received_at=writes.as_utc(row["received_at"]),
        calling_ae=row["calling_ae"],
    )


def _converter(keyword: str) -> Any:
    """How a stored value becomes an answer value for ``keyword``."""
    vr = ATTRIBUTES[keyword].vr
    if vr == "MODALITIES":
        return lambda v: [] if not v else str(v).split("\\")
    if vr in ("IS", "US", "COUNT"):
        return lambda v: None if v is None else int(v)
    return lambda v: v
