"""The scheduling loop: expire leases, take back stale placements, place the queue.

A round runs when something changed (a submission, a worker's report, a finished attempt, a
worker asking for work) and at least every ``interval`` seconds (leases expire by the clock).
Long-polling ``LeaseJob`` calls wait on :meth:`Scheduler.wait_for_work`, woken by each round
that placed something, so a worker gets its next job within one round of a slot freeing up.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from catalog.errors import CatalogError
from catalog.jobs.placement import UNLIMITED_WAITING, place
from catalog.jobs.records import WorkerReport
from catalog.jobs.store import JobStore, now_utc

log = logging.getLogger("catalog.jobs")


@dataclass(frozen=True)
class SchedulerSettings:
    lease_seconds: float = 30.0
    worker_fresh_seconds: float = 15.0
    place_timeout_seconds: float = 60.0
    interval_seconds: float = 0.5
    queue_scan: int = 2000


@dataclass(frozen=True)
class RoundResult:
    expired: int
    requeued: int
    placed: int
    seconds: float


class Scheduler:
    """Runs rounds on its own thread (or on demand with :meth:`run_round` in tests)."""

    def __init__(
        self,
        store: JobStore,
        settings: SchedulerSettings,
        clock: Callable[[], datetime] = now_utc,
    ) -> None:
        self.store = store
        self.settings = settings
        self._clock = clock
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._round_lock = threading.Lock()
        self._placed = threading.Condition()
        self._generations: dict[str, int] = {}
        """Per node: bumped by each round that placed a job there (wakes its long polls)."""
        self._thread: threading.Thread | None = None
        self._started: datetime | None = None
        self._maintained: datetime | None = None

    def now(self) -> datetime:
        """The scheduler's clock (tests pass a movable one)."""
        return self._clock()

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        self._started = self._clock()
        resumed = self.store.resume_leases(
            self._clock(), timedelta(seconds=self.settings.lease_seconds)
        )
        if resumed:
            log.info("event=jobs_leases_resumed running=%d", resumed)
        self._thread = threading.Thread(target=self._loop, name="catalog-jobs", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        with self._placed:
            self._placed.notify_all()
        if self._thread is not None:
            self._thread.join(5)

    def wake(self) -> None:
        self._wake.set()

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.settings.interval_seconds)
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                self.run_round()
            except CatalogError as exc:
                log.warning("event=jobs_round_failed error=%s", exc)
            except Exception:  # the loop must outlive one bad round
                log.exception("event=jobs_round_failed")

    # -- one round ---------------------------------------------------------------------------

    def fresh_workers(self, now: datetime) -> list[WorkerReport]:
        horizon = now - timedelta(seconds=self.settings.worker_fresh_seconds)
        return _fresh(self.store.workers(), horizon)

    def _in_grace(self, now: datetime) -> bool:
        """The first freshness period after a start: silence proves nothing yet."""
        fresh = timedelta(seconds=self.settings.worker_fresh_seconds)
        return self._started is not None and now < self._started + fresh

    def try_round(self) -> RoundResult | None:
        """Run a round now on the caller's thread unless one is running (then None).

        A worker asking for work after finishing a job gets it placed without waiting for
        the scheduler thread to be woken and scheduled: on a busy machine that hand-off is
        most of the idle time of a slot.
        """
        if not self._round_lock.acquire(blocking=False):
            return None
        try:
            return self._round()
        finally:
            self._round_lock.release()

    def run_round(self) -> RoundResult:
        with self._round_lock:
            return self._round()

    def _round(self) -> RoundResult:
        started = time.perf_counter()
        now = self._clock()
        maintain = self._maintained is None or now >= self._maintained + timedelta(
            seconds=self.settings.interval_seconds
        )
        expired = self.store.expire_leases(now) if maintain else []
        for job in expired:
            log.info(
                "event=job_lease_expired job=%s attempt=%d state=%s",
                job.id,
                job.attempt,
                job.state.value,
            )
        horizon = now - timedelta(seconds=self.settings.worker_fresh_seconds)
        scan_most = self.settings.queue_scan

        def scan(
            reports: list[WorkerReport], active: dict[str, int], waiting: dict[str, int]
        ) -> int:
            return _queue_scan(_fresh(reports, horizon), active, waiting, scan_most)

        requeued = 0
        if maintain:  # leases and placements age by the clock: once per interval is enough
            self._maintained = now
            reports = self.store.workers()
            alive = [w.node for w in reports if self._in_grace(now) or _is_fresh(w, horizon)]
            requeued = self.store.requeue_stale_placements(
                now, alive, now - timedelta(seconds=self.settings.place_timeout_seconds)
            )
        inputs = self.store.placement_inputs(scan)
        workers = _fresh(inputs.workers, horizon)
        placed: list[str] = []
        nodes: set[str] = set()
        if inputs.queue:
            decisions = place(inputs.queue, workers, inputs.active, inputs.holders, inputs.waiting)
            placed = self.store.apply_placements(decisions, now)
            for p in decisions:
                if p.job_id in placed:
                    nodes.add(p.node)
                    log.debug(
                        "event=job_placed job=%s node=%s holds_data=%s",
                        p.job_id,
                        p.node,
                        p.holds_data,
                    )
        if nodes:
            with self._placed:
                for node in nodes:
                    self._generations[node] = self._generations.get(node, 0) + 1
                self._placed.notify_all()
        if requeued or expired:
            self._wake.set()  # place what came back in the next round
        return RoundResult(
            expired=len(expired),
            requeued=requeued,
            placed=len(placed),
            seconds=time.perf_counter() - started,
        )

    # -- long polls --------------------------------------------------------------------------

    def generation(self, node: str) -> int:
        with self._placed:
            return self._generations.get(node, 0)

    def wait_for_work(self, node: str, seen: int, timeout: float) -> int:
        """Block until a round after ``seen`` placed a job on ``node`` (or timeout).

        Only the waiters of that node go back to the database: a dozen idle slots do not
        all query it for each placement elsewhere.
        """
        deadline = time.monotonic() + timeout
        with self._placed:
            while self._generations.get(node, 0) == seen and not self._stop.is_set():
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._placed.wait(left)
            return self._generations.get(node, 0)


def _queue_scan(
    workers: list[WorkerReport], active: dict[str, int], waiting: dict[str, int], most: int
) -> int:
    """How much of the queue a round reads: nothing when every node is full, else a few
    times the free slots (jobs of streams no free node offers are skipped over)."""
    if not workers:
        return 0
    free = 0
    for worker in workers:
        if worker.limits.max_jobs <= 0:
            free += max(0, UNLIMITED_WAITING - waiting.get(worker.node, 0))
        else:
            free += max(0, worker.limits.max_jobs - active.get(worker.node, 0))
    return min(most, 8 * free + 32) if free else 0


def _is_fresh(report: WorkerReport, horizon: datetime) -> bool:
    return report.reported_at is not None and report.reported_at >= horizon


def _fresh(reports: list[WorkerReport], horizon: datetime) -> list[WorkerReport]:
    return [r for r in reports if _is_fresh(r, horizon)]
