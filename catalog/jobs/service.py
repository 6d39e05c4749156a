"""JobsService: what the JobService RPCs do, as plain Python (no gRPC).

Callers are described by :class:`Caller` (built by the servicer from the authenticated
principal), so permission rules live here: researchers may submit, cancel and retry only on
collections they administer, and see only jobs of collections they can read; grid hosts
(nodes' workers and triggers) may do everything.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime

from catalog.db.filters import Scope, validate
from catalog.db.repository import Repository
from catalog.errors import InvalidFilter, JobNotFound, NotAllowed
from catalog.jobs.placement import stream_settings
from catalog.jobs.records import (
    AttemptLogs,
    Job,
    JobPriority,
    JobQuery,
    JobState,
    Lease,
    NewJob,
    Outcome,
    Renewal,
    WorkerReport,
    is_study_reference,
    is_uid,
)
from catalog.jobs.scheduler import Scheduler
from catalog.jobs.store import JobStore
from catalog.records import QueryFilter

log = logging.getLogger("catalog.jobs")

MAX_SUBMIT = 10_000
MAX_WAIT_SECONDS = 60.0


@dataclass(frozen=True)
class Caller:
    """Who asks: a name for ``submitted_by`` and the audit, and what they may touch."""

    name: str
    may_admin: Callable[[str], bool] = lambda _collection: True
    may_read: Callable[[str], bool] = lambda _collection: True
    readable: frozenset[str] | None = None
    """Collections a researcher can read (None: everything, e.g. a grid host)."""


LOCAL = Caller("local")


def _check_studies(values: Sequence[str], origin_node: str) -> None:
    """Each named study is a UID or a node's study reference (never both kinds of mistake:
    a typo'd UID is refused here instead of queueing a job that can only fail)."""
    for value in values:
        if is_study_reference(value):
            if not origin_node:
                raise InvalidFilter(
                    f"study reference {value} needs the origin_node that made it (only "
                    "that node can resolve it)"
                )
        elif not is_uid(value):
            raise InvalidFilter(
                f"{value[:80]!r} is neither a StudyInstanceUID nor a study reference "
                "(ref: and 16-60 lowercase hex digits)"
            )


class JobsService:
    """Submissions, leases and operator actions over a :class:`JobStore` and a scheduler."""

    def __init__(
        self,
        store: JobStore,
        scheduler: Scheduler,
        repository: Repository,
        *,
        max_long_polls: int = 32,
    ) -> None:
        self.store = store
        self.scheduler = scheduler
        self._repository = repository
        # each waiting LeaseJob holds a server thread: beyond this many, answer at once
        self._long_polls = threading.BoundedSemaphore(max_long_polls)

    @property
    def lease_seconds(self) -> float:
        return self.scheduler.settings.lease_seconds

    def _now(self) -> datetime:
        return self.scheduler.now()

    # -- workers -----------------------------------------------------------------------------

    def report_worker(self, report: WorkerReport) -> None:
        if not report.node:
            raise InvalidFilter("a worker reports with its node name")
        self.store.report_worker(report, self._now())
        self.scheduler.wake()

    def lease(self, node: str, wait_seconds: float) -> Lease | None:
        if not node:
            raise InvalidFilter("a lease needs the node name")
        if wait_seconds < 0:
            raise InvalidFilter("wait_seconds must be >= 0")
        waiting = wait_seconds > 0 and self._long_polls.acquire(blocking=False)
        try:
            return self._lease(node, wait_seconds if waiting else 0.0)
        finally:
            if waiting:
                self._long_polls.release()

    def _lease(self, node: str, wait_seconds: float) -> Lease | None:
        deadline = time.monotonic() + min(wait_seconds, MAX_WAIT_SECONDS)
        placed_here = True  # one round on this thread before waiting for the scheduler's
        while True:
            seen = self.scheduler.generation(node)
            lease = self.store.lease(node, self._now(), self.lease_seconds)
            if lease is not None:
                log.info(
                    "event=job_leased job=%s node=%s attempt=%d",
                    lease.job.id,
                    node,
                    lease.job.attempt,
                )
                return lease
            if placed_here:
                placed_here = False
                result = self.scheduler.try_round()
                if result is not None and result.placed:
                    continue
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            self.scheduler.wait_for_work(node, seen, left)

    def renew(self, job_id: str, token: str) -> Renewal:
        return self.store.renew(job_id, token, self._now(), self.lease_seconds)

    def finish(self, job_id: str, token: str, outcome: Outcome) -> Job:
        job = self.store.finish(job_id, token, outcome, self._now())
        log.info(
            "event=job_finished job=%s attempt=%d succeeded=%s state=%s exit_code=%d",
            job.id,
            job.attempt,
            outcome.succeeded,
            job.state.value,
            outcome.exit_code,
        )
        if job.state is JobState.QUEUED:
            self.scheduler.wake()  # place the retry; a freed slot is filled by the next lease
        return job

    # -- submissions -------------------------------------------------------------------------

    def submit(
        self,
        stream: str,
        *,
        study_instance_uids: Sequence[str] = (),
        query: QueryFilter | None = None,
        collection: str = "",
        priority: JobPriority = JobPriority.NORMAL,
        origin_node: str = "",
        reply_ae_title: str = "",
        request_id: str = "",
        caller: Caller = LOCAL,
    ) -> list[Job]:
        """One job per study: those named, or every study ``query`` matches."""
        if not stream:
            raise InvalidFilter("a submission names a stream")
        settings = stream_settings(self.store.workers(), stream)
        if settings is None:
            raise InvalidFilter(f"no node offers stream {stream!r}")
        uids = list(dict.fromkeys(u for u in study_instance_uids if u))
        _check_studies(uids, origin_node)
        if not uids:
            uids = self._matching(query or QueryFilter(), collection, caller)
        if not uids:
            return []
        if len(uids) > MAX_SUBMIT:
            raise InvalidFilter(f"at most {MAX_SUBMIT} studies per submission")
        held_in = self.store.study_collections(uids)
        jobs: list[NewJob] = []
        for uid in uids:
            collections = [collection] if collection else held_in.get(uid, [])
            denied = [c for c in collections if not caller.may_admin(c)]
            if denied or (not collections and not caller.may_admin("*")):
                raise NotAllowed(
                    f"{caller.name} may not submit jobs on collection {(denied or ['*'])[0]!r}"
                )
            jobs.append(
                NewJob(
                    stream=stream,
                    study_instance_uid=uid,
                    collection=collection or (collections[0] if len(collections) == 1 else ""),
                    priority=priority,
                    origin_node=origin_node,
                    reply_ae_title=reply_ae_title,
                    submitted_by=caller.name,
                    request_id=request_id,
                )
            )
        created = self.store.submit(jobs, settings, self._now())
        log.info(
            "event=jobs_submitted stream=%s count=%d priority=%s by=%s",
            stream,
            len(created),
            priority.name,
            caller.name,
        )
        self.scheduler.wake()
        return created

    def _matching(self, query: QueryFilter, collection: str, caller: Caller) -> list[str]:
        if collection:
            query = replace(query, collections=(collection,))
        validate(query)
        scope = Scope() if caller.readable is None else Scope(collections=caller.readable)
        return list(
            dict.fromkeys(
                m.study_instance_uid for m in self._repository.query_studies(query, scope)
            )
        )

    # -- reading and operator actions --------------------------------------------------------

    def _visible(self, job: Job, caller: Caller) -> Job:
        if caller.readable is not None and not caller.may_read(job.collection):
            raise JobNotFound(f"no job {job.id}")  # not even its existence leaks
        return job

    def get(self, job_id: str, caller: Caller = LOCAL) -> Job:
        return self._visible(self.store.get(job_id), caller)

    def list(self, query: JobQuery, caller: Caller = LOCAL) -> list[Job]:
        if query.limit < 0:
            raise InvalidFilter("limit must be >= 0")
        if caller.readable is not None:
            query = JobQuery(
                states=query.states,
                stream=query.stream,
                node=query.node,
                limit=query.limit,
                collections=caller.readable,
            )
        return self.store.list(query)

    def logs(self, job_id: str, attempt: int = 0, caller: Caller = LOCAL) -> AttemptLogs:
        if attempt < 0:
            raise InvalidFilter("attempt must be >= 0")
        self.get(job_id, caller)
        return self.store.logs(job_id, attempt)

    def _require_admin(self, job: Job, caller: Caller) -> None:
        if not caller.may_admin(job.collection or "*"):
            raise NotAllowed(f"{caller.name} may not change jobs of {job.collection!r}")

    def cancel(self, job_id: str, caller: Caller = LOCAL) -> Job:
        self._require_admin(self.get(job_id, caller), caller)
        job = self.store.cancel(job_id, self._now(), f"cancelled by {caller.name}")
        log.info("event=job_cancel job=%s state=%s by=%s", job.id, job.state.value, caller.name)
        self.scheduler.wake()
        return job

    def retry(self, job_id: str, caller: Caller = LOCAL) -> Job:
        self._require_admin(self.get(job_id, caller), caller)
        job = self.store.retry(job_id, self._now())
        log.info("event=job_retry job=%s by=%s", job.id, caller.name)
        self.scheduler.wake()
        return job
