"""Delivers the Storage Commitment reports the node owes, across crashes and outages.

Why a queue and a thread: the N-ACTION is answered as soon as the request is recorded;
checking a large study's bytes and reaching the modality take longer, and the modality may
be switched off. Each owed report is evaluated afresh at every attempt (an instance
rejected meanwhile is reported as missing), retried with a growing delay while the
sender cannot be reached, and abandoned after ``give_up_after`` seconds with an error
line. A report is settled only once the sender answered it with Success.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Protocol

from node.errors import NodeError
from node.index.errors import IndexFailure, IndexUnavailable
from node.index.records import CommitmentRequest, PendingCommitment
from node.services.commitment import CommitmentReport
from node.structlog import log_event

LOG = logging.getLogger("gridpacs.node.commitment")

#: Delivers one report or raises a NodeError (``node.dicom.commitment.send_report`` bound
#: to the destinations).
Deliver = Callable[[CommitmentRequest, CommitmentReport], None]


class CommitmentQueue(Protocol):
    def due_commitments(self, limit: int = 16) -> list[PendingCommitment]: ...

    def next_commitment_due(self) -> datetime | None: ...

    def commitment_reported(
        self, pending: PendingCommitment, *, committed: int, failed: int
    ) -> bool: ...

    def commitment_not_delivered(
        self, pending: PendingCommitment, error: str, retry_at: datetime | None
    ) -> bool: ...

    def prune_commitments(self, settled_before: datetime) -> int: ...


class Evaluator(Protocol):
    @property
    def needs_other_sites(self) -> bool: ...

    def evaluate(
        self, request: CommitmentRequest, *, verify_bytes: bool = True
    ) -> CommitmentReport: ...


class CommitmentReporter:
    """Sends owed reports as soon as they are recorded (:meth:`wake`) or due again."""

    def __init__(
        self,
        queue: CommitmentQueue,
        evaluator: Evaluator,
        deliver: Deliver,
        *,
        first_retry: float = 5.0,
        max_retry: float = 300.0,
        give_up_after: float = 7 * 86400.0,
        keep_settled: float = 7 * 86400.0,
        idle_poll: float = 30.0,
        copies_wait: float = 3600.0,
        copies_recheck: float = 5.0,
    ) -> None:
        self._queue = queue
        self._evaluator = evaluator
        self._deliver = deliver
        self._first_retry = first_retry
        self._max_retry = max_retry
        self._give_up_after = give_up_after
        self._keep_settled = keep_settled
        self._idle_poll = idle_poll
        self._copies_wait = copies_wait
        self._copies_recheck = copies_recheck
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pruned_at = 0.0

    def wake(self) -> None:
        """A request was recorded: look at the queue now."""
        self._wake.set()

    def run_once(self) -> int:
        """Settle every report due now; how many were delivered."""
        delivered = 0
        seen: set[tuple[str, str]] = set()  # each once per pass, even if it stays due
        while not self._stop.is_set():
            batch = [p for p in self._queue.due_commitments() if _key(p.request) not in seen]
            if not batch:
                break
            for pending in batch:
                seen.add(_key(pending.request))
                delivered += self._settle(pending)
        self._prune()
        return delivered

    def _settle(self, pending: PendingCommitment) -> int:
        request = pending.request
        started = time.perf_counter()
        try:
            if self._evaluator.needs_other_sites:
                # while copies are awaited, look every few seconds without reading the
                # study's bytes back each time; they are read once, for the report
                glance = self._evaluator.evaluate(request, verify_bytes=False)
                if glance.waiting and self._age(pending) < self._copies_wait:
                    self._wait_for_copies(pending, glance)
                    return 0
            report = self._evaluator.evaluate(request)
            if report.waiting:
                report = self._waited_long_enough(pending, report)
            self._deliver(request, report)
        except (NodeError, IndexUnavailable, IndexFailure) as exc:
            self._not_delivered(pending, str(exc))
            return 0
        except Exception as exc:  # never let the reporter thread die with reports owed
            LOG.exception("unexpected failure reporting storage commitment")
            self._not_delivered(pending, f"{type(exc).__name__}: {exc}")
            return 0
        self._queue.commitment_reported(
            pending, committed=len(report.committed), failed=len(report.failed)
        )
        log_event(
            LOG,
            "storage_commitment_reported",
            level=logging.INFO if not report.failed else logging.WARNING,
            calling_ae=request.calling_ae,
            transaction_uid=request.transaction_uid,
            committed=len(report.committed),
            failed=len(report.failed),
            attempt=pending.attempts + 1,
            ms=round((time.perf_counter() - started) * 1000, 2),
        )
        return 1

    @staticmethod
    def _age(pending: PendingCommitment) -> float:
        requested = pending.requested_at
        if requested.tzinfo is None:
            requested = requested.replace(tzinfo=UTC)
        return (datetime.now(UTC) - requested).total_seconds()

    def _wait_for_copies(self, pending: PendingCommitment, report: CommitmentReport) -> None:
        """Not reported yet: some instances are not at enough sites; look again soon."""
        request = pending.request
        waiting = f"{len(report.waiting)} of {len(request.references)} not at enough sites yet"
        retry_at = datetime.now(UTC) + timedelta(seconds=self._copies_recheck)
        with contextlib.suppress(IndexUnavailable, IndexFailure):  # still due: next pass
            self._queue.commitment_not_delivered(pending, waiting, retry_at)
        if pending.attempts == 0:  # one line when the wait starts, not one per look
            log_event(LOG, "storage_commitment_waiting_for_copies",
                      calling_ae=request.calling_ae, transaction_uid=request.transaction_uid,
                      waiting=len(report.waiting), committed=len(report.committed))  # fmt: skip

    def _waited_long_enough(
        self, pending: PendingCommitment, report: CommitmentReport
    ) -> CommitmentReport:
        request = pending.request
        log_event(LOG, "storage_commitment_copies_missing", level=logging.WARNING,
                  calling_ae=request.calling_ae, transaction_uid=request.transaction_uid,
                  instances=len(report.waiting), waited_s=round(self._age(pending)))  # fmt: skip
        return report.without_waiting()

    def _not_delivered(self, pending: PendingCommitment, error: str) -> None:
        request = pending.request
        delay = min(self._max_retry, self._first_retry * 2 ** min(pending.attempts, 30))
        retry_at: datetime | None = datetime.now(UTC) + timedelta(seconds=delay)
        if self._age(pending) >= self._give_up_after:
            retry_at = None
        with contextlib.suppress(IndexUnavailable, IndexFailure):  # still due: next pass
            self._queue.commitment_not_delivered(pending, error, retry_at)
        log_event(
            LOG,
            "storage_commitment_not_delivered" if retry_at else "storage_commitment_abandoned",
            level=logging.WARNING if retry_at else logging.ERROR,
            calling_ae=request.calling_ae,
            transaction_uid=request.transaction_uid,
            attempt=pending.attempts + 1,
            retry_in_s=round(delay, 1) if retry_at else None,
            error=error,
        )

    def _prune(self) -> None:
        if time.monotonic() - self._pruned_at < 3600 and self._pruned_at:
            return
        self._pruned_at = time.monotonic()
        before = datetime.now(UTC) - timedelta(seconds=self._keep_settled)
        try:
            pruned = self._queue.prune_commitments(before)
        except (IndexUnavailable, IndexFailure):
            return
        if pruned:
            log_event(LOG, "storage_commitments_pruned", count=pruned)

    def _pause(self) -> float:
        """Seconds until the next report is due (at most ``idle_poll``)."""
        try:
            due = self._queue.next_commitment_due()
        except (IndexUnavailable, IndexFailure):
            return self._first_retry
        if due is None:
            return self._idle_poll
        return max(0.2, min(self._idle_poll, (due - datetime.now(UTC)).total_seconds()))

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.clear()  # before the pass: a request recorded during it wakes the wait
            with contextlib.suppress(IndexUnavailable, IndexFailure):  # logged; stay pending
                self.run_once()
            self._wake.wait(self._pause())

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._run, name="commitment-reporter", daemon=True
            )
            self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)


def _key(request: CommitmentRequest) -> tuple[str, str]:
    return request.calling_ae, request.transaction_uid
