"""The job store and service on SQLite and PostgreSQL: leases, retries, expiry, cancel."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from catalog.db import Repository, open_database
from catalog.errors import InvalidFilter, InvalidJobState, JobNotFound, LeaseLost, NotAllowed
from catalog.jobs.records import JobPriority, JobQuery, JobState, Outcome, StreamInfo
from catalog.jobs.scheduler import Scheduler, SchedulerSettings
from catalog.jobs.service import Caller, JobsService
from catalog.jobs.store import MAX_LOG_BYTES, JobStore
from catalog.records import QueryFilter
from catalog.service import CatalogService
from tests.catalog.builders import Outbox, StudyBuilder
from tests.catalog.jobs_helpers import SEGMENT, Clock, report

pytestmark = pytest.mark.timeout(60)
SETTINGS = SchedulerSettings(
    lease_seconds=30, worker_fresh_seconds=15, place_timeout_seconds=60, interval_seconds=0.1
)


@dataclass
class World:
    jobs: JobsService
    catalog: CatalogService
    clock: Clock
    outboxes: dict[str, Outbox] = field(default_factory=dict)

    def round(self) -> None:
        self.jobs.scheduler.run_round()

    def report(self, node: str, **kwargs: object) -> None:
        self.jobs.report_worker(report(node, **kwargs))  # type: ignore[arg-type]


@pytest.fixture
def world(db_url: str) -> Iterator[World]:
    engine = open_database(db_url)
    try:
        clock = Clock()
        store = JobStore(engine)
        repository = Repository(engine)
        service = JobsService(store, Scheduler(store, SETTINGS, clock=clock), repository)
        yield World(service, CatalogService("replica-a", repository), clock)
    finally:
        engine.dispose()


def _publish(world: World, node: str, study: StudyBuilder) -> str:
    outbox = world.outboxes.setdefault(node, Outbox(node))
    world.catalog.apply_changes(node, outbox.added(study.instances(2)))
    return study.study_uid


def test_a_job_runs_once_near_its_data_and_records_every_transition(world: World) -> None:
    world.report("site-a")
    world.report("site-b")
    uid = _publish(world, "site-b", StudyBuilder("P1"))
    [job] = world.jobs.submit("segment", study_instance_uids=[uid], caller=Caller("alice"))
    assert (job.state, job.attempt, job.max_attempts, job.submitted_by) == (
        JobState.QUEUED,
        0,
        2,
        "alice",
    )
    assert job.collection == "clinical"  # the only collection holding the study

    world.clock.advance(1)
    world.round()
    placed = world.jobs.get(job.id)
    assert (placed.state, placed.node, placed.input_holders) == (
        JobState.PLACED,
        "site-b",
        ("site-b",),
    )
    assert world.jobs.lease("site-a", 0) is None  # placed on the holder only

    world.clock.advance(1)
    lease = world.jobs.lease("site-b", 0)
    assert lease is not None and lease.job.state is JobState.RUNNING and lease.job.attempt == 1
    assert world.jobs.lease("site-b", 0) is None  # never handed out twice

    world.clock.advance(10)
    assert world.jobs.renew(job.id, lease.token).cancel_requested is False
    with pytest.raises(LeaseLost):
        world.jobs.renew(job.id, "not-the-token")
    done = world.jobs.finish(
        job.id,
        lease.token,
        Outcome(succeeded=True, logs=b"ok\n", output_series_instance_uids=("1.2.3",)),
    )
    assert done.state is JobState.SUCCEEDED and done.output_series_instance_uids == ("1.2.3",)
    assert done.created_at is not None and done.placed_at is not None
    assert done.started_at is not None and done.finished_at is not None
    assert done.created_at < done.placed_at < done.started_at < done.finished_at
    # the same finish again (a lost reply) is answered, a stale token is refused
    assert world.jobs.finish(job.id, lease.token, Outcome(succeeded=True)).state is (
        JobState.SUCCEEDED
    )
    with pytest.raises(LeaseLost):
        world.jobs.renew(job.id, lease.token)
    assert world.jobs.logs(job.id).logs == b"ok\n"


def test_a_failed_attempt_is_retried_up_to_the_streams_max_attempts(world: World) -> None:
    world.report("site-a")
    [job] = world.jobs.submit("segment", study_instance_uids=["1.2.3.4"])
    for attempt in (1, 2):
        world.round()
        lease = world.jobs.lease("site-a", 0)
        assert lease is not None and lease.job.attempt == attempt
        after = world.jobs.finish(
            job.id,
            lease.token,
            Outcome(succeeded=False, exit_code=3, error="boom", logs=b"x" * (MAX_LOG_BYTES + 10)),
        )
    assert after.state is JobState.FAILED and after.exit_code == 3 and after.error == "boom"
    assert world.jobs.logs(job.id).attempt == 2
    assert len(world.jobs.logs(job.id, 1).logs) == MAX_LOG_BYTES  # the last MiB is kept
    with pytest.raises(JobNotFound):
        world.jobs.logs(job.id, 3)

    retried = world.jobs.retry(job.id)
    assert (retried.state, retried.max_attempts, retried.error) == (JobState.QUEUED, 4, "")
    with pytest.raises(InvalidJobState):
        world.jobs.retry(job.id)  # only failed or cancelled jobs


def test_an_expired_lease_requeues_the_job_for_another_node(world: World) -> None:
    world.report("site-a", max_jobs=1)
    [job] = world.jobs.submit("segment", study_instance_uids=["1.2.3.5"])
    world.round()
    lease = world.jobs.lease("site-a", 0)
    assert lease is not None
    # site-a's worker dies: no renewals, no reports; site-b keeps reporting
    world.clock.advance(31)
    world.report("site-b")
    world.round()
    moved = world.jobs.get(job.id)
    assert (moved.state, moved.node, moved.attempt) == (JobState.PLACED, "site-b", 1)
    with pytest.raises(LeaseLost):
        world.jobs.finish(job.id, lease.token, Outcome(succeeded=True))
    second = world.jobs.lease("site-b", 0)
    assert second is not None and second.job.attempt == 2 and second.token != lease.token
    assert world.jobs.finish(job.id, second.token, Outcome(succeeded=True)).state is (
        JobState.SUCCEEDED
    )


def test_expired_leases_exhaust_attempts_and_placed_jobs_follow_live_nodes(world: World) -> None:
    world.report("site-a")
    [job] = world.jobs.submit("segment", study_instance_uids=["1.2.3.6"])
    for _ in range(2):
        world.report("site-a")
        world.round()
        assert world.jobs.lease("site-a", 0) is not None
        world.clock.advance(31)
    world.round()
    failed = world.jobs.get(job.id)
    assert failed.state is JobState.FAILED and failed.error == "lease expired"

    # a job placed on a node that then goes silent goes back to the queue, then elsewhere
    [other] = world.jobs.submit("segment", study_instance_uids=["1.2.3.7"])
    world.report("site-a")
    world.round()
    assert world.jobs.get(other.id).node == "site-a"
    world.clock.advance(16)
    world.report("site-b")
    world.round()
    world.round()
    assert (world.jobs.get(other.id).state, world.jobs.get(other.id).node) == (
        JobState.PLACED,
        "site-b",
    )


def test_cancel_stops_queued_jobs_at_once_and_running_ones_at_the_next_renew(
    world: World,
) -> None:
    world.report("site-a", max_jobs=1)
    first, second = world.jobs.submit("segment", study_instance_uids=["1.2.9.1", "1.2.9.2"])
    world.round()
    lease = world.jobs.lease("site-a", 0)
    assert lease is not None and lease.job.id == first.id
    assert world.jobs.cancel(second.id).state is JobState.CANCELLED
    running = world.jobs.cancel(first.id)
    assert running.state is JobState.RUNNING and running.cancel_requested
    assert world.jobs.renew(first.id, lease.token).cancel_requested
    stopped = world.jobs.finish(first.id, lease.token, Outcome(succeeded=False, exit_code=-15))
    assert stopped.state is JobState.CANCELLED  # not retried although attempts remain
    assert world.jobs.retry(second.id).state is JobState.QUEUED


def test_urgent_jobs_go_first_and_queries_submit_one_job_per_study(world: World) -> None:
    world.report("site-a", max_jobs=1)
    for patient in ("Q1", "Q2", "Q3"):
        _publish(world, "site-a", StudyBuilder(patient, study_date="20240101"))
    _publish(world, "site-a", StudyBuilder("Q4", study_date="20230101"))
    normal = world.jobs.submit("segment", query=QueryFilter(study_date="20240101"))
    assert len(normal) == 3 and {j.priority for j in normal} == {JobPriority.NORMAL}
    world.clock.advance(1)
    [urgent] = world.jobs.submit(
        "segment", study_instance_uids=["9.9.9"], priority=JobPriority.URGENT
    )
    world.round()
    lease = world.jobs.lease("site-a", 0)
    assert lease is not None and lease.job.id == urgent.id
    world.jobs.finish(urgent.id, lease.token, Outcome(succeeded=True))
    order = []
    for _ in normal:
        world.round()
        lease = world.jobs.lease("site-a", 0)
        assert lease is not None
        order.append(lease.job.id)
        world.jobs.finish(lease.job.id, lease.token, Outcome(succeeded=True))
    assert order == [j.id for j in normal]  # FIFO within a priority
    listed = world.jobs.list(JobQuery(states=(JobState.SUCCEEDED,)))
    assert [j.id for j in listed] == sorted((j.id for j in [*normal, urgent]), key=int)[::-1]


def test_submissions_are_checked(world: World) -> None:
    with pytest.raises(InvalidFilter, match="no node offers"):
        world.jobs.submit("segment", study_instance_uids=["1.2"])
    world.report("site-a", streams=(SEGMENT, StreamInfo("segment", "1.10", max_attempts=5)))
    world.report("site-b", streams=(StreamInfo("segment", "1.9", max_attempts=3),))
    [job] = world.jobs.submit("segment", study_instance_uids=["1.2"])
    assert job.max_attempts == 5  # the highest version any node reports wins
    uid = _publish(world, "site-a", StudyBuilder("L1", collection="lung"))
    reader = Caller("bob", may_admin=lambda c: False, readable=frozenset({"lung"}))
    with pytest.raises(NotAllowed):
        world.jobs.submit("segment", study_instance_uids=[uid], caller=reader)
    lung_admin = Caller(
        "carol",
        may_admin=lambda c: c == "lung",
        may_read=lambda c: c == "lung",
        readable=frozenset({"lung"}),
    )
    [mine] = world.jobs.submit("segment", study_instance_uids=[uid], caller=lung_admin)
    assert [j.id for j in world.jobs.list(JobQuery(), lung_admin)] == [mine.id]
    with pytest.raises(JobNotFound):
        world.jobs.get(job.id, lung_admin)  # a job of another collection is invisible
    with pytest.raises(JobNotFound):
        world.jobs.get("nope")


def test_a_command_renewed_past_its_time_limit_loses_its_lease(world: World) -> None:
    limited = StreamInfo("segment", "2", max_attempts=2, time_limit_seconds=60)
    world.report("site-a", streams=(limited,))
    [job] = world.jobs.submit("segment", study_instance_uids=["1.2.7.1"])
    world.round()
    lease = world.jobs.lease("site-a", 0)
    assert lease is not None
    for _ in range(3):  # within time limit + one lease period, renewals are fine
        world.clock.advance(29)
        world.jobs.renew(job.id, lease.token)
    world.clock.advance(5)
    with pytest.raises(LeaseLost, match="time limit of 60 s exceeded"):
        world.jobs.renew(job.id, lease.token)
    again = world.jobs.get(job.id)
    assert (again.state, again.error) == (JobState.QUEUED, "time limit of 60 s exceeded")


def test_concurrent_leases_never_hand_out_a_job_twice(world: World) -> None:
    world.report("site-a", max_jobs=30)
    submitted = world.jobs.submit("segment", study_instance_uids=[f"1.2.8.{n}" for n in range(24)])
    world.round()
    leased: list[str] = []
    lock = threading.Lock()

    def worker() -> None:
        while (lease := world.jobs.store.lease("site-a", world.clock(), 30)) is not None:
            with lock:
                leased.append(lease.job.id)

    threads = [threading.Thread(target=worker) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sorted(leased, key=int) == [j.id for j in submitted]  # each exactly once


def test_a_resent_submission_with_a_request_id_queues_nothing_twice(world: World) -> None:
    world.report("site-a")
    uids = [f"1.2.6.{n}" for n in range(5)]
    results: list[list[str]] = []

    def submit() -> None:
        jobs = world.jobs.submit("segment", study_instance_uids=uids, request_id="trigger-42")
        results.append([j.id for j in jobs])

    threads = [threading.Thread(target=submit) for _ in range(4)]  # resent concurrently
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(results) == 4 and all(r == results[0] for r in results)
    assert len(world.jobs.list(JobQuery())) == 5
    # without an id (or with another one) the same studies are queued again
    assert len(world.jobs.submit("segment", study_instance_uids=uids)) == 5
    assert len(world.jobs.submit("segment", study_instance_uids=uids, request_id="other")) == 5
    assert len(world.jobs.list(JobQuery())) == 15


def test_long_polls_beyond_the_cap_are_answered_at_once(db_url: str) -> None:
    engine = open_database(db_url)
    try:
        store = JobStore(engine)
        jobs = JobsService(store, Scheduler(store, SETTINGS), Repository(engine), max_long_polls=1)
        jobs.report_worker(report("site-a"))
        holder = threading.Thread(target=lambda: jobs.lease("site-a", 1.5))
        holder.start()  # takes the one long-poll slot
        time.sleep(0.2)
        started = time.monotonic()
        assert jobs.lease("site-a", 5) is None
        assert time.monotonic() - started < 1.0  # did not wait: no server thread held
        holder.join(5)
        started = time.monotonic()
        assert jobs.lease("site-a", 0.5) is None
        assert time.monotonic() - started >= 0.4  # the slot is free again: it waits
    finally:
        engine.dispose()


REF = "ref:" + "0123456789abcdef" * 3


def test_a_study_reference_is_kept_as_it_is_and_runs_only_on_its_origin(world: World) -> None:
    """A node names a study that stays at its site by a reference: stored and shown as
    sent, never matched to the catalog's studies, placed on its origin node only."""
    world.report("site-a", max_jobs=4)
    world.report("site-b", max_jobs=4)
    [job] = world.jobs.submit(
        "segment", study_instance_uids=[REF], collection="local", origin_node="site-b"
    )
    assert (job.study_instance_uid, job.collection, job.origin_node) == (REF, "local", "site-b")
    world.round()
    assert world.jobs.get(job.id).node == "site-b"
    lease = world.jobs.lease("site-b", 0)
    assert lease is not None and lease.job.study_instance_uid == REF
    done = world.jobs.finish(job.id, lease.token, Outcome(succeeded=True, output_series_count=2))
    assert done.output_series_instance_uids == () and done.output_series_count == 2
    [listed] = world.jobs.list(JobQuery())
    assert (listed.study_instance_uid, listed.output_series_count) == (REF, 2)


def test_named_studies_are_uids_or_references_with_their_origin(world: World) -> None:
    world.report("site-a")
    with pytest.raises(InvalidFilter, match="needs the origin_node"):
        world.jobs.submit("segment", study_instance_uids=[REF])
    for bad in ("ref:XYZ", "ref:" + "a" * 61, "1.2.abc", "1..2", "1" * 65, "DROP TABLE"):
        with pytest.raises(InvalidFilter, match="neither a StudyInstanceUID nor a study"):
            world.jobs.submit("segment", study_instance_uids=[bad], origin_node="site-a")
    # a worker that names its outputs: the count follows the UIDs (older workers send none)
    [job] = world.jobs.submit("segment", study_instance_uids=["1.2.3.9"])
    world.round()
    lease = world.jobs.lease("site-a", 0)
    assert lease is not None
    done = world.jobs.finish(
        job.id, lease.token, Outcome(succeeded=True, output_series_instance_uids=("1.2.4",))
    )
    assert done.output_series_count == 1
