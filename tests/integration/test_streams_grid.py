"""Processing streams across real processes: a catalog (the scheduler) and two nodes, each
``gridpacs node serve`` with its long-lived worker, DCMTK storescu as the modality and
DCMTK storescp as the workstation the results go back to.

The modality and the workstation share the AE title STORESCP, so results routed to the
"sender" arrive at the storescp. Faults are real: a node is SIGKILLed mid-job, a command
fails, the catalog is SIGKILLed and restarted while a job runs.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import pytest
from pydicom import dcmread

from catalog import CatalogError
from catalog.jobs.records import Job, JobState
from catalog.jobs_client import JobsClient
from tests.catalog.processes import REPO, ReplicaProcess
from tests.factories import StudySpec, make_dataset
from tests.integration.processes import (
    HOST,
    Node,
    StoreSCP,
    describe,
    free_port,
    gridpacs_cli,
    run_dcmtk,
)
from tests.integration.test_grid_catalog import _grid_find_soon

pytestmark = pytest.mark.timeout(240)
INVERT = REPO / "docs" / "examples" / "streams" / "invert" / "invert.py"
LEASE_S = 6.0
T = TypeVar("T")


class ConfiguredReplica(ReplicaProcess):
    """A catalog replica with a TOML file (short leases for the tests)."""

    def start(self, timeout: float = 30.0, *, wait: bool = True) -> None:
        config = self.log_path.with_suffix(".toml")
        config.write_text(
            f'name = "{self.name}"\nport = {self.port}\ndb_url = "{self.db_url}"\n'
            "insecure = true\n[jobs]\n"
            f"lease_s = {LEASE_S}\nworker_fresh_s = 5.0\nplace_timeout_s = 8.0\n"
            "interval_s = 0.2\n"
        )
        args = [sys.executable, "-m", "gridpacs", "catalog", "serve", "--config", str(config)]
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(args, cwd=REPO, env=env, stdout=log, stderr=log)
        if wait:
            self.wait_serving(timeout)


def _manifest(
    folder: Path, name: str, *args: str, attempts: int = 2, destination: str = "sender"
) -> None:
    (folder / f"{name}.json").write_text(
        json.dumps(
            {
                "name": name,
                "version": "1.0",
                "AETitle": name.upper(),
                "enabled": 1,
                "command": ["{python}", str(INVERT), *args],
                "time_limit_seconds": 60,
                "destination": destination,
                "max_attempts": attempts,
                "resources": {"cpus": 1, "memory_mb": 64},
            }
        )
    )


@dataclass
class Grid:
    catalog: ConfiguredReplica
    nodes: dict[str, Node]
    scp: StoreSCP
    jobs: JobsClient
    tmp: Path

    def node_of(self, job: Job) -> Node:
        return self.nodes[job.node]


def _node(tmp: Path, name: str, catalog: ConfiguredReplica, streams: Path, scp: StoreSCP) -> Node:
    data_dir = tmp / name
    data_dir.mkdir()
    port = free_port()
    config = data_dir / "node.toml"
    config.write_text(
        f'name = "{name}"\ndata_dir = "{data_dir}"\nstreams_dir = "{streams}"\n'
        f'[dicom]\nae_title = "{name.upper()}"\nhost = "{HOST}"\nport = {port}\n'
        f'[dicom.destinations]\n{scp.ae_title} = {{ host = "{HOST}", port = {scp.port} }}\n'
        f'[catalog]\naddresses = ["{catalog.address}"]\ninsecure = true\n'
        "publish_identified = true\npublish_interval = 0.2\n"
        "[worker]\nmax_jobs = 2\nreport_interval = 0.5\nlease_wait = 1.0\nkill_grace = 0.5\n"
    )
    return Node(
        name=name,
        log_path=tmp / f"{name}.log",
        data_dir=data_dir,
        port=port,
        ae_title=name.upper(),
        config_file=config,
    )


@pytest.fixture(scope="module")
def grid(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Grid]:
    tmp = tmp_path_factory.mktemp("streams-grid")
    streams = tmp / "streams"
    streams.mkdir()
    _manifest(streams, "invert")
    _manifest(streams, "slow", "--sleep", "4")
    _manifest(streams, "fail", "--exit-code", "3")
    _manifest(streams, "stall", "--sleep", "60", "--slow-attempts", "1")
    (streams / "broken.json").write_text('{"name": "broken", "AETitle": "BROKEN"}')
    # a stream only site B offers: its jobs run there whoever holds the study
    streams_b = tmp / "streams-b"
    shutil.copytree(streams, streams_b)
    _manifest(streams_b, "onlyb", destination="STORESCP")
    catalog = ConfiguredReplica("sched", tmp)
    catalog.start()
    scp = StoreSCP(
        name="storescp", log_path=tmp / "scp.log", port=free_port(), out_dir=tmp / "received"
    ).start()
    nodes = {
        "sitea": _node(tmp, "sitea", catalog, streams, scp),
        "siteb": _node(tmp, "siteb", catalog, streams_b, scp),
    }
    starting = [threading.Thread(target=node.start) for node in nodes.values()]
    for thread in starting:
        thread.start()
    for thread in starting:
        thread.join()
    assert all(node.running() for node in nodes.values())
    jobs = JobsClient([catalog.address], timeout=5.0)
    try:
        yield Grid(catalog, nodes, scp, jobs, tmp)
    finally:
        jobs.close()
        stopping = [threading.Thread(target=node.terminate) for node in nodes.values()]
        for thread in stopping:
            thread.start()
        for thread in stopping:
            thread.join()
        scp.terminate()
        catalog.stop()


def _wait(what: str, probe: Callable[[], T | None], timeout: float = 60.0) -> T:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = probe()
        except CatalogError:
            value = None  # the catalog is restarting
        if value:
            return value
        time.sleep(0.2)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}", False)


def _send(grid: Grid, node: Node, called: str, patient: str, count: int = 2) -> str:
    """storescu a new study (``count`` instances) as STORESCP to ``called`` on ``node``."""
    spec = StudySpec(patient_id=patient, patient_name=f"{patient}^TEST")
    folder = grid.tmp / f"send-{patient}-{called}"
    folder.mkdir()
    for n in range(1, count + 1):
        make_dataset(spec, instance_number=n, rows=8, columns=8).save_as(
            folder / f"{n}.dcm", enforce_file_format=True
        )
    sent = run_dcmtk(
        "storescu",
        "-aet",
        grid.scp.ae_title,
        "-aec",
        called,
        HOST,
        str(node.port),
        "+sd",
        str(folder),
    )
    assert sent.returncode == 0, describe(sent)
    return spec.study_uid


def _resend(grid: Grid, node: Node, called: str, study_folder: Path) -> None:
    sent = run_dcmtk(
        "storescu",
        "-aet",
        grid.scp.ae_title,
        "-aec",
        called,
        HOST,
        str(node.port),
        "+sd",
        str(study_folder),
    )
    assert sent.returncode == 0, describe(sent)


def _job_of(grid: Grid, stream: str, study: str) -> Job | None:
    found = [j for j in grid.jobs.list_jobs(stream=stream) if j.study_instance_uid == study]
    assert len(found) <= 1, f"more than one job for one study: {found}"
    return found[0] if found else None


def _final(grid: Grid, stream: str, study: str, timeout: float = 90.0) -> Job:
    return _wait(
        f"the {stream} job to end",
        lambda: j if (j := _job_of(grid, stream, study)) is not None and j.state.final else None,
        timeout,
    )


def _commands_in(folder: Path) -> list[int]:
    """Processes whose working directory is inside ``folder`` (a node's attempt folders)."""
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cwd = Path(os.readlink(proc / "cwd"))
            except OSError:
                continue
            if cwd.is_relative_to(folder.resolve()):
                pids.append(int(proc.name))
    return pids


def _received(grid: Grid, study: str) -> list:  # type: ignore[type-arg]
    out = []
    for path in grid.scp.received():
        ds = dcmread(path, stop_before_pixels=True)
        if ds.StudyInstanceUID == study:
            out.append(ds)
    return out


def test_study_sent_to_a_stream_comes_back_as_a_derived_series(grid: Grid) -> None:
    node_a = grid.nodes["sitea"]
    study = _send(grid, node_a, "INVERT", "E2E1", count=3)
    job = _final(grid, "invert", study)
    assert job.state is JobState.SUCCEEDED, job
    assert (job.origin_node, job.reply_ae_title, job.attempt) == ("sitea", "STORESCP", 1)
    assert job.node == "sitea", "placed on the node that holds the study"
    (series,) = job.output_series_instance_uids
    received = _wait(
        "3 derived instances at the storescp",
        lambda: r if len(r := _received(grid, study)) >= 3 else None,
        20,
    )
    assert len(received) == 3
    assert {ds.SeriesInstanceUID for ds in received} == {series}
    assert all(ds.ImageType[0] == "DERIVED" for ds in received)
    found = _wait(
        "the derived series in the grid",
        lambda: _grid_find_soon(
            node_a.port,
            "SERIES",
            StudyInstanceUID=study,
            SeriesInstanceUID=series,
            NumberOfSeriesRelatedInstances="",
        ),
        20,
    )
    assert int(found[0].NumberOfSeriesRelatedInstances) == 3
    logs = grid.jobs.get_job_logs(job.id).logs.decode()
    assert "invert: 3 input files" in logs and "routed 3 instances to STORESCP" in logs


def test_a_bad_manifest_is_reported_at_start_and_the_others_serve(grid: Grid) -> None:
    for name, node in grid.nodes.items():
        log = node.log_text()
        assert "event=stream_manifest_invalid" in log and "broken.json" in log
        assert "command: Field required" in log
        ready = next(line for line in log.splitlines() if "event=node_ready" in line)
        offered = "fail,invert,onlyb,slow,stall" if name == "siteb" else "fail,invert,slow,stall"
        assert f'streams="{offered}"' in ready and "worker=on" in ready


def test_a_node_without_the_study_fetches_it_from_the_holder(grid: Grid) -> None:
    """Placement near the data when it can, elsewhere when it must: only site B offers the
    stream, site A holds the study; B's worker gathers the input over the peer service."""
    study = _send(grid, grid.nodes["sitea"], "SITEA", "E2E7", count=3)
    _wait(
        "the study in the catalog",
        lambda: _grid_find_soon(grid.nodes["siteb"].port, "STUDY", StudyInstanceUID=study),
        20,
    )
    (_job,) = grid.jobs.submit_jobs("onlyb", study_instance_uids=[study])
    job = _final(grid, "onlyb", study)
    assert job.state is JobState.SUCCEEDED, job
    assert job.node == "siteb" and "sitea" in job.input_holders
    logs = grid.jobs.get_job_logs(job.id).logs.decode()
    assert "input: 3 instances (0 local, 3 fetched from holders)" in logs
    received = _wait("the derived series", lambda: _received(grid, study), 20)
    assert len(received) == 3


def test_failing_command_is_retried_then_failed_with_its_logs(grid: Grid) -> None:
    study = _send(grid, grid.nodes["siteb"], "FAIL", "E2E2")
    job = _final(grid, "fail", study)
    assert job.state is JobState.FAILED
    assert job.attempt == 2 and job.max_attempts == 2
    assert job.error == "command exited with status 3" and job.exit_code == 3
    logs = grid.jobs.get_job_logs(job.id).logs.decode()
    assert "failing on purpose" in logs and "error: exit code 3 requested" in logs
    assert "attempt 2/2" in logs
    first = grid.jobs.get_job_logs(job.id, attempt=1)
    assert first.attempt == 1 and b"attempt 1/2" in first.logs
    shown = gridpacs_cli("jobs", "logs", "--catalog", grid.catalog.address, job.id)
    assert shown.returncode == 0, describe(shown)
    assert "failing on purpose" in shown.stdout


def test_catalog_restarted_mid_job_the_job_finishes_once(grid: Grid) -> None:
    a = grid.nodes["sitea"]
    study = _send(grid, a, "SLOW", "E2E4")
    running = _wait(
        "the slow job to run",
        lambda: j if (j := _job_of(grid, "slow", study)) and j.state is JobState.RUNNING else None,
    )
    grid.catalog.kill()
    time.sleep(1.0)
    grid.catalog.start()
    job = _final(grid, "slow", study, timeout=120)
    assert job.state is JobState.SUCCEEDED, job
    assert job.id == running.id and job.attempt == 1, "the lease outlived the catalog restart"
    received = _wait("the derived series", lambda: _received(grid, study), 20)
    time.sleep(1.0)
    received = _received(grid, study)
    assert len({ds.SeriesInstanceUID for ds in received}) == 1, "the job ran once"
    assert len(received) == 2


def test_cancelling_a_running_job_stops_its_command(grid: Grid) -> None:
    a = grid.nodes["sitea"]
    study = _send(grid, a, "SLOW", "E2E5")
    running = _wait(
        "the slow job to run",
        lambda: j if (j := _job_of(grid, "slow", study)) and j.state is JobState.RUNNING else None,
    )
    node = grid.node_of(running)
    _wait("the command to start", lambda: _commands_in(node.data_dir / "jobs"), 10)
    grid.jobs.cancel_job(running.id)
    _wait(
        "the command to be stopped",
        lambda: not _commands_in(node.data_dir / "jobs") or None,
        LEASE_S,
    )
    job = _final(grid, "slow", study, timeout=30)
    assert job.state is JobState.CANCELLED, job
    assert _received(grid, study) == []
    assert "cancelled" in grid.jobs.get_job_logs(job.id).logs.decode()


def test_catalog_away_longer_than_a_lease_the_worker_stops_its_command(grid: Grid) -> None:
    """Fencing: a worker that cannot renew for a whole lease kills its command, so the job,
    placed again when the catalog is back, never runs in two places at once."""
    a = grid.nodes["sitea"]
    study = _send(grid, a, "STALL", "E2E6")
    running = _wait(
        "the stalling job to run",
        lambda: j if (j := _job_of(grid, "stall", study)) and j.state is JobState.RUNNING else None,
    )
    node = grid.node_of(running)
    _wait("the command to start", lambda: _commands_in(node.data_dir / "jobs"), 10)
    grid.catalog.kill()
    try:
        _wait(
            "the worker to stop its command",
            lambda: not _commands_in(node.data_dir / "jobs") or None,
            LEASE_S + 6,
        )
        assert "event=job_lease_expired" in node.log_text()
    finally:
        grid.catalog.start()
    job = _final(grid, "stall", study, timeout=120)
    assert job.state is JobState.SUCCEEDED, job
    assert job.attempt == 2, "the fenced attempt does not count as a success"
    received = _wait("the derived series", lambda: _received(grid, study), 20)
    assert len({ds.SeriesInstanceUID for ds in received}) == 1


def test_node_killed_mid_job_the_job_completes_on_the_other_node(grid: Grid) -> None:
    a, b = grid.nodes["sitea"], grid.nodes["siteb"]
    study = _send(grid, a, "SITEA", "E2E3")  # archived on A ...
    _resend(grid, b, "SITEB", grid.tmp / "send-E2E3-SITEA")  # ... and on B
    _resend(grid, a, "SLOW", grid.tmp / "send-E2E3-SITEA")  # then processed
    running = _wait(
        "the slow job to run",
        lambda: j if (j := _job_of(grid, "slow", study)) and j.state is JobState.RUNNING else None,
    )
    victim = grid.node_of(running)
    time.sleep(1.0)  # the command is mid-way
    assert _commands_in(victim.data_dir / "jobs"), "the command runs in the victim's folder"
    victim.kill()  # last test of the module: the victim stays down
    _wait(
        "the victim's command to die with it",
        lambda: not _commands_in(victim.data_dir / "jobs") or None,
        10,
    )
    job = _final(grid, "slow", study, timeout=120)
    assert job.state is JobState.SUCCEEDED, job
    assert job.node != running.node and job.attempt == 2
    received = _wait("the derived series", lambda: _received(grid, study), 20)
    assert len(received) == 2 and len({ds.SeriesInstanceUID for ds in received}) == 1
