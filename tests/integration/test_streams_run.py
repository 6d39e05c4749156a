"""One job attempt end to end in a node, without the scheduler: the example stream's real
command runs on a stored study, its outputs become a derived series that is stored,
indexed and C-STOREd to a DCMTK storescp named as the sender."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread

from catalog.jobs.records import Job, JobPriority, JobState
from node.app import NodeApp
from node.config import Destination, load_config
from node.dicom.scu import send_files
from node.index.records import IndexQuery, Level
from node.services.ingest import StoreRequest
from node.streams.inputs import InputGatherer
from node.streams.references import StudyReferences, load_or_create_secret
from node.streams.registry import load_streams
from node.streams.runner import JobRunner, RunnerSettings
from tests.factories import StudySpec, make_dataset, to_bytes
from tests.integration.processes import REPO_ROOT, StoreSCP, free_port

pytestmark = pytest.mark.timeout(90)
EXAMPLES = REPO_ROOT / "docs" / "examples" / "streams"


@pytest.fixture(scope="module")
def scp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StoreSCP]:
    directory = tmp_path_factory.mktemp("scp")
    scp = StoreSCP(
        name="storescp",
        log_path=directory / "scp.log",
        port=free_port(),
        out_dir=directory / "received",
    ).start()
    yield scp
    scp.terminate()


@pytest.fixture
def node(tmp_path: Path, scp: StoreSCP) -> Iterator[NodeApp]:
    cfg = load_config(
        None,
        {
            "name": "site-a",
            "data_dir": str(tmp_path / "node"),
            "dicom": {
                "port": 0,
                "destinations": {scp.ae_title: {"host": "127.0.0.1", "port": scp.port}},
            },
        },
    )
    app = NodeApp(cfg)
    yield app
    app.index.close()


def _runner(
    app: NodeApp, streams_dir: Path, destinations: dict[str, Destination] | None = None
) -> JobRunner:
    cfg = app.config
    destinations = destinations or dict(cfg.dicom.destinations)
    settings = RunnerSettings(
        cfg.name, cfg.dicom.ae_title, cfg.default_collection, cfg.jobs_dir, kill_grace=0.5
    )
    return JobRunner(
        settings,
        load_streams(streams_dir, destinations=set(destinations)),
        InputGatherer(app.index, app.store, None, None),
        app.ingest,
        destinations,
        send=lambda ae, where, files: send_files(
            cfg.dicom.ae_title, ae, where.host, where.port, files
        ),
    )


def _store_study(app: NodeApp, count: int) -> list:  # type: ignore[type-arg]
    spec = StudySpec(patient_id="STRM01", patient_name="DOE^JOHN")
    datasets = [
        make_dataset(spec, instance_number=n, rows=8, columns=8) for n in range(1, count + 1)
    ]
    for ds in datasets:
        app.ingest.store(
            StoreRequest(to_bytes(ds), "MODALITY", "GRIDPACS", ds.SOPClassUID, ds.SOPInstanceUID),
            collection="local",
        )
    return datasets


def _job(study: str, reply: str, stream: str = "invert", attempt: int = 1) -> Job:
    return Job(
        id="job-1",
        stream=stream,
        study_instance_uid=study,
        collection="",
        state=JobState.RUNNING,
        priority=JobPriority.NORMAL,
        attempt=attempt,
        max_attempts=2,
        origin_node="site-a",
        reply_ae_title=reply,
    )


def test_outputs_become_a_derived_series_stored_and_routed(node: NodeApp, scp: StoreSCP) -> None:
    scp.clear()
    sources = _store_study(node, 3)
    study = str(sources[0].StudyInstanceUID)
    outcome = _runner(node, EXAMPLES).run(_job(study, scp.ae_title), threading.Event())
    assert outcome.succeeded, outcome.logs.decode()
    assert len(outcome.output_series_instance_uids) == 1
    derived_series = outcome.output_series_instance_uids[0]
    assert derived_series.startswith("2.25.")
    logs = outcome.logs.decode()
    assert "invert: 3 input files" in logs and "routed 3 instances to STORESCP" in logs

    by_sop = {str(ds.SOPInstanceUID): ds for ds in sources}
    received = [dcmread(p) for p in scp.received()]
    assert len(received) == 3
    for ds in received:
        assert ds.SeriesInstanceUID == derived_series
        assert ds.SOPInstanceUID.startswith("2.25.") and ds.SOPInstanceUID not in by_sop
        assert ds.StudyInstanceUID == study and ds.PatientID == "STRM01"
        assert ds.PatientName == "DOE^JOHN"
        assert ds.ImageType[0] == "DERIVED"
        assert [i.SeriesInstanceUID for i in ds.ReferencedSeriesSequence] == [
            sources[0].SeriesInstanceUID
        ]
        (ref,) = ds.SourceImageSequence
        source = by_sop[ref.ReferencedSOPInstanceUID]
        assert ref.ReferencedSOPClassUID == source.SOPClassUID
        original = source.pixel_array
        assert np.array_equal(ds.pixel_array, original.max() + original.min() - original)
        assert "job-1" in ds.DerivationDescription
    assert len({ds.SourceImageSequence[0].ReferencedSOPInstanceUID for ds in received}) == 3

    query = IndexQuery(
        level=Level.IMAGE, filters={"SeriesInstanceUID": derived_series}, collections=("local",)
    )
    stored = list(node.index.instances(query))
    assert sorted(i.sop_instance_uid for i in stored) == sorted(
        str(ds.SOPInstanceUID) for ds in received
    )
    assert not any(node.config.jobs_dir.iterdir()), "a successful attempt's folder is removed"


def test_sender_not_a_destination_fails_before_running(node: NodeApp) -> None:
    sources = _store_study(node, 1)
    outcome = _runner(node, EXAMPLES).run(
        _job(str(sources[0].StudyInstanceUID), "WORKSTATION9"), threading.Event()
    )
    assert not outcome.succeeded
    assert "sender 'WORKSTATION9'" in outcome.error
    assert "not a configured destination of node site-a" in outcome.error


def test_failing_command_reports_exit_code_and_logs(node: NodeApp, tmp_path: Path) -> None:
    streams = tmp_path / "streams"
    streams.mkdir()
    (streams / "fail.json").write_text(
        '{"name": "fail", "AETitle": "FAIL", "command": ["{python}", '
        f'"{EXAMPLES}/invert/invert.py", "--exit-code", "3"], "max_attempts": 2}}'
    )
    sources = _store_study(node, 1)
    outcome = _runner(node, streams).run(
        _job(str(sources[0].StudyInstanceUID), "", stream="fail"), threading.Event()
    )
    assert not outcome.succeeded and outcome.exit_code == 3
    assert outcome.error == "command exited with status 3"
    logs = outcome.logs.decode()
    assert "failing on purpose" in logs and "error: exit code 3 requested" in logs
    assert "attempt failed: command exited with status 3" in logs
    kept = list(node.config.jobs_dir.iterdir())
    assert len(kept) == 1 and (kept[0] / "logs.txt").exists(), "failed attempts are kept"


def test_logs_of_a_collection_that_stays_home_never_reach_the_catalog(
    node: NodeApp, tmp_path: Path
) -> None:
    """A command may print patient data: on an unpublished collection its logs stay here."""
    streams = tmp_path / "streams"
    streams.mkdir()
    (streams / "fail.json").write_text(
        '{"name": "fail", "AETitle": "FAIL", "command": ["{python}", '
        f'"{EXAMPLES}/invert/invert.py", "--exit-code", "3"], "max_attempts": 2}}'
    )
    sources = _store_study(node, 1)
    runner = _runner(node, streams)
    runner.settings.may_leave_site = lambda collection: collection != "local"
    outcome = runner.run(
        _job(str(sources[0].StudyInstanceUID), "", stream="fail"), threading.Event()
    )
    assert not outcome.succeeded and outcome.exit_code == 3
    sent = outcome.logs.decode()
    assert "failing on purpose" not in sent and "'local' does not leave the site" in sent
    [kept] = list((node.config.jobs_dir / "logs").iterdir())
    assert str(kept) in sent and "failing on purpose" in kept.read_text()


def test_unknown_study_fails_clearly(node: NodeApp) -> None:
    outcome = _runner(node, EXAMPLES).run(_job("1.2.3.4", "STORESCP"), threading.Event())
    assert not outcome.succeeded
    assert "study 1.2.3.4 has no instances here or in the catalog" in outcome.error


def test_unreachable_destination_fails_the_attempt_after_storing(
    node: NodeApp, tmp_path: Path
) -> None:
    streams = tmp_path / "streams"
    streams.mkdir()
    (streams / "topacs.json").write_text(
        '{"name": "topacs", "AETitle": "TOPACS", "destination": "PACS", '
        f'"command": ["{{python}}", "{EXAMPLES}/invert/invert.py"]}}'
    )
    sources = _store_study(node, 1)
    dead = {"PACS": Destination(host="127.0.0.1", port=free_port())}  # nobody listens
    outcome = _runner(node, streams, dead).run(
        _job(str(sources[0].StudyInstanceUID), "", stream="topacs"), threading.Event()
    )
    assert not outcome.succeeded
    assert outcome.error.startswith("PACS at 127.0.0.1:") and "did not accept" in outcome.error
    assert b"stored 1 derived instances" in outcome.logs, "results are kept on the node"


def test_a_second_run_leaves_out_what_the_stream_derived_before(
    node: NodeApp, scp: StoreSCP
) -> None:
    scp.clear()
    sources = _store_study(node, 2)
    study = str(sources[0].StudyInstanceUID)
    first = _runner(node, EXAMPLES).run(_job(study, scp.ae_title), threading.Event())
    again = _runner(node, EXAMPLES).run(_job(study, scp.ae_title, attempt=2), threading.Event())
    assert first.succeeded and again.succeeded, again.logs.decode()
    logs = again.logs.decode()
    assert "input: 4 instances" in logs and "left out 2 instances this stream derived" in logs
    assert "invert: 2 input files" in logs and "routed 2 instances" in logs
    assert first.output_series_instance_uids != again.output_series_instance_uids


def _private_runner(node: NodeApp, streams_dir: Path) -> tuple[JobRunner, StudyReferences]:
    """A runner as a node without ``publish_identified`` has it: 'local' stays home."""
    refs = StudyReferences(
        load_or_create_secret(node.config.secrets_dir / "ref.secret"), node.index
    )
    runner = _runner(node, streams_dir)
    runner.settings.may_leave_site = lambda collection: collection != "local"
    runner.settings.resolve_study = refs.resolve
    return runner, refs


def test_a_study_reference_is_resolved_here_and_outputs_are_counted_not_named(
    node: NodeApp, scp: StoreSCP
) -> None:
    scp.clear()
    sources = _store_study(node, 2)
    study = str(sources[0].StudyInstanceUID)
    runner, refs = _private_runner(node, EXAMPLES)
    ref = refs.refer(study, "local")
    assert ref.startswith("ref:") and len(ref) <= 64 and study not in ref
    assert refs.refer(study, "local") == ref == refs.refer(ref, "local"), "stable, idempotent"
    outcome = runner.run(_job(ref, scp.ae_title), threading.Event())
    assert outcome.succeeded, outcome.error
    assert outcome.output_series_instance_uids == () and outcome.output_series_count == 1
    received = [dcmread(p) for p in scp.received()]
    assert len(received) == 2 and {ds.StudyInstanceUID for ds in received} == {study}
    sent = outcome.logs.decode()
    assert "logs kept at node site-a" in sent and study not in sent
    [kept] = list((node.config.jobs_dir / "logs").iterdir())
    assert f"study {study} ({ref})" in kept.read_text()
    assert str(received[0].SeriesInstanceUID) in kept.read_text()


def test_a_reference_this_node_did_not_make_fails_clearly(node: NodeApp) -> None:
    runner, _ = _private_runner(node, EXAMPLES)
    ref = "ref:" + "ab" * 24
    outcome = runner.run(_job(ref, "STORESCP"), threading.Event())
    assert not outcome.succeeded
    assert outcome.error == (
        f"study reference {ref} is not known on node site-a: only its origin node site-a "
        "can resolve it"
    )


def test_an_error_of_a_job_that_stays_home_names_no_uid(node: NodeApp) -> None:
    """The study was deleted after the trigger: the error says so without its UID."""
    runner, refs = _private_runner(node, EXAMPLES)
    study = "1.2.826.0.1.3680043.99.12345"
    ref = refs.refer(study, "local")
    outcome = runner.run(_job(ref, "STORESCP"), threading.Event())
    assert not outcome.succeeded
    assert outcome.error == f"study {ref} has no instances here"
    assert study.encode() not in outcome.logs
