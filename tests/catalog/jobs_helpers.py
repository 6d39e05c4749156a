"""Shared pieces of the job scheduler tests: worker reports and a movable clock."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from catalog.jobs.records import StreamInfo, WorkerLimits, WorkerLoad, WorkerReport

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
