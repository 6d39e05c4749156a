"""JobService against a real catalog process: workers are real gRPC clients (JobsClient).

Covers what a node's worker relies on: long-poll leases, renewals, finishing, retries, a
lease that runs out moving the job to another node, and a SIGKILLed catalog that comes back
with every job and every running lease as it was.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from catalog.errors import CatalogRejected, CatalogUnavailable
from catalog.jobs.records import JobPriority, JobState, Outcome, WorkerReport
from catalog.jobs_client import JobsClient
from tests.catalog.jobs_helpers import one_running_one_placed, report
from tests.catalog.processes import ReplicaProcess, wait_for

pytestmark = pytest.mark.timeout(90)

JOBS_TOML = """\
[jobs]
lease_s = 2.0
worker_fresh_s = 3.0
place_timeout_s = 20.0
interval_s = 0.2
"""


@pytest.fixture
def catalog(tmp_path: Path) -> Iterator[ReplicaProcess]:
    config = tmp_path / "catalog.toml"
    config.write_text(JOBS_TOML)
    replica = ReplicaProcess("sched", tmp_path)
    replica.config = config
    replica.start()
    try:
        yield replica
    finally:
        replica.stop()


@pytest.fixture
def client(catalog: ReplicaProcess) -> Iterator[JobsClient]:
    with JobsClient([catalog.address], timeout=5) as jobs:
        yield jobs


def _answers(client: JobsClient) -> bool:
    try:
        client.list_jobs(limit=1)
    except CatalogUnavailable:
        return False
    return True


class Heartbeat:
    """A node's worker reporting every 0.3 s on its own thread (as a node does)."""

    def __init__(self, address: str, worker: WorkerReport) -> None:
        self._client = JobsClient([address], timeout=2)
        self._report = worker
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Heartbeat:
        self._client.report_worker(self._report)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(0.3):
            with contextlib.suppress(CatalogUnavailable):  # the catalog may be restarting
                self._client.report_worker(self._report)

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self._client.close()


def test_a_worker_leases_renews_and_finishes_over_grpc(client: JobsClient) -> None:
    with Heartbeat(client.addresses[0], report("site-a")):
        assert client.lease_job("site-a", wait_seconds=0) is None
        started = time.monotonic()
        result: list[object] = []
        poll = threading.Thread(target=lambda: result.append(client.lease_job("site-a", 10)))
        poll.start()
        time.sleep(0.3)
        [job] = client.submit_jobs(
            "segment",
            study_instance_uids=["1.2.3"],
            priority=JobPriority.URGENT,
            origin_node="site-a",
            reply_ae_title="MODALITY",
        )
        poll.join(15)
        again = client.submit_jobs(
            "segment", study_instance_uids=["1.2.3.1", "1.2.3.2"], request_id="t-1"
        )
        resent = client.submit_jobs(
            "segment", study_instance_uids=["1.2.3.1", "1.2.3.2"], request_id="t-1"
        )
        assert [j.id for j in resent] == [j.id for j in again]  # nothing queued twice
        for extra in again:
            client.cancel_job(extra.id)
        waited = time.monotonic() - started
        [lease] = result
        assert lease is not None and waited < 5  # the long poll was woken, not timed out
        assert lease.job.id == job.id and lease.job.state is JobState.RUNNING  # type: ignore[attr-defined]
        assert lease.job.reply_ae_title == "MODALITY"  # type: ignore[attr-defined]
        assert lease.seconds == 2.0  # type: ignore[attr-defined]
        token = lease.token  # type: ignore[attr-defined]
        for _ in range(3):  # renewals keep it past its first lease period
            time.sleep(0.8)
            assert client.renew_lease(job.id, token).cancel_requested is False
        done = client.finish_job(
            job.id,
            token,
            Outcome(succeeded=True, logs=b"done\n", output_series_instance_uids=("9.8",)),
        )
        assert done.state is JobState.SUCCEEDED and done.node == "site-a"
        shown = client.get_job(job.id)
        assert shown.output_series_instance_uids == ("9.8",) and shown.finished_at is not None
        assert client.get_job_logs(job.id).logs == b"done\n"
        assert [j.id for j in client.list_jobs(states=[JobState.SUCCEEDED])] == [job.id]
        assert len(client.list_jobs(states=[JobState.CANCELLED])) == 2
        with pytest.raises(CatalogRejected) as lost:
            client.renew_lease(job.id, token)
        assert lost.value.code == "FAILED_PRECONDITION"
        with pytest.raises(CatalogRejected) as missing:
            client.get_job("12345")
        assert missing.value.code == "NOT_FOUND"


def test_a_failed_command_is_retried_then_fails_with_its_logs(client: JobsClient) -> None:
    with Heartbeat(client.addresses[0], report("site-a")):
        [job] = client.submit_jobs("segment", study_instance_uids=["1.2.4"])
        for attempt in (1, 2):
            lease = client.lease_job("site-a", 5)
            assert lease is not None and lease.job.attempt == attempt
            client.finish_job(
                job.id,
                lease.token,
                Outcome(
                    succeeded=False, exit_code=2, error="exit 2", logs=f"try {attempt}".encode()
                ),
            )
        failed = client.get_job(job.id)
        assert (failed.state, failed.attempt, failed.exit_code) == (JobState.FAILED, 2, 2)
        assert client.get_job_logs(job.id, 1).logs == b"try 1"
        assert client.get_job_logs(job.id).logs == b"try 2"
        assert client.retry_job(job.id).state is JobState.QUEUED
        lease = client.lease_job("site-a", 5)
        assert lease is not None and lease.job.attempt == 3
        assert client.cancel_job(job.id).state is JobState.RUNNING  # flagged, not yet stopped
        assert client.renew_lease(job.id, lease.token).cancel_requested
        stopped = client.finish_job(job.id, lease.token, Outcome(succeeded=False, exit_code=-15))
        assert stopped.state is JobState.CANCELLED


def test_an_expired_lease_moves_the_job_to_another_node(client: JobsClient) -> None:
    address = client.addresses[0]
    with Heartbeat(address, report("site-a", max_jobs=1)):
        [job] = client.submit_jobs("segment", study_instance_uids=["1.2.5"])
        lease = client.lease_job("site-a", 5)
        assert lease is not None
    # site-a's worker is gone: no renewals and no reports; site-b takes over
    with Heartbeat(address, report("site-b", max_jobs=1)):
        second = client.lease_job("site-b", 15)
        assert second is not None and second.job.id == job.id and second.job.attempt == 2
        with pytest.raises(CatalogRejected) as stale:
            client.finish_job(job.id, lease.token, Outcome(succeeded=True))
        assert stale.value.code == "FAILED_PRECONDITION"
        done = client.finish_job(job.id, second.token, Outcome(succeeded=True))
        assert (done.state, done.node, done.attempt) == (JobState.SUCCEEDED, "site-b", 2)


def test_a_sigkilled_catalog_comes_back_with_every_job_and_lease(
    catalog: ReplicaProcess, client: JobsClient
) -> None:
    with Heartbeat(catalog.address, report("site-a", max_jobs=2)):
        jobs, lease, before = one_running_one_placed(client, client)
        assert sorted(before.values()) == sorted(
            [JobState.RUNNING, JobState.PLACED, JobState.QUEUED]
        )

        catalog.signal(signal.SIGKILL)
        catalog.proc.wait(10)  # type: ignore[union-attr]
        catalog.start()
        wait_for(lambda: _answers(client), 10, "the client to reconnect")

        after = {j.id: j.state for j in client.list_jobs()}
        assert after == before  # nothing lost, nothing moved
        # the running lease is still valid for its token; any other token is refused
        assert client.renew_lease(lease.job.id, lease.token).cancel_requested is False
        with pytest.raises(CatalogRejected) as stale:
            client.renew_lease(lease.job.id, "stale-token")
        assert stale.value.code == "FAILED_PRECONDITION"
        client.finish_job(lease.job.id, lease.token, Outcome(succeeded=True))
        for _ in range(2):
            nxt = client.lease_job("site-a", 10)
            assert nxt is not None and nxt.job.id != lease.job.id
            client.finish_job(nxt.job.id, nxt.token, Outcome(succeeded=True))
    assert {j.id: j.state for j in client.list_jobs()} == {j.id: JobState.SUCCEEDED for j in jobs}
    # each job ran exactly once
    assert all(client.get_job(j.id).attempt == 1 for j in jobs)
