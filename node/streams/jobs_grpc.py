""":class:`node.streams.jobs.JobsApi` over the catalog's gRPC JobService.

Fails over between catalog replicas on UNAVAILABLE like :class:`catalog.GrpcCatalogClient`;
FAILED_PRECONDITION on RenewLease/FinishJob means the lease is gone (:class:`LeaseLost`).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any

import grpc

from catalog import CatalogRejected, CatalogUnavailable
from catalog.client import CHANNEL_OPTIONS
from catalog.v1 import jobs_pb2 as pb
from catalog.v1 import jobs_pb2_grpc as pb_grpc
from node.streams.jobs import (
    LeasedJob,
    LeaseLost,
    Outcome,
    Renewal,
    StreamOffer,
    WorkerLimits,
    WorkerLoad,
)
from node.streams.trigger import JobRequest

_FAILOVER = frozenset({grpc.StatusCode.UNAVAILABLE})


class GrpcJobs:
    """One channel per replica; unary calls with a deadline each."""

    def __init__(
        self,
        addresses: Sequence[str],
        *,
        timeout: float = 5.0,
        credentials: grpc.ChannelCredentials | None = None,
    ) -> None:
        self.addresses = tuple(addresses)
        self.timeout = timeout
        self._credentials = credentials
        self._stubs: dict[str, pb_grpc.JobServiceStub] = {}
        self._channels: list[grpc.Channel] = []
        self._preferred = 0
        self._lock = threading.Lock()

    def _stub(self, address: str) -> pb_grpc.JobServiceStub:
        with self._lock:
            stub = self._stubs.get(address)
            if stub is None:
                channel = (
                    grpc.insecure_channel(address, options=CHANNEL_OPTIONS)
                    if self._credentials is None
                    else grpc.secure_channel(address, self._credentials, options=CHANNEL_OPTIONS)
                )
                self._channels.append(channel)
                stub = self._stubs[address] = pb_grpc.JobServiceStub(channel)
            return stub

    def _call(
        self, method: str, request: Any, *, timeout: float | None = None, lease: bool = False
    ) -> Any:
        errors: list[str] = []
        n = len(self.addresses)
        for i in range(n):
            index = (self._preferred + i) % n
            address = self.addresses[index]
            call: Callable[..., Any] = getattr(self._stub(address), method)
            try:
                response = call(request, timeout=timeout or self.timeout)
            except grpc.RpcError as exc:
                code = exc.code()
                if lease and code is grpc.StatusCode.FAILED_PRECONDITION:
                    raise LeaseLost(f"{method}: {exc.details()}", code=code.name) from exc
                if code is grpc.StatusCode.DEADLINE_EXCEEDED:
                    raise CatalogUnavailable(f"{method} to {address}: deadline exceeded") from exc
                if code not in _FAILOVER:
                    raise CatalogRejected(f"{code.name}: {exc.details()}", code=code.name) from exc
                errors.append(f"{address}: {code.name}")
                continue
            self._preferred = index
            return response
        raise CatalogUnavailable(f"no catalog replica answered {method}: {'; '.join(errors)}")

    def report_worker(
        self, node: str, load: WorkerLoad, limits: WorkerLimits, streams: Sequence[StreamOffer]
    ) -> None:
        request = pb.ReportWorkerRequest(
            node=node,
            load=pb.WorkerLoad(
                cpu_percent=load.cpu_percent,
                memory_available_mb=load.memory_available_mb,
                running_jobs=load.running_jobs,
            ),
            limits=pb.WorkerLimits(
                max_jobs=limits.max_jobs,
                max_cpu_percent=limits.max_cpu_percent,
                min_memory_available_mb=limits.min_memory_available_mb,
            ),
            streams=[
                pb.StreamInfo(
                    name=s.name,
                    version=s.version,
                    ae_title=s.ae_title,
                    max_attempts=s.max_attempts,
                    time_limit_seconds=s.time_limit_seconds,
                    cpus=s.cpus,
                    memory_mb=s.memory_mb,
                )
                for s in streams
            ],
        )
        self._call("ReportWorker", request)

    def submit(self, request: JobRequest) -> list[str]:
        response = self._call(
            "SubmitJobs",
            pb.SubmitJobsRequest(
                stream=request.stream,
                study_instance_uids=list(request.study_instance_uids),
                collection=request.collection,
                origin_node=request.origin_node,
                reply_ae_title=request.reply_ae_title,
            ),
        )
        return [job.id for job in response.jobs]

    def lease_job(self, node: str, wait_seconds: float) -> LeasedJob | None:
        response = self._call(
            "LeaseJob",
            pb.LeaseJobRequest(node=node, wait_seconds=wait_seconds),
            timeout=wait_seconds + self.timeout,
        )
        if not response.HasField("job"):
            return None
        job = response.job
        return LeasedJob(
            id=job.id,
            stream=job.stream,
            study_instance_uid=job.study_instance_uid,
            collection=job.collection,
            attempt=job.attempt,
            max_attempts=job.max_attempts,
            origin_node=job.origin_node,
            reply_ae_title=job.reply_ae_title,
            lease_token=response.lease_token,
            lease_seconds=response.lease_seconds,
        )

    def renew_lease(self, job_id: str, lease_token: str) -> Renewal:
        response = self._call(
            "RenewLease", pb.RenewLeaseRequest(job_id=job_id, lease_token=lease_token), lease=True
        )
        return Renewal(response.lease_seconds, response.cancel_requested)

    def finish_job(self, job_id: str, lease_token: str, outcome: Outcome) -> None:
        self._call(
            "FinishJob",
            pb.FinishJobRequest(
                job_id=job_id,
                lease_token=lease_token,
                succeeded=outcome.succeeded,
                exit_code=outcome.exit_code,
                error=outcome.error,
                logs=outcome.logs,
                output_series_instance_uids=list(outcome.output_series_instance_uids),
            ),
            lease=True,
        )

    def close(self) -> None:
        with self._lock:
            for channel in self._channels:
                channel.close()
            self._channels.clear()
            self._stubs.clear()
