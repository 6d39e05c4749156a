"""Plain values of the job scheduler (no SQLAlchemy, no protobuf)."""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, field
from datetime import datetime

STUDY_REFERENCE_PREFIX = "ref:"
"""A job's study may be an opaque reference instead of a StudyInstanceUID (see
:func:`is_study_reference`)."""
_STUDY_REFERENCE = re.compile(r"ref:[0-9a-f]{16,60}")
_UID = re.compile(r"[0-9]+(?:\.[0-9]+)*")
MAX_UID_CHARS = 64


def is_study_reference(value: str) -> bool:
    """``ref:`` and 16 to 60 lowercase hex digits (at most 64 characters, like a UID).

    A node's stream trigger submits one for a study in a collection that may not leave its
    site (DICOM PS3.15 counts UIDs as identifiers): a keyed hash only that node can map
    back to the study. The catalog stores and shows it as it is and never matches it to
    studies; only the origin node can run such a job.
    """
    return _STUDY_REFERENCE.fullmatch(value) is not None


def is_uid(value: str) -> bool:
    """A DICOM UID as far as the scheduler cares: digits and dots, at most 64 characters."""
    return len(value) <= MAX_UID_CHARS and _UID.fullmatch(value) is not None


class JobState(enum.StrEnum):
    """Where a job is in its life; the last three are final."""

    QUEUED = "queued"
    PLACED = "placed"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def final(self) -> bool:
        return self in FINAL_STATES


FINAL_STATES = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED})
ACTIVE_STATES = frozenset({JobState.PLACED, JobState.RUNNING})
"""States that occupy a slot of a node (what ``max_jobs`` counts)."""


class JobPriority(enum.IntEnum):
    """Urgent jobs are placed before normal ones; FIFO within a priority."""

    NORMAL = 1
    URGENT = 2


@dataclass(frozen=True, slots=True)
class StreamInfo:
    """A stream as one node's manifest describes it."""

    name: str
    version: str = ""
    ae_title: str = ""
    max_attempts: int = 1
    time_limit_seconds: int = 0
    cpus: float = 0.0
    memory_mb: int = 0


@dataclass(frozen=True, slots=True)
class WorkerLoad:
    cpu_percent: float = 0.0
    memory_available_mb: int = 0
    running_jobs: int = 0


@dataclass(frozen=True, slots=True)
class WorkerLimits:
    """A node at or over any limit gets nothing new; 0 means no limit."""

    max_jobs: int = 0
    max_cpu_percent: float = 0.0
    min_memory_available_mb: int = 0


@dataclass(frozen=True, slots=True)
class WorkerReport:
    """One node's latest heartbeat as the scheduler keeps it."""

    node: str
    load: WorkerLoad = WorkerLoad()
    limits: WorkerLimits = WorkerLimits()
    streams: tuple[StreamInfo, ...] = ()
    reported_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class Job:
    """One study processed by one stream; ``attempt`` is 0 until the first lease."""

    id: str
    stream: str
    study_instance_uid: str
    collection: str
    state: JobState
    priority: JobPriority
    node: str = ""
    attempt: int = 0
    max_attempts: int = 1
    origin_node: str = ""
    reply_ae_title: str = ""
    submitted_by: str = ""
    created_at: datetime | None = None
    placed_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    error: str = ""
    exit_code: int = 0
    output_series_instance_uids: tuple[str, ...] = ()
    input_holders: tuple[str, ...] = ()
    cancel_requested: bool = False
    output_series_count: int = 0
    """Derived series of the last successful attempt, also when their UIDs stayed at the
    site (a collection that may not leave it)."""


@dataclass(frozen=True, slots=True)
class Lease:
    """A running job handed to a node's worker; the token proves the lease on renew/finish."""

    job: Job
    token: str
    seconds: float


@dataclass(frozen=True, slots=True)
class Renewal:
    seconds: float
    cancel_requested: bool


@dataclass(frozen=True, slots=True)
class Outcome:
    """What a worker reports at the end of an attempt."""

    succeeded: bool
    exit_code: int = 0
    error: str = ""
    logs: bytes = b""
    output_series_instance_uids: tuple[str, ...] = ()
    output_series_count: int = 0
    """How many derived series were stored; may exceed the UIDs listed (withheld ones)."""


@dataclass(frozen=True, slots=True)
class AttemptLogs:
    attempt: int
    logs: bytes


@dataclass(frozen=True, slots=True)
class JobQuery:
    """Filters of ``ListJobs``; newest first."""

    states: tuple[JobState, ...] = ()
    stream: str = ""
    node: str = ""
    limit: int = 0
    collections: frozenset[str] | None = None
    """When set, only jobs of these collections (a researcher's readable scope)."""


@dataclass(frozen=True, slots=True)
class NewJob:
    """What a submission asks for, one per study."""

    stream: str
    study_instance_uid: str
    collection: str = ""
    priority: JobPriority = JobPriority.NORMAL
    origin_node: str = ""
    reply_ae_title: str = ""
    submitted_by: str = ""
    holders: tuple[str, ...] = field(default_factory=tuple)
    request_id: str = ""
    """Deduplicates a resent submission (all jobs of one request share it)."""
