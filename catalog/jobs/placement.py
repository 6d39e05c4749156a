"""Where queued jobs go: a pure function of the queue, the workers and who holds what.

Rules, in order:

* Jobs are taken URGENT first, then first come first served (``created_at``, then id).
* A candidate node has a fresh report (the caller passes only those), offers the job's
  stream, and is under every limit it reported — ``max_jobs`` (placed + running jobs, counting
  what this round already put there), ``max_cpu_percent``, ``min_memory_available_mb`` (less
  the memory of the streams placed on it this round).
* A node without ``max_jobs`` holds at most :data:`UNLIMITED_WAITING` placed jobs its
  worker has not leased yet, so it does not hoard the queue while others are free.
* Among candidates a node holding the study wins (no transfer); then the least loaded
  (fewest active jobs relative to its ``max_jobs``, then CPU); then the name, so the answer
  is deterministic.
* A study nobody holds in the catalog but that a node's stream trigger submitted is in a
  collection that node does not publish (identified data stays at the site): only that
  origin node can run it, so it waits for a slot there rather than failing elsewhere. The
  same holds for a study reference (``ref:…``), which only its origin node can resolve.
* A job with no candidate stays queued; later jobs are still considered (a free node for
  another stream is not left idle behind a job nobody can run).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from catalog.jobs.records import JobPriority, StreamInfo, WorkerReport, is_study_reference

UNLIMITED_WAITING = 2
"""Placed-but-not-leased jobs a node without ``max_jobs`` may hold (its worker leases more
as it takes them)."""


@dataclass(frozen=True, slots=True)
class QueuedJob:
    """What placement needs to know of a queued job."""

    id: str
    stream: str
    study_instance_uid: str
    priority: JobPriority
    created_at: datetime
    seq: int = 0
    """Tie-break within one ``created_at`` (the submission order)."""
    origin_node: str = ""
    """The node whose stream trigger submitted the job ("" for catalog submissions)."""


@dataclass(frozen=True, slots=True)
class Placement:
    job_id: str
    node: str
    holds_data: bool
    holders: tuple[str, ...]


@dataclass(slots=True)
class _Slot:
    """A node's capacity as this round sees it (reports plus this round's placements)."""

    report: WorkerReport
    active: int
    memory_left: int
    waiting: int = 0
    streams: dict[str, StreamInfo] = field(default_factory=dict)

    def full(self) -> bool:
        limits, load = self.report.limits, self.report.load
        if limits.max_jobs > 0 and self.active >= limits.max_jobs:
            return True
        if limits.max_jobs <= 0 and self.waiting >= UNLIMITED_WAITING:
            return True
        if limits.max_cpu_percent > 0 and load.cpu_percent >= limits.max_cpu_percent:
            return True
        return (
            limits.min_memory_available_mb > 0 and self.memory_left < limits.min_memory_available_mb
        )

    def fits(self, stream: StreamInfo) -> bool:
        if self.full():
            return False
        if stream.memory_mb <= 0 or self.report.load.memory_available_mb <= 0:
            return True  # nothing declared or nothing measured: the limits alone decide
        return self.memory_left - stream.memory_mb >= self.report.limits.min_memory_available_mb

    def load_key(self) -> tuple[float, float]:
        capacity = self.report.limits.max_jobs
        share = self.active / capacity if capacity > 0 else float(self.active)
        return (share, self.report.load.cpu_percent)


def job_order(job: QueuedJob) -> tuple[int, datetime, int, str]:
    """URGENT first, then FIFO."""
    return (-int(job.priority), job.created_at, job.seq, job.id)


def place(
    jobs: Iterable[QueuedJob],
    workers: Sequence[WorkerReport],
    active: Mapping[str, int],
    holders: Mapping[str, Iterable[str]],
    waiting: Mapping[str, int] | None = None,
) -> list[Placement]:
    """Decide which queued jobs go where in this round.

    Parameters
    ----------
    jobs
        Queued jobs (any order; sorted here).
    workers
        Latest reports of the nodes considered alive (stale ones are left out by the caller).
    active
        Placed + running jobs per node now, from the catalog's own tables. A worker's reported
        ``running_jobs`` is up to one heartbeat old: using it would keep a slot that just
        freed looking full until the next report (tried: 93 % → 58 % busy slots).
    holders
        Nodes holding each study (by StudyInstanceUID).
    waiting
        Placed jobs not leased yet per node (bounds nodes without ``max_jobs``).
    """
    slots = {
        w.node: _Slot(
            report=w,
            active=active.get(w.node, 0),
            memory_left=w.load.memory_available_mb,
            waiting=(waiting or {}).get(w.node, 0),
            streams={s.name: s for s in w.streams},
        )
        for w in workers
    }
    placements: list[Placement] = []
    for job in sorted(jobs, key=job_order):
        if all(slot.full() for slot in slots.values()):
            break
        held_by = tuple(sorted(set(holders.get(job.study_instance_uid, ()))))
        only_origin = bool(job.origin_node) and (
            not held_by or is_study_reference(job.study_instance_uid)
        )
        candidates = [
            slot
            for slot in slots.values()
            if job.stream in slot.streams
            and slot.fits(slot.streams[job.stream])
            and (not only_origin or slot.report.node == job.origin_node)
        ]
        if not candidates:
            continue
        best = min(
            candidates,
            key=lambda s: (s.report.node not in held_by, *s.load_key(), s.report.node),
        )
        best.active += 1
        best.waiting += 1
        best.memory_left -= max(0, best.streams[job.stream].memory_mb)
        placements.append(
            Placement(
                job_id=job.id,
                node=best.report.node,
                holds_data=best.report.node in held_by,
                holders=held_by,
            )
        )
    return placements


def stream_settings(reports: Iterable[WorkerReport], stream: str) -> StreamInfo | None:
    """The stream as the highest version any node reports (nodes may disagree mid-rollout)."""
    found = [s for r in reports for s in r.streams if s.name == stream]
    if not found:
        return None
    return max(found, key=lambda s: (_version_key(s.version), s.max_attempts))


def _version_key(version: str) -> tuple[tuple[int, int | str], ...]:
    """``1.10`` > ``1.9``: numeric parts compare as numbers, others as text after them."""
    parts: list[tuple[int, int | str]] = []
    for part in version.replace("-", ".").split("."):
        parts.append((1, int(part)) if part.isdigit() else (0, part))
    return tuple(parts)
