"""The scheduler (the catalog's JobService) as the node's worker and trigger see it.

The wire client and the job values are the catalog's (:class:`catalog.jobs_client.JobsClient`,
:mod:`catalog.jobs.records`); this module names the part of it the worker needs, so the
worker is testable against any implementation, and adapts submission for the trigger.
"""

from __future__ import annotations

from typing import Any, Protocol

from catalog import CatalogRejected
from catalog.jobs.records import Lease, Outcome, Renewal, WorkerReport
from catalog.jobs_client import JobsClient
from node.streams.trigger import JobRequest

LEASE_LOST_CODE = "FAILED_PRECONDITION"


def lease_lost(exc: CatalogRejected) -> bool:
    """The catalog says this worker no longer holds the lease (expired, re-placed)."""
    return exc.code == LEASE_LOST_CODE


class JobsApi(Protocol):
    """What a worker calls on the scheduler (a :class:`JobsClient` is one)."""

    def report_worker(self, report: WorkerReport) -> None: ...

    def lease_job(self, node: str, wait_seconds: float = 0.0) -> Lease | None: ...

    def renew_lease(self, job_id: str, lease_token: str) -> Renewal: ...

    def finish_job(self, job_id: str, lease_token: str, outcome: Outcome) -> Any: ...


class CatalogSubmitter:
    """:class:`node.streams.trigger.JobSubmitter` over the catalog's JobService."""

    def __init__(self, client: JobsClient) -> None:
        self._client = client

    def submit(self, request: JobRequest) -> list[str]:
        jobs = self._client.submit_jobs(
            request.stream,
            study_instance_uids=request.study_instance_uids,
            collection=request.collection,
            origin_node=request.origin_node,
            reply_ae_title=request.reply_ae_title,
            request_id=request.request_id,
        )
        return [job.id for job in jobs]
