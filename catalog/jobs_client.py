"""Typed client of the catalog's JobService, for node workers, triggers and the CLI.

Channels, credentials, deadlines and failover come from :class:`catalog.client.FailoverClient`.
Jobs live on the replica that schedules them, so list the scheduling replica first; only calls
that are safe to repeat fail over after an unknown outcome (a lease or a submission sent twice
could start work twice). A ``FinishJob`` repeated with the same lease token is answered again,
so a worker may resend it after a lost reply.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from catalog.client import FailoverClient
from catalog.jobs.records import (
    AttemptLogs,
    Job,
    JobPriority,
    JobState,
    Lease,
    Outcome,
    Renewal,
    WorkerReport,
)
from catalog.records import QueryFilter
from catalog.server import convert
from catalog.server.jobs_convert import (
    PRIORITY_TO_PB,
    STATE_TO_PB,
    job_from_pb,
    report_to_pb,
)
from catalog.v1 import jobs_pb2 as jpb
from catalog.v1 import jobs_pb2_grpc as jpb_grpc

JOBS_IDEMPOTENT: dict[str, bool] = {
    "ReportWorker": True,
    "SubmitJobs": False,
    "LeaseJob": False,
    "RenewLease": True,
    "FinishJob": True,
    "ListJobs": True,
    "GetJob": True,
    "GetJobLogs": True,
    "CancelJob": True,
    "RetryJob": False,
}
LEASE_SLACK = 5.0
"""Seconds a long-polling lease call may take beyond its ``wait_seconds``."""


class JobsClient(FailoverClient):
    """``gridpacs.catalog.v1.JobService`` as typed methods; errors as catalog errors.

    Same constructor as :class:`catalog.client.GrpcCatalogClient` (addresses, timeout,
    credentials, token). Raises :class:`catalog.errors.CatalogRejected` (``code`` is the
    gRPC status name, e.g. ``FAILED_PRECONDITION`` for a lost lease) or
    :class:`catalog.errors.CatalogUnavailable`.
    """

    stub_type = jpb_grpc.JobServiceStub
    idempotent = JOBS_IDEMPOTENT

    # -- a node's worker -------------------------------------------------------------------

    def report_worker(self, report: WorkerReport) -> None:
        request = jpb.ReportWorkerRequest()
        report_to_pb(report, request)
        self._unary("ReportWorker", request)

    def lease_job(self, node: str, wait_seconds: float = 0.0) -> Lease | None:
        """The next job placed on ``node`` (waiting up to ``wait_seconds``), or None."""
        request = jpb.LeaseJobRequest(node=node, wait_seconds=wait_seconds)
        started = time.monotonic()
        response = self._unary(
            "LeaseJob", request, timeout=self.timeout + wait_seconds + LEASE_SLACK
        )
        if not response.HasField("job"):
            # answered at once although asked to wait: the catalog has all the long polls it
            # takes; wait here rather than ask again in a tight loop
            early = min(1.0, wait_seconds) - (time.monotonic() - started)
            if early > 0:
                time.sleep(early)
            return None
        return Lease(
            job=job_from_pb(response.job),
            token=response.lease_token,
            seconds=response.lease_seconds,
        )

    def renew_lease(self, job_id: str, lease_token: str) -> Renewal:
        """Keep the lease; ``CatalogRejected(code='FAILED_PRECONDITION')`` once it is lost."""
        response = self._unary(
            "RenewLease", jpb.RenewLeaseRequest(job_id=job_id, lease_token=lease_token)
        )
        return Renewal(seconds=response.lease_seconds, cancel_requested=response.cancel_requested)

    def finish_job(self, job_id: str, lease_token: str, outcome: Outcome) -> Job:
        request = jpb.FinishJobRequest(
            job_id=job_id,
            lease_token=lease_token,
            succeeded=outcome.succeeded,
            exit_code=outcome.exit_code,
            error=outcome.error,
            logs=outcome.logs,
            output_series_instance_uids=list(outcome.output_series_instance_uids),
            output_series_count=outcome.output_series_count,
        )
        return job_from_pb(self._unary("FinishJob", request).job)

    # -- submissions and operators -----------------------------------------------------------

    def submit_jobs(
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
    ) -> list[Job]:
        """One job per study: the UIDs given, else every study ``query`` matches.

        With a ``request_id`` (e.g. a UUID per trigger) the call is safe to resend and fails
        over like the idempotent calls: the catalog answers a repeat with the jobs it made.
        """
        request = jpb.SubmitJobsRequest(
            stream=stream,
            priority=PRIORITY_TO_PB[priority],
            study_instance_uids=list(study_instance_uids),
            collection=collection,
            origin_node=origin_node,
            reply_ae_title=reply_ae_title,
            request_id=request_id,
        )
        if query is not None:
            convert.filter_to_pb(query, request.filter)
        response = self._unary("SubmitJobs", request, idempotent=bool(request_id) or None)
        return [job_from_pb(j) for j in response.jobs]

    def list_jobs(
        self,
        *,
        states: Sequence[JobState] = (),
        stream: str = "",
        node: str = "",
        limit: int = 0,
    ) -> list[Job]:
        request = jpb.ListJobsRequest(
            states=[STATE_TO_PB[s] for s in states], stream=stream, node=node, limit=limit
        )
        return [job_from_pb(j) for j in self._unary("ListJobs", request).jobs]

    def get_job(self, job_id: str) -> Job:
        return job_from_pb(self._unary("GetJob", jpb.GetJobRequest(id=job_id)))

    def get_job_logs(self, job_id: str, attempt: int = 0) -> AttemptLogs:
        response = self._unary("GetJobLogs", jpb.GetJobLogsRequest(id=job_id, attempt=attempt))
        return AttemptLogs(attempt=response.attempt, logs=bytes(response.logs))

    def cancel_job(self, job_id: str) -> Job:
        return job_from_pb(self._unary("CancelJob", jpb.CancelJobRequest(id=job_id)))

    def retry_job(self, job_id: str) -> Job:
        return job_from_pb(self._unary("RetryJob", jpb.RetryJobRequest(id=job_id)))
