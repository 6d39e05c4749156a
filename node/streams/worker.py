"""The node's long-lived worker: heartbeat, long-poll for jobs, keep leases, report ends.

It lives inside ``gridpacs node serve`` (no start-up cost per job): one reporter thread
sends ReportWorker (load, limits, streams) every few seconds, and ``max_jobs`` lease
threads each long-poll LeaseJob and run what they get. While an attempt runs, a renewer
renews its lease; a cancellation stops the command; a lease the catalog says is gone, or
one this worker could not renew for its whole duration (catalog unreachable), also stops
the command — the job may already be placed elsewhere and must never run twice at once.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from catalog import CatalogError, CatalogRejected
from catalog.jobs.records import (
    Job,
    Lease,
    Outcome,
    StreamInfo,
    WorkerLimits,
    WorkerLoad,
    WorkerReport,
)
from node.config import WorkerConfig
from node.streams.jobs import JobsApi, lease_lost
from node.streams.load import CpuSampler, memory_available_mb
from node.streams.registry import StreamRegistry
from node.structlog import log_event

LOG = logging.getLogger("gridpacs.node.streams.worker")

RunJob = Callable[[Job, threading.Event], Outcome]


def offers(registry: StreamRegistry) -> tuple[StreamInfo, ...]:
    return tuple(
        StreamInfo(
            name=m.name,
            version=m.version,
            ae_title=m.ae_title,
            max_attempts=m.max_attempts,
            time_limit_seconds=m.time_limit_seconds,
            cpus=m.resources.cpus,
            memory_mb=m.resources.memory_mb,
        )
        for m in registry.enabled
    )


class Worker:
    def __init__(
        self,
        jobs: JobsApi,
        registry: StreamRegistry,
        run_job: RunJob,
        *,
        node_name: str,
        config: WorkerConfig,
    ) -> None:
        self._jobs = jobs
        self._registry = registry
        self._run_job = run_job
        self._node = node_name
        self._config = config
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._running: dict[str, threading.Event] = {}
        self._lock = threading.Lock()
        self._cpu = CpuSampler()

    @property
    def running_jobs(self) -> int:
        with self._lock:
            return len(self._running)

    def start(self) -> None:
        self._spawn(self._report_loop, "worker-report")
        for n in range(self._config.max_jobs):
            self._spawn(self._lease_loop, f"worker-{n}")
        log_event(
            LOG,
            "worker_started",
            node=self._node,
            max_jobs=self._config.max_jobs,
            streams=",".join(s.name for s in self._registry.enabled),
        )

    def _spawn(self, target: Callable[[], None], name: str) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop polling and stop running commands; their leases lapse and they run again."""
        self._stop.set()
        with self._lock:
            for cancel in self._running.values():
                cancel.set()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    # -- heartbeat ------------------------------------------------------------------------------
    def load(self) -> WorkerLoad:
        return WorkerLoad(self._cpu.percent(), memory_available_mb(), self.running_jobs)

    def limits(self) -> WorkerLimits:
        c = self._config
        return WorkerLimits(c.max_jobs, c.max_cpu_percent, c.min_memory_available_mb)

    def report_once(self) -> None:
        self._jobs.report_worker(
            WorkerReport(self._node, self.load(), self.limits(), offers(self._registry))
        )

    def _report_loop(self) -> None:
        failing = False
        while not self._stop.is_set():
            try:
                self.report_once()
                if failing:
                    log_event(LOG, "worker_report_resumed", node=self._node)
                failing = False
            except CatalogError as exc:
                if not failing:
                    log_event(LOG, "worker_report_failed", level=logging.WARNING, reason=str(exc))
                failing = True
            except Exception:
                LOG.exception("event=worker_report_error")
            self._stop.wait(self._config.report_interval)

    # -- leases ---------------------------------------------------------------------------------
    def _lease_loop(self) -> None:
        backoff = 0.5
        while not self._stop.is_set():
            try:
                lease = self._jobs.lease_job(self._node, self._config.lease_wait)
                backoff = 0.5
            except CatalogError as exc:
                log_event(LOG, "lease_poll_failed", level=logging.DEBUG, reason=str(exc))
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            except Exception:
                LOG.exception("event=lease_poll_error")
                self._stop.wait(backoff)
                continue
            if lease is not None and self._stop.is_set():
                log_event(
                    LOG,
                    "job_abandoned",
                    level=logging.WARNING,
                    job=lease.job.id,
                    attempt=lease.job.attempt,
                    reason="node stopping; lease lapses",
                )
            elif lease is not None:
                self._attempt(lease)

    def _attempt(self, lease: Lease) -> None:
        job = lease.job
        cancel = threading.Event()
        lost = threading.Event()
        done = threading.Event()
        with self._lock:
            self._running[job.id] = cancel
        log_event(
            LOG,
            "job_leased",
            job=job.id,
            stream=job.stream,
            attempt=job.attempt,
            study_instance_uid=job.study_instance_uid,
            lease_s=lease.seconds,
        )
        renewer = threading.Thread(
            target=self._renew_loop,
            args=(lease, cancel, lost, done),
            name=f"renew-{job.id}",
            daemon=True,
        )
        renewer.start()
        started = time.monotonic()
        try:
            outcome = self._run_job(job, cancel)
            if lost.is_set():
                log_event(
                    LOG,
                    "job_abandoned",
                    level=logging.WARNING,
                    job=job.id,
                    attempt=job.attempt,
                    reason="lease lost; not reporting",
                )
            elif self._stop.is_set() and not outcome.succeeded:
                log_event(
                    LOG,
                    "job_abandoned",
                    level=logging.WARNING,
                    job=job.id,
                    attempt=job.attempt,
                    reason="node stopping; lease lapses",
                )
            else:
                self._finish(lease, outcome, lost)
                log_event(
                    LOG,
                    "job_finished",
                    job=job.id,
                    attempt=job.attempt,
                    succeeded=outcome.succeeded,
                    exit_code=outcome.exit_code,
                    error=outcome.error or "-",
                    outputs=outcome.output_series_count,
                    s=round(time.monotonic() - started, 2),
                )
        finally:
            done.set()
            renewer.join(5.0)
            with self._lock:
                self._running.pop(job.id, None)

    def _finish(self, lease: Lease, outcome: Outcome, lost: threading.Event) -> None:
        """Report the attempt; resent while the catalog is unreachable (FinishJob is
        idempotent per lease token), given up when the lease is gone."""
        job_id = lease.job.id
        deadline = time.monotonic() + self._config.finish_retry_seconds
        while True:
            try:
                self._jobs.finish_job(job_id, lease.token, outcome)
                return
            except CatalogRejected as exc:
                log_event(
                    LOG,
                    "job_finish_refused",
                    level=logging.WARNING if lease_lost(exc) else logging.ERROR,
                    job=job_id,
                    reason=str(exc),
                )
                return
            except CatalogError as exc:
                if time.monotonic() >= deadline or lost.is_set():
                    log_event(
                        LOG, "job_finish_failed", level=logging.ERROR, job=job_id, reason=str(exc)
                    )
                    return
                self._stop.wait(0.5)

    def _renew_loop(
        self, lease: Lease, cancel: threading.Event, lost: threading.Event, done: threading.Event
    ) -> None:
        job_id = lease.job.id
        seconds = max(lease.seconds, 1.0)
        held_until = time.monotonic() + seconds
        while not done.wait(max(0.2, seconds * self._config.renew_fraction)):
            try:
                renewal = self._jobs.renew_lease(job_id, lease.token)
            except CatalogRejected as exc:
                if not lease_lost(exc) and time.monotonic() < held_until:
                    continue
                log_event(LOG, "job_lease_lost", level=logging.WARNING, job=job_id, reason=str(exc))
                lost.set()
                cancel.set()
                return
            except CatalogError as exc:
                if time.monotonic() >= held_until:
                    log_event(
                        LOG,
                        "job_lease_expired",
                        level=logging.WARNING,
                        job=job_id,
                        reason=f"not renewed for {seconds:g} s: {exc}",
                    )
                    lost.set()
                    cancel.set()
                    return
                continue
            seconds = max(renewal.seconds, 1.0)
            held_until = time.monotonic() + seconds
            if renewal.cancel_requested and not cancel.is_set():
                log_event(LOG, "job_cancel_requested", job=job_id)
                cancel.set()
