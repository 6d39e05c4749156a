"""JobService behind mTLS and tokens: workers need a host certificate, researchers a role."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from catalog.app import CatalogApp, build_app
from catalog.config import CatalogConfig, SecurityConfig, TlsConfig
from catalog.errors import CatalogRejected
from catalog.jobs.records import JobState, Outcome
from catalog.jobs_client import JobsClient
from catalog.records import QueryFilter
from catalog.security import AuditLog, TokenStore, channel_credentials, init_ca, issue, load_pepper
from catalog.security.tokens import write_pepper
from tests.catalog.builders import Outbox, StudyBuilder
from tests.catalog.jobs_helpers import report
from tests.catalog.processes import free_port

pytestmark = pytest.mark.timeout(60)
JOBS = "/gridpacs.catalog.v1.JobService/"


@pytest.fixture
def secured(tmp_path: Path) -> Iterator[tuple[CatalogApp, Path]]:
    init_ca(tmp_path / "ca", "testgrid")
    files = issue(tmp_path / "ca", tmp_path / "catalog", "127.0.0.1")
    app = build_app(
        CatalogConfig(
            name="cat-jobs",
            port=free_port(),
            db_url=f"sqlite:///{tmp_path / 'cat.sqlite'}",
            tls=TlsConfig(cert=files.cert, key=files.key, ca=files.ca_cert),
            security=SecurityConfig(pepper_file=write_pepper(tmp_path / "pepper")),
        )
    )
    outbox = Outbox("site-a")
    app.service.apply_changes("site-a", outbox.added(StudyBuilder("C1").instances(1)))
    app.service.apply_changes(
        "site-a", outbox.added(StudyBuilder("L1", collection="lung").instances(1))
    )
    app.start()
    try:
        yield app, tmp_path
    finally:
        app.stop(grace=0)


def _token(app: CatalogApp, grants: dict[str, str]) -> str:
    assert app.config.security is not None
    store = TokenStore(app.engine, load_pepper(app.config.security.pepper_file))
    return store.create("alice", grants, None).plaintext


def test_workers_need_a_host_certificate_and_researchers_a_role(
    secured: tuple[CatalogApp, Path],
) -> None:
    app, tmp = secured
    address = [f"127.0.0.1:{app.port}"]
    node = issue(tmp / "ca", tmp / "node", "127.0.0.1")
    host = JobsClient(address, credentials=channel_credentials(node.cert, node.key, node.ca_cert))
    user = issue(tmp / "ca", tmp / "alice", "alice", roles=("client",))
    user_creds = channel_credentials(user.cert, user.key, user.ca_cert)
    uids = {
        m.holders[0].collection: m.study_instance_uid
        for m in app.service.query_studies(QueryFilter())
    }
    lung_uid, clinical_uid = uids["lung"], uids["clinical"]
    reader = JobsClient(address, credentials=user_creds, token=_token(app, {"*": "reader"}))
    admin = JobsClient(address, credentials=user_creds, token=_token(app, {"lung": "admin"}))
    with host, reader, admin:
        host.report_worker(report("site-a"))
        # a researcher's token is no host certificate: it cannot act as a worker
        with pytest.raises(CatalogRejected) as not_a_host:
            admin.report_worker(report("site-x"))
        assert not_a_host.value.code == "UNAUTHENTICATED"
        with pytest.raises(CatalogRejected) as not_a_worker:
            admin.lease_job("site-a")
        assert not_a_worker.value.code == "UNAUTHENTICATED"
        # readers may look but not submit; an admin of 'lung' submits on 'lung' only
        with pytest.raises(CatalogRejected) as denied:
            reader.submit_jobs("segment", study_instance_uids=[lung_uid])
        assert denied.value.code == "PERMISSION_DENIED"
        with pytest.raises(CatalogRejected) as other_collection:
            admin.submit_jobs("segment", study_instance_uids=[clinical_uid])
        assert other_collection.value.code == "PERMISSION_DENIED"
        [job] = admin.submit_jobs("segment", study_instance_uids=[lung_uid])
        assert job.submitted_by == "alice" and job.collection == "lung"
        [node_job] = host.submit_jobs("segment", study_instance_uids=[clinical_uid])
        assert node_job.submitted_by.startswith("cert:")

        assert {j.id for j in reader.list_jobs()} == {job.id, node_job.id}
        assert [j.id for j in admin.list_jobs()] == [job.id]  # admin of lung reads lung only
        with pytest.raises(CatalogRejected) as denied_cancel:
            reader.cancel_job(job.id)
        assert denied_cancel.value.code == "PERMISSION_DENIED"
        assert admin.cancel_job(job.id).state is JobState.CANCELLED
        lease = host.lease_job("site-a", 5)
        assert lease is not None and lease.job.id == node_job.id
        host.finish_job(lease.job.id, lease.token, Outcome(succeeded=True))

    actions = [r.action for r in AuditLog(app.engine).query()]
    assert actions.count(JOBS + "SubmitJobs") == 4  # refused ones too
    assert JOBS + "CancelJob" in actions and JOBS + "FinishJob" in actions
    assert JOBS + "ReportWorker" not in actions  # heartbeats are not audited
