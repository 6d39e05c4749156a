"""The thin gRPC face of :class:`~catalog.jobs.service.JobsService`.

Converts messages, builds the :class:`~catalog.jobs.service.Caller` from the authenticated
principal (a researcher's token grants, or a grid host that may do everything), and maps
errors through :mod:`catalog.server.status` like the catalog servicer.
"""

from __future__ import annotations

import grpc

from catalog.jobs.records import JobQuery, Outcome
from catalog.jobs.service import LOCAL, Caller, JobsService
from catalog.server import convert
from catalog.server.jobs_convert import (
    job_to_pb,
    priority_from_pb,
    report_from_pb,
    state_from_pb,
)
from catalog.server.status import guarded
from catalog.v1 import jobs_pb2 as jpb
from catalog.v1 import jobs_pb2_grpc as jpb_grpc


def current_caller() -> Caller:
    """The caller of the RPC on this thread; ``local`` when the server runs without auth."""
    from catalog.security import PrincipalKind
    from catalog.server.interceptors import current_principal

    principal = current_principal()
    if principal is None:
        return LOCAL
    if principal.kind is PrincipalKind.HOST:
        return Caller(principal.name)
    readable = None if principal.reads_all else frozenset(principal.readable_collections())
    return Caller(
        principal.name,
        may_admin=principal.is_admin,
        may_read=principal.can_read,
        readable=readable,
    )


class JobServicer(jpb_grpc.JobServiceServicer):
    """Translates ``gridpacs.catalog.v1.JobService`` calls to the plain jobs service."""

    def __init__(self, service: JobsService) -> None:
        self._service = service

    def ReportWorker(
        self, request: jpb.ReportWorkerRequest, context: grpc.ServicerContext
    ) -> jpb.ReportWorkerResponse:
        def call() -> jpb.ReportWorkerResponse:
            self._service.report_worker(report_from_pb(request))
            return jpb.ReportWorkerResponse()

        return guarded("ReportWorker", context, call)

    def SubmitJobs(
        self, request: jpb.SubmitJobsRequest, context: grpc.ServicerContext
    ) -> jpb.SubmitJobsResponse:
        def call() -> jpb.SubmitJobsResponse:
            jobs = self._service.submit(
                request.stream,
                study_instance_uids=tuple(request.study_instance_uids),
                query=convert.filter_from_pb(request.filter),
                collection=request.collection,
                priority=priority_from_pb(request.priority),
                origin_node=request.origin_node,
                reply_ae_title=request.reply_ae_title,
                request_id=request.request_id,
                caller=current_caller(),
            )
            response = jpb.SubmitJobsResponse()
            for job in jobs:
                job_to_pb(job, response.jobs.add())
            return response

        return guarded("SubmitJobs", context, call)

    def LeaseJob(
        self, request: jpb.LeaseJobRequest, context: grpc.ServicerContext
    ) -> jpb.LeaseJobResponse:
        def call() -> jpb.LeaseJobResponse:
            wait = request.wait_seconds
            remaining = context.time_remaining()
            if remaining is not None:  # answer before the caller's deadline
                wait = max(0.0, min(wait, remaining - 0.5))
            lease = self._service.lease(request.node, wait)
            if lease is None:
                return jpb.LeaseJobResponse()
            response = jpb.LeaseJobResponse(lease_token=lease.token, lease_seconds=lease.seconds)
            job_to_pb(lease.job, response.job)
            return response

        return guarded("LeaseJob", context, call)

    def RenewLease(
        self, request: jpb.RenewLeaseRequest, context: grpc.ServicerContext
    ) -> jpb.RenewLeaseResponse:
        def call() -> jpb.RenewLeaseResponse:
            renewal = self._service.renew(request.job_id, request.lease_token)
            return jpb.RenewLeaseResponse(
                lease_seconds=renewal.seconds, cancel_requested=renewal.cancel_requested
            )

        return guarded("RenewLease", context, call)

    def FinishJob(
        self, request: jpb.FinishJobRequest, context: grpc.ServicerContext
    ) -> jpb.FinishJobResponse:
        def call() -> jpb.FinishJobResponse:
            outcome = Outcome(
                succeeded=request.succeeded,
                exit_code=request.exit_code,
                error=request.error,
                logs=bytes(request.logs),
                output_series_instance_uids=tuple(request.output_series_instance_uids),
                output_series_count=request.output_series_count,
            )
            job = self._service.finish(request.job_id, request.lease_token, outcome)
            response = jpb.FinishJobResponse()
            job_to_pb(job, response.job)
            return response

        return guarded("FinishJob", context, call)

    def ListJobs(
        self, request: jpb.ListJobsRequest, context: grpc.ServicerContext
    ) -> jpb.ListJobsResponse:
        def call() -> jpb.ListJobsResponse:
            query = JobQuery(
                states=tuple(state_from_pb(s) for s in request.states),
                stream=request.stream,
                node=request.node,
                limit=request.limit,
            )
            response = jpb.ListJobsResponse()
            for job in self._service.list(query, current_caller()):
                job_to_pb(job, response.jobs.add())
            return response

        return guarded("ListJobs", context, call)

    def GetJob(self, request: jpb.GetJobRequest, context: grpc.ServicerContext) -> jpb.Job:
        return guarded(
            "GetJob",
            context,
            lambda: job_to_pb(self._service.get(request.id, current_caller()), jpb.Job()),
        )

    def GetJobLogs(
        self, request: jpb.GetJobLogsRequest, context: grpc.ServicerContext
    ) -> jpb.GetJobLogsResponse:
        def call() -> jpb.GetJobLogsResponse:
            logs = self._service.logs(request.id, request.attempt, current_caller())
            return jpb.GetJobLogsResponse(attempt=logs.attempt, logs=logs.logs)

        return guarded("GetJobLogs", context, call)

    def CancelJob(self, request: jpb.CancelJobRequest, context: grpc.ServicerContext) -> jpb.Job:
        return guarded(
            "CancelJob",
            context,
            lambda: job_to_pb(self._service.cancel(request.id, current_caller()), jpb.Job()),
        )

    def RetryJob(self, request: jpb.RetryJobRequest, context: grpc.ServicerContext) -> jpb.Job:
        return guarded(
            "RetryJob",
            context,
            lambda: job_to_pb(self._service.retry(request.id, current_caller()), jpb.Job()),
        )
