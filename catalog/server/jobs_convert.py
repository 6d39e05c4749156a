"""Job values <-> ``gridpacs.catalog.v1`` jobs messages (used by servicer and client)."""

from __future__ import annotations

from catalog.jobs.records import (
    Job,
    JobPriority,
    JobState,
    StreamInfo,
    WorkerLimits,
    WorkerLoad,
    WorkerReport,
)
from catalog.server.convert import ConversionError, timestamp_from_pb, timestamp_to_pb
from catalog.v1 import jobs_pb2 as jpb

STATE_TO_PB = {
    JobState.QUEUED: jpb.JOB_STATE_QUEUED,
    JobState.PLACED: jpb.JOB_STATE_PLACED,
    JobState.RUNNING: jpb.JOB_STATE_RUNNING,
    JobState.SUCCEEDED: jpb.JOB_STATE_SUCCEEDED,
    JobState.FAILED: jpb.JOB_STATE_FAILED,
    JobState.CANCELLED: jpb.JOB_STATE_CANCELLED,
}
STATE_FROM_PB = {v: k for k, v in STATE_TO_PB.items()}
PRIORITY_TO_PB = {
    JobPriority.NORMAL: jpb.JOB_PRIORITY_NORMAL,
    JobPriority.URGENT: jpb.JOB_PRIORITY_URGENT,
}


def state_from_pb(value: int) -> JobState:
    try:
        return STATE_FROM_PB[value]  # type: ignore[index]
    except KeyError:
        raise ConversionError(f"unknown job state {value}") from None


def priority_from_pb(value: int) -> JobPriority:
    if value in (jpb.JOB_PRIORITY_UNSPECIFIED, jpb.JOB_PRIORITY_NORMAL):
        return JobPriority.NORMAL
    if value == jpb.JOB_PRIORITY_URGENT:
        return JobPriority.URGENT
    raise ConversionError(f"unknown job priority {value}")


def job_to_pb(job: Job, target: jpb.Job) -> jpb.Job:
    target.id = job.id
    target.stream = job.stream
    target.study_instance_uid = job.study_instance_uid
    target.collection = job.collection
    target.state = STATE_TO_PB[job.state]
    target.priority = PRIORITY_TO_PB[job.priority]
    target.node = job.node
    target.attempt = job.attempt
    target.max_attempts = job.max_attempts
    target.origin_node = job.origin_node
    target.reply_ae_title = job.reply_ae_title
    target.submitted_by = job.submitted_by
    timestamp_to_pb(job.created_at, target.created_at)
    timestamp_to_pb(job.placed_at, target.placed_at)
    timestamp_to_pb(job.started_at, target.started_at)
    timestamp_to_pb(job.finished_at, target.finished_at)
    target.error = job.error
    target.exit_code = job.exit_code
    target.output_series_instance_uids.extend(job.output_series_instance_uids)
    target.input_holders.extend(job.input_holders)
    target.output_series_count = job.output_series_count
    return target


def job_from_pb(message: jpb.Job) -> Job:
    return Job(
        id=message.id,
        stream=message.stream,
        study_instance_uid=message.study_instance_uid,
        collection=message.collection,
        state=state_from_pb(message.state),
        priority=priority_from_pb(message.priority),
        node=message.node,
        attempt=message.attempt,
        max_attempts=message.max_attempts,
        origin_node=message.origin_node,
        reply_ae_title=message.reply_ae_title,
        submitted_by=message.submitted_by,
        created_at=timestamp_from_pb(message.created_at, message.HasField("created_at")),
        placed_at=timestamp_from_pb(message.placed_at, message.HasField("placed_at")),
        started_at=timestamp_from_pb(message.started_at, message.HasField("started_at")),
        finished_at=timestamp_from_pb(message.finished_at, message.HasField("finished_at")),
        error=message.error,
        exit_code=message.exit_code,
        output_series_instance_uids=tuple(message.output_series_instance_uids),
        input_holders=tuple(message.input_holders),
        output_series_count=max(
            message.output_series_count, len(message.output_series_instance_uids)
        ),
    )


def stream_to_pb(stream: StreamInfo, target: jpb.StreamInfo) -> None:
    target.name = stream.name
    target.version = stream.version
    target.ae_title = stream.ae_title
    target.max_attempts = stream.max_attempts
    target.time_limit_seconds = stream.time_limit_seconds
    target.cpus = stream.cpus
    target.memory_mb = stream.memory_mb


def stream_from_pb(message: jpb.StreamInfo) -> StreamInfo:
    if not message.name:
        raise ConversionError("a stream needs a name")
    return StreamInfo(
        name=message.name,
        version=message.version,
        ae_title=message.ae_title,
        max_attempts=max(1, message.max_attempts),
        time_limit_seconds=message.time_limit_seconds,
        cpus=message.cpus,
        memory_mb=message.memory_mb,
    )


def report_to_pb(report: WorkerReport, target: jpb.ReportWorkerRequest) -> None:
    target.node = report.node
    target.load.cpu_percent = report.load.cpu_percent
    target.load.memory_available_mb = report.load.memory_available_mb
    target.load.running_jobs = report.load.running_jobs
    target.limits.max_jobs = report.limits.max_jobs
    target.limits.max_cpu_percent = report.limits.max_cpu_percent
    target.limits.min_memory_available_mb = report.limits.min_memory_available_mb
    for stream in report.streams:
        stream_to_pb(stream, target.streams.add())


def report_from_pb(message: jpb.ReportWorkerRequest) -> WorkerReport:
    return WorkerReport(
        node=message.node,
        load=WorkerLoad(
            cpu_percent=message.load.cpu_percent,
            memory_available_mb=message.load.memory_available_mb,
            running_jobs=message.load.running_jobs,
        ),
        limits=WorkerLimits(
            max_jobs=message.limits.max_jobs,
            max_cpu_percent=message.limits.max_cpu_percent,
            min_memory_available_mb=message.limits.min_memory_available_mb,
        ),
        streams=tuple(stream_from_pb(s) for s in message.streams),
    )
