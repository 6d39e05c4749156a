"""The scheduler (the catalog's JobService) as the node's worker and trigger see it.

Domain values and the :class:`JobsApi` role live here; :mod:`node.streams.jobs_grpc`
adapts the gRPC client to it. Errors are the catalog's: :class:`catalog.CatalogUnavailable`
(retry later), :class:`catalog.CatalogRejected` (refused), and :class:`LeaseLost` when the
catalog says this worker no longer holds a job's lease.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from catalog import CatalogRejected
from node.streams.trigger import JobRequest


class LeaseLost(CatalogRejected):
    """The lease expired or was taken over: stop the attempt, report nothing more."""


@dataclass(frozen=True, slots=True)
class StreamOffer:
    """A stream this node can run, as reported to the scheduler."""

    name: str
    version: str
    ae_title: str
    max_attempts: int
    time_limit_seconds: int
    cpus: float
    memory_mb: int


@dataclass(frozen=True, slots=True)
class WorkerLoad:
    cpu_percent: float
    memory_available_mb: int
    running_jobs: int


@dataclass(frozen=True, slots=True)
class WorkerLimits:
    max_jobs: int
    max_cpu_percent: float
    min_memory_available_mb: int


@dataclass(frozen=True, slots=True)
class LeasedJob:
    """A job handed to this node's worker under a lease."""

    id: str
    stream: str
    study_instance_uid: str
    collection: str
    attempt: int
    max_attempts: int
    origin_node: str
    reply_ae_title: str
    lease_token: str
    lease_seconds: float


@dataclass(frozen=True, slots=True)
class Renewal:
    lease_seconds: float
    cancel_requested: bool


@dataclass(frozen=True, slots=True)
class Outcome:
    """The end of one attempt, as FinishJob reports it."""

    succeeded: bool
    exit_code: int
    error: str
    logs: bytes
    output_series_instance_uids: tuple[str, ...] = ()


class JobsApi(Protocol):
    def report_worker(
        self,
        node: str,
        load: WorkerLoad,
        limits: WorkerLimits,
        streams: Sequence[StreamOffer],
    ) -> None: ...

    def submit(self, request: JobRequest) -> list[str]: ...

    def lease_job(self, node: str, wait_seconds: float) -> LeasedJob | None: ...

    def renew_lease(self, job_id: str, lease_token: str) -> Renewal: ...

    def finish_job(self, job_id: str, lease_token: str, outcome: Outcome) -> None: ...
