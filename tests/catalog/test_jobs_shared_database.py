"""Two catalog processes on one PostgreSQL database share one job queue.

The way to keep scheduling when a catalog host dies, since jobs are not replicated between
replicas (docs/jobs.md): both processes place jobs on the same rows with conditional
updates, workers lease and renew through either, and one of them killed with SIGKILL
leaves every job and every lease to the other. Real processes, a real PostgreSQL.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from catalog.jobs.records import JobState, Outcome
from catalog.jobs_client import JobsClient
from tests.catalog.jobs_helpers import one_running_one_placed, report
from tests.catalog.processes import ReplicaProcess
from tests.catalog.test_jobs_grpc import JOBS_TOML, Heartbeat

pytestmark = [pytest.mark.timeout(120), pytest.mark.postgres]


@pytest.fixture
def pair(tmp_path: Path, pg_url: str) -> Iterator[tuple[ReplicaProcess, ReplicaProcess]]:
    config = tmp_path / "catalog.toml"
    config.write_text(JOBS_TOML)
    processes = []
    try:
        for suffix in ("a", "b"):  # one after the other: the first one migrates
            process = ReplicaProcess("sched", tmp_path / suffix)
            (tmp_path / suffix).mkdir()
            process.db_url, process.config = pg_url, config
            process.start()
            processes.append(process)
        yield processes[0], processes[1]
    finally:
        for process in processes:
            process.stop()


@pytest.fixture
def clients(pair: tuple[ReplicaProcess, ReplicaProcess]) -> Iterator[tuple[JobsClient, JobsClient]]:
    """A client of each process (no fail-over: each test says which process it talks to)."""
    with (
        JobsClient([pair[0].address], timeout=5) as via_a,
        JobsClient([pair[1].address], timeout=5) as via_b,
    ):
        yield via_a, via_b


def test_workers_on_either_process_run_each_job_exactly_once(
    pair: tuple[ReplicaProcess, ReplicaProcess], clients: tuple[JobsClient, JobsClient]
) -> None:
    (a, b), (via_a, via_b) = pair, clients
    with (
        Heartbeat(a.address, report("site-a", max_jobs=2)),
        Heartbeat(b.address, report("site-b", max_jobs=2)),
    ):
        jobs = via_a.submit_jobs("segment", study_instance_uids=[f"1.3.{n}" for n in range(24)])
        ran: dict[str, list[str]] = {"site-a": [], "site-b": []}

        def work(node: str, client: JobsClient) -> None:
            while len(ran["site-a"]) + len(ran["site-b"]) < len(jobs):
                lease = client.lease_job(node, 1)
                if lease is None:
                    continue
                ran[node].append(lease.job.id)
                client.finish_job(lease.job.id, lease.token, Outcome(succeeded=True))

        workers = [
            threading.Thread(target=work, args=("site-a", via_a)),
            threading.Thread(target=work, args=("site-b", via_b)),
        ]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(60)
        done = ran["site-a"] + ran["site-b"]
        assert sorted(done) == sorted(j.id for j in jobs)  # every job, none twice
        assert ran["site-a"] and ran["site-b"]  # both processes placed and leased
        final = via_b.list_jobs()
        assert {j.id: j.state for j in final} == {j.id: JobState.SUCCEEDED for j in jobs}
        assert all(j.attempt == 1 for j in final)


def test_the_other_process_carries_on_after_a_sigkill(
    pair: tuple[ReplicaProcess, ReplicaProcess], clients: tuple[JobsClient, JobsClient]
) -> None:
    (a, b), (via_a, via_b) = pair, clients
    with Heartbeat(b.address, report("site-a", max_jobs=2)):
        jobs, lease, before = one_running_one_placed(via_a, via_b)

        a.signal(signal.SIGKILL)  # the process the jobs were submitted and leased through
        a.proc.wait(10)  # type: ignore[union-attr]

        assert {j.id: j.state for j in via_b.list_jobs()} == before  # nothing lost or moved
        assert via_b.renew_lease(lease.job.id, lease.token).cancel_requested is False
        via_b.finish_job(lease.job.id, lease.token, Outcome(succeeded=True))
        for _ in range(2):
            nxt = via_b.lease_job("site-a", 10)
            assert nxt is not None and nxt.job.id != lease.job.id
            via_b.finish_job(nxt.job.id, nxt.token, Outcome(succeeded=True))
        final = via_b.list_jobs()
    assert {j.id: j.state for j in final} == {j.id: JobState.SUCCEEDED for j in jobs}
    assert all(j.attempt == 1 for j in final)
