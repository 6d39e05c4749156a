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
from catalog.jobs.placement import place
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
        self._generation = 0
        self._thread: threading.Thread | None = None
        self._started: datetime | None = None

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
        return [
            w
            for w in self.store.workers()
            if w.reported_at is not None and w.reported_at >= horizon
        ]

    def _in_grace(self, now: datetime) -> bool:
        """The first freshness period after a start: silence proves nothing yet."""
        fresh = timedelta(seconds=self.settings.worker_fresh_seconds)
        return self._started is not None and now < self._started + fresh

    def run_round(self) -> RoundResult:
        with self._round_lock:
            started = time.perf_counter()
            now = self._clock()
            expired = self.store.expire_leases(now)
            for job in expired:
                log.info(
                    "event=job_lease_expired job=%s attempt=%d state=%s",
                    job.id,
                    job.attempt,
                    job.state.value,
                )
            workers = self.fresh_workers(now)
            alive = [w.node for w in workers]
            if self._in_grace(now):  # nodes could not report while the catalog was down
                alive = [w.node for w in self.store.workers()]
            requeued = self.store.requeue_stale_placements(
                now, alive, now - timedelta(seconds=self.settings.place_timeout_seconds)
            )
            placed: list[str] = []
            if workers:
                queue = self.store.queued(self.settings.queue_scan)
                if queue:
                    holders = self.store.holders([j.study_instance_uid for j in queue])
                    decisions = place(queue, workers, self.store.active_counts(), holders)
                    placed = self.store.apply_placements(decisions, now)
                    for p in decisions:
                        if p.job_id in placed:
                            log.debug(
                                "event=job_placed job=%s node=%s holds_data=%s",
                                p.job_id,
                                p.node,
                                p.holds_data,
                            )
            if placed or requeued or expired:
                with self._placed:
                    self._generation += 1
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

    def generation(self) -> int:
        with self._placed:
            return self._generation

    def wait_for_work(self, seen: int, timeout: float) -> int:
        """Block until a round after ``seen`` placed something (or timeout); the generation."""
        deadline = time.monotonic() + timeout
        with self._placed:
            while self._generation == seen and not self._stop.is_set():
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._placed.wait(left)
            return self._generation
