"""Jobs, attempts and worker reports in the catalog database; one transaction per transition.

Every state change is a conditional ``UPDATE … WHERE state = …`` (and, for a lease, ``AND
lease_token = …``) whose row count says whether it happened, so two threads, or a catalog
restarted mid-call, can never move a job twice: a job runs under at most one lease token at
a time. Nothing is kept in memory between calls: a SIGKILLed catalog resumes from its tables.
"""

from __future__ import annotations

import secrets
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Engine, Table, and_, func, insert, or_, select, update
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError

from catalog.db.models import StudyRow
from catalog.errors import CatalogUnavailable, InvalidJobState, JobNotFound, LeaseLost
from catalog.jobs.models import JobAttemptRow, JobRow, WorkerRow
from catalog.jobs.placement import Placement, QueuedJob
from catalog.jobs.records import (
    ACTIVE_STATES,
    AttemptLogs,
    Job,
    JobPriority,
    JobQuery,
    JobState,
    Lease,
    NewJob,
    Outcome,
    Renewal,
    StreamInfo,
    WorkerLimits,
    WorkerLoad,
    WorkerReport,
)

MAX_LOG_BYTES = 1024 * 1024
"""Logs kept per attempt: the last MiB (the end of a log says why it failed)."""
MAX_ERROR_CHARS = 4000
LEASE_EXPIRED = "lease expired"
ATTEMPT_LOST = "lost"
"""An attempt's state when its lease ran out (the worker never said how it ended)."""
DEFAULT_LIST_LIMIT = 200
MAX_LIST_LIMIT = 10_000

J: Table = JobRow.__table__  # type: ignore[assignment]
A: Table = JobAttemptRow.__table__  # type: ignore[assignment]
W: Table = WorkerRow.__table__  # type: ignore[assignment]


def utc(value: datetime | None) -> datetime | None:
    """SQLite returns naive datetimes: they were stored as UTC."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)


def now_utc() -> datetime:
    return datetime.now(UTC)


@contextmanager
def _translated() -> Iterator[None]:
    try:
        yield
    except OperationalError as exc:
        raise CatalogUnavailable(f"catalog database unavailable: {exc.orig}") from exc
    except DBAPIError as exc:
        if exc.connection_invalidated:
            raise CatalogUnavailable(f"catalog database connection lost: {exc.orig}") from exc
        raise


def parse_id(job_id: str) -> int:
    try:
        value = int(job_id)
    except (TypeError, ValueError):
        raise JobNotFound(f"no job {job_id!r}") from None
    if value <= 0:
        raise JobNotFound(f"no job {job_id!r}")
    return value


def _job(row: Any) -> Job:
    return Job(
        id=str(row.id),
        stream=row.stream,
        study_instance_uid=row.study_instance_uid,
        collection=row.collection,
        state=JobState(row.state),
        priority=JobPriority(row.priority),
        node=row.node,
        attempt=row.attempt,
        max_attempts=row.max_attempts,
        origin_node=row.origin_node,
        reply_ae_title=row.reply_ae_title,
        submitted_by=row.submitted_by,
        created_at=utc(row.created_at),
        placed_at=utc(row.placed_at),
        started_at=utc(row.started_at),
        finished_at=utc(row.finished_at),
        error=row.error,
        exit_code=row.exit_code,
        output_series_instance_uids=tuple(row.output_series or ()),
        input_holders=tuple(row.input_holders or ()),
        cancel_requested=bool(row.cancel_requested),
        output_series_count=max(row.output_series_count or 0, len(row.output_series or ())),
    )


def _stream(data: Mapping[str, Any]) -> StreamInfo:
    fields = StreamInfo.__dataclass_fields__
    return StreamInfo(**{k: v for k, v in data.items() if k in fields})


def _report(row: Any) -> WorkerReport:
    return WorkerReport(
        node=row.node,
        load=WorkerLoad(row.cpu_percent, row.memory_available_mb, row.running_jobs),
        limits=WorkerLimits(row.max_jobs, row.max_cpu_percent, row.min_memory_available_mb),
        streams=tuple(_stream(s) for s in row.streams or ()),
        reported_at=utc(row.reported_at),
    )


def _requeue_values(now: datetime) -> dict[str, Any]:
    return {
        "state": JobState.QUEUED.value,
        "node": "",
        "queued_at": now,
        "placed_at": None,
        "started_at": None,
        "lease_token": "",
        "lease_expires_at": None,
    }


@dataclass(frozen=True)
class Inputs:
    """What one placement round reads."""

    workers: list[WorkerReport]
    active: dict[str, int]
    """Placed + running jobs per node."""
    waiting: dict[str, int]
    """Placed jobs no worker leased yet, per node."""
    queue: list[QueuedJob]
    holders: dict[str, list[str]]


def _workers(conn: Connection) -> list[WorkerReport]:
    return [_report(r) for r in conn.execute(select(W).order_by(W.c.node)).all()]


def _active(conn: Connection) -> tuple[dict[str, int], dict[str, int]]:
    """(placed + running, placed) jobs per node."""
    states = [s.value for s in ACTIVE_STATES]
    rows = conn.execute(
        select(J.c.node, J.c.state, func.count())
        .where(J.c.state.in_(states))
        .group_by(J.c.node, J.c.state)
    ).all()
    active: dict[str, int] = {}
    waiting: dict[str, int] = {}
    for node, state, count in rows:
        active[node] = active.get(node, 0) + int(count)
        if state == JobState.PLACED.value:
            waiting[node] = int(count)
    return active, waiting


def _queued(conn: Connection, limit: int) -> list[QueuedJob]:
    rows = conn.execute(
        select(
            J.c.id,
            J.c.stream,
            J.c.study_instance_uid,
            J.c.priority,
            J.c.created_at,
            J.c.origin_node,
        )
        .where(J.c.state == JobState.QUEUED.value)
        .order_by(J.c.priority.desc(), J.c.created_at, J.c.id)
        .limit(limit)
    ).all()
    return [
        QueuedJob(
            id=str(r.id),
            stream=r.stream,
            study_instance_uid=r.study_instance_uid,
            priority=JobPriority(r.priority),
            created_at=utc(r.created_at) or now_utc(),
            seq=r.id,
            origin_node=r.origin_node or "",
        )
        for r in rows
    ]


def _holders(
    conn: Connection, study_uids: Sequence[str], collection: str = ""
) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    unique = sorted(set(study_uids))
    for start in range(0, len(unique), 500):
        query = select(StudyRow.study_instance_uid, StudyRow.origin).where(
            StudyRow.study_instance_uid.in_(unique[start : start + 500])
        )
        if collection:
            query = query.where(StudyRow.collection == collection)
        for uid, origin in conn.execute(query.distinct()):
            found.setdefault(uid, []).append(origin)
    return {uid: sorted(nodes) for uid, nodes in found.items()}


class JobStore:
    """The scheduler's tables behind plain methods; times are passed in (tests move them)."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        # SQLite has one writer: queue writers here instead of in its busy handler, which
        # sleeps in growing steps (a lease would wait milliseconds for a microsecond lock).
        self._write_lock = threading.Lock() if engine.dialect.name == "sqlite" else None

    @contextmanager
    def _begin(self) -> Iterator[Connection]:
        """A write transaction (serialized in-process on SQLite)."""
        if self._write_lock is None:
            with self._engine.begin() as conn:
                yield conn
            return
        with self._write_lock, self._engine.begin() as conn:
            yield conn

    @property
    def engine(self) -> Engine:
        return self._engine

    # -- workers ---------------------------------------------------------------------------

    def report_worker(self, report: WorkerReport, now: datetime) -> None:
        values = {
            "reported_at": now,
            "cpu_percent": report.load.cpu_percent,
            "memory_available_mb": report.load.memory_available_mb,
            "running_jobs": report.load.running_jobs,
            "max_jobs": report.limits.max_jobs,
            "max_cpu_percent": report.limits.max_cpu_percent,
            "min_memory_available_mb": report.limits.min_memory_available_mb,
            "streams": [asdict(s) for s in report.streams],
        }
        with _translated(), self._begin() as conn:
            updated = conn.execute(update(W).where(W.c.node == report.node).values(**values))
            if updated.rowcount == 0:
                conn.execute(insert(W).values(node=report.node, **values))

    def workers(self) -> list[WorkerReport]:
        with _translated(), self._engine.connect() as conn:
            return _workers(conn)

    # -- submission ------------------------------------------------------------------------

    def submit(self, jobs: Sequence[NewJob], stream: StreamInfo, now: datetime) -> list[Job]:
        """Queue one job per entry (all of ``stream``), all or none, in one statement."""
        if not jobs:
            return []
        budget = max(1, stream.max_attempts)
        rows = [
            {
                "stream": new.stream,
                "study_instance_uid": new.study_instance_uid,
                "collection": new.collection,
                "state": JobState.QUEUED.value,
                "priority": int(new.priority),
                "node": "",
                "attempt": 0,
                "max_attempts": budget,
                "attempt_budget": budget,
                "time_limit_seconds": max(0, stream.time_limit_seconds),
                "origin_node": new.origin_node,
                "reply_ae_title": new.reply_ae_title,
                "submitted_by": new.submitted_by,
                "request_id": new.request_id[:64],
                "created_at": now,
                "queued_at": now,
                "error": "",
                "exit_code": 0,
                "output_series": [],
                "output_series_count": 0,
                "input_holders": list(new.holders),
                "lease_token": "",
                "cancel_requested": False,
            }
            for new in jobs
        ]
        request_id = jobs[0].request_id[:64]
        try:
            with _translated(), self._begin() as conn:
                if request_id:
                    seen = self._by_request(conn, request_id)
                    if seen:
                        return seen
                created = conn.execute(
                    insert(J).returning(*J.c, sort_by_parameter_order=True), rows
                ).all()
        except IntegrityError:
            if not request_id:
                raise
            with _translated(), self._engine.connect() as conn:  # a concurrent twin won
                return self._by_request(conn, request_id)
        return [_job(r) for r in created]

    @staticmethod
    def _by_request(conn: Connection, request_id: str) -> list[Job]:
        rows = conn.execute(select(J).where(J.c.request_id == request_id).order_by(J.c.id)).all()
        return [_job(r) for r in rows]

    def holders(self, study_uids: Sequence[str], collection: str = "") -> dict[str, list[str]]:
        """Nodes (origins) holding each study, from the catalog's own study rows."""
        with _translated(), self._engine.connect() as conn:
            return _holders(conn, study_uids, collection)

    def study_collections(self, study_uids: Sequence[str]) -> dict[str, list[str]]:
        """Collections each study is held in (for permission checks and defaults)."""
        found: dict[str, list[str]] = {}
        unique = sorted(set(study_uids))
        with _translated(), self._engine.connect() as conn:
            for start in range(0, len(unique), 500):
                query = select(StudyRow.study_instance_uid, StudyRow.collection).where(
                    StudyRow.study_instance_uid.in_(unique[start : start + 500])
                )
                for uid, collection in conn.execute(query.distinct()):
                    found.setdefault(uid, []).append(collection)
        return {uid: sorted(set(c)) for uid, c in found.items()}

    # -- scheduling rounds -----------------------------------------------------------------

    def expire_leases(self, now: datetime) -> list[Job]:
        """Running jobs whose lease ran out: the attempt failed; queue again while allowed."""
        with _translated(), self._begin() as conn:
            expired = conn.execute(
                select(J).where(J.c.state == JobState.RUNNING.value, J.c.lease_expires_at < now)
            ).all()
            outcome = Outcome(succeeded=False, error=LEASE_EXPIRED)
            ended = [self._end_attempt(conn, row, outcome, now, lost=True) for row in expired]
        return [_job(r) for r in ended if r is not None]

    def requeue_stale_placements(
        self, now: datetime, fresh_nodes: Sequence[str], placed_before: datetime
    ) -> int:
        """Placed jobs whose node went silent, or that no worker leased in time, go back."""
        with _translated(), self._begin() as conn:
            result = conn.execute(
                update(J)
                .where(
                    J.c.state == JobState.PLACED.value,
                    or_(J.c.node.not_in(list(fresh_nodes)), J.c.placed_at < placed_before),
                )
                .values(**_requeue_values(now))
            )
        return int(result.rowcount or 0)

    def state_counts(self) -> dict[str, int]:
        """Jobs in each state (states without any are 0), for the metrics."""
        with _translated(), self._engine.connect() as conn:
            rows = conn.execute(select(J.c.state, func.count()).group_by(J.c.state)).all()
        found = {str(state): int(count) for state, count in rows}
        return {state.value: found.get(state.value, 0) for state in JobState}

    def active_counts(self) -> dict[str, int]:
        with _translated(), self._engine.connect() as conn:
            return _active(conn)[0]

    def queued(self, limit: int) -> list[QueuedJob]:
        """The head of the queue in placement order (URGENT first, then FIFO)."""
        with _translated(), self._engine.connect() as conn:
            return _queued(conn, limit)

    def placement_inputs(
        self, scan: Callable[[list[WorkerReport], dict[str, int], dict[str, int]], int]
    ) -> Inputs:
        """Workers, active jobs per node, the head of the queue and its holders, in one read.

        ``scan(workers, active, waiting)`` says how much of the queue to read (0: none).
        """
        with _translated(), self._engine.connect() as conn:
            workers = _workers(conn)
            active, waiting = _active(conn)
            limit = scan(workers, active, waiting)
            queue = _queued(conn, limit) if limit else []
            holders = _holders(conn, [j.study_instance_uid for j in queue]) if queue else {}
        return Inputs(workers, active, waiting, queue, holders)

    def apply_placements(self, placements: Sequence[Placement], now: datetime) -> list[str]:
        """Move queued jobs to their nodes; a job no longer queued (cancelled) is skipped."""
        done: list[str] = []
        with _translated(), self._begin() as conn:
            for p in placements:
                result = conn.execute(
                    update(J)
                    .where(J.c.id == int(p.job_id), J.c.state == JobState.QUEUED.value)
                    .values(
                        state=JobState.PLACED.value,
                        node=p.node,
                        placed_at=now,
                        input_holders=list(p.holders),
                    )
                )
                if result.rowcount:
                    done.append(p.job_id)
        return done

    def resume_leases(self, now: datetime, grace: timedelta) -> int:
        """At start: leases that ran out while the catalog was down get one more period.

        Workers could not renew while no catalog answered; failing their attempts for that
        would re-run work that may well be nearly done.
        """
        with _translated(), self._begin() as conn:
            result = conn.execute(
                update(J)
                .where(J.c.state == JobState.RUNNING.value, J.c.lease_expires_at < now + grace)
                .values(lease_expires_at=now + grace)
            )
        return int(result.rowcount or 0)

    # -- leases ----------------------------------------------------------------------------

    def lease(self, node: str, now: datetime, seconds: float) -> Lease | None:
        """The next job placed on ``node`` becomes RUNNING under a fresh token."""
        with _translated():
            for _ in range(5):
                with self._begin() as conn:
                    row = conn.execute(
                        select(J)
                        .where(J.c.node == node, J.c.state == JobState.PLACED.value)
                        .order_by(J.c.priority.desc(), J.c.created_at, J.c.id)
                        .limit(1)
                        .with_for_update(skip_locked=True)  # PostgreSQL: leasers take turns
                    ).first()
                    if row is None:
                        return None
                    token = secrets.token_urlsafe(24)
                    attempt = row.attempt + 1
                    leased = conn.execute(
                        update(J)
                        .where(J.c.id == row.id, J.c.state == JobState.PLACED.value)
                        .values(
                            state=JobState.RUNNING.value,
                            attempt=attempt,
                            started_at=now,
                            finished_at=None,
                            lease_token=token,
                            lease_expires_at=now + timedelta(seconds=seconds),
                        )
                        .returning(*J.c)
                    ).first()
                    if leased is None:
                        continue  # cancelled or re-placed meanwhile: take the next one
                    conn.execute(
                        insert(A).values(
                            job_id=row.id,
                            attempt=attempt,
                            node=node,
                            lease_token=token,
                            state=JobState.RUNNING.value,
                            placed_at=row.placed_at,
                            started_at=now,
                            exit_code=0,
                            error="",
                            logs=b"",
                        )
                    )
                    return Lease(job=_job(leased), token=token, seconds=seconds)
        return None

    def renew(self, job_id: str, token: str, now: datetime, seconds: float) -> Renewal:
        """Extend the lease; past the stream's time limit (plus one lease) end the attempt.

        The worker enforces the time limit itself and reports with its logs; this is the
        backstop for a worker that keeps renewing a command it failed to stop.
        """
        key = parse_id(job_id)
        overrun = ""
        with _translated(), self._begin() as conn:
            row = conn.execute(
                update(J)
                .where(*self._held(key, token))
                .values(lease_expires_at=now + timedelta(seconds=seconds))
                .returning(*J.c)
            ).first()
            if row is None:
                raise LeaseLost(self._lost(conn, key))
            started = utc(row.started_at)
            limit = timedelta(seconds=row.time_limit_seconds + seconds)
            if row.time_limit_seconds > 0 and started is not None and now > started + limit:
                overrun = f"time limit of {row.time_limit_seconds} s exceeded"
                self._end_attempt(conn, row, Outcome(succeeded=False, error=overrun), now)
        if overrun:
            raise LeaseLost(f"job {key}: {overrun}")
        return Renewal(seconds=seconds, cancel_requested=bool(row.cancel_requested))

    def finish(self, job_id: str, token: str, outcome: Outcome, now: datetime) -> Job:
        """End the running attempt; a repeated finish with the same token is answered again."""
        key = parse_id(job_id)
        with _translated(), self._begin() as conn:
            row = conn.execute(select(J).where(*self._held(key, token))).first()
            if row is None:
                if token and self._already_finished(conn, key, token):
                    return _job(conn.execute(select(J).where(J.c.id == key)).one())
                raise LeaseLost(self._lost(conn, key))
            ended = self._end_attempt(conn, row, outcome, now)
            if ended is None:
                raise LeaseLost(self._lost(conn, key))
            return _job(ended)

    @staticmethod
    def _held(key: int, token: str) -> tuple[Any, ...]:
        return (
            J.c.id == key,
            J.c.state == JobState.RUNNING.value,
            J.c.lease_token == token,
            J.c.lease_token != "",
        )

    @staticmethod
    def _already_finished(conn: Connection, key: int, token: str) -> bool:
        state = conn.execute(
            select(A.c.state).where(A.c.job_id == key, A.c.lease_token == token)
        ).scalar()
        return state is not None and state not in (JobState.RUNNING.value, ATTEMPT_LOST)

    @staticmethod
    def _lost(conn: Connection, key: int) -> str:
        state = conn.execute(select(J.c.state).where(J.c.id == key)).scalar()
        if state is None:
            raise JobNotFound(f"no job {key}")
        return f"job {key} is not leased with that token (it is {state})"

    @staticmethod
    def _end_attempt(
        conn: Connection, row: Any, outcome: Outcome, now: datetime, *, lost: bool = False
    ) -> Any | None:
        """Close the attempt and move the job on: done, queued again, failed or cancelled.

        Returns the job's new row, or None when the lease changed hands meanwhile.
        """
        error = outcome.error[:MAX_ERROR_CHARS]
        if outcome.succeeded:
            state = JobState.SUCCEEDED
        elif row.cancel_requested:
            state = JobState.CANCELLED
        elif row.attempt < row.max_attempts:
            state = JobState.QUEUED
        else:
            state = JobState.FAILED
        attempt_state = JobState.SUCCEEDED if outcome.succeeded else JobState.FAILED
        if row.cancel_requested and not outcome.succeeded:
            attempt_state = JobState.CANCELLED
        attempt_value = ATTEMPT_LOST if lost else attempt_state.value
        values: dict[str, Any] = {
            "state": state.value,
            "error": "" if outcome.succeeded else error,
            "exit_code": outcome.exit_code,
            "lease_token": "",
            "lease_expires_at": None,
        }
        if outcome.succeeded:
            values["output_series"] = list(outcome.output_series_instance_uids)
            values["output_series_count"] = max(
                outcome.output_series_count, len(outcome.output_series_instance_uids)
            )
        if state is JobState.QUEUED:
            values.update(_requeue_values(now))
        else:
            values["finished_at"] = now
        ended = conn.execute(
            update(J)
            .where(
                J.c.id == row.id,
                J.c.state == JobState.RUNNING.value,
                J.c.lease_token == row.lease_token,
            )
            .values(**values)
            .returning(*J.c)
        ).first()
        if ended is None:
            return None
        conn.execute(
            update(A)
            .where(A.c.job_id == row.id, A.c.attempt == row.attempt)
            .values(
                state=attempt_value,
                finished_at=now,
                exit_code=outcome.exit_code,
                error=error,
                logs=outcome.logs[-MAX_LOG_BYTES:],
            )
        )
        return ended

    # -- reading and operator actions --------------------------------------------------------

    def get(self, job_id: str) -> Job:
        key = parse_id(job_id)
        with _translated(), self._engine.connect() as conn:
            row = conn.execute(select(J).where(J.c.id == key)).first()
        if row is None:
            raise JobNotFound(f"no job {job_id}")
        return _job(row)

    def list(self, query: JobQuery) -> list[Job]:
        limit = min(query.limit or DEFAULT_LIST_LIMIT, MAX_LIST_LIMIT)
        statement = select(J).order_by(J.c.id.desc()).limit(limit)
        if query.states:
            statement = statement.where(J.c.state.in_([s.value for s in query.states]))
        if query.stream:
            statement = statement.where(J.c.stream == query.stream)
        if query.node:
            statement = statement.where(J.c.node == query.node)
        if query.collections is not None and "*" not in query.collections:
            statement = statement.where(J.c.collection.in_(sorted(query.collections)))
        with _translated(), self._engine.connect() as conn:
            rows = conn.execute(statement).all()
        return [_job(r) for r in rows]

    def logs(self, job_id: str, attempt: int = 0) -> AttemptLogs:
        key = parse_id(job_id)
        with _translated(), self._engine.connect() as conn:
            if conn.execute(select(J.c.id).where(J.c.id == key)).first() is None:
                raise JobNotFound(f"no job {job_id}")
            statement = select(A.c.attempt, A.c.logs).where(A.c.job_id == key)
            if attempt > 0:
                statement = statement.where(A.c.attempt == attempt)
            row = conn.execute(statement.order_by(A.c.attempt.desc()).limit(1)).first()
        if row is None:
            if attempt > 0:
                raise JobNotFound(f"job {job_id} has no attempt {attempt}")
            return AttemptLogs(attempt=0, logs=b"")
        return AttemptLogs(attempt=int(row.attempt), logs=bytes(row.logs or b""))

    def cancel(self, job_id: str, now: datetime, reason: str) -> Job:
        """Queued/placed: cancelled now. Running: flagged; the worker stops at its next renew."""
        key = parse_id(job_id)
        with _translated(), self._begin() as conn:
            conn.execute(
                update(J)
                .where(
                    J.c.id == key,
                    J.c.state.in_([JobState.QUEUED.value, JobState.PLACED.value]),
                )
                .values(
                    state=JobState.CANCELLED.value,
                    finished_at=now,
                    error=reason,
                    cancel_requested=True,
                )
            )
            conn.execute(
                update(J)
                .where(J.c.id == key, J.c.state == JobState.RUNNING.value)
                .values(cancel_requested=True)
            )
            row = conn.execute(select(J).where(J.c.id == key)).first()
        if row is None:
            raise JobNotFound(f"no job {job_id}")
        return _job(row)

    def retry(self, job_id: str, now: datetime) -> Job:
        """A failed or cancelled job is queued again with a fresh attempt budget."""
        key = parse_id(job_id)
        final = [JobState.FAILED.value, JobState.CANCELLED.value]
        with _translated(), self._begin() as conn:
            row = conn.execute(select(J).where(J.c.id == key)).first()
            if row is None:
                raise JobNotFound(f"no job {job_id}")
            result = conn.execute(
                update(J)
                .where(and_(J.c.id == key, J.c.state.in_(final)))
                .values(
                    max_attempts=row.attempt + row.attempt_budget,
                    finished_at=None,
                    error="",
                    exit_code=0,
                    cancel_requested=False,
                    **_requeue_values(now),
                )
            )
            if not result.rowcount:
                raise InvalidJobState(
                    f"job {job_id} is {row.state}: only failed or cancelled jobs are retried"
                )
            return _job(conn.execute(select(J).where(J.c.id == key)).one())
