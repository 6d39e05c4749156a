"""Processing streams on identified data that may not leave the site, across real processes:
a catalog (the scheduler) and a node without ``publish_identified``, both ``gridpacs …
serve``, DCMTK storescu as the modality and storescp as the workstation.

DICOM PS3.15 counts UIDs as identifiers. A study sent to a stream AE of the identified
default collection must run and come back as before, yet the catalog — its database file,
its log and what ``gridpacs jobs`` shows — never learns the study's UID nor the derived
series' UIDs: it knows the job by the node's study reference. A stream on a collection
that leaves the site still names the real UIDs.
"""

from __future__ import annotations

import json
import re
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import FileDataset

from catalog.jobs.records import Job, JobState, is_study_reference
from catalog.jobs_client import JobsClient
from tests.catalog.processes import REPO
from tests.factories import StudySpec, make_dataset
from tests.integration.processes import (
    HOST,
    REPO_ROOT,
    Node,
    StoreSCP,
    describe,
    free_port,
    run_dcmtk,
    subprocess_env,
)
from tests.integration.test_streams_grid import ConfiguredReplica, _wait

pytestmark = pytest.mark.timeout(180)
INVERT = REPO / "docs" / "examples" / "streams" / "invert" / "invert.py"


def _manifest(folder: Path, name: str, collection: str = "") -> None:
    (folder / f"{name}.json").write_text(
        json.dumps(
            {
                "name": name,
                "version": "1.0",
                "AETitle": name.upper(),
                "command": ["{python}", str(INVERT)],
                "time_limit_seconds": 60,
                "destination": "sender",
                "max_attempts": 1,
                "collection": collection,
            }
        )
    )


@dataclass
class Site:
    catalog: ConfiguredReplica
    node: Node
    scp: StoreSCP
    jobs: JobsClient
    tmp: Path

    def catalog_bytes(self) -> bytes:
        """Everything the catalog wrote: its SQLite file (with WAL and journal) and its log."""
        files = [*sorted(self.tmp.glob(f"{self.catalog.name}.sqlite*")), self.catalog.log_path]
        assert files[0].name == f"{self.catalog.name}.sqlite"
        return b"".join(path.read_bytes() for path in files if path.exists())


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    tmp = tmp_path_factory.mktemp("streams-private")
    streams = tmp / "streams"
    streams.mkdir()
    _manifest(streams, "invert")  # the node's identified default collection
    _manifest(streams, "shared", collection="research")  # a collection that leaves the site
    catalog = ConfiguredReplica("sched", tmp)
    catalog.start()
    scp = StoreSCP(
        name="storescp", log_path=tmp / "scp.log", port=free_port(), out_dir=tmp / "received"
    ).start()
    data_dir = tmp / "site"
    data_dir.mkdir()
    port = free_port()
    config = data_dir / "node.toml"
    config.write_text(
        f'name = "site"\ndata_dir = "{data_dir}"\nstreams_dir = "{streams}"\n'
        f'[dicom]\nae_title = "SITE"\nhost = "{HOST}"\nport = {port}\n'
        f'[dicom.destinations]\n{scp.ae_title} = {{ host = "{HOST}", port = {scp.port} }}\n'
        f'[catalog]\naddresses = ["{catalog.address}"]\ninsecure = true\n'
        "publish_identified = false\npublish_interval = 0.2\n"
        "[worker]\nmax_jobs = 2\nreport_interval = 0.5\nlease_wait = 1.0\nkill_grace = 0.5\n"
    )
    node = Node(
        name="site",
        log_path=tmp / "site.log",
        data_dir=data_dir,
        port=port,
        ae_title="SITE",
        config_file=config,
    ).start()
    jobs = JobsClient([catalog.address], timeout=5.0)
    try:
        yield Site(catalog, node, scp, jobs, tmp)
    finally:
        jobs.close()
        node.terminate()
        scp.terminate()
        catalog.stop()


def _send(site: Site, called: str, patient: str, count: int = 2) -> tuple[StudySpec, list[str]]:
    """storescu a new study as STORESCP; its spec and SOPInstanceUIDs."""
    spec = StudySpec(patient_id=patient, patient_name=f"{patient}^PRIVATE")
    folder = site.tmp / f"send-{patient}"
    folder.mkdir()
    sops = []
    for n in range(1, count + 1):
        ds = make_dataset(spec, instance_number=n, rows=8, columns=8)
        ds.save_as(folder / f"{n}.dcm", enforce_file_format=True)
        sops.append(str(ds.SOPInstanceUID))
    sent = run_dcmtk(
        "storescu",
        "-aet",
        site.scp.ae_title,
        "-aec",
        called,
        HOST,
        str(site.node.port),
        "+sd",
        str(folder),
    )
    assert sent.returncode == 0, describe(sent)
    return spec, sops


def _final_job(site: Site, stream: str) -> Job:
    """The stream's one job, once it ended (each test uses its own stream)."""

    def probe() -> Job | None:
        found = site.jobs.list_jobs(stream=stream)
        assert len(found) <= 1, found
        return found[0] if found and found[0].state.final else None

    return _wait(f"the {stream} job to end", probe, 90)


def _received(site: Site, study: str, count: int) -> list[FileDataset]:
    def probe() -> list[FileDataset] | None:
        found = [
            ds
            for path in site.scp.received()
            if (ds := dcmread(path, stop_before_pixels=True)).StudyInstanceUID == study
        ]
        return found if len(found) >= count else None

    return _wait(f"{count} derived instances at the storescp", probe, 20)


def _jobs_cli(site: Site, *args: str) -> str:
    """``gridpacs jobs …`` as an operator runs it (a wide terminal: rows are not folded)."""
    shown = subprocess.run(
        [sys.executable, "-m", "gridpacs", "jobs", *args, "--catalog", site.catalog.address],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO_ROOT,
        env=subprocess_env(COLUMNS="200"),
    )
    assert shown.returncode == 0, describe(shown)
    return shown.stdout


def test_identified_study_runs_without_its_uids_reaching_the_catalog(site: Site) -> None:
    spec, sops = _send(site, "INVERT", "PRIV1")
    study = spec.study_uid
    job = _final_job(site, "invert")
    assert job.state is JobState.SUCCEEDED, job
    assert is_study_reference(job.study_instance_uid), job.study_instance_uid
    assert (job.node, job.origin_node, job.collection) == ("site", "site", "local")
    assert job.output_series_instance_uids == () and job.output_series_count == 1

    received = _received(site, study, 2)  # routed back exactly as before
    assert all(ds.ImageType[0] == "DERIVED" for ds in received)
    (derived,) = {str(ds.SeriesInstanceUID) for ds in received}
    secrets = [study, spec.series_uid, *sops, derived, *(str(ds.SOPInstanceUID) for ds in received)]

    listed = _jobs_cli(site, "list", "--json")
    [entry] = [j for j in json.loads(listed) if j["id"] == job.id]
    assert entry["study_instance_uid"] == job.study_instance_uid, "shown as it is"
    assert entry["output_series_count"] == 1 and entry["output_series_instance_uids"] == []
    shown = _jobs_cli(site, "show", job.id)
    assert job.study_instance_uid in shown and "1 kept at node site" in shown
    logs = _jobs_cli(site, "logs", job.id)
    assert "logs kept at node site" in logs and "does not leave the site" in logs

    stored = site.catalog_bytes()
    assert job.study_instance_uid.encode() in stored, "the search does see the job's values"
    for uid in secrets:
        assert uid not in listed and uid not in shown and uid not in logs
        assert uid.encode() not in stored, f"{uid} reached the catalog"
    with sqlite3.connect(site.tmp / f"{site.catalog.name}.sqlite") as db:
        rows = db.execute("SELECT * FROM catalog_jobs").fetchall()
        attempts = db.execute("SELECT * FROM catalog_job_attempts").fetchall()
    text = repr(rows) + repr(attempts)
    assert job.study_instance_uid in text
    assert not any(uid in text for uid in secrets)

    # the node keeps the mapping, and the UIDs, at the site
    with sqlite3.connect(site.node.data_dir / "index.sqlite") as db:
        mapped = db.execute(
            "SELECT study_instance_uid, collection FROM study_references WHERE reference = ?",
            (job.study_instance_uid,),
        ).fetchall()
    assert mapped == [(study, "local")]
    secret = site.node.data_dir / "secrets" / "stream-ref.secret"
    assert secret.stat().st_mode & 0o777 == 0o600


def test_a_collection_that_leaves_the_site_still_names_the_real_uids(site: Site) -> None:
    spec, _ = _send(site, "SHARED", "PUB1")
    study = spec.study_uid
    job = _final_job(site, "shared")
    assert job.state is JobState.SUCCEEDED, job
    assert job.study_instance_uid == study and job.collection == "research"
    received = _received(site, study, 2)
    (derived,) = {str(ds.SeriesInstanceUID) for ds in received}
    assert job.output_series_instance_uids == (derived,) and job.output_series_count == 1
    listed = _jobs_cli(site, "list", "--json")
    assert study in listed and derived in listed
    assert re.search(rb"event=job_finished job=%s " % job.id.encode(), site.catalog_bytes())
    assert study.encode() in site.catalog_bytes()
