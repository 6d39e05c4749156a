"""Shared pieces of the job scheduler tests: worker reports, a movable clock, and the
three-job setup the SIGKILL tests start from."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from catalog.jobs.records import (
    Job,
    JobState,
    Lease,
    StreamInfo,
    WorkerLimits,
    WorkerLoad,
    WorkerReport,
)
from catalog.jobs_client import JobsClient
from tests.catalog.processes import wait_for

SEGMENT = StreamInfo(name="segment", version="1.0", ae_title="SEGMENT", max_attempts=2)


def report(
    node: str,
    *,
    streams: tuple[StreamInfo, ...] = (SEGMENT,),
    max_jobs: int = 2,
    running: int = 0,
    cpu: float = 10.0,
    memory_mb: int = 8000,
    max_cpu: float = 0.0,
    min_memory_mb: int = 0,
) -> WorkerReport:
    return WorkerReport(
        node=node,
        load=WorkerLoad(cpu_percent=cpu, memory_available_mb=memory_mb, running_jobs=running),
        limits=WorkerLimits(
            max_jobs=max_jobs, max_cpu_percent=max_cpu, min_memory_available_mb=min_memory_mb
        ),
        streams=streams,
    )


class Clock:
    """A clock tests move by hand, so lease expiry needs no sleeping."""

    def __init__(self) -> None:
        self.now = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


def one_running_one_placed(
    through: JobsClient, seen_by: JobsClient
) -> tuple[list[Job], Lease, dict[str, JobState]]:
    """Three jobs submitted and one leased for ``site-a`` through ``through`` (whose worker
    must be reporting), once ``seen_by`` shows a second one placed: the jobs, the lease,
    and every job's state as ``seen_by`` then lists it (running, placed, queued)."""
    jobs = through.submit_jobs("segment", study_instance_uids=["1.3.1", "1.3.2", "1.3.3"])
    lease = through.lease_job("site-a", 5)
    assert lease is not None
    wait_for(
        lambda: [j.state for j in seen_by.list_jobs()].count(JobState.PLACED) == 1,
        10,
        "a second job placed",
    )
    return jobs, lease, {j.id: j.state for j in seen_by.list_jobs()}
