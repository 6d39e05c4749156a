"""A study C-STOREd to a stream's AE title becomes one job per study when the association
is released — stored first like any C-STORE, the request persisted before it is submitted,
and submitted again after the scheduler was unreachable. DCMTK storescu is the sender."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]

from catalog import CatalogRejected, CatalogUnavailable
from node.app import NodeApp, build_routes
from node.config import load_config
from node.index.records import IndexQuery, Level
from node.routing import Router
from node.streams.references import StudyReferences, load_or_create_secret
from node.streams.registry import load_streams
from node.streams.trigger import JobRequest, StreamTrigger
from tests.factories import StudySpec, make_dataset
from tests.integration.processes import REPO_ROOT, describe, run_dcmtk

pytestmark = pytest.mark.timeout(60)
EXAMPLES = REPO_ROOT / "docs" / "examples" / "streams"


class RecordingSubmitter:
    """A JobSubmitter that records requests; unreachable while ``down`` is set."""

    def __init__(self) -> None:
        self.requests: list[JobRequest] = []
        self.down = threading.Event()
        self.refuse = False
        self.calls = 0

    def submit(self, request: JobRequest) -> list[str]:
        self.calls += 1
        if self.down.is_set():
            raise CatalogUnavailable("no catalog replica answered SubmitJobs")
        if self.refuse:
            raise CatalogRejected("NOT_FOUND: unknown stream", code="NOT_FOUND")
        self.requests.append(request)
        return [f"job-{len(self.requests)}-{n}" for n in range(len(request.study_instance_uids))]


def _wait(condition: object, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return
        time.sleep(0.05)
    raise AssertionError("timed out")


@pytest.fixture
def submitter() -> RecordingSubmitter:
    return RecordingSubmitter()


@pytest.fixture
def node(tmp_path: Path, submitter: RecordingSubmitter) -> Iterator[tuple[NodeApp, StreamTrigger]]:
    cfg = load_config(
        None, {"name": "site-a", "data_dir": str(tmp_path / "node"), "dicom": {"port": 0}}
    )
    app = NodeApp(cfg)
    # wired as NodeApp does with a catalog, with the scheduler replaced by the recorder
    app.gateway.router = app.router = Router(build_routes(cfg, load_streams(EXAMPLES)))
    trigger = StreamTrigger(
        submitter,
        cfg.trigger_dir,
        origin_node="site-a",
        outbox_position=app.index.last_change_seq,
        retry_interval=0.2,
        refusal_grace=1.0,
    )
    app.gateway.streams = trigger
    app.start()
    trigger.start()
    yield app, trigger
    trigger.stop()
    app.stop()


def _write_studies(folder: Path, studies: int, per_study: int) -> list[str]:
    uids = []
    for s in range(studies):
        spec = StudySpec(patient_id=f"TRG{s}")
        uids.append(spec.study_uid)
        for n in range(1, per_study + 1):
            ds = make_dataset(spec, instance_number=n, rows=8, columns=8)
            ds.save_as(folder / f"{s}-{n}.dcm", enforce_file_format=True)
    return uids


def test_released_association_submits_one_job_per_study(
    node: tuple[NodeApp, StreamTrigger], submitter: RecordingSubmitter, tmp_path: Path
) -> None:
    app, trigger = node
    folder = tmp_path / "send"
    folder.mkdir()
    uids = _write_studies(folder, studies=2, per_study=3)
    sent = run_dcmtk(
        "storescu",
        "-aet",
        "MODALITY",
        "-aec",
        "INVERT",
        "127.0.0.1",
        str(app.dicom.port),
        "+sd",
        str(folder),
    )
    assert sent.returncode == 0, describe(sent)
    _wait(lambda: submitter.requests)
    (request,) = submitter.requests
    assert request.stream == "invert"
    assert sorted(request.study_instance_uids) == sorted(uids)
    assert (request.origin_node, request.reply_ae_title, request.collection) == (
        "site-a",
        "MODALITY",
        "local",
    )
    assert request.after_change_seq == app.index.last_change_seq()
    assert request.request_id.startswith("site-a/") and len(request.request_id) > 20
    assert list(trigger.submitted) == ["job-1-0", "job-1-1"]
    assert trigger.pending() == []
    stored = list(app.index.instances(IndexQuery(level=Level.IMAGE, collections=("local",))))
    assert len(stored) == 6, "instances are stored before any job exists"


def test_requests_survive_an_unreachable_scheduler(
    node: tuple[NodeApp, StreamTrigger], submitter: RecordingSubmitter, tmp_path: Path
) -> None:
    app, trigger = node
    submitter.down.set()
    folder = tmp_path / "send"
    folder.mkdir()
    _write_studies(folder, studies=1, per_study=2)
    sent = run_dcmtk(
        "storescu",
        "-aet",
        "MODALITY",
        "-aec",
        "INVERT",
        "127.0.0.1",
        str(app.dicom.port),
        "+sd",
        str(folder),
    )
    assert sent.returncode == 0, describe(sent)
    _wait(lambda: submitter.calls >= 2)
    (pending,) = trigger.pending()
    assert '"stream": "invert"' in pending.read_text()
    trigger.stop()
    # a new trigger (the node restarted) submits what the previous one could not
    submitter.down.clear()
    again = StreamTrigger(
        submitter, app.config.trigger_dir, origin_node="site-a", retry_interval=0.2
    )
    again.start()
    try:
        _wait(lambda: submitter.requests)
        assert again.pending() == []
        assert submitter.requests[0].reply_ae_title == "MODALITY"
        # the persisted request kept its id: a resend is recognised by the catalog
        assert submitter.requests[0].request_id.startswith("site-a/")
    finally:
        again.stop()


def test_refused_request_is_kept_aside_and_aborted_association_submits_nothing(
    node: tuple[NodeApp, StreamTrigger],
    submitter: RecordingSubmitter,
    caplog: pytest.LogCaptureFixture,
) -> None:
    app, trigger = node
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(CTImageStorage)
    assoc = ae.associate("127.0.0.1", app.dicom.port, ae_title="INVERT")
    assert assoc.is_established
    status = assoc.send_c_store(make_dataset(StudySpec(), rows=8, columns=8))
    assert status.Status == 0
    assoc.abort()
    _wait(lambda: "event=stream_trigger_skipped" in caplog.text)
    assert "association aborted" in caplog.text
    time.sleep(0.5)
    assert submitter.calls == 0 and trigger.pending() == []

    submitter.refuse = True
    assoc = ae.associate("127.0.0.1", app.dicom.port, ae_title="INVERT")
    assert assoc.send_c_store(make_dataset(StudySpec(), rows=8, columns=8)).Status == 0
    assoc.release()
    failed = app.config.trigger_dir / "failed"
    _wait(lambda: failed.is_dir() and any(failed.iterdir()))
    assert trigger.pending() == []
    assert "event=stream_submit_refused" in caplog.text and "unknown stream" in caplog.text
    assert submitter.calls >= 2, "a refusal is retried for a while (workers may not be known yet)"


def test_studies_that_stay_home_are_submitted_by_reference(
    tmp_path: Path, submitter: RecordingSubmitter
) -> None:
    """The node's own policy decides per collection: 'local' (identified, unpublished) is
    named by a reference kept in the index, 'research' by its UID."""
    cfg = load_config(
        None, {"name": "site-a", "data_dir": str(tmp_path / "node"), "dicom": {"port": 0}}
    )
    app = NodeApp(cfg)
    refs = StudyReferences(load_or_create_secret(cfg.secrets_dir / "stream-ref.secret"), app.index)
    trigger = StreamTrigger(
        submitter,
        cfg.trigger_dir,
        origin_node="site-a",
        retry_interval=0.2,
        name_study=lambda collection, uid: (
            uid if collection != "local" else refs.refer(uid, collection)
        ),
    )
    try:
        for n, collection in enumerate(("local", "research", "local")):
            trigger.stored(n, stream="invert", study_instance_uid=f"1.2.840.7.{n}",
                           collection=collection, calling_ae="MODALITY")  # fmt: skip
            trigger.ended(n, released=True)
        pending = [p.read_text() for p in trigger.pending()]
        assert '"1.2.840.7.0"' in pending[0], "the pending file keeps the UID, on this node"
        trigger.start()
        _wait(lambda: len(submitter.requests) == 3)
        named = [r.study_instance_uids[0] for r in submitter.requests]
        assert named[1] == "1.2.840.7.1"
        for n in (0, 2):
            assert named[n].startswith("ref:") and "1.2.840" not in named[n]
            assert app.index.study_of_reference(named[n]) == f"1.2.840.7.{n}"
        assert named[0] != named[2], "one reference per study"
    finally:
        trigger.stop()
        app.index.close()
